//! Faults injected, nothing lost (issue 15): out of processes, out of
//! descriptors (accept, pipe relay, TLS), programs that misbehave, and the
//! config replaced, truncated or deleted during a reload storm. Each test
//! asserts what the daemon did: refused cleanly, logged once, kept
//! serving, recovered. (The log sink faults are in tests/unix_logging.rs,
//! the pipe budget in tests/pipe_budget.rs.) Needs root: CI runs as root.
#![cfg(target_os = "linux")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// Asserts that `s` stays open (no byte, no EOF) for `for_`.
fn assert_open(s: &mut TcpStream, for_: Duration) {
    s.set_read_timeout(Some(for_)).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the connection did not stay open: {other:?}"),
    }
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
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
    no_lookup_thread(&d);
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

/// The daemon's threads named `prefix…` now.
fn threads_named(pid: i32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with(prefix))
        .count()
}

/// Waits until the daemon has no thread but its own: the account lookup
/// of its start (a thread left idle there would hide one that cannot be
/// created, and would make its thread count one too many).
fn no_lookup_thread(d: &Daemon) {
    wait_until("no lookup thread", Duration::from_secs(15), || {
        threads_named(d.pid(), "tokio-rt") + threads_named(d.pid(), "lookup") == 0
    });
}

#[test]
fn a_reload_out_of_processes_is_applied_and_the_daemon_lives() {
    const UID: u32 = 64_916;
    let ports = free_ports(2);
    let one = service(ports[0], r#"["/bin/cat"]"#, "");
    let mut d = Daemon::start_as("w.toml", &one, &[], UID);
    no_lookup_thread(&d);
    set_soft_limit_as(UID, d.pid(), "nproc", threads(d.pid()));
    let two = [one, service(ports[1], r#"["/bin/cat"]"#, "")].concat();
    let log = d.reload(&two, "reloaded: serving 2 service(s)");
    assert!(log.contains("no thread for a lookup"), "{log}");
    assert!(d.alive(), "{log}");
    assert_closed_at_once(connect(ports[1]), Duration::from_secs(10));
    set_soft_limit_as(UID, d.pid(), "nproc", 1024);
    assert_eq!(exchange(ports[1], b"new"), b"new");
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
fn programs_that_exit_at_once_never_read_never_write_or_close_stdout_end_and_are_reaped() {
    let ports = free_ports(5);
    let config = [
        service(ports[0], r#"["/bin/true"]"#, ""),
        service(ports[1], r#"["/bin/sleep", "1"]"#, ""),
        service(ports[2], r#"["/bin/sh", "-c", "exec cat >/dev/null"]"#, ""),
        service(
            ports[3],
            r#"["/bin/sh", "-c", "exec 1>&- 2>&-; exec cat >/dev/null"]"#,
            "handoff = \"pipe\"",
        ),
        service(ports[4], r#"["/bin/cat"]"#, ""),
    ]
    .concat();
    let d = Daemon::start("w.toml", &config, &[]);
    // Exits at once: the client gets EOF.
    assert_eq!(exchange_on(connect(ports[0]), b"ignored"), b"");
    // Never reads: the client's writes end when the program does.
    let mut s = connect(ports[1]);
    let started = Instant::now();
    let chunk = [0u8; 64 * 1024];
    let mut sent = 0usize;
    while sent < 64 << 20 && s.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{sent} bytes went to a program that never reads"
    );
    assert_eq!(read_all(&mut s), b"");
    // Never writes: reads everything, the client gets EOF once it is done.
    assert_eq!(exchange(ports[2], &pattern(1 << 20, 2)), b"");
    // Closes only its output (pipe relay): the client reads EOF while the
    // program still takes input.
    let mut s = connect(ports[3]);
    let mut b = [0u8; 16];
    assert_eq!(
        s.read(&mut b).unwrap(),
        0,
        "no EOF after the program closed stdout"
    );
    s.write_all(&pattern(256 * 1024, 3)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut s), b"");
    // Others were served all along, and nothing is left behind.
    assert_eq!(exchange(ports[4], b"still here"), b"still here");
    drained(&d);
}

#[test]
fn a_background_process_keeping_the_socket_holds_only_its_connection() {
    let ports = free_ports(2);
    let config = [
        service(ports[0], r#"["/bin/sh", "-c", "sleep 60 & echo $!"]"#, ""),
        service(ports[1], r#"["/bin/cat"]"#, ""),
    ]
    .concat();
    let d = Daemon::start("w.toml", &config, &[]);
    let mut s = connect(ports[0]);
    let bg: i32 = read_line(&mut s).parse().unwrap();
    // The program is gone and reaped; its background child has the socket,
    // so the connection lasts as long as it does (as with inetd).
    drained(&d);
    assert_open(&mut s, Duration::from_millis(500));
    assert_eq!(exchange(ports[1], b"others"), b"others");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bg), Signal::SIGKILL).unwrap();
    assert_eq!(read_all(&mut s), b"");
    wait_until(
        "the background process ends",
        Duration::from_secs(10),
        || ended(bg),
    );
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

/// A config whose `steady` service greets with `version`, and whose `extra`
/// service exists only in good configs.
fn versioned(steady: u16, extra: u16, version: usize) -> String {
    format!(
        "[[service]]\nname = \"steady\"\nport = {steady}\nbind = [\"127.0.0.1\"]\n\
         command = [\"/bin/sh\", \"-c\", \"printf '%s:' \\\"$GREETING\\\"; exec cat\"]\n\
         env = {{ GREETING = \"v{version}\" }}\n\n\
         [[service]]\nname = \"extra\"\nport = {extra}\nbind = [\"127.0.0.1\"]\n\
         command = [\"/bin/cat\"]\n"
    )
}

/// The greeting `steady` answers with now.
fn greeting(port: u16) -> String {
    let got = exchange(port, b"ping");
    let got = String::from_utf8(got).unwrap();
    got.strip_suffix(":ping")
        .unwrap_or_else(|| panic!("steady answered {got:?}"))
        .to_string()
}

/// Waits (at most 10 s) until no reload has started for 500 ms.
fn settle(d: &Daemon) {
    let mut seen = usize::MAX;
    for _ in 0..20 {
        let now = d.log().matches("reloading ").count();
        if now == seen {
            return;
        }
        seen = now;
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("reloads went on for 10 s after a burst of signals");
}

/// The ERROR lines of the last reload, which must be rejected.
fn last_rejection(d: &Daemon) -> Vec<String> {
    let log = d.log();
    let (_, last) = log.rsplit_once("reloading ").unwrap();
    last.lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_string)
        .collect()
}

#[test]
fn config_renamed_truncated_or_deleted_in_a_reload_storm_keeps_the_last_good_one() {
    let [steady, extra] = free_ports(2)[..] else {
        unreachable!()
    };
    let mut d = Daemon::start("w.toml", &versioned(steady, extra, 0), &[]);
    let path = d.config.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
            std::thread::spawn(move || {
                for n in 0..50_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let data = pattern(512, i * 100_000 + n);
                    let mut got = match TcpStream::connect(("127.0.0.1", steady)) {
                        Ok(s) => exchange_on(s, &data),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("connect: {e}"));
                            continue;
                        }
                    };
                    let colon = got.iter().position(|&b| b == b':');
                    match colon {
                        Some(c) if got[c + 1..] == data[..] => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            got.truncate(64);
                            failures.lock().unwrap().push(format!("got {got:?}"));
                        }
                    }
                }
            })
        })
        .collect();
    let reload = |expect: &str| {
        let before = d.log().matches(expect).count();
        d.signal(Signal::SIGHUP);
        d.wait_log_count(expect, before + 1, Duration::from_secs(10));
    };
    let rejected = |d: &Daemon, version: usize, cause: &str| {
        let errors = last_rejection(d);
        assert_eq!(errors.len(), 2, "one cause and the verdict: {errors:#?}");
        assert!(errors[0].contains(cause), "{errors:#?}");
        assert!(
            errors[1].contains("reload rejected: 1 error(s)"),
            "{errors:#?}"
        );
        assert_eq!(greeting(steady), format!("v{version}"));
        assert_eq!(exchange(extra, b"kept"), b"kept");
    };
    let mut version = 0;
    for round in 0..6 {
        // Replaced atomically: written aside, renamed over it.
        version += 1;
        let aside = path.with_extension("new");
        std::fs::write(&aside, versioned(steady, extra, version)).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        if round % 2 == 0 {
            reload("reloaded: serving");
        } else {
            // Over the control channel: it answers once the reload is done.
            let out = Command::new(BIN)
                .arg("--reload")
                .env("WININETD_RUN_DIR", d.run_dir())
                .output()
                .unwrap();
            assert!(out.status.success(), "--reload: {out:?}");
        }
        assert_eq!(greeting(steady), format!("v{version}"));
        // Truncated mid-write: the reload sees half a file, inside a string.
        let full = versioned(steady, extra, version + 1);
        let cut = full.find("/bin/sh").unwrap() + 4;
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&full.as_bytes()[..cut]).unwrap();
        f.sync_all().unwrap();
        reload("reload rejected");
        rejected(&d, version, "w.toml");
        // The writer finishes: the whole file is taken.
        f.write_all(&full.as_bytes()[cut..]).unwrap();
        drop(f);
        version += 1;
        reload("reloaded: serving");
        assert_eq!(greeting(steady), format!("v{version}"));
        // Deleted: rejected, the last good one kept.
        std::fs::remove_file(&path).unwrap();
        reload("reload rejected");
        rejected(&d, version, "w.toml");
        std::fs::write(&path, versioned(steady, extra, version)).unwrap();
        // A burst of signals between two rounds; the next round starts
        // once their reloads are over.
        if round % 2 == 1 {
            for _ in 0..10 {
                d.signal(Signal::SIGHUP);
            }
            settle(&d);
        }
    }
    // The burst's reloads, if any, are done once the last one says so.
    reload("reloaded: serving");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} connections failed: {:?}",
        failures.len(),
        failures.len() + served.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(served.load(Ordering::Relaxed) > 0);
    assert!(d.alive());
    eprintln!(
        "{} connections served, none failed, across {} reloads ({} rejected)",
        served.load(Ordering::Relaxed),
        d.log().matches("reloading ").count(),
        d.log().matches("reload rejected").count()
    );
}
