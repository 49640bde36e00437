//! Ogg Opus output for exports: the aligned PCM re-encoded by libopus in 20 ms frames at
//! 192 kbit/s stereo, with the encoder's lookahead as pre-skip and the end trimmed by the
//! last granule position, so the file decodes to exactly the samples given.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::ExportError;
use crate::record::ogg::{OggWriter, opus_head, opus_tags};

const FRAME: usize = 960;
const CHANNELS: usize = 2;
/// Pages are closed every this many packets (1 s).
const PACKETS_PER_PAGE: u32 = 50;

pub struct OggOpusWriter {
    ogg: OggWriter<BufWriter<File>>,
    encoder: opus::Encoder,
    pre_skip: u64,
    /// Samples per channel given so far.
    samples: u64,
    /// Granule after the last packet written.
    granule: u64,
    pending: Vec<f32>,
    packet: Vec<u8>,
    in_page: u32,
    name: String,
}

impl OggOpusWriter {
    pub fn create(path: &Path, comments: &[(String, String)]) -> std::io::Result<OggOpusWriter> {
        let opus = |e: opus::Error| std::io::Error::other(e.to_string());
        let mut encoder = opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio).map_err(opus)?;
        encoder.set_bitrate(opus::Bitrate::Bits(192_000)).map_err(opus)?;
        let pre_skip = encoder.get_lookahead().map_err(opus)?.max(0) as u64;
        let mut ogg = OggWriter::new(BufWriter::with_capacity(1 << 20, File::create(path)?), rand::random());
        ogg.push(&opus_head(2, pre_skip as u16, 48_000), 0)?;
        ogg.flush_page(false)?;
        ogg.push(&opus_tags(concat!("veza-sfu ", env!("CARGO_PKG_VERSION")), comments), 0)?;
        ogg.flush_page(false)?;
        Ok(OggOpusWriter {
            ogg,
            encoder,
            pre_skip,
            samples: 0,
            granule: 0,
            pending: Vec::with_capacity(FRAME * CHANNELS),
            packet: vec![0; 4000],
            in_page: 0,
            name: path.display().to_string(),
        })
    }

    pub fn write(&mut self, pcm: &[f32], gain: f32) -> Result<(), ExportError> {
        self.samples += (pcm.len() / CHANNELS) as u64;
        for s in pcm {
            self.pending.push(s * gain);
            if self.pending.len() == FRAME * CHANNELS {
                self.encode(None)?;
            }
        }
        Ok(())
    }

    /// Encodes the pending frame (padded with silence); `end` is the final granule when this
    /// is the last packet.
    fn encode(&mut self, end: Option<u64>) -> Result<(), ExportError> {
        self.pending.resize(FRAME * CHANNELS, 0.0);
        let len = self.encoder.encode_float(&self.pending, &mut self.packet)?;
        self.pending.clear();
        self.granule += FRAME as u64;
        let io = |e| ExportError::Io(self.name.clone(), e);
        self.ogg.push(&self.packet[..len], end.unwrap_or(self.granule)).map_err(io)?;
        self.in_page += 1;
        if self.in_page >= PACKETS_PER_PAGE {
            self.ogg.flush_page(false).map_err(io)?;
            self.in_page = 0;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<(), ExportError> {
        // Feed the encoder's lookahead through with silence; the last granule trims the rest.
        let target = self.pre_skip + self.samples;
        loop {
            let last = self.granule + FRAME as u64 >= target;
            self.encode(last.then_some(target))?;
            if last {
                break;
            }
        }
        let name = self.name.clone();
        self.ogg.flush_page(true).map_err(|e| ExportError::Io(name, e))
    }
}
