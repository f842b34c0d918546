//! `internal = "metrics"` with the real binary: counts after a scripted
//! mix of connections, the text checked by `promtool`, HTTP errors, series
//! across a reload, and a real Prometheus server scraping it.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const WAIT: Duration = Duration::from_secs(10);

/// Sends `request` raw and returns the whole response.
fn http(port: u16, request: &[u8]) -> String {
    let mut s = connect(port);
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("the endpoint closes after its answer");
    String::from_utf8(out).unwrap()
}

fn scrape(port: u16) -> String {
    let r = http(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n",
    );
    let (head, body) = r.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    body.to_string()
}

/// Every sample line as `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn conn(service: &str, outcome: &str) -> String {
    format!("wininetd_connections_total{{service=\"{service}\",outcome=\"{outcome}\"}}")
}

fn exits(service: &str, result: &str) -> String {
    format!("wininetd_program_exits_total{{service=\"{service}\",result=\"{result}\"}}")
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(ports: &[u16], with_rated: bool) -> String {
    let mut c = format!(
        r#"[[service]]
name = "metrics"
port = {m}
bind = ["127.0.0.1"]
internal = "metrics"

[[service]]
name = "hello"
port = {hello}
bind = ["127.0.0.1"]
command = ["/bin/echo", "hello"]
handoff = "pipe"

[[service]]
name = "denied"
port = {denied}
bind = ["127.0.0.1"]
command = ["/bin/echo", "never"]
deny = ["127.0.0.1/32"]

[[service]]
name = "missing"
port = {missing}
bind = ["127.0.0.1"]
command = ["/nonexistent/program"]

[[service]]
name = "echo-udp"
port = {udp}
bind = ["127.0.0.1"]
protocol = "udp"
internal = "echo"
"#,
        m = ports[0],
        hello = ports[1],
        denied = ports[2],
        missing = ports[3],
        udp = ports[5],
    );
    if with_rated {
        c.push_str(&format!(
            r#"
[[service]]
name = "rated"
port = {}
bind = ["127.0.0.1"]
command = ["/bin/echo", "rated"]
rate = "1/min"
"#,
            ports[4]
        ));
    }
    c
}

/// Polls the endpoint until `done` holds for its samples.
fn scrape_until(port: u16, what: &str, done: impl Fn(&HashMap<String, f64>) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(port);
        if done(&samples(&text)) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}; last scrape:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn counts_follow_a_scripted_mix_and_pass_promtool() {
    let mut ports = free_ports(5);
    ports.push(free_port_tcp_udp());
    let d = Daemon::start("m.toml", &config(&ports, true), &[]);
    let m = ports[0];

    for _ in 0..3 {
        assert_eq!(exchange(ports[1], b""), b"hello\n");
    }
    for _ in 0..2 {
        assert_closed_at_once(connect(ports[2]), WAIT);
    }
    // Rate 1/min: one token, so the first is served and the rest refused.
    assert_eq!(exchange(ports[4], b""), b"rated\n");
    for _ in 0..3 {
        assert_closed_at_once(connect(ports[4]), WAIT);
    }
    for _ in 0..2 {
        let mut s = connect(ports[3]);
        let _ = read_all(&mut s);
    }
    let echo = std::net::SocketAddr::from(([127, 0, 0, 1], ports[5]));
    assert_eq!(
        udp_request(echo, b"ping", Duration::from_secs(5)).as_deref(),
        Some(&b"ping"[..])
    );

    let text = scrape_until(m, "every program's end counted", |s| {
        s.get(&exits("hello", "ok")) == Some(&3.0)
            && s.get(&exits("missing", "not_started")) == Some(&2.0)
            && s.get(&exits("rated", "ok")) == Some(&1.0)
    });
    let s = samples(&text);
    let expect = [
        (conn("hello", "started"), 3.0),
        (conn("hello", "denied"), 0.0),
        (conn("denied", "denied"), 2.0),
        (conn("denied", "started"), 0.0),
        (conn("rated", "started"), 1.0),
        (conn("rated", "rate_limited"), 3.0),
        // exec fails after the fork: started, then ended not started.
        (conn("missing", "started"), 2.0),
        (exits("missing", "ok"), 0.0),
        (exits("hello", "error"), 0.0),
        (
            "wininetd_relay_bytes_total{service=\"hello\",direction=\"to_client\"}".into(),
            18.0,
        ),
        (
            "wininetd_relay_bytes_total{service=\"hello\",direction=\"to_program\"}".into(),
            0.0,
        ),
        (
            "wininetd_session_duration_seconds_count{service=\"hello\"}".into(),
            3.0,
        ),
        (
            "wininetd_udp_datagrams_total{service=\"echo-udp\",outcome=\"served\"}".into(),
            1.0,
        ),
        ("wininetd_sessions_active{service=\"hello\"}".into(), 0.0),
        // This scrape itself is the one live metrics session.
        ("wininetd_sessions_active{service=\"metrics\"}".into(), 1.0),
        ("wininetd_config_reloads_total{result=\"ok\"}".into(), 0.0),
        (
            format!(
                "wininetd_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ];
    for (key, want) in expect {
        assert_eq!(s.get(&key), Some(&want), "{key}\n{text}");
    }
    assert!(s["wininetd_config_last_reload_success_timestamp_seconds"] > 1.7e9);
    assert!(s["process_open_fds"] >= 5.0, "{text}");
    assert!(s["process_resident_memory_bytes"] > 1e6, "{text}");
    assert!(s.contains_key("process_cpu_seconds_total"), "{text}");
    // No client address is ever a label.
    assert!(!text.contains("127.0.0.1"), "{text}");
    promtool_check(&text);
    drop(d);
}

#[test]
fn http_errors_and_head() {
    let port = free_port();
    let _d = Daemon::start(
        "m.toml",
        &format!(
            "[[service]]\nname = \"metrics\"\nport = {port}\nbind = [\"127.0.0.1\"]\ninternal = \"metrics\"\n"
        ),
        &[],
    );
    let status = |r: &str| r.lines().next().unwrap_or_default().to_string();
    assert_eq!(
        status(&http(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
        "HTTP/1.1 404 Not Found"
    );
    let post = http(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status(&post), "HTTP/1.1 405 Method Not Allowed");
    assert!(post.contains("Allow: GET, HEAD\r\n"));
    assert_eq!(
        status(&http(port, b"GET /metrics\r\n\r\n")),
        "HTTP/1.1 400 Bad Request"
    );
    assert_eq!(
        status(&http(port, b"GET /metrics HTTP/1.1\r\n\r\n")),
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 without Host"
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
    huge.resize(20_000, b'a');
    let r = http(port, &huge);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    let head = http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    // One request per connection: a second one on it is not answered.
    let two = http(
        port,
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(two.matches("HTTP/1.1 ").count(), 1, "{two}");
    // A silent client does not hold the others up.
    let _silent = connect(port);
    let t = Instant::now();
    scrape(port);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn kept_services_keep_their_counts_and_removed_ones_vanish() {
    let mut ports = free_ports(5);
    ports.push(free_port_tcp_udp());
    let d = Daemon::start("m.toml", &config(&ports, true), &[]);
    let m = ports[0];
    assert_eq!(exchange(ports[1], b""), b"hello\n");
    assert_eq!(exchange(ports[4], b""), b"rated\n");
    scrape_until(m, "both counted", |s| {
        s.get(&conn("hello", "started")) == Some(&1.0)
            && s.get(&conn("rated", "started")) == Some(&1.0)
    });
    d.reload(&config(&ports, false), "reloaded");
    let text = scrape(m);
    let s = samples(&text);
    assert_eq!(s.get(&conn("hello", "started")), Some(&1.0), "{text}");
    assert!(!text.contains("service=\"rated\""), "{text}");
    assert_eq!(
        s.get("wininetd_config_reloads_total{result=\"ok\"}"),
        Some(&1.0)
    );
    d.reload("this is not toml [", "reload rejected");
    let s = samples(&scrape(m));
    assert_eq!(
        s.get("wininetd_config_reloads_total{result=\"failed\"}"),
        Some(&1.0)
    );
}

#[test]
fn metrics_over_udp_is_a_config_error() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "m.toml",
        format!("[[service]]\nport = {port}\nprotocol = \"udp\"\ninternal = \"metrics\"\n")
            .as_bytes(),
    );
    let out = run_cli(&["--check", "--cfgfile", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("m.toml:3"), "{err}");
    assert!(err.contains("TCP only"), "{err}");
}

/// A Prometheus server (loopback, its own temp dir) scrapes the endpoint
/// and reports the target up through its HTTP API.
#[test]
fn a_prometheus_server_sees_the_target_up() {
    let port = free_port();
    let _d = Daemon::start(
        "m.toml",
        &format!(
            "[[service]]\nname = \"metrics\"\nport = {port}\nbind = [\"127.0.0.1\"]\ninternal = \"metrics\"\n"
        ),
        &[],
    );
    let dir = tempfile::tempdir().unwrap();
    let web = free_port();
    let cfg = write_file(
        dir.path(),
        "prometheus.yml",
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: wininetd\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        )
        .as_bytes(),
    );
    let mut server = Prometheus::start(dir.path(), &cfg, web);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    let up = loop {
        if let Some(body) = http_get(web, "/api/v1/query?query=up%7Bjob%3D%22wininetd%22%7D") {
            // A vector with one sample whose value is "1".
            if body.contains("\"status\":\"success\"") && body.contains(",\"1\"]") {
                break true;
            }
            last = body;
        }
        if Instant::now() > deadline || !server.alive() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let targets = http_get(web, "/api/v1/targets").unwrap_or_default();
    server.stop();
    assert!(
        up,
        "target not up; last query answer: {last}\ntargets: {targets}"
    );
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
    assert!(targets.contains("\"lastError\":\"\""), "{targets}");
}

/// `prometheus`, run in the foreground and stopped by its PID.
struct Prometheus {
    child: std::process::Child,
}

impl Prometheus {
    fn start(dir: &Path, cfg: &Path, web: u16) -> Prometheus {
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package prometheus) must be installed");
        Prometheus { child }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain HTTP/1.0 GET on loopback; `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

#[test]
fn connections_for_an_unknown_user_count_as_user_failed() {
    let ports = free_ports(2);
    let config = format!(
        r#"[[service]]
name = "metrics"
port = {}
bind = ["127.0.0.1"]
internal = "metrics"

[[service]]
name = "nouser"
port = {}
bind = ["127.0.0.1"]
command = ["/bin/echo", "never"]
user = "wininetd-no-such-user"
"#,
        ports[0], ports[1]
    );
    let d = Daemon::start("m.toml", &config, &[]);
    // The first refusal is logged, the next ones within its window are not:
    // all are counted.
    for _ in 0..3 {
        assert_closed_at_once(connect(ports[1]), WAIT);
    }
    let text = scrape_until(ports[0], "three user_failed", |s| {
        s.get(&conn("nouser", "user_failed")) == Some(&3.0)
    });
    let s = samples(&text);
    assert_eq!(s.get(&conn("nouser", "started")), Some(&0.0), "{text}");
    assert_eq!(s.get(&conn("nouser", "spawn_failed")), Some(&0.0), "{text}");
    assert!(d.log().contains("wininetd-no-such-user"), "{}", d.log());
}

/// The daemon's soft RLIMIT_NOFILE: sets it to `to` (if given) and
/// returns what it was (Linux prlimit on our own child).
#[cfg(target_os = "linux")]
fn nofile(pid: i32, to: Option<u64>) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our own child with valid structs; only the soft
    // limit moves.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let was = lim.rlim_cur;
    if let Some(n) = to {
        lim.rlim_cur = n.min(lim.rlim_max);
        // SAFETY: as above.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
    was
}

/// A program whose process cannot be created (here: no descriptor left for
/// its pipes, the connection having taken the last one) is `spawn_failed`,
/// not `started`.
#[cfg(target_os = "linux")]
#[test]
fn a_process_that_cannot_be_created_counts_as_spawn_failed() {
    let ports = free_ports(2);
    let config = format!(
        r#"[[service]]
name = "metrics"
port = {}
bind = ["127.0.0.1"]
internal = "metrics"

[[service]]
name = "piped"
port = {}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
handoff = "pipe"
"#,
        ports[0], ports[1]
    );
    let d = Daemon::start("m.toml", &config, &[]);
    // One session and one scrape first, so nothing is set up lazily later.
    assert_eq!(exchange(ports[1], b"warm"), b"warm");
    scrape_until(ports[0], "the first session over", |s| {
        s.get(&exits("piped", "ok")) == Some(&1.0)
            && s.get("wininetd_sessions_active{service=\"piped\"}") == Some(&0.0)
    });
    // A soft limit at the second free descriptor number: the connection
    // gets the first, and the pipes for the program find none.
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let second_free = (0..).filter(|n| !open.contains(n)).nth(1).unwrap();
    let was = nofile(d.pid(), Some(second_free));
    let mut s = connect(ports[1]);
    let _ = s.write_all(b"lost");
    let got = read_all(&mut s);
    nofile(d.pid(), Some(was));
    assert!(got.is_empty(), "{got:?}");

    let text = scrape_until(ports[0], "one spawn_failed", |s| {
        s.get(&conn("piped", "spawn_failed")) == Some(&1.0)
    });
    let s = samples(&text);
    assert_eq!(s.get(&conn("piped", "started")), Some(&1.0), "{text}");
    assert_eq!(s.get(&conn("piped", "user_failed")), Some(&0.0), "{text}");
    let log = d.wait_log("cannot start the program", WAIT);
    assert!(log.contains("os error 24"), "EMFILE expected:\n{log}");
    // Descriptors back: the service serves again.
    assert_eq!(exchange(ports[1], b"again"), b"again");
}
