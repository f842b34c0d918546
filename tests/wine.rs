//! The Windows build under Wine, driven from Linux over loopback.
//!
//! `scripts/test.sh` builds `wininetd.exe` and the `stdio_echo` example for
//! x86_64-pc-windows-gnu, sets WININETD_WINE_EXE and the Wine variables
//! (scripts/windows-env.sh), starts a persistent wineserver, and runs
//! `cargo test --test wine -- --ignored`.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use common::{pattern, read_all};
use rustls_pki_types::pem::PemObject as _;

/// The Windows exe under test.
fn exe() -> PathBuf {
    PathBuf::from(
        std::env::var_os("WININETD_WINE_EXE")
            .expect("WININETD_WINE_EXE: the wininetd.exe to test (scripts/test.sh sets it)"),
    )
}

/// A Windows example built next to the exe (`examples/NAME.exe`).
fn example(name: &str) -> String {
    let p = exe()
        .parent()
        .unwrap()
        .join("examples")
        .join(format!("{name}.exe"));
    assert!(
        p.exists(),
        "{} missing: build the examples for Windows",
        p.display()
    );
    win_path(&p)
}

/// A Linux path as Wine's Z: drive shows it.
fn win_path(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

/// A port below the ephemeral range (Wine's own sockets collide there),
/// free a moment ago; distinct per call within this process.
fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 600) as u16 * 20;
    for _ in 0..2_000 {
        let p = 20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port below 32000");
}

fn wine(args: &[&str]) -> Command {
    let mut c = Command::new("wine");
    c.args(args).stdin(Stdio::null());
    c
}

fn run(args: &[&str]) -> Output {
    wine(args).output().expect("run wine")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `wininetd.exe --debug --cfgfile FILE ARGS` under Wine; killed (by its
/// PID) when dropped.
struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, config: &str, args: &[&str]) -> Daemon {
        Daemon::spawn_env(name, config, args, &[])
    }

    /// With `env` added to the daemon's environment.
    fn spawn_env(name: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_prepared(name, config, args, env, |_| {})
    }

    /// With `prepare` run on the config file before the start.
    fn spawn_prepared(
        name: &str,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        prepare: impl FnOnce(&Path),
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join(name);
        std::fs::write(&cfg, config).unwrap();
        prepare(&cfg);
        let log = dir.path().join("daemon.log");
        let exe = exe();
        let cfg = win_path(&cfg);
        let mut all = vec![exe.to_str().unwrap(), "--debug", "--cfgfile", &cfg];
        all.extend_from_slice(args);
        // A control pipe of its own: the default name belongs to the
        // service the SCM test starts, whose `--reload` must reach it.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pipe = format!(
            r"\\.\pipe\wininetd-test-{}-d{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let child = wine(&all)
            // Tests look for the `started` lines, which are at debug.
            .env("WININETD_LOG", "debug")
            .env("WININETD_CONTROL_PIPE", &pipe)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start wine");
        Daemon {
            child,
            _dir: dir,
            log,
        }
    }

    fn start(name: &str, config: &str, args: &[&str]) -> Daemon {
        Self::start_env(name, config, args, &[])
    }

    fn start_env(name: &str, config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let d = Daemon::spawn_env(name, config, args, env);
        d.wait_log("serving", Duration::from_secs(60));
        d
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn wait_log(&self, needle: &str, limit: Duration) -> String {
        self.wait_log_count(needle, 1, limit)
    }

    fn wait_log_count(&self, needle: &str, n: usize, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} x{n} not logged within {limit:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends `data` from a thread while reading the echo here, then
/// half-closes; returns what came back before EOF.
fn stream_through(port: u16, data: Vec<u8>) -> Vec<u8> {
    let s = connect(port);
    let mut w = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).unwrap();
        }
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut r = s;
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    sender.join().unwrap();
    out
}

fn echo_mib(handoff: &str) {
    let port = free_port();
    let echo = example("stdio_echo");
    let d = Daemon::start(
        "w.conf",
        &format!("{port} none {echo}\n"),
        &["--handoff", handoff],
    );
    let data = pattern(1 << 20, 11);
    let back = stream_through(port, data.clone());
    assert_eq!(back.len(), data.len(), "bytes echoed ({handoff})");
    assert!(back == data, "echo differs from what was sent ({handoff})");
    // The client's half-close reached the program as EOF: it exited 0.
    d.wait_log("status=exit code: 0", Duration::from_secs(30));
}

#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn pipe_echo_of_one_mib_each_way_is_byte_exact_with_half_close() {
    echo_mib("pipe");
}

#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn direct_echo_of_one_mib_each_way_is_byte_exact_with_half_close() {
    echo_mib("direct");
}

/// `--debug`: Ctrl-C (Wine turns SIGINT into CTRL_C_EVENT) stops the
/// daemon with exit code 0, leaving a running `direct` program serving.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn ctrl_c_stops_the_console_daemon_and_leaves_programs_running() {
    let port = free_port();
    let echo = example("stdio_echo");
    let mut d = Daemon::start(
        "w.conf",
        &format!("{port} none {echo}\n"),
        &["--handoff", "direct"],
    );
    let mut s = connect(port);
    assert_eq!(round_trip(&mut s, b"before"), b"before");
    d.wait_log("started", Duration::from_secs(10));
    let pid = nix::unistd::Pid::from_raw(d.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = d.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(
        d.log().contains("stopped; 1 program(s) left running"),
        "{}",
        d.log()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer listening"
    );
    assert_eq!(
        round_trip(&mut s, b"after"),
        b"after",
        "the program serves on"
    );
}

/// `--timeout` in `pipe` mode: the relay ends a session whose client stays
/// silent that long. (In `direct` mode it is SO_RCVTIMEO on the program's
/// socket; Wine does not apply that to a program's ReadFile, so that half
/// is not tested here.)
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn timeout_drops_a_silent_client_in_pipe_mode() {
    let port = free_port();
    let echo = example("stdio_echo");
    let _d = Daemon::start(
        "w.conf",
        &format!("{port} none {echo}\n"),
        &["--handoff", "pipe", "--timeout", "2"],
    );
    let mut s = connect(port);
    assert_eq!(round_trip(&mut s, b"awake"), b"awake");
    let silent = Instant::now();
    assert!(read_all(&mut s).is_empty());
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
}

#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn cmd_echo_output_and_client_address_reach_the_client() {
    let [a, b] = [free_port(), free_port()];
    let _d = Daemon::start(
        "w.conf",
        &format!(
            "{a} none cmd.exe /c echo hello from cmd\n\
             {b} none cmd.exe /c echo %CLIENT_IP% %CLIENT_PORT% %TCPLOCALPORT% %PROTO%\n"
        ),
        &[],
    );
    let mut s = connect(a);
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(read_all(&mut s)).unwrap(),
        "hello from cmd\r\n"
    );

    let mut s = connect(b);
    let me = s.local_addr().unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(read_all(&mut s)).unwrap(),
        format!("127.0.0.1 {} {b} TCP\r\n", me.port())
    );
}

#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn a_program_gets_its_accounts_environment_not_the_daemons() {
    let port = free_port();
    let d = Daemon::spawn_env(
        "w.conf",
        &format!("{port} none cmd.exe /c set\n"),
        &[],
        &[
            ("MY_SECRET", "s3cret"),
            ("WININETD_TEST", "x"),
            ("LC_WININETD", "passed"),
        ],
    );
    d.wait_log("serving", Duration::from_secs(60));
    let mut s = connect(port);
    s.shutdown(Shutdown::Write).unwrap();
    let out = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
    let has = |name: &str| {
        out.lines().any(|l| {
            l.to_uppercase()
                .starts_with(&format!("{}=", name.to_uppercase()))
        })
    };
    for name in [
        "SystemRoot",
        "windir",
        "ComSpec",
        "Path",
        "CLIENT_IP",
        "LC_WININETD",
    ] {
        assert!(has(name), "{name} missing:\n{out}");
    }
    for name in ["MY_SECRET", "WININETD_TEST"] {
        assert!(!has(name), "{name} leaked:\n{out}");
    }
}

#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn a_missing_program_closes_the_connection_and_the_daemon_goes_on() {
    let [bad, good] = [free_port(), free_port()];
    let mut d = Daemon::start(
        "w.conf",
        &format!("{bad} none C:\\no\\such\\program.exe\n{good} none cmd.exe /c echo still here\n"),
        &[],
    );
    let mut s = connect(bad);
    let started = Instant::now();
    assert!(
        read_all(&mut s).is_empty(),
        "nothing comes from a missing program"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed at once"
    );
    // ERROR_FILE_NOT_FOUND, by code: Wine's message text differs from Windows'.
    let log = d.wait_log("program.exe", Duration::from_secs(10));
    assert!(log.contains("os error 2"), "{log}");
    let mut s = connect(good);
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut s), b"still here\r\n");
    assert!(d.alive());
}

#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn a_config_error_stops_startup_with_the_file_and_line() {
    let port = free_port();
    let mut d = Daemon::spawn(
        "bad.conf",
        &format!("# ok\n{port} none cmd.exe /c echo\n80x none cmd.exe\n"),
        &[],
    );
    let status = d.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "exit code 1: invalid config");
    let log = d.log();
    assert!(log.contains("bad.conf:3:"), "{log}");
    assert!(!log.contains("serving"), "{log}");
}

#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn stderr_log_mode_turns_program_stderr_into_log_lines() {
    let port = free_port();
    let d = Daemon::start(
        "w.toml",
        &format!(
            "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\nstderr = \"log\"\n\
             command = 'cmd.exe /c echo to-client& echo to-log 1>&2'\n"
        ),
        &[],
    );
    let mut s = connect(port);
    s.shutdown(Shutdown::Write).unwrap();
    let out = String::from_utf8(read_all(&mut s)).unwrap();
    assert_eq!(out, "to-client\r\n", "stderr is not sent to the client");
    d.wait_log("stderr: to-log", Duration::from_secs(10));
}

/// Without `--debug` (as a service) lines go to the Event Log. Wine stores
/// nothing, but its ReportEventW stub echoes each string on the `eventlog`
/// debug channel at the entry's level, so the entries can be read there.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn without_debug_a_config_error_is_an_event_log_error_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.conf");
    std::fs::write(&cfg, "# fine\n80x none cmd.exe\n").unwrap();
    let o = wine(&[exe().to_str().unwrap(), "--cfgfile", &win_path(&cfg)])
        .env("WINEDEBUG", "-all,err+eventlog")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let entries: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("err:eventlog:ReportEventW"))
        .collect();
    assert!(
        entries
            .iter()
            .any(|l| l.contains(r#"bad.conf:2: port \"80x\""#)),
        "{err}"
    );
    assert!(
        entries.iter().any(|l| l.contains("wininetd did not start")),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}') && !err.contains(r"\001b"),
        "no colour codes: {err}"
    );
}

/// Wine's LogonUserW "succeeds" for any user and password but hands back
/// a token that is no handle, so under Wine a USER service must refuse
/// every connection: the program never runs as the service account, and
/// the log names the user, never the password. (A logon that Windows
/// refuses is covered by the unit test of its message.)
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn a_user_service_never_falls_back_to_the_service_account() {
    let port = free_port();
    let mut d = Daemon::start(
        "w.conf",
        &format!("{port} davide:DamnYou42 cmd.exe /c echo as the service account\n"),
        &[],
    );
    let mut s = connect(port);
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_all(&mut s).is_empty(), "nothing ran");
    let log = d.wait_log("\"davide\"", Duration::from_secs(20));
    assert!(!log.contains("DamnYou42"), "{log}");
    assert!(!log.contains("started"), "{log}");
    assert!(d.alive());
}

/// `USER:@FILE`: the password is read from FILE at each connection; an
/// unreadable file refuses the connection, naming the user and the file.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn a_password_file_that_cannot_be_read_refuses_the_connection() {
    let port = free_port();
    let d = Daemon::start(
        "w.conf",
        &format!("{port} davide:@C:\\no\\such\\secret.txt cmd.exe /c echo ran\n"),
        &[],
    );
    let mut s = connect(port);
    s.shutdown(Shutdown::Write).unwrap();
    assert!(read_all(&mut s).is_empty(), "nothing ran");
    let log = d.wait_log("secret.txt", Duration::from_secs(20));
    assert!(
        log.contains("cannot read the password of user \"davide\""),
        "{log}"
    );
    assert!(!log.contains("started"), "{log}");
}

/// A password file whose read never returns (a FIFO nobody writes, like a
/// share that hangs) stalls only its own connection: the logon and the
/// file read run off the accept loop, and another service is served
/// meanwhile.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn a_hung_password_file_read_delays_only_its_own_connection() {
    let [slow, quick] = [free_port(), free_port()];
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo = fifo_dir.path().join("secret");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A writer that never writes: a read waits (Wine opens a FIFO without
    // waiting for one, and reads EOF when there is none).
    let _writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let d = Daemon::start(
        "w.conf",
        &format!(
            "{slow} davide:@{} cmd.exe /c echo slow\n{quick} none cmd.exe /c echo quick\n",
            win_path(&fifo)
        ),
        &[],
    );
    let hung = connect(slow);
    hung.shutdown(Shutdown::Write).unwrap();
    // Past the accept of the first connection (it reaches the file read).
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let mut s = connect(quick);
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut s), b"quick\r\n", "log:\n{}", d.log());
    }
    let log = d.log();
    assert!(!log.contains(&format!("service=tcp/{slow}")), "{log}");
    drop(hung);
}

/// The SCM tests share the one service name of the prefix.
static SCM: Mutex<()> = Mutex::new(());

/// Polls until `port` serves `expect` (the service needs a moment).
fn wait_served(port: u16, expect: &[u8], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let _ = s.shutdown(Shutdown::Write);
            if read_all(&mut s) == expect {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "port {port} not served within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_refused(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "port {port} still served after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A startup error as the SCM sees it: STOPPED, ERROR_SERVICE_SPECIFIC_ERROR
/// (1066) and our exit code (1 = invalid config).
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn a_service_with_a_bad_config_stops_with_a_service_specific_exit_code() {
    let _one = SCM.lock().unwrap_or_else(|p| p.into_inner());
    let exe = exe();
    let exe = exe.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.conf");
    std::fs::write(&cfg, "80x none cmd.exe\n").unwrap();
    let _ = run(&[exe, "--remove"]);
    let _cleanup = Uninstall;
    assert!(
        run(&[exe, "--install", "--cfgfile", &win_path(&cfg)])
            .status
            .success()
    );
    let _ = run(&["sc", "start", "wininetd"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let q = loop {
        let q = text(&run(&["sc", "query", "wininetd"]));
        if q.contains("STOPPED") {
            break q;
        }
        assert!(Instant::now() < deadline, "not stopped: {q}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(q.contains("WIN32_EXIT_CODE    : 1066"), "{q}");
    assert!(q.contains("SERVICE_EXIT_CODE  : 1 "), "{q}");
    assert!(run(&[exe, "--remove"]).status.success());
}

/// Removes the service if a failed run left it behind.
struct Uninstall;

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = run(&[exe().to_str().unwrap(), "--remove"]);
    }
}

/// Needs a persistent wineserver (`wineserver -p`), as scripts/test.sh
/// runs: without one Wine ends services a second or two after `sc start`.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn service_install_start_serve_reload_stop_remove() {
    let _one = SCM.lock().unwrap_or_else(|p| p.into_inner());
    let exe = exe();
    let exe = exe.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let [p1, p2, p3] = [free_port(), free_port(), free_port()];
    let cfg = dir.path().join("svc.conf");
    std::fs::write(&cfg, format!("{p1} none cmd.exe /c echo service one\n")).unwrap();
    let other = dir.path().join("other.conf");
    std::fs::write(
        &other,
        format!("{p3} none cmd.exe /c echo start parameter\n"),
    )
    .unwrap();
    let (cfg_w, other_w) = (win_path(&cfg), win_path(&other));

    let _ = run(&[exe, "--remove"]);
    let _cleanup = Uninstall;
    let o = run(&[exe, "--install", "--cfgfile", &cfg_w, "--timeout", "30"]);
    assert!(o.status.success(), "install: {}", text(&o));
    assert!(text(&o).contains("--service --cfgfile"), "{}", text(&o));
    // What --install stored: the launch arguments, automatic start, the
    // dependencies, and the Event Log source with our exe as message file.
    let key = run(&[
        "reg",
        "query",
        r"HKLM\SYSTEM\CurrentControlSet\Services\wininetd",
    ]);
    let key = text(&key);
    let image = format!("--service --cfgfile {cfg_w} --timeout 30");
    assert!(key.contains(&image), "{key}");
    assert!(key.contains("Start    REG_DWORD    0x2"), "{key}");
    assert!(key.contains(r"Tcpip\0Afd"), "{key}");
    let source = r"HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\wininetd";
    let src = text(&run(&["reg", "query", source]));
    assert!(
        src.contains("EventMessageFile") && src.contains("wininetd.exe"),
        "{src}"
    );
    assert!(src.contains("TypesSupported    REG_DWORD    0x7"), "{src}");

    let again = run(&[exe, "--install", "--cfgfile", &cfg_w]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already installed"),
        "{}",
        text(&again)
    );

    let o = run(&["sc", "start", "wininetd"]);
    assert!(o.status.success(), "sc start: {}", text(&o));
    wait_served(p1, b"service one\r\n", Duration::from_secs(60));

    // PARAMCHANGE (`--reload`) re-reads the config: a new port appears.
    std::fs::write(
        &cfg,
        format!("{p1} none cmd.exe /c echo service one\n{p2} none cmd.exe /c echo reloaded\n"),
    )
    .unwrap();
    let o = run(&[exe, "--reload"]);
    assert!(o.status.success(), "reload: {}", text(&o));
    wait_served(p2, b"reloaded\r\n", Duration::from_secs(30));

    let o = run(&["sc", "stop", "wininetd"]);
    assert!(o.status.success(), "sc stop: {}", text(&o));
    wait_refused(p1, Duration::from_secs(30));

    // Start parameters override the stored launch arguments.
    let o = run(&["sc", "start", "wininetd", "--cfgfile", &other_w]);
    assert!(o.status.success(), "sc start with parameters: {}", text(&o));
    wait_served(p3, b"start parameter\r\n", Duration::from_secs(60));
    assert!(
        TcpStream::connect(("127.0.0.1", p1)).is_err(),
        "the stored config is not served"
    );

    // --remove stops the running service, then deletes it.
    let o = run(&[exe, "--remove"]);
    assert!(o.status.success(), "remove: {}", text(&o));
    wait_refused(p3, Duration::from_secs(30));
    assert!(
        !run(&["reg", "query", source]).status.success(),
        "source deregistered"
    );
    let o = run(&[exe, "--remove"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not installed"), "{}", text(&o));
}

/// One request/response on an open connection.
fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).unwrap();
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// inetd's rule: stopping the service leaves running programs alone (a
/// `direct` program keeps its socket and goes on serving); `--kill-on-stop`
/// (here as a start parameter) ends them through their Job objects.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn service_stop_leaves_programs_running_unless_kill_on_stop() {
    let _one = SCM.lock().unwrap_or_else(|p| p.into_inner());
    let exe = exe();
    let exe = exe.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("svc.conf");
    std::fs::write(&cfg, format!("{port} none {}\n", example("stdio_echo"))).unwrap();
    let _ = run(&[exe, "--remove"]);
    let _cleanup = Uninstall;
    let o = run(&[
        exe,
        "--install",
        "--cfgfile",
        &win_path(&cfg),
        "--handoff",
        "direct",
    ]);
    assert!(o.status.success(), "install: {}", text(&o));

    let o = run(&["sc", "start", "wininetd"]);
    assert!(o.status.success(), "sc start: {}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kept = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < deadline, "not served");
        std::thread::sleep(Duration::from_millis(200));
    };
    kept.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(round_trip(&mut kept, b"before"), b"before");
    assert!(run(&["sc", "stop", "wininetd"]).status.success());
    wait_refused(port, Duration::from_secs(30));
    assert_eq!(
        round_trip(&mut kept, b"after stop"),
        b"after stop",
        "the program runs on"
    );
    kept.shutdown(Shutdown::Write).unwrap();
    assert!(read_all(&mut kept).is_empty());

    let o = run(&["sc", "start", "wininetd", "--kill-on-stop"]);
    assert!(o.status.success(), "sc start --kill-on-stop: {}", text(&o));
    wait_served(port, b"", Duration::from_secs(60));
    let mut doomed = connect(port);
    assert_eq!(round_trip(&mut doomed, b"ping"), b"ping");
    assert!(run(&["sc", "stop", "wininetd"]).status.success());
    let started = Instant::now();
    assert!(read_all(&mut doomed).is_empty(), "the program was ended");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(run(&[exe, "--remove"]).status.success());
}

/// `wininetd status` and `--reload` over the control pipe (its own name,
/// so tests running side by side do not meet); no daemon: exit 1.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn status_and_reload_over_the_control_pipe() {
    let port = free_port();
    let pipe = format!(r"\\.\pipe\wininetd-test-{}-{port}", std::process::id());
    let echo = example("stdio_echo");
    let config = format!(
        "[[service]]\nname = \"echo\"\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = [{echo:?}]\n"
    );
    let d = Daemon::start_env("w.toml", &config, &[], &[("WININETD_CONTROL_PIPE", &pipe)]);
    let cli = |args: &[&str], pipe: &str| {
        let exe = exe();
        let mut all = vec![exe.to_str().unwrap()];
        all.extend_from_slice(args);
        wine(&all)
            .env("WININETD_CONTROL_PIPE", pipe)
            .output()
            .expect("run wine")
    };
    let mut s = connect(port);
    assert_eq!(round_trip(&mut s, b"hi"), b"hi");

    let out = cli(&["status"], &pipe);
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", d.log());
    assert!(
        t.contains(&format!("echo  tcp 127.0.0.1:{port}  listening  live 1/-")),
        "{t}"
    );
    assert!(t.contains("totals: started 1"), "{t}");

    let out = cli(&["status", "--json"], &pipe);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["services"][0]["name"], "echo");
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        v["sessions"][0]["client"],
        s.local_addr().unwrap().to_string()
    );

    let out = cli(&["--reload"], &pipe);
    assert!(out.status.success(), "{}", text(&out));
    // The daemon names itself (its Windows pid, not Wine's Unix one).
    let said = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    assert!(
        said.starts_with("reloaded (pid ") && said.ends_with(')'),
        "{said}"
    );
    d.wait_log("reloaded", Duration::from_secs(20));

    let out = cli(&["status"], &format!("{pipe}-none"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no wininetd daemon is running"),
        "{}",
        text(&out)
    );
    drop(s);
}

/// The metrics endpoint under Wine: a scrape from Linux gets the Windows
/// process figures Wine gives (GetProcessTimes, the working set), each
/// present and plausible, and a program CreateProcess cannot start counted
/// as `spawn_failed`.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn metrics_under_wine_report_the_windows_process_figures() {
    let [m, bad] = [free_port(), free_port()];
    let config = format!(
        "[[service]]\nname = \"metrics\"\nport = {m}\nbind = [\"127.0.0.1\"]\ninternal = \"metrics\"\n\n\
         [[service]]\nname = \"missing\"\nport = {bad}\nbind = [\"127.0.0.1\"]\ncommand = [\"C:\\\\no\\\\such\\\\program.exe\"]\n"
    );
    let d = Daemon::start("w.toml", &config, &[]);
    let mut s = connect(bad);
    assert!(
        read_all(&mut s).is_empty(),
        "nothing from a missing program"
    );
    let scrape = || {
        let mut s = connect(m);
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let r = String::from_utf8(read_all(&mut s)).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        body.to_string()
    };
    let value = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let spawn_failed = "wininetd_connections_total{service=\"missing\",outcome=\"spawn_failed\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape();
        if value(&text, spawn_failed) == Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let started = "wininetd_connections_total{service=\"missing\",outcome=\"started\"}";
    assert_eq!(value(&text, started), Some(0.0), "{text}");
    // Wine's GetProcessHandleCount is a stub that answers 0 (Wine 8): the
    // series is left out then, never exported as a made-up 0.
    assert!(
        !text.contains("process_open_handles"),
        "Wine now counts handles: assert the count instead\n{text}"
    );
    let rss = value(&text, "process_resident_memory_bytes").expect("process_resident_memory_bytes");
    assert!((1e6..1e10).contains(&rss), "working set {rss}\n{text}");
    let cpu = value(&text, "process_cpu_seconds_total").expect("process_cpu_seconds_total");
    assert!(cpu > 0.0 && cpu < 3600.0, "CPU seconds {cpu}\n{text}");
    // Unix-only figures stay out rather than showing a made-up zero.
    assert!(!text.contains("process_open_fds"), "{text}");
}

/// An ECDSA P-256 CA and a leaf for localhost, made with openssl in `dir`.
fn make_tls_certs(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl (package openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    };
    for key in ["ca.key", "leaf.key"] {
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            key,
        ]);
    }
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=Wine CA",
        "-days",
        "2",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-new",
        "-key",
        "leaf.key",
        "-subj",
        "/CN=localhost",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "1",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
}

fn tls_config(port: u16, command: &str, dir: &Path) -> String {
    format!(
        "[[service]]\nport = {port}\nbind = [\"127.0.0.1\"]\ncommand = {command}\n[service.tls]\ncert = '{}'\nkey = '{}'\n",
        win_path(&dir.join("leaf.pem")),
        win_path(&dir.join("leaf.key"))
    )
}

#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn tls_under_wine_serves_openssl_and_tells_the_program_the_session() {
    let certs = tempfile::tempdir().unwrap();
    make_tls_certs(certs.path());
    let port = free_port();
    let command = "\"cmd.exe /c echo TLS %SSL_PROTOCOL% %SSL_TLS_SNI_SERVERNAME% %CLIENT_IP%\"";
    let d = Daemon::start("w.toml", &tls_config(port, command, certs.path()), &[]);
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(certs.path().join("ca.pem"))
        .args(["-ign_eof", "-tls1_3"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client (package openssl)");
    let shown = text(&out);
    assert!(shown.contains("Verify return code: 0 (ok)"), "{shown}");
    assert!(
        shown.contains("TLS TLSv1.3 localhost 127.0.0.1"),
        "{shown}\n{}",
        d.log()
    );
}

#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn tls_under_wine_echoes_one_mib_byte_exact_with_close_notify_both_ways() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = tempfile::tempdir().unwrap();
    make_tls_certs(certs.path());
    let port = free_port();
    let echo = format!("{:?}", example("stdio_echo"));
    let d = Daemon::start("w.toml", &tls_config(port, &echo, certs.path()), &[]);
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(certs.path().join("ca.pem")).unwrap();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let data = pattern(1 << 20, 13);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let back = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let s = tokio_rustls::TlsConnector::from(cfg)
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut rx, mut tx) = tokio::io::split(s);
        let sent = data.clone();
        let writer = async move {
            tx.write_all(&sent).await.unwrap();
            tx.shutdown().await.unwrap(); // close_notify, then FIN
        };
        let reader = async {
            let mut back = Vec::new();
            tokio::time::timeout(Duration::from_secs(60), rx.read_to_end(&mut back))
                .await
                .expect("the echo completes")
                .expect("it ends with close_notify");
            back
        };
        tokio::join!(writer, reader).1
    });
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echo differs");
    d.wait_log("status=exit code: 0", Duration::from_secs(30));
}

/// PROXY protocol on Windows: the header is consumed exactly (direct and
/// pipe), the program sees the client from it, byte-by-byte headers work,
/// and malformed, foreign and silent peers start nothing.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn proxy_headers_are_read_exactly_and_bad_ones_start_nothing() {
    let [direct, pipe, env, other] = [free_port(), free_port(), free_port(), free_port()];
    let echo = example("stdio_echo");
    let proxy = "proxy_protocol = \"any\"\nproxy_from = [\"127.0.0.1\"]\nproxy_timeout = 3";
    let d = Daemon::start(
        "w.toml",
        &format!(
            "[[service]]\nport = {direct}\nbind = [\"127.0.0.1\"]\nhandoff = \"direct\"\ncommand = '{echo}'\n{proxy}\n\
             [[service]]\nport = {pipe}\nbind = [\"127.0.0.1\"]\nhandoff = \"pipe\"\ncommand = '{echo}'\n{proxy}\n\
             [[service]]\nport = {env}\nbind = [\"127.0.0.1\"]\ncommand = 'cmd.exe /c echo %CLIENT_IP% %CLIENT_PORT% %TCPLOCALPORT% %PROXY_PEER_IP% %PROXY_VERSION%'\n{proxy}\n\
             [[service]]\nport = {other}\nbind = [\"127.0.0.1\"]\ncommand = 'cmd.exe /c echo started'\nproxy_protocol = \"v1\"\nproxy_from = [\"127.0.0.2\"]\n"
        ),
        &[],
    );
    let v2 = {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        h.extend_from_slice(&[192, 0, 2, 5, 198, 51, 100, 6]);
        h.extend_from_slice(&[0x1f, 0x90, 0x01, 0xbb]); // 8080 → 443
        h
    };
    let v1 = b"PROXY TCP4 192.0.2.9 198.51.100.1 5555 25\r\n".to_vec();
    for port in [direct, pipe] {
        for (header, chunk) in [(&v1, 1000), (&v2, 1000), (&v1, 1), (&v2, 3)] {
            let mut s = connect(port);
            s.set_nodelay(true).unwrap();
            for piece in header.chunks(chunk) {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            s.write_all(b"PROXY payload\r\n").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            assert_eq!(
                read_all(&mut s),
                b"PROXY payload\r\n",
                "port {port}, chunks of {chunk}"
            );
        }
    }
    let mut s = connect(env);
    s.write_all(&v2).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        String::from_utf8(read_all(&mut s)).unwrap(),
        "192.0.2.5 8080 443 127.0.0.1 2\r\n"
    );
    d.wait_log("via=127.0.0.1:", Duration::from_secs(10));
    let started = d.log().matches(" started ").count();

    // Malformed, from outside proxy_from, or silent: nothing starts.
    for bad in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 080 1\r\n"[..],
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        let mut s = connect(env);
        s.write_all(bad).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert!(read_all(&mut s).is_empty());
    }
    let mut s = connect(other);
    let _ = s.write_all(&v1);
    assert!(read_all(&mut s).is_empty());
    d.wait_log("peer is not in proxy_from", Duration::from_secs(10));
    let silent = Instant::now();
    // (On `direct`: refusals on `env` within 5 s are counted, not logged.)
    let mut quiet = connect(direct);
    let mut s = connect(pipe);
    s.write_all(&[&v1[..], b"meanwhile"].concat()).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        read_all(&mut s),
        b"meanwhile",
        "served while a silent peer waits"
    );
    assert!(read_all(&mut quiet).is_empty());
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(20),
        "the silent peer was dropped after {waited:?}"
    );
    d.wait_log("within proxy_timeout (3 s)", Duration::from_secs(10));
    assert_eq!(
        d.log().matches(" started ").count(),
        started + 1,
        "{}",
        d.log()
    );
}

/// The release zip (scripts/windows-zip.sh; WININETD_WINE_ZIP names it).
fn zip() -> PathBuf {
    PathBuf::from(
        std::env::var_os("WININETD_WINE_ZIP")
            .expect("WININETD_WINE_ZIP: the zip to test (scripts/test.sh sets it)"),
    )
}

/// The zip as a user gets it: unzipped into C:\ of the Wine prefix, its
/// example config (ports moved to free ones) checked, installed as the
/// service from there, started with `sc`, serving, and removed.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn the_zip_installs_and_serves_from_where_it_was_unzipped() {
    let _one = SCM.lock().unwrap_or_else(|p| p.into_inner());
    let prefix = PathBuf::from(std::env::var_os("WINEPREFIX").expect("WINEPREFIX"));
    let drive_c = prefix.join("drive_c");
    let place = drive_c.join("wininetd-zip-test");
    let _ = std::fs::remove_dir_all(&place);
    let o = Command::new("unzip")
        .arg("-q")
        .arg(zip())
        .arg("-d")
        .arg(&place)
        .output()
        .expect("unzip is installed (package unzip)");
    assert!(o.status.success(), "unzip: {}", text(&o));
    let stem = zip().file_stem().unwrap().to_str().unwrap().to_string();
    assert!(
        stem.starts_with(&format!("wininetd-{}-", env!("CARGO_PKG_VERSION")))
            && stem.ends_with("-x86_64-windows"),
        "{stem}"
    );
    let root = place.join(&stem);
    for f in [
        "wininetd.exe",
        "wininetd.conf",
        "wininetd.toml",
        "README.txt",
        "LICENSE.txt",
        "CHANGELOG.txt",
        "docs/configuration.txt",
        "docs/windows.txt",
    ] {
        assert!(root.join(f).is_file(), "the zip lacks {f}");
    }
    let readme = std::fs::read_to_string(root.join("README.txt")).unwrap();
    assert!(
        readme.contains("\r\n") && !readme.contains("\n\n"),
        "README.txt has CRLF ends"
    );

    let exe_bytes = std::fs::read(root.join("wininetd.exe")).unwrap();
    assert_version_and_manifest(&exe_bytes);

    let [echo, greeting] = [free_port(), free_port()];
    let cfg = root.join("wininetd.toml");
    let example = std::fs::read_to_string(&cfg).unwrap();
    assert!(example.contains("port = 10007") && example.contains("port = 10013"));
    std::fs::write(
        &cfg,
        example
            .replace("port = 10007", &format!("port = {echo}"))
            .replace("port = 10013", &format!("port = {greeting}")),
    )
    .unwrap();
    let win = |p: &Path| {
        format!("C:\\{}", p.strip_prefix(&drive_c).unwrap().display()).replace('/', "\\")
    };
    let (exe_w, cfg_w) = (win(&root.join("wininetd.exe")), win(&cfg));

    let o = run(&[&exe_w, "--check", "--cfgfile", &cfg_w]);
    assert!(o.status.success(), "--check: {}", text(&o));
    let o = run(&[
        &exe_w,
        "--check",
        "--cfgfile",
        &win(&root.join("wininetd.conf")),
    ]);
    assert!(
        o.status.success(),
        "--check of the classic example: {}",
        text(&o)
    );
    let o = run(&[&exe_w, "--version"]);
    assert!(
        text(&o).starts_with(&format!("wininetd {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{}",
        text(&o)
    );

    let _ = run(&[&exe_w, "--remove"]);
    let _cleanup = Uninstall;
    let o = run(&[&exe_w, "--install", "--cfgfile", &cfg_w]);
    assert!(o.status.success(), "install: {}", text(&o));
    assert!(
        text(&o).contains(&exe_w) || text(&o).contains("wininetd-zip-test"),
        "{}",
        text(&o)
    );
    let o = run(&["sc", "start", "wininetd"]);
    assert!(o.status.success(), "sc start: {}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", echo)) {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            if s.write_all(b"from the zip\r\n").is_ok() {
                let _ = s.shutdown(Shutdown::Write);
                if read_all(&mut s) == b"from the zip\r\n" {
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "echo on {echo} not served");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut s = connect(greeting);
    let _ = s.shutdown(Shutdown::Write);
    let hello = String::from_utf8_lossy(&read_all(&mut s)).into_owned();
    assert!(
        hello.starts_with("Hello 127.0.0.1, you came from port "),
        "{hello:?}"
    );

    let o = run(&[&exe_w, "--remove"]);
    assert!(o.status.success(), "remove: {}", text(&o));
    wait_refused(echo, Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&place);
}

/// What Explorer's Details tab and the loader read from the exe: the
/// version resource (fixed file version and strings) and the manifest,
/// found by walking the PE resource directory.
fn assert_version_and_manifest(pe: &[u8]) {
    let resources = pe_resources(pe);
    let find = |ty: u32| {
        resources
            .iter()
            .find(|(t, _, _)| *t == ty)
            .map(|(_, _, data)| data.as_slice())
    };
    let version = find(16).expect("an RT_VERSION resource");
    // VS_FIXEDFILEINFO: signature 0xFEEF04BD, then the struct version,
    // then FileVersionMS (major.minor) and FileVersionLS (patch.0).
    let sig = version
        .windows(4)
        .position(|w| w == 0xFEEF_04BDu32.to_le_bytes())
        .expect("VS_FIXEDFILEINFO");
    let word = |o: usize| u32::from_le_bytes(version[sig + o..sig + o + 4].try_into().unwrap());
    let n = |s: &str| s.parse::<u32>().unwrap();
    let (major, minor, patch) = (
        n(env!("CARGO_PKG_VERSION_MAJOR")),
        n(env!("CARGO_PKG_VERSION_MINOR")),
        n(env!("CARGO_PKG_VERSION_PATCH")),
    );
    assert_eq!(word(8), (major << 16) | minor, "FileVersionMS");
    assert_eq!(word(12), patch << 16, "FileVersionLS");
    let strings: String = char::decode_utf16(
        version
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]])),
    )
    .map(|c| c.unwrap_or('?'))
    .collect();
    for (key, value) in [
        ("ProductName", "wininetd"),
        ("FileVersion", env!("CARGO_PKG_VERSION")),
        ("FileDescription", "super-server"),
        ("OriginalFilename", "wininetd.exe"),
    ] {
        let at = strings.find(key).unwrap_or_else(|| panic!("{key} missing"));
        let after = &strings[at + key.len()..];
        let val: String = after
            .trim_start_matches('\0')
            .chars()
            .take_while(|c| *c != '\0')
            .collect();
        assert!(val.contains(value), "{key} = {val:?}, want {value:?}");
    }
    let manifest = String::from_utf8_lossy(find(24).expect("an RT_MANIFEST resource"));
    assert!(
        manifest.contains("requestedExecutionLevel level=\"asInvoker\""),
        "{manifest}"
    );
    assert!(find(11).is_some(), "the Event Log message table");
}

/// Every leaf of a PE32+ file's resource tree: (type id, name id, data).
fn pe_resources(pe: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let u16_at = |o: usize| u16::from_le_bytes(pe[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(pe[o..o + 4].try_into().unwrap()) as usize;
    assert_eq!(&pe[..2], b"MZ", "not a PE file");
    let nt = u32_at(0x3c);
    assert_eq!(&pe[nt..nt + 4], b"PE\0\0", "not a PE file");
    let (coff, opt) = (nt + 4, nt + 24);
    assert_eq!(u16_at(opt), 0x20b, "not PE32+");
    // Data directory 2 is the resource table; PE32+ directories start at 112.
    let rsrc = u32_at(opt + 112 + 2 * 8);
    let sections = opt + u16_at(coff + 16);
    let (va, raw) = (0..u16_at(coff + 2))
        .map(|i| sections + i * 40)
        .map(|s| {
            (
                u32_at(s + 12),
                u32_at(s + 8).max(u32_at(s + 16)),
                u32_at(s + 20),
            )
        })
        .find(|(va, size, _)| (*va..va + size).contains(&rsrc))
        .map(|(va, _, raw)| (va, raw))
        .expect("a section holding the resources");
    let base = raw + (rsrc - va);
    // A directory: 16-byte header, then named and id entries of 8 bytes
    // each (id, offset; the high bit of the offset marks a subdirectory).
    let entries = |dir: usize| {
        let n = u16_at(base + dir + 12) + u16_at(base + dir + 14);
        (0..n)
            .map(|i| base + dir + 16 + i * 8)
            .map(|e| (u32_at(e) as u32, u32_at(e + 4)))
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for (ty, types) in entries(0) {
        for (name, names) in entries(types & 0x7fff_ffff) {
            for (_, leaf) in entries(names & 0x7fff_ffff) {
                let (data_rva, size) = (u32_at(base + leaf), u32_at(base + leaf + 4));
                let at = raw + (data_rva - va);
                out.push((ty, name, pe[at..at + size].to_vec()));
            }
        }
    }
    out
}

/// Sets a file's Unix mode, which is what Wine's file security reflects
/// for a file no Windows program has set a descriptor on.
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// As an administrator (Wine's default user), a config that Everyone may
/// write is refused by `--check` and at startup, with a message naming the
/// file and the fix; the same file private to its owner is accepted.
#[test]
#[ignore = "needs Wine and the Windows build; run by scripts/test.sh"]
fn a_config_everyone_can_write_is_refused_by_check_and_at_startup() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("trust.conf");
    let config = format!("{port} none cmd.exe /c echo trusted\n");
    std::fs::write(&cfg, &config).unwrap();
    let (exe, cfg_w) = (exe(), win_path(&cfg));
    let exe = exe.to_str().unwrap();

    chmod(&cfg, 0o644);
    let o = run(&[exe, "--check", "--cfgfile", &cfg_w]);
    assert!(o.status.success(), "a clean config: {}", text(&o));
    assert!(!text(&o).contains("refused"), "{}", text(&o));

    // Other users' write bit: Wine shows it as write access for Everyone.
    chmod(&cfg, 0o666);
    let o = run(&[exe, "--check", "--cfgfile", &cfg_w]);
    let out = text(&o);
    assert!(!o.status.success(), "a world-writable config passed: {out}");
    assert!(
        out.contains(&format!(
            "{cfg_w}: refused: {cfg_w} can be changed by S-1-1-0"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("fix: icacls \"{cfg_w}\"")), "{out}");

    let mut d = Daemon::spawn_prepared("trust.conf", &config, &[], &[], |f| chmod(f, 0o666));
    let status = d.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "exit code 1: invalid config");
    let log = d.log();
    assert!(log.contains("can be changed by S-1-1-0"), "{log}");
    assert!(!log.contains("serving"), "{log}");
}
