//! The media engine: worker threads that each own one UDP socket and the sessions placed on it.
//!
//! A session lives on exactly one worker, so forwarding inside a session never crosses
//! threads. Signaling tasks talk to a worker through its command queue.

pub mod admin;
pub mod conn;
pub mod demux;
pub mod forward;
pub mod peer;
pub mod sdp;
pub mod sender_reports;
pub mod udp;
mod worker;

use std::net::{IpAddr, SocketAddr, UdpSocket};

use tokio::sync::{mpsc, oneshot};
use veza_signaling::{ClientMessage, LeaveReason};

use crate::config::Config;
use crate::session::{HostStats, JoinError, JoinRequest};

/// What signaling asks of a worker.
pub enum Command {
    Join(JoinRequest, oneshot::Sender<Result<(), JoinError>>),
    Signal {
        participant: String,
        message: ClientMessage,
    },
    Leave {
        participant: String,
        reason: LeaveReason,
    },
    /// The participant's signaling resumed on a new socket.
    Resumed {
        participant: String,
    },
    Stats(oneshot::Sender<HostStats>),
    /// Tap the session's publishers into a recording (src/record); refused if the session has
    /// no participants here or is already recorded.
    StartRecording {
        session: String,
        sink: crate::record::RecordingSink,
        reply: oneshot::Sender<Result<(), crate::record::RecordError>>,
    },
    /// Detach the recording `recording` from the session (dropping its queue ends the writer).
    StopRecording {
        session: String,
        recording: String,
        reply: oneshot::Sender<bool>,
    },
    /// Session management by the Veza API (REST, src/http/sessions.rs).
    Admin(admin::AdminCommand),
}

/// A cheap, clonable way to reach one worker.
#[derive(Clone)]
pub struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    /// The worker socket's bound address.
    pub local: SocketAddr,
}

impl WorkerHandle {
    pub async fn join(&self, req: JoinRequest) -> Result<(), JoinError> {
        let (tx, rx) = oneshot::channel();
        let gone = || JoinError { code: veza_signaling::ErrorCode::NotReady, message: "media worker stopped".into() };
        self.commands.send(Command::Join(req, tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn signal(&self, participant: &str, message: ClientMessage) {
        let _ = self.commands.send(Command::Signal { participant: participant.to_owned(), message }).await;
    }

    pub async fn leave(&self, participant: &str, reason: LeaveReason) {
        let _ = self.commands.send(Command::Leave { participant: participant.to_owned(), reason }).await;
    }

    pub async fn resumed(&self, participant: &str) {
        let _ = self.commands.send(Command::Resumed { participant: participant.to_owned() }).await;
    }

    pub async fn start_recording(
        &self,
        session: &str,
        sink: crate::record::RecordingSink,
    ) -> Result<(), crate::record::RecordError> {
        let (reply, rx) = oneshot::channel();
        let command = Command::StartRecording { session: session.to_owned(), sink, reply };
        self.commands.send(command).await.map_err(|_| crate::record::RecordError::WorkerGone)?;
        rx.await.map_err(|_| crate::record::RecordError::WorkerGone)?
    }

    /// Whether the session was being recorded as `recording` (it is not any more).
    pub async fn stop_recording(&self, session: &str, recording: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        let command = Command::StopRecording { session: session.to_owned(), recording: recording.to_owned(), reply };
        if self.commands.send(command).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    pub async fn stats(&self) -> Option<HostStats> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Stats(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// All media workers of this process.
pub struct MediaEngine {
    workers: Vec<WorkerHandle>,
}

/// Commands queued per worker before signaling tasks wait.
const COMMAND_QUEUE: usize = 1024;

impl MediaEngine {
    /// Binds every worker's socket (so a busy port fails start-up) and starts the threads.
    pub fn start(config: &Config) -> std::io::Result<MediaEngine> {
        let mut workers = Vec::new();
        let quota = std::sync::Arc::new(crate::session::SessionQuota::new(config.sessions.max_sessions));
        for n in 0..config.worker_count() {
            let port = if config.media.udp_port == 0 { 0 } else { config.media.udp_port + n as u16 };
            let socket = UdpSocket::bind(SocketAddr::new(config.media.bind_ip, port))?;
            worker::tune_socket(&socket, config.media.socket_buffer_bytes);
            let local = socket.local_addr()?;
            let announce = announce_addresses(config, local);
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            worker::spawn(n, config.clone(), socket, announce, rx, quota.clone())?;
            tracing::info!(worker = n, %local, "media worker listening");
            workers.push(WorkerHandle { commands: tx, local });
        }
        Ok(MediaEngine { workers })
    }

    /// The worker that hosts `session`: a stable hash, so every join of a session lands on
    /// the same worker without any shared placement state to race on.
    pub fn worker_for(&self, session: &str) -> &WorkerHandle {
        // FNV-1a: stable across runs and processes, unlike the std hasher.
        let hash =
            session.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        &self.workers[(hash % self.workers.len() as u64) as usize]
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// Totals over every worker.
    pub async fn stats(&self) -> HostStats {
        let mut total = HostStats::default();
        for w in &self.workers {
            if let Some(s) = w.stats().await {
                total.add(&s);
            }
        }
        total
    }
}

/// The host candidates to announce: configured public addresses, else the bound address,
/// else (bound to a wildcard) every interface address, loopback last.
fn announce_addresses(config: &Config, local: SocketAddr) -> Vec<SocketAddr> {
    let ips: Vec<IpAddr> = if !config.media.announce_ips.is_empty() {
        config.media.announce_ips.clone()
    } else if !local.ip().is_unspecified() {
        vec![local.ip()]
    } else {
        let mut ips = worker::interface_ipv4s();
        ips.sort_by_key(|ip| ip.is_loopback());
        ips
    };
    ips.into_iter().map(|ip| SocketAddr::new(ip, local.port())).collect()
}
