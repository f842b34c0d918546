//! The UDP internal services cannot be turned on each other or on a third
//! party: spoofed and privileged sources get nothing, each source gets a
//! few replies and no stream, and a flood does not keep the daemon from
//! hearing SIGTERM. Spoofed datagrams are crafted on a raw socket (root).
#![cfg(target_os = "linux")]

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

const LOG_WAIT: Duration = Duration::from_secs(10);

/// echo and chargen on UDP 127.0.0.1, as inetd.conf used to ship them.
fn echo_and_chargen() -> (Daemon, u16, u16) {
    let echo = free_port_tcp_udp();
    let chargen = std::iter::repeat_with(free_port_tcp_udp)
        .take(50)
        .find(|&p| p != echo)
        .unwrap();
    let config = format!(
        r#"[[service]]
name = "echo"
port = {echo}
bind = ["127.0.0.1"]
protocol = "udp"
internal = "echo"

[[service]]
name = "chargen"
port = {chargen}
bind = ["127.0.0.1"]
protocol = "udp"
internal = "chargen"
"#
    );
    (Daemon::start("u.toml", &config, &[]), echo, chargen)
}

/// A raw socket that sends IPv4 packets whose header we write ourselves.
fn raw_socket() -> socket2::Socket {
    assert!(
        is_root(),
        "forging a source address needs root (CI is root)"
    );
    // IPPROTO_RAW implies IP_HDRINCL.
    socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(255)),
    )
    .expect("a raw IPv4 socket")
}

/// Sends one UDP datagram on loopback that claims to come from `from`.
fn forge(raw: &socket2::Socket, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    // IPv4 header; the kernel fills in the checksum (and the id, when 0).
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&from.ip().octets());
    p.extend_from_slice(&to.ip().octets());
    // UDP header; checksum 0 means "none" over IPv4.
    p.extend_from_slice(&from.port().to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let dest = SocketAddr::V4(SocketAddrV4::new(*to.ip(), 0));
    let sent = raw
        .send_to(&p, &dest.into())
        .expect("send a forged datagram");
    assert_eq!(sent, p.len());
}

fn local(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

#[test]
fn a_port_added_by_a_reload_counts_as_ours() {
    let (d, echo, chargen) = echo_and_chargen();
    let only_echo = format!(
        "[[service]]\nname = \"echo\"\nport = {echo}\nbind = [\"127.0.0.1\"]\nprotocol = \"udp\"\ninternal = \"echo\"\n"
    );
    d.reload(&only_echo, "reloaded");
    let raw = raw_socket();
    // Not ours any more: an ordinary source (the reply goes nowhere).
    forge(&raw, local(chargen), local(echo), b"a");
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.lines_with("bad_source").is_empty(), "{}", d.log());
    let with_time = format!(
        "{only_echo}\n[[service]]\nname = \"time\"\nport = {chargen}\nbind = [\"127.0.0.1\"]\nprotocol = \"udp\"\ninternal = \"time\"\n"
    );
    d.reload(&with_time, "reloaded");
    forge(&raw, local(chargen), local(echo), b"b");
    d.wait_log("outcome=\"bad_source\"", LOG_WAIT);
    let drops = d.lines_with("outcome=\"bad_source\"");
    assert_eq!(drops.len(), 1, "{}", d.log());
    assert!(
        drops[0].contains(&format!("source=127.0.0.1 port={chargen} ")),
        "{}",
        drops[0]
    );
}

/// The daemon's CPU time so far (user + system), from /proc/PID/stat.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let ticks = f[11] + f[12];
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// How much of one core the daemon used over `span`.
fn cpu_share(pid: i32, span: Duration) -> f64 {
    let before = cpu_time(pid);
    std::thread::sleep(span);
    (cpu_time(pid) - before).as_secs_f64() / span.as_secs_f64()
}

#[test]
fn a_forged_echo_chargen_loop_dies_at_once_and_leaves_the_cpu_idle() {
    let (d, echo, chargen) = echo_and_chargen();
    let raw = raw_socket();
    // "chargen" asks echo for an echo: each answers the other, forever.
    forge(&raw, local(chargen), local(echo), b"ping");
    std::thread::sleep(Duration::from_secs(1));
    let share = cpu_share(d.pid(), Duration::from_secs(2));
    assert!(
        share < 0.05,
        "wininetd used {:.0} % of a core after the forged datagram; log:\n{}",
        share * 100.0,
        d.log()
    );
    d.wait_log("outcome=\"bad_source\"", LOG_WAIT);
    // The services still answer honest clients.
    let to = SocketAddr::V4(local(echo));
    assert_eq!(
        udp_request(to, b"still here", LOG_WAIT).as_deref(),
        Some(&b"still here"[..])
    );
}

#[test]
fn a_datagram_from_a_privileged_port_gets_no_reply() {
    let (d, echo, _) = echo_and_chargen();
    assert!(
        is_root(),
        "binding a port below 1024 needs root (CI is root)"
    );
    let sock = (600..1000)
        .find_map(|p| UdpSocket::bind(("127.0.0.1", p)).ok())
        .expect("a free port below 1024 on 127.0.0.1");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock.send_to(b"from a system port", ("127.0.0.1", echo))
        .unwrap();
    let mut buf = [0u8; 64];
    let got = sock.recv_from(&mut buf);
    assert!(got.is_err(), "a privileged port got a reply: {got:?}");
    d.wait_log("outcome=\"bad_source\"", LOG_WAIT);
    // The same datagram from an ordinary port is answered.
    let to = SocketAddr::V4(local(echo));
    assert_eq!(
        udp_request(to, b"ordinary", LOG_WAIT).as_deref(),
        Some(&b"ordinary"[..])
    );
}

#[test]
fn one_source_gets_a_few_replies_not_a_stream() {
    let (d, _, chargen) = echo_and_chargen();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    for _ in 0..200 {
        sock.send_to(b"", ("127.0.0.1", chargen)).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut replies = 0u32;
    let mut buf = [0u8; 1024];
    while replies < 1000 && sock.recv_from(&mut buf).is_ok() {
        replies += 1;
    }
    // A burst of 16, then 8 a second for as long as this took (the daemon
    // may still have been answering after the last send).
    let allowed = 16 + (8.0 * started.elapsed().as_secs_f64()).ceil() as u32;
    assert!(
        (1..=allowed).contains(&replies),
        "{replies} replies to 200 datagrams from one source (allowed {allowed})"
    );
    d.wait_log("outcome=\"rate_limited\"", LOG_WAIT);
    // Other sources are not held back by the first (one of them could
    // share its bucket: ask three).
    let answered = (2..=4u8)
        .filter(|i| {
            let other = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, *i), 0)).unwrap();
            other
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            other.send_to(b"", ("127.0.0.1", chargen)).unwrap();
            other.recv_from(&mut buf).is_ok()
        })
        .count();
    assert!(answered >= 2, "{answered} of 3 other sources got a reply");
}

/// The runtime's side of the flood (that the UDP task yields to others
/// every few datagrams) is a unit test in src/server/udp.rs; here, the
/// whole daemon with a socket that never runs dry.
#[test]
fn sigterm_during_a_udp_flood_stops_the_daemon_promptly() {
    let (mut d, echo, _) = echo_and_chargen();
    let raw = raw_socket();
    // A datagram that echo answers to itself: its socket is never empty.
    forge(&raw, local(echo), local(echo), b"self");
    std::thread::sleep(Duration::from_millis(300));
    d.signal(Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(3));
    assert!(status.success(), "{status:?}; log:\n{}", d.log());
}
