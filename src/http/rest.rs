//! REST API for recordings and exports, under `/v1/sessions/{session}/recordings`.
//!
//! Callers authenticate like signaling does (`Authorization: Bearer` or `?access_token=`):
//! a service token (`admin` grant, no session) may act on any session; a participant token
//! only on its own session and only with the `record` grant (the static client's downloads).

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use veza_signaling::ErrorCode;
#[allow(unused_imports)] // named by the OpenAPI annotations
use veza_signaling::HttpError;

use super::{AppState, TokenQuery, error_response};
use crate::auth::RestCaller;
use crate::export::ExportOptions;
use crate::export::jobs::JobView;
use crate::record::{RecordError, RecordingInfo, RecordingState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions/{session}/recordings", post(start).get(list))
        .route("/v1/sessions/{session}/recordings/{rid}", get(info))
        .route("/v1/sessions/{session}/recordings/{rid}/stop", post(stop))
        .route("/v1/sessions/{session}/recordings/{rid}/exports", post(export))
        .route("/v1/sessions/{session}/recordings/{rid}/exports/{eid}", get(export_status))
        .route("/v1/sessions/{session}/recordings/{rid}/exports/{eid}/files/{name}", get(download))
}

/// What a signaling participant may do about recording (from its token).
pub struct RecordRights {
    session: String,
    allowed: bool,
}

impl RecordRights {
    pub fn of(identity: &crate::auth::Identity) -> RecordRights {
        RecordRights { session: identity.session.clone(), allowed: identity.grants.record }
    }
}

/// `start_recording` / `stop_recording` from signaling; returns an error reply, if any
/// (success is announced to everyone by the worker: `recording_started` / `recording_stopped`).
pub async fn recording_command(
    state: &AppState,
    rights: &RecordRights,
    participant: &str,
    start: bool,
) -> Option<veza_signaling::ServerMessage> {
    use veza_signaling::ServerMessage;
    if !rights.allowed {
        return Some(ServerMessage::error(ErrorCode::RecordNotAllowed, "your token does not grant record"));
    }
    let session = &rights.session;
    let result = if start {
        state.recordings.start(&state.media, session, participant).await.map(drop)
    } else {
        match state.recordings.current(session) {
            Some(rid) => state.recordings.stop(&state.media, session, &rid).await.map(drop),
            None => {
                return Some(ServerMessage::error(ErrorCode::RecordingNotFound, "the session is not being recorded"));
            }
        }
    };
    result.err().map(|e| ServerMessage::error(e.code(), e.to_string()))
}

/// Checks the caller may act on `session`; returns who they are (for `started_by`).
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    query: &TokenQuery,
    session: &str,
) -> Result<String, Box<Response>> {
    let token = super::request_token(headers, query)?;
    match state.verifier.verify_rest(&token) {
        Ok(RestCaller::Admin { sub }) => Ok(format!("admin:{sub}")),
        Ok(RestCaller::Participant(id)) if id.session == session && id.grants.record => Ok(id.user),
        Ok(RestCaller::Participant(_)) => Err(Box::new(error_response(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this token may not manage this session's recordings (needs admin, or the record grant for this session)",
        ))),
        Err(e) => Err(Box::new(error_response(StatusCode::UNAUTHORIZED, e.code, e.message))),
    }
}

fn record_error(e: RecordError) -> Response {
    let status = match &e {
        RecordError::SessionNotFound(_) | RecordError::NotFound(_) => StatusCode::NOT_FOUND,
        RecordError::AlreadyRecording(_) | RecordError::StillRecording(_) => StatusCode::CONFLICT,
        RecordError::WorkerGone => StatusCode::SERVICE_UNAVAILABLE,
        RecordError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(status, e.code(), e.to_string())
}

#[derive(Serialize)]
struct RecordingList {
    recordings: Vec<RecordingInfo>,
}

#[utoipa::path(post, path = "/v1/sessions/{session}/recordings", operation_id = "start_recording", tag = "recordings", params(("session" = String, Path)),
    responses((status = 201, description = "recording started", body = serde_json::Value), (status = 401, body = HttpError), (status = 403, body = HttpError), (status = 404, body = HttpError),
        (status = 409, body = HttpError)))]
pub(crate) async fn start(
    State(state): State<AppState>,
    Path(session): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let by = match authorize(&state, &headers, &q, &session) {
        Ok(by) => by,
        Err(r) => return *r,
    };
    match state.recordings.start(&state.media, &session, &by).await {
        Ok(info) => (StatusCode::CREATED, Json(info)).into_response(),
        Err(e) => record_error(e),
    }
}

#[utoipa::path(get, path = "/v1/sessions/{session}/recordings", operation_id = "list_recordings", tag = "recordings", params(("session" = String, Path)),
    responses((status = 200, description = "{recordings: [...]}", body = serde_json::Value), (status = 401, body = HttpError), (status = 403, body = HttpError), (status = 404, body = HttpError)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    Path(session): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &q, &session) {
        return *r;
    }
    Json(RecordingList { recordings: state.recordings.list(&session) }).into_response()
}

#[utoipa::path(get, path = "/v1/sessions/{session}/recordings/{rid}", operation_id = "get_recording", tag = "recordings",
    params(("session" = String, Path), ("rid" = String, Path)),
    responses((status = 200, description = "one recording", body = serde_json::Value), (status = 401, body = HttpError), (status = 403, body = HttpError), (status = 404, body = HttpError)))]
pub(crate) async fn info(
    State(state): State<AppState>,
    Path((session, rid)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &q, &session) {
        return *r;
    }
    match state.recordings.info(&session, &rid) {
        Ok(info) => Json(info).into_response(),
        Err(e) => record_error(e),
    }
}

#[utoipa::path(post, path = "/v1/sessions/{session}/recordings/{rid}/stop", operation_id = "stop_recording", tag = "recordings",
    params(("session" = String, Path), ("rid" = String, Path)),
    responses((status = 200, description = "stopped; the files are final", body = serde_json::Value), (status = 401, body = HttpError), (status = 403, body = HttpError), (status = 404, body = HttpError)))]
pub(crate) async fn stop(
    State(state): State<AppState>,
    Path((session, rid)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &q, &session) {
        return *r;
    }
    match state.recordings.stop(&state.media, &session, &rid).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => record_error(e),
    }
}

/// A job with download URLs for its files.
#[derive(Serialize)]
struct JobResponse {
    #[serde(flatten)]
    job: JobView,
    urls: Vec<String>,
}

fn job_response(session: &str, rid: &str, job: JobView) -> JobResponse {
    let urls = job
        .files
        .iter()
        .map(|f| format!("/v1/sessions/{session}/recordings/{rid}/exports/{}/files/{}", job.id, f.name))
        .collect();
    JobResponse { job, urls }
}

#[utoipa::path(post, path = "/v1/sessions/{session}/recordings/{rid}/exports", operation_id = "create_export", tag = "recordings",
    params(("session" = String, Path), ("rid" = String, Path)),
    request_body(content = serde_json::Value, description = "{format: flac|wav|ogg, layout: stems|mix, bit_depth: 16|24}"),
    responses((status = 202, description = "the export job", body = serde_json::Value), (status = 400, body = HttpError), (status = 401, body = HttpError), (status = 403, body = HttpError), (status = 404, body = HttpError),
        (status = 409, body = HttpError)))]
pub(crate) async fn export(
    State(state): State<AppState>,
    Path((session, rid)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Result<Json<ExportOptions>, JsonRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &q, &session) {
        return *r;
    }
    let dir = match state.recordings.dir(&session, &rid) {
        Ok(dir) => dir,
        Err(e) => return record_error(e),
    };
    let options = match body {
        Ok(Json(o)) => o,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                format!("expected {{format: flac|wav|ogg, layout: stems|mix, bit_depth: 16|24}}: {}", e.body_text()),
            );
        }
    };
    if let Err(e) = options.validate() {
        return error_response(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, e.to_string());
    }
    match state.recordings.info(&session, &rid) {
        Ok(info)
            if info.state == RecordingState::Recording
                && state.recordings.current(&session).as_deref() == Some(&rid) =>
        {
            return record_error(RecordError::StillRecording(rid));
        }
        Ok(_) => {}
        Err(e) => return record_error(e),
    }
    let job = state.exports.submit(&session, &rid, dir, options);
    let view = job.view();
    let location = format!("/v1/sessions/{session}/recordings/{rid}/exports/{}", view.id);
    let mut response = (StatusCode::ACCEPTED, Json(job_response(&session, &rid, view))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

#[utoipa::path(get, path = "/v1/sessions/{session}/recordings/{rid}/exports/{eid}", operation_id = "get_export", tag = "recordings",
    params(("session" = String, Path), ("rid" = String, Path), ("eid" = String, Path)),
    responses((status = 200, description = "the export job", body = serde_json::Value), (status = 401, body = HttpError), (status = 403, body = HttpError), (status = 404, body = HttpError)))]
pub(crate) async fn export_status(
    State(state): State<AppState>,
    Path((session, rid, eid)): Path<(String, String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &q, &session) {
        return *r;
    }
    let dir = match state.recordings.dir(&session, &rid) {
        Ok(dir) => dir,
        Err(e) => return record_error(e),
    };
    match state.exports.get(&session, &rid, &dir, &eid) {
        Some(job) => Json(job_response(&session, &rid, job.view())).into_response(),
        None => error_response(StatusCode::NOT_FOUND, ErrorCode::ExportNotFound, format!("export {eid:?} not found")),
    }
}

#[utoipa::path(get, path = "/v1/sessions/{session}/recordings/{rid}/exports/{eid}/files/{name}", operation_id = "download_export_file", tag = "recordings",
    params(("session" = String, Path), ("rid" = String, Path), ("eid" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "the file (audio/flac, audio/wav or audio/ogg)"), (status = 401, body = HttpError), (status = 403, body = HttpError), (status = 404, body = HttpError)))]
pub(crate) async fn download(
    State(state): State<AppState>,
    Path((session, rid, eid, name)): Path<(String, String, String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &q, &session) {
        return *r;
    }
    let dir = match state.recordings.dir(&session, &rid) {
        Ok(dir) => dir,
        Err(e) => return record_error(e),
    };
    let Some(path) = state.exports.get(&session, &rid, &dir, &eid).and_then(|job| job.file(&name)) else {
        return error_response(
            StatusCode::NOT_FOUND,
            ErrorCode::ExportNotFound,
            format!("no file {name:?} in export {eid:?}"),
        );
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return error_response(StatusCode::NOT_FOUND, ErrorCode::ExportNotFound, format!("{name}: {e}")),
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mime = match name.rsplit('.').next() {
        Some("flac") => "audio/flac",
        Some("wav") => "audio/wav",
        Some("opus") => "audio/ogg",
        _ => "application/octet-stream",
    };
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
    let disposition = format!("attachment; filename=\"{name}\"");
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}
