//! The open-files limit: a daemon started at a low soft limit (systemd
//! starts services at 1024) raises it to the hard one, so `pipe` sessions
//! (three descriptors each) are not capped at a few hundred; its programs
//! get the limit it started with back.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;

use common::*;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Soft limit the daemon starts with: room for about 15 pipe sessions.
const SOFT: u64 = 64;
const SESSIONS: usize = 100;

#[test]
fn a_low_soft_limit_is_raised_for_the_daemon_and_given_back_to_programs() {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= 4 * SESSIONS as u64,
        "the hard open-files limit {hard} is too low for this test"
    );
    let [pipe, show] = free_ports(2)[..] else {
        panic!()
    };
    let config = format!(
        "[[service]]\nport = {pipe}\nbind = [\"127.0.0.1\"]\ncommand = [\"/bin/cat\"]\nhandoff = \"pipe\"\n\n\
         [[service]]\nport = {show}\nbind = [\"127.0.0.1\"]\ncommand = [\"/bin/sh\", \"-c\", \"ulimit -n\"]\n"
    );
    let d = Daemon::start_with("n.toml", &config, &[], |cmd| {
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NOFILE, SOFT, hard).map_err(std::io::Error::from)
            });
        }
    });
    let held: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let mut s = connect(pipe);
            s.write_all(&[b'a' + (i % 26) as u8]).unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap_or_else(|e| {
                panic!(
                    "session {i} of {SESSIONS} not served ({e}); log:\n{}",
                    d.log()
                )
            });
            assert_eq!(b[0], b'a' + (i % 26) as u8);
            s
        })
        .collect();
    assert_eq!(d.children().unwrap().len(), SESSIONS);
    assert_eq!(
        String::from_utf8(exchange(show, b"")).unwrap().trim(),
        SOFT.to_string(),
        "a program gets the limit the daemon started with"
    );
    drop(held);
}
