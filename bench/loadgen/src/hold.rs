//! `hold`: open N connections and keep them open. On each one a byte is sent
//! and read back, so the super-server has surely started its child. Then
//! readiness is signalled, the server's VmRSS is read, and the connections
//! are held until stdin closes or the hold time passes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::rate::{Fail, Failures};
use crate::server::ServerProbe;
use crate::tls::Stream;

pub struct HoldOpts {
    pub target: SocketAddr,
    pub n: usize,
    pub connect_concurrency: usize,
    pub hold: Duration,
    pub watch_stdin: bool,
    pub ready_file: Option<PathBuf>,
    pub conn_timeout: Duration,
    pub max_time: Duration,
    /// Connections served and closed before the first VmRSS reading.
    pub warmup: usize,
    pub tls: Option<crate::tls::Tls>,
    /// Source addresses, taken in turn (empty: the kernel's choice).
    pub sources: Vec<IpAddr>,
}

async fn open_one(
    target: SocketAddr,
    source: Option<IpAddr>,
    byte: u8,
    timeout: Duration,
    tls: Option<&crate::tls::Tls>,
) -> Result<Box<dyn Stream>, Fail> {
    let work = async {
        let mut s = crate::tls::connect_from(target, source, |_| Vec::new(), tls)
            .await
            .map_err(|e| Fail {
                kind: "connect",
                msg: format!("connect: {e}"),
            })?;
        s.write_all(&[byte]).await.map_err(|e| Fail {
            kind: "write",
            msg: format!("write: {e}"),
        })?;
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(1) if b[0] == byte => Ok(s),
            Ok(1) => Err(Fail {
                kind: "mismatch",
                msg: format!("mismatch: sent {byte:#04x}, got {:#04x}", b[0]),
            }),
            Ok(_) => Err(Fail {
                kind: "short",
                msg: "short: EOF before the echoed byte".into(),
            }),
            Err(e) => Err(Fail {
                kind: "read",
                msg: format!("read: {e}"),
            }),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Fail {
            kind: "timeout",
            msg: format!("timeout: no echo within {timeout:?}"),
        }),
    }
}

/// Resolves when stdin reaches EOF (or cannot be read). A plain thread does
/// the blocking read so the runtime never waits for it at shutdown.
fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(());
    });
    rx
}

pub async fn run(opts: HoldOpts, probe: ServerProbe) -> (Map<String, Value>, String, bool) {
    let start = Instant::now();
    let deadline = start + opts.max_time;
    let mut warmed = 0;
    for i in 0..opts.warmup {
        if Instant::now() >= deadline {
            break;
        }
        if open_one(
            opts.target,
            None,
            i as u8,
            opts.conn_timeout,
            opts.tls.as_ref(),
        )
        .await
        .is_ok()
        {
            warmed += 1;
        }
    }
    if opts.warmup > 0 {
        // Let those programs exit and be reaped before the reading.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let before = probe.sample();

    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..opts.connect_concurrency.clamp(1, opts.n.max(1)) {
        let next = Arc::clone(&next);
        let (target, n, timeout) = (opts.target, opts.n, opts.conn_timeout);
        let tls = opts.tls.clone();
        let sources = opts.sources.clone();
        set.spawn(async move {
            let mut held = Vec::new();
            let mut failures = Failures::default();
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
                let byte = b'a' + (i % 26) as u8;
                match open_one(target, source, byte, timeout, tls.as_ref()).await {
                    Ok(s) => held.push(s),
                    Err(f) => failures.add(f),
                }
            }
            (held, failures)
        });
    }
    let mut held: Vec<Box<dyn Stream>> = Vec::with_capacity(opts.n);
    let mut failures = Failures::default();
    while let Some(res) = set.join_next().await {
        match res {
            Ok((h, f)) => {
                held.extend(h);
                failures.merge(f);
            }
            Err(e) => failures.add(Fail {
                kind: "worker",
                msg: format!("worker task failed: {e}"),
            }),
        }
    }
    let open_time = start.elapsed();
    let opened = held.len();

    eprintln!("hold: READY {opened} connections held");
    if let Some(path) = &opts.ready_file
        && let Err(e) = std::fs::write(path, format!("{opened}\n"))
    {
        failures.add(Fail {
            kind: "ready-file",
            msg: format!("ready-file {}: {e}", path.display()),
        });
    }
    let during = probe.sample_after_settle().await;

    let hold_start = Instant::now();
    let remaining = deadline.saturating_duration_since(Instant::now());
    let hold_for = opts.hold.min(remaining);
    let stdin_rx = opts.watch_stdin.then(stdin_closed);
    let ended_by = tokio::select! {
        _ = tokio::time::sleep(hold_for) => "time",
        _ = async {
            match stdin_rx {
                Some(rx) => { let _ = rx.await; }
                None => std::future::pending::<()>().await,
            }
        } => "stdin",
    };
    let held_s = hold_start.elapsed().as_secs_f64();
    drop(held);
    let after = probe.sample_after_settle().await;

    let mut m = Map::new();
    m.insert("target".into(), json!(opts.target.to_string()));
    m.insert("n".into(), json!(opts.n));
    m.insert("warmup".into(), json!(warmed));
    m.insert("opened".into(), json!(opened));
    let missing = (opts.n - opened) as u64;
    m.insert("failures".into(), json!(missing));
    m.insert("failure_detail".into(), failures.to_json());
    m.insert("open_s".into(), json!(open_time.as_secs_f64()));
    m.insert("held_s".into(), json!(held_s));
    m.insert("hold_ended_by".into(), json!(ended_by));
    probe.insert_rss(&mut m, "server_rss_kib_before", &before);
    probe.insert_rss(&mut m, "server_rss_kib_during", &during);
    probe.insert_rss(&mut m, "server_rss_kib_after_close", &after);
    if let Some(pid) = probe.pid {
        m.insert("server_pid".into(), json!(pid));
    }
    let growth = match (before.rss_kib, during.rss_kib) {
        (Some(b), Some(d)) if opened > 0 => Some((d as f64 - b as f64) * 1024.0 / opened as f64),
        _ => None,
    };
    if let Some(g) = growth {
        m.insert("rss_growth_bytes_per_conn".into(), json!(g));
    }

    let mut human = format!(
        "hold {}: {opened}/{} opened in {:.1} s, held {held_s:.1} s (ended by {ended_by})",
        opts.target,
        opts.n,
        open_time.as_secs_f64()
    );
    if let (Some(b), Some(d)) = (before.rss_kib, during.rss_kib) {
        human += &format!(", server VmRSS {b} KiB before, {d} KiB during");
        if let Some(g) = growth {
            human += &format!(" ({g:.0} B/conn)");
        }
    }
    for s in &failures.samples {
        human += &format!("\n  failure: {s}");
    }
    (m, human, missing == 0 && failures.total() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;

    /// Echo server on loopback for `total` connections (one byte each, kept
    /// open until the client closes); counts the connections it accepted.
    fn echo_server(total: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for _ in 0..total {
                let Ok((mut s, _)) = l.accept() else { break };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while let Ok(1) = s.read(&mut b) {
                        if s.write_all(&b).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn warmup_connections_are_served_before_the_held_ones_and_reported() {
        let (target, accepted) = echo_server(8);
        let opts = HoldOpts {
            target,
            n: 5,
            connect_concurrency: 2,
            hold: Duration::ZERO,
            watch_stdin: false,
            ready_file: None,
            conn_timeout: Duration::from_secs(10),
            max_time: Duration::from_secs(60),
            warmup: 3,
            tls: None,
            sources: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
        };
        let probe = ServerProbe {
            pid: None,
            settle: Duration::ZERO,
        };
        let (m, human, ok) = run(opts, probe).await;
        assert!(ok, "{human}");
        assert_eq!(m["warmup"], 3);
        assert_eq!(m["opened"], 5);
        assert_eq!(accepted.load(Ordering::SeqCst), 8);
    }
}
