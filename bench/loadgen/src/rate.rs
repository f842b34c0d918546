//! `rate`: N short connections, C at a time. Each connection sends a payload,
//! half-closes, and must get the payload back byte for byte followed by EOF.
//! Latency is measured from the start of connect() to that EOF.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pattern::Pattern;
use crate::server::ServerProbe;
use crate::stats;

pub struct RateOpts {
    pub target: SocketAddr,
    pub n: usize,
    pub concurrency: usize,
    pub payload_size: usize,
    pub conn_timeout: Duration,
    pub max_time: Duration,
    /// Write a PROXY v2 header (the socket's own endpoints) before the
    /// payload, in the same write, as a balancer would.
    pub proxy_v2: bool,
    /// TLS over the connection (after the PROXY header, if any).
    pub tls: Option<crate::tls::Tls>,
}

/// A PROXY v2 PROXY/TCP header naming `client` and `server`.
pub fn proxy_v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            h.extend_from_slice(&[0x11, 0, 12]);
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&s.ip().octets());
        }
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(v6) => v6.octets(),
            };
            h.extend_from_slice(&[0x21, 0, 36]);
            h.extend_from_slice(&v6(client));
            h.extend_from_slice(&v6(server));
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&server.port().to_be_bytes());
    h
}

/// One failed connection: a short kind for counting and a message.
#[derive(Debug)]
pub struct Fail {
    pub kind: &'static str,
    pub msg: String,
}

impl Fail {
    fn io(kind: &'static str, e: std::io::Error) -> Self {
        Fail {
            kind,
            msg: format!("{kind}: {e}"),
        }
    }
}

/// Failure counts by kind plus the first few messages, shared by rate and hold.
#[derive(Default)]
pub struct Failures {
    pub by_kind: BTreeMap<&'static str, u64>,
    pub samples: Vec<String>,
}

impl Failures {
    pub fn add(&mut self, f: Fail) {
        *self.by_kind.entry(f.kind).or_default() += 1;
        if self.samples.len() < 5 {
            self.samples.push(f.msg);
        }
    }
    pub fn merge(&mut self, other: Failures) {
        for (k, v) in other.by_kind {
            *self.by_kind.entry(k).or_default() += v;
        }
        for s in other.samples {
            if self.samples.len() < 5 {
                self.samples.push(s);
            }
        }
    }
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }
    pub fn to_json(&self) -> Value {
        json!({
            "by_kind": self.by_kind,
            "samples": self.samples,
        })
    }
}

/// Payload of connection `i`: a window of the pattern at an offset that
/// depends on `i`, so replies crossed between connections are detected.
pub fn payload_offset(i: usize) -> u64 {
    (i as u64).wrapping_mul(7919)
}

/// Sends `header` (may be empty) and `payload` in one write, half-closes,
/// and checks the reply is exactly `payload` followed by EOF. Reading runs
/// concurrently with writing so a payload larger than the socket buffers
/// cannot deadlock against an echo server.
pub async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    header: &[u8],
    payload: &[u8],
) -> Result<(), Fail> {
    let (mut r, mut w) = tokio::io::split(stream);
    let send = async {
        if header.is_empty() {
            w.write_all(payload).await
        } else {
            w.write_all(&[header, payload].concat()).await
        }
        .map_err(|e| Fail::io("write", e))?;
        w.shutdown().await.map_err(|e| Fail::io("shutdown", e))
    };
    let recv = async {
        let mut buf = [0u8; 8192];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut buf).await.map_err(|e| Fail::io("read", e))?;
            if n == 0 {
                break;
            }
            if got + n > payload.len() {
                return Err(Fail {
                    kind: "extra",
                    msg: format!("extra: reply longer than the {} bytes sent", payload.len()),
                });
            }
            if buf[..n] != payload[got..got + n] {
                let at = got
                    + buf[..n]
                        .iter()
                        .zip(&payload[got..])
                        .take_while(|(a, b)| a == b)
                        .count();
                return Err(Fail {
                    kind: "mismatch",
                    msg: format!("mismatch: reply differs from payload at byte {at}"),
                });
            }
            got += n;
        }
        if got < payload.len() {
            return Err(Fail {
                kind: "short",
                msg: format!("short: EOF after {got} of {} bytes", payload.len()),
            });
        }
        Ok(())
    };
    tokio::try_join!(send, recv).map(|_| ())
}

async fn one_connection(
    target: SocketAddr,
    payload: &[u8],
    timeout: Duration,
    proxy_v2: bool,
    tls: Option<&crate::tls::Tls>,
) -> Result<u64, Fail> {
    let t0 = Instant::now();
    let work = async {
        if tls.is_some() {
            let header = |local| match proxy_v2 {
                true => proxy_v2_header(local, target),
                false => Vec::new(),
            };
            let mut s = crate::tls::connect(target, header, tls)
                .await
                .map_err(|e| Fail::io("connect", e))?;
            return exchange(&mut s, &[], payload).await;
        }
        let mut s = TcpStream::connect(target)
            .await
            .map_err(|e| Fail::io("connect", e))?;
        let header = match proxy_v2 {
            true => proxy_v2_header(s.local_addr().map_err(|e| Fail::io("connect", e))?, target),
            false => Vec::new(),
        };
        exchange(&mut s, &header, payload).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Ok(t0.elapsed().as_nanos() as u64),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Fail {
            kind: "timeout",
            msg: format!("timeout: no complete reply within {timeout:?}"),
        }),
    }
}

struct WorkerOut {
    latencies: Vec<u64>,
    failures: Failures,
}

pub async fn run(opts: RateOpts, probe: ServerProbe) -> (Map<String, Value>, String, bool) {
    let pattern = Arc::new(Pattern::new(opts.payload_size));
    let next = Arc::new(AtomicUsize::new(0));
    let before = probe.sample();
    let own_before = crate::server::own_cpu_ns();
    let start = Instant::now();
    let deadline = start + opts.max_time;

    let mut set = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency.min(opts.n) {
        let pattern = Arc::clone(&pattern);
        let next = Arc::clone(&next);
        let (target, n, size, timeout, proxy_v2) = (
            opts.target,
            opts.n,
            opts.payload_size,
            opts.conn_timeout,
            opts.proxy_v2,
        );
        let tls = opts.tls.clone();
        set.spawn(async move {
            let mut out = WorkerOut {
                latencies: Vec::with_capacity(n / 8 + 1),
                failures: Failures::default(),
            };
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let payload = pattern.window(payload_offset(i), size);
                match one_connection(target, payload, timeout, proxy_v2, tls.as_ref()).await {
                    Ok(ns) => out.latencies.push(ns),
                    Err(f) => out.failures.add(f),
                }
            }
            out
        });
    }
    let mut latencies = Vec::with_capacity(opts.n);
    let mut failures = Failures::default();
    while let Some(res) = set.join_next().await {
        match res {
            Ok(out) => {
                latencies.extend(out.latencies);
                failures.merge(out.failures);
            }
            Err(e) => failures.add(Fail {
                kind: "worker",
                msg: format!("worker task failed: {e}"),
            }),
        }
    }
    let elapsed = start.elapsed();
    let own_after = crate::server::own_cpu_ns();
    let after = probe.sample_after_settle().await;

    let ok = latencies.len();
    let attempted = next.load(Ordering::Relaxed).min(opts.n);
    let not_started = opts.n - attempted;
    let summary = stats::summarize(&mut latencies);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let conns_per_s = ok as f64 / secs;
    let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;

    let mut m = Map::new();
    m.insert("target".into(), json!(opts.target.to_string()));
    m.insert("n".into(), json!(opts.n));
    m.insert("concurrency".into(), json!(opts.concurrency));
    m.insert("payload_size".into(), json!(opts.payload_size));
    m.insert("attempted".into(), json!(attempted));
    m.insert("ok_conns".into(), json!(ok));
    m.insert(
        "failures".into(),
        json!(failures.total() + not_started as u64),
    );
    m.insert("not_started".into(), json!(not_started));
    m.insert("failure_detail".into(), failures.to_json());
    m.insert("elapsed_s".into(), json!(secs));
    m.insert("conns_per_s".into(), json!(conns_per_s));
    if let Some(s) = summary {
        m.insert("p50_us".into(), json!(us(s.p50)));
        m.insert("p90_us".into(), json!(us(s.p90)));
        m.insert("p99_us".into(), json!(us(s.p99)));
        m.insert("max_us".into(), json!(us(s.max)));
    }
    if let (Some(a), Some(b)) = (own_before, own_after)
        && attempted > 0
    {
        m.insert(
            "loadgen_cpu_us_per_conn".into(),
            json!(b.saturating_sub(a) as f64 / 1000.0 / attempted as f64),
        );
    }
    probe.insert_cpu_delta(&mut m, &before, &after, attempted);
    probe.insert_rss(&mut m, "server_rss_kib_before", &before);
    probe.insert_rss(&mut m, "server_rss_kib_after", &after);

    let mut human = format!(
        "rate {}: {ok}/{} ok, {} failed, {:.1} s, {conns_per_s:.0} conns/s",
        opts.target,
        opts.n,
        failures.total() + not_started as u64,
        secs
    );
    if let Some(s) = summary {
        human += &format!(
            ", latency p50 {:.0} p90 {:.0} p99 {:.0} max {:.0} µs",
            us(s.p50),
            us(s.p90),
            us(s.p99),
            us(s.max)
        );
    }
    if let Some(v) = m.get("server_cpu_us_per_conn").and_then(Value::as_f64) {
        human += &format!(", server CPU {v:.1} µs/conn");
    }
    for s in &failures.samples {
        human += &format!("\n  failure: {s}");
    }
    if not_started > 0 {
        human += &format!("\n  {not_started} connections not started: time limit reached");
    }
    let success = failures.total() == 0 && not_started == 0;
    (m, human, success)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-connection server on loopback that reads the request to EOF
    /// and answers with `reply(request)`, then closes (or, with `hang`,
    /// keeps the connection open).
    async fn server(reply: fn(Vec<u8>) -> Vec<u8>, hang: bool) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).await.unwrap();
            s.write_all(&reply(req)).await.unwrap();
            if hang {
                std::future::pending::<()>().await;
            }
        });
        addr
    }

    async fn kind_of(reply: fn(Vec<u8>) -> Vec<u8>) -> Result<(), &'static str> {
        let addr = server(reply, false).await;
        let p = Pattern::new(64);
        one_connection(
            addr,
            p.window(payload_offset(3), 64),
            Duration::from_secs(30),
            false,
            None,
        )
        .await
        .map(|_| ())
        .map_err(|f| f.kind)
    }

    #[tokio::test]
    async fn exact_echo_then_eof_passes() {
        assert_eq!(kind_of(|r| r).await, Ok(()));
    }

    #[tokio::test]
    async fn truncated_reply_is_short() {
        assert_eq!(
            kind_of(|mut r| {
                r.pop();
                r
            })
            .await,
            Err("short")
        );
    }

    #[tokio::test]
    async fn longer_reply_is_extra() {
        assert_eq!(
            kind_of(|mut r| {
                r.push(0);
                r
            })
            .await,
            Err("extra")
        );
    }

    #[tokio::test]
    async fn altered_reply_is_mismatch() {
        assert_eq!(
            kind_of(|mut r| {
                r[40] ^= 1;
                r
            })
            .await,
            Err("mismatch")
        );
    }

    #[tokio::test]
    async fn reply_without_eof_is_a_timeout() {
        let addr = server(|r| r, true).await;
        let p = Pattern::new(8);
        let r = one_connection(
            addr,
            p.window(0, 8),
            Duration::from_millis(300),
            false,
            None,
        )
        .await;
        assert_eq!(r.map(|_| ()).map_err(|f| f.kind), Err("timeout"));
    }

    #[tokio::test]
    async fn proxy_v2_header_comes_first_and_names_both_ends() {
        // The server strips a 28-byte TCP4 header after checking it names
        // 127.0.0.1 on both sides; the echo of the rest must match.
        let addr = server(
            |r| {
                let ok =
                    r.starts_with(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\x7f\0\0\x01\x7f\0\0\x01");
                if ok { r[28..].to_vec() } else { r }
            },
            false,
        )
        .await;
        let p = Pattern::new(64);
        let r = one_connection(addr, p.window(0, 64), Duration::from_secs(30), true, None).await;
        assert_eq!(r.map(|_| ()).map_err(|f| f.kind), Ok(()));
        let h = proxy_v2_header("[::1]:5".parse().unwrap(), "[::1]:6".parse().unwrap());
        assert_eq!(
            (h.len(), h[13], &h[h.len() - 4..]),
            (52, 0x21, &[0, 5, 0, 6][..])
        );
    }

    #[test]
    fn failures_count_by_kind_and_keep_five_samples() {
        let mut f = Failures::default();
        for i in 0..7 {
            f.add(Fail {
                kind: if i % 2 == 0 { "connect" } else { "read" },
                msg: format!("m{i}"),
            });
        }
        assert_eq!(f.total(), 7);
        assert_eq!(f.by_kind["connect"], 4);
        assert_eq!(f.by_kind["read"], 3);
        assert_eq!(f.samples, ["m0", "m1", "m2", "m3", "m4"]);
    }
}
