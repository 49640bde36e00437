//! The hot path: fan each publisher's RTP packet out to its subscribers' connections.
//!
//! Nothing is decoded, buffered or delayed: a packet read from a publisher is rewritten for
//! each subscriber leg (SSRC, payload type, no header extensions) and queued on that leg's
//! connection in the same loop turn it arrived in, keeping the publisher's timing.
//!
//! Each leg counts what it sent, for the RTCP sender reports the worker sends on it
//! ([`Router::sender_reports`]): counting here, in the pass that forwards, spares every packet
//! the trip through a sender-report interceptor's queue in `rtc`.

use std::time::{Duration, Instant, SystemTime};

use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rustc_hash::FxHashMap;

use super::conn::{ConnKey, Conns};
use super::peer::{OPUS_CLOCK_RATE, OPUS_PAYLOAD_TYPE};

/// One subscriber leg of a published track.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// The subscriber connection.
    pub dst: ConnKey,
    pub sender: RTCRtpSenderId,
    /// SSRC announced for this leg in the subscriber's SDP.
    pub ssrc: u32,
    /// In an offer sent to the subscriber.
    pub offered: bool,
    /// The subscriber's answer covering this leg is applied: packets may flow.
    pub live: bool,
    /// What went out on this leg so far.
    pub sent: Sent,
}

impl Route {
    /// A leg to `dst`'s sender `sender`, announced as `ssrc`, not offered yet.
    pub fn new(dst: ConnKey, sender: RTCRtpSenderId, ssrc: u32) -> Route {
        Route { dst, sender, ssrc, offered: false, live: false, sent: Sent::default() }
    }
}

/// A leg's sending history, as an RTCP sender report tells it (RFC 3550 §6.4.1).
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    /// Packets and payload octets sent; both wrap, as the report's fields do.
    pub packets: u32,
    pub octets: u32,
    /// RTP timestamp of the newest packet sent, and when it went.
    last: Option<(u32, Instant)>,
}

impl Sent {
    fn record(&mut self, timestamp: u32, payload: usize, now: Instant) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload as u32);
        // A packet reordered upstream keeps its place: the mapping follows the newest.
        let newer = self.last.is_none_or(|(ts, _)| (timestamp.wrapping_sub(ts) as i32) > 0);
        if newer {
            self.last = Some((timestamp, now));
        }
    }

    /// The sender report for `ssrc` at `now` (`wall` is the same instant by the wall clock):
    /// the RTP time is the newest packet's, advanced by the time since it went out. None
    /// before the first packet, and once the leg has been silent for two intervals: only
    /// active senders send reports (RFC 3550 §6.4).
    pub fn report(&self, ssrc: u32, now: Instant, wall: SystemTime) -> Option<SenderReport> {
        let (timestamp, at) = self.last?;
        if now.saturating_duration_since(at) > 2 * SENDER_REPORT_INTERVAL {
            return None;
        }
        let ticks = now.saturating_duration_since(at).as_secs_f64() * f64::from(OPUS_CLOCK_RATE);
        Some(SenderReport {
            ssrc,
            ntp_time: ntp_time(wall),
            rtp_time: timestamp.wrapping_add(ticks as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// How often each leg gets a sender report (what `rtc`'s interceptor did).
pub const SENDER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// The interval is cut into this many slices, each reporting for the publisher connections
/// whose key falls in it: a worker with thousands of legs never writes every report in one
/// loop turn, which would hold up the packets read with it.
const REPORT_SLICES: usize = 10;

/// When the next slice of sender reports is due, and which one it is.
#[derive(Debug)]
pub struct ReportClock {
    next: Instant,
    slice: usize,
}

impl ReportClock {
    pub fn new(now: Instant) -> ReportClock {
        ReportClock { next: now + SENDER_REPORT_INTERVAL / REPORT_SLICES as u32, slice: 0 }
    }

    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// The slice due at `now`, if one is, moving the clock on to the next.
    pub fn take_due(&mut self, now: Instant) -> Option<usize> {
        if now < self.next {
            return None;
        }
        let slice = self.slice;
        let step = SENDER_REPORT_INTERVAL / REPORT_SLICES as u32;
        self.slice = (slice + 1) % REPORT_SLICES;
        self.next += step;
        if self.next <= now {
            self.next = now + step; // a stalled worker does not catch up in a burst
        }
        Some(slice)
    }

    /// Whether the legs of publisher connection `src` are reported in `slice`.
    pub fn covers(slice: usize, src: ConnKey) -> bool {
        src % REPORT_SLICES == slice
    }
}

/// `wall` as a 64-bit NTP timestamp: seconds since 1900 in the high half, fraction in the low.
pub fn ntp_time(wall: SystemTime) -> u64 {
    const UNIX_TO_NTP_SECONDS: u64 = 2_208_988_800;
    let since_unix = wall.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    ((since_unix.as_secs() + UNIX_TO_NTP_SECONDS) << 32) | fraction
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ForwardCounters {
    pub received: u64,
    pub forwarded: u64,
    /// Packets for a leg whose negotiation is not finished yet.
    pub not_live: u64,
    /// Packets the subscriber's connection refused (closed, not connected yet, ...).
    pub errors: u64,
}

/// Who hears which track: publisher connection -> track id -> subscriber legs.
/// Looked up twice per packet, so with a fast non-cryptographic hash: the keys are our own
/// connection keys and track ids the publisher's own connection already accepted.
#[derive(Default)]
pub struct Router {
    by_source: FxHashMap<ConnKey, FxHashMap<String, Vec<Route>>>,
    pub counters: ForwardCounters,
}

impl Router {
    pub fn add(&mut self, src: ConnKey, track_id: &str, route: Route) {
        self.by_source.entry(src).or_default().entry(track_id.to_owned()).or_default().push(route);
    }

    /// Forwards one packet from `src`'s track `track_id` to every live leg.
    pub fn forward(&mut self, conns: &mut Conns, src: ConnKey, track_id: &str, mut packet: rtp::Packet, now: Instant) {
        self.counters.received += 1;
        let Some(legs) = self.by_source.get_mut(&src).and_then(|t| t.get_mut(track_id)) else {
            return;
        };
        // Extension ids are negotiated per connection; we negotiate none on subscriber legs.
        // Clearing them before the clones also keeps each clone free of heap allocation.
        packet.header.extension = false;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
        let (timestamp, payload) = (packet.header.timestamp, packet.payload.len());
        for leg in legs {
            if !leg.live {
                self.counters.not_live += 1;
                continue;
            }
            let Some(conn) = conns.get_mut(leg.dst) else { continue };
            // Until DTLS is up there are no SRTP keys to protect the packet with.
            if conn.state != RTCPeerConnectionState::Connected {
                self.counters.not_live += 1;
                continue;
            }
            let Some(mut sender) = conn.pc.rtp_sender(leg.sender) else {
                self.counters.errors += 1;
                continue;
            };
            let mut out = packet.clone();
            out.header.ssrc = leg.ssrc;
            // We offer every subscriber leg, so its payload type is ours.
            out.header.payload_type = OPUS_PAYLOAD_TYPE;
            match sender.write_rtp(now, out) {
                Ok(()) => {
                    self.counters.forwarded += 1;
                    leg.sent.record(timestamp, payload, now);
                }
                Err(_) => self.counters.errors += 1,
            }
            conns.touch(leg.dst);
        }
    }

    /// A sender report for every leg that has sent something, of the publishers `due` picks
    /// (the worker spreads the reports over the interval by publisher connection).
    pub fn sender_reports(
        &self,
        now: Instant,
        wall: SystemTime,
        due: impl Fn(ConnKey) -> bool,
    ) -> impl Iterator<Item = (&Route, SenderReport)> {
        self.by_source
            .iter()
            .filter(move |(src, _)| due(**src))
            .flat_map(|(_, tracks)| tracks.values().flatten())
            .filter_map(move |leg| Some((leg, leg.sent.report(leg.ssrc, now, wall)?)))
    }

    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }

    /// Marks every leg towards `dst` that is not live yet as part of the offer being sent.
    pub fn mark_offered(&mut self, dst: ConnKey) {
        self.legs_to(dst).for_each(|r| r.offered = true);
    }

    /// The subscriber answered: the legs in that offer go live.
    pub fn go_live(&mut self, dst: ConnKey) {
        self.legs_to(dst).filter(|r| r.offered).for_each(|r| r.live = true);
    }

    /// Removes every leg of a publisher connection; returns them so their senders can go.
    pub fn remove_source(&mut self, src: ConnKey) -> Vec<Route> {
        self.by_source.remove(&src).map(|t| t.into_values().flatten().collect()).unwrap_or_default()
    }

    /// Removes the legs of one published track.
    pub fn remove_track(&mut self, src: ConnKey, track_id: &str) -> Vec<Route> {
        self.by_source.get_mut(&src).and_then(|t| t.remove(track_id)).unwrap_or_default()
    }

    /// Removes every leg towards a subscriber connection.
    pub fn remove_destination(&mut self, dst: ConnKey) {
        for tracks in self.by_source.values_mut() {
            for legs in tracks.values_mut() {
                legs.retain(|r| r.dst != dst);
            }
        }
    }

    pub fn route_count(&self) -> usize {
        self.by_source.values().flat_map(|t| t.values()).map(Vec::len).sum()
    }

    fn legs_to(&mut self, dst: ConnKey) -> impl Iterator<Item = &mut Route> {
        self.by_source.values_mut().flat_map(|t| t.values_mut()).flatten().filter(move |r| r.dst == dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_maps_the_newest_packet_and_counts_every_one() {
        let (t0, wall) = (Instant::now(), SystemTime::UNIX_EPOCH + Duration::from_millis(1500));
        let mut sent = Sent::default();
        assert!(sent.report(7, t0, wall).is_none(), "nothing sent, nothing reported");
        sent.record(1_000, 160, t0);
        sent.record(1_480, 160, t0 + Duration::from_millis(10));
        sent.record(1_000u32.wrapping_sub(480), 100, t0 + Duration::from_millis(20)); // reordered upstream
        let r = sent.report(7, t0 + Duration::from_millis(510), wall).unwrap();
        assert_eq!((r.ssrc, r.packet_count, r.octet_count), (7, 3, 420));
        assert_eq!(r.rtp_time, 1_480 + 24_000, "newest timestamp plus 500 ms at 48 kHz");
        assert_eq!(r.ntp_time, ((2_208_988_800 + 1) << 32) | (1 << 31), "1.5 s after 1970 in NTP");
        assert!(sent.report(7, t0 + 3 * SENDER_REPORT_INTERVAL, wall).is_none(), "a silent leg stops reporting");
    }

    #[test]
    fn the_report_clock_covers_every_publisher_once_per_interval() {
        let t0 = Instant::now();
        let mut clock = ReportClock::new(t0);
        assert_eq!(clock.take_due(t0), None);
        let mut covered = vec![0; 25];
        let mut at = t0;
        for _ in 0..REPORT_SLICES {
            at = clock.deadline();
            let slice = clock.take_due(at).expect("due at its deadline");
            (0..covered.len()).filter(|src| ReportClock::covers(slice, *src)).for_each(|src| covered[src] += 1);
        }
        assert!(covered.iter().all(|n| *n == 1), "{covered:?}");
        assert_eq!(at - t0, SENDER_REPORT_INTERVAL);
        // A worker that stalled for seconds resumes the cadence instead of catching up.
        let late = at + 5 * SENDER_REPORT_INTERVAL;
        assert!(clock.take_due(late).is_some());
        assert_eq!(clock.take_due(late), None);
    }
}
