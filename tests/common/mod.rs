//! Test harness: runs the real `wininetd` binary on free loopback ports
//! and talks to it as a client would.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_wininetd");

/// The next port to try: below the kernel's ephemeral range (32768 and up
/// on Linux), which every client connection and `bind(":0")` draws from. A
/// port taken from there was, in CI, some other test's client port by the
/// time the daemon bound it, and the daemon did not start. Each test
/// binary starts at its own offset (its pid), then counts up.
fn candidate_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (LOW + (std::process::id() * 97 + n) % SPAN) as u16
}

/// Whether nothing holds `port` on any address, for TCP (and UDP).
fn port_is_free(port: u16, udp: bool) -> bool {
    let tcp = TcpListener::bind(("0.0.0.0", port)).is_ok()
        && TcpListener::bind(("::", port))
            .map_or_else(|e| e.kind() != std::io::ErrorKind::AddrInUse, |_| true);
    tcp && (!udp || UdpSocket::bind(("0.0.0.0", port)).is_ok())
}

/// A port that was free a moment ago on every address, outside the range
/// the OS hands out by itself.
pub fn free_port() -> u16 {
    for _ in 0..2000 {
        let port = candidate_port();
        if port_is_free(port, false) {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// A port free for both TCP and UDP a moment ago.
pub fn free_port_tcp_udp() -> u16 {
    for _ in 0..2000 {
        let port = candidate_port();
        if port_is_free(port, true) {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// A running daemon; killed (by its PID) when dropped.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Writes `config` to `name` in a fresh directory and starts the daemon
    /// on it with `--debug` and `args`; waits until it serves.
    pub fn start(name: &str, config: &str, args: &[&str]) -> Daemon {
        Self::start_with(name, config, args, |_| {})
    }

    pub fn start_with(
        name: &str,
        config: &str,
        args: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Daemon {
        let d = Self::spawn(name, config, args, tweak);
        d.wait_log("serving", Duration::from_secs(10));
        d
    }

    /// [`Daemon::start`], as `uid` (group `uid`, no supplementary groups),
    /// in a directory that user owns: for limits root is exempt from
    /// (RLIMIT_NPROC). Needs root.
    pub fn start_as(name: &str, config: &str, args: &[&str], uid: u32) -> Daemon {
        assert!(
            is_root(),
            "starting a daemon as uid {uid} needs root (CI runs as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
        let d = Self::spawn_in(dir, name, config, args, |c| {
            std::os::unix::process::CommandExt::uid(c, uid);
            std::os::unix::process::CommandExt::gid(c, uid);
        });
        d.wait_log("serving", Duration::from_secs(10));
        d
    }

    /// Starts without waiting for readiness (for startup failures).
    pub fn spawn(
        name: &str,
        config: &str,
        args: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Daemon {
        Self::spawn_in(tempfile::tempdir().unwrap(), name, config, args, tweak)
    }

    fn spawn_in(
        dir: tempfile::TempDir,
        name: &str,
        config: &str,
        args: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Daemon {
        let cfg = dir.path().join(name);
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("daemon.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("--debug")
            .arg("--cfgfile")
            .arg(&cfg)
            .args(args)
            // Each daemon's own control channel (`wininetd status`).
            .env("WININETD_RUN_DIR", dir.path().join("run"))
            // Tests count the `started` lines, which are at debug.
            .env("WININETD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        tweak(&mut cmd);
        let child = cmd.spawn().expect("start wininetd");
        Daemon {
            child,
            dir,
            config: cfg,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Where its control channel is (`WININETD_RUN_DIR`).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits until the log contains `needle` (panics with the log if not).
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        self.wait_log_count(needle, 1, limit)
    }

    /// Waits until `needle` appears at least `count` times.
    pub fn wait_log_count(&self, needle: &str, count: usize, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return log;
            }
            if Instant::now() > deadline {
                panic!("{needle:?} x{count} not logged within {limit:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Rewrites the config and sends SIGHUP; waits for the outcome line.
    pub fn reload(&self, config: &str, expect: &str) -> String {
        let before = self.log().matches(expect).count();
        std::fs::write(&self.config, config).unwrap();
        self.signal(Signal::SIGHUP);
        self.wait_log_count(expect, before + 1, Duration::from_secs(10))
    }

    /// Waits for the daemon to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "wininetd did not exit within {limit:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The daemon's child processes now (Linux; `None` where unknown).
    pub fn children(&self) -> Option<Vec<u32>> {
        let pid = self.pid();
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        Some(
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
        )
    }

    /// The log lines that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// How many programs the daemon has started so far (text log), once the
    /// count has held still for a moment: the daemon's log writer writes
    /// its lines in batches, a little after the programs start.
    pub fn started(&self) -> usize {
        let count = || self.lines_with(" started ").len();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = count();
        let mut still_since = Instant::now();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(25));
            let now = count();
            if now != last {
                (last, still_since) = (now, Instant::now());
            } else if still_since.elapsed() >= Duration::from_millis(300) {
                break;
            }
        }
        last
    }

    /// Whether any log line names the client at `peer` (as `peer=ADDR`).
    pub fn mentions_peer(&self, peer: SocketAddr) -> bool {
        self.log().contains(&format!("peer={peer} "))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Connects to 127.0.0.1:port with a bounded wait for each read.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Connects to `addr` with a bounded wait for each read.
pub fn connect_to(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Connects to [::1]:port.
pub fn connect6(port: u16) -> TcpStream {
    connect_to(SocketAddr::new(
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        port,
    ))
}

/// Connects to 127.0.0.1:port from `source` (any 127/8 address: Linux
/// routes the whole block to `lo`), so access rules can tell clients apart.
pub fn connect_from(source: &str, port: u16) -> TcpStream {
    let source: IpAddr = source.parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(source, 0).into()).unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    sock.connect_timeout(&to.into(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect from {source} to {to}: {e}"));
    let s = TcpStream::from(sock);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `input` on `s`, half-closes, and reads until EOF (or reset).
pub fn exchange_on(mut s: TcpStream, input: &[u8]) -> Vec<u8> {
    // A refused connection may be gone before the write: that is an answer.
    let _ = s.write_all(input);
    let _ = s.shutdown(Shutdown::Write);
    read_all(&mut s)
}

/// Asserts that the daemon closes `s` without a byte, within `limit`.
pub fn assert_closed_at_once(mut s: TcpStream, limit: Duration) {
    s.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("a refused connection got {n} bytes"),
        Err(e) => panic!(
            "a refused connection was not closed within {:?}: {e}",
            started.elapsed()
        ),
    }
}

/// Sends one datagram to `to` from a fresh socket and waits up to `wait`
/// for one reply; `None` if none came.
pub fn udp_request(to: SocketAddr, data: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let local: SocketAddr = if to.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(local).unwrap();
    s.connect(to).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send(data).unwrap();
    let mut buf = vec![0u8; 65_536];
    match s.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `input`, half-closes, and reads until EOF.
pub fn exchange(port: u16, input: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    s.write_all(input).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

/// Reads until EOF (or error, which counts as EOF: a reset closes too).
pub fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A deterministic, non-repeating-looking byte pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `data` from one thread while reading the echo in this one, then
/// half-closes; returns what came back before EOF.
pub fn stream_through(port: u16, data: Vec<u8>) -> Vec<u8> {
    let s = connect(port);
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for chunk in data.chunks(64 * 1024) {
            writer.write_all(chunk).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = s;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    sender.join().unwrap();
    out
}

/// What `wininetd --check` said of a config.
pub struct Checked {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Writes `text` to a file called `name` in a fresh directory and runs
/// `wininetd --check` on it.
pub fn check(name: &str, text: &[u8]) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(dir.path(), name, text);
    let out = run_cli(&["--check", "--cfgfile", cfg.to_str().unwrap()]);
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `wininetd ARGS` to completion (for --check and friends).
pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Path helper for test fixtures.
pub fn write_file(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// Sets a process's soft limit `resource` (RLIMIT_NOFILE, RLIMIT_NPROC…)
/// from outside (Linux prlimit); the hard limit is kept.
#[cfg(target_os = "linux")]
pub fn set_limit(pid: i32, resource: libc::__rlimit_resource_t, n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child with valid structs.
    let rc = unsafe {
        libc::prlimit(pid, resource, std::ptr::null(), &mut lim);
        lim.rlim_cur = n.min(lim.rlim_max);
        libc::prlimit(pid, resource, &lim, std::ptr::null_mut())
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// Sets the soft limit `option` (prlimit's: `nproc`, `nofile`…) of `pid`,
/// a process of `uid`, with util-linux's prlimit run as that uid: root
/// without CAP_SYS_RESOURCE may not change another user's limits.
pub fn set_soft_limit_as(uid: u32, pid: i32, option: &str, n: u64) {
    use std::os::unix::process::CommandExt;
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--{option}={n}:"))
        .uid(uid)
        .gid(uid)
        .output()
        .expect("prlimit (package util-linux)");
    assert!(out.status.success(), "prlimit: {out:?}");
}

/// The lowest descriptor number `pid` has free: a soft RLIMIT_NOFILE there
/// leaves it none.
#[cfg(target_os = "linux")]
pub fn lowest_free_fd(pid: i32) -> u64 {
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).unwrap()
}
