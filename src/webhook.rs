//! Signed webhooks: events POSTed to the Veza API, LiveKit-style (`Authorization` is a JWT
//! signed with the webhook key whose `sha256` claim is the base64 SHA-256 of the body).
//!
//! Emitters (media workers, the REST layer, export jobs) hand events to [`Webhooks::emit`],
//! which never blocks: a full queue drops the event and counts it. One delivery task posts
//! events one at a time in the order they were emitted, so every session's events arrive in
//! order; a failed POST is retried with exponential backoff before the next event goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// `webhooks` in the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where events are POSTed, each to every URL. Default: none (webhooks off).
    pub urls: Vec<String>,
    /// HS256 secret the `Authorization` JWT is signed with. Required when `urls` is set.
    pub key: Option<String>,
    /// Events waiting for delivery before new ones are dropped (and counted). Default: 1024.
    pub queue: usize,
    /// Retries of a failed POST (non-2xx or no answer) before it is given up. Default: 5.
    pub retries: u32,
    /// Wait before the first retry; doubled for each next one, up to 30 s. Default: 500 ms.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Time limit of one POST. Default: 5 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            urls: Vec::new(),
            key: None,
            queue: 1024,
            retries: 5,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Lifetime of the `Authorization` JWT.
const TOKEN_TTL: Duration = Duration::from_secs(300);

/// What happened.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SessionStarted,
    SessionEnded,
    ParticipantJoined,
    ParticipantLeft,
    TrackPublished,
    TrackUnpublished,
    RecordingStarted,
    RecordingFinished,
    ExportFinished,
}

/// One webhook body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Unique per event (retries of one event keep it): deduplicate on it.
    pub id: String,
    pub event: EventKind,
    /// Unix time in milliseconds when it happened.
    pub created_at: u64,
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<veza_signaling::ParticipantInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
    /// Why a participant left, or why a session ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<veza_signaling::TrackInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
    /// Extra detail (an export's state and files, a session's metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl Event {
    pub fn new(event: EventKind, session_id: &str) -> Event {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let created_at = unix_ms();
        Event {
            id: format!("EV_{created_at:x}_{n}"),
            event,
            created_at,
            session_id: session_id.to_owned(),
            participant: None,
            participant_id: None,
            reason: None,
            track: None,
            recording_id: None,
            export_id: None,
            detail: None,
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Delivery counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Deliveries given up after every retry.
    pub failed: AtomicU64,
    pub retries: AtomicU64,
}

/// The sending side: cheap to clone; a disabled one (no URLs) ignores events.
#[derive(Clone, Default)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Event>>,
    counters: Arc<Counters>,
}

impl Webhooks {
    /// Starts the delivery task (on the current Tokio runtime) when URLs are configured.
    pub fn start(config: &WebhooksConfig) -> anyhow::Result<Webhooks> {
        let counters = Arc::new(Counters::default());
        if config.urls.is_empty() {
            return Ok(Webhooks { tx: None, counters });
        }
        let key = config.key.as_deref().filter(|k| !k.is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "webhooks.key is required when webhooks.urls is set (the HS256 secret events are signed with)"
            )
        })?;
        let http = reqwest::Client::builder().timeout(config.timeout).build()?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let delivery = Delivery {
            http,
            urls: config.urls.clone(),
            key: EncodingKey::from_secret(key.as_bytes()),
            retries: config.retries,
            backoff: config.backoff,
            counters: counters.clone(),
        };
        tokio::spawn(delivery.run(rx));
        Ok(Webhooks { tx: Some(tx), counters })
    }

    /// Queues an event; never blocks. A full queue drops it (counted).
    pub fn emit(&self, event: Event) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("veza_webhook_events_dropped_total").increment(1);
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// The `Authorization` JWT's claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct WebhookClaims {
    pub iss: String,
    /// Base64 (standard, padded) SHA-256 of the exact body bytes.
    pub sha256: String,
    pub iat: u64,
    pub exp: u64,
}

/// `base64(SHA-256(body))`, the `sha256` claim.
pub fn body_hash(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
}

/// The `Authorization` header value for `body`.
pub fn sign(key: &EncodingKey, body: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
    let now = crate::auth::unix_now();
    let claims =
        WebhookClaims { iss: "veza-sfu".to_owned(), sha256: body_hash(body), iat: now, exp: now + TOKEN_TTL.as_secs() };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
}

struct Delivery {
    http: reqwest::Client,
    urls: Vec<String>,
    key: EncodingKey,
    retries: u32,
    backoff: Duration,
    counters: Arc<Counters>,
}

impl Delivery {
    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        while let Some(event) = rx.recv().await {
            let body = match serde_json::to_vec(&event) {
                Ok(b) => b,
                Err(e) => {
                    warn!("webhook event not serialisable: {e}");
                    continue;
                }
            };
            for url in &self.urls {
                self.deliver(url, &event, &body).await;
            }
        }
    }

    /// POSTs until a 2xx answer or the retries run out.
    async fn deliver(&self, url: &str, event: &Event, body: &[u8]) {
        let mut wait = self.backoff;
        for attempt in 0..=self.retries {
            if attempt > 0 {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            match self.post(url, body).await {
                Ok(()) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("veza_webhook_delivered_total").increment(1);
                    return;
                }
                Err(e) => debug!(url, id = %event.id, attempt, "webhook delivery failed: {e}"),
            }
        }
        warn!(url, id = %event.id, event = ?event.event, "webhook given up after {} retries", self.retries);
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("veza_webhook_failed_total").increment(1);
    }

    async fn post(&self, url: &str, body: &[u8]) -> anyhow::Result<()> {
        let token = sign(&self.key, body)?;
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/webhook+json")
            .header(reqwest::header::AUTHORIZATION, token)
            .body(body.to_vec())
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "HTTP {status}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_hash_is_base64_sha256() {
        // echo -n 'abc' | openssl dgst -sha256 -binary | base64
        assert_eq!(body_hash(b"abc"), "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
    }

    #[test]
    fn events_serialise_with_snake_case_kind() {
        let e = Event::new(EventKind::ParticipantJoined, "jam");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "participant_joined");
        assert_eq!(v["session_id"], "jam");
        assert!(v.get("track").is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let config = WebhooksConfig {
            urls: vec!["http://127.0.0.1:9/never".to_owned()],
            key: Some("k".to_owned()),
            queue: 1,
            ..WebhooksConfig::default()
        };
        let w = Webhooks::start(&config).unwrap();
        // The delivery task cannot run before this test yields: one fits, two are dropped.
        for _ in 0..3 {
            w.emit(Event::new(EventKind::SessionStarted, "s"));
        }
        assert_eq!(w.counters().dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_key_is_required_with_urls() {
        let config = WebhooksConfig { urls: vec!["http://127.0.0.1:9/".to_owned()], ..WebhooksConfig::default() };
        assert!(Webhooks::start(&config).is_err());
    }

    #[test]
    fn disabled_webhooks_ignore_events() {
        let w = Webhooks::start(&WebhooksConfig::default()).unwrap();
        assert!(!w.enabled());
        w.emit(Event::new(EventKind::SessionStarted, "s"));
        assert_eq!(w.counters().dropped.load(Ordering::Relaxed), 0);
    }
}
