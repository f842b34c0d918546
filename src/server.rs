//! The core loop: **accept** a connection, **check** it against the
//! service's rules, **hand it off** to a program (or an internal service),
//! and **reap** the program when it ends. Reload and stop come from the
//! service host. Nothing here is specific to Unix or Windows: launching a
//! program and talking to the service manager go through [`crate::os`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admission::{Gate, Global, Lease, Refusal, RefusalLog};
use crate::children::{Children, Ended, Record};
use crate::config::{self, Config, Handoff, Program, Protocol, RunAs, Secret, Service};
use crate::listener::{self, Acceptor, Bound};
use crate::os::{self, ChildStdio, Control, HostStatus, LaunchSpec, ServiceHost};
use crate::{internal, relay};

/// Settings from the command line, which win over the config's globals.
#[derive(Debug, Clone)]
pub struct Options {
    pub cfgfile: PathBuf,
    pub timeout: Option<u32>,
    pub linger_timeout: Option<u32>,
    pub handoff: Option<Handoff>,
    pub kill_on_stop: bool,
}

impl From<&crate::cli::Cli> for Options {
    fn from(c: &crate::cli::Cli) -> Options {
        Options {
            cfgfile: c.cfgfile.clone(),
            timeout: c.timeout,
            linger_timeout: c.linger_timeout,
            handoff: c.handoff,
            kill_on_stop: c.kill_on_stop,
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
pub async fn serve<H: ServiceHost>(opts: Options, host: &mut H) -> Result<(), StartError> {
    let config = config::load(&opts.cfgfile).map_err(|e| StartError {
        code: EXIT_CONFIG,
        message: e.to_string(),
    })?;
    let exits = os::Exits::new().map_err(|e| StartError {
        code: EXIT_RUNTIME,
        message: format!("cannot watch child processes: {e}"),
    })?;
    let mut server = Server::new(opts, &config);
    server
        .apply(config)
        .await
        .map_err(|(code, message)| StartError { code, message })?;
    tokio::spawn(reap(Arc::clone(&server.ctx), exits));
    info!(
        "wininetd {} serving {} service(s) from {}",
        env!("CARGO_PKG_VERSION"),
        server.gates.len(),
        server.opts.cfgfile.display()
    );
    host.status(HostStatus::Ready);
    loop {
        match host.next().await {
            Control::Reload => {
                host.status(HostStatus::Reloading);
                server.reload().await;
                host.status(HostStatus::Ready);
            }
            Control::Stop => {
                host.status(HostStatus::Stopping);
                server.stop();
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
}

impl Server {
    fn new(opts: Options, first: &Config) -> Server {
        let max = first.globals.max_connections;
        Server {
            opts,
            ctx: Arc::new(Ctx {
                global: Global::new(max),
                children: Mutex::new(Children::with_capacity(max.min(65_536) as usize)),
                refusals: Mutex::new(RefusalLog::default()),
            }),
            listeners: HashMap::new(),
            gates: HashMap::new(),
        }
    }

    /// SIGHUP / PARAMCHANGE: a config with any error is rejected whole and
    /// the running one stays; otherwise it is applied without closing any
    /// listener whose (protocol, address, port) is unchanged.
    async fn reload(&mut self) {
        info!("reloading {}", self.opts.cfgfile.display());
        match config::load(&self.opts.cfgfile) {
            Err(errors) => {
                for e in &errors.0 {
                    error!("{e}");
                }
                error!(
                    "reload rejected: {} error(s) in {}; still serving the previous config",
                    errors.0.len(),
                    self.opts.cfgfile.display()
                );
            }
            Ok(config) => match self.apply(config).await {
                Ok(()) => info!("reloaded: serving {} service(s)", self.gates.len()),
                Err((_, message)) => {
                    error!("{message}");
                    error!("reload rejected; still serving the previous config");
                }
            },
        }
    }

    /// Makes `config` the served one. On error nothing has changed.
    async fn apply(&mut self, config: Config) -> Result<(), (u32, String)> {
        let users = config.services.iter().filter_map(|s| match &s.user {
            RunAs::User { name, .. } => Some(name.as_str()),
            RunAs::Daemon => None,
        });
        os::check_users(users).map_err(|m| (EXIT_USERS, m))?;
        warn_ignored_passwords(&config);

        // What should listen, and with which settings.
        let mut gates = HashMap::new();
        let mut wanted: HashMap<Key, Arc<Active>> = HashMap::new();
        // Kept services' new rules, applied only once nothing can fail.
        let mut rule_updates = Vec::new();
        for svc in config.services {
            let gate = match self.gates.get(&svc.name) {
                Some(g) => {
                    rule_updates.push((Arc::clone(g), svc.access.clone(), svc.limits.clone()));
                    Arc::clone(g)
                }
                None => Gate::new(
                    &svc.name,
                    Arc::clone(&self.ctx.global),
                    svc.access.clone(),
                    svc.limits.clone(),
                ),
            };
            gates.insert(svc.name.clone(), Arc::clone(&gate));
            let active = Arc::new(Active {
                handoff: svc
                    .handoff
                    .or(self.opts.handoff)
                    .unwrap_or_else(Handoff::platform_default),
                timeout: seconds(svc.timeout.or(self.opts.timeout).or(config.globals.timeout)),
                linger: seconds(self.opts.linger_timeout.or(config.globals.linger_timeout)),
                gate,
                svc,
            });
            for addr in active.svc.addrs() {
                wanted.insert((active.svc.protocol, addr), Arc::clone(&active));
            }
        }

        // Bind what is new before touching what runs, so a failure changes
        // nothing. A port held by a listener this config drops is retried
        // once that listener is closed.
        let mut bound = Vec::new();
        let mut deferred = Vec::new();
        for (key, active) in &wanted {
            if self.listeners.contains_key(key) {
                continue;
            }
            match listener::bind(key.0, key.1) {
                Ok(b) => bound.push((*key, b)),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && self.listeners.keys().any(|k| {
                            k.0 == key.0 && k.1.port() == key.1.port() && !wanted.contains_key(k)
                        }) =>
                {
                    deferred.push(*key)
                }
                Err(e) => return Err((EXIT_BIND, bind_error(key, active, &e))),
            }
        }

        // Commit: stop listeners no longer wanted, retry the deferred ones.
        let removed: Vec<Key> = self
            .listeners
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        let mut dropped = Vec::new();
        for key in removed {
            if let Some(Listening { active, mut task }) = self.listeners.remove(&key) {
                task.abort();
                // The socket closes when the task is gone: wait for that,
                // so the port is free for a listener of this config.
                let _ = (&mut task).await;
                dropped.push((key, active));
            }
        }
        for key in deferred {
            match listener::bind(key.0, key.1) {
                Ok(b) => bound.push((key, b)),
                Err(e) => {
                    // Roll back: the old listeners come back, the new go.
                    let message = bind_error(&key, &wanted[&key], &e);
                    drop(bound);
                    for (k, sender) in dropped {
                        let active = sender.borrow().clone();
                        if let Ok(b) = listener::bind(k.0, k.1) {
                            self.start_listener(k, b, active);
                        } else {
                            error!("could not restore the listener on {} {}", k.0, k.1);
                        }
                    }
                    return Err((EXIT_BIND, message));
                }
            }
        }
        // Past the last failure: from here on the new config is served, and
        // its lines (the first "listening on" included) are in its format.
        crate::logging::set_format(config.globals.log_format);
        for (gate, access, limits) in rule_updates {
            gate.update(access, limits);
        }
        for (key, listening) in &self.listeners {
            if let Some(active) = wanted.get(key) {
                listening.active.send_replace(Arc::clone(active));
            }
        }
        for (key, b) in bound {
            let active = Arc::clone(&wanted[&key]);
            self.start_listener(key, b, active);
        }
        self.ctx.global.set_max(config.globals.max_connections);
        self.gates = gates;
        Ok(())
    }

    fn start_listener(&mut self, key: Key, bound: Bound, active: Arc<Active>) {
        let (tx, rx) = watch::channel(active);
        let ctx = Arc::clone(&self.ctx);
        let task = match bound {
            Bound::Tcp(l) => tokio::spawn(accept_tcp(l, rx, ctx)),
            Bound::Udp(s) => tokio::spawn(serve_udp(s, rx, ctx)),
        };
        info!("listening on {} {}", key.0, key.1);
        self.listeners.insert(key, Listening { active: tx, task });
    }

    /// Stops listening. Running programs are left to finish, as inetd does,
    /// unless `--kill-on-stop` was given.
    fn stop(&mut self) {
        for (_, l) in self.listeners.drain() {
            l.task.abort();
        }
        let children = self.ctx.children();
        if self.opts.kill_on_stop {
            for id in children.ids() {
                os::terminate(id);
            }
            info!("stopped; ended {} running program(s)", children.len());
        } else {
            info!("stopped; {} program(s) left running", children.len());
        }
    }
}

fn seconds(s: Option<u32>) -> Option<Duration> {
    s.filter(|&n| n > 0).map(|n| Duration::from_secs(n.into()))
}

fn bind_error(key: &Key, active: &Active, e: &std::io::Error) -> String {
    format!(
        "cannot listen on {} {} (service {}, {}): {e}",
        key.0, key.1, active.svc.name, active.svc.origin
    )
}

/// Unix has no use for a password in the config; say so once per load,
/// naming the services but never the password.
fn warn_ignored_passwords(config: &Config) {
    if cfg!(windows) {
        return;
    }
    let names: Vec<&str> = config
        .services
        .iter()
        .filter(|s| {
            matches!(
                &s.user,
                RunAs::User {
                    secret: Some(Secret::Inline(_)),
                    ..
                }
            )
        })
        .map(|s| s.name.as_str())
        .collect();
    if !names.is_empty() {
        warn!(
            "passwords are ignored on Unix (services {}); programs run as the named user without one",
            names.join(", ")
        );
    }
}

/// Connections accepted back to back before the runtime polls its
/// drivers (signals, timers) again.
const ACCEPT_BATCH: u32 = 8;

/// accept → check → hand off, for one TCP listener.
async fn accept_tcp(listener: Acceptor, active: watch::Receiver<Arc<Active>>, ctx: Arc<Ctx>) {
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
            Program::Command(_) => hand_off_tcp(&ctx, &active, stream, peer, lease),
        }
    }
}

/// Starts the service's program on an accepted connection.
fn hand_off_tcp(
    ctx: &Arc<Ctx>,
    active: &Active,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    lease: Lease,
) {
    let svc = &active.svc;
    let local = stream.local_addr().ok();
    let env = connection_env(svc, Protocol::Tcp, Some(peer), local);
    if active.handoff == Handoff::Direct {
        let sock = socket2::Socket::from(stream);
        if let Err(e) = direct_socket_options(&sock, active) {
            warn!(service = %svc.name, %peer, "cannot set socket options: {e}");
        }
        // Our copy of the socket closes when `launch` returns.
        launch(ctx, active, &env, ChildStdio::Socket(sock), peer, lease);
        return;
    }
    let Some(launched) = launch(ctx, active, &env, ChildStdio::Pipes, peer, lease) else {
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

/// A connection wininetd serves itself (relay, internal service).
fn into_tokio(stream: std::net::TcpStream) -> std::io::Result<TcpStream> {
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

/// Launches the program and records it for the reaper; logs either way.
fn launch(
    ctx: &Arc<Ctx>,
    active: &Active,
    env: &[(String, String)],
    stdio: ChildStdio,
    peer: SocketAddr,
    lease: Lease,
) -> Option<os::Launched> {
    let svc = &active.svc;
    let Program::Command(command) = &svc.program else {
        return None;
    };
    let spec = LaunchSpec {
        service: &svc.name,
        command,
        env,
        working_directory: svc.working_directory.as_deref(),
        user: &svc.user,
        stderr: svc.stderr,
    };
    match os::launch(&spec, stdio) {
        Ok(mut launched) => {
            info!(service = %svc.name, port = svc.port, %peer, pid = launched.id, "started");
            if let Some(stderr) = launched.stderr.take() {
                tokio::spawn(log_stderr(svc.name.clone(), launched.id, stderr));
            }
            ctx.children().insert(
                launched.id,
                Record {
                    lease,
                    started: launched.started,
                    peer_port: peer.port(),
                },
            );
            Some(launched)
        }
        Err(e) => {
            error!(service = %svc.name, %peer, "{e}");
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
/// The variables a program gets on top of the daemon's environment: the
/// service's `env`, then WinInetd's CLIENT_IP/CLIENT_PORT, the UCSPI
/// (tcpserver) names and systemd's REMOTE_ADDR/REMOTE_PORT.
fn connection_env(
    svc: &Service,
    protocol: Protocol,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
) -> Vec<(String, String)> {
    let mut env = svc.env.clone();
    env.push((
        "PROTO".into(),
        match protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
        .into(),
    ));
    if let Some(p) = peer {
        let ip = config::canonical_ip(p.ip()).to_string();
        let port = p.port().to_string();
        env.push(("CLIENT_IP".into(), ip.clone()));
        env.push(("CLIENT_PORT".into(), port.clone()));
        env.push(("REMOTE_ADDR".into(), ip.clone()));
        env.push(("REMOTE_PORT".into(), port.clone()));
        if protocol == Protocol::Tcp {
            env.push(("TCPREMOTEIP".into(), ip));
            env.push(("TCPREMOTEPORT".into(), port));
        }
    }
    if let (Some(l), Protocol::Tcp) = (local, protocol) {
        env.push((
            "TCPLOCALIP".into(),
            config::canonical_ip(l.ip()).to_string(),
        ));
        env.push(("TCPLOCALPORT".into(), l.port().to_string()));
    }
    env
}

/// Logs a refusal, at most once per service and source per few seconds.
fn refused(ctx: &Ctx, active: &Active, ip: IpAddr, why: Refusal) {
    let count = ctx.refusals.lock().unwrap_or_else(|p| p.into_inner()).note(
        active.gate.name(),
        ip,
        Instant::now(),
    );
    if let Some(n) = count {
        warn!(service = %active.svc.name, source = %ip, refused = n, "refused: {why}");
    }
}

/// A UDP listener: internal services answer each datagram; a `wait`
/// service gets the socket itself while its program runs, as inetd does.
async fn serve_udp(sock: UdpSocket, active: watch::Receiver<Arc<Active>>, ctx: Arc<Ctx>) {
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
    let launched = launch(ctx, active, &env, ChildStdio::Socket(dup), peer, lease);
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

/// Logs each program's end and gives its slot back.
async fn reap(ctx: Arc<Ctx>, mut exits: os::Exits) {
    loop {
        let (id, result) = exits.next().await;
        let how = match &result {
            Ok(status) if status.success() => Ended::Succeeded,
            Ok(_) => Ended::Failed,
            Err(_) => Ended::NotStarted,
        };
        let Some(record) = ctx.children().remove(id, how) else {
            continue;
        };
        let (service, peer) = (record.lease.service(), record.peer());
        match result {
            Ok(status) => info!(
                %service,
                %peer,
                pid = id,
                %status,
                duration = %format_args!("{:.3}s", record.started.elapsed().as_secs_f64()),
                "ended"
            ),
            Err(e) => error!(%service, %peer, pid = id, "cannot start the program: {e}"),
        }
    }
}
