//! Where a daemon (no `--debug`) logs — journald when JOURNAL_STREAM is
//! set, else syslog via /dev/log — and that a log sink nobody reads never
//! slows accepting. Each daemon runs in a private mount namespace where
//! the journal's or syslog's socket is one this test bound, so nothing on
//! the machine is touched (needs root: CI runs as root).
#![cfg(target_os = "linux")]

mod common;

use std::ffi::CString;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Which log socket the daemon finds.
#[derive(Clone, Copy, PartialEq)]
enum LogSocket {
    /// /run/systemd/journal/socket, with JOURNAL_STREAM set.
    Journald,
    /// /dev/log.
    Syslog,
    /// /dev/log as a symbolic link to DIR/log.sock: a socket bound there
    /// again (syslog restarted) is found through it.
    SyslogLink,
}

/// A socket bound in `dir` that the daemon will see as its log socket.
fn log_socket(dir: &Path) -> UnixDatagram {
    UnixDatagram::bind(dir.join("log.sock")).unwrap()
}

/// Fills `sock`'s receive queue, so that the next datagram sent to it
/// blocks: a journal or syslog that has stopped reading.
fn stall(dir: &Path) {
    let tx = UnixDatagram::unbound().unwrap();
    tx.set_nonblocking(true).unwrap();
    for _ in 0..100_000 {
        if tx.send_to(b"filler", dir.join("log.sock")).is_err() {
            return;
        }
    }
    panic!("the log socket never filled");
}

/// Starts wininetd (as a daemon: no `--debug`) on `cfg`, in a private mount
/// namespace where `which` is the socket bound at DIR/log.sock.
fn start(dir: &Path, cfg: &Path, which: LogSocket, log_level: Option<&str>) -> Running {
    assert!(
        is_root(),
        "this test needs root (a private mount namespace with tmpfs mounts); CI runs as root"
    );
    let c = |s: &str| CString::new(s).unwrap();
    let source = CString::new(dir.join("log.sock").as_os_str().as_bytes()).unwrap();
    let (mount_at, dirs, target) = match which {
        LogSocket::Journald => (
            c("/run"),
            vec![c("/run/systemd"), c("/run/systemd/journal")],
            c("/run/systemd/journal/socket"),
        ),
        LogSocket::Syslog | LogSocket::SyslogLink => (c("/dev"), vec![], c("/dev/log")),
    };
    let (tmpfs, null) = (c("tmpfs"), c("/dev/null"));
    let mut cmd = Command::new(BIN);
    cmd.arg("--cfgfile")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match which {
        LogSocket::Journald => cmd.env("JOURNAL_STREAM", "8:1234"),
        LogSocket::Syslog | LogSocket::SyslogLink => cmd.env_remove("JOURNAL_STREAM"),
    };
    match log_level {
        Some(l) => cmd.env("WININETD_LOG", l),
        None => cmd.env_remove("WININETD_LOG"),
    };
    // SAFETY: only system calls between fork and exec, on strings built
    // before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            let none = std::ptr::null();
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                tmpfs.as_ptr(),
                mount_at.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            ))?;
            if which != LogSocket::Journald {
                // The daemon opens /dev/null for its programs.
                check(libc::mknod(
                    null.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(1, 3),
                ))?;
            }
            for d in &dirs {
                check(libc::mkdir(d.as_ptr(), 0o755))?;
            }
            if which == LogSocket::SyslogLink {
                return check(libc::symlink(source.as_ptr(), target.as_ptr()));
            }
            let fd = libc::open(target.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            check(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null(),
            ))
        });
    }
    Running(cmd.spawn().expect("start wininetd"))
}

/// A daemon this test started, killed (by its PID) when dropped, also when
/// an assertion fails.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `port` accepts and serves a connection.
fn wait_serving(port: u16) {
    wait_until("the daemon serves", Duration::from_secs(10), || {
        one_connection(port).is_ok()
    });
}

/// One connection to a `/bin/echo hi` service: connect, read to EOF.
fn one_connection(port: u16) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).map_err(|e| e.to_string())?;
    if got == b"hi\n" {
        Ok(())
    } else {
        Err(format!("got {got:?}"))
    }
}

/// Connections one after another for `window` (at most 100 000): how many
/// were served, and how many failed.
fn connections_in(port: u16, window: Duration) -> (u32, u32) {
    let (mut ok, mut failed) = (0, 0);
    let end = Instant::now() + window;
    for _ in 0..100_000 {
        if Instant::now() >= end {
            break;
        }
        match one_connection(port) {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}

fn stop(child: Running) {
    drop(child);
}

/// A config serving `/bin/echo hi` on a free port of 127.0.0.1 (a port
/// another process took on another address cannot fail the start).
fn echo_config(dir: &Path) -> (u16, std::path::PathBuf) {
    let port = free_port();
    let cfg = write_file(
        dir,
        "w.toml",
        format!("[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = [\"/bin/echo\", \"hi\"]\n")
            .as_bytes(),
    );
    (port, cfg)
}

/// The datagrams the daemon sent, until one contains `until` (or 10 s).
fn read_until(sock: &UnixDatagram, until: &str) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.contains(until)) && Instant::now() < deadline {
        let mut buf = [0u8; 8192];
        if let Ok(n) = sock.recv(&mut buf) {
            lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    lines
}

#[test]
fn without_debug_lines_go_to_syslog_with_facility_and_severity() {
    let dir = tempfile::tempdir().unwrap();
    let sock = log_socket(dir.path());
    let port = free_port();
    let cfg = write_file(
        dir.path(),
        "w.conf",
        format!("{port} bob:TopSecretPw /bin/echo hi\n").as_bytes(),
    );
    let child = start(dir.path(), &cfg, LogSocket::Syslog, None);
    let pid = child.0.id();
    let lines = read_until(&sock, "serving");
    stop(child);
    let all = lines.join("\n");
    // daemon (3) * 8 + warning (4) = 28; + info (6) = 30.
    assert!(
        all.contains(&format!("<28>wininetd[{pid}]: ")) && all.contains("passwords are ignored"),
        "{all}"
    );
    // The tag, one space, then the level word (no padding after the tag).
    assert!(
        all.contains(&format!("<30>wininetd[{pid}]: INFO ")),
        "{all}"
    );
    assert!(all.contains("serving 1 service(s)"), "{all}");
    assert!(!all.contains("TopSecretPw"), "password leaked: {all}");
}

#[test]
fn with_journal_stream_lines_go_to_journald_natively() {
    let dir = tempfile::tempdir().unwrap();
    let sock = log_socket(dir.path());
    let (port, cfg) = echo_config(dir.path());
    let child = start(dir.path(), &cfg, LogSocket::Journald, None);
    let pid = child.0.id();
    read_until(&sock, "serving");
    one_connection(port).unwrap();
    let lines = read_until(&sock, "ended");
    stop(child);
    // A connection's one line at the default level: its end.
    let ended = lines
        .iter()
        .find(|l| l.contains("ended"))
        .unwrap_or_else(|| panic!("no 'ended' datagram among {}", lines.len()));
    // PRIORITY 6 (info), our name and pid, then MESSAGE with a length.
    let head = format!("PRIORITY=6\nSYSLOG_IDENTIFIER=wininetd\nSYSLOG_PID={pid}\nMESSAGE\n");
    assert!(ended.starts_with(&head), "{ended:?}");
    // MESSAGE is the line from its level word on, no leading padding.
    // (The length's last byte, 0, comes right before it.)
    assert!(ended.contains("\0INFO ended "), "{ended:?}");
    assert!(ended.contains(&format!("service=tcp/{port}")), "{ended:?}");
    assert!(ended.contains("status=exit status: 0"), "{ended:?}");
    assert!(ended.ends_with('\n'), "{ended:?}");
}

/// syslog restarted: its socket gone, then bound again at the same path.
/// The daemon keeps serving meanwhile, finds the new socket, and says how
/// many lines it could not deliver.
#[test]
fn syslog_gone_and_back_is_found_again_and_the_lost_lines_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = log_socket(dir.path());
    let (port, cfg) = echo_config(dir.path());
    let child = start(dir.path(), &cfg, LogSocket::SyslogLink, None);
    read_until(&sock, "serving");
    drop(sock);
    std::fs::remove_file(dir.path().join("log.sock")).unwrap();
    // Each connection's end line is lost.
    const LOST: u64 = 20;
    for _ in 0..LOST {
        one_connection(port).expect("a connection while syslog is gone");
    }
    // The writer has met the missing socket (it writes every 10 ms).
    std::thread::sleep(Duration::from_millis(300));
    let sock = log_socket(dir.path());
    one_connection(port).unwrap();
    let lines = read_until(&sock, "log lines dropped");
    stop(child);
    let note = lines
        .iter()
        .find(|l| l.contains("log lines dropped"))
        .unwrap_or_else(|| panic!("no drop count after syslog came back: {lines:?}"));
    let n = dropped_count(note);
    assert!(
        n >= LOST,
        "{n} lines counted as dropped, {LOST} end lines lost: {note:?}"
    );
}

/// N in a `N log lines dropped` datagram.
fn dropped_count(note: &str) -> u64 {
    note.split("log lines dropped")
        .next()
        .and_then(|s| {
            s.rsplit([' ', '\n', ']', ':', '\0'])
                .find(|w| !w.is_empty())
        })
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count in {note:?}"))
}

/// The measurement: with a journal socket nobody reads, the daemon
/// served 9 of 3000 connections. Now a stuck journal costs log lines only.
#[test]
fn a_journal_nobody_reads_does_not_slow_accepting() {
    a_stuck_sink_does_not_slow_accepting(LogSocket::Journald);
}

#[test]
fn a_syslog_nobody_reads_does_not_slow_accepting() {
    a_stuck_sink_does_not_slow_accepting(LogSocket::Syslog);
}

fn a_stuck_sink_does_not_slow_accepting(which: LogSocket) {
    // The same daemon with logging off gives the rate to compare with;
    // both run at once and take turns, so that a busy machine slows both.
    let quiet_dir = tempfile::tempdir().unwrap();
    let _quiet_sock = log_socket(quiet_dir.path());
    let (quiet_port, cfg) = echo_config(quiet_dir.path());
    let quiet_child = start(quiet_dir.path(), &cfg, which, Some("off"));
    wait_serving(quiet_port);

    let dir = tempfile::tempdir().unwrap();
    let sock = log_socket(dir.path());
    stall(dir.path());
    let (port, cfg) = echo_config(dir.path());
    let child = start(dir.path(), &cfg, which, None);
    wait_serving(port);

    let turn = Duration::from_millis(500);
    let (mut quiet, mut served) = (0, 0);
    for _ in 0..4 {
        let (ok, failed) = connections_in(quiet_port, turn);
        assert_eq!(failed, 0, "failures with logging off");
        quiet += ok;
        let (ok, failed) = connections_in(port, turn);
        assert_eq!(
            failed, 0,
            "{failed} connections failed with a stuck log socket ({ok} served)"
        );
        served += ok;
    }
    stop(quiet_child);
    assert!(
        served * 2 >= quiet,
        "{served} connections served with a stuck log socket, {quiet} in the same time with \
         logging off"
    );
    // Enough lines to overflow the queue (a few thousand lines), then the
    // sink drains again: the loss is reported.
    for _ in 0..3000 {
        one_connection(port).expect("a connection with a stuck log socket");
    }
    let lines = read_until(&sock, "log lines dropped");
    stop(child);
    let Some(note) = lines.iter().find(|l| l.contains("log lines dropped")) else {
        let last: Vec<&String> = lines.iter().rev().take(3).collect();
        panic!(
            "no drop count in {} lines after the sink drained; the last: {last:?}",
            lines.len()
        );
    };
    let n = dropped_count(note);
    assert!(n > 0, "{note:?}");
    eprintln!("{served} served with the log stuck, {quiet} with logging off; {n} lines dropped");
}
