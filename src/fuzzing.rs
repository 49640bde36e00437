//! Entry points for fuzzing: each feeds bytes from an untrusted source through the server's own code.
//!
//! The fuzz targets in `fuzz/` are one line each, calling these; `tests/fuzz_corpus.rs` replays
//! the committed corpora through the same functions, so every parser stays covered by
//! `cargo test` without the fuzz toolchain. A function panics only when one of our invariants
//! breaks (a round trip that does not come back equal, an offer that gets no reply, a stem of
//! the wrong length): for a fuzzer, that panic is the finding. Anything an attacker can send
//! must come back as an [`Outcome`], never as a panic.

use std::io::Cursor;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use veza_signaling::{ChatOut, ChatSender, ClientMessage, ErrorCode, Grants, LeaveReason, ServerMessage};

use crate::auth::{Identity, Verifier};
use crate::chat::{self, ChatRoom};
use crate::config::{AuthConfig, ChatConfig, Config};
use crate::export::decode::{self, CHANNELS, TrackReader};
use crate::media::conn::Role;
use crate::media::peer::PeerFactory;
use crate::media::sdp;
use crate::record::RecordingInfo;
use crate::record::timeline::Timeline;
use crate::session::{Host, JoinRequest};

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Understood and acted on (a parsed message, an answered offer, a decoded track).
    Accepted,
    /// Refused with a typed error, as a bad client or a bad file should be.
    Refused,
}

/// A fuzz entry point: the target's name (its `fuzz/fuzz_targets/NAME.rs` and
/// `fuzz/corpus/NAME/`), and the function.
pub type Target = (&'static str, fn(&[u8]) -> Outcome);

/// Every fuzz target, by name.
pub const TARGETS: &[Target] = &[
    ("signaling_message", signaling_message),
    ("chat_message", chat_message),
    ("sdp_rewrite", sdp_rewrite),
    ("publisher_offer", publisher_offer),
    ("subscriber_answer", subscriber_answer),
    ("signaling_session", signaling_session),
    ("datagrams", datagrams),
    ("token", token),
    ("timeline", timeline),
    ("ogg_track", ogg_track),
];

/// One WebSocket text frame from a client, as `src/http/ws.rs` parses it. A message the
/// server accepts must survive a round trip through its own serialisation (the Rust client
/// and the TypeScript types are built on that), and a refusal must be a well-formed `error`.
pub fn signaling_message(data: &[u8]) -> Outcome {
    // WebSocket text frames are UTF-8 by the time they reach us (tungstenite checks).
    let Ok(text) = std::str::from_utf8(data) else { return Outcome::Refused };
    match ClientMessage::parse(text) {
        Ok(message) => {
            let json = serde_json::to_string(&message).expect("a parsed message serialises");
            assert_eq!(ClientMessage::parse(&json).as_ref(), Ok(&message), "round trip of {json}");
            Outcome::Accepted
        }
        Err(e) => {
            let reply = ServerMessage::error(e.code(), e.to_string());
            assert_reparses(&reply);
            Outcome::Refused
        }
    }
}

/// One message on a participant's `chat` data channel, as the session host checks it
/// (`chat::accept`), then stamped and relayed like an accepted one.
pub fn chat_message(data: &[u8]) -> Outcome {
    let cfg = ChatConfig::default();
    match chat::accept(data, &cfg) {
        Ok(text) => {
            assert!(!text.trim().is_empty() && text.chars().count() <= cfg.max_chars, "accepted {text:?}");
            let from = ChatSender { id: "p1".into(), name: "Ana".into() };
            let relayed = ChatRoom::new(1).post(from, text, 1);
            let back: ChatOut = serde_json::from_str(&relayed.to_json()).expect("relayed chat parses");
            assert_eq!(back, relayed);
            Outcome::Accepted
        }
        Err(refusal) => {
            assert!(matches!(refusal, ChatOut::Error { .. }), "a refusal is an error: {refusal:?}");
            let back: ChatOut = serde_json::from_str(&refusal.to_json()).expect("a refusal parses");
            assert_eq!(back, refusal);
            Outcome::Refused
        }
    }
}

/// Our own SDP text handling (`src/media/sdp.rs`) on any text: the publish check that runs on
/// a client's offer before the WebRTC stack sees it, and the rewrites of our answers.
pub fn sdp_rewrite(data: &[u8]) -> Outcome {
    // SDP arrives inside a JSON string: always UTF-8.
    let Ok(text) = std::str::from_utf8(data) else { return Outcome::Refused };
    let sends = sdp::offers_to_send_audio(text);
    let with_ptime = sdp::with_ptime(text, 10);
    assert_eq!(sdp::with_ptime(&with_ptime, 10), with_ptime, "with_ptime is idempotent");
    let fmtp = Config::default().opus_fmtp();
    let with_fmtp = sdp::with_music_fmtp(text, &fmtp);
    assert_eq!(sdp::with_music_fmtp(&with_fmtp, &fmtp), with_fmtp, "with_music_fmtp is idempotent");
    if sends { Outcome::Accepted } else { Outcome::Refused }
}

/// A client's publisher offer through the session host (`Host::signal`): the size and publish
/// checks, `rtc`'s SDP parser, negotiation, and our rewrites of the answer. Offered once by a
/// musician and once by a listener without the publish grant; each must get exactly one
/// reply, an `answer` that is itself valid SDP or an `error`.
pub fn publisher_offer(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else { return Outcome::Refused };
    let mut stage = Stage::new();
    let musician = stage.join("musician", Grants::default());
    let listener = stage.join("listener", Grants { publish: false, ..Grants::default() });
    let mut answered = false;
    for who in [musician, listener] {
        let id = stage.ids[who].clone();
        stage.drain(who);
        stage.host.signal(stage.now, &id, ClientMessage::Offer { sdp: text.to_owned() });
        let replies: Vec<ServerMessage> = stage
            .drain(who)
            .into_iter()
            .filter(|m| matches!(m, ServerMessage::Answer { .. } | ServerMessage::Error { .. }))
            .collect();
        assert_eq!(replies.len(), 1, "one reply to an offer, got {replies:?}");
        match &replies[0] {
            ServerMessage::Answer { sdp } => {
                if let Err(e) = RTCSessionDescription::answer(sdp.clone()) {
                    panic!("our answer does not parse ({e}):\n{sdp}");
                }
                assert!(who == musician || !sdp::offers_to_send_audio(text), "a listener's audio was accepted");
                answered |= who == musician;
            }
            ServerMessage::Error { code, .. } => assert!(
                matches!(code, ErrorCode::InvalidSdp | ErrorCode::NegotiationFailed | ErrorCode::PublishNotAllowed),
                "unexpected refusal {code:?}"
            ),
            _ => unreachable!(),
        }
    }
    stage.run(Duration::from_millis(100));
    if answered { Outcome::Accepted } else { Outcome::Refused }
}

/// A client's answer to the server's subscriber offer. The offer is made the way the session
/// host makes it (`Host::subscribe` and `flush_negotiations`: a send-only forwarded track on
/// a subscriber connection), then the answer goes where `Host::on_subscriber_answer` puts it.
/// Building the offer through the host itself would need a publisher whose RTP has arrived,
/// which takes a DTLS handshake per input.
pub fn subscriber_answer(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else { return Outcome::Refused };
    if text.len() > Config::default().media.max_sdp_bytes {
        return Outcome::Refused; // the host refuses it before parsing
    }
    let now = Instant::now();
    let factory = factory(&Config::dev_defaults());
    let mut pc = factory.build(now, Role::Subscriber).expect("a subscriber connection builds");
    let init = RTCRtpTransceiverInit {
        direction: RTCRtpTransceiverDirection::Sendonly,
        streams: vec!["musician".to_owned()],
        send_encodings: vec![],
    };
    pc.add_transceiver_from_track(factory.forwarded_track("musician", "musician-a1", 0x5eed), Some(init))
        .expect("a forwarded track is added");
    let offer = pc.create_offer(None).expect("an offer is made");
    pc.set_local_description(now, offer).expect("our offer applies");
    let applied =
        RTCSessionDescription::answer(text.to_owned()).and_then(|answer| pc.set_remote_description(now, answer));
    // Let the connection act on it (ICE checks, DTLS role) as the worker would.
    let _ = pc.handle_timeout(now + Duration::from_millis(100));
    while pc.poll_event().is_some() || pc.poll_write().is_some() {}
    if applied.is_ok() { Outcome::Accepted } else { Outcome::Refused }
}

/// A session's worth of signaling: text frames, one per line, each from the musician or, for
/// a line starting with `b>`, from the listener, handled as `src/http/ws.rs` handles them
/// (size limit, parse, `leave`, then the session host), with time moving on between frames.
/// The musician has already offered a real Chromium offer, so candidates, renegotiations,
/// answers and mutes meet live connections.
pub fn signaling_session(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else { return Outcome::Refused };
    let mut stage = Stage::new();
    let musician = stage.join("musician", Grants::default());
    let listener = stage.join("listener", Grants { publish: false, ..Grants::default() });
    stage.host.signal(stage.now, "musician", ClientMessage::Offer { sdp: CHROMIUM_OFFER.to_owned() });
    let max = stage.config.http.max_message_bytes;
    let mut accepted = 0;
    for line in text.lines() {
        let (who, frame) = match line.strip_prefix("b>") {
            Some(rest) => (listener, rest),
            None => (musician, line),
        };
        let id = stage.ids[who].clone();
        if frame.len() > max {
            continue;
        }
        match ClientMessage::parse(frame) {
            Ok(ClientMessage::Leave) => stage.host.leave(stage.now, &id, LeaveReason::Left),
            // Recording control goes to the disk, not to the host (src/http/ws.rs).
            Ok(ClientMessage::StartRecording | ClientMessage::StopRecording) => {}
            Ok(message) => {
                accepted += 1;
                stage.host.signal(stage.now, &id, message);
            }
            Err(_) => {}
        }
        stage.run(Duration::from_millis(10));
        for who in [musician, listener] {
            stage.drain(who);
        }
    }
    if accepted > 0 { Outcome::Accepted } else { Outcome::Refused }
}

/// Datagrams on a worker's socket, as `Host::handle_datagram` takes them: our demultiplexer
/// (and its STUN USERNAME reader), then `rtc`'s STUN, DTLS, SRTP and RTCP parsers of the
/// connection they route to. The musician has offered a real Chromium offer and the server
/// has sent its ICE checks, so datagrams from the offer's candidate address reach a live
/// connection. Input: frames of `[source][length: u16 BE][bytes]`; an even source byte means
/// that candidate address, an odd one a stranger.
pub fn datagrams(data: &[u8]) -> Outcome {
    let mut stage = Stage::new();
    stage.join("musician", Grants::default());
    stage.host.signal(stage.now, "musician", ClientMessage::Offer { sdp: CHROMIUM_OFFER.to_owned() });
    // Until the connection has sent its first ICE check to the offer's candidate (the worker
    // learns that address from it), or a second of its time has passed.
    for _ in 0..100 {
        stage.run(Duration::from_millis(10));
        if stage.host.stats().demux_addresses > 0 {
            break;
        }
    }
    let candidate: SocketAddr = "192.0.2.2:38382".parse().expect("address");
    let stranger: SocketAddr = "198.51.100.7:40000".parse().expect("address");
    let mut rest = data;
    let mut routed = 0;
    while let [source, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        let src = if source % 2 == 0 { candidate } else { stranger };
        let unrouted = stage.host.stats().datagrams_unrouted;
        stage.host.handle_datagram(stage.now, src, datagram);
        routed += usize::from(stage.host.stats().datagrams_unrouted == unrouted);
        stage.run(Duration::from_millis(5));
    }
    if routed > 0 { Outcome::Accepted } else { Outcome::Refused }
}

/// A bearer token, as the WebSocket upgrade and the REST API check it (HS256).
pub fn token(data: &[u8]) -> Outcome {
    // Tokens come from a URL query or a header: text.
    let Ok(text) = std::str::from_utf8(data) else { return Outcome::Refused };
    let verifier = Verifier::from_config(&AuthConfig { secret: Some(FUZZ_SECRET.to_owned()), ..AuthConfig::default() })
        .expect("the fuzz secret is long enough");
    let participant = verifier.verify(text);
    let rest = verifier.verify_rest(text);
    if let Ok(identity) = &participant {
        assert!(crate::auth::valid_session_id(&identity.session), "{identity:?}");
    }
    if participant.is_ok() || rest.is_ok() { Outcome::Accepted } else { Outcome::Refused }
}

/// The HS256 secret of the `token` target; its seed tokens are signed with it.
pub const FUZZ_SECRET: &str = "fuzzing-secret-of-at-least-32-bytes-long";

/// A recording's `timeline.json`, as export reads it (`Timeline::parse`), and the plan it
/// makes from it (each track's length from the timeline, standing in for its Ogg file).
pub fn timeline(data: &[u8]) -> Outcome {
    let Ok(timeline) = Timeline::parse(data) else { return Outcome::Refused };
    // What `GET .../recordings` shows of it.
    serde_json::to_string(&RecordingInfo::from_timeline(&timeline)).expect("a recording's summary serialises");
    let lengths = timeline.tracks.iter().map(|t| t.samples).collect();
    match crate::export::Plan::new(timeline, lengths) {
        Ok(plan) => {
            assert!(plan.tracks.iter().all(|(_, offset, len)| offset + len <= plan.total));
            Outcome::Accepted
        }
        Err(_) => Outcome::Refused,
    }
}

/// Samples an `ogg_track` input is decoded to at most: enough for every packet of a small
/// file, short enough to keep the fuzzer fast.
const OGG_MAX_SAMPLES: u64 = 5 * 48_000;

/// A recorded track's Ogg Opus file, as export reads it: the quick length scan, then the
/// decoder over that length plus a little silence. A stem comes out exactly as long as asked.
pub fn ogg_track(data: &[u8]) -> Outcome {
    let Ok(len) = decode::track_samples_from("fuzz.opus", Cursor::new(data)) else { return Outcome::Refused };
    let total = len.min(OGG_MAX_SAMPLES) + 480;
    let Ok(mut reader) = TrackReader::from_reader("fuzz.opus".to_owned(), Cursor::new(data), 480, total) else {
        return Outcome::Refused;
    };
    let mut buf = vec![0f32; 4096 * CHANNELS];
    let mut produced = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                assert!(buf[..n * CHANNELS].iter().all(|s| s.is_finite()), "decoded samples are finite");
                produced += n as u64;
            }
            Err(_) => return Outcome::Refused,
        }
    }
    assert_eq!(produced, total, "a stem is as long as asked");
    Outcome::Accepted
}

/// A real Chromium 156 offer (audio from a microphone and the `chat` data channel), captured
/// from headless Chromium; also in `fuzz/corpus/publisher_offer/`.
pub const CHROMIUM_OFFER: &str = include_str!("../fuzz/corpus/publisher_offer/chromium-offer.sdp");

fn assert_reparses(message: &ServerMessage) {
    let back: ServerMessage = serde_json::from_str(&message.to_json()).expect("a server message parses");
    assert_eq!(&back, message);
}

/// The fuzzed worker's factory, made once: its certificate takes a key generation, which
/// every input would otherwise repeat.
fn factory(config: &Config) -> PeerFactory {
    static FACTORY: std::sync::OnceLock<PeerFactory> = std::sync::OnceLock::new();
    let factory = FACTORY.get_or_init(|| {
        PeerFactory::new(vec![WORKER_ADDR], config.opus_fmtp(), config.media.clone())
            .expect("a certificate is generated")
    });
    debug_assert_eq!(factory.opus_fmtp, config.opus_fmtp());
    factory.clone()
}

/// The worker socket address the fuzzed host announces.
const WORKER_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7882);

/// A session host with no worker around it: what the worker loop would do, done by hand,
/// on a clock that only moves when told.
struct Stage {
    config: Config,
    host: Host,
    now: Instant,
    ids: Vec<String>,
    inboxes: Vec<mpsc::Receiver<ServerMessage>>,
}

impl Stage {
    fn new() -> Stage {
        let config = Config::dev_defaults();
        let quota = std::sync::Arc::new(crate::session::SessionQuota::new(config.sessions.max_sessions));
        let host = Host::new(config.clone(), factory(&config), WORKER_ADDR, quota);
        Stage { config, host, now: Instant::now(), ids: Vec::new(), inboxes: Vec::new() }
    }

    /// Joins a participant to session `jam`; returns its index.
    fn join(&mut self, id: &str, grants: Grants) -> usize {
        let (outbound, inbox) = mpsc::channel(self.config.http.outbound_queue);
        let identity = Identity { user: id.to_owned(), session: "jam".to_owned(), name: id.to_owned(), grants };
        self.host
            .join(
                self.now,
                JoinRequest { participant_id: id.to_owned(), identity, outbound, resume_token: String::new() },
            )
            .expect("an empty session admits two");
        self.ids.push(id.to_owned());
        self.inboxes.push(inbox);
        self.ids.len() - 1
    }

    /// Messages the host sent a participant so far; each must be a well-formed server message.
    fn drain(&mut self, who: usize) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        while let Ok(m) = self.inboxes[who].try_recv() {
            assert_reparses(&m);
            out.push(m);
        }
        out
    }

    /// One worker loop turn `step` later: timers, events, and datagrams out (to nowhere).
    fn run(&mut self, step: Duration) {
        self.now += step;
        self.host.handle_timeout(self.now);
        self.host.pump(self.now);
        self.host.transmit(|_, _| {});
    }
}
