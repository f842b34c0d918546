//! The core loop: **accept** a connection, **check** it against the
//! service's rules, **hand it off** to a program (or an internal service),
//! and **reap** the program when it ends. Reload and stop come from the
//! service host. Nothing here is specific to Unix or Windows: launching a
//! program and talking to the service manager go through [`crate::os`].
//!
//! - `tcp`: accept → check → hand off, per TCP listener;
//! - `udp`: datagrams for internal services, and `wait` services;
//! - `wait`: a `wait` program's run (TCP and UDP);
//! - `handoff`: a program's environment, its launch and its record;
//! - `reload`: the reload transaction (bind first, apply or change nothing);
//! - here: startup, stop, and the reaper.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admission::{Gate, Global, Refusal, RefusalLine, RefusalLog};
use crate::children::{Children, Ended};
use crate::config::{self, Config, Handoff, Protocol, Service};
use crate::listener::Inherited;
use crate::metrics::{DaemonStats, ProgramExit};
use crate::os::{self, Control, HostStatus, ServiceHost};
use crate::relay::PipeBudget;
use crate::udp_guard::{Dropped, UdpGuard};

mod control;
mod handoff;
mod metrics_endpoint;
mod prespawn;
mod reload;
mod tcp;
mod udp;
mod wait;

/// Settings from the command line, which win over the config's globals.
#[derive(Debug, Clone)]
pub struct Options {
    pub cfgfile: PathBuf,
    pub timeout: Option<u32>,
    pub linger_timeout: Option<u32>,
    pub handoff: Option<Handoff>,
    pub kill_on_stop: bool,
    /// `--format`: overrides detection by file name.
    pub format: Option<config::Format>,
}

impl From<&crate::cli::Cli> for Options {
    fn from(c: &crate::cli::Cli) -> Options {
        Options {
            cfgfile: c.cfgfile.clone(),
            timeout: c.timeout,
            linger_timeout: c.linger_timeout,
            handoff: c.handoff,
            kill_on_stop: c.kill_on_stop,
            format: c.format,
        }
    }
}

/// Why the daemon could not start; `code` becomes the exit code (and the
/// Windows service-specific exit code).
#[derive(Debug)]
pub struct StartError {
    pub code: u32,
    pub message: String,
}

/// Exit codes: 1 = the config is invalid, 2 = a port cannot be bound,
/// 3 = configured users cannot be switched to, 4 = the runtime failed.
pub const EXIT_CONFIG: u32 = 1;
pub const EXIT_BIND: u32 = 2;
pub const EXIT_USERS: u32 = 3;
pub const EXIT_RUNTIME: u32 = 4;

/// Loads the config, binds every listener, reports READY, then serves until
/// the host asks to stop. Errors before READY are returned, not logged.
/// (The Windows service's entry; Unix uses [`serve_with`].)
#[cfg(windows)]
pub async fn serve<H: ServiceHost>(opts: Options, host: &mut H) -> Result<(), StartError> {
    serve_with(opts, Vec::new(), host).await
}

/// [`serve`], with the listening sockets the service manager passed
/// (socket activation): a service whose address matches one (or whose name
/// is one's name) uses it instead of binding its own. A passed socket that
/// matches no service is an error.
pub async fn serve_with<H: ServiceHost>(
    opts: Options,
    passed: Vec<(socket2::Socket, String)>,
    host: &mut H,
) -> Result<(), StartError> {
    let config = config::load_as(&opts.cfgfile, opts.format).map_err(|e| StartError {
        code: EXIT_CONFIG,
        message: e.to_string(),
    })?;
    let inherited = Inherited::new(passed).map_err(|message| StartError {
        code: EXIT_BIND,
        message,
    })?;
    let exits = os::Exits::new().map_err(|e| StartError {
        code: EXIT_RUNTIME,
        message: format!("cannot watch child processes: {e}"),
    })?;
    let mut server = Server::new(opts, &config, inherited);
    server
        .apply(config)
        .await
        .map_err(|(code, message)| StartError { code, message })?;
    server.ctx.daemon.applied(false);
    tokio::spawn(reap(Arc::clone(&server.ctx), exits));
    let (reload_tx, mut reload_rx) = mpsc::channel::<control::ReloadRequest>(4);
    // Aborted at stop, which drops the listener and removes its socket.
    let control_task = control::listen()
        .map(|l| tokio::spawn(control::serve(l, Arc::clone(&server.ctx), reload_tx)));
    info!(
        "wininetd {} serving {} service(s) from {}",
        env!("CARGO_PKG_VERSION"),
        server.gates.len(),
        server.opts.cfgfile.display()
    );
    host.status(HostStatus::Ready);
    loop {
        let (control, asked) = tokio::select! {
            c = host.next() => (c, None),
            Some(answer) = reload_rx.recv() => (Control::Reload, Some(answer)),
        };
        match control {
            Control::Reload => {
                host.status(HostStatus::Reloading);
                let ok = server.reload().await;
                if ok {
                    server.ctx.daemon.applied(true);
                } else {
                    server.ctx.daemon.reload_failed();
                }
                if let Some(answer) = asked {
                    let _ = answer.send(ok);
                }
                host.status(HostStatus::Ready);
            }
            Control::Stop => {
                host.status(HostStatus::Stopping);
                if let Some(task) = control_task {
                    task.abort();
                    let _ = task.await;
                }
                server.stop().await;
                return Ok(());
            }
        }
    }
}

/// Identifies a listening socket across reloads.
type Key = (Protocol, SocketAddr);

/// A service as it is served now: the config plus what follows from it.
#[derive(Debug)]
struct Active {
    svc: Service,
    gate: Arc<Gate>,
    handoff: Handoff,
    timeout: Option<Duration>,
    linger: Option<Duration>,
    /// Per-source reply buckets and drop counts (UDP internal services).
    udp_guard: Arc<UdpGuard>,
    /// Every UDP port of the served config, sorted: no client sends from
    /// one of them.
    udp_ports: Arc<[u16]>,
    /// What is fixed for starting its program (`None`: an internal service).
    exec: Option<os::ExecTemplate>,
    /// `[service.tls]`, built from its files when the config was applied.
    tls: Option<Arc<crate::tls::Terminator>>,
    /// Its connections waiting in the pre-spawn stage.
    waiting: Arc<prespawn::Waiting>,
}

struct Listening {
    active: watch::Sender<Arc<Active>>,
    task: JoinHandle<()>,
}

/// What every listener and the reaper share.
struct Ctx {
    global: Arc<Global>,
    children: Mutex<Children>,
    refusals: Mutex<RefusalLog>,
    /// Dropped datagrams, logged as refusals are: a line per window.
    udp_drops: Mutex<RefusalLog<Dropped>>,
    /// What widened relay pipes may hold, all sessions together.
    pipe_budget: Arc<PipeBudget>,
    /// Connections waiting in the pre-spawn stage, all services together.
    waiting: Arc<prespawn::Waiting>,
    /// The served services, in config order, for scrapes and `status`.
    served: Mutex<Arc<[Served]>>,
    /// Reloads and other daemon-wide counts.
    daemon: DaemonStats,
}

/// A served service as a scrape sees it.
struct Served {
    gate: Arc<Gate>,
    protocol: Protocol,
    addrs: Vec<SocketAddr>,
    /// `max_instances`, if any.
    limit: Option<u32>,
    /// A UDP internal service's guard (its drop counts).
    udp_guard: Option<Arc<UdpGuard>>,
}

impl Ctx {
    fn children(&self) -> MutexGuard<'_, Children> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Server {
    opts: Options,
    ctx: Arc<Ctx>,
    listeners: HashMap<Key, Listening>,
    /// The served services' counters, by name.
    gates: HashMap<String, Arc<Gate>>,
    /// The served services' datagram guards, by name.
    udp_guards: HashMap<String, Arc<UdpGuard>>,
    /// Sockets from the service manager, used before binding our own.
    inherited: Inherited,
}

impl Server {
    fn new(opts: Options, first: &Config, inherited: Inherited) -> Server {
        let max = first.globals.max_connections;
        Server {
            opts,
            ctx: Arc::new(Ctx {
                global: Global::new(max),
                children: Mutex::new(Children::with_capacity(max.min(65_536) as usize)),
                refusals: Mutex::new(RefusalLog::default()),
                udp_drops: Mutex::new(RefusalLog::default()),
                pipe_budget: PipeBudget::new(first.globals.pipe_budget),
                waiting: prespawn::Waiting::new(max),
                served: Mutex::new(Arc::new([])),
                daemon: DaemonStats::default(),
            }),
            listeners: HashMap::new(),
            gates: HashMap::new(),
            udp_guards: HashMap::new(),
            inherited,
        }
    }

    /// Stops listening. Running programs are left to finish, as inetd does,
    /// unless `--kill-on-stop` was given: then they get SIGTERM, and what is
    /// still running after [`KILL_GRACE`] is killed.
    async fn stop(&mut self) {
        for (_, l) in self.listeners.drain() {
            l.task.abort();
        }
        // Sessions wininetd carries itself (internal services, a TLS
        // handshake before its program starts) get a moment to finish: a
        // client accepted just before the stop still gets its answer, so a
        // restart under socket activation refuses nothing. Every other
        // lease is a running program's. (A PROXY header still awaited
        // holds no lease yet: that connection closes, the client unserved.)
        let deadline = Instant::now() + SESSION_GRACE;
        while self.ctx.global.live() as usize > self.ctx.children().len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.opts.kill_on_stop {
            info!(
                "stopped; {} program(s) left running",
                self.ctx.children().len()
            );
            return;
        }
        let ids: Vec<os::ChildId> = self.ctx.children().ids().collect();
        for &id in &ids {
            os::terminate(id);
        }
        // The reaper takes them out of the table as they end.
        let deadline = Instant::now() + KILL_GRACE;
        while self.ctx.children().len() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<os::ChildId> = self.ctx.children().ids().collect();
        for &id in &left {
            os::kill(id);
        }
        if left.is_empty() {
            info!("stopped; ended {} running program(s)", ids.len());
        } else {
            warn!(
                "stopped; ended {} running program(s), {} killed after ignoring SIGTERM for {} s",
                ids.len(),
                left.len(),
                KILL_GRACE.as_secs()
            );
        }
    }
}

/// How long a stop waits for the sessions wininetd carries itself.
const SESSION_GRACE: Duration = Duration::from_secs(1);

/// How long `--kill-on-stop` waits for programs to end after SIGTERM.
const KILL_GRACE: Duration = Duration::from_secs(5);

fn seconds(s: Option<u32>) -> Option<Duration> {
    s.filter(|&n| n > 0).map(|n| Duration::from_secs(n.into()))
}

/// Runs `work` on a thread of its own and waits for it without blocking
/// the loop; here, if no thread can be had (out of processes), where
/// tokio's `spawn_blocking` would panic and end the daemon. `None`: the
/// work panicked.
async fn off_loop<T, F>(work: F) -> Option<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Some(work)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("lookup".into())
        .spawn(move || {
            let work = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(work) = work {
                let _ = tx.send(work());
            }
        });
    match spawned {
        Ok(_) => rx.await.ok(),
        Err(e) => {
            warn!("no thread for a lookup ({e}): done on the main loop");
            let work = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            work.map(|w| w())
        }
    }
}

/// Counts a refused connection under its outcome and logs it as [`refused`] does.
fn refused_connection(ctx: &Ctx, active: &Active, ip: IpAddr, why: Refusal) {
    refused_because(ctx, active, ip, why, None);
}

/// Logs a refusal, at most once per service and source per few seconds,
/// and one summary per window for sources beyond the log's table. Not
/// counted as a connection: a refused datagram is counted as a datagram.
fn refused(ctx: &Ctx, active: &Active, ip: IpAddr, why: Refusal) {
    log_refusal(ctx, active, ip, why, None);
}

/// [`refused_connection`], with what went wrong in detail (a PROXY parse
/// error, a TLS alert) for the line that names this source.
fn refused_because(
    ctx: &Ctx,
    active: &Active,
    ip: IpAddr,
    why: Refusal,
    detail: Option<&dyn std::fmt::Display>,
) {
    active.gate.stats().connection(why.into());
    log_refusal(ctx, active, ip, why, detail);
}

fn log_refusal(
    ctx: &Ctx,
    active: &Active,
    ip: IpAddr,
    why: Refusal,
    detail: Option<&dyn std::fmt::Display>,
) {
    let this = ctx.global.source(ip);
    let mut log = ctx.refusals.lock().unwrap_or_else(|p| p.into_inner());
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
            } if source == this && detail.is_some() => {
                let detail = detail.map_or(String::new(), |d| d.to_string());
                warn!(%service, %source, refused = count, "refused: {why}: {detail}")
            }
            RefusalLine::Source {
                service,
                source,
                why,
                count,
            } => warn!(%service, %source, refused = count, "refused: {why}"),
            RefusalLine::Others { refused, sources } => {
                warn!("refused {refused} connections from {sources} other sources")
            }
        },
    );
}

/// How long after a crowd's end its memory is given back (see
/// [`Children::shrink_after_crowd`]).
const TRIM_DELAY: Duration = Duration::from_secs(1);

/// Logs each program's end and gives its slot back.
async fn reap(ctx: Arc<Ctx>, mut exits: os::Exits) {
    loop {
        let (id, result) = exits.next().await;
        let how = match &result {
            Ok(status) if status.success() => Ended::Succeeded,
            Ok(_) => Ended::Failed,
            Err(_) => Ended::NotStarted,
        };
        let status = result.as_ref().ok().copied();
        let (record, shrunk) = {
            let mut children = ctx.children();
            let record = children.remove(id, how, status);
            (record, children.shrink_after_crowd())
        };
        if shrunk {
            // Their relays and TLS sessions end just after them: trim once
            // those are freed too.
            tokio::spawn(async {
                tokio::time::sleep(TRIM_DELAY).await;
                os::release_free_memory();
            });
        }
        let Some(record) = record else {
            continue;
        };
        let (service, peer) = (record.lease.service(), record.peer());
        let stats = record.lease.stats();
        match &result {
            Ok(status) => {
                stats.exit(ProgramExit::of(status));
                stats.session_ended(record.started.elapsed());
            }
            Err(e) => {
                stats.exit(ProgramExit::NotStarted);
                stats.error(format!("cannot start the program: {e}"));
            }
        }
        match result {
            Ok(_) if record.end_logged_elsewhere => {}
            Ok(status) => crate::logging::connection_ended(&crate::logging::Ended {
                service,
                peer,
                via: record.via.as_deref().copied(),
                pid: id,
                status: Some(&status),
                duration: record.started.elapsed(),
                bytes: None,
            }),
            Err(e) => error!(%service, %peer, pid = id, "cannot start the program: {e}"),
        }
    }
}
