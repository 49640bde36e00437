//! Participations that may be picked back up on a new signaling socket (`?resume=`).
//!
//! Every participation registers here with a random resume token when it joins (the client
//! gets it in `joined`). A new socket that presents the token, with a valid access token for
//! the same user and session, is handed to the task that owns the participation: while its
//! old socket still looks alive (a half-open TCP connection is only noticed by the keepalive),
//! or while it is parked after the old socket dropped, waiting out `sessions.reconnect_grace`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ws::WebSocket;
use rand::Rng;
use rand::distr::Alphanumeric;
use tokio::sync::mpsc;

use crate::auth::Identity;

/// Length of a resume token: 32 alphanumerics, about 190 bits.
const TOKEN_LEN: usize = 32;

#[derive(Default)]
pub struct Resumable {
    entries: Mutex<HashMap<String, Entry>>,
    parked: AtomicUsize,
}

struct Entry {
    user: String,
    session: String,
    handoff: mpsc::Sender<Box<WebSocket>>,
}

/// Why a resume attempt was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No participation waits under this token (never existed, left, or its grace ran out).
    Unknown,
    /// The token belongs to another user or session.
    NotYours,
}

/// Where to hand a new socket: the task that owns the participation.
pub struct Handoff(mpsc::Sender<Box<WebSocket>>);

impl Handoff {
    /// Gives the socket to its participation; back if the participation ended meanwhile.
    pub fn deliver(self, socket: Box<WebSocket>) -> Result<(), Box<WebSocket>> {
        self.0.try_send(socket).map_err(|e| e.into_inner())
    }
}

/// A participation's place in the registry; removes it when dropped.
pub struct Registration<'a> {
    registry: &'a Resumable,
    pub token: String,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.token);
    }
}

impl Resumable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map stays consistent even if a holder panicked: every operation is one call.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a participation; new sockets for it arrive on the receiver.
    pub fn register(&self, identity: &Identity) -> (Registration<'_>, mpsc::Receiver<Box<WebSocket>>) {
        let token: String = rand::rng().sample_iter(&Alphanumeric).take(TOKEN_LEN).map(char::from).collect();
        // One pending socket at most: a second reconnect while one is being handed over is refused.
        let (handoff, sockets) = mpsc::channel(1);
        let entry = Entry { user: identity.user.clone(), session: identity.session.clone(), handoff };
        self.lock().insert(token.clone(), entry);
        (Registration { registry: self, token }, sockets)
    }

    /// Finds the participation `token` names, if `identity` is its owner.
    pub fn find(&self, token: &str, identity: &Identity) -> Result<Handoff, Refused> {
        let entries = self.lock();
        let entry = entries.get(token).ok_or(Refused::Unknown)?;
        if entry.user != identity.user || entry.session != identity.session {
            return Err(Refused::NotYours);
        }
        Ok(Handoff(entry.handoff.clone()))
    }

    /// Participations that could be resumed (attached or parked).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Participations whose socket dropped and that wait for a reconnect.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// Counts a participation as parked while the guard lives.
    pub fn park(&self) -> ParkedGuard<'_> {
        self.parked.fetch_add(1, Ordering::AcqRel);
        ParkedGuard(self)
    }
}

pub struct ParkedGuard<'a>(&'a Resumable);

impl Drop for ParkedGuard<'_> {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veza_signaling::Grants;

    fn ident(user: &str, session: &str) -> Identity {
        Identity { user: user.into(), session: session.into(), name: user.into(), grants: Grants::default() }
    }

    #[test]
    fn only_the_owner_finds_a_registration_and_only_while_it_lives() {
        let registry = Resumable::default();
        let ana = ident("ana", "jam");
        let (reg, _sockets) = registry.register(&ana);
        assert_eq!(reg.token.len(), TOKEN_LEN);
        assert!(registry.find(&reg.token, &ana).is_ok());
        assert_eq!(registry.find(&reg.token, &ident("bob", "jam")).err(), Some(Refused::NotYours));
        assert_eq!(registry.find(&reg.token, &ident("ana", "other")).err(), Some(Refused::NotYours));
        assert_eq!(registry.find("nope", &ana).err(), Some(Refused::Unknown));
        let token = reg.token.clone();
        drop(reg);
        assert_eq!(registry.find(&token, &ana).err(), Some(Refused::Unknown));
        assert!(registry.is_empty());
    }
}
