//! Live recording: while a session is recorded, every published track's packets also go to a
//! writer thread (never blocking forwarding) that keeps one Ogg Opus file per track and a
//! timeline under `data_dir/recordings/SESSION/RECORDING/`.
//!
//! [`Recordings`] starts and stops recordings: it creates the directory and the writer thread,
//! then asks the session's media worker to tap its publishers ([`tap`]). Stopping detaches the
//! tap; the writer sees its queue close, finishes the files and exits.

pub mod ogg;
pub mod tap;
pub mod timeline;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::Serialize;
use veza_signaling::ErrorCode;

pub use tap::{RecordingSink, SessionRecording};
pub use timeline::{RecordingState, TIMELINE_FILE, Timeline};

use crate::auth::valid_session_id;
use crate::media::MediaEngine;

/// Packets queued between the media workers and one recording's writer: at 100 packets/s per
/// track, 16 musicians fill it in 5 s, far longer than a write ever stalls.
pub const QUEUE_PACKETS: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("session {0:?} has no participants on this server")]
    SessionNotFound(String),
    #[error("session is already being recorded (recording {0})")]
    AlreadyRecording(String),
    #[error("recording {0:?} not found")]
    NotFound(String),
    #[error("recording {0} is still running: stop it first")]
    StillRecording(String),
    #[error("the media worker hosting the session stopped")]
    WorkerGone,
    #[error("recording storage: {0}")]
    Io(#[from] std::io::Error),
}

impl RecordError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RecordError::SessionNotFound(_) => ErrorCode::SessionNotFound,
            RecordError::AlreadyRecording(_) | RecordError::StillRecording(_) => ErrorCode::RecordingActive,
            RecordError::NotFound(_) => ErrorCode::RecordingNotFound,
            RecordError::WorkerGone => ErrorCode::NotReady,
            RecordError::Io(_) => ErrorCode::Internal,
        }
    }
}

/// A recording as the REST API and `veza-sfu export` show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordingInfo {
    pub id: String,
    pub session: String,
    pub state: RecordingState,
    pub started_by: String,
    pub started_at: String,
    /// Seconds recorded so far (running) or in total (stopped).
    pub duration_s: f64,
    pub dropped_packets: u64,
    pub tracks: Vec<TrackSummary>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrackSummary {
    pub participant_id: String,
    pub name: String,
    pub file: String,
    pub start_offset_s: f64,
    pub duration_s: f64,
    pub lost_packets: u64,
    pub dropped_packets: u64,
}

impl RecordingInfo {
    pub fn from_timeline(t: &Timeline) -> RecordingInfo {
        let end = t.stopped_at_unix_ms.unwrap_or_else(|| writer::unix_ms(SystemTime::now()));
        RecordingInfo {
            id: t.recording_id.clone(),
            session: t.session.clone(),
            state: t.state,
            started_by: t.started_by.clone(),
            started_at: t.started_at.clone(),
            duration_s: ((end - t.started_at_unix_ms) / 1000.0).max(0.0),
            dropped_packets: t.dropped_packets,
            tracks: t
                .tracks
                .iter()
                .map(|k| TrackSummary {
                    participant_id: k.participant_id.clone(),
                    name: k.name.clone(),
                    file: k.file.clone(),
                    start_offset_s: k.start_offset_samples as f64 / 48_000.0,
                    duration_s: k.samples as f64 / 48_000.0,
                    lost_packets: k.lost_packets,
                    dropped_packets: k.dropped_packets,
                })
                .collect(),
        }
    }
}

struct Active {
    id: String,
    status: writer::Status,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Active {
    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

/// Every recording of this server: starts, stops, lists; finds their directories.
pub struct Recordings {
    root: PathBuf,
    /// The live (or just finished) recording of each session.
    active: Mutex<HashMap<String, Active>>,
}

impl Recordings {
    pub fn new(data_dir: &Path) -> Recordings {
        Recordings { root: data_dir.join("recordings"), active: Mutex::new(HashMap::new()) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a recording, if both ids are plain and it exists.
    pub fn dir(&self, session: &str, id: &str) -> Result<PathBuf, RecordError> {
        if !valid_session_id(session) || !valid_session_id(id) {
            return Err(RecordError::NotFound(id.to_owned()));
        }
        let dir = self.root.join(session).join(id);
        if dir.join(TIMELINE_FILE).is_file() { Ok(dir) } else { Err(RecordError::NotFound(id.to_owned())) }
    }

    /// Starts recording `session`, which must have participants on this server.
    pub async fn start(
        &self,
        media: &MediaEngine,
        session: &str,
        started_by: &str,
    ) -> Result<RecordingInfo, RecordError> {
        if !valid_session_id(session) {
            return Err(RecordError::SessionNotFound(session.to_owned()));
        }
        let id = new_recording_id();
        let dir = self.root.join(session).join(&id);
        let setup = writer::WriterSetup {
            dir: dir.clone(),
            session: session.to_owned(),
            recording_id: id.clone(),
            started_by: started_by.to_owned(),
            started_at: SystemTime::now(),
            started_instant: Instant::now(),
        };
        let status = Arc::new(Mutex::new(writer::initial_timeline(&setup)));
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_PACKETS);
        {
            let mut active = lock(&self.active);
            if let Some(a) = active.get(session)
                && a.running()
            {
                return Err(RecordError::AlreadyRecording(a.id.clone()));
            }
            std::fs::create_dir_all(&dir)?;
            // On disk before anyone hears of the recording (the writer rewrites it as it goes).
            lock(&status).store(&dir)?;
            let thread_status = status.clone();
            let thread = std::thread::Builder::new()
                .name(format!("veza-rec-{id}"))
                .spawn(move || writer::run(setup, rx, thread_status))?;
            active.insert(session.to_owned(), Active { id: id.clone(), status: status.clone(), thread: Some(thread) });
        }
        let sink = RecordingSink { id: id.clone(), tx };
        let attached = media.worker_for(session).start_recording(session, sink).await;
        if let Err(e) = attached {
            // The sink went back with the refusal: the writer sees its queue closed and ends.
            let finished = lock(&self.active).remove(session);
            if let Some(Active { thread: Some(t), .. }) = finished {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::info!(%session, recording = %id, by = %started_by, "recording started");
        let info = lock(&status).clone();
        Ok(RecordingInfo::from_timeline(&info))
    }

    /// Stops a recording (a no-op for one already stopped) and waits until its files are final.
    pub async fn stop(&self, media: &MediaEngine, session: &str, id: &str) -> Result<RecordingInfo, RecordError> {
        let dir = self.dir(session, id)?;
        let is_active = lock(&self.active).get(session).is_some_and(|a| a.id == id);
        if is_active {
            media.worker_for(session).stop_recording(session, id).await;
            let thread = lock(&self.active).get_mut(session).and_then(|a| a.thread.take());
            if let Some(t) = thread {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            tracing::info!(%session, recording = %id, "recording stopped");
        }
        Ok(RecordingInfo::from_timeline(&Timeline::load(&dir)?))
    }

    /// The running recording of a session, if any.
    pub fn current(&self, session: &str) -> Option<String> {
        lock(&self.active).get(session).filter(|a| a.running()).map(|a| a.id.clone())
    }

    /// One recording.
    pub fn info(&self, session: &str, id: &str) -> Result<RecordingInfo, RecordError> {
        if let Some(a) = lock(&self.active).get(session).filter(|a| a.id == id && a.running()) {
            return Ok(RecordingInfo::from_timeline(&lock(&a.status)));
        }
        let dir = self.dir(session, id)?;
        Ok(RecordingInfo::from_timeline(&Timeline::load(&dir)?))
    }

    /// Every recording of a session on this server's disk, oldest first.
    pub fn list(&self, session: &str) -> Vec<RecordingInfo> {
        if !valid_session_id(session) {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(self.root.join(session)) else { return Vec::new() };
        let mut out: Vec<RecordingInfo> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|id| self.info(session, &id).ok())
            .collect();
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        out
    }
}

fn new_recording_id() -> String {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string().replace([':', '-'], "");
    let suffix: String = rand::rng().sample_iter(&Alphanumeric).take(6).map(char::from).collect();
    format!("rec-{}-{suffix}", stamp.trim_end_matches('Z'))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
