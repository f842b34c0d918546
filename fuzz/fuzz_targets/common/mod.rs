//! Properties every config target checks on a config its parser accepted.
#![allow(dead_code)] // not every target uses every check

use std::net::IpAddr;

use wininetd::config::{CommandLine, Config, Format, Program, RunAs, Service};
use wininetd::fuzzing;

/// Nothing a program or a log line gets may hold a NUL (exec cannot pass
/// it) or be a command of blanks only (nothing to run).
pub fn check_sane(config: &Config) {
    for s in &config.services {
        assert!(
            !s.name.contains(char::is_control),
            "control character in name {:?}",
            s.name
        );
        if let Program::Command(cmd) = &s.program {
            match cmd {
                CommandLine::Raw(text) => {
                    assert!(!text.contains('\0'), "NUL in command {text:?}");
                    assert!(!text.trim().is_empty(), "blank command {text:?}");
                }
                CommandLine::Argv(argv) => {
                    assert!(!argv.is_empty(), "empty argv");
                    for a in argv {
                        assert!(!a.contains('\0'), "NUL in argument {a:?}");
                    }
                }
            }
        }
        for text in s.argv0.iter().chain(s.group.iter()) {
            assert!(!text.contains('\0'), "NUL in {text:?}");
        }
        for (k, v) in &s.env {
            assert!(
                !k.contains('\0') && !v.contains('\0'),
                "NUL in env {k:?}={v:?}"
            );
        }
        if let RunAs::User { name, .. } = &s.user {
            assert!(!name.contains('\0'), "NUL in user {name:?}");
        }
    }
    // Two services on one address, protocol and port cannot both listen
    // (a wildcard takes the port on every address of its family).
    for (i, a) in config.services.iter().enumerate() {
        for b in &config.services[i + 1..] {
            let clash = |x: &IpAddr, y: &IpAddr| {
                x == y || (x.is_ipv4() == y.is_ipv4() && (x.is_unspecified() || y.is_unspecified()))
            };
            let shared = a.protocol == b.protocol
                && a.port == b.port
                && a.bind.iter().any(|x| b.bind.iter().any(|y| clash(x, y)));
            assert!(
                !shared,
                "{} and {} share {} port {}",
                a.name, b.name, a.protocol, a.port
            );
        }
    }
}

/// The model written as TOML (convert's renderer) parses back to the same
/// model: the same services, origins aside, and the globals it writes.
pub fn check_round_trip(a: &Config) {
    let text = fuzzing::to_toml(a);
    let b = match fuzzing::parse(text.as_bytes(), Format::Toml) {
        Ok(b) => b,
        Err(e) => panic!("the rendered TOML does not parse: {e}\n{text}"),
    };
    assert_eq!(a.globals.timeout, b.globals.timeout, "{text}");
    assert_eq!(a.globals.linger_timeout, b.globals.linger_timeout, "{text}");
    assert_eq!(
        a.globals.max_connections, b.globals.max_connections,
        "{text}"
    );
    assert_eq!(a.globals.log_format, b.globals.log_format, "{text}");
    assert_eq!(a.services.len(), b.services.len(), "{text}");
    for (x, y) in a.services.iter().zip(&b.services) {
        let y = Service {
            origin: x.origin.clone(),
            ..y.clone()
        };
        assert_eq!(*x, y, "service does not round-trip:\n{text}");
    }
}
