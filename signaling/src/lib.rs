//! The Veza SFU signaling protocol: versioned JSON messages, and an async client for tools and tests.
//!
//! Signaling runs as JSON text frames over one WebSocket (`GET /v1/ws`). Every message is an
//! object with a `type` field. Chat runs over a WebRTC data channel labelled [`CHAT_LABEL`] and
//! uses the message types in [`chat`].

pub mod chat;
pub mod client;
pub mod protocol;

pub use chat::{ChatIn, ChatOut, ChatSender};
pub use client::{Client, ClientError};
pub use protocol::*;
