//! The metrics endpoint's HTTP/1.x: a strict reader of one request head
//! (a pure function of the bytes received so far, bounded in size) and the
//! session around it (bounded in time, one request, `Connection: close`).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head read; more is refused with 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Header lines a request may carry.
const MAX_HEADERS: usize = 64;
/// The whole request head must arrive within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request the endpoint can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
}

/// What the bytes received so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A prefix of what may still be a valid head: read more.
    Partial,
    Request(Request<'a>),
    /// Refused with this status.
    Bad(u16),
}

/// Reads one request head from `buf`. Never panics, whatever the bytes.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD {
            Parsed::Bad(431)
        } else {
            Parsed::Partial
        };
    };
    if end + 4 > MAX_HEAD {
        return Parsed::Bad(431);
    }
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Bad(400);
    };
    let mut lines = head.split("\r\n");
    let Some(request_line) = lines.next() else {
        return Parsed::Bad(400);
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad(400);
    };
    if method.is_empty() || !method.bytes().all(is_token) {
        return Parsed::Bad(400);
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Parsed::Bad(400);
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.len() == 8
            && v.starts_with("HTTP/")
            && v.as_bytes()[5].is_ascii_digit()
            && v.as_bytes()[6] == b'.'
            && v.as_bytes()[7].is_ascii_digit() =>
        {
            return Parsed::Bad(505);
        }
        _ => return Parsed::Bad(400),
    };
    let mut hosts = 0;
    for (i, line) in lines.enumerate() {
        if i >= MAX_HEADERS {
            return Parsed::Bad(431);
        }
        let Some((name, value)) = line.split_once(':') else {
            return Parsed::Bad(400);
        };
        // No obsolete line folding, no space before the colon.
        if name.is_empty() || !name.bytes().all(is_token) {
            return Parsed::Bad(400);
        }
        if value.bytes().any(|b| b != b'\t' && (b < b' ' || b == 0x7f)) {
            return Parsed::Bad(400);
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && value != "0")
        {
            // A body is never read: refuse rather than leave it unread.
            return Parsed::Bad(400);
        }
    }
    // RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one in 1.0.
    if (http11 && hosts != 1) || hosts > 1 {
        return Parsed::Bad(400);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Parsed::Request(Request { method, path })
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response: status, extra header lines, body; HEAD gets no body.
pub fn respond(parsed: Parsed<'_>, metrics: impl FnOnce() -> String) -> Vec<u8> {
    let head_only = matches!(parsed, Parsed::Request(r) if r.method == "HEAD");
    let (status, extra, body) = match parsed {
        Parsed::Request(r) if r.path != "/metrics" => (404, "", "not found\n".into()),
        Parsed::Request(r) if r.method == "GET" || r.method == "HEAD" => (
            200,
            "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n",
            metrics(),
        ),
        Parsed::Request(_) => (405, "Allow: GET, HEAD\r\n", "GET only\n".into()),
        Parsed::Bad(status) => (status, "", "bad request\n".into()),
        Parsed::Partial => (400, "", "incomplete request\n".into()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Bad Request",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Serves one request on `stream`: the head within [`REQUEST_TIMEOUT`],
/// the answer within `idle` (or the same bound), then the connection ends.
pub async fn serve<S>(
    mut stream: S,
    idle: Option<Duration>,
    metrics: impl FnOnce() -> String,
) -> io::Result<u16>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n.min(MAX_HEAD + 1 - buf.len().min(MAX_HEAD))]);
            if parse(&buf) != Parsed::Partial {
                return Ok(true);
            }
        }
    };
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok(true)) => {
            let parsed = parse(&buf);
            let status = match parsed {
                Parsed::Request(_) => 0,
                Parsed::Bad(s) => s,
                Parsed::Partial => 400,
            };
            (status, respond(parsed, metrics))
        }
        // The client went before a whole head: nobody to answer.
        Ok(Ok(false)) => return Ok(0),
        Ok(Err(e)) => return Err(e),
        Err(_) => (408, timeout_response()),
    };
    let status = if response.0 == 0 {
        status_of(&response.1)
    } else {
        response.0
    };
    let write = async {
        stream.write_all(&response.1).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(idle.unwrap_or(REQUEST_TIMEOUT), write).await {
        Ok(r) => r.map(|()| status),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client not reading",
        )),
    }
}

fn timeout_response() -> Vec<u8> {
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
}

/// The status code of a response this module wrote.
fn status_of(response: &[u8]) -> u16 {
    response
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &'static str, path: &'static str) -> Parsed<'static> {
        Parsed::Request(Request { method, path })
    }

    #[test]
    fn good_requests_are_read() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"),
            req("GET", "/metrics")
        );
        assert_eq!(
            parse(b"GET /metrics HTTP/1.0\r\n\r\n"),
            req("GET", "/metrics")
        );
        assert_eq!(
            parse(b"HEAD /metrics?x=1 HTTP/1.1\r\nhost:x\r\nContent-Length: 0\r\n\r\n"),
            req("HEAD", "/metrics")
        );
        // What follows the head is not looked at.
        assert_eq!(parse(b"GET / HTTP/1.0\r\n\r\nGARBAGE"), req("GET", "/"));
    }

    #[test]
    fn prefixes_ask_for_more() {
        let full = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for n in 0..full.len() {
            assert_eq!(parse(&full[..n]), Parsed::Partial, "{n}");
        }
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /metrics HTTP/1.1 \r\nHost: x\r\n\r\n",
            b"GET metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://x/metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: \x01\r\n\r\n",
            b"GET /m\xffetrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\nHost: x\n\n\r\n\r\n",
            b"GET /metrics http/1.1\r\nHost: x\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Parsed::Bad(400),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(b"GET /metrics HTTP/2.0\r\n\r\n"), Parsed::Bad(505));
    }

    #[test]
    fn size_and_header_count_are_bounded() {
        let mut long = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert_eq!(parse(&long), Parsed::Bad(431));
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&long), Parsed::Bad(431));
        let mut many = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".to_vec();
        for _ in 0..MAX_HEADERS {
            many.extend_from_slice(b"A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many), Parsed::Bad(431));
    }

    #[test]
    fn any_bytes_never_panic() {
        // A small deterministic fuzz: every prefix of mutated requests.
        let base = b"GET /metrics?a HTTP/1.1\r\nHost: x\r\nA: b\r\n\r\n";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = base.to_vec();
            let at = (seed % m.len() as u64) as usize;
            m[at] = (seed >> 32) as u8;
            if seed & 1 == 0 {
                m.truncate(at);
            }
            let _ = respond(parse(&m), String::new);
        }
    }

    #[test]
    fn responses_say_what_they_are() {
        let text = |p| String::from_utf8(respond(p, || "m 1\n".into())).unwrap();
        let ok = text(req("GET", "/metrics"));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(ok.contains("Connection: close\r\n"));
        assert!(ok.ends_with("\r\n\r\nm 1\n"), "{ok}");
        let head = text(req("HEAD", "/metrics"));
        assert!(head.contains("Content-Length: 4\r\n") && head.ends_with("\r\n\r\n"));
        let missing = text(req("HEAD", "/x"));
        assert!(missing.starts_with("HTTP/1.1 404 ") && missing.ends_with("\r\n\r\n"));
        assert!(text(req("GET", "/")).starts_with("HTTP/1.1 404 "));
        let post = text(req("POST", "/metrics"));
        assert!(post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET, HEAD\r\n"));
        assert!(text(Parsed::Bad(400)).starts_with("HTTP/1.1 400 "));
        assert_eq!(status_of(&respond(Parsed::Bad(431), String::new)), 431);
    }

    #[tokio::test]
    async fn a_session_answers_once_and_closes() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(serve(server, None, || "m 1\n".into()));
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        assert!(got.ends_with("m 1\n"));
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_gets_408_after_the_timeout() {
        let (mut client, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(serve(server, None, String::new));
        client.write_all(b"GET /met").await.unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
        assert_eq!(task.await.unwrap().unwrap(), 408);
    }
}
