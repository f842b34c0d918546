//! The metrics endpoint's request-head reader: a verdict depends only on
//! the head (bytes after it change nothing), waiting stops at MAX_HEAD,
//! and every verdict gets a well-formed response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wininetd::fuzzing::{self, MAX_HEAD, Parsed};

fuzz_target!(|data: &[u8]| {
    let parsed = fuzzing::http_parse(data);
    let end = data.windows(4).position(|w| w == b"\r\n\r\n");
    match (parsed, end) {
        (Parsed::Partial, Some(_)) => panic!("a whole head read as partial"),
        (Parsed::Partial, None) => {
            assert!(
                data.len() < MAX_HEAD,
                "still waiting after {} bytes",
                data.len()
            );
            assert_eq!(
                fuzzing::http_parse(&data[..data.len() / 2]),
                Parsed::Partial
            );
        }
        (verdict, Some(end)) => {
            assert_eq!(
                fuzzing::http_parse(&data[..end + 4]),
                verdict,
                "bytes after the head changed it"
            );
        }
        (verdict, None) => assert_eq!(verdict, Parsed::Bad(431), "no head, yet {verdict:?}"),
    }
    if let Parsed::Request(r) = parsed {
        assert!(!r.method.is_empty());
        assert!(
            r.path.starts_with('/') && !r.path.contains('?'),
            "path {:?}",
            r.path
        );
        assert!(
            r.path.bytes().all(|b| b.is_ascii_graphic()),
            "path {:?}",
            r.path
        );
    }
    let response = fuzzing::http_respond(parsed);
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the response has a head");
    let head = std::str::from_utf8(&response[..head_end]).expect("the head is text");
    assert!(head.starts_with("HTTP/1.1 "), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("a number");
    let body = response.len() - head_end - 4;
    let head_only = matches!(parsed, Parsed::Request(r) if r.method == "HEAD");
    assert_eq!(body, if head_only { 0 } else { length }, "{head}");
});
