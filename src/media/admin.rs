//! Session management commands (REST) sent to a media worker, and the engine-wide queries
//! over every worker.

use std::time::Instant;

use tokio::sync::oneshot;
use veza_signaling::Grants;

use super::{Command, MediaEngine, WorkerHandle};
use crate::session::{AdminError, Host, NewSession, ParticipantView, SessionView};

type Reply<T> = oneshot::Sender<Result<T, AdminError>>;

/// What the Veza API asks of the worker hosting a session.
pub enum AdminCommand {
    AttachWebhooks(crate::webhook::Webhooks),
    CreateSession(NewSession, Reply<SessionView>),
    ListSessions(oneshot::Sender<Vec<SessionView>>),
    GetSession(String, oneshot::Sender<Option<SessionView>>),
    EndSession(String, Reply<()>),
    Kick { session: String, participant: String, reply: Reply<()> },
    Mute { session: String, participant: String, muted: bool, reply: Reply<ParticipantView> },
    SetGrants { session: String, participant: String, grants: Grants, reply: Reply<ParticipantView> },
}

pub(super) fn execute(host: &mut Host, now: Instant, command: AdminCommand) {
    match command {
        AdminCommand::AttachWebhooks(w) => host.attach_webhooks(w),
        AdminCommand::CreateSession(new, reply) => {
            let _ = reply.send(host.create_session_admin(new));
        }
        AdminCommand::ListSessions(reply) => {
            let _ = reply.send(host.session_views());
        }
        AdminCommand::GetSession(id, reply) => {
            let _ = reply.send(host.session_view(&id));
        }
        AdminCommand::EndSession(id, reply) => {
            let _ = reply.send(host.end_session(now, &id));
        }
        AdminCommand::Kick { session, participant, reply } => {
            let _ = reply.send(host.kick(now, &session, &participant));
        }
        AdminCommand::Mute { session, participant, muted, reply } => {
            let _ = reply.send(host.admin_mute(&session, &participant, muted));
        }
        AdminCommand::SetGrants { session, participant, grants, reply } => {
            let _ = reply.send(host.set_grants(now, &session, &participant, grants));
        }
    }
}

/// The worker stopped before answering.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("media worker stopped")]
pub struct WorkerGone;

impl WorkerHandle {
    /// Sends an admin command and waits for its answer.
    pub async fn admin<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> AdminCommand) -> Result<T, WorkerGone> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Admin(make(tx))).await.map_err(|_| WorkerGone)?;
        rx.await.map_err(|_| WorkerGone)
    }
}

impl MediaEngine {
    /// Hands every worker the webhook sender (before any join, so no event is missed).
    pub async fn attach_webhooks(&self, webhooks: &crate::webhook::Webhooks) {
        for w in self.workers() {
            let _ = w.commands.send(Command::Admin(AdminCommand::AttachWebhooks(webhooks.clone()))).await;
        }
    }

    /// Every session on every worker, sorted by id.
    pub async fn sessions(&self) -> Result<Vec<SessionView>, WorkerGone> {
        let mut all = Vec::new();
        for w in self.workers() {
            all.extend(w.admin(AdminCommand::ListSessions).await?);
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }
}
