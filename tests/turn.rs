//! TURN against a real coturn (Debian package `coturn`), started here on loopback with the
//! hardened `turn-config/turnserver.conf` plus the few lines a loopback test needs.
//!
//! These tests fail, never skip, when `turnserver` is missing: `scripts/setup` installs it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rtc::sansio::Protocol;
use rtc::shared::{TransportContext, TransportMessage, TransportProtocol};
use rtc::turn::client::{Client as TurnClient, ClientConfig, Event};
use veza_sfu::sim::{SimOptions, SimParticipant};

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "coturn-test-secret";
const REALM: &str = "veza.test";

/// Options of the shipped config that a loopback test must replace: addresses, ports, TLS
/// files, realm, secret and where logs go.
const REPLACED: &[&str] = &[
    "listening-port",
    "tls-listening-port",
    "listening-ip",
    "relay-ip",
    "external-ip",
    "min-port",
    "max-port",
    "cert",
    "pkey",
    "realm",
    "static-auth-secret",
    "log-file",
    "simple-log",
    "syslog",
    "pidfile",
    "userdb",
];

/// A coturn process of our own, killed (by its pid) and cleaned up on drop.
struct Coturn {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Coturn {
    /// `turn-config/turnserver.conf` with loopback addresses, no TLS, and the loopback peer
    /// (the SFU on 127.0.0.1) let through its denied-peer-ip ranges: `allow-loopback-peers` for
    /// coturn's own loopback ban, `allowed-peer-ip=127.0.0.1` as the exception the README tells
    /// self-hosters to make for the SFU's address.
    fn derived_config(shipped: &str, port: u16, relay_ports: (u16, u16), dir: &Path) -> String {
        let mut out = String::from("# derived by tests/turn.rs from turn-config/turnserver.conf\n");
        for line in shipped.lines() {
            let key = line.trim().split(['=', ' ']).next().unwrap_or_default();
            if !line.trim_start().starts_with('#') && REPLACED.contains(&key) {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&format!(
            "listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nlistening-port={port}\n\
             min-port={}\nmax-port={}\nrealm={REALM}\nstatic-auth-secret={SECRET}\n\
             no-tls\nno-dtls\nallow-loopback-peers\nallowed-peer-ip=127.0.0.1\n\
             log-file={}\nno-stdout-log\nsimple-log\npidfile={}\nuserdb={}\nverbose\n",
            relay_ports.0,
            relay_ports.1,
            dir.join("turn.log").display(),
            dir.join("turn.pid").display(),
            dir.join("turndb").display(),
        ));
        out
    }

    async fn start(name: &str) -> Coturn {
        let found = Command::new("turnserver").arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            found.is_ok(),
            "turnserver (Debian package coturn) is not installed: run scripts/setup, or apt-get install coturn"
        );
        let dir = std::env::temp_dir().join(format!("veza-coturn-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shipped =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("turn-config/turnserver.conf"))
                .expect("turn-config/turnserver.conf");
        let port = free_port();
        // A relay range of our own per test: ports from the listener's neighbourhood.
        let base = 20_000 + (port % 20_000) / 200 * 200;
        let config = Coturn::derived_config(&shipped, port, (base, base + 199), &dir);
        std::fs::write(dir.join("turnserver.conf"), config).unwrap();
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(dir.join("turnserver.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting turnserver");
        let mut coturn = Coturn { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), dir };
        coturn.wait_ready().await;
        coturn
    }

    /// Waits until coturn answers a STUN Binding (bounded; fails with its log if it exits).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("turnserver exited with {status} at start-up:\n{}", self.log());
            }
            if binding(self.addr, Duration::from_millis(250)).await {
                return;
            }
            assert!(Instant::now() < deadline, "turnserver never answered STUN on {}:\n{}", self.addr, self.log());
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turn.log")).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    fn uri(&self) -> String {
        format!("turn:{}?transport=udp", self.addr)
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP (coturn listens on both).
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn turn_client(server: SocketAddr, local: SocketAddr, username: &str, password: &str) -> TurnClient {
    TurnClient::new(
        ClientConfig {
            turn_serv_addr: server.to_string(),
            local_addr: local,
            transport_protocol: TransportProtocol::UDP,
            username: username.to_owned(),
            password: password.to_owned(),
            software: "veza-sfu tests".to_owned(),
            ..Default::default()
        },
        rtc::crypto::default_provider().expect("a crypto provider"),
    )
    .expect("TURN client")
}

/// Drives the sans-I/O TURN client over a UDP socket until `done` picks an event.
async fn drive<T>(
    client: &mut TurnClient,
    socket: &tokio::net::UdpSocket,
    limit: Duration,
    mut done: impl FnMut(Event) -> Option<T>,
) -> Option<T> {
    let local = socket.local_addr().unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(out) = client.poll_write() {
            socket.send_to(&out.message, out.transport.peer_addr).await.unwrap();
        }
        while let Some(event) = client.poll_event() {
            if let Some(found) = done(event) {
                return Some(found);
            }
        }
        let wake = client.poll_timeout().map_or(deadline, |t| tokio::time::Instant::from_std(t).min(deadline));
        tokio::select! {
            got = socket.recv_from(&mut buf) => {
                let (n, from) = got.unwrap();
                let msg = TransportMessage {
                    now: Instant::now(),
                    transport: TransportContext { local_addr: local, peer_addr: from, transport_protocol: TransportProtocol::UDP, ecn: None },
                    message: BytesMut::from(&buf[..n]),
                };
                let _ = client.handle_read(msg);
            }
            () = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                let _ = client.handle_timeout(Instant::now());
            }
        }
    }
}

/// Whether a STUN Binding to `server` is answered within `limit`.
async fn binding(server: SocketAddr, limit: Duration) -> bool {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut client = turn_client(server, socket.local_addr().unwrap(), "", "");
    client.send_binding_request_to(Instant::now(), server).unwrap();
    drive(&mut client, &socket, limit, |e| matches!(e, Event::BindingResponse(..)).then_some(())).await.is_some()
}

/// An Allocate with long-term credentials: the relayed address, or coturn's error.
async fn allocate(server: SocketAddr, username: &str, password: &str) -> Result<SocketAddr, String> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut client = turn_client(server, socket.local_addr().unwrap(), username, password);
    client.allocate(Instant::now()).unwrap();
    let outcome = drive(&mut client, &socket, Duration::from_secs(10), |e| match e {
        Event::AllocateResponse(_, relayed) => Some(Ok(relayed)),
        Event::AllocateError(_, e) => Some(Err(e.to_string())),
        Event::TransactionTimeout(_) => Some(Err("no answer from coturn".to_owned())),
        _ => None,
    })
    .await;
    outcome.unwrap_or_else(|| Err("no answer from coturn in 10 s".to_owned()))
}

/// `(rp, sp)` of a coturn `peer usage:` line: packets received from and sent to the peer.
fn peer_usage(line: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        let start = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name} in {line:?}")) + name.len() + 2;
        line[start..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    (field("rp"), field("sp"))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_accepts_minted_credentials_and_refuses_wrong_or_expired_ones() {
    let coturn = Coturn::start("auth").await;

    // What veza-sfu mints: accepted, a relay on coturn's relay address.
    let mut turn = veza_sfu::turn::TurnConfig {
        uris: vec![coturn.uri()],
        secret: Some(SECRET.to_owned()),
        ttl: Duration::from_secs(600),
    };
    let minted = turn.ice_servers("pminted", SystemTime::now()).pop().unwrap();
    let (user, pass) = (minted.username.unwrap(), minted.credential.unwrap());
    let relayed = allocate(coturn.addr, &user, &pass).await.unwrap_or_else(|e| {
        panic!("coturn refused a credential veza-sfu minted: {e}\n{}", coturn.log());
    });
    assert_eq!(relayed.ip(), coturn.addr.ip());

    // Signed with another secret.
    turn.secret = Some("not-the-shared-secret".to_owned());
    let forged = turn.ice_servers("pforged", SystemTime::now()).pop().unwrap();
    let refused = allocate(coturn.addr, forged.username.as_deref().unwrap(), forged.credential.as_deref().unwrap())
        .await
        .expect_err("coturn must refuse a credential signed with the wrong secret");
    assert!(refused.contains("401"), "expected 401 Unauthorized, got {refused}");

    // Correctly signed but expired a minute ago.
    let user = veza_sfu::turn::username(unix_now() - 60, "pexpired");
    let pass = veza_sfu::turn::credential(SECRET, &user);
    let refused = allocate(coturn.addr, &user, &pass).await.expect_err("coturn must refuse an expired credential");
    assert!(refused.contains("401"), "expected 401 Unauthorized, got {refused}");

    // A right username with a tampered password.
    let user = veza_sfu::turn::username(unix_now() + 600, "ptampered");
    let refused = allocate(coturn.addr, &user, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=").await.expect_err("tampered password");
    assert!(refused.contains("401"), "expected 401 Unauthorized, got {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_musician_jams_through_coturn() {
    let coturn = Coturn::start("jam").await;
    let mut config = common::test_config();
    config.turn.uris = vec![coturn.uri(), "stun:127.0.0.1:3478".to_owned()];
    config.turn.secret = Some(SECRET.to_owned());
    let server = common::start_with(config).await;
    let url = server.ws_url();

    let relayed_opts = SimOptions { relay_only: true, ..SimOptions::default() };
    let ana = SimParticipant::join(&url, &common::token("relayed", "ana"), relayed_opts).await.expect("ana joins");
    let ben =
        SimParticipant::join(&url, &common::token("relayed", "ben"), SimOptions::default()).await.expect("ben joins");

    // `joined` carried a STUN entry as configured and a TURN entry minted for this participant.
    let servers = &ana.joined().ice_servers;
    assert!(servers.iter().any(|s| s.urls == ["stun:127.0.0.1:3478"] && s.username.is_none()), "{servers:?}");
    let turn = servers.iter().find(|s| s.urls == [coturn.uri()]).expect("a TURN entry");
    let username = turn.username.clone().unwrap();
    let (expiry, id) = username.split_once(':').unwrap();
    assert_eq!(id, ana.id());
    assert!(expiry.parse::<u64>().unwrap() > unix_now());
    assert_eq!(turn.credential.as_deref(), Some(veza_sfu::turn::credential(SECRET, &username).as_str()));

    ana.start_publishing();
    ben.start_publishing();
    const PACKETS: u64 = 200; // 2 s of 10 ms packets
    ben.wait_for_packets(ana.id(), PACKETS, WAIT).await.unwrap_or_else(|e| panic!("{e:#}\n{}", coturn.log()));
    ana.wait_for_packets(ben.id(), PACKETS, WAIT).await.unwrap_or_else(|e| panic!("{e:#}\n{}", coturn.log()));
    let heard = ben.received_from(ana.id()).unwrap();
    assert_eq!(heard.bad_payloads, 0);

    // The audio really went through coturn: it allocated relays for ana's username (one per
    // connection) and let them send to the SFU.
    let log = coturn.log();
    let allocations = log
        .lines()
        .filter(|l| l.contains(&format!("user <{username}>")) && l.contains("ALLOCATE processed, success"))
        .count();
    assert!(allocations >= 2, "coturn allocated {allocations} relays for {username}:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("user <{username}>")) && l.contains("CREATE_PERMISSION processed, success")),
        "coturn gave ana's relays no permission to reach the SFU:\n{log}"
    );
    assert!(ana.errors().is_empty() && ben.errors().is_empty(), "{:?} {:?}", ana.errors(), ben.errors());

    ana.leave().await.unwrap();
    ben.leave().await.unwrap();

    // Closing her connections deleted ana's allocations, and coturn logged what each relayed
    // to and from its peer (the SFU): her audio out through one, everyone's audio in through
    // the other.
    let marker = format!("peer usage: realm=<{REALM}>, username=<{username}>");
    let deadline = Instant::now() + WAIT;
    let usage = loop {
        let log = coturn.log();
        let usage: Vec<(u64, u64)> = log.lines().filter(|l| l.contains(&marker)).map(peer_usage).collect();
        if usage.len() >= 2 {
            break usage;
        }
        assert!(Instant::now() < deadline, "coturn logged no usage for ana's two allocations:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let to_sfu = usage.iter().map(|(_, sent)| *sent).max().unwrap();
    let from_sfu = usage.iter().map(|(received, _)| *received).max().unwrap();
    assert!(to_sfu >= PACKETS, "coturn relayed {to_sfu} packets from ana to the SFU");
    assert!(from_sfu >= PACKETS, "coturn relayed {from_sfu} packets from the SFU to ana");
    server.shutdown().await.unwrap();
}
