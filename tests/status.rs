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
