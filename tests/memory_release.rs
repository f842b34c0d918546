//! Memory goes back once a crowd of sessions has ended: the daemon's
//! resident memory (VmRSS, from /proc) returns to within 5 % of what it
//! was before the crowd came. `pipe` sessions show it best: each has a
//! relay, whose allocations glibc would otherwise keep. (The children
//! table's own shrinking is tested in `children.rs`.)
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const SESSIONS: usize = 2000;
/// From the last program's end.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Opens `n` sessions (from 127.0.0.1 … 127.0.0.4, eight at a time) on
/// `port`, each with a byte echoed so its program surely runs.
fn open_sessions(port: u16, n: usize) -> Vec<TcpStream> {
    const THREADS: usize = 8;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    (t..n)
                        .step_by(THREADS)
                        .map(|i| {
                            let mut s = connect_from(&format!("127.0.0.{}", 1 + i % 4), port);
                            s.write_all(b"x").unwrap();
                            let mut b = [0u8; 1];
                            s.read_exact(&mut b).unwrap();
                            assert_eq!(&b, b"x");
                            s
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

fn children(d: &Daemon) -> usize {
    d.children().expect("/proc/PID/task/PID/children").len()
}

/// Opens and closes a crowd of `SESSIONS` on the service `handoff`;
/// returns VmRSS before (after a warm-up), while held, and after.
fn crowd(handoff: &str) -> (u64, u64, u64) {
    let port = free_port();
    let d = Daemon::start(
        "m.toml",
        &format!(
            "max_connections = 10000\n[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = [\"/bin/cat\"]\nhandoff = \"{handoff}\"\n"
        ),
        &[],
    );
    // What is paid once (code paths, the runtime's first allocations, the
    // path that gives memory back after a crowd) is paid before the first
    // reading.
    drop(open_sessions(port, 300));
    wait_until("warm-up reaped", Duration::from_secs(30), || {
        children(&d) == 0
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(d.pid());

    let held = open_sessions(port, SESSIONS);
    assert_eq!(children(&d), SESSIONS);
    let during = rss_kib(d.pid());
    drop(held);
    wait_until("every program reaped", Duration::from_secs(60), || {
        children(&d) == 0
    });
    // Relays end just after their programs, and memory is given back a
    // moment later: wait for it, a bounded time.
    let deadline = std::time::Instant::now() + RELEASE_WITHIN;
    let mut after = rss_kib(d.pid());
    while after > before + before / 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = rss_kib(d.pid());
    }
    eprintln!(
        "{handoff}: VmRSS {before} KiB before, {during} KiB with {SESSIONS} sessions, {after} KiB after"
    );
    (before, during, after)
}

fn assert_released(handoff: &str) {
    let (before, during, after) = crowd(handoff);
    assert!(
        during > before + before / 20,
        "{handoff}: the crowd did not show in VmRSS ({before} -> {during} KiB): nothing measured"
    );
    assert!(
        after <= before + before / 20,
        "{handoff}: VmRSS {before} KiB before {SESSIONS} sessions, {during} KiB with them, {after} KiB {RELEASE_WITHIN:?} after they ended (more than 5 % kept)"
    );
}

#[test]
fn pipe_sessions_give_their_memory_back_when_they_end() {
    assert_released("pipe");
}

/// glibc's per-thread cache keeps freed chunks out of `malloc_trim`'s
/// reach, scattered over a crowd's pages (~0.3 MiB after 3,000 `pipe`
/// sessions): the daemon starts itself again with it cut to one chunk per
/// size, and leaves a
/// setting of the cache made by whoever started it alone. Seen through a
/// program given the daemon's `GLIBC_TUNABLES` (/proc/PID/environ will
/// not do: glibc cuts the variable there at each value it reads).
#[cfg(target_env = "gnu")]
#[test]
fn the_daemon_runs_with_a_small_glibc_per_thread_cache() {
    let port = free_port();
    let config = format!(
        "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = [\"/usr/bin/env\"]\npass_env = [\"GLIBC_TUNABLES\"]\n"
    );
    let cases = [
        (None, "glibc.malloc.tcache_count=1"),
        (
            Some("glibc.malloc.arena_max=2"),
            "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=1",
        ),
        (
            Some("glibc.malloc.tcache_count=3"),
            "glibc.malloc.tcache_count=3",
        ),
    ];
    for (given, want) in cases {
        let d = Daemon::start_with("t.toml", &config, &[], |c| {
            match given {
                Some(t) => c.env("GLIBC_TUNABLES", t),
                None => c.env_remove("GLIBC_TUNABLES"),
            };
        });
        let out = String::from_utf8(exchange(port, b"")).unwrap();
        let seen = out.lines().find_map(|l| l.strip_prefix("GLIBC_TUNABLES="));
        assert_eq!(seen, Some(want), "started with {given:?}: {out}");
        drop(d);
    }
}
