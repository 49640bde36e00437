//! State a simulated musician shares between its API handle, its background tasks and its peer
//! connection callbacks, with change notification for the `wait_*` methods.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use veza_signaling::{ChatOut, ServerMessage};
use webrtc::peer_connection::{RTCIceGatheringState, RTCPeerConnectionState};

use super::ServerRefused;
use super::payload;
use super::stats::{OfferedTrack, ReceivedRtp, ReceivedSenderReport, RemoteTrack, SourceState, StreamStats};

/// Locks a std mutex, ignoring poisoning: the data is plain records, still usable after a panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `fut` for at most `timeout`; on expiry the error says what was awaited.
pub(crate) async fn within<T>(
    timeout: Duration,
    what: impl FnOnce() -> String,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("timed out after {timeout:?} waiting for {}", what())),
    }
}

/// A change counter: writers bump it, waiters re-check their condition after every bump.
pub(crate) struct Changes(watch::Sender<u64>);

impl Changes {
    pub(crate) fn new() -> Self {
        Changes(watch::Sender::new(0))
    }

    pub(crate) fn bump(&self) {
        self.0.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Resolves with the first `Some` that `check` returns, re-checking after every bump.
    /// Subscribing before the first check means no bump can slip between a check and the wait.
    pub(crate) async fn until<T>(&self, mut check: impl FnMut() -> Option<T>) -> T {
        let mut rx = self.0.subscribe();
        loop {
            if let Some(v) = check() {
                return v;
            }
            if rx.changed().await.is_err() {
                // Cannot happen while `self` is borrowed (it owns the sender); never resolve.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Connection and ICE gathering state of one peer connection, as its callbacks report it.
pub(crate) struct PcWatch {
    pub(crate) state: watch::Sender<RTCPeerConnectionState>,
    pub(crate) gathering: watch::Sender<RTCIceGatheringState>,
}

impl PcWatch {
    fn new() -> Self {
        PcWatch {
            state: watch::Sender::new(RTCPeerConnectionState::New),
            gathering: watch::Sender::new(RTCIceGatheringState::New),
        }
    }

    /// Waits until the connection is connected; fails at once if it failed or closed.
    pub(crate) async fn connected(&self, name: &str) -> anyhow::Result<()> {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                )
            })
            .await
            .map(|s| *s)
            .map_err(|_| anyhow::anyhow!("{name} connection state is gone"))?;
        match state {
            RTCPeerConnectionState::Connected => Ok(()),
            other => Err(anyhow::anyhow!("{name} connection is {other}")),
        }
    }

    /// Waits until ICE gathering is complete.
    pub(crate) async fn gathered(&self) -> anyhow::Result<()> {
        let mut rx = self.gathering.subscribe();
        rx.wait_for(|s| *s == RTCIceGatheringState::Complete)
            .await
            .map(|_| ())
            .map_err(|_| anyhow::anyhow!("ICE gathering state is gone"))
    }
}

/// State of the chat data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelState {
    Connecting,
    Open,
    Closed,
}

/// Everything recorded about one simulated participant.
pub(crate) struct Shared {
    /// Own participant id (for logs and the outgoing stream tag).
    pub(crate) id: String,

    /// Every server message after `joined`, in arrival order.
    pub(crate) events: Mutex<Vec<ServerMessage>>,
    /// `Some(reason)` once the signaling socket is gone.
    pub(crate) signaling_closed: Mutex<Option<String>>,
    /// Bumped on a new event and when signaling closes.
    pub(crate) events_changed: Changes,

    pub(crate) chat: Mutex<Vec<ChatOut>>,
    pub(crate) chat_changed: Changes,
    pub(crate) chat_channel: watch::Sender<ChannelState>,

    /// Receive state per source participant id.
    pub(crate) received: Mutex<HashMap<String, SourceState>>,
    /// Every RTP packet per source participant id, in arrival order; `None` unless asked for.
    pub(crate) kept_rtp: Option<Mutex<HashMap<String, Vec<ReceivedRtp>>>>,
    /// RTCP sender reports per source participant id, in arrival order.
    pub(crate) sender_reports: Mutex<HashMap<String, Vec<ReceivedSenderReport>>>,
    pub(crate) remote_tracks: Mutex<Vec<RemoteTrack>>,
    /// Tracks the latest applied subscriber offer sends.
    pub(crate) offered: Mutex<Vec<OfferedTrack>>,
    /// Bumped on every received packet and remote-track change.
    pub(crate) media_changed: Changes,

    pub(crate) publisher: PcWatch,
    pub(crate) subscriber: PcWatch,
    /// Subscriber offers answered so far.
    pub(crate) negotiations: watch::Sender<u64>,

    pub(crate) sent: AtomicU64,
    pub(crate) send_errors: AtomicU64,

    /// Things that went wrong that no API call returned: failed renegotiations, undecodable
    /// frames, garbage on the chat channel. Tests can assert it stays empty.
    pub(crate) errors: Mutex<Vec<String>>,

    /// Background tasks to abort on teardown.
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set once teardown starts; callbacks then spawn nothing new.
    pub(crate) shutting_down: AtomicBool,
}

impl Shared {
    pub(crate) fn new(id: String, keep_rtp: bool) -> Self {
        Shared {
            id,
            events: Mutex::default(),
            signaling_closed: Mutex::default(),
            events_changed: Changes::new(),
            chat: Mutex::default(),
            chat_changed: Changes::new(),
            chat_channel: watch::Sender::new(ChannelState::Connecting),
            received: Mutex::default(),
            kept_rtp: keep_rtp.then(Mutex::default),
            sender_reports: Mutex::default(),
            remote_tracks: Mutex::default(),
            offered: Mutex::default(),
            media_changed: Changes::new(),
            publisher: PcWatch::new(),
            subscriber: PcWatch::new(),
            negotiations: watch::Sender::new(0),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            errors: Mutex::default(),
            tasks: Mutex::default(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Keeps `task` for teardown (or aborts it if teardown already started).
    pub(crate) fn adopt(&self, task: JoinHandle<()>) {
        if self.shutting_down.load(Ordering::Acquire) {
            task.abort();
            return;
        }
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Starts teardown and hands back every background task (aborted, not yet awaited).
    pub(crate) fn abort_tasks(&self) -> Vec<JoinHandle<()>> {
        self.shutting_down.store(true, Ordering::Release);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for t in &tasks {
            t.abort();
        }
        tasks
    }

    pub(crate) fn record_error(&self, error: String) {
        tracing::warn!(participant = %self.id, "sim: {error}");
        lock(&self.errors).push(error);
    }

    pub(crate) fn push_event(&self, msg: ServerMessage) {
        lock(&self.events).push(msg);
        self.events_changed.bump();
    }

    /// The first `error` the server sent, as a refusal.
    pub(crate) fn refusal(&self) -> Option<ServerRefused> {
        lock(&self.events).iter().find_map(|m| match m {
            ServerMessage::Error { code, message } => Some(ServerRefused { code: *code, message: message.clone() }),
            _ => None,
        })
    }

    pub(crate) fn set_signaling_closed(&self, reason: String) {
        tracing::debug!(participant = %self.id, "sim: signaling closed: {reason}");
        lock(&self.signaling_closed).get_or_insert(reason);
        self.events_changed.bump();
    }

    pub(crate) fn push_chat(&self, msg: ChatOut) {
        lock(&self.chat).push(msg);
        self.chat_changed.bump();
    }

    pub(crate) fn set_chat_channel(&self, state: ChannelState) {
        self.chat_channel.send_replace(state);
    }

    /// Records the tracks a newly applied subscriber offer sends.
    pub(crate) fn set_offered(&self, offered: Vec<OfferedTrack>) {
        // Lock order: `remote_tracks`, then `offered` (as in `track_opened`).
        let mut tracks = lock(&self.remote_tracks);
        for t in tracks.iter_mut() {
            t.offered = offered.iter().any(|(s, id)| *s == t.source && *id == t.track_id);
        }
        *lock(&self.offered) = offered;
        drop(tracks);
        self.media_changed.bump();
    }

    pub(crate) fn track_opened(&self, source: &str, track_id: &str) {
        {
            let mut tracks = lock(&self.remote_tracks);
            let offered = lock(&self.offered).iter().any(|(s, id)| s == source && id == track_id);
            tracks.push(RemoteTrack {
                source: source.to_owned(),
                track_id: track_id.to_owned(),
                offered,
                ended: false,
            });
        }
        lock(&self.received).entry(source.to_owned()).or_default().stats.track_id = track_id.to_owned();
        self.media_changed.bump();
    }

    pub(crate) fn track_ended(&self, source: &str, track_id: &str) {
        for t in lock(&self.remote_tracks).iter_mut() {
            if t.source == source && t.track_id == track_id {
                t.ended = true;
            }
        }
        self.media_changed.bump();
    }

    /// Keeps `packet` from `source`, if packets are kept (see `SimOptions::keep_rtp`). Called
    /// before `record_rtp`, whose bump then wakes anyone waiting for packets.
    pub(crate) fn keep_rtp(&self, source: &str, packet: &rtc::rtp::Packet) {
        if let Some(kept) = &self.kept_rtp {
            lock(kept).entry(source.to_owned()).or_default().push(ReceivedRtp {
                sequence_number: packet.header.sequence_number,
                timestamp: packet.header.timestamp,
                payload: packet.payload.clone(),
            });
        }
    }

    pub(crate) fn record_sender_report(&self, source: &str, report: ReceivedSenderReport) {
        lock(&self.sender_reports).entry(source.to_owned()).or_default().push(report);
        self.media_changed.bump();
    }

    /// Accounts one RTP payload from `source` (whose stream tag is `tag`).
    pub(crate) fn record_rtp(&self, source: &str, tag: u32, payload: &[u8]) {
        let (now, now_us) = (Instant::now(), payload::now_us());
        {
            let mut received = lock(&self.received);
            // Look up before inserting: the common case must not allocate a key per packet.
            if let Some(state) = received.get_mut(source) {
                state.record(payload, tag, now, now_us);
            } else {
                received.entry(source.to_owned()).or_default().record(payload, tag, now, now_us);
            }
        }
        self.media_changed.bump();
    }

    pub(crate) fn received_snapshot(&self) -> HashMap<String, StreamStats> {
        lock(&self.received).iter().map(|(k, v)| (k.clone(), v.stats.clone())).collect()
    }
}
