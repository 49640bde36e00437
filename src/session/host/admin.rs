//! What the Veza API does to sessions over REST, carried out on the session's worker:
//! create, list, inspect, end, kick, server-side mute and live grant changes.

use serde::Serialize;
use veza_signaling::{Grants, ParticipantInfo};

use super::*;

/// Per-session settings the Veza API chose (defaults for auto-created sessions).
#[derive(Debug, Clone, Default)]
pub(super) struct SessionSettings {
    /// Overrides `sessions.max_participants`.
    pub max_participants: Option<usize>,
    pub metadata: serde_json::Value,
    /// Created over REST: lasts, empty or not, until `DELETE /v1/sessions/{id}`.
    pub persistent: bool,
    pub auto_record: bool,
    pub created_at_ms: u64,
}

/// `POST /v1/sessions`, validated.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub max_participants: Option<usize>,
    pub metadata: serde_json::Value,
    pub auto_record: bool,
}

/// A session as the REST API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub id: String,
    pub created_at_ms: u64,
    pub max_participants: usize,
    pub metadata: serde_json::Value,
    pub auto_record: bool,
    /// Set while the session is recorded.
    pub recording_id: Option<String>,
    pub num_participants: usize,
    pub participants: Vec<ParticipantView>,
}

/// A participant as the REST API shows it: what others see, plus state and counters.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ParticipantView {
    #[serde(flatten)]
    pub info: ParticipantInfo,
    /// Muted by themselves (`mute` message).
    pub self_muted: bool,
    /// Muted by the Veza API: nothing they send is forwarded.
    pub admin_muted: bool,
    pub joined_at_ms: u64,
    pub rtp_packets_received: u64,
    pub rtp_bytes_received: u64,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AdminError {
    #[error("session {0:?} not found")]
    SessionNotFound(String),
    #[error("session {0:?} already exists")]
    SessionExists(String),
    #[error("participant {0:?} not found in this session")]
    ParticipantNotFound(String),
    #[error("this server already hosts its maximum of {0} sessions (sessions.max_sessions)")]
    ServerFull(usize),
}

impl AdminError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AdminError::SessionNotFound(_) => ErrorCode::SessionNotFound,
            AdminError::SessionExists(_) => ErrorCode::SessionExists,
            AdminError::ParticipantNotFound(_) => ErrorCode::ParticipantNotFound,
            AdminError::ServerFull(_) => ErrorCode::ServerFull,
        }
    }
}

impl Host {
    /// Adds an empty session and announces it (webhook `session_started`), if the node has
    /// room for another one.
    pub(super) fn create_session(&mut self, id: &str, mut settings: SessionSettings) -> Result<(), AdminError> {
        if !self.quota.try_acquire() {
            return Err(AdminError::ServerFull(self.quota.max()));
        }
        settings.created_at_ms = unix_ms();
        let session =
            Session { members: Vec::new(), chat: ChatRoom::new(self.config.chat.history), recording: None, settings };
        self.sessions.insert(id.to_owned(), session);
        info!(session = %id, "session started");
        self.webhooks.emit(Event::new(EventKind::SessionStarted, id));
        Ok(())
    }

    /// Removes a session's state (its members must be gone already) and announces its end.
    pub(super) fn end_session_state(&mut self, id: &str, reason: &str) {
        if self.sessions.remove(id).is_some() {
            self.quota.release();
            info!(session = %id, reason, "session ended");
            self.webhooks.emit(Event { reason: Some(reason.to_owned()), ..Event::new(EventKind::SessionEnded, id) });
        }
    }

    /// Where this worker's events go (sent once by the server before any join).
    pub fn attach_webhooks(&mut self, webhooks: crate::webhook::Webhooks) {
        self.webhooks = webhooks;
    }

    /// `POST /v1/sessions`: a session that lasts until it is ended.
    pub fn create_session_admin(&mut self, new: NewSession) -> Result<SessionView, AdminError> {
        if self.sessions.contains_key(&new.id) {
            return Err(AdminError::SessionExists(new.id));
        }
        let settings = SessionSettings {
            max_participants: new.max_participants,
            metadata: new.metadata,
            persistent: true,
            auto_record: new.auto_record,
            created_at_ms: 0,
        };
        self.create_session(&new.id, settings)?;
        self.session_view(&new.id).ok_or(AdminError::SessionNotFound(new.id))
    }

    pub fn session_views(&self) -> Vec<SessionView> {
        self.sessions.keys().filter_map(|id| self.session_view(id)).collect()
    }

    pub fn session_view(&self, id: &str) -> Option<SessionView> {
        let s = self.sessions.get(id)?;
        let participants: Vec<ParticipantView> =
            s.members.iter().filter_map(|k| self.participants.get(*k)).map(participant_view).collect();
        Some(SessionView {
            id: id.to_owned(),
            created_at_ms: s.settings.created_at_ms,
            max_participants: s.settings.max_participants.unwrap_or(self.config.sessions.max_participants),
            metadata: s.settings.metadata.clone(),
            auto_record: s.settings.auto_record,
            recording_id: s.recording.as_ref().map(|r| r.id.clone()),
            num_participants: participants.len(),
            participants,
        })
    }

    /// `DELETE /v1/sessions/{id}`: everyone gets `session_ended` and is disconnected.
    pub fn end_session(&mut self, now: Instant, id: &str) -> Result<(), AdminError> {
        let members = self.members_of(id);
        if !self.sessions.contains_key(id) {
            return Err(AdminError::SessionNotFound(id.to_owned()));
        }
        let ended = ServerMessage::SessionEnded { reason: "ended by the Veza API".to_owned() };
        for &m in &members {
            self.send(m, ended.clone());
        }
        // Out of the map first: members leave without telling each other one by one.
        let session = self.sessions.remove(id);
        for m in members {
            self.remove_participant(now, m, LeaveReason::SessionEnded);
        }
        if let Some(session) = session {
            self.sessions.insert(id.to_owned(), session);
            self.end_session_state(id, "ended by the Veza API");
        }
        self.finish_pass(now);
        Ok(())
    }

    /// `POST .../participants/{pid}/kick`: they are told (`participant_left` about
    /// themselves, reason `kicked`) and disconnected; the others get `participant_left`.
    pub fn kick(&mut self, now: Instant, session: &str, participant: &str) -> Result<(), AdminError> {
        let key = self.member(session, participant)?;
        let pid = self.participants[key].id.clone();
        self.send(key, ServerMessage::ParticipantLeft { participant_id: pid, reason: LeaveReason::Kicked });
        self.remove_participant(now, key, LeaveReason::Kicked);
        self.finish_pass(now);
        Ok(())
    }

    /// `POST .../participants/{pid}/mute`: forwarding of their tracks stops (or resumes);
    /// everyone, the musician included, gets `track_muted`.
    pub fn admin_mute(&mut self, session: &str, participant: &str, muted: bool) -> Result<ParticipantView, AdminError> {
        let key = self.member(session, participant)?;
        let p = &mut self.participants[key];
        if p.admin_muted != muted {
            p.admin_muted = muted;
            let shown = muted || p.muted;
            let pid = p.id.clone();
            let events: Vec<ServerMessage> = p
                .tracks
                .iter_mut()
                .map(|t| {
                    t.info.muted = shown;
                    ServerMessage::TrackMuted { participant_id: pid.clone(), track_id: t.info.id.clone(), muted: shown }
                })
                .collect();
            for m in self.members_of(session) {
                for e in &events {
                    self.send(m, e.clone());
                }
            }
        }
        Ok(participant_view(&self.participants[key]))
    }

    /// `PUT .../participants/{pid}/grants`: the participant gets `grants_changed`. Losing
    /// `publish` unpublishes their tracks; gaining `subscribe` subscribes them to everyone
    /// publishing, losing it stops forwarding to them. Gaining `publish` lets their next
    /// publisher offer carry audio.
    pub fn set_grants(
        &mut self,
        now: Instant,
        session: &str,
        participant: &str,
        grants: Grants,
    ) -> Result<ParticipantView, AdminError> {
        let key = self.member(session, participant)?;
        let grants = Grants { admin: false, ..grants };
        let old = std::mem::replace(&mut self.participants[key].grants, grants);
        self.send(key, ServerMessage::GrantsChanged { grants });
        if old.publish && !grants.publish {
            let tracks: Vec<String> = self.participants[key].tracks.iter().map(|t| t.remote_id.clone()).collect();
            for t in tracks {
                self.unpublish(now, key, &t);
            }
        }
        if !old.subscribe && grants.subscribe {
            for o in self.others(key) {
                let tracks: Vec<String> = self.participants[o].tracks.iter().map(|t| t.remote_id.clone()).collect();
                for t in tracks {
                    self.subscribe(now, key, o, &t);
                }
            }
        } else if old.subscribe
            && !grants.subscribe
            && let Some(dst) = self.participants[key].subscriber
        {
            self.router.remove_destination(dst);
        }
        self.finish_pass(now);
        let p = self.participants.get(key).ok_or_else(|| AdminError::ParticipantNotFound(participant.to_owned()))?;
        Ok(participant_view(p))
    }

    fn member(&self, session: &str, participant: &str) -> Result<ParticipantKey, AdminError> {
        if !self.sessions.contains_key(session) {
            return Err(AdminError::SessionNotFound(session.to_owned()));
        }
        self.by_id
            .get(participant)
            .copied()
            .filter(|k| self.participants.get(*k).is_some_and(|p| p.session == session))
            .ok_or_else(|| AdminError::ParticipantNotFound(participant.to_owned()))
    }
}

fn participant_view(p: &Participant) -> ParticipantView {
    ParticipantView {
        info: p.info(),
        self_muted: p.muted,
        admin_muted: p.admin_muted,
        joined_at_ms: p.joined_at_ms,
        rtp_packets_received: p.rtp_packets,
        rtp_bytes_received: p.rtp_bytes,
    }
}

/// A leave reason as its wire name (webhook `reason`).
pub(super) fn leave_reason_name(reason: LeaveReason) -> String {
    serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
