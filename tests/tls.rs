//! TLS termination, driven by real clients: openssl s_client, curl,
//! gnutls-cli, and a rustls client for what needs exact bytes or numbers.
//! Certificates (ECDSA P-256) are made with `openssl` for each test.
#![cfg(unix)]

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use common::*;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (openssl, gnutls-bin and curl are Debian packages)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA, and certificates it (or another CA) signed, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.ca("ca", "/CN=Test CA");
        pki.ca("other-ca", "/CN=Other CA");
        pki.leaf(
            "leaf",
            "/CN=localhost",
            "DNS:localhost,IP:127.0.0.1",
            "ca",
            1,
            "serverAuth",
            2,
        );
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        run(Command::new("openssl")
            .current_dir(self.dir.path())
            .args(args));
    }

    fn key(&self, name: &str) {
        let key = format!("{name}.key");
        self.openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &key,
        ]);
        std::fs::set_permissions(
            self.dir.path().join(&key),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }

    fn ca(&self, name: &str, subject: &str) {
        self.key(name);
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// `san` empty for none; `days` may be negative (an expired leaf).
    #[allow(clippy::too_many_arguments)]
    fn leaf(
        &self,
        name: &str,
        subject: &str,
        san: &str,
        ca: &str,
        serial: u32,
        eku: &str,
        days: i32,
    ) {
        self.key(name);
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-out",
            &format!("{name}.csr"),
        ]);
        let mut ext = format!("extendedKeyUsage={eku}\nbasicConstraints=CA:FALSE\n");
        if !san.is_empty() {
            ext.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(self.dir.path().join(format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            &days.to_string(),
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// A leaf valid only from 2099 on (`openssl ca` can set the start).
    fn future_leaf(&self, name: &str) {
        self.key(name);
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            "/CN=localhost",
            "-out",
            &format!("{name}.csr"),
        ]);
        let db = self.dir.path().join("cadb");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("index.txt"), "").unwrap();
        std::fs::write(db.join("serial"), "10\n").unwrap();
        std::fs::write(
            db.join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = cadb/index.txt\nnew_certs_dir = cadb\nserial = cadb/serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
        )
        .unwrap();
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "cadb/ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            &format!("{name}.csr"),
            "-startdate",
            "20990101000000Z",
            "-enddate",
            "20990201000000Z",
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// The service's `[service.tls]` with the main leaf, plus `extra` lines.
    fn tls_table(&self, extra: &str) -> String {
        format!(
            "[service.tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            self.path("leaf.pem"),
            self.path("leaf.key")
        )
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
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
}

/// A config serving `command` over TLS on 127.0.0.1:`port`.
fn config(port: u16, command: &str, tls: &str) -> String {
    format!("[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = {command}\n{tls}")
}

/// A program that prints its TLS variables, `|`-separated, `-` if unset.
const SHOW_ENV: &str = r#"["/bin/sh", "-c", "echo \"ENV:${SSL_PROTOCOL:--}|${SSL_CIPHER:--}|${SSL_TLS_SNI_SERVERNAME:--}|${SSL_ALPN_PROTOCOL:--}|${SSL_PEER_CERT_CN:--}|${SSL_PEER_CERT_SUBJECT:--}|${SSL_CLIENT_DN:--}|${SSL_CLIENT_I_DN:--}|${SSL_PEER_CERT_HASH:--}|${CLIENT_IP:--}\""]"#;

/// openssl s_client with `args`; stdin stays open, so it ends when the
/// server closes. Returns stdout + stderr.
fn s_client(port: u16, pki: &Pki, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
        ])
        .arg(pki.path("ca.pem"))
        .args(["-ign_eof"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client (package openssl)");
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn env_line(output: &str) -> Vec<String> {
    let line = output
        .lines()
        // s_client may print it right after a ticket's hex dump.
        .find_map(|l| l.split_once("ENV:").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no ENV line in:\n{output}"));
    line.split('|').map(str::to_string).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn tls_connect(
    port: u16,
    cfg: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    TlsConnector::from(Arc::clone(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The serial number of the certificate the server presented.
fn server_serial(s: &TlsStream<TcpStream>) -> u64 {
    let der = &s.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial()
        .iter()
        .fold(0, |a, b| (a << 8) | u64::from(*b))
}

#[test]
fn s_client_tls12_and_tls13_get_the_variables_sni_and_alpn() {
    let pki = Pki::new();
    pki.leaf(
        "b",
        "/CN=b.example.org",
        "DNS:b.example.org",
        "ca",
        20,
        "serverAuth",
        2,
    );
    pki.leaf(
        "c",
        "/CN=wild",
        "DNS:*.c.example.org",
        "ca",
        30,
        "serverAuth",
        2,
    );
    let port = free_port();
    let sni = format!(
        "alpn = [\"h2\", \"http/1.1\"]\n[[service.tls.sni]]\nnames = [\"b.example.org\"]\ncert = \"{}\"\nkey = \"{}\"\n[[service.tls.sni]]\nnames = [\"*.c.example.org\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.path("b.pem"),
        pki.path("b.key"),
        pki.path("c.pem"),
        pki.path("c.key")
    );
    let d = Daemon::start("w.toml", &config(port, SHOW_ENV, &pki.tls_table(&sni)), &[]);
    for (version, want_protocol) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        // No SNI, no ALPN: the service's own certificate, variables absent.
        let out = s_client(port, &pki, &[version, "-noservername"]);
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(out.contains("subject=CN = localhost"), "{out}");
        let env = env_line(&out);
        assert_eq!(env[0], want_protocol, "{out}");
        if want_protocol == "TLSv1.3" {
            assert!(env[1].starts_with("TLS13_"), "IANA name: {env:?}");
        } else {
            assert!(
                env[1].starts_with("TLS_ECDHE_ECDSA_WITH_"),
                "IANA name: {env:?}"
            );
        }
        assert_eq!(&env[2..5], ["-", "-", "-"], "{env:?}");
        assert_eq!(env[9], "127.0.0.1");

        for (name, subject) in [
            ("b.example.org", "subject=CN = b.example.org"),
            ("x.c.example.org", "subject=CN = wild"),
            ("localhost", "subject=CN = localhost"),
        ] {
            let out = s_client(
                port,
                &pki,
                &[version, "-servername", name, "-alpn", "http/1.1"],
            );
            assert!(out.contains(subject), "{name}: {out}");
            assert!(out.contains("Verify return code: 0 (ok)"), "{name}: {out}");
            let env = env_line(&out);
            assert_eq!(env[2], name);
            assert_eq!(env[3], "http/1.1");
        }
    }
    // A name no certificate is for gets the service's own; a wildcard
    // covers one label only.
    for name in ["nope.example.org", "a.b.c.example.org", "c.example.org"] {
        let out = s_client(port, &pki, &["-servername", name]);
        assert!(out.contains("subject=CN = localhost"), "{name}: {out}");
    }
    drop(d);
}

#[test]
fn client_certificates_are_verified_and_described_to_the_program() {
    let pki = Pki::new();
    pki.leaf(
        "alice",
        "/O=Example/CN=alice",
        "",
        "ca",
        40,
        "clientAuth",
        2,
    );
    pki.leaf(
        "mallory",
        "/CN=mallory",
        "",
        "other-ca",
        41,
        "clientAuth",
        2,
    );
    let port = free_port();
    let extra = format!("client_ca = \"{}\"\n", pki.path("ca.pem"));
    let d = Daemon::start(
        "w.toml",
        &config(port, SHOW_ENV, &pki.tls_table(&extra)),
        &[],
    );

    let out = s_client(
        port,
        &pki,
        &[
            "-cert",
            &pki.path("alice.pem"),
            "-key",
            &pki.path("alice.key"),
        ],
    );
    let env = env_line(&out);
    assert_eq!(env[4], "alice");
    assert_eq!(env[5], "/O=Example/CN=alice");
    assert_eq!(env[6], env[5], "SSL_CLIENT_DN is the subject");
    assert_eq!(env[7], "/CN=Test CA");
    let der = run(Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(pki.path("alice.pem")))
    .stdout;
    let hex: String = ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(env[8], format!("SHA256:{hex}"));
    assert_eq!(d.started(), 1);

    // Another CA's certificate, and none at all: refused, nothing started.
    let out = s_client(
        port,
        &pki,
        &[
            "-cert",
            &pki.path("mallory.pem"),
            "-key",
            &pki.path("mallory.key"),
        ],
    );
    assert!(!out.contains("ENV:"), "{out}");
    d.wait_log(
        "TLS handshake failed (client certificate refused)",
        Duration::from_secs(10),
    );
    let out = s_client(port, &pki, &[]);
    assert!(!out.contains("ENV:"), "{out}");
    d.wait_log(
        "TLS handshake failed (no client certificate)",
        Duration::from_secs(10),
    );
    assert_eq!(d.started(), 1, "a refused handshake never costs a spawn");

    // `optional`: without a certificate the program runs, without the names.
    let port2 = free_port();
    let extra = format!(
        "client_ca = \"{}\"\nclient_cert = \"optional\"\n",
        pki.path("ca.pem")
    );
    let d2 = Daemon::start(
        "w.toml",
        &config(port2, SHOW_ENV, &pki.tls_table(&extra)),
        &[],
    );
    let env = env_line(&s_client(port2, &pki, &[]));
    assert_eq!(&env[4..9], ["-", "-", "-", "-", "-"]);
    drop((d, d2));
}

#[test]
fn repeat_clients_resume_with_tickets_and_the_session_cache() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start("w.toml", &config(port, SHOW_ENV, &pki.tls_table("")), &[]);
    for version in ["-tls1_2", "-tls1_3"] {
        let sess = pki.path(&format!("sess{version}"));
        let first = s_client(port, &pki, &[version, "-sess_out", &sess]);
        assert!(first.contains("New, TLSv1."), "{first}");
        let again = s_client(port, &pki, &[version, "-sess_in", &sess]);
        assert!(again.contains("Reused, TLSv1."), "{version}: {again}");
        env_line(&again);
    }
    // TLS 1.2 without tickets resumes from the session cache.
    let sess = pki.path("sess-cache");
    s_client(port, &pki, &["-tls1_2", "-no_ticket", "-sess_out", &sess]);
    let again = s_client(port, &pki, &["-tls1_2", "-no_ticket", "-sess_in", &sess]);
    assert!(again.contains("Reused, TLSv1.2"), "{again}");
    drop(d);
}

#[test]
fn curl_gets_a_page_from_an_http10_stdio_program() {
    let pki = Pki::new();
    let port = free_port();
    let program = r#"["/bin/sh", "-c", "read request; printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello over %s\n' \"$SSL_PROTOCOL\""]"#;
    let d = Daemon::start(
        "w.toml",
        &config(port, program, &pki.tls_table("alpn = [\"http/1.1\"]\n")),
        &[],
    );
    let out = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(pki.path("ca.pem"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/")));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello over TLSv1.3\n");
    drop(d);
}

#[test]
fn gnutls_cli_talks_to_it() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start("w.toml", &config(port, SHOW_ENV, &pki.tls_table("")), &[]);
    // stdin stays open a while; the server's close_notify ends the client.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sleep 5 | gnutls-cli --x509cafile '{}' -p {port} localhost",
            pki.path("ca.pem")
        ))
        .output()
        .expect("gnutls-cli (package gnutls-bin)");
    let text = String::from_utf8_lossy(&out.stdout);
    let env = env_line(&text);
    assert_eq!(env[0], "TLSv1.3");
    assert_eq!(env[2], "localhost");
    drop(d);
}

#[test]
fn fifty_mib_pass_byte_exact_both_ways_with_half_close() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &config(port, r#"["/bin/cat"]"#, &pki.tls_table("")),
        &[],
    );
    let data = pattern(50 << 20, 11);
    let cfg = pki.client_config();
    let back = runtime().block_on(async {
        let s = tls_connect(port, &cfg).await.unwrap();
        let (mut rx, mut tx) = tokio::io::split(s);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(256 * 1024) {
                tx.write_all(chunk).await.unwrap();
            }
            // close_notify, then FIN: cat sees EOF, exits, and the relay
            // answers with its own close_notify.
            tx.shutdown().await.unwrap();
        });
        let mut back = Vec::with_capacity(data.len());
        tokio::time::timeout(Duration::from_secs(120), rx.read_to_end(&mut back))
            .await
            .expect("the echo completes")
            .expect("ends with close_notify, not a truncation");
        writer.await.unwrap();
        back
    });
    assert!(back == data, "{} bytes back of {}", back.len(), data.len());
    d.wait_log("ended", Duration::from_secs(10));
    assert!(!d.log().contains("truncated"), "{}", d.log());
}

#[test]
fn a_client_gone_without_close_notify_ends_stdin_and_is_logged_truncated() {
    let pki = Pki::new();
    let port = free_port();
    let out_file = pki.path("got");
    let program = format!(r#"["/bin/sh", "-c", "cat > '{out_file}'"]"#);
    let d = Daemon::start("w.toml", &config(port, &program, &pki.tls_table("")), &[]);
    let cfg = pki.client_config();
    runtime().block_on(async {
        let mut s = tls_connect(port, &cfg).await.unwrap();
        s.write_all(b"partial").await.unwrap();
        s.flush().await.unwrap();
        // FIN without close_notify.
        s.get_mut().0.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
    });
    d.wait_log("truncated", Duration::from_secs(10));
    d.wait_log("status=exit status: 0", Duration::from_secs(10));
    assert_eq!(std::fs::read(&out_file).unwrap(), b"partial");
}

#[test]
fn a_reload_swaps_the_certificate_while_a_session_stays_up() {
    let pki = Pki::new();
    let port = free_port();
    let mut d = Daemon::start(
        "w.toml",
        &config(port, r#"["/bin/cat"]"#, &pki.tls_table("")),
        &[],
    );
    let cfg = pki.client_config();
    let rt = runtime();
    let mut old = rt.block_on(async {
        let mut s = tls_connect(port, &cfg).await.unwrap();
        assert_eq!(server_serial(&s), 1);
        echo(&mut s, b"before").await;
        s
    });
    // certbot renews: same paths, new certificate and key.
    pki.leaf(
        "leaf",
        "/CN=localhost",
        "DNS:localhost,IP:127.0.0.1",
        "ca",
        2,
        "serverAuth",
        2,
    );
    let text = std::fs::read_to_string(&d.config).unwrap();
    d.reload(&text, "reloaded");
    rt.block_on(async {
        let mut new = tls_connect(port, &cfg).await.unwrap();
        assert_eq!(
            server_serial(&new),
            2,
            "a new connection gets the new certificate"
        );
        echo(&mut new, b"new").await;
        echo(&mut old, b"after").await;
        assert_eq!(server_serial(&old), 1);
    });
    // A broken certificate rejects the reload whole; the last good one stays.
    std::fs::write(pki.path("leaf.pem"), "not a certificate\n").unwrap();
    d.reload(&text, "reload rejected");
    d.wait_log("leaf.pem: holds no PEM certificate", Duration::from_secs(5));
    rt.block_on(async {
        let mut s = tls_connect(port, &cfg).await.unwrap();
        assert_eq!(server_serial(&s), 2);
        echo(&mut s, b"still").await;
        echo(&mut old, b"and old").await;
    });
    assert!(d.alive());
}

async fn echo(s: &mut TlsStream<TcpStream>, what: &[u8]) {
    s.write_all(what).await.unwrap();
    s.flush().await.unwrap();
    let mut got = vec![0u8; what.len()];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, what);
}

#[test]
fn a_silent_client_is_dropped_after_the_handshake_timeout_while_others_are_served() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &config(
            port,
            r#"["/bin/cat"]"#,
            &pki.tls_table("handshake_timeout = 2\n"),
        ),
        &[],
    );
    let cfg = pki.client_config();
    runtime().block_on(async {
        let started = Instant::now();
        let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        for _ in 0..3 {
            let mut s = tls_connect(port, &cfg).await.unwrap();
            echo(&mut s, b"served").await;
        }
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(20), silent.read(&mut buf))
            .await
            .expect("the silent client is closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing is sent to a client that never said hello");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1900),
            "closed after {waited:?}"
        );
    });
    d.wait_log("TLS handshake failed (timed out)", Duration::from_secs(10));
    assert_eq!(d.started(), 3, "no program for the silent client");
}

/// A client trickling its hello does not wake the daemon for each byte:
/// nothing is read before its first record is all in, so at the deadline
/// its bytes are still unread and the close is a reset (Linux). Before,
/// the handshake read each byte as it came and the close was a FIN.
#[test]
fn a_trickling_client_is_not_read_before_its_first_record_is_in() {
    use std::io::{ErrorKind, Read, Write};
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &config(
            port,
            r#"["/bin/cat"]"#,
            &pki.tls_table("handshake_timeout = 1\n"),
        ),
        &[],
    );
    let mut s = connect(port);
    s.set_nodelay(true).unwrap();
    // A handshake record that announces 200 bytes, and the first of them.
    for b in [22u8, 3, 1, 0, 200, 1, 0, 0, 196, 3] {
        s.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected a reset (the bytes left unread), got {r:?}"
    );
    d.wait_log("TLS handshake failed (timed out)", Duration::from_secs(10));
    assert_eq!(d.started(), 0);
}

#[test]
fn a_thousand_concurrent_handshakes_all_succeed() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &config(
            port,
            r#"["/bin/cat"]"#,
            &pki.tls_table("handshake_timeout = 120\n"),
        ),
        &[],
    );
    let cfg = pki.client_config();
    let failures = runtime().block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|i| {
                let cfg = Arc::clone(&cfg);
                tokio::spawn(async move {
                    let mut s = tls_connect(port, &cfg).await?;
                    let msg = format!("conn {i}");
                    s.write_all(msg.as_bytes()).await?;
                    s.shutdown().await?;
                    let mut back = Vec::new();
                    s.read_to_end(&mut back).await?;
                    if back != msg.as_bytes() {
                        return Err(std::io::Error::other(format!("conn {i}: wrong echo")));
                    }
                    std::io::Result::Ok(())
                })
            })
            .collect();
        let mut failures = Vec::new();
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(180), t).await {
                Ok(Ok(Ok(()))) => {}
                other => failures.push(format!("{other:?}")),
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(!d.log().contains("TLS handshake failed"), "{}", d.log());
}

#[test]
fn check_reads_every_certificate_and_key() {
    let pki = Pki::new();
    pki.leaf(
        "expired",
        "/CN=localhost",
        "DNS:localhost",
        "ca",
        50,
        "serverAuth",
        -1,
    );
    pki.leaf(
        "other",
        "/CN=localhost",
        "DNS:localhost",
        "ca",
        51,
        "serverAuth",
        2,
    );
    pki.future_leaf("future");
    let leaf = pki.path("leaf.pem");
    // A certificate where the key should be (private, so only its content is wrong).
    let not_a_key = pki.path("not-a-key.pem");
    std::fs::copy(&leaf, &not_a_key).unwrap();
    std::fs::set_permissions(
        &not_a_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut cases: Vec<(String, &str)> = vec![
        (
            format!(
                "[service.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                pki.path("missing.pem"),
                pki.path("leaf.key")
            ),
            "w.toml:6: ",
        ),
        (
            format!(
                "[service.tls]\ncert = \"{leaf}\"\nkey = \"{}\"\n",
                pki.path("other.key")
            ),
            "w.toml:7: ",
        ),
        (
            format!(
                "[service.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                pki.path("expired.pem"),
                pki.path("expired.key")
            ),
            "w.toml:6: ",
        ),
        (
            format!("[service.tls]\ncert = \"{leaf}\"\nkey = \"{not_a_key}\"\n"),
            "w.toml:7: ",
        ),
    ];
    cases.push((
        format!(
            "[service.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.path("future.pem"),
            pki.path("future.key")
        ),
        "w.toml:6: ",
    ));
    let wants = [
        "missing.pem: cannot read",
        "other.key: this key does not belong to the certificate",
        "expired.pem: the certificate expired on",
        "holds no PEM private key",
        "future.pem: the certificate is not valid before",
    ];
    for ((tls, at), want) in cases.iter().zip(wants) {
        let c = check("w.toml", config(443, r#"["/bin/cat"]"#, tls).as_bytes());
        assert_eq!(c.code, Some(1), "{tls}: {}", c.stdout);
        assert!(
            c.stderr.lines().any(|l| l.contains(at) && l.contains(want)),
            "want {at}…{want}, got {}",
            c.stderr
        );
    }
    // A key others may read is refused like a password file; its content
    // never shows in an error.
    let key = pki.path("leaf.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let c = check(
        "w.toml",
        config(443, r#"["/bin/cat"]"#, &pki.tls_table("")).as_bytes(),
    );
    assert_eq!(c.code, Some(1));
    assert!(
        c.stderr
            .contains("must not be readable or writable by other users"),
        "{}",
        c.stderr
    );
    let secret = std::fs::read_to_string(&key).unwrap();
    let body = secret.lines().nth(1).unwrap();
    assert!(!c.stderr.contains(body) && !c.stdout.contains(body));
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let c = check(
        "w.toml",
        config(443, r#"["/bin/cat"]"#, &pki.tls_table("")).as_bytes(),
    );
    assert_eq!(c.code, Some(0), "{}", c.stderr);
}

#[test]
fn a_bad_certificate_stops_the_start_with_its_line() {
    let pki = Pki::new();
    let port = free_port();
    let tls = format!(
        "[service.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.path("nope.pem"),
        pki.path("leaf.key")
    );
    let mut d = Daemon::spawn(
        "w.toml",
        &config(port, r#"["/bin/cat"]"#, &tls),
        &[],
        |_| {},
    );
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(d.log().contains("w.toml:6: "), "{}", d.log());
}

#[test]
fn a_proxy_header_is_read_in_clear_before_the_handshake() {
    let pki = Pki::new();
    let port = free_port();
    let text = format!(
        "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = {SHOW_ENV}\nproxy_protocol = \"v1\"\nproxy_from = [\"127.0.0.1\"]\n{}",
        pki.tls_table("")
    );
    let d = Daemon::start("w.toml", &text, &[]);
    let cfg = pki.client_config();
    let out = runtime().block_on(async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 443\r\n")
            .await
            .unwrap();
        let mut s = TlsConnector::from(Arc::clone(&cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(out).unwrap()
    });
    let env = env_line(&out);
    assert_eq!(env[0], "TLSv1.3");
    assert_eq!(env[9], "192.0.2.7", "the client is the header's");
    drop(d);
}

#[test]
fn failed_handshakes_are_logged_once_per_reason_and_source() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &config(port, r#"["/bin/cat"]"#, &pki.tls_table("")),
        &[],
    );
    for _ in 0..5 {
        let mut s = connect(port);
        let _ = std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n");
        read_all(&mut s);
    }
    d.wait_log(
        "TLS handshake failed (not TLS or malformed)",
        Duration::from_secs(10),
    );
    // One more, of another kind, is a line of its own.
    drop(connect(port));
    d.wait_log(
        "TLS handshake failed (client closed)",
        Duration::from_secs(10),
    );
    assert_eq!(d.lines_with("TLS handshake failed").len(), 2, "{}", d.log());
    assert_eq!(d.started(), 0);
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_held_tls_session_costs_little_resident_memory() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &config(port, r#"["/bin/cat"]"#, &pki.tls_table("")),
        &[],
    );
    let cfg = pki.client_config();
    let rt = runtime();
    // What the daemon pays once (code faulted in, allocator arenas) first.
    rt.block_on(async {
        for _ in 0..16 {
            let mut s = tls_connect(port, &cfg).await.unwrap();
            echo(&mut s, b"w").await;
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(d.pid());
    const HELD: u64 = 200;
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..HELD {
            let mut s = tls_connect(port, &cfg).await.unwrap();
            echo(&mut s, b"h").await;
            held.push(s);
        }
        held
    });
    let per_session = (rss_kib(d.pid()).saturating_sub(before)) * 1024 / HELD;
    // An idle session is its task, rustls' state (a 4 KiB read buffer of
    // its own) and the program's pipes: ~12 KB, the same run after run;
    // relay buffers kept while idle made it ~22 KB (bench/README.md).
    assert!(
        per_session < 16 * 1024,
        "{per_session} bytes per held session"
    );
    drop(held);
}

#[test]
fn hundreds_of_silent_clients_never_make_a_real_one_wait() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &config(
            port,
            r#"["/bin/cat"]"#,
            &pki.tls_table("handshake_timeout = 20\n"),
        ),
        &[],
    );
    let cfg = pki.client_config();
    runtime().block_on(async {
        // Connected, admitted, and silent: each is a handshake in progress.
        let mut silent = Vec::new();
        for _ in 0..300 {
            silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let mut s = tls_connect(port, &cfg).await.unwrap();
        echo(&mut s, b"served").await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(10),
            "a real client waited {took:?} behind silent ones"
        );
        drop(silent);
    });
    assert_eq!(d.started(), 1);
}

/// Every sample line of a Prometheus text body as `name{labels}` → value.
fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn handshakes_and_refusals_are_counted_and_metrics_are_served_over_tls() {
    let pki = Pki::new();
    let (tls_port, refused_port, invalid_port, metrics_port) =
        (free_port(), free_port(), free_port(), free_port());
    let text = format!(
        "[[service]]\nname = \"tls-env\"\nport = {tls_port}\nbind = [\"127.0.0.1\"]\ncommand = {SHOW_ENV}\n{tls}\n\
         [[service]]\nname = \"px-refused\"\nport = {refused_port}\nbind = [\"127.0.0.1\"]\ncommand = [\"/bin/cat\"]\n\
         proxy_protocol = \"v1\"\nproxy_from = [\"192.0.2.1\"]\n\
         [[service]]\nname = \"px-invalid\"\nport = {invalid_port}\nbind = [\"127.0.0.1\"]\ncommand = [\"/bin/cat\"]\n\
         proxy_protocol = \"v1\"\nproxy_from = [\"127.0.0.1\"]\n\
         [[service]]\nname = \"metrics\"\nport = {metrics_port}\nbind = [\"127.0.0.1\"]\ninternal = \"metrics\"\n{tls}",
        tls = pki.tls_table("")
    );
    let d = Daemon::start("w.toml", &text, &[]);

    // One full handshake, one resumed, one that is not TLS.
    let sess = pki.path("sess");
    let first = s_client(tls_port, &pki, &["-tls1_3", "-sess_out", &sess]);
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let again = s_client(tls_port, &pki, &["-tls1_3", "-sess_in", &sess]);
    assert!(again.contains("Reused, TLSv1.3"), "{again}");
    let mut s = connect(tls_port);
    let _ = std::io::Write::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n");
    read_all(&mut s);
    // A PROXY peer outside proxy_from; a header that is not one.
    let mut s = connect(refused_port);
    assert_eq!(read_all(&mut s), b"");
    let mut s = connect(invalid_port);
    let _ = std::io::Write::write_all(&mut s, b"PROXY TCP4 nonsense\r\n");
    assert_eq!(read_all(&mut s), b"");
    d.wait_log_count(" ended ", 2, Duration::from_secs(10));

    // The metrics service answers inside TLS.
    let cfg = pki.client_config();
    let scrape = || {
        runtime().block_on(async {
            let mut s = tls_connect(metrics_port, &cfg).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8(out).unwrap()
        })
    };
    let want = [
        (
            "wininetd_tls_handshakes_total{service=\"tls-env\",result=\"ok\"}",
            2.0,
        ),
        (
            "wininetd_tls_handshakes_total{service=\"tls-env\",result=\"failed\"}",
            1.0,
        ),
        ("wininetd_tls_resumed_total{service=\"tls-env\"}", 1.0),
        (
            "wininetd_connections_total{service=\"tls-env\",outcome=\"started\"}",
            2.0,
        ),
        (
            "wininetd_connections_total{service=\"tls-env\",outcome=\"tls_failed\"}",
            1.0,
        ),
        (
            "wininetd_connections_total{service=\"px-refused\",outcome=\"proxy_refused\"}",
            1.0,
        ),
        (
            "wininetd_connections_total{service=\"px-refused\",outcome=\"started\"}",
            0.0,
        ),
        (
            "wininetd_connections_total{service=\"px-invalid\",outcome=\"proxy_invalid\"}",
            1.0,
        ),
        (
            "wininetd_connections_total{service=\"px-invalid\",outcome=\"started\"}",
            0.0,
        ),
    ];
    // Refusals are counted as their connections close: scrape until all are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (response, got) = loop {
        let response = scrape();
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let got = samples(body);
        if want.iter().all(|(k, v)| got.get(*k) == Some(v)) || Instant::now() > deadline {
            break (response, got);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    for (k, v) in want {
        assert_eq!(got.get(k), Some(&v), "{k} in:\n{response}");
    }
    // The scrapes themselves: TLS handshakes of the metrics service.
    assert!(got["wininetd_tls_handshakes_total{service=\"metrics\",result=\"ok\"}"] >= 1.0);
    assert_eq!(d.started(), 2);
}

/// A rustls client of `pki`'s CA offering `versions` and `alpn`.
fn client_with(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&str],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// The alert the server answered a handshake with, or its ENV line.
async fn handshake(port: u16, cfg: &Arc<rustls::ClientConfig>) -> Result<Vec<String>, String> {
    match tls_connect(port, cfg).await {
        Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(alert)) => Err(format!("{alert:?}")),
            _ => panic!("not refused with an alert: {e}"),
        },
        Ok(mut s) => {
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            Ok(env_line(&String::from_utf8_lossy(&out)))
        }
    }
}

#[test]
fn min_version_1_3_refuses_a_tls12_client_and_serves_a_tls13_one() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &config(port, SHOW_ENV, &pki.tls_table("min_version = \"1.3\"\n")),
        &[],
    );
    let rt = runtime();
    let tls12 = client_with(&pki, &[&rustls::version::TLS12], &[]);
    assert_eq!(
        rt.block_on(handshake(port, &tls12)),
        Err("ProtocolVersion".to_string())
    );
    // openssl too, as an admin would try it.
    let out = s_client(port, &pki, &["-tls1_2"]);
    assert!(!out.contains("ENV:"), "{out}");
    assert!(out.contains("alert protocol version"), "{out}");
    d.wait_log("TLS handshake failed", Duration::from_secs(5));
    assert_eq!(d.started(), 0, "{}", d.log());
    // A client that can do both gets 1.3; one that can only do 1.3 too.
    let both = client_with(
        &pki,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[],
    );
    let tls13 = client_with(&pki, &[&rustls::version::TLS13], &[]);
    for cfg in [&both, &tls13] {
        let env = rt.block_on(handshake(port, cfg)).unwrap();
        assert_eq!(env[0], "TLSv1.3");
    }
    let env = env_line(&s_client(port, &pki, &["-tls1_3"]));
    assert_eq!(env[0], "TLSv1.3");
    // Lines are written in batches: wait for the three, then count.
    d.wait_log_count(" started ", 3, Duration::from_secs(5));
    assert_eq!(d.started(), 3, "{}", d.log());
    drop(d);
}

#[test]
fn a_client_offering_only_other_alpn_protocols_is_refused() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &config(
            port,
            SHOW_ENV,
            &pki.tls_table("alpn = [\"h2\", \"http/1.1\"]\n"),
        ),
        &[],
    );
    let rt = runtime();
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // None of the service's: refused with no_application_protocol.
        let other = client_with(&pki, &[versions], &["smtp", "imap"]);
        assert_eq!(
            rt.block_on(handshake(port, &other)),
            Err("NoApplicationProtocol".to_string()),
            "{versions:?}"
        );
        // One of them among others: served, the service's choice.
        let mixed = client_with(&pki, &[versions], &["smtp", "http/1.1"]);
        let env = rt.block_on(handshake(port, &mixed)).unwrap();
        assert_eq!(env[3], "http/1.1", "{versions:?}");
        // No ALPN at all: served without.
        let none = client_with(&pki, &[versions], &[]);
        let env = rt.block_on(handshake(port, &none)).unwrap();
        assert_eq!(env[3], "-", "{versions:?}");
    }
    d.wait_log("TLS handshake failed", Duration::from_secs(5));
    d.wait_log_count(" started ", 4, Duration::from_secs(5));
    assert_eq!(d.started(), 4, "only the served ones: {}", d.log());
    drop(d);
}
