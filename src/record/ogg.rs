//! Ogg Opus (RFC 7845) writing: pages we flush when we choose, OpusHead/OpusTags, and the
//! Opus TOC arithmetic (RFC 6716 §3.1) that gives each packet's duration.

use std::io::{self, Write};

/// Opus timestamps and granule positions run at 48 kHz whatever the input rate.
pub const OPUS_RATE: u32 = 48_000;
/// Decoder delay to discard at the start (RFC 7845 §4.2); libopus at 48 kHz uses 312.
pub const PRE_SKIP: u16 = 312;

/// Samples (at 48 kHz, per channel) in one Opus packet, from its TOC byte and frame count;
/// `None` for an empty or malformed packet.
pub fn packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    let total = frames * frame_samples(toc);
    // RFC 6716: a packet never holds more than 120 ms.
    (total > 0 && total <= 5760).then_some(total)
}

/// Samples per frame of a TOC byte's configuration.
pub fn frame_samples(toc: u8) -> u32 {
    let config = toc >> 3;
    match config {
        // SILK-only NB/MB/WB: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid SWB/FB: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    }
}

/// A one-byte packet with `toc`'s configuration and no frame data: decoders treat its frame as
/// lost (libopus runs concealment), so it marks a lost packet while keeping time.
pub fn loss_marker(toc: u8) -> [u8; 1] {
    [toc & !0x03] // code 0: one frame, here of length zero
}

/// The identification header: `channels`, `pre_skip` (normally [`PRE_SKIP`]), mapping family 0.
pub fn opus_head(channels: u8, pre_skip: u16, input_rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1); // version
    h.push(channels);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&input_rate.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes()); // output gain
    h.push(0); // mapping family 0: mono or stereo
    h
}

/// The comment header: vendor string and `KEY=value` comments.
pub fn opus_tags(vendor: &str, comments: &[(String, String)]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(b"OpusTags");
    push_vorbis_comments(&mut t, vendor, comments);
    t
}

/// Vorbis comment list (also FLAC's VORBIS_COMMENT block): little-endian lengths.
pub fn push_vorbis_comments(out: &mut Vec<u8>, vendor: &str, comments: &[(String, String)]) {
    out.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    out.extend_from_slice(vendor.as_bytes());
    out.extend_from_slice(&(comments.len() as u32).to_le_bytes());
    for (k, v) in comments {
        let c = format!("{k}={v}");
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(c.as_bytes());
    }
}

/// Writes one logical Ogg stream. Packets wait in the current page until [`flush_page`]
/// (or a full page) writes it out, so the caller decides how much a crash can lose.
///
/// [`flush_page`]: OggWriter::flush_page
pub struct OggWriter<W: Write> {
    out: W,
    serial: u32,
    sequence: u32,
    /// Segment table and body of the page being built.
    segments: Vec<u8>,
    body: Vec<u8>,
    /// Granule position after the last packet added to the current page.
    granule: u64,
    /// Where the last packet of the current page starts (segments, body), and the granule
    /// position before it: what [`OggWriter::flush_all_but_last`] needs to hold it back.
    last_start: (usize, usize),
    granule_before_last: u64,
    started: bool,
}

impl<W: Write> OggWriter<W> {
    pub fn new(out: W, serial: u32) -> Self {
        OggWriter {
            out,
            serial,
            sequence: 0,
            segments: Vec::new(),
            body: Vec::new(),
            granule: 0,
            last_start: (0, 0),
            granule_before_last: 0,
            started: false,
        }
    }

    /// Adds a packet ending at `granule`; writes the page first if the packet does not fit.
    pub fn push(&mut self, packet: &[u8], granule: u64) -> io::Result<()> {
        let needed = packet.len() / 255 + 1;
        if needed > 255 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "packet too large for one Ogg page"));
        }
        if self.segments.len() + needed > 255 {
            self.flush_page(false)?;
        }
        self.last_start = (self.segments.len(), self.body.len());
        self.granule_before_last = self.granule;
        let mut left = packet.len();
        while left >= 255 {
            self.segments.push(255);
            left -= 255;
        }
        self.segments.push(left as u8);
        self.body.extend_from_slice(packet);
        self.granule = granule;
        Ok(())
    }

    /// Whether packets are waiting in the current page.
    pub fn pending(&self) -> bool {
        !self.segments.is_empty()
    }

    /// Writes the current page except its last packet, which stays for the next page. A live
    /// recording flushes this way, so that whenever it stops, the end-of-stream page still
    /// holds a packet (an empty last page with a granule position is invalid, RFC 7845 §4).
    pub fn flush_all_but_last(&mut self) -> io::Result<()> {
        let (seg, body) = self.last_start;
        if seg == 0 {
            return Ok(()); // one packet or none: nothing to write yet
        }
        let held_segments = self.segments.split_off(seg);
        let held_body = self.body.split_off(body);
        let held_granule = self.granule;
        self.granule = self.granule_before_last;
        self.flush_page(false)?;
        self.segments = held_segments;
        self.body = held_body;
        self.granule = held_granule;
        self.last_start = (0, 0);
        Ok(())
    }

    /// Writes the current page (if it holds packets, or if `eos` asks for the last page).
    pub fn flush_page(&mut self, eos: bool) -> io::Result<()> {
        if self.segments.is_empty() && !eos {
            return Ok(());
        }
        let mut flags = 0u8;
        if !self.started {
            flags |= 0x02; // beginning of stream
        }
        if eos {
            flags |= 0x04;
        }
        let mut page = Vec::with_capacity(27 + self.segments.len() + self.body.len());
        page.extend_from_slice(b"OggS");
        page.push(0); // version
        page.push(flags);
        page.extend_from_slice(&self.granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]); // CRC, filled below
        page.push(self.segments.len() as u8);
        page.extend_from_slice(&self.segments);
        page.extend_from_slice(&self.body);
        let crc = ogg_crc(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&page)?;
        self.out.flush()?;
        metrics::counter!(crate::telemetry::RECORDING_BYTES).increment(page.len() as u64);
        self.sequence += 1;
        self.started = true;
        self.segments.clear();
        self.body.clear();
        self.last_start = (0, 0);
        Ok(())
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// CRC-32 of Ogg pages: polynomial 0x04c11db7, not reflected, initial value 0.
fn ogg_crc(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 { (r << 1) ^ 0x04c1_1db7 } else { r << 1 };
            }
            *e = r;
        }
        t
    });
    data.iter().fold(0u32, |crc, &b| (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_durations() {
        // CELT FB 10 ms stereo, code 0.
        assert_eq!(packet_samples(&[(30 << 3) | 0x04, 1, 2]), Some(480));
        // SILK WB 20 ms, code 1 (two frames).
        assert_eq!(packet_samples(&[(9 << 3) | 1, 0]), Some(1920));
        // Code 3 with 3 frames of CELT 2.5 ms.
        assert_eq!(packet_samples(&[(28 << 3) | 3, 3]), Some(360));
        assert_eq!(packet_samples(&[]), None);
        assert_eq!(packet_samples(&loss_marker((31 << 3) | 0x05)), Some(960));
    }

    #[test]
    fn pages_read_back_with_the_ogg_crate() {
        let mut buf = Vec::new();
        {
            let mut w = OggWriter::new(&mut buf, 7);
            w.push(&opus_head(2, PRE_SKIP, 48_000), 0).unwrap();
            w.flush_page(false).unwrap();
            w.push(&opus_tags("t", &[("A".into(), "b".into())]), 0).unwrap();
            w.flush_page(false).unwrap();
            let big = vec![9u8; 600];
            for i in 0..300u64 {
                w.push(if i % 2 == 0 { &big } else { &[1, 2, 3] }, (i + 1) * 480).unwrap();
            }
            w.flush_page(true).unwrap();
        }
        let mut r = ogg::PacketReader::new(std::io::Cursor::new(buf));
        let mut n = 0;
        let mut last = None;
        while let Some(p) = r.read_packet().unwrap() {
            n += 1;
            last = Some(p);
        }
        assert_eq!(n, 302);
        let last = last.unwrap();
        assert!(last.last_in_stream());
        assert_eq!(last.absgp_page(), 300 * 480);
    }

    /// A live recording flushes often; whenever it stops, its last page must hold a packet and
    /// every page's granule must be that of its last completed packet.
    #[test]
    fn periodic_flushes_keep_a_packet_for_the_last_page() {
        let mut buf = Vec::new();
        {
            let mut w = OggWriter::new(&mut buf, 9);
            for i in 0..10u64 {
                w.push(&[1, 2, 3], (i + 1) * 480).unwrap();
                w.flush_all_but_last().unwrap(); // as if a flush came after every packet
            }
            w.flush_page(true).unwrap();
        }
        let mut r = ogg::PacketReader::new(std::io::Cursor::new(buf));
        let mut granules = Vec::new();
        while let Some(p) = r.read_packet().unwrap() {
            if p.last_in_page() {
                granules.push(p.absgp_page());
            }
            if p.last_in_stream() {
                assert_eq!(p.absgp_page(), 10 * 480, "the end page holds the last packet");
            }
        }
        assert_eq!(granules, (1..=10u64).map(|i| i * 480).collect::<Vec<_>>());
    }
}
