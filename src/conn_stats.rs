//! Per-connection WebRTC statistics, sampled into Prometheus: RTP bytes in and out, NACKs,
//! round-trip time and jitter.
//!
//! The `rtc` core already accounts every packet in its stats accumulator; this module only
//! reads a snapshot of each connection about every [`SAMPLE_INTERVAL`], when the worker
//! handles that connection's timer anyway, so the forwarding path gains nothing per packet and
//! the snapshots of many connections spread out instead of landing in one loop turn. Counters
//! advance by the difference since the connection's previous snapshot; a connection's last
//! interval is counted when it closes. Labels are a role or a direction, never a participant.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use rtc::peer_connection::RTCPeerConnection;
use rtc::statistics::StatsSelector;
use rtc::statistics::report::{RTCStatsReport, RTCStatsReportEntry};
use rtc::statistics::stats::rtp_stream::received::RTCReceivedRtpStreamStats;

use crate::media::conn::{ConnKey, Role};

/// How often each connection's statistics are read.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

pub const RTP_BYTES_RECEIVED: &str = "veza_rtp_bytes_received_total";
pub const RTP_BYTES_SENT: &str = "veza_rtp_bytes_sent_total";
pub const NACKS_RECEIVED: &str = "veza_rtcp_nacks_received_total";
pub const NACKS_SENT: &str = "veza_rtcp_nacks_sent_total";
pub const RTT: &str = "veza_rtt_seconds";
pub const JITTER: &str = "veza_jitter_seconds";

/// Histogram buckets, for the recorder (`telemetry::install`).
pub const BUCKETS: &[(&str, &[f64])] = &[
    (RTT, &[0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0]),
    (JITTER, &[0.000_5, 0.001, 0.002, 0.003, 0.005, 0.007_5, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1]),
];

pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(RTP_BYTES_RECEIVED, Unit::Bytes, "RTP bytes (headers included) received from publishers");
    describe_counter!(RTP_BYTES_SENT, Unit::Bytes, "RTP bytes (headers included) sent to subscribers");
    describe_counter!(NACKS_RECEIVED, "RTCP NACKs received from subscribers");
    describe_counter!(NACKS_SENT, "RTCP NACKs sent to publishers");
    describe_histogram!(
        RTT,
        Unit::Seconds,
        "round-trip time of each connection's selected ICE pair (STUN checks), sampled every 2 s"
    );
    describe_histogram!(
        JITTER,
        Unit::Seconds,
        "RTP interarrival jitter, sampled every 2 s per stream: direction=in as the server measures \
         publishers, direction=out as subscribers report it"
    );
}

/// Cumulative totals of one connection at its last snapshot.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Totals {
    rtp_bytes_in: u64,
    rtp_bytes_out: u64,
    nacks_in: u64,
    nacks_out: u64,
}

/// What one snapshot says, besides the totals.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    totals: Totals,
    rtt: Option<f64>,
    jitter_in: Vec<f64>,
    jitter_out: Vec<f64>,
}

/// Jitter in seconds. `rtc` 0.21 documents `jitter` in seconds but stores the RTP report's
/// raw value, in units of the stream's clock (RFC 3550 §6.4.1): divide by the codec's clock
/// rate (48 kHz for our Opus when the codec entry is missing).
fn jitter_seconds(report: &RTCStatsReport, received: &RTCReceivedRtpStreamStats) -> f64 {
    let clock = match report.get(&received.rtp_stream_stats.codec_id) {
        Some(RTCStatsReportEntry::Codec(c)) if c.clock_rate > 0 => c.clock_rate,
        _ => 48_000,
    };
    received.jitter / f64::from(clock)
}

fn read(report: &RTCStatsReport) -> Reading {
    let mut r = Reading::default();
    for s in report.inbound_rtp_streams() {
        let received = &s.received_rtp_stream_stats;
        r.totals.rtp_bytes_in += s.bytes_received + s.header_bytes_received;
        r.totals.nacks_out += u64::from(s.nack_count);
        if received.packets_received > 0 {
            r.jitter_in.push(jitter_seconds(report, received));
        }
    }
    for s in report.outbound_rtp_streams() {
        r.totals.rtp_bytes_out += s.sent_rtp_stream_stats.bytes_sent + s.header_bytes_sent;
        r.totals.nacks_in += u64::from(s.nack_count);
    }
    for entry in report.iter() {
        if let RTCStatsReportEntry::RemoteInboundRtp(s) = entry
            && s.received_rtp_stream_stats.packets_received > 0
        {
            r.jitter_out.push(jitter_seconds(report, &s.received_rtp_stream_stats));
        }
    }
    let selected = report.transport().map(|t| t.selected_candidate_pair_id.as_str()).filter(|id| !id.is_empty());
    let pair = match selected.and_then(|id| report.get(id)) {
        Some(RTCStatsReportEntry::IceCandidatePair(p)) => Some(p),
        _ => report.candidate_pairs().find(|p| p.nominated),
    };
    r.rtt = pair.map(|p| p.current_round_trip_time).filter(|rtt| *rtt > 0.0);
    r
}

struct Handles {
    rtp_bytes_in: Counter,
    rtp_bytes_out: Counter,
    nacks_in: Counter,
    nacks_out: Counter,
    rtt_publisher: Histogram,
    rtt_subscriber: Histogram,
    jitter_in: Histogram,
    jitter_out: Histogram,
}

/// One worker's sampler: the last snapshot of each of its connections.
pub struct ConnStats {
    handles: Handles,
    last: HashMap<ConnKey, (Instant, Totals)>,
}

impl Default for ConnStats {
    fn default() -> Self {
        ConnStats::new()
    }
}

impl ConnStats {
    pub fn new() -> ConnStats {
        let role = |r: &'static str| vec![metrics::Label::new("role", r)];
        let direction = |d: &'static str| vec![metrics::Label::new("direction", d)];
        ConnStats {
            handles: Handles {
                rtp_bytes_in: metrics::counter!(RTP_BYTES_RECEIVED),
                rtp_bytes_out: metrics::counter!(RTP_BYTES_SENT),
                nacks_in: metrics::counter!(NACKS_RECEIVED),
                nacks_out: metrics::counter!(NACKS_SENT),
                rtt_publisher: metrics::histogram!(RTT, role("publisher")),
                rtt_subscriber: metrics::histogram!(RTT, role("subscriber")),
                jitter_in: metrics::histogram!(JITTER, direction("in")),
                jitter_out: metrics::histogram!(JITTER, direction("out")),
            },
            last: HashMap::new(),
        }
    }

    /// Reads `pc`'s statistics if its last snapshot is [`SAMPLE_INTERVAL`] old (or it has none).
    pub fn maybe_sample(&mut self, key: ConnKey, role: Role, pc: &mut RTCPeerConnection, now: Instant) {
        let due = self.last.get(&key).is_none_or(|(at, _)| now.duration_since(*at) >= SAMPLE_INTERVAL);
        if due {
            self.sample(key, role, pc, now);
        }
    }

    /// Counts what happened on a closing connection since its last snapshot, then forgets it.
    pub fn finish(&mut self, key: ConnKey, role: Role, pc: &mut RTCPeerConnection, now: Instant) {
        self.sample(key, role, pc, now);
        self.last.remove(&key);
    }

    fn sample(&mut self, key: ConnKey, role: Role, pc: &mut RTCPeerConnection, now: Instant) {
        let reading = read(&pc.get_stats(now, StatsSelector::None));
        let before = self.last.insert(key, (now, reading.totals)).map(|(_, t)| t).unwrap_or_default();
        let h = &self.handles;
        let t = reading.totals;
        h.rtp_bytes_in.increment(t.rtp_bytes_in.saturating_sub(before.rtp_bytes_in));
        h.rtp_bytes_out.increment(t.rtp_bytes_out.saturating_sub(before.rtp_bytes_out));
        h.nacks_in.increment(t.nacks_in.saturating_sub(before.nacks_in));
        h.nacks_out.increment(t.nacks_out.saturating_sub(before.nacks_out));
        if let Some(rtt) = reading.rtt {
            match role {
                Role::Publisher => h.rtt_publisher.record(rtt),
                Role::Subscriber => h.rtt_subscriber.record(rtt),
            }
        }
        for j in reading.jitter_in {
            h.jitter_in.record(j);
        }
        for j in reading.jitter_out {
            h.jitter_out.record(j);
        }
    }
}
