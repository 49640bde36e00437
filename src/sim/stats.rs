//! Receive-side accounting: what a simulated musician heard from each other participant.

use std::time::Instant;

use super::payload;

/// How many one-way latency samples each stream keeps (the most recent ones).
pub const LATENCY_SAMPLES: usize = 8192;

/// Sequence numbers above this are treated as damage rather than tracked (at 100 packets a
/// second a real publisher needs over a week to get there); it bounds [`SeqSet`]'s memory.
const MAX_TRACKED_SEQ: u32 = 1 << 26;

/// What one subscriber received from one source participant, over all tracks it got from them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// Server track id of the most recent track from this source.
    pub track_id: String,
    /// Every RTP packet received, good or bad.
    pub packets: u64,
    /// Packets whose payload failed verification (see [`payload::decode`]), including those
    /// carrying another participant's stream tag.
    pub bad_payloads: u64,
    /// Of `bad_payloads`: intact payloads whose stream tag belongs to someone else (misrouting).
    pub wrong_source: u64,
    /// Good packets whose sequence number had already been received.
    pub duplicates: u64,
    /// Good packets that arrived after a packet with a higher sequence number.
    pub reordered: u64,
    /// Lowest sequence number received intact.
    pub first_seq: Option<u32>,
    /// Highest sequence number received intact.
    pub last_seq: Option<u32>,
    /// How many different sequence numbers were received intact.
    pub distinct_seqs: u64,
    pub first_packet_at: Option<Instant>,
    pub last_packet_at: Option<Instant>,
    /// One-way latency samples (receive time minus send time) in microseconds: the most recent
    /// [`LATENCY_SAMPLES`], in no particular order.
    pub latency_us: Vec<u64>,
    /// Number of latency samples ever taken (one per good packet).
    pub latency_count: u64,
    pub latency_sum_us: u64,
    pub latency_max_us: u64,
}

impl StreamStats {
    /// Good packets received.
    pub fn good_packets(&self) -> u64 {
        self.packets - self.bad_payloads
    }

    /// Sequence numbers from `first_seq` to `last_seq` inclusive.
    pub fn expected(&self) -> u64 {
        match (self.first_seq, self.last_seq) {
            (Some(first), Some(last)) => u64::from(last - first) + 1,
            _ => 0,
        }
    }

    /// Sequence numbers between `first_seq` and `last_seq` never received intact.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.distinct_seqs)
    }

    /// `lost / expected`, 0 when nothing was expected.
    pub fn loss_ratio(&self) -> f64 {
        match self.expected() {
            0 => 0.0,
            n => self.lost() as f64 / n as f64,
        }
    }

    /// Mean one-way latency over every good packet, in microseconds.
    pub fn latency_mean_us(&self) -> Option<f64> {
        (self.latency_count > 0).then(|| self.latency_sum_us as f64 / self.latency_count as f64)
    }

    /// The `p`-th percentile (0.0..=1.0) of the kept latency samples, in microseconds.
    pub fn latency_percentile_us(&self, p: f64) -> Option<u64> {
        percentile(&self.latency_us, p)
    }
}

/// The `p`-th percentile (0.0..=1.0, nearest rank) of `samples`; `None` if there are none.
pub fn percentile(samples: &[u64], p: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(rank).copied()
}

/// One received RTP packet as the subscriber connection delivered it (decrypted), kept when
/// [`super::SimOptions::keep_rtp`] is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRtp {
    pub sequence_number: u16,
    pub timestamp: u32,
    pub payload: bytes::Bytes,
}

/// An RTCP sender report the server sent for a forwarded track, with what the track had
/// delivered when it arrived (RTP and RTCP of a track come through one ordered stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSenderReport {
    pub ssrc: u32,
    pub ntp_time: u64,
    pub rtp_time: u32,
    pub packet_count: u32,
    pub octet_count: u32,
    /// RTP packets of the track received before this report, and the newest one's timestamp.
    pub packets_before: u64,
    pub last_timestamp_before: Option<u32>,
}

/// A remote track the subscriber connection delivered (it shows up with its first packet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTrack {
    /// The participant it comes from (the msid stream id).
    pub source: String,
    /// The server's track id.
    pub track_id: String,
    /// Whether the server's latest subscriber offer still sends this track.
    pub offered: bool,
    /// Whether the WebRTC stack ended the track (typically when the connection closes; a
    /// renegotiation that drops the track only clears `offered`).
    pub ended: bool,
}

impl RemoteTrack {
    /// Offered and not ended.
    pub fn is_active(&self) -> bool {
        self.offered && !self.ended
    }
}

/// A track a server offer sends: `(source participant id, track id)` from its `msid`.
pub type OfferedTrack = (String, String);

/// The tracks an SDP offer sends: the msid of every m-section that is not rejected (port 0) and
/// whose direction is `sendrecv` or `sendonly`.
pub fn offered_tracks(sdp: &str) -> Vec<OfferedTrack> {
    /// Keeps a finished section's tracks if it sends.
    fn flush(section: Option<(bool, Vec<OfferedTrack>)>, out: &mut Vec<OfferedTrack>) {
        if let Some((true, tracks)) = section {
            for t in tracks {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }

    let mut out = Vec::new();
    // The current m-section: whether it sends, and the msids seen in it so far.
    let mut section: Option<(bool, Vec<OfferedTrack>)> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            flush(section.take(), &mut out);
            let port = m.split_whitespace().nth(1).unwrap_or("0");
            section = Some((port != "0", Vec::new()));
            continue;
        }
        let Some((sending, tracks)) = section.as_mut() else { continue };
        match line {
            "a=recvonly" | "a=inactive" => *sending = false,
            _ => {
                // `a=msid:<stream> <track>`, or the legacy `a=ssrc:<n> msid:<stream> <track>`.
                let msid = line.strip_prefix("a=msid:").or_else(|| {
                    line.strip_prefix("a=ssrc:").and_then(|rest| rest.split_once(" msid:")).map(|(_, m)| m)
                });
                if let Some((stream, track)) = msid.and_then(|m| m.split_once(' ')) {
                    let t = (stream.to_owned(), track.trim().to_owned());
                    if !tracks.contains(&t) {
                        tracks.push(t);
                    }
                }
            }
        }
    }
    flush(section, &mut out);
    out
}

/// A growable bit set of received sequence numbers.
#[derive(Debug, Default)]
struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    /// Marks `seq`; true if it was not marked before.
    fn insert(&mut self, seq: u32) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        let new = self.words[word] & mask == 0;
        self.words[word] |= mask;
        new
    }
}

/// The full receive state for one source: the public stats plus bookkeeping kept out of them.
#[derive(Debug, Default)]
pub(crate) struct SourceState {
    pub(crate) stats: StreamStats,
    seen: SeqSet,
    /// Where the next latency sample goes once `latency_us` is full.
    next_sample: usize,
}

impl SourceState {
    /// Accounts one RTP payload that arrived at `now` (`now_us` on the [`payload::epoch`] clock)
    /// from the participant whose stream tag is `expected_tag`.
    pub(crate) fn record(&mut self, payload: &[u8], expected_tag: u32, now: Instant, now_us: u64) {
        let st = &mut self.stats;
        st.packets += 1;
        st.first_packet_at.get_or_insert(now);
        st.last_packet_at = Some(now);
        let decoded = payload::decode(payload).ok().filter(|d| d.seq <= MAX_TRACKED_SEQ);
        let Some(d) = decoded else {
            st.bad_payloads += 1;
            return;
        };
        if d.tag != expected_tag {
            st.bad_payloads += 1;
            st.wrong_source += 1;
            return;
        }
        if !self.seen.insert(d.seq) {
            st.duplicates += 1;
        } else {
            st.distinct_seqs += 1;
            if st.last_seq.is_some_and(|last| d.seq < last) {
                st.reordered += 1;
            }
            st.first_seq = Some(st.first_seq.map_or(d.seq, |s| s.min(d.seq)));
            st.last_seq = Some(st.last_seq.map_or(d.seq, |s| s.max(d.seq)));
        }
        let latency = now_us.saturating_sub(d.sent_us);
        st.latency_count += 1;
        st.latency_sum_us = st.latency_sum_us.saturating_add(latency);
        st.latency_max_us = st.latency_max_us.max(latency);
        if st.latency_us.len() < LATENCY_SAMPLES {
            st.latency_us.push(latency);
        } else {
            st.latency_us[self.next_sample] = latency;
            self.next_sample = (self.next_sample + 1) % LATENCY_SAMPLES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::payload::encode;

    #[test]
    fn counts_loss_duplicates_reordering_and_damage() {
        let tag = payload::stream_tag("alice");
        let mut s = SourceState::default();
        let now = Instant::now();
        for seq in [5u32, 6, 8, 7, 8, 10] {
            s.record(&encode(tag, seq, 100, 160), tag, now, 350);
        }
        s.record(b"garbage", tag, now, 400);
        s.record(&encode(payload::stream_tag("bob"), 11, 100, 160), tag, now, 400);

        let st = &s.stats;
        assert_eq!(st.packets, 8);
        assert_eq!(st.bad_payloads, 2);
        assert_eq!(st.wrong_source, 1);
        assert_eq!(st.good_packets(), 6);
        assert_eq!(st.duplicates, 1);
        assert_eq!(st.reordered, 1);
        assert_eq!((st.first_seq, st.last_seq), (Some(5), Some(10)));
        assert_eq!(st.distinct_seqs, 5);
        assert_eq!(st.expected(), 6);
        assert_eq!(st.lost(), 1); // 9
        assert!((st.loss_ratio() - 1.0 / 6.0).abs() < 1e-9);
        assert_eq!(st.latency_count, 6);
        assert_eq!(st.latency_max_us, 250);
        assert_eq!(st.latency_mean_us(), Some(250.0));
        assert_eq!(st.latency_percentile_us(0.5), Some(250));
    }

    #[test]
    fn latency_samples_are_bounded() {
        let tag = 1;
        let mut s = SourceState::default();
        let now = Instant::now();
        for seq in 0..(LATENCY_SAMPLES as u32 + 10) {
            s.record(&encode(tag, seq, 0, 24), tag, now, u64::from(seq));
        }
        assert_eq!(s.stats.latency_us.len(), LATENCY_SAMPLES);
        assert_eq!(s.stats.latency_max_us, LATENCY_SAMPLES as u64 + 9);
        assert!(s.stats.latency_us.contains(&(LATENCY_SAMPLES as u64 + 9)));
        assert!(!s.stats.latency_us.contains(&0));
        assert_eq!(s.stats.lost(), 0);
    }

    #[test]
    fn offered_tracks_come_from_sending_sections() {
        let sdp = "v=0\r\ns=-\r\na=msid-semantic:WMS *\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:alice alice-a1\r\n\
            a=ssrc:1 msid:alice alice-a1\r\na=sendrecv\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=ssrc:2 msid:bob bob-a1\r\na=sendonly\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=msid:carol carol-a1\r\na=recvonly\r\n\
            m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\na=msid:dan dan-a1\r\na=sendonly\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:4\r\na=recvonly\r\n";
        let tracks = offered_tracks(sdp);
        assert_eq!(tracks, vec![("alice".to_owned(), "alice-a1".to_owned()), ("bob".to_owned(), "bob-a1".to_owned())]);
        assert!(offered_tracks("v=0\r\n").is_empty());
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[3, 1, 2], 0.0), Some(1));
        assert_eq!(percentile(&[3, 1, 2], 0.5), Some(2));
        assert_eq!(percentile(&[3, 1, 2], 1.0), Some(3));
    }
}
