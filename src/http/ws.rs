//! `GET /v1/ws`: the token is checked before the upgrade; then one task per participation
//! relays client messages to the session's worker and the worker's messages to the client.
//!
//! A participation outlives its socket: when the socket drops without `leave` or a close frame
//! (Wi-Fi hiccup, a laptop lid, a proxy restart) the task parks for `sessions.reconnect_grace`,
//! keeping every message the worker has for the client, and carries on with the socket of a
//! reconnect that presents the resume token (src/http/resume.rs). Media never notices.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::SinkExt;
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::mpsc;
use tracing::{debug, info};
use veza_signaling::{ClientMessage, ErrorCode, LeaveReason, ServerMessage};

use super::resume::{Handoff, Refused};
use super::{AppState, TokenQuery, error_response};
use crate::auth::Identity;
use crate::chat::RateLimiter;
use crate::media::WorkerHandle;
use crate::session::JoinRequest;

/// How long closing a replaced socket may take (it may be half-open with a full buffer).
const OLD_SOCKET_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Hard cap for one frame: past it the socket closes. Below it but above the configured
/// message limit, the client gets `message_too_large` and the socket stays open.
const HARD_FRAME_FACTOR: usize = 4;

/// `?access_token=` and, to pick a participation back up, `?resume=`.
#[derive(serde::Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
    resume: Option<String>,
}

pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Counted before the token is looked at: guessing tokens costs attempts too.
    let ip = state.joins.client_ip(peer, &headers);
    if let Err(wait) = state.joins.check(ip) {
        info!(%ip, "join attempts over the limit");
        let secs = wait.as_secs().max(1);
        let mut refusal = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::JoinRateLimited,
            format!("too many join attempts from this address; retry in {secs} s"),
        );
        refusal.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return refusal;
    }
    let token_query = TokenQuery { access_token: query.access_token };
    let token = match super::request_token(&headers, &token_query) {
        Ok(token) => token,
        Err(refusal) => return *refusal,
    };
    let resuming = query.resume.as_deref().is_some_and(|r| !r.is_empty());
    // A resume may come hours into a jam, long after the access token the client joined with
    // expired: for a resume the signature must hold and the token must name the same user and
    // session, but its age does not matter (the resume token is the fresh secret).
    let verified = if resuming { state.verifier.verify_ignoring_expiry(&token) } else { state.verifier.verify(&token) };
    let identity = match verified {
        Ok(identity) => identity,
        Err(e) => {
            // The code says why; the token itself is never logged.
            info!(code = ?e.code, %ip, "token refused");
            return error_response(StatusCode::UNAUTHORIZED, e.code, e.message);
        }
    };
    // A resume continues a participation that already counts: allowed while draining.
    let handoff = match query.resume.as_deref().filter(|r| !r.is_empty()) {
        None => None,
        Some(resume) => match state.resumable.find(resume, &identity) {
            Ok(handoff) => Some(handoff),
            Err(Refused::Unknown) => {
                return error_response(
                    StatusCode::GONE,
                    ErrorCode::ResumeExpired,
                    "nothing to resume (left, or the grace period ran out): join again without resume",
                );
            }
            Err(Refused::NotYours) => {
                info!(user = %identity.user, "resume token of another participant");
                return error_response(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "that resume token is not yours");
            }
        },
    };
    if handoff.is_none() {
        if state.drain.is_draining() {
            return crate::drain::refused_join();
        }
        if !state.ready.load(Ordering::Acquire) {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::NotReady,
                "server is not accepting joins",
            );
        }
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
    upgrade.max_message_size(limit * HARD_FRAME_FACTOR).max_frame_size(limit * HARD_FRAME_FACTOR).on_upgrade(
        move |socket| async move {
            match handoff {
                Some(handoff) => resume(Box::new(socket), handoff).await,
                None => run(socket, state, identity).await,
            }
        },
    )
}

/// Hands a reconnect's socket to its participation's task.
async fn resume(socket: Box<WebSocket>, handoff: Handoff) {
    if let Err(mut socket) = handoff.deliver(socket) {
        // The participation ended (or another reconnect is being handed over) since the check.
        let reply = ServerMessage::error(ErrorCode::ResumeExpired, "nothing to resume: join again without resume");
        let _ = socket.send(text_frame(&reply)).await;
        let _ = socket.close().await;
    }
}

fn participant_id() -> String {
    let suffix: String = rand::rng().sample_iter(&Alphanumeric).take(12).map(char::from).collect();
    format!("p{suffix}")
}

/// What the task owns besides the socket: the worker's queue for this participant, messages
/// taken from it but not yet delivered, and where reconnects' sockets arrive.
struct Link {
    from_worker: mpsc::Receiver<ServerMessage>,
    undelivered: VecDeque<ServerMessage>,
    sockets: mpsc::Receiver<Box<WebSocket>>,
}

/// How one socket's stint ended.
enum Ended {
    /// The participant leaves: `leave`, a close frame, or abuse.
    Leave(LeaveReason),
    /// The worker removed the participant (it dropped our queue).
    Removed,
    /// The socket failed or went silent: park and wait for a reconnect.
    Dropped,
    /// A reconnect presented the resume token while this socket still looked alive.
    Replaced(Box<WebSocket>),
}

async fn run(mut socket: WebSocket, state: AppState, identity: Identity) {
    let cfg = &state.config.http;
    let worker = state.media.worker_for(&identity.session).clone();
    let id = participant_id();
    let (outbound, from_worker) = mpsc::channel(cfg.outbound_queue.max(1));
    let rights = super::rest::RecordRights::of(&identity);
    let (registration, sockets) = state.resumable.register(&identity);
    let join = JoinRequest { participant_id: id.clone(), identity, outbound, resume_token: registration.token.clone() };
    // Counted from before the join, so a drain never sees zero while this one is joining.
    let _live = state.drain.participant();
    if let Err(e) = worker.join(join).await {
        let _ = socket.send(text_frame(&ServerMessage::error(e.code, e.message))).await;
        let _ = socket.close().await;
        return;
    }
    let mut link = Link { from_worker, undelivered: VecDeque::new(), sockets };
    let reason = loop {
        let next = match relay(&mut socket, &state, &worker, &id, &rights, &mut link).await {
            Ended::Leave(reason) => break Some(reason),
            Ended::Removed => break None,
            Ended::Replaced(next) => {
                // The old socket may be half-open with a full send buffer: do not wait on it.
                let _ = tokio::time::timeout(OLD_SOCKET_CLOSE_TIMEOUT, socket.close()).await;
                next
            }
            Ended::Dropped => {
                let _parked = state.resumable.park();
                debug!(participant = id, "signaling dropped; waiting for a resume");
                match park(&state, &mut link).await {
                    Ok(next) => next,
                    Err(reason) => break reason,
                }
            }
        };
        info!(participant = id, "signaling resumed");
        socket = *next;
        // Anything the worker queued meanwhile follows this, in order (relay sends it first).
        // A `resumed` that never reached an earlier socket is replaced, not repeated.
        link.undelivered.retain(|m| !matches!(m, ServerMessage::Resumed { .. }));
        link.undelivered.push_front(ServerMessage::Resumed { participant_id: id.clone() });
        worker.resumed(&id).await;
    };
    // Out of the registry before leaving: nobody may resume into a participation that is ending.
    drop(registration);
    link.sockets.close();
    while let Ok(mut late) = link.sockets.try_recv() {
        let reply = ServerMessage::error(ErrorCode::ResumeExpired, "this participation has ended: join again");
        let _ = late.send(text_frame(&reply)).await;
        let _ = late.close().await;
    }
    if let Some(reason) = reason {
        worker.leave(&id, reason).await;
    }
    let _ = socket.close().await;
}

/// Waits out the grace period for a reconnect, keeping the worker's messages for it.
/// `Err(Some(reason))`: the participant leaves; `Err(None)`: the worker removed them.
async fn park(state: &AppState, link: &mut Link) -> Result<Box<WebSocket>, Option<LeaveReason>> {
    let grace = state.config.sessions.reconnect_grace;
    if grace.is_zero() {
        return Err(Some(LeaveReason::Disconnected));
    }
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    // Removed meanwhile (kicked, session ended, media failed) with news for the client still
    // undelivered: keep waiting, so a reconnect learns why instead of finding nothing.
    let mut removed = false;
    loop {
        tokio::select! {
            () = &mut deadline => return Err((!removed).then_some(LeaveReason::Disconnected)),
            Some(next) = link.sockets.recv() => return Ok(next),
            message = link.from_worker.recv(), if !removed => match message {
                // Kept for the reconnect; a participant that would overflow the queue is as
                // far behind as one whose socket cannot keep up.
                Some(message) if link.undelivered.len() < state.config.http.outbound_queue => {
                    link.undelivered.push_back(message);
                }
                Some(_) => return Err(Some(LeaveReason::TooSlow)),
                None if link.undelivered.is_empty() => return Err(None),
                None => removed = true,
            },
        }
    }
}

/// Runs one socket until it ends, saying how.
async fn relay(
    socket: &mut WebSocket,
    state: &AppState,
    worker: &WorkerHandle,
    id: &str,
    rights: &super::rest::RecordRights,
    link: &mut Link,
) -> Ended {
    let cfg = &state.config.http;
    while let Some(message) = link.undelivered.pop_front() {
        if socket.send(text_frame(&message)).await.is_err() {
            link.undelivered.push_front(message);
            return Ended::Dropped;
        }
    }
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
                    return Ended::Dropped;
                }
            }
            Some(next) = link.sockets.recv() => return Ended::Replaced(next),
            frame = socket.recv() => {
                last_heard = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        let reply = ServerMessage::error(ErrorCode::MalformedMessage, "binary frames are not part of the protocol");
                        if socket.send(text_frame(&reply)).await.is_err() { return Ended::Dropped; }
                        continue;
                    }
                    // A close frame is a deliberate goodbye (a closed tab); a dead connection sends none.
                    Some(Ok(Message::Close(_))) => return Ended::Leave(LeaveReason::Disconnected),
                    None => return Ended::Dropped,
                    Some(Ok(_)) => continue, // ping/pong
                    Some(Err(e)) => {
                        debug!(participant = id, "socket error: {e}");
                        return Ended::Dropped;
                    }
                };
                // Every message becomes work on the session's worker: a flood must not
                // slow the jam for everyone on it.
                if !limiter.try_take(last_heard) {
                    refused_in_a_row += 1;
                    if refused_in_a_row > cfg.message_burst {
                        info!(participant = id, "signaling flood: disconnecting");
                        return Ended::Leave(LeaveReason::Disconnected);
                    }
                    let reply = ServerMessage::error(ErrorCode::RateLimited, "too many messages; slow down");
                    if socket.send(text_frame(&reply)).await.is_err() { return Ended::Dropped; }
                    continue;
                }
                refused_in_a_row = 0;
                if text.len() > cfg.max_message_bytes {
                    let reply = ServerMessage::error(
                        ErrorCode::MessageTooLarge,
                        format!("message is {} bytes; the limit is {}", text.len(), cfg.max_message_bytes),
                    );
                    if socket.send(text_frame(&reply)).await.is_err() { return Ended::Dropped; }
                    continue;
                }
                match ClientMessage::parse(text.as_str()) {
                    Ok(ClientMessage::Leave) => return Ended::Leave(LeaveReason::Left),
                    Ok(m @ (ClientMessage::StartRecording | ClientMessage::StopRecording)) => {
                        let start = m == ClientMessage::StartRecording;
                        if let Some(reply) = super::rest::recording_command(state, rights, id, start).await
                            && socket.send(text_frame(&reply)).await.is_err()
                        {
                            return Ended::Dropped;
                        }
                    }
                    Ok(message) => worker.signal(id, message).await,
                    Err(e) => {
                        let reply = ServerMessage::error(e.code(), e.to_string());
                        if socket.send(text_frame(&reply)).await.is_err() { return Ended::Dropped; }
                    }
                }
            }
            message = link.from_worker.recv() => match message {
                Some(message) => {
                    if socket.send(text_frame(&message)).await.is_err() {
                        link.undelivered.push_back(message);
                        return Ended::Dropped;
                    }
                }
                None => return Ended::Removed,
            },
            _ = keepalive.tick() => {
                if last_heard.elapsed() > cfg.idle_timeout {
                    info!(participant = id, "signaling idle too long");
                    return Ended::Dropped;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return Ended::Dropped;
                }
            }
        }
    }
}

fn text_frame(message: &ServerMessage) -> Message {
    Message::text(message.to_json())
}
