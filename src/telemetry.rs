//! Prometheus metrics: the process-wide recorder and what each media worker publishes.
//!
//! Workers count in plain integers on their own thread (no atomics on the hot path) and
//! publish the totals about once a second; only the forwarding-latency histogram is recorded
//! as it happens, once per loop turn that forwarded anything.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::session::HostStats;

pub const FORWARD_LATENCY: &str = "veza_forward_latency_seconds";
pub const RTP_FORWARDED: &str = "veza_rtp_packets_forwarded_total";
pub const RTP_RECEIVED: &str = "veza_rtp_packets_received_total";
pub const RECORDING_BYTES: &str = "veza_recording_bytes_total";
pub const EXPORT_JOBS: &str = "veza_export_jobs_total";
pub const EXPORT_JOBS_RUNNING: &str = "veza_export_jobs_running";
pub const ALIVE_TASKS: &str = "veza_runtime_alive_tasks";

/// Bucket bounds of the forwarding latency histogram, in seconds (5 µs .. 10 ms).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_02, 0.000_03, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_5,
    0.000_75, 0.001, 0.002, 0.005, 0.01,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Histogram samples (one per forwarding batch, per RTCP report) are queued until upkeep folds
/// them into buckets; rendering `/metrics` does it too, but a server nobody scrapes would grow
/// without bound. A plain thread, so it runs whichever runtime (or none) installed the recorder.
fn spawn_upkeep(handle: PrometheusHandle) {
    let upkeep = move || {
        loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        }
    };
    if let Err(e) = std::thread::Builder::new().name("veza-metrics-upkeep".into()).spawn(upkeep) {
        tracing::warn!("metrics upkeep thread: {e}; histograms are folded only when /metrics is scraped");
    }
}

/// Installs the recorder once per process and returns the handle `/metrics` renders from.
/// `None` if another recorder was installed first (metrics then go there).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(FORWARD_LATENCY.to_owned()), LATENCY_BUCKETS)
                .ok()?;
            for (name, buckets) in crate::conn_stats::BUCKETS {
                builder = builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets).ok()?;
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            spawn_upkeep(handle.clone());
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_histogram!(
        FORWARD_LATENCY,
        metrics::Unit::Seconds,
        "per worker loop turn that forwarded audio: first datagram read to last datagram sent"
    );
    metrics::describe_counter!(RTP_FORWARDED, "RTP packets written to subscriber connections");
    metrics::describe_counter!(RTP_RECEIVED, "RTP packets received from publishers");
    metrics::describe_counter!(RECORDING_BYTES, metrics::Unit::Bytes, "Ogg Opus bytes written by live recordings");
    metrics::describe_counter!(EXPORT_JOBS, "export jobs finished, by outcome (done, failed)");
    metrics::describe_gauge!(EXPORT_JOBS_RUNNING, "export jobs running now");
    metrics::describe_gauge!(ALIVE_TASKS, "tokio tasks alive, per runtime (main, or a media worker's)");
    crate::conn_stats::describe();
}

/// One worker's metric handles, labelled with its index (a handful of values: low cardinality).
pub struct WorkerMetrics {
    pub forward_latency: Histogram,
    /// Datagrams the kernel refused to send (socket buffer full, unreachable): counted as
    /// they happen, which is rare.
    pub send_failed: Counter,
    sessions: Gauge,
    participants: Gauge,
    tracks: Gauge,
    connections: Gauge,
    routes: Gauge,
    received: Counter,
    forwarded: Counter,
    not_live: Counter,
    forward_errors: Counter,
    unrouted: Counter,
    chat_relayed: Counter,
    chat_refused: Counter,
    alive_tasks: Gauge,
}

impl WorkerMetrics {
    pub fn new(worker: usize) -> WorkerMetrics {
        let labels = vec![Label::new("worker", worker.to_string())];
        let dropped = |reason: &'static str| {
            let mut l = labels.clone();
            l.push(Label::new("reason", reason));
            metrics::counter!("veza_rtp_packets_dropped_total", l)
        };
        WorkerMetrics {
            forward_latency: metrics::histogram!(FORWARD_LATENCY, labels.clone()),
            send_failed: dropped("send_failed"),
            sessions: metrics::gauge!("veza_sessions", labels.clone()),
            participants: metrics::gauge!("veza_participants", labels.clone()),
            tracks: metrics::gauge!("veza_tracks", labels.clone()),
            connections: metrics::gauge!("veza_peer_connections", labels.clone()),
            routes: metrics::gauge!("veza_forwarding_routes", labels.clone()),
            received: metrics::counter!(RTP_RECEIVED, labels.clone()),
            forwarded: metrics::counter!(RTP_FORWARDED, labels.clone()),
            not_live: dropped("leg_not_live"),
            forward_errors: dropped("write_failed"),
            unrouted: metrics::counter!("veza_datagrams_unrouted_total", labels.clone()),
            chat_relayed: metrics::counter!("veza_chat_messages_relayed_total", labels.clone()),
            chat_refused: metrics::counter!("veza_chat_messages_refused_total", labels.clone()),
            alive_tasks: metrics::gauge!(ALIVE_TASKS, [labels, vec![Label::new("runtime", "media")]].concat()),
        }
    }

    pub fn publish(&self, s: &HostStats) {
        self.sessions.set(s.sessions as f64);
        self.participants.set(s.participants as f64);
        self.tracks.set(s.tracks as f64);
        self.connections.set(s.connections as f64);
        self.routes.set(s.routes as f64);
        self.received.absolute(s.rtp_received);
        self.forwarded.absolute(s.rtp_forwarded);
        self.not_live.absolute(s.rtp_not_live);
        self.forward_errors.absolute(s.rtp_forward_errors);
        self.unrouted.absolute(s.datagrams_unrouted);
        self.chat_relayed.absolute(s.chat_relayed);
        self.chat_refused.absolute(s.chat_refused);
        // The worker's own current-thread runtime; one atomic load.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.alive_tasks.set(runtime.metrics().num_alive_tasks() as f64);
        }
    }
}

/// Sets the main runtime's alive-task gauge; called at scrape time, so it costs nothing between
/// scrapes (a task leak shows as this number climbing while the load stays level).
pub fn publish_main_alive_tasks() {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(ALIVE_TASKS, "runtime" => "main").set(runtime.metrics().num_alive_tasks() as f64);
    }
}

/// How often workers publish their counters.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);
