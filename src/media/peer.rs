//! Builds `rtc` peer connections with the music profile, sharing the worker's one UDP socket.

use std::net::SocketAddr;
use std::time::Instant;

use rtc::crypto::SignatureScheme;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{ReceiverReportBuilder, Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};

use super::conn::Role;
use super::sender_reports::DeliverSenderReports;
use crate::config::MediaConfig;

/// The payload type we offer Opus on.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Opus's RTP clock runs at 48 kHz whatever the sampling rate (RFC 7587 §4.1).
pub const OPUS_CLOCK_RATE: u32 = 48_000;

/// Interval between ICE connectivity checks when we are the controlling agent.
const ICE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// What every connection of a worker shares: the socket's address(es), the codec profile and
/// the DTLS certificate.
#[derive(Clone)]
pub struct PeerFactory {
    /// Addresses announced as host candidates; all map to the worker's one socket.
    pub announce: Vec<SocketAddr>,
    pub opus_fmtp: String,
    pub media: MediaConfig,
    /// One self-signed certificate for all of the worker's connections. Left to itself, `rtc`
    /// generates a key pair and signs a certificate for every connection, two per join; the
    /// peer checks our certificate against the fingerprint in our SDP, which stays as
    /// trustworthy when many connections share it (mediasoup keeps one per worker too).
    certificate: RTCCertificate,
}

#[derive(Debug, thiserror::Error)]
#[error("building peer connection: {0}")]
pub struct BuildError(#[from] rtc::shared::error::Error);

impl PeerFactory {
    /// A factory with a freshly generated ECDSA P-256 certificate (what browsers use).
    pub fn new(announce: Vec<SocketAddr>, opus_fmtp: String, media: MediaConfig) -> Result<PeerFactory, BuildError> {
        let provider = rtc::crypto::default_provider().map_err(|e| rtc::shared::error::Error::Other(e.to_string()))?;
        let params = CertificateParams::new(vec!["veza-sfu".to_owned()])
            .map_err(|e| rtc::shared::error::Error::Other(e.to_string()))?;
        let certificate = RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)?;
        Ok(PeerFactory { announce, opus_fmtp, media, certificate })
    }

    pub fn opus_codec(&self) -> RTCRtpCodec {
        RTCRtpCodec {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: OPUS_CLOCK_RATE,
            channels: 2,
            sdp_fmtp_line: self.opus_fmtp.clone(),
            rtcp_feedback: vec![],
        }
    }

    /// An outgoing Opus track for a subscriber: stream id = the source participant, so the
    /// client knows whose audio it is from the msid.
    pub fn forwarded_track(&self, stream_id: &str, track_id: &str, ssrc: u32) -> MediaStreamTrack {
        MediaStreamTrack::new(
            stream_id.to_owned(),
            track_id.to_owned(),
            track_id.to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec: self.opus_codec(),
                ..Default::default()
            }],
        )
    }

    /// A fresh connection. Its ICE credentials are the stack's to choose (random), not pinned:
    /// an ICE restart must change them (RFC 8839 §4.4.1.1.1) and `rtc` restarts with the pinned
    /// ones if there are any. The host learns the ufrag from each description it sends.
    pub fn build(&self, now: Instant, role: Role) -> Result<RTCPeerConnection, BuildError> {
        // Opus only: a music session has nothing to gain from G.722 or PCMU.
        let mut engine = MediaEngine::default();
        engine.register_codec(
            RTCRtpCodecParameters { rtp_codec: self.opus_codec(), payload_type: OPUS_PAYLOAD_TYPE },
            RtpCodecKind::Audio,
        )?;
        // Every interceptor moves each packet through its own queue, so a connection gets only
        // what its direction needs. Publishers: receiver reports (the publisher learns loss
        // and RTT), wrapped to hand their sender reports to the application (recordings note
        // the NTP/RTP pairs) rather than in a slot of their own, to spare every packet one
        // more queue. Subscribers: none; the forwarding pass counts what each leg sends and
        // the worker writes its sender reports (media::forward), which took 6-8% of the
        // forwarding CPU as an interceptor. No NACK (not negotiated for audio), TWCC or
        // simulcast.
        let registry = match role {
            Role::Publisher => Registry::new()
                .with(Slot::ReceiverReport, DeliverSenderReports::new(ReceiverReportBuilder::new().build())),
            Role::Subscriber => Registry::new(),
        };

        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_lite(self.media.ice_lite)
            // Pace connectivity checks like browsers do (~50 ms): the 200 ms default adds
            // a fifth of a second to every join.
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), None)
            .with_ice_timeouts(
                Some(self.media.ice_disconnected_timeout),
                Some(self.media.ice_failed_timeout),
                Some(self.media.ice_keepalive_interval),
            )
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new().with_certificates(vec![self.certificate.clone()]).build(),
            )
            .with_media_engine(engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .build(now)?;
        // The worker's one socket is every connection's host candidate; no gathering.
        for addr in &self.announce {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: "udp".to_owned(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..Default::default()
                },
                ..Default::default()
            }
            .new_candidate_host()?;
            pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
        }
        pc.add_local_candidate(RTCIceCandidateInit::default())?; // end of candidates
        Ok(pc)
    }
}
