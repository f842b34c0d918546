//! systemd socket activation, driven by `systemd-socket-activate` (package
//! systemd): it binds the sockets, waits for the first client, and execs
//! wininetd with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// `systemd-socket-activate` holding the sockets, with wininetd (or a
/// shell that runs it) as what it execs. Killed by PID when dropped.
struct Activated {
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Activated {
    /// Listens on `listen` (`--fdname` = `names`, datagram sockets with
    /// `datagram`), and runs `program` on the first client.
    fn start(
        listen: &[String],
        names: Option<&str>,
        datagram: bool,
        config_name: &str,
        config: &str,
        program: impl FnOnce(&Path) -> Vec<String>,
    ) -> Activated {
        assert!(
            Path::new(ACTIVATE).exists(),
            "{ACTIVATE} is missing: apt install systemd"
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_file(dir.path(), config_name, config.as_bytes());
        let log = dir.path().join("log");
        let mut cmd = Command::new(ACTIVATE);
        for l in listen {
            cmd.arg(format!("--listen={l}"));
        }
        if let Some(n) = names {
            cmd.arg(format!("--fdname={n}"));
        }
        if datagram {
            cmd.arg("--datagram");
        }
        cmd.arg("--")
            .args(program(&cfg))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let a = Activated {
            child: cmd.spawn().expect("start systemd-socket-activate"),
            dir,
            log,
        };
        a.wait_log_count("Listening on", listen.len());
        a
    }

    /// wininetd itself, in the foreground, on the config.
    fn wininetd(cfg: &Path) -> Vec<String> {
        vec![
            BIN.into(),
            "--debug".into(),
            "--cfgfile".into(),
            cfg.display().to_string(),
        ]
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn wait_log_count(&self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} x{count} not logged; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The processes the shell started (Linux /proc).
    fn children(&self) -> Vec<i32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        for pid in self.children() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn echo_at(to: SocketAddr, text: &[u8]) -> Vec<u8> {
    exchange_on(connect_to(to), text)
}

#[test]
fn passed_sockets_are_matched_by_address_and_by_name_and_programs_never_see_listen_vars() {
    let [p_addr, p_name, p_own, p_env] = free_ports(4).try_into().unwrap();
    let config = format!(
        "[[service]]\nname = \"by-address\"\nport = {p_addr}\nbind = [\"127.0.0.1\"]\n\
         internal = \"echo\"\n\
         [[service]]\nname = \"by-name\"\nport = {p_name}\nbind = [\"127.0.0.1\"]\n\
         internal = \"echo\"\n\
         [[service]]\nname = \"own\"\nport = {p_own}\nbind = [\"127.0.0.1\"]\n\
         internal = \"echo\"\n\
         [[service]]\nname = \"env\"\nport = {p_env}\nbind = [\"127.0.0.1\"]\n\
         command = [\"/usr/bin/env\"]\n"
    );
    // by-name is configured on 127.0.0.1 but systemd passes 127.0.0.2 under
    // its name: it listens there instead.
    let listen = [
        addr("127.0.0.1", p_addr).to_string(),
        addr("127.0.0.2", p_name).to_string(),
        addr("127.0.0.1", p_env).to_string(),
    ];
    let a = Activated::start(
        &listen,
        Some("some-unit.socket:by-name:other"),
        false,
        "w.toml",
        &config,
        Activated::wininetd,
    );
    // The first client starts wininetd, which then serves it.
    assert_eq!(echo_at(addr("127.0.0.1", p_addr), b"first"), b"first");
    let log = a.wait_log_count("serving 4 service(s)", 1);
    for l in [&listen[0], &listen[1], &listen[2]] {
        assert!(
            log.contains(&format!(
                "listening on tcp {l} (a socket from the service manager)"
            )),
            "{l}: {log}"
        );
    }
    assert!(
        log.contains(&format!("listening on tcp 127.0.0.1:{p_own}\n")),
        "{log}"
    );
    assert!(!log.contains(&format!("127.0.0.1:{p_name}")), "{log}");
    assert_eq!(echo_at(addr("127.0.0.2", p_name), b"named"), b"named");
    assert_eq!(echo_at(addr("127.0.0.1", p_own), b"own"), b"own");

    let env = String::from_utf8(echo_at(addr("127.0.0.1", p_env), b"")).unwrap();
    assert!(env.contains("CLIENT_IP=127.0.0.1\n"), "{env}");
    assert!(
        !env.contains("LISTEN_"),
        "a program saw systemd's variables:\n{env}"
    );
}

#[test]
fn passed_datagram_sockets_serve_udp_services() {
    let port = free_port_tcp_udp();
    let config = format!(
        "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\nprotocol = \"udp\"\n\
         internal = \"echo\"\n"
    );
    let listen = [addr("127.0.0.1", port).to_string()];
    let a = Activated::start(&listen, None, true, "w.toml", &config, Activated::wininetd);
    // The first datagram starts wininetd and waits in the socket for it.
    let reply = udp_request(listen[0].parse().unwrap(), b"ping", Duration::from_secs(20));
    assert_eq!(reply.as_deref(), Some(&b"ping"[..]), "{}", a.log());
    let log = a.wait_log_count("serving", 1);
    assert!(
        log.contains(&format!(
            "listening on udp {} (a socket from the service manager)",
            listen[0]
        )),
        "{log}"
    );
}

#[test]
fn a_passed_socket_that_matches_no_service_is_one_error() {
    let [port, stray1, stray2] = free_ports(3).try_into().unwrap();
    let config = format!("{port} none /bin/cat\n");
    let listen = [
        addr("127.0.0.1", stray1).to_string(),
        addr("127.0.0.1", stray2).to_string(),
    ];
    let mut a = Activated::start(&listen, None, false, "w.conf", &config, Activated::wininetd);
    // Wake it up; it refuses to start, and the client is closed.
    let _ = TcpStream::connect(listen[0].as_str());
    let status = a.wait_exit();
    assert_eq!(status.code(), Some(2), "{}", a.log());
    let log = a.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("match no service"))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains(&listen[0]) && errors[0].contains(&listen[1]),
        "{log}"
    );
    assert!(log.contains("did not start"), "{log}");
}

/// What `systemctl restart` does with a socket unit: the socket stays with
/// the manager (here the shell systemd-socket-activate execs, which runs
/// wininetd twice), so connections made while wininetd is down wait in
/// the kernel's queue and the next wininetd serves them.
#[test]
fn a_restart_under_socket_activation_refuses_no_connection() {
    let port = free_port();
    let config =
        format!("[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = [\"/bin/cat\"]\n");
    let listen = [addr("127.0.0.1", port).to_string()];
    let a = Activated::start(&listen, None, false, "w.toml", &config, |cfg| {
        // Each run is a shell that sets LISTEN_PID to its own pid and
        // execs wininetd, as systemd would for a new main process.
        let run = format!(
            "sh -c 'LISTEN_PID=$$ exec {BIN} --debug --cfgfile {}'",
            cfg.display()
        );
        vec!["/bin/sh".into(), "-c".into(), format!("{run}; {run}")]
    });
    let to: SocketAddr = listen[0].parse().unwrap();
    let one = |i: usize| {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection {i} refused: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let msg = format!("connection {i}\n");
        s.write_all(msg.as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        s.read_to_string(&mut back)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(back, msg, "connection {i}");
    };
    one(0);
    a.wait_log_count("serving", 1);
    let first = a.children();
    assert_eq!(first.len(), 1, "one wininetd runs: {first:?}");
    for i in 1..=50 {
        one(i);
    }
    // Restart: stop this wininetd; the shell starts the next at once.
    kill(Pid::from_raw(first[0]), Signal::SIGTERM).unwrap();
    for i in 51..=200 {
        one(i);
    }
    let log = a.wait_log_count("serving", 2);
    assert!(
        log.contains("stopped;"),
        "the first wininetd stopped: {log}"
    );
    let (_, after_restart) = log.rsplit_once("serving").unwrap();
    assert!(
        after_restart.contains(" ended "),
        "the second wininetd served some of the connections: {log}"
    );
    let second = a.children();
    assert!(
        second.len() == 1 && second != first,
        "a second wininetd serves: {first:?} then {second:?}"
    );
}

/// Reload keeps working: a service added without a passed socket binds its
/// own, and a service removed and added back gets its passed socket again
/// (under systemd the manager still holds it, so binding would fail).
#[test]
fn reload_binds_new_services_and_gives_back_passed_sockets() {
    let [p_passed, p_new] = free_ports(2).try_into().unwrap();
    let passed = format!(
        "[[service]]\nname = \"passed\"\nport = {p_passed}\nbind = [\"127.0.0.1\"]\n\
         internal = \"echo\"\n"
    );
    let added = format!(
        "[[service]]\nname = \"new\"\nport = {p_new}\nbind = [\"127.0.0.1\"]\n\
         internal = \"echo\"\n"
    );
    let listen = [addr("127.0.0.1", p_passed).to_string()];
    let a = Activated::start(&listen, None, false, "w.toml", &passed, Activated::wininetd);
    assert_eq!(echo_at(addr("127.0.0.1", p_passed), b"a"), b"a");
    a.wait_log_count("serving", 1);
    let cfg = a.dir.path().join("w.toml");
    let hup = || kill(Pid::from_raw(a.child.id() as i32), Signal::SIGHUP).unwrap();

    std::fs::write(&cfg, &added).unwrap();
    hup();
    let log = a.wait_log_count("reloaded", 1);
    assert!(
        log.contains(&format!("listening on tcp 127.0.0.1:{p_new}\n")),
        "{log}"
    );
    assert_eq!(echo_at(addr("127.0.0.1", p_new), b"b"), b"b");

    std::fs::write(&cfg, format!("{passed}{added}")).unwrap();
    hup();
    let log = a.wait_log_count("reloaded", 2);
    let from_manager = format!(
        "listening on tcp {} (a socket from the service manager)",
        listen[0]
    );
    assert_eq!(log.matches(&from_manager).count(), 2, "{log}");
    assert_eq!(echo_at(addr("127.0.0.1", p_passed), b"c"), b"c");
    assert_eq!(echo_at(addr("127.0.0.1", p_new), b"d"), b"d");
}

/// The socket units `--install --socket-activation` writes (the packaged
/// ones are those for the shipped config: `the_packaged_units_are_what_install_writes`)
/// name each socket after its service. Fed to wininetd as systemd would
/// (the Listen lines in order, `FileDescriptorName=` as LISTEN_FDNAMES),
/// with 127.0.0.1 moved to 127.0.0.2: only the names can tie those sockets
/// to their services, which then listen there.
#[test]
fn packaged_socket_units_name_their_sockets_and_wininetd_matches_them_by_name() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/debian/wininetd.toml"),
    )
    .unwrap();
    let [p_echo, p_daytime] = free_ports(2).try_into().unwrap();
    let ports = |t: &str| {
        t.replace("10007", &p_echo.to_string())
            .replace("10013", &p_daytime.to_string())
    };
    let config = ports(&config);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    let (mut listen, mut names) = (Vec::new(), Vec::new());
    for f in &files {
        let unit = ports(&std::fs::read_to_string(f).unwrap());
        let name: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("FileDescriptorName="))
            .collect();
        assert_eq!(name.len(), 1, "{}: {unit}", f.display());
        for l in unit.lines().filter_map(|l| l.strip_prefix("ListenStream=")) {
            listen.push(l.replace("127.0.0.1:", "127.0.0.2:"));
            names.push(name[0].to_string());
        }
    }
    assert_eq!(names, ["daytime", "daytime", "echo", "echo"]);
    let a = Activated::start(
        &listen,
        Some(&names.join(":")),
        false,
        "wininetd.toml",
        &config,
        Activated::wininetd,
    );
    assert_eq!(echo_at(addr("127.0.0.2", p_echo), b"named"), b"named");
    let log = a.wait_log_count("serving 2 service(s)", 1);
    for l in &listen {
        assert!(
            log.contains(&format!(
                "listening on tcp {l} (a socket from the service manager)"
            )),
            "{l}: {log}"
        );
    }
    for p in [p_echo, p_daytime] {
        assert!(!log.contains(&format!("tcp 127.0.0.1:{p}")), "{log}");
    }
    let daytime = exchange_on(connect_to(addr("127.0.0.2", p_daytime)), b"");
    assert!(daytime.ends_with(b"\r\n"), "{daytime:?}");
    assert_eq!(echo_at(addr("::1", p_echo), b"six"), b"six");
}

/// The passed listening sockets are close-on-exec: a program lists its
/// open descriptors and none is one of them (nor a copy: a copy shows the
/// same socket inode).
#[test]
fn programs_inherit_none_of_the_passed_sockets() {
    let [p_list, p_other] = free_ports(2).try_into().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = write_file(
        dir.path(),
        "fds.sh",
        b"#!/bin/sh\nfor f in /proc/$$/fd/*; do echo \"${f##*/} $(readlink \"$f\")\"; done\n",
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "[[service]]\nname = \"list\"\nport = {p_list}\nbind = [\"127.0.0.1\"]\n\
         command = [\"{}\"]\n\
         [[service]]\nname = \"other\"\nport = {p_other}\nbind = [\"127.0.0.1\"]\n\
         internal = \"echo\"\n",
        script.display()
    );
    let listen = [
        addr("127.0.0.1", p_list).to_string(),
        addr("127.0.0.1", p_other).to_string(),
    ];
    let a = Activated::start(&listen, None, false, "w.toml", &config, Activated::wininetd);
    assert_eq!(echo_at(addr("127.0.0.1", p_other), b"x"), b"x");
    a.wait_log_count("serving 2 service(s)", 1);
    // systemd-socket-activate exec'd wininetd: LISTEN_FDS start at fd 3.
    let daemon = a.child.id();
    let passed: Vec<String> = (3..3 + listen.len())
        .map(|fd| {
            std::fs::read_link(format!("/proc/{daemon}/fd/{fd}"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    for p in &passed {
        assert!(p.starts_with("socket:["), "{passed:?}");
    }
    let listing = String::from_utf8(echo_at(addr("127.0.0.1", p_list), b"")).unwrap();
    let fds: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once(' ')).collect();
    // The connection itself is there (the listing works) ...
    assert!(
        fds.iter()
            .any(|(fd, target)| *fd == "0" && target.starts_with("socket:[")),
        "{listing}"
    );
    // ... and none of the listening sockets.
    for (fd, target) in &fds {
        assert!(
            !passed.iter().any(|p| p == target),
            "the program holds a passed socket as fd {fd}: {listing}\npassed: {passed:?}"
        );
    }
}
