//! What keeps the UDP internal services from being turned on each other
//! or on a third party: a spoofed source can aim echo at chargen (a loop
//! that never ends) or make chargen answer a victim (512 bytes for an
//! empty datagram). As BSD inetd's `dg_badinput` and xinetd do, and more:
//! datagrams from sources that no honest client has are dropped, and the
//! replies each source gets are bounded by a token bucket.

use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::canonical_ip;

/// Why a datagram got no answer; the names are the outcomes a metrics
/// endpoint reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    /// A privileged or one of our own ports, or a non-unicast address.
    BadSource,
    /// The source's reply bucket is empty.
    RateLimited,
}

impl Dropped {
    pub fn outcome(self) -> &'static str {
        match self {
            Dropped::BadSource => "bad_source",
            Dropped::RateLimited => "rate_limited",
        }
    }
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dropped::BadSource => "source cannot be a client (privileged, own or non-unicast)",
            Dropped::RateLimited => "too many replies to this source",
        })
    }
}

/// Whether no honest client can send from `peer`: a source port below
/// 1024 (a system service, which could answer us back) or one of
/// `own_ports` (our own UDP services: echo aimed at chargen), or an
/// address that is not unicast. `own_ports` is sorted.
pub fn bad_source(peer: SocketAddr, own_ports: &[u16]) -> bool {
    peer.port() < 1024 || own_ports.binary_search(&peer.port()).is_ok() || !unicast(peer.ip())
}

/// Unicast: not unspecified, broadcast, multicast or in 0.0.0.0/8 (which
/// means "this network"); IPv4-mapped IPv6 is judged as IPv4.
fn unicast(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => !(v4.is_broadcast() || v4.is_multicast() || v4.octets()[0] == 0),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

/// Replies a source may get at once, then per second.
const BURST: f32 = 16.0;
const REFILL_PER_SECOND: f32 = 8.0;
/// Buckets per service: a fixed table, so a flood from many sources costs
/// no memory. Sources that hash to the same slot share its bucket, which
/// can only make the limit stricter; the hash is keyed per process so a
/// sender cannot pick whom it collides with.
const SLOTS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Slot {
    tokens: f32,
    /// Milliseconds since the guard was made, at the last take.
    last_ms: u32,
}

/// One UDP internal service's per-source buckets and drop counters. It
/// outlives reloads that keep the service's name, as its `Gate` does.
#[derive(Debug)]
pub struct UdpGuard {
    epoch: Instant,
    hasher: RandomState,
    /// Made on the first reply: services that never answer pay nothing.
    slots: Mutex<Vec<Slot>>,
    bad_source: AtomicU64,
    rate_limited: AtomicU64,
}

impl Default for UdpGuard {
    fn default() -> Self {
        UdpGuard {
            epoch: Instant::now(),
            hasher: RandomState::new(),
            slots: Mutex::new(Vec::new()),
            bad_source: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        }
    }
}

impl UdpGuard {
    /// Takes one reply from `ip`'s bucket, or says why not.
    pub fn take_reply(&self, ip: IpAddr, now: Instant) -> Result<(), Dropped> {
        let at = (self.hasher.hash_one(canonical_ip(ip)) % SLOTS as u64) as usize;
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.is_empty() {
            slots.resize(
                SLOTS,
                Slot {
                    tokens: BURST,
                    last_ms: 0,
                },
            );
        }
        let slot = &mut slots[at];
        let elapsed = now_ms.wrapping_sub(slot.last_ms) as f32 / 1000.0;
        slot.last_ms = now_ms;
        slot.tokens = (slot.tokens + elapsed * REFILL_PER_SECOND).min(BURST);
        if slot.tokens >= 1.0 {
            slot.tokens -= 1.0;
            Ok(())
        } else {
            Err(Dropped::RateLimited)
        }
    }

    /// Counts a dropped datagram.
    pub fn count(&self, why: Dropped) {
        match why {
            Dropped::BadSource => &self.bad_source,
            Dropped::RateLimited => &self.rate_limited,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Datagrams dropped so far for `why` (for a metrics endpoint).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn dropped(&self, why: Dropped) -> u64 {
        match why {
            Dropped::BadSource => &self.bad_source,
            Dropped::RateLimited => &self.rate_limited,
        }
        .load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn privileged_own_and_non_unicast_sources_are_bad() {
        let own = [7, 19, 40_000, 40_019];
        for good in [
            "127.0.0.1:40001",
            "[::1]:50000",
            "10.1.2.3:1024",
            "[2001:db8::1]:65535",
        ] {
            assert!(!bad_source(sa(good), &own), "{good}");
        }
        for bad in [
            "127.0.0.1:1023",
            "127.0.0.1:0",
            "[::1]:53",
            "127.0.0.1:40019",
            "[::1]:40000",
            "255.255.255.255:40001",
            "224.0.0.1:40001",
            "239.1.2.3:40001",
            "0.0.0.0:40001",
            "0.1.2.3:40001",
            "[::]:40001",
            "[ff02::1]:40001",
            "[::ffff:255.255.255.255]:40001",
            "[::ffff:224.0.0.5]:40001",
            "[::ffff:0.0.0.0]:40001",
        ] {
            assert!(bad_source(sa(bad), &own), "{bad}");
        }
    }

    #[test]
    fn each_source_gets_a_burst_then_a_trickle() {
        let g = UdpGuard::default();
        let t0 = g.epoch + Duration::from_secs(1);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let taken = (0..100).filter(|_| g.take_reply(a, t0).is_ok()).count();
        assert_eq!(taken, BURST as usize);
        assert_eq!(g.take_reply(a, t0), Err(Dropped::RateLimited));
        // A quarter of a second later: two more (8 per second).
        let t1 = t0 + Duration::from_millis(250);
        let taken = (0..100).filter(|_| g.take_reply(a, t1).is_ok()).count();
        assert_eq!(taken, 2);
        // Another source is not held back by the first (unless it shares
        // the slot: try a few).
        let others = (1..=8u8)
            .map(|i| IpAddr::from([198, 51, 100, i]))
            .filter(|&b| g.take_reply(b, t1).is_ok())
            .count();
        assert!(others >= 7, "{others} of 8 other sources answered");
    }

    #[test]
    fn a_flood_from_many_sources_keeps_the_table_and_each_limit() {
        let g = UdpGuard::default();
        let t0 = g.epoch + Duration::from_secs(1);
        // 200,000 sources, one datagram each: memory is the fixed table,
        // and no source ever gets more than its burst.
        for i in 0..200_000u32 {
            let _ = g.take_reply(IpAddr::from(i.to_be_bytes()), t0);
        }
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let taken = (0..100).filter(|_| g.take_reply(a, t0).is_ok()).count();
        assert!(taken <= BURST as usize, "{taken}");
        assert_eq!(g.slots.lock().unwrap().len(), SLOTS);
    }

    #[test]
    fn drops_are_counted_by_outcome() {
        let g = UdpGuard::default();
        g.count(Dropped::BadSource);
        g.count(Dropped::BadSource);
        g.count(Dropped::RateLimited);
        assert_eq!(g.dropped(Dropped::BadSource), 2);
        assert_eq!(g.dropped(Dropped::RateLimited), 1);
        assert_eq!(Dropped::BadSource.outcome(), "bad_source");
        assert_eq!(Dropped::RateLimited.outcome(), "rate_limited");
    }
}
