//! `veza-sfu export RECORDING_DIR`: the export job from the command line, with a progress bar.

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::{ExportOptions, Format, Layout, Plan, default_out_dir, export};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The recording's directory (data_dir/recordings/SESSION/ID: timeline.json and .opus files).
    pub recording_dir: PathBuf,
    #[arg(long, value_enum, default_value = "flac")]
    pub format: Format,
    #[arg(long, value_enum, default_value = "stems")]
    pub layout: Layout,
    /// 16 or 24 (FLAC and WAV).
    #[arg(long, default_value_t = 24)]
    pub bit_depth: u8,
    /// Output directory (default: RECORDING_DIR/exports/LAYOUT-FORMAT).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let opts = ExportOptions { format: args.format, layout: args.layout, bit_depth: args.bit_depth };
    opts.validate()?;
    let plan = Plan::load(&args.recording_dir)?;
    let out = args.out.clone().unwrap_or_else(|| default_out_dir(&args.recording_dir, &opts));
    if !args.quiet {
        eprintln!(
            "recording {} of session {}: {} track(s), {:.1} s; exporting {:?} {:?} to {}",
            plan.timeline.recording_id,
            plan.timeline.session,
            plan.tracks.len(),
            plan.duration_s(),
            opts.format,
            opts.layout,
            out.display()
        );
    }
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(1000) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let files = export(&args.recording_dir, &out, &opts, &|p| bar.set_position((p * 1000.0) as u64))?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    for f in &files {
        println!("{}\t{} bytes", out.join(&f.name).display(), f.bytes);
    }
    if !args.quiet {
        eprintln!(
            "done in {elapsed:.2} s: {:.0}x realtime ({} track(s) x {:.1} s)",
            plan.duration_s() / elapsed.max(1e-9),
            plan.tracks.len(),
            plan.duration_s()
        );
    }
    Ok(())
}
