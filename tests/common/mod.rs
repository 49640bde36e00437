//! The harness every integration test shares: an in-process server on loopback ports and
//! tokens signed the way the Go API signs them.
#![allow(dead_code)] // each test binary uses a different part of it

pub mod relay;

use std::time::Duration;

use veza_sfu::auth::{Identity, Minter};
use veza_sfu::{Config, Server};
use veza_signaling::Grants;

pub const SECRET: &str = "test-secret-do-not-use-in-production";

/// A config on ephemeral ports with a known HS256 secret.
pub fn test_config() -> Config {
    let mut c = Config::dev_defaults();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.media.udp_port = 0;
    c.media.workers = 2;
    c.auth.secret = Some(SECRET.to_owned());
    // Every test client joins from 127.0.0.1; tests/limits.rs turns the limit back on.
    c.http.join_attempts_per_minute = 0;
    c.data_dir = std::env::temp_dir().join(format!("veza-test-{}", std::process::id()));
    c
}

pub async fn start() -> Server {
    start_with(test_config()).await
}

pub async fn start_with(config: Config) -> Server {
    init_tracing();
    Server::start(config).await.expect("server starts")
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .with_thread_names(true)
        .try_init();
}

pub fn token(session: &str, user: &str) -> String {
    token_with(session, user, Grants::default())
}

pub fn token_with(session: &str, user: &str, grants: Grants) -> String {
    let auth = veza_sfu::config::AuthConfig { secret: Some(SECRET.to_owned()), ..Default::default() };
    let identity = Identity { user: user.into(), session: session.into(), name: format!("{user} name"), grants };
    Minter::from_config(&auth).unwrap().mint(&identity, Duration::from_secs(600)).unwrap()
}

/// A service token, as the Veza API mints for itself: `admin` grant, no session.
pub fn admin_token() -> String {
    let auth = veza_sfu::config::AuthConfig { secret: Some(SECRET.to_owned()), ..Default::default() };
    Minter::from_config(&auth).unwrap().mint_admin("veza-api", Duration::from_secs(600)).unwrap()
}

/// Waits for a condition on the server's own counters, re-checking as the server works.
/// The deadline only bounds a broken run; passing never depends on timing.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One JSON request to the server's HTTP API: the status and the body (JSON, or the raw text
/// as a JSON string when it is not JSON).
pub async fn http_json(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    method: reqwest::Method,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}
