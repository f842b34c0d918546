//! `internal = "metrics"`: one HTTP request per connection, answered with
//! the counters of the services served now.

use std::sync::Arc;
use std::time::Duration;

use super::Ctx;
use crate::http_request;
use crate::metrics::{self, ServiceView, Snapshot};

/// Answers one scrape: the HTTP status sent.
pub(super) async fn serve<S>(ctx: &Ctx, stream: S, idle: Option<Duration>) -> std::io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    http_request::serve(stream, idle, || scrape(ctx)).await
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
