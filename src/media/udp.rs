//! Batched UDP sends: one `sendmmsg(2)` for many datagrams to many destinations, so a
//! publisher's packet fanned out to N subscribers costs one system call, not N.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use bytes::BytesMut;

/// Datagrams per `sendmmsg` call.
pub const BATCH: usize = 64;

/// Datagrams waiting to be sent, and the reusable buffers `sendmmsg` needs.
pub struct Outbox {
    queue: Vec<(SocketAddr, BytesMut)>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            queue: Vec::with_capacity(BATCH * 4),
            // SAFETY: all-zero is a valid value for these plain C structs.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovecs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH],
            headers: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flushed {
    pub sent: usize,
    pub failed: usize,
    pub syscalls: usize,
}

impl Outbox {
    pub fn push(&mut self, dst: SocketAddr, datagram: BytesMut) {
        self.queue.push((dst, datagram));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends everything queued. A datagram the kernel refuses (buffer full, unreachable) is
    /// dropped and counted: UDP media is never retried late.
    pub fn flush(&mut self, fd: RawFd) -> Flushed {
        let mut result = Flushed::default();
        let mut start = 0;
        while start < self.queue.len() {
            let chunk = &self.queue[start..(start + BATCH).min(self.queue.len())];
            for (i, (dst, data)) in chunk.iter().enumerate() {
                let addr_len = write_sockaddr(*dst, &mut self.addrs[i]);
                self.iovecs[i] = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
                // SAFETY: zeroed msghdr is valid; the pointers below stay valid until the call
                // returns (they point into self.addrs / self.iovecs / self.queue, untouched).
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
                hdr.msg_namelen = addr_len;
                hdr.msg_iov = &mut self.iovecs[i];
                hdr.msg_iovlen = 1;
                self.headers[i] = libc::mmsghdr { msg_hdr: hdr, msg_len: 0 };
            }
            let n = chunk.len();
            let mut done = 0;
            while done < n {
                // SAFETY: headers[done..n] are initialised above and reference live buffers.
                let rc =
                    unsafe { libc::sendmmsg(fd, self.headers[done..n].as_mut_ptr(), (n - done) as libc::c_uint, 0) };
                result.syscalls += 1;
                if rc <= 0 {
                    let err = std::io::Error::last_os_error();
                    if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) {
                        // The socket is full: the rest of this batch would fail too. Drop it
                        // rather than spend a failing system call per datagram under overload.
                        result.failed += n - done;
                        break;
                    }
                    // This one datagram was refused (e.g. unreachable destination): skip it.
                    result.failed += 1;
                    done += 1;
                } else {
                    result.sent += rc as usize;
                    done += rc as usize;
                }
            }
            start += n;
        }
        self.queue.clear();
        result
    }
}

fn write_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn one_flush_reaches_many_destinations_in_order() {
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let receivers: Vec<_> = (0..3).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let mut outbox = Outbox::default();
        for round in 0..BATCH {
            for (i, r) in receivers.iter().enumerate() {
                outbox.push(r.local_addr().unwrap(), BytesMut::from(&[round as u8, i as u8][..]));
            }
        }
        let flushed = outbox.flush(sender.as_raw_fd());
        assert_eq!((flushed.sent, flushed.failed), (BATCH * 3, 0));
        assert!(flushed.syscalls <= 3 + 1, "{flushed:?}");
        let mut buf = [0u8; 8];
        for (i, r) in receivers.iter().enumerate() {
            for round in 0..BATCH {
                let n = r.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &[round as u8, i as u8]);
            }
        }
    }
}
