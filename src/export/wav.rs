//! WAV files with a Broadcast Wave `bext` chunk (EBU Tech 3285): 16- or 24-bit PCM whose
//! TimeReference places the file's first sample on the day's clock, so a DAW that reads BWF
//! puts every stem of a recording at the same position.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// What goes into the `bext` chunk.
pub struct Bext {
    /// Free text, at most 256 bytes (longer is cut).
    pub description: String,
    pub originator: String,
    pub originator_reference: String,
    /// `yyyy-mm-dd`
    pub date: String,
    /// `hh:mm:ss`
    pub time: String,
    /// First sample's position, in samples since midnight.
    pub time_reference: u64,
}

pub struct WavWriter {
    out: BufWriter<File>,
    bits: u16,
    data_bytes: u64,
    /// Offset of the data chunk's size field.
    data_size_at: u64,
    bytes: Vec<u8>,
}

fn fixed(out: &mut Vec<u8>, text: &str, len: usize) {
    let b = text.as_bytes();
    let n = b.len().min(len);
    out.extend_from_slice(&b[..n]);
    out.resize(out.len() + (len - n), 0);
}

impl WavWriter {
    pub fn create(path: &Path, channels: u16, bits: u16, rate: u32, bext: &Bext) -> std::io::Result<WavWriter> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let mut head = Vec::with_capacity(1024);
        head.extend_from_slice(b"RIFF");
        head.extend_from_slice(&0u32.to_le_bytes()); // patched by finish
        head.extend_from_slice(b"WAVE");

        let mut b = Vec::with_capacity(602);
        fixed(&mut b, &bext.description, 256);
        fixed(&mut b, &bext.originator, 32);
        fixed(&mut b, &bext.originator_reference, 32);
        fixed(&mut b, &bext.date, 10);
        fixed(&mut b, &bext.time, 8);
        b.extend_from_slice(&(bext.time_reference as u32).to_le_bytes()); // TimeReferenceLow
        b.extend_from_slice(&((bext.time_reference >> 32) as u32).to_le_bytes()); // TimeReferenceHigh
        b.extend_from_slice(&1u16.to_le_bytes()); // version
        b.resize(b.len() + 64 + 190, 0); // UMID, reserved
        let history =
            format!("A=PCM,F={rate},W={bits},M={},T=veza-sfu\r\n", if channels == 2 { "stereo" } else { "mono" });
        b.extend_from_slice(history.as_bytes());
        if b.len() % 2 == 1 {
            b.push(0);
        }
        head.extend_from_slice(b"bext");
        head.extend_from_slice(&(b.len() as u32).to_le_bytes());
        head.extend_from_slice(&b);

        let block_align = channels * bits / 8;
        head.extend_from_slice(b"fmt ");
        head.extend_from_slice(&16u32.to_le_bytes());
        head.extend_from_slice(&1u16.to_le_bytes()); // PCM
        head.extend_from_slice(&channels.to_le_bytes());
        head.extend_from_slice(&rate.to_le_bytes());
        head.extend_from_slice(&(rate * u32::from(block_align)).to_le_bytes());
        head.extend_from_slice(&block_align.to_le_bytes());
        head.extend_from_slice(&bits.to_le_bytes());

        head.extend_from_slice(b"data");
        let data_size_at = head.len() as u64;
        head.extend_from_slice(&0u32.to_le_bytes());
        out.write_all(&head)?;
        Ok(WavWriter { out, bits, data_bytes: 0, data_size_at, bytes: Vec::new() })
    }

    /// Appends interleaved samples already scaled to the bit depth.
    pub fn write(&mut self, samples: &[i32]) -> std::io::Result<()> {
        self.bytes.clear();
        match self.bits {
            16 => {
                for s in samples {
                    self.bytes.extend_from_slice(&(*s as i16).to_le_bytes());
                }
            }
            _ => {
                for s in samples {
                    self.bytes.extend_from_slice(&s.to_le_bytes()[..3]);
                }
            }
        }
        self.data_bytes += self.bytes.len() as u64;
        self.out.write_all(&self.bytes)
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        if self.data_bytes % 2 == 1 {
            self.out.write_all(&[0])?;
        }
        self.out.flush()?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        let end = file.stream_position()?;
        let data = u32::try_from(self.data_bytes).unwrap_or(u32::MAX);
        let riff = u32::try_from(end - 8).unwrap_or(u32::MAX);
        file.seek(SeekFrom::Start(4))?;
        file.write_all(&riff.to_le_bytes())?;
        file.seek(SeekFrom::Start(self.data_size_at))?;
        file.write_all(&data.to_le_bytes())
    }
}
