//! The extended (`.toml`) config against the real binary, one test per
//! key or rule: each would fail if the daemon ignored what it names.
//! Every listener is on loopback; clients use 127.0.0.1, 127.0.0.2 … and ::1.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const AT_ONCE: Duration = Duration::from_secs(5);
const LOG_WAIT: Duration = Duration::from_secs(10);

/// One `[[service]]` on 127.0.0.1:`port` with the given extra keys.
fn service(port: u16, keys: &str) -> String {
    format!("[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\n{keys}\n\n")
}

/// Proves a `/bin/cat` program runs on `s` (it echoes) and its start is
/// logged, and keeps the connection open.
fn held(d: &Daemon, mut s: TcpStream) -> TcpStream {
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
    let peer = s.local_addr().unwrap();
    wait_until(&format!("the start for {peer} is logged"), LOG_WAIT, || {
        d.lines_with(" started ")
            .iter()
            .any(|l| l.contains(&format!("peer={peer} ")))
    });
    s
}

/// Ends a held `/bin/cat` session and waits until its program has ended.
fn release(d: &Daemon, s: TcpStream) {
    let peer = s.local_addr().unwrap();
    drop(s);
    wait_until(&format!("the program of {peer} ends"), LOG_WAIT, || {
        d.lines_with(" ended ")
            .iter()
            .any(|l| l.contains(&format!("peer={peer} ")))
    });
}

/// Exactly `n` programs have been started (their log lines may trail
/// their output a little).
fn assert_started(d: &Daemon, n: usize) {
    d.wait_log_count(" started ", n, LOG_WAIT);
    assert_eq!(d.started(), n, "{}", d.log());
}

/// A connection the daemon must refuse: closed without a byte, no program
/// started for it, and a log line saying `why`.
fn assert_refused(d: &Daemon, why: &str, client: impl FnOnce() -> TcpStream) {
    let needle = format!("refused: {why}");
    let refused_before = d.lines_with(&needle).len();
    let s = client();
    let peer = s.local_addr().unwrap();
    assert_closed_at_once(s, AT_ONCE);
    d.wait_log_count(&needle, refused_before + 1, LOG_WAIT);
    assert!(
        !d.mentions_peer(peer),
        "a program was started for the refused {peer}:\n{}",
        d.log()
    );
}

#[test]
fn deny_refuses_at_once_and_wins_over_allow() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &service(
            port,
            r#"command = ["/bin/echo", "ran"]
allow = ["127.0.0.0/8"]
deny = ["127.0.0.1/32"]"#,
        ),
        &[],
    );
    assert_refused(&d, "source is in the deny list", || {
        connect_from("127.0.0.1", port)
    });
    let line = &d.lines_with("refused:")[0];
    assert!(line.contains("source=127.0.0.1"), "{line}");
    // The rest of the allowed block is served.
    assert_eq!(exchange_on(connect_from("127.0.0.2", port), b""), b"ran\n");
    assert_started(&d, 1);
}

#[test]
fn allow_list_refuses_every_other_source() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &service(
            port,
            r#"command = ["/bin/echo", "ran"]
allow = ["127.0.0.2/32", "127.0.0.3"]"#,
        ),
        &[],
    );
    assert_refused(&d, "source is not in the allow list", || {
        connect_from("127.0.0.1", port)
    });
    assert_eq!(exchange_on(connect_from("127.0.0.2", port), b""), b"ran\n");
    assert_eq!(exchange_on(connect_from("127.0.0.3", port), b""), b"ran\n");
    assert_started(&d, 2);
}

#[test]
fn per_source_limit_refuses_the_next_and_frees_the_slot_on_exit() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &service(port, "command = [\"/bin/cat\"]\nper_source = 2"),
        &[],
    );
    let first = held(&d, connect_from("127.0.0.1", port));
    let _second = held(&d, connect_from("127.0.0.1", port));
    assert_refused(&d, "per_source limit reached", || {
        connect_from("127.0.0.1", port)
    });
    // Another source has its own count.
    assert_eq!(
        exchange_on(connect_from("127.0.0.2", port), b"other"),
        b"other"
    );
    // A limit reached never disables the service: a freed slot is reused.
    release(&d, first);
    assert_eq!(
        exchange_on(connect_from("127.0.0.1", port), b"again"),
        b"again"
    );
}

#[test]
fn max_instances_limit_counts_live_programs_of_the_service() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &service(port, "command = [\"/bin/cat\"]\nmax_instances = 2"),
        &[],
    );
    let first = held(&d, connect_from("127.0.0.1", port));
    let _second = held(&d, connect_from("127.0.0.2", port));
    assert_refused(&d, "max_instances reached", || {
        connect_from("127.0.0.3", port)
    });
    release(&d, first);
    assert_eq!(
        exchange_on(connect_from("127.0.0.3", port), b"again"),
        b"again"
    );
}

#[test]
fn max_connections_counts_live_programs_of_all_services() {
    let [a, b] = free_ports(2)[..] else { panic!() };
    let config = format!(
        "max_connections = 2\n\n{}{}",
        service(a, "name = \"a\"\ncommand = [\"/bin/cat\"]"),
        service(b, "name = \"b\"\ncommand = [\"/bin/cat\"]"),
    );
    let d = Daemon::start("x.toml", &config, &[]);
    let _on_a = held(&d, connect(a));
    let on_b = held(&d, connect(b));
    assert_refused(&d, "max_connections reached", || connect(a));
    assert_refused(&d, "max_connections reached", || connect(b));
    release(&d, on_b);
    assert_eq!(exchange(a, b"again"), b"again");
}

#[test]
fn rate_is_a_token_bucket_and_never_disables_the_service() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &service(port, "command = [\"/bin/echo\", \"ok\"]\nrate = \"2/s\""),
        &[],
    );
    let t0 = Instant::now();
    let answers: Vec<Vec<u8>> = (0..10).map(|_| exchange_on(connect(port), b"")).collect();
    let elapsed = t0.elapsed().as_secs_f64();
    let accepted = answers.iter().filter(|a| a.as_slice() == b"ok\n").count();
    assert!(
        answers
            .iter()
            .all(|a| a.is_empty() || a.as_slice() == b"ok\n"),
        "{answers:?}"
    );
    // A burst of one second's worth (2), plus what refilled meanwhile.
    let most = 2 + (elapsed * 2.0).ceil() as usize;
    assert!(
        (2..=most).contains(&accepted),
        "{accepted} of 10 accepted in {elapsed:.2}s at 2/s"
    );
    assert!(accepted < 10, "the rate was not applied");
    d.wait_log("refused: rate limit exceeded", LOG_WAIT);
    assert_started(&d, accepted);
    // Once tokens come back, the service answers again.
    wait_until("a token refills", Duration::from_secs(10), || {
        exchange_on(connect(port), b"") == b"ok\n"
    });
    assert_started(&d, accepted + 1);
}

#[test]
fn refusals_are_logged_once_per_source_per_window_with_a_count() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &service(
            port,
            "command = [\"/bin/echo\", \"ok\"]\ndeny = [\"127.0.0.1\"]",
        ),
        &[],
    );
    const FLOOD: u64 = 200;
    for _ in 0..FLOOD {
        drop(connect_from("127.0.0.1", port));
    }
    // One listener accepts in order: once a later client is served, every
    // connection of the flood has been refused.
    assert_eq!(exchange_on(connect_from("127.0.0.2", port), b""), b"ok\n");
    // The log writer writes in batches: wait for the served one's line,
    // logged after every refusal of the flood.
    d.wait_log("peer=127.0.0.2:", LOG_WAIT);
    let lines = d.lines_with("refused:");
    assert_eq!(lines.len(), 1, "the flood flooded the log:\n{}", d.log());
    assert!(lines[0].ends_with("refused=1"), "{}", lines[0]);

    // After the window, the next refusal's line counts the ones held back.
    let mut probes = 0u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while d.lines_with("refused:").len() < 2 {
        assert!(Instant::now() < deadline, "no second line:\n{}", d.log());
        drop(connect_from("127.0.0.1", port));
        probes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = d.lines_with("refused:");
    assert_eq!(lines.len(), 2, "{}", d.log());
    let n: u64 = lines[1]
        .rsplit("refused=")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {:?}", lines[1]));
    assert!(
        (FLOOD..FLOOD + probes).contains(&n),
        "refused={n} after {FLOOD} + {probes} refusals"
    );
    assert_started(&d, 1);
}

#[test]
fn ipv6_peers_get_their_text_form_and_every_bind_address_answers() {
    let [v6, both, rules] = free_ports(3)[..] else {
        panic!()
    };
    let config = format!(
        r#"[[service]]
name = "env6"
port = {v6}
bind = ["::1"]
command = ["/bin/sh", "-c", "echo $CLIENT_IP $REMOTE_ADDR $TCPREMOTEIP $TCPLOCALIP $TCPLOCALPORT"]

[[service]]
name = "both"
port = {both}
bind = ["127.0.0.1", "::1"]
command = ["/bin/cat"]

[[service]]
name = "rules"
port = {rules}
bind = ["127.0.0.1", "::1"]
command = ["/bin/echo", "in"]
allow = ["::1"]
"#
    );
    let d = Daemon::start("x.toml", &config, &[]);
    assert_eq!(
        String::from_utf8(exchange_on(connect6(v6), b"")).unwrap(),
        format!("::1 ::1 ::1 ::1 {v6}\n")
    );
    assert!(
        TcpStream::connect(("127.0.0.1", v6)).is_err(),
        "bound to ::1 only"
    );
    assert_eq!(exchange_on(connect(both), b"four"), b"four");
    assert_eq!(exchange_on(connect6(both), b"six"), b"six");
    // Access rules see the IPv6 peer as ::1.
    assert_eq!(exchange_on(connect6(rules), b""), b"in\n");
    assert_refused(&d, "source is not in the allow list", || connect(rules));
}

#[test]
fn the_default_bind_is_every_interface_of_both_families() {
    // Checked with --check: a test must not listen beyond loopback.
    let out = check(
        "x.toml",
        b"[[service]]\nname = \"dflt\"\nport = 7001\ncommand = [\"/bin/cat\"]\n",
    );
    assert_eq!(out.code, Some(0));
    let stdout = out.stdout;
    assert!(
        stdout.contains("dflt\ttcp 0.0.0.0:7001,[::]:7001\t"),
        "{stdout}"
    );
}

#[test]
fn a_udp_program_without_wait_is_a_check_error_that_says_why() {
    let out = check(
        "x.toml",
        b"[[service]]\nport = 7001\nprotocol = \"udp\"\nwait = false\ncommand = [\"/bin/cat\"]\n",
    );
    assert_eq!(out.code, Some(1));
    let stderr = out.stderr;
    assert!(
        stderr.contains("x.toml:4: a UDP service's program gets the bound socket"),
        "{stderr}"
    );
    assert!(stderr.contains("needs `wait = true`"), "{stderr}");
}

#[test]
fn an_unknown_key_is_reported_with_its_line_and_nothing_starts() {
    let port = free_port();
    let config = format!(
        "# limits\n[[service]]\nport = {port}\ncommand = [\"/bin/cat\"]\nmax_instance = 3\n"
    );
    let want =
        "x.toml:5: unknown key `max_instance` in [[service]] (did you mean `max_instances`?)";
    let out = check("x.toml", config.as_bytes());
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains(want), "{}", out.stderr);

    let mut d = Daemon::spawn("x.toml", &config, &[], |_| {});
    assert_eq!(d.wait_exit(LOG_WAIT).code(), Some(1));
    assert!(d.log().contains(want), "{}", d.log());
}

#[test]
fn env_and_working_directory_reach_the_program() {
    let port = free_port();
    let wd = tempfile::tempdir().unwrap();
    let wd_path = wd.path().canonicalize().unwrap();
    let _d = Daemon::start(
        "x.toml",
        &service(
            port,
            &format!(
                r#"command = ["/bin/sh", "-c", "echo \"$GREETING\"; pwd"]
env = {{ GREETING = "hi" }}
working_directory = "{}""#,
                wd_path.display()
            ),
        ),
        &[],
    );
    assert_eq!(
        String::from_utf8(exchange(port, b"")).unwrap(),
        format!("hi\n{}\n", wd_path.display())
    );
}

#[test]
fn stderr_log_writes_lines_to_the_log_and_null_drops_them() {
    let [logged, dropped] = free_ports(2)[..] else {
        panic!()
    };
    let config = format!(
        "{}{}",
        service(
            logged,
            r#"name = "errlog"
command = ["/bin/sh", "-c", "echo out; echo marker-to-log-7431 >&2"]
stderr = "log""#
        ),
        service(
            dropped,
            r#"name = "errnull"
command = ["/bin/sh", "-c", "echo out; echo marker-to-null-9182 >&2"]
stderr = "null""#
        ),
    );
    let d = Daemon::start("x.toml", &config, &[]);
    assert_eq!(
        exchange(logged, b""),
        b"out\n",
        "stderr stays off the socket"
    );
    d.wait_log("stderr: marker-to-log-7431", LOG_WAIT);
    let line = &d.lines_with("marker-to-log-7431")[0];
    assert!(line.contains("service=errlog"), "{line}");

    assert_eq!(
        exchange(dropped, b""),
        b"out\n",
        "stderr stays off the socket"
    );
    wait_until("errnull ends", LOG_WAIT, || {
        d.lines_with(" ended ")
            .iter()
            .any(|l| l.contains("service=errnull"))
    });
    // The "log" service's line arrived; a "null" one would by now as well.
    assert!(!d.log().contains("marker-to-null-9182"), "{}", d.log());
}

#[test]
fn user_runs_the_program_as_that_account() {
    let port = free_port();
    let config = service(
        port,
        r#"command = ["/bin/sh", "-c", "id -u; echo $USER"]
user = "nobody""#,
    );
    if is_root() {
        let _d = Daemon::start("x.toml", &config, &[]);
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(
            String::from_utf8(exchange(port, b"")).unwrap(),
            format!("{}\nnobody\n", nobody.uid)
        );
    } else {
        let mut d = Daemon::spawn("x.toml", &config, &[], |_| {});
        assert_eq!(d.wait_exit(LOG_WAIT).code(), Some(3));
    }
}

/// What a program that reads one byte reports on a client that sends
/// nothing for `silence`, and how long the answer took.
fn read_after_silence(port: u16, silence: Duration) -> std::thread::JoinHandle<(String, Duration)> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut s = connect(port);
        s.set_read_timeout(Some(silence)).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        // An answer before the silence is over comes from a timeout.
        if let Ok(n @ 1..) = s.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        } else {
            let _ = s.write_all(b"late");
            let _ = s.shutdown(Shutdown::Write);
        }
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        out.extend(read_all(&mut s));
        (String::from_utf8(out).unwrap(), t0.elapsed())
    })
}

#[test]
fn global_timeout_applies_unless_a_service_sets_its_own() {
    let [inherits, own, off] = free_ports(3)[..] else {
        panic!()
    };
    let cmd = r#"command = ["/bin/sh", "-c", "head -c 1 >/dev/null 2>&1; echo rc=$?"]"#;
    let config = format!(
        "timeout = 1\n\n{}{}{}",
        service(inherits, cmd),
        service(own, &format!("{cmd}\ntimeout = 2")),
        service(off, &format!("{cmd}\ntimeout = 0")),
    );
    let _d = Daemon::start("x.toml", &config, &[]);
    let silence = Duration::from_millis(3500);
    // All three at once: each connection waits out `silence` at most.
    let clients = [inherits, own, off].map(|port| read_after_silence(port, silence));
    let [inherits, own, off] = clients.map(|c| c.join().unwrap());
    // The program's read fails after the service's timeout…
    assert_eq!(inherits.0, "rc=1\n", "global timeout = 1");
    assert!(inherits.1 >= Duration::from_millis(900), "{inherits:?}");
    assert_eq!(own.0, "rc=1\n", "service timeout = 2");
    assert!(own.1 >= Duration::from_millis(1900), "{own:?}");
    assert!(own.1 < silence, "{own:?}");
    // …or never: the late byte is read.
    assert_eq!(off.0, "rc=0\n", "service timeout = 0 switches it off");
}

#[test]
fn pipe_handoff_relays_fifty_mib_byte_exact() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &service(port, "command = [\"/bin/cat\"]\nhandoff = \"pipe\""),
        &[],
    );
    let data = pattern(50 << 20, 21);
    let back = stream_through(port, data.clone());
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the relayed echo differs");
    d.wait_log("status=exit status: 0", LOG_WAIT);
}

#[test]
fn pipe_handoff_passes_half_close_both_ways() {
    let port = free_port();
    let wd = tempfile::tempdir().unwrap();
    // Reports what its stdin is, echoes 5 bytes, closes its output while
    // still reading, then counts the rest of its input until EOF.
    let d = Daemon::start(
        "x.toml",
        &service(
            port,
            &format!(
                r#"command = ["/bin/sh", "-c", "readlink /proc/$$/fd/0 | cut -d: -f1; head -c 5; exec >&- 2>&-; wc -c > count.txt"]
handoff = "pipe"
working_directory = "{}""#,
                wd.path().display()
            ),
        ),
        &[],
    );
    let mut s = connect(port);
    s.write_all(b"hello").unwrap();
    // The program's close reaches us as EOF while our side is still open.
    assert_eq!(read_all(&mut s), b"pipe\nhello");
    let rest = pattern(100_000, 4);
    s.write_all(&rest).unwrap();
    // Our half-close reaches the program as EOF: only then does wc finish.
    s.shutdown(Shutdown::Write).unwrap();
    d.wait_log("status=exit status: 0", LOG_WAIT);
    let count = std::fs::read_to_string(wd.path().join("count.txt")).unwrap();
    assert_eq!(count.trim(), "100000");
}

#[test]
fn connection_lines_carry_name_peer_pid_status_and_duration() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &service(
            port,
            "name = \"greeter\"\ncommand = [\"/bin/sh\", \"-c\", \"echo hi; exit 3\"]",
        ),
        &[],
    );
    let s = connect(port);
    let me = s.local_addr().unwrap();
    assert_eq!(exchange_on(s, b""), b"hi\n");
    d.wait_log(" ended ", LOG_WAIT);
    let started = &d.lines_with(" started ")[0];
    let ended = &d.lines_with(" ended ")[0];
    let pid = started
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .unwrap_or_else(|| panic!("no pid in {started}"));
    for want in [
        "service=greeter".to_string(),
        format!("peer={me}"),
        format!("pid={pid}"),
    ] {
        assert!(started.contains(&want), "{want} not in {started}");
        assert!(ended.contains(&want), "{want} not in {ended}");
    }
    assert!(ended.contains("status=exit status: 3"), "{ended}");
    assert!(ended.contains("duration="), "{ended}");
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &format!(
            "log_format = \"json\"\n\n{}",
            service(port, "name = \"js\"\ncommand = [\"/bin/echo\", \"hi\"]")
        ),
        &[],
    );
    let s = connect(port);
    let me = s.local_addr().unwrap();
    assert_eq!(exchange_on(s, b""), b"hi\n");
    d.wait_log("\"ended\"", LOG_WAIT);
    let log = d.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{log}")))
        .collect();
    let fields = |message: &str| {
        lines
            .iter()
            .map(|v| &v["fields"])
            .find(|f| f["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line:\n{log}"))
            .clone()
    };
    let started = fields("started");
    let ended = fields("ended");
    for f in [&started, &ended] {
        assert_eq!(f["service"], "js", "{f}");
        assert_eq!(f["peer"], me.to_string(), "{f}");
        assert!(f["pid"].as_u64().is_some_and(|p| p > 0), "{f}");
    }
    assert_eq!(started["pid"], ended["pid"]);
    assert_eq!(ended["status"], "exit status: 0", "{ended}");
    assert!(
        ended["duration"].as_str().is_some_and(|d| d.ends_with('s')),
        "{ended}"
    );
}

/// SO_LINGER of the socket that program `pid` has as fd 0, read from a
/// copy of the descriptor (Linux pidfd_getfd, which needs root or
/// CAP_SYS_PTRACE, and a seccomp profile that allows it).
#[cfg(target_os = "linux")]
fn program_linger(pid: i32) -> libc::linger {
    // SAFETY: plain system calls on descriptors this function owns and closes.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        );
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0) as i32;
        let err = std::io::Error::last_os_error();
        libc::close(pidfd);
        assert!(
            copy >= 0,
            "pidfd_getfd refused ({err}): this test needs root or CAP_SYS_PTRACE, and a \
             kernel (5.6+) and seccomp profile that allow pidfd_getfd; CI runs as root"
        );
        let mut l = libc::linger {
            l_onoff: -1,
            l_linger: -1,
        };
        let mut len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
        let rc = libc::getsockopt(
            copy,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&mut l as *mut libc::linger).cast(),
            &mut len,
        );
        libc::close(copy);
        assert_eq!(rc, 0, "getsockopt: {}", std::io::Error::last_os_error());
        l
    }
}

#[cfg(target_os = "linux")]
#[test]
fn linger_timeout_is_set_on_the_socket_a_program_gets() {
    for (setting, want) in [(7, (1, 7)), (0, (0, 0))] {
        let port = free_port();
        let d = Daemon::start(
            "x.toml",
            &format!(
                "linger_timeout = {setting}\n\n{}",
                service(port, "command = [\"/bin/cat\"]")
            ),
            &[],
        );
        let s = held(&d, connect(port));
        let line = &d.lines_with(" started ")[0];
        let pid: i32 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {line}"));
        let l = program_linger(pid);
        assert_eq!((l.l_onoff, l.l_linger), want, "linger_timeout = {setting}");
        release(&d, s);
    }
}

#[test]
fn udp_access_rules_apply_before_any_reply_or_program() {
    use std::net::{SocketAddr, UdpSocket};
    let echo = free_port_tcp_udp();
    let wait = std::iter::repeat_with(free_port_tcp_udp)
        .take(50)
        .find(|&p| p != echo)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[[service]]
name = "udp-echo"
port = {echo}
bind = ["127.0.0.1", "::1"]
protocol = "udp"
internal = "echo"
deny = ["127.0.0.1"]

[[service]]
name = "udp-wait"
port = {wait}
bind = ["127.0.0.1"]
protocol = "udp"
wait = true
command = ["/bin/dd", "bs=65536", "count=1", "of=got.bin"]
stderr = "null"
working_directory = "{}"
allow = ["127.0.0.2"]
"#,
        dir.path().display()
    );
    let d = Daemon::start("x.toml", &config, &[]);
    // Internal: no reply to the denied source, a reply to the other.
    let to_v4 = SocketAddr::from(([127, 0, 0, 1], echo));
    assert_eq!(
        udp_request(to_v4, b"denied", Duration::from_millis(500)),
        None
    );
    d.wait_log("refused: source is in the deny list", LOG_WAIT);
    let to_v6: SocketAddr = format!("[::1]:{echo}").parse().unwrap();
    assert_eq!(
        udp_request(to_v6, b"allowed", AT_ONCE).as_deref(),
        Some(&b"allowed"[..])
    );

    // wait service: a datagram from a source not allowed starts nothing
    // and is dropped; the next one, from an allowed source, is the
    // program's.
    let send_from = |source: &str, data: &[u8]| {
        let s = UdpSocket::bind((source, 0)).unwrap();
        s.send_to(data, ("127.0.0.1", wait)).unwrap();
    };
    send_from("127.0.0.1", b"not allowed");
    d.wait_log("refused: source is not in the allow list", LOG_WAIT);
    assert_eq!(d.started(), 0);
    send_from("127.0.0.2", b"allowed");
    d.wait_log(" ended ", LOG_WAIT);
    assert_started(&d, 1);
    assert_eq!(
        std::fs::read(dir.path().join("got.bin")).unwrap(),
        b"allowed"
    );
}

/// A daemon serving `program` as a UDP wait service on 127.0.0.1, and a
/// socket that has sent it `datagram`.
fn udp_wait_service(program: &str, datagram: &[u8]) -> (Daemon, u16, std::net::UdpSocket) {
    let port = free_port_tcp_udp();
    let config = format!(
        "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\nprotocol = \"udp\"\nwait = true\ncommand = [\"{program}\"]\n"
    );
    let d = Daemon::start("x.toml", &config, &[]);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(datagram, ("127.0.0.1", port)).unwrap();
    (d, port, s)
}

#[test]
fn a_udp_wait_program_that_fails_at_once_is_restarted_at_most_once_a_second() {
    // /bin/false never reads the datagram, so it stays readable.
    let (d, _, _s) = udp_wait_service("/bin/false", b"never read");
    d.wait_log_count("started", 2, LOG_WAIT);
    std::thread::sleep(Duration::from_secs(3));
    let starts = d.started();
    assert!(
        (3..=6).contains(&starts),
        "{starts} starts in ~4 s: expected about one a second"
    );
    assert!(d.log().contains("watching the socket again in a second"));
}

#[test]
fn a_udp_wait_program_that_cannot_be_exec_d_drops_its_datagram_and_is_not_retried() {
    let (d, port, s) = udp_wait_service("/nonexistent/udp-program", b"first");
    let log = d.wait_log("cannot start the program", LOG_WAIT);
    assert!(
        log.contains("/nonexistent/udp-program: No such file or directory"),
        "{log}"
    );
    // The datagram is gone: nothing starts again until another comes.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.started(), 1, "{}", d.log());
    s.send_to(b"second", ("127.0.0.1", port)).unwrap();
    d.wait_log_count("cannot start the program", 2, LOG_WAIT);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.started(), 2, "{}", d.log());
}

#[test]
fn under_a_steady_flood_programs_are_reaped_and_nothing_is_refused() {
    // With a small max_connections, programs that ended but were not yet
    // reaped would soon fill it and get connections refused.
    let port = free_port();
    let config = format!(
        "max_connections = 48\n\n{}",
        service(port, "command = [\"/bin/cat\"]")
    );
    let d = Daemon::start("x.toml", &config, &[]);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            std::thread::spawn(move || {
                let mut bad = 0;
                for i in 0..150 {
                    let data = pattern(64, (w * 1000 + i) as u64);
                    let mut s = connect(port);
                    if s.write_all(&data).is_err() || s.shutdown(Shutdown::Write).is_err() {
                        bad += 1;
                        continue;
                    }
                    if read_all(&mut s) != data {
                        bad += 1;
                    }
                }
                bad
            })
        })
        .collect();
    let failed: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(failed, 0, "log:\n{}", d.log());
    assert!(!d.log().contains("refused"));
}

#[test]
fn a_reload_rejected_for_a_busy_port_leaves_every_rule_as_it_was() {
    let port = free_port();
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = blocker.local_addr().unwrap().port();
    let before = service(port, "command = [\"/bin/cat\"]");
    let d = Daemon::start("x.toml", &before, &[]);
    assert_eq!(exchange(port, b"one"), b"one");
    // Valid config, but its new port cannot be bound: rejected whole,
    // including the deny rule it would have added to the kept service.
    let after = format!(
        "{}{}",
        service(port, "command = [\"/bin/cat\"]\ndeny = [\"127.0.0.1\"]"),
        service(busy, "command = [\"/bin/cat\"]")
    );
    let log = d.reload(&after, "reload rejected");
    assert!(
        log.contains(&format!("cannot listen on tcp 127.0.0.1:{busy}")),
        "{log}"
    );
    assert_eq!(exchange(port, b"two"), b"two", "the old rules still apply");
}

#[test]
fn a_reload_can_narrow_a_wildcard_listener_to_one_address_on_the_same_port() {
    let port = free_port();
    let wide =
        format!("[[service]]\nport = {port}\nbind = [\"0.0.0.0\"]\ncommand = [\"/bin/cat\"]\n");
    let d = Daemon::start("x.toml", &wide, &[]);
    assert_eq!(exchange(port, b"wide"), b"wide");
    // 127.0.0.1:PORT can only be bound once 0.0.0.0:PORT is closed.
    let narrow = service(port, "command = [\"/bin/echo\", \"narrow\"]");
    let log = d.reload(&narrow, "reload");
    assert!(!log.contains("reload rejected"), "{log}");
    d.wait_log("reloaded", LOG_WAIT);
    assert_eq!(exchange(port, b""), b"narrow\n");
}
