//! `veza-sfu bench-export`: exports a synthetic recording (default 10 minutes, 4 musicians,
//! written by the real recording writer from libopus-encoded music-like signals) to FLAC
//! stems, then has ffmpeg do the same job (`ffmpeg -i track.opus -c:a flac`) on the same
//! machine, and prints both. A benchmark, not a test: it asserts nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;

use super::{ExportOptions, Format, Layout, Plan, export};
use crate::record::tap::{RecItem, RecPacket, TrackMeta};
use crate::record::timeline::Timeline;
use crate::record::writer::{self, WriterSetup};

#[derive(clap::Args, Debug)]
pub struct BenchExportArgs {
    /// Length of the synthetic recording, in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Musicians (tracks).
    #[arg(long, default_value_t = 4)]
    pub musicians: u32,
    /// FLAC bit depth of our export (ffmpeg picks its own; both are printed).
    #[arg(long, default_value_t = 16)]
    pub bit_depth: u8,
    /// Where the synthetic recording is kept; reused when it matches.
    #[arg(long, default_value = "target/bench-export")]
    pub dir: PathBuf,
    /// Skip the ffmpeg run.
    #[arg(long)]
    pub no_ffmpeg: bool,
}

pub fn run(args: &BenchExportArgs) -> anyhow::Result<()> {
    let rec = args.dir.join("recording");
    let seconds = args.minutes * 60.0;
    let reusable = Timeline::load(&rec).is_ok_and(|t| {
        t.tracks.len() == args.musicians as usize
            && (t.stopped_len_samples().unwrap_or(0) as f64 / 48_000.0 - seconds).abs() < 1.0
    });
    if !reusable {
        let _ = std::fs::remove_dir_all(&rec);
        std::fs::create_dir_all(&rec)?;
        let t = Instant::now();
        eprintln!(
            "generating a {:.1} min, {}-musician recording in {} ...",
            args.minutes,
            args.musicians,
            rec.display()
        );
        generate(&rec, args.musicians, seconds)?;
        eprintln!("generated in {:.1} s", t.elapsed().as_secs_f64());
    }
    let plan = Plan::load(&rec)?;
    let audio_s = plan.duration_s();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "export benchmark: {} tracks x {:.1} s of 48 kHz stereo Opus, {} cores",
        plan.tracks.len(),
        audio_s,
        cores
    );

    let out = args.dir.join("veza-out");
    let _ = std::fs::remove_dir_all(&out);
    let opts = ExportOptions { format: Format::Flac, layout: Layout::Stems, bit_depth: args.bit_depth };
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let t = Instant::now();
    let files = export(&rec, &out, &opts, &|_| {})?;
    let ours = t.elapsed().as_secs_f64();
    let ours_cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    println!(
        "veza-sfu export (FLAC stems, {}-bit, aligned): {:>7.2} s wall, {:>7.2} s CPU, {:>6.1}x realtime per recording, {:>6.1}x per track-second, {:.1} MB",
        args.bit_depth,
        ours,
        ours_cpu,
        audio_s / ours,
        audio_s * plan.tracks.len() as f64 / ours,
        bytes as f64 / 1e6
    );

    if args.no_ffmpeg {
        return Ok(());
    }
    let ff = args.dir.join("ffmpeg-out");
    let _ = std::fs::remove_dir_all(&ff);
    std::fs::create_dir_all(&ff)?;
    let job = |t: &crate::record::timeline::TrackTimeline| {
        let mut c = Command::new("ffmpeg");
        c.args(["-v", "error", "-y", "-i"])
            .arg(rec.join(&t.file))
            .args(["-c:a", "flac"])
            .arg(ff.join(format!("{}.flac", t.file)));
        c
    };
    // One after the other, as a script would run it.
    let cpu0 = cpu_seconds(libc::RUSAGE_CHILDREN);
    let t = Instant::now();
    for (track, _, _) in &plan.tracks {
        let status = job(track).status().context("running ffmpeg (apt-get install ffmpeg)")?;
        anyhow::ensure!(status.success(), "ffmpeg failed on {}", track.file);
    }
    let seq = t.elapsed().as_secs_f64();
    let seq_cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - cpu0;
    // All at once, to give ffmpeg the same parallelism we use.
    let t = Instant::now();
    let mut children = Vec::new();
    for (track, _, _) in &plan.tracks {
        children.push(job(track).spawn()?);
    }
    for mut c in children {
        anyhow::ensure!(c.wait()?.success(), "ffmpeg failed");
    }
    let par = t.elapsed().as_secs_f64();
    let fmt = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=sample_fmt,bits_per_raw_sample", "-of", "csv=p=0"])
        .arg(ff.join(format!("{}.flac", plan.tracks[0].0.file)))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "ffmpeg -i track.opus -c:a flac, sequential ({fmt}, unaligned): {:>7.2} s wall, {:>7.2} s CPU, {:>6.1}x realtime per recording",
        seq,
        seq_cpu,
        audio_s / seq
    );
    println!(
        "ffmpeg -i track.opus -c:a flac, {} in parallel:                {:>7.2} s wall,               {:>6.1}x realtime per recording",
        plan.tracks.len(),
        par,
        audio_s / par
    );
    println!("speed-up of veza-sfu over ffmpeg: {:.2}x (sequential), {:.2}x (parallel)", seq / ours, par / ours);
    Ok(())
}

fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Writes a recording through the real writer: each musician plays a different chord with
/// vibrato and a little noise, joins 0.5 s after the previous one, and pauses for 2 s once.
fn generate(dir: &Path, musicians: u32, seconds: f64) -> anyhow::Result<()> {
    let started_at = SystemTime::now();
    let started_instant = Instant::now();
    let setup = WriterSetup {
        dir: dir.to_owned(),
        session: "bench".into(),
        recording_id: "bench-export".into(),
        started_by: "bench".into(),
        started_at,
        started_instant,
    };
    let status = Arc::new(std::sync::Mutex::new(writer::initial_timeline(&setup)));
    let (tx, rx) = std::sync::mpsc::sync_channel::<RecItem>(4096);
    let writer = std::thread::spawn({
        let status = status.clone();
        move || writer::run(setup, rx, status)
    });
    let frames = (seconds * 100.0) as u64;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for m in 0..musicians {
            let tx = tx.clone();
            handles.push(s.spawn(move || -> anyhow::Result<()> {
                let meta = Arc::new(TrackMeta {
                    key: m + 1,
                    participant_id: format!("pbench{m}"),
                    user: format!("musician{m}"),
                    name: format!("Musician {}", m + 1),
                    track_id: format!("pbench{m}-a1"),
                    dropped: AtomicU64::new(0),
                });
                let mut enc = opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio)?;
                enc.set_bitrate(opus::Bitrate::Bits(128_000))?;
                enc.set_inband_fec(true)?;
                let join = u64::from(m) * 50; // 0.5 s apart
                let pause = join + 3000..join + 3200; // a 2 s pause 30 s in
                let base = [110.0, 146.83, 196.0, 261.63][m as usize % 4] * (1 + m / 4) as f64;
                let mut pcm = vec![0f32; 960];
                let mut out = vec![0u8; 1500];
                let mut noise = 0x1234_5678u32 ^ m;
                let (ts0, seq0) = (rand::random::<u32>(), rand::random::<u16>());
                for k in join..frames {
                    if pause.contains(&k) {
                        continue;
                    }
                    for (i, frame) in pcm.chunks_exact_mut(2).enumerate() {
                        let t = (k * 480 + i as u64) as f64 / 48_000.0;
                        let vib = 1.0 + 0.003 * (t * 5.5).sin();
                        let mut v = 0.0;
                        for (h, r) in [1.0, 1.25, 1.5, 2.0].iter().enumerate() {
                            v += (std::f64::consts::TAU * base * r * vib * t).sin() * 0.12 / (h as f64 + 1.0);
                        }
                        noise ^= noise << 13;
                        noise ^= noise >> 17;
                        noise ^= noise << 5;
                        let n = (noise as f64 / u32::MAX as f64 - 0.5) * 0.01;
                        frame[0] = (v + n) as f32;
                        frame[1] = (v * 0.9 - n) as f32;
                    }
                    let len = enc.encode_float(&pcm, &mut out)?;
                    let packet = RecPacket {
                        track: meta.clone(),
                        sequence: seq0.wrapping_add((k - join) as u16),
                        timestamp: ts0.wrapping_add((k * 480) as u32),
                        ssrc: 0xbe00 + m,
                        payload: Bytes::copy_from_slice(&out[..len]),
                        arrival: started_instant + Duration::from_millis(k * 10),
                    };
                    tx.send(RecItem::Rtp(packet)).map_err(|_| anyhow::anyhow!("writer gone"))?;
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("generator panicked"))??;
        }
        Ok(())
    })?;
    drop(tx);
    writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))?;
    // The writer stamped the stop with the wall clock of generation; the recording's length
    // is the synthetic one.
    let mut t = Timeline::load(dir)?;
    t.stopped_at_unix_ms = Some(t.started_at_unix_ms + seconds * 1000.0);
    t.store(dir)?;
    Ok(())
}
