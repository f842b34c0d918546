//! The extended format (`.toml`): global settings, then one `[[service]]`
//! table per service.
//!
//! The document is parsed once with byte spans (`toml::de::DeTable`) and
//! then walked by hand, key by key, rather than deserialized with serde:
//! that way every unknown key, wrong type and bad value in the whole file is
//! reported, each with the line it is on, instead of stopping at the first.
//! Unknown keys are errors so that a typo never silently drops a protection.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;

use ipnet::IpNet;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::classic::parse_user;
use super::{
    Access, CommandLine, Config, ConfigError, ConfigErrors, DEFAULT_BIND, Globals, Handoff,
    Internal, Limits, LogFormat, Program, Protocol, Rate, RunAs, Secret, Service, StderrMode,
};
use super::{DEFAULT_PROXY_TIMEOUT, ProxyProtocol, ProxyVersion};

mod tls;

type Value<'i> = Spanned<DeValue<'i>>;

const GLOBAL_KEYS: &[&str] = &[
    "timeout",
    "linger_timeout",
    "max_connections",
    "log_format",
    "service",
    "pipe_budget",
    "ipv6_source_prefix",
    "pass_env",
];

const SERVICE_KEYS: &[&str] = &[
    "name",
    "port",
    "bind",
    "protocol",
    "wait",
    "command",
    "internal",
    "user",
    "password_file",
    "stderr",
    "handoff",
    "env",
    "working_directory",
    "max_instances",
    "per_source",
    "rate",
    "allow",
    "deny",
    "timeout",
    "per_source_rate",
    "pass_env",
    "group",
    "argv0",
    "tls",
    "proxy_protocol",
    "proxy_from",
    "proxy_timeout",
];

/// Keys that only mean something when a program runs.
const PROGRAM_KEYS: &[&str] = &[
    "user",
    "password_file",
    "stderr",
    "handoff",
    "env",
    "working_directory",
    "wait",
    "pass_env",
    "group",
    "argv0",
];

/// Windows keeps SO_LINGER in an unsigned 16-bit field.
const MAX_LINGER: i64 = 65_535;

/// `Err` when the file cannot be read as TOML at all; otherwise the good
/// settings and services, and an error for each bad one, so the cross-line
/// checks still run on what is good.
pub(super) fn parse(file: &str, bytes: &[u8]) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.len()
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
        one_error(
            file,
            line,
            format!(
                "the file is not valid UTF-8 (byte {} of the line); save it as UTF-8",
                column + 1
            ),
        )
    })?;
    let lines = Lines::new(text);
    let root = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| lines.line(s.start));
        let mut message = e.message().trim_end().to_string();
        // This error's span is the key itself (never a value, so never a
        // password): name it, the parser's message does not.
        if message == "duplicate key"
            && let Some(key) = e.span().and_then(|s| text.get(s))
        {
            message = format!("duplicate key `{key}`");
        }
        one_error(file, line, format!("TOML syntax error: {message}"))
    })?;

    let mut r = Report {
        file,
        lines,
        errors: Vec::new(),
    };
    let mut globals = Globals::default();
    let mut services = Vec::new();
    for (key, value) in root.get_ref() {
        match key.get_ref().as_ref() {
            "timeout" => {
                if let Some(n) = r.integer("timeout", value, 0..=i64::from(u32::MAX)) {
                    globals.timeout = (n != 0).then_some(n as u32);
                }
            }
            "linger_timeout" => {
                if let Some(n) = r.integer("linger_timeout", value, 0..=MAX_LINGER) {
                    globals.linger_timeout = (n != 0).then_some(n as u32);
                }
            }
            "max_connections" => {
                if let Some(n) = r.integer("max_connections", value, 1..=i64::from(u32::MAX)) {
                    globals.max_connections = n as u32;
                }
            }
            "log_format" => {
                let choices = [("text", LogFormat::Text), ("json", LogFormat::Json)];
                if let Some(f) = r.choice("log_format", value, &choices) {
                    globals.log_format = f;
                }
            }
            "service" => services = r.services(value),
            "pipe_budget" => {
                if let Some(n) = r.size("pipe_budget", value) {
                    globals.pipe_budget = n;
                }
            }
            "ipv6_source_prefix" => {
                if let Some(n) = r.integer("ipv6_source_prefix", value, 1..=128) {
                    globals.ipv6_source_prefix = n as u8;
                }
            }
            "pass_env" => {
                if let Some(names) = r.pass_env(value) {
                    globals.pass_env = names;
                }
            }
            other => {
                let hint = if SERVICE_KEYS.contains(&other) {
                    format!(" (`{other}` is a service setting: put it after a [[service]] header)")
                } else {
                    r.suggest(other, GLOBAL_KEYS)
                };
                r.at(
                    key.span(),
                    format!("unknown key `{other}` at the top level{hint}"),
                );
            }
        }
    }
    Ok((
        Config {
            globals,
            services,
            warnings: Vec::new(),
        },
        r.finish().0,
    ))
}

fn one_error(file: &str, line: usize, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        location: format!("{file}:{line}"),
        message,
    }])
}

/// Byte offset → 1-based line number.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}

/// Collects every error of the file, each on its line.
struct Report<'f> {
    file: &'f str,
    lines: Lines,
    errors: Vec<(usize, String)>,
}

impl Report<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = self.lines.line(span.start);
        self.errors.push((line, message.into()));
    }

    fn location(&self, span: &Range<usize>) -> String {
        format!("{}:{}", self.file, self.lines.line(span.start))
    }

    /// The errors in file order.
    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|(line, _)| *line);
        ConfigErrors(
            self.errors
                .into_iter()
                .map(|(line, message)| ConfigError {
                    location: format!("{}:{line}", self.file),
                    message,
                })
                .collect(),
        )
    }

    /// `" (did you mean `x`?)"` for a key one or two edits from a known one.
    fn suggest(&self, key: &str, known: &[&str]) -> String {
        known
            .iter()
            .map(|k| (edit_distance(key, k), k))
            .filter(|(d, _)| *d <= 2)
            .min()
            .map_or_else(String::new, |(_, k)| format!(" (did you mean `{k}`?)"))
    }

    fn wrong_type(&mut self, key: &str, want: &str, v: &Value) {
        self.at(
            v.span(),
            format!("`{key}` must be {want}, not {}", a(v.get_ref().type_str())),
        );
    }

    fn string<'v>(&mut self, key: &str, v: &'v Value) -> Option<&'v str> {
        let s = v.get_ref().as_str();
        if s.is_none() {
            self.wrong_type(key, "a string", v);
        }
        s
    }

    fn nonempty_string<'v>(&mut self, key: &str, v: &'v Value) -> Option<&'v str> {
        let s = self.string(key, v)?;
        if s.is_empty() {
            self.at(v.span(), format!("`{key}` is empty"));
            return None;
        }
        if s.contains('\0') {
            self.at(v.span(), format!("`{key}` contains a NUL character"));
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, key: &str, v: &Value) -> Option<bool> {
        let b = v.get_ref().as_bool();
        if b.is_none() {
            self.wrong_type(key, "true or false", v);
        }
        b
    }

    fn integer(&mut self, key: &str, v: &Value, range: RangeInclusive<i64>) -> Option<i64> {
        let want = format!("an integer from {} to {}", range.start(), range.end());
        let Some(i) = v.get_ref().as_integer() else {
            self.wrong_type(key, &want, v);
            return None;
        };
        match i128::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (i128::from(*range.start())..=i128::from(*range.end())).contains(&n) => {
                Some(n as i64)
            }
            _ => {
                self.at(v.span(), format!("`{key}` must be {want}, not {i}"));
                None
            }
        }
    }

    /// A size: a number of bytes, or a string such as `"256MiB"`.
    fn size(&mut self, key: &str, v: &Value) -> Option<u64> {
        if v.get_ref().as_integer().is_some() {
            return self.integer(key, v, 0..=i64::MAX).map(|n| n as u64);
        }
        let s = v.get_ref().as_str();
        let Some(s) = s else {
            self.wrong_type(key, "a size (\"256MiB\", \"64KiB\" or bytes)", v);
            return None;
        };
        match super::parse_size(s) {
            Ok(n) => Some(n),
            Err(e) => {
                self.at(v.span(), format!("`{key}`: {e}"));
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, key: &str, v: &Value, choices: &[(&str, T)]) -> Option<T> {
        let names = choices
            .iter()
            .map(|(n, _)| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let Some(s) = v.get_ref().as_str() else {
            self.wrong_type(key, &format!("one of {names}"), v);
            return None;
        };
        let found = choices.iter().find(|(n, _)| *n == s).map(|(_, t)| *t);
        if found.is_none() {
            self.at(
                v.span(),
                format!("`{key}` must be one of {names}, not {s:?}"),
            );
        }
        found
    }

    /// An array of strings, each with its span.
    fn strings<'v>(&mut self, key: &str, v: &'v Value) -> Option<Vec<(&'v str, Range<usize>)>> {
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(key, "an array of strings", v);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s, item.span())),
                None => {
                    self.at(
                        item.span(),
                        format!(
                            "`{key}` must be an array of strings, but it holds {}",
                            a(item.get_ref().type_str())
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// The `service` key: an array of tables.
    fn services(&mut self, v: &Value) -> Vec<Service> {
        let Some(items) = v.get_ref().as_array() else {
            self.at(
                v.span(),
                "`service` must be an array of tables: write each service as [[service]], not [service]",
            );
            return Vec::new();
        };
        let mut services = Vec::new();
        for item in items.iter() {
            match item.get_ref().as_table() {
                Some(table) => services.extend(self.service(table, item.span())),
                None => self.wrong_type("service", "an array of tables", item),
            }
        }
        services
    }

    /// One `[[service]]` table; `None` once its errors are reported.
    fn service(&mut self, table: &DeTable, header: Range<usize>) -> Option<Service> {
        let errors_before = self.errors.len();
        let mut keys: BTreeMap<&str, &Value> = BTreeMap::new();
        for (key, value) in table {
            let name = key.get_ref().as_ref();
            if SERVICE_KEYS.contains(&name) {
                keys.insert(name, value);
            } else {
                let hint = if GLOBAL_KEYS.contains(&name) {
                    format!(
                        " (`{name}` is a global setting: put it above the first [[service]] header)"
                    )
                } else {
                    self.suggest(name, SERVICE_KEYS)
                };
                self.at(
                    key.span(),
                    format!("unknown key `{name}` in [[service]]{hint}"),
                );
            }
        }
        let get = |k: &str| keys.get(k).copied();

        let protocol = match get("protocol") {
            Some(v) => {
                let choices = [("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
                self.choice("protocol", v, &choices)
            }
            None => Some(Protocol::Tcp),
        };

        let port = match get("port") {
            Some(v) => self.integer("port", v, 1..=65_535).map(|p| p as u16),
            None => {
                self.at(header.clone(), "the service has no `port`");
                None
            }
        };

        let name = get("name").and_then(|v| {
            let s = self.nonempty_string("name", v)?;
            if s.chars().any(char::is_control) {
                self.at(v.span(), "`name` contains a control character");
                return None;
            }
            Some(s.to_string())
        });

        let bind = match get("bind") {
            Some(v) => self.bind(v),
            None => Some(DEFAULT_BIND.to_vec()),
        };

        let program = match (get("command"), get("internal")) {
            (Some(c), Some(i)) => {
                let later = if c.span().start > i.span().start {
                    c
                } else {
                    i
                };
                self.at(
                    later.span(),
                    "`command` and `internal` exclude each other: a service runs a program or an internal service, not both",
                );
                None
            }
            (None, None) => {
                self.at(
                    header.clone(),
                    "the service has neither `command` nor `internal`: say what answers a connection",
                );
                None
            }
            (Some(c), None) => self.command(c).map(Program::Command),
            (None, Some(i)) => {
                let choices = [
                    ("echo", Internal::Echo),
                    ("discard", Internal::Discard),
                    ("chargen", Internal::Chargen),
                    ("daytime", Internal::Daytime),
                    ("time", Internal::Time),
                    ("metrics", Internal::Metrics),
                ];
                self.choice("internal", i, &choices).map(Program::Internal)
            }
        };

        let is_internal = get("internal").is_some() && get("command").is_none();
        if is_internal {
            for key in PROGRAM_KEYS {
                if let Some(v) = get(key) {
                    // What restates wininetd's own behaviour is accepted:
                    // converted inetd/xinetd configs carry these.
                    if (*key == "wait" && v.get_ref().as_bool() == Some(false))
                        || (*key == "user" && v.get_ref().as_str() == Some("none"))
                    {
                        continue;
                    }
                    if *key == "user"
                        && let Some(name) = v.get_ref().as_str()
                        && !name.is_empty()
                        && !name.contains(':')
                    {
                        // Checked against the daemon's account when applied.
                        continue;
                    }
                    self.at(
                        v.span(),
                        format!(
                            "`{key}` has no meaning for an internal service (it runs inside wininetd, no program is started)"
                        ),
                    );
                }
            }
        }

        let wait = match get("wait") {
            Some(v) if !is_internal => self.boolean("wait", v),
            _ => Some(false),
        };
        if get("command").is_some()
            && let (Some(protocol), Some(wait)) = (protocol, wait)
        {
            if (protocol, wait) == (Protocol::Udp, false) {
                self.at(
                    get("wait")
                        .or(get("protocol"))
                        .map_or(header.clone(), |v| v.span()),
                    "a UDP service's program gets the bound socket and reads the datagrams itself (inetd's dgram `wait`), so it needs `wait = true`; or use an `internal` service",
                );
            }
            if protocol == Protocol::Udp
                && let Some(v) = get("handoff")
            {
                self.at(
                    v.span(),
                    "`handoff` has no meaning for a UDP service: its program always gets the bound socket",
                );
            }
        }

        let user = if is_internal {
            // A plain name here must be the daemon's own account (checked
            // when the config is applied).
            match get("user").and_then(|v| v.get_ref().as_str()) {
                Some(name) if name != "none" => Some(RunAs::User {
                    name: name.to_string(),
                    secret: None,
                }),
                _ => Some(RunAs::Daemon),
            }
        } else {
            self.user(get("user"), get("password_file"))
        };

        let stderr = match get("stderr") {
            Some(v) if !is_internal => {
                let choices = [
                    ("socket", StderrMode::Socket),
                    ("log", StderrMode::Log),
                    ("null", StderrMode::Null),
                ];
                self.choice("stderr", v, &choices)
            }
            _ => Some(StderrMode::Socket),
        };

        let handoff = match get("handoff") {
            Some(v) if !is_internal => {
                let choices = [("direct", Handoff::Direct), ("pipe", Handoff::Pipe)];
                self.choice("handoff", v, &choices).map(Some)
            }
            _ => Some(None),
        };

        let env = match get("env") {
            Some(v) if !is_internal => self.env(v),
            _ => Some(Vec::new()),
        };

        let working_directory = match get("working_directory") {
            Some(v) if !is_internal => self
                .nonempty_string("working_directory", v)
                .map(|s| Some(PathBuf::from(s))),
            _ => Some(None),
        };

        let count = |r: &mut Self, key: &str| match get(key) {
            Some(v) => r
                .integer(key, v, 1..=i64::from(u32::MAX))
                .map(|n| Some(n as u32)),
            None => Some(None),
        };
        let max_instances = count(self, "max_instances");
        let per_source = count(self, "per_source");

        let rate_key = |r: &mut Self, key: &str| match get(key) {
            Some(v) => r.string(key, v).and_then(|s| match Rate::parse(s) {
                Ok(rate) => Some(Some(rate)),
                Err(e) => {
                    r.at(v.span(), e);
                    None
                }
            }),
            None => Some(None),
        };
        let rate = rate_key(self, "rate");
        let per_source_rate = rate_key(self, "per_source_rate");

        let allow = match get("allow") {
            Some(v) => self.nets("allow", v).and_then(|nets| {
                if nets.is_empty() {
                    self.at(
                        v.span(),
                        "`allow = []` would allow every source, which is surely not meant: list the sources to allow, or remove `allow`",
                    );
                    return None;
                }
                Some(nets)
            }),
            None => Some(Vec::new()),
        };
        let deny = match get("deny") {
            Some(v) => self.nets("deny", v),
            None => Some(Vec::new()),
        };

        let timeout = match get("timeout") {
            Some(v) => self
                .integer("timeout", v, 0..=i64::from(u32::MAX))
                .map(|n| Some(n as u32)),
            None => Some(None),
        };

        let pass_env = match get("pass_env") {
            Some(v) if !is_internal => self.pass_env(v).map(Some),
            _ => Some(None),
        };

        // Settings the core would ignore for UDP must not look as if they
        // protected anything.
        if protocol == Some(Protocol::Udp) {
            if let (Some(Program::Internal(Internal::Metrics)), Some(v)) =
                (&program, get("protocol"))
            {
                self.at(
                    v.span(),
                    "`internal = \"metrics\"` speaks HTTP and is served over TCP only; remove `protocol = \"udp\"`",
                );
            }
            if is_internal {
                for key in ["max_instances", "per_source"] {
                    if let Some(v) = get(key) {
                        self.at(
                            v.span(),
                            format!(
                                "`{key}` has no meaning for a UDP internal service: it answers each datagram on its own and keeps no session (`rate`, `per_source_rate`, `allow` and `deny` do apply)"
                            ),
                        );
                    }
                }
            }
            if let Some(v) = get("timeout") {
                self.at(
                    v.span(),
                    "`timeout` applies to TCP connections only; a UDP service has none",
                );
            }
        }

        let group = match get("group") {
            Some(v) if !is_internal => self.nonempty_string("group", v).map(|g| {
                if get("user").is_none() {
                    self.at(
                        v.span(),
                        "`group` needs a `user`: the group replaces that user's primary group",
                    );
                }
                Some(g.to_string())
            }),
            _ => Some(None),
        };
        let argv0 = match get("argv0") {
            Some(v) if !is_internal => {
                if get("command").is_some_and(|c| c.get_ref().as_str().is_some()) {
                    self.at(
                        v.span(),
                        "`argv0` needs `command` as an array: a string command line is split (or, on Windows, passed) as it is",
                    );
                }
                self.nonempty_string("argv0", v)
                    .map(|a| Some(a.to_string()))
            }
            _ => Some(None),
        };
        let tls = match get("tls") {
            Some(v) => {
                if protocol == Some(Protocol::Udp) {
                    self.at(
                        v.span(),
                        "`tls` applies to TCP services only: TLS runs over a stream (DTLS is not supported)",
                    );
                }
                if let Some(h) = get("handoff")
                    && h.get_ref().as_str() == Some("direct")
                {
                    self.at(
                        h.span(),
                        "`handoff = \"direct\"` cannot go with `tls`: wininetd holds the TLS session and relays plain bytes through pipes; remove `handoff`",
                    );
                }
                self.tls(v).map(Some)
            }
            None => Some(None),
        };
        let proxy = self.proxy(&get, protocol, &header);

        if self.errors.len() != errors_before {
            return None;
        }
        let protocol = protocol?;
        let port = port?;
        Some(Service {
            name: name.unwrap_or_else(|| format!("{protocol}/{port}")),
            origin: self.location(&header),
            protocol,
            port,
            bind: bind?,
            wait: wait?,
            program: program?,
            user: user?,
            stderr: stderr?,
            handoff: handoff?,
            env: env?,
            working_directory: working_directory?,
            limits: Limits {
                max_instances: max_instances?,
                per_source: per_source?,
                rate: rate?,
                per_source_rate: per_source_rate?,
            },
            access: Access {
                allow: allow?,
                deny: deny?,
            },
            timeout: timeout?,
            pass_env: pass_env?,
            group: group?,
            argv0: argv0?,
            tls: tls?,
            proxy: proxy?,
        })
    }

    /// `proxy_protocol` with `proxy_from` and `proxy_timeout`; `Some(None)`
    /// when the service reads no header.
    fn proxy<'v>(
        &mut self,
        get: &dyn Fn(&str) -> Option<&'v Value<'v>>,
        protocol: Option<Protocol>,
        header: &Range<usize>,
    ) -> Option<Option<ProxyProtocol>> {
        let Some(v) = get("proxy_protocol") else {
            for key in ["proxy_from", "proxy_timeout"] {
                if let Some(v) = get(key) {
                    self.at(
                        v.span(),
                        format!("`{key}` needs `proxy_protocol = \"v1\"`, \"v2\" or \"any\""),
                    );
                }
            }
            return Some(None);
        };
        let choices = [
            ("v1", ProxyVersion::V1),
            ("v2", ProxyVersion::V2),
            ("any", ProxyVersion::Any),
        ];
        let version = self.choice("proxy_protocol", v, &choices);
        if protocol == Some(Protocol::Udp) {
            self.at(
                v.span(),
                "`proxy_protocol` applies to TCP services only: a UDP datagram carries no PROXY header here",
            );
            return None;
        }
        let from = match get("proxy_from") {
            Some(f) => self.nets("proxy_from", f).and_then(|nets| {
                if nets.is_empty() {
                    self.at(
                        f.span(),
                        "`proxy_from = []` would refuse every connection: list the load balancers' addresses",
                    );
                    return None;
                }
                Some(nets)
            }),
            None => {
                self.at(
                    header.clone(),
                    "`proxy_protocol` needs `proxy_from`: the load balancers allowed to send a header (anyone else could claim any client address)",
                );
                None
            }
        };
        let timeout = match get("proxy_timeout") {
            Some(t) => self.integer("proxy_timeout", t, 1..=3600).map(|n| n as u32),
            None => Some(DEFAULT_PROXY_TIMEOUT),
        };
        Some(Some(ProxyProtocol {
            version: version?,
            from: from?,
            timeout: timeout?,
        }))
    }

    fn bind(&mut self, v: &Value) -> Option<Vec<IpAddr>> {
        let items = self.strings("bind", v)?;
        if items.is_empty() {
            self.at(
                v.span(),
                "`bind` is empty: list the addresses to listen on, or remove `bind` to listen on every interface",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (text, span) in items {
            match text.parse::<IpAddr>() {
                Ok(ip) if out.contains(&ip) => {
                    self.at(span, format!("`bind` lists {ip} twice"));
                    ok = false;
                }
                Ok(ip) => out.push(ip),
                Err(_) => {
                    self.at(span, format!("`bind`: {text:?} is not an IP address"));
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn command(&mut self, v: &Value) -> Option<CommandLine> {
        if let Some(s) = v.get_ref().as_str() {
            if s.trim().is_empty() {
                self.at(v.span(), "`command` is empty");
                return None;
            }
            if s.contains('\0') {
                self.at(v.span(), "`command` contains a NUL character");
                return None;
            }
            return Some(CommandLine::Raw(s.to_string()));
        }
        if v.get_ref().as_array().is_none() {
            self.wrong_type("command", "an array of strings (argv) or a string", v);
            return None;
        }
        let argv = self.strings("command", v)?;
        let Some((program, span)) = argv.first() else {
            self.at(
                v.span(),
                "`command` is empty: its first element is the program to run",
            );
            return None;
        };
        if program.is_empty() {
            self.at(
                span.clone(),
                "`command`: the program (first element) is empty",
            );
            return None;
        }
        let mut ok = true;
        for (arg, span) in &argv {
            if arg.contains('\0') {
                self.at(span.clone(), "`command` contains a NUL character");
                ok = false;
            }
        }
        ok.then(|| CommandLine::Argv(argv.into_iter().map(|(s, _)| s.to_string()).collect()))
    }

    fn user(&mut self, user: Option<&Value>, password_file: Option<&Value>) -> Option<RunAs> {
        let run_as = match user {
            None => None,
            Some(v) => {
                let text = self.string("user", v)?;
                if text.is_empty() {
                    self.at(
                        v.span(),
                        "`user` is empty: give an account name, or \"none\" to run as wininetd's own account",
                    );
                    return None;
                }
                match parse_user(text) {
                    Ok(r) => Some((r, v.span())),
                    Err(e) => {
                        // parse_user's messages never include the password.
                        self.at(v.span(), format!("`user`: {e}"));
                        return None;
                    }
                }
            }
        };
        let Some(pf) = password_file else {
            return Some(run_as.map_or(RunAs::Daemon, |(r, _)| r));
        };
        let path = self.nonempty_string("password_file", pf)?;
        match run_as {
            None => {
                self.at(
                    pf.span(),
                    "`password_file` needs `user = \"NAME\"`: the account whose password it holds",
                );
                None
            }
            Some((RunAs::Daemon, _)) => {
                self.at(
                    pf.span(),
                    "`password_file` cannot go with `user = \"none\"`: the program runs as wininetd's own account, which needs no password",
                );
                None
            }
            Some((
                RunAs::User {
                    secret: Some(_), ..
                },
                _,
            )) => {
                self.at(
                    pf.span(),
                    "`password_file` cannot go with a `user` that already gives a password (NAME:PASSWORD or NAME:@FILE): keep one of them",
                );
                None
            }
            Some((RunAs::User { name, secret: None }, _)) => Some(RunAs::User {
                name,
                secret: Some(Secret::File(PathBuf::from(path))),
            }),
        }
    }

    fn env(&mut self, v: &Value) -> Option<Vec<(String, String)>> {
        let Some(table) = v.get_ref().as_table() else {
            self.wrong_type(
                "env",
                "a table of strings, like env = { NAME = \"value\" }",
                v,
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (key, value) in table {
            let name = key.get_ref().as_ref();
            if name.is_empty() || name.contains(['=', '\0']) {
                self.at(
                    key.span(),
                    format!("`env`: {name:?} is not a valid variable name (it must be non-empty, without `=` or NUL)"),
                );
                ok = false;
            }
            match value.get_ref().as_str() {
                Some(s) if s.contains('\0') => {
                    self.at(
                        value.span(),
                        format!("`env`: the value of {name} contains a NUL character"),
                    );
                    ok = false;
                }
                Some(s) => out.push((name.to_string(), s.to_string())),
                None => {
                    self.at(
                        value.span(),
                        format!(
                            "`env`: the value of {name} must be a string, not {}",
                            a(value.get_ref().type_str())
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// `pass_env`: variable names, or prefixes ending in `*`.
    fn pass_env(&mut self, v: &Value) -> Option<Vec<String>> {
        let items = self.strings("pass_env", v)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (name, span) in items {
            match super::pass_env_error(name) {
                Some(e) => {
                    self.at(span, e);
                    ok = false;
                }
                None => out.push(name.to_string()),
            }
        }
        ok.then_some(out)
    }

    /// `allow`/`deny`: CIDR networks, or bare addresses as one-host networks.
    fn nets(&mut self, key: &str, v: &Value) -> Option<Vec<IpNet>> {
        let items = self.strings(key, v)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (text, span) in items {
            let net = text
                .parse::<IpNet>()
                .ok()
                .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
            match net {
                // Peers are matched as IPv4 when they are IPv4-mapped, so a
                // mapped rule would never match anything.
                Some(IpNet::V6(n))
                    if n.addr().to_ipv4_mapped().is_some() && n.prefix_len() >= 96 =>
                {
                    self.at(
                        span,
                        format!(
                            "`{key}`: {text:?} is an IPv4-mapped IPv6 network, which never matches (such peers are matched as IPv4); write it as {}/{}",
                            n.addr().to_ipv4_mapped().expect("checked above"),
                            n.prefix_len() - 96
                        ),
                    );
                    ok = false;
                }
                Some(n) => out.push(n),
                None => {
                    self.at(
                        span,
                        format!(
                            "`{key}`: {text:?} is not an IP network (like 10.0.0.0/8 or fd00::/8) or address"
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

/// "an integer", "a string".
fn a(noun: &str) -> String {
    let article = if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {noun}")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, DEFAULT_LINGER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, Password};
    use std::path::Path;

    fn parse(text: &[u8]) -> Result<Config, ConfigErrors> {
        config::parse(Path::new("test.toml"), text)
    }

    fn parse_ok(text: &str) -> Config {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("config must parse, got:\n{e}"))
    }

    /// The only service of a config that must parse.
    fn service(text: &str) -> Service {
        let mut c = parse_ok(text);
        assert_eq!(c.services.len(), 1);
        c.services.remove(0)
    }

    /// Every error as (`FILE:LINE`, message).
    fn errors(text: &str) -> Vec<(String, String)> {
        let e = parse(text.as_bytes()).expect_err("config must be rejected");
        e.0.into_iter().map(|e| (e.location, e.message)).collect()
    }

    /// The one error of a config that must be rejected for one reason.
    #[track_caller]
    fn one_error(text: &str) -> (String, String) {
        let mut e = errors(text);
        assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
        e.remove(0)
    }

    #[track_caller]
    fn assert_error(text: &str, line: usize, needle: &str) {
        let (location, message) = one_error(text);
        assert_eq!(location, format!("test.toml:{line}"), "{message}");
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }

    /// A valid service (header on line 1) with `extra` appended.
    fn with(extra: &str) -> String {
        format!("[[service]]\nport = 7000\ncommand = [\"/bin/cat\"]\n{extra}")
    }

    fn internal_with(extra: &str) -> String {
        format!("[[service]]\nport = 7000\ninternal = \"echo\"\n{extra}")
    }

    // ---- every key is read ----

    #[test]
    fn globals_default_when_absent() {
        let c = parse_ok(&with(""));
        assert_eq!(c.globals, Globals::default());
        assert_eq!(c.globals.timeout, None);
        assert_eq!(c.globals.linger_timeout, Some(DEFAULT_LINGER_TIMEOUT));
        assert_eq!(c.globals.max_connections, DEFAULT_MAX_CONNECTIONS);
    }

    #[test]
    fn global_ipv6_source_prefix_is_read_and_checked() {
        assert_eq!(parse_ok(&with("")).globals.ipv6_source_prefix, 64);
        for n in [1, 48, 128] {
            let c = parse_ok(&format!("ipv6_source_prefix = {n}\n{}", with("")));
            assert_eq!(c.globals.ipv6_source_prefix, n);
        }
        for bad in ["0", "129", "-64"] {
            assert_error(
                &format!("# prefix\nipv6_source_prefix = {bad}\n{}", with("")),
                2,
                &format!("`ipv6_source_prefix` must be an integer from 1 to 128, not {bad}"),
            );
        }
        assert_error(
            &format!("ipv6_source_prefix = \"64\"\n{}", with("")),
            1,
            "`ipv6_source_prefix` must be an integer",
        );
        assert_error(
            &with("ipv6_source_prefix = 64"),
            4,
            "`ipv6_source_prefix` is a global setting",
        );
    }

    #[test]
    fn global_timeout_is_read_and_zero_means_none() {
        let c = parse_ok(&format!("timeout = 30\n{}", with("")));
        assert_eq!(c.globals.timeout, Some(30));
        let c = parse_ok(&format!("timeout = 0\n{}", with("")));
        assert_eq!(c.globals.timeout, None);
    }

    #[test]
    fn global_linger_timeout_is_read_and_zero_means_none() {
        let c = parse_ok(&format!("linger_timeout = 5\n{}", with("")));
        assert_eq!(c.globals.linger_timeout, Some(5));
        let c = parse_ok(&format!("linger_timeout = 0\n{}", with("")));
        assert_eq!(c.globals.linger_timeout, None);
        assert_error(
            &format!("linger_timeout = 65536\n{}", with("")),
            1,
            "from 0 to 65535",
        );
    }

    #[test]
    fn global_max_connections_is_read() {
        let c = parse_ok(&format!("max_connections = 7\n{}", with("")));
        assert_eq!(c.globals.max_connections, 7);
        assert_error(
            &format!("max_connections = 0\n{}", with("")),
            1,
            "from 1 to",
        );
    }

    #[test]
    fn global_pipe_budget_is_a_size() {
        assert_eq!(parse_ok(&with("")).globals.pipe_budget, 256 << 20);
        let c = parse_ok(&format!("pipe_budget = \"64KiB\"\n{}", with("")));
        assert_eq!(c.globals.pipe_budget, 64 << 10);
        let c = parse_ok(&format!("pipe_budget = \"2 MiB\"\n{}", with("")));
        assert_eq!(c.globals.pipe_budget, 2 << 20);
        let c = parse_ok(&format!("pipe_budget = 0\n{}", with("")));
        assert_eq!(c.globals.pipe_budget, 0);
        let c = parse_ok(&format!("pipe_budget = \"1GiB\"\n{}", with("")));
        assert_eq!(c.globals.pipe_budget, 1 << 30);
        assert_error(
            &format!("pipe_budget = \"12 MB\"\n{}", with("")),
            1,
            "is not a size",
        );
        assert_error(&format!("pipe_budget = -1\n{}", with("")), 1, "from 0 to");
        assert_error(&format!("pipe_budget = true\n{}", with("")), 1, "a size");
        assert_error(
            &format!("pipe_budget = \"99999999999GiB\"\n{}", with("")),
            1,
            "too large",
        );
    }

    #[test]
    fn global_log_format_is_read() {
        let c = parse_ok(&format!("log_format = \"json\"\n{}", with("")));
        assert_eq!(c.globals.log_format, LogFormat::Json);
        let c = parse_ok(&format!("log_format = \"text\"\n{}", with("")));
        assert_eq!(c.globals.log_format, LogFormat::Text);
        assert_error(
            &format!("log_format = \"xml\"\n{}", with("")),
            1,
            "\"text\", \"json\"",
        );
    }

    #[test]
    fn name_is_read_and_defaults_to_protocol_slash_port() {
        assert_eq!(service(&with("name = \"echo\"")).name, "echo");
        assert_eq!(service(&with("")).name, "tcp/7000");
        let s = service("[[service]]\nport = 7001\nprotocol = \"udp\"\ninternal = \"echo\"\n");
        assert_eq!(s.name, "udp/7001");
        assert_error(&with("name = \"\""), 4, "`name` is empty");
        assert_error(&with("name = \"a\\nb\""), 4, "control character");
    }

    #[test]
    fn origin_is_the_service_header_line() {
        let c = parse_ok(&format!(
            "# comment\ntimeout = 1\n\n{}\n\n{}",
            with("name = \"a\""),
            "[[service]]\nport = 7001\ninternal = \"echo\"\n"
        ));
        assert_eq!(c.services[0].origin, "test.toml:4");
        assert_eq!(c.services[1].origin, "test.toml:9");
    }

    #[test]
    fn port_is_read() {
        assert_eq!(
            service("[[service]]\nport = 65535\ninternal = \"echo\"\n").port,
            65535
        );
        assert_eq!(
            service("[[service]]\nport = 1\ninternal = \"echo\"\n").port,
            1
        );
    }

    #[test]
    fn bind_is_read_and_defaults_to_both_wildcards() {
        let s = service(&with("bind = [\"127.0.0.1\", \"::1\"]"));
        assert_eq!(
            s.bind,
            [
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(service(&with("")).bind, DEFAULT_BIND.to_vec());
    }

    #[test]
    fn protocol_is_read_and_defaults_to_tcp() {
        assert_eq!(service(&with("")).protocol, Protocol::Tcp);
        let s = service(&internal_with("protocol = \"udp\""));
        assert_eq!(s.protocol, Protocol::Udp);
        assert_error(&internal_with("protocol = \"sctp\""), 4, "\"tcp\", \"udp\"");
    }

    #[test]
    fn wait_is_read_for_udp_programs() {
        let s = service(&with("protocol = \"udp\"\nwait = true"));
        assert!(s.wait);
        assert_eq!(s.protocol, Protocol::Udp);
        assert!(!service(&with("wait = false")).wait);
        assert!(!service(&with("")).wait);
    }

    #[test]
    fn command_array_is_argv_and_string_is_raw() {
        let s = service("[[service]]\nport = 7000\ncommand = [\"/bin/echo\", \"a b\", \"\"]\n");
        assert_eq!(
            s.program,
            Program::Command(CommandLine::Argv(vec![
                "/bin/echo".into(),
                "a b".into(),
                String::new()
            ]))
        );
        let s = service("[[service]]\nport = 7000\ncommand = \"/bin/echo 'a b'\"\n");
        assert_eq!(
            s.program,
            Program::Command(CommandLine::Raw("/bin/echo 'a b'".into()))
        );
    }

    #[test]
    fn command_must_not_be_empty() {
        assert_error(
            "[[service]]\nport = 7000\ncommand = []\n",
            3,
            "`command` is empty",
        );
        assert_error(
            "[[service]]\nport = 7000\ncommand = \"  \"\n",
            3,
            "`command` is empty",
        );
        assert_error(
            "[[service]]\nport = 7000\ncommand = [\"\", \"x\"]\n",
            3,
            "program (first element) is empty",
        );
        assert_error(
            "[[service]]\nport = 7000\ncommand = [\"/bin/cat\", 5]\n",
            3,
            "holds an integer",
        );
    }

    #[test]
    fn internal_is_read() {
        for (text, kind) in [
            ("echo", Internal::Echo),
            ("discard", Internal::Discard),
            ("chargen", Internal::Chargen),
            ("daytime", Internal::Daytime),
            ("time", Internal::Time),
            ("metrics", Internal::Metrics),
        ] {
            let s = service(&format!(
                "[[service]]\nport = 7000\ninternal = \"{text}\"\n"
            ));
            assert_eq!(s.program, Program::Internal(kind));
            assert_eq!(s.user, RunAs::Daemon);
        }
        assert_error(
            "[[service]]\nport = 7000\ninternal = \"qotd\"\n",
            3,
            "`internal` must be one of \"echo\"",
        );
    }

    #[test]
    fn metrics_is_tcp_only() {
        assert_error(
            "[[service]]\nport = 7000\ninternal = \"metrics\"\nprotocol = \"udp\"\n",
            4,
            "served over TCP only",
        );
        let s = service("[[service]]\nport = 7000\ninternal = \"metrics\"\nprotocol = \"tcp\"\n");
        assert_eq!(s.program, Program::Internal(Internal::Metrics));
    }

    #[test]
    fn user_is_read() {
        assert_eq!(service(&with("")).user, RunAs::Daemon);
        assert_eq!(service(&with("user = \"none\"")).user, RunAs::Daemon);
        assert_eq!(
            service(&with("user = \"bob\"")).user,
            RunAs::User {
                name: "bob".into(),
                secret: None
            }
        );
        assert_eq!(
            service(&with("user = \"bob:pa:ss\"")).user,
            RunAs::User {
                name: "bob".into(),
                secret: Some(Secret::Inline(Password::new("pa:ss")))
            }
        );
        assert_eq!(
            service(&with("user = \"bob:@/etc/bob.pw\"")).user,
            RunAs::User {
                name: "bob".into(),
                secret: Some(Secret::File("/etc/bob.pw".into()))
            }
        );
        assert_error(&with("user = \"\""), 4, "`user` is empty");
    }

    #[test]
    fn password_file_is_read_and_needs_a_plain_user_name() {
        assert_eq!(
            service(&with("user = \"bob\"\npassword_file = \"/etc/bob.pw\"")).user,
            RunAs::User {
                name: "bob".into(),
                secret: Some(Secret::File("/etc/bob.pw".into()))
            }
        );
        assert_error(
            &with("password_file = \"/etc/bob.pw\""),
            4,
            "needs `user = \"NAME\"`",
        );
        assert_error(
            &with("user = \"none\"\npassword_file = \"/etc/bob.pw\""),
            5,
            "cannot go with `user = \"none\"`",
        );
        assert_error(
            &with("user = \"bob:@/x\"\npassword_file = \"/etc/bob.pw\""),
            5,
            "already gives a password",
        );
    }

    #[test]
    fn passwords_never_appear_in_errors() {
        for text in [
            with("user = \"bob:Sup3rSecret\"\npassword_file = \"/etc/bob.pw\""),
            with("user = \":Sup3rSecret\""),
            internal_with("user = \"bob:Sup3rSecret\""),
            format!("{}\nfoo = 1", with("user = \"bob:Sup3rSecret\"")),
            with("user = \"bob:Sup3rSecret\"\nport = 1"), // duplicate key: a syntax error
            with("user = \"bob:Sup3rSecret\\q\""),        // bad escape inside it
            with("user = \"bob:Sup3rSecret\n"),           // unterminated string
            with("user = bob:Sup3rSecret"),               // not quoted
        ] {
            let e = parse(text.as_bytes()).expect_err("config must be rejected");
            assert!(!e.0.is_empty());
            assert!(!e.to_string().contains("Sup3rSecret"), "{e}");
            assert!(!format!("{e:?}").contains("Sup3rSecret"), "{e:?}");
        }
    }

    #[test]
    fn stderr_is_read() {
        assert_eq!(service(&with("")).stderr, StderrMode::Socket);
        assert_eq!(service(&with("stderr = \"log\"")).stderr, StderrMode::Log);
        assert_eq!(service(&with("stderr = \"null\"")).stderr, StderrMode::Null);
        assert_eq!(
            service(&with("stderr = \"socket\"")).stderr,
            StderrMode::Socket
        );
        assert_error(
            &with("stderr = \"file\""),
            4,
            "\"socket\", \"log\", \"null\"",
        );
    }

    #[test]
    fn handoff_is_read_and_defaults_to_the_platform() {
        assert_eq!(service(&with("")).handoff, None);
        assert_eq!(
            service(&with("handoff = \"pipe\"")).handoff,
            Some(Handoff::Pipe)
        );
        assert_eq!(
            service(&with("handoff = \"direct\"")).handoff,
            Some(Handoff::Direct)
        );
        assert_error(&with("handoff = \"socket\""), 4, "\"direct\", \"pipe\"");
    }

    #[test]
    fn pass_env_is_read_globally_and_per_service_with_a_default() {
        let c = parse_ok(&with(""));
        assert_eq!(c.globals.pass_env, ["TZ", "LANG", "LC_*"]);
        assert_eq!(c.services[0].pass_env, None);
        let c = parse_ok(&format!("pass_env = [\"TZ\", \"MY_*\"]\n{}", with("")));
        assert_eq!(c.globals.pass_env, ["TZ", "MY_*"]);
        let s = service(&with("pass_env = []"));
        assert_eq!(s.pass_env, Some(Vec::new()));
        assert_error(&with("pass_env = [\"A=B\"]"), 4, "`pass_env`");
        assert_error(&with("pass_env = [\"*X\"]"), 4, "prefix ending in `*`");
        assert_error(&with("pass_env = [\"\"]"), 4, "`pass_env`");
        assert_error(&internal_with("pass_env = [\"TZ\"]"), 4, "no meaning");
    }

    #[test]
    fn env_is_read() {
        let s = service(&with(
            "env = { GREETING = \"hi\", \"Lower.case\" = \"x=y\" }",
        ));
        assert_eq!(
            s.env,
            [
                ("GREETING".to_string(), "hi".to_string()),
                ("Lower.case".to_string(), "x=y".to_string())
            ]
        );
        let s = service(&format!("{}\n[service.env]\nA = \"1\"\n", with("")));
        assert_eq!(s.env, [("A".to_string(), "1".to_string())]);
    }

    #[test]
    fn env_names_and_values_are_checked() {
        let e = errors(&with("env = { \"\" = \"a\", \"A=B\" = \"b\", C = 1 }\n"));
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e.iter().all(|(l, _)| l == "test.toml:4"), "{e:#?}");
        assert!(
            e.iter()
                .any(|(_, m)| m.contains("\"\" is not a valid variable name"))
        );
        assert!(
            e.iter()
                .any(|(_, m)| m.contains("\"A=B\" is not a valid variable name"))
        );
        assert!(
            e.iter()
                .any(|(_, m)| m.contains("value of C must be a string"))
        );
        assert_error(&with("env = { A = \"x\\u0000y\" }"), 4, "NUL");
        assert_error(
            &with("env = { \"A\\u0000\" = \"x\" }"),
            4,
            "not a valid variable name",
        );
        assert_error(&with("env = \"A=1\""), 4, "`env` must be a table");
    }

    #[test]
    fn working_directory_is_read() {
        let s = service(&with("working_directory = \"/srv/echo\""));
        assert_eq!(s.working_directory, Some(PathBuf::from("/srv/echo")));
        assert_eq!(service(&with("")).working_directory, None);
        assert_error(&with("working_directory = \"\""), 4, "is empty");
    }

    #[test]
    fn limits_are_read() {
        let s = service(&with(
            "max_instances = 100\nper_source = 10\nrate = \"200/s\"",
        ));
        assert_eq!(s.limits.max_instances, Some(100));
        assert_eq!(s.limits.per_source, Some(10));
        assert_eq!(s.limits.rate, Some(Rate { per_second: 200.0 }));
        assert_eq!(
            service(&with("rate = \"30/m\"")).limits.rate,
            Some(Rate { per_second: 0.5 })
        );
        assert_eq!(service(&with("")).limits, Limits::default());
    }

    #[test]
    fn per_source_rate_is_read_with_the_syntax_of_rate() {
        let s = service(&with("per_source_rate = \"10/s\""));
        assert_eq!(s.limits.per_source_rate, Some(Rate { per_second: 10.0 }));
        assert_eq!(s.limits.rate, None);
        let s = service(&with("rate = \"100/s\"\nper_source_rate = \"60/m\""));
        assert_eq!(s.limits.per_source_rate, Some(Rate { per_second: 1.0 }));
        assert_eq!(s.limits.rate, Some(Rate { per_second: 100.0 }));
        // It applies to UDP internal services too, per datagram.
        let s = service(&internal_with(
            "protocol = \"udp\"\nper_source_rate = \"5/s\"",
        ));
        assert_eq!(s.limits.per_source_rate, Some(Rate { per_second: 5.0 }));
        assert_error(
            &with("per_source_rate = \"10\""),
            4,
            "rate \"10\" is not COUNT/s",
        );
        assert_error(
            &with("per_source_rate = \"0/s\""),
            4,
            "would refuse every connection",
        );
        assert_error(
            &with("per_source_rate = 10"),
            4,
            "`per_source_rate` must be a string, not an integer",
        );
    }

    #[test]
    fn limits_must_be_at_least_one() {
        assert_error(&with("max_instances = 0"), 4, "from 1 to 4294967295");
        assert_error(&with("per_source = -1"), 4, "from 1 to 4294967295, not -1");
        assert_error(
            &with("max_instances = 4294967296"),
            4,
            "from 1 to 4294967295",
        );
    }

    #[test]
    fn allow_and_deny_are_read_and_bare_addresses_are_hosts() {
        let s = service(&with(
            "allow = [\"127.0.0.0/8\", \"::1\", \"192.0.2.7\"]\ndeny = [\"10.0.0.0/8\", \"fd00::/8\"]",
        ));
        let nets = |v: &[&str]| {
            v.iter()
                .map(|n| n.parse::<IpNet>().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            s.access.allow,
            nets(&["127.0.0.0/8", "::1/128", "192.0.2.7/32"])
        );
        assert_eq!(s.access.deny, nets(&["10.0.0.0/8", "fd00::/8"]));
        assert_eq!(service(&with("deny = []")).access, Access::default());
    }

    #[test]
    fn allow_must_not_be_empty() {
        assert_error(&with("allow = []"), 4, "would allow every source");
    }

    #[test]
    fn ipv4_mapped_rules_are_refused_with_the_ipv4_spelling() {
        assert_error(
            &with("deny = [\"::ffff:10.0.0.0/104\"]"),
            4,
            "write it as 10.0.0.0/8",
        );
    }

    #[test]
    fn service_timeout_is_read_and_zero_is_kept() {
        assert_eq!(service(&with("timeout = 30")).timeout, Some(30));
        assert_eq!(service(&with("timeout = 0")).timeout, Some(0));
        assert_eq!(service(&with("")).timeout, None);
        assert_error(&with("timeout = -1"), 4, "from 0 to 4294967295, not -1");
        assert_error(&with("timeout = 4294967296"), 4, "from 0 to 4294967295");
    }

    // ---- errors, each with its line ----

    #[test]
    fn unknown_top_level_key_is_an_error_on_its_line() {
        assert_error(
            &format!("\ntimeuot = 5\n{}", with("")),
            2,
            "unknown key `timeuot` at the top level (did you mean `timeout`?)",
        );
        assert_error(
            &format!("port = 7\n{}", with("")),
            1,
            "`port` is a service setting",
        );
    }

    #[test]
    fn unknown_service_key_is_an_error_on_its_line() {
        assert_error(
            &with("\nper_sourc = 3"),
            5,
            "unknown key `per_sourc` in [[service]] (did you mean `per_source`?)",
        );
        assert_error(
            &with("frobnicate = 3"),
            4,
            "unknown key `frobnicate` in [[service]]",
        );
        // A global written after a [[service]] header belongs to the service.
        assert_error(
            &with("max_connections = 3"),
            4,
            "`max_connections` is a global setting: put it above the first [[service]]",
        );
        // Sub-tables count too.
        assert_error(
            &format!("{}[service.limits]\nrate = \"1/s\"\n", with("")),
            4,
            "unknown key `limits`",
        );
    }

    #[test]
    fn wrong_types_are_errors_on_their_line() {
        assert_error(
            "[[service]]\ninternal = \"echo\"\nport = \"7000\"\n",
            3,
            "`port` must be an integer from 1 to 65535, not a string",
        );
        assert_error(
            &with("wait = \"yes\""),
            4,
            "`wait` must be true or false, not a string",
        );
        assert_error(
            &with("bind = \"127.0.0.1\""),
            4,
            "`bind` must be an array of strings, not a string",
        );
        assert_error(
            &with("rate = 200"),
            4,
            "`rate` must be a string, not an integer",
        );
        assert_error(&with("timeout = 1.5"), 4, "not a float");
        assert_error(
            "[[service]]\nport = 7000\ncommand = { program = \"x\" }\n",
            3,
            "`command` must be an array of strings (argv) or a string, not a table",
        );
        assert_error(
            &format!("timeout = \"30\"\n{}", with("")),
            1,
            "`timeout` must be an integer",
        );
    }

    #[test]
    fn array_element_errors_point_at_the_element() {
        assert_error(
            &with("bind = [\n  \"127.0.0.1\",\n  7,\n]"),
            6,
            "holds an integer",
        );
    }

    #[test]
    fn command_and_internal_exclude_each_other() {
        assert_error(
            "[[service]]\nport = 7000\ncommand = [\"/bin/cat\"]\ninternal = \"echo\"\n",
            4,
            "`command` and `internal` exclude each other",
        );
    }

    #[test]
    fn command_or_internal_is_required() {
        assert_error(
            "\n[[service]]\nport = 7000\n",
            2,
            "neither `command` nor `internal`",
        );
    }

    #[test]
    fn port_is_required_and_in_range() {
        assert_error(
            "[[service]]\ninternal = \"echo\"\n",
            1,
            "the service has no `port`",
        );
        assert_error(
            "[[service]]\nport = 0\ninternal = \"echo\"\n",
            2,
            "`port` must be an integer from 1 to 65535, not 0",
        );
        assert_error(
            "[[service]]\nport = 70000\ninternal = \"echo\"\n",
            2,
            "`port` must be an integer from 1 to 65535, not 70000",
        );
        assert_error(
            "[[service]]\nport = 99999999999999999999999\ninternal = \"echo\"\n",
            2,
            "from 1 to 65535",
        );
    }

    #[test]
    fn udp_program_without_wait_is_an_error_that_says_why() {
        let needle = "gets the bound socket and reads the datagrams itself";
        assert_error(&with("protocol = \"udp\""), 4, needle);
        assert_error(&with("protocol = \"udp\"\nwait = false"), 5, needle);
        let (_, message) = one_error(&with("protocol = \"udp\""));
        assert!(
            message.contains("wait = true") && message.contains("internal"),
            "{message}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn tcp_wait_is_read_for_programs() {
        assert!(service(&with("wait = true")).wait);
        assert!(!service(&with("wait = false")).wait);
        let s = service(&with("protocol = \"tcp\"\nwait = true\nrate = \"10/m\""));
        assert!(s.wait && s.protocol == Protocol::Tcp);
    }

    #[cfg(unix)]
    #[test]
    fn tcp_wait_refuses_per_connection_settings() {
        for (key, value) in [
            ("allow", "[\"127.0.0.1\"]"),
            ("deny", "[\"127.0.0.1\"]"),
            ("per_source", "1"),
            ("max_instances", "1"),
            ("handoff", "\"pipe\""),
        ] {
            let (location, message) = one_error(&with(&format!("wait = true\n{key} = {value}")));
            assert_eq!(location, "test.toml:1");
            assert!(
                message.contains(&format!("`{key}` has no meaning for a TCP `wait` service")),
                "{message}"
            );
        }
    }

    #[cfg(windows)]
    #[test]
    fn group_argv0_and_tcp_wait_are_refused_on_windows() {
        for extra in [
            "user = \"x\"\ngroup = \"adm\"",
            "argv0 = \"x\"",
            "wait = true",
        ] {
            let (location, message) = one_error(&with(extra));
            assert_eq!(location, "test.toml:1");
            assert!(message.contains("not supported on Windows"), "{message}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn group_and_argv0_are_read() {
        let s = service(&with(
            "user = \"nobody\"\ngroup = \"nogroup\"\nargv0 = \"in.cat\"",
        ));
        assert_eq!(s.group.as_deref(), Some("nogroup"));
        assert_eq!(s.argv0.as_deref(), Some("in.cat"));
        let plain = service(&with(""));
        assert_eq!((plain.group, plain.argv0), (None, None));
        assert_error(&with("group = \"adm\""), 4, "`group` needs a `user`");
        assert_error(
            &with("user = \"none\"\ngroup = \"adm\""),
            1,
            "a `group` needs a `user`",
        );
        assert_error(&with("user = \"x\"\ngroup = \"\""), 5, "`group` is empty");
        assert_error(&with("argv0 = \"\""), 4, "`argv0` is empty");
        assert_error(
            "[[service]]\nport = 7000\ncommand = \"/bin/cat\"\nargv0 = \"x\"\n",
            4,
            "needs `command` as an array",
        );
    }

    #[test]
    fn udp_handoff_is_meaningless() {
        assert_error(
            &with("protocol = \"udp\"\nwait = true\nhandoff = \"pipe\""),
            6,
            "`handoff` has no meaning for a UDP service",
        );
    }

    #[test]
    fn settings_the_core_ignores_for_udp_are_errors() {
        let udp_internal = |extra: &str| internal_with(&format!("protocol = \"udp\"\n{extra}"));
        assert_error(
            &udp_internal("max_instances = 5"),
            5,
            "`max_instances` has no meaning for a UDP internal service",
        );
        assert_error(
            &udp_internal("per_source = 5"),
            5,
            "`per_source` has no meaning for a UDP internal service",
        );
        assert_error(
            &udp_internal("timeout = 5"),
            5,
            "`timeout` applies to TCP connections only",
        );
        assert_error(
            &with("protocol = \"udp\"\nwait = true\ntimeout = 5"),
            6,
            "`timeout` applies to TCP connections only",
        );
        // What does apply to UDP internal services is read.
        let s = service(&udp_internal(
            "rate = \"5/s\"\nallow = [\"::1\"]\ndeny = [\"::2\"]",
        ));
        assert_eq!(s.limits.rate, Some(Rate { per_second: 5.0 }));
        assert_eq!(s.access.allow.len(), 1);
        assert_eq!(s.access.deny.len(), 1);
        // A UDP program's limits are counted per running program.
        let s = service(&with(
            "protocol = \"udp\"\nwait = true\nmax_instances = 1\nper_source = 1",
        ));
        assert_eq!(
            (s.limits.max_instances, s.limits.per_source),
            (Some(1), Some(1))
        );
    }

    #[test]
    fn program_keys_are_errors_for_internal_services() {
        for (key, value) in [
            ("user", "\"bob:secret\""),
            ("password_file", "\"/x\""),
            ("stderr", "\"log\""),
            ("handoff", "\"pipe\""),
            ("env", "{ A = \"1\" }"),
            ("working_directory", "\"/tmp\""),
            ("wait", "true"),
            ("group", "\"adm\""),
            ("argv0", "\"x\""),
        ] {
            assert_error(
                &internal_with(&format!("{key} = {value}")),
                4,
                &format!("`{key}` has no meaning for an internal service"),
            );
        }
        assert_error(
            &format!("{}protocol = \"udp\"\nwait = true\n", internal_with("")),
            5,
            "`wait` has no meaning for an internal service",
        );
    }

    #[test]
    fn internal_services_accept_what_restates_wininetd() {
        let s = service(&internal_with("wait = false\nuser = \"none\""));
        assert!(!s.wait);
        assert_eq!(s.user, RunAs::Daemon);
        // A named user is kept, to be checked against the daemon's own
        // account when the config is applied.
        let s = service(&internal_with("user = \"root\""));
        assert_eq!(
            s.user,
            RunAs::User {
                name: "root".into(),
                secret: None
            }
        );
    }

    #[test]
    fn bad_bind_addresses_are_named() {
        assert_error(
            &with("bind = [\"127.0.0.1\", \"localhost\"]"),
            4,
            "\"localhost\" is not an IP address",
        );
        assert_error(
            &with("bind = [\"10.0.0.0/8\"]"),
            4,
            "\"10.0.0.0/8\" is not an IP address",
        );
        assert_error(&with("bind = []"), 4, "`bind` is empty");
        assert_error(&with("bind = [\"::1\", \"::1\"]"), 4, "lists ::1 twice");
    }

    #[test]
    fn bad_cidrs_are_named() {
        assert_error(
            &with("allow = [\"10.0.0.0/33\"]"),
            4,
            "`allow`: \"10.0.0.0/33\" is not an IP network",
        );
        assert_error(
            &with("deny = [\"example.com\"]"),
            4,
            "`deny`: \"example.com\" is not an IP network",
        );
    }

    #[test]
    fn bad_rates_are_errors() {
        assert_error(&with("rate = \"200\""), 4, "rate \"200\" is not COUNT/s");
        assert_error(&with("rate = \"0/s\""), 4, "would refuse every connection");
    }

    #[test]
    fn service_must_be_an_array_of_tables() {
        assert_error(
            "[service]\nport = 7000\ninternal = \"echo\"\n",
            1,
            "write each service as [[service]]",
        );
        assert_error(
            "service = [1]\n",
            1,
            "`service` must be an array of tables, not an integer",
        );
    }

    #[test]
    fn inline_service_tables_work_too() {
        let s = service("service = [\n  { port = 7000, internal = \"echo\" },\n]\n");
        assert_eq!(s.origin, "test.toml:2");
        assert_eq!(s.program, Program::Internal(Internal::Echo));
    }

    #[test]
    fn every_error_of_every_service_is_reported_with_its_line() {
        let text = "\
timeout = -5
[[service]]
port = 0
internal = \"echo\"
[[service]]
port = 7001
command = [\"/bin/cat\"]
bnid = [\"::1\"]
allow = [\"300.0.0.0/8\"]
[[service]]
port = 7002
internal = \"echo\"
";
        let e = errors(text);
        let lines: Vec<&str> = e.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            lines,
            ["test.toml:1", "test.toml:3", "test.toml:8", "test.toml:9"],
            "{e:#?}"
        );
        assert!(e[0].1.contains("`timeout`"));
        assert!(e[1].1.contains("`port`"));
        assert!(e[2].1.contains("`bnid`"));
        assert!(e[3].1.contains("300.0.0.0/8"));
    }

    #[test]
    fn syntax_error_is_one_error_on_its_line() {
        assert_error(&with("\nname = \"unterminated\n"), 5, "TOML syntax error");
        assert_error(
            &with("port = 7001"),
            4,
            "TOML syntax error: duplicate key `port`",
        );
        assert_error(
            &format!("{}[service]\n", with("")),
            4,
            "TOML syntax error: duplicate key `service`",
        );
        assert_error(
            "[[service]]\nport = 7000\n[[service\n",
            3,
            "TOML syntax error",
        );
    }

    #[test]
    fn non_utf8_is_one_error_on_the_line_of_the_first_bad_byte() {
        let text = b"# ok\n[[service]]\nport = 7000\ncommand = [\"/bin/caf\xe9\"]\n# \xff\n";
        let e = parse(text).expect_err("not UTF-8");
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].location, "test.toml:4");
        assert!(e.0[0].message.contains("UTF-8"), "{}", e.0[0].message);
        assert!(
            e.0[0].message.contains("byte 21 of the line"),
            "{}",
            e.0[0].message
        );
    }

    #[test]
    fn crlf_and_a_byte_order_mark_are_fine() {
        let s = service("\u{feff}[[service]]\r\nport = 7000\r\n\r\ninternal = \"echo\"\r\n");
        assert_eq!(s.origin, "test.toml:1");
        assert_error(
            "[[service]]\r\nport = 7000\r\nbogus = 1\r\ninternal = \"echo\"\r\n",
            3,
            "bogus",
        );
    }

    #[test]
    fn a_file_without_services_is_an_error() {
        let (location, message) = one_error("timeout = 5\n");
        assert_eq!(location, "test.toml");
        assert!(message.contains("no service is configured"));
        assert!(errors("").iter().any(|(_, m)| m.contains("no service")));
    }

    #[test]
    fn duplicate_addresses_are_still_caught_by_validate() {
        assert_error(
            &format!(
                "{}{}",
                with(""),
                "[[service]]\nport = 7000\ninternal = \"echo\"\nbind = [\"::1\"]\n"
            ),
            4,
            "already configured at test.toml:1",
        );
    }

    #[test]
    fn the_example_file_parses() {
        let c = config::parse(
            Path::new("examples/wininetd.toml"),
            include_bytes!("../../examples/wininetd.toml"),
        )
        .unwrap_or_else(|e| panic!("examples/wininetd.toml:\n{e}"));
        assert!(c.services.len() >= 4);
        let by_name = |n: &str| {
            c.services
                .iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("no service {n:?} in the example"))
        };
        assert!(matches!(by_name("echo").program, Program::Command(_)));
        assert_eq!(
            by_name("daytime").program,
            Program::Internal(Internal::Daytime)
        );
        let udp = by_name("udp-echo");
        assert_eq!(
            (udp.protocol, &udp.program),
            (Protocol::Udp, &Program::Internal(Internal::Echo))
        );
        let guarded = by_name("guarded");
        assert!(guarded.limits.rate.is_some());
        assert!(!guarded.access.allow.is_empty() && !guarded.access.deny.is_empty());
        for s in &c.services {
            assert!(s.port >= 1024, "{} should use a high port", s.name);
            assert!(
                s.bind.iter().all(|ip| ip.is_loopback()),
                "{} should listen on loopback only",
                s.name
            );
        }
    }

    #[test]
    fn proxy_protocol_is_read_with_its_defaults() {
        assert_eq!(service(&with("")).proxy, None);
        let s = service(&with(
            "proxy_protocol = \"v2\"\nproxy_from = [\"10.0.0.0/24\", \"::1\"]",
        ));
        assert_eq!(
            s.proxy,
            Some(ProxyProtocol {
                version: ProxyVersion::V2,
                from: vec!["10.0.0.0/24".parse().unwrap(), "::1/128".parse().unwrap()],
                timeout: DEFAULT_PROXY_TIMEOUT,
            })
        );
        let s = service(&internal_with(
            "proxy_protocol = \"any\"\nproxy_from = [\"127.0.0.1\"]\nproxy_timeout = 9",
        ));
        let p = s.proxy.unwrap();
        assert_eq!((p.version, p.timeout), (ProxyVersion::Any, 9));
        let s = service(&with(
            "proxy_protocol = \"v1\"\nproxy_from = [\"127.0.0.1\"]",
        ));
        assert_eq!(s.proxy.unwrap().version, ProxyVersion::V1);
    }

    #[test]
    fn proxy_protocol_errors_name_their_line() {
        assert_error(
            &with("proxy_protocol = \"v2\""),
            1,
            "`proxy_protocol` needs `proxy_from`",
        );
        assert_error(
            &with("proxy_protocol = \"v3\"\nproxy_from = [\"127.0.0.1\"]"),
            4,
            "\"v1\", \"v2\", \"any\"",
        );
        assert_error(
            &with("proxy_protocol = \"v2\"\nproxy_from = []"),
            5,
            "would refuse every connection",
        );
        assert_error(
            &with("proxy_protocol = \"v2\"\nproxy_from = [\"10.0.0.0/33\"]"),
            5,
            "not an IP network",
        );
        assert_error(
            &with("proxy_protocol = \"v2\"\nproxy_from = [\"127.0.0.1\"]\nproxy_timeout = 0"),
            6,
            "from 1 to 3600",
        );
        assert_error(
            &with("proxy_from = [\"127.0.0.1\"]"),
            4,
            "needs `proxy_protocol",
        );
        assert_error(&with("proxy_timeout = 3"), 4, "needs `proxy_protocol");
        // UDP: a program's `wait` socket and an internal service alike.
        assert_error(
            &with(
                "protocol = \"udp\"\nwait = true\nproxy_protocol = \"v2\"\nproxy_from = [\"127.0.0.1\"]",
            ),
            6,
            "TCP services only",
        );
        assert_error(
            &internal_with(
                "protocol = \"udp\"\nproxy_protocol = \"v1\"\nproxy_from = [\"127.0.0.1\"]",
            ),
            5,
            "TCP services only",
        );
    }

    #[test]
    fn a_typo_does_not_hide_the_cross_line_checks() {
        let e = errors(
            "timout = 1\n[[service]]\nport = 7000\ninternal = \"echo\"\n\
             [[service]]\nport = 7000\ninternal = \"echo\"\n",
        );
        // The duplicate clashes once per address family (0.0.0.0 and ::).
        assert_eq!(e.len(), 3, "{e:#?}");
        assert_eq!(e[0].0, "test.toml:1");
        assert!(e[0].1.contains("did you mean `timeout`"), "{e:#?}");
        assert_eq!(e[1].0, "test.toml:5");
        assert!(e[1].1.contains("already configured"), "{e:#?}");
    }
}
