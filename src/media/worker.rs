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
use super::udp::Outbox;
use crate::config::Config;
use crate::session::Host;
use crate::telemetry::{PUBLISH_INTERVAL, WorkerMetrics};

/// Datagrams read per wake-up of the worker, at most.
const READ_BATCH: usize = 64;
/// Datagrams read before their audio is forwarded and sent. Every datagram waits for the fan-out
/// of those read with it (4 publisher packets x 9 legs x ~9 us = ~0.3 ms), so this bounds the
/// latency forwarding adds under load; reading more per wake-up keeps the cost of waking up low.
const FORWARD_EVERY: usize = 4;
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
    quota: std::sync::Arc<crate::session::SessionQuota>,
) -> std::io::Result<()> {
    socket.set_nonblocking(true)?;
    // rtc's ICE agent takes a datagram only if it arrived on a local candidate's address, and
    // the candidates are the announced addresses (public ones behind a 1:1 NAT, interface ones
    // when bound to 0.0.0.0), not the bound one. Every datagram reaches the one socket they all
    // map to, so tag it with the bound address when that is announced, else the first announced.
    let bound = socket.local_addr()?;
    let local = announce.iter().copied().find(|a| *a == bound).or_else(|| announce.first().copied()).unwrap_or(bound);
    let factory =
        PeerFactory::new(announce, config.opus_fmtp(), config.media.clone()).map_err(std::io::Error::other)?;
    std::thread::Builder::new().name(format!("veza-media-{n}")).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return warn!("media worker {n}: no runtime: {e}"),
        };
        runtime.block_on(async move {
            match UdpSocket::from_std(socket) {
                Ok(socket) => {
                    run(Host::new(config, factory, local, quota), socket, commands, WorkerMetrics::new(n)).await
                }
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
    let mut outbox = Outbox::default();
    loop {
        let now = Instant::now();
        forward_and_send(&mut host, &mut outbox, &socket, &metrics, &mut first_ingress, now);
        if now.duration_since(published) >= PUBLISH_INTERVAL {
            metrics.publish(&host.stats());
            published = now;
        }
        let deadline = host.next_timeout().unwrap_or(now + IDLE_WAKEUP).min(published + PUBLISH_INTERVAL);
        if deadline <= now {
            host.handle_timeout(now);
            continue;
        }
        // Unbiased: a stream of commands must not starve the socket, nor datagrams commands.
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => execute(&mut host, command),
                None => break, // the engine is gone
            },
            ready = socket.readable() => {
                if ready.is_ok() {
                    for read in 1..=READ_BATCH {
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
                        if read % FORWARD_EVERY == 0 {
                            forward_and_send(&mut host, &mut outbox, &socket, &metrics, &mut first_ingress, Instant::now());
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => host.handle_timeout(Instant::now()),
        }
    }
    metrics.publish(&host.stats());
}

/// Processes everything the connections have read (forwarding audio as it goes), sends what
/// they queued in one batch, and records how long the oldest datagram waited.
fn forward_and_send(
    host: &mut Host,
    outbox: &mut Outbox,
    socket: &UdpSocket,
    metrics: &WorkerMetrics,
    first_ingress: &mut Option<Instant>,
    now: Instant,
) {
    let forwarded_before = host.forwarded();
    host.pump(now);
    host.transmit(|dst, datagram| outbox.push(dst, datagram));
    if !outbox.is_empty() {
        let flushed = outbox.flush(socket.as_raw_fd());
        if flushed.failed > 0 {
            metrics.send_failed.increment(flushed.failed as u64);
            debug!(failed = flushed.failed, "datagrams refused by the kernel");
        }
    }
    if let Some(ingress) = first_ingress.take()
        && host.forwarded() > forwarded_before
    {
        metrics.forward_latency.record(ingress.elapsed());
    }
}

fn execute(host: &mut Host, command: Command) {
    let now = Instant::now();
    match command {
        Command::Join(req, reply) => {
            let _ = reply.send(host.join(now, req));
        }
        Command::Signal { participant, message } => host.signal(now, &participant, message),
        Command::Leave { participant, reason } => host.leave(now, &participant, reason),
        Command::Resumed { participant } => host.resumed(&participant),
        Command::Stats(reply) => {
            let _ = reply.send(host.stats());
        }
        Command::StartRecording { session, sink, reply } => {
            let _ = reply.send(host.start_recording(&session, sink));
        }
        Command::StopRecording { session, recording, reply } => {
            let _ = reply.send(host.stop_recording(&session, &recording));
        }
        Command::Admin(admin) => super::admin::execute(host, now, admin),
    }
}

/// One socket carries every connection's bursts: give it large kernel buffers. The forced
/// variant (root or CAP_NET_ADMIN) may exceed `net.core.rmem_max`; the plain one is capped by it.
pub fn tune_socket(socket: &std::net::UdpSocket, bytes: usize) {
    let fd = socket.as_raw_fd();
    for (forced, plain, name) in
        [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "receive"), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "send")]
    {
        if !set_int_option(fd, forced, bytes) && !set_int_option(fd, plain, bytes) {
            warn!("could not size the media socket's {name} buffer: {}", std::io::Error::last_os_error());
        }
        // The kernel reports double the usable size it granted.
        let granted = get_int_option(fd, plain).map_or(0, |v| v / 2);
        if granted < bytes {
            warn!(
                requested = bytes,
                granted,
                "media socket {name} buffer is smaller than configured (raise net.core.{}mem_max)",
                if name == "receive" { "r" } else { "w" }
            );
        }
    }
}

fn set_int_option(fd: std::os::fd::RawFd, option: libc::c_int, value: usize) -> bool {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
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
    rc == 0
}

fn get_int_option(fd: std::os::fd::RawFd, option: libc::c_int) -> Option<usize> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are valid for writes of the sizes given.
    let rc =
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, option, (&mut value as *mut libc::c_int).cast(), &mut len) };
    (rc == 0).then(|| usize::try_from(value).unwrap_or(0))
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
