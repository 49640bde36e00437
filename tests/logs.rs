//! Tokens never reach the logs: not the refused ones, not the accepted ones, not resume tokens,
//! even with debug logging on. Runs the real binary and reads everything it writes.

mod common;

use std::process::Stdio;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use veza_sfu::auth::unix_now;
use veza_signaling::{Client, ServerMessage};

const WAIT: Duration = Duration::from_secs(30);

fn signed(secret: &[u8], claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// The part of a token that must stay secret-ish and is unique enough to search for.
fn signature(token: &str) -> &str {
    token.rsplit('.').next().unwrap()
}

#[tokio::test]
async fn tokens_never_appear_in_debug_logs() {
    let data_dir = std::env::temp_dir().join(format!("veza-logs-test-{}", std::process::id()));
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_veza-sfu"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--udp-port", "0"])
        .env("VEZA_DATA_DIR", &data_dir)
        .env("VEZA_AUTH__SECRET", common::SECRET)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the server binary");
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut stderr = server.stderr.take().unwrap();
    // Drained all along, so a chatty debug log never blocks the server on a full pipe.
    let logs = tokio::spawn(async move {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all).await;
        all
    });
    let mut printed = String::new();
    let http = tokio::time::timeout(WAIT, async {
        loop {
            let mut line = String::new();
            assert!(stdout.read_line(&mut line).await.unwrap() > 0, "server exited: {printed}");
            printed.push_str(&line);
            if let Some(rest) = line.split("Open the reference client: ").nth(1) {
                return rest.split("/?").next().unwrap().to_owned();
            }
        }
    })
    .await
    .expect("the server prints its URL");
    let ws = format!("{}/v1/ws", http.replacen("http", "ws", 1));

    let claims = json!({"sub": "u1", "session": "jam", "exp": unix_now() + 600});
    let forged = signed(b"not-the-server-secret-not-the-server-secret", claims.clone());
    let mut expired_claims = claims.clone();
    expired_claims["exp"] = json!(unix_now() - 3600);
    let expired = signed(common::SECRET.as_bytes(), expired_claims);
    let good = signed(common::SECRET.as_bytes(), claims);

    for bad in [&forged, &expired] {
        assert!(Client::connect(&ws, bad).await.is_err());
        let _ = reqwest::Client::new().get(format!("{http}/v1/sessions")).bearer_auth(bad).send().await.unwrap();
    }
    let mut client = Client::connect(&ws, &good).await.expect("the good token joins");
    let resume = match client.recv().await.unwrap() {
        Some(ServerMessage::Joined(joined)) => joined.resume_token,
        other => panic!("expected joined, got {other:?}"),
    };
    let _ = Client::connect(&format!("{ws}?resume={resume}"), &forged).await;
    // A successful resume (taking over the first socket), then a polite leave on it.
    let mut resumed = Client::connect(&format!("{ws}?resume={resume}"), &good).await.expect("the resume");
    assert!(matches!(resumed.recv().await.unwrap(), Some(ServerMessage::Resumed { .. })));
    drop(client);
    resumed.send(&veza_signaling::ClientMessage::Leave).await.unwrap();
    while resumed.recv().await.ok().flatten().is_some() {}

    server.start_kill().unwrap();
    server.wait().await.unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    printed.push_str(&rest);
    // The log goes to stdout (what `docker logs` shows) or stderr: read both as one.
    let logs = logs.await.unwrap() + &printed;
    assert!(logs.contains("token refused"), "debug logs are on and mention refusals:\n{logs}");
    assert!(logs.contains("/v1/ws"), "requests are logged, by path:\n{logs}");
    for (what, secret) in [
        ("forged", signature(&forged)),
        ("expired", signature(&expired)),
        ("good", signature(&good)),
        ("resume", &resume),
    ] {
        assert!(!logs.contains(secret), "the {what} token is in the logs");
    }
    let _ = std::fs::remove_dir_all(data_dir);
}
