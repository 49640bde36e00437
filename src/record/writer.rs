//! The recording writer thread: one Ogg Opus file per track plus the timeline, from the packets
//! the media workers hand over. Lost packets become loss markers (decoders conceal them),
//! pauses become silent frames, so every file keeps real time; pages go to disk at least
//! every [`FLUSH_INTERVAL`], so a killed server leaves files playable up to then.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use super::ogg::{self, OPUS_RATE, OggWriter};
use super::tap::{RecItem, RecPacket, RecSenderReport, TrackMeta};
use super::timeline::{
    Gap, RecordingState, SENDER_REPORTS_KEPT, SenderReportPair, SyncPoint, Timeline, TrackTimeline, ntp_to_unix_ms,
};

/// Pages are written (and the timeline refreshed) at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// The timeline is rewritten at least this often while recording.
const TIMELINE_INTERVAL: Duration = Duration::from_secs(2);
/// A sync point is noted this often per track.
const SYNC_INTERVAL_SAMPLES: u64 = 10 * OPUS_RATE as u64;
/// Distinct (participant, SSRC) pairs whose sender reports a recording keeps.
const MAX_REPORTED_SSRCS: usize = 256;
/// A run of missing sequence numbers up to this long is loss (concealed); longer is a pause.
const MAX_CONCEALED_PACKETS: u16 = 50;
/// Arrival running this far ahead of the RTP clock means the sender paused without advancing
/// its timestamps: the pause is kept as silence by the arrival clock.
const PAUSE_BY_ARRIVAL: u64 = OPUS_RATE as u64 / 5;

/// What the writer is told at start.
pub struct WriterSetup {
    pub dir: PathBuf,
    pub session: String,
    pub recording_id: String,
    pub started_by: String,
    pub started_at: SystemTime,
    pub started_instant: Instant,
}

/// Shared with the service: the latest timeline, for listing without reading files.
pub type Status = Arc<Mutex<Timeline>>;

pub fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub fn iso8601(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn initial_timeline(setup: &WriterSetup) -> Timeline {
    Timeline {
        version: 1,
        session: setup.session.clone(),
        recording_id: setup.recording_id.clone(),
        state: RecordingState::Recording,
        started_by: setup.started_by.clone(),
        started_at_unix_ms: unix_ms(setup.started_at),
        started_at: iso8601(setup.started_at),
        stopped_at_unix_ms: None,
        dropped_packets: 0,
        tracks: Vec::new(),
    }
}

/// Runs until every sender is gone (the recording stopped or its session ended), then closes
/// the files and writes the final timeline.
pub fn run(setup: WriterSetup, rx: Receiver<RecItem>, status: Status) {
    let mut w = Writer {
        timeline: initial_timeline(&setup),
        setup,
        tracks: HashMap::new(),
        order: Vec::new(),
        reports: HashMap::new(),
        silence: SilenceFrames::new(),
        new_track: false,
    };
    if let Err(e) = w.timeline.store(&w.setup.dir) {
        warn!(recording = %w.setup.recording_id, "writing the timeline: {e}");
    }
    let mut last_flush = Instant::now();
    let mut last_timeline = Instant::now();
    loop {
        match rx.recv_timeout(FLUSH_INTERVAL) {
            Ok(RecItem::Rtp(p)) => w.packet(p),
            Ok(RecItem::SenderReport(r)) => w.sender_report(r),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_flush.elapsed() >= FLUSH_INTERVAL {
            w.flush(false);
            last_flush = Instant::now();
            if w.new_track || last_timeline.elapsed() >= TIMELINE_INTERVAL {
                w.new_track = false;
                w.publish(&status);
                last_timeline = Instant::now();
            }
        }
    }
    w.flush(true);
    w.timeline.state = RecordingState::Stopped;
    w.timeline.stopped_at_unix_ms = Some(unix_ms(SystemTime::now()));
    w.publish(&status);
    info!(recording = %w.setup.recording_id, tracks = w.order.len(), "recording finished");
}

struct Writer {
    setup: WriterSetup,
    timeline: Timeline,
    tracks: HashMap<u32, TrackWriter>,
    /// Track keys in the order they appeared.
    order: Vec<u32>,
    /// Sender reports by (participant id, SSRC): they may come before the track's first
    /// packet, and a compound RTCP packet may carry another track's report.
    reports: HashMap<(String, u32), SenderReportLog>,
    silence: SilenceFrames,
    /// A track appeared since the timeline was last stored.
    new_track: bool,
}

impl Writer {
    fn packet(&mut self, p: RecPacket) {
        let key = p.track.key;
        if !self.tracks.contains_key(&key) {
            match TrackWriter::create(&self.setup, &p) {
                Ok(t) => {
                    self.tracks.insert(key, t);
                    self.order.push(key);
                    self.new_track = true;
                }
                Err(e) => {
                    warn!(recording = %self.setup.recording_id, "creating a track file: {e}");
                    return;
                }
            }
        }
        let since_start = secs_between(self.setup.started_instant, p.arrival);
        if let Some(t) = self.tracks.get_mut(&key)
            && let Err(e) = t.write(&p, since_start, &self.silence)
        {
            warn!(recording = %self.setup.recording_id, file = %t.file, "writing: {e}");
        }
    }

    fn sender_report(&mut self, r: RecSenderReport) {
        let since_start = secs_between(self.setup.started_instant, r.arrival);
        let pair = SenderReportPair {
            ntp: r.ntp_time,
            ntp_unix_ms: ntp_to_unix_ms(r.ntp_time),
            rtp: r.rtp_time,
            arrival_unix_ms: unix_ms(self.setup.started_at) + since_start * 1000.0,
        };
        let key = (r.track.participant_id.clone(), r.ssrc);
        // SSRCs are the sender's to choose: a publisher inventing new ones gets no more room.
        if self.reports.len() >= MAX_REPORTED_SSRCS && !self.reports.contains_key(&key) {
            return;
        }
        self.reports.entry(key).or_default().push(pair);
    }

    fn flush(&mut self, end: bool) {
        for t in self.tracks.values_mut() {
            let r = if end { t.ogg.flush_page(true) } else { t.ogg.flush_all_but_last() };
            if let Err(e) = r {
                warn!(file = %t.file, "flushing: {e}");
            }
        }
    }

    /// Refreshes the timeline from the writers, stores it and shares it.
    fn publish(&mut self, status: &Status) {
        let reports = &self.reports;
        self.timeline.tracks = self
            .order
            .iter()
            .filter_map(|k| self.tracks.get(k))
            .map(|t| {
                let mut timeline = t.timeline();
                if let Some(log) = reports.get(&(t.meta.participant_id.clone(), t.ssrc)) {
                    timeline.sender_reports = log.pairs();
                }
                timeline
            })
            .collect();
        self.timeline.dropped_packets = self.timeline.tracks.iter().map(|t| t.dropped_packets).sum();
        if let Err(e) = self.timeline.store(&self.setup.dir) {
            warn!(recording = %self.setup.recording_id, "writing the timeline: {e}");
        }
        if let Ok(mut s) = status.lock() {
            *s = self.timeline.clone();
        }
    }
}

fn secs_between(from: Instant, to: Instant) -> f64 {
    if to >= from { (to - from).as_secs_f64() } else { -(from - to).as_secs_f64() }
}

struct TrackWriter {
    meta: Arc<TrackMeta>,
    file: String,
    ogg: OggWriter<BufWriter<File>>,
    ssrc: u32,
    first_arrival_unix_ms: f64,
    first_ts: u32,
    /// Samples written (the granule position after the last packet).
    granule: u64,
    last_seq: u16,
    /// Unwrapped RTP timestamp of the last packet, and its duration.
    last_ts: i64,
    last_samples: u32,
    last_toc: u8,
    /// Seconds from the recording's start to the file's first sample (minimum over packets).
    offset_secs: f64,
    packets: u64,
    lost: u64,
    late: u64,
    gaps: Vec<Gap>,
    sync: Vec<SyncPoint>,
    started_unix_ms: f64,
}

impl TrackWriter {
    fn create(setup: &WriterSetup, p: &RecPacket) -> std::io::Result<TrackWriter> {
        let m = &p.track;
        let file = format!("{:02}-{}-{}.opus", m.key, safe_name(&m.name), m.participant_id);
        let f = File::create(setup.dir.join(&file))?;
        let mut ogg = OggWriter::new(BufWriter::with_capacity(64 * 1024, f), p.ssrc ^ m.key);
        ogg.push(&ogg::opus_head(2, ogg::PRE_SKIP, OPUS_RATE), 0)?;
        ogg.flush_page(false)?;
        let comments = vec![
            ("TITLE".to_owned(), format!("{} ({})", m.name, setup.session)),
            ("ARTIST".to_owned(), m.name.clone()),
            ("VEZA_SESSION".to_owned(), setup.session.clone()),
            ("VEZA_RECORDING".to_owned(), setup.recording_id.clone()),
            ("VEZA_PARTICIPANT".to_owned(), m.participant_id.clone()),
            ("VEZA_TRACK".to_owned(), m.track_id.clone()),
        ];
        ogg.push(&ogg::opus_tags(concat!("veza-sfu ", env!("CARGO_PKG_VERSION")), &comments), 0)?;
        ogg.flush_page(false)?;
        let started_unix_ms = unix_ms(setup.started_at);
        let since_start = secs_between(setup.started_instant, p.arrival);
        Ok(TrackWriter {
            meta: p.track.clone(),
            file,
            ogg,
            ssrc: p.ssrc,
            first_arrival_unix_ms: started_unix_ms + since_start * 1000.0,
            first_ts: p.timestamp,
            granule: 0,
            last_seq: p.sequence.wrapping_sub(1),
            last_ts: i64::from(p.timestamp),
            last_samples: 0,
            last_toc: 0,
            offset_secs: f64::INFINITY,
            packets: 0,
            lost: 0,
            late: 0,
            gaps: Vec::new(),
            sync: Vec::new(),
            started_unix_ms,
        })
    }

    fn write(&mut self, p: &RecPacket, since_start: f64, silence: &SilenceFrames) -> std::io::Result<()> {
        let Some(samples) = ogg::packet_samples(&p.payload) else {
            self.late += 1; // not Opus we can place: leave it out
            return Ok(());
        };
        let first = self.packets == 0;
        let seq_step = p.sequence.wrapping_sub(self.last_seq);
        if !first && (seq_step == 0 || seq_step > 0x8000) {
            self.late += 1;
            return Ok(());
        }
        let ts = self.last_ts + i64::from(p.timestamp.wrapping_sub(self.last_ts as u32) as i32);
        if !first {
            let expected = self.last_ts + i64::from(self.last_samples);
            let mut missing = (ts - expected).max(0) as u64;
            // A sender that paused without advancing its clock: trust the arrival clock.
            let by_arrival = ((since_start - self.offset_secs) * f64::from(OPUS_RATE)).max(0.0) as u64;
            if by_arrival > self.granule + missing + PAUSE_BY_ARRIVAL {
                missing = by_arrival - self.granule;
            }
            self.fill(missing, seq_step - 1, silence)?;
        }
        self.offset_secs = self.offset_secs.min(since_start - self.granule as f64 / f64::from(OPUS_RATE));
        if first || self.granule >= self.sync.last().map_or(0, |s| s.sample) + SYNC_INTERVAL_SAMPLES {
            self.sync.push(SyncPoint {
                unix_ms: self.started_unix_ms + since_start * 1000.0,
                rtp_timestamp: p.timestamp,
                sample: self.granule,
            });
        }
        self.granule += u64::from(samples);
        self.ogg.push(&p.payload, self.granule)?;
        self.packets += 1;
        self.last_seq = p.sequence;
        self.last_ts = ts;
        self.last_samples = samples;
        self.last_toc = p.payload[0];
        Ok(())
    }

    /// Keeps `missing` samples of time: loss markers for up to `missing_packets` lost packets,
    /// silent frames for the rest (a pause).
    fn fill(&mut self, missing: u64, missing_packets: u16, silence: &SilenceFrames) -> std::io::Result<()> {
        let mut left = missing;
        let frame = u64::from(ogg::frame_samples(self.last_toc));
        if missing_packets > 0 && missing_packets <= MAX_CONCEALED_PACKETS {
            let marker = ogg::loss_marker(self.last_toc);
            let concealed = (u64::from(missing_packets) * u64::from(self.last_samples)).min(left) / frame;
            for _ in 0..concealed {
                self.granule += frame;
                self.ogg.push(&marker, self.granule)?;
            }
            self.lost += u64::from(missing_packets);
            left -= concealed * frame;
        }
        if left >= SilenceFrames::SMALLEST {
            let at = self.granule;
            for (packet, n) in silence.cover(left) {
                self.granule += u64::from(n);
                self.ogg.push(packet, self.granule)?;
            }
            self.gaps.push(Gap { at_sample: at, samples: self.granule - at });
        }
        Ok(())
    }

    fn timeline(&self) -> TrackTimeline {
        let offset = if self.offset_secs.is_finite() { self.offset_secs.max(0.0) } else { 0.0 };
        TrackTimeline {
            file: self.file.clone(),
            participant_id: self.meta.participant_id.clone(),
            user: self.meta.user.clone(),
            name: self.meta.name.clone(),
            track_id: self.meta.track_id.clone(),
            ssrc: self.ssrc,
            first_arrival_unix_ms: self.first_arrival_unix_ms,
            first_rtp_timestamp: self.first_ts,
            start_offset_samples: (offset * f64::from(OPUS_RATE)).round() as u64,
            samples: self.granule,
            packets: self.packets,
            lost_packets: self.lost,
            late_packets: self.late,
            dropped_packets: self.meta.dropped.load(std::sync::atomic::Ordering::Relaxed),
            gaps: self.gaps.clone(),
            sync: self.sync.clone(),
            sender_reports: Vec::new(),
        }
    }
}

/// A track's sender reports, bounded: the first [`SENDER_REPORTS_KEPT`] (how the sender's clocks
/// stood at the start) and the latest [`SENDER_REPORTS_KEPT`] (how they drifted since).
#[derive(Default)]
struct SenderReportLog {
    first: Vec<SenderReportPair>,
    latest: VecDeque<SenderReportPair>,
}

impl SenderReportLog {
    fn push(&mut self, pair: SenderReportPair) {
        if self.first.len() < SENDER_REPORTS_KEPT {
            self.first.push(pair);
            return;
        }
        if self.latest.len() == SENDER_REPORTS_KEPT {
            self.latest.pop_front();
        }
        self.latest.push_back(pair);
    }

    /// Oldest first.
    fn pairs(&self) -> Vec<SenderReportPair> {
        self.first.iter().chain(&self.latest).copied().collect()
    }
}

/// File-name-safe version of a display name.
fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(32)
        .collect();
    if s.is_empty() { "track".to_owned() } else { s }
}

/// Silent stereo CELT frames of 20, 10, 5 and 2.5 ms, encoded once by libopus.
pub struct SilenceFrames {
    frames: Vec<(Vec<u8>, u32)>,
}

impl SilenceFrames {
    pub const SMALLEST: u64 = 120;

    pub fn new() -> SilenceFrames {
        let mut frames = Vec::new();
        for n in [960u32, 480, 240, 120] {
            match encode_silence(n as usize) {
                Ok(p) => frames.push((p, n)),
                // Cannot happen with a working libopus; a loss marker conceals to silence too.
                Err(e) => {
                    warn!("encoding a silent Opus frame: {e}");
                    let config: u8 = match n {
                        960 => 31,
                        480 => 30,
                        240 => 29,
                        _ => 28,
                    };
                    frames.push((ogg::loss_marker((config << 3) | 0x04).to_vec(), n));
                }
            }
        }
        SilenceFrames { frames }
    }

    /// Frames covering `samples` (rounded down to 2.5 ms).
    pub fn cover(&self, mut samples: u64) -> Vec<(&[u8], u32)> {
        let mut out = Vec::new();
        for (p, n) in &self.frames {
            while samples >= u64::from(*n) {
                out.push((p.as_slice(), *n));
                samples -= u64::from(*n);
            }
        }
        out
    }
}

impl Default for SilenceFrames {
    fn default() -> Self {
        Self::new()
    }
}

fn encode_silence(samples: usize) -> Result<Vec<u8>, opus::Error> {
    let mut enc = opus::Encoder::new(OPUS_RATE, opus::Channels::Stereo, opus::Application::LowDelay)?;
    let zeros = vec![0f32; samples * 2];
    let mut buf = [0u8; 256];
    let mut len = 0;
    for _ in 0..3 {
        len = enc.encode_float(&zeros, &mut buf)?;
    }
    Ok(buf[..len].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_report_log_keeps_first_and_latest() {
        let mut log = SenderReportLog::default();
        for i in 0..100u32 {
            log.push(SenderReportPair { ntp: u64::from(i), ntp_unix_ms: 0.0, rtp: i, arrival_unix_ms: 0.0 });
        }
        let rtp: Vec<u32> = log.pairs().iter().map(|p| p.rtp).collect();
        let want: Vec<u32> = (0..16).chain(84..100).collect();
        assert_eq!(rtp, want);
    }
}
