//! The local control channel's requests: `status` (text or JSON) and
//! `reload`. One short request per connection, bounded in size and time;
//! who may connect is the platform's business ([`crate::os`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::Ctx;
use crate::metrics::unix_now;
use crate::os::{self, ControlListener};

/// A request line is at most this long.
const MAX_REQUEST: usize = 64;
/// The request must arrive, and the answer leave, within this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A reload asked over the channel; the answer says whether it applied.
pub(super) type ReloadRequest = oneshot::Sender<bool>;

/// Accepts control connections until the daemon stops.
pub(super) async fn serve(
    mut listener: ControlListener,
    ctx: Arc<Ctx>,
    reloads: mpsc::Sender<ReloadRequest>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Refused peers and failed accepts: never a flood.
                debug!("control channel: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let (ctx, reloads) = (Arc::clone(&ctx), reloads.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &ctx, &reloads).await {
                debug!("control request: {e}");
            }
        });
    }
}

async fn answer(
    mut stream: os::ControlStream,
    ctx: &Ctx,
    reloads: &mpsc::Sender<ReloadRequest>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(MAX_REQUEST);
    let read = async {
        let mut chunk = [0u8; MAX_REQUEST];
        while !buf.contains(&b'\n') && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n.min(MAX_REQUEST - buf.len())]);
        }
        std::io::Result::Ok(())
    };
    tokio::time::timeout(IO_TIMEOUT, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let request = String::from_utf8_lossy(&buf);
    let reply = match request.trim_end() {
        "status" => format!("OK\n{}", status_text(&status(ctx))),
        "status json" => match serde_json::to_string_pretty(&status(ctx)) {
            Ok(json) => format!("OK\n{json}\n"),
            Err(e) => format!("ERR\ncannot encode the status: {e}\n"),
        },
        "reload" => {
            let (tx, rx) = oneshot::channel();
            if reloads.send(tx).await.is_err() {
                "ERR\nthe daemon is stopping\n".to_string()
            } else {
                match rx.await {
                    // Which daemon: a second one (a console run) may hold
                    // another channel, and the admin should see whom they reached.
                    Ok(true) => format!("OK\nreloaded (pid {})\n", std::process::id()),
                    Ok(false) => {
                        "ERR\nreload rejected; still serving the previous config (see the log)\n"
                            .to_string()
                    }
                    Err(_) => "ERR\nthe daemon is stopping\n".to_string(),
                }
            }
        }
        other => {
            warn!(
                "control channel: unknown request {:?}",
                other.escape_debug().to_string()
            );
            "ERR\nunknown request\n".to_string()
        }
    };
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await?;
        // Until the client has read it all and gone: a Windows pipe closed
        // on our side first may lose what it still holds.
        let _ = stream.read(&mut [0u8; 1]).await;
        std::io::Result::Ok(())
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading"))?
}

/// What `wininetd status` shows.
#[derive(Debug, Serialize)]
pub(super) struct Status {
    version: &'static str,
    pid: u32,
    config_applied_at: u64,
    services: Vec<ServiceStatus>,
    sessions: Vec<SessionStatus>,
}

#[derive(Debug, Serialize)]
struct ServiceStatus {
    name: String,
    protocol: String,
    addresses: Vec<SocketAddr>,
    state: &'static str,
    live: u32,
    limit: Option<u32>,
    /// Connections by outcome (`started`, `denied`, …), non-zero only.
    totals: BTreeMap<&'static str, u64>,
    relayed_to_program: u64,
    relayed_to_client: u64,
    last_error: Option<LastError>,
}

#[derive(Debug, Serialize)]
struct LastError {
    at: u64,
    message: String,
}

#[derive(Debug, Serialize)]
struct SessionStatus {
    service: String,
    pid: u32,
    client: SocketAddr,
    /// The load balancer a PROXY header came through.
    via: Option<SocketAddr>,
    /// Unix seconds.
    since: u64,
    seconds: u64,
    /// Relayed so far (`pipe` handoff only).
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
}

fn status(ctx: &Ctx) -> Status {
    let served = Arc::clone(&ctx.served.lock().unwrap_or_else(|p| p.into_inner()));
    let services = served
        .iter()
        .map(|s| {
            let stats = s.gate.stats();
            let (up, down) = stats.relayed_bytes();
            ServiceStatus {
                name: s.gate.name().to_string(),
                protocol: s.protocol.to_string(),
                addresses: s.addrs.clone(),
                state: "listening",
                live: s.gate.live(),
                limit: s.limit,
                totals: stats.outcomes().filter(|&(_, n)| n > 0).collect(),
                relayed_to_program: up,
                relayed_to_client: down,
                last_error: stats
                    .last_error()
                    .map(|(at, message)| LastError { at, message }),
            }
        })
        .collect();
    let now = Instant::now();
    let wall = unix_now();
    let mut sessions: Vec<SessionStatus> = ctx
        .children()
        .iter()
        .map(|(pid, r)| {
            let seconds = now.saturating_duration_since(r.started).as_secs();
            SessionStatus {
                service: r.lease.service().to_string(),
                pid,
                client: r.peer(),
                via: r.via.as_deref().copied(),
                since: wall.saturating_sub(seconds),
                seconds,
                bytes_in: r.relayed.as_ref().map(|t| t.to_program.load(Relaxed)),
                bytes_out: r.relayed.as_ref().map(|t| t.to_client.load(Relaxed)),
            }
        })
        .collect();
    sessions.sort_by(|a, b| (&a.service, a.since, a.pid).cmp(&(&b.service, b.since, b.pid)));
    Status {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        config_applied_at: ctx.daemon.last_applied(),
        services,
        sessions,
    }
}

/// The plain-text form: one block per service, then the sessions.
fn status_text(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "wininetd {} (pid {}), {} service(s), {} live program(s)",
        s.version,
        s.pid,
        s.services.len(),
        s.sessions.len()
    );
    for svc in &s.services {
        let addrs: Vec<String> = svc.addresses.iter().map(|a| a.to_string()).collect();
        let limit = svc.limit.map_or("-".to_string(), |l| l.to_string());
        let _ = writeln!(
            o,
            "\n{}  {} {}  {}  live {}/{}",
            svc.name,
            svc.protocol,
            addrs.join(","),
            svc.state,
            svc.live,
            limit
        );
        let totals: Vec<String> = svc.totals.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            o,
            "  totals: {}",
            if totals.is_empty() {
                "none yet".to_string()
            } else {
                totals.join(", ")
            }
        );
        if svc.relayed_to_program + svc.relayed_to_client > 0 {
            let _ = writeln!(
                o,
                "  relayed: {} bytes in, {} bytes out",
                svc.relayed_to_program, svc.relayed_to_client
            );
        }
        if let Some(e) = &svc.last_error {
            let ago = unix_now().saturating_sub(e.at);
            let _ = writeln!(o, "  last error ({ago}s ago): {}", e.message);
        }
    }
    if !s.sessions.is_empty() {
        let _ = writeln!(o, "\nSERVICE\tPID\tCLIENT\tFOR\tIN\tOUT");
        let bytes = |b: Option<u64>| b.map_or("-".to_string(), |n| n.to_string());
        for x in &s.sessions {
            let _ = writeln!(
                o,
                "{}\t{}\t{}\t{}s\t{}\t{}",
                x.service,
                x.pid,
                x.via
                    .map_or(x.client.to_string(), |v| format!("{} via {v}", x.client)),
                x.seconds,
                bytes(x.bytes_in),
                bytes(x.bytes_out)
            );
        }
    }
    o
}

/// Sets up the channel; without it the daemon serves on, and says why.
pub(super) fn listen() -> Option<ControlListener> {
    match os::control_listen() {
        Ok(l) => {
            info!("control channel on {}", os::control_address());
            Some(l)
        }
        Err(e) => {
            warn!(
                "no control channel (`wininetd status`, `--reload`) on {}: {e}",
                os::control_address()
            );
            None
        }
    }
}
