//! At the default level each connection writes one line, at its end, with
//! everything about it; the start line is at `debug`.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(10);

fn config(ports: &[u16], json: bool) -> String {
    format!(
        r#"{}
[[service]]
name = "piped"
port = {}
bind = ["127.0.0.1"]
command = ["/bin/cat"]
handoff = "pipe"

[[service]]
name = "direct"
port = {}
bind = ["127.0.0.1"]
command = ["/bin/echo", "hi"]
handoff = "direct"
"#,
        if json { "log_format = \"json\"\n" } else { "" },
        ports[0],
        ports[1]
    )
}

fn at_info(json: bool) -> (Daemon, Vec<u16>) {
    let ports = free_ports(2);
    let d = Daemon::start_with("l.toml", &config(&ports, json), &[], |c| {
        c.env("WININETD_LOG", "info");
    });
    (d, ports)
}

#[test]
fn one_text_line_per_connection_at_its_end() {
    let (d, ports) = at_info(false);
    let piped = connect(ports[0]);
    let client = piped.local_addr().unwrap();
    assert_eq!(exchange_on(piped, b"12345"), b"12345");
    let direct = connect(ports[1]);
    let client2 = direct.local_addr().unwrap();
    assert_eq!(exchange_on(direct, b""), b"hi\n");
    d.wait_log_count(" ended", 2, WAIT);
    let lines = |peer: std::net::SocketAddr| d.lines_with(&format!("peer={peer} "));
    let piped_lines = lines(client);
    assert_eq!(piped_lines.len(), 1, "{}", d.log());
    let l = &piped_lines[0];
    for want in [
        "service=piped",
        "pid=",
        "status=exit status: 0",
        "duration=",
        "bytes_in=5",
        "bytes_out=5",
        "ended",
    ] {
        assert!(l.contains(want), "{want:?} not in {l}");
    }
    let direct_lines = lines(client2);
    assert_eq!(direct_lines.len(), 1, "{}", d.log());
    let l = &direct_lines[0];
    for want in [
        "service=direct",
        "pid=",
        "status=exit status: 0",
        "duration=",
    ] {
        assert!(l.contains(want), "{want:?} not in {l}");
    }
    assert_eq!(d.started(), 0, "no start line at info:\n{}", d.log());
}

#[test]
fn one_json_line_per_connection_at_its_end() {
    let (d, ports) = at_info(true);
    let piped = connect(ports[0]);
    let client = piped.local_addr().unwrap().to_string();
    assert_eq!(exchange_on(piped, b"abc"), b"abc");
    d.wait_log("\"ended\"", WAIT);
    let mine: Vec<serde_json::Value> = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["peer"] == client.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{}", d.log());
    let f = &mine[0]["fields"];
    assert_eq!(f["message"], "ended");
    assert_eq!(f["service"], "piped");
    assert_eq!(f["bytes_in"], 3);
    assert_eq!(f["bytes_out"], 3);
    assert_eq!(f["status"], "exit status: 0");
    assert!(f["pid"].as_u64().is_some(), "{f}");
    assert!(f["duration"].as_str().unwrap().ends_with('s'), "{f}");
}
