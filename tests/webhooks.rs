//! Webhooks against a real HTTP receiver in the test: every request is checked the way the Go
//! API verifies it (HS256 JWT in `Authorization`, `sha256` claim = base64 SHA-256 of the body),
//! events arrive in the order they happened, and a receiver that fails at first gets retries.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use veza_sfu::sim::{SimOptions, SimParticipant};

const WEBHOOK_KEY: &str = "webhook-key-for-tests";

#[derive(Default)]
struct Received {
    /// Requests answered 500 so far, and how many to fail before answering 200.
    failed: usize,
    fail_first: usize,
    /// Every request: (verified body, whether it was answered 200).
    requests: Vec<(Value, bool)>,
}

type Shared = Arc<Mutex<Received>>;

/// Verifies a webhook request as a Go receiver would. A request that fails makes the handler
/// panic: the server sees no answer, and the test never sees the event it waits for.
fn verify(headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let ctype = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if ctype != "application/webhook+json" {
        return Err(format!("content type {ctype:?}"));
    }
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or("no Authorization")?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims = ["exp".to_owned()].into();
    let key = jsonwebtoken::DecodingKey::from_secret(WEBHOOK_KEY.as_bytes());
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| format!("JWT: {e}"))?.claims;
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
    if claims["sha256"] != hash {
        return Err(format!("sha256 claim {} is not the body's {hash}", claims["sha256"]));
    }
    serde_json::from_slice(body).map_err(|e| format!("body: {e}"))
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let event = match verify(&headers, &body) {
        Ok(v) => v,
        Err(e) => panic!("webhook failed verification: {e}"),
    };
    let mut r = shared.lock().unwrap();
    let ok = r.failed >= r.fail_first;
    if !ok {
        r.failed += 1;
    }
    r.requests.push((event, ok));
    if ok { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR }
}

async fn receiver(fail_first: usize) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Received { fail_first, ..Default::default() }));
    let app = axum::Router::new().route("/hooks", post(receive)).with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

/// The events delivered (answered 200) for `session`, in arrival order, once per event id.
fn delivered(shared: &Shared, session: &str) -> Vec<Value> {
    let r = shared.lock().unwrap();
    let mut out: Vec<Value> = Vec::new();
    for (event, ok) in &r.requests {
        if *ok && event["session_id"] == session && !out.iter().any(|e| e["id"] == event["id"]) {
            out.push(event.clone());
        }
    }
    out
}

fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["event"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_arrive_in_order_and_failed_deliveries_are_retried() {
    let (url, shared) = receiver(2).await;
    let mut config = common::test_config();
    config.data_dir = std::env::temp_dir().join(format!("veza-hooks-{}", std::process::id()));
    config.webhooks.urls = vec![url];
    config.webhooks.key = Some(WEBHOOK_KEY.to_owned());
    config.webhooks.backoff = Duration::from_millis(10);
    let server = common::start_with(config).await;
    let http = reqwest::Client::new();
    let api = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", server.http_url())).bearer_auth(common::admin_token())
    };

    let created = api(reqwest::Method::POST, "/v1/sessions").json(&json!({"id": "hooks"})).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let ana =
        SimParticipant::join(&server.ws_url(), &common::token("hooks", "ana"), SimOptions::default()).await.unwrap();
    ana.start_publishing();
    common::eventually("ana's track is published", || async {
        kinds(&delivered(&shared, "hooks")).contains(&"track_published".to_owned())
    })
    .await;
    let rec: Value =
        api(reqwest::Method::POST, "/v1/sessions/hooks/recordings").send().await.unwrap().json().await.unwrap();
    let rid = rec["id"].as_str().expect("recording id").to_owned();
    let stopped =
        api(reqwest::Method::POST, &format!("/v1/sessions/hooks/recordings/{rid}/stop")).send().await.unwrap();
    assert_eq!(stopped.status(), 200);
    ana.leave().await.unwrap();
    let ended = api(reqwest::Method::DELETE, "/v1/sessions/hooks").send().await.unwrap();
    assert_eq!(ended.status(), 204);

    common::eventually("session_ended is delivered", || async {
        kinds(&delivered(&shared, "hooks")).last().map(String::as_str) == Some("session_ended")
    })
    .await;
    let events = delivered(&shared, "hooks");
    assert_eq!(
        kinds(&events),
        [
            "session_started",
            "participant_joined",
            "track_published",
            "recording_started",
            "recording_finished",
            "track_unpublished",
            "participant_left",
            "session_ended",
        ],
        "{events:#?}"
    );
    assert_eq!(events[1]["participant"]["user"], "ana");
    assert_eq!(events[2]["track"]["id"], events[5]["track"]["id"]);
    assert_eq!(events[3]["recording_id"], rid.as_str());
    assert_eq!(events[6]["reason"], "left");

    // The first event was refused twice, then delivered: the same event (same id) three times.
    let first: Vec<bool> = {
        let r = shared.lock().unwrap();
        r.requests.iter().filter(|(e, _)| e["id"] == events[0]["id"]).map(|(_, ok)| *ok).collect()
    };
    assert_eq!(first, [false, false, true]);
    server.shutdown().await.unwrap();
}
