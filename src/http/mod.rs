//! The HTTP surface: signaling WebSocket, health probes and the reference web client.

mod join_limit;
pub(crate) mod rest;
pub(crate) mod resume;
pub(crate) mod sessions;
mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::services::ServeDir;
use veza_signaling::{ErrorCode, HttpError};

use crate::auth::Verifier;
use crate::config::Config;
use crate::media::MediaEngine;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    pub media: Arc<MediaEngine>,
    /// False while starting or draining: `/readyz` says 503 and joins are refused.
    pub ready: Arc<AtomicBool>,
    /// Draining on SIGTERM: participants told, joins refused with a reconnect hint.
    pub drain: Arc<crate::drain::Drain>,
    /// Live recordings and the recordings on disk (src/record).
    pub recordings: Arc<crate::record::Recordings>,
    /// Export jobs (src/export).
    pub exports: Arc<crate::export::jobs::Exports>,
    /// Signed event notifications to the Veza API (src/webhook.rs).
    pub webhooks: crate::webhook::Webhooks,
    /// Participations a reconnect may pick back up (src/http/resume.rs).
    pub resumable: Arc<resume::Resumable>,
    /// Join attempts per client address (src/http/join_limit.rs).
    pub joins: Arc<join_limit::JoinLimiter>,
}

pub use join_limit::JoinLimiter;
pub use resume::Resumable;

pub fn router(state: AppState) -> Router {
    let static_files = ServeDir::new(&state.config.http.static_dir);
    Router::new()
        .route("/v1/ws", get(ws::handler))
        .merge(rest::routes())
        .merge(sessions::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback_service(static_files)
        .with_state(state)
}

async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else if state.drain.is_draining() {
        error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Draining, "draining: not accepting joins")
    } else {
        error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, "not accepting joins")
    }
}

async fn metrics() -> Response {
    crate::telemetry::publish_main_alive_tasks();
    match crate::telemetry::install() {
        Some(handle) => {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
        }
        None => error_response(StatusCode::NOT_FOUND, ErrorCode::Internal, "metrics recorder unavailable"),
    }
}

/// `?access_token=` on any endpoint: browsers cannot set headers on a WebSocket or a download link.
#[derive(serde::Deserialize)]
pub struct TokenQuery {
    pub access_token: Option<String>,
}

/// The caller's token, from `?access_token=` or `Authorization: Bearer`; a 401 when there is none.
pub fn request_token(headers: &axum::http::HeaderMap, query: &TokenQuery) -> Result<String, Box<Response>> {
    let bearer = || {
        let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
        value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
    };
    query.access_token.clone().or_else(bearer).filter(|t| !t.is_empty()).ok_or_else(|| {
        Box::new(error_response(StatusCode::UNAUTHORIZED, ErrorCode::TokenMissing, "no access_token or bearer token"))
    })
}

/// An error as a JSON body `{code, message}`.
pub fn error_response(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (status, Json(HttpError { code, message: message.into() })).into_response()
}

/// The tracing span of one HTTP request: method and path only. The query string is left out
/// because it carries `access_token` and `resume` secrets, which must never reach the logs.
pub fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
}
