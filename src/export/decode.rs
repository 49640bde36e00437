//! Decoding one recorded track onto the recording's clock: libopus with concealment (FEC from
//! the next packet when it carries any, else PLC) for loss markers, the pre-skip dropped, and
//! silence before the track's first sample and after its last one, so every track read
//! through a [`TrackReader`] starts at the recording's zero and has the same length.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use crate::record::ogg::{PRE_SKIP, packet_samples};

/// Stereo, interleaved.
pub const CHANNELS: usize = 2;
/// Largest Opus packet duration (120 ms) in samples per channel.
const MAX_PACKET_SAMPLES: usize = 5760;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: not an Ogg Opus file: {reason}")]
    NotOpus { file: String, reason: String },
    #[error("{file}: libopus: {source}")]
    Opus { file: String, source: opus::Error },
}

/// Length in samples (per channel, after pre-skip) of an Ogg Opus file, from its packets'
/// durations: a quick pass without decoding. A file cut short by a crash counts what is whole.
pub fn track_samples(path: &Path) -> Result<u64, DecodeError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| DecodeError::Io { file: name.clone(), source })?;
    track_samples_from(&name, BufReader::with_capacity(256 * 1024, file))
}

/// [`track_samples`] of Ogg Opus bytes from any reader; `name` is for errors.
pub fn track_samples_from<R: Read + Seek>(name: &str, input: R) -> Result<u64, DecodeError> {
    let mut reader = ogg::PacketReader::new(input);
    let mut total = 0u64;
    let mut index = 0u64;
    loop {
        match reader.read_packet() {
            Ok(Some(p)) => {
                if index >= 2 {
                    total += u64::from(packet_samples(&p.data).unwrap_or(0));
                }
                index += 1;
            }
            Ok(None) => break,
            // A torn last page (the process died mid-write): stop at the last whole one.
            Err(_) if index >= 2 => break,
            Err(e) => return Err(DecodeError::NotOpus { file: name.to_owned(), reason: e.to_string() }),
        }
    }
    Ok(total.saturating_sub(u64::from(PRE_SKIP)))
}

/// Reads one track as 48 kHz stereo f32 on the recording's clock: `offset` samples of silence,
/// the decoded track, then silence up to `total` samples.
pub struct TrackReader<R: Read + Seek = BufReader<File>> {
    name: String,
    reader: ogg::PacketReader<R>,
    decoder: opus::Decoder,
    /// Samples still to skip from the decoder's output (pre-skip), per channel.
    skip: usize,
    /// Leading silence still to produce, per channel.
    lead: u64,
    /// Samples produced so far, per channel.
    produced: u64,
    total: u64,
    /// Decoded but not yet handed out (interleaved), from `pos`.
    buf: Vec<f32>,
    pos: usize,
    /// The packet after the current one (for FEC).
    next: Option<Vec<u8>>,
    ended: bool,
    /// Packets concealed (PLC or FEC).
    pub concealed: u64,
}

impl TrackReader {
    pub fn open(path: &Path, offset: u64, total: u64) -> Result<TrackReader, DecodeError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| DecodeError::Io { file: name.clone(), source })?;
        TrackReader::from_reader(name, BufReader::with_capacity(256 * 1024, file), offset, total)
    }
}

impl<R: Read + Seek> TrackReader<R> {
    /// A reader of Ogg Opus bytes from any source; `name` is for errors.
    pub fn from_reader(name: String, input: R, offset: u64, total: u64) -> Result<TrackReader<R>, DecodeError> {
        let mut reader = ogg::PacketReader::new(input);
        let not_opus = |reason: &str| DecodeError::NotOpus { file: name.clone(), reason: reason.to_owned() };
        let head = reader.read_packet().map_err(|e| not_opus(&e.to_string()))?.ok_or_else(|| not_opus("empty"))?;
        if head.data.len() < 19 || &head.data[..8] != b"OpusHead" {
            return Err(not_opus("no OpusHead"));
        }
        let pre_skip = u16::from_le_bytes([head.data[10], head.data[11]]);
        let tags = reader.read_packet().map_err(|e| not_opus(&e.to_string()))?;
        if tags.as_ref().is_some_and(|t| !t.data.starts_with(b"OpusTags")) {
            return Err(not_opus("no OpusTags"));
        }
        // Stereo output whatever the stream carries: libopus up-mixes mono packets.
        let decoder = opus::Decoder::new(48_000, opus::Channels::Stereo)
            .map_err(|source| DecodeError::Opus { file: name.clone(), source })?;
        let mut r = TrackReader {
            name,
            reader,
            decoder,
            skip: usize::from(pre_skip),
            lead: offset,
            produced: 0,
            total,
            buf: Vec::with_capacity(MAX_PACKET_SAMPLES * CHANNELS),
            pos: 0,
            next: None,
            ended: false,
            concealed: 0,
        };
        r.next = r.read_next();
        Ok(r)
    }

    /// Samples per channel this reader produces in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn produced(&self) -> u64 {
        self.produced
    }

    fn read_next(&mut self) -> Option<Vec<u8>> {
        if self.ended {
            return None;
        }
        match self.reader.read_packet() {
            Ok(Some(p)) => Some(p.data),
            // End of file, or a page torn by a crash: what came before stands.
            Ok(None) | Err(_) => {
                self.ended = true;
                None
            }
        }
    }

    /// Decodes the next packet into `buf`; false at the end of the file.
    fn decode_next(&mut self) -> Result<bool, DecodeError> {
        let Some(packet) = self.next.take() else { return Ok(false) };
        self.next = self.read_next();
        let Some(samples) = packet_samples(&packet) else { return Ok(true) };
        let samples = samples as usize;
        self.buf.clear();
        self.buf.resize(samples * CHANNELS, 0.0);
        self.pos = 0;
        let opus_err = |source| DecodeError::Opus { file: self.name.clone(), source };
        let got = if packet.len() <= 1 {
            // A loss marker: recover the frame from the next packet's FEC when it has one
            // (libopus conceals with PLC when it does not), else conceal.
            self.concealed += 1;
            match self.next.as_deref() {
                Some(next) if next.len() > 1 => self.decoder.decode_float(next, &mut self.buf, true),
                _ => self.decoder.decode_float(&[], &mut self.buf, false),
            }
        } else {
            self.decoder.decode_float(&packet, &mut self.buf, false)
        };
        let got = match got {
            Ok(n) => n,
            // A corrupt packet: conceal it rather than give up on the track.
            Err(_) => {
                self.concealed += 1;
                self.decoder.decode_float(&[], &mut self.buf, false).map_err(opus_err)?
            }
        };
        self.buf.truncate(got * CHANNELS);
        if self.skip > 0 {
            let n = self.skip.min(got);
            self.pos = n * CHANNELS;
            self.skip -= n;
        }
        Ok(true)
    }

    /// Fills `out` (interleaved stereo) with the next samples; returns how many samples per
    /// channel it wrote (fewer than asked only at the end).
    pub fn read(&mut self, out: &mut [f32]) -> Result<usize, DecodeError> {
        let want = out.len() / CHANNELS;
        let mut done = 0usize;
        while done < want && self.produced < self.total {
            let room = (want - done).min((self.total - self.produced) as usize);
            let dst = &mut out[done * CHANNELS..];
            if self.lead > 0 {
                let n = room.min(self.lead as usize);
                dst[..n * CHANNELS].fill(0.0);
                self.lead -= n as u64;
                self.produced += n as u64;
                done += n;
                continue;
            }
            if self.pos >= self.buf.len() && !self.decode_next()? {
                // The track ended: silence to the common length.
                let n = room;
                dst[..n * CHANNELS].fill(0.0);
                self.produced += n as u64;
                done += n;
                continue;
            }
            let avail = (self.buf.len() - self.pos) / CHANNELS;
            let n = room.min(avail);
            dst[..n * CHANNELS].copy_from_slice(&self.buf[self.pos..self.pos + n * CHANNELS]);
            self.pos += n * CHANNELS;
            self.produced += n as u64;
            done += n;
        }
        Ok(done)
    }
}
