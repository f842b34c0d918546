//! Reload under load, for the services with a pre-spawn stage: thousands of
//! loopback connections to a TLS service and a PROXY service while SIGHUP
//! applies a changed config again and again (each reload rebuilds the TLS
//! terminator from its files and the PROXY settings). Not one connection
//! may fail.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use common::*;

const CONNECTIONS: usize = 5000;
const RELOADS: usize = 24;
/// Client threads per kind: a debug build's TLS handshake costs more CPU
/// than a PROXY connection, so fewer TLS clients keep the run short.
const TLS_CLIENTS: usize = 2;
const PROXY_CLIENTS: usize = 4;
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// A throwaway CA and a localhost leaf (ECDSA P-256), made with openssl.
fn make_pki(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for key in ["ca.key", "leaf.key"] {
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            key,
        ]);
        std::fs::set_permissions(
            dir.join(key),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=Reload CA",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-new",
        "-key",
        "leaf.key",
        "-subj",
        "/CN=localhost",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "1",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
}

/// Config generation `generation`: the same services and addresses every
/// time; what changes is harmless (a variable, a timeout, a limit).
fn config(generation: usize, tls_port: u16, proxy_port: u16, pki: &std::path::Path) -> String {
    format!(
        r#"[[service]]
name = "tls"
port = {tls_port}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
env = {{ GENERATION = "{generation}" }}
max_instances = {}
[service.tls]
cert = "{cert}"
key = "{key}"
handshake_timeout = {}

[[service]]
name = "proxy"
port = {proxy_port}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
env = {{ GENERATION = "{generation}" }}
proxy_protocol = "{}"
proxy_from = ["127.0.0.1"]
proxy_timeout = {}
"#,
        1000 + generation,
        30 + generation % 2,
        // Both accept the clients' v1 header.
        if generation.is_multiple_of(2) {
            "v1"
        } else {
            "any"
        },
        5 + generation % 3,
        cert = pki.join("leaf.pem").display(),
        key = pki.join("leaf.key").display(),
    )
}

fn tls_client(pki: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tcp(port: u16) -> Result<TcpStream, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// A full TLS handshake, `data` sent, close_notify, and the echo read to
/// the server's close_notify.
fn tls_exchange(port: u16, cfg: &Arc<rustls::ClientConfig>, data: &[u8]) -> Result<(), String> {
    let conn =
        rustls::ClientConnection::new(Arc::clone(cfg), ServerName::try_from("localhost").unwrap())
            .map_err(|e| format!("client: {e}"))?;
    let mut s = rustls::StreamOwned::new(conn, tcp(port)?);
    s.write_all(data).map_err(|e| format!("tls write: {e}"))?;
    s.conn.send_close_notify();
    s.flush().map_err(|e| format!("tls flush: {e}"))?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)
        .map_err(|e| format!("tls read: {e}"))?;
    if back != data {
        return Err(format!(
            "tls echo differs: {} of {} bytes",
            back.len(),
            data.len()
        ));
    }
    Ok(())
}

/// A v1 PROXY header and `data` in one write, half-close, the echo to EOF:
/// the header must not reach the program.
fn proxy_exchange(port: u16, seed: u64, data: &[u8]) -> Result<(), String> {
    let mut s = tcp(port)?;
    let mut wire = format!(
        "PROXY TCP4 198.51.100.{} 127.0.0.1 {} {port}\r\n",
        1 + seed % 250,
        1024 + seed % 60000
    )
    .into_bytes();
    wire.extend_from_slice(data);
    s.write_all(&wire)
        .map_err(|e| format!("proxy write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)
        .map_err(|e| format!("proxy read: {e}"))?;
    if back != data {
        return Err(format!(
            "proxy echo differs: {} of {} bytes, starts {:?}",
            back.len(),
            data.len(),
            String::from_utf8_lossy(&back[..back.len().min(24)])
        ));
    }
    Ok(())
}

#[test]
fn five_thousand_tls_and_proxy_connections_survive_two_dozen_reloads() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let [tls_port, proxy_port] = free_ports(2)[..] else {
        panic!()
    };
    let d = Daemon::start("r.toml", &config(0, tls_port, proxy_port, pki.path()), &[]);
    let cfg = tls_client(pki.path());

    let done = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let reloads_over = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let t0 = Instant::now();
    let total = {
        let done = done.clone();
        move || done[0].load(Ordering::Relaxed) + done[1].load(Ordering::Relaxed)
    };
    let clients: Vec<_> = (0..TLS_CLIENTS + PROXY_CLIENTS)
        .map(|c| {
            let kind = usize::from(c >= TLS_CLIENTS); // 0: TLS, 1: PROXY
            let (done, over, failures, cfg, total) = (
                done[kind].clone(),
                reloads_over.clone(),
                failures.clone(),
                cfg.clone(),
                total.clone(),
            );
            std::thread::spawn(move || {
                let mut seed = c as u64 * 1_000_003;
                while !(over.load(Ordering::Relaxed) && total() >= CONNECTIONS)
                    && t0.elapsed() < TIME_LIMIT
                {
                    seed += 1;
                    let data = pattern(64 + (seed % 1024) as usize, seed);
                    let r = if kind == 0 {
                        tls_exchange(tls_port, &cfg, &data)
                    } else {
                        proxy_exchange(proxy_port, seed, &data)
                    };
                    if let Err(e) = r {
                        failures.lock().unwrap().push(e);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Spread the reloads over the run.
    let step = CONNECTIONS / (RELOADS + 2);
    for i in 0..RELOADS {
        wait_until("the clients make progress", Duration::from_secs(60), || {
            total() >= (i + 1) * step
        });
        d.reload(
            &config(i + 1, tls_port, proxy_port, pki.path()),
            "reloaded: serving 2 service(s)",
        );
    }
    reloads_over.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (tls_done, proxy_done) = (
        done[0].load(Ordering::Relaxed),
        done[1].load(Ordering::Relaxed),
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} connections failed, e.g. {:?}",
        failures.len(),
        tls_done + proxy_done,
        &failures[..failures.len().min(10)]
    );
    assert!(
        tls_done + proxy_done >= CONNECTIONS,
        "only {tls_done} + {proxy_done} connections within {TIME_LIMIT:?}"
    );
    // Both kinds ran all along, not one of them a few times.
    assert!(tls_done >= CONNECTIONS / 10, "only {tls_done} over TLS");
    assert!(
        proxy_done >= CONNECTIONS / 10,
        "only {proxy_done} through PROXY"
    );
    assert_eq!(
        d.log().matches("reloaded: serving 2 service(s)").count(),
        RELOADS
    );
    let complaints: Vec<_> = d
        .log()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("handshake failed"))
        .map(str::to_string)
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
    eprintln!(
        "{tls_done} TLS + {proxy_done} PROXY connections, {RELOADS} reloads, 0 failures in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
