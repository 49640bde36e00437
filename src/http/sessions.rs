//! REST session management for the Veza API, under `/v1/sessions`: create, list, get, end,
//! kick, server-side mute and live grant changes. Service (admin) tokens only.
//!
//! Handlers are thin: they check the caller and the body, then send one command to the
//! worker hosting the session (`MediaEngine::worker_for`), which does the work
//! (src/session/host/admin.rs).

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use veza_signaling::{ErrorCode, Grants};

use super::{AppState, TokenQuery, error_response};
use crate::auth::RestCaller;
use crate::media::admin::{AdminCommand, WorkerGone};
use crate::session::{AdminError, NewSession, ParticipantView, SessionView};
#[allow(unused_imports)] // named by the OpenAPI annotations
use veza_signaling::HttpError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions", post(create).get(list))
        .route("/v1/sessions/{session}", get(show).delete(end))
        .route("/v1/sessions/{session}/participants/{pid}/kick", post(kick))
        .route("/v1/sessions/{session}/participants/{pid}/mute", post(mute))
        .route("/v1/sessions/{session}/participants/{pid}/grants", put(grants))
        .route("/v1/openapi.json", get(openapi))
}

/// `GET /v1/openapi.json`: the REST API's OpenAPI 3 document (no token needed).
async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

/// Largest `metadata`, serialised.
const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest `max_participants` a session may ask for.
const MAX_PARTICIPANTS_LIMIT: usize = 1000;

/// `POST /v1/sessions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// 1-128 characters of `[A-Za-z0-9._-]`; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Default: `sessions.max_participants`.
    #[serde(default)]
    pub max_participants: Option<usize>,
    /// Anything the API wants to keep with the session (shown by GET). Default: null.
    #[serde(default)]
    pub metadata: serde_json::Value,
    /// Start recording as soon as the session exists. Default: false.
    #[serde(default)]
    pub auto_record: bool,
}

/// `POST .../participants/{pid}/mute`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteBody {
    pub muted: bool,
}

/// `PUT .../participants/{pid}/grants`: the new grants, whole; absent ones default as in
/// tokens (`publish`, `subscribe`, `chat`: true; `record`: false).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsBody {
    #[serde(default = "yes")]
    pub publish: bool,
    #[serde(default = "yes")]
    pub subscribe: bool,
    #[serde(default = "yes")]
    pub chat: bool,
    #[serde(default)]
    pub record: bool,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionList {
    sessions: Vec<SessionView>,
}

/// Admits service tokens only: 401 without a valid one, 403 for a participant token.
fn admin_only(state: &AppState, headers: &HeaderMap, query: &TokenQuery) -> Result<String, Box<Response>> {
    let token = super::request_token(headers, query)?;
    match state.verifier.verify_rest(&token) {
        Ok(RestCaller::Admin { sub }) => Ok(sub),
        Ok(RestCaller::Participant(_)) => Err(Box::new(error_response(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "session management needs a service token (grant admin)",
        ))),
        Err(e) => Err(Box::new(error_response(StatusCode::UNAUTHORIZED, e.code, e.message))),
    }
}

fn bad_request(message: impl Into<String>) -> Response {
    error_response(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
}

fn admin_error(e: AdminError) -> Response {
    let status = match e {
        AdminError::SessionNotFound(_) | AdminError::ParticipantNotFound(_) => StatusCode::NOT_FOUND,
        AdminError::SessionExists(_) => StatusCode::CONFLICT,
        AdminError::ServerFull(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error_response(status, e.code(), e.to_string())
}

/// A worker's answer as HTTP: `ok` for success, the admin error's status otherwise.
fn respond<T>(answer: Result<Result<T, AdminError>, WorkerGone>, ok: impl FnOnce(T) -> Response) -> Response {
    match answer {
        Ok(Ok(value)) => ok(value),
        Ok(Err(e)) => admin_error(e),
        Err(e) => worker_gone(e),
    }
}

fn worker_gone(_: WorkerGone) -> Response {
    error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, "media worker stopped")
}

fn session_not_found(id: &str) -> Response {
    admin_error(AdminError::SessionNotFound(id.to_owned()))
}

fn generated_id() -> String {
    let suffix: String = rand::rng().sample_iter(&Alphanumeric).take(12).map(char::from).collect();
    format!("s_{suffix}")
}

/// Checks a create body; returns what the worker needs.
pub fn validate(body: CreateSession) -> Result<NewSession, String> {
    let id = body.id.unwrap_or_else(generated_id);
    if !crate::auth::valid_session_id(&id) {
        return Err("id must be 1-128 characters of [A-Za-z0-9._-]".to_owned());
    }
    if let Some(n) = body.max_participants
        && !(1..=MAX_PARTICIPANTS_LIMIT).contains(&n)
    {
        return Err(format!("max_participants must be 1-{MAX_PARTICIPANTS_LIMIT}"));
    }
    let size = serde_json::to_vec(&body.metadata).map_or(0, |v| v.len());
    if size > MAX_METADATA_BYTES {
        return Err(format!("metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}"));
    }
    Ok(NewSession {
        id,
        max_participants: body.max_participants,
        metadata: body.metadata,
        auto_record: body.auto_record,
    })
}

#[utoipa::path(post, path = "/v1/sessions", operation_id = "create_session", tag = "sessions", request_body = CreateSession,
    responses((status = 201, description = "created", body = SessionView), (status = 400, body = HttpError),
        (status = 401, body = HttpError), (status = 403, body = HttpError), (status = 409, body = HttpError)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Result<Json<CreateSession>, JsonRejection>,
) -> Response {
    let by = match admin_only(&state, &headers, &q) {
        Ok(by) => by,
        Err(r) => return *r,
    };
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return bad_request(format!(
                "expected {{id?, max_participants?, metadata?, auto_record?}}: {}",
                e.body_text()
            ));
        }
    };
    let new = match validate(body) {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    let id = new.id.clone();
    let auto_record = new.auto_record;
    let worker = state.media.worker_for(&id);
    let mut view = match worker.admin(|tx| AdminCommand::CreateSession(new, tx)).await {
        Ok(Ok(view)) => view,
        Ok(Err(e)) => return admin_error(e),
        Err(e) => return worker_gone(e),
    };
    if auto_record {
        match state.recordings.start(&state.media, &id, &format!("admin:{by}")).await {
            Ok(info) => view.recording_id = Some(info.id),
            Err(e) => tracing::warn!(session = %id, "automatic recording did not start: {e}"),
        }
    }
    let location = format!("/v1/sessions/{id}");
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

#[utoipa::path(get, path = "/v1/sessions", operation_id = "list_sessions", tag = "sessions",
    responses((status = 200, body = SessionList), (status = 401, body = HttpError), (status = 403, body = HttpError)))]
pub(crate) async fn list(State(state): State<AppState>, Query(q): Query<TokenQuery>, headers: HeaderMap) -> Response {
    if let Err(r) = admin_only(&state, &headers, &q) {
        return *r;
    }
    match state.media.sessions().await {
        Ok(sessions) => Json(SessionList { sessions }).into_response(),
        Err(e) => worker_gone(e),
    }
}

#[utoipa::path(get, path = "/v1/sessions/{session}", operation_id = "get_session", tag = "sessions", params(("session" = String, Path)),
    responses((status = 200, body = SessionView), (status = 401, body = HttpError), (status = 403, body = HttpError),
        (status = 404, body = HttpError)))]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(session): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin_only(&state, &headers, &q) {
        return *r;
    }
    match state.media.worker_for(&session).admin(|tx| AdminCommand::GetSession(session.clone(), tx)).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => session_not_found(&session),
        Err(e) => worker_gone(e),
    }
}

#[utoipa::path(delete, path = "/v1/sessions/{session}", operation_id = "end_session", tag = "sessions", params(("session" = String, Path)),
    responses((status = 204, description = "ended: everyone got session_ended and was disconnected"),
        (status = 401, body = HttpError), (status = 403, body = HttpError), (status = 404, body = HttpError)))]
pub(crate) async fn end(
    State(state): State<AppState>,
    Path(session): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin_only(&state, &headers, &q) {
        return *r;
    }
    // A recording ends with its session, its files made final first.
    if let Some(rid) = state.recordings.current(&session)
        && let Err(e) = state.recordings.stop(&state.media, &session, &rid).await
    {
        tracing::warn!(%session, recording = %rid, "stopping the recording of an ended session: {e}");
    }
    respond(state.media.worker_for(&session).admin(|tx| AdminCommand::EndSession(session.clone(), tx)).await, |()| {
        StatusCode::NO_CONTENT.into_response()
    })
}

#[utoipa::path(post, path = "/v1/sessions/{session}/participants/{pid}/kick", operation_id = "kick_participant", tag = "sessions",
    params(("session" = String, Path), ("pid" = String, Path)),
    responses((status = 204, description = "kicked and disconnected"), (status = 401, body = HttpError),
        (status = 403, body = HttpError), (status = 404, body = HttpError)))]
pub(crate) async fn kick(
    State(state): State<AppState>,
    Path((session, pid)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admin_only(&state, &headers, &q) {
        return *r;
    }
    let command = |reply| AdminCommand::Kick { session: session.clone(), participant: pid.clone(), reply };
    respond(state.media.worker_for(&session).admin(command).await, |()| StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/v1/sessions/{session}/participants/{pid}/mute", operation_id = "mute_participant", tag = "sessions",
    params(("session" = String, Path), ("pid" = String, Path)), request_body = MuteBody,
    responses((status = 200, body = ParticipantView), (status = 400, body = HttpError), (status = 401, body = HttpError),
        (status = 403, body = HttpError), (status = 404, body = HttpError)))]
pub(crate) async fn mute(
    State(state): State<AppState>,
    Path((session, pid)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Result<Json<MuteBody>, JsonRejection>,
) -> Response {
    if let Err(r) = admin_only(&state, &headers, &q) {
        return *r;
    }
    let muted = match body {
        Ok(Json(b)) => b.muted,
        Err(e) => return bad_request(format!("expected {{muted: bool}}: {}", e.body_text())),
    };
    let command = |reply| AdminCommand::Mute { session: session.clone(), participant: pid.clone(), muted, reply };
    respond(state.media.worker_for(&session).admin(command).await, |view| Json(view).into_response())
}

#[utoipa::path(put, path = "/v1/sessions/{session}/participants/{pid}/grants", operation_id = "set_participant_grants", tag = "sessions",
    params(("session" = String, Path), ("pid" = String, Path)), request_body = GrantsBody,
    responses((status = 200, body = ParticipantView), (status = 400, body = HttpError), (status = 401, body = HttpError),
        (status = 403, body = HttpError), (status = 404, body = HttpError)))]
pub(crate) async fn grants(
    State(state): State<AppState>,
    Path((session, pid)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Result<Json<GrantsBody>, JsonRejection>,
) -> Response {
    if let Err(r) = admin_only(&state, &headers, &q) {
        return *r;
    }
    let grants = match body {
        Ok(Json(b)) => {
            Grants { publish: b.publish, subscribe: b.subscribe, chat: b.chat, record: b.record, admin: false }
        }
        Err(e) => {
            return bad_request(format!(
                "expected {{publish?, subscribe?, chat?, record?}} booleans: {}",
                e.body_text()
            ));
        }
    };
    let command = |reply| AdminCommand::SetGrants { session: session.clone(), participant: pid.clone(), grants, reply };
    respond(state.media.worker_for(&session).admin(command).await, |view| Json(view).into_response())
}
