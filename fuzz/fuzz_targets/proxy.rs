//! PROXY v1/v2 headers: a header takes only its own bytes (whole buffer,
//! or read by the daemon's peek/take loop in any segmentation), and the
//! `proxy-header` crate agrees on accept/reject and on the addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_header::{ParseConfig, Protocol, ProxyHeader};
use wininetd::config::ProxyVersion;
use wininetd::proxy::{self, MAX_HEADER, Parse};

fuzz_target!(|data: &[u8]| {
    let [mode, segment, buf @ ..] = data else {
        return;
    };
    let accept = match mode % 3 {
        0 => ProxyVersion::V1,
        1 => ProxyVersion::V2,
        _ => ProxyVersion::Any,
    };
    let ours = proxy::parse(buf, accept);
    if let Parse::Header(h) = &ours {
        assert!(
            h.len <= buf.len() && h.len <= MAX_HEADER,
            "header of {} bytes",
            h.len
        );
        // The header stands on its own bytes, and not on fewer.
        assert_eq!(proxy::parse(&buf[..h.len], accept), ours);
        assert_eq!(proxy::parse(&buf[..h.len - 1], accept), Parse::Incomplete);
    }
    if ours == Parse::Incomplete {
        assert!(
            buf.len() < MAX_HEADER,
            "still incomplete after {} bytes",
            buf.len()
        );
        assert_eq!(
            proxy::parse(&buf[..buf.len() / 2], accept),
            Parse::Incomplete
        );
    }
    read_loop(buf, accept, usize::from(*segment).max(1), &ours);
    agree(buf, accept, &ours);
});

/// `server::prespawn::receive`: peek at most `room`, take what `take` says,
/// with the network handing over at most `segment` bytes per peek.
fn read_loop(stream: &[u8], accept: ProxyVersion, segment: usize, whole: &Parse) {
    let mut read = 0;
    for _ in 0..=stream.len() {
        let buf = &stream[..read];
        match proxy::parse(buf, accept) {
            Parse::Header(h) => {
                assert_eq!(h.len, read, "the loop read past the header");
                assert_eq!(Parse::Header(h), *whole);
                return;
            }
            Parse::Invalid(_) => {
                assert!(
                    matches!(whole, Parse::Invalid(_)),
                    "{whole:?} read in pieces is invalid"
                );
                return;
            }
            Parse::Incomplete => {}
        }
        let room = proxy::room(buf).min(512);
        assert!(room >= 1, "incomplete with no room to read");
        let n = room.min(segment).min(stream.len() - read);
        if n == 0 {
            assert_eq!(
                *whole,
                Parse::Incomplete,
                "the stream ended, the header did not"
            );
            return;
        }
        let take = proxy::take(buf, &stream[read..read + n]);
        assert!((1..=n).contains(&take), "take {take} of {n} peeked");
        read += take;
    }
    panic!("the read loop did not end");
}

/// Accept/reject against `proxy-header`, where the two apply the same
/// rules; where we are stricter on purpose the refusal must be one of ours.
fn agree(buf: &[u8], accept: ProxyVersion, ours: &Parse) {
    let config = ParseConfig {
        include_tlvs: true,
        allow_v1: accept != ProxyVersion::V2,
        allow_v2: accept != ProxyVersion::V1,
    };
    let theirs = ProxyHeader::parse(buf, config);
    match (ours, &theirs) {
        (Parse::Header(h), Ok((t, n))) => {
            assert_eq!(h.len, *n, "they take {n} bytes, we take {}", h.len);
            let addrs = t
                .proxied_address()
                .filter(|a| a.protocol == Protocol::Stream)
                .map(|a| (a.source, a.destination));
            assert_eq!(h.addrs, addrs, "addresses differ");
        }
        // The spec: a receiver ignores anything before the CRLF of an
        // UNKNOWN line; they stop at its first CR.
        (Parse::Header(h), Err(_)) if buf[..h.len].starts_with(b"PROXY UNKNOWN") => {}
        (Parse::Header(h), Err(e)) => panic!("we accept {h:?}, they refuse: {e:?}"),
        (Parse::Incomplete, Ok(_)) => panic!("they accept a header we still wait for"),
        (Parse::Invalid(why), Ok((_, n))) => {
            assert!(
                stricter(&buf[..*n], why),
                "we refuse ({why}) what they accept"
            );
        }
        _ => {}
    }
}

/// Our refusals beyond the spec's grammar: the 4 KiB bound, TLVs (they
/// read them lazily), and v1 lines the spec does not allow but they take
/// (over 107 bytes, a sign or byte no field holds, no space after PROXY,
/// text glued to UNKNOWN, a port with a leading zero).
fn stricter(header: &[u8], why: &str) -> bool {
    if header.first() == Some(&b'\r') {
        return why.contains("TLV") || why.contains("CRC32C") || why.contains("limit");
    }
    let line = header.strip_suffix(b"\r\n").unwrap_or(header);
    header.len() > 107
        || header.get(5) != Some(&b' ')
        || line
            .iter()
            .any(|&b| !(b.is_ascii_alphanumeric() || b == b' ' || b == b'.' || b == b':'))
        || (line.starts_with(b"PROXY UNKNOWN") && line.get(13).is_some_and(|&b| b != b' '))
        || line
            .split(|&b| b == b' ')
            .skip(4)
            .any(|port| port.len() > 1 && port[0] == b'0')
}
