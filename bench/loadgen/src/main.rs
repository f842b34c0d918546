//! loadgen: the load generator of the wininetd benchmark (bench/run.sh).
//!
//! Every mode is bounded in count and in wall time, and every network mode
//! refuses a target that is not loopback (127.0.0.0/8 or ::1). A human
//! summary goes to stderr and one JSON object per run to stdout.
//! Exit status: 0 all good, 1 the measurement saw failures, 2 bad usage or
//! setup error, 3 the wall-time watchdog fired.

mod hold;
mod pattern;
mod procfs;
mod rate;
mod report;
mod server;
mod slowloris;
mod spawn;
mod stats;
mod stream;
mod target;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

/// Extra seconds the watchdog grants past a mode's own time limit.
const WATCHDOG_GRACE_S: u64 = 30;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Loopback-only load generator for the wininetd benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Labels copied into the JSON line, for the report.
#[derive(Args, Clone)]
struct Tags {
    /// Name of the server under test (e.g. xinetd).
    #[arg(long)]
    server: Option<String>,
    /// Round number of an interleaved run.
    #[arg(long)]
    round: Option<u64>,
    /// Scenario name; defaults to the mode.
    #[arg(long)]
    scenario: Option<String>,
}

/// The super-server process to watch while the scenario runs.
#[derive(Args, Clone, Copy)]
struct Watch {
    /// PID of the super-server: its own CPU time and VmRSS are read around the run.
    #[arg(long)]
    server_pid: Option<i32>,
    /// Milliseconds to wait after the run before the closing reading
    /// (lets the server reap its children).
    #[arg(long, default_value_t = 200, value_parser = RangedU64ValueParser::<u64>::new().range(0..=10_000))]
    settle_ms: u64,
}

impl Watch {
    fn probe(&self) -> server::ServerProbe {
        server::ServerProbe {
            pid: self.server_pid,
            settle: Duration::from_millis(self.settle_ms),
        }
    }
}

/// TLS 1.3 over each connection (rustls, a full handshake every time).
#[derive(Args, Clone)]
struct TlsArgs {
    /// Speak TLS, trusting the CA certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// The server name sent (SNI) and verified.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
}

impl TlsArgs {
    fn load(&self) -> Result<Option<tls::Tls>, String> {
        self.tls_ca
            .as_deref()
            .map(|ca| tls::Tls::load(ca, &self.tls_name))
            .transpose()
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// N short connections, C at a time: send a payload, half-close, verify
    /// the echo byte for byte and the EOF after it.
    Rate {
        #[arg(long, value_parser = target::parse_loopback_target)]
        target: SocketAddr,
        /// Number of connections.
        #[arg(short = 'n', long = "connections", default_value_t = 5000,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
        n: usize,
        /// Connections in flight at once.
        #[arg(short = 'c', long, default_value_t = 16,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
        concurrency: usize,
        #[arg(long, default_value_t = 64,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=16 << 20))]
        payload_size: usize,
        /// Seconds one connection may take before it counts as failed.
        #[arg(long, default_value_t = 10, value_parser = RangedU64ValueParser::<u64>::new().range(1..=600))]
        conn_timeout: u64,
        /// Stop starting connections after this many seconds.
        #[arg(long, default_value_t = 120, value_parser = RangedU64ValueParser::<u64>::new().range(1..=3600))]
        max_seconds: u64,
        /// Tokio worker threads; 1 = current-thread runtime.
        #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=64))]
        threads: usize,
        /// Send a PROXY protocol v2 header before the payload, as a load
        /// balancer would (for a service with `proxy_protocol`).
        #[arg(long)]
        proxy_v2: bool,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        watch: Watch,
        #[command(flatten)]
        tags: Tags,
    },
    /// One connection: send N pattern bytes while reading the echo, half-close,
    /// verify the echo and the EOF; report MB/s.
    Stream {
        #[arg(long, value_parser = target::parse_loopback_target)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1 << 30,
              value_parser = RangedU64ValueParser::<u64>::new().range(1..=64 << 30))]
        bytes: u64,
        /// Size of each write and read.
        #[arg(long, default_value_t = 256 << 10,
              value_parser = RangedU64ValueParser::<usize>::new().range(1024..=16 << 20))]
        chunk: usize,
        /// Seconds a single read or write may block.
        #[arg(long, default_value_t = 30, value_parser = RangedU64ValueParser::<u64>::new().range(1..=600))]
        io_timeout: u64,
        #[arg(long, default_value_t = 300, value_parser = RangedU64ValueParser::<u64>::new().range(1..=3600))]
        max_seconds: u64,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        watch: Watch,
        #[command(flatten)]
        tags: Tags,
    },
    /// Open N connections (one byte echoed on each), signal readiness, hold
    /// them until stdin closes or the hold time passes, then close them all.
    Hold {
        #[arg(long, value_parser = target::parse_loopback_target)]
        target: SocketAddr,
        #[arg(short = 'n', long = "connections", default_value_t = 1000,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=50_000))]
        n: usize,
        /// Connections being opened at once.
        #[arg(long, default_value_t = 16,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
        connect_concurrency: usize,
        /// Seconds to hold the connections once all are open.
        #[arg(long, default_value_t = 5, value_parser = RangedU64ValueParser::<u64>::new().range(0..=3600))]
        seconds: u64,
        /// Hold for the full time; do not stop when stdin closes.
        #[arg(long)]
        ignore_stdin: bool,
        /// File written (with the number held) once all connections are open.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        #[arg(long, default_value_t = 10, value_parser = RangedU64ValueParser::<u64>::new().range(1..=600))]
        conn_timeout: u64,
        #[arg(long, default_value_t = 600, value_parser = RangedU64ValueParser::<u64>::new().range(1..=3600))]
        max_seconds: u64,
        #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=64))]
        threads: usize,
        /// Connections served one after another (one byte echoed, then
        /// closed) before VmRSS is first read, so first-use costs (code
        /// faulted in, allocator arenas) do not count as per-connection growth
        #[arg(long, default_value_t = 0, value_parser = RangedU64ValueParser::<usize>::new().range(0..=1000))]
        warmup: usize,
        /// Connect from 127.0.0.1 … 127.0.0.N in turn (IPv4 targets), so
        /// that more connections than one address has ports can be held
        #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<u8>::new().range(1..=250))]
        sources: u8,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        watch: Watch,
        #[command(flatten)]
        tags: Tags,
    },
    /// Spawn-and-reap loop of a program (/bin/cat) with C outstanding: the
    /// machine's ceiling for a process per connection.
    SpawnCeiling {
        #[arg(short = 'n', long = "spawns", default_value_t = 5000,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
        n: usize,
        #[arg(short = 'c', long, default_value_t = 16,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
        concurrency: usize,
        /// Bytes written to and read back from each child (kept below a pipe buffer).
        #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(0..=4096))]
        payload_size: usize,
        #[arg(long, default_value = "/bin/cat")]
        program: PathBuf,
        /// Use fork+exec, as xinetd, openbsd-inetd and tcpserver do, instead
        /// of posix_spawn (the cheaper default, the machine's best).
        #[arg(long)]
        fork: bool,
        /// One event-loop thread (tokio, current-thread) spawns and waits for
        /// all children, as an async server would, instead of one blocking
        /// OS thread per outstanding child (the default).
        #[arg(long)]
        event_loop: bool,
        #[arg(long, default_value_t = 120, value_parser = RangedU64ValueParser::<u64>::new().range(1..=3600))]
        max_seconds: u64,
        #[command(flatten)]
        tags: Tags,
    },
    /// Markdown table (medians, min–max, ratios) from the JSON lines of a run.
    Report {
        /// File of JSON lines written by the other modes.
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value = "wininetd")]
        subject: String,
        #[arg(
            long,
            default_value = "xinetd,openbsd-inetd,tcpserver",
            value_delimiter = ','
        )]
        peers: Vec<String>,
        /// Leave out the target and met columns (a smoke run or a debug
        /// build, which the targets are not about).
        #[arg(long)]
        no_targets: bool,
    },
    /// Wait until something listens on a TCP port (read from /proc/net/tcp*,
    /// no connection is made). Exit 1 on timeout or when --pid dies.
    WaitListen {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 10_000, value_parser = RangedU64ValueParser::<u64>::new().range(1..=600_000))]
        timeout_ms: u64,
        #[arg(long)]
        pid: Option<i32>,
    },
    /// Print N distinct TCP ports that are free right now (bound and released).
    FreePorts {
        #[arg(short = 'n', default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=64))]
        n: usize,
    },
    /// N full TLS 1.3 handshakes between a rustls client and server in
    /// memory: the server's CPU per handshake, the floor of a TLS server.
    TlsHandshake {
        #[arg(long, value_name = "PEM")]
        cert: PathBuf,
        #[arg(long, value_name = "PEM")]
        key: PathBuf,
        /// The CA that signed `cert` (the client verifies it, for localhost).
        #[arg(long, value_name = "PEM")]
        ca: PathBuf,
        #[arg(short = 'n', long, default_value_t = 2000,
              value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
        n: usize,
        #[command(flatten)]
        tags: Tags,
    },
    /// Slowloris attackers (bench/slowloris.sh): N connections, half to a
    /// PROXY service, half to a TLS one, each sending its opening one byte
    /// a second. On SIGTERM, SIGINT or --max-seconds, a JSON summary of how
    /// the server ended them goes to --summary. Loopback only.
    Slowloris {
        #[arg(long)]
        proxy_port: u16,
        #[arg(long)]
        tls_port: u16,
        #[arg(long, default_value_t = 5000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=20_000))]
        connections: usize,
        /// Connects per second.
        #[arg(long, default_value_t = 2500, value_parser = RangedU64ValueParser::<u32>::new().range(1..=100_000))]
        open_rate: u32,
        /// A connection the server closed is opened again a second later.
        #[arg(long)]
        reconnect: bool,
        #[arg(long, default_value_t = 300, value_parser = RangedU64ValueParser::<u64>::new().range(1..=3600))]
        max_seconds: u64,
        /// Written once every connection was opened.
        #[arg(long)]
        ready: PathBuf,
        #[arg(long)]
        summary: PathBuf,
    },
    /// A plain echo server (tokio, no process per connection), to measure the
    /// generator's own ceiling. Loopback only; stops after --max-seconds.
    EchoServer {
        #[arg(long, value_parser = target::parse_loopback_target)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 60, value_parser = RangedU64ValueParser::<u64>::new().range(1..=3600))]
        max_seconds: u64,
        #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=64))]
        threads: usize,
    },
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Hard stop if a mode overruns its own limit (e.g. a blocking call that
/// never returns): the process exits with status 3.
fn start_watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("loadgen: watchdog: still running after {limit:?}; giving up");
        std::process::exit(3);
    });
}

/// Raises the soft open-files limit to the hard one: `hold` needs a
/// descriptor per held connection.
fn raise_nofile_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn emit(mode: &str, tags: &Tags, fields: Map<String, Value>, human: &str, ok: bool) -> ExitCode {
    let mut obj = Map::new();
    obj.insert("mode".into(), json!(mode));
    obj.insert(
        "scenario".into(),
        json!(tags.scenario.clone().unwrap_or_else(|| mode.to_string())),
    );
    if let Some(s) = &tags.server {
        obj.insert("server".into(), json!(s));
    }
    if let Some(r) = tags.round {
        obj.insert("round".into(), json!(r));
    }
    obj.extend(fields);
    obj.insert("ok".into(), json!(ok));
    eprintln!("{human}");
    println!("{}", Value::Object(obj));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn setup_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("loadgen: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_nofile_limit();
    match cli.cmd {
        Cmd::Rate {
            target,
            n,
            concurrency,
            payload_size,
            conn_timeout,
            max_seconds,
            threads,
            proxy_v2,
            tls,
            watch,
            tags,
        } => {
            start_watchdog(Duration::from_secs(
                max_seconds + conn_timeout + WATCHDOG_GRACE_S,
            ));
            let rt = match runtime(threads) {
                Ok(rt) => rt,
                Err(e) => return setup_error(format!("tokio runtime: {e}")),
            };
            let opts = rate::RateOpts {
                target,
                n,
                concurrency,
                payload_size,
                conn_timeout: Duration::from_secs(conn_timeout),
                max_time: Duration::from_secs(max_seconds),
                proxy_v2,
                tls: match tls.load() {
                    Ok(t) => t,
                    Err(e) => return setup_error(e),
                },
            };
            let probe = watch.probe();
            let (mut m, human, ok) = rt.block_on(rate::run(opts, probe));
            m.insert("threads".into(), json!(threads));
            m.insert("proxy_v2".into(), json!(proxy_v2));
            emit("rate", &tags, m, &human, ok)
        }
        Cmd::Stream {
            target,
            bytes,
            chunk,
            io_timeout,
            max_seconds,
            tls,
            watch,
            tags,
        } => {
            start_watchdog(Duration::from_secs(
                max_seconds + io_timeout + WATCHDOG_GRACE_S,
            ));
            let opts = stream::StreamOpts {
                target,
                bytes,
                chunk,
                io_timeout: Duration::from_secs(io_timeout),
                max_time: Duration::from_secs(max_seconds),
                tls: match tls.load() {
                    Ok(t) => t,
                    Err(e) => return setup_error(e),
                },
            };
            let probe = watch.probe();
            let (m, human, ok) = stream::run(opts, probe);
            emit("stream", &tags, m, &human, ok)
        }
        Cmd::Hold {
            target,
            n,
            connect_concurrency,
            seconds,
            ignore_stdin,
            ready_file,
            conn_timeout,
            max_seconds,
            threads,
            warmup,
            sources,
            tls,
            watch,
            tags,
        } => {
            start_watchdog(Duration::from_secs(
                max_seconds + conn_timeout + WATCHDOG_GRACE_S,
            ));
            let rt = match runtime(threads) {
                Ok(rt) => rt,
                Err(e) => return setup_error(format!("tokio runtime: {e}")),
            };
            let opts = hold::HoldOpts {
                target,
                n,
                connect_concurrency,
                hold: Duration::from_secs(seconds),
                watch_stdin: !ignore_stdin,
                ready_file,
                conn_timeout: Duration::from_secs(conn_timeout),
                max_time: Duration::from_secs(max_seconds),
                warmup,
                tls: match tls.load() {
                    Ok(t) => t,
                    Err(e) => return setup_error(e),
                },
                sources: match (sources, target.ip()) {
                    (1, _) | (_, IpAddr::V6(_)) => Vec::new(),
                    (n, _) => (1..=n).map(|k| IpAddr::from([127, 0, 0, k])).collect(),
                },
            };
            let probe = watch.probe();
            let (m, human, ok) = rt.block_on(hold::run(opts, probe));
            emit("hold", &tags, m, &human, ok)
        }
        Cmd::SpawnCeiling {
            n,
            concurrency,
            payload_size,
            program,
            fork,
            event_loop,
            max_seconds,
            tags,
        } => {
            start_watchdog(Duration::from_secs(max_seconds + WATCHDOG_GRACE_S));
            let opts = spawn::SpawnOpts {
                program,
                fork,
                threads: !event_loop,
                n,
                concurrency,
                payload_size,
                max_time: Duration::from_secs(max_seconds),
            };
            let (m, human, ok) = spawn::run(opts);
            emit("spawn-ceiling", &tags, m, &human, ok)
        }
        Cmd::Report {
            input,
            subject,
            peers,
            no_targets,
        } => match std::fs::read_to_string(&input) {
            Ok(text) => {
                print!(
                    "{}",
                    report::render_with(&text, &subject, &peers, !no_targets)
                );
                ExitCode::SUCCESS
            }
            Err(e) => setup_error(format!("{}: {e}", input.display())),
        },
        Cmd::WaitListen {
            port,
            timeout_ms,
            pid,
        } => {
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            loop {
                if procfs::is_listening(port) {
                    return ExitCode::SUCCESS;
                }
                if let Some(pid) = pid
                    && !procfs::pid_alive(pid)
                {
                    eprintln!("loadgen: process {pid} exited before listening on port {port}");
                    return ExitCode::from(1);
                }
                if Instant::now() >= deadline {
                    eprintln!("loadgen: nothing listens on port {port} after {timeout_ms} ms");
                    return ExitCode::from(1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Cmd::FreePorts { n } => {
            // Bind all at once so the ports are distinct, then release them.
            // 0.0.0.0 so the port is free on every address (classic wininetd
            // lines listen on all of them); nothing is sent.
            let mut socks = Vec::new();
            for _ in 0..n {
                match std::net::TcpListener::bind("0.0.0.0:0") {
                    Ok(l) => socks.push(l),
                    Err(e) => return setup_error(format!("bind: {e}")),
                }
            }
            let ports: Vec<String> = socks
                .iter()
                .filter_map(|s| s.local_addr().ok().map(|a| a.port().to_string()))
                .collect();
            println!("{}", ports.join(" "));
            ExitCode::SUCCESS
        }
        Cmd::TlsHandshake {
            cert,
            key,
            ca,
            n,
            tags,
        } => match tls::handshake_cost(&cert, &key, &ca, n) {
            Ok((m, human)) => emit("tls-handshake", &tags, m, &human, true),
            Err(e) => setup_error(e),
        },
        Cmd::Slowloris {
            proxy_port,
            tls_port,
            connections,
            open_rate,
            reconnect,
            max_seconds,
            ready,
            summary,
        } => {
            start_watchdog(Duration::from_secs(max_seconds + WATCHDOG_GRACE_S));
            let rt = match runtime(1) {
                Ok(rt) => rt,
                Err(e) => return setup_error(format!("tokio runtime: {e}")),
            };
            let opts = slowloris::SlowOpts {
                proxy_port,
                tls_port,
                connections,
                open_rate,
                reconnect,
                max_time: Duration::from_secs(max_seconds),
                ready,
            };
            match rt.block_on(slowloris::run(opts)) {
                Ok(s) => match std::fs::write(&summary, s.to_string()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => setup_error(format!("{}: {e}", summary.display())),
                },
                Err(e) => setup_error(format!("slowloris: {e}")),
            }
        }
        Cmd::EchoServer {
            listen,
            max_seconds,
            threads,
        } => {
            start_watchdog(Duration::from_secs(max_seconds + WATCHDOG_GRACE_S));
            let rt = match runtime(threads) {
                Ok(rt) => rt,
                Err(e) => return setup_error(format!("tokio runtime: {e}")),
            };
            match rt.block_on(echo_server(listen, Duration::from_secs(max_seconds))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => setup_error(format!("echo-server {listen}: {e}")),
            }
        }
    }
}

async fn echo_server(listen: SocketAddr, max_time: Duration) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("echo-server: listening on {listen} for {max_time:?}");
    let serve = async {
        loop {
            let (mut s, _) = match listener.accept().await {
                Ok(x) => x,
                Err(_) => {
                    // e.g. out of descriptors: back off instead of spinning
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                }
            });
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = tokio::time::sleep(max_time) => {}
    }
    Ok(())
}
