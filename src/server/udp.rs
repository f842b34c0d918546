//! UDP: internal services answer each datagram; `wait` services get the
//! bound socket while their program runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{error, warn};

use super::handoff::{connection_env, launch};
use super::{Active, Ctx, refused};
use crate::admission::Lease;
use crate::children::Ended;
use crate::config::{Program, Protocol};
use crate::internal;
use crate::os::ChildStdio;

/// A UDP listener: internal services answer each datagram; a `wait`
/// service gets the socket itself while its program runs, as inetd does.
pub(super) async fn serve_udp(
    sock: UdpSocket,
    active: watch::Receiver<Arc<Active>>,
    ctx: Arc<Ctx>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut seed = u64::from(std::process::id()) ^ 0x9E37_79B9_7F4A_7C15;
    loop {
        if sock.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let active = active.borrow().clone();
        match &active.svc.program {
            Program::Internal(kind) => {
                let (n, peer) = match sock.try_recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(_) => continue, // WouldBlock clears readiness
                };
                if let Err(why) = active.gate.admit_datagram(peer.ip()) {
                    refused(&ctx, &active, peer.ip(), why);
                    continue;
                }
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                if let Some(reply) = internal::datagram_reply(*kind, &buf[..n], seed >> 16) {
                    let _ = sock.try_send_to(&reply, peer);
                }
            }
            Program::Command(_) => {
                let peer = match sock.try_peek_sender() {
                    Ok(p) => p,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => {
                        let _ = sock.try_recv_from(&mut buf);
                        continue;
                    }
                };
                let lease = match active.gate.admit(peer.ip()) {
                    Ok(l) => l,
                    Err(why) => {
                        let _ = sock.try_recv_from(&mut buf); // drop that datagram
                        refused(&ctx, &active, peer.ip(), why);
                        continue;
                    }
                };
                wait_service(&ctx, &active, &sock, peer, lease, &mut buf).await;
            }
        }
    }
}

/// The least time between two starts of a `wait` program that fails.
const WAIT_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Runs a `wait` service's program on the socket and does not watch the
/// socket again until the program has exited.
async fn wait_service(
    ctx: &Arc<Ctx>,
    active: &Active,
    sock: &UdpSocket,
    peer: SocketAddr,
    lease: Lease,
    buf: &mut [u8],
) {
    let svc = &active.svc;
    let dup = match socket2::SockRef::from(sock).try_clone() {
        Ok(d) => d,
        Err(e) => {
            error!(service = %svc.name, "cannot duplicate the socket: {e}");
            let _ = sock.try_recv_from(buf);
            return;
        }
    };
    let env = connection_env(svc, Protocol::Udp, Some(peer), None);
    let launched = launch(
        ctx,
        active,
        &env,
        ChildStdio::Socket(dup),
        peer,
        None,
        lease,
    );
    let ran = match launched {
        Some(l) => {
            let exited = ctx.children().watch(l.id);
            let how = exited.await.unwrap_or(Ended::Failed);
            // A program that fails at once without reading its datagram
            // would be restarted in a tight loop: at most once a second.
            let ran = l.started.elapsed();
            if how == Ended::Failed && ran < WAIT_RETRY_PAUSE {
                warn!(
                    service = %svc.name,
                    "program failed after {} ms; watching the socket again in a second",
                    ran.as_millis()
                );
                tokio::time::sleep(WAIT_RETRY_PAUSE - ran).await;
            }
            how != Ended::NotStarted
        }
        None => false,
    };
    // The program had the socket in blocking mode; the flag is shared.
    if let Err(e) = socket2::SockRef::from(sock).set_nonblocking(true) {
        error!(service = %svc.name, "cannot restore the socket: {e}");
    }
    if !ran {
        // The program cannot start: drop the datagram rather than spin.
        let _ = sock.try_recv_from(buf);
    }
}
