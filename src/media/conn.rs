//! The worker's peer connections, and which of them have work pending.

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::state::RTCPeerConnectionState;
use slab::Slab;

pub use super::demux::ConnKey;

/// A participant's key in its worker.
pub type ParticipantKey = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client offered it: their audio and chat come in here.
    Publisher,
    /// The server offered it: everyone else's audio goes out here.
    Subscriber,
}

pub struct Conn {
    pub pc: RTCPeerConnection,
    pub participant: ParticipantKey,
    pub role: Role,
    pub state: RTCPeerConnectionState,
    touched: bool,
}

/// Every connection on a worker, plus the list of those touched since the last flush: only
/// those need their events read and their output sent (no polling of idle connections).
#[derive(Default)]
pub struct Conns {
    slab: Slab<Conn>,
    touched: Vec<ConnKey>,
}

impl Conns {
    pub fn insert(&mut self, pc: RTCPeerConnection, participant: ParticipantKey, role: Role) -> ConnKey {
        let key = self.slab.insert(Conn { pc, participant, role, state: RTCPeerConnectionState::New, touched: false });
        self.touch(key);
        key
    }

    pub fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        self.touched.retain(|k| *k != key);
        self.slab.try_remove(key)
    }

    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut Conn> {
        self.slab.get_mut(key)
    }

    pub fn get(&self, key: ConnKey) -> Option<&Conn> {
        self.slab.get(key)
    }

    /// Marks a connection as having input processed or output queued.
    pub fn touch(&mut self, key: ConnKey) {
        if let Some(c) = self.slab.get_mut(key)
            && !c.touched
        {
            c.touched = true;
            self.touched.push(key);
        }
    }

    /// The i-th touched connection; the list may grow while it is walked.
    pub fn touched_at(&self, i: usize) -> Option<ConnKey> {
        self.touched.get(i).copied()
    }

    /// Takes the touched list, clearing the marks. The caller hands it back with `recycle`.
    pub fn take_touched(&mut self) -> Vec<ConnKey> {
        let list = std::mem::take(&mut self.touched);
        for k in &list {
            if let Some(c) = self.slab.get_mut(*k) {
                c.touched = false;
            }
        }
        list
    }

    /// Returns the (emptied) list so its allocation is reused.
    pub fn recycle(&mut self, mut list: Vec<ConnKey>) {
        list.clear();
        if self.touched.is_empty() {
            self.touched = list;
        }
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnKey, &mut Conn)> {
        self.slab.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}
