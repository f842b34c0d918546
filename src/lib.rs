//! wininetd: WinInetd (an inetd-like super-server) for Windows and Unix.
//!
//! A tour, in the order a connection meets the code:
//! - [`config`] turns the config file into a typed model (pure);
//! - `listener` binds the sockets;
//! - `server` accepts, checks (`admission`), hands off to a program
//!   ([`os`]`::launch`, or `relay` for `pipe`, or `internal`) and reaps
//!   (`children`);
//! - [`os`] holds the two platform interfaces: launching a program on a
//!   socket, and being a service.

pub mod cli;
pub mod config;
pub mod conn_env;
pub mod convert;
pub mod os;
pub mod proxy;

mod admission;
mod children;
mod http_request;
mod internal;
mod listener;
mod logging;
mod metrics;
mod relay;
mod server;
mod text;
mod tls;
mod udp_guard;

/// What the fuzz targets (`fuzz/`) call: thin wrappers, so the parsers stay
/// private to the crate. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use crate::config::{self, Config, ConfigErrors, Format, ServiceTable};
    use crate::convert::Converted;

    pub use crate::config::{CommandLine, Rate};
    pub use crate::http_request::{MAX_HEAD, Parsed, Request};

    /// A config file's bytes in `format`, as `--check` and a start read them.
    pub fn parse(bytes: &[u8], format: Format) -> Result<Config, ConfigErrors> {
        let name = match format {
            Format::Classic => "fuzz.conf",
            Format::Toml => "fuzz.toml",
            Format::Inetd => "inetd.conf",
        };
        config::parse_as(Path::new(name), bytes, format, &ServiceTable::builtin())
    }

    /// An xinetd config's model; `include`s are refused (no files read).
    pub fn parse_xinetd(bytes: &[u8]) -> Result<Config, ConfigErrors> {
        config::parse_xinetd(
            "xinetd.conf",
            bytes,
            &ServiceTable::builtin(),
            &mut no_include,
        )
        .map(|(c, _)| c)
    }

    /// `wininetd convert` of an xinetd config, `include`s refused.
    pub fn convert_xinetd(bytes: &[u8]) -> Result<Converted, ConfigErrors> {
        crate::convert::convert(
            "xinetd.conf",
            bytes,
            crate::cli::Source::Xinetd,
            &ServiceTable::builtin(),
            &mut no_include,
        )
    }

    fn no_include(path: &str, _dir: bool) -> Result<Vec<(String, Vec<u8>)>, String> {
        Err(format!("{path}: no includes while fuzzing"))
    }

    /// The extended format's text of a model (convert's renderer).
    pub fn to_toml(config: &Config) -> String {
        config::to_toml(config, &[])
    }

    /// How `to_toml` spells a rate.
    pub fn rate_text(per_second: f64) -> String {
        config::toml_out::rate(per_second)
    }

    /// The metrics endpoint's request-head reader.
    pub fn http_parse(buf: &[u8]) -> Parsed<'_> {
        crate::http_request::parse(buf)
    }

    /// The metrics endpoint's response to a parsed head.
    pub fn http_respond(parsed: Parsed<'_>) -> Vec<u8> {
        crate::http_request::respond(parsed, String::new)
    }
}

use std::process::ExitCode;

use clap::Parser;

use crate::config::{Program, RunAs};

/// The whole program: `main` only calls this.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match &cli.command {
        Some(cli::Command::Status { json }) => return status(*json),
        Some(cli::Command::Convert { file, from }) => return convert::run(file, *from),
        None => {}
    }
    if cli.install {
        // The service would only fail at its first start: say so now.
        if let Err(e) = std::fs::metadata(&cli.cfgfile) {
            return report(Err(format!(
                "cannot install: the config {}: {e} (write it first, and try it with \
                 `wininetd --check --cfgfile FILE`)",
                cli.cfgfile.display()
            )));
        }
        if cli.socket_activation {
            return report(install_socket_activated(&cli));
        }
        return report(os::install(&cli.service_args()));
    }
    if cli.remove {
        return report(os::remove());
    }
    if cli.reload {
        return reload();
    }
    if cli.check {
        return check(&cli);
    }
    run(&cli)
}

/// `--install --socket-activation`: the socket units hold every listener of
/// the config, so the config must be valid now.
#[cfg(unix)]
fn install_socket_activated(cli: &cli::Cli) -> Result<String, String> {
    let cfg = config::load(&cli.cfgfile)
        .map_err(|e| format!("{e}\ncannot install: the config has errors"))?;
    let listeners: Vec<_> = cfg
        .services
        .iter()
        .flat_map(|s| s.addrs().map(move |a| (s.name.clone(), s.protocol, a)))
        .collect();
    os::install_socket_activated(&cli.service_args(), &listeners)
}

#[cfg(windows)]
fn install_socket_activated(_cli: &cli::Cli) -> Result<String, String> {
    Err("--socket-activation is systemd's (Unix); a Windows service binds its own sockets".into())
}

fn report(r: Result<String, String>) -> ExitCode {
    match r {
        Ok(m) => {
            println!("{m}");
            ExitCode::SUCCESS
        }
        Err(m) => {
            eprintln!("wininetd: {m}");
            ExitCode::FAILURE
        }
    }
}

/// How long a control request may take (a reload rebinds listeners).
const CONTROL_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `wininetd status`: the daemon's answer, or why there is none.
fn status(json: bool) -> ExitCode {
    let request = if json { "status json\n" } else { "status\n" };
    match os::control_request(request, CONTROL_WAIT) {
        Ok(reply) => answered(&reply),
        Err(e) => {
            eprintln!("wininetd: {}", control_failure(&e));
            ExitCode::FAILURE
        }
    }
}

/// `--reload`: over the control channel when a daemon answers there, else
/// through the service manager (systemd, the SCM).
fn reload() -> ExitCode {
    match os::control_request("reload\n", CONTROL_WAIT) {
        Ok(reply) => answered(&reply),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::Unsupported
            ) =>
        {
            report(os::reload())
        }
        Err(e) => {
            eprintln!("wininetd: {}", control_failure(&e));
            ExitCode::FAILURE
        }
    }
}

/// Prints a control reply: `OK` or `ERR`, then its text.
fn answered(reply: &str) -> ExitCode {
    match reply.split_once('\n') {
        Some(("OK", body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Some(("ERR", body)) => {
            eprint!("wininetd: {body}");
            ExitCode::FAILURE
        }
        _ => {
            eprintln!("wininetd: the daemon refused the request or closed the channel");
            ExitCode::FAILURE
        }
    }
}

fn control_failure(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    let at = os::control_address();
    match e.kind() {
        NotFound | ConnectionRefused => {
            format!("no wininetd daemon is running (nothing answers on {at})")
        }
        BrokenPipe | ConnectionReset | ConnectionAborted => {
            format!("the daemon refused the request or closed the channel ({at})")
        }
        PermissionDenied => format!(
            "permission denied on {at}: only root (Administrators on Windows) may ask the daemon"
        ),
        _ => format!("cannot ask the daemon on {at}: {e}"),
    }
}

/// `--check`: every error of the file and what this machine would refuse
/// (errors) or fail at per connection (warnings), all in one pass; or, with
/// no error, the list of services.
fn check(cli: &cli::Cli) -> ExitCode {
    let (cfg, mut config_errors) = config::load_partial(&cli.cfgfile, cli.format);
    if let Some(c) = &cfg {
        if let Err(e) = os::check_internal_users(c) {
            config_errors.extend(e.0);
        }
        // Certificates and keys are read as a start or reload would.
        config_errors.extend(
            c.services
                .iter()
                .filter_map(|s| s.tls.as_ref())
                .filter_map(|t| tls::build(t).err())
                .flatten(),
        );
    }
    for e in &config_errors {
        eprintln!("{e}");
    }
    let (mut errors, mut warnings) = (config_errors.len(), 0);
    for w in cfg.iter().flat_map(|c| &c.warnings) {
        warnings += 1;
        eprintln!("{w}");
    }
    for s in cfg.iter().flat_map(|c| &c.services) {
        for finding in os::preflight(s) {
            match finding {
                os::Finding::Error(m) => {
                    errors += 1;
                    eprintln!("{}: error: service {}: {m}", s.origin, s.name);
                }
                os::Finding::Warning(m) => {
                    warnings += 1;
                    eprintln!("{}: warning: service {}: {m}", s.origin, s.name);
                }
            }
        }
    }
    let cfg = match cfg {
        Some(cfg) if errors == 0 => cfg,
        _ => {
            eprintln!(
                "{}: {errors} error(s), {warnings} warning(s)",
                cli.cfgfile.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let warned = if warnings > 0 {
        format!(", {warnings} warning(s)")
    } else {
        String::new()
    };
    println!(
        "{}: OK, {} service(s){warned}",
        cli.cfgfile.display(),
        cfg.services.len()
    );
    for s in &cfg.services {
        let addrs: Vec<String> = s.addrs().map(|a| a.to_string()).collect();
        let user = match &s.user {
            RunAs::Daemon => "none".to_string(),
            RunAs::User { name, .. } => name.clone(),
        };
        let program = match &s.program {
            Program::Command(c) => c.to_string(),
            Program::Internal(i) => format!("internal {}", i.as_str()),
        };
        println!(
            "{}\t{} {}\tuser {}\t{}",
            s.name,
            s.protocol,
            addrs.join(","),
            user,
            program
        );
    }
    ExitCode::SUCCESS
}

/// Runs the daemon in the foreground (console or service manager).
fn run(cli: &cli::Cli) -> ExitCode {
    os::tune_allocator();
    os::init_process();
    #[cfg(windows)]
    if cli.service {
        return os::run_as_service(cli);
    }
    // Before any thread: this unsets LISTEN_* in our environment.
    let passed = os::take_listen_fds();
    logging::init(if cli.debug {
        logging::Sink::Console
    } else {
        logging::Sink::Daemon
    });
    // One thread: accept and spawn are quick, children run in parallel
    // anyway, and a single thread keeps the daemon's memory small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            logging::flush(std::time::Duration::from_secs(2));
            return ExitCode::from(server::EXIT_RUNTIME as u8);
        }
    };
    let opts = server::Options::from(cli);
    let result = runtime.block_on(async {
        let mut host = os::Host::new().map_err(|e| server::StartError {
            code: server::EXIT_RUNTIME,
            message: format!("cannot set up signal handling: {e}"),
        })?;
        let passed = passed.map_err(|message| server::StartError {
            code: server::EXIT_BIND,
            message,
        })?;
        server::serve_with(opts, passed, &mut host).await
    });
    // Programs still running are not ours to wait for.
    runtime.shutdown_background();
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            for line in e.message.lines() {
                tracing::error!("{line}");
            }
            tracing::error!("wininetd did not start");
            ExitCode::from(e.code as u8)
        }
    };
    // The last lines (why it did not start) must reach the sink.
    logging::flush(std::time::Duration::from_secs(2));
    code
}
