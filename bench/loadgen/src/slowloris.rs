//! `slowloris`: N connections that each send their opening (a PROXY v1
//! header, or a TLS record) one byte a second, half to a PROXY service and
//! half to a TLS one. A connection the server closes is recorded (how long
//! it lived, how many bytes it sent); with `reconnect` its slot connects
//! again a second later, so N stay open. An attacker here costs a timer
//! and a send a second, so the machine's CPU goes to the server under
//! attack, not to the attack.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Closed within this of its connect: refused, not cut.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
const BYTE_EVERY: Duration = Duration::from_secs(1);

pub struct SlowOpts {
    pub proxy_port: u16,
    pub tls_port: u16,
    pub connections: usize,
    /// Connects per second.
    pub open_rate: u32,
    pub reconnect: bool,
    pub max_time: Duration,
    /// Written once every connection was opened.
    pub ready: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Proxy,
    Tls,
}

const KINDS: [(Kind, &str); 2] = [(Kind::Proxy, "proxy"), (Kind::Tls, "tls")];

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    ConnectFailed(Kind),
    Refused(Kind),
    Cut { kind: Kind, lived: f64, sent: usize },
}

/// Each slot's open connection (its kind and when it was opened), for the
/// summary's "still open".
type Slots = Arc<Mutex<Vec<Option<(Kind, Instant)>>>>;

/// What each kind sends, one byte a second; never all of it in time.
fn scripts(proxy_port: u16) -> [Vec<u8>; 2] {
    let header = format!("PROXY TCP4 192.0.2.7 127.0.0.1 40000 {proxy_port}\r\n").into_bytes();
    // A TLS handshake record announcing 512 bytes.
    let mut record = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec();
    for _ in 0..16 {
        record.extend(0u8..32);
    }
    [header, record]
}

/// Runs the attack until SIGTERM, SIGINT or `max_time`; the summary.
pub async fn run(o: SlowOpts) -> std::io::Result<Value> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let start = Instant::now();
    let end = tokio::time::Instant::from_std(start + o.max_time);
    let scripts = Arc::new(scripts(o.proxy_port));
    let slots: Slots = Arc::new(Mutex::new(vec![None; o.connections]));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ports = [o.proxy_port, o.tls_port];
    let opener = {
        let (slots, scripts) = (Arc::clone(&slots), Arc::clone(&scripts));
        let (ready, n, rate, reconnect) =
            (o.ready.clone(), o.connections, o.open_rate, o.reconnect);
        tokio::spawn(async move {
            let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let mut next = tokio::time::Instant::now();
            for slot in 0..n {
                tokio::time::sleep_until(next).await;
                next += gap;
                let kind = if slot % 2 == 1 {
                    Kind::Tls
                } else {
                    Kind::Proxy
                };
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[kind as usize]));
                let attacker = Attacker {
                    slot,
                    kind,
                    addr,
                    slots: Arc::clone(&slots),
                    scripts: Arc::clone(&scripts),
                    ended: tx.clone(),
                    reconnect,
                };
                tokio::spawn(attacker.run());
            }
            let _ = std::fs::write(&ready, format!("{:.1}\n", start.elapsed().as_secs_f64()));
        })
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = tokio::time::sleep_until(end) => {}
    }
    opener.abort();
    let seconds = start.elapsed().as_secs_f64();
    let mut ended = Vec::new();
    while let Ok(e) = rx.try_recv() {
        ended.push(e);
    }
    let open: Vec<(Kind, Instant)> = slots.lock().unwrap().iter().flatten().copied().collect();
    Ok(summary(seconds, &ended, &open, Instant::now()))
}

struct Attacker {
    slot: usize,
    kind: Kind,
    addr: SocketAddr,
    slots: Slots,
    scripts: Arc<[Vec<u8>; 2]>,
    ended: mpsc::UnboundedSender<Ended>,
    reconnect: bool,
}

impl Attacker {
    async fn run(self) {
        loop {
            let opened = Instant::now();
            self.slots.lock().unwrap()[self.slot] = Some((self.kind, opened));
            let ended = self.one(opened).await;
            self.slots.lock().unwrap()[self.slot] = None;
            let _ = self.ended.send(ended);
            if !self.reconnect {
                return;
            }
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    }

    /// One connection, from its connect to its close by the server.
    async fn one(&self, opened: Instant) -> Ended {
        let Ok(mut s) = TcpStream::connect(self.addr).await else {
            return Ended::ConnectFailed(self.kind);
        };
        let script = &self.scripts[self.kind as usize];
        let mut sent = 0;
        let mut next = tokio::time::Instant::from_std(opened) + BYTE_EVERY;
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    next += BYTE_EVERY;
                    if sent < script.len() {
                        match s.try_write(&script[sent..=sent]) {
                            Ok(n) => sent += n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                }
                // Bytes from the server (a TLS alert) are read and dropped.
                r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
            }
        }
        let lived = opened.elapsed();
        if lived < REFUSED_WITHIN {
            Ended::Refused(self.kind)
        } else {
            Ended::Cut {
                kind: self.kind,
                lived: lived.as_secs_f64(),
                sent,
            }
        }
    }
}

/// n, min, p50, p99, max (rounded to 0.01); empty for no values.
fn spread(values: &mut [f64]) -> Value {
    if values.is_empty() {
        return json!({});
    }
    values.sort_by(f64::total_cmp);
    let pick = |q: f64| values[((q * values.len() as f64) as usize).min(values.len() - 1)];
    let r = |v: f64| (v * 100.0).round() / 100.0;
    json!({"n": values.len(), "min": r(values[0]), "p50": r(pick(0.5)), "p99": r(pick(0.99)),
           "max": r(values[values.len() - 1])})
}

fn summary(seconds: f64, ended: &[Ended], open: &[(Kind, Instant)], now: Instant) -> Value {
    let mut out = Map::new();
    out.insert("seconds".into(), json!((seconds * 10.0).round() / 10.0));
    let (mut still, mut oldest) = (Map::new(), Map::new());
    for (kind, name) in KINDS {
        let ages: Vec<f64> = open
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, t)| now.duration_since(*t).as_secs_f64())
            .collect();
        still.insert(name.into(), json!(ages.len()));
        let max = ages.iter().copied().fold(0.0, f64::max);
        oldest.insert(name.into(), json!((max * 10.0).round() / 10.0));
        let (mut refused, mut failed, mut lived, mut sent) = (0, 0, Vec::new(), Vec::new());
        for e in ended {
            match *e {
                Ended::Refused(k) if k == kind => refused += 1,
                Ended::ConnectFailed(k) if k == kind => failed += 1,
                Ended::Cut {
                    kind: k,
                    lived: l,
                    sent: s,
                } if k == kind => {
                    lived.push(l);
                    sent.push(s as f64);
                }
                _ => {}
            }
        }
        let opened = refused + lived.len() + ages.len();
        out.insert(
            name.into(),
            json!({"opened": opened + failed, "refused": refused, "connect_failed": failed,
                   "cut": spread(&mut lived), "cut_bytes_sent": spread(&mut sent)}),
        );
    }
    out.insert("still_open".into(), Value::Object(still));
    out.insert("still_open_oldest_s".into(), Value::Object(oldest));
    out.insert("cpu_s".into(), json!(own_cpu_seconds()));
    Value::Object(out)
}

/// This process's user + system CPU time, in seconds (0.01 resolution).
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    ((s(ru.ru_utime) + s(ru.ru_stime)) * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// One server that drops each connection at once (refused), one that
    /// closes each after 1.5 s (cut, having sent one byte): both counted as
    /// such, the bytes are the script's first, and none is left open.
    #[tokio::test(flavor = "current_thread")]
    async fn refused_and_cut_connections_are_told_apart_and_bytes_come_one_a_second() {
        let refuse = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let slow = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (rp, sp) = (
            refuse.local_addr().unwrap().port(),
            slow.local_addr().unwrap().port(),
        );
        tokio::spawn(async move {
            while let Ok((s, _)) = refuse.accept().await {
                drop(s);
            }
        });
        let (got_tx, mut got_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = slow.accept().await {
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut b = [0u8; 16];
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
                    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, s.read(&mut b)).await {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&b[..n]);
                    }
                    let _ = s.shutdown().await;
                    let _ = got_tx.send(got);
                });
            }
        });
        let dir = std::env::temp_dir().join(format!("slowloris-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let o = SlowOpts {
            proxy_port: rp,
            tls_port: sp,
            connections: 4,
            open_rate: 100,
            reconnect: false,
            max_time: Duration::from_millis(2500),
            ready: dir.join("ready"),
        };
        let s = run(o).await.unwrap();
        assert_eq!(s["proxy"]["refused"], 2, "{s}");
        assert_eq!(s["proxy"]["opened"], 2, "{s}");
        assert_eq!(s["tls"]["cut"]["n"], 2, "{s}");
        assert_eq!(s["tls"]["cut_bytes_sent"]["max"], 1.0, "{s}");
        assert!(s["tls"]["cut"]["min"].as_f64().unwrap() >= 1.4, "{s}");
        assert_eq!(s["still_open"]["tls"], 0, "{s}");
        assert!(dir.join("ready").exists());
        for _ in 0..2 {
            assert_eq!(
                got_rx.recv().await.unwrap(),
                [0x16],
                "a TLS record's first byte"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
