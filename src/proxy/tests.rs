use super::*;
use crate::config::ProxyVersion::{Any, V1, V2};

const V4_LINE: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";

fn header(buf: &[u8], accept: ProxyVersion) -> Box<Header> {
    match parse(buf, accept) {
        Parse::Header(h) => h,
        other => panic!("expected a header from {buf:?}, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid(buf: &[u8], accept: ProxyVersion) {
    match parse(buf, accept) {
        Parse::Invalid(_) => {}
        other => panic!("expected {buf:?} to be refused, got {other:?}"),
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A v2 header: version/command byte, family byte, address block, TLVs.
fn v2(ver_cmd: u8, fam: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(addrs);
    h.extend_from_slice(tlvs);
    h
}

fn v4_block() -> Vec<u8> {
    let mut a = vec![192, 0, 2, 1, 198, 51, 100, 2];
    a.extend_from_slice(&56324u16.to_be_bytes());
    a.extend_from_slice(&443u16.to_be_bytes());
    a
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut t = vec![kind];
    t.extend_from_slice(&(value.len() as u16).to_be_bytes());
    t.extend_from_slice(value);
    t
}

/// Sets the CRC32C TLV (which must be the last 7 bytes) to the right sum.
fn with_crc(mut h: Vec<u8>) -> Vec<u8> {
    let n = h.len();
    h[n - 4..].fill(0);
    let sum = crc32c(&h);
    h[n - 4..].copy_from_slice(&sum.to_be_bytes());
    h
}

/// Feeds `wire` the way the pre-spawn reader does, `segment` bytes
/// arriving at a time; returns the header and how many bytes were taken.
fn read_like_the_server(wire: &[u8], segment: usize, accept: ProxyVersion) -> (Parse, usize) {
    let mut buf = Vec::new();
    let mut arrived = 0;
    for _ in 0..10_000 {
        match parse(&buf, accept) {
            Parse::Incomplete => {}
            done => return (done, buf.len()),
        }
        if arrived == buf.len() {
            arrived = (arrived + segment).min(wire.len());
        }
        let avail = &wire[buf.len()..arrived];
        let peeked = &avail[..avail.len().min(room(&buf))];
        assert!(!peeked.is_empty(), "nothing left to read for {wire:?}");
        let n = take(&buf, peeked);
        assert!(n >= 1 && n <= peeked.len());
        buf.extend_from_slice(&peeked[..n]);
    }
    panic!("the reader did not finish");
}

#[test]
fn v1_tcp4_tcp6_and_unknown_are_read() {
    let h = header(V4_LINE, V1);
    assert_eq!(h.len, V4_LINE.len());
    assert_eq!(h.version, 1);
    assert_eq!(
        h.addrs,
        Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
    );
    let line = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
    let h = header(line, Any);
    assert_eq!(h.addrs, Some((sa("[2001:db8::1]:1"), sa("[::1]:65535"))));
    let h = header(b"PROXY UNKNOWN\r\n", V1);
    assert_eq!((h.len, h.addrs), (15, None));
    let line = b"PROXY UNKNOWN ffff:f...f:ffff 0 0 junk\r\n";
    assert_eq!(header(line, V1).len, line.len());
}

#[test]
fn v1_payload_in_the_same_segment_is_not_part_of_the_header() {
    let mut wire = V4_LINE.to_vec();
    wire.extend_from_slice(b"SSH-2.0-client\r\n");
    assert_eq!(header(&wire, V1).len, V4_LINE.len());
    let (p, taken) = read_like_the_server(&wire, wire.len(), V1);
    assert!(matches!(p, Parse::Header(_)));
    assert_eq!(taken, V4_LINE.len(), "the reader took a byte of payload");
}

#[test]
fn v1_is_incomplete_at_every_prefix() {
    for n in 0..V4_LINE.len() {
        assert_eq!(parse(&V4_LINE[..n], V1), Parse::Incomplete, "prefix {n}");
        assert_eq!(parse(&V4_LINE[..n], Any), Parse::Incomplete, "prefix {n}");
    }
}

#[test]
fn v1_byte_by_byte_and_split_reads_take_exactly_the_header() {
    let mut wire = V4_LINE.to_vec();
    wire.extend_from_slice(b"payload");
    for segment in [1, 2, 7, 16, 44, 200] {
        let (p, taken) = read_like_the_server(&wire, segment, V1);
        assert!(matches!(p, Parse::Header(_)), "segment {segment}: {p:?}");
        assert_eq!(taken, V4_LINE.len(), "segment {segment}");
    }
}

#[test]
fn v1_malformed_forms_are_refused() {
    let bad: &[&[u8]] = &[
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 0443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 056324 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 +80 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
        b"PROXY TCP4 192.0.2.01 198.51.100.2 1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",
        b"PROXY TCP4 192.0.2.1  198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",
        b"PROXY TCP4 2001:db8::1 ::1 1 2\r\n",
        b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY\r\n",
        b"PROXY \r\n",
        b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXYTCP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b" PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\x00\r\n",
    ];
    for line in bad {
        assert_invalid(line, V1);
        assert_invalid(line, Any);
    }
}

#[test]
fn v1_longer_than_107_bytes_is_refused_without_waiting_for_more() {
    let mut line = b"PROXY UNKNOWN ".to_vec();
    line.resize(106, b'a');
    line.extend_from_slice(b"\n");
    // 107 bytes without CRLF: refused at once.
    assert_invalid(&line, V1);
    // Exactly 107 bytes with the CRLF: accepted.
    line[105] = b'\r';
    assert_eq!(header(&line, V1).len, 107);
    // An LF at byte 108: refused, never read that far.
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(107, b'a');
    long.extend_from_slice(b"\r\n");
    assert_invalid(&long, V1);
    assert_eq!(room(&long[..107]), 0);
}

#[test]
fn the_wrong_version_and_no_header_are_refused() {
    assert_invalid(V4_LINE, V2);
    assert_invalid(&v2(0x21, 0x11, &v4_block(), &[]), V1);
    assert_invalid(b"SSH-2.0-x\r\n", Any);
    assert_invalid(b"\x16\x03\x01", Any);
    // Refused at the first wrong byte: a non-header never waits.
    assert_invalid(b"G", Any);
    assert_invalid(b"\r\n\r\n\0\r\nQUIX", V2);
}

#[test]
fn v2_proxy_tcp4_and_tcp6_are_read() {
    let h = header(&v2(0x21, 0x11, &v4_block(), &[]), V2);
    assert_eq!((h.len, h.version), (28, 2));
    assert_eq!(
        h.addrs,
        Some((sa("192.0.2.1:56324"), sa("198.51.100.2:443")))
    );
    let mut a = vec![0x20, 0x01, 0x0d, 0xb8];
    a.extend_from_slice(&[0; 11]);
    a.push(1);
    a.extend_from_slice(&[0; 15]);
    a.push(1);
    a.extend_from_slice(&[0, 80, 1, 187]);
    let h = header(&v2(0x21, 0x21, &a, &[]), Any);
    assert_eq!(h.addrs, Some((sa("[2001:db8::1]:80"), sa("[::1]:443"))));
}

#[test]
fn v2_local_unspec_udp_and_unix_use_the_socket_endpoints() {
    // LOCAL (health checks): addresses present or not, they are ignored.
    assert_eq!(header(&v2(0x20, 0x00, &[], &[]), V2).addrs, None);
    assert_eq!(header(&v2(0x20, 0x11, &v4_block(), &[]), V2).addrs, None);
    // PROXY with UNSPEC, UDP or AF_UNIX.
    assert_eq!(header(&v2(0x21, 0x00, &[], &[]), V2).addrs, None);
    assert_eq!(header(&v2(0x21, 0x12, &v4_block(), &[]), V2).addrs, None);
    assert_eq!(header(&v2(0x21, 0x31, &[0; 216], &[]), V2).addrs, None);
}

#[test]
fn v2_malformed_forms_are_refused() {
    // An unknown family or transport, with LOCAL too (its addresses are
    // ignored, but a family no sender writes is no header).
    for fam in [0x01, 0x02, 0x10, 0x20, 0x30, 0x41, 0x13, 0x04, 0xff] {
        for cmd in [0x20, 0x21] {
            assert_invalid(&v2(cmd, fam, &[], &[]), V2);
            assert_invalid(&v2(cmd, fam, &[0; 216], &[]), V2);
        }
    }
    let block = v4_block();
    // Version 1 or 3, commands 2..15.
    assert_invalid(&v2(0x11, 0x11, &block, &[]), V2);
    assert_invalid(&v2(0x31, 0x11, &block, &[]), V2);
    for cmd in 2..16 {
        assert_invalid(&v2(0x20 | cmd, 0x11, &block, &[]), V2);
    }
    // Unknown family or transport.
    assert_invalid(&v2(0x21, 0x41, &block, &[]), V2);
    assert_invalid(&v2(0x21, 0x13, &block, &[]), V2);
    // A length too short for the family's addresses.
    assert_invalid(&v2(0x21, 0x11, &block[..11], &[]), V2);
    assert_invalid(&v2(0x21, 0x21, &block, &[]), V2);
    // A TLV running past the header, and a stray byte after the TLVs.
    assert_invalid(&v2(0x21, 0x11, &block, &[0x05, 0x00, 0x09, b'x']), V2);
    assert_invalid(&v2(0x21, 0x11, &block, &[0x05, 0x00]), V2);
    // An SSL TLV shorter than its fixed part, or with a broken sub-TLV.
    assert_invalid(&v2(0x21, 0x11, &block, &tlv(0x20, &[1, 0, 0])), V2);
    assert_invalid(
        &v2(0x21, 0x11, &block, &tlv(0x20, &[1, 0, 0, 0, 0, 0x21, 0, 5])),
        V2,
    );
    // A bad signature byte anywhere.
    for i in 0..12 {
        let mut h = v2(0x21, 0x11, &block, &[]);
        h[i] ^= 0x40;
        assert_invalid(&h, V2);
    }
}

#[test]
fn v2_over_the_size_limit_is_refused_before_it_is_read() {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&((MAX_HEADER - 15) as u16).to_be_bytes());
    assert_invalid(&h, V2);
    let at_limit = v2(
        0x21,
        0x11,
        &v4_block(),
        &tlv(0x04, &vec![0; MAX_HEADER - 31]),
    );
    assert_eq!(at_limit.len(), MAX_HEADER);
    assert_eq!(header(&at_limit, V2).len, MAX_HEADER);
}

#[test]
fn v2_byte_by_byte_and_split_reads_take_exactly_the_header() {
    let tlvs = [tlv(0x02, b"example.org"), tlv(0x05, b"id-1")].concat();
    let h = v2(0x21, 0x11, &v4_block(), &tlvs);
    let mut wire = h.clone();
    wire.extend_from_slice(b"\r\n\r\nclient bytes that look like a signature");
    for n in 0..h.len() {
        assert_eq!(parse(&h[..n], V2), Parse::Incomplete, "prefix {n}");
        assert_eq!(parse(&h[..n], Any), Parse::Incomplete, "prefix {n}");
    }
    for segment in [1, 3, 12, 16, 17, 40, 1000] {
        for accept in [V2, Any] {
            let (p, taken) = read_like_the_server(&wire, segment, accept);
            assert!(matches!(p, Parse::Header(_)), "segment {segment}: {p:?}");
            assert_eq!(taken, h.len(), "segment {segment}");
        }
    }
}

#[test]
fn v2_tlvs_are_read_and_ssl_sub_tlvs_too() {
    let ssl = [
        vec![0x07, 0, 0, 0, 0],
        tlv(0x21, b"TLSv1.3"),
        tlv(0x22, b"client.example"),
        tlv(0x23, b"TLS_AES_256_GCM_SHA384"),
    ]
    .concat();
    let tlvs = [
        tlv(0x01, b"h2"),
        tlv(0x02, b"svc.example.org"),
        tlv(0x05, &[0xde, 0xad]),
        tlv(0x04, &[0; 3]),
        tlv(0xe0, b"custom"),
        tlv(0x20, &ssl),
    ]
    .concat();
    let h = header(&v2(0x21, 0x11, &v4_block(), &tlvs), V2);
    assert_eq!(h.tlvs.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h.tlvs.authority.as_deref(), Some(&b"svc.example.org"[..]));
    let ssl = h.tlvs.ssl.as_ref().unwrap();
    assert!(ssl.client_ssl);
    assert_eq!(ssl.version.as_deref(), Some(&b"TLSv1.3"[..]));
    assert_eq!(ssl.cn.as_deref(), Some(&b"client.example"[..]));
    let env = env(&h, sa("127.0.0.9:4000"));
    let get = |k: &str| env.get(k);
    assert_eq!(get("PROXY_PEER_IP"), Some("127.0.0.9"));
    assert_eq!(get("PROXY_PEER_PORT"), Some("4000"));
    assert_eq!(get("PROXY_VERSION"), Some("2"));
    assert_eq!(get("PROXY_ALPN"), Some("h2"));
    assert_eq!(get("PROXY_AUTHORITY"), Some("svc.example.org"));
    assert_eq!(get("PROXY_UNIQUE_ID"), Some("dead"), "not printable: hex");
    assert_eq!(get("SSL_PROTOCOL"), Some("TLSv1.3"));
    assert_eq!(get("SSL_CIPHER"), Some("TLS_AES_256_GCM_SHA384"));
    assert_eq!(get("SSL_PEER_CERT_CN"), Some("client.example"));
    assert_eq!(get("SSL_TLS_SNI_SERVERNAME"), Some("svc.example.org"));
}

#[test]
fn ssl_variables_only_when_the_client_used_tls_and_long_values_are_left_out() {
    let ssl = [vec![0x00, 0, 0, 0, 0], tlv(0x21, b"TLSv1.3")].concat();
    let tlvs = [tlv(0x20, &ssl), tlv(0x05, &[b'a'; 256])].concat();
    let h = header(&v2(0x21, 0x11, &v4_block(), &tlvs), V2);
    let env = env(&h, sa("127.0.0.9:4000"));
    assert!(env.pairs().all(|(n, _)| !n.starts_with("SSL_")), "{env:?}");
    assert!(env.pairs().all(|(n, _)| n != "PROXY_UNIQUE_ID"), "{env:?}");
    let v1 = super::env(&header(V4_LINE, V1), sa("[::ffff:127.0.0.9]:1"));
    assert_eq!(
        v1.pairs().collect::<Vec<_>>(),
        [
            ("PROXY_PEER_IP", "127.0.0.9"),
            ("PROXY_PEER_PORT", "1"),
            ("PROXY_VERSION", "1"),
        ]
    );
}

#[test]
fn crc32c_matches_the_standard_check_value() {
    assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(crc32c(b""), 0);
}

#[test]
fn v2_crc32c_is_verified() {
    let tlvs = [tlv(0x05, b"id"), tlv(0x03, &[0; 4])].concat();
    let good = with_crc(v2(0x21, 0x11, &v4_block(), &tlvs));
    assert!(matches!(parse(&good, V2), Parse::Header(_)));
    // Any flipped bit, in the addresses or in the sum, is refused.
    for i in [16, 20, 30, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert_invalid(&bad, V2);
    }
    // A CRC32C TLV of the wrong size.
    let h = v2(0x21, 0x11, &v4_block(), &tlv(0x03, &[0; 3]));
    assert_invalid(&h, V2);
}

#[test]
fn nothing_panics_on_any_short_input() {
    // Every 1- and 2-byte input, and every prefix of valid headers with
    // one byte changed: parse, room and take must answer, never panic.
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            let _ = parse(&[a, b], Any);
            let _ = room(&[a, b]);
            let _ = take(&[a], &[b]);
        }
    }
    let h = with_crc(v2(
        0x21,
        0x11,
        &v4_block(),
        &[tlv(0x20, &[1, 0, 0, 0, 0]), tlv(0x03, &[0; 4])].concat(),
    ));
    for wire in [h.as_slice(), V4_LINE] {
        for i in 0..wire.len() {
            for x in [0x00, 0x0a, 0x0d, 0x20, 0xff] {
                let mut w = wire.to_vec();
                w[i] = x;
                for n in 0..=w.len() {
                    let _ = parse(&w[..n], Any);
                    let _ = room(&w[..n]);
                }
            }
        }
    }
}
