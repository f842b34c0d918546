//! Real third-party stdio servers behind wininetd, driven by their real
//! clients: git's and rsync's own inetd modes.
#![cfg(unix)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args))
}

#[test]
fn git_daemon_inetd_serves_a_clone() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("repos");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), pattern(300_000, 5)).unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    std::fs::create_dir_all(&base).unwrap();
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            base.join("repo.git").to_str().unwrap(),
        ],
    );

    let port = free_port();
    let config = format!(
        "{port} none git daemon --inetd --export-all --base-path={}\n",
        base.display()
    );
    let d = Daemon::start("w.conf", &config, &[]);
    let dest = tmp.path().join("clone");
    run(Command::new("git").args([
        "clone",
        "-q",
        &format!("git://127.0.0.1:{port}/repo.git"),
        dest.to_str().unwrap(),
    ]));
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), head);
    assert_eq!(
        std::fs::read(dest.join("README")).unwrap(),
        pattern(300_000, 5)
    );
    d.wait_log("status=exit status: 0", std::time::Duration::from_secs(10));
}

#[test]
fn rsync_daemon_inetd_mode_serves_a_module() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let big = pattern(5 << 20, 11);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("sub/small.txt"), b"hello rsync\n").unwrap();

    let uid = nix::unistd::Uid::effective();
    let gid = nix::unistd::Gid::effective();
    let rsyncd_conf = tmp.path().join("rsyncd.conf");
    std::fs::write(
        &rsyncd_conf,
        format!(
            "use chroot = false\nuid = {uid}\ngid = {gid}\n[module]\n    path = {}\n    read only = true\n",
            src.display()
        ),
    )
    .unwrap();

    let port = free_port();
    let config = format!(
        "{port} none rsync --daemon --config={}\n",
        rsyncd_conf.display()
    );
    let _d = Daemon::start("w.conf", &config, &[]);
    let dest = tmp.path().join("dest");
    run(Command::new("rsync").args([
        "-a",
        &format!("rsync://127.0.0.1:{port}/module/"),
        dest.to_str().unwrap(),
    ]));
    assert!(std::fs::read(dest.join("big.bin")).unwrap() == big);
    assert_eq!(
        std::fs::read(dest.join("sub/small.txt")).unwrap(),
        b"hello rsync\n"
    );
}
