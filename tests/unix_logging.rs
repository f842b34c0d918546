//! Where a daemon (no `--debug`) logs: syslog via /dev/log, with the
//! daemon facility and a severity per level.
#![cfg(target_os = "linux")]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn without_debug_lines_go_to_syslog_with_facility_and_severity() {
    let dev_log = Path::new("/dev/log");
    if !is_root() || dev_log.exists() {
        // Only a root test on a machine without a syslog daemon can stand
        // in for /dev/log without disturbing anything (CI is such a one).
        eprintln!("skipped: needs root and no /dev/log");
        return;
    }
    let sock = UnixDatagram::bind(dev_log).unwrap();
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_file("/dev/log");
        }
    }
    let _cleanup = Cleanup;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "w.conf",
        format!("{port} bob:TopSecretPw /bin/echo hi\n").as_bytes(),
    );
    let mut child = Command::new(BIN)
        .arg("--cfgfile")
        .arg(&cfg)
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lines.iter().any(|l: &String| l.contains("serving")) && Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a syslog datagram");
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = lines.join("\n");
    // daemon (3) * 8 + warning (4) = 28; + info (6) = 30.
    assert!(
        all.contains(&format!("<28>wininetd[{pid}]: ")) && all.contains("passwords are ignored"),
        "{all}"
    );
    assert!(all.contains(&format!("<30>wininetd[{pid}]: ")), "{all}");
    assert!(all.contains("serving 1 service(s)"), "{all}");
    assert!(!all.contains("TopSecretPw"), "password leaked: {all}");
}
