//! `stream`: one connection carrying N bytes of a deterministic pattern,
//! written by one thread while the main thread reads and verifies the echo.
//! After the last byte the writer half-closes; the reply must be exactly the
//! N bytes and then EOF. Throughput is N / (connect .. EOF).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::pattern::Pattern;
use crate::server::ServerProbe;

pub struct StreamOpts {
    pub target: SocketAddr,
    pub bytes: u64,
    pub chunk: usize,
    pub io_timeout: Duration,
    pub max_time: Duration,
    /// TLS over the connection: the same check, through rustls.
    pub tls: Option<crate::tls::Tls>,
}

fn writer_loop(
    mut s: TcpStream,
    pattern: &Pattern,
    bytes: u64,
    chunk: usize,
    deadline: Instant,
) -> Result<u64, String> {
    let mut off = 0u64;
    while off < bytes {
        if Instant::now() >= deadline {
            return Err(format!("write: time limit reached after {off} bytes"));
        }
        let len = (bytes - off).min(chunk as u64) as usize;
        match s.write(pattern.window(off, len)) {
            Ok(0) => return Err(format!("write: peer stopped reading after {off} bytes")),
            Ok(n) => off += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write after {off} bytes: {e}")),
        }
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    Ok(off)
}

fn reader_loop(
    s: &mut TcpStream,
    pattern: &Pattern,
    bytes: u64,
    chunk: usize,
    deadline: Instant,
) -> Result<u64, String> {
    let mut buf = vec![0u8; chunk];
    let mut got = 0u64;
    loop {
        if Instant::now() >= deadline {
            return Err(format!("read: time limit reached after {got} bytes"));
        }
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read after {got} bytes: {e}")),
        };
        if got + n as u64 > bytes {
            return Err(format!("extra: reply longer than the {bytes} bytes sent"));
        }
        let want = pattern.window(got, n);
        if buf[..n] != *want {
            let at = got
                + buf[..n]
                    .iter()
                    .zip(want)
                    .take_while(|(a, b)| a == b)
                    .count() as u64;
            return Err(format!(
                "mismatch: reply differs from what was sent at byte {at}"
            ));
        }
        got += n as u64;
    }
    if got < bytes {
        return Err(format!("short: EOF after {got} of {bytes} bytes"));
    }
    Ok(got)
}

pub fn run(opts: StreamOpts, probe: ServerProbe) -> (Map<String, Value>, String, bool) {
    let pattern = Arc::new(Pattern::new(opts.chunk));
    let before = probe.sample();
    let own_before = crate::server::own_cpu_ns();
    let t0 = Instant::now();
    let deadline = t0 + opts.max_time;

    let result: Result<(u64, u64), String> = if let Some(tls) = &opts.tls {
        tls_echo(&opts, tls, &pattern, deadline)
    } else {
        plain_echo(&opts, &pattern, deadline)
    };
    let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    let own_after = crate::server::own_cpu_ns();
    let after = probe.sample_after_settle_blocking();

    let mut m = Map::new();
    m.insert("target".into(), json!(opts.target.to_string()));
    m.insert("bytes".into(), json!(opts.bytes));
    m.insert("elapsed_s".into(), json!(elapsed));
    probe.insert_cpu_delta(&mut m, &before, &after, 0);
    if let (Some(a), Some(b)) = (own_before, own_after) {
        m.insert(
            "loadgen_cpu_s".into(),
            json!(b.saturating_sub(a) as f64 / 1e9),
        );
    }
    let (human, ok) = match result {
        Ok((sent, got)) => {
            let mbps = got as f64 / elapsed / 1e6;
            m.insert("sent".into(), json!(sent));
            m.insert("received".into(), json!(got));
            m.insert("failures".into(), json!(0));
            m.insert("mb_per_s".into(), json!(mbps));
            m.insert("mib_per_s".into(), json!(got as f64 / elapsed / 1048576.0));
            (
                format!(
                    "stream {}: {got} bytes echoed and verified in {elapsed:.2} s: {mbps:.0} MB/s",
                    opts.target
                ),
                true,
            )
        }
        Err(e) => {
            m.insert("failures".into(), json!(1));
            m.insert("error".into(), json!(e));
            (format!("stream {}: FAILED: {e}", opts.target), false)
        }
    };
    (m, human, ok)
}

fn plain_echo(
    opts: &StreamOpts,
    pattern: &Arc<Pattern>,
    deadline: Instant,
) -> Result<(u64, u64), String> {
    let mut s = TcpStream::connect_timeout(&opts.target, opts.io_timeout)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(opts.io_timeout))
        .and_then(|_| s.set_write_timeout(Some(opts.io_timeout)))
        .map_err(|e| format!("socket options: {e}"))?;
    let ws = s.try_clone().map_err(|e| format!("clone socket: {e}"))?;
    let wp = Arc::clone(pattern);
    let (bytes, chunk) = (opts.bytes, opts.chunk);
    let writer = std::thread::spawn(move || writer_loop(ws, &wp, bytes, chunk, deadline));
    let read = reader_loop(&mut s, pattern, bytes, chunk, deadline);
    if read.is_err() {
        // Unblock the writer if it is stuck on a full socket buffer.
        let _ = s.shutdown(Shutdown::Both);
    }
    let written = writer
        .join()
        .map_err(|_| "writer thread panicked".to_string())?;
    // Report the reader's error first: it says what the reply looked like.
    let got = read?;
    Ok((written?, got))
}

/// The same echo check over TLS: a writer task and this reader, on one
/// runtime; close_notify then FIN after the last byte.
fn tls_echo(
    opts: &StreamOpts,
    tls: &crate::tls::Tls,
    pattern: &Arc<Pattern>,
    deadline: Instant,
) -> Result<(u64, u64), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let (bytes, chunk, io_timeout) = (opts.bytes, opts.chunk, opts.io_timeout);
    let target = opts.target;
    let limit = deadline.saturating_duration_since(Instant::now());
    let work = async {
        let s = tokio::time::timeout(
            io_timeout,
            crate::tls::connect(target, |_| Vec::new(), Some(tls)),
        )
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        let (mut r, mut w) = tokio::io::split(s);
        let writer = async {
            let mut off = 0u64;
            while off < bytes {
                let len = (bytes - off).min(chunk as u64) as usize;
                w.write_all(pattern.window(off, len))
                    .await
                    .map_err(|e| format!("write after {off} bytes: {e}"))?;
                off += len as u64;
            }
            w.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
            Ok::<u64, String>(off)
        };
        let reader = async {
            let mut buf = vec![0u8; chunk];
            let mut got = 0u64;
            loop {
                let n = r
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("read after {got} bytes: {e}"))?;
                if n == 0 {
                    break;
                }
                if got + n as u64 > bytes {
                    return Err(format!("extra: reply longer than the {bytes} bytes sent"));
                }
                if buf[..n] != *pattern.window(got, n) {
                    return Err(format!("mismatch: reply differs near byte {got}"));
                }
                got += n as u64;
            }
            if got < bytes {
                return Err(format!("short: EOF after {got} of {bytes} bytes"));
            }
            Ok(got)
        };
        let (sent, got) = tokio::join!(writer, reader);
        let got = got?;
        Ok((sent?, got))
    };
    rt.block_on(async {
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err("time limit reached".to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// One-connection echo server on loopback; flips the byte at `flip`
    /// (if any) on the way back. Echoes while reading, closes after EOF.
    fn echo_server(flip: Option<u64>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 10_000];
            let mut off = 0u64;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if let Some(f) = flip
                    && (off..off + n as u64).contains(&f)
                {
                    buf[(f - off) as usize] ^= 0x80;
                }
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
                off += n as u64;
            }
        });
        addr
    }

    fn opts(target: SocketAddr) -> StreamOpts {
        StreamOpts {
            target,
            bytes: 3_000_000,
            chunk: 65_536,
            io_timeout: Duration::from_secs(30),
            max_time: Duration::from_secs(120),
            tls: None,
        }
    }

    fn probe() -> ServerProbe {
        ServerProbe {
            pid: None,
            settle: Duration::ZERO,
        }
    }

    #[test]
    fn faithful_echo_is_verified() {
        let (m, human, ok) = run(opts(echo_server(None)), probe());
        assert!(ok, "{human}");
        assert_eq!(m["received"], 3_000_000);
    }

    #[test]
    fn one_flipped_byte_is_found_at_its_offset() {
        let (m, _, ok) = run(opts(echo_server(Some(2_345_678))), probe());
        assert!(!ok);
        let err = m["error"].as_str().unwrap();
        assert!(err.contains("mismatch") && err.contains("2345678"), "{err}");
    }
}
