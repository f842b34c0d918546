//! Test harness: runs the real `wininetd` binary on free loopback ports
//! and talks to it as a client would.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_wininetd");

/// A port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
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

    /// Starts without waiting for readiness (for startup failures).
    pub fn spawn(
        name: &str,
        config: &str,
        args: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join(name);
        std::fs::write(&cfg, config).unwrap();
        let log = dir.path().join("daemon.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("--debug")
            .arg("--cfgfile")
            .arg(&cfg)
            .args(args)
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
