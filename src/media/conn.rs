//! The worker's peer connections, which of them have work pending, and when each next
//! needs its timer handled.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Instant;

use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::sansio::Protocol;
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
    /// Where its media (anything but STUN) was last sent: the remote end of the ICE-selected
    /// pair. A change means ICE moved (a network change): the demultiplexer drops the old one.
    pub media_addr: Option<SocketAddr>,
    touched: bool,
    /// The connection's own next timeout, as of the last time it was touched.
    deadline: Option<Instant>,
}

/// Every connection on a worker, plus the list of those touched since the last flush: only
/// those need their events read and their output sent, and a heap of timer deadlines, so an
/// idle connection costs nothing per loop turn.
#[derive(Default)]
pub struct Conns {
    slab: Slab<Conn>,
    touched: Vec<ConnKey>,
    /// (deadline, connection); an entry is stale once the connection's deadline moved.
    timers: BinaryHeap<Reverse<(Instant, ConnKey)>>,
}

impl Conns {
    pub fn insert(&mut self, pc: RTCPeerConnection, participant: ParticipantKey, role: Role) -> ConnKey {
        let key = self.slab.insert(Conn {
            pc,
            participant,
            role,
            state: RTCPeerConnectionState::New,
            media_addr: None,
            touched: false,
            deadline: None,
        });
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

    /// Re-reads a touched connection's next timeout (its timers may have moved).
    pub fn refresh_deadline(&mut self, key: ConnKey) {
        let Some(c) = self.slab.get_mut(key) else { return };
        let deadline = c.pc.poll_timeout();
        if deadline != c.deadline {
            c.deadline = deadline;
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, key)));
            }
        }
    }

    /// The earliest deadline of any connection.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if self.slab.get(key).is_some_and(|c| c.deadline == Some(at)) {
                return Some(at);
            }
            self.timers.pop(); // stale
        }
        None
    }

    /// Takes the next connection whose deadline has passed.
    pub fn pop_due(&mut self, now: Instant) -> Option<ConnKey> {
        while let Some(at) = self.next_deadline() {
            if at > now {
                return None;
            }
            if let Some(Reverse((_, key))) = self.timers.pop() {
                if let Some(c) = self.slab.get_mut(key) {
                    c.deadline = None;
                }
                return Some(key);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}
