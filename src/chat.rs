//! Chat rules: validation, server stamping, per-session history and per-participant rate limits.

use std::collections::VecDeque;
use std::time::Instant;

use veza_signaling::{ChatIn, ChatOut, ChatSender, ErrorCode};

use crate::config::ChatConfig;

/// One session's chat: the order everyone sees and the history late joiners get.
pub struct ChatRoom {
    history: VecDeque<ChatOut>,
    capacity: usize,
    next_id: u64,
}

impl ChatRoom {
    pub fn new(capacity: usize) -> Self {
        ChatRoom { history: VecDeque::with_capacity(capacity.min(1024)), capacity, next_id: 1 }
    }

    /// Stamps an accepted message with the next id, the sender and the time, and keeps it.
    pub fn post(&mut self, from: ChatSender, text: String, unix_ms: u64) -> ChatOut {
        let msg = ChatOut::Chat { id: self.next_id, from, text, ts: unix_ms };
        self.next_id += 1;
        if self.capacity > 0 {
            if self.history.len() == self.capacity {
                self.history.pop_front();
            }
            self.history.push_back(msg.clone());
        }
        msg
    }

    pub fn history(&self) -> Vec<ChatOut> {
        self.history.iter().cloned().collect()
    }
}

/// A token bucket: `burst` messages at once, refilled at `rate` per second.
pub struct RateLimiter {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter { tokens: burst, burst, rate: rate.max(0.0), last: now }
    }

    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a chat message was refused; it goes back to the sender only.
pub fn refusal(code: ErrorCode, message: impl Into<String>) -> ChatOut {
    ChatOut::Error { code, message: message.into() }
}

/// Parses and checks what a client sent on its chat channel. Returns the text to post.
pub fn accept(raw: &[u8], cfg: &ChatConfig) -> Result<String, ChatOut> {
    let parsed: ChatIn = serde_json::from_slice(raw).map_err(|e| {
        refusal(ErrorCode::MalformedMessage, format!("expected {{\"type\":\"chat\",\"text\":...}}: {e}"))
    })?;
    let ChatIn::Chat { text } = parsed;
    if text.trim().is_empty() {
        return Err(refusal(ErrorCode::ChatEmpty, "chat message is empty"));
    }
    let chars = text.chars().count();
    if chars > cfg.max_chars {
        return Err(refusal(
            ErrorCode::ChatTooLong,
            format!("chat message has {chars} characters; the limit is {}", cfg.max_chars),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn history_keeps_the_latest_in_order() {
        let mut room = ChatRoom::new(2);
        let who = ChatSender { id: "p1".into(), name: "Ana".into() };
        for t in ["a", "b", "c"] {
            room.post(who.clone(), t.into(), 0);
        }
        let ids: Vec<u64> = room
            .history()
            .iter()
            .map(|m| match m {
                ChatOut::Chat { id, .. } => *id,
                ChatOut::Error { .. } => 0,
            })
            .collect();
        assert_eq!(ids, vec![2, 3]);
    }

    #[test]
    fn rate_limiter_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10.0, 3, t0);
        assert!((0..3).all(|_| rl.try_take(t0)));
        assert!(!rl.try_take(t0));
        assert!(rl.try_take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn accept_ignores_spoofed_fields_and_checks_length() {
        let cfg = ChatConfig { max_chars: 5, ..ChatConfig::default() };
        let raw = br#"{"type":"chat","text":"hi","from":{"id":"x","name":"Mallory"},"id":99}"#;
        assert_eq!(accept(raw, &cfg), Ok("hi".to_owned()));
        assert!(matches!(
            accept(br#"{"type":"chat","text":"toolong"}"#, &cfg),
            Err(ChatOut::Error { code: ErrorCode::ChatTooLong, .. })
        ));
        assert!(matches!(accept(b"nope", &cfg), Err(ChatOut::Error { code: ErrorCode::MalformedMessage, .. })));
    }
}
