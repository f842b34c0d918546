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
    /// One OS thread per outstanding child (blocking I/O) instead of one
    /// event-loop thread for all of them.
    pub threads: bool,
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
    check_echo(&io?, payload, status)
}

/// The child must have echoed exactly `payload` and exited with success.
fn check_echo(out: &[u8], payload: &[u8], status: std::process::ExitStatus) -> Result<(), Fail> {
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

/// The same exchange on a current-thread tokio runtime: one thread spawns
/// every child and waits for their pipes, as an event-loop server would.
async fn spawn_once_async(program: &PathBuf, payload: &[u8], fork: bool) -> Result<(), Fail> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fail = |kind: &'static str, e: std::io::Error| Fail {
        kind,
        msg: format!("{kind}: {e}"),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if fork {
        // SAFETY: as in spawn_once, an empty hook that only forces fork+exec.
        unsafe {
            cmd.pre_exec(|| Ok(()));
        }
    }
    let mut child = cmd.spawn().map_err(|e| fail("spawn", e))?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let mut stdout = child.stdout.take().expect("stdout was piped");
    let io = async {
        stdin
            .write_all(payload)
            .await
            .map_err(|e| fail("write", e))?;
        drop(stdin);
        let mut out = Vec::with_capacity(payload.len());
        stdout
            .read_to_end(&mut out)
            .await
            .map_err(|e| fail("read", e))?;
        Ok::<_, Fail>(out)
    }
    .await;
    let status = child.wait().await.map_err(|e| fail("wait", e))?;
    check_echo(&io?, payload, status)
}

fn run_async(
    opts: &SpawnOpts,
    pattern: &Arc<Pattern>,
    next: &Arc<AtomicUsize>,
    deadline: Instant,
) -> (Vec<u64>, Failures) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let mut f = Failures::default();
            f.add(Fail {
                kind: "runtime",
                msg: format!("tokio runtime: {e}"),
            });
            return (Vec::new(), f);
        }
    };
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..opts.concurrency.clamp(1, opts.n.max(1)) {
            let (pattern, next) = (Arc::clone(pattern), Arc::clone(next));
            let (n, size, fork, program) =
                (opts.n, opts.payload_size, opts.fork, opts.program.clone());
            set.spawn(async move {
                let mut lat = Vec::new();
                let mut failures = Failures::default();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t0 = Instant::now();
                    match spawn_once_async(&program, pattern.window(payload_offset(i), size), fork)
                        .await
                    {
                        Ok(()) => lat.push(t0.elapsed().as_nanos() as u64),
                        Err(f) => failures.add(f),
                    }
                }
                (lat, failures)
            });
        }
        let mut lat = Vec::with_capacity(opts.n);
        let mut failures = Failures::default();
        while let Some(res) = set.join_next().await {
            match res {
                Ok((l, f)) => {
                    lat.extend(l);
                    failures.merge(f);
                }
                Err(e) => failures.add(Fail {
                    kind: "worker",
                    msg: format!("worker task failed: {e}"),
                }),
            }
        }
        (lat, failures)
    })
}

fn run_threads(
    opts: &SpawnOpts,
    pattern: &Arc<Pattern>,
    next: &Arc<AtomicUsize>,
    deadline: Instant,
) -> (Vec<u64>, Failures) {
    let program = Arc::new(opts.program.clone());
    let handles: Vec<_> = (0..opts.concurrency.clamp(1, opts.n.max(1)))
        .map(|_| {
            let (pattern, next, program) =
                (Arc::clone(pattern), Arc::clone(next), Arc::clone(&program));
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
    (lat, failures)
}

pub fn run(opts: SpawnOpts) -> (Map<String, Value>, String, bool) {
    let pattern = Arc::new(Pattern::new(opts.payload_size));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + opts.max_time;
    let own_before = crate::server::own_cpu_ns();
    let (mut lat, failures) = if opts.threads {
        run_threads(&opts, &pattern, &next, deadline)
    } else {
        run_async(&opts, &pattern, &next, deadline)
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(program: &str, fork: bool, threads: bool, payload_size: usize) -> SpawnOpts {
        SpawnOpts {
            program: program.into(),
            fork,
            threads,
            n: 6,
            concurrency: 3,
            payload_size,
            max_time: Duration::from_secs(60),
        }
    }

    #[test]
    fn cat_round_trips_with_every_engine_and_method() {
        for (fork, threads) in [(false, true), (false, false), (true, true), (true, false)] {
            let (m, human, ok) = run(opts("/bin/cat", fork, threads, 64));
            assert!(ok, "fork={fork} threads={threads}: {human}");
            assert_eq!(m["ok_spawns"], 6);
            assert_eq!(m["failures"], 0);
        }
    }

    #[test]
    fn failing_or_silent_children_are_counted_as_failures() {
        // /bin/false echoes nothing and exits 1
        let (m, _, ok) = run(opts("/bin/false", false, true, 0));
        assert!(!ok);
        assert_eq!(m["failure_detail"]["by_kind"]["status"], 6);
        // /bin/true reads nothing: the write may fail (EPIPE) or the empty
        // reply mismatch, depending on who is first; either way all 6 fail.
        let (m, _, ok) = run(opts("/bin/true", false, false, 64));
        assert!(!ok);
        assert_eq!(m["failures"], 6);
        let kinds = m["failure_detail"]["by_kind"].as_object().unwrap();
        assert!(
            kinds.keys().all(|k| k == "write" || k == "mismatch"),
            "{kinds:?}"
        );
        let (m, _, ok) = run(opts("/nonexistent/program", false, true, 8));
        assert!(!ok);
        assert_eq!(m["failure_detail"]["by_kind"]["spawn"], 6);
    }
}
