//! The state machine of one worker's sessions. The worker feeds it datagrams, timeouts and
//! commands; it answers with datagrams to send and messages on participants' signaling queues.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rtc::peer_connection::configuration::RTCOfferOptions;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde::Serialize;
use slab::Slab;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use veza_signaling::{
    CHAT_LABEL, ChatSender, ClientMessage, CodecProfile, ErrorCode, Joined, LeaveReason, PROTOCOL_VERSION, PcTarget,
    ServerMessage, TrackInfo,
};

use super::participant::{Participant, PublishedTrack, SubscriberNegotiation};
use super::quota::SessionQuota;
use crate::auth::Identity;
use crate::chat::{self, ChatRoom, RateLimiter};
use crate::config::Config;
use crate::media::conn::{ConnKey, Conns, ParticipantKey, Role};
use crate::media::demux::Demux;
use crate::media::forward::{ReportClock, Route, Router};
use crate::media::peer::PeerFactory;
use crate::media::sdp;
use crate::record::tap::TrackIdentity;
use crate::record::{RecordError, RecordingSink, SessionRecording};
use crate::webhook::{Event, EventKind};

mod admin;
pub use admin::{AdminError, NewSession, ParticipantView, SessionView};

/// A participant asking to join, from a signaling socket whose token was verified.
pub struct JoinRequest {
    pub participant_id: String,
    pub identity: Identity,
    pub outbound: mpsc::Sender<ServerMessage>,
    /// Handed to the client in `joined` for resuming after a dropped socket (src/http/resume.rs).
    pub resume_token: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct JoinError {
    pub code: ErrorCode,
    pub message: String,
}

/// What a worker holds, as counted by the worker itself.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct HostStats {
    pub sessions: usize,
    pub participants: usize,
    pub connections: usize,
    pub routes: usize,
    /// Published tracks.
    pub tracks: usize,
    pub demux_addresses: usize,
    pub demux_ufrags: usize,
    pub rtp_received: u64,
    pub rtp_forwarded: u64,
    pub rtp_not_live: u64,
    pub rtp_forward_errors: u64,
    pub datagrams_unrouted: u64,
    pub chat_relayed: u64,
    pub chat_refused: u64,
}

impl HostStats {
    pub fn add(&mut self, o: &HostStats) {
        self.sessions += o.sessions;
        self.participants += o.participants;
        self.connections += o.connections;
        self.routes += o.routes;
        self.tracks += o.tracks;
        self.demux_addresses += o.demux_addresses;
        self.demux_ufrags += o.demux_ufrags;
        self.rtp_received += o.rtp_received;
        self.rtp_forwarded += o.rtp_forwarded;
        self.rtp_not_live += o.rtp_not_live;
        self.rtp_forward_errors += o.rtp_forward_errors;
        self.datagrams_unrouted += o.datagrams_unrouted;
        self.chat_relayed += o.chat_relayed;
        self.chat_refused += o.chat_refused;
    }
}

struct Session {
    members: Vec<ParticipantKey>,
    chat: ChatRoom,
    /// Set while the session is recorded (src/record).
    recording: Option<SessionRecording>,
    /// What the Veza API set when it created the session (defaults when auto-created).
    settings: admin::SessionSettings,
}

/// Chat bytes a participant's channel may have unacknowledged before we skip it.
const CHAT_MAX_OUTSTANDING_BYTES: usize = 256 * 1024;

pub struct Host {
    config: Config,
    factory: PeerFactory,
    local: SocketAddr,
    conns: Conns,
    demux: Demux,
    router: Router,
    /// When the forwarded legs' next RTCP sender reports are due.
    report_clock: ReportClock,
    sessions: HashMap<String, Session>,
    participants: Slab<Participant>,
    by_id: HashMap<String, ParticipantKey>,
    /// Participants to remove once the current pass over connections is done.
    leaving: Vec<(ParticipantKey, LeaveReason)>,
    next_ssrc: u32,
    datagrams_unrouted: u64,
    chat_relayed: u64,
    chat_refused: u64,
    /// RTP bytes, NACKs, RTT and jitter, sampled per connection on its timer (src/conn_stats.rs).
    conn_stats: crate::conn_stats::ConnStats,
    /// Where session, participant, track and recording events go (src/webhook.rs).
    webhooks: crate::webhook::Webhooks,
    /// The node-wide session cap, shared with the other workers.
    quota: Arc<SessionQuota>,
}

impl Host {
    pub fn new(config: Config, factory: PeerFactory, local: SocketAddr, quota: Arc<SessionQuota>) -> Host {
        Host {
            config,
            factory,
            local,
            conns: Conns::default(),
            demux: Demux::default(),
            router: Router::default(),
            report_clock: ReportClock::new(Instant::now()),
            sessions: HashMap::new(),
            participants: Slab::new(),
            by_id: HashMap::new(),
            leaving: Vec::new(),
            next_ssrc: rand::random::<u32>() | 1,
            datagrams_unrouted: 0,
            chat_relayed: 0,
            chat_refused: 0,
            conn_stats: Default::default(),
            webhooks: Default::default(),
            quota,
        }
    }

    /// RTP packets forwarded so far (cheap: read every loop turn).
    pub fn forwarded(&self) -> u64 {
        self.router.counters.forwarded
    }

    pub fn stats(&self) -> HostStats {
        let c = self.router.counters;
        HostStats {
            sessions: self.sessions.len(),
            participants: self.participants.len(),
            connections: self.conns.len(),
            routes: self.router.route_count(),
            tracks: self.participants.iter().map(|(_, p)| p.tracks.len()).sum(),
            demux_addresses: self.demux.addresses(),
            demux_ufrags: self.demux.ufrags(),
            rtp_received: c.received,
            rtp_forwarded: c.forwarded,
            rtp_not_live: c.not_live,
            rtp_forward_errors: c.errors,
            datagrams_unrouted: self.datagrams_unrouted,
            chat_relayed: self.chat_relayed,
            chat_refused: self.chat_refused,
        }
    }

    // ---- input -------------------------------------------------------------------------

    /// A datagram arrived on the worker socket.
    pub fn handle_datagram(&mut self, now: Instant, src: SocketAddr, data: &[u8]) {
        let Some(key) = self.demux.route(src, data) else {
            self.datagrams_unrouted += 1;
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else {
            self.demux.forget(key);
            return;
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: src,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = conn.pc.handle_read(msg) {
            debug!(conn = key, "datagram rejected: {e}");
        }
        self.conns.touch(key);
    }

    /// The earliest time a connection, or the forwarded legs' sender reports, want
    /// `handle_timeout`.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        let conns = self.conns.next_deadline();
        if self.router.is_empty() {
            return conns;
        }
        let reports = self.report_clock.deadline();
        Some(conns.map_or(reports, |c| c.min(reports)))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(key) = self.conns.pop_due(now) {
            if let Some(c) = self.conns.get_mut(key) {
                if let Err(e) = c.pc.handle_timeout(now) {
                    debug!(conn = key, "timeout handling failed: {e}");
                }
                self.conn_stats.maybe_sample(key, c.role, &mut c.pc, now);
            }
            self.conns.touch(key);
        }
        if !self.router.is_empty()
            && let Some(slice) = self.report_clock.take_due(now)
        {
            self.send_sender_reports(now, slice);
        }
    }

    /// Writes the sender reports of the legs in `slice` on their subscriber connections.
    fn send_sender_reports(&mut self, now: Instant, slice: usize) {
        let wall = SystemTime::now();
        for (leg, report) in self.router.sender_reports(now, wall, |src| ReportClock::covers(slice, src)) {
            let Some(conn) = self.conns.get_mut(leg.dst) else { continue };
            if conn.state != RTCPeerConnectionState::Connected {
                continue;
            }
            if let Some(mut sender) = conn.pc.rtp_sender(leg.sender)
                && sender.write_rtcp(now, vec![Box::new(report)]).is_ok()
            {
                self.conns.touch(leg.dst);
            }
        }
    }

    pub fn join(&mut self, now: Instant, req: JoinRequest) -> Result<(), JoinError> {
        let ident = req.identity;
        if !self.sessions.contains_key(&ident.session) && !self.config.sessions.auto_create {
            return Err(JoinError {
                code: ErrorCode::SessionNotFound,
                message: format!("session {:?} does not exist", ident.session),
            });
        }
        if !self.sessions.contains_key(&ident.session) {
            self.create_session(&ident.session, admin::SessionSettings::default())
                .map_err(|e| JoinError { code: e.code(), message: e.to_string() })?;
        }
        let default_max = self.config.sessions.max_participants;
        let Some(session) = self.sessions.get_mut(&ident.session) else {
            return Err(JoinError { code: ErrorCode::Internal, message: "session vanished".into() });
        };
        let max = session.settings.max_participants.unwrap_or(default_max);
        if session.members.len() >= max {
            return Err(JoinError {
                code: ErrorCode::SessionFull,
                message: format!("session is full ({max} participants)"),
            });
        }
        let chat_history = if ident.grants.chat { session.chat.history() } else { Vec::new() };
        let key = self.participants.insert(Participant {
            id: req.participant_id.clone(),
            user: ident.user,
            name: ident.name,
            session: ident.session.clone(),
            grants: ident.grants,
            outbound: req.outbound,
            publisher: None,
            subscriber: None,
            negotiation: SubscriberNegotiation::default(),
            tracks: Vec::new(),
            track_counter: 0,
            muted: false,
            admin_muted: false,
            joined_at_ms: unix_ms(),
            rtp_packets: 0,
            rtp_bytes: 0,
            chat: None,
            chat_backlog: Default::default(),
            chat_limiter: RateLimiter::new(self.config.chat.rate_per_second, self.config.chat.burst, now),
            recording: session.recording.as_ref().map(SessionRecording::tap),
        });
        self.by_id.insert(req.participant_id, key);
        let others: Vec<ParticipantKey> = session.members.clone();
        session.members.push(key);

        let me = &self.participants[key];
        info!(participant = %me.id, session = %me.session, "joined");
        let joined = Joined {
            protocol_version: PROTOCOL_VERSION,
            session_id: me.session.clone(),
            participant: me.info(),
            participants: others.iter().map(|o| self.participants[*o].info()).collect(),
            ice_servers: crate::turn::ice_servers_for(&self.config, &me.id),
            codec: CodecProfile {
                mime_type: "audio/opus".to_owned(),
                clock_rate: 48_000,
                channels: 2,
                ptime_ms: self.config.media.ptime_ms,
                max_average_bitrate: self.config.media.max_average_bitrate,
                fmtp: self.factory.opus_fmtp.clone(),
            },
            chat_history,
            resume_token: req.resume_token,
            resume_grace_ms: self.config.sessions.reconnect_grace.as_millis() as u64,
        };
        self.send(key, ServerMessage::Joined(Box::new(joined)));
        if let Some(tap) = &self.participants[key].recording {
            let recording_id = tap.recording.clone();
            self.send(key, ServerMessage::RecordingStarted { recording_id });
        }
        let announce = ServerMessage::ParticipantJoined { participant: self.participants[key].info() };
        self.webhooks.emit(Event {
            participant: Some(self.participants[key].info()),
            ..Event::new(EventKind::ParticipantJoined, &self.participants[key].session)
        });
        for o in &others {
            self.send(*o, announce.clone());
        }
        // Hear everyone already publishing.
        if self.participants[key].grants.subscribe {
            for o in others {
                let tracks: Vec<String> = self.participants[o].tracks.iter().map(|t| t.remote_id.clone()).collect();
                for t in tracks {
                    self.subscribe(now, key, o, &t);
                }
            }
        }
        self.flush_negotiations(now);
        Ok(())
    }

    pub fn signal(&mut self, now: Instant, participant: &str, msg: ClientMessage) {
        let Some(&key) = self.by_id.get(participant) else { return };
        match msg {
            ClientMessage::Offer { sdp } => self.on_publisher_offer(now, key, sdp),
            ClientMessage::Answer { sdp } => self.on_subscriber_answer(now, key, sdp),
            ClientMessage::Candidate { target, candidate } => {
                let conn = match target {
                    PcTarget::Publisher => self.participants[key].publisher,
                    PcTarget::Subscriber => self.participants[key].subscriber,
                };
                let Some(conn) = conn else {
                    return self.refuse(key, ErrorCode::InvalidCandidate, "no such connection yet");
                };
                if candidate.candidate.is_empty() {
                    return; // end of candidates: nothing to do for us
                }
                let init = RTCIceCandidateInit {
                    candidate: candidate.candidate,
                    sdp_mid: candidate.sdp_mid,
                    sdp_mline_index: candidate.sdp_mline_index,
                    username_fragment: candidate.username_fragment,
                    ..Default::default()
                };
                if let Some(c) = self.conns.get_mut(conn)
                    && let Err(e) = c.pc.add_remote_candidate(init)
                {
                    self.refuse(key, ErrorCode::InvalidCandidate, format!("candidate rejected: {e}"));
                }
                self.conns.touch(conn);
            }
            ClientMessage::Mute { muted } => self.set_muted(key, muted),
            ClientMessage::Ping { ts } => self.send(key, ServerMessage::Pong { ts }),
            ClientMessage::Leave => self.leaving.push((key, LeaveReason::Left)),
            ClientMessage::IceRestart => self.restart_subscriber_ice(key),
            // Recording control needs the disk: the signaling task handles it (src/http/ws.rs).
            ClientMessage::StartRecording | ClientMessage::StopRecording => {}
        }
        self.finish_pass(now);
    }

    pub fn leave(&mut self, now: Instant, participant: &str, reason: LeaveReason) {
        if let Some(&key) = self.by_id.get(participant) {
            self.leaving.push((key, reason));
            self.finish_pass(now);
        }
    }

    /// The participant's signaling came back on a new socket (src/http/ws.rs). Anything
    /// written to the old one in its last moments may be lost, and an unanswered subscriber
    /// offer would block every later renegotiation: send it again. (A client that already
    /// answered it answers again with the same description.)
    pub fn resumed(&mut self, participant: &str) {
        let Some(&key) = self.by_id.get(participant) else { return };
        let p = &self.participants[key];
        let (Some(conn), true) = (p.subscriber, p.negotiation.awaiting_answer) else { return };
        let Some(offer) = self.conns.get_mut(conn).and_then(|c| c.pc.local_description()) else { return };
        self.send(key, ServerMessage::Offer { sdp: offer.sdp });
    }

    // ---- processing --------------------------------------------------------------------

    /// Reads events and messages of every touched connection, forwarding media as it goes.
    pub fn pump(&mut self, now: Instant) {
        let mut i = 0;
        while let Some(key) = self.conns.touched_at(i) {
            self.drain_connection(now, key);
            i += 1;
        }
        self.finish_pass(now);
    }

    /// Hands every datagram the touched connections want sent to `send`.
    pub fn transmit(&mut self, mut send: impl FnMut(SocketAddr, BytesMut)) {
        let touched = self.conns.take_touched();
        for &key in &touched {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            while let Some(out) = conn.pc.poll_write() {
                let dst = out.transport.peer_addr;
                // Our own STUN checks: answers from that address belong to this connection
                // (binding responses carry no USERNAME to route them by).
                if out.message.first().is_some_and(|b| *b < 2) {
                    self.demux.learn(dst, key);
                } else if conn.media_addr != Some(dst) {
                    // Media goes where ICE selected: a new address (first selection, or an
                    // ICE restart after a network change) retires the connection's others.
                    conn.media_addr = Some(dst);
                    self.demux.settle(key, dst);
                }
                send(dst, out.message);
            }
            self.conns.refresh_deadline(key);
        }
        self.conns.recycle(touched);
    }

    fn drain_connection(&mut self, now: Instant, key: ConnKey) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            let Some(event) = conn.pc.poll_event() else { break };
            self.on_event(now, key, event);
        }
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            let Some(TaggedRTCMessage { message, .. }) = conn.pc.poll_read() else { break };
            match message {
                RTCMessage::RtpPacket(track_id, packet) => {
                    if let Some(p) = self.participants.get_mut(conn.participant) {
                        p.rtp_packets += 1;
                        p.rtp_bytes += packet.payload.len() as u64;
                        // Muted by the Veza API: nobody hears it, the recording included.
                        if p.admin_muted {
                            continue;
                        }
                        if let Some(tap) = p.recording.as_ref() {
                            tap.offer(&track_id, &packet, now); // never blocks: a full queue drops and counts
                        }
                    }
                    self.router.forward(&mut self.conns, key, &track_id, packet, now);
                }
                // Only publisher connections deliver RTCP (their sender reports, see
                // media::sender_reports); the recording notes the NTP/RTP pairs.
                RTCMessage::RtcpPacket(track_id, packets) if conn.role == Role::Publisher => {
                    let Some(tap) = self.participants.get(conn.participant).and_then(|p| p.recording.as_ref()) else {
                        continue;
                    };
                    for sr in packets.iter().filter_map(|p| p.as_any().downcast_ref::<SenderReport>()) {
                        tap.offer_sender_report(&track_id, sr.ssrc, sr.ntp_time, sr.rtp_time, now);
                    }
                }
                RTCMessage::DataChannelMessage(channel, msg) => {
                    let owner = conn.participant;
                    if conn.role == Role::Publisher
                        && self.participants.get(owner).is_some_and(|p| p.chat == Some(channel))
                    {
                        self.on_chat(now, owner, &msg.data);
                    }
                }
                _ => {}
            }
        }
    }

    fn on_event(&mut self, now: Instant, key: ConnKey, event: RTCPeerConnectionEvent) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let owner = conn.participant;
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                conn.state = state;
                debug!(conn = key, role = ?conn.role, "connection {state}");
                if matches!(state, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) {
                    self.leaving.push((owner, LeaveReason::MediaFailed));
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) if conn.role == Role::Publisher => {
                self.publish(now, owner, init.track_id);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) if conn.role == Role::Publisher => {
                self.unpublish(now, owner, &track_id);
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) if conn.role == Role::Publisher => {
                let is_chat = conn.pc.data_channel(id).is_some_and(|dc| dc.label() == CHAT_LABEL);
                if is_chat && let Some(p) = self.participants.get_mut(owner) {
                    p.chat = Some(id);
                    let backlog: Vec<String> = p.chat_backlog.drain(..).collect();
                    for text in backlog {
                        self.deliver_chat(now, owner, text);
                    }
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id)) => {
                if let Some(p) = self.participants.get_mut(owner)
                    && p.chat == Some(id)
                {
                    p.chat = None;
                }
            }
            _ => {}
        }
    }

    /// Removes whoever is leaving and sends the offers that changes call for.
    fn finish_pass(&mut self, now: Instant) {
        while let Some((key, reason)) = self.leaving.pop() {
            self.remove_participant(now, key, reason);
        }
        self.flush_negotiations(now);
    }

    // ---- publishing and subscribing ----------------------------------------------------

    fn on_publisher_offer(&mut self, now: Instant, key: ParticipantKey, sdp_text: String) {
        if sdp_text.len() > self.config.media.max_sdp_bytes {
            return self.refuse(
                key,
                ErrorCode::InvalidSdp,
                format!("SDP is {} bytes; the limit is {}", sdp_text.len(), self.config.media.max_sdp_bytes),
            );
        }
        if !self.participants[key].grants.publish && sdp::offers_to_send_audio(&sdp_text) {
            return self.refuse(
                key,
                ErrorCode::PublishNotAllowed,
                "your token does not grant publishing: offer audio as recvonly or not at all",
            );
        }
        let offer = match RTCSessionDescription::offer(sdp_text) {
            Ok(o) => o,
            Err(e) => return self.refuse(key, ErrorCode::InvalidSdp, format!("offer rejected: {e}")),
        };
        let conn = match self.participants[key].publisher {
            Some(c) => c,
            None => match self.factory.build(now, Role::Publisher) {
                Ok(pc) => {
                    let c = self.conns.insert(pc, key, Role::Publisher);
                    self.participants[key].publisher = Some(c);
                    c
                }
                Err(e) => return self.refuse(key, ErrorCode::Internal, e.to_string()),
            },
        };
        let Some(c) = self.conns.get_mut(conn) else { return };
        let answer =
            c.pc.set_remote_description(now, offer)
                .and_then(|()| c.pc.create_answer(None))
                .and_then(|answer| c.pc.set_local_description(now, answer))
                .map(|()| c.pc.local_description());
        self.conns.touch(conn);
        match answer {
            Ok(Some(answer)) => {
                // An offer with new ICE credentials restarts ICE (`rtc` does it while applying
                // it), and our answer then carries a new ufrag too.
                self.register_ufrag(conn, &answer.sdp);
                let sdp = sdp::with_music_fmtp(&answer.sdp, &self.factory.opus_fmtp);
                let sdp = sdp::with_ptime(&sdp, self.config.media.ptime_ms);
                self.send(key, ServerMessage::Answer { sdp });
            }
            Ok(None) => self.refuse(key, ErrorCode::NegotiationFailed, "no answer produced"),
            Err(e) => self.refuse(key, ErrorCode::NegotiationFailed, format!("offer rejected: {e}")),
        }
    }

    fn on_subscriber_answer(&mut self, now: Instant, key: ParticipantKey, sdp_text: String) {
        let p = &mut self.participants[key];
        let (Some(conn), true) = (p.subscriber, p.negotiation.awaiting_answer) else {
            // After a resume the offer may have been repeated and answered twice: the second,
            // identical answer is no mistake of the client's.
            let repeated = p
                .subscriber
                .and_then(|conn| self.conns.get_mut(conn))
                .is_some_and(|c| c.pc.current_remote_description().is_some_and(|applied| applied.sdp == sdp_text));
            if repeated {
                return;
            }
            return self.refuse(key, ErrorCode::NegotiationFailed, "no subscriber offer is waiting for an answer");
        };
        if sdp_text.len() > self.config.media.max_sdp_bytes {
            return self.refuse(key, ErrorCode::InvalidSdp, "answer SDP is too large");
        }
        let applied = RTCSessionDescription::answer(sdp_text).and_then(|answer| match self.conns.get_mut(conn) {
            Some(c) => c.pc.set_remote_description(now, answer),
            None => Ok(()),
        });
        self.conns.touch(conn);
        match applied {
            Ok(()) => {
                let n = &mut self.participants[key].negotiation;
                n.awaiting_answer = false;
                n.reusable += std::mem::take(&mut n.releasing);
                self.router.go_live(conn);
            }
            Err(e) => {
                // The offer stays outstanding; the client may answer again.
                self.refuse(key, ErrorCode::NegotiationFailed, format!("answer rejected: {e}"));
            }
        }
    }

    /// The first packet of a new track arrived from a publisher: announce it and fan it out.
    fn publish(&mut self, now: Instant, key: ParticipantKey, remote_id: String) {
        let Some(p) = self.participants.get_mut(key) else { return };
        if !p.grants.publish || p.tracks.iter().any(|t| t.remote_id == remote_id) {
            return;
        }
        if p.tracks.len() >= self.config.media.max_tracks_per_participant {
            let limit = self.config.media.max_tracks_per_participant;
            warn!(participant = %p.id, limit, "track limit reached: new track not forwarded");
            return self.refuse(
                key,
                ErrorCode::TrackLimit,
                format!("at most {limit} published tracks per participant"),
            );
        }
        p.track_counter += 1;
        let info = TrackInfo { id: format!("{}-a{}", p.id, p.track_counter), kind: "audio".to_owned(), muted: p.muted };
        p.tracks.push(PublishedTrack { remote_id: remote_id.clone(), info: info.clone() });
        if let (Some(tap), Some(rec)) =
            (p.recording.as_mut(), self.sessions.get_mut(&p.session).and_then(|s| s.recording.as_mut()))
        {
            let who = TrackIdentity { participant_id: &p.id, user: &p.user, name: &p.name, track_id: &info.id };
            rec.add_track(tap, &remote_id, who);
        }
        self.webhooks.emit(Event {
            participant_id: Some(p.id.clone()),
            track: Some(info.clone()),
            ..Event::new(EventKind::TrackPublished, &p.session)
        });
        let announce = ServerMessage::TrackPublished { participant_id: p.id.clone(), track: info };
        info!(participant = %p.id, track = %remote_id, "track published");
        for other in self.others(key) {
            self.send(other, announce.clone());
            if self.participants[other].grants.subscribe {
                self.subscribe(now, other, key, &remote_id);
            }
        }
    }

    fn unpublish(&mut self, now: Instant, key: ParticipantKey, remote_id: &str) {
        let Some(p) = self.participants.get_mut(key) else { return };
        let Some(pos) = p.tracks.iter().position(|t| t.remote_id == remote_id) else { return };
        let track = p.tracks.remove(pos);
        self.webhooks.emit(Event {
            participant_id: Some(p.id.clone()),
            track: Some(track.info.clone()),
            ..Event::new(EventKind::TrackUnpublished, &p.session)
        });
        let announce = ServerMessage::TrackUnpublished { participant_id: p.id.clone(), track_id: track.info.id };
        if let Some(src) = p.publisher {
            let legs = self.router.remove_track(src, remote_id);
            self.drop_legs(now, legs);
        }
        for other in self.others(key) {
            self.send(other, announce.clone());
        }
    }

    /// Adds a leg for `src`'s track to `dst`'s subscriber connection (created on first use).
    fn subscribe(&mut self, now: Instant, dst: ParticipantKey, src: ParticipantKey, remote_id: &str) {
        let Some(src_conn) = self.participants[src].publisher else { return };
        let Some(track) = self.participants[src].tracks.iter().find(|t| t.remote_id == remote_id) else { return };
        let track = self.factory.forwarded_track(&self.participants[src].id, &track.info.id, self.next_ssrc);
        let ssrc = self.next_ssrc;
        self.next_ssrc = self.next_ssrc.wrapping_add(1).max(1);

        let sub = match self.participants[dst].subscriber {
            Some(c) => c,
            None => match self.factory.build(now, Role::Subscriber) {
                Ok(pc) => {
                    let c = self.conns.insert(pc, dst, Role::Subscriber);
                    self.participants[dst].subscriber = Some(c);
                    c
                }
                Err(e) => return warn!("subscriber connection: {e}"),
            },
        };
        let Some(conn) = self.conns.get_mut(sub) else { return };
        // Send-only: the subscriber connection never carries the subscriber's own audio.
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![self.participants[src].id.clone()],
            send_encodings: vec![],
        };
        let negotiation = &mut self.participants[dst].negotiation;
        // `add_track` takes the first transceiver without a track (keeping it send-only); with
        // none released or in flight, that is one whose end the client has answered.
        let added = if negotiation.reusable > 0 && negotiation.released == 0 && negotiation.releasing == 0 {
            negotiation.reusable -= 1;
            conn.pc.add_track(track)
        } else {
            conn.pc.add_transceiver_from_track(track, Some(init)).map(RTCRtpSenderId::from)
        };
        match added {
            Ok(sender) => {
                let leg = Route::new(sub, sender, ssrc);
                self.router.add(src_conn, remote_id, leg);
                self.participants[dst].negotiation.wanted = true;
            }
            Err(e) => warn!("adding forwarded track: {e}"),
        }
    }

    /// Removes forwarded tracks from their subscribers' connections.
    fn drop_legs(&mut self, _now: Instant, legs: Vec<Route>) {
        for leg in legs {
            let Some(conn) = self.conns.get_mut(leg.dst) else { continue };
            let owner = conn.participant;
            if conn.pc.remove_track(leg.sender).is_ok()
                && let Some(p) = self.participants.get_mut(owner)
            {
                p.negotiation.wanted = true;
                p.negotiation.released += 1;
            }
            self.conns.touch(leg.dst);
        }
    }

    /// Sends a subscriber offer to everyone whose tracks changed and who is not mid-exchange.
    fn flush_negotiations(&mut self, now: Instant) {
        let due: Vec<ParticipantKey> = self
            .participants
            .iter()
            .filter(|(_, p)| p.negotiation.wanted && !p.negotiation.awaiting_answer && p.subscriber.is_some())
            .map(|(k, _)| k)
            .collect();
        for key in due {
            let Some(conn) = self.participants[key].subscriber else { continue };
            let Some(c) = self.conns.get_mut(conn) else { continue };
            let restart = self.participants[key].negotiation.ice_restart;
            let options = restart.then_some(RTCOfferOptions { ice_restart: true });
            let offer =
                c.pc.create_offer(options)
                    .and_then(|offer| c.pc.set_local_description(now, offer))
                    .map(|()| c.pc.local_description());
            self.conns.touch(conn);
            if let Ok(Some(offer)) = &offer {
                self.register_ufrag(conn, &offer.sdp);
            }
            let p = &mut self.participants[key];
            p.negotiation.wanted = false;
            p.negotiation.ice_restart = false;
            match offer {
                Ok(Some(offer)) => {
                    p.negotiation.awaiting_answer = true;
                    p.negotiation.releasing += std::mem::take(&mut p.negotiation.released);
                    self.router.mark_offered(conn);
                    self.send(key, ServerMessage::Offer { sdp: offer.sdp });
                }
                Ok(None) => warn!("subscriber offer: no local description"),
                Err(e) => warn!(participant = %p.id, "subscriber offer failed: {e}"),
            }
        }
    }

    /// The client asks for an ICE restart of its subscriber connection (its network changed):
    /// the next offer, sent at once unless one is awaiting its answer, carries new ICE
    /// credentials. Everything else about the connection (DTLS, tracks, legs) stays.
    fn restart_subscriber_ice(&mut self, key: ParticipantKey) {
        let p = &mut self.participants[key];
        if p.subscriber.is_none() {
            return self.refuse(
                key,
                ErrorCode::NegotiationFailed,
                "no subscriber connection to restart: the server has not offered one yet",
            );
        }
        p.negotiation.ice_restart = true;
        p.negotiation.wanted = true;
    }

    /// Routes STUN naming the ufrag of `sdp` (a description we just applied and send) to
    /// `conn`, in place of the one it had before an ICE restart.
    fn register_ufrag(&mut self, conn: ConnKey, sdp: &str) {
        match sdp::ice_ufrag(sdp) {
            Some(ufrag) => self.demux.register(ufrag, conn),
            None => warn!(conn, "a description of ours has no ICE ufrag: its STUN cannot be routed"),
        }
    }

    fn set_muted(&mut self, key: ParticipantKey, muted: bool) {
        let p = &mut self.participants[key];
        if p.muted == muted {
            return; // repeating it would only multiply events to everyone else
        }
        p.muted = muted;
        let pid = p.id.clone();
        let events: Vec<ServerMessage> = p
            .tracks
            .iter_mut()
            .map(|t| {
                t.info.muted = muted;
                ServerMessage::TrackMuted { participant_id: pid.clone(), track_id: t.info.id.clone(), muted }
            })
            .collect();
        for other in self.others(key) {
            for e in &events {
                self.send(other, e.clone());
            }
        }
    }

    // ---- recording ---------------------------------------------------------------------

    /// Taps every publisher of `session` into the recording behind `sink`.
    pub fn start_recording(&mut self, session: &str, sink: RecordingSink) -> Result<(), RecordError> {
        let Some(s) = self.sessions.get_mut(session) else {
            return Err(RecordError::SessionNotFound(session.to_owned()));
        };
        if let Some(r) = &s.recording {
            return Err(RecordError::AlreadyRecording(r.id.clone()));
        }
        let mut rec = SessionRecording::new(sink);
        for &m in &s.members {
            let Some(p) = self.participants.get_mut(m) else { continue };
            let mut tap = rec.tap();
            for t in &p.tracks {
                let who = TrackIdentity { participant_id: &p.id, user: &p.user, name: &p.name, track_id: &t.info.id };
                rec.add_track(&mut tap, &t.remote_id, who);
            }
            p.recording = Some(tap);
        }
        let announce = ServerMessage::RecordingStarted { recording_id: rec.id.clone() };
        self.webhooks
            .emit(Event { recording_id: Some(rec.id.clone()), ..Event::new(EventKind::RecordingStarted, session) });
        s.recording = Some(rec);
        for m in self.members_of(session) {
            self.send(m, announce.clone());
        }
        Ok(())
    }

    /// Detaches recording `id` from `session`; false if it was not recording that.
    pub fn stop_recording(&mut self, session: &str, id: &str) -> bool {
        let Some(s) = self.sessions.get_mut(session) else { return false };
        if s.recording.as_ref().is_none_or(|r| r.id != id) {
            return false;
        }
        s.recording = None;
        self.webhooks
            .emit(Event { recording_id: Some(id.to_owned()), ..Event::new(EventKind::RecordingFinished, session) });
        let members = s.members.clone();
        for &m in &members {
            if let Some(p) = self.participants.get_mut(m) {
                p.recording = None;
            }
        }
        let announce = ServerMessage::RecordingStopped { recording_id: id.to_owned() };
        for m in members {
            self.send(m, announce.clone());
        }
        true
    }

    // ---- leaving -----------------------------------------------------------------------

    fn remove_participant(&mut self, now: Instant, key: ParticipantKey, reason: LeaveReason) {
        let Some(p) = self.participants.try_remove(key) else { return };
        info!(participant = %p.id, session = %p.session, ?reason, "left");
        self.by_id.remove(&p.id);
        if let Some(src) = p.publisher {
            let legs = self.router.remove_source(src);
            self.drop_legs(now, legs);
        }
        if let Some(dst) = p.subscriber {
            self.router.remove_destination(dst);
        }
        for conn in [p.publisher, p.subscriber].into_iter().flatten() {
            if let Some(mut c) = self.conns.remove(conn) {
                self.conn_stats.finish(conn, c.role, &mut c.pc, now);
                let _ = c.pc.close();
            }
            self.demux.forget(conn);
        }
        for t in &p.tracks {
            self.webhooks.emit(Event {
                participant_id: Some(p.id.clone()),
                track: Some(t.info.clone()),
                ..Event::new(EventKind::TrackUnpublished, &p.session)
            });
        }
        self.webhooks.emit(Event {
            participant: Some(p.info()),
            reason: Some(admin::leave_reason_name(reason)),
            ..Event::new(EventKind::ParticipantLeft, &p.session)
        });
        if let Some(session) = self.sessions.get_mut(&p.session) {
            session.members.retain(|m| *m != key);
            // A session the Veza API created lasts until it ends it.
            if session.members.is_empty() && !session.settings.persistent {
                self.end_session_state(&p.session, "last participant left");
            }
        }
        let gone = ServerMessage::ParticipantLeft { participant_id: p.id.clone(), reason };
        let unpublished: Vec<ServerMessage> = p
            .tracks
            .iter()
            .map(|t| ServerMessage::TrackUnpublished { participant_id: p.id.clone(), track_id: t.info.id.clone() })
            .collect();
        for other in self.members_of(&p.session) {
            for m in &unpublished {
                self.send(other, m.clone());
            }
            self.send(other, gone.clone());
        }
        // Dropping `p.outbound` closes the participant's signaling socket.
    }

    // ---- chat --------------------------------------------------------------------------

    fn on_chat(&mut self, now: Instant, key: ParticipantKey, raw: &[u8]) {
        let p = &mut self.participants[key];
        // Every message spends a token, refused ones too: refusals are replies, and replies
        // must not come free.
        let accepted = if !p.chat_limiter.try_take(now) {
            Err(chat::refusal(ErrorCode::ChatRateLimited, "too many chat messages; slow down"))
        } else if !p.grants.chat {
            Err(chat::refusal(ErrorCode::ChatNotAllowed, "your token does not grant chat"))
        } else {
            chat::accept(raw, &self.config.chat)
        };
        let text = match accepted {
            Ok(text) => text,
            Err(refusal) => {
                self.chat_refused += 1;
                return self.deliver_chat(now, key, refusal.to_json());
            }
        };
        let from = ChatSender { id: p.id.clone(), name: p.name.clone() };
        let session = p.session.clone();
        let Some(room) = self.sessions.get_mut(&session) else { return };
        let json = room.chat.post(from, text, unix_ms()).to_json();
        for member in self.members_of(&session) {
            if self.participants[member].grants.chat {
                self.deliver_chat(now, member, json.clone());
                self.chat_relayed += 1;
            }
        }
    }

    /// Sends on a participant's chat channel, or keeps it until the channel opens.
    fn deliver_chat(&mut self, now: Instant, key: ParticipantKey, json: String) {
        let Some(p) = self.participants.get_mut(key) else { return };
        let (Some(channel), Some(conn)) = (p.chat, p.publisher) else {
            if p.chat_backlog.len() >= self.config.chat.history.max(1) {
                p.chat_backlog.pop_front();
            }
            p.chat_backlog.push_back(json);
            return;
        };
        if let Some(c) = self.conns.get_mut(conn) {
            if let Some(mut dc) = c.pc.data_channel(channel) {
                // A peer that stops acknowledging must not pile up chat in our memory.
                if dc.outstanding_bytes() > CHAT_MAX_OUTSTANDING_BYTES {
                    debug!(participant = %p.id, "chat channel backed up: message dropped for this participant");
                } else if let Err(e) = dc.send_text(now, json) {
                    debug!(participant = %p.id, "chat delivery failed: {e}");
                }
            }
            self.conns.touch(conn);
        }
    }

    // ---- helpers -----------------------------------------------------------------------

    fn others(&self, key: ParticipantKey) -> Vec<ParticipantKey> {
        let session = &self.participants[key].session;
        self.members_of(session).into_iter().filter(|k| *k != key).collect()
    }

    fn members_of(&self, session: &str) -> Vec<ParticipantKey> {
        self.sessions.get(session).map(|s| s.members.clone()).unwrap_or_default()
    }

    /// Queues a signaling message; a client too slow to drain its queue is dropped.
    fn send(&mut self, key: ParticipantKey, msg: ServerMessage) {
        let Some(p) = self.participants.get(key) else { return };
        match p.outbound.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(participant = %p.id, "signaling queue full: dropping the participant");
                self.leaving.push((key, LeaveReason::TooSlow));
            }
            // The signaling task is gone without saying `leave`.
            Err(mpsc::error::TrySendError::Closed(_)) => self.leaving.push((key, LeaveReason::Disconnected)),
        }
    }

    fn refuse(&mut self, key: ParticipantKey, code: ErrorCode, message: impl Into<String>) {
        self.send(key, ServerMessage::error(code, message));
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
