//! A UDP `wait` service with a real server and real clients: tftpd-hpa's
//! `in.tftpd` in inetd mode, fetched from with tftp-hpa and curl.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const TFTPD: &str = "/usr/sbin/in.tftpd";

/// Fetches `file` from 127.0.0.1:`port` with tftp-hpa's client into `dest`.
fn tftp_get(port: u16, file: &str, dest: &Path) {
    let out = Command::new("tftp")
        .args(["127.0.0.1", &port.to_string(), "-m", "binary", "-c", "get"])
        .arg(file)
        .arg(dest)
        .output()
        .expect("run tftp (Debian package tftp-hpa)");
    assert!(
        out.status.success() && dest.exists(),
        "tftp failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fetches `file` with curl's TFTP client into `dest`.
fn curl_get(port: u16, file: &str, dest: &Path) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20", "-o"])
        .arg(dest)
        .arg(format!("tftp://127.0.0.1:{port}/{file}"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_same(got: &Path, want: &[u8]) {
    let got = std::fs::read(got).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the transferred file differs");
}

#[test]
fn tftpd_gets_the_socket_and_is_started_again_after_it_exits() {
    // in.tftpd needs root for --secure (chroot) and to switch users.
    assert!(
        is_root(),
        "this test needs root: in.tftpd in inetd mode chroots and switches users; CI runs as root"
    );
    assert!(
        Path::new(TFTPD).exists(),
        "{TFTPD} is missing: install tftpd-hpa (scripts/test.sh does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("srv");
    std::fs::create_dir(&root).unwrap();
    let data = pattern(700 * 1024, 41);
    std::fs::write(root.join("image.bin"), &data).unwrap();

    let port = free_port_tcp_udp();
    // -t 5: in.tftpd serves requests on the socket for 5 s after the last
    // one, then exits, as it does under inetd.
    let config = format!(
        r#"[[service]]
name = "tftp"
port = {port}
bind = ["127.0.0.1"]
protocol = "udp"
wait = true
command = ["{TFTPD}", "--timeout", "5", "--user", "root", "--secure", "{}"]
"#,
        root.display()
    );
    let d = Daemon::start("t.toml", &config, &[]);

    // First transfer: wininetd sees a datagram and starts in.tftpd on the
    // socket.
    tftp_get(port, "image.bin", &tmp.path().join("first"));
    assert_same(&tmp.path().join("first"), &data);
    // A second request while in.tftpd runs is read by in.tftpd itself:
    // wininetd does not watch the socket then, so it starts nothing.
    curl_get(port, "image.bin", &tmp.path().join("second"));
    assert_same(&tmp.path().join("second"), &data);
    // in.tftpd serves for 5 s after a request: it is still running.
    let log = d.log();
    assert!(
        !log.contains(" ended "),
        "in.tftpd exited within 5 s of a request:\n{log}"
    );
    assert_eq!(d.started(), 1, "started while in.tftpd ran:\n{log}");

    // Once it has exited, the next datagram starts a new in.tftpd.
    d.wait_log(" ended ", Duration::from_secs(30));
    let before = d.started();
    tftp_get(port, "image.bin", &tmp.path().join("third"));
    assert_same(&tmp.path().join("third"), &data);
    d.wait_log_count(" started ", before + 1, Duration::from_secs(10));
    let ended = &d.lines_with(" ended ")[0];
    assert!(
        ended.contains("service=tftp") && ended.contains("status=exit status: 0"),
        "{ended}"
    );
    // Let the last one finish too, so nothing is left running.
    d.wait_log_count(" ended ", 2, Duration::from_secs(30));
}
