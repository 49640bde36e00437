//! `veza-sfu bench`: a load generator that measures the server the way it runs in production.
//!
//! It starts the server as a child process (one media worker, pinned to a CPU of its own; the
//! generator is pinned to another, see [`Placement`]), joins simulated musicians with real
//! ICE/DTLS/SRTP connections, and reports CPU per forwarded packet (from /proc), delivery
//! (exact, by sequence numbers), end-to-end and server-side forwarding latency,
//! join-to-first-audio and memory per participant.

mod child;
mod lean;
mod prom;
mod report;
pub mod soak;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::sim::stats::percentile;
use crate::sim::{SimOptions, SimParticipant};
use lean::LeanMusician;
pub use report::Report;

/// The load shape.
#[derive(Debug, Clone, Args)]
pub struct Shape {
    /// Concurrent sessions.
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// Publishing musicians per session.
    #[arg(long, default_value_t = 10)]
    pub publishers: usize,
    /// Receivers of each published stream: the other publishers, plus listen-only participants
    /// for the rest (so it must be at least publishers - 1).
    #[arg(long, default_value_t = 9)]
    pub subscribers: usize,
    /// Packets per second per publisher (100 = 10 ms Opus frames).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// RTP payload bytes (a 128 kbit/s, 10 ms Opus frame is about 160).
    #[arg(long, default_value_t = 160)]
    pub payload: usize,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Load before the window opens, seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub shape: Shape,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not pin the server and the generator to separate CPUs.
    #[arg(long)]
    pub no_pin: bool,
    /// Lean simulated musicians (sans-I/O `rtc`, received media counted from RTP headers)
    /// instead of full webrtc-rs clients: for loads one core of full clients cannot carry.
    #[arg(long)]
    pub lean: bool,
}

impl Shape {
    fn listeners(&self) -> anyhow::Result<usize> {
        if self.publishers == 0 || self.sessions == 0 {
            bail!("--sessions and --publishers must be at least 1");
        }
        if self.subscribers + 1 < self.publishers {
            bail!("every publisher hears every other: --subscribers must be at least --publishers - 1");
        }
        if self.rate == 0 || self.seconds == 0 {
            bail!("--rate and --seconds must be at least 1");
        }
        Ok(self.subscribers + 1 - self.publishers)
    }
}

/// Which CPU the server and the generator each run on, when they have one to themselves.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Placement {
    pub server_cpu: Option<usize>,
    pub generator_cpu: Option<usize>,
}

impl Placement {
    /// With two CPUs or more (and unless `no_pin`), pins the calling thread, and every thread
    /// it starts later, to the second CPU this process may use, and reserves the first for the
    /// server. Call it before the generator's runtime starts: its worker threads must inherit
    /// the pin, and once pinned, this process sees one CPU.
    pub fn apply(no_pin: bool) -> Placement {
        let cpus = child::allowed_cpus();
        match cpus[..] {
            [server, generator, ..] if !no_pin => {
                child::pin_self_to_cpu(generator);
                Placement { server_cpu: Some(server), generator_cpu: Some(generator) }
            }
            _ => Placement { server_cpu: None, generator_cpu: None },
        }
    }
}

pub async fn run(args: &BenchArgs, placement: Placement) -> anyhow::Result<Report> {
    let shape = &args.shape;
    let listeners = shape.listeners()?;
    let per_session = shape.publishers + listeners;
    let server = child::Server::start(per_session, placement.server_cpu, &[]).await?;
    let rss_idle = server.rss_bytes()?;

    let interval = Duration::from_micros(1_000_000 / u64::from(shape.rate));
    let opts =
        SimOptions { publish: true, packet_interval: interval, payload_len: shape.payload, ..SimOptions::default() };
    let mut crowd = Crowd::default();
    let mut join_to_first = Vec::new();
    for s in 0..shape.sessions {
        let session = format!("bench-{s}");
        let mut someone_publishes = false;
        for p in 0..per_session {
            let publishes = p < shape.publishers;
            let token = server.token(&session, &format!("m{s}-{p}"), publishes)?;
            let started = Instant::now();
            let context = || format!("joining participant {p} of {session}");
            // Time from connect to the first audio heard, for everyone joining a jam in progress.
            let first = if args.lean {
                let m = LeanMusician::join(&server.ws_url, &token, publishes, interval, shape.payload)
                    .await
                    .with_context(context)?;
                let first = if someone_publishes { Some(m.first_packet(JOIN_WAIT).await?) } else { None };
                if publishes {
                    m.start_publishing();
                }
                crowd.lean.push(m);
                first
            } else {
                let sim =
                    SimParticipant::join(&server.ws_url, &token, SimOptions { publish: publishes, ..opts.clone() })
                        .await
                        .with_context(context)?;
                let first = match (&crowd.first_publisher, someone_publishes) {
                    (Some(source), true) => {
                        sim.wait_for_packets(source, 1, JOIN_WAIT).await?;
                        sim.received_from(source).and_then(|st| st.first_packet_at)
                    }
                    _ => None,
                };
                if publishes {
                    sim.start_publishing();
                    crowd.first_publisher.get_or_insert_with(|| sim.id().to_owned());
                }
                crowd.full.push(sim);
                first
            };
            if let Some(at) = first {
                join_to_first.push((at - started).as_micros() as u64);
            }
            someone_publishes |= publishes;
        }
        crowd.first_publisher = None;
    }
    let participants = crowd.len();
    let rss_loaded = server.rss_bytes()?;

    tokio::time::sleep(Duration::from_secs(shape.warmup)).await;
    let before = server.sample().await?;
    tokio::time::sleep(Duration::from_secs(shape.seconds)).await;
    let after = server.sample().await?;

    crowd.stop_publishing();
    // Let the last packets land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (expected, delivered, mut e2e) = crowd.reception();
    e2e.sort_unstable();
    join_to_first.sort_unstable();
    let window = after.at.duration_since(before.at).as_secs_f64();
    let forwarded = after.forwarded.saturating_sub(before.forwarded);
    let cpu = after.cpu_seconds - before.cpu_seconds;
    let latency = after.forward_latency.minus(&before.forward_latency);
    let report = Report {
        shape: shape.clone(),
        placement,
        participants,
        window_seconds: window,
        forwarded_packets: forwarded,
        forwarded_pps: forwarded as f64 / window,
        cpu_us_per_forwarded_packet: 1e6 * cpu / forwarded.max(1) as f64,
        server_cpu_percent: 100.0 * cpu / window,
        delivery_ratio: if expected == 0 { 0.0 } else { delivered as f64 / expected as f64 },
        packets_expected: expected,
        packets_delivered: delivered,
        e2e_latency_us: report::Percentiles {
            p50: percentile(&e2e, 0.5).unwrap_or(0),
            p99: percentile(&e2e, 0.99).unwrap_or(0),
            max: e2e.last().copied().unwrap_or(0),
        },
        server_forward_latency_us: report::Quantiles {
            p50: latency.quantile(0.5).map(|s| s * 1e6),
            p99: latency.quantile(0.99).map(|s| s * 1e6),
        },
        join_to_first_packet_ms: report::Quantiles {
            p50: percentile(&join_to_first, 0.5).map(|us| us as f64 / 1000.0),
            p99: percentile(&join_to_first, 0.99).map(|us| us as f64 / 1000.0),
        },
        server_rss_bytes_per_participant: rss_loaded.saturating_sub(rss_idle) / participants.max(1) as u64,
    };
    crowd.close().await;
    server.stop().await;
    Ok(report)
}

/// How long one join may take to hear its first audio before the run is abandoned.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// The simulated musicians of a run: full webrtc-rs clients or lean ones.
#[derive(Default)]
struct Crowd {
    full: Vec<SimParticipant>,
    lean: Vec<LeanMusician>,
    /// The first publisher of the session being joined (full clients wait for its audio).
    first_publisher: Option<String>,
}

impl Crowd {
    fn len(&self) -> usize {
        self.full.len() + self.lean.len()
    }

    fn stop_publishing(&self) {
        self.full.iter().for_each(SimParticipant::stop_publishing);
        self.lean.iter().for_each(LeanMusician::stop_publishing);
    }

    /// Packets expected and delivered intact over every stream, and latency samples (µs).
    fn reception(&self) -> (u64, u64, Vec<u64>) {
        let (mut expected, mut delivered, mut latency) = (0, 0, Vec::new());
        for sim in &self.full {
            for stats in sim.received().into_values() {
                expected += stats.expected();
                delivered += stats.good_packets();
                latency.extend_from_slice(&stats.latency_us);
            }
        }
        for m in &self.lean {
            for r in m.reception() {
                expected += r.expected();
                delivered += r.packets;
                latency.extend_from_slice(&r.latency_us);
            }
        }
        (expected, delivered, latency)
    }

    async fn close(self) {
        for sim in self.full {
            sim.close().await;
        }
        drop(self.lean);
    }
}
