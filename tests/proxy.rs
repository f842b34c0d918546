//! PROXY protocol v1/v2 without a balancer: curl, hand-written headers,
//! refusals, and the bounds of the pre-spawn stage.
#![cfg(unix)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Prints the connection's variables, a `--` line, then echoes the rest.
const ENV_THEN_CAT: &str = r#"command = ["/bin/sh", "-c", "for v in CLIENT_IP CLIENT_PORT TCPREMOTEIP TCPREMOTEPORT REMOTE_ADDR REMOTE_PORT TCPLOCALIP TCPLOCALPORT PROXY_PEER_IP PROXY_PEER_PORT PROXY_VERSION PROXY_AUTHORITY PROXY_UNIQUE_ID PROXY_ALPN SSL_PROTOCOL SSL_CIPHER SSL_PEER_CERT_CN SSL_TLS_SNI_SERVERNAME; do eval echo $v=\\$$v; done; echo --; exec cat"]"#;

fn service(port: u16, keys: &str) -> String {
    format!("[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\n{keys}\n")
}

const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut t = vec![kind];
    t.extend_from_slice(&(value.len() as u16).to_be_bytes());
    t.extend_from_slice(value);
    t
}

/// A v2 PROXY (or LOCAL) header for TCP over IPv4 with `tlvs`.
fn v2(local: bool, src: &str, dst: &str, tlvs: &[u8]) -> Vec<u8> {
    let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only")
    };
    let mut h = V2_SIG.to_vec();
    h.push(if local { 0x20 } else { 0x21 });
    h.push(0x11);
    h.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h.extend_from_slice(tlvs);
    h
}

/// `NAME=value` lines of the program's output, up to `--`, and the rest.
fn split(out: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let text = String::from_utf8_lossy(out);
    let at = text
        .find("--\n")
        .unwrap_or_else(|| panic!("no `--` line in {text:?}"));
    let vars = text[..at]
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    (vars, out[at + 3..].to_vec())
}

fn var<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
    vars.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Sends `wire` in one write, half-closes, reads everything.
fn send(port: u16, wire: &[u8]) -> Vec<u8> {
    exchange_on(connect(port), wire)
}

#[test]
fn curl_haproxy_protocol_reaches_the_program_as_the_client() {
    let port = free_port();
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"command = ["/bin/sh", "-c", "sed '/^\r$/q' >/dev/null; printf 'HTTP/1.0 200 OK\r\n\r\n'; echo $CLIENT_IP $CLIENT_PORT $PROXY_PEER_IP $PROXY_PEER_PORT $PROXY_VERSION"]
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]"#,
        ),
        &[],
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--haproxy-protocol"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl must be installed (package curl)");
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    // curl's header names its own socket: client and balancer are one.
    assert_eq!(f.len(), 5, "{text:?}");
    assert_eq!(
        (f[0], f[2], f[4]),
        ("127.0.0.1", "127.0.0.1", "1"),
        "{text}"
    );
    assert_eq!(f[1], f[3], "{text}");
    // The log line is written by the daemon's log writer, in its own time.
    d.wait_log(&format!("via=127.0.0.1:{}", f[3]), Duration::from_secs(5));
}

#[test]
fn hand_written_headers_with_payload_in_the_same_segment_direct_and_pipe() {
    let [direct, pipe] = free_ports(2)[..] else {
        panic!()
    };
    let keys = |handoff: &str| {
        format!(
            "{ENV_THEN_CAT}\nhandoff = \"{handoff}\"\nproxy_protocol = \"any\"\nproxy_from = [\"127.0.0.0/8\"]"
        )
    };
    let config = format!(
        "{}{}",
        service(direct, &keys("direct")),
        service(pipe, &keys("pipe"))
    );
    let d = Daemon::start("p.toml", &config, &[]);
    for port in [direct, pipe] {
        // v1, then the payload in the same write.
        let mut wire = b"PROXY TCP4 192.0.2.7 198.51.100.2 5555 443\r\n".to_vec();
        wire.extend_from_slice(b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\npayload");
        let (vars, rest) = split(&send(port, &wire));
        assert_eq!(rest, b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\npayload");
        assert_eq!(var(&vars, "CLIENT_IP"), Some("192.0.2.7"));
        assert_eq!(var(&vars, "CLIENT_PORT"), Some("5555"));
        assert_eq!(var(&vars, "TCPREMOTEIP"), Some("192.0.2.7"));
        assert_eq!(var(&vars, "REMOTE_ADDR"), Some("192.0.2.7"));
        assert_eq!(var(&vars, "REMOTE_PORT"), Some("5555"));
        assert_eq!(var(&vars, "TCPLOCALIP"), Some("198.51.100.2"));
        assert_eq!(var(&vars, "TCPLOCALPORT"), Some("443"));
        assert_eq!(var(&vars, "PROXY_PEER_IP"), Some("127.0.0.1"));
        assert_eq!(var(&vars, "PROXY_VERSION"), Some("1"));
        assert!(var(&vars, "PROXY_PEER_PORT").is_some());

        // v2 with TLVs, then a payload that starts like a v2 signature.
        let ssl = [
            vec![0x01, 0, 0, 0, 0],
            tlv(0x21, b"TLSv1.3"),
            tlv(0x22, b"alice"),
            tlv(0x23, b"TLS_AES_128_GCM_SHA256"),
        ]
        .concat();
        let tlvs = [
            tlv(0x01, b"http/1.1"),
            tlv(0x02, b"app.example.org"),
            tlv(0x05, b"\x01\x02id"),
            tlv(0x20, &ssl),
        ]
        .concat();
        let mut wire = v2(false, "203.0.113.5:40000", "198.51.100.2:8443", &tlvs);
        wire.extend_from_slice(V2_SIG);
        wire.extend_from_slice(b"after");
        let (vars, rest) = split(&send(port, &wire));
        assert_eq!(rest, [V2_SIG, b"after"].concat());
        assert_eq!(var(&vars, "CLIENT_IP"), Some("203.0.113.5"));
        assert_eq!(var(&vars, "CLIENT_PORT"), Some("40000"));
        assert_eq!(var(&vars, "TCPLOCALPORT"), Some("8443"));
        assert_eq!(var(&vars, "PROXY_VERSION"), Some("2"));
        assert_eq!(var(&vars, "PROXY_ALPN"), Some("http/1.1"));
        assert_eq!(var(&vars, "PROXY_AUTHORITY"), Some("app.example.org"));
        assert_eq!(var(&vars, "PROXY_UNIQUE_ID"), Some("01026964"));
        assert_eq!(var(&vars, "SSL_PROTOCOL"), Some("TLSv1.3"));
        assert_eq!(var(&vars, "SSL_CIPHER"), Some("TLS_AES_128_GCM_SHA256"));
        assert_eq!(var(&vars, "SSL_PEER_CERT_CN"), Some("alice"));
        assert_eq!(
            var(&vars, "SSL_TLS_SNI_SERVERNAME"),
            Some("app.example.org")
        );
    }
    // The log writer writes in batches: wait for the line, don't sample the log.
    d.wait_log(
        "peer=203.0.113.5:40000 via=127.0.0.1:",
        Duration::from_secs(5),
    );
}

#[test]
fn headers_byte_by_byte_and_split_are_read_exactly() {
    let port = free_port();
    let _d = Daemon::start(
        "p.toml",
        &service(
            port,
            &format!("{ENV_THEN_CAT}\nproxy_protocol = \"any\"\nproxy_from = [\"127.0.0.1\"]"),
        ),
        &[],
    );
    let crc_header = {
        let mut h = v2(false, "192.0.2.9:1234", "127.0.0.1:80", &tlv(0x03, &[0; 4]));
        let n = h.len();
        let sum = wininetd::proxy::crc32c(&h);
        h[n - 4..].copy_from_slice(&sum.to_be_bytes());
        h
    };
    let headers = [
        b"PROXY TCP6 2001:db8::5 ::1 1234 80\r\n".to_vec(),
        crc_header,
    ];
    for header in headers {
        for chunk in [1, 5, 13] {
            let mut s = connect(port);
            s.set_nodelay(true).unwrap();
            for piece in header.chunks(chunk) {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(3));
            }
            s.write_all(b"first bytes").unwrap();
            let (vars, rest) = split(&exchange_on(s, b""));
            assert_eq!(rest, b"first bytes", "chunks of {chunk}");
            let client = var(&vars, "CLIENT_IP").unwrap();
            assert!(["2001:db8::5", "192.0.2.9"].contains(&client), "{vars:?}");
        }
    }
}

#[test]
fn a_server_speaks_first_program_waits_for_the_whole_header() {
    let port = free_port();
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"command = ["/bin/sh", "-c", "echo 220 hello $CLIENT_IP; exec cat"]
proxy_protocol = "v2"
proxy_from = ["127.0.0.1"]"#,
        ),
        &[],
    );
    let header = v2(false, "192.0.2.44:2525", "127.0.0.1:25", &[]);
    let mut s = connect(port);
    s.write_all(&header[..20]).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    let early = s.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "the program must not start before the header is in: {early:?}"
    );
    assert_eq!(d.started(), 0, "{}", d.log());
    s.write_all(&header[20..]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early");
        line.extend_from_slice(&buf[..n]);
    }
    assert_eq!(line, b"220 hello 192.0.2.44\n");
    assert_eq!(exchange_on(s, b"QUIT\r\n"), b"QUIT\r\n");
}

#[test]
fn malformed_headers_are_refused_and_start_nothing() {
    let port = free_port();
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"command = ["/bin/echo", "started"]
proxy_protocol = "any"
proxy_from = ["127.0.0.1"]"#,
        ),
        &[],
    );
    let mut bad_version = v2(false, "192.0.2.1:1", "192.0.2.2:2", &[]);
    bad_version[12] = 0x31;
    let mut bad_command = v2(false, "192.0.2.1:1", "192.0.2.2:2", &[]);
    bad_command[12] = 0x22;
    let mut bad_crc = v2(
        false,
        "192.0.2.1:1",
        "192.0.2.2:2",
        &tlv(0x03, &[1, 2, 3, 4]),
    );
    bad_crc.extend_from_slice(b"x");
    let mut too_long = b"PROXY UNKNOWN ".to_vec();
    too_long.resize(120, b'a');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no header", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        (
            "leading zero",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 080 1\r\n".to_vec(),
        ),
        ("LF only", b"PROXY TCP4 1.2.3.4 5.6.7.8 80 1\n".to_vec()),
        ("longer than 107", too_long),
        ("v2 version 3", bad_version),
        ("v2 command 2", bad_command),
        ("v2 bad CRC32C", bad_crc),
        ("truncated, then closed", b"PROXY TCP4 1.2.3.4".to_vec()),
    ];
    for (what, wire) in cases {
        let out = send(port, &wire);
        assert!(out.is_empty(), "{what}: got {out:?}");
    }
    // One line per source and window: the later ones are counted.
    d.wait_log("refused: PROXY header:", Duration::from_secs(10));
    assert_eq!(d.started(), 0, "{}", d.log());
}

#[test]
fn a_peer_outside_proxy_from_is_refused_before_a_byte_is_read() {
    let port = free_port();
    let mut d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"command = ["/bin/echo", "started"]
proxy_protocol = "v1"
proxy_from = ["127.0.0.2"]"#,
        ),
        &[],
    );
    // Stopped, the daemon cannot accept: the header is in the socket's
    // queue before it does. Closing a socket with unread bytes sends a
    // reset (Linux), so a reset proves nothing was read.
    d.signal(Signal::SIGSTOP);
    let mut s = connect_from("127.0.0.1", port);
    s.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    d.signal(Signal::SIGCONT);
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected a reset (nothing read), got {r:?}"
    );
    d.wait_log("peer is not in proxy_from", Duration::from_secs(10));
    assert_eq!(d.started(), 0);
    assert!(d.alive());
    // The allowed balancer is served.
    let out = exchange_on(
        connect_from("127.0.0.2", port),
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n",
    );
    assert_eq!(out, b"started\n");
}

#[test]
fn a_silent_peer_is_dropped_after_proxy_timeout_while_others_are_served() {
    let port = free_port();
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"command = ["/bin/sh", "-c", "echo $CLIENT_IP"]
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]
proxy_timeout = 3"#,
        ),
        &[],
    );
    let opened = Instant::now();
    let mut silent: Vec<TcpStream> = (0..3).map(|_| connect(port)).collect();
    // A half-sent header is as silent as nothing.
    let mut half = connect(port);
    half.write_all(b"PROXY TCP4 192.0").unwrap();
    silent.push(half);
    for i in 0..5 {
        let wire = format!("PROXY TCP4 192.0.2.{i} 192.0.2.200 1000 80\r\n");
        assert_eq!(
            send(port, wire.as_bytes()),
            format!("192.0.2.{i}\n").as_bytes()
        );
    }
    // The others were served while the silent ones still wait.
    if opened.elapsed() < Duration::from_millis(2900) {
        for s in &silent {
            s.set_nonblocking(true).unwrap();
            let r = (&*s).read(&mut [0u8; 8]);
            assert!(
                matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock),
                "a silent peer was dropped early: {r:?}"
            );
            s.set_nonblocking(false).unwrap();
        }
    }
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 8];
        let r = s.read(&mut buf);
        assert!(
            matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
            "{r:?}"
        );
        assert!(
            opened.elapsed() >= Duration::from_millis(2900),
            "dropped before proxy_timeout"
        );
    }
    assert!(opened.elapsed() < Duration::from_secs(13));
    d.wait_log("within proxy_timeout (3 s)", Duration::from_secs(5));
    assert_eq!(d.started(), 5);
}

#[test]
fn waiting_connections_are_bounded_per_service() {
    let port = free_port();
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"command = ["/bin/echo", "served"]
max_instances = 2
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]
proxy_timeout = 10"#,
        ),
        &[],
    );
    let silent: Vec<TcpStream> = (0..2).map(|_| connect(port)).collect();
    // Both places taken: a third peer still to send its header is closed
    // at once, not after proxy_timeout.
    let third = connect(port);
    let t = Instant::now();
    assert_closed_at_once(third, Duration::from_secs(5));
    assert!(t.elapsed() < Duration::from_secs(5));
    d.wait_log(
        "too many connections waiting for a PROXY header",
        Duration::from_secs(5),
    );
    // The two still wait.
    for s in &silent {
        s.set_nonblocking(true).unwrap();
        let r = (&*s).read(&mut [0u8; 8]);
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock),
            "{r:?}"
        );
    }
    // Once they go, their places are free: a new peer waits again.
    drop(silent);
    wait_until("a place is free again", Duration::from_secs(10), || {
        let mut s = connect(port);
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let waits = matches!(s.read(&mut [0u8; 8]), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
        if waits {
            s.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            assert_eq!(read_all(&mut s), b"served\n");
        }
        waits
    });
    assert_eq!(d.started(), 1);
}

#[test]
fn admission_uses_the_client_address_from_the_header() {
    let port = free_port();
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"command = ["/bin/sh", "-c", "echo $CLIENT_IP; sleep 2"]
allow = ["192.0.2.0/24"]
deny = ["192.0.2.66"]
per_source = 1
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]"#,
        ),
        &[],
    );
    let header = |ip: &str| format!("PROXY TCP4 {ip} 198.51.100.1 1000 80\r\n");
    // Held: the first from .7 is live for 2 s.
    let mut first = connect(port);
    first.write_all(header("192.0.2.7").as_bytes()).unwrap();
    let mut line = [0u8; 10];
    first.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"192.0.2.7\n");
    // per_source counts the client from the header, not the balancer.
    assert!(send(port, header("192.0.2.7").as_bytes()).is_empty());
    d.wait_log("source=192.0.2.7", Duration::from_secs(5));
    assert_eq!(send(port, header("192.0.2.8").as_bytes()), b"192.0.2.8\n");
    // deny and allow, on the client.
    assert!(send(port, header("192.0.2.66").as_bytes()).is_empty());
    d.wait_log("source=192.0.2.66", Duration::from_secs(5));
    assert!(send(port, header("203.0.113.1").as_bytes()).is_empty());
    d.wait_log("source=203.0.113.1", Duration::from_secs(5));
    // LOCAL / UNKNOWN: the socket's own peer, 127.0.0.1, not allowed here.
    assert!(send(port, b"PROXY UNKNOWN\r\n").is_empty());
    d.wait_log("source=127.0.0.1", Duration::from_secs(5));
    drop(first);
}

#[test]
fn per_source_rate_counts_the_client_from_the_header_not_the_balancer() {
    let port = free_port();
    // "2/m": a bucket of one, refilled every 30 s, so a second connection
    // from a client within the test is refused whatever the timing.
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"command = ["/bin/sh", "-c", "echo $CLIENT_IP"]
per_source_rate = "2/m"
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]"#,
        ),
        &[],
    );
    let header = |ip: &str| format!("PROXY TCP4 {ip} 198.51.100.1 1000 80\r\n");
    // Both clients arrive through the one balancer address, 127.0.0.1.
    assert_eq!(send(port, header("192.0.2.7").as_bytes()), b"192.0.2.7\n");
    assert!(send(port, header("192.0.2.7").as_bytes()).is_empty());
    let log = d.wait_log("refused: per_source_rate exceeded", Duration::from_secs(5));
    // Keyed by the balancer, this one would share .7's empty bucket.
    assert_eq!(send(port, header("192.0.2.8").as_bytes()), b"192.0.2.8\n");
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused: per_source_rate exceeded"))
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(refusals[0].contains("source=192.0.2.7"), "{}", refusals[0]);
    assert!(!refusals[0].contains("127.0.0.1"), "{}", refusals[0]);
    d.wait_log("peer=192.0.2.8:1000 via=127.0.0.1:", Duration::from_secs(5));
    let log = d.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("refused") && l.contains("192.0.2.8")),
        "{log}"
    );
}

#[test]
fn local_and_unknown_are_served_with_the_socket_endpoints() {
    let port = free_port();
    let _d = Daemon::start(
        "p.toml",
        &service(
            port,
            &format!("{ENV_THEN_CAT}\nproxy_protocol = \"any\"\nproxy_from = [\"127.0.0.1\"]"),
        ),
        &[],
    );
    for header in [
        v2(true, "192.0.2.1:1", "192.0.2.2:2", &[]),
        b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
    ] {
        let s = connect(port);
        let me = s.local_addr().unwrap();
        let (vars, rest) = split(&exchange_on(s, &[&header[..], b"x"].concat()));
        assert_eq!(rest, b"x");
        assert_eq!(var(&vars, "CLIENT_IP"), Some("127.0.0.1"));
        assert_eq!(
            var(&vars, "CLIENT_PORT"),
            Some(me.port().to_string().as_str())
        );
        assert_eq!(var(&vars, "TCPLOCALPORT"), Some(port.to_string().as_str()));
        assert_eq!(
            var(&vars, "PROXY_PEER_PORT"),
            Some(me.port().to_string().as_str())
        );
    }
}

#[test]
fn internal_services_work_behind_a_proxy() {
    let port = free_port();
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"internal = "echo"
proxy_protocol = "v2"
proxy_from = ["127.0.0.1"]"#,
        ),
        &[],
    );
    let mut wire = v2(false, "192.0.2.77:7", "127.0.0.1:7", &[]);
    wire.extend_from_slice(b"echoed, header not");
    assert_eq!(send(port, &wire), b"echoed, header not");
    d.wait_log("peer=192.0.2.77:7 via=127.0.0.1:", Duration::from_secs(5));
}

#[test]
fn a_header_already_in_at_accept_is_read_exactly() {
    let port = free_port();
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            &format!("{ENV_THEN_CAT}\nproxy_protocol = \"any\"\nproxy_from = [\"127.0.0.1\"]"),
        ),
        &[],
    );
    // Stopped, the daemon accepts only once everything below is queued:
    // the whole header (and the payload) is in at accept.
    d.signal(Signal::SIGSTOP);
    let mut v1 = connect(port);
    v1.write_all(b"PROXY TCP4 192.0.2.3 192.0.2.4 33 44\r\nv1 payload")
        .unwrap();
    let mut v2c = connect(port);
    v2c.write_all(
        &[
            &v2(false, "192.0.2.5:55", "192.0.2.6:66", &[])[..],
            b"v2 payload",
        ]
        .concat(),
    )
    .unwrap();
    let mut bad = connect(port);
    bad.write_all(b"PROXY TCP4 192.0.2.3 192.0.2.4 033 44\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    d.signal(Signal::SIGCONT);
    let (vars, rest) = split(&exchange_on(v1, b""));
    assert_eq!(
        (var(&vars, "CLIENT_IP"), &rest[..]),
        (Some("192.0.2.3"), &b"v1 payload"[..])
    );
    let (vars, rest) = split(&exchange_on(v2c, b""));
    assert_eq!(
        (var(&vars, "CLIENT_IP"), &rest[..]),
        (Some("192.0.2.5"), &b"v2 payload"[..])
    );
    assert!(exchange_on(bad, b"").is_empty());
    d.wait_log("refused: PROXY header:", Duration::from_secs(5));
    assert_eq!(d.started(), 2);
}

/// A peer that has sent less than the shortest header does not wake the
/// daemon: its bytes stay unread, so a slowloris trickling a byte a second
/// costs no wake-up until its proxy_timeout. Closing a socket with unread
/// bytes sends a reset (Linux); the daemon used to read each byte as it
/// came, and its close at the deadline was a FIN.
#[test]
fn a_trickling_peer_is_not_read_before_a_whole_header_could_be_in() {
    let port = free_port();
    let d = Daemon::start(
        "p.toml",
        &service(
            port,
            r#"command = ["/bin/echo", "started"]
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]
proxy_timeout = 1"#,
        ),
        &[],
    );
    let mut s = connect(port);
    s.set_nodelay(true).unwrap();
    for b in b"PROXY TCP4" {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "expected a reset (the bytes left unread), got {r:?}"
    );
    d.wait_log("proxy_timeout", Duration::from_secs(10));
    assert_eq!(d.started(), 0);
}
