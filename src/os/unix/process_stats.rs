//! What a scrape reports about the daemon itself: CPU time from
//! getrusage everywhere; on Linux resident memory and descriptors from
//! /proc (a few small reads per scrape, nothing on the connection path).

use crate::metrics::ProcessStats;

pub fn process_stats() -> ProcessStats {
    let mut stats = ProcessStats::default();
    if let Ok(u) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF) {
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        stats.cpu_seconds = Some(secs(u.user_time()) + secs(u.system_time()));
    }
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        && soft != nix::sys::resource::RLIM_INFINITY
    {
        stats.max_fds = Some(soft);
    }
    #[cfg(target_os = "linux")]
    {
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count().saturating_sub(1) as u64); // less read_dir's own
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        stats.resident_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .filter(|_| page > 0)
            .map(|pages| pages * page as u64);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_sees_itself() {
        let s = process_stats();
        assert!(s.cpu_seconds.is_some_and(|c| c >= 0.0));
        #[cfg(target_os = "linux")]
        {
            let before = s.open_fds.unwrap();
            let _f = std::fs::File::open("/proc/self/statm").unwrap();
            let after = process_stats().open_fds.unwrap();
            // Tests run in parallel threads: at least ours is new.
            assert!(after >= 1 && before >= 3, "{before} {after}");
            assert!(s.resident_bytes.unwrap() > 1 << 20);
        }
    }
}
