//! PROXY protocol headers (HAProxy's `proxy-protocol.txt`, v1 text and v2
//! binary): what a load balancer sends before the client's bytes.
//!
//! A pure function of bytes, so it can be fuzzed and tested byte by byte;
//! reading the socket is `server::prespawn`'s job. [`room`] and [`take`]
//! tell that reader how much it may read without taking a byte past the
//! header, so a program's first read is the client's first byte.
//!
//! `ppp` checks the header's grammar; this module adds what it leaves to
//! the receiver: when a v1 line is still incomplete, the 107-byte and
//! 4 KiB bounds, CRC32C, and the TLVs a program gets.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use ppp::v2::{Addresses, Command, Protocol, TypeLengthValues};

use crate::config::ProxyVersion;
use crate::conn_env::ConnEnv;

/// The longest header accepted, in bytes. v2 allows 64 KiB of TLVs, but
/// balancers send a few hundred bytes (HAProxy itself refuses a header
/// larger than its buffer); the bound keeps a waiting connection small.
pub const MAX_HEADER: usize = 4096;

/// The spec's bound for a v1 line, CRLF included.
const V1_MAX: usize = 107;
/// The shortest header of either version (`PROXY UNKNOWN\r\n`): reading
/// this much first never reads past a header.
pub const MIN_HEADER: usize = 15;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;
/// Longest TLV value passed to a program; longer ones are left out whole
/// rather than cut (the spec caps authority at 255 and unique id at 128).
const MAX_VALUE: usize = 255;

/// What the bytes so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// A header may still come: read more (see [`room`]).
    Incomplete,
    /// Never a valid header: close the connection.
    Invalid(Cow<'static, str>),
    Header(Box<Header>),
}

/// A complete, valid header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes: exactly these are consumed.
    pub len: usize,
    /// 1 or 2.
    pub version: u8,
    /// The client and the address it connected to; `None` for v2 LOCAL,
    /// v1 UNKNOWN and families other than TCP over IPv4/IPv6, which are
    /// served with the socket's own endpoints.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    pub tlvs: Tlvs,
}

/// The v2 TLVs a program is told about (the first of each type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    pub alpn: Option<Vec<u8>>,
    pub authority: Option<Vec<u8>>,
    pub unique_id: Option<Vec<u8>>,
    pub ssl: Option<Ssl>,
}

/// PP2_TYPE_SSL and the sub-TLVs a TLS-terminating program would set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ssl {
    /// PP2_CLIENT_SSL: the client spoke TLS to the balancer.
    pub client_ssl: bool,
    pub version: Option<Vec<u8>>,
    pub cipher: Option<Vec<u8>>,
    pub cn: Option<Vec<u8>>,
}

const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_CRC32C: u8 = 0x03;
const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
const PP2_CLIENT_SSL: u8 = 0x01;

/// Parses the start of a connection. `Header::len` may be less than
/// `buf.len()`: the rest is the client's payload.
pub fn parse(buf: &[u8], accept: ProxyVersion) -> Parse {
    let (v1, v2) = match accept {
        ProxyVersion::V1 => (true, false),
        ProxyVersion::V2 => (false, true),
        ProxyVersion::Any => (true, true),
    };
    match buf.first() {
        None => Parse::Incomplete,
        Some(b'P') if v1 => parse_v1(buf),
        Some(b'\r') if v2 => parse_v2(buf),
        Some(b'P') => invalid("a v1 header where only v2 is accepted"),
        Some(b'\r') => invalid("a v2 header where only v1 is accepted"),
        Some(_) => invalid("no PROXY header"),
    }
}

/// How many more bytes may be read after `buf` without reading past the
/// header: exact for v2, the 107-byte bound for v1 (whose end is the first
/// LF, see [`take`]). At least 1 whenever [`parse`] says `Incomplete`.
pub fn room(buf: &[u8]) -> usize {
    match buf.first() {
        None => MIN_HEADER,
        Some(b'\r') if buf.len() < V2_FIXED => V2_FIXED - buf.len(),
        Some(b'\r') => {
            let total = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            total.min(MAX_HEADER).saturating_sub(buf.len())
        }
        Some(_) => V1_MAX.saturating_sub(buf.len()),
    }
}

/// Of `peeked` (bytes that follow `buf`, at most [`room`] of them), how
/// many belong to the header: all of them for v2, up to the first LF for
/// v1 (a v1 line has no LF before its end).
pub fn take(buf: &[u8], peeked: &[u8]) -> usize {
    let first = buf.first().or(peeked.first());
    if first == Some(&b'\r') {
        return peeked.len();
    }
    peeked
        .iter()
        .position(|&b| b == b'\n')
        .map_or(peeked.len(), |i| i + 1)
}

fn invalid(why: &'static str) -> Parse {
    Parse::Invalid(Cow::Borrowed(why))
}

fn parse_v1(buf: &[u8]) -> Parse {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return invalid("not a PROXY v1 header");
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            invalid("v1 header longer than 107 bytes")
        } else {
            Parse::Incomplete
        };
    };
    let line = &buf[..=lf];
    // The only CR is the one before the LF; every other byte is one an
    // address, a port or a keyword can hold (ppp would take "+80" as 80).
    let body = match line.strip_suffix(b"\r\n") {
        Some(body) => body,
        None => return invalid("v1 header not ended by CRLF"),
    };
    if let Some(rest) = body.strip_prefix(b"PROXY UNKNOWN") {
        // The spec: anything up to the CRLF is ignored.
        return if rest.is_empty() || rest[0] == b' ' {
            Parse::Header(Box::new(Header {
                len: line.len(),
                version: 1,
                addrs: None,
                tlvs: Tlvs::default(),
            }))
        } else {
            invalid("v1 header with an unknown protocol")
        };
    }
    if !body
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b' ' || b == b'.' || b == b':')
    {
        return invalid("v1 header with a character no field can hold");
    }
    let header = match ppp::v1::Header::try_from(line) {
        Ok(h) => h,
        Err(e) => return Parse::Invalid(Cow::Owned(format!("v1 header: {e}"))),
    };
    if header.header.len() != line.len() {
        return invalid("v1 header with a stray CR");
    }
    let addrs = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some((
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        )),
        ppp::v1::Addresses::Tcp6(a) => Some((
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        )),
        ppp::v1::Addresses::Unknown => None,
    };
    Parse::Header(Box::new(Header {
        len: line.len(),
        version: 1,
        addrs,
        tlvs: Tlvs::default(),
    }))
}

fn parse_v2(buf: &[u8]) -> Parse {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return invalid("not a PROXY v2 header");
    }
    if buf.len() < V2_FIXED {
        return Parse::Incomplete;
    }
    // ppp reads the addresses only for PROXY: a LOCAL header with a family
    // or transport no sender writes would pass.
    if !matches!(buf[13], 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32) {
        return invalid("v2 header with an unknown address family or transport");
    }
    let total = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > MAX_HEADER {
        return Parse::Invalid(Cow::Owned(format!(
            "v2 header of {total} bytes, over the {MAX_HEADER}-byte limit"
        )));
    }
    if buf.len() < total {
        return Parse::Incomplete;
    }
    let bytes = &buf[..total];
    let header = match ppp::v2::Header::try_from(bytes) {
        Ok(h) => h,
        Err(e) => return Parse::Invalid(Cow::Owned(format!("v2 header: {e}"))),
    };
    let addrs = match (header.command, header.protocol, header.addresses) {
        (Command::Proxy, Protocol::Stream, Addresses::IPv4(a)) => Some((
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        )),
        (Command::Proxy, Protocol::Stream, Addresses::IPv6(a)) => Some((
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        )),
        // LOCAL, UNSPEC, UDP, AF_UNIX: the socket's own endpoints.
        _ => None,
    };
    let tlv_start = total - header.tlv_bytes().len();
    match tlvs(bytes, tlv_start) {
        Ok(tlvs) => Parse::Header(Box::new(Header {
            len: total,
            version: 2,
            addrs,
            tlvs,
        })),
        Err(why) => Parse::Invalid(why),
    }
}

/// Reads the TLVs from `start` on; verifies CRC32C when one is present.
fn tlvs(header: &[u8], start: usize) -> Result<Tlvs, Cow<'static, str>> {
    let mut out = Tlvs::default();
    let mut at = start;
    for tlv in TypeLengthValues::from(&header[start..]) {
        let tlv = tlv.map_err(|e| Cow::Owned(format!("v2 TLV: {e}")))?;
        let value = &tlv.value[..];
        let value_at = at + 3;
        at = value_at + value.len();
        match tlv.kind {
            PP2_TYPE_ALPN => first(&mut out.alpn, value),
            PP2_TYPE_AUTHORITY => first(&mut out.authority, value),
            PP2_TYPE_UNIQUE_ID => first(&mut out.unique_id, value),
            PP2_TYPE_CRC32C => {
                let Ok(sent) = <[u8; 4]>::try_from(value) else {
                    return Err(Cow::Borrowed("v2 CRC32C TLV is not 4 bytes"));
                };
                let mut crc = Crc32c::new();
                crc.update(&header[..value_at]);
                crc.update(&[0; 4]);
                crc.update(&header[value_at + 4..]);
                if crc.finish() != u32::from_be_bytes(sent) {
                    return Err(Cow::Borrowed("v2 header fails its CRC32C check"));
                }
            }
            PP2_TYPE_SSL if out.ssl.is_none() => out.ssl = Some(ssl(value)?),
            _ => {}
        }
    }
    Ok(out)
}

fn first(slot: &mut Option<Vec<u8>>, value: &[u8]) {
    if slot.is_none() {
        *slot = Some(value.to_vec());
    }
}

/// PP2_TYPE_SSL: client flags (1 byte), verify (4 bytes), sub-TLVs.
fn ssl(value: &[u8]) -> Result<Ssl, Cow<'static, str>> {
    if value.len() < 5 {
        return Err(Cow::Borrowed("v2 SSL TLV shorter than 5 bytes"));
    }
    let mut ssl = Ssl {
        client_ssl: value[0] & PP2_CLIENT_SSL != 0,
        ..Ssl::default()
    };
    for sub in TypeLengthValues::from(&value[5..]) {
        let sub = sub.map_err(|e| Cow::Owned(format!("v2 SSL sub-TLV: {e}")))?;
        match sub.kind {
            PP2_SUBTYPE_SSL_VERSION => first(&mut ssl.version, &sub.value),
            PP2_SUBTYPE_SSL_CIPHER => first(&mut ssl.cipher, &sub.value),
            PP2_SUBTYPE_SSL_CN => first(&mut ssl.cn, &sub.value),
            _ => {}
        }
    }
    Ok(ssl)
}

/// The variables a program gets from an accepted header, on top of the
/// client/destination ones: the balancer, the version, and the TLVs.
/// `SSL_*` only when the client used TLS, with the names a program gets
/// when wininetd terminates TLS itself.
pub fn env(header: &Header, balancer: SocketAddr) -> ConnEnv {
    let mut env = ConnEnv::with_capacity(3);
    env.push_ip(
        &["PROXY_PEER_IP"],
        crate::config::canonical_ip(balancer.ip()),
    );
    env.push_u64(&["PROXY_PEER_PORT"], balancer.port().into());
    env.push_u64(&["PROXY_VERSION"], header.version.into());
    let mut put = |name: &str, value: &Option<Vec<u8>>| {
        if let Some(v) = value.as_deref().and_then(printable) {
            env.push(name, &v);
        }
    };
    let t = &header.tlvs;
    put("PROXY_AUTHORITY", &t.authority);
    put("PROXY_UNIQUE_ID", &t.unique_id);
    put("PROXY_ALPN", &t.alpn);
    if let Some(ssl) = t.ssl.as_ref().filter(|s| s.client_ssl) {
        put("SSL_PROTOCOL", &ssl.version);
        put("SSL_CIPHER", &ssl.cipher);
        put("SSL_PEER_CERT_CN", &ssl.cn);
        put("SSL_TLS_SNI_SERVERNAME", &t.authority);
    }
    env
}

/// A value as a program sees it: printable ASCII as is, anything else as
/// lowercase hex; `None` when longer than [`MAX_VALUE`] bytes.
fn printable(value: &[u8]) -> Option<String> {
    if value.len() > MAX_VALUE {
        return None;
    }
    if value.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Some(value.iter().map(|&b| char::from(b)).collect());
    }
    Some(value.iter().map(|b| format!("{b:02x}")).collect())
}

/// CRC32C (Castagnoli), as PP2_TYPE_CRC32C uses it. No kept crate
/// computes it, and a table is a few lines.
struct Crc32c(u32);

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82f6_3b78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32c {
    fn new() -> Crc32c {
        Crc32c(!0)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = CRC32C_TABLE[((self.0 ^ u32::from(b)) & 0xff) as usize] ^ (self.0 >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

/// The CRC32C of `bytes`: for tests and for writers of headers (loadgen).
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(bytes);
    c.finish()
}

#[cfg(test)]
mod tests;
