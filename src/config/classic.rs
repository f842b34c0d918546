//! The classic WinInetd format: `PORT USER[:PASS] CMDLINE` per line.
//!
//! Every line that does not start with an ASCII digit is a comment. Fields
//! are separated by runs of spaces or tabs; CMDLINE is the rest of the line,
//! verbatim but for trailing whitespace (WinInetd 0.7 dropped its last
//! character; we keep it).

use super::{Access, CommandLine, Limits};
use super::{
    CLASSIC_BIND, Config, ConfigError, Globals, Password, Program, Protocol, RunAs, Secret,
    Service, StderrMode,
};

/// The services of every good line, and an error for every bad one: the
/// cross-line checks then run on the good lines, so one pass reports all.
pub(super) fn parse(file: &str, bytes: &[u8]) -> (Config, Vec<ConfigError>) {
    let mut services = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if !raw.first().is_some_and(u8::is_ascii_digit) {
            continue;
        }
        let location = format!("{file}:{}", index + 1);
        match parse_line(raw) {
            Ok((port, user, cmdline)) => services.push(Service {
                name: format!("tcp/{port}"),
                origin: location,
                protocol: Protocol::Tcp,
                port,
                bind: CLASSIC_BIND.to_vec(),
                wait: false,
                program: Program::Command(CommandLine::Raw(cmdline)),
                user,
                stderr: StderrMode::Socket,
                handoff: None,
                env: Vec::new(),
                working_directory: None,
                limits: Limits::default(),
                access: Access::default(),
                timeout: None,
                pass_env: None,
                group: None,
                argv0: None,
                tls: None,
                proxy: None,
            }),
            Err(message) => errors.push(ConfigError { location, message }),
        }
    }
    let config = Config {
        globals: Globals::default(),
        services,
        warnings: Vec::new(),
    };
    (config, errors)
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Parses one service line (it starts with a digit).
fn parse_line(raw: &[u8]) -> Result<(u16, RunAs, String), String> {
    let line = std::str::from_utf8(raw).map_err(|e| {
        format!(
            "the line is not valid UTF-8 (byte {} of the line); save the file as UTF-8",
            e.valid_up_to() + 1
        )
    })?;
    if line.contains('\0') {
        return Err("the line holds a NUL byte, which no command line or password can".into());
    }
    let line = line.trim_end_matches(['\r', ' ', '\t']);
    let (port_text, rest) = line.split_once(is_blank).unwrap_or((line, ""));
    let port = parse_port(port_text)?;
    let rest = rest.trim_start_matches(is_blank);
    if rest.is_empty() {
        return Err(format!(
            "port {port} has no USER:PASS field (use `none` to run as the service's own user) and no command line"
        ));
    }
    let (user_text, cmdline) = rest.split_once(is_blank).unwrap_or((rest, ""));
    let cmdline = cmdline.trim_start_matches(is_blank);
    let user = parse_user(user_text)?;
    // Blanks other than space and tab (a vertical tab, U+3000) name no
    // program either.
    if cmdline.trim().is_empty() {
        return Err(format!(
            "port {port} has no command line after the user field"
        ));
    }
    Ok((port, user, cmdline.to_string()))
}

fn parse_port(text: &str) -> Result<u16, String> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {text:?} is not a number"));
    }
    match text.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(format!("port {text} is out of range (1-65535)")),
    }
}

/// `none`, `name`, `name:password` (the password is everything after the
/// first colon) or `name:@file` (the password is read from that file).
/// Errors never include the password.
pub(super) fn parse_user(text: &str) -> Result<RunAs, String> {
    if text == "none" {
        return Ok(RunAs::Daemon);
    }
    let (name, secret) = match text.split_once(':') {
        None => (text, None),
        Some((name, pass)) => match pass.strip_prefix('@') {
            Some(path) if !path.is_empty() => (name, Some(Secret::File(path.into()))),
            _ => (name, Some(Secret::Inline(Password::new(pass)))),
        },
    };
    if name.is_empty() {
        return Err("the user field has an empty user name before the colon".into());
    }
    Ok(RunAs::User {
        name: name.to_string(),
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, ConfigErrors};
    use std::path::Path;

    fn parse_ok(text: &str) -> Config {
        config::parse(Path::new("test.conf"), text.as_bytes()).expect("config parses")
    }

    fn parse_err(bytes: &[u8]) -> ConfigErrors {
        config::parse(Path::new("test.conf"), bytes).expect_err("config must be rejected")
    }

    fn raw_cmd(s: &Service) -> &str {
        match &s.program {
            Program::Command(CommandLine::Raw(c)) => c,
            other => panic!("expected a raw command line, got {other:?}"),
        }
    }

    #[test]
    fn a_nul_byte_in_a_service_line_is_refused() {
        let e = parse_err(b"7000 none /bin/echo a\0b\n");
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(e.0[0].message.contains("NUL"), "{e}");
        assert_eq!(e.0[0].location, "test.conf:1");
    }

    #[test]
    fn a_command_line_of_blanks_only_is_refused() {
        for line in [
            "7000 none \x0b\n",
            "7000 none \u{3000}\n",
            "7000 none \x0c \t\n",
        ] {
            let e = parse_err(line.as_bytes());
            assert!(e.0[0].message.contains("no command line"), "{line:?}: {e}");
        }
    }

    #[test]
    fn manual_examples_parse() {
        let c = parse_ok(
            "10002 davide:DamnYou c:\\windows\\system32\\cmd.exe\n10123 none c:\\echo\\echocs.exe -d -c 156\n",
        );
        assert_eq!(c.services.len(), 2);
        let s = &c.services[0];
        assert_eq!(s.port, 10002);
        assert_eq!(s.name, "tcp/10002");
        assert_eq!(s.origin, "test.conf:1");
        assert_eq!(raw_cmd(s), "c:\\windows\\system32\\cmd.exe");
        assert_eq!(
            s.user,
            RunAs::User {
                name: "davide".into(),
                secret: Some(Secret::Inline(Password::new("DamnYou")))
            }
        );
        // The classic format has no globals: every default holds.
        assert_eq!(c.globals.ipv6_source_prefix, 64);
        let s = &c.services[1];
        assert_eq!(s.user, RunAs::Daemon);
        assert_eq!(raw_cmd(s), "c:\\echo\\echocs.exe -d -c 156");
        assert_eq!(s.bind, CLASSIC_BIND.to_vec());
        assert_eq!(s.protocol, Protocol::Tcp);
    }

    #[test]
    fn last_character_is_kept() {
        let c = parse_ok("7000 none /bin/cat\n7001 none /bin/echo abc");
        assert_eq!(raw_cmd(&c.services[0]), "/bin/cat");
        assert_eq!(raw_cmd(&c.services[1]), "/bin/echo abc");
    }

    #[test]
    fn crlf_and_trailing_whitespace_are_stripped() {
        let c = parse_ok("7000 none /bin/echo a b \t\r\n7001 none /bin/cat\r\n");
        assert_eq!(raw_cmd(&c.services[0]), "/bin/echo a b");
        assert_eq!(raw_cmd(&c.services[1]), "/bin/cat");
    }

    #[test]
    fn tabs_and_runs_of_blanks_separate_fields_but_cmdline_is_verbatim() {
        let c = parse_ok("7000\t \tnone \t /bin/echo  two\tspaces\n");
        assert_eq!(raw_cmd(&c.services[0]), "/bin/echo  two\tspaces");
        assert_eq!(c.services[0].user, RunAs::Daemon);
    }

    #[test]
    fn lines_not_starting_with_a_digit_are_comments() {
        let c = parse_ok(
            "# comment\n\n; another\n  7001 none indented-is-a-comment\nport 80 none x\n7000 none /bin/cat\n",
        );
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].origin, "test.conf:6");
    }

    #[test]
    fn password_is_everything_after_the_first_colon() {
        let c = parse_ok(
            "7000 user:pa:ss /bin/cat\n7001 user2 /bin/cat\n7002 u3:@/etc/secret /bin/cat\n",
        );
        assert_eq!(
            c.services[0].user,
            RunAs::User {
                name: "user".into(),
                secret: Some(Secret::Inline(Password::new("pa:ss")))
            }
        );
        assert_eq!(
            c.services[1].user,
            RunAs::User {
                name: "user2".into(),
                secret: None
            }
        );
        assert_eq!(
            c.services[2].user,
            RunAs::User {
                name: "u3".into(),
                secret: Some(Secret::File("/etc/secret".into()))
            }
        );
    }

    #[test]
    fn very_long_lines_are_kept_whole() {
        let arg = "x".repeat(100_000);
        let c = parse_ok(&format!("7000 none /bin/echo {arg}\n"));
        assert_eq!(raw_cmd(&c.services[0]).len(), "/bin/echo ".len() + 100_000);
        assert!(raw_cmd(&c.services[0]).ends_with('x'));
    }

    #[test]
    fn non_utf8_comments_are_fine_but_service_lines_are_errors() {
        let c = config::parse(Path::new("t.conf"), b"# caf\xe9\n7000 none /bin/cat\n").unwrap();
        assert_eq!(c.services.len(), 1);
        let e = parse_err(b"7000 none /bin/caf\xe9\n");
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].location, "test.conf:1");
        assert!(e.0[0].message.contains("UTF-8"), "{}", e.0[0].message);
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let text = b"# header\n0 none /bin/cat\n65536 none /bin/cat\n80x none /bin/cat\n7000\n7001 none\n7002 none   \n7003 :pw /bin/cat\n7004 none /bin/cat\n";
        let e = parse_err(text);
        let got: Vec<(&str, &str)> =
            e.0.iter()
                .map(|e| (e.location.as_str(), e.message.as_str()))
                .collect();
        assert_eq!(got.len(), 7, "{e}");
        assert_eq!(got[0].0, "test.conf:2");
        assert!(got[0].1.contains("out of range"));
        assert_eq!(got[1].0, "test.conf:3");
        assert!(got[1].1.contains("out of range"));
        assert_eq!(got[2].0, "test.conf:4");
        assert!(got[2].1.contains("not a number"));
        assert_eq!(got[3].0, "test.conf:5");
        assert!(got[3].1.contains("no USER:PASS"));
        assert_eq!(got[4].0, "test.conf:6");
        assert!(got[4].1.contains("no command line"));
        assert_eq!(got[5].0, "test.conf:7");
        assert!(got[5].1.contains("no command line"));
        assert_eq!(got[6].0, "test.conf:8");
        assert!(got[6].1.contains("empty user name"));
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = parse_err(b"7000 :secretpw /bin/cat\n");
        assert!(!e.to_string().contains("secretpw"));
        let e = parse_err(b"7000 bob:secretpw\n");
        assert!(!e.to_string().contains("secretpw"), "{e}");
    }

    #[test]
    fn duplicate_ports_are_an_error_naming_both_lines() {
        let e = parse_err(b"7000 none /bin/cat\n# x\n7000 none /bin/echo\n");
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].location, "test.conf:3");
        assert!(e.0[0].message.contains("test.conf:1"), "{}", e.0[0].message);
    }

    #[test]
    fn a_config_without_services_is_an_error() {
        let e = parse_err(b"# nothing here\n\n");
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].message.contains("no service"));
        assert_eq!(e.0[0].location, "test.conf");
    }

    #[cfg(unix)]
    #[test]
    fn unix_command_lines_split_like_a_shell_without_one() {
        let c = parse_ok("7000 none /bin/echo 'a b' \"c\\\"d\" e\\ f\n");
        let Program::Command(cmd) = &c.services[0].program else {
            panic!()
        };
        assert_eq!(cmd.argv().unwrap(), ["/bin/echo", "a b", "c\"d", "e f"]);
        let e = parse_err(b"7000 none /bin/echo 'unterminated\n");
        assert_eq!(e.0[0].location, "test.conf:1");
        assert!(e.0[0].message.contains("quote"));
    }

    /// The newcomer's file: the line errors and the cross-line ones
    /// (quotes, a duplicate port) come out together, in file order.
    #[cfg(unix)]
    #[test]
    fn line_errors_do_not_hide_the_cross_line_checks() {
        let e = parse_err(
            b"0 none /bin/cat\n70000 none /bin/cat\n80x none /bin/cat\n7001 none\n\
              7002 none /bin/echo 'open\n7000 none /bin/cat\n7000 none /bin/cat\n",
        );
        let lines: Vec<&str> = e.0.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(
            lines,
            [
                "test.conf:1",
                "test.conf:2",
                "test.conf:3",
                "test.conf:4",
                "test.conf:5",
                "test.conf:7"
            ],
            "{e}"
        );
        assert!(e.0[4].message.contains("quote"), "{e}");
        assert!(e.0[5].message.contains("already configured"), "{e}");
    }
}
