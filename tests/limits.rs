//! Node-wide limits: live sessions per node and join attempts per client address. (Per-session,
//! per-participant and per-message limits are in tests/signaling.rs and tests/sfu.rs.)

mod common;

use veza_signaling::{Client, ClientError, ErrorCode, ServerMessage};

async fn first_message(url: &str, token: &str) -> ServerMessage {
    let mut client = Client::connect(url, token).await.expect("upgrade");
    client.recv().await.unwrap().expect("a first message")
}

#[tokio::test]
async fn a_node_hosts_at_most_max_sessions() {
    let mut config = common::test_config();
    config.sessions.max_sessions = 2;
    // The clients here just drop their sockets: no resuming, so their sessions end at once.
    config.sessions.reconnect_grace = std::time::Duration::ZERO;
    let server = common::start_with(config).await;
    let url = server.ws_url();
    let mut a = Client::connect(&url, &common::token("a", "ana")).await.unwrap();
    assert!(matches!(a.recv().await.unwrap(), Some(ServerMessage::Joined(_))));
    let mut b = Client::connect(&url, &common::token("b", "ben")).await.unwrap();
    assert!(matches!(b.recv().await.unwrap(), Some(ServerMessage::Joined(_))));

    // A third session, by join or over REST, is refused; joining an existing one is not.
    match first_message(&url, &common::token("c", "cleo")).await {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, ErrorCode::ServerFull);
            assert!(message.contains("max_sessions"), "{message}");
        }
        other => panic!("expected server_full, got {other:?}"),
    }
    let admin = common::admin_token();
    let (status, body) = common::http_json(
        &reqwest::Client::new(),
        format!("{}/v1/sessions", server.http_url()),
        Some(&admin),
        reqwest::Method::POST,
        Some(serde_json::json!({"id": "c"})),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (503, Some("server_full")));
    assert!(matches!(first_message(&url, &common::token("a", "dora")).await, ServerMessage::Joined(_)));

    // When a session ends, its slot is free again.
    a.send(&veza_signaling::ClientMessage::Leave).await.unwrap();
    while a.recv().await.ok().flatten().is_some() {}
    common::eventually("session a to end", || async { server.stats().await.sessions == 1 }).await;
    assert!(matches!(first_message(&url, &common::token("c", "cleo")).await, ServerMessage::Joined(_)));
    drop(b);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn join_attempts_per_address_are_limited_good_token_or_not() {
    let mut config = common::test_config();
    config.http.join_attempts_per_minute = 3;
    let server = common::start_with(config).await;
    let url = server.ws_url();
    // Bad tokens spend attempts too: that is what makes guessing expensive.
    assert!(matches!(Client::connect(&url, "guess-1").await, Err(ClientError::Rejected { status: 401, .. })));
    assert!(matches!(Client::connect(&url, "guess-2").await, Err(ClientError::Rejected { status: 401, .. })));
    let _ok = Client::connect(&url, &common::token("jam", "ana")).await.expect("third attempt");
    match Client::connect(&url, &common::token("jam", "ana")).await {
        Err(ClientError::Rejected { status: 429, body: Some(body) }) => {
            assert_eq!(body.code, ErrorCode::JoinRateLimited);
            assert!(body.message.contains("retry in"), "{}", body.message);
        }
        Err(e) => panic!("expected 429, got {e}"),
        Ok(_) => panic!("a fourth attempt within the minute was accepted"),
    }
    let response = reqwest::get(format!("{url}?access_token=x").replacen("ws", "http", 1)).await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Other endpoints are not join attempts.
    assert_eq!(reqwest::get(format!("{}/healthz", server.http_url())).await.unwrap().status().as_u16(), 200);
    server.shutdown().await.unwrap();
}
