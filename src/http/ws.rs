//! `GET /v1/ws`: the token is checked before the upgrade; then one task per socket relays
//! client messages to the session's worker and the worker's messages to the client.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::SinkExt;
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::mpsc;
use tracing::{debug, info};
use veza_signaling::{ClientMessage, ErrorCode, LeaveReason, ServerMessage};

use super::{AppState, TokenQuery, error_response};
use crate::auth::Identity;
use crate::chat::RateLimiter;
use crate::media::WorkerHandle;
use crate::session::JoinRequest;

/// Hard cap for one frame: past it the socket closes. Below it but above the configured
/// message limit, the client gets `message_too_large` and the socket stays open.
const HARD_FRAME_FACTOR: usize = 4;

pub async fn handler(
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = match super::request_token(&headers, &query) {
        Ok(token) => token,
        Err(refusal) => return *refusal,
    };
    let identity = match state.verifier.verify(&token) {
        Ok(identity) => identity,
        Err(e) => {
            info!(code = ?e.code, "token refused");
            return error_response(StatusCode::UNAUTHORIZED, e.code, e.message);
        }
    };
    if state.drain.is_draining() {
        return crate::drain::refused_join();
    }
    if !state.ready.load(Ordering::Acquire) {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotReady, "server is not accepting joins");
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(_) => {
            return error_response(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::MalformedMessage,
                "token is valid; connect with a WebSocket upgrade",
            );
        }
    };
    let limit = state.config.http.max_message_bytes;
    upgrade
        .max_message_size(limit * HARD_FRAME_FACTOR)
        .max_frame_size(limit * HARD_FRAME_FACTOR)
        .on_upgrade(move |socket| run(socket, state, identity))
}

fn participant_id() -> String {
    let suffix: String = rand::rng().sample_iter(&Alphanumeric).take(12).map(char::from).collect();
    format!("p{suffix}")
}

async fn run(mut socket: WebSocket, state: AppState, identity: Identity) {
    let cfg = &state.config.http;
    let worker = state.media.worker_for(&identity.session).clone();
    let id = participant_id();
    let (outbound, mut inbound_from_worker) = mpsc::channel(cfg.outbound_queue.max(1));
    let rights = super::rest::RecordRights::of(&identity);
    let join = JoinRequest { participant_id: id.clone(), identity, outbound };
    // Counted from before the join, so a drain never sees zero while this one is joining.
    let _live = state.drain.participant();
    if let Err(e) = worker.join(join).await {
        let _ = socket.send(text_frame(&ServerMessage::error(e.code, e.message))).await;
        let _ = socket.close().await;
        return;
    }
    let reason = relay(&mut socket, &state, &worker, &id, &rights, &mut inbound_from_worker).await;
    if let Some(reason) = reason {
        worker.leave(&id, reason).await;
    }
    let _ = socket.close().await;
}

/// Runs until the socket ends; returns why the participant left, or `None` if the worker
/// already removed them (it dropped our queue).
async fn relay(
    socket: &mut WebSocket,
    state: &AppState,
    worker: &WorkerHandle,
    id: &str,
    rights: &super::rest::RecordRights,
    from_worker: &mut mpsc::Receiver<ServerMessage>,
) -> Option<LeaveReason> {
    let cfg = &state.config.http;
    let mut keepalive = tokio::time::interval(cfg.keepalive_interval);
    keepalive.tick().await; // the first tick is immediate
    let mut last_heard = Instant::now();
    let mut limiter = RateLimiter::new(cfg.messages_per_second, cfg.message_burst, last_heard);
    let mut refused_in_a_row = 0u32;
    let mut drain = state.drain.subscribe();
    drain.mark_changed(); // a join that raced the start of a drain is told at once
    loop {
        tokio::select! {
            Ok(()) = drain.changed() => {
                let deadline = *drain.borrow_and_update();
                if let Some(deadline) = deadline
                    && socket.send(text_frame(&crate::drain::notice(deadline))).await.is_err()
                {
                    return Some(LeaveReason::Disconnected);
                }
            }
            frame = socket.recv() => {
                last_heard = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        let reply = ServerMessage::error(ErrorCode::MalformedMessage, "binary frames are not part of the protocol");
                        if socket.send(text_frame(&reply)).await.is_err() { return Some(LeaveReason::Disconnected); }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None => return Some(LeaveReason::Disconnected),
                    Some(Ok(_)) => continue, // ping/pong
                    Some(Err(e)) => {
                        debug!(participant = id, "socket error: {e}");
                        return Some(LeaveReason::Disconnected);
                    }
                };
                // Every message becomes work on the session's worker: a flood must not
                // slow the jam for everyone on it.
                if !limiter.try_take(last_heard) {
                    refused_in_a_row += 1;
                    if refused_in_a_row > cfg.message_burst {
                        info!(participant = id, "signaling flood: disconnecting");
                        return Some(LeaveReason::Disconnected);
                    }
                    let reply = ServerMessage::error(ErrorCode::RateLimited, "too many messages; slow down");
                    if socket.send(text_frame(&reply)).await.is_err() { return Some(LeaveReason::Disconnected); }
                    continue;
                }
                refused_in_a_row = 0;
                if text.len() > cfg.max_message_bytes {
                    let reply = ServerMessage::error(
                        ErrorCode::MessageTooLarge,
                        format!("message is {} bytes; the limit is {}", text.len(), cfg.max_message_bytes),
                    );
                    if socket.send(text_frame(&reply)).await.is_err() { return Some(LeaveReason::Disconnected); }
                    continue;
                }
                match ClientMessage::parse(text.as_str()) {
                    Ok(ClientMessage::Leave) => return Some(LeaveReason::Left),
                    Ok(m @ (ClientMessage::StartRecording | ClientMessage::StopRecording)) => {
                        let start = m == ClientMessage::StartRecording;
                        if let Some(reply) = super::rest::recording_command(state, rights, id, start).await
                            && socket.send(text_frame(&reply)).await.is_err()
                        {
                            return Some(LeaveReason::Disconnected);
                        }
                    }
                    Ok(message) => worker.signal(id, message).await,
                    Err(e) => {
                        let reply = ServerMessage::error(e.code(), e.to_string());
                        if socket.send(text_frame(&reply)).await.is_err() { return Some(LeaveReason::Disconnected); }
                    }
                }
            }
            message = from_worker.recv() => match message {
                Some(message) => {
                    if socket.send(text_frame(&message)).await.is_err() {
                        return Some(LeaveReason::Disconnected);
                    }
                }
                None => return None,
            },
            _ = keepalive.tick() => {
                if last_heard.elapsed() > cfg.idle_timeout {
                    info!(participant = id, "signaling idle too long");
                    return Some(LeaveReason::Disconnected);
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return Some(LeaveReason::Disconnected);
                }
            }
        }
    }
}

fn text_frame(message: &ServerMessage) -> Message {
    Message::text(message.to_json())
}
