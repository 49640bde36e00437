//! A media worker thread: one UDP socket, one event loop, every connection of its sessions.
//!
//! Each loop turn reads what the socket has (bounded batch), lets the host process the
//! touched connections (forwarding included), then sends everything they queued.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Command;
use super::peer::PeerFactory;
use crate::config::Config;
use crate::session::Host;
use crate::telemetry::{PUBLISH_INTERVAL, WorkerMetrics};

/// Datagrams read per loop turn before the host processes them.
const READ_BATCH: usize = 256;
/// Largest datagram we accept; WebRTC stays well under the path MTU.
const MAX_DATAGRAM: usize = 2048;
/// How long an idle worker sleeps when no connection has a timer.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);

pub fn spawn(
    n: usize,
    config: Config,
    socket: std::net::UdpSocket,
    announce: Vec<SocketAddr>,
    commands: mpsc::Receiver<Command>,
) -> std::io::Result<()> {
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    let factory = PeerFactory { announce, opus_fmtp: config.opus_fmtp(), media: config.media.clone() };
    std::thread::Builder::new().name(format!("veza-media-{n}")).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return warn!("media worker {n}: no runtime: {e}"),
        };
        runtime.block_on(async move {
            match UdpSocket::from_std(socket) {
                Ok(socket) => run(Host::new(config, factory, local), socket, commands, WorkerMetrics::new(n)).await,
                Err(e) => warn!("media worker {n}: socket: {e}"),
            }
        });
    })?;
    Ok(())
}

async fn run(mut host: Host, socket: UdpSocket, mut commands: mpsc::Receiver<Command>, metrics: WorkerMetrics) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // When the oldest datagram not yet processed was read: forwarding latency starts there.
    let mut first_ingress: Option<Instant> = None;
    let mut published = Instant::now();
    loop {
        let now = Instant::now();
        let forwarded_before = host.forwarded();
        host.pump(now);
        host.transmit(|dst, data| {
            if let Err(e) = socket.try_send_to(data, dst) {
                debug!(%dst, "send failed: {e}");
            }
        });
        if let Some(ingress) = first_ingress.take()
            && host.forwarded() > forwarded_before
        {
            metrics.forward_latency.record(ingress.elapsed());
        }
        if now.duration_since(published) >= PUBLISH_INTERVAL {
            metrics.publish(&host.stats());
            published = now;
        }
        let deadline = host.next_timeout().unwrap_or(now + IDLE_WAKEUP).min(published + PUBLISH_INTERVAL);
        if deadline <= now {
            host.handle_timeout(now);
            continue;
        }
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(command) => execute(&mut host, command),
                None => break, // the engine is gone
            },
            ready = socket.readable() => {
                if ready.is_ok() {
                    for _ in 0..READ_BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((len, src)) => {
                                let at = Instant::now();
                                first_ingress.get_or_insert(at);
                                host.handle_datagram(at, src, &buf[..len]);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                debug!("recv failed: {e}");
                                break;
                            }
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => host.handle_timeout(Instant::now()),
        }
    }
    metrics.publish(&host.stats());
}

fn execute(host: &mut Host, command: Command) {
    let now = Instant::now();
    match command {
        Command::Join(req, reply) => {
            let _ = reply.send(host.join(now, req));
        }
        Command::Signal { participant, message } => host.signal(now, &participant, message),
        Command::Leave { participant, reason } => host.leave(now, &participant, reason),
        Command::Stats(reply) => {
            let _ = reply.send(host.stats());
        }
    }
}

/// One socket carries every connection's bursts: give it a large receive buffer.
pub fn tune_socket(socket: &std::net::UdpSocket, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let fd = socket.as_raw_fd();
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: fd is a valid socket for the duration of the call; value outlives it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 && option != libc::SO_RCVBUFFORCE {
            debug!("setsockopt({option}) failed: {}", std::io::Error::last_os_error());
        }
    }
}

/// IPv4 addresses of this host's interfaces that are up.
pub fn interface_ipv4s() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            let up = ifa.ifa_flags & libc::IFF_UP as libc::c_uint != 0;
            if up && !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out
}
