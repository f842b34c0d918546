//! The real `wininetd` binary with classic configs, on loopback.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn classic(lines: &[String]) -> String {
    format!("# written by the test\n{}\n", lines.join("\n"))
}

#[test]
fn fifty_mib_through_cat_byte_exact_with_half_close() {
    let port = free_port();
    let d = Daemon::start("w.conf", &classic(&[format!("{port} none /bin/cat")]), &[]);
    let data = pattern(50 << 20, 1);
    let back = stream_through(port, data.clone());
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echo differs from what was sent");
    d.wait_log("status=exit status: 0", Duration::from_secs(10));
}

#[test]
fn program_gets_the_connection_variables() {
    let port = free_port();
    let script = "/bin/sh -c 'for v in CLIENT_IP CLIENT_PORT TCPREMOTEIP TCPREMOTEPORT TCPLOCALIP TCPLOCALPORT PROTO REMOTE_ADDR REMOTE_PORT; do eval echo $v=\\$$v; done'";
    let _d = Daemon::start("w.conf", &classic(&[format!("{port} none {script}")]), &[]);
    let mut s = connect(port);
    let me = s.local_addr().unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let out = String::from_utf8(read_all(&mut s)).unwrap();
    let want = format!(
        "CLIENT_IP=127.0.0.1\nCLIENT_PORT={cp}\nTCPREMOTEIP=127.0.0.1\nTCPREMOTEPORT={cp}\nTCPLOCALIP=127.0.0.1\nTCPLOCALPORT={port}\nPROTO=TCP\nREMOTE_ADDR=127.0.0.1\nREMOTE_PORT={cp}\n",
        cp = me.port()
    );
    assert_eq!(out, want);
}

#[test]
fn a_program_gets_a_defined_environment_not_the_daemons() {
    defined_environment(None);
}

#[test]
fn the_portable_spawn_path_gives_the_same_environment() {
    // The test hook: the std::process::Command path, as on other systems.
    defined_environment(Some("portable"));
}

fn defined_environment(spawn_path: Option<&str>) {
    let port = free_port();
    let d = Daemon::start_with(
        "w.conf",
        &classic(&[format!("{port} none /usr/bin/env")]),
        &[],
        |c| {
            c.env_clear();
            if let Some(p) = spawn_path {
                c.env("WININETD_SPAWN", p);
            }
            c.env("PATH", "/root/bin:/usr/bin:/bin")
                .env("MY_SECRET", "s3cret")
                .env("WININETD_TEST", "x")
                .env("TZ", "UTC")
                .env("LC_TIME", "C");
        },
    );
    let out = String::from_utf8(exchange(port, b"")).unwrap();
    let names: BTreeSet<&str> = out.lines().filter_map(|l| l.split('=').next()).collect();
    let want: BTreeSet<&str> = [
        "CLIENT_IP",
        "CLIENT_PORT",
        "HOME",
        "LC_TIME",
        "LOGNAME",
        "PATH",
        "PROTO",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "SHELL",
        "TCPLOCALIP",
        "TCPLOCALPORT",
        "TCPREMOTEIP",
        "TCPREMOTEPORT",
        "TZ",
        "USER",
    ]
    .into();
    assert_eq!(names, want, "{out}");
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .unwrap()
        .unwrap();
    for line in [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("USER={}", me.name),
        format!("HOME={}", me.dir.display()),
        "TZ=UTC".to_string(),
    ] {
        assert!(out.lines().any(|l| l == line), "{line} not in {out}");
    }
    drop(d);
}

/// Opens a pseudo-terminal pair; returns (master, slave).
fn pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    // SAFETY: the classic posix_openpt sequence; descriptors checked.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(s >= 0, "open pts: {}", std::io::Error::last_os_error());
        (
            std::os::fd::OwnedFd::from_raw_fd(m),
            std::os::fd::OwnedFd::from_raw_fd(s),
        )
    }
}

#[test]
fn a_program_cannot_open_the_daemons_controlling_terminal() {
    no_controlling_terminal(None);
}

#[test]
fn on_the_portable_spawn_path_either_a_program_cannot_open_the_terminal() {
    no_controlling_terminal(Some("portable"));
}

fn no_controlling_terminal(spawn_path: Option<&str>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let port = free_port();
    let (_master, slave) = pty();
    let tty = slave.as_raw_fd();
    // As an admin running `--debug` in a terminal: the daemon leads a
    // session whose controlling terminal is the pty.
    let d = Daemon::start_with(
        "w.conf",
        &classic(&[format!(
            "{port} none /bin/sh -c 'exec 3<>/dev/tty && echo the-tty-opened'"
        )]),
        &[],
        move |c| {
            if let Some(p) = spawn_path {
                c.env("WININETD_SPAWN", p);
            }
            // SAFETY: setsid and TIOCSCTTY only, in the forked child.
            unsafe {
                c.pre_exec(move || {
                    if libc::setsid() < 0 || libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    // Field 7 of /proc/PID/stat: the controlling terminal (0: none).
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let tty_nr: i64 = after_comm.split(' ').nth(4).unwrap().parse().unwrap();
    assert_ne!(
        tty_nr, 0,
        "the daemon must have a controlling terminal: {stat}"
    );
    let out = String::from_utf8_lossy(&exchange(port, b"")).into_owned();
    assert!(!out.contains("the-tty-opened"), "{out}");
    assert!(
        out.contains("No such device or address"),
        "ENXIO expected: {out}"
    );
}

#[test]
fn fifty_concurrent_connections_each_get_their_own_echo() {
    let port = free_port();
    let d = Daemon::start("w.conf", &classic(&[format!("{port} none /bin/cat")]), &[]);
    // Open all fifty first, so they are truly concurrent.
    let conns: Vec<TcpStream> = (0..50).map(|_| connect(port)).collect();
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            std::thread::spawn(move || {
                let data = pattern(64 * 1024 + i, i as u64 + 7);
                let mut w = s.try_clone().unwrap();
                let d2 = data.clone();
                let t = std::thread::spawn(move || {
                    w.write_all(&d2).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                s.read_to_end(&mut back).unwrap();
                t.join().unwrap();
                back == data
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert!(t.join().unwrap(), "connection {i} got a wrong echo");
    }
    d.wait_log_count("status=exit status: 0", 50, Duration::from_secs(20));
}

#[test]
fn missing_program_closes_the_connection_and_the_daemon_goes_on() {
    let [bad, good] = free_ports(2)[..] else {
        panic!()
    };
    let mut d = Daemon::start(
        "w.conf",
        &classic(&[
            format!("{bad} none /nonexistent/program --flag"),
            format!("{good} none /bin/cat"),
        ]),
        &[],
    );
    let mut s = connect(bad);
    assert!(read_all(&mut s).is_empty(), "nothing is served");
    let log = d.wait_log("/nonexistent/program", Duration::from_secs(5));
    assert!(log.contains(&format!("service=tcp/{bad}")), "{log}");
    assert!(log.contains("No such file or directory"), "{log}");
    assert!(d.alive());
    assert_eq!(exchange(good, b"still here"), b"still here");
    assert_eq!(exchange(good, b"again"), b"again");
}

#[test]
fn a_child_dying_mid_stream_closes_only_that_connection() {
    let [port, other] = free_ports(2)[..] else {
        panic!()
    };
    let mut d = Daemon::start(
        "w.conf",
        &classic(&[
            format!("{port} none /bin/sh -c 'head -c 1000; kill -9 $$'"),
            format!("{other} none /bin/cat"),
        ]),
        &[],
    );
    let mut s = connect(port);
    // Send more than the child reads; it dies after echoing 1000 bytes.
    let data = pattern(1 << 20, 3);
    let mut w = s.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let _ = w.write_all(&data);
    });
    let back = read_all(&mut s);
    let _ = t.join();
    assert_eq!(back.len(), 1000);
    d.wait_log("signal: 9", Duration::from_secs(10));
    assert!(d.alive());
    assert_eq!(exchange(other, b"ok"), b"ok");
}

#[test]
fn stderr_reaches_the_socket() {
    let port = free_port();
    let _d = Daemon::start(
        "w.conf",
        &classic(&[format!(
            "{port} none /bin/sh -c 'echo to-out; echo to-err >&2'"
        )]),
        &[],
    );
    assert_eq!(exchange(port, b""), b"to-out\nto-err\n");
}

#[test]
fn the_program_has_no_descriptor_but_0_1_2() {
    let port = free_port();
    // `$$` is the shell itself; ls's own directory descriptor is in ls.
    let _d = Daemon::start(
        "w.conf",
        &classic(&[format!("{port} none /bin/sh -c 'ls /proc/$$/fd'")]),
        &[],
    );
    // Hold a few more connections open so the daemon has more sockets.
    let _held: Vec<TcpStream> = (0..3).map(|_| connect(port)).collect();
    let out = String::from_utf8(exchange(port, b"")).unwrap();
    let fds: BTreeSet<&str> = out.split_whitespace().collect();
    assert_eq!(fds, BTreeSet::from(["0", "1", "2"]), "got {out:?}");
}

#[test]
fn the_socket_is_blocking_for_the_program() {
    // cat on a non-blocking socket fails with EAGAIN as soon as the client
    // pauses; a pause before sending proves the flag was cleared.
    let port = free_port();
    let _d = Daemon::start("w.conf", &classic(&[format!("{port} none /bin/cat")]), &[]);
    let mut s = connect(port);
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"late").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut s), b"late");
}

#[test]
fn timeout_makes_a_silent_clients_read_fail_in_the_program() {
    let port = free_port();
    let _d = Daemon::start(
        "w.conf",
        &classic(&[format!(
            "{port} none /bin/sh -c 'head -c 1 >/dev/null 2>&1; echo rc=$?'"
        )]),
        &["--timeout", "1"],
    );
    let mut s = connect(port);
    let started = Instant::now();
    let out = String::from_utf8(read_all(&mut s)).unwrap();
    assert_eq!(out, "rc=1\n", "head's read must fail, not wait forever");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[test]
fn sighup_adds_and_removes_ports_while_a_session_on_a_kept_port_lives() {
    let [kept, removed, added] = free_ports(3)[..] else {
        panic!()
    };
    let d = Daemon::start(
        "w.conf",
        &classic(&[
            format!("{kept} none /bin/cat"),
            format!("{removed} none /bin/cat"),
        ]),
        &[],
    );
    let mut session = connect(kept);
    session.write_all(b"before ").unwrap();
    let mut buf = [0u8; 7];
    session.read_exact(&mut buf).unwrap();

    d.reload(
        &classic(&[
            format!("{kept} none /bin/cat"),
            format!("{added} none /bin/echo added"),
        ]),
        "reloaded",
    );
    assert_eq!(exchange(added, b""), b"added\n");
    assert!(
        TcpStream::connect(("127.0.0.1", removed)).is_err(),
        "the removed port must stop listening"
    );
    assert_eq!(exchange(kept, b"new session"), b"new session");
    session.write_all(b"after").unwrap();
    session.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut session), b"after", "the old session lives on");
}

#[test]
fn a_bad_config_on_sighup_keeps_the_old_one() {
    let port = free_port();
    let d = Daemon::start("w.conf", &classic(&[format!("{port} none /bin/cat")]), &[]);
    let log = d.reload(
        &classic(&[format!("{port} none /bin/cat"), "80x none /bin/cat".into()]),
        "reload rejected",
    );
    assert!(
        log.contains("w.conf:3: port \"80x\" is not a number"),
        "{log}"
    );
    assert_eq!(exchange(port, b"same"), b"same");
}

#[test]
fn check_lists_services_or_every_error() {
    let out = check(
        "good.conf",
        b"# x\n7001 none /bin/cat\n7002 bob:hunter2 /usr/bin/id\n",
    );
    assert_eq!(out.code, Some(0));
    let stdout = out.stdout;
    assert!(stdout.contains("OK, 2 service(s)"), "{stdout}");
    assert!(
        stdout.contains("tcp/7001\ttcp 0.0.0.0:7001\tuser none\t/bin/cat"),
        "{stdout}"
    );
    assert!(stdout.contains("user bob"), "{stdout}");
    assert!(
        !stdout.contains("hunter2"),
        "the password must not be listed"
    );

    let out = check(
        "bad.conf",
        b"0 none /bin/cat\n# fine\n7001 none\n7002 none /bin/cat\n7002 none /bin/cat\n",
    );
    assert_eq!(out.code, Some(1));
    let stderr = out.stderr;
    assert!(
        stderr.contains("bad.conf:1: port 0 is out of range"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.conf:3: port 7001 has no command line"),
        "{stderr}"
    );

    let missing = run_cli(&["--check", "--cfgfile", "/nonexistent/w.conf"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the config"));
}

/// `--check` is the dry run: what this machine would refuse or fail at is
/// reported too, each with its FILE:LINE.
#[test]
fn check_reports_programs_and_users_that_cannot_run() {
    assert!(
        is_root(),
        "this test runs as root (CI does) to check both sides"
    );
    let dir = tempfile::tempdir().unwrap();
    let plain = write_file(dir.path(), "plain", b"#!/bin/sh\n");
    let text = format!(
        "7001 none /nonexistent/prog\n7002 none {}\n7003 no-such-user-here /bin/cat\n\
         7004 none no-such-program-in-path\n7005 nobody /bin/cat\n7006 none cat\n7007 root /bin/cat\n",
        plain.display()
    );
    let cfg = write_file(dir.path(), "w.conf", text.as_bytes());
    let out = run_cli(&["--check", "--cfgfile", cfg.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // As root: each of these only fails per connection, so warnings.
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for (line, needle) in [
        (1, "/nonexistent/prog"),
        (2, "is not executable"),
        (3, "user \"no-such-user-here\" does not exist"),
        (4, "not found in PATH"),
    ] {
        let want = format!("w.conf:{line}: warning: service tcp/700{line}: ");
        let hit = stderr.lines().find(|l| l.contains(&want));
        assert!(
            hit.is_some_and(|l| l.contains(needle)),
            "{want}{needle} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("w.conf:5"), "nobody exists: {stderr}");
    assert!(!stderr.contains("w.conf:6"), "cat is in PATH: {stderr}");
    assert!(!stderr.contains("w.conf:7"), "root may be anyone: {stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK, 7 service(s), 4 warning(s)"),
        "{out:?}"
    );

    // Not root: another user is what start would refuse, so an error.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let out = std::os::unix::process::CommandExt::uid(
        std::process::Command::new(BIN).args(["--check", "--cfgfile", cfg.to_str().unwrap()]),
        nobody.uid.as_raw(),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("w.conf:3: error: service tcp/7003: user \"no-such-user-here\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("w.conf:7: error: service tcp/7007: runs as user \"root\""),
        "{stderr}"
    );
    assert!(!stderr.contains("w.conf:5"), "nobody is itself: {stderr}");
    assert!(stderr.contains(": 2 error(s), 3 warning(s)"), "{stderr}");
}

/// One pass: a config error does not hide what the machine would refuse.
#[test]
fn check_reports_config_errors_and_machine_findings_together() {
    let out = check(
        "w.conf",
        b"80x none /bin/cat\n7001 none /nonexistent/prog\n7002 none /bin/cat\n7002 none /bin/cat\n",
    );
    assert_eq!(out.code, Some(1));
    let stderr = out.stderr;
    assert!(
        stderr.contains("w.conf:1: port \"80x\" is not a number"),
        "{stderr}"
    );
    assert!(stderr.contains("w.conf:4: tcp port 7002"), "{stderr}");
    assert!(
        stderr.contains("w.conf:2: warning: service tcp/7001: program /nonexistent/prog"),
        "{stderr}"
    );
    assert!(stderr.contains(": 2 error(s), 1 warning(s)"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no service list with errors: {}",
        out.stdout
    );
}

/// `--debug` once read "Run in the foreground", which wininetd on Unix
/// always is: the help says what it changes.
#[test]
fn help_says_what_debug_does() {
    let out = run_cli(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // The lines after `--debug` up to the next option.
    let debug = help
        .lines()
        .skip_while(|l| l.trim() != "--debug")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('-'))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        debug.starts_with("Log to the console (stderr) instead of journald or syslog"),
        "{help}"
    );
    assert!(
        debug.contains("On Unix wininetd always stays in the foreground"),
        "{help}"
    );
}

#[test]
fn version_names_the_git_commit() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git is installed (package git)");
    let head = String::from_utf8(head.stdout).unwrap();
    let out = run_cli(&["--version"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!(
            "wininetd {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            head.trim()
        )
    );
}

#[test]
fn install_refuses_a_config_that_does_not_exist() {
    let out = run_cli(&["--install", "--cfgfile", "/nonexistent/wininetd.conf"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/wininetd.conf"), "{stderr}");
    assert!(stderr.contains("write it first"), "{stderr}");
}

/// The quick start's line service answers each line before the next is
/// sent (mawk, Debian's awk, did not: it buffers its input). Its command is
/// taken from examples/wininetd.conf and served on loopback.
#[test]
fn the_example_line_service_answers_line_by_line() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/wininetd.conf"
    ))
    .unwrap();
    let line = example
        .lines()
        .find(|l| l.starts_with("10079 "))
        .expect("the example has the line service on 10079");
    let command = line.strip_prefix("10079 none ").unwrap();
    let port = free_port();
    let toml =
        format!("[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = {command:?}\n");
    let _d = Daemon::start("w.toml", &toml, &[]);
    let mut s = connect(port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for word in ["hello", "second line"] {
        s.write_all(format!("{word}\n").as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\n") {
            let n = s.read(&mut byte).expect("an answer before the next line");
            assert_eq!(n, 1, "closed after {got:?}");
            got.push(byte[0]);
        }
        assert_eq!(got, format!("{}\n", word.to_uppercase()).as_bytes());
    }
}

#[test]
fn install_with_socket_activation_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(dir.path(), "w.conf", b"7000 none\n");
    let out = run_cli(&[
        "--install",
        "--socket-activation",
        "--cfgfile",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("w.conf:1: port 7000 has no command line"),
        "{stderr}"
    );
    assert!(stderr.contains("cannot install"), "{stderr}");
}

#[test]
fn duplicate_ports_are_reported_by_check() {
    let out = check("dup.conf", b"7002 none /bin/cat\n7002 none /bin/cat\n");
    assert_eq!(out.code, Some(1));
    let stderr = out.stderr;
    assert!(
        stderr.contains("dup.conf:2: tcp port 7002 on 0.0.0.0 is already configured at"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_config_refuses_to_start() {
    let mut d = Daemon::spawn("w.conf", "7000 none\n", &[], |_| {});
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = d.log();
    assert!(
        log.contains("w.conf:1: port 7000 has no command line"),
        "{log}"
    );
    assert!(log.contains("did not start"), "{log}");
}

#[test]
fn a_busy_port_fails_startup_cleanly() {
    let blocker = TcpListener::bind("0.0.0.0:0").unwrap();
    let busy = blocker.local_addr().unwrap().port();
    let free = free_port();
    let mut d = Daemon::spawn(
        "w.conf",
        &classic(&[
            format!("{free} none /bin/cat"),
            format!("{busy} none /bin/cat"),
        ]),
        &[],
        |_| {},
    );
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    let log = d.log();
    assert!(
        log.contains(&format!("cannot listen on tcp 0.0.0.0:{busy}")),
        "{log}"
    );
    assert!(log.contains("in use"), "{log}");
    // All or nothing: the other port was not left listening.
    assert!(TcpStream::connect(("127.0.0.1", free)).is_err());
}

#[test]
fn services_run_as_the_configured_user() {
    let port = free_port();
    let config = classic(&[format!(
        "{port} nobody /bin/sh -c 'id -u; echo $USER $HOME'"
    )]);
    if is_root() {
        let _d = Daemon::start("w.conf", &config, &[]);
        let out = String::from_utf8(exchange(port, b"")).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(
            out,
            format!("{}\nnobody {}\n", nobody.uid, nobody.dir.display())
        );
    } else {
        let mut d = Daemon::spawn("w.conf", &config, &[], |_| {});
        assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(3));
        assert!(d.log().contains("cannot switch users"));
    }
}

#[test]
fn an_unknown_user_refuses_the_connection_and_no_password_is_logged() {
    // (A non-root daemon refuses to start instead: tested above.)
    assert!(
        is_root(),
        "this test needs root (a daemon that switches users); CI runs as root"
    );
    let [port, other] = free_ports(2)[..] else {
        panic!()
    };
    let mut d = Daemon::start(
        "w.conf",
        &classic(&[
            format!("{port} no-such-user-x:SuperSecret123 /bin/echo ran"),
            format!("{other} none /bin/cat"),
        ]),
        &[],
    );
    assert!(exchange(port, b"").is_empty(), "nothing may run");
    let log = d.wait_log("unknown user", Duration::from_secs(5));
    assert!(log.contains("passwords are ignored on Unix"), "{log}");
    assert!(!log.contains("SuperSecret123"), "password leaked:\n{log}");
    assert!(d.alive());
    assert_eq!(exchange(other, b"x"), b"x");
}

#[test]
fn an_unknown_user_is_looked_up_at_load_and_its_refusals_do_not_flood_the_log() {
    assert!(
        is_root(),
        "switching users needs root: run the tests as root (CI does)"
    );
    let port = free_port();
    let d = Daemon::start(
        "w.conf",
        &classic(&[format!("{port} no-such-user-y /bin/echo ran")]),
        &[],
    );
    // Said once at load, naming the service and the user.
    let log = d.wait_log("its connections are refused", Duration::from_secs(5));
    assert!(log.contains(&format!("tcp/{port}")), "{log}");
    let started = Instant::now();
    for _ in 0..20 {
        assert!(exchange(port, b"").is_empty(), "nothing may run");
    }
    let elapsed = started.elapsed();
    d.wait_log(
        "connections are refused until it can be looked up",
        Duration::from_secs(5),
    );
    // One line per 5 s window, not one per connection.
    let lines = d
        .lines_with("connections are refused until it can be looked up")
        .len();
    let windows = 1 + (elapsed.as_secs() / 5) as usize;
    assert!(
        lines <= windows + 1,
        "{lines} lines for 20 refusals in {elapsed:?}"
    );
}

#[test]
fn sigterm_stops_listening_and_leaves_sessions_running() {
    let port = free_port();
    let mut d = Daemon::start("w.conf", &classic(&[format!("{port} none /bin/cat")]), &[]);
    let mut session = connect(port);
    session.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    session.read_exact(&mut buf).unwrap();
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    session.write_all(b"pong").unwrap();
    session.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut session), b"pong");
}

/// Seen in the package's upgrade test: a connection the old daemon had
/// accepted just before its stop was reset unanswered (an internal
/// service's session ended with the daemon). It now gets its answer.
#[test]
fn sigterm_lets_an_internal_session_just_accepted_finish() {
    let port = free_port();
    let config =
        format!("[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ninternal = \"echo\"\n");
    let mut d = Daemon::start("w.toml", &config, &[]);
    let mut session = connect(port);
    // An answer: the daemon holds the session before it is stopped.
    session.write_all(b"first\n").unwrap();
    let mut first = [0u8; 6];
    session.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"first\n");
    d.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    session.write_all(b"late\n").unwrap();
    session.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut session), b"late\n");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn sd_notify_reports_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = classic(&[format!("{port} none /bin/cat")]);
    let mut d = Daemon::start_with("w.conf", &config, &[], |c| {
        c.env("NOTIFY_SOCKET", &sock_path);
    });
    let next = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().starts_with("READY=1"));
    d.reload(&config, "reloaded");
    assert!(next().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert!(next().starts_with("READY=1"));
    d.signal(Signal::SIGTERM);
    assert_eq!(next().trim_end(), "STOPPING=1");
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn pipe_handoff_relays_fifty_mib_byte_exact_with_half_close() {
    let port = free_port();
    let d = Daemon::start(
        "w.conf",
        &classic(&[format!("{port} none /bin/cat")]),
        &["--handoff", "pipe"],
    );
    let data = pattern(50 << 20, 9);
    let back = stream_through(port, data.clone());
    assert_eq!(back.len(), data.len());
    assert!(back == data);
    d.wait_log("status=exit status: 0", Duration::from_secs(10));
}

#[test]
fn pipe_handoff_output_of_a_program_that_ignores_input_arrives() {
    let port = free_port();
    let _d = Daemon::start(
        "w.conf",
        &classic(&[format!("{port} none /bin/sh -c 'echo out; echo err >&2'")]),
        &["--handoff", "pipe"],
    );
    // No half-close from us: the program's exit must end the session.
    let mut s = connect(port);
    assert_eq!(read_all(&mut s), b"out\nerr\n");
}

#[test]
fn started_with_closed_stdin_and_stdout_it_still_serves_byte_exact() {
    // Without care, the listener or a connection would take fd 0 or 1 and
    // be clobbered when a program's stdio is set up.
    let port = free_port();
    let _d = Daemon::start_with(
        "w.conf",
        &classic(&[format!("{port} none /bin/cat")]),
        &[],
        |c| {
            // SAFETY: close(2) is async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(c, || {
                    libc::close(0);
                    libc::close(1);
                    Ok(())
                });
            }
        },
    );
    let data = pattern(1 << 20, 21);
    assert!(stream_through(port, data.clone()) == data);
    assert!(stream_through(port, data.clone()) == data);
}

#[test]
fn a_restart_rebinds_at_once_despite_time_wait_connections() {
    // The program closes first, so the server side of each connection
    // lingers in TIME_WAIT; without SO_REUSEADDR the next bind fails.
    let port = free_port();
    let config = classic(&[format!("{port} none /bin/echo hi")]);
    let mut d = Daemon::start("w.conf", &config, &[]);
    for _ in 0..3 {
        // Read to EOF before closing our side: the server's FIN comes first.
        let mut s = connect(port);
        assert_eq!(read_all(&mut s), b"hi\n");
    }
    std::thread::sleep(Duration::from_millis(100));
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let time_wait = tcp
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&format!(":{port:04X}")) && f[3] == "06"
        })
        .count();
    assert!(time_wait > 0, "expected server-side TIME_WAIT entries");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let _again = Daemon::start("w.conf", &config, &[]);
    assert_eq!(exchange(port, b""), b"hi\n");
}

/// A program must not get a copy of the daemon's descriptor table: copying
/// it, and closing every connection in it again at exec, made each spawn
/// cost in proportion to the connections the daemon held (a slowloris
/// slowed every other service). FDSize is the size of the table the
/// program's process got, which exec does not shrink.
#[test]
fn a_program_gets_a_small_descriptor_table_however_many_connections_the_daemon_holds() {
    let (held, report) = (free_port(), free_port());
    let config = format!(
        r#"
[[service]]
name = "held"
port = {held}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]
proxy_timeout = 120

[[service]]
name = "report"
port = {report}
bind = ["127.0.0.1"]
command = ["/bin/grep", "FDSize", "/proc/self/status"]
"#
    );
    let d = Daemon::start("fds.toml", &config, &[]);
    // Connections waiting for a PROXY header: the daemon holds each one.
    let waiting: Vec<TcpStream> = (0..400).map(|_| connect(held)).collect();
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", d.pid())).map_or(0, |r| r.count());
    wait_until(
        "the daemon holds the 400 connections",
        Duration::from_secs(20),
        || fds() >= 400,
    );
    let out = String::from_utf8(exchange(report, b"")).unwrap();
    let size: usize = out
        .trim()
        .strip_prefix("FDSize:")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("grep answered {out:?}"));
    assert!(
        size <= 64,
        "the program's descriptor table has {size} slots while the daemon holds {} descriptors",
        fds()
    );
    drop(waiting);
}
