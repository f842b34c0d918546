//! Readings of the super-server process (`--server-pid`) around a scenario.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::procfs::{self, CpuSample};

#[derive(Debug, Clone, Copy, Default)]
pub struct ProbeSample {
    pub cpu: CpuSample,
    pub rss_kib: Option<u64>,
}

/// The super-server to watch, if any, and how long to let it settle (reap
/// children, finish logging) before the closing reading.
#[derive(Debug, Clone, Copy)]
pub struct ServerProbe {
    pub pid: Option<i32>,
    pub settle: Duration,
}

impl ServerProbe {
    pub fn sample(&self) -> ProbeSample {
        match self.pid {
            Some(pid) => ProbeSample {
                cpu: procfs::cpu_sample(pid),
                rss_kib: procfs::vm_rss_kib(pid),
            },
            None => ProbeSample::default(),
        }
    }

    pub async fn sample_after_settle(&self) -> ProbeSample {
        if self.pid.is_some() {
            tokio::time::sleep(self.settle).await;
        }
        self.sample()
    }

    pub fn sample_after_settle_blocking(&self) -> ProbeSample {
        if self.pid.is_some() {
            std::thread::sleep(self.settle);
        }
        self.sample()
    }

    /// Adds the server's CPU time over [before, after], and per connection.
    pub fn insert_cpu_delta(
        &self,
        m: &mut Map<String, Value>,
        before: &ProbeSample,
        after: &ProbeSample,
        conns: usize,
    ) {
        let Some(pid) = self.pid else { return };
        m.insert("server_pid".into(), json!(pid));
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let clock = delta(before.cpu.clock_ns, after.cpu.clock_ns);
        let sched = delta(before.cpu.schedstat_ns, after.cpu.schedstat_ns);
        let stat = delta(before.cpu.stat_ns, after.cpu.stat_ns);
        m.insert("server_cpu_clock_ns".into(), json!(clock));
        m.insert("server_cpu_schedstat_ns".into(), json!(sched));
        m.insert("server_cpu_stat_ns".into(), json!(stat));
        let (best, method) = match (clock, stat) {
            (Some(c), _) => (Some(c), "process-cpu-clock"),
            (None, Some(s)) => (Some(s), "proc-stat-utime-stime"),
            _ => (None, "unavailable"),
        };
        m.insert("server_cpu_method".into(), json!(method));
        if let Some(ns) = best
            && conns > 0
        {
            m.insert(
                "server_cpu_us_per_conn".into(),
                json!(ns as f64 / 1000.0 / conns as f64),
            );
        }
    }

    pub fn insert_rss(&self, m: &mut Map<String, Value>, key: &str, s: &ProbeSample) {
        if self.pid.is_some() {
            m.insert(key.into(), json!(s.rss_kib));
        }
    }
}

/// CPU time of this process (all threads), ns.
pub fn own_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}
