//! TCP: accept → check → hand off (a program, the relay, or an internal
//! service).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::handoff::{connection_env, launch};
use super::wait::{WAIT_RETRY_PAUSE, run_wait_program};
use super::{Active, Ctx, metrics_endpoint, prespawn, refused_because, refused_connection};
use crate::admission::{Lease, REFUSAL_LOG_WINDOW, Refusal};
use crate::children::Ended;
use crate::config::Internal;
use crate::config::{Handoff, Program, Protocol};
use crate::conn_env::ConnEnv;
use crate::listener::{self, Acceptor};
use crate::metrics::Outcome;
use crate::os::{self, ChildStdio};
use crate::{internal, relay, tls};

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
    let mut failures = AcceptFailures::default();
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
        if is_wait(&active.borrow()) {
            wait_tcp(&listener, &active, &ctx).await;
            continue;
        }
        let (stream, peer) = match listener.accept().await {
            Ok(c) => {
                if let Some((n, e)) = failures.worked() {
                    info!(
                        "accept on {} works again after {n} more failure(s): {e}",
                        where_(&listener)
                    );
                }
                c
            }
            Err(e) => {
                let resource = listener::is_resource_exhaustion(&e);
                let (pause, line) = failures.failed(&e, resource, Instant::now());
                if let Some(n) = line {
                    warn!(
                        "accept on {} failed ({n} time(s) since the last line): {e}; retrying \
                         with a growing pause, next in {} ms",
                        where_(&listener),
                        pause.as_millis()
                    );
                }
                active
                    .borrow()
                    .gate
                    .stats()
                    .error(format!("accept failed: {e}"));
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
                refused_connection(&ctx, &active, peer.ip(), why);
                continue; // dropping the stream closes it at once
            }
        };
        match &active.svc.program {
            Program::Internal(kind) => {
                serve_internal(&ctx, &active, *kind, stream, (peer, None), lease)
            }
            Program::Command(_) => {
                let conn = Conn {
                    peer,
                    local: stream.local_addr().ok(),
                    via: None,
                    extra: ConnEnv::default(),
                };
                hand_off_tcp(&ctx, &active, stream, conn, lease)
            }
        }
    }
}

fn where_(listener: &Acceptor) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Failed accepts in a row: out of descriptors, accept fails again at once
/// for as long as that lasts, so the pause grows (to a bound) and the log
/// gets one line per window with how many failed, not one per attempt.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// Failures in a row, and the pause after the last one.
    in_a_row: u32,
    pause: Duration,
    /// When a line was last logged, and failures since then.
    last_line: Option<Instant>,
    unlogged: u64,
    last_error: String,
}

/// The pause after a failed accept: short for a connection that went
/// before it was taken, longer when descriptors or memory ran out.
const ACCEPT_PAUSE: Duration = Duration::from_millis(5);
const ACCEPT_PAUSE_EXHAUSTED: Duration = Duration::from_millis(100);
/// Failures in a row double the pause up to this: a recovery is seen
/// within it.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

impl AcceptFailures {
    /// Notes a failure: the pause before the next try, and the count to log
    /// now (`None`: this window's line was written).
    fn failed(
        &mut self,
        e: &std::io::Error,
        resource: bool,
        now: Instant,
    ) -> (Duration, Option<u64>) {
        let base = if resource {
            ACCEPT_PAUSE_EXHAUSTED
        } else {
            ACCEPT_PAUSE
        };
        self.pause = if self.in_a_row == 0 {
            base
        } else {
            (self.pause * 2).clamp(base, ACCEPT_PAUSE_MAX)
        };
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.unlogged += 1;
        self.last_error = e.to_string();
        let due = self
            .last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_WINDOW);
        if !due {
            return (self.pause, None);
        }
        self.last_line = Some(now);
        (self.pause, Some(std::mem::take(&mut self.unlogged)))
    }

    /// Notes a success: failures not logged yet, and the last error.
    fn worked(&mut self) -> Option<(u64, String)> {
        self.in_a_row = 0;
        let n = std::mem::take(&mut self.unlogged);
        (n > 0).then(|| (n, std::mem::take(&mut self.last_error)))
    }
}

/// An internal service (echo…, metrics) on an admitted connection, in a
/// task of its own, inside a TLS session when the service has `tls`.
pub(super) fn serve_internal(
    ctx: &Arc<Ctx>,
    active: &Arc<Active>,
    kind: Internal,
    stream: std::net::TcpStream,
    (peer, via): (SocketAddr, Option<SocketAddr>),
    lease: Lease,
) {
    let stream = match into_tokio(stream) {
        Ok(s) => s,
        Err(e) => {
            warn!(service = %active.svc.name, %peer, "cannot serve the connection: {e}");
            return;
        }
    };
    let (ctx, active) = (Arc::clone(ctx), Arc::clone(active));
    tokio::spawn(async move {
        let idle = active.timeout;
        let started = Instant::now();
        let result = match active.tls.clone() {
            None => {
                lease.stats().connection(Outcome::Internal);
                internal_session(&ctx, kind, stream, idle).await
            }
            Some(terminator) => match terminator.accept(stream).await {
                Ok((session, _)) => {
                    lease.stats().tls_handshake(true, tls::resumed(&session));
                    lease.stats().connection(Outcome::Internal);
                    internal_session(&ctx, kind, session, idle).await
                }
                Err(failure) => {
                    lease.stats().tls_handshake(false, false);
                    let why = Refusal::TlsFailed(failure.class);
                    refused_because(&ctx, &active, peer.ip(), why, Some(&failure.detail));
                    return;
                }
            },
        };
        lease.stats().session_ended(started.elapsed());
        match result {
            Ok(Some(status)) => {
                debug!(service = %lease.service(), %peer, via = via.map(tracing::field::display), status, "metrics request")
            }
            other => info!(
                service = %lease.service(),
                %peer,
                via = via.map(tracing::field::display),
                duration = %format_args!("{:.3}s", started.elapsed().as_secs_f64()),
                result = %other.map_or_else(|e| e.to_string(), |_| "ok".into()),
                "internal session ended"
            ),
        }
    });
}

/// One internal session on a plain or TLS stream; for `metrics`, the HTTP
/// status it answered.
async fn internal_session<S>(
    ctx: &Ctx,
    kind: Internal,
    stream: S,
    idle: Option<Duration>,
) -> std::io::Result<Option<u16>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if kind == Internal::Metrics {
        return metrics_endpoint::serve(ctx, stream, idle).await.map(Some);
    }
    internal::serve_stream(kind, stream, idle)
        .await
        .map(|()| None)
}

fn is_wait(active: &Active) -> bool {
    active.svc.wait && matches!(active.svc.program, Program::Command(_))
}

/// A TCP `wait` service: when a connection is pending, its program gets
/// the listening socket and accepts by itself; the socket is watched again
/// once the program has exited.
async fn wait_tcp(listener: &Acceptor, active: &watch::Receiver<Arc<Active>>, ctx: &Arc<Ctx>) {
    if let Err(e) = listener.pending().await {
        warn!("waiting on a TCP wait listener failed: {e}; pausing 1 s");
        tokio::time::sleep(WAIT_RETRY_PAUSE).await;
        return;
    }
    let active = active.borrow().clone();
    if !is_wait(&active) {
        return; // a reload changed the service meanwhile
    }
    let svc = &active.svc;
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(service = %svc.name, "cannot read the listener's address: {e}");
            tokio::time::sleep(WAIT_RETRY_PAUSE).await;
            return;
        }
    };
    // Over the rate (inetd's `wait.N`): the one connection that woke us is
    // refused, not left to wake us again at once.
    let lease = match active.gate.admit(local.ip()) {
        Ok(l) => l,
        Err(why) => {
            if let Some((_, peer)) = accept_one(listener).await {
                refused_connection(ctx, &active, peer.ip(), why);
            }
            return;
        }
    };
    let dup = match listener.try_clone_socket() {
        Ok(d) => d,
        Err(e) => {
            warn!(service = %svc.name, "cannot duplicate the listening socket: {e}; pausing 1 s");
            tokio::time::sleep(WAIT_RETRY_PAUSE).await;
            return;
        }
    };
    let env = connection_env(Protocol::Tcp, None, Some(local));
    let ran = run_wait_program(ctx, &active, dup, env, local, lease, || {
        listener.has_pending()
    })
    .await;
    // The program had the socket in blocking mode; the flag is shared.
    if let Err(e) = listener.restore_nonblocking() {
        warn!(service = %svc.name, "cannot restore the listening socket: {e}");
    }
    if !ran {
        // Cannot start: refuse the pending connection rather than spin.
        if let Some((_, peer)) = accept_one(listener).await {
            info!(service = %svc.name, %peer, "closed: the program could not start");
        }
        tokio::time::sleep(WAIT_RETRY_PAUSE).await;
    }
}

/// The pending connection, to close it; bounded in case it went away.
async fn accept_one(listener: &Acceptor) -> Option<(std::net::TcpStream, SocketAddr)> {
    tokio::time::timeout(Duration::from_millis(100), listener.accept())
        .await
        .ok()?
        .ok()
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
    pub extra: ConnEnv,
}

/// Starts the service's program on an admitted connection. A logon
/// (Windows USER services) may wait on a domain controller: it runs off
/// this loop, and only this connection waits for it.
pub(super) fn hand_off_tcp(
    ctx: &Arc<Ctx>,
    active: &Arc<Active>,
    stream: std::net::TcpStream,
    conn: Conn,
    lease: Lease,
) {
    match os::logon_pending(&active.svc.user) {
        None => start_program(ctx, active, stream, conn, lease, None),
        Some(pending) => {
            let (ctx, active) = (Arc::clone(ctx), Arc::clone(active));
            tokio::spawn(async move {
                match pending.await {
                    Ok(l) => start_program(&ctx, &active, stream, conn, lease, Some(l)),
                    Err(e) => error!(service = %active.svc.name, peer = %conn.peer, "{e}"),
                }
            });
        }
    }
}

/// The program, on the socket itself (`direct`), or relayed: through
/// pipes, or TLS.
fn start_program(
    ctx: &Arc<Ctx>,
    active: &Arc<Active>,
    stream: std::net::TcpStream,
    conn: Conn,
    lease: Lease,
    logon: Option<os::Logon>,
) {
    if active.tls.is_some() {
        return hand_off_tls(ctx, active, stream, conn, lease, logon);
    }
    let svc = &active.svc;
    let (peer, via) = (conn.peer, conn.via);
    let mut env = connection_env(Protocol::Tcp, Some(peer), conn.local);
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
            env,
            ChildStdio::Socket(sock),
            (peer, via),
            lease,
            logon,
        );
        return;
    }
    // Wide pipes while the budget lasts; the grant is held until both the
    // relay and the program are done with the pipes.
    let grant = os::WIDE_PIPE.and_then(|size| ctx.pipe_budget.take(2 * size));
    let stdio = ChildStdio::Pipes {
        wide: grant.is_some(),
    };
    let Some(launched) = launch(ctx, active, env, stdio, (peer, via), lease, logon) else {
        return;
    };
    let relayed = into_tokio(stream).map(|s| (s, launched.pipes));
    // The relay logs the end when it runs: then the line has the bytes.
    let tally = matches!(relayed, Ok((_, Some(_)))).then(Arc::<relay::Tally>::default);
    let mut exited = ctx.children().watch(launched.id, tally.clone());
    let via = ctx.children().via(launched.id);
    let (stream, (to_program, from_program)) = match relayed {
        Ok((s, Some(pipes))) => (s, pipes),
        failed => {
            if let Err(e) = failed {
                warn!(service = %svc.name, %peer, "cannot relay the connection: {e}");
            }
            // Our ends close now; the program's live until it exits.
            if grant.is_some() {
                tokio::spawn(async move {
                    let _ = exited.await;
                    drop(grant);
                });
            }
            return;
        }
    };
    let (idle, service, pid) = (active.timeout, svc.name.clone(), launched.id);
    let (gate, started) = (Arc::clone(&active.gate), launched.started);
    tokio::spawn(async move {
        let mut ended = None;
        let program_exited = async {
            ended = Some((&mut exited).await);
        };
        let tally = tally.unwrap_or_default();
        let relayed = relay::relay_tcp(
            stream,
            to_program,
            from_program,
            program_exited,
            idle,
            &tally,
        )
        .await;
        // The program's ends of the pipes (and what they hold) live until
        // it exits; the line waits for its status.
        let ended = match ended {
            Some(e) => e,
            None => exited.await,
        };
        drop(grant);
        relayed_end(&gate, &service, peer, via, pid, started, ended, relayed);
    });
}

/// The end line of a relayed session (pipe or TLS), with the bytes the
/// relay carried, and its bytes counted.
#[allow(clippy::too_many_arguments)]
fn relayed_end(
    gate: &crate::admission::Gate,
    service: &str,
    peer: SocketAddr,
    via: Option<SocketAddr>,
    pid: os::ChildId,
    started: Instant,
    ended: Result<crate::children::Exited, tokio::sync::oneshot::error::RecvError>,
    relayed: std::io::Result<relay::Relayed>,
) {
    let (how, status) = ended.unwrap_or((Ended::Failed, None));
    match relayed {
        Ok(r) => {
            gate.stats().relayed(r.to_program, r.to_client);
            if how != Ended::NotStarted {
                crate::logging::connection_ended(&crate::logging::Ended {
                    service,
                    peer,
                    via,
                    pid,
                    status: status.as_ref(),
                    duration: started.elapsed(),
                    bytes: Some((r.to_program, r.to_client)),
                });
            }
        }
        Err(e) => info!(
            service = %service,
            %peer,
            via = via.map(tracing::field::display),
            pid,
            status = %status.map_or_else(|| "unknown".to_string(), |s| s.to_string()),
            duration = %format_args!("{:.3}s", started.elapsed().as_secs_f64()),
            "ended; relay: {e}"
        ),
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
    logon: Option<os::Logon>,
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
            Ok(s) => {
                lease.stats().tls_handshake(true, tls::resumed(&s.0));
                s
            }
            Err(failure) => {
                lease.stats().tls_handshake(false, false);
                let why = Refusal::TlsFailed(failure.class);
                refused_because(&ctx, &active, peer.ip(), why, Some(&failure.detail));
                return; // the lease goes with the connection
            }
        };
        let svc = &active.svc;
        let mut env = connection_env(Protocol::Tcp, Some(peer), conn.local);
        // The session wininetd terminated is the one the program is told
        // of, not what a balancer's PROXY header said of its own.
        let mut header_env = conn.extra;
        header_env.retain(|name| !name.starts_with("SSL_"));
        env.extend(header_env);
        env.extend(tls_env);
        let grant = os::WIDE_PIPE.and_then(|size| ctx.pipe_budget.take(2 * size));
        let stdio = ChildStdio::Pipes {
            wide: grant.is_some(),
        };
        let launched = launch(&ctx, &active, env, stdio, (peer, via), lease, logon);
        let Some(launched) = launched else {
            return;
        };
        let Some((to_program, from_program)) = launched.pipes else {
            return;
        };
        // The relay logs the end when it runs: then the line has the bytes.
        let tally = Arc::<relay::Tally>::default();
        let mut exited = ctx.children().watch(launched.id, Some(Arc::clone(&tally)));
        let mut ended = None;
        let program_exited = async {
            ended = Some((&mut exited).await);
        };
        let (pid, started) = (launched.id, launched.started);
        let relayed = relay::relay(
            session,
            to_program,
            from_program,
            program_exited,
            active.timeout,
            &tally,
        )
        .await;
        if matches!(
            relayed,
            Ok(relay::Relayed {
                truncated: true,
                ..
            })
        ) {
            info!(
                service = %svc.name,
                %peer,
                pid,
                "the client closed without TLS close_notify (truncated); the program got EOF"
            );
        }
        // The program's ends of the pipes (and what they hold) live until
        // it exits; the line waits for its status.
        let ended = match ended {
            Some(e) => e,
            None => exited.await,
        };
        drop(grant);
        relayed_end(
            &active.gate,
            &svc.name,
            peer,
            via,
            pid,
            started,
            ended,
            relayed,
        );
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::other("Too many open files")
    }

    #[test]
    fn accept_failures_log_once_per_window_and_the_pause_grows_to_a_bound() {
        let mut f = AcceptFailures::default();
        let t0 = Instant::now();
        let (pause, line) = f.failed(&emfile(), true, t0);
        assert_eq!((pause, line), (ACCEPT_PAUSE_EXHAUSTED, Some(1)));
        let mut pauses = Vec::new();
        for i in 1..20u64 {
            let (pause, line) = f.failed(&emfile(), true, t0 + Duration::from_millis(i));
            assert_eq!(line, None, "failure {i} logged again within the window");
            pauses.push(pause);
        }
        assert_eq!(pauses[0], 2 * ACCEPT_PAUSE_EXHAUSTED);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), ACCEPT_PAUSE_MAX);
        // The window over: one line with the failures since the last one.
        let (_, line) = f.failed(&emfile(), true, t0 + REFUSAL_LOG_WINDOW);
        assert_eq!(line, Some(20));
        let _ = f.failed(&emfile(), true, t0 + REFUSAL_LOG_WINDOW);
        assert_eq!(f.worked().map(|(n, _)| n), Some(1));
        assert_eq!(f.worked(), None);
        // After a success the pause starts small again.
        let (pause, _) = f.failed(&emfile(), false, t0 + 3 * REFUSAL_LOG_WINDOW);
        assert_eq!(pause, ACCEPT_PAUSE);
    }
}
