//! The hot path: fan each publisher's RTP packet out to its subscribers' connections.
//!
//! Nothing is decoded, buffered or delayed: a packet read from a publisher is rewritten for
//! each subscriber leg (SSRC, payload type, no header extensions) and queued on that leg's
//! connection in the same loop turn it arrived in, keeping the publisher's timing.

use std::time::Instant;

use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rustc_hash::FxHashMap;

use super::conn::{ConnKey, Conns};
use super::peer::OPUS_PAYLOAD_TYPE;

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
        let Some(legs) = self.by_source.get(&src).and_then(|t| t.get(track_id)) else {
            return;
        };
        // Extension ids are negotiated per connection; we negotiate none on subscriber legs.
        // Clearing them before the clones also keeps each clone free of heap allocation.
        packet.header.extension = false;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
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
                Ok(()) => self.counters.forwarded += 1,
                Err(_) => self.counters.errors += 1,
            }
            conns.touch(leg.dst);
        }
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
