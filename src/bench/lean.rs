//! Lean simulated musicians for load beyond what full async clients can carry on one core.
//!
//! Each connection is a sans-I/O `rtc` peer connection with its own UDP socket, driven by one
//! task: ICE, DTLS, SRTCP and publishing go through `rtc` for real, but received SRTP media
//! is counted from the RTP header, which SRTP leaves in the clear, instead of being decrypted.
//! Delivery is exact by sequence number per SSRC; latency comes from the RTP timestamp, which
//! publishers set from a clock shared by the whole generator process (48 kHz resolution).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtp;
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use veza_signaling::{Client, ClientMessage, ServerMessage};

use crate::config::{Config, MediaConfig};
use crate::media::conn::Role;
use crate::media::peer::{BuildError, OPUS_PAYLOAD_TYPE, PeerFactory};

/// Per-SSRC reception, from cleartext RTP headers.
#[derive(Debug, Default, Clone)]
pub struct Reception {
    pub packets: u64,
    first: Option<u64>,
    highest: u64,
    first_at: Option<Instant>,
    pub latency_us: Vec<u64>,
}

impl Reception {
    /// Packets the sender sent from the first one seen to the highest one seen.
    pub fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.highest - f + 1)
    }
}

#[derive(Default)]
struct Shared {
    by_ssrc: Mutex<HashMap<u32, Reception>>,
}

/// One lean musician: signaling plus a publisher and (once offered) a subscriber connection.
pub struct LeanMusician {
    shared: Arc<Shared>,
    publishing: watch::Sender<bool>,
    first_packet: watch::Receiver<Option<Instant>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const MAX_LATENCY_SAMPLES: usize = 4096;

fn clock_48k() -> u32 {
    // Shared by every publisher and receiver of this process.
    let us = crate::sim::payload::now_us();
    (us.wrapping_mul(48) / 1000) as u32
}

fn factory(addr: SocketAddr, config: &Config) -> Result<PeerFactory, BuildError> {
    PeerFactory::new(vec![addr], config.opus_fmtp(), MediaConfig::default())
}

impl LeanMusician {
    /// Joins, offers a publisher connection (with one Opus track if `publish`) and waits for
    /// the server's answer. Publishing starts with [`LeanMusician::start_publishing`].
    pub async fn join(
        ws_url: &str,
        token: &str,
        publish: bool,
        interval: Duration,
        payload: usize,
    ) -> anyhow::Result<Self> {
        let config = Config::default();
        let mut client = Client::connect(ws_url, token).await.context("signaling")?;
        let id = match client.recv().await? {
            Some(ServerMessage::Joined(j)) => j.participant.id.clone(),
            other => bail!("expected joined, got {other:?}"),
        };
        let (tx, mut rx) = client.split();
        let tx = Arc::new(tokio::sync::Mutex::new(tx));
        let shared = Arc::new(Shared::default());
        let (publishing, publishing_rx) = watch::channel(false);
        let (first_tx, first_packet) = watch::channel(None);

        // Publisher connection: we offer.
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let local = socket.local_addr()?;
        let factory = factory(local, &config)?;
        let mut peer = factory.build(Instant::now(), Role::Subscriber)?;
        let ssrc = rand::random::<u32>() | 1;
        let sender = if publish {
            let track = factory.forwarded_track(&id, &format!("{id}-mic"), ssrc);
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![id.clone()],
                send_encodings: vec![],
            };
            Some(RTCRtpSenderId::from(peer.add_transceiver_from_track(track, Some(init))?))
        } else {
            None
        };
        // A data channel so an offer without audio still has something to negotiate.
        peer.create_data_channel(veza_signaling::CHAT_LABEL, None)?;
        let offer = peer.create_offer(None)?;
        peer.set_local_description(Instant::now(), offer)?;
        let sdp = peer.local_description().context("no offer")?.sdp;
        tx.lock().await.send(&ClientMessage::Offer { sdp }).await?;

        let (answer_tx, answer_rx) = oneshot::channel::<String>();
        let (sub_tx, sub_rx) = mpsc::unbounded_channel::<(String, oneshot::Sender<String>)>();
        let signaling = {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut answer_tx = Some(answer_tx);
                let sub_tx = sub_tx;
                while let Ok(Some(msg)) = rx.recv().await {
                    match msg {
                        ServerMessage::Answer { sdp } => {
                            if let Some(a) = answer_tx.take() {
                                let _ = a.send(sdp);
                            }
                        }
                        ServerMessage::Offer { sdp } => {
                            let (reply, answer) = oneshot::channel();
                            if sub_tx.send((sdp, reply)).is_err() {
                                break;
                            }
                            let Ok(sdp) = answer.await else { break };
                            if tx.lock().await.send(&ClientMessage::Answer { sdp }).await.is_err() {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            })
        };
        // The server may offer the subscriber connection before it answers ours: its task
        // must already be running, or the signaling task would wait on it forever.
        let subscriber = tokio::spawn(subscriber_task(sub_rx, shared.clone(), first_tx));
        let answer = tokio::time::timeout(Duration::from_secs(10), answer_rx).await.context("no answer")??;
        peer.set_remote_description(Instant::now(), RTCSessionDescription::answer(answer)?)
            .map_err(|e| anyhow::anyhow!("applying the server's answer: {e:?}"))?;

        let publisher = tokio::spawn(drive(
            peer,
            socket,
            Driver::Publisher { sender, ssrc, interval, payload, publishing: publishing_rx },
        ));
        Ok(LeanMusician { shared, publishing, first_packet, tasks: vec![signaling, publisher, subscriber] })
    }

    pub fn start_publishing(&self) {
        let _ = self.publishing.send(true);
    }

    pub fn stop_publishing(&self) {
        let _ = self.publishing.send(false);
    }

    /// When the first forwarded packet arrived.
    pub async fn first_packet(&self, timeout: Duration) -> anyhow::Result<Instant> {
        let mut rx = self.first_packet.clone();
        let at = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await.context("no audio")??;
        Ok(at.unwrap_or_else(Instant::now))
    }

    pub fn reception(&self) -> Vec<Reception> {
        self.shared.by_ssrc.lock().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }
}

impl Drop for LeanMusician {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// Waits for the server's first subscriber offer, then drives that connection.
async fn subscriber_task(
    mut offers: mpsc::UnboundedReceiver<(String, oneshot::Sender<String>)>,
    shared: Arc<Shared>,
    first: watch::Sender<Option<Instant>>,
) {
    let Some((sdp, reply)) = offers.recv().await else { return };
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else { return };
    let Ok(local) = socket.local_addr() else { return };
    let Ok(mut peer) = factory(local, &Config::default()).and_then(|f| f.build(Instant::now(), Role::Publisher)) else {
        return;
    };
    if let Some(answer) = answer(&mut peer, sdp) {
        let _ = reply.send(answer);
    }
    drive(peer, socket, Driver::Subscriber { offers, shared, first }).await;
}

fn answer(peer: &mut RTCPeerConnection, offer: String) -> Option<String> {
    let now = Instant::now();
    let r = RTCSessionDescription::offer(offer)
        .and_then(|o| peer.set_remote_description(now, o))
        .and_then(|()| peer.create_answer(None))
        .and_then(|a| peer.set_local_description(now, a));
    if let Err(e) = r {
        tracing::warn!("lean musician: answering the server's offer failed: {e}");
        return None;
    }
    Some(peer.local_description()?.sdp)
}

enum Driver {
    Publisher {
        sender: Option<RTCRtpSenderId>,
        ssrc: u32,
        interval: Duration,
        payload: usize,
        publishing: watch::Receiver<bool>,
    },
    Subscriber {
        offers: mpsc::UnboundedReceiver<(String, oneshot::Sender<String>)>,
        shared: Arc<Shared>,
        first: watch::Sender<Option<Instant>>,
    },
}

/// One connection's loop: socket in, timers, publishing ticks or renegotiations, socket out.
async fn drive(mut peer: RTCPeerConnection, socket: UdpSocket, mut role: Driver) {
    let Ok(local) = socket.local_addr() else { return };
    let mut buf = vec![0u8; 2048];
    let mut tick = match &role {
        Driver::Publisher { interval, .. } => tokio::time::interval(*interval),
        Driver::Subscriber { .. } => tokio::time::interval(Duration::from_secs(3600)),
    };
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq: u16 = rand::random();
    let mut connected = false;
    loop {
        while let Some(out) = peer.poll_write() {
            let _ = socket.try_send_to(&out.message, out.transport.peer_addr);
        }
        while let Some(event) = peer.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = event {
                connected = s == RTCPeerConnectionState::Connected;
                if matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) {
                    return;
                }
            }
        }
        while peer.poll_read().is_some() {}
        let deadline = peer.poll_timeout().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_err() { return; }
                for _ in 0..64 {
                    let Ok((n, src)) = socket.try_recv_from(&mut buf) else { break };
                    let data = &buf[..n];
                    if let Driver::Subscriber { shared, first, .. } = &role
                        && is_rtp(data)
                    {
                        count(shared, first, data);
                        continue;
                    }
                    let _ = peer.handle_read(TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext { local_addr: local, peer_addr: src, ecn: None, transport_protocol: TransportProtocol::UDP },
                        message: BytesMut::from(data),
                    });
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                let _ = peer.handle_timeout(Instant::now());
            }
            _ = tick.tick() => {
                if let Driver::Publisher { sender: Some(sender), ssrc, payload, publishing, .. } = &role
                    && connected
                    && *publishing.borrow()
                    && let Some(mut s) = peer.rtp_sender(*sender)
                {
                    seq = seq.wrapping_add(1);
                    let packet = rtp::Packet {
                        header: rtp::header::Header {
                            version: 2,
                            payload_type: OPUS_PAYLOAD_TYPE,
                            sequence_number: seq,
                            timestamp: clock_48k(),
                            ssrc: *ssrc,
                            ..Default::default()
                        },
                        payload: Bytes::from(vec![0x5a; *payload]),
                    };
                    let _ = s.write_rtp(Instant::now(), packet);
                }
            }
            offer = next_offer(&mut role) => {
                let Some((sdp, reply)) = offer else { return };
                if let Some(answer) = answer(&mut peer, sdp) {
                    let _ = reply.send(answer);
                }
            }
        }
    }
}

async fn next_offer(role: &mut Driver) -> Option<(String, oneshot::Sender<String>)> {
    match role {
        Driver::Subscriber { offers, .. } => offers.recv().await,
        Driver::Publisher { .. } => std::future::pending().await,
    }
}

/// RTP, not RTCP (RFC 5761: RTCP packet types 200-204 sit where RTP payload types 72-76 would).
fn is_rtp(b: &[u8]) -> bool {
    b.len() >= 12 && (128..192).contains(&b[0]) && !(72..=76).contains(&(b[1] & 0x7f))
}

fn count(shared: &Shared, first: &watch::Sender<Option<Instant>>, b: &[u8]) {
    let now = Instant::now();
    let seq = u64::from(u16::from_be_bytes([b[2], b[3]]));
    let ts = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let ssrc = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    let latency_us = u64::from(clock_48k().wrapping_sub(ts)) * 1000 / 48;
    let Ok(mut map) = shared.by_ssrc.lock() else { return };
    let r = map.entry(ssrc).or_default();
    // Extend the 16-bit sequence number across wrap-around, relative to the highest seen.
    let ext = match r.first {
        None => {
            r.first = Some(seq + (1 << 16));
            r.highest = seq + (1 << 16);
            r.first_at = Some(now);
            if first.borrow().is_none() {
                let _ = first.send(Some(now));
            }
            r.highest
        }
        Some(_) => {
            let cycle = r.highest & !0xffff;
            let candidates = [cycle.wrapping_sub(1 << 16) | seq, cycle | seq, (cycle + (1 << 16)) | seq];
            let best = candidates.into_iter().min_by_key(|c| c.abs_diff(r.highest)).unwrap_or(cycle | seq);
            r.highest = r.highest.max(best);
            best
        }
    };
    if r.first.is_some_and(|f| ext < f) {
        r.first = Some(ext); // reordered ahead of the first one seen
    }
    r.packets += 1;
    if r.latency_us.len() < MAX_LATENCY_SAMPLES {
        r.latency_us.push(latency_us);
    } else {
        let i = (r.packets as usize) % MAX_LATENCY_SAMPLES;
        r.latency_us[i] = latency_us;
    }
}
