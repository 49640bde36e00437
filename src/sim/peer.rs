//! WebRTC plumbing of a simulated musician: loopback-only peer connections, the Opus track it
//! publishes, and the tasks that drain remote tracks and data channels into [`Shared`].

use std::net::IpAddr;
use std::sync::Arc;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{ReceiverReportBuilder, SenderReportBuilder, Slot};
use rtc::peer_connection::configuration::interceptor_registry::{configure_nack, configure_twcc_receiver_only};
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use veza_signaling::{CHAT_LABEL, ChatOut, IceServer, PcTarget};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionState, Registry, SettingEngineBuilder,
};

use super::payload;
use super::state::{ChannelState, PcWatch, Shared};
use super::stats::ReceivedSenderReport;
use crate::media::sender_reports::DeliverSenderReports;

/// Payload type the sim offers Opus with (and stamps on its RTP packets).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// RTP clock rate of Opus.
pub const OPUS_CLOCK_RATE: u32 = 48_000;
/// The `a=fmtp` line of the sim's published Opus track: stereo music, 10 ms packets allowed.
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1";

fn opus_codec(fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".to_owned(),
        clock_rate: OPUS_CLOCK_RATE,
        channels: 2,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Where a sim's peer connections live on the network (from [`super::SimOptions`]).
#[derive(Debug, Clone)]
pub(crate) struct Network {
    /// TURN servers to reach the server through exclusively; empty: host candidates only.
    pub(crate) relay: Vec<IceServer>,
    pub(crate) local_ip: IpAddr,
    pub(crate) hide_candidates: bool,
}

impl Network {
    /// The SDP to send for `sdp`: without candidate lines when candidates are hidden.
    pub(crate) fn outgoing_sdp(&self, sdp: String) -> String {
        if !self.hide_candidates {
            return sdp;
        }
        // SDP lines end in CRLF; keep that for every line that stays.
        sdp.split_inclusive('\n')
            .filter(|line| !line.starts_with("a=candidate:") && !line.starts_with("a=end-of-candidates"))
            .collect()
    }
}

/// A peer connection on `net.local_ip` alone (host candidates there, mDNS off, no ICE
/// servers), knows only Opus with `fmtp`, and reports to `shared` as `role`. With relay
/// servers it gathers relayed candidates only (ICE transport policy `relay`), through them.
pub(crate) async fn new_peer_connection(
    shared: Arc<Shared>,
    role: PcTarget,
    fmtp: &str,
    net: &Network,
) -> anyhow::Result<Arc<dyn PeerConnection>> {
    let relay = &net.relay;
    let mut media = MediaEngine::default();
    media.register_codec(
        RTCRtpCodecParameters { rtp_codec: opus_codec(fmtp), payload_type: OPUS_PAYLOAD_TYPE },
        RtpCodecKind::Audio,
    )?;
    // What `register_default_interceptors` sets up, but with the receiver-report interceptor
    // handing sender reports to the application, so tests can check the server's.
    let registry = configure_nack(Registry::new(), &mut media);
    let registry = configure_twcc_receiver_only(registry, &mut media)?
        .with(Slot::ReceiverReport, DeliverSenderReports::new(ReceiverReportBuilder::new().build()))
        .with(Slot::SenderReport, SenderReportBuilder::new().build());
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(true)
        // Check candidates as a browser paces them (Chrome: every ~50 ms), not every 200 ms.
        .with_ice_connection_attempts(Some(std::time::Duration::from_millis(50)), None)
        // An ICE restart binds new sockets (new local ports) and drops the old ones, as a
        // device that changed networks does: `SimParticipant::restart_ice` is a network change.
        .with_discard_local_candidates_during_ice_restart(true)
        .build();
    let mut configuration = RTCConfigurationBuilder::new();
    if !relay.is_empty() {
        let servers = relay.iter().map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        });
        configuration =
            configuration.with_ice_servers(servers.collect()).with_ice_transport_policy(RTCIceTransportPolicy::Relay);
    }
    let pc = PeerConnectionBuilder::new()
        .with_configuration(configuration.build())
        .with_media_engine(media)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Callbacks { role, shared }))
        .with_udp_addrs(vec![std::net::SocketAddr::new(net.local_ip, 0)])
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// The Opus track a publishing sim sends on, with a fixed SSRC.
pub(crate) fn opus_track(stream_id: &str, track_id: &str, ssrc: u32) -> TrackLocalStaticRTP {
    TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_owned(),
        track_id.to_owned(),
        track_id.to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            active: true,
            codec: opus_codec(OPUS_FMTP),
            ..Default::default()
        }],
    ))
}

/// Peer connection callbacks: record state, drain every remote track and data channel.
struct Callbacks {
    role: PcTarget,
    shared: Arc<Shared>,
}

impl Callbacks {
    fn watch(&self) -> &PcWatch {
        match self.role {
            PcTarget::Publisher => &self.shared.publisher,
            PcTarget::Subscriber => &self.shared.subscriber,
        }
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Callbacks {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.watch().gathering.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(participant = %self.shared.id, role = ?self.role, "sim: connection {state}");
        self.watch().state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Callbacks run on the connection's driver: hand the track to a task at once.
        self.shared.adopt(tokio::spawn(consume_track(self.shared.clone(), track)));
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        // The sim opens the chat channel itself; should the server open one too, record what
        // arrives on it all the same.
        self.shared.adopt(tokio::spawn(consume_chat(self.shared.clone(), dc, false)));
    }
}

/// Accounts every packet of a remote track under its source participant (the msid stream id).
async fn consume_track(shared: Arc<Shared>, track: Arc<dyn TrackRemote>) {
    let source = track.stream_id().await;
    let track_id = track.track_id().await;
    let tag = payload::stream_tag(&source);
    tracing::debug!(participant = %shared.id, %source, %track_id, "sim: remote track");
    shared.track_opened(&source, &track_id);
    let (mut packets, mut last_timestamp) = (0u64, None);
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                (packets, last_timestamp) = (packets + 1, Some(packet.header.timestamp));
                shared.keep_rtp(&source, &packet);
                shared.record_rtp(&source, tag, &packet.payload);
            }
            TrackRemoteEvent::OnRtcpPacket(rtcp) => {
                for sr in rtcp.iter().filter_map(|p| p.as_any().downcast_ref::<SenderReport>()) {
                    let report = ReceivedSenderReport {
                        ssrc: sr.ssrc,
                        ntp_time: sr.ntp_time,
                        rtp_time: sr.rtp_time,
                        packet_count: sr.packet_count,
                        octet_count: sr.octet_count,
                        packets_before: packets,
                        last_timestamp_before: last_timestamp,
                    };
                    shared.record_sender_report(&source, report);
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    shared.track_ended(&source, &track_id);
}

/// Records chat messages arriving on `dc`; `own` marks the channel the sim created (whose
/// open/closed state `send_chat` waits on).
pub(crate) async fn consume_chat(shared: Arc<Shared>, dc: Arc<dyn DataChannel>, own: bool) {
    if !own {
        let label = dc.label().await.unwrap_or_default();
        if label != CHAT_LABEL {
            shared.record_error(format!("server opened an unexpected data channel {label:?}"));
        }
    }
    while let Some(event) = dc.poll().await {
        match event {
            DataChannelEvent::OnOpen if own => shared.set_chat_channel(ChannelState::Open),
            DataChannelEvent::OnMessage(msg) => match serde_json::from_slice::<ChatOut>(&msg.data) {
                Ok(chat) => shared.push_chat(chat),
                Err(e) => shared
                    .record_error(format!("undecodable chat message {:?}: {e}", String::from_utf8_lossy(&msg.data))),
            },
            DataChannelEvent::OnClose => break,
            _ => {}
        }
    }
    if own {
        shared.set_chat_channel(ChannelState::Closed);
    }
}
