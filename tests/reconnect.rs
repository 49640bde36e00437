//! A participant whose signaling socket drops picks its participation back up with the resume
//! token from `joined`: same identity, media never stops, the others see no leave or join,
//! and every message the server had for it while it was away arrives after `resumed`.

mod common;

use std::time::Duration;

use veza_sfu::sim::{SimOptions, SimParticipant};
use veza_signaling::{Client, ClientError, ErrorCode, LeaveReason, ServerMessage};

const WAIT: Duration = Duration::from_secs(30);

async fn join(url: &str, token: &str) -> SimParticipant {
    SimParticipant::join(url, token, SimOptions::default()).await.expect("joins")
}

fn good_from(listener: &SimParticipant, source: &str) -> u64 {
    listener.received_from(source).map_or(0, |s| s.good_packets())
}

/// Whether `listener` was ever told that `who` left or joined.
fn saw_leave_or_join(listener: &SimParticipant, who: &str) -> bool {
    listener.events().iter().any(|m| match m {
        ServerMessage::ParticipantLeft { participant_id, .. } => participant_id == who,
        ServerMessage::ParticipantJoined { participant } => participant.id == who,
        _ => false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumes_with_the_same_identity_and_nothing_lost() {
    let server = common::start().await;
    let url = server.ws_url();
    let ana_token = common::token("jam", "ana");
    let mut ana = join(&url, &ana_token).await;
    let ben = join(&url, &common::token("jam", "ben")).await;
    ana.start_publishing();
    ben.start_publishing();
    ana.wait_for_packets(ben.id(), 50, WAIT).await.unwrap();
    ben.wait_for_packets(ana.id(), 50, WAIT).await.unwrap();

    ana.drop_signaling().await;
    common::eventually("ana's participation to be parked", || async { server.signaling_stats().parked == 1 }).await;
    // While ana is away, cleo joins: the announcement and the subscriber offer that carries
    // cleo's track wait for ana on the server.
    let cleo = join(&url, &common::token("jam", "cleo")).await;
    cleo.start_publishing();
    let ana_heard_from_ben = good_from(&ben, ana.id());
    let ben_heard_from_ana = good_from(&ana, ben.id());

    ana.resume_signaling(&url, &ana_token).await.unwrap();
    ana.wait_event(
        WAIT,
        |m| matches!(m, ServerMessage::ParticipantJoined { participant } if participant.id == cleo.id()),
    )
    .await
    .unwrap();
    ana.wait_for_packets(cleo.id(), 50, WAIT).await.expect("the offer queued during the drop was answered");
    // Media went on both ways, across the drop and after it.
    ben.wait_for_packets(ana.id(), ana_heard_from_ben + 50, WAIT).await.unwrap();
    ana.wait_for_packets(ben.id(), ben_heard_from_ana + 50, WAIT).await.unwrap();
    cleo.wait_for_packets(ana.id(), 50, WAIT).await.unwrap();

    assert!(!saw_leave_or_join(&ben, ana.id()), "ben saw ana leave or join: {:?}", ben.events());
    assert!(!saw_leave_or_join(&cleo, ana.id()), "cleo saw ana leave or join: {:?}", cleo.events());
    assert_eq!(ana.joined().participant.id, ana.id());
    assert!(ana.errors().is_empty(), "{:?}", ana.errors());
    // The offer repeated on resume was answered again, and the repeat taken for what it is.
    assert!(!ana.events().iter().any(|m| matches!(m, ServerMessage::Error { .. })), "{:?}", ana.events());
    let stats = server.stats().await;
    assert_eq!((stats.participants, stats.connections), (3, 6));
    let signaling = server.signaling_stats();
    assert_eq!((signaling.participations, signaling.parked), (3, 0));

    // The resumed socket is a full signaling socket: a polite leave still works.
    let ana_id = ana.id().to_owned();
    ana.leave().await.unwrap();
    let left = ben
        .wait_event(
            WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == ana_id),
        )
        .await
        .unwrap();
    assert!(matches!(left, ServerMessage::ParticipantLeft { reason: LeaveReason::Left, .. }));
    ben.leave().await.unwrap();
    cleo.leave().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_takes_over_a_socket_that_still_looks_alive() {
    // A half-open connection (the client's network changed; the server has not noticed yet).
    let server = common::start().await;
    let url = server.ws_url();
    let token = common::token("jam", "ana");
    let ana = join(&url, &token).await;
    let ben = join(&url, &common::token("jam", "ben")).await;
    ana.start_publishing();
    ben.wait_for_packets(ana.id(), 20, WAIT).await.unwrap();
    // Straight to a new socket, without the server having seen the old one drop.
    let mut raw = Client::connect(&format!("{url}?resume={}", ana.joined().resume_token), &token).await.unwrap();
    match raw.recv().await.unwrap() {
        Some(ServerMessage::Resumed { participant_id }) => assert_eq!(participant_id, ana.id()),
        other => panic!("expected resumed, got {other:?}"),
    }
    raw.send(&veza_signaling::ClientMessage::Ping { ts: Some(7.0) }).await.unwrap();
    assert_eq!(raw.recv().await.unwrap(), Some(ServerMessage::Pong { ts: Some(7.0) }));
    assert!(!saw_leave_or_join(&ben, ana.id()));
    assert_eq!(server.signaling_stats().participations, 2);
    raw.send(&veza_signaling::ClientMessage::Leave).await.unwrap();
    ben.wait_event(
        WAIT,
        |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if participant_id == ana.id()),
    )
    .await
    .unwrap();
    ana.close().await;
    ben.leave().await.unwrap();
    server.shutdown().await.unwrap();
}

async fn refused(url: &str, token: &str) -> (u16, ErrorCode) {
    match Client::connect(url, token).await {
        Err(ClientError::Rejected { status, body: Some(body) }) => (status, body.code),
        Err(e) => panic!("expected a refusal with a JSON body, got {e}"),
        Ok(_) => panic!("the resume was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_period_the_participant_leaves_and_the_token_is_spent() {
    let mut config = common::test_config();
    config.sessions.reconnect_grace = Duration::from_millis(500);
    let server = common::start_with(config).await;
    let url = server.ws_url();
    let token = common::token("jam", "ana");
    let mut ana = join(&url, &token).await;
    let ben = join(&url, &common::token("jam", "ben")).await;
    ana.start_publishing();
    ben.wait_for_packets(ana.id(), 20, WAIT).await.unwrap();
    let resume = ana.joined().resume_token.clone();

    ana.drop_signaling().await;
    let left = ben
        .wait_event(
            WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if participant_id == ana.id()),
        )
        .await
        .unwrap();
    assert!(matches!(left, ServerMessage::ParticipantLeft { reason: LeaveReason::Disconnected, .. }), "{left:?}");
    assert_eq!(refused(&format!("{url}?resume={resume}"), &token).await, (410, ErrorCode::ResumeExpired));
    let err = ana.resume_signaling(&url, &token).await.unwrap_err();
    assert!(matches!(err.downcast_ref::<ClientError>(), Some(ClientError::Rejected { status: 410, .. })), "{err:#}");
    let signaling = server.signaling_stats();
    assert_eq!((signaling.participations, signaling.parked), (1, 0));
    ana.close().await;
    ben.leave().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_works_only_for_its_own_user_and_session() {
    let server = common::start().await;
    let url = server.ws_url();
    let ana = join(&url, &common::token("jam", "ana")).await;
    let resume = format!("{url}?resume={}", ana.joined().resume_token);
    assert_eq!(refused(&resume, &common::token("jam", "mallory")).await, (403, ErrorCode::Forbidden));
    assert_eq!(refused(&resume, &common::token("other-jam", "ana")).await, (403, ErrorCode::Forbidden));
    assert_eq!(
        refused(&format!("{url}?resume=guessed-token"), &common::token("jam", "ana")).await,
        (410, ErrorCode::ResumeExpired)
    );
    // A resume still needs a valid access token.
    assert_eq!(refused(&resume, "not-a-jwt").await, (401, ErrorCode::TokenMalformed));
    assert_eq!(server.stats().await.participants, 1);
    ana.leave().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_frame_is_a_goodbye_not_a_drop() {
    let mut config = common::test_config();
    // Long enough that only a deliberate leave can explain ana being gone.
    config.sessions.reconnect_grace = Duration::from_secs(3600);
    let server = common::start_with(config).await;
    let url = server.ws_url();
    let ana = join(&url, &common::token("jam", "ana")).await;
    let ben = join(&url, &common::token("jam", "ben")).await;
    let ana_id = ana.id().to_owned();
    ana.close().await;
    let left = ben
        .wait_event(
            WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == ana_id),
        )
        .await
        .unwrap();
    assert!(matches!(left, ServerMessage::ParticipantLeft { reason: LeaveReason::Disconnected, .. }), "{left:?}");
    assert_eq!(server.signaling_stats().parked, 0);
    ben.leave().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_accepts_the_original_token_after_it_expired() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let server = common::start().await;
    let url = server.ws_url();
    let mut ana = join(&url, &common::token("jam", "ana")).await;
    ana.drop_signaling().await;
    // Hours into the jam, the token the page joined with has expired.
    let claims = serde_json::json!({"sub": "ana", "session": "jam", "exp": veza_sfu::auth::unix_now() - 3600});
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .unwrap();
    ana.resume_signaling(&url, &expired).await.expect("an expired token still resumes");
    // It does not join.
    assert_eq!(refused(&url, &expired).await, (401, ErrorCode::TokenExpired));
    ana.leave().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_removed_while_away_learns_why_on_resuming() {
    let server = common::start().await;
    let url = server.ws_url();
    let token = common::token("jam", "ana");
    let mut ana = join(&url, &token).await;
    let ben = join(&url, &common::token("jam", "ben")).await;
    ana.drop_signaling().await;
    common::eventually("ana's participation to be parked", || async { server.signaling_stats().parked == 1 }).await;
    let (status, _) = common::http_json(
        &reqwest::Client::new(),
        format!("{}/v1/sessions/jam/participants/{}/kick", server.http_url(), ana.id()),
        Some(&common::admin_token()),
        reqwest::Method::POST,
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(status, 204);
    ben.wait_event(
        WAIT,
        |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if participant_id == ana.id()),
    )
    .await
    .unwrap();
    // The news waits for ana instead of vanishing with her participation.
    ana.resume_signaling(&url, &token).await.unwrap();
    let kicked = ana
        .wait_event(
            WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if participant_id == ana.id()),
        )
        .await
        .unwrap();
    assert!(matches!(kicked, ServerMessage::ParticipantLeft { reason: LeaveReason::Kicked, .. }), "{kicked:?}");
    ana.wait_signaling_closed(WAIT).await.unwrap();
    common::eventually("nothing left of ana", || async { server.signaling_stats().participations == 1 }).await;
    ana.close().await;
    ben.leave().await.unwrap();
    server.shutdown().await.unwrap();
}
