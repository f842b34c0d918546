//! TCP: accept → check → hand off (a program, the relay, or an internal
//! service).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

use super::handoff::{connection_env, launch};
use super::{Active, Ctx, prespawn, refused};
use crate::admission::Lease;
use crate::config::{Handoff, Program, Protocol};
use crate::listener::{self, Acceptor};
use crate::os::ChildStdio;
use crate::{internal, relay};

/// Connections accepted back to back before the runtime polls its
/// drivers (signals, timers) again.
const ACCEPT_BATCH: u32 = 8;

/// accept → check → hand off, for one TCP listener.
pub(super) async fn accept_tcp(
    listener: Acceptor,
    active: watch::Receiver<Arc<Active>>,
    ctx: Arc<Ctx>,
) {
    let mut in_a_row = 0u32;
    loop {
        // Under a steady flood accept never waits, and the runtime would
        // look at signals (SIGCHLD: the reaper) only every few thousand
        // connections; finished programs then pile up as zombies and count
        // against max_connections. Yielding now and then lets it look.
        in_a_row += 1;
        if in_a_row == ACCEPT_BATCH {
            in_a_row = 0;
            tokio::task::yield_now().await;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                let pause = if listener::is_resource_exhaustion(&e) {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(5)
                };
                warn!(
                    "accept on {} failed: {e}; pausing {} ms",
                    listener
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    pause.as_millis()
                );
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let active = active.borrow().clone();
        if prespawn::needed(&active) {
            prespawn::start(&ctx, active, stream, peer);
            continue;
        }
        let lease = match active.gate.admit(peer.ip()) {
            Ok(l) => l,
            Err(why) => {
                refused(&ctx, &active, peer.ip(), why);
                continue; // dropping the stream closes it at once
            }
        };
        match &active.svc.program {
            Program::Internal(kind) => {
                let (kind, idle) = (*kind, active.timeout);
                let stream = match into_tokio(stream) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(service = %active.svc.name, %peer, "cannot serve the connection: {e}");
                        continue;
                    }
                };
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = internal::serve_stream(kind, stream, idle).await;
                    info!(
                        service = %lease.service(),
                        %peer,
                        duration = %format_args!("{:.3}s", started.elapsed().as_secs_f64()),
                        result = %result.map_or_else(|e| e.to_string(), |()| "ok".into()),
                        "internal session ended"
                    );
                });
            }
            Program::Command(_) => {
                let conn = Conn {
                    peer,
                    local: stream.local_addr().ok(),
                    via: None,
                    extra: Vec::new(),
                };
                hand_off_tcp(&ctx, &active, stream, conn, lease)
            }
        }
    }
}

/// Who is at the other end of a connection, as its program is told.
pub(super) struct Conn {
    /// The client: the socket's peer, or the one a PROXY header names.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: Option<SocketAddr>,
    /// The load balancer that sent a PROXY header.
    pub via: Option<SocketAddr>,
    /// Variables on top of the connection's usual ones.
    pub extra: Vec<(String, String)>,
}

/// Starts the service's program on an accepted connection.
pub(super) fn hand_off_tcp(
    ctx: &Arc<Ctx>,
    active: &Arc<Active>,
    stream: std::net::TcpStream,
    conn: Conn,
    lease: Lease,
) {
    if active.tls.is_some() {
        return hand_off_tls(ctx, active, stream, conn, lease);
    }
    let svc = &active.svc;
    let (peer, via) = (conn.peer, conn.via);
    let mut env = connection_env(svc, Protocol::Tcp, Some(peer), conn.local);
    env.extend(conn.extra);
    if active.handoff == Handoff::Direct {
        let sock = socket2::Socket::from(stream);
        if let Err(e) = direct_socket_options(&sock, active) {
            warn!(service = %svc.name, %peer, "cannot set socket options: {e}");
        }
        // Our copy of the socket closes when `launch` returns.
        launch(
            ctx,
            active,
            &env,
            ChildStdio::Socket(sock),
            peer,
            via,
            lease,
        );
        return;
    }
    let Some(launched) = launch(ctx, active, &env, ChildStdio::Pipes, peer, via, lease) else {
        return;
    };
    let stream = match into_tokio(stream) {
        Ok(s) => s,
        Err(e) => {
            warn!(service = %svc.name, %peer, "cannot relay the connection: {e}");
            return;
        }
    };
    if let Some((to_program, from_program)) = launched.pipes {
        let exited = ctx.children().watch(launched.id);
        let (idle, service, pid) = (active.timeout, svc.name.clone(), launched.id);
        tokio::spawn(async move {
            let exited = async {
                let _ = exited.await;
            };
            if let Err(e) = relay::relay_tcp(stream, to_program, from_program, exited, idle).await {
                info!(service = %service, %peer, pid, "relay ended: {e}");
            }
        });
    }
}

/// A TLS service, once admitted (after its PROXY header if it has one):
/// the handshake runs in its own task under handshake_timeout, and the
/// program starts only once it has succeeded; then the relay carries the
/// session. The connection keeps the config it was accepted under, so a
/// reload never touches it.
fn hand_off_tls(
    ctx: &Arc<Ctx>,
    active: &Arc<Active>,
    stream: std::net::TcpStream,
    conn: Conn,
    lease: Lease,
) {
    let Some(terminator) = active.tls.clone() else {
        return;
    };
    let (peer, via) = (conn.peer, conn.via);
    let stream = match into_tokio(stream) {
        Ok(s) => s,
        Err(e) => {
            warn!(service = %active.svc.name, %peer, "cannot serve the connection: {e}");
            return;
        }
    };
    let (ctx, active) = (Arc::clone(ctx), Arc::clone(active));
    tokio::spawn(async move {
        let (session, tls_env) = match terminator.accept(stream).await {
            Ok(s) => s,
            Err(failure) => {
                tls_failed(&ctx, &active, peer.ip(), &failure);
                return; // the lease goes with the connection
            }
        };
        let svc = &active.svc;
        let mut env = connection_env(svc, Protocol::Tcp, Some(peer), conn.local);
        // The session wininetd terminated is the one the program is told
        // of, not what a balancer's PROXY header said of its own.
        env.extend(
            conn.extra
                .into_iter()
                .filter(|(k, _)| !k.starts_with("SSL_")),
        );
        env.extend(tls_env);
        let Some(launched) = launch(&ctx, &active, &env, ChildStdio::Pipes, peer, via, lease)
        else {
            return;
        };
        let Some((to_program, from_program)) = launched.pipes else {
            return;
        };
        let exited = ctx.children().watch(launched.id);
        let exited = async {
            let _ = exited.await;
        };
        let pid = launched.id;
        match relay::relay(session, to_program, from_program, exited, active.timeout).await {
            Ok(r) if r.truncated => info!(
                service = %svc.name,
                %peer,
                pid,
                "the client closed without TLS close_notify (truncated); the program got EOF"
            ),
            Ok(_) => {}
            Err(e) => info!(service = %svc.name, %peer, pid, "relay ended: {e}"),
        }
    });
}

/// A failed handshake: one line per service, reason and source per window.
fn tls_failed(ctx: &Ctx, active: &Active, ip: IpAddr, failure: &crate::tls::HandshakeFailure) {
    let key: Arc<str> = Arc::from(format!("{}\0tls {}", active.svc.name, failure.class));
    let count =
        ctx.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(&key, ip, Instant::now());
    if let Some(n) = count {
        warn!(
            service = %active.svc.name,
            source = %ip,
            failed = n,
            "TLS handshake failed ({}): {}",
            failure.class,
            failure.detail
        );
    }
}

/// A connection wininetd serves itself (relay, internal service).
pub(super) fn into_tokio(stream: std::net::TcpStream) -> std::io::Result<TcpStream> {
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// SO_RCVTIMEO/SO_SNDTIMEO and SO_LINGER for a socket a program will own.
fn direct_socket_options(sock: &socket2::Socket, active: &Active) -> std::io::Result<()> {
    if let Some(t) = active.timeout {
        sock.set_read_timeout(Some(t))?;
        sock.set_write_timeout(Some(t))?;
    }
    if active.linger.is_some() {
        sock.set_linger(active.linger)?;
    }
    Ok(())
}
