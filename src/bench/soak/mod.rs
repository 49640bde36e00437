//! `veza-sfu soak`: a long run of churn against a server child process, watching it for leaks.
//!
//! Steady musicians stay the whole run; churning ones join and leave (by `leave`, by closing, or
//! by vanishing) every few seconds; everyone publishes real Opus and chats; session 0 is
//! recorded half the time over the REST API and each finished recording exported. Meanwhile the
//! server's RSS, open file descriptors, OS threads and tokio tasks are sampled with its live
//! participant count, and each resource gets a verdict (see [`verdict`]).

mod report;
mod verdict;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use super::child::Server;
use super::prom;
use crate::sim::{SimOptions, SimParticipant};
use crate::telemetry::ALIVE_TASKS;
pub use report::{SoakReport, SoakSample};
use verdict::{Outcome, Point, Threshold};
use veza_signaling::ServerMessage;

#[derive(Debug, Clone, Args, Serialize)]
pub struct SoakArgs {
    /// Length of the run, minutes (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Seconds between samples of the server process.
    #[arg(long, default_value_t = 10.0)]
    pub sample_every: f64,
    /// Seconds at the start left out of the verdicts: allocator pools, lazily built state and
    /// the first recording settle there.
    #[arg(long, default_value_t = 120.0)]
    pub warmup: f64,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 2)]
    pub sessions: usize,
    /// Musicians per session who stay the whole run (publishing and chatting).
    #[arg(long, default_value_t = 3)]
    pub steady: usize,
    /// Churning musicians per session at most at once.
    #[arg(long, default_value_t = 3)]
    pub churners: usize,
    /// Seconds between churn events: one musician joins or leaves a random session.
    #[arg(long, default_value_t = 3.0)]
    pub churn_every: f64,
    /// Seconds between chat messages (from a random musician).
    #[arg(long, default_value_t = 4.0)]
    pub chat_every: f64,
    /// Seconds between starting and stopping a recording of session 0 over REST (so it records
    /// half the time); each finished recording is exported to a FLAC mix. 0: no recording.
    #[arg(long, default_value_t = 60.0)]
    pub record_every: f64,
    /// Rows of the printed table (samples spread evenly over the run).
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// KEY=VALUE set in the server child's environment only, repeatable: a heap profiler's
    /// preload (see README, Soak) or an allocator setting under test.
    #[arg(long = "server-env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub server_env: Vec<(String, String)>,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl SoakArgs {
    fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("--minutes", self.minutes),
            ("--sample-every", self.sample_every),
            ("--churn-every", self.churn_every),
            ("--chat-every", self.chat_every),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number of seconds/minutes, got {v}");
            }
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0 && self.warmup < self.minutes * 60.0) {
            bail!(
                "--warmup must be at least 0 and shorter than the run ({} s), got {}",
                self.minutes * 60.0,
                self.warmup
            );
        }
        if !(self.record_every.is_finite() && self.record_every >= 0.0) {
            bail!("--record-every must be 0 (off) or a number of seconds, got {}", self.record_every);
        }
        if self.sessions == 0 || self.steady == 0 {
            bail!("--sessions and --steady must be at least 1 (session 0's steady musicians keep it recordable)");
        }
        Ok(())
    }
}

/// Resources judged, their unit and what counts as growth. Chosen to sit above what a sample can
/// catch in flight (a recording's files open half the time, one per track; blocking-pool threads
/// that live 10 s after use; the tasks and socket of a join in progress), and well below what
/// leaking one object per leave adds over a 30-minute run (~170 between the fifths at the
/// default churn). RSS: 4 MiB (or 5 %) is ~25 KB per leave.
const RESOURCES: [(&str, &str, Threshold); 4] = [
    ("rss", "bytes", Threshold { absolute: 4.0 * 1024.0 * 1024.0, relative: 0.05 }),
    ("open_fds", "fds", Threshold { absolute: 4.0, relative: 0.0 }),
    ("threads", "threads", Threshold { absolute: 4.0, relative: 0.0 }),
    ("alive_tasks", "tasks", Threshold { absolute: 6.0, relative: 0.05 }),
];

/// How long an export of a finished recording may take before it counts as failed.
const EXPORT_WAIT: Duration = Duration::from_secs(300);
/// How often an export job's state is asked for (the REST API has no push).
const EXPORT_POLL: Duration = Duration::from_millis(500);
/// Most error messages kept for the report (the counters keep counting).
const MAX_ERRORS: usize = 50;

/// What the generator did, counted as it happens.
#[derive(Default)]
struct Activity {
    live: AtomicUsize,
    joins: AtomicU64,
    leaves: AtomicU64,
    join_failures: AtomicU64,
    chats: AtomicU64,
    chat_failures: AtomicU64,
    recordings: AtomicU64,
    exports_done: AtomicU64,
    exports_failed: AtomicU64,
    /// Problems the musicians saw: `error` messages from the server, failed renegotiations.
    client_errors: AtomicU64,
    errors: Mutex<Vec<String>>,
    error_count: AtomicU64,
}

impl Activity {
    /// Counts what went wrong for `sim` while it was joined (call once, as it goes).
    fn collect_trouble(&self, sim: &SimParticipant) {
        let refused = sim.events().into_iter().filter_map(|m| match m {
            ServerMessage::Error { code, message } => Some(format!("server error {code:?}: {message}")),
            _ => None,
        });
        for trouble in sim.errors().into_iter().chain(refused) {
            self.client_errors.fetch_add(1, Ordering::Relaxed);
            self.error(format!("{}: {trouble}", sim.id()));
        }
    }

    fn error(&self, what: String) {
        self.error_count.fetch_add(1, Ordering::Relaxed);
        eprintln!("soak: {what}");
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < MAX_ERRORS {
            errors.push(what);
        }
    }
}

/// The musicians of one session.
#[derive(Default)]
struct Band {
    steady: Vec<SimParticipant>,
    churners: Vec<SimParticipant>,
}

pub async fn run(args: &SoakArgs) -> anyhow::Result<SoakReport> {
    args.validate()?;
    // A churner who vanished holds its place until ICE gives up on it and its reconnect
    // grace runs out; room for as many of those as can churn keeps joins from being refused.
    let capacity = args.steady + 2 * args.churners;
    let server = Arc::new(Server::start(capacity, None, &args.server_env).await?);
    let activity = Arc::new(Activity::default());
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.minutes * 60.0);

    let mut bands: Vec<Band> = (0..args.sessions).map(|_| Band::default()).collect();
    let mut next_user = 0;
    for (s, band) in bands.iter_mut().enumerate() {
        for _ in 0..args.steady {
            let sim = join(&server, s, &mut next_user).await.context("joining a steady musician")?;
            band.steady.push(sim);
            activity.live.fetch_add(1, Ordering::Relaxed);
        }
    }

    let driver = tokio::spawn(drive(server.clone(), args.clone(), bands, next_user, activity.clone(), until));
    let mut samples = Vec::new();
    eprintln!("{}", report::HEADER);
    let mut ticks = interval_at(started, Duration::from_secs_f64(args.sample_every));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let at = ticks.tick().await;
        if at > until {
            break;
        }
        let sample = take_sample(&server, started, &activity).await?;
        // Progress on stderr (stdout carries the report): a long run can be watched.
        eprintln!("{}", sample.row());
        samples.push(sample);
    }
    let bands = driver.await.context("the churn driver")?;
    let subscriber_sdp = largest_subscriber_offer(bands.iter().flat_map(|b| &b.steady));
    for band in bands {
        for sim in band.steady.into_iter().chain(band.churners) {
            activity.collect_trouble(&sim);
            sim.close().await;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    let verdicts = verdicts(args, &samples);
    Ok(SoakReport { args: args.clone(), seconds, activity: totals(&activity), subscriber_sdp, samples, verdicts })
}

/// The largest subscriber offer a steady musician got last: an offer keeps one m-section per
/// transceiver the server ever added, so this shows whether churn makes it grow.
fn largest_subscriber_offer<'a>(steady: impl Iterator<Item = &'a SimParticipant>) -> report::SubscriberSdp {
    let mut largest = report::SubscriberSdp::default();
    for sim in steady {
        let last = sim.events().into_iter().rev().find_map(|m| match m {
            ServerMessage::Offer { sdp } => Some(sdp),
            _ => None,
        });
        if let Some(sdp) = last
            && sdp.len() as u64 > largest.bytes
        {
            largest = report::SubscriberSdp {
                bytes: sdp.len() as u64,
                m_sections: sdp.lines().filter(|l| l.starts_with("m=")).count() as u64,
                sending_tracks: crate::sim::stats::offered_tracks(&sdp).len() as u64,
            };
        }
    }
    largest
}

/// Every resource judged over the samples after warm-up.
fn verdicts(args: &SoakArgs, samples: &[SoakSample]) -> Vec<verdict::Verdict> {
    let measured: Vec<&SoakSample> = samples.iter().filter(|s| s.t_seconds >= args.warmup).collect();
    RESOURCES
        .iter()
        .map(|&(name, unit, threshold)| {
            let points: Vec<Point> = measured
                .iter()
                .map(|s| Point { t: s.t_seconds, participants: s.participants as f64, value: s.resource(name) })
                .collect();
            verdict::judge(name, unit, &points, threshold)
        })
        .collect()
}

/// One reading of the server process and its gauges.
async fn take_sample(server: &Server, started: Instant, activity: &Activity) -> anyhow::Result<SoakSample> {
    let text = server.metrics().await.context("scraping /metrics")?;
    Ok(SoakSample {
        t_seconds: started.elapsed().as_secs_f64(),
        rss_bytes: server.rss_bytes()?,
        open_fds: server.open_fds()?,
        threads: server.threads()?,
        alive_tasks: prom::sum(&text, ALIVE_TASKS) as u64,
        participants: prom::sum(&text, "veza_participants") as u64,
        peer_connections: prom::sum(&text, "veza_peer_connections") as u64,
        sessions: prom::sum(&text, "veza_sessions") as u64,
        tracks: prom::sum(&text, "veza_tracks") as u64,
        generator_participants: activity.live.load(Ordering::Relaxed) as u64,
    })
}

fn totals(a: &Activity) -> report::Totals {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    report::Totals {
        joins: get(&a.joins),
        leaves: get(&a.leaves),
        join_failures: get(&a.join_failures),
        chats: get(&a.chats),
        chat_failures: get(&a.chat_failures),
        recordings: get(&a.recordings),
        exports_done: get(&a.exports_done),
        exports_failed: get(&a.exports_failed),
        client_errors: get(&a.client_errors),
        errors: get(&a.error_count),
        first_errors: a.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    }
}

/// Joins one publishing musician (a real Opus tone, a pitch of its own) to session `s`.
async fn join(server: &Server, s: usize, next_user: &mut usize) -> anyhow::Result<SimParticipant> {
    let user = format!("soak-{}", *next_user);
    let hz = 110.0 + 55.0 * (*next_user % 16) as f32;
    *next_user += 1;
    let token = server.token(&session_id(s), &user, true)?;
    let sim = SimParticipant::join(&server.ws_url, &token, SimOptions { tone_hz: Some(hz), ..SimOptions::default() })
        .await
        .with_context(|| format!("joining {user} to {}", session_id(s)))?;
    sim.start_publishing();
    Ok(sim)
}

fn session_id(s: usize) -> String {
    format!("soak-{s}")
}

/// Churn, chat and recording until `until`; hands the musicians back for closing.
async fn drive(
    server: Arc<Server>,
    args: SoakArgs,
    mut bands: Vec<Band>,
    mut next_user: usize,
    activity: Arc<Activity>,
    until: Instant,
) -> Vec<Band> {
    let every = |s: f64| {
        let mut i = interval_at(Instant::now() + Duration::from_secs_f64(s), Duration::from_secs_f64(s));
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    };
    let mut churn = every(args.churn_every);
    let mut chat = every(args.chat_every);
    let recording_on = args.record_every > 0.0;
    let mut record = every(if recording_on { args.record_every } else { 3600.0 });
    let mut recording: Option<String> = None;
    let mut exports = JoinSet::new();
    let end = tokio::time::sleep_until(until);
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = churn.tick() => churn_once(&server, &args, &mut bands, &mut next_user, &activity).await,
            _ = chat.tick() => chat_once(&bands, &activity).await,
            _ = record.tick(), if recording_on => {
                toggle_recording(&server, &mut recording, &mut exports, &activity).await;
            }
        }
    }
    if recording.is_some() {
        toggle_recording(&server, &mut recording, &mut exports, &activity).await;
    }
    while exports.join_next().await.is_some() {}
    bands
}

/// One musician joins or leaves a random session; leaving takes each of the three ways out.
async fn churn_once(server: &Server, args: &SoakArgs, bands: &mut [Band], next_user: &mut usize, activity: &Activity) {
    if args.churners == 0 {
        return;
    }
    let s = rand::random_range(0..bands.len());
    let band = &mut bands[s];
    let n = band.churners.len();
    if n == 0 || (n < args.churners && rand::random_bool(0.5)) {
        activity.joins.fetch_add(1, Ordering::Relaxed);
        match join(server, s, next_user).await {
            Ok(sim) => {
                band.churners.push(sim);
                activity.live.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                activity.join_failures.fetch_add(1, Ordering::Relaxed);
                activity.error(format!("{e:#}"));
            }
        }
        return;
    }
    let sim = band.churners.swap_remove(rand::random_range(0..n));
    activity.collect_trouble(&sim);
    activity.live.fetch_sub(1, Ordering::Relaxed);
    activity.leaves.fetch_add(1, Ordering::Relaxed);
    match rand::random_range(0..3) {
        0 => {
            let id = sim.id().to_owned();
            if let Err(e) = sim.leave().await {
                activity.error(format!("{id} leaving: {e:#}"));
            }
        }
        1 => sim.close().await,
        _ => sim.vanish().await,
    }
}

/// A random musician says something.
async fn chat_once(bands: &[Band], activity: &Activity) {
    let all: Vec<&SimParticipant> = bands.iter().flat_map(|b| b.steady.iter().chain(&b.churners)).collect();
    if all.is_empty() {
        return;
    }
    let sim = all[rand::random_range(0..all.len())];
    let n = activity.chats.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = sim.send_chat(&format!("soak message {n} from {}", sim.id())).await {
        activity.chat_failures.fetch_add(1, Ordering::Relaxed);
        activity.error(format!("chat from {}: {e:#}", sim.id()));
    }
}

/// Starts recording session 0, or stops the running recording and exports it in the background.
async fn toggle_recording(
    server: &Arc<Server>,
    recording: &mut Option<String>,
    exports: &mut JoinSet<()>,
    activity: &Arc<Activity>,
) {
    let session = session_id(0);
    match recording.take() {
        None => match rest(server, reqwest::Method::POST, &format!("/v1/sessions/{session}/recordings"), None).await {
            Ok((201, body)) => match body["id"].as_str() {
                Some(id) => {
                    activity.recordings.fetch_add(1, Ordering::Relaxed);
                    *recording = Some(id.to_owned());
                }
                None => activity.error(format!("starting a recording: no id in {body}")),
            },
            Ok((status, body)) => activity.error(format!("starting a recording: {status} {body}")),
            Err(e) => activity.error(format!("starting a recording: {e:#}")),
        },
        Some(rid) => {
            let path = format!("/v1/sessions/{session}/recordings/{rid}");
            match rest(server, reqwest::Method::POST, &format!("{path}/stop"), None).await {
                Ok((200, _)) => {
                    let (server, activity) = (server.clone(), activity.clone());
                    exports.spawn(async move {
                        match export(&server, &path).await {
                            Ok(()) => activity.exports_done.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                activity.error(format!("exporting {path}: {e:#}"));
                                activity.exports_failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    });
                }
                Ok((status, body)) => activity.error(format!("stopping {path}: {status} {body}")),
                Err(e) => activity.error(format!("stopping {path}: {e:#}")),
            }
        }
    }
}

/// Exports a stopped recording to a FLAC mix and waits for the job to finish.
async fn export(server: &Server, recording: &str) -> anyhow::Result<()> {
    let body = json!({"format": "flac", "layout": "mix", "bit_depth": 16});
    let (status, job) = rest(server, reqwest::Method::POST, &format!("{recording}/exports"), Some(body)).await?;
    if status != 202 {
        bail!("{status} {job}");
    }
    let id = job["id"].as_str().context("export job without id")?;
    let deadline = Instant::now() + EXPORT_WAIT;
    loop {
        let (status, job) = rest(server, reqwest::Method::GET, &format!("{recording}/exports/{id}"), None).await?;
        match (status, job["state"].as_str()) {
            (200, Some("done")) => return Ok(()),
            (200, Some("failed")) => bail!("export failed: {job}"),
            (200, _) if Instant::now() < deadline => tokio::time::sleep(EXPORT_POLL).await,
            _ => bail!("{status} {job}"),
        }
    }
}

/// One REST call with a fresh service token; the status and the JSON body (Null if none).
async fn rest(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let mut request = server.http().request(method, server.url(path)).bearer_auth(server.admin_token(REST_TOKEN_TTL)?);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Lifetime of the service token minted for each REST call.
const REST_TOKEN_TTL: Duration = Duration::from_secs(300);

impl SoakReport {
    /// True when some resource grew: the run failed its purpose.
    pub fn growing(&self) -> bool {
        self.verdicts.iter().any(|v| v.outcome == Outcome::Growing)
    }
}
