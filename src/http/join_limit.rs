//! Join attempts per client address (`http.join_attempts_per_minute`): a brake on token
//! guessing and on reconnect storms from one misbehaving client.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Attempts between sweeps of addresses whose allowance is full again (keeps the map small
/// without a timer task).
const SWEEP_EVERY: u32 = 1024;

pub struct JoinLimiter {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
    /// Where the client address comes from behind a proxy (`http.client_ip_header`).
    ip_header: Option<String>,
    attempts: AtomicU32,
}

impl JoinLimiter {
    /// `per_minute` attempts per address, all of them usable at once; 0 turns the limit off.
    pub fn new(per_minute: u32, ip_header: Option<String>) -> JoinLimiter {
        let limiter = NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        JoinLimiter { limiter, clock: DefaultClock::default(), ip_header, attempts: AtomicU32::new(0) }
    }

    /// The address an attempt counts against: the configured proxy header's last entry (the
    /// one our proxy appended; earlier ones are whatever the client wrote) if well-formed, else
    /// the TCP peer. IPv6 clients count per /64, the block one subscriber usually gets.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let forwarded = self.ip_header.as_deref().and_then(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            value.rsplit(',').next()?.trim().parse::<IpAddr>().ok()
        });
        match forwarded.unwrap_or_else(|| peer.ip()) {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        }
    }

    /// Counts one attempt from `ip`: `Err(wait)` when it is over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        if self.attempts.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Addresses currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_allowance() {
        let limiter = JoinLimiter::new(3, None);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limiter.check(b).is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let limiter = JoinLimiter::new(0, None);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!((0..1000).all(|_| limiter.check(a).is_ok()));
    }

    #[test]
    fn proxy_header_is_used_only_when_configured_and_valid() {
        let peer: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.9.9.9, 203.0.113.7".parse().unwrap());
        assert_eq!(JoinLimiter::new(1, None).client_ip(peer, &headers), peer.ip());
        let behind_proxy = JoinLimiter::new(1, Some("X-Forwarded-For".into()));
        // The client wrote 10.9.9.9 itself; the proxy appended the address it saw.
        assert_eq!(behind_proxy.client_ip(peer, &headers), "203.0.113.7".parse::<IpAddr>().unwrap());
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(behind_proxy.client_ip(peer, &headers), peer.ip());
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let limiter = JoinLimiter::new(1, None);
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::2]:5000".parse().unwrap();
        let headers = HeaderMap::new();
        assert_eq!(limiter.client_ip(a, &headers), limiter.client_ip(b, &headers));
        assert_eq!(limiter.client_ip(a, &headers), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }
}
