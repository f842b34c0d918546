//! BSD inetd.conf, read as openbsd-inetd and netkit inetd read it:
//! `service socket-type protocol wait[.max] user[.group] program [argv...]`.
//!
//! Malformed lines are errors; lines that are well formed but ask for what
//! wininetd does not do (RPC, UNIX sockets, raw sockets) are skipped with a
//! warning, so a distribution's file still runs what it can and `--check`
//! lists what it cannot.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    Access, CommandLine, Config, ConfigError, ConfigErrors, Globals, Internal, Limits, Program,
    Protocol, Rate, RunAs, Service, ServiceTable, StderrMode,
};

pub(super) fn parse(
    file: &str,
    bytes: &[u8],
    table: &ServiceTable,
) -> Result<Config, ConfigErrors> {
    let mut services: Vec<Service> = Vec::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    // A bare `addr:` line: the address of the lines after it.
    let mut default_host: Option<IpAddr> = None;
    for (line_no, words) in entries(bytes, file, &mut errors) {
        let location = format!("{file}:{line_no}");
        let mut note = |message: String| {
            warnings.push(ConfigError {
                location: location.clone(),
                message,
            })
        };
        if words.len() == 1 && words[0].ends_with(':') {
            let host = &words[0][..words[0].len() - 1];
            match parse_host(host) {
                Ok(h) => default_host = h,
                Err(message) => errors.push(ConfigError {
                    location: location.clone(),
                    message,
                }),
            }
            continue;
        }
        match entry(&words, default_host, table, &mut note) {
            Ok(Some(s)) => services.push(Service {
                origin: location,
                ..s
            }),
            Ok(None) => {}
            Err(message) => errors.push(ConfigError { location, message }),
        }
    }
    // `echo/tcp` unless two lines share it (different addresses).
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for s in &services {
        *seen.entry(s.name.clone()).or_default() += 1;
    }
    for s in &mut services {
        if seen[&s.name] > 1 && s.bind.len() == 1 {
            s.name = format!("{}@{}", s.name, s.bind[0]);
        }
    }
    let line = |e: &ConfigError| {
        e.location
            .rsplit(':')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
    };
    errors.sort_by_key(line);
    if errors.is_empty() {
        Ok(Config {
            globals: Globals::default(),
            services,
            warnings,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The entries of the file as (line, words): `#` starts a comment (Debian's
/// `#<off>#` lines included), and a line starting with a blank continues
/// the arguments of the entry before it, as BSD inetd reads it.
fn entries(bytes: &[u8], file: &str, errors: &mut Vec<ConfigError>) -> Vec<(usize, Vec<String>)> {
    let mut out: Vec<(usize, Vec<String>)> = Vec::new();
    let mut continuable = false;
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(raw) else {
            errors.push(ConfigError {
                location: format!("{file}:{}", index + 1),
                message: "the line is not valid UTF-8; save the file as UTF-8".into(),
            });
            continuable = false;
            continue;
        };
        let line = line.split('#').next().unwrap_or("");
        if line.contains('\0') {
            errors.push(ConfigError {
                location: format!("{file}:{}", index + 1),
                message: "the line holds a NUL byte, which no field can".into(),
            });
            continuable = false;
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        if words.is_empty() {
            continuable = false;
            continue;
        }
        if line.starts_with([' ', '\t']) && continuable {
            if let Some(last) = out.last_mut() {
                last.1.extend(words);
            }
            continue;
        }
        continuable = true;
        out.push((index + 1, words));
    }
    out
}

/// `*` (every address), or an IP address, maybe in brackets.
fn parse_host(host: &str) -> Result<Option<IpAddr>, String> {
    if host == "*" {
        return Ok(None);
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().map(Some).map_err(|_| {
        format!(
            "{host:?} is not an IP address or `*` (host names are not looked up: give the address)"
        )
    })
}

/// One entry; `Ok(None)` when it is skipped with a warning.
fn entry(
    words: &[String],
    default_host: Option<IpAddr>,
    table: &ServiceTable,
    note: &mut dyn FnMut(String),
) -> Result<Option<Service>, String> {
    if words.len() < 6 {
        return Err(format!(
            "an inetd.conf entry has at least 6 fields (service socket-type protocol wait user program [args]), this one has {}",
            words.len()
        ));
    }
    let (service_field, socket_field, proto_field, wait_field, user_field, program) = (
        &words[0], &words[1], &words[2], &words[3], &words[4], &words[5],
    );
    let args = &words[6..];

    // `addr:service`; the address may itself hold colons (IPv6).
    let (host, service) = match service_field.rfind(':') {
        Some(i) => (parse_host(&service_field[..i])?, &service_field[i + 1..]),
        None => (default_host, service_field.as_str()),
    };

    // Options after a comma (FreeBSD, netkit): buffers are the kernel's.
    let (socket_type, socket_opts) = split_options(socket_field);
    let (proto, proto_opts) = split_options(proto_field);
    for opt in socket_opts.iter().chain(&proto_opts) {
        if opt.starts_with("sndbuf=") || opt.starts_with("rcvbuf=") {
            note(format!(
                "`{opt}` is ignored: wininetd leaves socket buffers to the system"
            ));
        } else {
            return Err(format!("unknown socket option `{opt}`"));
        }
    }

    if proto == "unix" {
        note(format!(
            "UNIX-domain service {service_field} is not supported; this line is not served"
        ));
        return Ok(None);
    }
    if proto.starts_with("rpc/") || service.contains('/') {
        note(format!(
            "RPC service {service_field} ({proto}) is not supported; this line is not served"
        ));
        return Ok(None);
    }
    let (protocol, families): (Protocol, &[bool]) = match proto {
        "tcp" | "tcp4" => (Protocol::Tcp, &[false]),
        "udp" | "udp4" => (Protocol::Udp, &[false]),
        "tcp6" => (Protocol::Tcp, &[true]),
        "udp6" => (Protocol::Udp, &[true]),
        "tcp46" => (Protocol::Tcp, &[false, true]),
        "udp46" => (Protocol::Udp, &[false, true]),
        other => {
            return Err(format!(
                "unknown protocol {other:?} (tcp, udp, tcp4, udp4, tcp6, udp6, tcp46, udp46, rpc/tcp, rpc/udp or unix)"
            ));
        }
    };
    match (socket_type, protocol) {
        ("stream", Protocol::Tcp) | ("dgram", Protocol::Udp) => {}
        ("stream" | "dgram", _) => {
            return Err(format!(
                "socket type {socket_type} does not go with protocol {proto}"
            ));
        }
        ("raw" | "rdm" | "seqpacket", _) => {
            note(format!(
                "socket type {socket_type} is not supported (only stream and dgram); this line is not served"
            ));
            return Ok(None);
        }
        (other, _) => {
            return Err(format!(
                "unknown socket type {other:?} (stream, dgram, raw, rdm or seqpacket)"
            ));
        }
    }

    let port = table.port(service, protocol).ok_or_else(|| {
        format!(
            "unknown service {service:?} for {protocol} (not in the services file): give its port number instead"
        )
    })?;

    let bind = match host {
        None => families
            .iter()
            .map(|&v6| {
                if v6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                }
            })
            .collect(),
        Some(ip) => {
            if !families.contains(&ip.is_ipv6()) {
                return Err(format!(
                    "address {ip} is not of the family protocol {proto} listens on"
                ));
            }
            vec![ip]
        }
    };

    let (wait, limits) = parse_wait(wait_field)?;

    let internal = program == "internal";
    let (user, group) = if internal {
        (RunAs::Daemon, None)
    } else {
        parse_user(user_field)?
    };

    let program_spec = if internal {
        let kind = Internal::parse(service).ok_or_else(|| {
            format!(
                "internal service {service:?} is not one wininetd has (echo, discard, chargen, daytime, time)"
            )
        })?;
        Program::Internal(kind)
    } else {
        let mut argv = vec![program.clone()];
        argv.extend(args.iter().skip(1).cloned());
        Program::Command(CommandLine::Argv(argv))
    };
    let argv0 = match args.first() {
        Some(a) if !internal && a != program && !(cfg!(windows) && names(program, a)) => {
            Some(a.clone())
        }
        _ => None,
    };
    if !internal && protocol == Protocol::Udp && !wait {
        return Err(
            "dgram `nowait` is not supported: a UDP program gets the bound socket and reads the datagrams itself (`wait`)"
                .into(),
        );
    }

    Ok(Some(Service {
        name: format!("{service}/{protocol}"),
        origin: String::new(),
        protocol,
        port,
        bind,
        // Internal services answer each datagram or connection themselves.
        wait: wait && !internal,
        program: program_spec,
        user,
        stderr: StderrMode::Socket,
        handoff: None,
        env: Vec::new(),
        working_directory: None,
        limits,
        access: Access::default(),
        timeout: None,
        group,
        argv0,
        pass_env: None,
        tls: None,
        proxy: None,
    }))
}

/// Whether `argv0` is the program's own file name (`c:\bin\x.exe` and `x`
/// or `x.exe`): on Windows, where a program's argv[0] comes from its
/// command line, that is what it gets anyway.
fn names(program: &str, argv0: &str) -> bool {
    let file = program.rsplit(['/', '\\']).next().unwrap_or(program);
    let stem = file
        .len()
        .checked_sub(4)
        .filter(|&i| file.is_char_boundary(i) && file[i..].eq_ignore_ascii_case(".exe"))
        .map_or(file, |i| &file[..i]);
    file.eq_ignore_ascii_case(argv0) || stem.eq_ignore_ascii_case(argv0)
}

fn split_options(field: &str) -> (&str, Vec<&str>) {
    let mut parts = field.split(',');
    let head = parts.next().unwrap_or("");
    (head, parts.collect())
}

/// `wait`/`nowait`, `.N` invocations per minute (refused over it, never
/// suspended), or FreeBSD's `/max-child/max-conn-per-ip-per-min/max-child-per-ip`.
fn parse_wait(field: &str) -> Result<(bool, Limits), String> {
    let mut limits = Limits::default();
    let (head, freebsd) = match field.split_once('/') {
        Some((h, rest)) => (h, Some(rest)),
        None => (field, None),
    };
    let (word, per_minute) = match head.split_once('.') {
        Some((w, n)) => (w, Some(n)),
        None => (head, None),
    };
    let wait = match word {
        "wait" => true,
        "nowait" => false,
        other => return Err(format!("{other:?} is not `wait` or `nowait`")),
    };
    let number = |text: &str, what: &str| {
        text.parse::<u32>()
            .map_err(|_| format!("{what} {text:?} in {field:?} is not a number"))
    };
    if let Some(n) = per_minute {
        let n = number(n, "the per-minute limit")?;
        if n > 0 {
            limits.rate = Some(Rate::parse(&format!("{n}/m"))?);
        }
    }
    if let Some(rest) = freebsd {
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() > 3 {
            return Err(format!(
                "{field:?} has more than wait/max-child/max-conn-per-ip-per-min/max-child-per-ip"
            ));
        }
        let nonzero = |n: u32| (n > 0).then_some(n);
        if let Some(p) = parts.first() {
            limits.max_instances = nonzero(number(p, "max-child")?);
        }
        if let Some(p) = parts.get(1) {
            let n = number(p, "max-conn-per-ip-per-min")?;
            if n > 0 {
                limits.per_source_rate = Some(Rate::parse(&format!("{n}/m"))?);
            }
        }
        if let Some(p) = parts.get(2) {
            limits.per_source = nonzero(number(p, "max-child-per-ip")?);
        }
    }
    Ok((wait, limits))
}

/// `user`, `user.group` or `user:group`.
fn parse_user(field: &str) -> Result<(RunAs, Option<String>), String> {
    let (name, group) = match field.split_once(':').or_else(|| field.split_once('.')) {
        Some((n, g)) => (n, Some(g)),
        None => (field, None),
    };
    if name.is_empty() {
        return Err(format!("the user field {field:?} has no user name"));
    }
    if group == Some("") {
        return Err(format!("the user field {field:?} has an empty group"));
    }
    Ok((
        RunAs::User {
            name: name.to_string(),
            secret: None,
        },
        group.map(str::to_string),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Format};
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        config::parse_as(
            Path::new("inetd.conf"),
            text.as_bytes(),
            Format::Inetd,
            &ServiceTable::builtin(),
        )
    }

    fn ok(text: &str) -> Config {
        parse(text).unwrap_or_else(|e| panic!("must parse, got:\n{e}"))
    }

    #[track_caller]
    fn error(text: &str, line: usize, needle: &str) {
        let e = parse(text).expect_err("must be rejected");
        assert!(
            e.0.iter()
                .any(|e| e.location == format!("inetd.conf:{line}") && e.message.contains(needle)),
            "{needle:?} at line {line} not in:\n{e}"
        );
    }

    fn argv(s: &Service) -> Vec<String> {
        match &s.program {
            Program::Command(CommandLine::Argv(v)) => v.clone(),
            other => panic!("not an argv: {other:?}"),
        }
    }

    #[test]
    fn a_nul_byte_in_an_entry_is_refused() {
        error("echo stream tcp nowait root /bin/ca\0t cat\n", 1, "NUL");
        // In a comment it is harmless.
        ok("echo stream tcp nowait root /bin/cat cat # a\0b\n");
    }

    #[cfg(unix)]
    #[test]
    fn the_fields_are_read_and_argv0_is_the_first_argument() {
        let c = ok("ftp stream tcp nowait root /usr/sbin/tcpd in.ftpd -l -a\n");
        let s = &c.services[0];
        assert_eq!(
            (s.name.as_str(), s.port, s.protocol),
            ("ftp/tcp", 21, Protocol::Tcp)
        );
        assert_eq!(s.origin, "inetd.conf:1");
        assert_eq!(argv(s), ["/usr/sbin/tcpd", "-l", "-a"]);
        assert_eq!(s.argv0.as_deref(), Some("in.ftpd"));
        assert!(!s.wait);
        assert_eq!(
            s.user,
            RunAs::User {
                name: "root".into(),
                secret: None
            }
        );
        assert_eq!(s.bind, [IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
        // argv[0] equal to the program, or no arguments at all: no argv0.
        let c = ok(
            "7000 stream tcp nowait nobody /bin/cat /bin/cat\n7001 stream tcp nowait nobody /bin/cat\n",
        );
        assert_eq!(c.services[0].argv0, None);
        assert_eq!(argv(&c.services[1]), ["/bin/cat"]);
    }

    #[cfg(unix)]
    #[test]
    fn user_group_in_both_spellings() {
        let c = ok(
            "7000 stream tcp nowait nobody.nogroup /bin/cat cat\n7001 stream tcp nowait daemon:adm /bin/cat cat\n",
        );
        assert_eq!(c.services[0].group.as_deref(), Some("nogroup"));
        assert_eq!(c.services[1].group.as_deref(), Some("adm"));
        assert!(matches!(&c.services[1].user, RunAs::User { name, .. } if name == "daemon"));
        error(
            "7000 stream tcp nowait nobody. /bin/cat cat\n",
            1,
            "empty group",
        );
        error(
            "7000 stream tcp nowait :adm /bin/cat cat\n",
            1,
            "no user name",
        );
    }

    #[test]
    fn protocols_imply_their_bindings() {
        let c = ok(concat!(
            "7000 stream tcp nowait root /bin/cat cat\n",
            "7001 stream tcp4 nowait root /bin/cat cat\n",
            "7002 stream tcp6 nowait root /bin/cat cat\n",
            "7003 stream tcp46 nowait root /bin/cat cat\n",
            "7004 dgram udp6 wait root /bin/cat cat\n",
            "7005 dgram udp46 wait root /bin/cat cat\n",
        ));
        let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let binds: Vec<_> = c.services.iter().map(|s| s.bind.clone()).collect();
        assert_eq!(
            binds,
            [
                vec![v4],
                vec![v4],
                vec![v6],
                vec![v4, v6],
                vec![v6],
                vec![v4, v6]
            ]
        );
        assert_eq!(c.services[4].protocol, Protocol::Udp);
        error(
            "7000 stream sctp nowait root /bin/cat cat\n",
            1,
            "unknown protocol",
        );
        error(
            "7000 dgram tcp wait root /bin/cat cat\n",
            1,
            "does not go with",
        );
        error(
            "7000 stream udp wait root /bin/cat cat\n",
            1,
            "does not go with",
        );
    }

    #[test]
    fn names_are_looked_up_per_protocol_and_unknown_names_are_errors() {
        let table = ServiceTable::parse("only-udp 4000/udp alias-u\nboth 4001/tcp b\n");
        let p = |t: &str| config::parse_as(Path::new("x"), t.as_bytes(), Format::Inetd, &table);
        let c =
            p("alias-u dgram udp wait root /bin/cat cat\nb stream tcp nowait root /bin/cat cat\n")
                .unwrap();
        assert_eq!((c.services[0].port, c.services[1].port), (4000, 4001));
        let e = p("only-udp stream tcp nowait root /bin/cat cat\n").unwrap_err();
        assert_eq!(e.0[0].location, "x:1");
        assert!(
            e.0[0]
                .message
                .contains("unknown service \"only-udp\" for tcp"),
            "{e}"
        );
    }

    #[test]
    fn address_prefixes_and_bare_address_lines() {
        let c = ok(concat!(
            "127.0.0.1:echo stream tcp nowait root internal\n",
            "[::1]:echo stream tcp6 nowait root internal\n",
            "127.0.0.2:\n",
            "daytime stream tcp nowait root internal\n",
            "::1:time stream tcp6 nowait root internal\n",
            "*:\n",
            "chargen stream tcp nowait root internal\n",
        ));
        let binds: Vec<String> = c.services.iter().map(|s| s.bind[0].to_string()).collect();
        assert_eq!(binds, ["127.0.0.1", "::1", "127.0.0.2", "::1", "0.0.0.0"]);
        // Same service on two addresses: the names stay distinct.
        assert_eq!(c.services[0].name, "echo/tcp@127.0.0.1");
        assert_eq!(c.services[1].name, "echo/tcp@::1");
        error(
            "localhost:echo stream tcp nowait root internal\n",
            1,
            "host names are not looked up",
        );
        error(
            "::1:echo stream tcp nowait root internal\n",
            1,
            "not of the family",
        );
        error("bogus:\n", 1, "not an IP address");
    }

    #[test]
    fn wait_max_is_a_per_minute_rate_and_freebsd_limits_are_read() {
        let c = ok(concat!(
            "7000 stream tcp nowait.40 root /bin/cat cat\n",
            "7001 stream tcp nowait/10/0/2 root /bin/cat cat\n",
            "7002 dgram udp wait.5 root /bin/cat cat\n",
            "7003 stream tcp nowait.0 root /bin/cat cat\n",
        ));
        assert_eq!(c.services[0].limits.rate.unwrap().per_second, 40.0 / 60.0);
        assert_eq!(c.services[1].limits.max_instances, Some(10));
        assert_eq!(c.services[1].limits.per_source, Some(2));
        assert!(c.services[2].wait);
        assert_eq!(c.services[3].limits, Limits::default());
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = ok("7000 stream tcp nowait/0/30 root /bin/cat cat\n");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(
            c.services[0].limits.per_source_rate.unwrap().per_second,
            30.0 / 60.0
        );
        error(
            "7000 stream tcp sometimes root /bin/cat cat\n",
            1,
            "not `wait` or `nowait`",
        );
        error(
            "7000 stream tcp nowait.x root /bin/cat cat\n",
            1,
            "not a number",
        );
        error(
            "7000 stream tcp nowait/1/2/3/4 root /bin/cat cat\n",
            1,
            "more than",
        );
    }

    #[cfg(unix)]
    #[test]
    fn stream_wait_is_a_tcp_wait_service_and_dgram_nowait_is_refused() {
        let c = ok("7000 stream tcp wait nobody /usr/bin/python3 python3 -c pass\n");
        assert!(c.services[0].wait);
        error(
            "7000 dgram udp nowait root /bin/cat cat\n",
            1,
            "dgram `nowait` is not supported",
        );
    }

    #[test]
    fn internal_services_ignore_wait_and_user() {
        let c = ok(concat!(
            "echo stream tcp nowait root internal\n",
            "echo dgram udp wait root internal\n",
            "discard stream tcp nowait nobody internal\n",
            "chargen dgram udp wait root internal\n",
            "daytime stream tcp nowait root internal\n",
            "time dgram udp wait root internal\n",
        ));
        for s in &c.services {
            assert!(matches!(s.program, Program::Internal(_)));
            assert!(!s.wait);
            assert_eq!(s.user, RunAs::Daemon);
        }
        assert_eq!(c.services[1].name, "echo/udp");
        error(
            "tcpmux stream tcp nowait root internal\n",
            1,
            "not one wininetd has",
        );
    }

    #[test]
    fn what_cannot_run_is_a_warning_and_the_rest_is_served() {
        let c = ok(concat!(
            "rstatd/1-3 dgram rpc/udp wait root /usr/sbin/rpc.rstatd rpc.rstatd\n",
            "/var/run/x.sock stream unix nowait root /bin/cat cat\n",
            "7001 raw tcp nowait root /bin/cat cat\n",
            "7002 stream,sndbuf=8192 tcp nowait root /bin/cat cat\n",
            "7003 stream tcp,rcvbuf=8192 nowait root /bin/cat cat\n",
        ));
        assert_eq!(c.services.len(), 2);
        let lines: Vec<&str> = c.warnings.iter().map(|w| w.location.as_str()).collect();
        assert_eq!(
            lines,
            [
                "inetd.conf:1",
                "inetd.conf:2",
                "inetd.conf:3",
                "inetd.conf:4",
                "inetd.conf:5"
            ]
        );
        assert!(c.warnings[0].message.contains("RPC"));
        assert!(c.warnings[1].message.contains("UNIX-domain"));
        assert!(c.warnings[2].message.contains("raw is not supported"));
        assert!(c.warnings[3].message.contains("sndbuf=8192` is ignored"));
        error(
            "7000 stream,nodelay tcp nowait root /bin/cat cat\n",
            1,
            "unknown socket option",
        );
        error(
            "7000 bogus tcp nowait root /bin/cat cat\n",
            1,
            "unknown socket type",
        );
    }

    #[test]
    fn comments_debian_off_lines_and_continuations() {
        let c = ok(concat!(
            "# a comment\n",
            "#<off># echo stream tcp nowait root internal\n",
            "\n",
            "7000 stream tcp nowait root /bin/echo echo a\r\n",
            "\tb c # trailing comment\n",
            "daytime stream tcp nowait root internal # x\n",
        ));
        assert_eq!(c.services.len(), 2);
        assert_eq!(argv(&c.services[0]), ["/bin/echo", "a", "b", "c"]);
        assert_eq!(c.services[1].origin, "inetd.conf:6");
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let e = parse(concat!(
            "7000 stream tcp nowait root\n",
            "7001 stream tcp nowait root /bin/cat cat\n",
            "nosuchservice stream tcp nowait root /bin/cat cat\n",
            "7002 stream tcp maybe root /bin/cat cat\n",
            "\u{ff}\n",
        ))
        .unwrap_err();
        let lines: Vec<&str> = e.0.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(
            lines,
            [
                "inetd.conf:1",
                "inetd.conf:3",
                "inetd.conf:4",
                "inetd.conf:5"
            ]
        );
        let bad = parse_bytes(b"7000 stream tcp nowait root /bin/cat \xff\n");
        assert!(bad.0[0].message.contains("UTF-8"));
    }

    fn parse_bytes(b: &[u8]) -> ConfigErrors {
        config::parse_as(
            Path::new("inetd.conf"),
            b,
            Format::Inetd,
            &ServiceTable::builtin(),
        )
        .unwrap_err()
    }

    #[test]
    fn duplicates_are_caught_by_validate() {
        error(
            "echo stream tcp nowait root internal\n7 stream tcp nowait root /bin/cat cat\n",
            2,
            "already configured at inetd.conf:1",
        );
    }

    /// What only Unix can do is refused on Windows, naming the service's line.
    #[cfg(windows)]
    #[test]
    fn windows_refuses_group_argv0_and_tcp_wait() {
        let e = parse(concat!(
            "7000 stream tcp nowait bob.staff c:\\x.exe c:\\x.exe\n",
            "7001 stream tcp nowait bob c:\\y.exe other\n",
            "7002 stream tcp wait bob c:\\z.exe c:\\z.exe\n",
        ))
        .unwrap_err();
        let got: Vec<(&str, bool)> =
            e.0.iter()
                .map(|e| {
                    (
                        e.location.as_str(),
                        e.message.contains("not supported on Windows"),
                    )
                })
                .collect();
        assert_eq!(
            got,
            [
                ("inetd.conf:1", true),
                ("inetd.conf:2", true),
                ("inetd.conf:3", true)
            ]
        );
    }

    #[test]
    fn argv0_that_names_the_program_file_is_recognised() {
        assert!(names("c:\\bin\\Echo.EXE", "echo"));
        assert!(names("c:\\bin\\echo.exe", "echo.exe"));
        assert!(names("/bin/cat", "cat"));
        assert!(!names("/usr/sbin/tcpd", "in.ftpd"));
        assert!(!names("x.exe", "y"));
    }

    #[cfg(unix)]
    #[test]
    fn unix_runs_group_argv0_and_tcp_wait() {
        let c = ok("7000 stream tcp wait bob.staff /bin/x other\n");
        let s = &c.services[0];
        assert!(s.wait && s.group.is_some() && s.argv0.is_some());
    }

    #[test]
    fn the_file_name_selects_the_format() {
        assert_eq!(Format::detect(Path::new("/etc/inetd.conf")), Format::Inetd);
        assert_eq!(Format::detect(Path::new("INETD.CONF")), Format::Inetd);
        assert_eq!(Format::detect(Path::new("my-inetd.conf")), Format::Classic);
        assert_eq!(
            Format::detect(Path::new("/etc/xinetd.conf")),
            Format::Classic
        );
        assert_eq!(
            Format::detect(Path::new("/etc/wininetd.conf")),
            Format::Classic
        );
        assert_eq!(Format::detect(Path::new("a.TOML")), Format::Toml);
        assert_eq!(Format::detect(Path::new("services.conf")), Format::Classic);
    }
}
