//! Simulated musicians: scripted veza-sfu participants for integration tests and the load generator.
//!
//! A [`SimParticipant`] joins a session over the signaling WebSocket the way a browser does:
//!
//! * **Publisher connection** — the sim offers: one stereo Opus track (when
//!   [`SimOptions::publish`]) and the [`CHAT_LABEL`] data channel, and applies the server's
//!   answer before [`SimParticipant::join`] returns.
//! * **Subscriber connection** — the server offers (again on every renegotiation); the sim
//!   creates the connection on the first offer and answers each offer in turn.
//!
//! Candidates travel inside the SDP (the sim waits for ICE gathering before offering or
//! answering; [`SimOptions::hide_candidates`] leaves them out) and every socket is bound to
//! [`SimOptions::local_ip`] (127.0.0.1), so a sim only reaches a server on the same host; the
//! ICE servers in `joined` are ignored unless [`SimOptions::relay_only`] is set (then the sim
//! reaches the server through their TURN relays alone).
//!
//! Instead of real Opus the sim sends self-checking payloads (see [`payload`]): receivers verify
//! every byte, spot loss, duplication and misrouting from the embedded sequence number and
//! stream tag, and measure one-way latency from the embedded send time. Everything a sim
//! observes (server messages, chat, per-source media statistics, background errors) is
//! recorded, and the `wait_*` methods await conditions on it without polling.

pub mod payload;
mod peer;
mod signal;
mod state;
pub mod stats;
pub mod tone;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rtc::rtp;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use veza_signaling::{
    CHAT_LABEL, ChatIn, ChatOut, Client, ClientMessage, ErrorCode, IceServer, Joined, PcTarget, ServerMessage,
};
use webrtc::data_channel::DataChannel;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{PeerConnection, RTCSessionDescription};

pub use peer::{OPUS_CLOCK_RATE, OPUS_FMTP, OPUS_PAYLOAD_TYPE};
pub use stats::{OfferedTrack, ReceivedRtp, ReceivedSenderReport, RemoteTrack, StreamStats};

use signal::{Frame, PcSlot, SignalSender};
use state::{ChannelState, Shared, lock, within};

/// How long `leave` waits for the server to close the socket after `leave`.
const LEAVE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a polite close may take per step (WebSocket close frame, each peer connection).
const CLOSE_STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a vanished sim's peer connections stay up (silent: no media, no chat) before they
/// are closed to free their sockets. Long enough for the server to have handled the dropped
/// WebSocket first, so the DTLS close that `close()` sends cannot be mistaken for the cause.
const VANISH_LINGER: Duration = Duration::from_secs(3);

/// How a simulated musician behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Publish an Opus track (the server refuses the offer if the token forbids publishing).
    pub publish: bool,
    /// Time between RTP packets once publishing (clamped to at least 1 ms).
    pub packet_interval: Duration,
    /// RTP payload size in bytes, clamped to [`payload::MIN_PAYLOAD_LEN`]..=[`payload::MAX_PAYLOAD_LEN`].
    pub payload_len: usize,
    /// Limit for each step that waits on the server or the network: connecting, `joined`, each
    /// negotiation, each signaling send, the chat channel opening.
    pub io_timeout: Duration,
    /// Reach the server only through TURN: both connections use the TURN servers of
    /// `joined.ice_servers` with ICE transport policy `relay` (relayed candidates only).
    pub relay_only: bool,
    /// Publish real Opus instead of self-checking payloads: a stereo sine tone of this many Hz
    /// in 10 ms frames (see [`tone`]); receivers then count those packets as corrupt.
    pub tone_hz: Option<f32>,
    /// More notes for the tone: with [`tone_hz`](Self::tone_hz) the sim plays it and then each of
    /// these for 250 ms ([`tone::NOTE_FRAMES`]) in turn, over and over. Empty: a steady tone.
    pub tone_melody: Vec<f32>,
    /// Packet loss in percent the tone's Opus encoder expects: 0 leaves in-band FEC negotiated
    /// but empty; 10 makes every packet of a melody carry the previous frame again (not those
    /// of a steady tone: see [`tone::Tone::new`]).
    pub tone_loss_percent: u8,
    /// Address the peer connections bind to and gather their host candidates on. Any address
    /// of 127.0.0.0/8 works on Linux without configuration, which lets a test tell sims apart
    /// by source address (e.g. to put one of them on a lossy path).
    pub local_ip: IpAddr,
    /// Leave every ICE candidate out of the sim's offers and answers: the server then learns the
    /// sim's address only from its connectivity checks (peer-reflexive), so media takes exactly
    /// the path those checks take, e.g. through a relay in front of the server's announced address.
    pub hide_candidates: bool,
    /// Keep every received RTP packet for [`SimParticipant::rtp_packets`] (to decode real Opus,
    /// say). Unbounded: for short runs only.
    pub keep_rtp: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            publish: true,
            packet_interval: Duration::from_millis(10),
            payload_len: 160,
            io_timeout: Duration::from_secs(10),
            relay_only: false,
            tone_hz: None,
            tone_melody: Vec::new(),
            tone_loss_percent: 0,
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            hide_candidates: false,
            keep_rtp: false,
        }
    }
}

impl SimOptions {
    fn normalized(mut self) -> Self {
        self.packet_interval = self.packet_interval.max(Duration::from_millis(1));
        self.payload_len = self.payload_len.clamp(payload::MIN_PAYLOAD_LEN, payload::MAX_PAYLOAD_LEN);
        self
    }
}

/// The server answered with an `error` message where the sim expected to proceed (instead of
/// `joined`, or instead of the publisher answer). `join` fails with this inside its
/// `anyhow::Error`: get it back with `err.downcast_ref::<ServerRefused>()`. (An HTTP refusal of
/// the upgrade, e.g. a bad token, comes as [`veza_signaling::ClientError::Rejected`].)
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("server refused: {code:?}: {message}")]
pub struct ServerRefused {
    pub code: ErrorCode,
    pub message: String,
}

/// The Opus source of a publishing sim.
struct Audio {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    /// Sequence state, shared by successive sender tasks and held while a packet is written, so
    /// a stopping task and a starting one never reuse a sequence number.
    counters: Arc<tokio::sync::Mutex<Counters>>,
    task: Mutex<Option<SenderTask>>,
}

struct Counters {
    /// Payload sequence number of the next packet (starts at 0).
    seq: u32,
    rtp_seq: u16,
    rtp_ts: u32,
    tone: Option<tone::Tone>,
}

struct SenderTask {
    handle: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

/// One simulated participant. Drop it or (better) end it with [`leave`](Self::leave),
/// [`close`](Self::close) or [`vanish`](Self::vanish).
pub struct SimParticipant {
    joined: Joined,
    opts: SimOptions,
    net: peer::Network,
    shared: Arc<Shared>,
    runtime: Handle,
    signal: Arc<SignalSender>,
    publisher_pc: Option<Arc<dyn PeerConnection>>,
    subscriber_pc: Arc<PcSlot>,
    chat_dc: Option<Arc<dyn DataChannel>>,
    audio: Option<Audio>,
    /// The server's answers to publisher offers, kept for renegotiations ([`publish_audio`](Self::publish_audio)).
    answers: Option<mpsc::UnboundedReceiver<String>>,
    /// Where a (resumed) signaling socket's reader hands answers and offers.
    answers_tx: mpsc::UnboundedSender<String>,
    offers_tx: mpsc::UnboundedSender<String>,
    /// The task reading the current signaling socket.
    reader: Option<JoinHandle<()>>,
    torn_down: bool,
}

impl SimParticipant {
    /// Connects to `ws_url` (e.g. `ws://127.0.0.1:7880/v1/ws`) with `token`, waits for `joined`,
    /// then negotiates the publisher connection. Returns once the server's answer is applied
    /// (media may still be connecting: see [`wait_publisher_connected`](Self::wait_publisher_connected)).
    /// Publishing starts only with [`start_publishing`](Self::start_publishing).
    pub async fn join(ws_url: &str, token: &str, opts: SimOptions) -> anyhow::Result<SimParticipant> {
        let opts = opts.normalized();
        let timeout = opts.io_timeout;
        let mut client = within(timeout, || format!("a signaling connection to {ws_url}"), async {
            Client::connect(ws_url, token).await.with_context(|| format!("connecting to {ws_url}"))
        })
        .await?;
        let first = within(timeout, || "the joined message".to_owned(), async {
            client.recv().await.context("reading the joined message")
        })
        .await?;
        let joined = match first {
            Some(ServerMessage::Joined(joined)) => *joined,
            Some(ServerMessage::Error { code, message }) => return Err(ServerRefused { code, message }.into()),
            Some(other) => anyhow::bail!("expected joined as the first message, got {other:?}"),
            None => anyhow::bail!("server closed the socket before joined"),
        };

        let shared = Arc::new(Shared::new(joined.participant.id.clone(), opts.keep_rtp));
        let (tx, rx) = client.split();
        let signal = Arc::new(SignalSender::new(Some(tx)));
        let subscriber_pc = Arc::new(PcSlot::default());
        let (answers_tx, mut answers_rx) = mpsc::unbounded_channel();
        let (offers_tx, offers_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(signal::read_loop(shared.clone(), rx, answers_tx.clone(), offers_tx.clone()));
        let net = peer::Network {
            relay: if opts.relay_only { turn_servers(&joined)? } else { Vec::new() },
            local_ip: opts.local_ip,
            hide_candidates: opts.hide_candidates,
        };
        let fmtp = if joined.codec.fmtp.is_empty() { OPUS_FMTP.to_owned() } else { joined.codec.fmtp.clone() };
        shared.adopt(tokio::spawn(signal::negotiate_subscriber(
            shared.clone(),
            signal.clone(),
            subscriber_pc.clone(),
            offers_rx,
            fmtp,
            net.clone(),
            timeout,
        )));

        let mut sim = SimParticipant {
            joined,
            opts,
            net,
            shared,
            runtime: Handle::current(),
            signal,
            publisher_pc: None,
            subscriber_pc,
            chat_dc: None,
            audio: None,
            answers: None,
            answers_tx,
            offers_tx,
            reader: Some(reader),
            torn_down: false,
        };
        match sim.negotiate_publisher(&mut answers_rx).await {
            Ok(()) => {
                sim.answers = Some(answers_rx);
                Ok(sim)
            }
            Err(e) => {
                sim.teardown(true).await;
                Err(e)
            }
        }
    }

    /// Creates the publisher connection, offers it and applies the server's answer.
    async fn negotiate_publisher(&mut self, answers: &mut mpsc::UnboundedReceiver<String>) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let pc = peer::new_peer_connection(shared.clone(), PcTarget::Publisher, OPUS_FMTP, &self.net).await?;
        self.publisher_pc = Some(pc.clone());

        if self.opts.publish {
            self.add_audio_track(&pc).await?;
        }
        let dc = pc.create_data_channel(CHAT_LABEL, None).await.context("creating the chat channel")?;
        self.chat_dc = Some(dc.clone());
        shared.adopt(tokio::spawn(peer::consume_chat(shared.clone(), dc, true)));
        self.offer_publisher(&pc, answers, false).await
    }

    /// Adds the Opus track this sim publishes to its publisher connection.
    async fn add_audio_track(&mut self, pc: &Arc<dyn PeerConnection>) -> anyhow::Result<()> {
        let id = self.shared.id.clone();
        let ssrc = rand::random::<u32>().max(1);
        let track = Arc::new(peer::opus_track(&id, &format!("{id}-audio"), ssrc));
        pc.add_track(track.clone() as Arc<dyn TrackLocal>).await.context("adding the audio track")?;
        self.audio = Some(Audio {
            track,
            ssrc,
            counters: Arc::new(tokio::sync::Mutex::new(Counters {
                seq: 0,
                rtp_seq: rand::random(),
                rtp_ts: rand::random(),
                tone: self
                    .opts
                    .tone_hz
                    .map(|hz| {
                        let notes: Vec<f32> =
                            std::iter::once(hz).chain(self.opts.tone_melody.iter().copied()).collect();
                        tone::Tone::new(&notes, self.opts.tone_loss_percent)
                    })
                    .transpose()
                    .context("creating the Opus encoder")?,
            })),
            task: Mutex::new(None),
        });
        Ok(())
    }

    /// A listener whose grants now allow publishing (`grants_changed`) adds its audio track
    /// and renegotiates the publisher connection; then [`start_publishing`](Self::start_publishing)
    /// works. A no-op for a sim that already has a track.
    pub async fn publish_audio(&mut self) -> anyhow::Result<()> {
        if self.audio.is_some() {
            return Ok(());
        }
        let pc = self.publisher_pc.clone().context("no publisher connection")?;
        let mut answers = self.answers.take().context("publisher negotiation not finished")?;
        let result = match self.add_audio_track(&pc).await {
            Ok(()) => self.offer_publisher(&pc, &mut answers, false).await,
            Err(e) => Err(e),
        };
        self.answers = Some(answers);
        result
    }

    /// Moves to a new network the way a browser does after a handover: restarts ICE on both
    /// connections, each from a freshly bound socket (a new local port; the old socket is
    /// closed first, so nothing more leaves from the old address). The publisher connection
    /// re-offers with new ICE credentials; the subscriber one asks the server to (`ice_restart`)
    /// and answers its new offer. Returns once both restart answers are applied; media resumes
    /// once ICE has checked the new path (DTLS and SRTP carry on, nothing is renegotiated).
    pub async fn restart_ice(&mut self) -> anyhow::Result<()> {
        let pc = self.publisher_pc.clone().context("no publisher connection")?;
        let mut answers = self.answers.take().context("publisher negotiation not finished")?;
        let result = self.offer_publisher(&pc, &mut answers, true).await;
        self.answers = Some(answers);
        result?;
        let answered = self.subscriber_negotiations();
        self.send(&ClientMessage::IceRestart).await?;
        self.wait_subscriber_negotiations(answered + 1, self.opts.io_timeout).await
    }

    /// The addresses of the local candidates one connection's current local description
    /// advertises (empty before it has one).
    pub async fn local_candidate_addrs(&self, target: PcTarget) -> Vec<std::net::SocketAddr> {
        let pc = match target {
            PcTarget::Publisher => self.publisher_pc.clone(),
            PcTarget::Subscriber => lock(&self.subscriber_pc).clone(),
        };
        let Some(pc) = pc else { return Vec::new() };
        pc.local_description().await.map(|d| candidate_addrs(&d.sdp)).unwrap_or_default()
    }

    /// Offers the publisher connection as it stands (restarting ICE if `ice_restart`) and
    /// applies the server's answer.
    async fn offer_publisher(
        &mut self,
        pc: &Arc<dyn PeerConnection>,
        answers: &mut mpsc::UnboundedReceiver<String>,
        ice_restart: bool,
    ) -> anyhow::Result<()> {
        let timeout = self.opts.io_timeout;
        let shared = self.shared.clone();
        if ice_restart {
            // The restarted generation gathers anew (on new sockets): wait for that gathering,
            // not the one that completed at join.
            shared.publisher.gathering.send_replace(webrtc::peer_connection::RTCIceGatheringState::New);
        }
        let options = ice_restart.then_some(rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true });
        let offer = pc.create_offer(options).await.context("creating the publisher offer")?;
        pc.set_local_description(offer).await.context("applying the publisher offer")?;
        within(timeout, || "publisher ICE gathering".to_owned(), shared.publisher.gathered()).await?;
        let local = pc.local_description().await.context("no local description after offering")?;
        self.send(&ClientMessage::Offer { sdp: self.net.outgoing_sdp(local.sdp) }).await?;

        let answer = within(timeout, || "the publisher answer".to_owned(), async {
            tokio::select! {
                biased;
                refused = shared.events_changed.until(|| shared.refusal()) => Err(refused.into()),
                sdp = answers.recv() => match sdp {
                    Some(sdp) => Ok(sdp),
                    None => Err(match shared.refusal() {
                        Some(refused) => refused.into(),
                        None => anyhow::anyhow!("signaling closed before the publisher answer"),
                    }),
                },
            }
        })
        .await?;
        let answer = RTCSessionDescription::answer(answer).context("parsing the publisher answer")?;
        pc.set_remote_description(answer).await.context("applying the publisher answer")?;
        Ok(())
    }

    /// Own participant id.
    pub fn id(&self) -> &str {
        &self.joined.participant.id
    }

    /// The `joined` message the server greeted this sim with.
    pub fn joined(&self) -> &Joined {
        &self.joined
    }

    /// The options in effect (after clamping).
    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    /// The stream tag this sim's payloads carry ([`payload::stream_tag`] of its id).
    pub fn stream_tag(&self) -> u32 {
        payload::stream_tag(self.id())
    }

    /// SSRC of the published track, if publishing is enabled.
    pub fn ssrc(&self) -> Option<u32> {
        self.audio.as_ref().map(|a| a.ssrc)
    }

    // ---------------------------------------------------------------- connections

    /// Waits until the publisher connection is connected; fails early if it failed or closed.
    pub async fn wait_publisher_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        within(timeout, || "the publisher connection".to_owned(), self.shared.publisher.connected("publisher")).await
    }

    /// Waits until the subscriber connection (created by the server's first offer) is connected;
    /// fails early if it failed or closed.
    pub async fn wait_subscriber_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        within(timeout, || "the subscriber connection".to_owned(), self.shared.subscriber.connected("subscriber")).await
    }

    /// How many subscriber offers this sim has answered.
    pub fn subscriber_negotiations(&self) -> u64 {
        *self.shared.negotiations.borrow()
    }

    /// Waits until at least `n` subscriber offers have been answered.
    pub async fn wait_subscriber_negotiations(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.shared.negotiations.subscribe();
        within(timeout, || format!("{n} subscriber negotiations"), async {
            rx.wait_for(|done| *done >= n).await.map(|_| ()).map_err(|_| anyhow::anyhow!("sim is gone"))
        })
        .await
    }

    // ---------------------------------------------------------------- sending media

    /// Starts sending RTP on the published track, one packet per `packet_interval`. Idempotent;
    /// a no-op (with a warning) if the sim was joined with `publish: false` or is shutting down.
    /// Payload sequence numbers continue where a previous [`stop_publishing`](Self::stop_publishing) left off.
    pub fn start_publishing(&self) {
        let Some(audio) = &self.audio else {
            tracing::warn!(participant = %self.id(), "sim: start_publishing without a published track");
            return;
        };
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let mut task = lock(&audio.task);
        if task.as_ref().is_some_and(|t| !t.stop.load(Ordering::Acquire) && !t.handle.is_finished()) {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handle = self.runtime.spawn(send_audio(
            self.shared.clone(),
            audio.track.clone(),
            audio.counters.clone(),
            stop.clone(),
            audio.ssrc,
            self.opts.packet_interval,
            self.opts.payload_len,
        ));
        if let Some(old) = task.replace(SenderTask { handle, stop }) {
            // Already told to stop: it exits by itself after at most one packet. Keep its handle
            // for teardown all the same.
            self.shared.adopt(old.handle);
        }
    }

    /// Stops sending after the packet in flight (if any). Idempotent.
    pub fn stop_publishing(&self) {
        if let Some(audio) = &self.audio
            && let Some(task) = lock(&audio.task).as_ref()
        {
            task.stop.store(true, Ordering::Release);
        }
    }

    /// Stops sending and waits until the sender task has ended: afterwards [`sent_packets`](Self::sent_packets)
    /// is final (until publishing starts again).
    pub async fn finish_publishing(&self) {
        self.stop_publishing();
        let task = self.audio.as_ref().and_then(|audio| lock(&audio.task).take());
        if let Some(task) = task {
            // The task exits by itself after at most one packet; a panic in it is not ours to report.
            let _ = task.handle.await;
        }
    }

    /// Whether a sender task is running and has not been told to stop.
    pub fn is_publishing(&self) -> bool {
        self.audio.as_ref().is_some_and(|a| {
            lock(&a.task).as_ref().is_some_and(|t| !t.stop.load(Ordering::Acquire) && !t.handle.is_finished())
        })
    }

    /// RTP packets handed to the track (queued for sending; not proof they left the host).
    /// Payload sequence numbers `0..sent_packets()` have been used.
    pub fn sent_packets(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// RTP writes the track refused (e.g. not bound yet, or the connection closed).
    pub fn send_errors(&self) -> u64 {
        self.shared.send_errors.load(Ordering::Relaxed)
    }

    // ---------------------------------------------------------------- receiving media

    /// What this sim received so far, per source participant id.
    pub fn received(&self) -> HashMap<String, StreamStats> {
        self.shared.received_snapshot()
    }

    /// What this sim received so far from one participant.
    pub fn received_from(&self, source: &str) -> Option<StreamStats> {
        lock(&self.shared.received).get(source).map(|s| s.stats.clone())
    }

    /// Every RTP packet received from participant `source`, in arrival order. Empty unless
    /// [`SimOptions::keep_rtp`] is set.
    pub fn rtp_packets(&self, source: &str) -> Vec<ReceivedRtp> {
        self.shared.kept_rtp.as_ref().and_then(|kept| lock(kept).get(source).cloned()).unwrap_or_default()
    }

    /// Every remote track the subscriber connection has delivered, in order of first packet.
    pub fn remote_tracks(&self) -> Vec<RemoteTrack> {
        lock(&self.shared.remote_tracks).clone()
    }

    /// The `(source participant id, track id)` pairs the latest answered subscriber offer sends.
    pub fn offered_tracks(&self) -> Vec<OfferedTrack> {
        lock(&self.shared.offered).clone()
    }

    /// Waits until the latest answered subscriber offer does (`offered`) or does not (`!offered`)
    /// send a track from participant `source`.
    pub async fn wait_offered(&self, source: &str, offered: bool, timeout: Duration) -> anyhow::Result<()> {
        let shared = &self.shared;
        let check = || (lock(&shared.offered).iter().any(|(s, _)| s == source) == offered).then_some(());
        let what =
            || format!("the subscriber offer to {} a track from {source}", if offered { "send" } else { "drop" });
        within(timeout, what, async {
            shared.media_changed.until(check).await;
            Ok(())
        })
        .await
    }

    /// Waits until at least `n` RTP packets (good or bad: check `bad_payloads` afterwards) have
    /// arrived from participant `from`.
    pub async fn wait_for_packets(&self, from: &str, n: u64, timeout: Duration) -> anyhow::Result<()> {
        let shared = &self.shared;
        let have = || lock(&shared.received).get(from).map_or(0, |s| s.stats.packets);
        within(timeout, || format!("{n} packets from {from} (have {})", have()), async {
            shared.media_changed.until(|| (have() >= n).then_some(())).await;
            Ok(())
        })
        .await
    }

    /// The RTCP sender reports received for participant `source`'s audio, in arrival order.
    pub fn sender_reports(&self, source: &str) -> Vec<ReceivedSenderReport> {
        lock(&self.shared.sender_reports).get(source).cloned().unwrap_or_default()
    }

    /// Waits until `n` sender reports for `source`'s audio have arrived.
    pub async fn wait_for_sender_reports(&self, source: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let shared = &self.shared;
        let have = || lock(&shared.sender_reports).get(source).map_or(0, Vec::len);
        within(timeout, || format!("{n} sender reports for {source} (have {})", have()), async {
            shared.media_changed.until(|| (have() >= n).then_some(())).await;
            Ok(())
        })
        .await
    }

    // ---------------------------------------------------------------- chat

    /// Waits until the chat channel is open; fails if it closed.
    pub async fn wait_chat_open(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.shared.chat_channel.subscribe();
        let state = within(timeout, || "the chat channel to open".to_owned(), async {
            rx.wait_for(|s| *s != ChannelState::Connecting)
                .await
                .map(|s| *s)
                .map_err(|_| anyhow::anyhow!("sim is gone"))
        })
        .await?;
        anyhow::ensure!(state == ChannelState::Open, "chat channel closed");
        Ok(())
    }

    /// Sends a chat message (waiting up to `io_timeout` for the channel to open).
    pub async fn send_chat(&self, text: &str) -> anyhow::Result<()> {
        let json = serde_json::to_string(&ChatIn::Chat { text: text.to_owned() })?;
        self.send_chat_raw(&json).await
    }

    /// Sends `raw` as a text message on the chat channel, as is (for malformed-input tests).
    pub async fn send_chat_raw(&self, raw: &str) -> anyhow::Result<()> {
        let dc = self.chat_dc.as_ref().context("no chat channel")?;
        self.wait_chat_open(self.opts.io_timeout).await?;
        dc.send_text(raw).await.context("sending on the chat channel")
    }

    /// Chat messages received on the chat channel so far (not the history in `joined`).
    pub fn chat_messages(&self) -> Vec<ChatOut> {
        lock(&self.shared.chat).clone()
    }

    /// Waits until at least `n` chat messages have arrived; returns all received so far.
    pub async fn wait_chat(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ChatOut>> {
        let shared = &self.shared;
        within(timeout, || format!("{n} chat messages (have {})", lock(&shared.chat).len()), async {
            Ok(shared
                .chat_changed
                .until(|| {
                    let chat = lock(&shared.chat);
                    (chat.len() >= n).then(|| chat.clone())
                })
                .await)
        })
        .await
    }

    // ---------------------------------------------------------------- signaling

    /// Every server message received after `joined`, in order (offers and answers included).
    pub fn events(&self) -> Vec<ServerMessage> {
        lock(&self.shared.events).clone()
    }

    /// The first recorded server message (past or future) matching `pred`. Fails early once
    /// the signaling socket has closed without one.
    pub async fn wait_event(
        &self,
        timeout: Duration,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> anyhow::Result<ServerMessage> {
        let mut found = self.wait_events(1, timeout, pred).await?;
        found.pop().context("no event")
    }

    /// The first `n` recorded server messages (past or future) matching `pred`. Fails early
    /// once the signaling socket has closed without enough of them.
    pub async fn wait_events(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> anyhow::Result<Vec<ServerMessage>> {
        let shared = &self.shared;
        let matching =
            || -> Vec<ServerMessage> { lock(&shared.events).iter().filter(|m| pred(m)).take(n).cloned().collect() };
        within(timeout, || format!("{n} matching server messages (have {})", matching().len()), async {
            shared
                .events_changed
                .until(|| {
                    let found = matching();
                    if found.len() >= n {
                        return Some(Ok(found));
                    }
                    let closed = lock(&shared.signaling_closed).clone()?;
                    Some(Err(anyhow::anyhow!(
                        "signaling closed ({closed}) with {} of {n} matching server messages",
                        found.len()
                    )))
                })
                .await
        })
        .await
    }

    /// Why the signaling socket closed, once it has.
    pub fn signaling_closed(&self) -> Option<String> {
        lock(&self.shared.signaling_closed).clone()
    }

    /// Waits until the signaling socket is closed; returns why.
    pub async fn wait_signaling_closed(&self, timeout: Duration) -> anyhow::Result<String> {
        let shared = &self.shared;
        within(timeout, || "the signaling socket to close".to_owned(), async {
            Ok(shared.events_changed.until(|| lock(&shared.signaling_closed).clone()).await)
        })
        .await
    }

    /// Sends a signaling message.
    pub async fn send(&self, msg: &ClientMessage) -> anyhow::Result<()> {
        signal::send(&self.signal, Frame::Message(msg), self.opts.io_timeout).await
    }

    /// Sends a raw text frame on the signaling socket (for malformed-input tests).
    pub async fn send_text(&self, raw: &str) -> anyhow::Result<()> {
        signal::send(&self.signal, Frame::Raw(raw), self.opts.io_timeout).await
    }

    /// Problems no call returned: failed subscriber renegotiations, undecodable server frames or
    /// chat messages, unexpected data channels. Healthy runs keep this empty.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }

    // ---------------------------------------------------------------- signaling drops

    /// Loses the signaling socket abruptly (no close frame, no `leave`), the way a Wi-Fi
    /// hiccup or a dead proxy does, while media goes on.
    pub async fn drop_signaling(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
            let _ = reader.await; // releases the socket's read half
        }
        drop(self.signal.lock().await.take());
    }

    /// Opens a new signaling socket that resumes this participation with the resume token
    /// from `joined`; returns once the server said `resumed`. Messages the server queued
    /// meanwhile arrive next and are handled as usual (offers answered, events recorded).
    pub async fn resume_signaling(&mut self, ws_url: &str, token: &str) -> anyhow::Result<()> {
        self.drop_signaling().await;
        let timeout = self.opts.io_timeout;
        let url = format!("{ws_url}?resume={}", self.joined.resume_token);
        let mut client = within(timeout, || format!("a resumed signaling connection to {ws_url}"), async {
            Client::connect(&url, token).await.with_context(|| format!("resuming at {ws_url}"))
        })
        .await?;
        let first = within(timeout, || "the resumed message".to_owned(), async {
            client.recv().await.context("reading the resumed message")
        })
        .await?;
        match first {
            Some(ServerMessage::Resumed { participant_id }) if participant_id == self.shared.id => {}
            Some(ServerMessage::Error { code, message }) => return Err(ServerRefused { code, message }.into()),
            other => anyhow::bail!("expected resumed as the first message, got {other:?}"),
        }
        let (tx, rx) = client.split();
        *self.signal.lock().await = Some(tx);
        let (answers, offers) = (self.answers_tx.clone(), self.offers_tx.clone());
        self.reader = Some(tokio::spawn(signal::read_loop(self.shared.clone(), rx, answers, offers)));
        Ok(())
    }

    // ---------------------------------------------------------------- ending

    /// Leaves properly: sends `leave`, waits for the server to close the socket, then closes
    /// the peer connections. Fails if `leave` could not be sent or the server kept the socket open.
    pub async fn leave(mut self) -> anyhow::Result<()> {
        let sent = self.send(&ClientMessage::Leave).await;
        let closed = match sent {
            Ok(()) => self.wait_signaling_closed(LEAVE_CLOSE_TIMEOUT).await.map(drop),
            Err(_) => Ok(()),
        };
        self.teardown(true).await;
        sent.context("sending leave")?;
        closed.context("after leave")
    }

    /// Quits without `leave`: closes the WebSocket with a close frame and closes the peer
    /// connections (the way a browser tab closing normally goes).
    pub async fn close(mut self) {
        self.teardown(true).await;
    }

    /// Disappears abruptly: stops all tasks, drops the WebSocket without a close frame or
    /// `leave`, and lets the peer connections go silent. They are closed (freeing their sockets)
    /// only a few seconds later, in the background.
    pub async fn vanish(mut self) {
        self.teardown(false).await;
    }

    /// Stops everything; `polite` chooses between a proper close and vanishing.
    async fn teardown(&mut self, polite: bool) {
        self.torn_down = true;
        let mut tasks = self.shared.abort_tasks();
        if let Some(reader) = self.reader.take() {
            reader.abort();
            tasks.push(reader);
        }
        if let Some(audio) = &self.audio
            && let Some(task) = lock(&audio.task).take()
        {
            task.handle.abort();
            tasks.push(task.handle);
        }
        for task in tasks {
            // Aborted: this only waits for each to be dropped (which releases the socket halves).
            let _ = task.await;
        }
        let ws = self.signal.lock().await.take();
        let pcs: Vec<_> = self.publisher_pc.take().into_iter().chain(lock(&self.subscriber_pc).take()).collect();
        if polite {
            if let Some(mut ws) = ws {
                let _ = tokio::time::timeout(CLOSE_STEP_TIMEOUT, ws.close()).await;
            }
            close_all(pcs).await;
        } else {
            drop(ws);
            self.runtime.spawn(async move {
                tokio::time::sleep(VANISH_LINGER).await;
                close_all(pcs).await;
            });
        }
        self.chat_dc = None;
    }
}

impl Drop for SimParticipant {
    /// A sim dropped without `leave`/`close`/`vanish` stops its tasks at once and closes its
    /// peer connections in the background.
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        drop(self.shared.abort_tasks());
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
        if let Some(audio) = &self.audio
            && let Some(task) = lock(&audio.task).take()
        {
            task.handle.abort();
        }
        let pcs: Vec<_> = self.publisher_pc.take().into_iter().chain(lock(&self.subscriber_pc).take()).collect();
        if !pcs.is_empty() {
            self.runtime.spawn(close_all(pcs));
        }
    }
}

/// The addresses of the `a=candidate` lines of an SDP.
pub(crate) fn candidate_addrs(sdp: &str) -> Vec<std::net::SocketAddr> {
    let mut addrs: Vec<std::net::SocketAddr> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .filter_map(|c| {
            // foundation component transport priority address port typ ...
            let f: Vec<&str> = c.split_whitespace().collect();
            format!("{}:{}", f.get(4)?, f.get(5)?).parse().ok()
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}

/// The TURN entries of `joined.ice_servers`, for a relay-only sim.
fn turn_servers(joined: &Joined) -> anyhow::Result<Vec<IceServer>> {
    let turn: Vec<IceServer> = joined
        .ice_servers
        .iter()
        .filter(|s| s.urls.iter().any(|u| u.starts_with("turn:") || u.starts_with("turns:")))
        .cloned()
        .collect();
    anyhow::ensure!(
        !turn.is_empty(),
        "relay_only, but joined.ice_servers has no TURN server: {:?}",
        joined.ice_servers
    );
    Ok(turn)
}

async fn close_all(pcs: Vec<Arc<dyn PeerConnection>>) {
    for pc in pcs {
        if let Ok(Err(e)) = tokio::time::timeout(CLOSE_STEP_TIMEOUT, pc.close()).await {
            tracing::debug!("sim: closing a peer connection: {e}");
        }
    }
}

/// The sender task: one packet per `interval` until `stop` is set.
async fn send_audio(
    shared: Arc<Shared>,
    track: Arc<TrackLocalStaticRTP>,
    counters: Arc<tokio::sync::Mutex<Counters>>,
    stop: Arc<AtomicBool>,
    ssrc: u32,
    interval: Duration,
    payload_len: usize,
) {
    let tag = payload::stream_tag(&shared.id);
    let ts_step = u32::try_from(interval.as_micros() * u128::from(OPUS_CLOCK_RATE) / 1_000_000).unwrap_or(u32::MAX);
    let mut ticker = tokio::time::interval(interval);
    // After a stall, carry on at the normal rate rather than bursting to catch up; a tone's
    // RTP clock must keep up with real time, so it catches up like a capture device.
    let tone = counters.lock().await.tone.is_some();
    ticker.set_missed_tick_behavior(if tone {
        tokio::time::MissedTickBehavior::Burst
    } else {
        tokio::time::MissedTickBehavior::Skip
    });
    let mut resumed = false;
    loop {
        ticker.tick().await;
        let mut c = counters.lock().await;
        if stop.load(Ordering::Acquire) {
            break;
        }
        let (timestamp, payload) = match c.tone.as_mut() {
            Some(tone) => {
                if !resumed {
                    tone.resume(std::time::Instant::now());
                    resumed = true;
                }
                match tone.next_packet() {
                    Ok(p) => p,
                    Err(e) => {
                        shared.record_error(format!("encoding the tone: {e}"));
                        break;
                    }
                }
            }
            None => (c.rtp_ts, payload::encode(tag, c.seq, payload::now_us(), payload_len)),
        };
        let packet = rtp::Packet {
            header: rtp::Header {
                version: 2,
                marker: false,
                payload_type: OPUS_PAYLOAD_TYPE,
                sequence_number: c.rtp_seq,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload,
        };
        match track.write_rtp(packet).await {
            Ok(()) => {
                c.seq = c.seq.wrapping_add(1);
                c.rtp_seq = c.rtp_seq.wrapping_add(1);
                c.rtp_ts = c.rtp_ts.wrapping_add(ts_step);
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if shared.send_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::debug!(participant = %shared.id, "sim: RTP write failed: {e}");
                }
            }
        }
    }
}
