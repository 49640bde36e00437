//! What `veza-sfu soak` reports: samples over time, what the generator did, a verdict per resource.

use std::fmt;

use serde::Serialize;

use super::SoakArgs;
use super::verdict::{Outcome, Verdict};

/// One reading of the server process.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    pub t_seconds: f64,
    /// VmRSS from /proc/PID/status.
    pub rss_bytes: u64,
    /// Entries of /proc/PID/fd.
    pub open_fds: u64,
    /// Threads from /proc/PID/status.
    pub threads: u64,
    /// `veza_runtime_alive_tasks`, all runtimes.
    pub alive_tasks: u64,
    /// The server's gauges (published by the media worker each second).
    pub participants: u64,
    pub peer_connections: u64,
    pub sessions: u64,
    pub tracks: u64,
    /// Musicians the generator holds joined at this moment.
    pub generator_participants: u64,
}

impl SoakSample {
    pub fn resource(&self, name: &str) -> f64 {
        match name {
            "rss" => self.rss_bytes as f64,
            "open_fds" => self.open_fds as f64,
            "threads" => self.threads as f64,
            "alive_tasks" => self.alive_tasks as f64,
            _ => f64::NAN,
        }
    }

    pub fn row(&self) -> String {
        format!(
            "{:>7.1} {:>6} {:>6} {:>9.1} {:>5} {:>7} {:>6}",
            self.t_seconds / 60.0,
            self.participants,
            self.peer_connections,
            self.rss_bytes as f64 / MIB,
            self.open_fds,
            self.threads,
            self.alive_tasks
        )
    }
}

const MIB: f64 = 1024.0 * 1024.0;
pub const HEADER: &str = "    min  parts  conns    rss MiB   fds threads  tasks";

/// What the generator did over the run.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub joins: u64,
    pub leaves: u64,
    pub join_failures: u64,
    pub chats: u64,
    pub chat_failures: u64,
    pub recordings: u64,
    pub exports_done: u64,
    pub exports_failed: u64,
    /// `error` messages from the server and failed renegotiations, as the musicians saw them.
    pub client_errors: u64,
    /// Everything that went wrong, the generator's own failures included.
    pub errors: u64,
    pub first_errors: Vec<String>,
}

/// The largest subscriber offer a steady musician got last, at the end of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubscriberSdp {
    pub bytes: u64,
    /// Every m-section in it: one per transceiver the server ever added to that connection.
    pub m_sections: u64,
    /// Those that send a track now.
    pub sending_tracks: u64,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub args: SoakArgs,
    pub seconds: f64,
    pub activity: Totals,
    pub subscriber_sdp: SubscriberSdp,
    pub samples: Vec<SoakSample>,
    pub verdicts: Vec<Verdict>,
}

fn scaled(v: &Verdict, x: f64) -> String {
    if v.unit == "bytes" { format!("{:.2} MiB", x / MIB) } else { format!("{x:.1}") }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.args;
        writeln!(
            f,
            "shape: {} session(s) x ({} steady + up to {} churning), churn every {} s, chat every {} s, \
             recording toggled every {} s, {:.1} min, sample every {} s, warm-up {} s",
            a.sessions,
            a.steady,
            a.churners,
            a.churn_every,
            a.chat_every,
            a.record_every,
            a.minutes,
            a.sample_every,
            a.warmup
        )?;
        let t = &self.activity;
        writeln!(
            f,
            "activity: {} joins ({} failed), {} leaves, {} chats ({} failed), {} recordings, {} exports ({} failed), \
             {} client errors, {} errors",
            t.joins,
            t.join_failures,
            t.leaves,
            t.chats,
            t.chat_failures,
            t.recordings,
            t.exports_done,
            t.exports_failed,
            t.client_errors,
            t.errors
        )?;
        let sdp = &self.subscriber_sdp;
        writeln!(
            f,
            "largest last subscriber offer of a steady musician: {} bytes, {} m-sections, {} sending",
            sdp.bytes, sdp.m_sections, sdp.sending_tracks
        )?;
        writeln!(f, "{HEADER}")?;
        let n = self.samples.len();
        let step = n.div_ceil(a.rows.max(1)).max(1);
        for (i, s) in self.samples.iter().enumerate() {
            if i % step == 0 || i + 1 == n {
                writeln!(f, "{}", s.row())?;
            }
        }
        writeln!(
            f,
            "verdicts (after warm-up; first fifth -> last fifth, load-adjusted rise, slope per hour at constant load):"
        )?;
        for v in &self.verdicts {
            let outcome = match v.outcome {
                Outcome::Flat => "flat",
                Outcome::Growing => "GROWING",
                Outcome::TooShort => "too short to judge",
            };
            writeln!(
                f,
                "  {:<12} {:>12} -> {:<12} rise {:>12} (threshold {}), slope {}/h (threshold {}/h), per participant {}: {outcome}",
                v.resource,
                scaled(v, v.first_fifth_mean),
                scaled(v, v.last_fifth_mean),
                scaled(v, v.load_adjusted_rise),
                scaled(v, v.threshold),
                scaled(v, v.slope_per_hour),
                scaled(v, v.slope_threshold_per_hour),
                scaled(v, v.per_participant),
            )?;
        }
        write!(
            f,
            "participants (server gauge) first fifth {:.1}, last fifth {:.1}",
            self.verdicts.first().map_or(0.0, |v| v.participants_first_fifth),
            self.verdicts.first().map_or(0.0, |v| v.participants_last_fifth)
        )
    }
}
