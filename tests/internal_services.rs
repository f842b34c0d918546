//! The internal services against their RFCs, on TCP and UDP, IPv4 and
//! IPv6: echo (862), discard (863), chargen (864), daytime (867) and time
//! (868). They are answered inside wininetd: no program is ever started.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const LOG_WAIT: Duration = Duration::from_secs(10);
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// A daemon serving `kind` on TCP and UDP, on 127.0.0.1 and ::1.
fn serve(kind: &str) -> (Daemon, u16) {
    let port = free_port_tcp_udp();
    let config = format!(
        r#"[[service]]
name = "{kind}-tcp"
port = {port}
bind = ["127.0.0.1", "::1"]
internal = "{kind}"

[[service]]
name = "{kind}-udp"
port = {port}
bind = ["127.0.0.1", "::1"]
protocol = "udp"
internal = "{kind}"
"#
    );
    (Daemon::start("i.toml", &config, &[]), port)
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
}

/// No program was started, and none runs now.
fn assert_nothing_spawned(d: &Daemon) {
    assert_eq!(d.started(), 0, "{}", d.log());
    if let Some(children) = d.children() {
        assert!(children.is_empty(), "the daemon has children {children:?}");
    }
}

/// Reads until EOF; a timeout or error is a failure, not an EOF.
fn read_to_eof(s: &mut std::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("EOF from the daemon");
    out
}

#[test]
fn echo_returns_the_stream_and_each_datagram() {
    let (d, port) = serve("echo");
    let data = pattern(1 << 20, 31);
    assert!(
        stream_through(port, data.clone()) == data,
        "TCP echo differs"
    );
    let mut s = connect6(port);
    s.write_all(b"over ipv6").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut s), b"over ipv6");
    d.wait_log_count("internal session ended", 2, LOG_WAIT);
    assert!(
        d.lines_with("internal session ended")
            .iter()
            .all(|l| l.contains("service=echo-tcp") && l.contains("result=ok")),
        "{}",
        d.log()
    );

    let datagram = pattern(1000, 32);
    assert_eq!(udp_request(v4(port), &datagram, REPLY_WAIT), Some(datagram));
    assert_eq!(
        udp_request(v6(port), b"six", REPLY_WAIT).as_deref(),
        Some(&b"six"[..])
    );
    assert_nothing_spawned(&d);
}

#[test]
fn discard_answers_nothing_and_closes_after_the_clients_half_close() {
    let (d, port) = serve("discard");
    let mut s = connect(port);
    let data = pattern(1 << 20, 33);
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut s), b"");
    d.wait_log("internal session ended", LOG_WAIT);
    let line = &d.lines_with("internal session ended")[0];
    assert!(
        line.contains("service=discard-tcp") && line.contains("result=ok"),
        "{line}"
    );

    // No reply to a datagram (an absence: given a generous half second).
    assert_eq!(
        udp_request(v4(port), b"drop me", Duration::from_millis(500)),
        None
    );
    assert_nothing_spawned(&d);
}

/// Checks `bytes` against RFC 864's pattern from a line start: lines of 72
/// printable characters, each starting one character further, then CR LF.
/// Returns the number of complete lines; `first` is line 0's first
/// character (as an offset from ' '), or is learned from `bytes`.
fn check_chargen(bytes: &[u8], first: &mut Option<usize>, line0: usize) -> usize {
    const LINE: usize = 74;
    let start = *first.get_or_insert_with(|| usize::from(bytes[0] - b' '));
    for (at, b) in bytes.iter().enumerate() {
        let (line, col) = ((line0 * LINE + at) / LINE, (line0 * LINE + at) % LINE);
        let want = match col {
            72 => b'\r',
            73 => b'\n',
            _ => b' ' + ((start + line + col) % 95) as u8,
        };
        assert_eq!(
            *b, want,
            "byte {at} (line {line}, column {col}) breaks the pattern"
        );
    }
    bytes.len() / LINE
}

#[test]
fn chargen_sends_rfc864_lines_until_the_client_goes() {
    let (mut d, port) = serve("chargen");
    let mut s = connect(port);
    let mut lines = vec![0u8; 74 * 500];
    s.read_exact(&mut lines).unwrap();
    let mut first = None;
    assert_eq!(check_chargen(&lines, &mut first, 0), 500);
    // The session is live and served in-process.
    assert_nothing_spawned(&d);
    // The client goes without a word: the daemon ends the session.
    drop(s);
    d.wait_log("internal session ended", LOG_WAIT);
    let line = &d.lines_with("internal session ended")[0];
    assert!(line.contains("service=chargen-tcp"), "{line}");
    assert!(d.alive());
    // And serves the next client.
    let mut s = connect6(port);
    let mut again = vec![0u8; 74 * 10];
    s.read_exact(&mut again).unwrap();
    check_chargen(&again, &mut None, 0);
}

#[test]
fn chargen_keeps_its_pattern_while_the_client_sends() {
    // RFC 864: what the client sends is thrown away. Sending while the
    // daemon's write is stalled (full buffers) must not lose any of it.
    let (d, port) = serve("chargen");
    let mut s = connect(port);
    let mut first = None;
    let mut line0 = 0;
    let mut buf = vec![0u8; 74 * 4096];
    for round in 0..4 {
        // Let chargen fill both socket buffers, so its write is pending…
        std::thread::sleep(Duration::from_millis(300));
        // …then send while it waits.
        s.write_all(format!("round {round}\r\n").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..8 {
            s.read_exact(&mut buf).unwrap();
            line0 += check_chargen(&buf, &mut first, line0);
        }
    }
    drop(s);
    d.wait_log("internal session ended", LOG_WAIT);
    assert_nothing_spawned(&d);
}

#[test]
fn chargen_answers_each_datagram_with_0_to_512_bytes_of_the_pattern() {
    let (d, port) = serve("chargen");
    let mut lengths = std::collections::BTreeSet::new();
    for i in 0..20 {
        let to = if i % 2 == 0 { v4(port) } else { v6(port) };
        let reply = udp_request(to, b"", REPLY_WAIT).expect("a reply");
        assert!(reply.len() <= 512, "{} bytes", reply.len());
        if !reply.is_empty() {
            check_chargen(&reply, &mut None, 0);
        }
        lengths.insert(reply.len());
    }
    assert!(lengths.len() > 1, "every reply had the same length");
    assert_nothing_spawned(&d);
}

/// Seconds since 1970 of an RFC 867 line in wininetd's form,
/// `Friday, November 27, 2026 08:11:57-UTC\r\n`, checking the weekday.
fn parse_daytime(line: &str) -> u64 {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const WEEKDAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let text = line
        .strip_suffix("-UTC\r\n")
        .unwrap_or_else(|| panic!("{line:?} does not end in -UTC CR LF"));
    let words: Vec<&str> = text.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let [weekday, month, day, year, time] = words[..] else {
        panic!("{line:?} is not WEEKDAY, MONTH DAY, YEAR HH:MM:SS");
    };
    let month = MONTHS.iter().position(|m| *m == month).unwrap() as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().unwrap(), year.parse().unwrap());
    let hms: Vec<u64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    assert_eq!(weekday, WEEKDAYS[(days % 7) as usize], "{line:?}");
    days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn assert_near_now(secs: u64, what: &str) {
    let now = now();
    assert!(
        secs.abs_diff(now) <= 5,
        "{what}: {secs} is not within 5 s of {now}"
    );
}

#[test]
fn daytime_is_a_crlf_line_with_the_current_date() {
    let (d, port) = serve("daytime");
    let line = String::from_utf8(exchange(port, b"")).unwrap();
    assert_near_now(parse_daytime(&line), "TCP daytime");
    for to in [v4(port), v6(port)] {
        let reply = udp_request(to, b"", REPLY_WAIT).expect("a reply");
        assert_near_now(
            parse_daytime(&String::from_utf8(reply).unwrap()),
            "UDP daytime",
        );
    }
    assert_nothing_spawned(&d);
}

#[test]
fn time_is_four_bytes_of_seconds_since_1900() {
    const FROM_1900: u64 = 2_208_988_800;
    let (d, port) = serve("time");
    let to_unix = |b: &[u8]| -> u64 {
        let b: [u8; 4] = b
            .try_into()
            .unwrap_or_else(|_| panic!("{b:?} is not 4 bytes"));
        u64::from(u32::from_be_bytes(b)) - FROM_1900
    };
    assert_near_now(to_unix(&exchange(port, b"")), "TCP time");
    let mut s = connect6(port);
    s.shutdown(Shutdown::Write).unwrap();
    assert_near_now(to_unix(&read_to_eof(&mut s)), "TCP time over IPv6");
    for to in [v4(port), v6(port)] {
        let reply = udp_request(to, b"", REPLY_WAIT).expect("a reply");
        assert_near_now(to_unix(&reply), "UDP time");
    }
    assert_nothing_spawned(&d);
}

#[test]
fn an_idle_internal_session_ends_after_the_service_timeout() {
    let port = free_port();
    let d = Daemon::start(
        "i.toml",
        &format!(
            "[[service]]\nname = \"idle-echo\"\nport = {port}\nbind = [\"127.0.0.1\"]\ninternal = \"echo\"\ntimeout = 1\n"
        ),
        &[],
    );
    let t0 = std::time::Instant::now();
    let mut s = connect(port);
    s.write_all(b"one").unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).unwrap();
    // Then silence: the daemon closes the session, the client need not.
    assert_eq!(read_to_eof(&mut s), b"");
    assert!(t0.elapsed() >= Duration::from_millis(900));
    d.wait_log("internal session ended", LOG_WAIT);
    let line = &d.lines_with("internal session ended")[0];
    assert!(line.contains("result=client timed out"), "{line}");
    assert_nothing_spawned(&d);
}
