//! `internal = "metrics"`: one HTTP request per connection, answered with
//! the counters of the services served now.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tracing::{debug, info};

use super::Ctx;
use crate::admission::Lease;
use crate::http_request;
use crate::metrics::{self, ServiceView, Snapshot};

/// Serves one scrape in its own task; the lease holds its slot meanwhile.
pub(super) fn serve(
    ctx: &Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    idle: Option<Duration>,
    lease: Lease,
) {
    let ctx = Arc::clone(ctx);
    tokio::spawn(async move {
        let started = Instant::now();
        let result = http_request::serve(stream, idle, || scrape(&ctx)).await;
        lease.stats().session_ended(started.elapsed());
        match result {
            Ok(status) => debug!(service = %lease.service(), %peer, status, "metrics request"),
            Err(e) => info!(service = %lease.service(), %peer, "metrics request failed: {e}"),
        }
    });
}

/// The text of one scrape.
fn scrape(ctx: &Ctx) -> String {
    let served = Arc::clone(&ctx.served.lock().unwrap_or_else(|p| p.into_inner()));
    let views: Vec<ServiceView<'_>> = served
        .iter()
        .map(|s| ServiceView {
            name: s.gate.name(),
            stats: s.gate.stats(),
            live: s.gate.live(),
            udp_drops: s.udp_guard.as_ref().map(|g| {
                use crate::udp_guard::Dropped;
                (
                    g.dropped(Dropped::BadSource),
                    g.dropped(Dropped::RateLimited),
                )
            }),
        })
        .collect();
    metrics::render(&Snapshot {
        services: &views,
        daemon: &ctx.daemon,
        log_lines_dropped: crate::logging::dropped_lines(),
        process: crate::os::process_stats(),
    })
}
