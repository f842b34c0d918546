//! Admission against the real binary: the fair share of `max_connections`
//! and `per_source_rate`. Every listener and client is on loopback.
#![cfg(unix)]

mod common;

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const LOG_WAIT: Duration = Duration::from_secs(10);

/// One `[[service]]` on 127.0.0.1:`port`.
fn service(name: &str, port: u16, keys: &str) -> String {
    format!("[[service]]\nname = \"{name}\"\nport = {port}\nbind = [\"127.0.0.1\"]\n{keys}\n\n")
}

/// Stops the daemon with SIGTERM when dropped, so that `--kill-on-stop`
/// ends its programs even when the test fails.
struct Stopped(Daemon);

impl Drop for Stopped {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.pid());
        if nix::sys::signal::kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + LOG_WAIT;
            while matches!(self.0.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn a_quiet_service_is_never_refused_while_busy_ones_fill_max_connections() {
    let ports = free_ports(5);
    let (busy, quiet) = (&ports[..4], ports[4]);
    let mut config = "max_connections = 40\n\n".to_string();
    for (i, port) in busy.iter().enumerate() {
        // Programs that linger well past the test, until --kill-on-stop.
        config += &service(
            &format!("busy{i}"),
            *port,
            "command = [\"/bin/sleep\", \"20\"]",
        );
    }
    config += &service("quiet", quiet, "command = [\"/bin/cat\"]");
    let mut d = Stopped(Daemon::start("x.toml", &config, &["--kill-on-stop"]));
    let d = &mut d.0;

    // Two bounded client loops per busy service, connecting and hanging
    // up until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let hammers: Vec<_> = busy
        .iter()
        .flat_map(|&port| [port, port])
        .map(|port| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut tries = 0u32;
                while !stop.load(Ordering::Relaxed) && tries < 20_000 && Instant::now() < deadline {
                    drop(TcpStream::connect(("127.0.0.1", port)));
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                tries
            })
        })
        .collect();

    // The busy services hold what they may of the budget and are refused.
    d.wait_log("refused: max_connections reached", LOG_WAIT);
    wait_until("the busy services hold their share", LOG_WAIT, || {
        d.children().is_some_and(|c| c.len() >= 36)
    });

    // Meanwhile the quiet service is used, one session after another.
    let mut failed = 0;
    for i in 0..40u64 {
        let data = pattern(32, i);
        if exchange_on(connect(quiet), &data) != data {
            failed += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let tries: u32 = hammers.into_iter().map(|h| h.join().unwrap()).sum();

    let log = d.log();
    let quiet_refused: Vec<_> = log
        .lines()
        .filter(|l| l.contains("refused") && l.contains("service=quiet"))
        .collect();
    assert_eq!(failed, 0, "quiet sessions failed; log:\n{log}");
    assert!(quiet_refused.is_empty(), "{quiet_refused:#?}");
    // The scenario was real: the busy ones were hammered and refused, and
    // never went over max_connections.
    assert!(tries > 100, "only {tries} busy connections tried");
    let busy_refused = d.lines_with("refused: max_connections reached");
    assert!(
        busy_refused.iter().all(|l| l.contains("service=busy")),
        "{busy_refused:#?}"
    );
    let live = d.children().unwrap_or_default().len();
    assert!(live <= 40, "{live} programs under max_connections = 40");

    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(LOG_WAIT).success());
}

#[test]
fn per_source_rate_refuses_one_hammering_source_and_serves_the_others() {
    let port = free_port();
    let d = Daemon::start(
        "x.toml",
        &service(
            "s",
            port,
            "command = [\"/bin/echo\", \"ok\"]\nper_source_rate = \"2/s\"",
        ),
        &[],
    );
    let t0 = Instant::now();
    let served = (0..20)
        .filter(|_| exchange_on(connect_from("127.0.0.1", port), b"") == b"ok\n")
        .count();
    let elapsed = t0.elapsed().as_secs_f64();
    // A burst of one second's worth (2), plus what refilled meanwhile.
    let most = 2 + (elapsed * 2.0).ceil() as usize;
    assert!(
        (2..=most).contains(&served) && served < 20,
        "{served} of 20 served in {elapsed:.2}s at 2/s"
    );
    d.wait_log("refused: per_source_rate exceeded", LOG_WAIT);
    let line = &d.lines_with("refused: per_source_rate exceeded")[0];
    assert!(line.contains("source=127.0.0.1"), "{line}");
    // Another source has its own bucket, full.
    for _ in 0..2 {
        assert_eq!(exchange_on(connect_from("127.0.0.2", port), b""), b"ok\n");
    }
    assert!(
        !d.log()
            .lines()
            .any(|l| l.contains("refused") && l.contains("source=127.0.0.2")),
        "{}",
        d.log()
    );
}
