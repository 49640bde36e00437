//! A real Opus source for simulated musicians: a stereo sine tone (or a melody of them),
//! encoded by libopus in 10 ms frames, whose RTP clock follows the wall clock across pauses the way a capture device does
//! (a sim that stops publishing for a second resumes one second later in RTP time).

use std::time::Instant;

use bytes::Bytes;

/// Samples per channel in one 10 ms frame at 48 kHz.
pub const FRAME_SAMPLES: u32 = 480;
/// Peak amplitude of the tone (−6 dBFS): three of them summed would clip a naive mix.
pub const AMPLITUDE: f32 = 0.5;
/// Frames each note of a melody lasts (250 ms).
pub const NOTE_FRAMES: u64 = 25;

pub struct Tone {
    encoder: opus::Encoder,
    /// Played in turn, [`NOTE_FRAMES`] each, from frame 0.
    notes: Vec<f32>,
    /// Index of the next frame since the tone started.
    frame: u64,
    /// When frame 0 was sent.
    epoch: Option<Instant>,
    ts0: u32,
    pcm: Vec<f32>,
    out: Vec<u8>,
}

impl Tone {
    /// A tone playing `notes` (in Hz) in turn, [`NOTE_FRAMES`] each, over and over (one note:
    /// a steady tone), from an encoder that expects `loss_percent` packet loss (0..=100).
    ///
    /// In-band FEC is on either way, but libopus only spends bits on it (the previous frame
    /// again, at lower quality, in each packet) when it expects loss: for music above 8 %,
    /// where it switches from CELT to hybrid, whose SILK layer carries the FEC. And SILK codes
    /// FEC only for frames its voice activity detector finds active: a steady tone soon reads
    /// as background and loses it after ~350 ms, while a melody keeps it.
    pub fn new(notes: &[f32], loss_percent: u8) -> Result<Tone, opus::Error> {
        let mut encoder = opus::Encoder::new(48_000, opus::Channels::Stereo, opus::Application::Audio)?;
        encoder.set_bitrate(opus::Bitrate::Bits(128_000))?;
        encoder.set_inband_fec(true)?;
        encoder.set_packet_loss_perc(i32::from(loss_percent.min(100)))?;
        encoder.set_dtx(false)?;
        Ok(Tone {
            encoder,
            notes: notes.to_vec(),
            frame: 0,
            epoch: None,
            ts0: rand::random(),
            pcm: vec![0.0; FRAME_SAMPLES as usize * 2],
            out: vec![0; 1500],
        })
    }

    /// A sender task starts: skip the frames a pause let pass.
    pub fn resume(&mut self, now: Instant) {
        match self.epoch {
            None => self.epoch = Some(now),
            Some(epoch) => {
                let due = (now - epoch).as_micros() / 10_000;
                self.frame = self.frame.max(u64::try_from(due).unwrap_or(u64::MAX));
            }
        }
    }

    /// The next frame: its RTP timestamp and Opus payload.
    pub fn next_packet(&mut self) -> Result<(u32, Bytes), opus::Error> {
        let start = self.frame * u64::from(FRAME_SAMPLES);
        let note = usize::try_from(self.frame / NOTE_FRAMES).unwrap_or(0) % self.notes.len().max(1);
        // No notes: silence.
        let hz = self.notes.get(note).copied().unwrap_or(0.0);
        let step = std::f64::consts::TAU * f64::from(hz) / 48_000.0;
        for (i, s) in self.pcm.chunks_exact_mut(2).enumerate() {
            // Phase from the absolute sample index (mod one period keeps f64 precise).
            let v = ((start + i as u64) as f64 * step).sin() as f32 * AMPLITUDE;
            s[0] = v;
            s[1] = v;
        }
        let len = self.encoder.encode_float(&self.pcm, &mut self.out)?;
        let ts = self.ts0.wrapping_add((start & 0xFFFF_FFFF) as u32);
        self.frame += 1;
        Ok((ts, Bytes::copy_from_slice(&self.out[..len])))
    }
}
