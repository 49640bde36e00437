//! Routes each datagram on a worker's shared socket to its peer connection.
//!
//! Known remote addresses map straight to a connection. A datagram from a new address can only
//! be a STUN binding request, whose USERNAME ("ourUfrag:theirUfrag") names the connection.
//! A connection has one ufrag at a time (an ICE restart replaces it) and, once its media flows,
//! one address (a network change moves it; the old one is forgotten).

use std::collections::HashMap;
use std::net::SocketAddr;

/// A peer connection's key in the worker.
pub type ConnKey = usize;

#[derive(Default)]
pub struct Demux {
    by_addr: HashMap<SocketAddr, ConnKey>,
    by_ufrag: HashMap<String, ConnKey>,
}

impl Demux {
    /// Routes STUN naming `ufrag` to `conn` from now on, in place of the ufrag it had: after an
    /// ICE restart the old one no longer authenticates, so it must not route either.
    pub fn register(&mut self, ufrag: &str, conn: ConnKey) {
        if self.by_ufrag.get(ufrag) == Some(&conn) {
            return; // a renegotiation without restart: nothing changed
        }
        self.by_ufrag.retain(|_, c| *c != conn);
        self.by_ufrag.insert(ufrag.to_owned(), conn);
    }

    /// Remembers where a connection's traffic will come from: the address our own STUN check
    /// goes to (its answer carries no USERNAME). Never takes an address from another
    /// connection: a client must not redirect someone else's traffic by naming their address
    /// as a candidate.
    pub fn learn(&mut self, addr: SocketAddr, conn: ConnKey) {
        self.by_addr.entry(addr).or_insert(conn);
    }

    /// The connection's media now goes to `addr` (ICE selected it): forget every other address
    /// the connection was reached at, such as the one it had before a network change or a
    /// candidate that lost. Should one of them speak again, its STUN re-registers it by ufrag.
    pub fn settle(&mut self, conn: ConnKey, addr: SocketAddr) {
        self.by_addr.retain(|a, c| *c != conn || *a == addr);
    }

    /// Forgets everything about a connection.
    pub fn forget(&mut self, conn: ConnKey) {
        self.by_addr.retain(|_, c| *c != conn);
        self.by_ufrag.retain(|_, c| *c != conn);
    }

    /// The connection a datagram belongs to. A STUN request names its connection by our ICE
    /// username fragment, which is authoritative (a NAT rebinding or a reused address moves
    /// with it); anything else goes by source address.
    pub fn route(&mut self, src: SocketAddr, datagram: &[u8]) -> Option<ConnKey> {
        // Only STUN (first byte 0 or 1) can carry a USERNAME; media skips the parse.
        if datagram.first().is_some_and(|b| *b < 2)
            && let Some(conn) = self.by_stun_username(datagram)
        {
            self.by_addr.insert(src, conn);
            return Some(conn);
        }
        self.by_addr.get(&src).copied()
    }

    fn by_stun_username(&self, datagram: &[u8]) -> Option<ConnKey> {
        let username = stun_username(datagram)?;
        let ours = username.split(|b| *b == b':').next()?;
        self.by_ufrag.get(std::str::from_utf8(ours).ok()?).copied()
    }

    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }

    pub fn ufrags(&self) -> usize {
        self.by_ufrag.len()
    }
}

/// The USERNAME attribute of a STUN message, found without allocating (RFC 8489 §5, §14.3).
pub fn stun_username(b: &[u8]) -> Option<&[u8]> {
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
    const USERNAME: u16 = 0x0006;
    if b.len() < 20 || b[0] & 0xC0 != 0 || b[4..8] != MAGIC_COOKIE {
        return None;
    }
    let end = (20 + usize::from(u16::from_be_bytes([b[2], b[3]]))).min(b.len());
    let mut at = 20;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([b[at], b[at + 1]]);
        let len = usize::from(u16::from_be_bytes([b[at + 2], b[at + 3]]));
        let value = at + 4;
        if value + len > end {
            return None;
        }
        if kind == USERNAME {
            return Some(&b[value..value + len]);
        }
        at = value + len.div_ceil(4) * 4; // attributes are padded to 4 bytes
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &[u8]) -> Vec<u8> {
        let padded = username.len().div_ceil(4) * 4;
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&0x0006u16.to_be_bytes());
        m.extend_from_slice(&(username.len() as u16).to_be_bytes());
        m.extend_from_slice(username);
        m.resize(20 + 4 + padded, 0);
        m
    }

    #[test]
    fn routes_new_address_by_ufrag_then_by_address() {
        let mut d = Demux::default();
        d.register("abc", 3);
        let src: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(d.route(src, b"\x80\x6f not stun"), None);
        assert_eq!(d.route(src, &binding_request(b"abc:xyz1")), Some(3));
        assert_eq!(d.route(src, b"\x80\x6f rtp now"), Some(3));
        d.forget(3);
        assert_eq!(d.route(src, b"\x80\x6f rtp now"), None);
        assert_eq!((d.addresses(), d.ufrags()), (0, 0));
    }

    #[test]
    fn an_ice_restart_moves_a_connection_to_its_new_ufrag_and_address() {
        let mut d = Demux::default();
        d.register("old", 1);
        d.register("other", 2);
        let (before, after, theirs): (SocketAddr, SocketAddr, SocketAddr) =
            ("127.0.0.1:5000".parse().unwrap(), "127.0.0.1:6000".parse().unwrap(), "127.0.0.1:7000".parse().unwrap());
        assert_eq!(d.route(before, &binding_request(b"old:a")), Some(1));
        assert_eq!(d.route(theirs, &binding_request(b"other:b")), Some(2));

        d.register("new", 1);
        assert_eq!(d.ufrags(), 2, "the old ufrag is replaced, not kept");
        assert_eq!(d.route(after, &binding_request(b"old:c")), None, "the old ufrag routes nothing");
        assert_eq!(d.route(after, &binding_request(b"new:c")), Some(1));
        // Until ICE selects the new path, the old address still carries media.
        assert_eq!(d.route(before, b"\x80\x6f rtp"), Some(1));

        d.settle(1, after);
        assert_eq!(d.route(before, b"\x80\x6f rtp"), None);
        assert_eq!(d.route(after, b"\x80\x6f rtp"), Some(1));
        assert_eq!(d.route(theirs, b"\x80\x6f rtp"), Some(2), "other connections keep theirs");
        assert_eq!(d.addresses(), 2);
    }

    #[test]
    fn truncated_stun_is_ignored() {
        let mut m = binding_request(b"abc:xyz1");
        m.truncate(26);
        assert_eq!(stun_username(&m), None);
    }
}
