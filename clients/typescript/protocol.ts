// Generated from the veza-signaling crate (signaling/src) by tests/typescript.rs: do not edit.
// Regenerate with `VEZA_UPDATE_TS=1 cargo test --test typescript`.

export const PROTOCOL_VERSION = 1;
export const CHAT_LABEL = "chat";

export type ClientMessage = { "type": "offer", sdp: string, } | { "type": "answer", sdp: string, } | { "type": "candidate", target: PcTarget, candidate: IceCandidate, } | { "type": "mute", muted: boolean, } | { "type": "ping", ts?: number, } | { "type": "leave" } | { "type": "start_recording" } | { "type": "stop_recording" } | { "type": "ice_restart" };

export type ServerMessage = { "type": "joined" } & Joined | { "type": "resumed", participant_id: string, } | { "type": "answer", sdp: string, } | { "type": "offer", sdp: string, } | { "type": "participant_joined", participant: ParticipantInfo, } | { "type": "participant_left", participant_id: string, reason: LeaveReason, } | { "type": "track_published", participant_id: string, track: TrackInfo, } | { "type": "track_unpublished", participant_id: string, track_id: string, } | { "type": "track_muted", participant_id: string, track_id: string, muted: boolean, } | { "type": "pong", ts?: number, } | { "type": "error", code: ErrorCode, message: string, } | { "type": "draining", reconnect_within_ms: number, message: string, } | { "type": "recording_started", recording_id: string, } | { "type": "recording_stopped", recording_id: string, } | { "type": "session_ended", reason: string, } | { "type": "grants_changed", grants: Grants, };

export type Joined = { protocol_version: number, session_id: string, 
/**
 * You.
 */
participant: ParticipantInfo, 
/**
 * Everyone else already in the session, with their tracks.
 */
participants: Array<ParticipantInfo>, ice_servers: Array<IceServer>, codec: CodecProfile, 
/**
 * The most recent chat messages, oldest first.
 */
chat_history: Array<ChatOut>, 
/**
 * Secret for picking this participation back up if the signaling socket drops: reconnect
 * with `?resume=<resume_token>` (and a valid token for the same user and session) within
 * `resume_grace_ms`. Media keeps flowing meanwhile and nobody sees you leave.
 */
resume_token: string, resume_grace_ms: number, };

export type ParticipantInfo = { 
/**
 * Server-assigned id; also the MediaStream id (msid) of their tracks in subscriber SDP.
 */
id: string, user: string, name: string, grants: Grants, tracks: Array<TrackInfo>, };

export type TrackInfo = { 
/**
 * Server-assigned id; also the MediaStreamTrack id in the subscriber connection's SDP.
 */
id: string, kind: string, muted: boolean, };

export type Grants = { publish: boolean, subscribe: boolean, chat: boolean, 
/**
 * May start and stop recording the session (`start_recording` / `stop_recording`), and
 * export and download its recordings over REST. Default: false.
 */
record: boolean, };

export type IceServer = { urls: Array<string>, username?: string, credential?: string, };

export type IceCandidate = { candidate: string, sdpMid?: string, sdpMLineIndex?: number, usernameFragment?: string, };

export type PcTarget = "publisher" | "subscriber";

export type CodecProfile = { mime_type: string, clock_rate: number, channels: number, 
/**
 * Opus packet duration the server asks for, in milliseconds.
 */
ptime_ms: number, max_average_bitrate: number, 
/**
 * The exact `a=fmtp` parameters the server puts in its SDP.
 */
fmtp: string, };

export type LeaveReason = "left" | "disconnected" | "media_failed" | "too_slow" | "kicked" | "session_ended";

export type ErrorCode = "token_missing" | "token_malformed" | "token_bad_signature" | "token_expired" | "token_not_yet_valid" | "token_wrong_algorithm" | "token_wrong_issuer" | "token_wrong_audience" | "token_invalid_claims" | "token_too_large" | "session_not_found" | "session_full" | "server_full" | "not_ready" | "draining" | "join_rate_limited" | "resume_expired" | "malformed_message" | "unknown_message_type" | "message_too_large" | "rate_limited" | "publish_not_allowed" | "track_limit" | "invalid_sdp" | "negotiation_failed" | "invalid_candidate" | "chat_not_allowed" | "chat_too_long" | "chat_empty" | "chat_rate_limited" | "record_not_allowed" | "recording_not_found" | "recording_active" | "export_not_found" | "invalid_request" | "forbidden" | "participant_not_found" | "session_exists" | "internal";

export type HttpError = { code: ErrorCode, message: string, };

export type ChatIn = { "type": "chat", text: string, };

export type ChatOut = { "type": "chat", 
/**
 * Increases by one per message within a session: the order everyone sees.
 */
id: number, from: ChatSender, text: string, 
/**
 * Server time, milliseconds since the Unix epoch.
 */
ts: number, } | { "type": "error", code: ErrorCode, message: string, };

export type ChatSender = { id: string, name: string, };
