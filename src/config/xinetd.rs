//! xinetd configs (`/etc/xinetd.conf`, `/etc/xinetd.d/*`), read for
//! `wininetd convert`: `defaults {}`, `service NAME {}`, `include` and
//! `includedir`, and `=`, `+=`, `-=`.
//!
//! Pure like the other parsers: the files an `include`/`includedir` names
//! come from a reader the caller passes. Attributes with no equivalent are
//! not errors but [`Note`]s (comments in the output) and warnings; a value
//! that cannot be carried faithfully (a host name in `only_from`) is an
//! error, so nothing is half-converted.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::toml_out::{Note, Place};
use super::{
    Access, CommandLine, Config, ConfigError, ConfigErrors, Globals, Internal, Limits, Program,
    Protocol, Rate, RunAs, Service, ServiceTable, StderrMode,
};

/// Reads what `include FILE` (a file) or `includedir DIR` (the files xinetd
/// would read there, in its order) names: `(name for messages, bytes)`.
pub type Reader<'r> = dyn FnMut(&str, bool) -> Result<Vec<(String, Vec<u8>)>, String> + 'r;

/// How deep `include`s may nest (a file including itself stops here).
const MAX_DEPTH: usize = 8;
/// How many files the includes may read in all.
const MAX_FILES: usize = 1000;

#[derive(Debug, Clone)]
struct Attr {
    name: String,
    op: Op,
    values: Vec<String>,
    location: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Set,
    Add,
    Remove,
}

#[derive(Debug)]
struct Block {
    /// `None` for `defaults`.
    service: Option<String>,
    location: String,
    attrs: Vec<Attr>,
}

/// Parses an xinetd config into the model plus the converter's notes.
pub fn parse(
    file: &str,
    bytes: &[u8],
    table: &ServiceTable,
    read: &mut Reader<'_>,
) -> Result<(Config, Vec<Note>), ConfigErrors> {
    let mut blocks = Vec::new();
    let mut errors = Vec::new();
    // Includes fan out as well as nest: bound the files read in all.
    // Past the bound nothing more is read, and that is said once.
    let (mut files, mut said) = (0usize, false);
    let mut counted = |path: &str, dir: bool| {
        if files >= MAX_FILES {
            if said {
                return Ok(Vec::new());
            }
            said = true;
            return Err(format!("more than {MAX_FILES} files included in all"));
        }
        let mut got = read(path, dir)?;
        got.truncate(MAX_FILES - files);
        files += got.len();
        Ok(got)
    };
    read_file(file, bytes, &mut counted, 0, &mut blocks, &mut errors);

    let mut defaults: Vec<Attr> = Vec::new();
    let mut notes = Vec::new();
    let mut warnings = Vec::new();
    let mut services = Vec::new();
    for b in &blocks {
        if b.service.is_none() {
            defaults.extend(b.attrs.iter().cloned());
        }
    }
    let mut disabled_by_defaults: HashSet<String> = HashSet::new();
    let mut enabled: Option<HashSet<String>> = None;
    for a in &defaults {
        match a.name.as_str() {
            "disabled" => disabled_by_defaults.extend(a.values.iter().cloned()),
            "enabled" => enabled
                .get_or_insert_with(HashSet::new)
                .extend(a.values.iter().cloned()),
            name if !CARRIED.contains(&name) => {
                let why = lost(name);
                warnings.push(ConfigError {
                    location: a.location.clone(),
                    message: format!("defaults: `{name}` is not carried: {why}"),
                });
                notes.push(Note {
                    place: Place::Before(0),
                    text: format!(
                        "{}: defaults: {} {} {} -- not carried: {why}",
                        a.location,
                        a.name,
                        a.op.as_str(),
                        a.values.join(" ")
                    ),
                });
            }
            _ => {}
        }
    }

    let mut ids: HashSet<String> = HashSet::new();
    for b in &blocks {
        let Some(name) = &b.service else { continue };
        let attrs = merge(&defaults, &b.attrs);
        let id = first(&attrs, "id").unwrap_or(name).to_string();
        let off = disabled_by_defaults.contains(&id)
            || enabled.as_ref().is_some_and(|e| !e.contains(&id))
            || first(&attrs, "disable").is_some_and(|v| v == "yes");
        let mut lost_here = Vec::new();
        let converted = service(name, b, &attrs, table, &mut lost_here);
        if off {
            // Kept as a comment, so enabling it is one edit away; what it
            // would lack is said there, but it is no warning: it is off.
            let text = match converted {
                Ok(Some(svc)) => {
                    let one = Config {
                        globals: Globals::default(),
                        services: vec![svc],
                        warnings: Vec::new(),
                    };
                    let lost: Vec<String> = lost_here
                        .iter()
                        .map(|(l, a, why)| format!("{l}: {a} -- not carried: {why}"))
                        .collect();
                    format!(
                        "{}: service {id} is disabled there; uncomment to enable it:\n{}{}",
                        b.location,
                        super::to_toml(&one, &[]).trim_end(),
                        lost.iter().map(|l| format!("\n{l}")).collect::<String>()
                    )
                }
                Ok(None) => format!(
                    "{}: service {id} is disabled there (and could not be served: {})",
                    b.location,
                    lost_here.first().map_or("", |l| l.2)
                ),
                Err(e) => format!(
                    "{}: service {id} is disabled there (and could not be converted: {})",
                    b.location,
                    e.iter()
                        .map(|e| e.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            };
            notes.push(Note {
                place: Place::Before(services.len()),
                text,
            });
            continue;
        }
        if !ids.insert(id.clone()) {
            // xinetd refuses a second service with the same id.
            let why = "a service with this id came before it; xinetd serves only that one";
            warnings.push(ConfigError {
                location: b.location.clone(),
                message: format!("service {id}: not carried: {why}"),
            });
            notes.push(Note {
                place: Place::Before(services.len()),
                text: format!("{}: service {id} -- not carried: {why}", b.location),
            });
            continue;
        }
        match converted {
            Ok(Some(svc)) => {
                let index = services.len();
                for (location, attr, why) in lost_here {
                    warnings.push(ConfigError {
                        location: location.clone(),
                        message: format!("service {id}: `{attr}` is not carried: {why}"),
                    });
                    notes.push(Note {
                        place: Place::In(index),
                        text: format!("{location}: {attr} -- not carried: {why}"),
                    });
                }
                services.push(svc);
            }
            Ok(None) => {
                for (location, attr, why) in lost_here {
                    warnings.push(ConfigError {
                        location: location.clone(),
                        message: format!("service {id}: not carried: {why}"),
                    });
                    notes.push(Note {
                        place: Place::Before(services.len()),
                        text: format!("{location}: service {id} ({attr}) -- not carried: {why}"),
                    });
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let config = Config {
        globals: Globals::default(),
        services,
        warnings,
    };
    // The rules across services a loaded config obeys (one service per
    // port...), said at the xinetd lines, not at convert's output.
    let errors = super::validate(file, &config, false);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok((config, notes))
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Set => "=",
            Op::Add => "+=",
            Op::Remove => "-=",
        }
    }
}

/// Why an attribute wininetd has no equivalent for is not carried.
fn lost(name: &str) -> &'static str {
    match name {
        "redirect" => "wininetd does not forward connections to another host",
        "banner" | "banner_success" | "banner_fail" => "wininetd sends no banner",
        "access_times" => "wininetd has no time-of-day access rules",
        "nice" => "wininetd does not change a program's priority",
        "umask" => "programs inherit wininetd's umask",
        "log_type" | "log_on_success" | "log_on_failure" => {
            "wininetd logs each start and end to its own log"
        }
        "max_load" => "wininetd does not refuse on system load",
        "deny_time" => "wininetd never suspends or blocks a source for a time",
        "groups" => "programs get their user's supplementary groups",
        "mdns" | "libwrap" => "wininetd does not do this",
        n if n.starts_with("rlimit_") => "wininetd sets no resource limits on programs",
        n if n.starts_with("rpc_") => "RPC services are not supported",
        _ => "wininetd has no such setting",
    }
}

fn read_file(
    file: &str,
    bytes: &[u8],
    read: &mut Reader<'_>,
    depth: usize,
    blocks: &mut Vec<Block>,
    errors: &mut Vec<ConfigError>,
) {
    let err = |errors: &mut Vec<ConfigError>, line: usize, message: String| {
        errors.push(ConfigError {
            location: format!("{file}:{line}"),
            message,
        })
    };
    let text = String::from_utf8_lossy(bytes);
    // (header, its line) waiting for `{`; the open block.
    let mut pending: Option<(Option<String>, usize)> = None;
    let mut open: Option<Block> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains('\0') {
            err(
                errors,
                line_no,
                "the line holds a NUL byte, which no value can".into(),
            );
            continue;
        }
        if let Some(block) = &mut open {
            if line == "}" {
                blocks.push(open.take().expect("open"));
                continue;
            }
            match attribute(line) {
                Ok((name, op, values)) => block.attrs.push(Attr {
                    name,
                    op,
                    values,
                    location: format!("{file}:{line_no}"),
                }),
                Err(m) => err(errors, line_no, m),
            }
            continue;
        }
        if line == "{" || line.ends_with('{') && pending.is_none() {
            let header = if line == "{" {
                pending.take()
            } else {
                header(line.trim_end_matches('{').trim(), line_no)
                    .map_err(|m| err(errors, line_no, m))
                    .ok()
                    .flatten()
            };
            match header {
                Some((service, at)) => {
                    open = Some(Block {
                        service,
                        location: format!("{file}:{at}"),
                        attrs: Vec::new(),
                    })
                }
                None => err(
                    errors,
                    line_no,
                    "`{` without `service NAME` or `defaults` before it".into(),
                ),
            }
            continue;
        }
        if pending.is_some() {
            err(
                errors,
                line_no,
                "expected `{` after the section header".into(),
            );
            pending = None;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(kw @ ("include" | "includedir")), Some(path), None) => {
                if depth >= MAX_DEPTH {
                    // Said once: a file including itself would say it often.
                    let m = format!("includes nest deeper than {MAX_DEPTH}");
                    if !errors.iter().any(|e| e.message == m) {
                        err(errors, line_no, m);
                    }
                    continue;
                }
                match read(path, kw == "includedir") {
                    Ok(files) => {
                        for (name, bytes) in files {
                            read_file(&name, &bytes, read, depth + 1, blocks, errors);
                        }
                    }
                    Err(m) => err(errors, line_no, format!("{kw} {path}: {m}")),
                }
            }
            _ => match header(line, line_no) {
                Ok(Some(h)) => pending = Some(h),
                Ok(None) => err(errors, line_no, format!("unexpected line {line:?}")),
                Err(m) => err(errors, line_no, m),
            },
        }
    }
    if open.is_some() || pending.is_some() {
        let at = open
            .as_ref()
            .map(|b| b.location.clone())
            .or(pending.map(|(_, l)| format!("{file}:{l}")))
            .unwrap_or_default();
        errors.push(ConfigError {
            location: at,
            message: "this section is not closed with `}`".into(),
        });
    }
}

/// `service NAME` or `defaults`.
#[allow(clippy::type_complexity)]
fn header(line: &str, line_no: usize) -> Result<Option<(Option<String>, usize)>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["defaults"] => Ok(Some((None, line_no))),
        ["service", name] if name.contains(char::is_control) => Err(format!(
            "service name {name:?} holds a control character (it is shown in logs)"
        )),
        ["service", name] => Ok(Some((Some(name.to_string()), line_no))),
        ["service"] => Err("`service` needs a name".into()),
        _ => Ok(None),
    }
}

/// `name = values`, `name += values`, `name -= values`.
fn attribute(line: &str) -> Result<(String, Op, Vec<String>), String> {
    // The first `=` is the operator's; values may hold `=`, `+=`, `-=`.
    let Some(eq) = line.find('=') else {
        return Err(format!("{line:?} is not `attribute = value`"));
    };
    let (name, op) = match line[..eq].strip_suffix('+') {
        Some(n) => (n, Op::Add),
        None => match line[..eq].strip_suffix('-') {
            Some(n) => (n, Op::Remove),
            None => (&line[..eq], Op::Set),
        },
    };
    let rest = &line[eq + 1..];
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("{line:?} is not `attribute = value`"));
    }
    Ok((
        name.to_string(),
        op,
        rest.split_whitespace().map(str::to_string).collect(),
    ))
}

/// The service's attributes on top of the defaults: `=` replaces, `+=`
/// adds to, `-=` takes from what the defaults (or earlier lines) said.
/// What the defaults hold that is not carried was said once, for them.
fn merge(defaults: &[Attr], own: &[Attr]) -> Vec<Attr> {
    let mut out: Vec<Attr> = Vec::new();
    for a in defaults
        .iter()
        .filter(|a| CARRIED.contains(&a.name.as_str()))
        .chain(own)
    {
        let existing = out.iter_mut().find(|e| e.name == a.name);
        match (a.op, existing) {
            (Op::Set, Some(e)) => {
                e.values = a.values.clone();
                e.location = a.location.clone();
            }
            (Op::Add, Some(e)) => {
                e.values.extend(a.values.iter().cloned());
                e.location = a.location.clone();
            }
            (Op::Remove, Some(e)) => {
                e.values.retain(|v| !a.values.contains(v));
                e.location = a.location.clone();
            }
            (Op::Remove, None) => {}
            (_, None) => out.push(Attr {
                op: Op::Set,
                ..a.clone()
            }),
        }
    }
    out
}

fn first<'a>(attrs: &'a [Attr], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.values.first())
        .map(String::as_str)
}

fn get<'a>(attrs: &'a [Attr], name: &str) -> Option<&'a Attr> {
    attrs.iter().find(|a| a.name == name)
}

/// Attributes whose meaning is carried into the model.
const CARRIED: &[&str] = &[
    "id",
    "type",
    "disable",
    "socket_type",
    "protocol",
    "wait",
    "user",
    "group",
    "server",
    "server_args",
    "port",
    "bind",
    "interface",
    "only_from",
    "no_access",
    "instances",
    "per_source",
    "cps",
    "env",
    "passenv",
    "flags",
];

/// Flags that change nothing here: wininetd always reuses addresses, has no
/// libwrap, and retries nothing.
const FLAGS_HARMLESS: &[&str] = &[
    "REUSE",
    "NOLIBWRAP",
    "NORETRY",
    "IPv4",
    "IPv6",
    "NAMEINARGS",
];

/// One service; `Ok(None)` when it is of a kind wininetd cannot serve
/// (the reason is in `lost`).
fn service(
    name: &str,
    block: &Block,
    attrs: &[Attr],
    table: &ServiceTable,
    lost_here: &mut Vec<(String, String, &'static str)>,
) -> Result<Option<Service>, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut fail = |a: Option<&Attr>, m: String| {
        errors.push(ConfigError {
            location: a.map_or(block.location.clone(), |a| a.location.clone()),
            message: format!("service {name}: {m}"),
        })
    };
    for a in attrs {
        if !CARRIED.contains(&a.name.as_str()) {
            lost_here.push((
                a.location.clone(),
                format!("{} {} {}", a.name, a.op.as_str(), a.values.join(" ")),
                lost(&a.name),
            ));
        }
    }
    let types: Vec<&str> = get(attrs, "type")
        .map(|a| a.values.iter().map(String::as_str).collect())
        .unwrap_or_default();
    for t in &types {
        match *t {
            "INTERNAL" | "UNLISTED" => {}
            "RPC" | "TCPMUX" | "TCPMUXPLUS" => {
                lost_here.push((
                    get(attrs, "type").map_or(block.location.clone(), |a| a.location.clone()),
                    format!("type = {t}"),
                    "RPC and TCPMUX services are not supported",
                ));
                return Ok(None);
            }
            other => fail(get(attrs, "type"), format!("unknown type {other:?}")),
        }
    }
    let internal = types.contains(&"INTERNAL");

    let flags: Vec<&str> = get(attrs, "flags")
        .map(|a| a.values.iter().map(String::as_str).collect())
        .unwrap_or_default();
    for f in &flags {
        if !FLAGS_HARMLESS.contains(f) {
            lost_here.push((
                get(attrs, "flags")
                    .map(|a| a.location.clone())
                    .unwrap_or_default(),
                format!("flags {f}"),
                match *f {
                    "SENSOR" => "wininetd does not ban sources that touch a service",
                    "KEEPALIVE" | "NODELAY" => "wininetd sets no such socket option",
                    _ => "wininetd has no such flag",
                },
            ));
        }
    }

    let socket_type = first(attrs, "socket_type");
    let protocol = match (first(attrs, "protocol"), socket_type) {
        (Some("tcp"), Some("stream") | None) => Protocol::Tcp,
        (Some("udp"), Some("dgram") | None) => Protocol::Udp,
        (None, Some("stream")) => Protocol::Tcp,
        (None, Some("dgram")) => Protocol::Udp,
        (_, Some(t @ ("raw" | "seqpacket"))) => {
            lost_here.push((
                get(attrs, "socket_type")
                    .map(|a| a.location.clone())
                    .unwrap_or_default(),
                format!("socket_type = {t}"),
                "only stream and dgram services are supported",
            ));
            return Ok(None);
        }
        (p, t) => {
            fail(
                get(attrs, "socket_type").or(get(attrs, "protocol")),
                format!(
                    "socket_type {} and protocol {} are not stream/tcp or dgram/udp",
                    t.unwrap_or("(none)"),
                    p.unwrap_or("(none)")
                ),
            );
            Protocol::Tcp
        }
    };

    let port = match first(attrs, "port") {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                fail(get(attrs, "port"), format!("port {p:?} is not 1-65535"));
                None
            }
        },
        None => {
            let found = table.port(name, protocol);
            if found.is_none() {
                fail(
                    None,
                    format!(
                        "no `port`, and {name:?} is not a {protocol} service in the services file"
                    ),
                );
            }
            found
        }
    };

    let wait = match first(attrs, "wait") {
        Some("yes") => true,
        Some("no") => false,
        Some(other) => {
            fail(
                get(attrs, "wait"),
                format!("wait {other:?} is not yes or no"),
            );
            false
        }
        None if internal => false,
        None => {
            fail(None, "has no `wait` (xinetd requires it)".into());
            false
        }
    };

    let id = first(attrs, "id").unwrap_or(name).to_string();
    if id.contains(char::is_control) {
        fail(
            get(attrs, "id"),
            format!("id {id:?} holds a control character (it is shown in logs)"),
        );
    }

    let bind_addr = match first(attrs, "bind").or(first(attrs, "interface")) {
        Some(text) => match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                fail(
                    get(attrs, "bind").or(get(attrs, "interface")),
                    format!("bind {text:?} is not an IP address (host names are not looked up)"),
                );
                None
            }
        },
        None => None,
    };
    let v6 = flags.contains(&"IPv6");
    let bind = match bind_addr {
        Some(ip) => vec![ip],
        // xinetd's IPv6 flag is a dual-stack socket: both families here.
        None if v6 => vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ],
        None => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
    };

    let mut nets = |key: &str| -> Vec<IpNet> {
        let Some(a) = get(attrs, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in &a.values {
            match v.as_str() {
                // xinetd's "everyone".
                "0.0.0.0" | "0.0.0.0/0" | "ALL" => {
                    out.push("0.0.0.0/0".parse().expect("net"));
                    out.push("::/0".parse().expect("net"));
                }
                text => match text
                    .parse::<IpNet>()
                    .ok()
                    .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
                {
                    Some(n) => out.push(n),
                    None => fail(
                        Some(a),
                        format!(
                            "{key} {text:?} is not an address or CIDR network (host names and xinetd's `10.0.` or `{{}}` forms are not converted: write the networks)"
                        ),
                    ),
                },
            }
        }
        out
    };
    let allow = nets("only_from");
    let deny = nets("no_access");
    if get(attrs, "only_from").is_some_and(|a| a.values.is_empty()) {
        fail(
            get(attrs, "only_from"),
            "an empty only_from refuses everyone; remove the service instead".into(),
        );
    }

    let mut count = |key: &str| -> Option<u32> {
        let a = get(attrs, key)?;
        match a.values.first().map(String::as_str) {
            Some("UNLIMITED") => None,
            Some(n) => match n.parse::<u32>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    fail(
                        Some(a),
                        format!("{key} {n:?} is not a positive number or UNLIMITED"),
                    );
                    None
                }
            },
            None => None,
        }
    };
    let mut max_instances = count("instances");
    let mut per_source = count("per_source");
    // A UDP internal service answers each datagram on its own and keeps no
    // session: nothing to count (the extended format refuses both there).
    if internal && protocol == Protocol::Udp {
        for (key, limit) in [
            ("instances", &mut max_instances),
            ("per_source", &mut per_source),
        ] {
            if let (Some(n), Some(a)) = (limit.take(), get(attrs, key)) {
                lost_here.push((
                    a.location.clone(),
                    format!("{key} = {n}"),
                    "a UDP internal service keeps no session to count",
                ));
            }
        }
    }
    let rate = match get(attrs, "cps") {
        Some(a) => match a.values.first().map(|n| Rate::parse(&format!("{n}/s"))) {
            Some(Ok(r)) => Some(r),
            _ => {
                fail(
                    Some(a),
                    format!("cps {:?} is not RATE SECONDS", a.values.join(" ")),
                );
                None
            }
        },
        None => None,
    };

    // xinetd passes only what `passenv` names (nothing when it is empty).
    // An internal service starts no program: nothing to pass.
    let pass_env = get(attrs, "passenv").filter(|_| !internal).map(|a| {
        for v in a
            .values
            .iter()
            .filter(|v| super::pass_env_error(v).is_some())
        {
            fail(
                Some(a),
                format!("passenv {v:?} is not a variable name (no `=` or NUL)"),
            );
        }
        a.values.clone()
    });
    // Nor a program's variables: said, not carried (the extended format
    // refuses `env` on an internal service).
    let env_attr = get(attrs, "env").filter(|a| {
        if internal {
            lost_here.push((
                a.location.clone(),
                format!("env = {}", a.values.join(" ")),
                "an internal service starts no program",
            ));
        }
        !internal
    });
    let mut env: Vec<(String, String)> = env_attr
        .map(|a| {
            a.values
                .iter()
                .filter_map(|kv| match kv.split_once('=') {
                    Some((k, v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
                    _ => {
                        fail(Some(a), format!("env {kv:?} is not NAME=value"));
                        None
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    // A name given twice: the last value wins (and TOML allows one key).
    let mut seen = HashSet::new();
    env.reverse();
    env.retain(|(k, _)| seen.insert(k.clone()));
    env.reverse();

    let (program, user, group, argv0) = if internal {
        let Some(kind) = Internal::parse(name) else {
            lost_here.push((
                get(attrs, "type").map_or(block.location.clone(), |a| a.location.clone()),
                format!("type = INTERNAL, service {name}"),
                "wininetd's internal services are echo, discard, chargen, daytime and time",
            ));
            return Ok(None);
        };
        (Some(Program::Internal(kind)), RunAs::Daemon, None, None)
    } else {
        let server = first(attrs, "server");
        if server.is_none() {
            fail(None, "has no `server` (the program to run)".into());
        }
        let args: Vec<String> = get(attrs, "server_args")
            .map(|a| a.values.clone())
            .unwrap_or_default();
        let (argv0, rest) = if flags.contains(&"NAMEINARGS") {
            match args.split_first() {
                Some((a0, rest)) => (Some(a0.clone()), rest.to_vec()),
                None => {
                    fail(
                        get(attrs, "flags"),
                        "NAMEINARGS needs server_args that start with argv[0]".into(),
                    );
                    (None, Vec::new())
                }
            }
        } else {
            (None, args)
        };
        let program = server.map(|s| {
            let mut argv = vec![s.to_string()];
            argv.extend(rest);
            Program::Command(CommandLine::Argv(argv))
        });
        let argv0 = argv0.filter(|a| Some(a.as_str()) != server);
        let user = first(attrs, "user").map_or(RunAs::Daemon, |u| RunAs::User {
            name: u.to_string(),
            secret: None,
        });
        let group = first(attrs, "group").map(str::to_string);
        if group.is_some() && user == RunAs::Daemon {
            fail(
                get(attrs, "group"),
                "`group` without `user` cannot be carried".into(),
            );
        }
        (program, user, group, argv0)
    };
    if !internal && protocol == Protocol::Udp && !wait {
        fail(
            get(attrs, "wait"),
            "a UDP program with `wait = no` is not supported: it gets the bound socket and reads the datagrams itself (`wait = yes`)".into(),
        );
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Some(Service {
        name: id,
        origin: block.location.clone(),
        protocol,
        port: port.unwrap_or(1),
        bind,
        wait: wait && !internal,
        program: program.expect("checked"),
        user,
        stderr: StderrMode::Socket,
        handoff: None,
        env,
        working_directory: None,
        limits: Limits {
            max_instances,
            per_source,
            rate,
            per_source_rate: None,
        },
        access: Access { allow, deny },
        timeout: None,
        group,
        argv0,
        pass_env,
        tls: None,
        proxy: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_include(_: &str, _: bool) -> Result<Vec<(String, Vec<u8>)>, String> {
        Err("no includes in this test".into())
    }

    fn parse_text(text: &str) -> Result<(Config, Vec<Note>), ConfigErrors> {
        parse(
            "x.conf",
            text.as_bytes(),
            &ServiceTable::builtin(),
            &mut no_include,
        )
    }

    fn ok(text: &str) -> (Config, Vec<Note>) {
        parse_text(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    fn error(text: &str, location: &str, needle: &str) {
        let e = parse_text(text).unwrap_err();
        assert!(
            e.0.iter()
                .any(|e| e.location == location && e.message.contains(needle)),
            "{needle:?} at {location} not in:\n{e}"
        );
    }

    fn argv(s: &Service) -> Vec<String> {
        match &s.program {
            Program::Command(CommandLine::Argv(v)) => v.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_nul_byte_in_a_line_is_refused() {
        error(
            "service echo\n{\n socket_type = stream\n wait = no\n user = root\n server = /bin/ca\0t\n}\n",
            "x.conf:6",
            "NUL",
        );
    }

    #[test]
    fn control_characters_in_a_service_name_or_id_are_refused() {
        error(
            "service ec\x01ho\n{\n socket_type = stream\n wait = no\n user = root\n server = /bin/cat\n port = 7\n}\n",
            "x.conf:1",
            "control character",
        );
        error(
            "service echo\n{\n id = a\x1bb\n socket_type = stream\n wait = no\n user = root\n server = /bin/cat\n}\n",
            "x.conf:3",
            "control character",
        );
    }

    #[test]
    fn two_services_on_one_port_are_refused_where_the_second_is() {
        error(
            "service a\n{\n socket_type = stream\n wait = no\n user = root\n server = /bin/cat\n port = 7000\n}\n\
             service b\n{\n socket_type = stream\n wait = no\n user = root\n server = /bin/cat\n port = 7000\n}\n",
            "x.conf:9",
            "already configured",
        );
    }

    #[test]
    fn a_passenv_entry_no_loaded_config_takes_is_refused_at_its_line() {
        error(
            "service echo\n{\n socket_type = stream\n wait = no\n user = root\n server = /bin/cat\n passenv = TZ A=B\n}\n",
            "x.conf:7",
            "passenv",
        );
    }

    #[test]
    fn an_internal_service_takes_no_passenv_from_the_defaults() {
        // It starts no program: a pass_env there is not written by convert
        // and the extended format ignores it.
        let (c, _) = ok(
            "defaults\n{\n passenv = TZ\n}\nservice echo\n{\n type = INTERNAL\n socket_type = stream\n wait = no\n}\n",
        );
        assert_eq!(c.services[0].program, Program::Internal(Internal::Echo));
        assert_eq!(c.services[0].pass_env, None);
    }

    /// Found by the `xinetd` fuzz target (CI's smoke run): `per_source` on a
    /// UDP internal service was kept, and convert's output then did not load.
    #[test]
    fn a_udp_internal_service_s_instance_limits_are_said_not_carried() {
        let (c, notes) = ok(
            "service echo\n{\n type = INTERNAL\n id = echo-dgram\n socket_type = dgram\n wait = yes\n instances = 20\n per_source = 2\n}\n",
        );
        let s = &c.services[0];
        assert_eq!(
            (s.protocol, s.limits.max_instances, s.limits.per_source),
            (Protocol::Udp, None, None)
        );
        let texts: Vec<&str> = notes.iter().map(|n| n.text.as_str()).collect();
        assert_eq!(notes.len(), 2, "{texts:?}");
        assert!(
            texts[0].contains("x.conf:7: instances = 20 -- not carried"),
            "{texts:?}"
        );
        assert!(
            texts[1].contains("x.conf:8: per_source = 2 -- not carried"),
            "{texts:?}"
        );
        // A TCP internal service keeps them.
        let (c, _) = ok(
            "service echo\n{\n type = INTERNAL\n socket_type = stream\n wait = no\n per_source = 2\n}\n",
        );
        assert_eq!(c.services[0].limits.per_source, Some(2));
    }

    /// Found by the `xinetd` fuzz target: the model kept an internal
    /// service's `env`, which convert cannot write (the extended format
    /// refuses it there), so the converted config lost it without a word.
    #[test]
    fn an_internal_service_s_env_is_said_not_carried() {
        let (c, notes) = ok(
            "service echo\n{\n type = INTERNAL\n socket_type = stream\n wait = no\n env = A=1 B=2\n}\n",
        );
        assert_eq!(c.services[0].program, Program::Internal(Internal::Echo));
        assert!(c.services[0].env.is_empty(), "{:?}", c.services[0].env);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0]
                .text
                .contains("x.conf:6: env = A=1 B=2 -- not carried"),
            "{}",
            notes[0].text
        );
    }

    #[test]
    fn a_variable_set_twice_in_env_keeps_the_last_value() {
        let (c, _) = ok(
            "service echo\n{\n socket_type = stream\n wait = no\n user = root\n server = /bin/cat\n env = A=1 B=2 A=3\n}\n",
        );
        assert_eq!(
            c.services[0].env,
            vec![
                ("B".to_string(), "2".to_string()),
                ("A".to_string(), "3".to_string())
            ]
        );
    }

    #[test]
    fn a_full_service_maps_every_carried_attribute() {
        let text = r#"
service myecho
{
    id          = my-echo
    type        = UNLISTED
    socket_type = stream
    protocol    = tcp
    wait        = no
    user        = nobody
    group       = nogroup
    server      = /usr/sbin/tcpd
    server_args = in.echo -v
    flags       = NAMEINARGS IPv6 REUSE
    port        = 7007
    only_from   = 127.0.0.0/8 ::1 10.1.2.3
    no_access   = 127.0.0.2
    instances   = 20
    per_source  = 3
    cps         = 25 30
    env         = A=1 B=x=y
}
"#;
        if cfg!(windows) {
            // Windows runs no `group` or `argv0`: the service is refused at
            // its line, as a loaded config would be.
            let e = parse_text(text).unwrap_err().to_string();
            assert!(
                e.contains("x.conf:2: service my-echo: `group` is not supported on Windows")
                    && e.contains("x.conf:2: service my-echo: `argv0` is not supported on Windows"),
                "{e}"
            );
            return;
        }
        let (c, notes) = ok(text);
        assert!(notes.is_empty(), "{notes:?}");
        assert!(c.warnings.is_empty());
        let s = &c.services[0];
        assert_eq!(s.name, "my-echo");
        assert_eq!(s.origin, "x.conf:2");
        assert_eq!(s.port, 7007);
        assert_eq!(argv(s), ["/usr/sbin/tcpd", "-v"]);
        assert_eq!(s.argv0.as_deref(), Some("in.echo"));
        assert_eq!(s.group.as_deref(), Some("nogroup"));
        assert_eq!(s.bind.len(), 2);
        assert_eq!(s.access.allow.len(), 3);
        assert_eq!(s.access.deny, ["127.0.0.2/32".parse::<IpNet>().unwrap()]);
        assert_eq!(s.limits.max_instances, Some(20));
        assert_eq!(s.limits.per_source, Some(3));
        assert_eq!(s.limits.rate.unwrap().per_second, 25.0);
        assert_eq!(
            s.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
    }

    #[test]
    fn defaults_apply_and_plus_minus_equal_adjust_them() {
        let (c, _) = ok(r#"
defaults
{
    only_from = 127.0.0.1 127.0.0.2
    instances = 5
}
service a
{
    port = 7001
    socket_type = stream
    wait = no
    server = /bin/cat
    only_from += 127.0.0.3
    only_from -= 127.0.0.1
}
service b {
    port = 7002
    socket_type = stream
    wait = no
    server = /bin/cat
    only_from = 10.0.0.0/8
    instances = UNLIMITED
}
"#);
        let allow: Vec<String> = c.services[0]
            .access
            .allow
            .iter()
            .map(|n| n.addr().to_string())
            .collect();
        assert_eq!(allow, ["127.0.0.2", "127.0.0.3"]);
        assert_eq!(c.services[0].limits.max_instances, Some(5));
        assert_eq!(c.services[1].access.allow.len(), 1);
        assert_eq!(c.services[1].limits.max_instances, None);
    }

    #[test]
    fn passenv_becomes_pass_env_and_an_empty_one_passes_nothing() {
        let (c, notes) = ok(r#"
defaults
{
    passenv = TZ
}
service a
{
    port = 7001
    socket_type = stream
    wait = no
    server = /bin/cat
    passenv += LANG
}
service b
{
    port = 7002
    socket_type = stream
    wait = no
    server = /bin/cat
    passenv =
}
"#);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            c.services[0].pass_env.as_deref(),
            Some(&["TZ".to_string(), "LANG".to_string()][..])
        );
        assert_eq!(c.services[1].pass_env.as_deref(), Some(&[][..]));
    }

    #[test]
    fn what_has_no_equivalent_becomes_a_note_and_a_warning() {
        let (c, notes) = ok(r#"
service a
{
    port = 7001
    socket_type = stream
    wait = no
    server = /bin/cat
    redirect = 10.0.0.1 80
    banner = /etc/banner
    rlimit_as = 8M
    log_on_success += HOST
    flags = SENSOR
}
"#);
        let lines: Vec<&str> = c.warnings.iter().map(|w| w.location.as_str()).collect();
        assert_eq!(
            lines,
            [
                "x.conf:8",
                "x.conf:9",
                "x.conf:10",
                "x.conf:11",
                "x.conf:12"
            ]
        );
        assert_eq!(notes.len(), 5);
        assert!(notes.iter().all(|n| n.place == Place::In(0)));
        assert!(
            notes[0]
                .text
                .contains("redirect = 10.0.0.1 80 -- not carried")
        );
        assert!(notes[4].text.contains("SENSOR"));
    }

    #[test]
    fn internal_services_by_type_and_the_debian_ids() {
        let (c, _) = ok(r#"
service echo
{
    disable     = no
    type        = INTERNAL
    id          = echo-stream
    socket_type = stream
    protocol    = tcp
    user        = root
    wait        = no
}
service echo
{
    type        = INTERNAL
    id          = echo-dgram
    socket_type = dgram
    protocol    = udp
    user        = root
    wait        = yes
}
"#);
        assert_eq!(c.services[0].name, "echo-stream");
        assert_eq!(c.services[1].name, "echo-dgram");
        assert_eq!(c.services[1].protocol, Protocol::Udp);
        assert_eq!(c.services[0].port, 7);
        for s in &c.services {
            assert_eq!(s.program, Program::Internal(Internal::Echo));
            assert_eq!(s.user, RunAs::Daemon);
            assert!(!s.wait);
        }
        let (c, notes) = ok(
            "service servers\n{\ntype = INTERNAL\nport = 9099\nsocket_type = stream\nwait = no\n}\n",
        );
        assert!(c.services.is_empty());
        assert_eq!(c.warnings[0].location, "x.conf:3");
        assert!(
            notes[0].text.contains("internal services are echo"),
            "{notes:?}"
        );
    }

    #[test]
    fn a_second_service_with_the_same_id_is_not_carried() {
        let svc = "service echo\n{\ntype = INTERNAL\nid = echo-dgram\nsocket_type = dgram\nwait = yes\n}\n";
        let (c, _) = ok(&format!("{svc}{svc}"));
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].location, "x.conf:8");
        // Disabled duplicates are only comments.
        let off = svc.replace("wait = yes", "wait = yes\ndisable = yes");
        let (c, notes) = ok(&format!("{svc}{off}"));
        assert!(c.warnings.is_empty());
        assert!(notes[0].text.contains("disabled there"));
    }

    #[test]
    fn disabled_services_are_kept_as_comments() {
        let (c, notes) = ok(r#"
defaults
{
    disabled = b
}
service a
{
    disable = yes
    port = 7001
    socket_type = stream
    wait = no
    server = /bin/cat
}
service b
{
    port = 7002
    socket_type = stream
    wait = no
    server = /bin/cat
}
service c
{
    port = 7003
    socket_type = stream
    wait = no
    server = /bin/cat
}
"#);
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].name, "c");
        assert_eq!(notes.len(), 2);
        assert!(notes[0].text.contains("service a is disabled"));
        assert!(
            notes[0].text.contains("[[service]]\nport = 7001")
                || notes[0].text.contains("port = 7001")
        );
    }

    #[test]
    fn includes_are_read_through_the_reader() {
        let mut read = |path: &str, dir: bool| -> Result<Vec<(String, Vec<u8>)>, String> {
            assert_eq!((path, dir), ("/etc/xinetd.d", true));
            Ok(vec![(
                "/etc/xinetd.d/one".into(),
                b"service daytime\n{\ntype = INTERNAL\nsocket_type = stream\nwait = no\n}\n"
                    .to_vec(),
            )])
        };
        let (c, _) = parse(
            "main",
            b"defaults\n{\n}\nincludedir /etc/xinetd.d\n",
            &ServiceTable::builtin(),
            &mut read,
        )
        .unwrap();
        assert_eq!(c.services[0].origin, "/etc/xinetd.d/one:1");
        // A reader's failure is an error on the include line.
        let e = parse_text("include /nowhere\n").unwrap_err();
        assert_eq!(e.0[0].location, "x.conf:1");
    }

    #[test]
    fn includes_are_bounded_in_depth_and_in_number() {
        // A file that includes itself ten times would read 10^8 files.
        let mut reads = 0;
        let mut read = |_: &str, _: bool| -> Result<Vec<(String, Vec<u8>)>, String> {
            reads += 1;
            Ok(vec![("self".into(), b"include self\n".repeat(10))])
        };
        let e = parse(
            "main",
            b"include self\n",
            &ServiceTable::builtin(),
            &mut read,
        )
        .unwrap_err();
        assert!(reads <= 1000, "{reads} reads");
        assert!(e.0.len() <= 2, "{e}");
        assert!(e.to_string().contains("more than 1000 files"), "{e}");
        let mut chain = |_: &str, _: bool| -> Result<Vec<(String, Vec<u8>)>, String> {
            Ok(vec![("self".into(), b"include self\n".to_vec())])
        };
        let e = parse(
            "main",
            b"include self\n",
            &ServiceTable::builtin(),
            &mut chain,
        )
        .unwrap_err();
        assert!(e.to_string().contains("nest deeper than 8"), "{e}");
    }

    #[test]
    fn values_that_cannot_be_carried_faithfully_are_errors() {
        let svc = |extra: &str| {
            format!(
                "service a\n{{\nport = 7001\nsocket_type = stream\nwait = no\nserver = /bin/cat\n{extra}\n}}\n"
            )
        };
        error(
            &svc("only_from = example.com"),
            "x.conf:7",
            "not an address",
        );
        error(&svc("only_from ="), "x.conf:7", "refuses everyone");
        error(&svc("bind = localhost"), "x.conf:7", "not an IP address");
        error(&svc("instances = -1"), "x.conf:7", "not a positive number");
        error(&svc("env = NOVALUE"), "x.conf:7", "not NAME=value");
        error(&svc("group = adm"), "x.conf:7", "without `user`");
        error(
            "service a\n{\nport = 7001\nsocket_type = stream\n}\n",
            "x.conf:1",
            "has no `wait`",
        );
        error("service a\n{\nport = 7001\n", "x.conf:1", "not closed");
        error("service a\nport = 1\n", "x.conf:2", "expected `{`");
        error(
            "service a\n{\nport 7001\n}\n",
            "x.conf:3",
            "not `attribute = value`",
        );
        error(
            "service a\n{\nserver args = x\n}\n",
            "x.conf:3",
            "not `attribute = value`",
        );
    }

    #[test]
    fn operators_are_the_first_equals_sign_and_values_may_hold_them() {
        let (c, _) = ok(
            "service a\n{\nport = 7001\nsocket_type = stream\nwait = no\nserver = /bin/x\nserver_args = a+=b c-=d e=f\nenv += K=v=w\n}\n",
        );
        match &c.services[0].program {
            Program::Command(CommandLine::Argv(v)) => {
                assert_eq!(v, &["/bin/x", "a+=b", "c-=d", "e=f"])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.services[0].env, [("K".into(), "v=w".into())]);
    }
}
