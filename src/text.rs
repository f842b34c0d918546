//! Numbers and addresses as text without `core::fmt`, for what is written
//! once per connection (its environment, its log line): the same text as
//! `Display`, at a fraction of the instructions.

use std::net::{IpAddr, SocketAddr};

/// `n` in decimal.
pub(crate) fn write_u64(buf: &mut Vec<u8>, n: u64) {
    write_padded(buf, n, 1);
}

/// How many digits `n` has in decimal.
pub(crate) fn u64_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

/// `n` in decimal, at least `width` (≤ 20) digits: zeros before.
pub(crate) fn write_padded(buf: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while n > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    buf.extend_from_slice(&digits[i.min(digits.len() - width)..]);
}

/// As `IpAddr`'s `Display`: IPv4 by hand, IPv6 (rarer, and with its
/// zero-run rules) through it.
pub(crate) fn write_ip(buf: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                write_u64(buf, octet.into());
            }
        }
        IpAddr::V6(_) => {
            use std::io::Write as _;
            let _ = write!(buf, "{ip}");
        }
    }
}

/// As `SocketAddr`'s `Display`.
pub(crate) fn write_addr(buf: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            write_ip(buf, IpAddr::V4(*a.ip()));
            buf.push(b':');
            write_u64(buf, a.port().into());
        }
        SocketAddr::V6(_) => {
            use std::io::Write as _;
            let _ = write!(buf, "{addr}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_read_as_their_display() {
        for n in [0, 7, 10, 99, 65_535, 4_294_967_295, u64::MAX] {
            let mut b = Vec::new();
            write_u64(&mut b, n);
            assert_eq!(b, n.to_string().as_bytes());
            assert_eq!(u64_len(n), b.len());
        }
        let mut b = Vec::new();
        write_padded(&mut b, 7, 3);
        write_padded(&mut b, 1234, 2);
        write_padded(&mut b, 0, 6);
        assert_eq!(b, b"0071234000000");
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.0.200.9",
            "::",
            "::1",
            "2001:db8::1:0:0:1",
            "::ffff:192.0.2.1",
            "fe80::a:b",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut b = Vec::new();
            write_ip(&mut b, ip);
            assert_eq!(b, ip.to_string().as_bytes());
        }
        for addr in ["127.0.0.1:0", "1.2.3.4:65535", "[::1]:80", "[fe80::1%7]:22"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut b = Vec::new();
            write_addr(&mut b, &addr);
            assert_eq!(String::from_utf8(b).unwrap(), addr.to_string());
        }
    }
}
