//! The timeline file beside a recording's Ogg files: when it started, which track is whose,
//! where each track sits on the recording's clock, and what was lost on the way.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name of the timeline inside a recording directory.
pub const TIMELINE_FILE: &str = "timeline.json";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Still being written (or the server died while writing: the files are valid up to the
    /// last flushed page).
    Recording,
    Stopped,
}

/// `timeline.json`: rewritten (atomically) as tracks appear, every few seconds, and at the end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Timeline {
    pub version: u32,
    pub session: String,
    pub recording_id: String,
    pub state: RecordingState,
    /// Who started it: a participant id, or `admin` for the REST API.
    pub started_by: String,
    /// The recording's zero, wall clock, ms since the Unix epoch; every stem starts here.
    pub started_at_unix_ms: f64,
    /// The same instant in ISO 8601 (UTC).
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_unix_ms: Option<f64>,
    /// Packets the media workers could not hand to the writer (its queue was full).
    pub dropped_packets: u64,
    pub tracks: Vec<TrackTimeline>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackTimeline {
    /// The Ogg Opus file, relative to the recording directory.
    pub file: String,
    pub participant_id: String,
    pub user: String,
    pub name: String,
    /// The server's track id (as in `track_published`).
    pub track_id: String,
    pub ssrc: u32,
    /// Arrival of the first recorded packet, ms since the Unix epoch.
    pub first_arrival_unix_ms: f64,
    pub first_rtp_timestamp: u32,
    /// Where the file's first sample sits on the recording's clock, in 48 kHz samples after
    /// `started_at`: the earliest arrival time of any packet minus its position in the file
    /// (the packet that waited least in the network tells the truth).
    pub start_offset_samples: u64,
    /// Samples (48 kHz, per channel) written so far, concealment and silence included.
    pub samples: u64,
    pub packets: u64,
    /// Packets missing from the sequence, written as loss markers (decoders conceal them).
    pub lost_packets: u64,
    /// Packets that came after a later one and were left out.
    pub late_packets: u64,
    /// Packets dropped before the writer (its queue was full).
    pub dropped_packets: u64,
    /// Silences the sender left (mute, pause), written as silent Opus frames.
    pub gaps: Vec<Gap>,
    /// Arrival clock against the RTP clock, every few seconds: `(unix ms, rtp timestamp,
    /// sample position in the file)`. Lets a later tool re-derive drift.
    pub sync: Vec<SyncPoint>,
    /// The sender's RTCP sender reports (its NTP wall clock against its RTP clock), when it
    /// sends them: the first [`SENDER_REPORTS_KEPT`] and the latest [`SENDER_REPORTS_KEPT`],
    /// oldest first. Empty for a sender that sends none (and in timelines written before them).
    #[serde(default)]
    pub sender_reports: Vec<SenderReportPair>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Gap {
    /// Sample position in the file where the silence starts.
    pub at_sample: u64,
    pub samples: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SyncPoint {
    pub unix_ms: f64,
    pub rtp_timestamp: u32,
    pub sample: u64,
}

/// Sender reports a track's timeline keeps from each end of the recording.
pub const SENDER_REPORTS_KEPT: usize = 16;

/// One RTCP sender report: the same instant on the sender's NTP clock and its RTP clock.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct SenderReportPair {
    /// NTP timestamp as sent: 32.32 fixed-point seconds since 1900-01-01.
    pub ntp: u64,
    /// The same time in ms since the Unix epoch.
    pub ntp_unix_ms: f64,
    /// RTP timestamp of that instant (the track's RTP clock, 48 kHz for Opus).
    pub rtp: u32,
    /// When the report reached the server, ms since the Unix epoch.
    pub arrival_unix_ms: f64,
}

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// A 32.32 NTP timestamp in ms since the Unix epoch (negative before 1970).
pub fn ntp_to_unix_ms(ntp: u64) -> f64 {
    let secs = (ntp >> 32) as f64 - NTP_UNIX_OFFSET_SECS as f64;
    let frac = (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0;
    (secs + frac) * 1000.0
}

/// Longest recording a timeline may describe, in 48 kHz samples: a day. A longer one is not
/// a file we wrote, and exporting it would run for ever (or allocate the machine away).
pub const MAX_RECORDING_SAMPLES: u64 = 24 * 3600 * 48_000;

impl Timeline {
    pub fn load(dir: &Path) -> std::io::Result<Timeline> {
        Timeline::parse(&std::fs::read(dir.join(TIMELINE_FILE))?)
    }

    /// Reads `timeline.json`, refusing what export could not use safely: a track file outside
    /// the recording's directory, a time that is not a number, a track beyond
    /// [`MAX_RECORDING_SAMPLES`].
    pub fn parse(json: &[u8]) -> std::io::Result<Timeline> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let t: Timeline = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
        for track in &t.tracks {
            if !is_plain_file_name(&track.file) {
                return Err(invalid(format!(
                    "track file {:?} is not a file name in the recording's directory",
                    track.file
                )));
            }
            if track.start_offset_samples > MAX_RECORDING_SAMPLES {
                return Err(invalid(format!("track {:?} starts after a day", track.file)));
            }
        }
        let stop = t.stopped_at_unix_ms.unwrap_or(t.started_at_unix_ms);
        if !(t.started_at_unix_ms.is_finite() && stop.is_finite() && (stop - t.started_at_unix_ms).is_finite()) {
            return Err(invalid("start and stop times must be finite numbers".to_owned()));
        }
        Ok(t)
    }

    /// Writes `timeline.json` through a temporary file and a rename: a reader (or a crash)
    /// never sees half a file.
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{TIMELINE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, dir.join(TIMELINE_FILE))
    }

    /// Length of the recording in samples when it was stopped, if it was.
    pub fn stopped_len_samples(&self) -> Option<u64> {
        self.stopped_at_unix_ms.map(|stop| ms_to_samples(stop - self.started_at_unix_ms))
    }
}

/// A name the writer could have given a file of the recording: no directories, no `..`.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

pub fn ms_to_samples(ms: f64) -> u64 {
    (ms.max(0.0) * 48.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_converts_to_unix_ms() {
        assert_eq!(ntp_to_unix_ms(NTP_UNIX_OFFSET_SECS << 32), 0.0);
        // 2026-01-01T00:00:00.5Z
        let ntp = ((NTP_UNIX_OFFSET_SECS + 1_767_225_600) << 32) | 0x8000_0000;
        assert_eq!(ntp_to_unix_ms(ntp), 1_767_225_600_500.0);
    }

    fn one_track(file: &str) -> Timeline {
        Timeline {
            version: 1,
            session: "s".into(),
            recording_id: "r".into(),
            state: RecordingState::Stopped,
            started_by: "admin".into(),
            started_at_unix_ms: 0.0,
            started_at: "1970-01-01T00:00:00.000Z".into(),
            stopped_at_unix_ms: Some(1000.0),
            dropped_packets: 0,
            tracks: vec![TrackTimeline {
                file: file.into(),
                participant_id: "p".into(),
                user: "u".into(),
                name: "n".into(),
                track_id: "t".into(),
                ssrc: 1,
                first_arrival_unix_ms: 0.0,
                first_rtp_timestamp: 0,
                start_offset_samples: 0,
                samples: 48_000,
                packets: 100,
                lost_packets: 0,
                late_packets: 0,
                dropped_packets: 0,
                gaps: vec![],
                sync: vec![],
                sender_reports: vec![],
            }],
        }
    }

    #[test]
    fn track_files_outside_the_recording_are_refused() {
        let ok = serde_json::to_vec(&one_track("ana-1.opus")).unwrap();
        assert_eq!(Timeline::parse(&ok).unwrap(), one_track("ana-1.opus"));
        for file in ["../../etc/passwd", "/etc/passwd", "a/b.opus", "..", "", "a\\b.opus"] {
            let json = serde_json::to_vec(&one_track(file)).unwrap();
            let e = Timeline::parse(&json).expect_err(file);
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{file}: {e}");
        }
    }

    #[test]
    fn tracks_beyond_a_day_are_refused() {
        let mut t = one_track("a.opus");
        t.tracks[0].start_offset_samples = MAX_RECORDING_SAMPLES + 1;
        assert!(Timeline::parse(&serde_json::to_vec(&t).unwrap()).is_err());
    }
}
