//! Chat messages carried on the `chat` data channel.

use serde::{Deserialize, Serialize};

use crate::protocol::ErrorCode;

/// What a client sends on its chat channel. Any other field (a claimed sender, id or time) is
/// ignored: the server stamps those itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatIn {
    Chat { text: String },
}

/// Who sent a chat message, as stamped by the server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
pub struct ChatSender {
    pub id: String,
    pub name: String,
}

/// What the server relays on every participant's chat channel (and replays in `joined`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatOut {
    Chat {
        /// Increases by one per message within a session: the order everyone sees.
        #[cfg_attr(feature = "typescript", ts(type = "number"))]
        id: u64,
        from: ChatSender,
        text: String,
        /// Server time, milliseconds since the Unix epoch.
        #[cfg_attr(feature = "typescript", ts(type = "number"))]
        ts: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ChatOut {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
