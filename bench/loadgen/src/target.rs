//! Target parsing: the generator only ever talks to loopback.
//!
//! A target is `IP:PORT` (`[::1]:PORT` for IPv6) or `localhost:PORT`.
//! No name resolution is done, so nothing can resolve to a remote host.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Parses `s` and accepts it only if its IP is loopback: 127.0.0.0/8 or ::1.
///
/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are refused too: the
/// rule is the two ranges above, nothing that merely routes to them.
pub fn parse_loopback_target(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let addr = if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("target {s:?}: {port:?} is not a port number"))?;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else {
        s.parse::<SocketAddr>().map_err(|_| {
            format!(
                "target {s:?} is not IP:PORT (use 127.0.0.1:PORT, [::1]:PORT or localhost:PORT)"
            )
        })?
    };
    if !is_loopback(addr.ip()) {
        return Err(format!(
            "refusing target {addr}: only loopback (127.0.0.0/8 or ::1) may be benchmarked"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("target {s:?}: port 0 is not a port to connect to"));
    }
    Ok(addr)
}

/// True for 127.0.0.0/8 and ::1 only.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ipv4_loopback_range() {
        assert_eq!(
            parse_loopback_target("127.0.0.1:7000").unwrap(),
            "127.0.0.1:7000".parse().unwrap()
        );
        assert_eq!(
            parse_loopback_target("127.255.3.4:1").unwrap(),
            "127.255.3.4:1".parse().unwrap()
        );
    }

    #[test]
    fn accepts_ipv6_loopback_and_localhost() {
        assert_eq!(
            parse_loopback_target("[::1]:9").unwrap(),
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(
            parse_loopback_target("localhost:8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
    }

    #[test]
    fn refuses_non_loopback_addresses() {
        for t in [
            "10.0.0.1:80",
            "192.168.1.1:80",
            "172.16.0.1:80",
            "8.8.8.8:53",
            "0.0.0.0:80",
            "128.0.0.1:80",
            "[::]:80",
            "[fe80::1]:80",
            "[2001:db8::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            let err = parse_loopback_target(t).unwrap_err();
            assert!(err.contains("only loopback"), "{t}: {err}");
        }
    }

    #[test]
    fn refuses_malformed_targets_and_names() {
        for t in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "example.com:80",
            "localhost:",
            "localhost:x",
            "::1:80",
        ] {
            assert!(parse_loopback_target(t).is_err(), "{t} was accepted");
        }
    }

    #[test]
    fn refuses_port_zero() {
        assert!(parse_loopback_target("127.0.0.1:0").is_err());
    }
}
