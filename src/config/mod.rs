//! The typed configuration model shared by both file formats.
//!
//! Parsing is pure: text in, [`Config`] out, every error carrying `FILE:LINE`.
//! Nothing here touches the network or the OS, so the same model serves
//! Unix and Windows, `--check` and reload.

mod classic;
mod extended;
mod secret;
mod tls;

mod inetd;
mod services;
pub mod toml_out;
pub mod xinetd;

pub use secret::{Password, Secret};
pub use tls::{ClientCert, DEFAULT_HANDSHAKE_TIMEOUT, Located, SniCert, TlsSettings, TlsVersion};

pub use services::ServiceTable;
pub use toml_out::to_toml;
pub use xinetd::parse as parse_xinetd;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// A whole configuration: global settings and the services.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub globals: Globals,
    pub services: Vec<Service>,
    /// What was read but is not carried (an inetd.conf's `sndbuf=`, …):
    /// `--check` lists these, the daemon logs them, `convert` comments them.
    pub warnings: Vec<ConfigError>,
}

/// Settings that apply to every service unless a service overrides them.
#[derive(Debug, Clone, PartialEq)]
pub struct Globals {
    /// SO_RCVTIMEO/SO_SNDTIMEO in seconds; `None` = no timeout.
    pub timeout: Option<u32>,
    /// SO_LINGER in seconds; `None` = the system's graceful close.
    pub linger_timeout: Option<u32>,
    /// Live programs (and internal sessions), all services together.
    pub max_connections: u32,
    pub log_format: LogFormat,
    /// Bytes of widened relay pipes, all sessions together.
    pub pipe_budget: u64,
    /// IPv6 sources are counted per prefix of this length (1-128).
    pub ipv6_source_prefix: u8,
    /// The daemon's variables a program gets (`pass_env`): names, or
    /// prefixes ending in `*`.
    pub pass_env: Vec<String>,
}

impl Default for Globals {
    fn default() -> Self {
        Globals {
            timeout: None,
            linger_timeout: Some(DEFAULT_LINGER_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            log_format: LogFormat::Text,
            pipe_budget: DEFAULT_PIPE_BUDGET,
            ipv6_source_prefix: DEFAULT_IPV6_SOURCE_PREFIX,
            pass_env: DEFAULT_PASS_ENV.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// `pass_env` unless a config says otherwise (both formats).
pub const DEFAULT_PASS_ENV: [&str; 3] = ["TZ", "LANG", "LC_*"];

/// Whether `pass_env` entry `pattern` names variable `name`: equal, or a
/// prefix when it ends in `*`.
pub fn pass_env_matches(pattern: &str, name: &[u8]) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix.as_bytes()),
        None => name == pattern.as_bytes(),
    }
}

/// Why a `pass_env` entry is invalid, if it is.
pub fn pass_env_error(pattern: &str) -> Option<String> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    if pattern.is_empty() || name.contains(['=', '\0', '*']) {
        return Some(format!(
            "`pass_env`: {pattern:?} is not a variable name or a prefix ending in `*` (no `=`, NUL, or `*` elsewhere)"
        ));
    }
    None
}

/// WinInetd's default for `--linger-timeout`.
pub const DEFAULT_LINGER_TIMEOUT: u32 = 60;
/// Default for `max_connections`: high enough never to bite a classic setup.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default for `pipe_budget`: 128 relayed sessions with 1 MiB pipes.
pub const DEFAULT_PIPE_BUDGET: u64 = 256 << 20;

/// Parses a size: bytes (`"65536"`), or a count of `B`, `KiB`, `MiB` or
/// `GiB` (`"64KiB"`, `"256 MiB"`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size such as \"256MiB\", \"64KiB\" or a number of bytes");
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let shift = match t[digits..].trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}
/// Default for `ipv6_source_prefix`: a /64 is what one IPv6 client
/// commonly holds.
pub const DEFAULT_IPV6_SOURCE_PREFIX: u8 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One listening service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Unique name; `"<protocol>/<port>"` unless the config names it.
    pub name: String,
    /// Where it was defined (`FILE:LINE`), for messages.
    pub origin: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Addresses to listen on; never empty once parsed.
    pub bind: Vec<IpAddr>,
    /// inetd `wait`: the program gets the listening socket itself.
    pub wait: bool,
    pub program: Program,
    pub user: RunAs,
    pub stderr: StderrMode,
    /// `None` = the platform default ([`Handoff::platform_default`]) or `--handoff`.
    pub handoff: Option<Handoff>,
    pub env: Vec<(String, String)>,
    pub working_directory: Option<PathBuf>,
    pub limits: Limits,
    pub access: Access,
    /// Overrides the global timeout; `Some(0)` switches it off.
    pub timeout: Option<u32>,
    /// Overrides the global `pass_env`.
    pub pass_env: Option<Vec<String>>,
    /// The primary group (inetd's `user.group`), instead of the user's own.
    pub group: Option<String>,
    /// argv[0] when it is not the program (inetd.conf, xinetd NAMEINARGS).
    pub argv0: Option<String>,
    /// `[service.tls]`: wininetd terminates TLS and relays plain bytes.
    pub tls: Option<TlsSettings>,
    /// A PROXY protocol header is required on every connection.
    pub proxy: Option<ProxyProtocol>,
}

impl Service {
    /// Every socket address this service listens on.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.bind.iter().map(|ip| SocketAddr::new(*ip, self.port))
    }
}

/// The classic format listens on every IPv4 interface, as WinInetd did.
pub const CLASSIC_BIND: [IpAddr; 1] = [IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
/// The extended format's default: every interface of both families.
pub const DEFAULT_BIND: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
];

/// What runs for a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Program {
    Command(CommandLine),
    Internal(Internal),
}

/// A program's command line, as the config gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// Classic CMDLINE text, verbatim: split with POSIX shell-word rules on
    /// Unix, handed to CreateProcessW untouched on Windows.
    Raw(String),
    /// An argv array from the extended format.
    Argv(Vec<String>),
}

impl CommandLine {
    /// The argv a Unix exec gets; `Err` says why the text cannot be split.
    pub fn argv(&self) -> Result<Vec<String>, String> {
        match self {
            CommandLine::Argv(v) => Ok(v.clone()),
            CommandLine::Raw(s) => match shlex::split(s) {
                Some(v) if !v.is_empty() => Ok(v),
                Some(_) => Err("the command line is empty".into()),
                None => Err("unbalanced quote or trailing backslash in the command line".into()),
            },
        }
    }

    /// The command line CreateProcessW gets: raw text verbatim, argv quoted
    /// with the MSVC runtime's rules.
    pub fn windows_command_line(&self) -> String {
        match self {
            CommandLine::Raw(s) => s.clone(),
            CommandLine::Argv(v) => v
                .iter()
                .map(|a| quote_windows_arg(a))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandLine::Raw(s) => f.write_str(s),
            CommandLine::Argv(v) => write!(f, "{v:?}"),
        }
    }
}

/// Quotes one argument so `CommandLineToArgvW` gives it back unchanged.
fn quote_windows_arg(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '\n', '\x0b', '"']) {
        return arg.to_string();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    out
}

/// The in-process services of RFC 862–868, and wininetd's own metrics
/// endpoint (TCP only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internal {
    Echo,
    Discard,
    Chargen,
    Daytime,
    Time,
    /// `GET /metrics` over HTTP/1.x: the Prometheus text format.
    Metrics,
}

impl Internal {
    pub fn parse(s: &str) -> Option<Internal> {
        Some(match s {
            "echo" => Internal::Echo,
            "discard" => Internal::Discard,
            "chargen" => Internal::Chargen,
            "daytime" => Internal::Daytime,
            "time" => Internal::Time,
            "metrics" => Internal::Metrics,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Internal::Echo => "echo",
            Internal::Discard => "discard",
            Internal::Chargen => "chargen",
            Internal::Daytime => "daytime",
            Internal::Time => "time",
            Internal::Metrics => "metrics",
        }
    }
}

/// Whose account the program runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// `none`: the daemon's own account.
    Daemon,
    /// A named account; the secret matters on Windows only.
    User {
        name: String,
        secret: Option<Secret>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrMode {
    /// The program's stderr is the connection too (WinInetd's behaviour).
    Socket,
    /// Each line the program writes to stderr becomes a log line.
    Log,
    Null,
}

/// How the connection reaches the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// The socket itself is the program's stdin/stdout/stderr.
    Direct,
    /// The program gets pipes; wininetd relays between them and the socket.
    Pipe,
}

impl Handoff {
    /// Windows programs cannot rely on a socket as a std handle, so `pipe`
    /// is the default there; Unix programs can, so `direct` costs nothing.
    pub fn platform_default() -> Handoff {
        if cfg!(windows) {
            Handoff::Pipe
        } else {
            Handoff::Direct
        }
    }

    pub fn parse(s: &str) -> Option<Handoff> {
        match s {
            "direct" => Some(Handoff::Direct),
            "pipe" => Some(Handoff::Pipe),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Handoff::Direct => "direct",
            Handoff::Pipe => "pipe",
        }
    }
}

/// Counts of live programs and the accept rate, decided before any spawn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub max_instances: Option<u32>,
    pub per_source: Option<u32>,
    pub rate: Option<Rate>,
    /// The same as `rate`, one bucket per source.
    pub per_source_rate: Option<Rate>,
}

/// Accepted connections per second: a token bucket with one second of burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

impl Rate {
    /// Parses `"200/s"`, `"30/m"` or `"1000/h"`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let bad = || format!("rate {s:?} is not COUNT/s, COUNT/m or COUNT/h");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let secs = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(bad()),
        };
        if n == 0 {
            return Err(format!("rate {s:?} would refuse every connection"));
        }
        Ok(Rate {
            per_second: f64::from(n) / secs,
        })
    }
}

/// `proxy_protocol`, `proxy_from`, `proxy_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    pub version: ProxyVersion,
    /// The balancers allowed to send a header; any other peer is refused
    /// before a byte is read.
    pub from: Vec<IpNet>,
    /// Seconds to receive the whole header.
    pub timeout: u32,
}

/// Default for `proxy_timeout`, in seconds.
pub const DEFAULT_PROXY_TIMEOUT: u32 = 5;

/// Which PROXY header versions a service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
    Any,
}

/// Source address rules: `deny` wins; a non-empty `allow` refuses the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`) are IPv4 peers for every rule
/// and every environment variable.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `FILE:LINE`.
    pub location: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in a config: loading reports all of them at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Which format a file is in: `.toml` is extended, anything else classic.
pub fn is_extended(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

/// The file formats wininetd runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// WinInetd's `PORT USER[:PASS] CMDLINE`.
    Classic,
    /// The extended format.
    Toml,
    /// BSD inetd.conf, as openbsd-inetd and netkit inetd read it.
    Inetd,
}

impl Format {
    /// By the file name: `*.toml` is TOML, `inetd.conf` is inetd.conf,
    /// anything else (`wininetd.conf` included) classic.
    pub fn detect(path: &Path) -> Format {
        if is_extended(path) {
            Format::Toml
        } else if path
            .file_name()
            .is_some_and(|n| n.eq_ignore_ascii_case("inetd.conf"))
        {
            Format::Inetd
        } else {
            Format::Classic
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Classic => "classic",
            Format::Toml => "toml",
            Format::Inetd => "inetd",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "classic" => Some(Format::Classic),
            "toml" => Some(Format::Toml),
            "inetd" => Some(Format::Inetd),
            _ => None,
        }
    }
}

/// Parses config text; `file` names it in messages and picks the format.
/// inetd.conf service names are looked up in the built-in table.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<Config, ConfigErrors> {
    parse_as(file, bytes, Format::detect(file), &ServiceTable::builtin())
}

/// Parses config text in `format`; `services` resolves inetd.conf's names.
pub fn parse_as(
    file: &Path,
    bytes: &[u8],
    format: Format,
    services: &ServiceTable,
) -> Result<Config, ConfigErrors> {
    match parse_partial(file, bytes, format, services) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// Every error of the file in file order, and the config of what has none
/// (`None` when the file cannot be read in its format at all), so that
/// `--check` can look at those services on the machine in the same pass.
pub fn parse_partial(
    file: &Path,
    bytes: &[u8],
    format: Format,
    services: &ServiceTable,
) -> (Option<Config>, Vec<ConfigError>) {
    let name = file.display().to_string();
    let (config, mut errors) = match format {
        Format::Toml => match extended::parse(&name, bytes) {
            Ok(parsed) => parsed,
            Err(fatal) => return (None, fatal.0),
        },
        Format::Classic => classic::parse(&name, bytes),
        Format::Inetd => match inetd::parse(&name, bytes, services) {
            Ok(config) => (config, Vec::new()),
            Err(errors) => return (None, errors.0),
        },
    };
    // The cross-line checks run even when some lines were bad: `--check`
    // reports every error in one pass.
    let had_errors = !errors.is_empty();
    errors.extend(validate(&name, &config, !had_errors));
    errors.sort_by_key(|e| line_of(&e.location));
    (Some(config), errors)
}

/// The LINE of `FILE:LINE` (0 for a bare FILE), to list errors in file order.
fn line_of(location: &str) -> usize {
    location
        .rsplit_once(':')
        .and_then(|(_, l)| l.parse().ok())
        .unwrap_or(0)
}

/// Reads and parses a config file, in the format its name says.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    load_as(file, None)
}

/// Reads and parses a config file; `format` overrides detection. inetd.conf
/// names are looked up in the system's services file (built-in table if
/// it cannot be read). As root (LocalSystem), a config or a password file
/// that another user could change is refused.
pub fn load_as(file: &Path, format: Option<Format>) -> Result<Config, ConfigErrors> {
    match load_partial(file, format) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// [`load_as`], keeping what has no error: every error at once, and the
/// services `--check` can then look at on the machine.
pub fn load_partial(file: &Path, format: Option<Format>) -> (Option<Config>, Vec<ConfigError>) {
    let refused = |message: String| {
        vec![ConfigError {
            location: file.display().to_string(),
            message,
        }]
    };
    if let Err(why) = crate::os::check_config_file(file) {
        return (None, refused(format!("refused: {why}")));
    }
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return (None, refused(format!("cannot read the config: {e}"))),
    };
    let format = format.unwrap_or_else(|| Format::detect(file));
    let table = match format {
        Format::Inetd => ServiceTable::system(),
        _ => ServiceTable::default(),
    };
    let (config, mut errors) = parse_partial(file, &bytes, format, &table);
    for s in config.iter().flat_map(|c| &c.services) {
        if let RunAs::User {
            secret: Some(Secret::File(pw)),
            ..
        } = &s.user
            && let Err(why) = crate::os::check_password_file(pw)
        {
            errors.push(ConfigError {
                location: s.origin.clone(),
                message: format!("service {}: password file refused: {why}", s.name),
            });
        }
    }
    (config, errors)
}

/// Checks that hold for both formats: distinct listeners and names, at
/// least one service (unless `had_errors`: the bad lines were the services),
/// command lines this platform can run.
/// The checks across services; `need_service`: a config serving nothing is
/// an error (not for an xinetd config, which convert comments).
pub(super) fn validate(file: &str, config: &Config, need_service: bool) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut seen_addr: std::collections::HashMap<(Protocol, SocketAddr), &str> =
        std::collections::HashMap::new();
    let mut seen_name: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for s in &config.services {
        let errors_before = errors.len();
        for addr in s.addrs() {
            // A wildcard listener takes the port on every address of its family.
            let wildcard = SocketAddr::new(
                if addr.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                },
                addr.port(),
            );
            let clash = seen_addr
                .get(&(s.protocol, addr))
                .or_else(|| seen_addr.get(&(s.protocol, wildcard)))
                .or_else(|| {
                    addr.ip().is_unspecified().then(|| {
                        seen_addr
                            .iter()
                            .find(|((p, a), _)| {
                                *p == s.protocol
                                    && a.port() == addr.port()
                                    && a.is_ipv4() == addr.is_ipv4()
                            })
                            .map(|(_, o)| o)
                    })?
                });
            if let Some(first) = clash {
                errors.push(ConfigError {
                    location: s.origin.clone(),
                    message: format!(
                        "{} port {} on {} is already configured at {first}",
                        s.protocol,
                        s.port,
                        addr.ip()
                    ),
                });
            } else {
                seen_addr.insert((s.protocol, addr), &s.origin);
            }
        }
        // A clash of ports already says it all for a classic `tcp/PORT` name.
        let first_name = seen_name.insert(&s.name, &s.origin);
        if let (Some(first), true) = (first_name, errors.len() == errors_before) {
            errors.push(ConfigError {
                location: s.origin.clone(),
                message: format!("service name {:?} is already used at {first}", s.name),
            });
        }
        if cfg!(unix)
            && let Program::Command(cmd) = &s.program
            && let Err(e) = cmd.argv()
        {
            errors.push(ConfigError {
                location: s.origin.clone(),
                message: e,
            });
        }
        for message in service_rules(s) {
            errors.push(ConfigError {
                location: s.origin.clone(),
                message,
            });
        }
    }
    if need_service && errors.is_empty() && config.services.is_empty() {
        errors.push(ConfigError {
            location: file.to_string(),
            message: "no service is configured".into(),
        });
    }
    errors
}

/// Rules on `group`, `argv0` and TCP `wait` that hold whatever the format.
fn service_rules(s: &Service) -> Vec<String> {
    let mut out = Vec::new();
    let program = matches!(s.program, Program::Command(_));
    if s.group.is_some() && (s.user == RunAs::Daemon || !program) {
        out.push(format!(
            "service {}: a `group` needs a `user`: the group replaces that user's primary group",
            s.name
        ));
    }
    if cfg!(windows) && s.group.is_some() {
        out.push(format!(
            "service {}: `group` is not supported on Windows (a program runs with its user's token)",
            s.name
        ));
    }
    if cfg!(windows) && s.argv0.is_some() {
        out.push(format!(
            "service {}: `argv0` is not supported on Windows (the command line's first word names the program)",
            s.name
        ));
    }
    if s.wait && s.protocol == Protocol::Tcp && program {
        if cfg!(windows) {
            out.push(format!(
                "service {}: TCP `wait` services are not supported on Windows",
                s.name
            ));
        }
        let per_connection = [
            ("allow", !s.access.allow.is_empty()),
            ("deny", !s.access.deny.is_empty()),
            ("per_source", s.limits.per_source.is_some()),
            ("max_instances", s.limits.max_instances.is_some()),
            ("handoff", s.handoff.is_some()),
        ];
        for (key, set) in per_connection {
            if set {
                out.push(format!(
                    "service {}: `{key}` has no meaning for a TCP `wait` service: its one program accepts the connections itself (`rate` limits how often it is started)",
                    s.name
                ));
            }
        }
    }
    out
}
