//! Signaling messages exchanged over the WebSocket, as serde types.

use serde::{Deserialize, Serialize};

use crate::chat::ChatOut;

/// Version of this protocol. Bumped on any incompatible change; sent in `joined`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Label of the data channel a client opens on its publisher connection for chat.
pub const CHAT_LABEL: &str = "chat";

/// Which of a participant's two peer connections a message is about.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum PcTarget {
    /// The connection the client offers: its own audio and the chat channel.
    Publisher,
    /// The connection the server offers: everyone else's audio.
    Subscriber,
}

/// An ICE candidate as the browser's `RTCIceCandidate.toJSON()` gives it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "typescript", ts(optional))]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "sdpMLineIndex")]
    #[cfg_attr(feature = "typescript", ts(optional))]
    pub sdp_mline_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "typescript", ts(optional))]
    pub username_fragment: Option<String>,
}

/// What a participant may do in a session. Absent grants in a token default to `true`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Grants {
    #[serde(default = "yes")]
    pub publish: bool,
    #[serde(default = "yes")]
    pub subscribe: bool,
    #[serde(default = "yes")]
    pub chat: bool,
    /// May start and stop recording the session (`start_recording` / `stop_recording`), and
    /// export and download its recordings over REST. Default: false.
    #[serde(default)]
    pub record: bool,
    /// A service token of the Veza API (no `session` claim): the REST API on every session.
    /// Never valid for joining. Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[cfg_attr(feature = "typescript", ts(skip))]
    pub admin: bool,
}

fn yes() -> bool {
    true
}

impl Default for Grants {
    fn default() -> Self {
        Grants { publish: true, subscribe: true, chat: true, record: false, admin: false }
    }
}

/// A published audio track, as others see it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrackInfo {
    /// Server-assigned id; also the MediaStreamTrack id in the subscriber connection's SDP.
    pub id: String,
    pub kind: String,
    pub muted: bool,
}

/// A participant, as others see them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParticipantInfo {
    /// Server-assigned id; also the MediaStream id (msid) of their tracks in subscriber SDP.
    pub id: String,
    pub user: String,
    pub name: String,
    pub grants: Grants,
    pub tracks: Vec<TrackInfo>,
}

/// An ICE server entry, shaped like the browser's `RTCIceServer`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "typescript", ts(optional))]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "typescript", ts(optional))]
    pub credential: Option<String>,
}

/// The audio profile the server negotiates: music, not voice.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
pub struct CodecProfile {
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
    /// Opus packet duration the server asks for, in milliseconds.
    pub ptime_ms: u32,
    pub max_average_bitrate: u32,
    /// The exact `a=fmtp` parameters the server puts in its SDP.
    pub fmtp: String,
}

/// The first message on a signaling socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
pub struct Joined {
    pub protocol_version: u32,
    pub session_id: String,
    /// You.
    pub participant: ParticipantInfo,
    /// Everyone else already in the session, with their tracks.
    pub participants: Vec<ParticipantInfo>,
    pub ice_servers: Vec<IceServer>,
    pub codec: CodecProfile,
    /// The most recent chat messages, oldest first.
    pub chat_history: Vec<ChatOut>,
    /// Secret for picking this participation back up if the signaling socket drops: reconnect
    /// with `?resume=<resume_token>` (and a valid token for the same user and session) within
    /// `resume_grace_ms`. Media keeps flowing meanwhile and nobody sees you leave.
    pub resume_token: String,
    #[cfg_attr(feature = "typescript", ts(type = "number"))]
    pub resume_grace_ms: u64,
}

/// Why a participant left.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// They sent `leave`.
    Left,
    /// Their signaling socket closed without `leave`.
    Disconnected,
    /// Their media connection failed or timed out.
    MediaFailed,
    /// They could not keep up with signaling messages.
    TooSlow,
    /// The Veza API removed them (`POST /v1/sessions/{id}/participants/{pid}/kick`).
    Kicked,
    /// The session was ended (`DELETE /v1/sessions/{id}`).
    SessionEnded,
}

/// Stable, machine-readable error codes, on the wire as snake_case strings.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Authentication (HTTP 401 before the upgrade).
    TokenMissing,
    TokenMalformed,
    TokenBadSignature,
    TokenExpired,
    TokenNotYetValid,
    TokenWrongAlgorithm,
    TokenWrongIssuer,
    TokenWrongAudience,
    TokenInvalidClaims,
    /// The token is longer than `auth.max_token_bytes`.
    TokenTooLarge,
    // Joining.
    SessionNotFound,
    SessionFull,
    ServerFull,
    NotReady,
    /// The server is shutting down: join again (another node takes the join).
    Draining,
    /// Too many join attempts from this address (`http.join_attempts_per_minute`): HTTP 429
    /// with `Retry-After`.
    JoinRateLimited,
    /// `?resume=` names no participation waiting to be resumed (the grace period ran out, or
    /// it never existed): join afresh without `resume`.
    ResumeExpired,
    // Messages.
    MalformedMessage,
    UnknownMessageType,
    MessageTooLarge,
    RateLimited,
    // Media negotiation.
    PublishNotAllowed,
    TrackLimit,
    InvalidSdp,
    NegotiationFailed,
    InvalidCandidate,
    // Chat.
    ChatNotAllowed,
    ChatTooLong,
    ChatEmpty,
    ChatRateLimited,
    // Recording and export.
    RecordNotAllowed,
    RecordingNotFound,
    RecordingActive,
    ExportNotFound,
    InvalidRequest,
    Forbidden,
    // Session management (REST).
    ParticipantNotFound,
    SessionExists,
    // Anything else.
    Internal,
}

/// Messages a client sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// An offer for the publisher connection (first one or a renegotiation). Answered by `answer`.
    Offer { sdp: String },
    /// The answer to the server's latest subscriber `offer`.
    Answer { sdp: String },
    /// A trickled ICE candidate for one of the two connections.
    Candidate { target: PcTarget, candidate: IceCandidate },
    /// Mute or unmute all of my published tracks; others get `track_muted`.
    Mute { muted: bool },
    /// Application-level keepalive; answered by `pong` with the same `ts`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "typescript", ts(optional))]
        ts: Option<f64>,
    },
    /// I am leaving; the server closes the socket after this.
    Leave,
    /// Start recording the session (needs the `record` grant); everyone gets `recording_started`.
    StartRecording,
    /// Stop the session's recording (needs the `record` grant); everyone gets `recording_stopped`.
    StopRecording,
    /// Restart ICE on the subscriber connection (after a network change): the server sends a
    /// new `offer` with fresh ICE credentials, to be answered as usual. The publisher
    /// connection restarts the other way round: the client offers with `iceRestart`.
    IceRestart,
}

/// Every `type` a client may send, for telling unknown types from malformed known ones.
pub const CLIENT_MESSAGE_TYPES: &[&str] =
    &["offer", "answer", "candidate", "mute", "ping", "leave", "start_recording", "stop_recording", "ice_restart"];

/// Why a client frame could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("message is not a JSON object with a string \"type\": {0}")]
    Malformed(String),
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("invalid {kind:?} message: {detail}")]
    InvalidFields { kind: String, detail: String },
}

impl ParseError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::UnknownType(_) => ErrorCode::UnknownMessageType,
            _ => ErrorCode::MalformedMessage,
        }
    }
}

impl ClientMessage {
    /// Parses one text frame, telling malformed JSON, unknown types and bad fields apart.
    pub fn parse(text: &str) -> Result<ClientMessage, ParseError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ParseError::Malformed(e.to_string()))?;
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| ParseError::Malformed("missing \"type\"".to_owned()))?
            .to_owned();
        if !CLIENT_MESSAGE_TYPES.contains(&kind.as_str()) {
            return Err(ParseError::UnknownType(kind));
        }
        serde_json::from_value(value).map_err(|e| ParseError::InvalidFields { kind, detail: e.to_string() })
    }
}

/// Messages the server sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined(Box<Joined>),
    /// The first message on a socket opened with `?resume=`: the same participation goes on.
    /// Every message the server had for you while you were away follows, in order.
    Resumed {
        participant_id: String,
    },
    /// The answer to the client's publisher offer.
    Answer {
        sdp: String,
    },
    /// A (re)offer for the subscriber connection; reply with `answer`.
    Offer {
        sdp: String,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
        reason: LeaveReason,
    },
    TrackPublished {
        participant_id: String,
        track: TrackInfo,
    },
    TrackUnpublished {
        participant_id: String,
        track_id: String,
    },
    TrackMuted {
        participant_id: String,
        track_id: String,
        muted: bool,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "typescript", ts(optional))]
        ts: Option<f64>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The server is shutting down. Nothing is cut now: finish the piece, then join again
    /// (the API sends the new join to another node). The server closes remaining connections
    /// `reconnect_within_ms` after this message. Sent once; joins are refused from then on.
    Draining {
        #[cfg_attr(feature = "typescript", ts(type = "number"))]
        reconnect_within_ms: u64,
        message: String,
    },
    /// The session is being recorded (sent to everyone, and to late joiners after `joined`).
    RecordingStarted {
        recording_id: String,
    },
    RecordingStopped {
        recording_id: String,
    },
    /// The Veza API ended the session: the server closes the socket right after this.
    SessionEnded {
        reason: String,
    },
    /// The Veza API changed your grants. Promoted to `publish`: you may now offer audio on
    /// the publisher connection. Demoted: your tracks are unpublished (stop sending).
    GrantsChanged {
        grants: Grants,
    },
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error { code, message: message.into() }
    }

    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: no maps with non-string keys, no foreign types.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":"serialisation failed"}"#.to_owned())
    }
}

/// The JSON body of an HTTP error (e.g. the 401 before a WebSocket upgrade).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[cfg_attr(feature = "typescript", derive(ts_rs::TS))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HttpError {
    pub code: ErrorCode,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_malformed_unknown_and_invalid_apart() {
        assert!(matches!(ClientMessage::parse("{nope"), Err(ParseError::Malformed(_))));
        assert!(matches!(ClientMessage::parse("[1]"), Err(ParseError::Malformed(_))));
        assert_eq!(ClientMessage::parse(r#"{"type":"dance"}"#), Err(ParseError::UnknownType("dance".into())));
        assert!(matches!(ClientMessage::parse(r#"{"type":"offer"}"#), Err(ParseError::InvalidFields { .. })));
        assert_eq!(ClientMessage::parse(r#"{"type":"leave"}"#), Ok(ClientMessage::Leave));
    }

    #[test]
    fn every_client_message_type_is_listed() {
        let samples = [
            ClientMessage::Offer { sdp: String::new() },
            ClientMessage::Answer { sdp: String::new() },
            ClientMessage::Candidate { target: PcTarget::Publisher, candidate: IceCandidate::default() },
            ClientMessage::Mute { muted: true },
            ClientMessage::Ping { ts: None },
            ClientMessage::Leave,
            ClientMessage::StartRecording,
            ClientMessage::StopRecording,
            ClientMessage::IceRestart,
        ];
        for m in samples {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(ClientMessage::parse(&json), Ok(m));
        }
    }

    #[test]
    fn error_codes_are_snake_case_on_the_wire() {
        assert_eq!(serde_json::to_string(&ErrorCode::TokenExpired).unwrap(), r#""token_expired""#);
        let json = ServerMessage::error(ErrorCode::ChatRateLimited, "slow down").to_json();
        assert_eq!(json, r#"{"type":"error","code":"chat_rate_limited","message":"slow down"}"#);
    }

    #[test]
    fn absent_grants_default_to_true() {
        let g: Grants = serde_json::from_str("{}").unwrap();
        assert_eq!(g, Grants::default());
        let g: Grants = serde_json::from_str(r#"{"publish":false}"#).unwrap();
        assert!(!g.publish && g.subscribe && g.chat);
    }
}
