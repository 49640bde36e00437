//! ICE restart after a network change keeps the session: real webrtc-rs musicians on loopback,
//! one of which restarts ICE on both its connections from newly bound sockets.

mod common;

use std::time::Duration;

use veza_sfu::sim::{SimOptions, SimParticipant};
use veza_signaling::{ErrorCode, PcTarget, ServerMessage};

const WAIT: Duration = Duration::from_secs(30);
/// Packets (10 ms each) that must arrive after the restart, in each direction.
const AFTER_RESTART: u64 = 200;

async fn join(url: &str, session: &str, user: &str) -> SimParticipant {
    SimParticipant::join(url, &common::token(session, user), SimOptions::default()).await.expect("joins")
}

fn packets_from(listener: &SimParticipant, source: &SimParticipant) -> u64 {
    listener.received_from(source.id()).map_or(0, |s| s.packets)
}

/// Whether a server message tells the others that someone left, joined, or (un)published.
fn membership_change(m: &ServerMessage) -> bool {
    matches!(
        m,
        ServerMessage::ParticipantLeft { .. }
            | ServerMessage::ParticipantJoined { .. }
            | ServerMessage::TrackPublished { .. }
            | ServerMessage::TrackUnpublished { .. }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_from_new_sockets_keeps_the_participant_and_its_audio() {
    let server = common::start().await;
    let url = server.ws_url();
    let mut ana = join(&url, "handover", "ana").await;
    let ben = join(&url, "handover", "ben").await;
    ana.start_publishing();
    ben.start_publishing();
    ana.wait_for_packets(ben.id(), 50, WAIT).await.unwrap();
    ben.wait_for_packets(ana.id(), 50, WAIT).await.unwrap();
    let before = server.stats().await;
    assert_eq!((before.participants, before.connections, before.routes), (2, 4, 2));
    common::eventually("one address per connection before the restart", || async {
        server.stats().await.demux_addresses == 4
    })
    .await;
    let ana_id = ana.id().to_owned();
    let (old_publisher, old_subscriber) =
        (ana.local_candidate_addrs(PcTarget::Publisher).await, ana.local_candidate_addrs(PcTarget::Subscriber).await);
    let ben_events_before = ben.events().len();

    ana.restart_ice().await.expect("ICE restart negotiated");

    // A network change: both connections now advertise sockets they did not have before.
    let (new_publisher, new_subscriber) =
        (ana.local_candidate_addrs(PcTarget::Publisher).await, ana.local_candidate_addrs(PcTarget::Subscriber).await);
    assert!(new_publisher.iter().any(|a| !old_publisher.contains(a)), "{old_publisher:?} -> {new_publisher:?}");
    assert!(new_subscriber.iter().any(|a| !old_subscriber.contains(a)), "{old_subscriber:?} -> {new_subscriber:?}");

    // The old sockets are closed: whatever arrives from now on crossed the new paths.
    let (heard_by_ben, heard_by_ana) = (packets_from(&ben, &ana), packets_from(&ana, &ben));
    ben.wait_for_packets(&ana_id, heard_by_ben + AFTER_RESTART, WAIT).await.unwrap();
    ana.wait_for_packets(ben.id(), heard_by_ana + AFTER_RESTART, WAIT).await.unwrap();

    // Same participant, same routes; nobody saw ana leave, come back, or republish.
    assert_eq!(ana.id(), ana_id);
    let after = server.stats().await;
    assert_eq!((after.participants, after.connections, after.routes, after.tracks), (2, 4, 2, 2));
    let ben_saw: Vec<ServerMessage> = ben.events().into_iter().skip(ben_events_before).collect();
    assert!(!ben_saw.iter().any(membership_change), "ben saw {ben_saw:?}");
    assert!(!ana.events().iter().any(membership_change_of(&ana_id)), "{:?}", ana.events());
    // The demultiplexer moved ana's connections: one ufrag and one address each, nothing left
    // behind for the old ones.
    common::eventually("the old addresses are forgotten", || async {
        let s = server.stats().await;
        (s.demux_addresses, s.demux_ufrags) == (4, 4)
    })
    .await;
    for sim in [&ana, &ben] {
        assert!(sim.errors().is_empty(), "{}: {:?}", sim.id(), sim.errors());
        let s = sim.received().into_values().next().expect("hears the other");
        assert_eq!(s.bad_payloads, 0);
    }

    ana.leave().await.unwrap();
    ben.leave().await.unwrap();
    server.shutdown().await.unwrap();
}

/// Messages about `id` leaving or joining (ana must not hear of herself either).
fn membership_change_of(id: &str) -> impl Fn(&ServerMessage) -> bool + '_ {
    move |m| match m {
        ServerMessage::ParticipantLeft { participant_id, .. } => participant_id == id,
        ServerMessage::ParticipantJoined { participant } => participant.id == id,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_before_any_subscriber_offer_is_refused_clearly() {
    let server = common::start().await;
    let alone = join(&server.ws_url(), "solo", "ana").await;
    alone.send(&veza_signaling::ClientMessage::IceRestart).await.unwrap();
    let refusal = alone
        .wait_event(WAIT, |m| matches!(m, ServerMessage::Error { code: ErrorCode::NegotiationFailed, .. }))
        .await
        .unwrap();
    assert!(matches!(refusal, ServerMessage::Error { message, .. } if message.contains("no subscriber connection")));
    alone.leave().await.unwrap();
    server.shutdown().await.unwrap();
}
