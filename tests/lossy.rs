//! Lossy network: a musician publishes real Opus in our music profile (stereo, 10 ms frames,
//! in-band FEC) over a path with 5 % loss and up to 20 ms of jitter each way, and two listeners,
//! one on a clean path and one on a lossy path of its own, decode what the SFU forwards the way
//! a receiver does: a missing frame is rebuilt from the next packet's FEC when that packet is
//! there, else concealed. The impairments come from a seeded UDP relay in the test
//! (`common::relay`), so the test needs no privileges, and every figure is a count, never a time.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use common::relay::{Direction, Impairment, Leg, LegCounts, LossyRelay};
use veza_sfu::session::HostStats;
use veza_sfu::sim::{ReceivedRtp, SimOptions, SimParticipant};

const WAIT: Duration = Duration::from_secs(30);
/// The relay's RNG seed: the same drops (and mostly the same delays) on every run.
const SEED: u64 = 0x5EED_0008;
const LOSS: f64 = 0.05;
const MAX_JITTER: Duration = Duration::from_millis(20);
/// Measured packets: 10 s of 10 ms frames.
const PACKETS: usize = 1000;
/// Packets each listener must hear before the measured run: by then every leg is negotiated
/// and connected, so the run measures the network and the SFU, not the joins.
const WARMUP_PACKETS: u64 = 20;
/// What the publisher plays: an A major arpeggio, 250 ms a note. A melody rather than one
/// steady tone, because libopus codes FEC only for frames it finds active, and a steady tone
/// soon sounds like background to it.
const MELODY: [f32; 4] = [440.0, 554.37, 659.26, 880.0];
/// The loss the publisher's encoder is told to expect: above 8 %, libopus codes music in a
/// mode that carries FEC.
const ENCODER_LOSS_PERCENT: u8 = 10;
/// The test receiver's playout window, in packets: a frame is played once a packet this many
/// frames later has arrived (30 ms, more than the 20 ms of jitter). The SFU holds nothing back.
const HOLD: usize = 3;
/// Samples per channel in a 10 ms frame at 48 kHz.
const FRAME: usize = 480;

/// The address the server announces and the relay listens on.
const RELAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const PUBLISHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// The listener on a clean path.
const NEAR_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The listener on a lossy path.
const FAR_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

const PUBLISHER_UP: Leg = (PUBLISHER_IP, Direction::Up);
const NEAR_DOWN: Leg = (NEAR_IP, Direction::Down);
const FAR_DOWN: Leg = (FAR_IP, Direction::Down);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_hear_every_frame_through_fec_and_concealment_on_a_lossy_jittery_path() {
    let mut config = common::test_config();
    config.media.bind_ip = NEAR_IP;
    config.media.announce_ips = vec![RELAY_IP];
    let server = common::start_with(config).await;
    let pairs = server.media.workers().iter().map(|w| (SocketAddr::new(RELAY_IP, w.local.port()), w.local)).collect();
    let bad = Impairment { loss: LOSS, max_jitter: MAX_JITTER };
    let paths =
        [PUBLISHER_IP, FAR_IP].into_iter().flat_map(|ip| [((ip, Direction::Up), bad), ((ip, Direction::Down), bad)]);
    let relay = LossyRelay::start(pairs, SEED, paths).await.expect("the relay binds 127.0.0.2");

    let url = server.ws_url();
    let listening =
        |ip| SimOptions { publish: false, local_ip: ip, hide_candidates: true, keep_rtp: true, ..Default::default() };
    let near = join(&url, "near", listening(NEAR_IP)).await;
    let far = join(&url, "far", listening(FAR_IP)).await;
    let ana = join(
        &url,
        "ana",
        SimOptions {
            tone_hz: Some(MELODY[0]),
            tone_melody: MELODY[1..].to_vec(),
            tone_loss_percent: ENCODER_LOSS_PERCENT,
            local_ip: PUBLISHER_IP,
            hide_candidates: true,
            ..Default::default()
        },
    )
    .await;
    ana.wait_publisher_connected(WAIT).await.unwrap();

    ana.start_publishing();
    near.wait_for_packets(ana.id(), WARMUP_PACKETS, WAIT).await.unwrap();
    far.wait_for_packets(ana.id(), WARMUP_PACKETS, WAIT).await.unwrap();
    ana.finish_publishing().await;
    let before = settle(&server, &relay, &ana).await;

    ana.start_publishing();
    let target = before.legs[0].rtp_seen.len() + PACKETS;
    relay
        .wait(&format!("{PACKETS} RTP packets from the publisher"), WAIT, |c| c(PUBLISHER_UP).rtp_seen.len() >= target)
        .await
        .unwrap();
    ana.finish_publishing().await;
    let after = settle(&server, &relay, &ana).await;

    // What the publisher sent in the run, as the relay saw it before any loss: consecutive.
    let sent_seqs = &after.legs[0].rtp_seen[before.legs[0].rtp_seen.len()..];
    let sent = sent_seqs.len();
    assert_eq!(sent as u64, after.sent - before.sent, "the relay saw every packet the publisher sent");
    assert!(sent >= PACKETS);
    let first_seq = sent_seqs[0];
    assert!(
        sent_seqs.iter().enumerate().all(|(k, &s)| s == first_seq.wrapping_add(k as u16)),
        "the publisher's packets reach the relay in sequence"
    );

    // The SFU forwarded every packet it received to both listeners, and nothing else.
    let reached_server = &after.legs[0].rtp_delivered[before.legs[0].rtp_delivered.len()..];
    let (stats, base) = (&after.server, &before.server);
    assert_eq!(stats.rtp_received - base.rtp_received, reached_server.len() as u64);
    assert_eq!(stats.rtp_forwarded - base.rtp_forwarded, 2 * reached_server.len() as u64);
    assert_eq!(stats.rtp_not_live - base.rtp_not_live, 0);
    assert_eq!(stats.rtp_forward_errors - base.rtp_forward_errors, 0);
    // (Compared sorted: two packets the relay releases at the same instant may reach the server
    // in either order.)
    let reached_server_sorted = sorted(reached_server);
    for (leg, name) in [(1, "near"), (2, "far")] {
        let forwarded = sorted(&after.legs[leg].rtp_seen[before.legs[leg].rtp_seen.len()..]);
        assert!(
            forwarded == reached_server_sorted,
            "the SFU sends {name} every packet it received, once, and nothing else"
        );
    }

    let up_loss = 1.0 - reached_server.len() as f64 / sent as f64;
    let far_down = leg_delta(&before.legs[2], &after.legs[2]);
    eprintln!(
        "lossy path: {:.0} % loss and 0-{} ms jitter each way; publisher -> server lost {} of {sent} RTP packets ({:.1} %), \
         server -> far listener lost {} of {} ({:.1} %)",
        LOSS * 100.0,
        MAX_JITTER.as_millis(),
        sent - reached_server.len(),
        up_loss * 100.0,
        far_down.rtp_dropped.len(),
        far_down.rtp_seen.len(),
        far_down.rtp_loss() * 100.0,
    );
    for loss in [up_loss, far_down.rtp_loss()] {
        assert!((0.02..=0.08).contains(&loss), "the relay drops about {LOSS}: {loss:.3}");
    }

    let in_run = |seq: u16| usize::from(seq.wrapping_sub(first_seq)) < sent;
    for (listener, leg, name, min_delivery) in
        [(&near, 1, "near (clean path)", 0.90), (&far, 2, "far (lossy path)", 0.85)]
    {
        // Warm-up packets are all in by now (or lost: the first ones can overtake the end of the
        // DTLS handshake on a jittery path); wait for the run's.
        let delivered = &after.legs[leg].rtp_delivered[before.legs[leg].rtp_delivered.len()..];
        let warmup = listener.rtp_packets(ana.id()).iter().filter(|p| !in_run(p.sequence_number)).count();
        listener.wait_for_packets(ana.id(), (warmup + delivered.len()) as u64, WAIT).await.unwrap();
        let (run, other): (Vec<ReceivedRtp>, Vec<ReceivedRtp>) =
            listener.rtp_packets(ana.id()).into_iter().partition(|p| in_run(p.sequence_number));
        let foreign = other.iter().filter(|p| !after.legs[0].rtp_seen.contains(&p.sequence_number)).count();
        assert_eq!(foreign, 0, "{name} gets only packets the publisher sent");
        let arrived: Vec<u16> = run.iter().map(|p| p.sequence_number).collect();
        assert!(sorted(&arrived) == sorted(delivered), "{name} gets what its path delivers");

        let heard = play(first_seq, sent, &run);
        eprintln!("{name}: {heard}");
        assert_eq!((heard.duplicates, heard.foreign), (0, 0), "{name}: no duplicates, nothing that was not sent");
        assert_eq!(heard.received + heard.recovered + heard.concealed, sent, "{name}: every frame played exactly once");
        let delivery = (heard.received + heard.late) as f64 / sent as f64;
        assert!(delivery >= min_delivery, "{name}: delivery {delivery:.3}");
        let missing = heard.recovered + heard.concealed;
        assert!(heard.recovered * 3 >= missing * 2, "{name}: FEC recovers most missing frames: {heard}");
        assert!(heard.with_fec * 100 >= heard.received * 95, "{name}: packets carry FEC: {heard}");
        assert!(heard.longest_gap <= 5, "{name}: no stall: {heard}");
        // What the listener hears is the melody: every note of it, and clean notes both in the
        // frames played as received and in those rebuilt from FEC.
        let frames: usize = heard.notes.iter().sum();
        assert!(
            heard.notes.iter().all(|&n| n * 100 >= frames * 15),
            "{name}: every note is heard: {:?} frames per note",
            heard.notes
        );
        assert!(heard.fit[0].ratio() >= 0.95, "{name}: received frames are the melody: {heard}");
        assert!(heard.fit[1].ratio() >= 0.8, "{name}: FEC frames are the melody: {heard}");
        assert!(
            (0.5..=1.5).contains(&(heard.rms[1].mean() / heard.rms[0].mean())),
            "{name}: FEC frames are as loud as received ones: {heard}"
        );
        assert!(listener.errors().is_empty(), "{name}: {:?}", listener.errors());
    }

    for sim in [ana, near, far] {
        sim.leave().await.unwrap();
    }
    server.shutdown().await.unwrap();
}

async fn join(url: &str, user: &str, opts: SimOptions) -> SimParticipant {
    SimParticipant::join(url, &common::token("lossy", user), opts).await.expect("joins")
}

/// Everything counted at a moment when no packet is on its way anywhere.
struct Snapshot {
    /// Packets the publisher sent.
    sent: u64,
    server: HostStats,
    /// The publisher's upstream leg, the near listener's and the far listener's downstream legs.
    legs: [LegCounts; 3],
}

/// Once the publisher has finished, waits until every packet it sent has gone as far as it
/// will: through its leg, the server, and out of the relay towards the listeners.
async fn settle(server: &veza_sfu::Server, relay: &LossyRelay, publisher: &SimParticipant) -> Snapshot {
    let sent = publisher.sent_packets();
    relay
        .wait("every sent packet through the publisher's leg", WAIT, |c| {
            let up = c(PUBLISHER_UP);
            up.rtp_seen.len() as u64 == sent && up.rtp_in_flight == 0
        })
        .await
        .unwrap();
    let reached_server = relay.counts(PUBLISHER_UP).rtp_delivered.len() as u64;
    common::eventually("the server to count every packet the relay delivered", || async {
        server.stats().await.rtp_received == reached_server
    })
    .await;
    let stats = server.stats().await;
    relay
        .wait("every forwarded packet through the listeners' legs", WAIT, |c| {
            let (n, f) = (c(NEAR_DOWN), c(FAR_DOWN));
            (n.rtp_seen.len() + f.rtp_seen.len()) as u64 == stats.rtp_forwarded
                && n.rtp_in_flight == 0
                && f.rtp_in_flight == 0
        })
        .await
        .unwrap();
    let legs = [relay.counts(PUBLISHER_UP), relay.counts(NEAR_DOWN), relay.counts(FAR_DOWN)];
    Snapshot { sent, server: stats, legs }
}

fn sorted(seqs: &[u16]) -> Vec<u16> {
    let mut v = seqs.to_vec();
    v.sort_unstable();
    v
}

/// What happened on a leg between two snapshots.
fn leg_delta(before: &LegCounts, after: &LegCounts) -> LegCounts {
    LegCounts {
        datagrams: after.datagrams - before.datagrams,
        dropped: after.dropped - before.dropped,
        rtp_seen: after.rtp_seen[before.rtp_seen.len()..].to_vec(),
        rtp_dropped: after.rtp_dropped[before.rtp_dropped.len()..].to_vec(),
        rtp_delivered: after.rtp_delivered[before.rtp_delivered.len()..].to_vec(),
        rtp_in_flight: after.rtp_in_flight,
    }
}

/// A running mean.
#[derive(Debug, Default, Clone, Copy)]
struct Mean {
    sum: f64,
    n: usize,
}

impl Mean {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.n += 1;
    }

    fn mean(&self) -> f64 {
        if self.n == 0 { f64::NAN } else { self.sum / self.n as f64 }
    }
}

/// Energy of frames and the part of it the melody explains.
#[derive(Debug, Default, Clone, Copy)]
struct Fit {
    explained: f64,
    total: f64,
}

impl Fit {
    fn ratio(&self) -> f64 {
        if self.total > 0.0 { self.explained / self.total } else { f64::NAN }
    }
}

/// How each frame got played.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Played {
    Received = 0,
    Recovered = 1,
    Concealed = 2,
}

/// What a listener's playout made of the publisher's stream.
#[derive(Debug, Default)]
struct Heard {
    sent: usize,
    /// Frames played from their own packet.
    received: usize,
    /// Packets that arrived after their frame was played (which was then rebuilt or concealed).
    late: usize,
    duplicates: usize,
    /// Packets with a sequence number the publisher did not send in the run.
    foreign: usize,
    /// Frames whose packet was missing, rebuilt from the in-band FEC of the next packet.
    recovered: usize,
    /// Frames with neither their packet nor the next one at hand: packet loss concealment.
    concealed: usize,
    /// Longest run of consecutive frames whose packet was missing at their turn.
    longest_gap: usize,
    /// Longest run of consecutive concealed frames: the longest dropout a listener hears.
    longest_concealed: usize,
    /// Frames played from their own packet whose packet also carries FEC for the frame before.
    with_fec: usize,
    /// Per kind of frame (`Played`): how much of the frames' energy the melody explains (each
    /// frame by its best-fitting note).
    fit: [Fit; 3],
    /// Received frames whose best-fitting note is each note of the melody.
    notes: [usize; MELODY.len()],
    /// Per kind of frame: RMS level, mean.
    rms: [Mean; 3],
}

impl std::fmt::Display for Heard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let missing = self.recovered + self.concealed;
        write!(
            f,
            "sent {}, received {} ({:.1} %), late {}, missing {missing}: recovered by FEC {}, concealed {}; \
             longest gap {}, longest concealment {}; received packets with FEC {}; \
             melody fit received/recovered/concealed {:.3}/{:.3}/{:.3}, RMS {:.3}/{:.3}/{:.3}; frames per note {:?}",
            self.sent,
            self.received,
            100.0 * self.received as f64 / self.sent as f64,
            self.late,
            self.recovered,
            self.concealed,
            self.longest_gap,
            self.longest_concealed,
            self.with_fec,
            self.fit[0].ratio(),
            self.fit[1].ratio(),
            self.fit[2].ratio(),
            self.rms[0].mean(),
            self.rms[1].mean(),
            self.rms[2].mean(),
            self.notes,
        )
    }
}

/// Plays the stream whose `sent` packets start at `first_seq` from `arrivals` (in arrival
/// order) as a receiver does: frame `n` is played once a packet [`HOLD`] frames later has
/// arrived (or at the end), from its own packet if there, else from the next packet's FEC if
/// that carries some, else concealed.
fn play(first_seq: u16, sent: usize, arrivals: &[ReceivedRtp]) -> Heard {
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Stereo).expect("an Opus decoder");
    let mut heard = Heard { sent, ..Default::default() };
    let mut slots: Vec<Option<Bytes>> = vec![None; sent];
    let mut arrived = vec![false; sent];
    let (mut next, mut gap, mut concealed_run) = (0, 0, 0);
    let mut pcm = vec![0f32; 2 * FRAME];

    let mut play_one = |n: usize, slots: &[Option<Bytes>], heard: &mut Heard| {
        let following = slots.get(n + 1).and_then(Option::as_ref).filter(|p| has_fec(p));
        let (kind, decoded) = match (&slots[n], following) {
            (Some(packet), _) => {
                heard.with_fec += usize::from(has_fec(packet));
                (Played::Received, decoder.decode_float(packet, &mut pcm, false))
            }
            (None, Some(next_packet)) => (Played::Recovered, decoder.decode_float(next_packet, &mut pcm, true)),
            (None, None) => (Played::Concealed, decoder.decode_float(&[], &mut pcm, false)),
        };
        assert_eq!(decoded.expect("Opus decodes"), FRAME, "frame {n} decodes to 10 ms");
        match kind {
            Played::Received => {
                heard.received += 1;
                (gap, concealed_run) = (0, 0);
            }
            Played::Recovered => {
                heard.recovered += 1;
                gap += 1;
                concealed_run = 0;
            }
            Played::Concealed => {
                heard.concealed += 1;
                gap += 1;
                concealed_run += 1;
            }
        }
        heard.longest_gap = heard.longest_gap.max(gap);
        heard.longest_concealed = heard.longest_concealed.max(concealed_run);
        let left: Vec<f32> = pcm.chunks_exact(2).map(|s| s[0]).collect();
        let total: f64 = left.iter().map(|s| f64::from(*s).powi(2)).sum();
        let (note, explained) = MELODY
            .iter()
            .map(|&hz| sine_energy(&left, f64::from(hz)))
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("a melody has notes");
        let fit = &mut heard.fit[kind as usize];
        (fit.explained, fit.total) = (fit.explained + explained, fit.total + total);
        heard.rms[kind as usize].add((total / FRAME as f64).sqrt());
        if kind == Played::Received {
            heard.notes[note] += 1;
        }
    };

    for packet in arrivals {
        let i = usize::from(packet.sequence_number.wrapping_sub(first_seq));
        if i >= sent {
            heard.foreign += 1;
            continue;
        }
        if std::mem::replace(&mut arrived[i], true) {
            heard.duplicates += 1;
            continue;
        }
        if i < next {
            heard.late += 1;
            continue;
        }
        slots[i] = Some(packet.payload.clone());
        while next + HOLD <= i {
            play_one(next, &slots, &mut heard);
            next += 1;
        }
    }
    while next < sent {
        play_one(next, &slots, &mut heard);
        next += 1;
    }
    heard
}

/// Whether an Opus packet carries in-band FEC (LBRR) for the frame before it.
fn has_fec(packet: &[u8]) -> bool {
    let Ok(len) = i32::try_from(packet.len()) else { return false };
    // SAFETY: libopus reads at most `len` bytes from `packet`, a live slice of that length.
    unsafe { opusic_sys::opus_packet_has_lbrr(packet.as_ptr(), len) > 0 }
}

/// The energy of the sine of `hz` (at the best amplitude and phase: least squares on a sine and
/// a cosine) closest to `frame`: all of the frame's energy for a pure tone of `hz`, little of it
/// for another note or noise.
fn sine_energy(frame: &[f32], hz: f64) -> f64 {
    let w = std::f64::consts::TAU * hz / 48_000.0;
    let (mut ss, mut sc, mut cc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &x) in frame.iter().enumerate() {
        let (s, c, x) = ((w * i as f64).sin(), (w * i as f64).cos(), f64::from(x));
        (ss, sc, cc) = (ss + s * s, sc + s * c, cc + c * c);
        (xs, xc) = (xs + x * s, xc + x * c);
    }
    // Solve [ss sc; sc cc] [a; b] = [xs; xc]; the fitted sine's energy is a*xs + b*xc.
    let det = ss * cc - sc * sc;
    let (a, b) = ((xs * cc - xc * sc) / det, (xc * ss - xs * sc) / det);
    a * xs + b * xc
}
