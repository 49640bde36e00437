//! A musician whose process is killed outright (no `leave`, no close frame, no DTLS alert):
//! the others get `participant_left` once ICE gives up on it, and every per-participant
//! resource on the server is freed, counted on the server's own counters.
//!
//! The musician runs in a child process: this test binary itself, re-run on the ignored
//! `killed_musician_process` test, so it is a real client that can really be killed.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use veza_sfu::sim::{SimOptions, SimParticipant};
use veza_signaling::{LeaveReason, ServerMessage};

const WAIT: Duration = Duration::from_secs(30);
const CHILD_URL: &str = "VEZA_TEST_CHILD_WS_URL";
const CHILD_TOKEN: &str = "VEZA_TEST_CHILD_TOKEN";

/// The child: joins, publishes, says who it is, then waits to be killed.
#[tokio::test]
#[ignore = "the child process of a_killed_client_is_dropped_and_everything_it_held_is_freed"]
async fn killed_musician_process() {
    let (Ok(url), Ok(token)) = (std::env::var(CHILD_URL), std::env::var(CHILD_TOKEN)) else {
        return; // run by hand without a parent: nothing to do
    };
    let sim = SimParticipant::join(&url, &token, SimOptions::default()).await.expect("child joins");
    sim.wait_publisher_connected(WAIT).await.expect("child's media connects");
    sim.start_publishing();
    println!("JOINED {}", sim.id());
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_is_dropped_and_everything_it_held_is_freed() {
    let mut config = common::test_config();
    config.media.ice_disconnected_timeout = Duration::from_secs(1);
    config.media.ice_failed_timeout = Duration::from_secs(3);
    // Longer than any wait here: only ICE noticing the silence can remove the musician.
    config.sessions.reconnect_grace = Duration::from_secs(3600);
    // The server gets a runtime of its own, so its task count is not mixed with the clients'.
    let server_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let server = server_runtime.spawn(veza_sfu::Server::start(config)).await.unwrap().expect("server starts");
    let alive_tasks = || server_runtime.metrics().num_alive_tasks();
    let url = server.ws_url();
    // Two musicians already playing, so each has both its connections before ben comes.
    let ana = SimParticipant::join(&url, &common::token("jam", "ana"), SimOptions::default()).await.unwrap();
    let cleo = SimParticipant::join(&url, &common::token("jam", "cleo"), SimOptions::default()).await.unwrap();
    ana.start_publishing();
    cleo.start_publishing();
    ana.wait_for_packets(cleo.id(), 20, WAIT).await.unwrap();
    cleo.wait_for_packets(ana.id(), 20, WAIT).await.unwrap();
    let before = server.stats().await;
    let tasks_before = alive_tasks();

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "killed_musician_process", "--nocapture", "--test-threads", "1"])
        .env(CHILD_URL, &url)
        .env(CHILD_TOKEN, common::token("jam", "ben"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the musician process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ben_id = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints "test killed_musician_process ... " on the same line first.
            if let Some(id) = line.split("JOINED ").nth(1) {
                return id.trim().to_owned();
            }
        }
        panic!("the musician process ended without joining");
    })
    .await
    .expect("the musician process joins");
    ana.wait_for_packets(&ben_id, 50, WAIT).await.unwrap();
    let during = server.stats().await;
    assert_eq!((during.participants, during.connections, during.routes), (3, 6, 6));

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let left = ana
        .wait_event(
            WAIT,
            |m| matches!(m, ServerMessage::ParticipantLeft { participant_id, .. } if *participant_id == ben_id),
        )
        .await
        .unwrap();
    assert!(matches!(left, ServerMessage::ParticipantLeft { reason: LeaveReason::MediaFailed, .. }), "{left:?}");
    ana.wait_offered(&ben_id, false, WAIT).await.unwrap();

    common::eventually("the server to hold only what it held before the musician came", || async {
        let now = server.stats().await;
        (now.participants, now.connections, now.routes, now.tracks, now.demux_addresses, now.demux_ufrags)
            == (
                before.participants,
                before.connections,
                before.routes,
                before.tracks,
                before.demux_addresses,
                before.demux_ufrags,
            )
    })
    .await;
    let signaling = server.signaling_stats();
    assert_eq!((signaling.participations, signaling.parked), (2, 0));
    // The signaling task and everything else the server spawned for the musician are gone.
    common::eventually("as many live server tasks as before the musician came", || async {
        alive_tasks() <= tasks_before
    })
    .await;
    ana.leave().await.unwrap();
    cleo.leave().await.unwrap();
    server.shutdown().await.unwrap();
    server_runtime.shutdown_background();
}
