//! Malformed or unknown signaling gets an `error` reply and the socket keeps working.

mod common;

use veza_signaling::{Client, ClientMessage, ErrorCode, ServerMessage};

async fn next_error(client: &mut Client) -> ErrorCode {
    match client.recv().await.unwrap() {
        Some(ServerMessage::Error { code, .. }) => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_socket_keeps_working() {
    let server = common::start().await;
    let mut client = Client::connect(&server.ws_url(), &common::token("s", "ana")).await.unwrap();
    assert!(matches!(client.recv().await.unwrap(), Some(ServerMessage::Joined(_))));

    client.send_text("{not json").await.unwrap();
    assert_eq!(next_error(&mut client).await, ErrorCode::MalformedMessage);

    client.send_text(r#"{"type":"dance","steps":3}"#).await.unwrap();
    assert_eq!(next_error(&mut client).await, ErrorCode::UnknownMessageType);

    client.send_text(r#"{"type":"offer","sdp":42}"#).await.unwrap();
    assert_eq!(next_error(&mut client).await, ErrorCode::MalformedMessage);

    client.send_text(&"x".repeat(server.config.http.max_message_bytes + 1)).await.unwrap();
    assert_eq!(next_error(&mut client).await, ErrorCode::MessageTooLarge);

    client.send(&ClientMessage::Offer { sdp: "v=0 but not really sdp".into() }).await.unwrap();
    assert_eq!(next_error(&mut client).await, ErrorCode::InvalidSdp);

    client.send(&ClientMessage::Answer { sdp: "v=0".into() }).await.unwrap();
    assert_eq!(next_error(&mut client).await, ErrorCode::NegotiationFailed);

    // Still alive and answering.
    client.send(&ClientMessage::Ping { ts: Some(7.0) }).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), Some(ServerMessage::Pong { ts: Some(7.0) }));
    assert_eq!(server.stats().await.participants, 1);

    client.send(&ClientMessage::Leave).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), None, "the server closes the socket after leave");
    common::eventually("the participant is gone", || async { server.stats().await.participants == 0 }).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_listener_token_cannot_publish() {
    let server = common::start().await;
    let grants = veza_signaling::Grants { publish: false, ..Default::default() };
    let mut client = Client::connect(&server.ws_url(), &common::token_with("s", "lis", grants)).await.unwrap();
    assert!(matches!(client.recv().await.unwrap(), Some(ServerMessage::Joined(_))));
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n";
    client.send(&ClientMessage::Offer { sdp: offer.into() }).await.unwrap();
    assert_eq!(next_error(&mut client).await, ErrorCode::PublishNotAllowed);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn probes_answer_and_readiness_follows_the_server() {
    let server = common::start().await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", server.http_url())).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    server.set_ready(false);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    match Client::connect(&server.ws_url(), &common::token("s", "late")).await {
        Err(veza_signaling::ClientError::Rejected { status: 503, body: Some(body) }) => {
            assert_eq!(body.code, ErrorCode::NotReady)
        }
        _ => panic!("joins must be refused while not ready"),
    }
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("veza_participants"), "{metrics}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_signaling_flood_is_limited_then_disconnected() {
    let mut config = common::test_config();
    config.http.messages_per_second = 0.5;
    config.http.message_burst = 5;
    let server = common::start_with(config).await;
    let mut client = Client::connect(&server.ws_url(), &common::token("s", "flood")).await.unwrap();
    assert!(matches!(client.recv().await.unwrap(), Some(ServerMessage::Joined(_))));
    for _ in 0..8 {
        client.send(&ClientMessage::Ping { ts: None }).await.unwrap();
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..8 {
        match client.recv().await.unwrap() {
            Some(ServerMessage::Pong { .. }) => pongs += 1,
            Some(ServerMessage::Error { code: ErrorCode::RateLimited, .. }) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pongs >= 5 && limited >= 1 && pongs + limited == 8, "{pongs} pongs, {limited} refusals");
    // Keep going while limited: the server hangs up.
    for _ in 0..10 {
        if client.send(&ClientMessage::Ping { ts: None }).await.is_err() {
            break;
        }
    }
    loop {
        match client.recv().await {
            Ok(Some(ServerMessage::Error { code: ErrorCode::RateLimited, .. } | ServerMessage::Pong { .. })) => {}
            Ok(None) | Err(_) => break,
            Ok(Some(other)) => panic!("unexpected {other:?}"),
        }
    }
    common::eventually("the flooder is gone", || async { server.stats().await.participants == 0 }).await;
    server.shutdown().await.unwrap();
}
