//! Export jobs for the REST API: each runs on its own thread (one job at a time; its tracks in
//! parallel), reports progress, and leaves `job.json` beside its files so a finished job can
//! still be looked up after a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

use super::{ExportOptions, ExportedFile};

const JOB_FILE: &str = "job.json";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
}

/// A job as `GET .../exports/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobView {
    pub id: String,
    pub session: String,
    pub recording_id: String,
    pub options: ExportOptions,
    pub state: JobState,
    /// 0..=1
    pub progress: f64,
    pub files: Vec<ExportedFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds the export took, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
}

pub struct Job {
    view: Mutex<JobView>,
    progress: AtomicU32,
    out: PathBuf,
}

impl Job {
    pub fn view(&self) -> JobView {
        let mut v = lock(&self.view).clone();
        if v.state == JobState::Running {
            v.progress = f64::from(f32::from_bits(self.progress.load(Ordering::Relaxed)));
        }
        v
    }

    /// The path of one of the job's files, once it is done.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        let v = lock(&self.view);
        (v.state == JobState::Done && v.files.iter().any(|f| f.name == name)).then(|| self.out.join(name))
    }
}

/// Every export job of this server process.
#[derive(Default)]
pub struct Exports {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// Held by the running job: exports use every core, so they run one at a time.
    running: Arc<Mutex<()>>,
    /// Where `export_finished` goes (set once at start-up; src/webhook.rs).
    pub webhooks: std::sync::OnceLock<crate::webhook::Webhooks>,
}

impl Exports {
    /// Queues an export of the recording in `dir`; answers at once.
    pub fn submit(&self, session: &str, recording: &str, dir: PathBuf, options: ExportOptions) -> Arc<Job> {
        let id = format!("exp-{}", rand::rng().sample_iter(&Alphanumeric).take(10).map(char::from).collect::<String>());
        let out = dir.join("exports").join(&id);
        let job = Arc::new(Job {
            view: Mutex::new(JobView {
                id: id.clone(),
                session: session.to_owned(),
                recording_id: recording.to_owned(),
                options,
                state: JobState::Queued,
                progress: 0.0,
                files: Vec::new(),
                error: None,
                elapsed_s: None,
            }),
            progress: AtomicU32::new(0f32.to_bits()),
            out,
        });
        lock(&self.jobs).insert(id.clone(), job.clone());
        let running = self.running.clone();
        let worker = job.clone();
        let webhooks = self.webhooks.get().cloned().unwrap_or_default();
        let spawned = std::thread::Builder::new().name(format!("veza-{id}")).spawn(move || {
            let _turn = lock(&running);
            run(&worker, &dir, &options);
            let v = worker.view();
            webhooks.emit(crate::webhook::Event {
                recording_id: Some(v.recording_id.clone()),
                export_id: Some(v.id.clone()),
                detail: serde_json::to_value(&v).ok(),
                ..crate::webhook::Event::new(crate::webhook::EventKind::ExportFinished, &v.session)
            });
        });
        if let Err(e) = spawned {
            let mut v = lock(&job.view);
            v.state = JobState::Failed;
            v.error = Some(format!("cannot start the export thread: {e}"));
        }
        job
    }

    /// A job of this recording, live or finished earlier (from its `job.json`).
    pub fn get(&self, session: &str, recording: &str, recording_dir: &Path, id: &str) -> Option<Arc<Job>> {
        if let Some(job) = lock(&self.jobs).get(id).cloned() {
            let v = job.view();
            return (v.session == session && v.recording_id == recording).then_some(job);
        }
        if !crate::auth::valid_session_id(id) {
            return None;
        }
        let out = recording_dir.join("exports").join(id);
        let view: JobView = serde_json::from_slice(&std::fs::read(out.join(JOB_FILE)).ok()?).ok()?;
        Some(Arc::new(Job { progress: AtomicU32::new(0), view: Mutex::new(view), out }))
    }
}

fn run(job: &Job, dir: &Path, options: &ExportOptions) {
    lock(&job.view).state = JobState::Running;
    let running = metrics::gauge!(crate::telemetry::EXPORT_JOBS_RUNNING);
    running.increment(1.0);
    let started = Instant::now();
    let progress = |p: f64| job.progress.store((p as f32).to_bits(), Ordering::Relaxed);
    let result = super::export(dir, &job.out, options, &progress);
    running.decrement(1.0);
    let outcome = if result.is_ok() { "done" } else { "failed" };
    metrics::counter!(crate::telemetry::EXPORT_JOBS, "outcome" => outcome).increment(1);
    let mut v = lock(&job.view);
    v.elapsed_s = Some(started.elapsed().as_secs_f64());
    match result {
        Ok(files) => {
            v.state = JobState::Done;
            v.progress = 1.0;
            v.files = files;
            tracing::info!(job = %v.id, recording = %v.recording_id, elapsed_s = v.elapsed_s, "export done");
        }
        Err(e) => {
            v.state = JobState::Failed;
            v.error = Some(e.to_string());
            tracing::warn!(job = %v.id, recording = %v.recording_id, "export failed: {e}");
        }
    }
    if std::fs::create_dir_all(&job.out).is_ok()
        && let Ok(json) = serde_json::to_vec_pretty(&*v)
    {
        let _ = std::fs::write(job.out.join(JOB_FILE), json);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
