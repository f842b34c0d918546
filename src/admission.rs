//! Deciding, before anything is spawned, whether a connection may proceed:
//! access lists, live-program limits and the accept rate.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Access, Limits, Rate, canonical_ip};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Denied,
    NotAllowed,
    MaxConnections,
    MaxInstances,
    PerSource,
    Rate,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Denied => "source is in the deny list",
            Refusal::NotAllowed => "source is not in the allow list",
            Refusal::MaxConnections => "max_connections reached",
            Refusal::MaxInstances => "max_instances reached",
            Refusal::PerSource => "per_source limit reached",
            Refusal::Rate => "rate limit exceeded",
        })
    }
}

/// The daemon-wide count of live programs, shared by every service.
#[derive(Debug)]
pub struct Global {
    live: AtomicU32,
    max: AtomicU32,
}

impl Global {
    pub fn new(max: u32) -> Arc<Global> {
        Arc::new(Global {
            live: AtomicU32::new(0),
            max: AtomicU32::new(max),
        })
    }

    pub fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }
}

/// One service's counters. It outlives reloads that keep the service's
/// name, so programs started before a reload still count after it.
#[derive(Debug)]
pub struct Gate {
    name: Arc<str>,
    global: Arc<Global>,
    state: Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    live: u32,
    per_source: HashMap<IpAddr, u32>,
    access: Access,
    limits: Limits,
    bucket: Option<TokenBucket>,
}

impl Gate {
    pub fn new(name: &str, global: Arc<Global>, access: Access, limits: Limits) -> Arc<Gate> {
        let bucket = limits.rate.map(TokenBucket::new);
        Arc::new(Gate {
            name: name.into(),
            global,
            state: Mutex::new(GateState {
                live: 0,
                per_source: HashMap::new(),
                access,
                limits,
                bucket,
            }),
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Takes new rules from a reload; live counts stay, and the token bucket
    /// stays unless the rate itself changed.
    pub fn update(&self, access: Access, limits: Limits) {
        let mut st = self.lock();
        if st.limits.rate != limits.rate {
            st.bucket = limits.rate.map(TokenBucket::new);
        }
        st.access = access;
        st.limits = limits;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // A panic elsewhere cannot leave the counters half-updated (each
        // update is a single statement), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Only the access lists and the rate: for UDP internal services.
    pub fn admit_datagram(&self, ip: IpAddr) -> Result<(), Refusal> {
        let mut st = self.lock();
        check_access(&st.access, ip)?;
        take_token(&mut st.bucket)
    }

    /// Decides for one connection from `ip`; on success the returned
    /// [`Lease`] counts as a live program until it is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Lease, Refusal> {
        let ip = canonical_ip(ip);
        let mut st = self.lock();
        check_access(&st.access, ip)?;
        if self.global.live.load(Ordering::Relaxed) >= self.global.max.load(Ordering::Relaxed) {
            return Err(Refusal::MaxConnections);
        }
        if st.limits.max_instances.is_some_and(|m| st.live >= m) {
            return Err(Refusal::MaxInstances);
        }
        if let Some(limit) = st.limits.per_source
            && st.per_source.get(&ip).copied().unwrap_or(0) >= limit
        {
            return Err(Refusal::PerSource);
        }
        take_token(&mut st.bucket)?;
        st.live += 1;
        *st.per_source.entry(ip).or_insert(0) += 1;
        self.global.live.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            gate: Arc::clone(self),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut st = self.lock();
        st.live = st.live.saturating_sub(1);
        if let Some(n) = st.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                st.per_source.remove(&ip);
            }
        }
        self.global.live.fetch_sub(1, Ordering::Relaxed);
    }
}

fn check_access(access: &Access, ip: IpAddr) -> Result<(), Refusal> {
    let ip = canonical_ip(ip);
    if access.deny.iter().any(|n| n.contains(&ip)) {
        Err(Refusal::Denied)
    } else if !access.allow.is_empty() && !access.allow.iter().any(|n| n.contains(&ip)) {
        Err(Refusal::NotAllowed)
    } else {
        Ok(())
    }
}

fn take_token(bucket: &mut Option<TokenBucket>) -> Result<(), Refusal> {
    match bucket.as_mut().map(|b| b.take(Instant::now())) {
        Some(false) => Err(Refusal::Rate),
        _ => Ok(()),
    }
}

/// One live program (or internal session) of a service, from one source.
/// Dropping it gives the slot back.
#[derive(Debug)]
pub struct Lease {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Lease {
    pub fn service(&self) -> &Arc<str> {
        self.gate.name()
    }

    /// The source it counts against (IPv4-mapped peers as IPv4).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.gate.release(self.ip);
    }
}

/// Tokens refill at the configured rate; the bucket holds one second's
/// worth (at least one), which is the burst allowed.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: Rate) -> TokenBucket {
        let capacity = rate.per_second.max(1.0);
        TokenBucket {
            rate: rate.per_second,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Keeps refusals from flooding the log: one line per service and source
/// per window, carrying how many were refused since the last line.
#[derive(Debug, Default)]
pub struct RefusalLog {
    seen: HashMap<(Arc<str>, IpAddr), (Instant, u64)>,
}

/// How long a (service, source) pair stays quiet after a logged refusal.
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(5);
/// Beyond this many tracked sources, old entries are dropped first.
const REFUSAL_LOG_MAX_SOURCES: usize = 4096;

impl RefusalLog {
    /// Records a refusal; returns `Some(count)` when a line should be logged
    /// now, `count` being the refusals it stands for.
    pub fn note(&mut self, service: &Arc<str>, ip: IpAddr, now: Instant) -> Option<u64> {
        if self.seen.len() >= REFUSAL_LOG_MAX_SOURCES {
            self.seen
                .retain(|_, (t, _)| now.saturating_duration_since(*t) < REFUSAL_LOG_WINDOW);
        }
        match self.seen.get_mut(&(Arc::clone(service), ip)) {
            Some((last, pending)) => {
                *pending += 1;
                if now.saturating_duration_since(*last) >= REFUSAL_LOG_WINDOW {
                    let n = *pending;
                    *last = now;
                    *pending = 0;
                    Some(n)
                } else {
                    None
                }
            }
            None => {
                if self.seen.len() < REFUSAL_LOG_MAX_SOURCES {
                    self.seen.insert((Arc::clone(service), ip), (now, 0));
                }
                Some(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn gate(access: Access, limits: Limits, global_max: u32) -> Arc<Gate> {
        Gate::new("t", Global::new(global_max), access, limits)
    }

    #[test]
    fn deny_wins_over_allow_and_allow_refuses_the_rest() {
        let g = gate(
            Access {
                allow: nets(&["127.0.0.0/8", "::1/128"]),
                deny: nets(&["127.0.0.2/32"]),
            },
            Limits::default(),
            100,
        );
        assert!(g.admit(ip("127.0.0.1")).is_ok());
        assert!(g.admit(ip("::1")).is_ok());
        assert_eq!(g.admit(ip("127.0.0.2")).unwrap_err(), Refusal::Denied);
        assert_eq!(g.admit(ip("10.1.2.3")).unwrap_err(), Refusal::NotAllowed);
        // An IPv4-mapped peer is judged as IPv4.
        assert_eq!(
            g.admit(ip("::ffff:127.0.0.2")).unwrap_err(),
            Refusal::Denied
        );
    }

    #[test]
    fn limits_count_live_leases_and_free_them_on_drop() {
        let g = gate(
            Access::default(),
            Limits {
                max_instances: Some(3),
                per_source: Some(2),
                rate: None,
            },
            100,
        );
        let a1 = g.admit(ip("127.0.0.1")).unwrap();
        let _a2 = g.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(g.admit(ip("127.0.0.1")).unwrap_err(), Refusal::PerSource);
        let _b1 = g.admit(ip("127.0.0.9")).unwrap();
        assert_eq!(g.admit(ip("127.0.0.8")).unwrap_err(), Refusal::MaxInstances);
        drop(a1);
        let _a3 = g.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(g.global.live(), 3);
    }

    #[test]
    fn global_max_spans_services() {
        let global = Global::new(2);
        let g1 = Gate::new(
            "a",
            Arc::clone(&global),
            Access::default(),
            Limits::default(),
        );
        let g2 = Gate::new(
            "b",
            Arc::clone(&global),
            Access::default(),
            Limits::default(),
        );
        let _x = g1.admit(ip("127.0.0.1")).unwrap();
        let y = g2.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(
            g2.admit(ip("127.0.0.1")).unwrap_err(),
            Refusal::MaxConnections
        );
        drop(y);
        assert!(g1.admit(ip("127.0.0.1")).is_ok());
    }

    #[test]
    fn token_bucket_allows_one_seconds_burst_then_refills() {
        let mut b = TokenBucket::new(Rate { per_second: 5.0 });
        let t0 = b.last;
        for _ in 0..5 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        assert!(b.take(t0 + Duration::from_millis(400)));
        // Never more than the burst, however long it was idle.
        let later = t0 + Duration::from_secs(3600);
        let taken = (0..10).filter(|_| b.take(later)).count();
        assert_eq!(taken, 5);
    }

    #[test]
    fn refused_connections_take_no_token() {
        let g = gate(
            Access {
                allow: vec![],
                deny: nets(&["10.0.0.0/8"]),
            },
            Limits {
                rate: Some(Rate { per_second: 1.0 }),
                ..Limits::default()
            },
            100,
        );
        assert_eq!(g.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Denied);
        let _ok = g.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(g.admit(ip("127.0.0.1")).unwrap_err(), Refusal::Rate);
    }

    #[test]
    fn refusal_log_is_throttled_per_source_with_a_count() {
        let mut log = RefusalLog::default();
        let svc: Arc<str> = "s".into();
        let t0 = Instant::now();
        assert_eq!(log.note(&svc, ip("127.0.0.1"), t0), Some(1));
        for i in 0..100 {
            assert_eq!(
                log.note(&svc, ip("127.0.0.1"), t0 + Duration::from_millis(i)),
                None
            );
        }
        assert_eq!(log.note(&svc, ip("127.0.0.2"), t0), Some(1));
        assert_eq!(
            log.note(&svc, ip("127.0.0.1"), t0 + REFUSAL_LOG_WINDOW),
            Some(101)
        );
    }
}
