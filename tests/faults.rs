//! Faults injected, nothing lost (issue 15): out of processes, out of
//! descriptors (accept, pipe relay, TLS), programs that misbehave, and the
//! config replaced, truncated or deleted during a reload storm. Each test
//! asserts what the daemon did: refused cleanly, logged once, kept
//! serving, recovered. (The log sink faults are in tests/unix_logging.rs,
//! the pipe budget in tests/pipe_budget.rs.) Needs root: CI runs as root.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A TOML service on 127.0.0.1:`port` running `command` (a TOML array),
/// with `extra` keys.
fn service(port: u16, command: &str, extra: &str) -> String {
    format!("[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = {command}\n{extra}\n")
}

/// The daemon's live programs, as `wininetd status` reports them.
fn live(d: &Daemon) -> usize {
    let out = Command::new(BIN)
        .arg("status")
        .env("WININETD_RUN_DIR", d.run_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(" live program(s)")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no live count in {text:?}"))
}

/// Waits until the daemon has no live program and no child process left
/// (a zombie is still a child).
fn drained(d: &Daemon) {
    wait_until("the child table drains", Duration::from_secs(10), || {
        live(d) == 0
    });
    wait_until(
        "no child process (nor zombie) left",
        Duration::from_secs(10),
        || d.children().is_some_and(|c| c.is_empty()),
    );
}

/// Whether `pid` has ended (gone, or a zombie its new parent has yet to
/// reap).
fn ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Threads of `pid` (each counts against RLIMIT_NPROC).
fn threads(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Reads one line (up to `\n`) from `s`.
fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 256 {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            other => panic!("the line ended with {other:?} after {line:?}"),
        }
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn out_of_processes_connections_are_refused_logged_once_and_served_when_programs_end() {
    // Root ignores RLIMIT_NPROC: the daemon runs as a uid of its own, so
    // that it alone counts against the limit.
    const UID: u32 = 64_915;
    let port = free_port();
    let d = Daemon::start_as("w.toml", &service(port, r#"["/bin/cat"]"#, ""), &[], UID);
    let mut held: Vec<TcpStream> = (0..2).map(|_| connect(port)).collect();
    for s in &mut held {
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }
    // Its threads and the two programs: no process left to start.
    set_soft_limit_as(UID, d.pid(), "nproc", threads(d.pid()) + 2);
    let first = Instant::now();
    for _ in 0..5 {
        assert_closed_at_once(connect(port), Duration::from_secs(10));
    }
    d.wait_log("refused: cannot start the program", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let lines = d.lines_with("cannot start the program");
    assert_eq!(lines.len(), 1, "one line per window: {lines:#?}");
    assert!(
        lines[0].contains("Resource temporarily unavailable"),
        "{}",
        lines[0]
    );
    // The next window's line counts what the first one held back.
    let window = Duration::from_millis(5_200).saturating_sub(first.elapsed());
    std::thread::sleep(window);
    assert_closed_at_once(connect(port), Duration::from_secs(10));
    d.wait_log_count("cannot start the program", 2, Duration::from_secs(10));
    let lines = d.lines_with("cannot start the program");
    assert!(lines[1].contains("refused=5"), "{lines:#?}");
    // The programs end: processes are free again, and it serves.
    drop(held);
    drained(&d);
    assert_eq!(exchange(port, b"back"), b"back");
    drained(&d);
    assert!(d.log().matches("panicked").count() == 0, "{}", d.log());
}

#[test]
fn accept_out_of_descriptors_logs_once_per_window_and_backs_off() {
    let port = free_port();
    let mut d = Daemon::start("w.toml", &service(port, r#"["/bin/cat"]"#, ""), &[]);
    // No descriptor left: accept() itself fails with EMFILE.
    set_limit(d.pid(), libc::RLIMIT_NOFILE, lowest_free_fd(d.pid()));
    let mut pending = connect(port);
    d.wait_log("accept on", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let failures = d.lines_with("accept on");
    assert_eq!(
        failures.len(),
        1,
        "accept failures logged more than once per window: {failures:#?}"
    );
    assert!(
        failures[0].contains("Too many open files"),
        "{}",
        failures[0]
    );
    // Once descriptors are available again, the waiting client is served.
    set_limit(d.pid(), libc::RLIMIT_NOFILE, 1024);
    pending.write_all(b"back").unwrap();
    pending.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut pending), b"back");
    d.wait_log("works again after", Duration::from_secs(10));
    assert!(d.alive());
}

/// Leaves the daemon one descriptor: enough to accept a connection, none
/// for the pipes of its program.
fn one_descriptor_left(d: &Daemon) {
    set_limit(d.pid(), libc::RLIMIT_NOFILE, lowest_free_fd(d.pid()) + 1);
}

#[test]
fn pipe_relay_out_of_descriptors_refuses_cleanly_and_serves_once_they_return() {
    let port = free_port();
    let config = service(port, r#"["/bin/cat"]"#, "handoff = \"pipe\"");
    let d = Daemon::start("w.toml", &config, &[]);
    one_descriptor_left(&d);
    for _ in 0..3 {
        assert_closed_at_once(connect(port), Duration::from_secs(10));
    }
    d.wait_log("refused: cannot start the program", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let lines = d.lines_with("cannot start the program");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("Too many open files"), "{}", lines[0]);
    set_limit(d.pid(), libc::RLIMIT_NOFILE, 1024);
    assert_eq!(exchange(port, b"relayed"), b"relayed");
    drained(&d);
}

/// `openssl s_client` to 127.0.0.1:`port` (bounded by `timeout`): what the
/// server sent.
fn tls_client(port: u16) -> String {
    let out = Command::new("timeout")
        .args([
            "20", "openssl", "s_client", "-quiet", "-ign_eof", "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output()
        .expect("timeout (coreutils) and openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tls_out_of_descriptors_refuses_cleanly_and_serves_once_they_return() {
    let pki = tempfile::tempdir().unwrap();
    let (cert, key) = (pki.path().join("c.pem"), pki.path().join("k.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{made:?}");
    let port = free_port();
    let tls = format!(
        "[service.tls]\ncert = \"{}\"\nkey = \"{}\"",
        cert.display(),
        key.display()
    );
    let d = Daemon::start(
        "w.toml",
        &service(port, r#"["/bin/echo", "tls-served"]"#, &tls),
        &[],
    );
    one_descriptor_left(&d);
    for _ in 0..2 {
        let got = tls_client(port);
        assert!(!got.contains("tls-served"), "{got}");
    }
    d.wait_log("refused: cannot start the program", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let lines = d.lines_with("cannot start the program");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("Too many open files"), "{}", lines[0]);
    set_limit(d.pid(), libc::RLIMIT_NOFILE, 1024);
    let got = tls_client(port);
    assert!(got.contains("tls-served"), "{got:?}\n{}", d.log());
    drained(&d);
}

#[test]
fn stopped_and_sigterm_ignoring_programs_are_bounded_and_ended_by_kill_on_stop() {
    let ports = free_ports(3);
    let config = [
        // Stops itself: the relay's idle timeout ends its connection.
        service(
            ports[0],
            r#"["/bin/sh", "-c", "echo $$; kill -STOP $$; exec cat"]"#,
            "handoff = \"pipe\"\ntimeout = 1",
        ),
        service(
            ports[1],
            r#"["/bin/sh", "-c", "trap '' TERM; echo $$; exec sleep 60"]"#,
            "",
        ),
        service(ports[2], r#"["/bin/cat"]"#, ""),
    ]
    .concat();
    let mut d = Daemon::start("w.toml", &config, &["--kill-on-stop"]);
    let mut stopped = connect(ports[0]);
    let stopped_pid: i32 = read_line(&mut stopped).parse().unwrap();
    let started = Instant::now();
    assert_eq!(read_all(&mut stopped), b"");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the idle timeout did not end the connection of a stopped program"
    );
    let mut stubborn = connect(ports[1]);
    let stubborn_pid: i32 = read_line(&mut stubborn).parse().unwrap();
    assert_eq!(exchange(ports[2], b"others"), b"others");
    wait_until(
        "the others' program is reaped",
        Duration::from_secs(10),
        || live(&d) == 2,
    );
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}\n{}", d.log());
    wait_until("the stopped program ends", Duration::from_secs(5), || {
        ended(stopped_pid)
    });
    wait_until(
        "the program ignoring SIGTERM ends",
        Duration::from_secs(5),
        || ended(stubborn_pid),
    );
    let log = d.log();
    assert!(
        log.contains("ended 2 running program(s), 1 killed after ignoring SIGTERM"),
        "{log}"
    );
}
