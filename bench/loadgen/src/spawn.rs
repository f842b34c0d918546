//! `spawn-ceiling`: what the machine can do at best. C threads each run a
//! loop of: spawn the program (/bin/cat) with piped stdin/stdout, write the
//! payload, close stdin, read the reply to EOF, reap. No sockets and no
//! super-server: the cost of a process per connection and nothing else.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::pattern::Pattern;
use crate::rate::{Fail, Failures, payload_offset};
use crate::stats;

pub struct SpawnOpts {
    pub program: PathBuf,
    /// Force fork+exec (as the classic super-servers do) instead of
    /// std's posix_spawn (clone with CLONE_VM|CLONE_VFORK, cheaper).
    pub fork: bool,
    pub n: usize,
    pub concurrency: usize,
    pub payload_size: usize,
    pub max_time: Duration,
}

fn spawn_once(program: &PathBuf, payload: &[u8], fork: bool) -> Result<(), Fail> {
    let fail = |kind: &'static str, e: std::io::Error| Fail {
        kind,
        msg: format!("{kind}: {e}"),
    };
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if fork {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook does nothing; its presence alone makes std take
        // the fork+exec path instead of posix_spawn.
        unsafe {
            cmd.pre_exec(|| Ok(()));
        }
    }
    let mut child = cmd.spawn().map_err(|e| fail("spawn", e))?;
    // The payload is at most a few KiB (clap caps it), below any pipe
    // buffer, so writing it all before reading cannot deadlock.
    let io = (|| {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin.write_all(payload).map_err(|e| fail("write", e))?;
        drop(stdin);
        let mut out = Vec::with_capacity(payload.len());
        child
            .stdout
            .take()
            .expect("stdout was piped")
            .read_to_end(&mut out)
            .map_err(|e| fail("read", e))?;
        Ok(out)
    })();
    let status = child.wait().map_err(|e| fail("wait", e))?;
    let out = io?;
    if out != payload {
        return Err(Fail {
            kind: "mismatch",
            msg: format!(
                "mismatch: got {} bytes, not the {} sent",
                out.len(),
                payload.len()
            ),
        });
    }
    if !status.success() {
        return Err(Fail {
            kind: "status",
            msg: format!("status: {status}"),
        });
    }
    Ok(())
}

pub fn run(opts: SpawnOpts) -> (Map<String, Value>, String, bool) {
    let pattern = Arc::new(Pattern::new(opts.payload_size));
    let next = Arc::new(AtomicUsize::new(0));
    let program = Arc::new(opts.program.clone());
    let start = Instant::now();
    let deadline = start + opts.max_time;
    let own_before = crate::server::own_cpu_ns();

    let handles: Vec<_> = (0..opts.concurrency.clamp(1, opts.n.max(1)))
        .map(|_| {
            let (pattern, next, program) = (
                Arc::clone(&pattern),
                Arc::clone(&next),
                Arc::clone(&program),
            );
            let (n, size, fork) = (opts.n, opts.payload_size, opts.fork);
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut failures = Failures::default();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t0 = Instant::now();
                    match spawn_once(&program, pattern.window(payload_offset(i), size), fork) {
                        Ok(()) => lat.push(t0.elapsed().as_nanos() as u64),
                        Err(f) => failures.add(f),
                    }
                }
                (lat, failures)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(opts.n);
    let mut failures = Failures::default();
    for h in handles {
        match h.join() {
            Ok((l, f)) => {
                lat.extend(l);
                failures.merge(f);
            }
            Err(_) => failures.add(Fail {
                kind: "worker",
                msg: "worker thread panicked".into(),
            }),
        }
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let own_after = crate::server::own_cpu_ns();
    let ok = lat.len();
    let attempted = next.load(Ordering::Relaxed).min(opts.n);
    let not_started = opts.n - attempted;
    let summary = stats::summarize(&mut lat);
    let rate = ok as f64 / secs;
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;

    let mut m = Map::new();
    m.insert("program".into(), json!(opts.program.display().to_string()));
    m.insert(
        "method".into(),
        json!(if opts.fork { "fork" } else { "posix_spawn" }),
    );
    m.insert("n".into(), json!(opts.n));
    m.insert("concurrency".into(), json!(opts.concurrency));
    m.insert("payload_size".into(), json!(opts.payload_size));
    m.insert("ok_spawns".into(), json!(ok));
    m.insert(
        "failures".into(),
        json!(failures.total() + not_started as u64),
    );
    m.insert("not_started".into(), json!(not_started));
    m.insert("failure_detail".into(), failures.to_json());
    m.insert("elapsed_s".into(), json!(secs));
    m.insert("spawns_per_s".into(), json!(rate));
    if let Some(s) = summary {
        m.insert("p50_us".into(), json!(us(s.p50)));
        m.insert("p90_us".into(), json!(us(s.p90)));
        m.insert("p99_us".into(), json!(us(s.p99)));
        m.insert("max_us".into(), json!(us(s.max)));
    }
    if let (Some(a), Some(b)) = (own_before, own_after)
        && attempted > 0
    {
        m.insert(
            "loadgen_cpu_us_per_spawn".into(),
            json!(b.saturating_sub(a) as f64 / 1000.0 / attempted as f64),
        );
    }
    let mut human = format!(
        "spawn-ceiling {} ({}): {ok}/{} ok in {secs:.1} s: {rate:.0} spawns/s",
        opts.program.display(),
        if opts.fork {
            "fork+exec"
        } else {
            "posix_spawn"
        },
        opts.n
    );
    if let Some(s) = summary {
        human += &format!(", p50 {:.0} p99 {:.0} µs", us(s.p50), us(s.p99));
    }
    for s in &failures.samples {
        human += &format!("\n  failure: {s}");
    }
    (m, human, failures.total() == 0 && not_started == 0)
}
