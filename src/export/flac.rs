//! A streaming FLAC file writer on flacenc's frame encoder: STREAMINFO (patched at the end
//! with the MD5, sizes and sample count), a VORBIS_COMMENT block, then frames as they come.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use flacenc::bitsink::ByteSink;
use flacenc::component::{BitRepr, StreamInfo};
use flacenc::error::Verify;
use flacenc::source::{Context, Fill, FrameBuf};

use crate::record::ogg::push_vorbis_comments;

/// Samples per channel in one FLAC frame (the reference encoder's default).
pub const BLOCK_SIZE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FlacError {
    #[error("writing FLAC: {0}")]
    Io(#[from] std::io::Error),
    #[error("FLAC encoder: {0}")]
    Encode(String),
}

fn enc_err(e: impl std::fmt::Debug) -> FlacError {
    FlacError::Encode(format!("{e:?}"))
}

pub struct FlacWriter {
    out: BufWriter<File>,
    config: flacenc::error::Verified<flacenc::config::Encoder>,
    info: StreamInfo,
    fb: FrameBuf,
    ctx: Context,
    channels: usize,
    /// Interleaved integer samples waiting for a full block.
    pending: Vec<i32>,
    frame_no: usize,
    sink: ByteSink,
}

impl FlacWriter {
    /// Creates `path` for `channels` × `bits` at `rate`, with Vorbis comments.
    pub fn create(
        path: &Path,
        channels: usize,
        bits: usize,
        rate: usize,
        comments: &[(String, String)],
    ) -> Result<FlacWriter, FlacError> {
        let mut config = flacenc::config::Encoder::default();
        config.block_size = BLOCK_SIZE;
        config.multithread = false; // tracks already run in parallel
        // Fixed predictors only (like `flac -1`): flacenc's LPC search runs its auto-correlation
        // on software FMA on baseline x86-64 and costs 2.4x the CPU for ~25% smaller files.
        config.subframe_coding.use_lpc = false;
        let config = config.into_verified().map_err(enc_err)?;
        let info = StreamInfo::new(rate, channels, bits).map_err(enc_err)?;
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        out.write_all(b"fLaC")?;
        // STREAMINFO: rewritten by `finish` once the stream is known.
        out.write_all(&[0x00, 0, 0, 34])?;
        out.write_all(&[0u8; 34])?;
        let mut vc = Vec::new();
        push_vorbis_comments(&mut vc, concat!("veza-sfu ", env!("CARGO_PKG_VERSION")), comments);
        let len = vc.len() as u32;
        out.write_all(&[0x80 | 4, (len >> 16) as u8, (len >> 8) as u8, len as u8])?; // last block
        out.write_all(&vc)?;
        Ok(FlacWriter {
            out,
            config,
            info,
            fb: FrameBuf::with_size(channels, BLOCK_SIZE).map_err(enc_err)?,
            ctx: Context::new(bits, channels),
            channels,
            pending: Vec::with_capacity(BLOCK_SIZE * channels),
            frame_no: 0,
            sink: ByteSink::new(),
        })
    }

    /// Appends interleaved samples (already scaled to the bit depth).
    pub fn write(&mut self, samples: &[i32]) -> Result<(), FlacError> {
        let block = BLOCK_SIZE * self.channels;
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (block - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == block {
                self.encode_pending()?;
            }
        }
        Ok(())
    }

    fn encode_pending(&mut self) -> Result<(), FlacError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.fb.fill_interleaved(&self.pending).map_err(enc_err)?;
        self.ctx.fill_interleaved(&self.pending).map_err(enc_err)?;
        let frame =
            flacenc::encode_fixed_size_frame(&self.config, &self.fb, self.frame_no, &self.info).map_err(enc_err)?;
        self.info.update_frame_info(&frame);
        self.sink.clear();
        frame.write(&mut self.sink).map_err(enc_err)?;
        self.out.write_all(self.sink.as_slice())?;
        self.frame_no += 1;
        self.pending.clear();
        Ok(())
    }

    /// Encodes what is left and fills in STREAMINFO.
    pub fn finish(mut self) -> Result<(), FlacError> {
        self.encode_pending()?;
        self.info.set_md5_digest(&self.ctx.md5_digest());
        let mut sink = ByteSink::new();
        self.info.write(&mut sink).map_err(enc_err)?;
        self.out.flush()?;
        let mut file = self.out.into_inner().map_err(|e| FlacError::Io(e.into_error()))?;
        file.seek(SeekFrom::Start(8))?;
        file.write_all(sink.as_slice())?;
        Ok(())
    }
}
