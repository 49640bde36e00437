//! What `veza-sfu bench` reports, for people and (with `--json`) for scripts.

use std::fmt;

use serde::Serialize;

use super::Shape;

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Debug, Serialize)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(skip)]
    pub shape: Shape,
    pub placement: super::Placement,
    pub participants: usize,
    pub window_seconds: f64,
    pub forwarded_packets: u64,
    pub forwarded_pps: f64,
    /// Server process CPU (user + system, from /proc) over the window, per packet forwarded.
    pub cpu_us_per_forwarded_packet: f64,
    pub server_cpu_percent: f64,
    /// Packets received intact over packets sent, counted by sequence number on every stream
    /// from the first packet each receiver got.
    pub delivery_ratio: f64,
    pub packets_expected: u64,
    pub packets_delivered: u64,
    pub e2e_latency_us: Percentiles,
    /// The server's own measure: first datagram read to last datagram sent, per loop turn.
    pub server_forward_latency_us: Quantiles,
    pub join_to_first_packet_ms: Quantiles,
    /// Server RSS growth from idle to loaded, per participant.
    pub server_rss_bytes_per_participant: u64,
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shape;
        writeln!(
            f,
            "shape: {} session(s) x {} publishers, {} subscribers per stream, {} pkt/s, {} B payload, {} s (+{} s warmup)",
            s.sessions, s.publishers, s.subscribers, s.rate, s.payload, s.seconds, s.warmup
        )?;
        let cpu = |c: Option<usize>| c.map_or_else(|| "any CPU".to_owned(), |c| format!("CPU {c}"));
        writeln!(
            f,
            "placement:                       server on {}, generator on {}",
            cpu(self.placement.server_cpu),
            cpu(self.placement.generator_cpu)
        )?;
        writeln!(f, "participants:                    {}", self.participants)?;
        writeln!(f, "forwarded_pps:                   {:.0}", self.forwarded_pps)?;
        writeln!(f, "cpu_us_per_forwarded_packet:     {:.2}", self.cpu_us_per_forwarded_packet)?;
        writeln!(f, "server_cpu_percent:              {:.1}", self.server_cpu_percent)?;
        writeln!(
            f,
            "delivery_ratio:                  {:.5} ({} of {})",
            self.delivery_ratio, self.packets_delivered, self.packets_expected
        )?;
        writeln!(
            f,
            "e2e_latency_us:                  p50 {} p99 {} max {}",
            self.e2e_latency_us.p50, self.e2e_latency_us.p99, self.e2e_latency_us.max
        )?;
        writeln!(
            f,
            "server_forward_latency_us:       p50 {} p99 {}",
            opt(self.server_forward_latency_us.p50),
            opt(self.server_forward_latency_us.p99)
        )?;
        writeln!(
            f,
            "join_to_first_packet_ms:         p50 {} p99 {}",
            opt(self.join_to_first_packet_ms.p50),
            opt(self.join_to_first_packet_ms.p99)
        )?;
        write!(f, "server_rss_bytes_per_participant: {}", self.server_rss_bytes_per_participant)
    }
}
