//! The pre-spawn stage: work a connection needs before admission and
//! hand-off (a PROXY header; a TLS handshake follows admission, in
//! `tcp`, so refused clients cost no handshake). Each
//! such connection gets its own task and one deadline, so a slow or silent
//! peer never stalls the accept loop, and nothing starts before the stage
//! succeeds. A header that is already in at accept (the usual case) is
//! read on the spot instead, with no task, timer or event-loop work.
//!
//! Waiting connections are bounded: at most `max_connections` in the whole
//! daemon and at most the service's `max_instances` (else
//! `max_connections`) per service, on top of the live programs those
//! limits already count. A connection over either bound is closed at once.

use std::borrow::Cow;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tracing::warn;

use super::tcp::{Conn, hand_off_tcp, serve_internal};
use super::{Active, Ctx, refused_because, refused_connection};
use crate::admission::Refusal;
use crate::config::{Program, ProxyVersion, canonical_ip};
use crate::os;
use crate::proxy::{self, Parse};

/// A count of connections in the stage, with its bound.
#[derive(Debug)]
pub(super) struct Waiting {
    count: AtomicU32,
    max: AtomicU32,
}

impl Waiting {
    pub(super) fn new(max: u32) -> Arc<Waiting> {
        Arc::new(Waiting {
            count: AtomicU32::new(0),
            max: AtomicU32::new(max),
        })
    }

    pub(super) fn set_max(&self, max: u32) {
        self.max.store(max, Ordering::Relaxed);
    }

    fn try_enter(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn leave(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place in the stage, daemon-wide and in one service; given back on drop.
struct Slot {
    global: Arc<Waiting>,
    service: Arc<Waiting>,
}

impl Slot {
    fn take(global: &Arc<Waiting>, service: &Arc<Waiting>) -> Option<Slot> {
        if !global.try_enter() {
            return None;
        }
        if !service.try_enter() {
            global.leave();
            return None;
        }
        Some(Slot {
            global: Arc::clone(global),
            service: Arc::clone(service),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.global.leave();
        self.service.leave();
    }
}

/// Whether connections of this service go through the stage.
pub(super) fn needed(active: &Active) -> bool {
    active.svc.proxy.is_some()
}

/// Takes an accepted connection into the stage. A peer outside
/// `proxy_from` is refused here, before a byte is read.
pub(super) fn start(
    ctx: &Arc<Ctx>,
    active: Arc<Active>,
    stream: std::net::TcpStream,
    peer: SocketAddr,
) {
    let Some(proxy) = &active.svc.proxy else {
        return;
    };
    let balancer = canonical_ip(peer.ip());
    if !proxy.from.iter().any(|n| n.contains(&balancer)) {
        refused_connection(ctx, &active, peer.ip(), Refusal::ProxyRefused);
        return;
    }
    match at_once(&stream, proxy.version) {
        Ok(Some(header)) => return proceed(ctx, &active, stream, peer, &header),
        Ok(None) => {}
        Err(why) => {
            return refused_because(ctx, &active, peer.ip(), Refusal::ProxyInvalid, Some(&why));
        }
    }
    let Some(slot) = Slot::take(&ctx.waiting, &active.waiting) else {
        refused_connection(ctx, &active, peer.ip(), Refusal::ProxyBusy);
        return;
    };
    let (deadline, version) = (Duration::from_secs(proxy.timeout.into()), proxy.version);
    let ctx = Arc::clone(ctx);
    tokio::spawn(async move {
        let outcome = tokio::time::timeout(deadline, receive(stream, version)).await;
        drop(slot);
        match outcome {
            Ok(Ok((stream, header))) => {
                match stream
                    .into_std()
                    .and_then(|s| s.set_nonblocking(false).map(|()| s))
                {
                    Ok(stream) => proceed(&ctx, &active, stream, peer, &header),
                    Err(e) => {
                        warn!(service = %active.svc.name, via = %peer, "cannot hand off the connection: {e}")
                    }
                }
            }
            Ok(Err(why)) => {
                refused_because(&ctx, &active, peer.ip(), Refusal::ProxyInvalid, Some(&why))
            }
            Err(_) => {
                let late = format!(
                    "no complete header within proxy_timeout ({} s)",
                    deadline.as_secs()
                );
                refused_because(&ctx, &active, peer.ip(), Refusal::ProxyInvalid, Some(&late))
            }
        }
    });
}

/// The header when all of it is in already, as it mostly is (a balancer
/// sends it with the connection): read here, without a task, a timer or
/// the event loop. `None`: not all in yet, nothing was read.
fn at_once(
    stream: &std::net::TcpStream,
    version: ProxyVersion,
) -> Result<Option<proxy::Header>, Cow<'static, str>> {
    let io = |e: std::io::Error| Cow::Owned(e.to_string());
    let mut peeked = [0u8; 512];
    match os::peek_now(stream, &mut peeked) {
        Ok(0) => Err("the peer closed before the header ended".into()),
        Ok(n) => match proxy::parse(&peeked[..n], version) {
            // Already in: this read returns at once.
            Parse::Header(h) => (&*stream)
                .read_exact(&mut peeked[..h.len])
                .map(|()| Some(*h))
                .map_err(io),
            Parse::Invalid(why) => Err(why),
            Parse::Incomplete => Ok(None),
        },
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// Reads exactly the header: each read takes only bytes known to belong
/// to it (peeked first), so the client's first byte stays in the socket.
async fn receive(
    stream: std::net::TcpStream,
    version: ProxyVersion,
) -> Result<(TcpStream, proxy::Header), Cow<'static, str>> {
    let io = |e: std::io::Error| Cow::Owned(e.to_string());
    stream.set_nonblocking(true).map_err(io)?;
    // Not woken before the shortest header could be in: a peer trickling
    // its first bytes (a slowloris) costs no wake-up until its deadline.
    os::wake_after(&stream, proxy::MIN_HEADER).map_err(io)?;
    let mut stream = TcpStream::from_std(stream).map_err(io)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match proxy::parse(&buf, version) {
            Parse::Header(h) if h.len == buf.len() => return Ok((stream, *h)),
            Parse::Header(_) => return Err("read past the header".into()),
            Parse::Invalid(why) => return Err(why),
            Parse::Incomplete => {}
        }
        let room = proxy::room(&buf).min(chunk.len());
        let n = stream.peek(&mut chunk[..room]).await.map_err(io)?;
        if n == 0 {
            return Err("the peer closed before the header ended".into());
        }
        let take = proxy::take(&buf, &chunk[..n]);
        stream.read_exact(&mut chunk[..take]).await.map_err(io)?;
        if buf.is_empty() {
            // A v1 line ends at its LF, wherever that is: byte by byte now.
            os::wake_after(&stream, 1).map_err(io)?;
        }
        buf.extend_from_slice(&chunk[..take]);
    }
}

/// After a valid header: admission on the client's address, then hand-off.
fn proceed(
    ctx: &Arc<Ctx>,
    active: &Arc<Active>,
    stream: std::net::TcpStream,
    balancer: SocketAddr,
    header: &proxy::Header,
) {
    let (peer, local) = match header.addrs {
        Some((client, destination)) => (client, Some(destination)),
        None => (balancer, stream.local_addr().ok()),
    };
    let lease = match active.gate.admit(peer.ip()) {
        Ok(l) => l,
        Err(why) => {
            refused_connection(ctx, active, peer.ip(), why);
            return;
        }
    };
    match &active.svc.program {
        Program::Internal(kind) => {
            serve_internal(ctx, active, *kind, stream, (peer, Some(balancer)), lease)
        }
        Program::Command(_) => {
            let conn = Conn {
                peer,
                local,
                via: Some(balancer),
                extra: proxy::env(header, balancer),
            };
            hand_off_tcp(ctx, active, stream, conn, lease);
        }
    }
}
