//! As root, wininetd refuses a config that another user could change
//! (sshd's StrictModes): at startup, on reload and in `--check`.
#![cfg(unix)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn root() {
    assert!(
        is_root(),
        "these tests need root (the checks apply to a daemon running as root); CI runs as root"
    );
}

#[test]
fn a_config_others_can_write_is_refused_at_startup_with_its_mode_and_the_fix() {
    root();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(
        dir.path(),
        "w.conf",
        format!("{port} none /bin/echo hi\n").as_bytes(),
    );
    chmod(&cfg, 0o666);
    let real = std::fs::canonicalize(&cfg).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--debug", "--cfgfile"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} is writable by group or others (mode 0666)",
            real.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("fix: chmod go-w {}", real.display())),
        "{err}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn check_reports_a_config_owned_by_another_user() {
    root();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(dir.path(), "w.conf", b"10007 none /bin/cat\n");
    std::os::unix::fs::chown(&cfg, Some(65534), None).unwrap();
    let out = run_cli(&["--check", "--cfgfile", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is owned by uid 65534, not root"), "{err}");
    assert!(err.contains("fix: chown root "), "{err}");
    // Given back to root, the same file passes.
    std::os::unix::fs::chown(&cfg, Some(0), None).unwrap();
    let out = run_cli(&["--check", "--cfgfile", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_writable_directory_above_the_config_is_refused() {
    root();
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("etc");
    std::fs::create_dir(&sub).unwrap();
    let cfg = write_file(&sub, "w.conf", b"10007 none /bin/cat\n");
    chmod(&sub, 0o777);
    let out = run_cli(&["--check", "--cfgfile", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("(a directory above"), "{err}");
    assert!(err.contains("(mode 0777)"), "{err}");
    // Sticky, like /tmp: others cannot replace the file, so it is fine.
    chmod(&sub, 0o1777);
    let out = run_cli(&["--check", "--cfgfile", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_reload_of_a_config_made_writable_is_rejected_and_the_old_one_kept() {
    root();
    let [port, other] = free_ports(2)[..] else {
        panic!()
    };
    let d = Daemon::start("w.conf", &format!("{port} none /bin/echo one\n"), &[]);
    std::fs::write(&d.config, format!("{other} none /bin/echo two\n")).unwrap();
    chmod(&d.config, 0o664);
    let log = d.reload(
        &format!("{other} none /bin/echo two\n"),
        "writable by group",
    );
    assert!(log.contains("(mode 0664)"), "{log}");
    assert_eq!(exchange(port, b""), b"one\n");
    assert!(std::net::TcpStream::connect(("127.0.0.1", other)).is_err());
}
