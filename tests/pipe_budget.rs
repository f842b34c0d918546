//! `pipe_budget`: relayed sessions get 1 MiB pipes only while the total
//! stays within the budget, the others the system's default, and the
//! budget comes back when sessions end.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const WIDE: u64 = 1 << 20;
const DEFAULT: u64 = 64 << 10;

/// A relayed session whose program has told the size of its stdin pipe.
struct Session {
    stream: TcpStream,
    pipe_size: u64,
}

fn open(port: u16) -> Session {
    let stream = connect(port);
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .expect("the program's first line");
    let pipe_size = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a pipe size: {line:?}"));
    Session { stream, pipe_size }
}

/// Ends the session: the program reads EOF and exits.
fn close(s: Session) {
    s.stream.shutdown(Shutdown::Write).unwrap();
    let mut s = s.stream;
    read_all(&mut s);
}

#[test]
fn only_sessions_within_the_budget_get_wide_pipes_and_ending_ones_give_it_back() {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    assert!(
        python.is_ok_and(|o| o.status.success()),
        "python3 is needed (Debian package python3)"
    );
    let port = free_port();
    // F_GETPIPE_SZ is 1032; the program holds its session until EOF.
    let config = format!(
        r#"pipe_budget = "2MiB"

[[service]]
port = {port}
bind = ["127.0.0.1"]
handoff = "pipe"
command = ["python3", "-c", "import fcntl, sys; print(fcntl.fcntl(0, 1032), flush=True); sys.stdin.buffer.read()"]
"#
    );
    let d = Daemon::start("p.toml", &config, &[]);
    let first = open(port);
    assert_eq!(first.pipe_size, WIDE, "the first session's stdin pipe");
    let second = open(port);
    assert_eq!(
        second.pipe_size,
        DEFAULT,
        "over the budget: the default pipe; log:\n{}",
        d.log()
    );
    close(first);
    // Once the first program has exited, its share is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        let s = open(port);
        if s.pipe_size == WIDE {
            break s;
        }
        assert_eq!(s.pipe_size, DEFAULT);
        assert!(
            Instant::now() < deadline,
            "the budget did not come back within 10 s of the first session's end; log:\n{}",
            d.log()
        );
        close(s);
        std::thread::sleep(Duration::from_millis(50));
    };
    close(second);
    close(third);
}
