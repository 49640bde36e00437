//! End to end through real peer connections on loopback: webrtc-rs clients publish through
//! the SFU, and every assertion is on what clients received or on the server's own counters.

mod common;

use std::time::{Duration, Instant};

use veza_sfu::sim::{SimOptions, SimParticipant};
use veza_signaling::{ChatOut, ErrorCode, LeaveReason, ServerMessage};

const WAIT: Duration = Duration::from_secs(30);

async fn join(url: &str, session: &str, user: &str) -> SimParticipant {
    SimParticipant::join(url, &common::token(session, user), SimOptions::default()).await.expect("joins")
}

/// Fraction of packets inside the received sequence range that arrived intact.
fn intact_ratio(sim: &SimParticipant, from: &SimParticipant) -> f64 {
    let s = sim.received_from(from.id()).expect("stream received");
    let expected = s.expected().max(1);
    (s.good_packets() as f64) / (expected as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_musicians_hear_each_other_never_themselves_and_other_sessions_hear_nothing() {
    let server = common::start().await;
    let url = server.ws_url();

    let (ana, ben) = (join(&url, "trio", "ana").await, join(&url, "trio", "ben").await);
    ana.start_publishing();
    ben.start_publishing();
    // Cleo joins a jam already playing: time her from connect to the first audio she gets.
    let connect_started = Instant::now();
    let cleo = join(&url, "trio", "cleo").await;
    cleo.wait_for_packets(ana.id(), 1, WAIT).await.unwrap();
    let first_audio = cleo.received_from(ana.id()).and_then(|s| s.first_packet_at).unwrap();
    eprintln!("join (WebSocket connect) -> first forwarded RTP packet: {:?}", first_audio - connect_started);
    let trio = [ana, ben, cleo];
    let duo = [join(&url, "duo", "dan").await, join(&url, "duo", "eve").await];
    for sim in trio.iter().skip(2).chain(&duo) {
        sim.start_publishing();
    }

    const PACKETS: u64 = 300; // 3 s of 10 ms packets
    for listener in &trio {
        for source in trio.iter().filter(|s| s.id() != listener.id()) {
            listener.wait_for_packets(source.id(), PACKETS, WAIT).await.unwrap();
        }
    }
    for listener in &duo {
        for source in duo.iter().filter(|s| s.id() != listener.id()) {
            listener.wait_for_packets(source.id(), PACKETS, WAIT).await.unwrap();
        }
    }
    for sim in trio.iter().chain(&duo) {
        sim.stop_publishing();
    }

    for listener in &trio {
        assert!(listener.received_from(listener.id()).is_none(), "a musician must never hear themselves");
        for source in trio.iter().filter(|s| s.id() != listener.id()) {
            let ratio = intact_ratio(listener, source);
            assert!(ratio >= 0.95, "{} heard {} at {ratio:.3}", listener.id(), source.id());
            assert_eq!(listener.received_from(source.id()).unwrap().bad_payloads, 0);
        }
        for stranger in &duo {
            assert!(listener.received_from(stranger.id()).is_none(), "sessions must be isolated");
        }
        assert!(listener.errors().is_empty(), "{:?}", listener.errors());
    }
    for listener in &duo {
        assert_eq!(listener.received().len(), 1, "the duo hears only each other");
        for stranger in &trio {
            assert!(listener.received_from(stranger.id()).is_none(), "sessions must be isolated");
        }
    }
    let stats = server.stats().await;
    assert_eq!((stats.sessions, stats.participants), (2, 5));
    assert_eq!(stats.routes, 3 * 2 + 2, "each musician is routed to every other in its session");
    server.shutdown().await.unwrap();
}

fn chats(messages: &[ChatOut]) -> Vec<(u64, String, String)> {
    messages
        .iter()
        .filter_map(|m| match m {
            ChatOut::Chat { id, from, text, .. } => Some((*id, from.id.clone(), text.clone())),
            ChatOut::Error { .. } => None,
        })
        .collect()
}

fn chat_errors(messages: &[ChatOut]) -> Vec<ErrorCode> {
    messages
        .iter()
        .filter_map(|m| match m {
            ChatOut::Error { code, .. } => Some(*code),
            ChatOut::Chat { .. } => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_is_stamped_ordered_limited_and_replayed_to_late_joiners() {
    let mut config = common::test_config();
    config.chat.burst = 5;
    config.chat.rate_per_second = 1.0;
    config.chat.max_chars = 100;
    let server = common::start_with(config).await;
    let url = server.ws_url();
    let quiet = SimOptions { publish: false, ..SimOptions::default() };
    let ana = SimParticipant::join(&url, &common::token("band", "ana"), quiet.clone()).await.unwrap();
    let ben = SimParticipant::join(&url, &common::token("band", "ben"), quiet.clone()).await.unwrap();
    ben.wait_chat_open(WAIT).await.unwrap();

    // In order, stamped by the server; a claimed sender is ignored.
    ana.send_chat("one").await.unwrap();
    ana.send_chat("two").await.unwrap();
    ana.send_chat_raw(r#"{"type":"chat","text":"three","from":{"id":"ben","name":"Mallory"},"id":1}"#).await.unwrap();
    let got = ben.wait_chat(3, WAIT).await.unwrap();
    let texts: Vec<_> = chats(&got).into_iter().map(|(_, from, text)| (from, text)).collect();
    let ana_id = ana.id().to_owned();
    assert_eq!(
        texts,
        vec![(ana_id.clone(), "one".into()), (ana_id.clone(), "two".into()), (ana_id.clone(), "three".into())]
    );
    assert!(got.iter().all(|m| matches!(m, ChatOut::Chat { from, .. } if from.name == "ana name")));

    // Too long: an error to the sender, nothing to anyone else.
    ana.send_chat(&"x".repeat(101)).await.unwrap();
    // Too fast: the burst allows 5, minus the 3 already sent (refill is 1/s).
    for i in 0..8 {
        ana.send_chat(&format!("fast {i}")).await.unwrap();
    }
    // Every message ana sent gets exactly one reply to ana: its echo or its refusal.
    let replies = ana.wait_chat(3 + 1 + 8, WAIT).await.unwrap();
    let errors = chat_errors(&replies);
    assert_eq!(errors[0], ErrorCode::ChatTooLong);
    assert!(errors.contains(&ErrorCode::ChatRateLimited), "{errors:?}");
    let accepted = chats(&replies);
    // Ben sees exactly what was accepted, in the same order with the same ids.
    let ben_saw = ben.wait_chat(accepted.len(), WAIT).await.unwrap();
    assert_eq!(chats(&ben_saw), accepted);
    assert!(chat_errors(&ben_saw).is_empty(), "refusals go to the sender only");
    let ids: Vec<u64> = accepted.iter().map(|(id, ..)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    // A late joiner gets the history in `joined`.
    let cleo = SimParticipant::join(&url, &common::token("band", "cleo"), quiet).await.unwrap();
    assert_eq!(chats(&cleo.joined().chat_history), accepted);
    assert_eq!(server.stats().await.chat_refused as usize, errors.len());
    server.shutdown().await.unwrap();
}

async fn left(sim: &SimParticipant, who: &str) -> LeaveReason {
    let who = who.to_owned();
    match sim
        .wait_event(
            WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == who),
        )
        .await
        .unwrap()
    {
        ServerMessage::ParticipantLeft { reason, .. } => reason,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_and_vanishing_free_everything_the_participant_held() {
    let mut config = common::test_config();
    // Shorter than the moment a vanished sim's connections go quiet (src/sim: VANISH_LINGER):
    // the grace period, not media failure, ends a vanished participation here.
    config.sessions.reconnect_grace = Duration::from_millis(500);
    let server = common::start_with(config).await;
    let url = server.ws_url();
    let ana = join(&url, "gig", "ana").await;
    let ben = join(&url, "gig", "ben").await;
    let cleo = join(&url, "gig", "cleo").await;
    for sim in [&ana, &ben, &cleo] {
        sim.start_publishing();
    }
    for (listener, source) in [(&ana, &ben), (&ana, &cleo), (&ben, &ana), (&cleo, &ana)] {
        listener.wait_for_packets(source.id(), 50, WAIT).await.unwrap();
    }
    let stats = server.stats().await;
    assert_eq!((stats.participants, stats.connections, stats.routes), (3, 6, 6));

    // A polite leave.
    let ben_id = ben.id().to_owned();
    ben.leave().await.unwrap();
    assert_eq!(left(&ana, &ben_id).await, LeaveReason::Left);
    assert_eq!(left(&cleo, &ben_id).await, LeaveReason::Left);
    ana.wait_offered(&ben_id, false, WAIT).await.unwrap();
    cleo.wait_offered(&ben_id, false, WAIT).await.unwrap();
    let stats = server.stats().await;
    assert_eq!((stats.participants, stats.connections, stats.routes), (2, 4, 2));

    // An abrupt disappearance: no leave, no close frame. The server keeps cleo's place for a
    // resume until the grace period runs out (tests/vanish.rs has ICE noticing instead).
    let cleo_id = cleo.id().to_owned();
    cleo.vanish().await;
    assert_eq!(left(&ana, &cleo_id).await, LeaveReason::Disconnected);
    ana.wait_offered(&cleo_id, false, WAIT).await.unwrap();
    let stats = server.stats().await;
    assert_eq!((stats.participants, stats.connections, stats.routes, stats.demux_ufrags), (1, 2, 0, 2));

    // Audio keeps flowing to nobody without errors; the last one out ends the session.
    ana.leave().await.unwrap();
    common::eventually("the server holds nothing", || async {
        let s = server.stats().await;
        (s.sessions, s.participants, s.connections, s.routes, s.demux_addresses, s.demux_ufrags) == (0, 0, 0, 0, 0, 0)
    })
    .await;
    let signaling = server.signaling_stats();
    assert_eq!((signaling.participations, signaling.parked), (0, 0));
    server.shutdown().await.unwrap();
}

/// m-sections in the latest subscriber offer `sim` got.
fn offered_m_sections(sim: &SimParticipant) -> usize {
    let offer = sim.events().into_iter().rev().find_map(|m| match m {
        ServerMessage::Offer { sdp } => Some(sdp),
        _ => None,
    });
    offer.expect("a subscriber offer").lines().filter(|l| l.starts_with("m=")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_hears_every_newcomer_through_churn_on_a_bounded_offer() {
    let server = common::start().await;
    let url = server.ws_url();
    let ana = join(&url, "churn", "ana").await;
    // Musicians come and go one after another; each is heard, then leaves.
    for round in 0..6 {
        let guest = join(&url, "churn", &format!("guest-{round}")).await;
        guest.start_publishing();
        ana.wait_for_packets(guest.id(), 20, WAIT).await.unwrap();
        let id = guest.id().to_owned();
        guest.leave().await.unwrap();
        ana.wait_offered(&id, false, WAIT).await.unwrap();
    }
    // Each newcomer took over the m-section the one before left (one was never negotiated
    // twice at once here), instead of the offer growing by one per musician ever seen.
    assert_eq!(offered_m_sections(&ana), 1);
    assert!(ana.errors().is_empty(), "{:?}", ana.errors());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_get_sender_reports_that_count_and_time_what_was_forwarded() {
    let server = common::start().await;
    let url = server.ws_url();
    let (ana, ben) = (join(&url, "reports", "ana").await, join(&url, "reports", "ben").await);
    ana.start_publishing();
    ben.wait_for_sender_reports(ana.id(), 3, WAIT).await.unwrap();
    ana.stop_publishing();

    let reports = ben.sender_reports(ana.id());
    let payload_len = SimOptions::default().payload_len as u32;
    let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for r in &reports {
        // RTP and RTCP of a leg travel in order: what it counts was sent before it, and on
        // loopback arrived before it (all of it but for a rare drop on a loaded machine).
        let counted = u64::from(r.packet_count);
        assert!(r.packets_before <= counted && counted - r.packets_before <= 1 + counted / 100, "{r:?}");
        assert_eq!(r.octet_count, r.packet_count * payload_len, "{r:?}");
        // Its RTP time is on the forwarded packets' timeline, at or just after the newest one.
        let newest = r.last_timestamp_before.expect("a report only after packets");
        assert!(r.rtp_time.wrapping_sub(newest) < veza_sfu::sim::OPUS_CLOCK_RATE, "{r:?}");
        let ntp_unix_seconds = (r.ntp_time >> 32) - 2_208_988_800;
        assert!(ntp_unix_seconds.abs_diff(unix_now) < 600, "NTP time is not the wall clock: {r:?}");
    }
    for pair in reports.windows(2) {
        assert_eq!(pair[0].ssrc, pair[1].ssrc, "one leg, one SSRC");
        assert!(pair[1].packet_count > pair[0].packet_count, "{pair:?}");
        assert!(pair[1].ntp_time > pair[0].ntp_time, "{pair:?}");
    }
    assert!(ana.sender_reports(ben.id()).is_empty(), "ben sends nothing, so nothing is reported on his leg");
}
