//! A participant as its worker knows it.

use std::collections::VecDeque;

use rtc::data_channel::RTCDataChannelId;
use tokio::sync::mpsc;
use veza_signaling::{Grants, ParticipantInfo, ServerMessage, TrackInfo};

use crate::chat::RateLimiter;
use crate::media::conn::ConnKey;

/// A track the participant publishes.
pub struct PublishedTrack {
    /// The track id in the participant's own SDP (what `rtc` tags packets with).
    pub remote_id: String,
    /// The id everyone else sees.
    pub info: TrackInfo,
}

/// Where the subscriber connection's offer/answer exchange stands. The server is the only
/// side that offers on it, one offer at a time, so there is never glare.
#[derive(Default)]
pub struct SubscriberNegotiation {
    /// An offer is out and its answer has not come back.
    pub awaiting_answer: bool,
    /// Tracks changed since the last offer: offer again when possible.
    pub wanted: bool,
    /// The client asked for an ICE restart (`ice_restart`): the next offer carries one.
    pub ice_restart: bool,
    /// Transceivers whose track was removed, by how far the client knows it: not offered yet,
    /// offered as inactive (answer pending), and answered (free to carry another track). An
    /// offer keeps one m-section per transceiver for the connection's life, so under churn
    /// only reuse keeps it bounded; only answered ones are reused, so the client always sees
    /// a track end before its m-section carries another musician.
    pub released: usize,
    pub releasing: usize,
    pub reusable: usize,
}

pub struct Participant {
    pub id: String,
    pub user: String,
    pub name: String,
    pub session: String,
    pub grants: Grants,
    pub outbound: mpsc::Sender<ServerMessage>,
    pub publisher: Option<ConnKey>,
    pub subscriber: Option<ConnKey>,
    pub negotiation: SubscriberNegotiation,
    pub tracks: Vec<PublishedTrack>,
    pub track_counter: u32,
    pub muted: bool,
    /// Muted by the Veza API: the worker forwards (and records) none of their packets.
    pub admin_muted: bool,
    /// Unix time in milliseconds of the join.
    pub joined_at_ms: u64,
    /// RTP packets and payload bytes received from them.
    pub rtp_packets: u64,
    pub rtp_bytes: u64,
    pub chat: Option<RTCDataChannelId>,
    /// Chat to deliver once the chat channel opens (bounded by the history size).
    pub chat_backlog: VecDeque<String>,
    pub chat_limiter: RateLimiter,
    /// Set while the session is recorded: hands this participant's packets to the writer.
    pub recording: Option<crate::record::tap::ParticipantTap>,
}

impl Participant {
    pub fn info(&self) -> ParticipantInfo {
        ParticipantInfo {
            id: self.id.clone(),
            user: self.user.clone(),
            name: self.name.clone(),
            grants: self.grants,
            tracks: self.tracks.iter().map(|t| t.info.clone()).collect(),
        }
    }
}
