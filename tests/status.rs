//! `wininetd status` and `--reload` over the local control channel, with
//! the real binary: what it lists, no daemon, a reload for a daemon no
//! service manager runs, and a non-root user refused.
#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn cli_in(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("WININETD_RUN_DIR", run_dir)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn config(ports: &[u16]) -> String {
    format!(
        r#"[[service]]
name = "cat"
port = {}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
handoff = "pipe"
max_instances = 5

[[service]]
name = "closed"
port = {}
bind = ["127.0.0.1"]
command = ["/bin/echo", "x"]
deny = ["127.0.0.0/8"]
"#,
        ports[0], ports[1]
    )
}

#[test]
fn status_lists_services_totals_and_live_programs() {
    let ports = free_ports(2);
    let d = Daemon::start("s.toml", &config(&ports), &[]);
    let mut live = connect(ports[0]);
    let client = live.local_addr().unwrap();
    assert_closed_at_once(connect(ports[1]), Duration::from_secs(10));
    // The program is running once its echo comes back.
    use std::io::{Read, Write};
    live.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    live.read_exact(&mut one).unwrap();

    let out = cli_in(&d.run_dir(), &["status"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", text(&out.stderr));
    assert!(stdout.contains("cat  tcp 127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("listening  live 1/5"), "{stdout}");
    assert!(stdout.contains("totals: denied 1"), "{stdout}");
    assert!(stdout.contains(&format!("\t{client}\t")), "{stdout}");

    let out = cli_in(&d.run_dir(), &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = v["services"].as_array().unwrap();
    assert_eq!(services.len(), 2);
    assert_eq!(services[0]["name"], "cat");
    assert_eq!(services[0]["protocol"], "tcp");
    assert_eq!(services[0]["live"], 1);
    assert_eq!(services[0]["limit"], 5);
    assert_eq!(services[0]["totals"]["started"], 1);
    assert_eq!(services[1]["totals"]["denied"], 1);
    assert_eq!(
        services[0]["addresses"][0],
        format!("127.0.0.1:{}", ports[0])
    );
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{v}");
    assert_eq!(sessions[0]["service"], "cat");
    assert_eq!(sessions[0]["client"], client.to_string());
    // Relayed so far, while the session runs.
    assert_eq!(sessions[0]["bytes_in"], 1, "{v}");
    assert_eq!(sessions[0]["bytes_out"], 1, "{v}");
    let pid = sessions[0]["pid"].as_u64().unwrap() as u32;
    assert_eq!(d.children().unwrap(), vec![pid]);
    drop(live);
}

#[test]
fn no_daemon_says_so_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli_in(dir.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no wininetd daemon is running"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn reload_reaches_a_daemon_without_a_service_manager() {
    let ports = free_ports(3);
    let d = Daemon::start("s.toml", &config(&ports[..2]), &[]);
    let mut bigger = config(&ports[..2]);
    bigger.push_str(&format!(
        "\n[[service]]\nname = \"new\"\nport = {}\nbind = [\"127.0.0.1\"]\ncommand = [\"/bin/echo\", \"new\"]\n",
        ports[2]
    ));
    std::fs::write(&d.config, &bigger).unwrap();
    let out = cli_in(&d.run_dir(), &["--reload"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("reloaded (pid {})\n", d.pid()));
    assert_eq!(exchange(ports[2], b""), b"new\n");

    std::fs::write(&d.config, "not toml [").unwrap();
    let out = cli_in(&d.run_dir(), &["--reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("reload rejected"));
    assert_eq!(exchange(ports[2], b""), b"new\n");
}

/// The binary, somewhere `nobody` can run it from.
fn binary_for_nobody(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("wininetd");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn as_nobody(bin: &Path, run_dir: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(bin)
        .args(args)
        .env("WININETD_RUN_DIR", run_dir)
        .output()
        .expect("runuser (Debian package util-linux) must be installed")
}

#[test]
fn a_user_other_than_root_is_refused() {
    assert!(
        is_root(),
        "this test runs the client as nobody: run it as root"
    );
    let ports = free_ports(2);
    let d = Daemon::start("s.toml", &config(&ports), &[]);
    // Let nobody reach the socket itself: only its own mode stops it.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = d.run_dir().join("control");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = binary_for_nobody(bin_dir.path());

    let out = as_nobody(&bin, &d.run_dir(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());

    // A socket opened up by mistake: the peer check still refuses.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["status"][..], &["--reload"]] {
        let out = as_nobody(&bin, &d.run_dir(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("refused the request"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(!d.log().contains("reloading"), "{}", d.log());
    // Root still gets its answer.
    assert!(cli_in(&d.run_dir(), &["status"]).status.success());
}

/// Polls `wininetd status ARGS` until its output holds `needle`.
fn status_until(run_dir: &Path, args: &[&str], needle: &str) -> String {
    let mut last = String::new();
    wait_until(
        &format!("`status` showing {needle:?}"),
        Duration::from_secs(10),
        || {
            let out = cli_in(run_dir, args);
            last = format!("{}{}", text(&out.stdout), text(&out.stderr));
            out.status.success() && last.contains(needle)
        },
    );
    last
}

#[test]
fn a_program_that_cannot_start_shows_as_its_services_last_error() {
    let ports = free_ports(2);
    let config = format!(
        r#"[[service]]
name = "missing"
port = {}
bind = ["127.0.0.1"]
command = ["/nonexistent/program"]

[[service]]
name = "fine"
port = {}
bind = ["127.0.0.1"]
command = ["/bin/echo", "fine"]
"#,
        ports[0], ports[1]
    );
    let d = Daemon::start("s.toml", &config, &[]);
    assert_eq!(exchange(ports[1], b""), b"fine\n");
    let mut s = connect(ports[0]);
    assert!(read_all(&mut s).is_empty());

    let out = status_until(&d.run_dir(), &["status"], "last error");
    // The error is in the failing service's block, and only there.
    let block = out
        .split("\n\n")
        .find(|b| b.starts_with("missing  tcp"))
        .unwrap_or_else(|| panic!("no block for `missing`:\n{out}"));
    assert!(
        block.contains("  last error (")
            && block.contains("cannot start the program: /nonexistent/program"),
        "{out}"
    );
    assert_eq!(out.matches("last error").count(), 1, "{out}");

    let out = cli_in(&d.run_dir(), &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = v["services"].as_array().unwrap();
    let of = |name: &str| services.iter().find(|s| s["name"] == name).unwrap();
    let error = &of("missing")["last_error"];
    let message = error["message"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(
        message.contains("cannot start the program: /nonexistent/program"),
        "{message}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = error["at"].as_u64().unwrap();
    assert!(at <= now && now - at < 60, "at {at}, now {now}");
    assert!(of("fine")["last_error"].is_null(), "{v}");
}

#[test]
fn a_session_behind_a_balancer_shows_the_balancer_as_via() {
    use std::io::{Read, Write};
    let port = free_port();
    let config = format!(
        r#"[[service]]
name = "cat"
port = {port}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
proxy_protocol = "v1"
proxy_from = ["127.0.0.1"]
"#
    );
    let d = Daemon::start("s.toml", &config, &[]);
    // We are the balancer: our socket is `via`, the header names the client.
    let mut s = connect(port);
    let balancer = s.local_addr().unwrap();
    s.write_all(format!("PROXY TCP4 192.0.2.7 127.0.0.1 51234 {port}\r\nx").as_bytes())
        .unwrap();
    let mut one = [0u8; 1];
    s.read_exact(&mut one).unwrap();
    assert_eq!(&one, b"x");

    let out = cli_in(&d.run_dir(), &["status"]);
    let t = text(&out.stdout);
    assert!(out.status.success(), "{}{t}", text(&out.stderr));
    assert!(
        t.contains(&format!("\t192.0.2.7:51234 via {balancer}\t")),
        "{t}"
    );

    let out = cli_in(&d.run_dir(), &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{v}");
    assert_eq!(sessions[0]["client"], "192.0.2.7:51234", "{v}");
    assert_eq!(sessions[0]["via"], balancer.to_string(), "{v}");

    // The end line names the balancer too (the start line, at debug, always did).
    drop(s);
    let want = format!("peer=192.0.2.7:51234 via={balancer} ");
    wait_until("the end line with via", Duration::from_secs(10), || {
        d.lines_with(" ended ").iter().any(|l| l.contains(&want))
    });
}
