//! Counters an operator can scrape: plain atomics bumped on the hot path
//! (no lock, no allocation, no label lookup), and the Prometheus text
//! format (0.0.4) written only when someone asks.
//!
//! Per-service counters ([`ServiceStats`]) live in the service's `Gate`,
//! so they survive reloads that keep the name and vanish with it.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::admission::Refusal;

/// What happened to a connection at the door; each is counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A program's process was created.
    Started,
    /// An internal service took it.
    Internal,
    Denied,
    NotAllowed,
    RateLimited,
    PerSourceRateLimited,
    PerSourceLimited,
    InstanceLimited,
    MaxConnections,
    /// A PROXY header from a peer outside `proxy_from`.
    ProxyRefused,
    /// Too many connections already waiting for their PROXY header.
    ProxyBusy,
    /// A malformed, truncated or late PROXY header.
    ProxyInvalid,
    /// The TLS handshake failed or timed out.
    TlsFailed,
    /// The process could not be created.
    SpawnFailed,
    /// The configured account could not be used.
    UserFailed,
}

const OUTCOMES: [Outcome; 15] = [
    Outcome::Started,
    Outcome::Internal,
    Outcome::Denied,
    Outcome::NotAllowed,
    Outcome::RateLimited,
    Outcome::PerSourceRateLimited,
    Outcome::PerSourceLimited,
    Outcome::InstanceLimited,
    Outcome::MaxConnections,
    Outcome::ProxyRefused,
    Outcome::ProxyBusy,
    Outcome::ProxyInvalid,
    Outcome::TlsFailed,
    Outcome::SpawnFailed,
    Outcome::UserFailed,
];

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Started => "started",
            Outcome::Internal => "internal",
            Outcome::Denied => "denied",
            Outcome::NotAllowed => "not_allowed",
            Outcome::RateLimited => "rate_limited",
            Outcome::PerSourceRateLimited => "per_source_rate_limited",
            Outcome::PerSourceLimited => "per_source_limited",
            Outcome::InstanceLimited => "instance_limited",
            Outcome::MaxConnections => "max_connections",
            Outcome::ProxyRefused => "proxy_refused",
            Outcome::ProxyBusy => "proxy_busy",
            Outcome::ProxyInvalid => "proxy_invalid",
            Outcome::TlsFailed => "tls_failed",
            Outcome::SpawnFailed => "spawn_failed",
            Outcome::UserFailed => "user_failed",
        }
    }
}

impl From<Refusal> for Outcome {
    fn from(r: Refusal) -> Outcome {
        match r {
            Refusal::Denied => Outcome::Denied,
            Refusal::NotAllowed => Outcome::NotAllowed,
            Refusal::MaxConnections => Outcome::MaxConnections,
            Refusal::MaxInstances => Outcome::InstanceLimited,
            Refusal::PerSource => Outcome::PerSourceLimited,
            Refusal::Rate => Outcome::RateLimited,
            Refusal::PerSourceRate => Outcome::PerSourceRateLimited,
            Refusal::ProxyRefused => Outcome::ProxyRefused,
            Refusal::ProxyBusy => Outcome::ProxyBusy,
            Refusal::ProxyInvalid => Outcome::ProxyInvalid,
            Refusal::TlsFailed(_) => Outcome::TlsFailed,
            Refusal::SpawnFailed => Outcome::SpawnFailed,
        }
    }
}

/// How a started program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramExit {
    /// Exit status 0.
    Ok,
    /// Another exit status.
    Error,
    /// Killed by a signal (Unix).
    Signal,
    /// Its process existed but the program could not be executed (a
    /// missing or unreadable file, found after the fork).
    NotStarted,
}

const EXITS: [ProgramExit; 4] = [
    ProgramExit::Ok,
    ProgramExit::Error,
    ProgramExit::Signal,
    ProgramExit::NotStarted,
];

impl ProgramExit {
    fn as_str(self) -> &'static str {
        match self {
            ProgramExit::Ok => "ok",
            ProgramExit::Error => "error",
            ProgramExit::Signal => "signal",
            ProgramExit::NotStarted => "not_started",
        }
    }

    /// From an exit status: no code means a signal ended it (Unix; a
    /// Windows status always has a code).
    pub fn of(status: &std::process::ExitStatus) -> ProgramExit {
        match status.code() {
            Some(0) => ProgramExit::Ok,
            Some(_) => ProgramExit::Error,
            None => ProgramExit::Signal,
        }
    }
}

/// What became of a datagram sent to a UDP internal service (drops for a
/// bad source or an empty reply bucket are counted by its `UdpGuard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// Answered, or taken (discard).
    Served,
    /// Refused by `allow`, `deny`, `rate` or `per_source_rate`.
    Refused,
}

/// Upper bounds (seconds) of the session duration histogram's buckets.
const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// One service's counters; every update is one relaxed atomic add.
#[derive(Debug, Default)]
pub struct ServiceStats {
    connections: [AtomicU64; OUTCOMES.len()],
    exits: [AtomicU64; EXITS.len()],
    to_program: AtomicU64,
    to_client: AtomicU64,
    datagrams: [AtomicU64; 2],
    /// Per bucket, not cumulative (the last one: beyond every bound).
    durations: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_sum_micros: AtomicU64,
    tls_ok: AtomicU64,
    tls_failed: AtomicU64,
    tls_resumed: AtomicU64,
    /// The latest error (Unix seconds, text), for `wininetd status`.
    last_error: Mutex<Option<(u64, String)>>,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl ServiceStats {
    pub fn connection(&self, outcome: Outcome) {
        add(&self.connections[outcome as usize], 1);
    }

    pub fn exit(&self, how: ProgramExit) {
        add(&self.exits[how as usize], 1);
    }

    pub fn datagram(&self, what: Datagram) {
        add(&self.datagrams[what as usize], 1);
    }

    /// Bytes a relay moved (client → program, program → client).
    pub fn relayed(&self, to_program: u64, to_client: u64) {
        add(&self.to_program, to_program);
        add(&self.to_client, to_client);
    }

    /// A session (program or internal) that lasted `d`.
    pub fn session_ended(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let at = DURATION_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(DURATION_BUCKETS.len());
        add(&self.durations[at], 1);
        add(
            &self.duration_sum_micros,
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// A finished TLS handshake (the TLS stage calls this).
    pub fn tls_handshake(&self, ok: bool, resumed: bool) {
        add(if ok { &self.tls_ok } else { &self.tls_failed }, 1);
        if ok && resumed {
            add(&self.tls_resumed, 1);
        }
    }

    pub fn connections(&self, outcome: Outcome) -> u64 {
        get(&self.connections[outcome as usize])
    }

    /// Every outcome with its count, in a fixed order.
    pub fn outcomes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        OUTCOMES.iter().map(|&o| (o.as_str(), self.connections(o)))
    }

    /// Remembers an error for `wininetd status` (a cold path: errors only).
    pub fn error(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((unix_now(), message));
    }

    pub fn last_error(&self) -> Option<(u64, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn relayed_bytes(&self) -> (u64, u64) {
        (get(&self.to_program), get(&self.to_client))
    }
}

/// Counters of the daemon as a whole.
#[derive(Debug, Default)]
pub struct DaemonStats {
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Unix seconds of the last config applied (startup or reload).
    last_applied: AtomicU64,
}

impl DaemonStats {
    /// A config was applied; `reload`: by a reload, not at startup.
    pub fn applied(&self, reload: bool) {
        if reload {
            add(&self.reloads_ok, 1);
        }
        self.last_applied.store(unix_now(), Ordering::Relaxed);
    }

    pub fn last_applied(&self) -> u64 {
        get(&self.last_applied)
    }

    pub fn reload_failed(&self) {
        add(&self.reloads_failed, 1);
    }
}

/// Seconds since 1970.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One served service, as a scrape sees it.
pub struct ServiceView<'a> {
    pub name: &'a str,
    pub stats: &'a ServiceStats,
    pub live: u32,
    /// UDP guard drops: (bad_source, rate_limited); `None` for TCP.
    pub udp_drops: Option<(u64, u64)>,
}

/// What the OS tells cheaply about this process; `None` where it does not.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// Windows: handles, its nearest thing to descriptors.
    pub open_handles: Option<u64>,
}

/// Everything one scrape shows.
pub struct Snapshot<'a> {
    pub services: &'a [ServiceView<'a>],
    pub daemon: &'a DaemonStats,
    pub log_lines_dropped: u64,
    pub process: ProcessStats,
}

/// Writes `snap` in the Prometheus text exposition format 0.0.4.
pub fn render(snap: &Snapshot<'_>) -> String {
    let mut o = String::with_capacity(4096 + 2048 * snap.services.len());
    let services = snap.services;

    header(
        &mut o,
        "wininetd_connections_total",
        "counter",
        "Connections by what became of them at the door.",
    );
    for s in services {
        for out in OUTCOMES {
            let n = s.stats.connections(out);
            let _ = writeln!(
                o,
                "wininetd_connections_total{{service=\"{}\",outcome=\"{}\"}} {n}",
                Escaped(s.name),
                out.as_str()
            );
        }
    }

    header(
        &mut o,
        "wininetd_sessions_active",
        "gauge",
        "Live programs and internal sessions.",
    );
    for s in services {
        let _ = writeln!(
            o,
            "wininetd_sessions_active{{service=\"{}\"}} {}",
            Escaped(s.name),
            s.live
        );
    }

    header(
        &mut o,
        "wininetd_session_duration_seconds",
        "histogram",
        "How long ended programs and internal sessions ran.",
    );
    for s in services {
        let name = Escaped(s.name);
        let mut cumulative = 0u64;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += get(&s.stats.durations[i]);
            let _ = writeln!(
                o,
                "wininetd_session_duration_seconds_bucket{{service=\"{name}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += get(&s.stats.durations[DURATION_BUCKETS.len()]);
        let _ = writeln!(
            o,
            "wininetd_session_duration_seconds_bucket{{service=\"{name}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = get(&s.stats.duration_sum_micros) as f64 / 1e6;
        let _ = writeln!(
            o,
            "wininetd_session_duration_seconds_sum{{service=\"{name}\"}} {sum}"
        );
        let _ = writeln!(
            o,
            "wininetd_session_duration_seconds_count{{service=\"{name}\"}} {cumulative}"
        );
    }

    header(
        &mut o,
        "wininetd_program_exits_total",
        "counter",
        "Programs that ended, by how.",
    );
    for s in services {
        for how in EXITS {
            let _ = writeln!(
                o,
                "wininetd_program_exits_total{{service=\"{}\",result=\"{}\"}} {}",
                Escaped(s.name),
                how.as_str(),
                get(&s.stats.exits[how as usize])
            );
        }
    }

    header(
        &mut o,
        "wininetd_relay_bytes_total",
        "counter",
        "Bytes relayed for `pipe` sessions, counted as each session ends.",
    );
    for s in services {
        let (up, down) = s.stats.relayed_bytes();
        for (direction, n) in [("to_program", up), ("to_client", down)] {
            let _ = writeln!(
                o,
                "wininetd_relay_bytes_total{{service=\"{}\",direction=\"{direction}\"}} {n}",
                Escaped(s.name)
            );
        }
    }

    header(
        &mut o,
        "wininetd_tls_handshakes_total",
        "counter",
        "TLS handshakes, by result.",
    );
    for s in services {
        for (result, c) in [("ok", &s.stats.tls_ok), ("failed", &s.stats.tls_failed)] {
            let _ = writeln!(
                o,
                "wininetd_tls_handshakes_total{{service=\"{}\",result=\"{result}\"}} {}",
                Escaped(s.name),
                get(c)
            );
        }
    }
    header(
        &mut o,
        "wininetd_tls_resumed_total",
        "counter",
        "TLS handshakes that resumed an earlier session.",
    );
    for s in services {
        let _ = writeln!(
            o,
            "wininetd_tls_resumed_total{{service=\"{}\"}} {}",
            Escaped(s.name),
            get(&s.stats.tls_resumed)
        );
    }

    header(
        &mut o,
        "wininetd_udp_datagrams_total",
        "counter",
        "Datagrams to UDP internal services, by what became of them.",
    );
    for s in services {
        let Some((bad_source, rate_limited)) = s.udp_drops else {
            continue;
        };
        let served = get(&s.stats.datagrams[Datagram::Served as usize]);
        let refused = get(&s.stats.datagrams[Datagram::Refused as usize]);
        for (outcome, n) in [
            ("served", served),
            ("refused", refused),
            ("bad_source", bad_source),
            ("rate_limited", rate_limited),
        ] {
            let _ = writeln!(
                o,
                "wininetd_udp_datagrams_total{{service=\"{}\",outcome=\"{outcome}\"}} {n}",
                Escaped(s.name)
            );
        }
    }

    let d = snap.daemon;
    header(
        &mut o,
        "wininetd_config_reloads_total",
        "counter",
        "Reloads, by result.",
    );
    let _ = writeln!(
        o,
        "wininetd_config_reloads_total{{result=\"ok\"}} {}",
        get(&d.reloads_ok)
    );
    let _ = writeln!(
        o,
        "wininetd_config_reloads_total{{result=\"failed\"}} {}",
        get(&d.reloads_failed)
    );
    header(
        &mut o,
        "wininetd_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When a config was last applied (startup or reload).",
    );
    let _ = writeln!(
        o,
        "wininetd_config_last_reload_success_timestamp_seconds {}",
        get(&d.last_applied)
    );
    header(
        &mut o,
        "wininetd_log_lines_dropped_total",
        "counter",
        "Log lines dropped because the log sink could not keep up.",
    );
    let _ = writeln!(
        o,
        "wininetd_log_lines_dropped_total {}",
        snap.log_lines_dropped
    );
    header(
        &mut o,
        "wininetd_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    let _ = writeln!(
        o,
        "wininetd_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );

    let p = snap.process;
    if let Some(v) = p.cpu_seconds {
        header(
            &mut o,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        let _ = writeln!(o, "process_cpu_seconds_total {v}");
    }
    if let Some(v) = p.resident_bytes {
        header(
            &mut o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory (Windows: working set), in bytes.",
        );
        let _ = writeln!(o, "process_resident_memory_bytes {v}");
    }
    if let Some(v) = p.open_fds {
        header(
            &mut o,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
        );
        let _ = writeln!(o, "process_open_fds {v}");
    }
    if let Some(v) = p.max_fds {
        header(
            &mut o,
            "process_max_fds",
            "gauge",
            "The limit on open file descriptors.",
        );
        let _ = writeln!(o, "process_max_fds {v}");
    }
    if let Some(v) = p.open_handles {
        header(
            &mut o,
            "process_open_handles",
            "gauge",
            "Open handles (Windows).",
        );
        let _ = writeln!(o, "process_open_handles {v}");
    }
    o
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{text}"))
    }

    #[test]
    fn counts_show_in_the_text_format() {
        let stats = ServiceStats::default();
        stats.connection(Outcome::Started);
        stats.connection(Outcome::Started);
        stats.connection(Refusal::Denied.into());
        stats.exit(ProgramExit::Signal);
        stats.relayed(10, 20);
        stats.session_ended(Duration::from_millis(30));
        stats.session_ended(Duration::from_secs(7200));
        stats.datagram(Datagram::Served);
        let daemon = DaemonStats::default();
        daemon.applied(true);
        daemon.reload_failed();
        let views = [ServiceView {
            name: "a\"b",
            stats: &stats,
            live: 3,
            udp_drops: Some((4, 5)),
        }];
        let text = render(&Snapshot {
            services: &views,
            daemon: &daemon,
            log_lines_dropped: 6,
            process: ProcessStats::default(),
        });
        let svc = "service=\"a\\\"b\"";
        for (prefix, value) in [
            (
                format!("wininetd_connections_total{{{svc},outcome=\"started\"}}"),
                "2",
            ),
            (
                format!("wininetd_connections_total{{{svc},outcome=\"denied\"}}"),
                "1",
            ),
            (
                format!("wininetd_connections_total{{{svc},outcome=\"tls_failed\"}}"),
                "0",
            ),
            (format!("wininetd_sessions_active{{{svc}}}"), "3"),
            (
                format!("wininetd_session_duration_seconds_bucket{{{svc},le=\"0.01\"}}"),
                "0",
            ),
            (
                format!("wininetd_session_duration_seconds_bucket{{{svc},le=\"0.05\"}}"),
                "1",
            ),
            (
                format!("wininetd_session_duration_seconds_bucket{{{svc},le=\"3600\"}}"),
                "1",
            ),
            (
                format!("wininetd_session_duration_seconds_bucket{{{svc},le=\"+Inf\"}}"),
                "2",
            ),
            (
                format!("wininetd_session_duration_seconds_sum{{{svc}}}"),
                "7200.03",
            ),
            (
                format!("wininetd_program_exits_total{{{svc},result=\"signal\"}}"),
                "1",
            ),
            (
                format!("wininetd_relay_bytes_total{{{svc},direction=\"to_client\"}}"),
                "20",
            ),
            (
                format!("wininetd_udp_datagrams_total{{{svc},outcome=\"served\"}}"),
                "1",
            ),
            (
                format!("wininetd_udp_datagrams_total{{{svc},outcome=\"rate_limited\"}}"),
                "5",
            ),
            ("wininetd_config_reloads_total{result=\"ok\"}".into(), "1"),
            (
                "wininetd_config_reloads_total{result=\"failed\"}".into(),
                "1",
            ),
            ("wininetd_log_lines_dropped_total".into(), "6"),
        ] {
            let l = line(&text, &format!("{prefix} "));
            assert_eq!(l, format!("{prefix} {value}"));
        }
        assert!(text.ends_with('\n'));
        // Without process figures, no process series.
        assert!(!text.contains("process_"));
    }

    #[test]
    fn refusals_map_to_their_outcomes() {
        let all = [
            (Refusal::Denied, "denied"),
            (Refusal::NotAllowed, "not_allowed"),
            (Refusal::MaxConnections, "max_connections"),
            (Refusal::MaxInstances, "instance_limited"),
            (Refusal::PerSource, "per_source_limited"),
            (Refusal::Rate, "rate_limited"),
            (Refusal::PerSourceRate, "per_source_rate_limited"),
            (Refusal::ProxyRefused, "proxy_refused"),
            (Refusal::ProxyBusy, "proxy_busy"),
            (Refusal::ProxyInvalid, "proxy_invalid"),
            (Refusal::TlsFailed("client closed"), "tls_failed"),
            (Refusal::SpawnFailed, "spawn_failed"),
        ];
        for (r, name) in all {
            assert_eq!(Outcome::from(r).as_str(), name);
        }
        // Every outcome has its own slot.
        for (i, o) in OUTCOMES.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
        for (i, e) in EXITS.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
    }
}
