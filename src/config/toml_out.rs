//! Writing a [`Config`] as the extended format, for `wininetd convert`:
//! only what differs from the defaults, plus the converter's comments.

use std::fmt::Write as _;

use super::{
    CommandLine, Config, DEFAULT_LINGER_TIMEOUT, DEFAULT_MAX_CONNECTIONS, Globals, LogFormat,
    Program, Protocol, RunAs, Secret, Service, StderrMode,
};

/// A comment the converter puts in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub place: Place,
    /// One or more lines, each written as a `#` comment.
    pub text: String,
}

/// Where a [`Note`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Before the service of this index (`services.len()`: at the end).
    Before(usize),
    /// Inside the table of the service of this index, after its keys.
    In(usize),
}

/// The TOML text of `config`, with `notes` as comments where they belong.
pub fn to_toml(config: &Config, notes: &[Note]) -> String {
    let mut out = String::new();
    globals(&mut out, &config.globals);
    for (i, s) in config.services.iter().enumerate() {
        if !out.is_empty() {
            out.push('\n');
        }
        comments(&mut out, notes, Place::Before(i));
        service(&mut out, s);
        comments(&mut out, notes, Place::In(i));
    }
    let end = Place::Before(config.services.len());
    if notes.iter().any(|n| n.place == end) {
        if !out.is_empty() {
            out.push('\n');
        }
        comments(&mut out, notes, end);
    }
    out
}

fn comments(out: &mut String, notes: &[Note], place: Place) {
    let (mut first, mut previous_was_block) = (true, false);
    for n in notes.iter().filter(|n| n.place == place) {
        // A commented-out service stands apart from the notes around it.
        let block = n.text.lines().nth(1).is_some();
        if !first && (block || previous_was_block) {
            out.push('\n');
        }
        (first, previous_was_block) = (false, block);
        for line in n.text.lines() {
            let line = comment_safe(line.trim_end());
            if line.is_empty() {
                out.push_str("#\n");
            } else {
                let _ = writeln!(out, "# {line}");
            }
        }
    }
}

/// Text a TOML comment can hold: no control character but tab (a file
/// name may have any).
pub fn comment_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

/// A TOML basic string.
pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04X}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn list<I: IntoIterator<Item = String>>(items: I) -> String {
    let v: Vec<String> = items.into_iter().map(|s| quote(&s)).collect();
    format!("[{}]", v.join(", "))
}

fn globals(out: &mut String, g: &Globals) {
    if let Some(t) = g.timeout {
        let _ = writeln!(out, "timeout = {t}");
    }
    if g.linger_timeout != Some(DEFAULT_LINGER_TIMEOUT) {
        let _ = writeln!(out, "linger_timeout = {}", g.linger_timeout.unwrap_or(0));
    }
    if g.max_connections != DEFAULT_MAX_CONNECTIONS {
        let _ = writeln!(out, "max_connections = {}", g.max_connections);
    }
    if g.log_format == LogFormat::Json {
        out.push_str("log_format = \"json\"\n");
    }
}

fn service(out: &mut String, s: &Service) {
    out.push_str("[[service]]\n");
    let mut key = |k: &str, v: String| {
        let _ = writeln!(out, "{k} = {v}");
    };
    key("name", quote(&s.name));
    key("port", s.port.to_string());
    if s.protocol == Protocol::Udp {
        key("protocol", quote("udp"));
    }
    key("bind", list(s.bind.iter().map(|ip| ip.to_string())));
    match &s.program {
        Program::Internal(kind) => {
            key("internal", quote(kind.as_str()));
            // An internal service may run as a named account (no password).
            if let RunAs::User { name, .. } = &s.user {
                key("user", quote(name));
            }
        }
        Program::Command(cmd) => {
            if s.wait {
                key("wait", "true".into());
            }
            match cmd {
                CommandLine::Argv(argv) => key("command", list(argv.iter().cloned())),
                CommandLine::Raw(text) => key("command", quote(text)),
            }
            if let Some(a) = &s.argv0 {
                key("argv0", quote(a));
            }
            if let RunAs::User { name, secret } = &s.user {
                // The source file held it in clear; the output is its copy.
                let user = match secret {
                    None => name.clone(),
                    Some(Secret::Inline(p)) => format!("{name}:{}", p.expose()),
                    Some(Secret::File(f)) => format!("{name}:@{}", f.display()),
                };
                key("user", quote(&user));
            }
            if let Some(g) = &s.group {
                key("group", quote(g));
            }
            match s.stderr {
                StderrMode::Socket => {}
                StderrMode::Log => key("stderr", quote("log")),
                StderrMode::Null => key("stderr", quote("null")),
            }
            if let Some(h) = s.handoff {
                key("handoff", quote(h.as_str()));
            }
            if !s.env.is_empty() {
                let pairs: Vec<String> = s
                    .env
                    .iter()
                    .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
                    .collect();
                key("env", format!("{{ {} }}", pairs.join(", ")));
            }
            if let Some(d) = &s.working_directory {
                key("working_directory", quote(&d.display().to_string()));
            }
            if let Some(p) = &s.pass_env {
                key("pass_env", list(p.iter().cloned()));
            }
        }
    }
    if let Some(n) = s.limits.max_instances {
        key("max_instances", n.to_string());
    }
    if let Some(n) = s.limits.per_source {
        key("per_source", n.to_string());
    }
    if let Some(r) = s.limits.rate {
        key("rate", quote(&rate(r.per_second)));
    }
    if let Some(r) = s.limits.per_source_rate {
        key("per_source_rate", quote(&rate(r.per_second)));
    }
    if !s.access.allow.is_empty() {
        key("allow", list(s.access.allow.iter().map(|n| n.to_string())));
    }
    if !s.access.deny.is_empty() {
        key("deny", list(s.access.deny.iter().map(|n| n.to_string())));
    }
    if let Some(t) = s.timeout {
        key("timeout", t.to_string());
    }
}

/// The shortest exact spelling of a rate: per second, minute or hour.
pub(crate) fn rate(per_second: f64) -> String {
    for (unit, secs) in [("s", 1.0), ("m", 60.0), ("h", 3600.0)] {
        let n = per_second * secs;
        if (n - n.round()).abs() < 1e-6 && n.round() >= 1.0 {
            return format!("{}/{unit}", n.round() as u64);
        }
    }
    format!("{}/h", (per_second * 3600.0).round().max(1.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, ServiceTable};
    use std::path::Path;

    /// Parse → write → parse gives the same services (origins aside).
    #[track_caller]
    fn round_trip(path: &str, text: &str) {
        let a = config::parse_as(
            Path::new(path),
            text.as_bytes(),
            config::Format::detect(Path::new(path)),
            &ServiceTable::builtin(),
        )
        .unwrap();
        let toml = to_toml(&a, &[]);
        let b = config::parse(Path::new("out.toml"), toml.as_bytes())
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(a.globals, b.globals);
        assert_eq!(a.services.len(), b.services.len());
        for (x, y) in a.services.iter().zip(&b.services) {
            let y = Service {
                origin: x.origin.clone(),
                ..y.clone()
            };
            assert_eq!(*x, y, "{toml}");
        }
    }

    #[test]
    fn an_internal_service_keeps_its_user() {
        // The extended format runs an internal service as a named account
        // (checked when applied); the output must not drop it.
        round_trip(
            "d.toml",
            "[[service]]\nport = 7013\ninternal = \"daytime\"\nuser = \"nobody\"\n",
        );
    }

    #[test]
    fn every_key_survives_a_round_trip() {
        // What only Unix runs: argv0, group, a TCP wait service.
        let unix = if cfg!(unix) {
            "argv0 = \"echo\"\ngroup = \"nogroup\"\n"
        } else {
            ""
        };
        let tcp_wait = if cfg!(unix) {
            "[[service]]\nport = 7003\nwait = true\ncommand = [\"/usr/bin/python3\"]\n"
        } else {
            ""
        };
        round_trip(
            "a.toml",
            &(r#"timeout = 5
linger_timeout = 0
max_connections = 9
log_format = "json"
[[service]]
name = "a \"quoted\" \\ name"
port = 7000
bind = ["127.0.0.1", "::1"]
command = ["/bin/echo", "x y", "tab\there"]
user = "nobody:pass:word"
"#
            .to_string()
                + unix
                + r#"stderr = "log"
handoff = "pipe"
env = { A = "1", "B C" = "ü" }
working_directory = "/tmp"
max_instances = 3
per_source = 2
rate = "40/m"
allow = ["127.0.0.0/8", "::1/128"]
deny = ["127.0.0.2/32"]
timeout = 0
[[service]]
port = 7001
protocol = "udp"
wait = true
command = "/bin/cat -u"
user = "x:@/etc/pw"
[[service]]
port = 7002
internal = "chargen"
rate = "3/h"
"# + tcp_wait),
        );
    }

    #[test]
    fn classic_and_inetd_round_trip() {
        round_trip(
            "w.conf",
            "7000 none /bin/sh -c 'echo hi'\n7001 bob:secret /bin/cat\n",
        );
        round_trip(
            "inetd.conf",
            "echo stream tcp nowait root internal\n7000 stream tcp6 nowait.30 nobody c:\\x.exe x -a\n",
        );
        #[cfg(unix)]
        round_trip(
            "inetd.conf",
            "7000 stream tcp6 nowait.30 nobody.nogroup /usr/sbin/tcpd in.x -a\n",
        );
    }

    #[test]
    fn comments_never_break_the_toml() {
        let c = config::parse(
            Path::new("x.toml"),
            b"[[service]]\nport = 1\ninternal = \"echo\"\n",
        )
        .unwrap();
        let notes = [Note {
            place: Place::In(0),
            text: "a\rb\u{7}c\u{0}\nport = 2".into(),
        }];
        let t = to_toml(&c, &notes);
        assert!(t.contains("# a?b?c?\n# port = 2\n"), "{t:?}");
        let again = config::parse(Path::new("x.toml"), t.as_bytes()).unwrap();
        assert_eq!(again.services[0].port, 1);
    }

    #[test]
    fn notes_go_where_they_are_placed() {
        let c = config::parse(
            Path::new("x.toml"),
            b"[[service]]\nport = 1\ninternal = \"echo\"\n",
        )
        .unwrap();
        let notes = [
            Note {
                place: Place::Before(0),
                text: "first".into(),
            },
            Note {
                place: Place::In(0),
                text: "inside\n\nmore".into(),
            },
            Note {
                place: Place::Before(1),
                text: "last".into(),
            },
        ];
        let t = to_toml(&c, &notes);
        let first = t.find("# first").unwrap();
        let header = t.find("[[service]]").unwrap();
        let inside = t.find("# inside\n#\n# more").unwrap();
        let last = t.find("# last").unwrap();
        assert!(first < header && header < inside && inside < last, "{t}");
    }
}
