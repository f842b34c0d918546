//! Handing a connection to a program: its environment, the launch, and
//! the record the reaper will find.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt as _;
use tracing::{debug, error, info};

use super::{Active, Ctx, log_refusal};
use crate::admission::{Lease, Refusal};
use crate::children::Record;
use crate::config::{self, Protocol};
use crate::conn_env::ConnEnv;
use crate::metrics::Outcome;
use crate::os::{self, ChildStdio, LaunchSpec};

/// Launches the program and records it for the reaper; logs either way.
/// `client` is the peer and the balancer it came through (PROXY).
pub(super) fn launch(
    ctx: &Arc<Ctx>,
    active: &Active,
    env: ConnEnv,
    stdio: ChildStdio,
    client: (SocketAddr, Option<SocketAddr>),
    lease: Lease,
    logon: Option<os::Logon>,
) -> Option<os::Launched> {
    let (peer, via) = client;
    let svc = &active.svc;
    let template = active.exec.as_ref()?;
    let spec = LaunchSpec {
        service: &svc.name,
        template,
        env,
        stderr: svc.stderr,
        logon,
    };
    match os::launch(spec, stdio) {
        Ok(mut launched) => {
            lease.stats().connection(Outcome::Started);
            // The end's line says it all; this one is for debugging.
            debug!(service = %svc.name, port = svc.port, %peer, via = via.map(tracing::field::display), pid = launched.id, "started");
            if let Some(stderr) = launched.stderr.take() {
                tokio::spawn(log_stderr(svc.name.clone(), launched.id, stderr));
            }
            ctx.children().insert(
                launched.id,
                Record {
                    lease,
                    started: launched.started,
                    peer_port: peer.port(),
                    end_logged_elsewhere: false,
                    relayed: None,
                    // For `status` and the end line: the PROXY balancer.
                    via: via.map(Box::new),
                },
            );
            Some(launched)
        }
        // The user could not be looked up; said a moment ago.
        Err(os::LaunchError::Quiet) => {
            lease.stats().connection(Outcome::UserFailed);
            None
        }
        // No process to be had (EAGAIN under RLIMIT_NPROC) fails every
        // connection alike: one line per source per window, with a count.
        Err(os::LaunchError::Spawn(e)) => {
            lease.stats().connection(Outcome::SpawnFailed);
            lease
                .stats()
                .error(format!("cannot start the program: {e}"));
            log_refusal(ctx, active, peer.ip(), Refusal::SpawnFailed, Some(&e));
            None
        }
        Err(e) => {
            lease.stats().connection(Outcome::UserFailed);
            lease.stats().error(e.to_string());
            error!(service = %svc.name, %peer, via = via.map(tracing::field::display), "{e}");
            None
        }
    }
}

/// `stderr = "log"`: each line the program writes becomes a log line.
async fn log_stderr(service: String, pid: os::ChildId, stderr: os::PipeReader) {
    use tokio::io::AsyncBufReadExt;
    const MAX_LINE: usize = 4096;
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                info!(service = %service, pid, "stderr: {}", text.trim_end());
            }
        }
    }
}

/// The connection's variables, set on top of the service's environment
/// (its exec template): WinInetd's CLIENT_IP/CLIENT_PORT, the UCSPI
/// (tcpserver) names and systemd's REMOTE_ADDR/REMOTE_PORT.
pub(super) fn connection_env(
    protocol: Protocol,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
) -> ConnEnv {
    // Room for a PROXY header's variables too: no regrowth per connection.
    let mut env = ConnEnv::with_capacity(16);
    env.push(
        "PROTO",
        match protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        },
    );
    if let Some(p) = peer {
        let (ip, port) = (config::canonical_ip(p.ip()), p.port().into());
        match protocol {
            Protocol::Tcp => {
                env.push_ip(&["CLIENT_IP", "REMOTE_ADDR", "TCPREMOTEIP"], ip);
                env.push_u64(&["CLIENT_PORT", "REMOTE_PORT", "TCPREMOTEPORT"], port);
            }
            Protocol::Udp => {
                env.push_ip(&["CLIENT_IP", "REMOTE_ADDR"], ip);
                env.push_u64(&["CLIENT_PORT", "REMOTE_PORT"], port);
            }
        }
    }
    if let (Some(l), Protocol::Tcp) = (local, protocol) {
        env.push_ip(&["TCPLOCALIP"], config::canonical_ip(l.ip()));
        env.push_u64(&["TCPLOCALPORT"], l.port().into());
    }
    env
}
