//! Graceful drain: a node leaving (deploy, scale-in, reboot) must not cut a jam.
//!
//! On the first SIGTERM or SIGINT the server stops taking joins (`/readyz` says 503, so load
//! balancers stop sending any, and a join that still arrives is refused with `draining` and a
//! `Retry-After`), and every participant gets a `draining` message telling them how long they
//! have. The process exits once the last participant has left, when `drain_timeout` has
//! passed, or at once on a second signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};
use veza_signaling::ServerMessage;

/// How long a refused join is told to wait before retrying (`Retry-After`, seconds): about one
/// readiness-probe period, after which the load balancer sends it elsewhere.
pub const RETRY_AFTER_SECS: u64 = 2;

/// Draining state shared by the signaling handlers and the signal task.
pub struct Drain {
    /// The readiness flag `/readyz` and joins check; cleared when draining starts.
    ready: Arc<AtomicBool>,
    /// `Some(deadline)` once draining.
    notice: watch::Sender<Option<Instant>>,
    /// Participants with an open signaling socket.
    live: watch::Sender<usize>,
}

impl Drain {
    pub fn new(ready: Arc<AtomicBool>) -> Drain {
        Drain { ready, notice: watch::Sender::new(None), live: watch::Sender::new(0) }
    }

    /// Starts draining, to end by `now + timeout`. Returns false if it already had started.
    pub fn start(&self, timeout: Duration) -> bool {
        self.ready.store(false, Ordering::Release);
        let deadline = Instant::now() + timeout;
        self.notice.send_if_modified(|notice| {
            if notice.is_some() {
                return false;
            }
            *notice = Some(deadline);
            true
        })
    }

    pub fn is_draining(&self) -> bool {
        self.notice.borrow().is_some()
    }

    /// Wakes when draining starts (see [`Drain::notice`]).
    pub fn subscribe(&self) -> watch::Receiver<Option<Instant>> {
        self.notice.subscribe()
    }

    /// Counts a joined participant until the guard drops (when their signaling socket ends).
    pub fn participant(self: &Arc<Self>) -> LiveParticipant {
        self.live.send_modify(|n| *n += 1);
        LiveParticipant(self.clone())
    }

    /// Participants with an open signaling socket.
    pub fn participants(&self) -> usize {
        *self.live.borrow()
    }

    /// Resolves once no participant is connected.
    pub async fn wait_empty(&self) {
        let mut live = self.live.subscribe();
        // The sender lives in `self`, so this cannot fail while we borrow it.
        let _ = live.wait_for(|n| *n == 0).await;
    }
}

/// The `draining` message for a drain that ends at `deadline`.
pub fn notice(deadline: Instant) -> ServerMessage {
    let left = deadline.saturating_duration_since(Instant::now());
    ServerMessage::Draining {
        reconnect_within_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        message: format!(
            "this server is shutting down: finish up and rejoin within {}s (you will be moved to another server)",
            left.as_secs()
        ),
    }
}

/// The answer to a join while draining: 503 `draining`, with `Retry-After`.
pub fn refused_join() -> axum::response::Response {
    let mut refusal = crate::http::error_response(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        veza_signaling::ErrorCode::Draining,
        "this server is shutting down: join again and another server will take you",
    );
    refusal.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(RETRY_AFTER_SECS));
    refusal
}

/// Counted in [`Drain::participants`] while alive.
pub struct LiveParticipant(Arc<Drain>);

impl Drop for LiveParticipant {
    fn drop(&mut self) {
        self.0.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// SIGTERM and SIGINT, listened to from the moment this is built: build it before the server
/// says it is up, so no signal can arrive while the default action (die) still applies.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// Waits for a signal, drains, and returns when the server should stop: the last
    /// participant left, `timeout` passed, or a second signal came.
    pub async fn drain(mut self, drain: Arc<Drain>, timeout: Duration) {
        let first = self.next().await;
        drain.start(timeout);
        let waiting = drain.participants();
        if waiting == 0 {
            info!("{first}: no participants, shutting down");
            return;
        }
        info!(
            participants = waiting,
            "{first}: draining: joins refused, waiting up to {} for participants to leave (signal again to stop now)",
            humantime::format_duration(timeout)
        );
        tokio::select! {
            () = drain.wait_empty() => info!("drained: the last participant left, shutting down"),
            () = tokio::time::sleep(timeout) => warn!(
                participants = drain.participants(),
                "drain timeout passed: closing the remaining connections"
            ),
            second = self.next() => warn!(
                participants = drain.participants(),
                "{second} while draining: shutting down now"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_participants_and_starts_once() {
        let ready = Arc::new(AtomicBool::new(true));
        let drain = Arc::new(Drain::new(ready.clone()));
        let a = drain.participant();
        let b = drain.participant();
        assert_eq!(drain.participants(), 2);
        let mut told = drain.subscribe();
        assert!(drain.start(Duration::from_secs(60)));
        assert!(!drain.start(Duration::from_secs(1)), "a second start changes nothing");
        assert!(!ready.load(Ordering::Acquire));
        told.changed().await.unwrap();
        let deadline = told.borrow().expect("a deadline");
        match notice(deadline) {
            ServerMessage::Draining { reconnect_within_ms, .. } => assert!(reconnect_within_ms <= 60_000),
            other => panic!("{other:?}"),
        }
        drop(a);
        let empty = tokio::spawn({
            let drain = drain.clone();
            async move { drain.wait_empty().await }
        });
        drop(b);
        empty.await.unwrap();
        assert_eq!(drain.participants(), 0);
    }
}
