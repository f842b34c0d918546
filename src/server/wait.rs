//! inetd's `wait` services, TCP and UDP: the program gets the listening (or
//! bound) socket itself and serves until it exits; only then is the socket
//! watched again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, warn};

use super::handoff::launch;
use super::{Active, Ctx};
use crate::admission::Lease;
use crate::children::Ended;
use crate::conn_env::ConnEnv;
use crate::metrics::Outcome;
use crate::os::{self, ChildStdio};

/// The least time between two starts of a `wait` program that fails.
pub(super) const WAIT_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Runs the program on `sock` and returns once it has exited; `false` if
/// it never ran. A program that ends within a second of its start having
/// failed, or leaving work behind (`unserved`), is not restarted before
/// that second is over.
pub(super) async fn run_wait_program(
    ctx: &Arc<Ctx>,
    active: &Active,
    sock: socket2::Socket,
    env: ConnEnv,
    peer: SocketAddr,
    lease: Lease,
    unserved: impl FnOnce() -> bool,
) -> bool {
    // A logon (Windows USER services) runs off the event loop; only this
    // socket's task waits for it.
    let logon = match os::logon_pending(&active.svc.user) {
        None => None,
        Some(pending) => match pending.await {
            Ok(l) => Some(l),
            Err(e) => {
                lease.stats().connection(Outcome::UserFailed);
                lease.stats().error(e.to_string());
                error!(service = %active.svc.name, %peer, "{e}");
                return false;
            }
        },
    };
    let Some(l) = launch(
        ctx,
        active,
        env,
        ChildStdio::Socket(sock),
        (peer, None),
        lease,
        logon,
    ) else {
        return false;
    };
    let exited = ctx.children().watch(l.id, None);
    let how = exited.await.map_or(Ended::Failed, |(how, _)| how);
    // A program that ends at once without serving would be restarted in
    // a tight loop: at most once a second.
    let ran = l.started.elapsed();
    if ran < WAIT_RETRY_PAUSE && (how == Ended::Failed || unserved()) {
        warn!(
            service = %active.svc.name,
            "program ended after {} ms without serving; watching the socket again in a second",
            ran.as_millis()
        );
        tokio::time::sleep(WAIT_RETRY_PAUSE - ran).await;
    }
    how != Ended::NotStarted
}
