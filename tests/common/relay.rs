//! A lossy UDP relay for tests: stands in front of the server's media sockets and drops and
//! delays datagrams per client, reproducibly, so a test can put one musician on a bad network.
//!
//! The server announces the relay's address (`media.announce_ips`, e.g. 127.0.0.2) on its own
//! ports; the relay listens there and forwards each client's datagrams to the real socket from
//! a socket of its own per client, so replies find their way back. Clients must hide their
//! candidates (`SimOptions::hide_candidates`): the server then only knows them by the relay's
//! address and media cannot go around it. Paths are chosen by the client's source IP, which
//! `SimOptions::local_ip` sets.
//!
//! Loss and delay are drawn from RNGs seeded per client and direction, one for RTP (drawn once
//! per RTP packet, so the k-th packet of a stream always meets the same fate) and one for all
//! else (STUN, DTLS, RTCP, SCTP, whose number depends on timing).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest datagram relayed (WebRTC keeps to the path MTU; this leaves room).
const MAX_DATAGRAM: usize = 65_536;

/// What happens to datagrams going one way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Probability of dropping each datagram (0.0..=1.0).
    pub loss: f64,
    /// Each datagram is held for a uniformly random time in `0..=max_jitter` (so later ones
    /// overtake it).
    pub max_jitter: Duration,
}

impl Impairment {
    pub const NONE: Impairment = Impairment { loss: 0.0, max_jitter: Duration::ZERO };
}

/// Which way a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// One client's path (by its IP) in one direction.
pub type Leg = (IpAddr, Direction);

/// What the relay did on one leg.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LegCounts {
    pub datagrams: u64,
    pub dropped: u64,
    /// RTP sequence numbers in the order they reached the relay, before any loss.
    pub rtp_seen: Vec<u16>,
    /// RTP sequence numbers dropped.
    pub rtp_dropped: Vec<u16>,
    /// RTP sequence numbers in the order the relay sent them on.
    pub rtp_delivered: Vec<u16>,
    /// RTP packets held for their delay, not yet sent on.
    pub rtp_in_flight: u64,
}

impl LegCounts {
    /// Dropped RTP packets over those seen.
    pub fn rtp_loss(&self) -> f64 {
        self.rtp_dropped.len() as f64 / self.rtp_seen.len().max(1) as f64
    }
}

/// The two RNGs of one leg.
struct LegRng {
    rtp: StdRng,
    other: StdRng,
}

struct State {
    /// Impairments per client IP and direction; others pass untouched.
    paths: HashMap<Leg, Impairment>,
    seed: u64,
    rngs: Mutex<HashMap<Leg, LegRng>>,
    counts: watch::Sender<HashMap<Leg, LegCounts>>,
}

impl State {
    /// Decides the fate of one datagram: `None` to drop it, else how long to hold it.
    fn decide(&self, leg: Leg, rtp_seq: Option<u16>) -> Option<Duration> {
        let imp = self.paths.get(&leg).copied().unwrap_or(Impairment::NONE);
        let (drop, delay) = {
            let mut rngs = self.rngs.lock().unwrap();
            let rng = rngs.entry(leg).or_insert_with(|| LegRng::new(self.seed, leg));
            let rng = if rtp_seq.is_some() { &mut rng.rtp } else { &mut rng.other };
            // Always draw both, so one packet's fate never shifts the next one's.
            let drop = rng.random_bool(imp.loss.clamp(0.0, 1.0));
            let jitter_us = u64::try_from(imp.max_jitter.as_micros()).unwrap_or(u64::MAX);
            (drop, Duration::from_micros(rng.random_range(0..=jitter_us)))
        };
        self.counts.send_modify(|counts| {
            let c = counts.entry(leg).or_default();
            c.datagrams += 1;
            if drop {
                c.dropped += 1;
            }
            if let Some(seq) = rtp_seq {
                c.rtp_seen.push(seq);
                if drop {
                    c.rtp_dropped.push(seq);
                } else {
                    c.rtp_in_flight += 1;
                }
            }
        });
        (!drop).then_some(delay)
    }

    /// A held datagram was sent on (`sent`), or its send failed, which counts as a drop.
    fn delivered(&self, leg: Leg, rtp_seq: Option<u16>, sent: bool) {
        self.counts.send_modify(|counts| {
            let c = counts.entry(leg).or_default();
            if !sent {
                c.dropped += 1;
            }
            if let Some(seq) = rtp_seq {
                c.rtp_in_flight -= 1;
                if sent { c.rtp_delivered.push(seq) } else { c.rtp_dropped.push(seq) }
            }
        });
    }
}

impl LegRng {
    fn new(seed: u64, (ip, dir): Leg) -> LegRng {
        let ip_bits = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6) as u64,
        };
        let leg_seed = seed ^ (ip_bits << 2) ^ (dir as u64);
        LegRng { rtp: StdRng::seed_from_u64(leg_seed), other: StdRng::seed_from_u64(!leg_seed) }
    }
}

/// The RTP sequence number of `datagram` if it is an RTP packet (not RTCP, STUN or DTLS). SRTP
/// leaves the header in the clear. RFC 7983: RTP and RTCP start with 128..=191; RFC 5761:
/// RTCP packet types 192..=223 sit where RTP has its marker bit and payload type.
fn rtp_seq(datagram: &[u8]) -> Option<u16> {
    let (&first, &second) = (datagram.first()?, datagram.get(1)?);
    let seq = datagram.get(2..4)?;
    ((128..=191).contains(&first) && !(192..=223).contains(&second)).then(|| u16::from_be_bytes([seq[0], seq[1]]))
}

/// A running relay; dropping it stops it.
pub struct LossyRelay {
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl LossyRelay {
    /// Listens on each `(front, server)` pair's `front` and relays to its `server` address,
    /// impairing each client IP's legs as `paths` says (others pass untouched).
    pub async fn start(
        pairs: Vec<(SocketAddr, SocketAddr)>,
        seed: u64,
        paths: impl IntoIterator<Item = (Leg, Impairment)>,
    ) -> std::io::Result<LossyRelay> {
        let state = Arc::new(State {
            paths: paths.into_iter().collect(),
            seed,
            rngs: Mutex::default(),
            counts: watch::Sender::new(HashMap::new()),
        });
        let mut tasks = Vec::new();
        for (front, server) in pairs {
            let socket = Arc::new(UdpSocket::bind(front).await?);
            tasks.push(tokio::spawn(serve_front(state.clone(), socket, server)));
        }
        Ok(LossyRelay { state, tasks })
    }

    /// What the relay did on `leg` so far.
    pub fn counts(&self, leg: Leg) -> LegCounts {
        self.state.counts.borrow().get(&leg).cloned().unwrap_or_default()
    }

    /// Waits until `check` holds for the counts of every leg, re-checking on every change.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&dyn Fn(Leg) -> LegCounts) -> bool,
    ) -> Result<(), String> {
        let mut rx = self.state.counts.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|counts| check(&|leg| counts.get(&leg).cloned().unwrap_or_default())).await.map(drop)
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(format!("relay stopped while waiting for {what}")),
            Err(_) => Err(format!("timed out after {timeout:?} waiting for {what}")),
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Relays everything arriving at `front` to `server`, one upstream socket per client address.
async fn serve_front(state: Arc<State>, front: Arc<UdpSocket>, server: SocketAddr) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut replies = Vec::new();
    loop {
        let Ok((len, client)) = front.recv_from(&mut buf).await else { break };
        let upstream = match clients.get(&client) {
            Some(s) => s.clone(),
            None => {
                // The server sees this socket as the client: bind it where the server can reply.
                let bind = SocketAddr::new(server.ip(), 0);
                // Without a socket this datagram is lost; the client's next one tries again.
                let Ok(socket) = UdpSocket::bind(bind).await else { continue };
                let socket = Arc::new(socket);
                clients.insert(client, socket.clone());
                replies.push(AbortOnDrop(tokio::spawn(serve_replies(
                    state.clone(),
                    socket.clone(),
                    front.clone(),
                    client,
                ))));
                socket
            }
        };
        let datagram = buf[..len].to_vec();
        pass(&state, (client.ip(), Direction::Up), datagram, upstream, server);
    }
}

/// Relays what the server sends to `upstream` back to `client` through `front`.
async fn serve_replies(state: Arc<State>, upstream: Arc<UdpSocket>, front: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while let Ok((len, _server)) = upstream.recv_from(&mut buf).await {
        pass(&state, (client.ip(), Direction::Down), buf[..len].to_vec(), front.clone(), client);
    }
}

/// Drops `datagram` or sends it from `socket` to `to` after its delay.
fn pass(state: &Arc<State>, leg: Leg, datagram: Vec<u8>, socket: Arc<UdpSocket>, to: SocketAddr) {
    let seq = rtp_seq(&datagram);
    let Some(delay) = state.decide(leg, seq) else { return };
    if delay.is_zero() {
        // At once, in arrival order: an unimpaired path must not reorder. A full socket buffer
        // (or one closing at the end of a test) is just another lost datagram.
        let sent = socket.try_send_to(&datagram, to).is_ok();
        state.delivered(leg, seq, sent);
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        // The delay is the impairment itself, not a wait for anything.
        tokio::time::sleep(delay).await;
        let sent = socket.send_to(&datagram, to).await.is_ok();
        state.delivered(leg, seq, sent);
    });
}

/// Aborts its task when dropped (the per-client reply tasks end with their front).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
