//! UDP: internal services answer each datagram; `wait` services get the
//! bound socket while their program runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{error, warn};

use super::handoff::connection_env;
use super::wait::run_wait_program;
use super::{Active, Ctx, refused, refused_connection};
use crate::admission::{Lease, RefusalLine};
use crate::config::{Internal, Program, Protocol};
use crate::internal;
use crate::metrics::Datagram;
use crate::udp_guard::{self, Dropped};

/// A UDP listener: internal services answer each datagram; a `wait`
/// service gets the socket itself while its program runs, as inetd does.
pub(super) async fn serve_udp(
    sock: UdpSocket,
    active: watch::Receiver<Arc<Active>>,
    ctx: Arc<Ctx>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut seed = u64::from(std::process::id()) ^ 0x9E37_79B9_7F4A_7C15;
    let mut in_a_row = 0u32;
    loop {
        // A socket that never runs dry (a flood) never makes `readable`
        // wait, so without this the task would never give the runtime
        // back: no signal (SIGTERM) and no other listener would be served.
        in_a_row += 1;
        if in_a_row == DATAGRAM_BATCH {
            in_a_row = 0;
            tokio::task::yield_now().await;
        }
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
                if udp_guard::bad_source(peer, &active.udp_ports) {
                    dropped(&ctx, &active, peer, Dropped::BadSource);
                    continue;
                }
                if let Err(why) = active.gate.admit_datagram(peer.ip()) {
                    active.gate.stats().datagram(Datagram::Refused);
                    refused(&ctx, &active, peer.ip(), why);
                    continue;
                }
                if *kind != Internal::Discard
                    && let Err(why) = active.udp_guard.take_reply(peer.ip(), Instant::now())
                {
                    dropped(&ctx, &active, peer, why);
                    continue;
                }
                active.gate.stats().datagram(Datagram::Served);
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
                        refused_connection(&ctx, &active, peer.ip(), why);
                        continue;
                    }
                };
                wait_service(&ctx, &active, &sock, peer, lease, &mut buf).await;
            }
        }
    }
}

/// Datagrams handled back to back before the runtime polls its drivers
/// (signals, timers) and other tasks again.
const DATAGRAM_BATCH: u32 = 32;

/// Counts a datagram that gets no answer, and logs it at most once per
/// service and source per few seconds.
fn dropped(ctx: &Ctx, active: &Active, peer: SocketAddr, why: Dropped) {
    active.udp_guard.count(why);
    let this = ctx.global.source(peer.ip());
    let mut log = ctx.udp_drops.lock().unwrap_or_else(|p| p.into_inner());
    log.note(
        active.gate.name(),
        this,
        why,
        Instant::now(),
        |line| match line {
            RefusalLine::Source {
                service,
                source,
                why,
                count,
            } if source == this => warn!(
                %service,
                %source,
                port = peer.port(),
                dropped = count,
                outcome = why.outcome(),
                "dropped datagram: {why}"
            ),
            RefusalLine::Source {
                service,
                source,
                why,
                count,
            } => warn!(
                %service,
                %source,
                dropped = count,
                outcome = why.outcome(),
                "dropped datagram: {why}"
            ),
            RefusalLine::Others { refused, sources } => {
                warn!("dropped {refused} datagrams from {sources} other sources")
            }
        },
    );
}

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
    let env = connection_env(Protocol::Udp, Some(peer), None);
    let ran = run_wait_program(ctx, active, dup, env, peer, lease, || false).await;
    // The program had the socket in blocking mode; the flag is shared.
    if let Err(e) = socket2::SockRef::from(sock).set_nonblocking(true) {
        error!(service = %svc.name, "cannot restore the socket: {e}");
    }
    if !ran {
        // The program cannot start: drop the datagram rather than spin.
        let _ = sock.try_recv_from(buf);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use super::*;
    use crate::admission::{Gate, Global, RefusalLog};
    use crate::children::Children;
    use crate::config::Handoff;
    use crate::udp_guard::UdpGuard;

    /// A socket that never runs dry must not hold the runtime: other tasks
    /// (the signal handler that hears SIGTERM) run every few datagrams.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_socket_lets_other_tasks_run() {
        const QUEUED: u64 = 100;
        let text = b"[[service]]\nport = 9\nbind = [\"127.0.0.1\"]\nprotocol = \"udp\"\ninternal = \"echo\"\n";
        let svc = crate::config::parse(Path::new("t.toml"), text)
            .unwrap()
            .services
            .remove(0);
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..QUEUED {
            client.send_to(b"x", server.local_addr().unwrap()).unwrap();
        }
        // The client's port counts as one of ours, so each datagram is
        // dropped and counted: the count tells how far the task got.
        let guard = Arc::new(UdpGuard::default());
        let active = Arc::new(Active {
            gate: Gate::new(
                &svc.name,
                Global::new(10),
                svc.access.clone(),
                svc.limits.clone(),
            ),
            svc,
            handoff: Handoff::Direct,
            timeout: None,
            linger: None,
            udp_guard: Arc::clone(&guard),
            udp_ports: vec![client.local_addr().unwrap().port()].into(),
            exec: None,
            tls: None,
            waiting: super::super::prespawn::Waiting::new(10),
        });
        let ctx = Arc::new(Ctx {
            global: Global::new(10),
            children: Mutex::new(Children::default()),
            refusals: Mutex::new(RefusalLog::default()),
            udp_drops: Mutex::new(RefusalLog::default()),
            pipe_budget: crate::relay::PipeBudget::new(0),
            waiting: super::super::prespawn::Waiting::new(10),
            served: Mutex::new(Arc::new([])),
            daemon: crate::metrics::DaemonStats::default(),
        });
        let (_keep, rx) = watch::channel(active);
        let task = tokio::spawn(serve_udp(server, rx, ctx));
        // Until the task has seen its socket readable.
        let deadline = Instant::now() + Duration::from_secs(5);
        while guard.dropped(Dropped::BadSource) == 0 && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        let first = guard.dropped(Dropped::BadSource);
        assert!(
            (1..QUEUED).contains(&first),
            "{first} of {QUEUED} queued datagrams handled before this task ran again"
        );
        while guard.dropped(Dropped::BadSource) < QUEUED && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert_eq!(guard.dropped(Dropped::BadSource), QUEUED);
        task.abort();
    }
}
