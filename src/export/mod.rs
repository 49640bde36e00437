//! Export of a recording: decode every track (libopus, concealment for losses), place it on the
//! recording's clock, and write aligned stems or a mixdown as FLAC, WAV/BWF or Ogg Opus.
//!
//! Every stem starts at the recording's zero (leading silence up to the musician's first
//! sample) and all stems have the same length, so a DAW lines them up by dropping them in.
//! Tracks are decoded and encoded in parallel, one thread each.
//!
//! The mix sums the stems at unity gain; if the sum would exceed [`MIX_CEILING`] (−1 dBFS),
//! the whole mix is scaled down by one constant gain (peak normalisation downwards only): no
//! sample clips, no limiter pumps, and the balance between musicians is kept.

pub mod bench;
pub mod cli;
pub mod decode;
pub mod flac;
pub mod jobs;
pub mod oggout;
pub mod wav;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::record::timeline::{MAX_RECORDING_SAMPLES, Timeline, TrackTimeline};
use decode::{CHANNELS, TrackReader};

/// Peak of the mix after normalisation: −1 dBFS.
pub const MIX_CEILING: f32 = 0.891;
/// Samples per channel handled per step.
const CHUNK: usize = 4096;
const RATE: u32 = 48_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Flac,
    Wav,
    Ogg,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Flac => "flac",
            Format::Wav => "wav",
            Format::Ogg => "opus",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One file per track, all aligned to the recording's zero and of equal length.
    Stems,
    /// One file: every track summed.
    Mix,
}

/// What to export (the REST body and the CLI's options).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportOptions {
    pub format: Format,
    #[serde(default = "default_layout")]
    pub layout: Layout,
    /// 16 or 24 (FLAC and WAV; Ogg Opus has none). Default: 24.
    #[serde(default = "default_bit_depth")]
    pub bit_depth: u8,
}

fn default_layout() -> Layout {
    Layout::Stems
}

fn default_bit_depth() -> u8 {
    24
}

impl ExportOptions {
    pub fn validate(&self) -> Result<(), ExportError> {
        if !matches!(self.bit_depth, 16 | 24) {
            return Err(ExportError::BadRequest(format!("bit_depth must be 16 or 24, not {}", self.bit_depth)));
        }
        Ok(())
    }
}

/// One file an export produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExportedFile {
    pub name: String,
    pub bytes: u64,
    /// The musician of a stem; none for a mix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    BadRequest(String),
    #[error("reading the recording's timeline: {0}")]
    Timeline(std::io::Error),
    #[error("the recording has no tracks")]
    NoTracks,
    #[error("the recording would last {0:.1} hours; export handles at most a day")]
    TooLong(f64),
    #[error("the mix of {0} samples does not fit in memory")]
    MixTooLarge(u64),
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
    #[error(transparent)]
    Flac(#[from] flac::FlacError),
    #[error("writing {0}: {1}")]
    Io(String, std::io::Error),
    #[error("Opus encoder: {0}")]
    Opus(#[from] opus::Error),
}

/// Where each track sits and how long the stems are.
pub struct Plan {
    pub timeline: Timeline,
    /// (track, offset in samples, decoded samples)
    pub tracks: Vec<(TrackTimeline, u64, u64)>,
    /// Length of every stem, in samples per channel.
    pub total: u64,
}

impl Plan {
    pub fn load(dir: &Path) -> Result<Plan, ExportError> {
        let timeline = Timeline::load(dir).map_err(ExportError::Timeline)?;
        let lengths: Vec<Result<u64, decode::DecodeError>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                timeline.tracks.iter().map(|t| s.spawn(move || decode::track_samples(&dir.join(&t.file)))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(Ok(0))).collect()
        });
        Plan::new(timeline, lengths.into_iter().collect::<Result<_, _>>()?)
    }

    /// Places each track (`lengths`: its decoded samples, in the timeline's order) on the
    /// recording's clock. Refuses a plan longer than [`MAX_RECORDING_SAMPLES`].
    pub fn new(timeline: Timeline, lengths: Vec<u64>) -> Result<Plan, ExportError> {
        if timeline.tracks.is_empty() {
            return Err(ExportError::NoTracks);
        }
        let tracks: Vec<(TrackTimeline, u64, u64)> =
            timeline.tracks.iter().zip(lengths).map(|(t, len)| (t.clone(), t.start_offset_samples, len)).collect();
        let total = tracks
            .iter()
            .map(|(_, off, len)| off.checked_add(*len).unwrap_or(u64::MAX))
            .chain(timeline.stopped_len_samples())
            .max()
            .unwrap_or(0);
        if total > MAX_RECORDING_SAMPLES {
            return Err(ExportError::TooLong(total as f64 / f64::from(RATE) / 3600.0));
        }
        Ok(Plan { timeline, tracks, total })
    }

    pub fn duration_s(&self) -> f64 {
        self.total as f64 / f64::from(RATE)
    }
}

/// Exports the recording in `dir` into `out` (created if missing). `progress` gets 0..=1.
pub fn export(
    dir: &Path,
    out: &Path,
    opts: &ExportOptions,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<Vec<ExportedFile>, ExportError> {
    opts.validate()?;
    let plan = Plan::load(dir)?;
    std::fs::create_dir_all(out).map_err(|e| ExportError::Io(out.display().to_string(), e))?;
    let files = match opts.layout {
        Layout::Stems => stems(dir, out, &plan, opts, progress)?,
        Layout::Mix => vec![mix(dir, out, &plan, opts, progress)?],
    };
    progress(1.0);
    Ok(files)
}

fn stems(
    dir: &Path,
    out: &Path,
    plan: &Plan,
    opts: &ExportOptions,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<Vec<ExportedFile>, ExportError> {
    let done = AtomicU64::new(0);
    let all = plan.total.saturating_mul(plan.tracks.len() as u64).max(1);
    let results: Vec<Result<ExportedFile, ExportError>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .tracks
            .iter()
            .map(|(track, offset, _)| {
                let done = &done;
                s.spawn(move || {
                    let name = format!("{}.{}", file_stem(&track.file), opts.format.extension());
                    let path = out.join(&name);
                    let mut reader = TrackReader::open(&dir.join(&track.file), *offset, plan.total)?;
                    let meta = Meta::stem(&plan.timeline, track);
                    let mut sink = Sink::create(&path, opts, &meta)?;
                    let mut buf = vec![0f32; CHUNK * CHANNELS];
                    loop {
                        let n = reader.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        sink.write(&buf[..n * CHANNELS], 1.0)?;
                        let d = done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        progress(d as f64 / all as f64 * 0.99);
                    }
                    sink.finish()?;
                    Ok(exported(&path, name, Some(track.participant_id.clone())))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(ExportError::BadRequest("an export thread panicked".into()))))
            .collect()
    });
    results.into_iter().collect()
}

fn mix(
    dir: &Path,
    out: &Path,
    plan: &Plan,
    opts: &ExportOptions,
    progress: &(dyn Fn(f64) + Sync),
) -> Result<ExportedFile, ExportError> {
    // Two passes over the tracks, streamed: the first finds the sum's peak, the second writes it
    // scaled. Decoding twice is cheap (libopus runs hundreds of times realtime); holding every
    // decoded track for one pass took 23 MB per track-minute, which glibc kept after the job.
    let mut peak = 0f32;
    summed_chunks(dir, plan, &|p| progress(p * 0.4), |sum| {
        peak = sum.iter().fold(peak, |m, v| m.max(v.abs()));
        Ok(())
    })?;
    let gain = if peak > MIX_CEILING { MIX_CEILING / peak } else { 1.0 };
    let name = format!("mix.{}", opts.format.extension());
    let path = out.join(&name);
    let mut meta = Meta::mix(&plan.timeline);
    meta.comments.push(("VEZA_MIX_GAIN".into(), format!("{gain:.4}")));
    let mut sink = Sink::create(&path, opts, &meta)?;
    summed_chunks(dir, plan, &|p| progress(0.4 + p * 0.59), |sum| sink.write(sum, gain))?;
    sink.finish()?;
    Ok(exported(&path, name, None))
}

/// Chunks of a mix in flight per track: decoding runs this far ahead of the summing.
const MIX_QUEUE_CHUNKS: usize = 4;

/// Decodes every track on its own thread and hands `each` the sum of the tracks, [`CHUNK`]
/// samples at a time in order; `progress` gets 0..=1 of this pass.
fn summed_chunks(
    dir: &Path,
    plan: &Plan,
    progress: &(dyn Fn(f64) + Sync),
    mut each: impl FnMut(&[f32]) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let total = (plan.total as usize * CHANNELS).max(1);
    std::thread::scope(|s| {
        let (tracks, threads): (Vec<_>, Vec<_>) = plan
            .tracks
            .iter()
            .map(|(track, offset, _)| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<f32>, ExportError>>(MIX_QUEUE_CHUNKS);
                let thread = s.spawn(move || {
                    let mut reader = match TrackReader::open(&dir.join(&track.file), *offset, plan.total) {
                        Ok(r) => r,
                        Err(e) => return drop(tx.send(Err(e.into()))),
                    };
                    // Every reader fills whole chunks up to the common length, so chunk k of
                    // every track covers the same samples.
                    loop {
                        let mut chunk = vec![0f32; CHUNK * CHANNELS];
                        match reader.read(&mut chunk) {
                            Ok(0) => return,
                            Ok(n) => chunk.truncate(n * CHANNELS),
                            Err(e) => return drop(tx.send(Err(e.into()))),
                        }
                        // The receiver is gone only when the mix failed: stop quietly.
                        if tx.send(Ok(chunk)).is_err() {
                            return;
                        }
                    }
                });
                (rx, thread)
            })
            .unzip();
        let mut sum = Vec::with_capacity(CHUNK * CHANNELS);
        let mut done = 0usize;
        let result = loop {
            sum.clear();
            let mut failed = None;
            for rx in &tracks {
                // A closed channel is a track that has produced all its samples.
                match rx.recv() {
                    Ok(Ok(chunk)) => {
                        if sum.len() < chunk.len() {
                            sum.resize(chunk.len(), 0.0);
                        }
                        sum.iter_mut().zip(&chunk).for_each(|(a, b)| *a += b);
                    }
                    Ok(Err(e)) => failed = Some(e),
                    Err(_) => {}
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
            if sum.is_empty() {
                break Ok(());
            }
            if let Err(e) = each(&sum) {
                break Err(e);
            }
            done += sum.len();
            progress(done as f64 / total as f64);
        };
        // Closing the channels stops decoders still running (after an error).
        drop(tracks);
        // A decoder that panicked closed its channel early: its track would be missing.
        if threads.into_iter().map(|t| t.join()).any(|r| r.is_err()) {
            return Err(ExportError::BadRequest("an export thread panicked".into()));
        }
        result
    })
}

fn exported(path: &Path, name: String, participant_id: Option<String>) -> ExportedFile {
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    ExportedFile { name, bytes, participant_id }
}

fn file_stem(file: &str) -> &str {
    file.rsplit_once('.').map_or(file, |(stem, _)| stem)
}

/// Tags and BWF fields of one output file.
struct Meta {
    comments: Vec<(String, String)>,
    bext: wav::Bext,
}

impl Meta {
    fn base(t: &Timeline, artist: &str, title: String) -> Meta {
        let started_ms = t.started_at_unix_ms.max(0.0) as u64;
        let comments = vec![
            ("TITLE".to_owned(), title.clone()),
            ("ARTIST".to_owned(), artist.to_owned()),
            ("ALBUM".to_owned(), format!("Veza session {}", t.session)),
            ("DATE".to_owned(), t.started_at.clone()),
            ("VEZA_SESSION".to_owned(), t.session.clone()),
            ("VEZA_RECORDING".to_owned(), t.recording_id.clone()),
            ("VEZA_START".to_owned(), t.started_at.clone()),
        ];
        // started_at is RFC 3339 UTC: "yyyy-mm-ddThh:mm:ss.sssZ".
        let (date, time) = (t.started_at.get(..10).unwrap_or(""), t.started_at.get(11..19).unwrap_or(""));
        let bext = wav::Bext {
            description: format!("{title}; recording {} started {}", t.recording_id, t.started_at),
            originator: "veza-sfu".to_owned(),
            originator_reference: t.recording_id.clone(),
            date: date.to_owned(),
            time: time.to_owned(),
            time_reference: (started_ms % 86_400_000) * u64::from(RATE) / 1000,
        };
        Meta { comments, bext }
    }

    fn stem(t: &Timeline, track: &TrackTimeline) -> Meta {
        let mut m = Meta::base(t, &track.name, format!("{} ({})", track.name, t.session));
        m.comments.push(("VEZA_PARTICIPANT".into(), track.participant_id.clone()));
        m.comments.push(("VEZA_USER".into(), track.user.clone()));
        m
    }

    fn mix(t: &Timeline) -> Meta {
        let mut names: Vec<&str> = t.tracks.iter().map(|k| k.name.as_str()).collect();
        names.dedup();
        Meta::base(t, &names.join(", "), format!("Mix ({})", t.session))
    }
}

/// An output file of any format, fed interleaved stereo f32.
enum Sink {
    Flac(Box<flac::FlacWriter>, u8, Vec<i32>),
    Wav(wav::WavWriter, u8, Vec<i32>, String),
    Ogg(oggout::OggOpusWriter),
}

impl Sink {
    fn create(path: &Path, opts: &ExportOptions, meta: &Meta) -> Result<Sink, ExportError> {
        let io = |e| ExportError::Io(path.display().to_string(), e);
        Ok(match opts.format {
            Format::Flac => Sink::Flac(
                Box::new(flac::FlacWriter::create(
                    path,
                    CHANNELS,
                    usize::from(opts.bit_depth),
                    RATE as usize,
                    &meta.comments,
                )?),
                opts.bit_depth,
                Vec::new(),
            ),
            Format::Wav => Sink::Wav(
                wav::WavWriter::create(path, CHANNELS as u16, u16::from(opts.bit_depth), RATE, &meta.bext)
                    .map_err(io)?,
                opts.bit_depth,
                Vec::new(),
                path.display().to_string(),
            ),
            Format::Ogg => Sink::Ogg(oggout::OggOpusWriter::create(path, &meta.comments).map_err(io)?),
        })
    }

    fn write(&mut self, pcm: &[f32], gain: f32) -> Result<(), ExportError> {
        match self {
            Sink::Flac(w, bits, ints) => {
                to_ints(pcm, gain, *bits, ints);
                w.write(ints)?;
            }
            Sink::Wav(w, bits, ints, name) => {
                to_ints(pcm, gain, *bits, ints);
                w.write(ints).map_err(|e| ExportError::Io(name.clone(), e))?;
            }
            Sink::Ogg(w) => w.write(pcm, gain)?,
        }
        Ok(())
    }

    fn finish(self) -> Result<(), ExportError> {
        match self {
            Sink::Flac(w, ..) => w.finish()?,
            Sink::Wav(w, _, _, name) => w.finish().map_err(|e| ExportError::Io(name, e))?,
            Sink::Ogg(w) => w.finish()?,
        }
        Ok(())
    }
}

/// Float to integer PCM at `bits`, rounding, saturating at full scale.
fn to_ints(pcm: &[f32], gain: f32, bits: u8, out: &mut Vec<i32>) {
    let scale = ((1i32 << (bits - 1)) - 1) as f32;
    let (lo, hi) = (-(scale + 1.0), scale);
    out.clear();
    out.extend(pcm.iter().map(|s| (s * gain * scale).round().clamp(lo, hi) as i32));
}

/// Default output directory for an export of `dir`.
pub fn default_out_dir(dir: &Path, opts: &ExportOptions) -> PathBuf {
    let layout = match opts.layout {
        Layout::Stems => "stems",
        Layout::Mix => "mix",
    };
    dir.join("exports").join(format!("{layout}-{}", opts.format.extension()))
}
