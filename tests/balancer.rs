//! The deployment the PROXY protocol is for: Debian's HAProxy and nginx
//! (stream) in front of two wininetd nodes on 127.0.0.2 and 127.0.0.3,
//! round-robin, with real programs behind them. Clients connect from
//! 127.0.0.1 (or another 127/8 address); the balancer connects to the
//! nodes from 127.0.0.9, so every variable tells the two apart.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BALANCER_IP: &str = "127.0.0.9";
const NODES: [(&str, &str); 2] = [("a", "127.0.0.2"), ("b", "127.0.0.3")];

/// The ports the nodes serve (the same on both) and the balancer's.
struct Ports {
    env: u16,
    greet: u16,
    git: u16,
    rules: u16,
    /// Balancer front ends: env (v2 for HAProxy), env v1, greet, git, rules.
    fe_env: u16,
    fe_env_v1: u16,
    fe_greet: u16,
    fe_git: u16,
    fe_rules: u16,
}

impl Ports {
    fn new() -> Ports {
        let p = free_ports(9);
        Ports {
            env: p[0],
            greet: p[1],
            git: p[2],
            rules: p[3],
            fe_env: p[4],
            fe_env_v1: p[5],
            fe_greet: p[6],
            fe_git: p[7],
            fe_rules: p[8],
        }
    }
}

/// One wininetd node's config: four services, each requiring a header
/// from the balancer.
fn node_config(name: &str, ip: &str, p: &Ports, git_base: &Path) -> String {
    let proxy =
        format!("proxy_protocol = \"any\"\nproxy_from = [\"{BALANCER_IP}\"]\nproxy_timeout = 3");
    format!(
        r#"[[service]]
name = "env"
port = {env}
bind = ["{ip}"]
env = {{ NODE = "{name}" }}
command = ["/bin/sh", "-c", "echo NODE=$NODE CLIENT_IP=$CLIENT_IP CLIENT_PORT=$CLIENT_PORT PROXY_PEER_IP=$PROXY_PEER_IP PROXY_VERSION=$PROXY_VERSION PROXY_UNIQUE_ID=$PROXY_UNIQUE_ID; head -c 4; sleep 0.1; echo done"]
{proxy}

[[service]]
name = "greet"
port = {greet}
bind = ["{ip}"]
env = {{ NODE = "{name}" }}
command = ["/bin/sh", "-c", "echo 220 $NODE ready for $CLIENT_IP; read l; echo 250 $l"]
{proxy}

[[service]]
name = "git"
port = {git}
bind = ["{ip}"]
command = ["git", "daemon", "--inetd", "--export-all", "--base-path={base}"]
{proxy}

[[service]]
name = "rules"
port = {rules}
bind = ["{ip}"]
command = ["/bin/sh", "-c", "echo welcome $CLIENT_IP"]
allow = ["127.0.0.0/29"]
deny = ["127.0.0.6"]
{proxy}
"#,
        env = p.env,
        greet = p.greet,
        git = p.git,
        rules = p.rules,
        base = git_base.display(),
    )
}

fn start_node(name: &str, ip: &str, p: &Ports, git_base: &Path) -> Daemon {
    Daemon::start(
        &format!("node-{name}.toml"),
        &node_config(name, ip, p, git_base),
        &[],
    )
}

/// A balancer in the foreground, killed by its PID when dropped.
struct Balancer {
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Balancer {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package}"
    );
}

fn haproxy(p: &Ports) -> Balancer {
    tool("/usr/sbin/haproxy", "haproxy");
    let dir = tempfile::tempdir().unwrap();
    let backend = |name: &str, port: u16, send: &str, check: bool| {
        let check = if check {
            "option tcp-check\n    tcp-check expect string PROXY_VERSION=2\n"
        } else {
            ""
        };
        let server_check = if check.is_empty() {
            ""
        } else {
            " check inter 300 rise 1 fall 1"
        };
        let servers: String = NODES
            .iter()
            .map(|(n, ip)| format!("    server {n} {ip}:{port} {send}{server_check}\n"))
            .collect();
        format!(
            "backend {name}\n    balance roundrobin\n    source {BALANCER_IP}\n    {check}{servers}"
        )
    };
    let frontend = |name: &str, port: u16| {
        format!(
            "frontend fe_{name}\n    bind 127.0.0.1:{port}\n    unique-id-format %ci-%cp\n    default_backend {name}\n"
        )
    };
    let v2 = "send-proxy-v2 proxy-v2-options authority,unique-id,crc32c";
    let config = format!(
        "global\n    maxconn 512\n    stats socket {sock} mode 600 level admin\n    log stdout format raw daemon\n\
defaults\n    mode tcp\n    log global\n    option tcplog\n    timeout connect 2s\n    timeout client 20s\n    timeout server 20s\n    retries 3\n    option redispatch 1\n\n\
{}{}{}{}{}{}{}{}{}{}",
        frontend("env", p.fe_env),
        backend("env", p.env, v2, true),
        frontend("env_v1", p.fe_env_v1),
        backend("env_v1", p.env, "send-proxy", false),
        frontend("greet", p.fe_greet),
        backend("greet", p.greet, v2, false),
        frontend("git", p.fe_git),
        backend("git", p.git, v2, false),
        frontend("rules", p.fe_rules),
        backend("rules", p.rules, v2, false),
        sock = dir.path().join("admin.sock").display(),
    );
    let cfg = write_file(dir.path(), "haproxy.cfg", config.as_bytes());
    let log = dir.path().join("haproxy.log");
    let child = Command::new("/usr/sbin/haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("haproxy.err")).unwrap())
        .spawn()
        .expect("start haproxy");
    let b = Balancer { child, dir, log };
    wait_listening(
        &b,
        &[p.fe_env, p.fe_env_v1, p.fe_greet, p.fe_git, p.fe_rules],
    );
    b
}

fn nginx(p: &Ports) -> Balancer {
    tool("/usr/sbin/nginx", "nginx");
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    tool(module, "libnginx-mod-stream");
    let dir = tempfile::tempdir().unwrap();
    let server = |name: &str, fe: u16, port: u16| {
        let servers: String = NODES
            .iter()
            .map(|(_, ip)| format!("server {ip}:{port} max_fails=1 fail_timeout=1s; "))
            .collect();
        format!(
            "  upstream {name} {{ {servers}}}\n  server {{ listen 127.0.0.1:{fe}; proxy_pass {name}; proxy_protocol on; proxy_bind {BALANCER_IP}; proxy_connect_timeout 2s; proxy_half_close on; }}\n"
        )
    };
    let log = dir.path().join("error.log");
    let config = format!(
        "load_module {module};\ndaemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\nerror_log {log} info;\nevents {{ worker_connections 512; }}\nstream {{\n{}{}{}{}}}\n",
        server("env", p.fe_env, p.env),
        server("greet", p.fe_greet, p.greet),
        server("git", p.fe_git, p.git),
        server("rules", p.fe_rules, p.rules),
        pid = dir.path().join("nginx.pid").display(),
        log = log.display(),
    );
    let cfg = write_file(dir.path(), "nginx.conf", config.as_bytes());
    let child = Command::new("/usr/sbin/nginx")
        .arg("-e")
        .arg(&log)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("nginx.err")).unwrap())
        .spawn()
        .expect("start nginx");
    let b = Balancer { child, dir, log };
    wait_listening(&b, &[p.fe_env, p.fe_greet, p.fe_git, p.fe_rules]);
    b
}

/// Waits until the balancer listens on every front end (a port that
/// refuses is not up yet; nothing is sent on the probes).
fn wait_listening(b: &Balancer, ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for &port in ports {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the balancer does not listen on {port}; its log:\n{}\n{}",
                b.log(),
                std::fs::read_to_string(b.dir.path().join("haproxy.err"))
                    .or_else(|_| std::fs::read_to_string(b.dir.path().join("nginx.err")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// HAProxy's view of a backend's servers: (name, status).
fn haproxy_status(b: &Balancer, backend: &str) -> Vec<(String, String)> {
    let mut s = UnixStream::connect(b.dir.path().join("admin.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"show stat\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (px, sv, st) = (col("pxname"), col("svname"), col("status"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > st && f[px] == backend && f[sv] != "BACKEND")
        .map(|f| (f[sv].to_string(), f[st].to_string()))
        .collect()
}

fn wait_haproxy(b: &Balancer, backend: &str, want: &[(&str, &str)], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = haproxy_status(b, backend);
        if want
            .iter()
            .all(|(n, s)| now.iter().any(|(m, t)| m == n && t.starts_with(s)))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "haproxy {backend}: {now:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One request to the env front end: (the program's first line, whether
/// the reply was complete, the client's own port).
fn env_request(fe: u16) -> (String, bool, u16) {
    let s = connect(fe);
    let me = s.local_addr().unwrap().port();
    let out = String::from_utf8_lossy(&exchange_on(s, b"ping")).into_owned();
    let complete = out.ends_with("pingdone\n");
    (
        out.lines().next().unwrap_or_default().to_string(),
        complete,
        me,
    )
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// The program sees the client (127.0.0.1 and its port), PROXY_PEER_IP
/// the balancer; both nodes serve.
fn check_env(fe: u16, version: &str, unique_id: bool) {
    let mut nodes = Vec::new();
    for _ in 0..8 {
        let (line, complete, me) = env_request(fe);
        assert!(complete, "{line}");
        assert_eq!(field(&line, "CLIENT_IP"), "127.0.0.1", "{line}");
        assert_eq!(field(&line, "CLIENT_PORT"), me.to_string(), "{line}");
        assert_eq!(field(&line, "PROXY_PEER_IP"), BALANCER_IP, "{line}");
        assert_eq!(field(&line, "PROXY_VERSION"), version, "{line}");
        if unique_id {
            assert_eq!(field(&line, "PROXY_UNIQUE_ID"), format!("127.0.0.1-{me}"));
        }
        nodes.push(field(&line, "NODE").to_string());
    }
    assert!(
        nodes.iter().any(|n| n == "a") && nodes.iter().any(|n| n == "b"),
        "{nodes:?}"
    );
}

fn check_greeting(fe: u16) {
    let mut s = connect(fe);
    let mut got = Vec::new();
    let mut buf = [0u8; 128];
    while !got.ends_with(b"\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the greeting: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let greeting = String::from_utf8(got).unwrap();
    assert!(
        greeting.starts_with("220 ") && greeting.ends_with(" ready for 127.0.0.1\n"),
        "{greeting}"
    );
    assert_eq!(exchange_on(s, b"hello\n"), b"250 hello\n");
}

/// A bare repository under `base`; returns its HEAD.
fn git_repo(tmp: &Path, base: &Path) -> String {
    let work = tmp.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(base).unwrap();
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .output()
            .expect("git must be installed (package git)");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), pattern(100_000, 3)).unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    git(
        tmp,
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            base.join("repo.git").to_str().unwrap(),
        ],
    );
    head
}

fn check_git_clone(fe: u16, tmp: &Path, head: &str, n: usize) {
    for i in 0..n {
        let dest = tmp.join(format!("clone-{fe}-{i}"));
        let out = Command::new("git")
            .args([
                "clone",
                "-q",
                &format!("git://127.0.0.1:{fe}/repo.git"),
                dest.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git clone through the balancer: {out:?}"
        );
        let out = Command::new("git")
            .current_dir(&dest)
            .args(["rev-parse", "HEAD"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), head);
        assert_eq!(
            std::fs::read(dest.join("README")).unwrap(),
            pattern(100_000, 3)
        );
    }
}

/// allow/deny see the client behind the balancer (the balancer itself,
/// 127.0.0.9, is outside `allow`).
fn check_rules(fe: u16, nodes: &[&Daemon], balancer: &Balancer) {
    let logs = || {
        let nodes: Vec<String> = nodes.iter().map(|d| d.log()).collect();
        format!("{}\nbalancer:\n{}", nodes.join("\n"), balancer.log())
    };
    assert_eq!(
        answer("127.0.0.1", fe),
        b"welcome 127.0.0.1\n",
        "{}",
        logs()
    );
    assert_eq!(answer("127.0.0.5", fe), b"welcome 127.0.0.5\n");
    for refused in ["127.0.0.6", "127.0.0.10"] {
        // Twice: round-robin reaches both nodes.
        for _ in 0..2 {
            let out = answer(refused, fe);
            assert!(out.is_empty(), "{refused} got {out:?}");
        }
    }
    let refusals = |needle: &str| nodes.iter().filter(|d| d.log().contains(needle)).count();
    wait_until(
        "both nodes refused both sources",
        Duration::from_secs(5),
        || refusals("source=127.0.0.6") == 2 && refusals("source=127.0.0.10") == 2,
    );
    for d in nodes {
        assert!(!d.log().contains("source=127.0.0.9 "), "{}", d.log());
    }
}

/// What a client that sends nothing gets. (It does not half-close first:
/// HAProxy takes a client's FIN while it still connects to the server as
/// an abort, `CC`, and never connects.)
fn answer(from: &str, fe: u16) -> Vec<u8> {
    read_all(&mut connect_from(from, fe))
}

/// A bounded client loop through the balancer while node b is stopped
/// and started again: the balancer routes around it, and every
/// connection a node started a program for got its whole reply.
fn stop_and_restart_node_b(
    fe: u16,
    p: &Ports,
    base: &Path,
    a: &Daemon,
    mut b: Daemon,
    haproxy: Option<&Balancer>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    // Three clients at once, so programs are running on b when it stops.
    const CLIENTS: usize = 3;
    const EACH: usize = 40;
    let done = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (done, results) = (Arc::clone(&done), Arc::clone(&results));
            std::thread::spawn(move || {
                for _ in 0..EACH {
                    let r = env_request(fe);
                    results.lock().unwrap().push(r);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let wait_done = |n: usize| {
        wait_until(
            &format!("{n} requests done"),
            Duration::from_secs(60),
            || done.load(Ordering::SeqCst) >= n,
        )
    };
    wait_done(25);
    b.signal(Signal::SIGTERM);
    b.wait_exit(Duration::from_secs(10));
    let left_running = b.log();
    wait_done(60);
    let b2 = start_node("b", NODES[1].1, p, base);
    for c in clients {
        c.join().unwrap();
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    if let Some(h) = haproxy {
        wait_haproxy(
            h,
            "env",
            &[("a", "UP"), ("b", "UP")],
            Duration::from_secs(10),
        );
    }
    // Round-robin comes back to the restarted node.
    wait_until("the restarted node serves", Duration::from_secs(10), || {
        let (line, complete, _) = env_request(fe);
        complete && field(&line, "NODE") == "b"
    });
    let logs = [a.log(), b.log(), b2.log()];
    let served_by = |port: u16| {
        let needle = format!("peer=127.0.0.1:{port} ");
        logs.iter().any(|l| {
            l.lines()
                .any(|x| x.contains(" started ") && x.contains(&needle))
        })
    };
    let mut lost = Vec::new();
    let mut failed = 0;
    for (line, complete, port) in &results {
        if !complete {
            failed += 1;
            if served_by(*port) {
                lost.push(line.clone());
            }
        }
    }
    eprintln!(
        "{} requests, {failed} failed; node b stopped after 25, restarted after 60: {}",
        results.len(),
        left_running
            .lines()
            .find(|l| l.contains("stopped;"))
            .unwrap_or_default()
    );
    assert!(
        lost.is_empty(),
        "programs started but their clients lost replies: {lost:?}"
    );
    assert!(
        failed <= 3,
        "{failed} of {} requests failed: {results:?}",
        results.len()
    );
    let by_a = results
        .iter()
        .filter(|(l, c, _)| *c && l.starts_with("NODE=a"))
        .count();
    assert!(
        by_a >= 25,
        "node a must carry the load while b is down ({by_a})"
    );
}

#[test]
fn haproxy_in_front_of_two_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("repos");
    let head = git_repo(tmp.path(), &base);
    let p = Ports::new();
    let a = start_node(NODES[0].0, NODES[0].1, &p, &base);
    let b = start_node(NODES[1].0, NODES[1].1, &p, &base);
    let h = haproxy(&p);
    // Health checks (LOCAL headers, answered by the program) keep both up.
    wait_haproxy(
        &h,
        "env",
        &[("a", "UP"), ("b", "UP")],
        Duration::from_secs(15),
    );
    check_env(p.fe_env, "2", true);
    check_env(p.fe_env_v1, "1", false);
    check_greeting(p.fe_greet);
    check_git_clone(p.fe_git, tmp.path(), &head, 2);
    check_rules(p.fe_rules, &[&a, &b], &h);
    wait_haproxy(
        &h,
        "env",
        &[("a", "UP"), ("b", "UP")],
        Duration::from_secs(5),
    );
    for d in [&a, &b] {
        assert!(!d.log().contains("refused: PROXY header"), "{}", d.log());
    }
    stop_and_restart_node_b(p.fe_env, &p, &base, &a, b, Some(&h));
}

#[test]
fn nginx_stream_in_front_of_two_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("repos");
    let head = git_repo(tmp.path(), &base);
    let p = Ports::new();
    let a = start_node(NODES[0].0, NODES[0].1, &p, &base);
    let b = start_node(NODES[1].0, NODES[1].1, &p, &base);
    let n = nginx(&p);
    check_env(p.fe_env, "1", false);
    check_greeting(p.fe_greet);
    check_git_clone(p.fe_git, tmp.path(), &head, 2);
    check_rules(p.fe_rules, &[&a, &b], &n);
    for d in [&a, &b] {
        assert!(!d.log().contains("refused: PROXY header"), "{}", d.log());
    }
    stop_and_restart_node_b(p.fe_env, &p, &base, &a, b, None);
}
