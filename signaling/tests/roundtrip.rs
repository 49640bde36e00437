//! Property tests of the wire protocol: every message survives serialise → parse unchanged, and
//! no text at all makes the parsers panic; what they refuse comes back as a typed error.

use proptest::prelude::*;
use veza_signaling::{
    ChatIn, ChatOut, ChatSender, ClientMessage, CodecProfile, ErrorCode, Grants, IceCandidate, IceServer, Joined,
    LeaveReason, ParseError, ParticipantInfo, PcTarget, ServerMessage, TrackInfo,
};

/// Any text, control characters, quotes and non-BMP characters included.
fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

/// A timestamp as a client might send it: any finite number (JSON has no NaN or infinity).
fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("JSON numbers are finite", |v| v.is_finite())
}

fn pc_target() -> impl Strategy<Value = PcTarget> {
    prop_oneof![Just(PcTarget::Publisher), Just(PcTarget::Subscriber)]
}

fn ice_candidate() -> impl Strategy<Value = IceCandidate> {
    (text(), proptest::option::of(text()), proptest::option::of(any::<u16>()), proptest::option::of(text())).prop_map(
        |(candidate, sdp_mid, sdp_mline_index, username_fragment)| IceCandidate {
            candidate,
            sdp_mid,
            sdp_mline_index,
            username_fragment,
        },
    )
}

fn grants() -> impl Strategy<Value = Grants> {
    any::<[bool; 5]>().prop_map(|[publish, subscribe, chat, record, admin]| Grants {
        publish,
        subscribe,
        chat,
        record,
        admin,
    })
}

fn track() -> impl Strategy<Value = TrackInfo> {
    (text(), text(), any::<bool>()).prop_map(|(id, kind, muted)| TrackInfo { id, kind, muted })
}

fn participant() -> impl Strategy<Value = ParticipantInfo> {
    (text(), text(), text(), grants(), proptest::collection::vec(track(), 0..3))
        .prop_map(|(id, user, name, grants, tracks)| ParticipantInfo { id, user, name, grants, tracks })
}

fn ice_server() -> impl Strategy<Value = IceServer> {
    (proptest::collection::vec(text(), 0..3), proptest::option::of(text()), proptest::option::of(text()))
        .prop_map(|(urls, username, credential)| IceServer { urls, username, credential })
}

fn codec() -> impl Strategy<Value = CodecProfile> {
    (text(), any::<u32>(), any::<u16>(), any::<u32>(), any::<u32>(), text()).prop_map(
        |(mime_type, clock_rate, channels, ptime_ms, max_average_bitrate, fmtp)| CodecProfile {
            mime_type,
            clock_rate,
            channels,
            ptime_ms,
            max_average_bitrate,
            fmtp,
        },
    )
}

/// Every error code. `_every_code_is_listed` fails to compile when one is added and not here.
const ERROR_CODES: &[ErrorCode] = {
    use ErrorCode::*;
    &[
        TokenMissing,
        TokenMalformed,
        TokenBadSignature,
        TokenExpired,
        TokenNotYetValid,
        TokenWrongAlgorithm,
        TokenWrongIssuer,
        TokenWrongAudience,
        TokenInvalidClaims,
        TokenTooLarge,
        SessionNotFound,
        SessionFull,
        ServerFull,
        NotReady,
        Draining,
        JoinRateLimited,
        ResumeExpired,
        MalformedMessage,
        UnknownMessageType,
        MessageTooLarge,
        RateLimited,
        PublishNotAllowed,
        TrackLimit,
        InvalidSdp,
        NegotiationFailed,
        InvalidCandidate,
        ChatNotAllowed,
        ChatTooLong,
        ChatEmpty,
        ChatRateLimited,
        RecordNotAllowed,
        RecordingNotFound,
        RecordingActive,
        ExportNotFound,
        InvalidRequest,
        Forbidden,
        ParticipantNotFound,
        SessionExists,
        Internal,
    ]
};

fn _every_code_is_listed(code: ErrorCode) {
    use ErrorCode::*;
    match code {
        TokenMissing | TokenMalformed | TokenBadSignature | TokenExpired | TokenNotYetValid | TokenWrongAlgorithm
        | TokenWrongIssuer | TokenWrongAudience | TokenInvalidClaims | TokenTooLarge | SessionNotFound
        | SessionFull | ServerFull | NotReady | Draining | JoinRateLimited | ResumeExpired | MalformedMessage
        | UnknownMessageType | MessageTooLarge | RateLimited | PublishNotAllowed | TrackLimit | InvalidSdp
        | NegotiationFailed | InvalidCandidate | ChatNotAllowed | ChatTooLong | ChatEmpty | ChatRateLimited
        | RecordNotAllowed | RecordingNotFound | RecordingActive | ExportNotFound | InvalidRequest | Forbidden
        | ParticipantNotFound | SessionExists | Internal => {}
    }
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    proptest::sample::select(ERROR_CODES)
}

fn leave_reason() -> impl Strategy<Value = LeaveReason> {
    use LeaveReason::*;
    proptest::sample::select(&[Left, Disconnected, MediaFailed, TooSlow, Kicked, SessionEnded][..])
}

/// Every client message. A new variant makes `client_message_kind` fail to compile until it is
/// added here.
fn client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        text().prop_map(|sdp| ClientMessage::Offer { sdp }),
        text().prop_map(|sdp| ClientMessage::Answer { sdp }),
        (pc_target(), ice_candidate()).prop_map(|(target, candidate)| ClientMessage::Candidate { target, candidate }),
        any::<bool>().prop_map(|muted| ClientMessage::Mute { muted }),
        proptest::option::of(finite()).prop_map(|ts| ClientMessage::Ping { ts }),
        Just(ClientMessage::Leave),
        Just(ClientMessage::StartRecording),
        Just(ClientMessage::StopRecording),
        Just(ClientMessage::IceRestart),
    ]
}

fn client_message_kind(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Offer { .. } => "offer",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Mute { .. } => "mute",
        ClientMessage::Ping { .. } => "ping",
        ClientMessage::Leave => "leave",
        ClientMessage::StartRecording => "start_recording",
        ClientMessage::StopRecording => "stop_recording",
        ClientMessage::IceRestart => "ice_restart",
    }
}

fn chat_out() -> impl Strategy<Value = ChatOut> {
    prop_oneof![
        (any::<u64>(), text(), text(), text(), any::<u64>()).prop_map(|(id, from_id, name, text, ts)| ChatOut::Chat {
            id,
            from: ChatSender { id: from_id, name },
            text,
            ts,
        }),
        (error_code(), text()).prop_map(|(code, message)| ChatOut::Error { code, message }),
    ]
}

fn joined() -> impl Strategy<Value = Joined> {
    (
        any::<u32>(),
        text(),
        participant(),
        proptest::collection::vec(participant(), 0..3),
        proptest::collection::vec(ice_server(), 0..2),
        codec(),
        proptest::collection::vec(chat_out(), 0..3),
        (text(), any::<u64>()),
    )
        .prop_map(
            |(
                protocol_version,
                session_id,
                participant,
                participants,
                ice_servers,
                codec,
                chat_history,
                (resume_token, resume_grace_ms),
            )| Joined {
                protocol_version,
                session_id,
                participant,
                participants,
                ice_servers,
                codec,
                chat_history,
                resume_token,
                resume_grace_ms,
            },
        )
}

/// Every server message. A new variant makes `server_message_kind` fail to compile until it is
/// added here.
fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        joined().prop_map(|j| ServerMessage::Joined(Box::new(j))),
        text().prop_map(|participant_id| ServerMessage::Resumed { participant_id }),
        text().prop_map(|sdp| ServerMessage::Answer { sdp }),
        text().prop_map(|sdp| ServerMessage::Offer { sdp }),
        participant().prop_map(|participant| ServerMessage::ParticipantJoined { participant }),
        (text(), leave_reason())
            .prop_map(|(participant_id, reason)| ServerMessage::ParticipantLeft { participant_id, reason }),
        (text(), track()).prop_map(|(participant_id, track)| ServerMessage::TrackPublished { participant_id, track }),
        (text(), text())
            .prop_map(|(participant_id, track_id)| ServerMessage::TrackUnpublished { participant_id, track_id }),
        (text(), text(), any::<bool>()).prop_map(|(participant_id, track_id, muted)| ServerMessage::TrackMuted {
            participant_id,
            track_id,
            muted
        }),
        proptest::option::of(finite()).prop_map(|ts| ServerMessage::Pong { ts }),
        (error_code(), text()).prop_map(|(code, message)| ServerMessage::Error { code, message }),
        (any::<u64>(), text())
            .prop_map(|(reconnect_within_ms, message)| ServerMessage::Draining { reconnect_within_ms, message }),
        text().prop_map(|recording_id| ServerMessage::RecordingStarted { recording_id }),
        text().prop_map(|recording_id| ServerMessage::RecordingStopped { recording_id }),
        text().prop_map(|reason| ServerMessage::SessionEnded { reason }),
        grants().prop_map(|grants| ServerMessage::GrantsChanged { grants }),
    ]
}

fn server_message_kind(m: &ServerMessage) -> &'static str {
    match m {
        ServerMessage::Joined(_) => "joined",
        ServerMessage::Resumed { .. } => "resumed",
        ServerMessage::Answer { .. } => "answer",
        ServerMessage::Offer { .. } => "offer",
        ServerMessage::ParticipantJoined { .. } => "participant_joined",
        ServerMessage::ParticipantLeft { .. } => "participant_left",
        ServerMessage::TrackPublished { .. } => "track_published",
        ServerMessage::TrackUnpublished { .. } => "track_unpublished",
        ServerMessage::TrackMuted { .. } => "track_muted",
        ServerMessage::Pong { .. } => "pong",
        ServerMessage::Error { .. } => "error",
        ServerMessage::Draining { .. } => "draining",
        ServerMessage::RecordingStarted { .. } => "recording_started",
        ServerMessage::RecordingStopped { .. } => "recording_stopped",
        ServerMessage::SessionEnded { .. } => "session_ended",
        ServerMessage::GrantsChanged { .. } => "grants_changed",
    }
}

/// A JSON object that names a known client message type but whose other fields are anything.
fn known_type_with_any_fields() -> impl Strategy<Value = String> {
    let kinds = proptest::sample::select(veza_signaling::CLIENT_MESSAGE_TYPES);
    let value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        finite().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({"candidate": 1})),
    ];
    let field = proptest::sample::select(&["sdp", "target", "candidate", "muted", "ts", "extra"][..]);
    (kinds, proptest::collection::vec((field, value), 0..4)).prop_map(|(kind, fields)| {
        let mut object = serde_json::Map::new();
        object.insert("type".to_owned(), kind.into());
        for (name, value) in fields {
            object.insert(name.to_owned(), value);
        }
        serde_json::Value::Object(object).to_string()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn client_messages_round_trip(message in client_message()) {
        let json = serde_json::to_string(&message).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(value["type"].as_str(), Some(client_message_kind(&message)));
        prop_assert_eq!(ClientMessage::parse(&json), Ok(message));
    }

    #[test]
    fn server_messages_round_trip(message in server_message()) {
        let json = message.to_json();
        let back: ServerMessage = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back.clone(), message);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(value["type"].as_str(), Some(server_message_kind(&back)));
    }

    #[test]
    fn chat_messages_round_trip(text in text(), out in chat_out()) {
        let chat_in = ChatIn::Chat { text };
        let json = serde_json::to_string(&chat_in).unwrap();
        prop_assert_eq!(serde_json::from_str::<ChatIn>(&json).unwrap(), chat_in);
        prop_assert_eq!(serde_json::from_str::<ChatOut>(&out.to_json()).unwrap(), out);
    }

    #[test]
    fn any_text_parses_or_gets_a_typed_error(text in text()) {
        if let Err(e) = ClientMessage::parse(&text) {
            prop_assert!(matches!(e, ParseError::Malformed(_)), "{e:?}");
            prop_assert_eq!(e.code(), ErrorCode::MalformedMessage);
        }
        prop_assert!(serde_json::from_str::<ChatIn>(&text).is_err());
    }

    #[test]
    fn any_json_object_parses_or_gets_a_typed_error(
        kind in prop_oneof![text(), proptest::sample::select(veza_signaling::CLIENT_MESSAGE_TYPES).prop_map(str::to_owned)],
        json in known_type_with_any_fields(),
    ) {
        let unknown = serde_json::json!({ "type": kind }).to_string();
        match ClientMessage::parse(&unknown) {
            Ok(m) => prop_assert_eq!(client_message_kind(&m), kind.as_str()),
            Err(ParseError::UnknownType(t)) => {
                prop_assert_eq!(&t, &kind);
                prop_assert_eq!(ParseError::UnknownType(t).code(), ErrorCode::UnknownMessageType);
            }
            Err(ParseError::InvalidFields { kind: k, .. }) => prop_assert_eq!(k, kind),
            Err(e) => prop_assert!(false, "{unknown}: {e:?}"),
        }
        match ClientMessage::parse(&json) {
            Ok(m) => prop_assert_eq!(ClientMessage::parse(&serde_json::to_string(&m).unwrap()), Ok(m)),
            Err(e) => {
                prop_assert!(matches!(e, ParseError::InvalidFields { .. }), "{json}: {e:?}");
                prop_assert_eq!(e.code(), ErrorCode::MalformedMessage);
            }
        }
    }
}
