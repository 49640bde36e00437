//! The self-checking RTP payload simulated musicians send instead of real Opus.
//!
//! Layout (all integers big-endian):
//!
//! | bytes   | content                                                              |
//! |---------|----------------------------------------------------------------------|
//! | 0..4    | magic `b"VZA1"`                                                      |
//! | 4..8    | stream tag: [`stream_tag`] of the publisher's participant id         |
//! | 8..12   | sequence number, per publisher, starting at 0, +1 per packet sent    |
//! | 12..20  | send time in microseconds since the process-wide [`epoch`]           |
//! | 20..    | filler: byte `i` is `(seq + i) as u8`                                |
//!
//! The send time only means something when sender and receiver share a process (tests and the
//! load generator run the server and all clients in one process), which is what makes one-way
//! latency measurable without clock synchronisation.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// First four bytes of every payload.
pub const MAGIC: [u8; 4] = *b"VZA1";
/// Length of the fixed part (magic, tag, sequence, send time) before the filler.
pub const HEADER_LEN: usize = 20;
/// Smallest payload [`encode`] produces: the fixed part plus a little filler.
pub const MIN_PAYLOAD_LEN: usize = 24;
/// Largest payload [`encode`] produces: keeps every RTP packet well inside a 1500-byte MTU.
pub const MAX_PAYLOAD_LEN: usize = 1200;

/// The process-wide instant send times are measured from.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds elapsed since [`epoch`].
pub fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The stream tag of a publisher: 32-bit FNV-1a of its participant id.
///
/// Receivers compare it with the tag of the participant the server says the stream comes from,
/// which catches the server forwarding one musician's audio under another's name.
pub fn stream_tag(participant_id: &str) -> u32 {
    participant_id.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The filler byte at `index` (counted from the start of the payload) of packet `seq`.
fn filler(seq: u32, index: usize) -> u8 {
    // Truncation is the point: the filler cycles through all byte values.
    (seq as usize).wrapping_add(index) as u8
}

/// Builds the payload of packet `seq`; `len` is clamped to
/// [`MIN_PAYLOAD_LEN`]..=[`MAX_PAYLOAD_LEN`].
pub fn encode(tag: u32, seq: u32, sent_us: u64, len: usize) -> Bytes {
    let len = len.clamp(MIN_PAYLOAD_LEN, MAX_PAYLOAD_LEN);
    let mut buf = BytesMut::with_capacity(len);
    buf.put_slice(&MAGIC);
    buf.put_u32(tag);
    buf.put_u32(seq);
    buf.put_u64(sent_us);
    for i in HEADER_LEN..len {
        buf.put_u8(filler(seq, i));
    }
    buf.freeze()
}

/// The fixed fields of a payload that passed [`decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub tag: u32,
    pub seq: u32,
    /// Send time in microseconds since [`epoch`].
    pub sent_us: u64,
}

/// Why a payload is not one a simulated musician sent (or was damaged on the way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {0} bytes is shorter than {MIN_PAYLOAD_LEN}")]
    TooShort(usize),
    #[error("payload does not start with the magic bytes")]
    BadMagic,
    #[error("filler byte {index} is wrong")]
    BadFiller { index: usize },
}

/// Checks a payload completely (magic, length, every filler byte) and returns its fixed fields.
pub fn decode(payload: &[u8]) -> Result<Decoded, PayloadError> {
    if payload.len() < MIN_PAYLOAD_LEN {
        return Err(PayloadError::TooShort(payload.len()));
    }
    if payload[0..4] != MAGIC {
        return Err(PayloadError::BadMagic);
    }
    let u32_at = |at: usize| u32::from_be_bytes([payload[at], payload[at + 1], payload[at + 2], payload[at + 3]]);
    let tag = u32_at(4);
    let seq = u32_at(8);
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&payload[12..20]);
    let sent_us = u64::from_be_bytes(sent);
    if let Some(index) = (HEADER_LEN..payload.len()).find(|&i| payload[i] != filler(seq, i)) {
        return Err(PayloadError::BadFiller { index });
    }
    Ok(Decoded { tag, seq, sent_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for (seq, len) in [(0u32, 160usize), (1, 24), (255, 161), (u32::MAX, 1200)] {
            let p = encode(0xdead_beef, seq, 123_456_789, len);
            assert_eq!(p.len(), len);
            assert_eq!(&p[0..4], b"VZA1");
            assert_eq!(decode(&p), Ok(Decoded { tag: 0xdead_beef, seq, sent_us: 123_456_789 }));
        }
    }

    #[test]
    fn lengths_are_clamped() {
        assert_eq!(encode(1, 2, 3, 0).len(), MIN_PAYLOAD_LEN);
        assert_eq!(encode(1, 2, 3, 100_000).len(), MAX_PAYLOAD_LEN);
    }

    #[test]
    fn filler_follows_the_sequence_number() {
        let p = encode(7, 10, 0, 30);
        assert_eq!(p[20], 30);
        assert_eq!(p[29], 39);
    }

    #[test]
    fn damage_is_detected() {
        let good = encode(1, 42, 99, 160);
        assert_eq!(decode(&good[..20]), Err(PayloadError::TooShort(20)));

        let mut bad = good.to_vec();
        bad[1] = b'X';
        assert_eq!(decode(&bad), Err(PayloadError::BadMagic));

        let mut bad = good.to_vec();
        bad[100] ^= 1;
        assert_eq!(decode(&bad), Err(PayloadError::BadFiller { index: 100 }));

        // A changed sequence number no longer matches the filler.
        let mut bad = good.to_vec();
        bad[11] = bad[11].wrapping_add(1);
        assert_eq!(decode(&bad), Err(PayloadError::BadFiller { index: 20 }));
    }

    #[test]
    fn stream_tags_are_fnv1a() {
        assert_eq!(stream_tag(""), 0x811c_9dc5);
        assert_eq!(stream_tag("a"), 0xe40c_292c);
        assert_ne!(stream_tag("p_1"), stream_tag("p_2"));
    }

    #[test]
    fn clock_moves_forward() {
        let a = now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now_us() >= a + 1_000);
    }
}
