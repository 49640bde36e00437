//! Reaching the server at an address its media socket is not bound to: the address it
//! announces behind a 1:1 NAT (`media.announce_ips`), or an interface address when it is bound
//! to the wildcard (the default, `0.0.0.0`). The ICE agent must take datagrams the socket got on
//! either as arriving on its announced candidates.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::relay::LossyRelay;
use veza_sfu::sim::{SimOptions, SimParticipant};

const WAIT: Duration = Duration::from_secs(30);
const PACKETS: u64 = 100;

/// Two musicians hear each other: every packet intact, from the right source.
async fn jam(server: &veza_sfu::Server, opts: SimOptions) {
    let url = server.ws_url();
    let join = |user: &'static str| {
        let opts = opts.clone();
        let url = url.clone();
        async move { SimParticipant::join(&url, &common::token("nat", user), opts).await.expect("joins") }
    };
    let (ana, ben) = (join("ana").await, join("ben").await);
    ana.start_publishing();
    ben.start_publishing();
    for (listener, source) in [(&ana, &ben), (&ben, &ana)] {
        listener.wait_for_packets(source.id(), PACKETS, WAIT).await.unwrap();
        let heard = listener.received_from(source.id()).unwrap();
        assert_eq!(heard.bad_payloads, 0, "{} heard {} intact", listener.id(), source.id());
    }
    for sim in [ana, ben] {
        sim.leave().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn musicians_reach_a_server_behind_a_one_to_one_nat_at_its_announced_address() {
    // The relay plays the NAT: it owns 127.0.0.2, which the server announces, and forwards to
    // the server's 127.0.0.1 unchanged. Clients hide their candidates, so the relay is the only way.
    let public = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut config = common::test_config();
    config.media.bind_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    config.media.announce_ips = vec![public];
    let server = common::start_with(config).await;
    let pairs = server.media.workers().iter().map(|w| (SocketAddr::new(public, w.local.port()), w.local)).collect();
    let _nat = LossyRelay::start(pairs, 0, []).await.expect("the relay binds 127.0.0.2");

    jam(&server, SimOptions { hide_candidates: true, ..Default::default() }).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn musicians_reach_a_server_bound_to_the_wildcard_address() {
    let mut config = common::test_config();
    config.media.bind_ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let server = common::start_with(config).await;

    jam(&server, SimOptions::default()).await;
    server.shutdown().await.unwrap();
}
