//! Reload without dropping anything: thousands of loopback connections to
//! a service present in every config, while SIGHUP alternates two valid
//! configs and an invalid one.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const CONNECTIONS: usize = 2000;
const RELOADS: usize = 21;
const CLIENTS: usize = 6;
const TIME_LIMIT: Duration = Duration::from_secs(180);

/// `steady` is in every config (same name, address and port) and says
/// which `env` it was started with; the other services come and go.
fn config(which: char, ports: &Ports) -> String {
    let steady = format!(
        r#"[[service]]
name = "steady"
port = {}
bind = ["127.0.0.1"]
command = ["/bin/sh", "-c", "printf '%s:' \"$GREETING\"; exec cat"]
env = {{ GREETING = "{which}" }}
"#,
        ports.steady
    );
    match which {
        'a' => format!(
            "{steady}\n[[service]]\nname = \"only-a\"\nport = {}\nbind = [\"127.0.0.1\"]\ncommand = [\"/bin/cat\"]\n",
            ports.only_a
        ),
        'b' => format!(
            "{steady}max_instances = 1000\n\n[[service]]\nname = \"only-b\"\nport = {}\nbind = [\"127.0.0.1\"]\ninternal = \"echo\"\n",
            ports.only_b
        ),
        // Invalid: an unknown key; nothing of it may be applied.
        _ => format!(
            "{steady}\n[[service]]\nname = \"only-b\"\nport = {}\nbind = [\"127.0.0.1\"]\ninternal = \"echo\"\nbogus_key = 1\n",
            ports.only_b
        ),
    }
}

struct Ports {
    steady: u16,
    only_a: u16,
    only_b: u16,
}

/// One short exchange with `steady`: the echo must come back byte-exact
/// after the greeting of config A or B.
fn one_exchange(port: u16, seed: u64) -> Result<char, String> {
    let data = pattern(512 + (seed % 2048) as usize, seed);
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    s.read_to_end(&mut back).map_err(|e| format!("read: {e}"))?;
    let which = match back.get(..2) {
        Some(b"a:") => 'a',
        Some(b"b:") => 'b',
        _ => return Err(format!("no greeting: {:?}", &back[..back.len().min(16)])),
    };
    if back[2..] != data[..] {
        return Err(format!(
            "echo differs ({} of {} bytes)",
            back.len() - 2,
            data.len()
        ));
    }
    Ok(which)
}

/// Whether something accepts connections on 127.0.0.1:`port`.
fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn two_thousand_connections_survive_reloads_of_valid_and_invalid_configs() {
    let [steady, only_a, only_b] = free_ports(3)[..] else {
        panic!()
    };
    let ports = Ports {
        steady,
        only_a,
        only_b,
    };
    let d = Daemon::start("r.toml", &config('a', &ports), &[]);

    // A session of a service that a reload removes keeps running.
    let mut kept = connect(only_a);
    kept.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    kept.read_exact(&mut buf).unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let reloads_over = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (done, over, failures) = (done.clone(), reloads_over.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut seed = c as u64 * 1_000_003;
                // Until the reloads are over and enough connections ran.
                while !(over.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) >= CONNECTIONS)
                    && t0.elapsed() < TIME_LIMIT
                {
                    seed += 1;
                    if let Err(e) = one_exchange(steady, seed) {
                        failures.lock().unwrap().push(e);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Spread the reloads over the run: one per CONNECTIONS/(RELOADS+3).
    let step = CONNECTIONS / (RELOADS + 3);
    for i in 0..RELOADS {
        wait_until("the clients make progress", Duration::from_secs(60), || {
            done.load(Ordering::Relaxed) >= (i + 1) * step
        });
        match ['b', 'x', 'a'][i % 3] {
            'x' => {
                let log = d.reload(&config('x', &ports), "reload rejected");
                assert!(log.contains("unknown key `bogus_key`"), "{log}");
                // Still config B: only-b answers, only-a does not listen.
                assert_eq!(exchange(only_b, b"still b"), b"still b");
            }
            which => {
                d.reload(&config(which, &ports), "reloaded: serving 2 service(s)");
                let (added, removed) = if which == 'a' {
                    (only_a, only_b)
                } else {
                    (only_b, only_a)
                };
                assert_eq!(exchange(added, b"added"), b"added");
                wait_until(
                    "a removed service stops listening",
                    Duration::from_secs(5),
                    || !listening(removed),
                );
            }
        }
    }
    reloads_over.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let total = done.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} connections failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        total >= CONNECTIONS,
        "only {total} connections within {TIME_LIMIT:?}"
    );
    let warnings = d.lines_with(" WARN ");
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(
        d.log().matches("reloaded: serving").count(),
        RELOADS / 3 * 2
    );

    // The last config was A: new connections get its settings.
    assert_eq!(one_exchange(steady, 99), Ok('a'));
    // The session on only-a, which came and went 7 times, lived through it.
    kept.write_all(b" after").unwrap();
    kept.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut kept), b" after");
    eprintln!(
        "{total} connections, {RELOADS} reloads, 0 failures in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
