//! Coming from inetd or xinetd: inetd.conf read natively, `wininetd
//! convert`, TCP `wait` services, `group` and `argv0`; and the acceptance
//! test that runs one inetd.conf under openbsd-inetd and under wininetd
//! (native and converted) and compares what real clients get.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// openbsd-inetd conflicts with xinetd as a Debian package, so
/// scripts/test.sh unpacks its .deb here instead of installing it.
const OPENBSD_INETD: &str = "/opt/openbsd-inetd/usr/sbin/inetd";
const PYTHON: &str = "/usr/bin/python3";

fn convert(file: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["convert"];
    args.extend_from_slice(extra);
    args.push(file.to_str().unwrap());
    let out = run_cli(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory every user can read (programs run as `nobody` here).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = write_file(dir, name, text.as_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn assert_python() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is needed (Debian package python3)"
    );
}

/// A TCP `wait` server: accepts on the listening socket it got as fd 0,
/// answers each client with its argv[0], its user and how many clients
/// this process has served, and exits after IDLE seconds without one.
const WAIT_SERVER: &str = r#"import os, pwd, socket, sys
s = socket.socket(fileno=0)
s.settimeout(float(os.environ.get("IDLE", "1.5")))
n = 0
while True:
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    n += 1
    user = pwd.getpwuid(os.getuid()).pw_name
    c.sendall(("%s %s n=%d listening=%d\n" % (sys.orig_argv[0], user, n,
        s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))).encode())
    c.close()
"#;

/// A connection program that reports what it was started as.
const SHOW: &str = r#"import grp, os, pwd, socket, sys
s = socket.socket(fileno=0)
print("argv=%s user=%s group=%s peer=%s" % (sys.orig_argv, pwd.getpwuid(os.getuid()).pw_name,
    grp.getgrgid(os.getgid()).gr_name, s.getpeername()[0]), flush=True)
"#;

/// A UDP `wait` server: answers each datagram, exits when idle.
const UDP_SERVER: &str = r#"import socket, sys
s = socket.socket(fileno=0)
s.settimeout(1.5)
while True:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        break
    s.sendto(sys.orig_argv[0].encode() + b" " + data, peer)
"#;

fn ask(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    String::from_utf8_lossy(&read_all(&mut s)).into_owned()
}

// ---- TCP wait ----

#[test]
fn tcp_wait_program_accepts_on_the_listening_socket_until_it_exits() {
    assert_python();
    let dir = shared_dir();
    let srv = script(dir.path(), "wait.py", WAIT_SERVER);
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &format!(
            "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\nwait = true\ncommand = [\"{PYTHON}\", \"{}\"]\nargv0 = \"waitsrv\"\nenv = {{ IDLE = \"1.5\" }}\n",
            srv.display()
        ),
        &[],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // One program, three clients, then it goes idle and exits.
    let answers: Vec<String> = (0..3).map(|_| ask(addr)).collect();
    assert_eq!(
        answers,
        [
            "waitsrv root n=1 listening=1\n",
            "waitsrv root n=2 listening=1\n",
            "waitsrv root n=3 listening=1\n"
        ]
    );
    d.wait_log("ended", Duration::from_secs(10));
    assert_eq!(d.started(), 1, "{}", d.log());
    // Watched again: the next client starts a new program.
    assert_eq!(ask(addr), "waitsrv root n=1 listening=1\n");
    assert_eq!(d.started(), 2, "{}", d.log());
}

const HAPROXY: &str = "/usr/sbin/haproxy";

/// HAProxy (Debian package haproxy) as an inetd `stream wait` server: with
/// `bind fd@0` it accepts on the listening socket wininetd gives it.
/// (Debian 12's socat, 1.7.4.4, has no `ACCEPT-FD` address: it came in
/// 1.8.0.) `%pid` in each answer shows which process served.
const HAPROXY_WAIT: &str = "global\n    log stderr format raw local0 emerg\n\
defaults\n    mode http\n    timeout client 5s\n    timeout connect 5s\n    timeout server 5s\n\
frontend wait\n    bind fd@0\n\
    http-request return status 200 content-type text/plain lf-string \"haproxy %pid\\n\"\n";

/// The processes wininetd started that run `exe`; killed when dropped, so
/// a failed test leaves no server behind.
struct Programs(Vec<i32>);

impl Programs {
    fn of(d: &Daemon, exe: &str) -> Programs {
        let pids = d
            .children()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p as i32);
        Programs(
            pids.filter(|p| {
                std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == Path::new(exe))
            })
            .collect(),
        )
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        for &p in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn http_get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let reply = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    reply.rsplit("\r\n\r\n").next().unwrap().to_string()
}

/// A packaged server in inetd's `stream wait` mode, from an inetd.conf
/// line: one HAProxy serves several clients on the listening socket; once
/// it exits (soft stop, SIGUSR1), wininetd watches the socket again and the
/// next client starts a new one.
#[test]
fn tcp_wait_runs_a_packaged_server_that_accepts_on_fd_0() {
    assert!(
        Path::new(HAPROXY).exists(),
        "{HAPROXY} is needed (Debian package haproxy)"
    );
    let dir = shared_dir();
    let cfg = write_file(dir.path(), "wait.cfg", HAPROXY_WAIT.as_bytes());
    let port = free_port();
    let d = Daemon::start(
        "inetd.conf",
        &format!(
            "127.0.0.1:{port}\tstream\ttcp\twait\troot\t{HAPROXY}\thaproxy -db -f {}\n",
            cfg.display()
        ),
        &[],
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let answers: Vec<String> = (0..4).map(|_| http_get(addr)).collect();
    let running = Programs::of(&d, HAPROXY);
    assert_eq!(running.0.len(), 1, "{}", d.log());
    let first = format!("haproxy {}\n", running.0[0]);
    assert_eq!(answers, [first.as_str(); 4], "{}", d.log());
    assert_eq!(d.started(), 1, "{}", d.log());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.0[0]),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    d.wait_log("ended", Duration::from_secs(10));
    // Watched again: the next client starts a new HAProxy, which serves it
    // (its soft stop left the shared listening socket listening).
    let again = http_get(addr);
    let second = Programs::of(&d, HAPROXY);
    assert_eq!(second.0.len(), 1, "{}", d.log());
    assert_ne!(second.0, running.0);
    assert_eq!(again, format!("haproxy {}\n", second.0[0]));
    assert_eq!(http_get(addr), again);
    assert_eq!(d.started(), 2, "{}", d.log());
}

#[test]
fn tcp_wait_program_that_exits_at_once_is_restarted_at_most_once_a_second() {
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &format!(
            "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\nwait = true\ncommand = [\"/bin/true\"]\n"
        ),
        &[],
    );
    // A client that is never accepted keeps the socket readable.
    let client = connect(port);
    std::thread::sleep(Duration::from_millis(3500));
    let started = d.started();
    assert!(
        (2..=5).contains(&started),
        "{started} starts in 3.5 s:\n{}",
        d.log()
    );
    assert!(
        d.log()
            .contains("without serving; watching the socket again in a second")
    );
    // The daemon itself stays responsive and the client was not accepted.
    drop(client);
    assert!(d.log().contains("listening on tcp"));
}

#[test]
fn tcp_wait_rate_refuses_the_connection_instead_of_spinning() {
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &format!(
            "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\nwait = true\nrate = \"1/h\"\ncommand = [\"/bin/true\"]\n"
        ),
        &[],
    );
    let first = connect(port);
    d.wait_log("started", Duration::from_secs(5));
    drop(first);
    std::thread::sleep(Duration::from_millis(1200));
    // Over the rate: closed at once, nothing started.
    assert_closed_at_once(connect(port), Duration::from_secs(3));
    d.wait_log("refused", Duration::from_secs(5));
    assert_eq!(d.started(), 1, "{}", d.log());
}

// ---- group and argv0 ----

#[test]
fn group_and_argv0_reach_the_program() {
    assert_python();
    assert!(
        is_root(),
        "this test switches users: run it as root (CI does)"
    );
    let dir = shared_dir();
    let show = script(dir.path(), "show.py", SHOW);
    let port = free_port();
    let _d = Daemon::start(
        "g.toml",
        &format!(
            "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = [\"{PYTHON}\", \"{}\", \"x\"]\nargv0 = \"shown-as\"\nuser = \"nobody\"\ngroup = \"daemon\"\n",
            show.display()
        ),
        &[],
    );
    let out = ask(([127, 0, 0, 1], port).into());
    assert_eq!(
        out,
        format!(
            "argv=['shown-as', '{}', 'x'] user=nobody group=daemon peer=127.0.0.1\n",
            show.display()
        )
    );
}

// ---- leniency on internal services ----

#[test]
fn internal_services_accept_restated_settings_and_refuse_contradictions() {
    let ok = check(
        "i.toml",
        b"[[service]]\nport = 7000\ninternal = \"echo\"\nwait = false\nuser = \"none\"\n[[service]]\nport = 7001\ninternal = \"echo\"\nuser = \"root\"\n",
    );
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    let bad = check(
        "i.toml",
        b"[[service]]\nport = 7000\ninternal = \"echo\"\nwait = true\n",
    );
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr.contains("i.toml:4: `wait` has no meaning"),
        "{}",
        bad.stderr
    );
    let bad = check(
        "i.toml",
        b"[[service]]\nport = 7000\ninternal = \"echo\"\nuser = \"nobody\"\n",
    );
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr
            .contains("i.toml:1: service tcp/7000 is internal")
            && bad.stderr.contains("not the account wininetd runs as"),
        "{}",
        bad.stderr
    );
}

// ---- inetd.conf read natively ----

#[test]
fn inetd_conf_is_chosen_by_name_or_format_and_check_lists_what_is_not_served() {
    let text = b"127.0.0.1:echo stream tcp nowait root internal\nrstatd/1-3 dgram rpc/udp wait root /usr/sbin/rpc.rstatd rpc.rstatd\n7000 stream,sndbuf=4096 tcp nowait nobody /bin/cat cat\n";
    let c = check("inetd.conf", text);
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(c.stdout.contains("2 service(s)"), "{}", c.stdout);
    assert!(
        c.stdout.contains("echo/tcp\ttcp 127.0.0.1:7"),
        "{}",
        c.stdout
    );
    assert!(
        c.stderr.contains("inetd.conf:2: RPC service"),
        "{}",
        c.stderr
    );
    assert!(
        c.stderr.contains("inetd.conf:3: `sndbuf=4096` is ignored"),
        "{}",
        c.stderr
    );
    // Another name is classic unless --format says otherwise.
    let dir = tempfile::tempdir().unwrap();
    let other = write_file(dir.path(), "services.conf", text);
    let classic = run_cli(&["--check", "--cfgfile", other.to_str().unwrap()]);
    assert_eq!(classic.status.code(), Some(1));
    let inetd = run_cli(&[
        "--check",
        "--format",
        "inetd",
        "--cfgfile",
        other.to_str().unwrap(),
    ]);
    assert_eq!(inetd.status.code(), Some(0));
    // And --format toml on an inetd.conf reads it as TOML.
    let named = write_file(
        dir.path(),
        "inetd.conf",
        b"[[service]]\nport = 7000\ninternal = \"echo\"\n",
    );
    let toml = run_cli(&[
        "--check",
        "--format",
        "toml",
        "--cfgfile",
        named.to_str().unwrap(),
    ]);
    assert_eq!(
        toml.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&toml.stderr)
    );
}

/// `--format inetd` holds for reloads too, and the warnings are logged.
#[test]
fn an_inetd_conf_under_another_name_runs_and_reloads_with_format_inetd() {
    let ports = free_ports(4);
    let (a, b) = (ports[0], ports[2]);
    let conf = |port: u16, other: u16| {
        format!(
            "127.0.0.1:\n{port} stream tcp nowait root /bin/echo echo served {port}\n{other} stream,rcvbuf=1024 tcp nowait root /bin/cat cat\n"
        )
    };
    let d = Daemon::start("services.conf", &conf(a, ports[1]), &["--format", "inetd"]);
    assert_eq!(exchange(a, b""), format!("served {a}\n").into_bytes());
    assert!(
        d.log()
            .contains("services.conf:3: `rcvbuf=1024` is ignored"),
        "{}",
        d.log()
    );
    d.reload(&conf(b, ports[3]), "reloaded");
    assert_eq!(exchange(b, b""), format!("served {b}\n").into_bytes());
}

#[test]
fn check_warns_of_unknown_users_and_groups_with_file_and_line() {
    let c = check(
        "inetd.conf",
        b"7000 stream tcp nowait nosuchuser9 /bin/cat cat\n7001 stream tcp nowait nobody.nosuchgroup9 /bin/cat cat\n7002 stream tcp nowait nobody.daemon /bin/cat cat\n",
    );
    assert_eq!(c.code, Some(0), "{}", c.stderr);
    assert!(
        c.stderr.contains(
            "inetd.conf:1: warning: service 7000/tcp: user \"nosuchuser9\" does not exist"
        ),
        "{}",
        c.stderr
    );
    assert!(
        c.stderr.contains(
            "inetd.conf:2: warning: service 7001/tcp: group \"nosuchgroup9\" does not exist"
        ),
        "{}",
        c.stderr
    );
    assert!(!c.stderr.contains("inetd.conf:3"), "{}", c.stderr);
}

#[test]
fn inetd_conf_errors_are_all_listed_with_file_and_line() {
    let c = check(
        "inetd.conf",
        b"echo stream tcp nowait root internal\nnosuch stream tcp nowait root /bin/cat cat\n7000 stream tcp maybe root /bin/cat cat\nlocalhost:7001 stream tcp nowait root /bin/cat cat\n",
    );
    assert_eq!(c.code, Some(1));
    for needle in [
        "inetd.conf:2: unknown service \"nosuch\"",
        "inetd.conf:3: \"maybe\" is not `wait` or `nowait`",
        "inetd.conf:4: \"localhost\" is not an IP address",
    ] {
        assert!(
            c.stderr.contains(needle),
            "{needle:?} not in:\n{}",
            c.stderr
        );
    }
}

// ---- convert ----

fn xinetd_conf() -> PathBuf {
    let p = PathBuf::from("/etc/xinetd.conf");
    assert!(
        p.exists() && Path::new("/etc/xinetd.d/echo").exists(),
        "Debian package xinetd must be installed (scripts/test.sh installs it)"
    );
    p
}

/// The stock Debian files: every service is disabled there, so each
/// becomes a commented-out block; nothing is lost, exit 0.
#[test]
fn debian_xinetd_files_convert_as_installed() {
    let (code, out, err) = convert(&xinetd_conf(), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    for id in [
        "chargen-stream",
        "chargen-dgram",
        "daytime-stream",
        "daytime-dgram",
        "discard-stream",
        "discard-dgram",
        "echo-stream",
        "echo-dgram",
        "time-stream",
        "time-dgram",
    ] {
        assert!(
            out.contains(&format!("service {id} is disabled there; uncomment")),
            "{id} in:\n{out}"
        );
    }
    assert!(out.contains("/etc/xinetd.d/servers:4: service servers is disabled there"));
    assert!(!out.lines().any(|l| l.starts_with("[[service]]")), "{out}");
}

/// The same files with every service enabled: converted, and the output
/// passes --check with the services xinetd would run.
#[test]
fn debian_xinetd_files_enabled_convert_to_a_config_that_checks() {
    xinetd_conf();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("xinetd.d");
    std::fs::create_dir(&d).unwrap();
    for e in std::fs::read_dir("/etc/xinetd.d").unwrap() {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        let fixed: String = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("disable") {
                    format!("{}\n", l.replace("yes", "no"))
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(d.join(e.file_name()), fixed).unwrap();
    }
    let main = std::fs::read_to_string("/etc/xinetd.conf")
        .unwrap()
        .replace(
            "includedir /etc/xinetd.d",
            &format!("includedir {}", d.display()),
        );
    let conf = write_file(dir.path(), "xinetd.conf", main.as_bytes());
    let (code, out, err) = convert(&conf, &[]);
    // servers/services (xinetd's own internal services) and the second
    // definitions of the *-dgram ids (the *-udp files) are not carried.
    assert_eq!(code, Some(3), "{err}\n{out}");
    for needle in [
        "xinetd.d/servers:6: service servers: not carried",
        "xinetd.d/services:6: service services: not carried",
        "xinetd.d/echo-udp:4: service echo-dgram: not carried: a service with this id came before it",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    let toml = write_file(dir.path(), "converted.toml", out.as_bytes());
    let checked = run_cli(&["--check", "--cfgfile", toml.to_str().unwrap()]);
    let listed = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(listed.contains("OK, 10 service(s)"), "{listed}");
    for (id, proto, port, internal) in [
        ("chargen-stream", "tcp", 19, "chargen"),
        ("chargen-dgram", "udp", 19, "chargen"),
        ("daytime-stream", "tcp", 13, "daytime"),
        ("daytime-dgram", "udp", 13, "daytime"),
        ("discard-stream", "tcp", 9, "discard"),
        ("discard-dgram", "udp", 9, "discard"),
        ("echo-stream", "tcp", 7, "echo"),
        ("echo-dgram", "udp", 7, "echo"),
        ("time-stream", "tcp", 37, "time"),
        ("time-dgram", "udp", 37, "time"),
    ] {
        let line = format!("{id}\t{proto} 0.0.0.0:{port}\tuser none\tinternal {internal}");
        assert!(listed.contains(&line), "{line:?} not in:\n{listed}");
    }
    // Each file on its own converts too (found as xinetd by its directory).
    let (code, out, err) = convert(&d.join("echo"), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.matches("[[service]]").count(), 2, "{out}");
}

#[test]
fn xinetd_with_defaults_includes_and_unmapped_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let inc = dir.path().join("inc");
    std::fs::create_dir(&inc).unwrap();
    write_file(
        &inc,
        "app",
        b"service app\n{\n    port = 7100\n    socket_type = stream\n    wait = no\n    user = nobody\n    server = /usr/sbin/tcpd\n    server_args = in.app -x\n    flags = NAMEINARGS IPv4\n    only_from += 10.0.0.0/8\n    banner = /etc/issue\n    cps = 10 30\n}\n",
    );
    // xinetd skips names with a dot or ending in `~`.
    write_file(&inc, "app.rpmsave", b"this is not read\n");
    write_file(&inc, "app~", b"this is not read\n");
    let main = write_file(
        dir.path(),
        "xinetd.conf",
        format!(
            "defaults\n{{\n    only_from = 127.0.0.1\n    log_type = SYSLOG daemon info\n}}\nincludedir {}\n",
            inc.display()
        )
        .as_bytes(),
    );
    let (code, out, err) = convert(&main, &[]);
    assert_eq!(code, Some(3), "{err}");
    let main_name = main.display().to_string();
    assert!(
        err.contains(&format!(
            "{main_name}:4: defaults: `log_type` is not carried"
        )),
        "{err}"
    );
    assert!(
        err.contains("inc/app:11: service app: `banner = /etc/issue` is not carried"),
        "{err}"
    );
    assert!(
        out.contains("# ") && out.contains("banner = /etc/issue -- not carried"),
        "{out}"
    );
    for line in [
        "command = [\"/usr/sbin/tcpd\", \"-x\"]",
        "argv0 = \"in.app\"",
        "user = \"nobody\"",
        "allow = [\"127.0.0.1/32\", \"10.0.0.0/8\"]",
        "rate = \"10/s\"",
        "bind = [\"0.0.0.0\"]",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    let toml = write_file(dir.path(), "out.toml", out.as_bytes());
    let c = run_cli(&["--check", "--cfgfile", toml.to_str().unwrap()]);
    assert_eq!(
        c.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&c.stderr)
    );
}

#[test]
fn convert_exit_codes_and_warnings_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let clean = write_file(
        dir.path(),
        "inetd.conf",
        b"echo stream tcp nowait root internal\n",
    );
    let (code, out, err) = convert(&clean, &[]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    assert!(out.contains("internal = \"echo\""), "{out}");

    let lossy = write_file(
        dir.path(),
        "lossy",
        b"7000 stream,sndbuf=8192 tcp nowait/5/30/2 nobody /bin/cat cat\n",
    );
    let (code, out, err) = convert(&lossy, &["--from", "inetd"]);
    assert_eq!(code, Some(3), "{err}");
    let name = lossy.display().to_string();
    assert!(
        err.contains(&format!("{name}:1: ")) && err.contains("sndbuf=8192` is ignored"),
        "{err}"
    );
    assert!(
        out.contains("max_instances = 5")
            && out.contains("per_source = 2")
            && out.contains("per_source_rate = \"30/m\""),
        "{out}"
    );

    let broken = write_file(dir.path(), "inetd.conf", b"echo stream tcp nowait root\n");
    let (code, out, err) = convert(&broken, &[]);
    assert_eq!(code, Some(1));
    assert!(out.is_empty());
    assert!(
        err.contains("inetd.conf:1: an inetd.conf entry has at least 6 fields"),
        "{err}"
    );

    let classic = write_file(dir.path(), "wininetd.conf", b"7000 bob:s3cret /bin/cat\n");
    let (code, out, _) = convert(&classic, &[]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("user = \"bob:s3cret\"") && out.contains("command = \"/bin/cat\""),
        "{out}"
    );
}

/// README's side-by-side: the inetd.conf and xinetd parts convert to its
/// TOML part (the service's name aside).
#[test]
fn readme_side_by_side_is_what_convert_prints() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```\n# inetd.conf\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README has the side-by-side block");
    let (inetd, rest) = block.split_once("\n# xinetd\n").unwrap();
    let (xinetd, toml) = rest.split_once("\n# wininetd.toml").unwrap();
    let toml = toml.split_once('\n').unwrap().1;
    let dir = tempfile::tempdir().unwrap();
    let keys = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("name = ") && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    let want = keys(toml);
    assert!(want.len() > 5, "{toml}");
    for (name, text, from) in [("inetd.conf", inetd, "inetd"), ("x", xinetd, "xinetd")] {
        let f = write_file(dir.path(), name, text.as_bytes());
        let (code, out, err) = convert(&f, &["--from", from]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(keys(&out), want, "{from}:\n{out}");
    }
}

// ---- acceptance: openbsd-inetd and wininetd on the same inetd.conf ----

/// openbsd-inetd in the foreground (`-d`), stopped by its PID.
struct Inetd {
    child: Child,
    log: PathBuf,
}

impl Drop for Inetd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The acceptance file: loopback only (a bare `ADDR:` line sets the address
/// of every line after it), internal services, a program with its own
/// argv[0] and `user.group`, a TCP `wait` and a UDP `wait` program.
fn acceptance_conf(addr: &str, dir: &Path, ports: &[u16]) -> String {
    let d = dir.display();
    format!(
        "# the same services under openbsd-inetd and wininetd\n{addr}:\n\
echo\tstream\ttcp\tnowait\troot\tinternal\n\
echo\tdgram\tudp\twait\troot\tinternal\n\
discard\tstream\ttcp\tnowait\troot\tinternal\n\
chargen\tstream\ttcp\tnowait\troot\tinternal\n\
daytime\tstream\ttcp\tnowait\troot\tinternal\n\
time\tstream\ttcp\tnowait\troot\tinternal\n\
time\tdgram\tudp\twait\troot\tinternal\n\
{}\tstream\ttcp\tnowait\tnobody.daemon\t{PYTHON}\tshowname\t{d}/show.py\ta\tb\n\
{}\tstream\ttcp\twait\tnobody\t{PYTHON}\twaitname\t{d}/wait.py\n\
{}\tdgram\tudp\twait\tnobody\t{PYTHON}\tudpname\t{d}/udp.py\n\
{}\tstream\ttcp\tnowait\tnobody\t/usr/sbin/tcpd\t{d}/wrapped.sh\tvia-tcpd\n",
        ports[0], ports[1], ports[2], ports[3]
    )
}

/// What clients get from one server, normalised where a value is the time.
#[derive(Debug, PartialEq)]
struct Transcript {
    echo_tcp: String,
    discard: Vec<u8>,
    chargen: Vec<u8>,
    daytime_shape: String,
    time_ok: bool,
    show: String,
    wait: Vec<String>,
    wait_again: String,
    udp_program: Option<Vec<u8>>,
    tcpd: String,
}

fn transcript(ip: [u8; 4], ports: &[u16]) -> Transcript {
    let at = |port: u16| SocketAddr::from((ip, port));
    let tcp = |port: u16| {
        let s = TcpStream::connect_timeout(&at(port), Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut echo = tcp(7);
    echo.write_all(b"hello inetd\r\n").unwrap();
    echo.shutdown(Shutdown::Write).unwrap();
    let echo_tcp = String::from_utf8_lossy(&read_all(&mut echo)).into_owned();

    let udp = |port: u16, data: &[u8]| udp_request(at(port), data, Duration::from_secs(5));

    let mut discard = tcp(9);
    discard.write_all(&[b'x'; 10_000]).unwrap();
    discard.shutdown(Shutdown::Write).unwrap();
    let discard = read_all(&mut discard);

    let mut chargen = tcp(19);
    let mut first = vec![0u8; 3 * 74];
    chargen.read_exact(&mut first).unwrap();
    drop(chargen);

    let mut daytime = tcp(13);
    let daytime = String::from_utf8_lossy(&read_all(&mut daytime)).into_owned();

    let now_1900 = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 2_208_988_800
    };
    let near = |bytes: &[u8]| {
        bytes.len() == 4
            && (u64::from(u32::from_be_bytes(bytes.try_into().unwrap())) as i64 - now_1900() as i64)
                .abs()
                < 5
    };
    let mut time = tcp(37);
    let time_ok = near(&read_all(&mut time));

    let show = ask(at(ports[0]));
    let wait: Vec<String> = (0..3).map(|_| ask(at(ports[1]))).collect();
    // Idle for 1.5 s the program exits; the next client gets a new one.
    wait_until("the wait program exits", Duration::from_secs(20), || {
        running_as("waitname") == 0
    });
    let wait_again = ask(at(ports[1]));
    Transcript {
        echo_tcp,
        discard,
        chargen: first,
        daytime_shape: daytime_shape(&daytime),
        time_ok,
        show,
        wait,
        wait_again,
        udp_program: udp(ports[2], b"ping"),
        tcpd: ask(at(ports[3])),
    }
}

/// How many processes run with this argv[0] (whoever started them).
fn running_as(argv0: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| c.split(|&b| b == 0).next() == Some(argv0.as_bytes()))
        .count()
}

/// A daytime answer as "one CRLF line, time HH:MM:SS within 5 s of now".
fn daytime_shape(text: &str) -> String {
    let Some(line) = text.strip_suffix("\r\n") else {
        return format!("no CRLF line: {text:?}");
    };
    let hms = line
        .split([' ', '-'])
        .find(|w| w.len() == 8 && w.as_bytes()[2] == b':' && w.as_bytes()[5] == b':');
    let Some(hms) = hms else {
        return format!("no time in {line:?}");
    };
    let secs = |h: &str| -> i64 {
        let p: Vec<i64> = h.split(':').map(|n| n.parse().unwrap()).collect();
        p[0] * 3600 + p[1] * 60 + p[2]
    };
    let now = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 86_400) as i64;
    let diff = (secs(hms) - now).rem_euclid(86_400);
    if diff.min(86_400 - diff) < 5 {
        "a CRLF line with the time now".into()
    } else {
        format!("{line:?} is not now")
    }
}

#[test]
fn acceptance_the_same_inetd_conf_under_openbsd_inetd_and_wininetd() {
    assert!(
        Path::new(OPENBSD_INETD).exists(),
        "{OPENBSD_INETD} is missing: scripts/test.sh unpacks Debian's openbsd-inetd package there"
    );
    assert_python();
    assert!(
        is_root(),
        "inetd runs programs as `nobody`: run as root (CI does)"
    );
    let dir = shared_dir();
    script(dir.path(), "show.py", SHOW);
    script(dir.path(), "wait.py", WAIT_SERVER);
    script(dir.path(), "udp.py", UDP_SERVER);
    // tcpd runs its argv[0] (an absolute path here) once hosts.allow agrees.
    script(
        dir.path(),
        "wrapped.sh",
        "#!/bin/sh\necho \"wrapped $1 as $(id -un)\"\n",
    );
    assert!(
        Path::new("/usr/sbin/tcpd").exists(),
        "/usr/sbin/tcpd is needed (Debian package tcpd)"
    );
    let ports = [free_port(), free_port(), free_port_tcp_udp(), free_port()];

    // Three loopback addresses, so the three servers share the port numbers.
    let (inetd_ip, native_ip, converted_ip) = ([127, 0, 77, 1], [127, 0, 77, 2], [127, 0, 77, 3]);
    let inetd_conf = write_file(
        dir.path(),
        "openbsd.conf",
        acceptance_conf("127.0.77.1", dir.path(), &ports).as_bytes(),
    );
    let log = dir.path().join("openbsd-inetd.log");
    let inetd = Inetd {
        child: Command::new(OPENBSD_INETD)
            .arg("-d")
            .arg(&inetd_conf)
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start openbsd-inetd"),
        log,
    };
    let ready = |ip: [u8; 4]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&SocketAddr::from((ip, 7)), Duration::from_secs(1))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "not listening on {ip:?}: {}",
                std::fs::read_to_string(&inetd.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    ready(inetd_ip);
    let reference = transcript(inetd_ip, &ports);

    // wininetd on the same file, read natively (the name selects inetd.conf).
    let native = Daemon::start(
        "inetd.conf",
        &acceptance_conf("127.0.77.2", dir.path(), &ports),
        &[],
    );
    let native_t = transcript(native_ip, &ports);

    // And converted to TOML first.
    let src = write_file(
        dir.path(),
        "inetd.conf",
        acceptance_conf("127.0.77.3", dir.path(), &ports).as_bytes(),
    );
    let (code, toml, err) = convert(&src, &[]);
    assert_eq!(code, Some(0), "{err}");
    let converted = Daemon::start("converted.toml", &toml, &[]);
    let converted_t = transcript(converted_ip, &ports);

    // What the reference server gave is what a client expects.
    assert_eq!(reference.echo_tcp, "hello inetd\r\n");
    assert!(reference.discard.is_empty());
    assert_eq!(&reference.chargen[..8], b" !\"#$%&'");
    assert_eq!(reference.daytime_shape, "a CRLF line with the time now");
    assert!(reference.time_ok);
    let d = dir.path().display();
    assert_eq!(
        reference.show,
        format!(
            "argv=['showname', '{d}/show.py', 'a', 'b'] user=nobody group=daemon peer=127.0.0.1\n"
        )
    );
    assert_eq!(
        reference.wait,
        [
            "waitname nobody n=1 listening=1\n",
            "waitname nobody n=2 listening=1\n",
            "waitname nobody n=3 listening=1\n"
        ]
    );
    assert_eq!(reference.wait_again, "waitname nobody n=1 listening=1\n");
    assert_eq!(reference.udp_program.as_deref(), Some(&b"udpname ping"[..]));
    assert_eq!(reference.tcpd, "wrapped via-tcpd as nobody\n");

    assert_eq!(native_t, reference, "native:\n{}", native.log());
    assert_eq!(
        converted_t,
        reference,
        "converted:\n{toml}\n{}",
        converted.log()
    );

    // UDP internal services: openbsd-inetd drops datagrams from 127/8 to
    // them (its guard against echo/chargen loops with spoofed sources), so
    // IPv4 loopback cannot compare (they are compared over ::1 in
    // `acceptance_udp_internal_services_over_ipv6_loopback`); wininetd
    // answers both lines of the file.
    for ip in [native_ip, converted_ip] {
        let echo = udp_request((ip, 7).into(), b"hello udp", Duration::from_secs(5));
        assert_eq!(echo.as_deref(), Some(&b"hello udp"[..]));
        let time = udp_request((ip, 37).into(), b"x", Duration::from_secs(5)).unwrap();
        assert_eq!(time.len(), 4);
    }
    let silent = udp_request(
        (inetd_ip, 7).into(),
        b"hello udp",
        Duration::from_millis(500),
    );
    assert_eq!(
        silent, None,
        "openbsd-inetd answered UDP echo from loopback"
    );
    drop(inetd);
}

/// What UDP clients get from the internal services on ::1.
#[derive(Debug, PartialEq)]
struct UdpTranscript {
    echo: Option<Vec<u8>>,
    time_ok: bool,
    daytime_shape: String,
    discard: Option<Vec<u8>>,
}

fn udp_transcript() -> UdpTranscript {
    let at = |port: u16| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let time = udp_request(at(37), b"x", Duration::from_secs(5)).unwrap_or_default();
    let now_1900 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2_208_988_800;
    let daytime = udp_request(at(13), b"x", Duration::from_secs(5)).unwrap_or_default();
    UdpTranscript {
        echo: udp_request(at(7), b"hello udp6", Duration::from_secs(5)),
        time_ok: time.len() == 4
            && (u64::from(u32::from_be_bytes(time.try_into().unwrap())) as i64 - now_1900 as i64)
                .abs()
                < 5,
        daytime_shape: daytime_shape(&String::from_utf8_lossy(&daytime)),
        discard: udp_request(at(9), b"gone", Duration::from_millis(500)),
    }
}

/// openbsd-inetd's guard (`dg_badinput`) drops UDP datagrams to internal
/// services from 0/8, 127/8, 255/8, multicast and broadcast IPv4 sources,
/// and from IPv6 multicast, unspecified, v4-mapped and v4-compatible ones
/// (and from ports below 1024): ::1 passes, so over IPv6 loopback the
/// three servers can be compared. One port each, so one server at a time.
#[test]
fn acceptance_udp_internal_services_over_ipv6_loopback() {
    assert!(
        Path::new(OPENBSD_INETD).exists(),
        "{OPENBSD_INETD} is missing: scripts/test.sh unpacks Debian's openbsd-inetd package there"
    );
    let conf = "::1:\n\
echo\tdgram\tudp6\twait\troot\tinternal\n\
discard\tdgram\tudp6\twait\troot\tinternal\n\
daytime\tdgram\tudp6\twait\troot\tinternal\n\
time\tdgram\tudp6\twait\troot\tinternal\n";
    let dir = tempfile::tempdir().unwrap();
    let inetd_conf = write_file(dir.path(), "openbsd.conf", conf.as_bytes());
    let log = dir.path().join("openbsd-inetd.log");
    let inetd = Inetd {
        child: Command::new(OPENBSD_INETD)
            .arg("-d")
            .arg(&inetd_conf)
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start openbsd-inetd"),
        log,
    };
    let echo6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 7));
    let deadline = Instant::now() + Duration::from_secs(10);
    while udp_request(echo6, b"ready?", Duration::from_millis(200)).is_none() {
        assert!(
            Instant::now() < deadline,
            "openbsd-inetd does not answer UDP echo on ::1: {}",
            std::fs::read_to_string(&inetd.log).unwrap_or_default()
        );
    }
    let reference = udp_transcript();
    drop(inetd);

    let native = Daemon::start("inetd.conf", conf, &[]);
    let native_t = udp_transcript();
    drop(native);

    let src = write_file(dir.path(), "inetd.conf", conf.as_bytes());
    let (code, toml, err) = convert(&src, &[]);
    assert_eq!(code, Some(0), "{err}");
    let converted = Daemon::start("converted.toml", &toml, &[]);
    let converted_t = udp_transcript();

    assert_eq!(
        reference,
        UdpTranscript {
            echo: Some(b"hello udp6".to_vec()),
            time_ok: true,
            daytime_shape: "a CRLF line with the time now".into(),
            discard: None,
        }
    );
    assert_eq!(native_t, reference);
    assert_eq!(
        converted_t,
        reference,
        "converted:\n{toml}\n{}",
        converted.log()
    );
}
