//! What the bench reads about the super-server process and the machine.
//!
//! CPU time of another process is read three ways:
//! * `clock_ns`: the process CPU clock (`clock_getcpuclockid` + `clock_gettime`),
//!   nanosecond resolution, summed over all its threads including ones that
//!   already exited, children excluded. This is what the report uses.
//! * `schedstat_ns`: the first field of `/proc/PID/task/*/schedstat`, summed
//!   over the threads that are alive now (same clock, but exited threads are lost).
//! * `stat_ns`: utime+stime of `/proc/PID/stat` (clock ticks, 10 ms here),
//!   the classic figure, as a cross-check.

use std::fs;

#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    pub clock_ns: Option<u64>,
    pub schedstat_ns: Option<u64>,
    pub stat_ns: Option<u64>,
}

pub fn cpu_sample(pid: i32) -> CpuSample {
    CpuSample {
        clock_ns: process_clock_ns(pid),
        schedstat_ns: schedstat_ns(pid),
        stat_ns: stat_utime_stime_ns(pid),
    }
}

/// Nanoseconds of CPU time of process `pid` (all threads, not children).
pub fn process_clock_ns(pid: i32) -> Option<u64> {
    let mut clk: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t to a valid pointer.
    let rc = unsafe { libc::clock_getcpuclockid(pid, &mut clk) };
    if rc != 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    let rc = unsafe { libc::clock_gettime(clk, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Sum of the first field of /proc/PID/task/*/schedstat (ns on CPU).
pub fn schedstat_ns(pid: i32) -> Option<u64> {
    let dir = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for entry in dir.flatten() {
        let path = entry.path().join("schedstat");
        if let Ok(s) = fs::read_to_string(path)
            && let Some(ns) = s
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
        {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// utime+stime of /proc/PID/stat, converted from clock ticks to ns.
pub fn stat_utime_stime_ns(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (utime, stime) = parse_stat_utime_stime(&s)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some((utime + stime) * (1_000_000_000 / hz))
}

/// (utime, stime) in ticks from the text of /proc/PID/stat. The command name
/// is in parentheses and may contain spaces, so fields are counted after
/// the last ')'.
pub fn parse_stat_utime_stime(s: &str) -> Option<(u64, u64)> {
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime = fields.get(11)?.parse().ok()?;
    let stime = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// VmRSS of process `pid` in KiB, from /proc/PID/status.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss_kib(&s)
}

pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// True if some socket in /proc/net/tcp or tcp6 is in LISTEN state on `port`.
pub fn is_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .any(|text| proc_net_tcp_listens(&text, port))
}

/// Looks for a LISTEN (state 0A) line whose local port is `port` in the text
/// of /proc/net/tcp{,6}.
pub fn proc_net_tcp_listens(text: &str, port: u16) -> bool {
    text.lines().skip(1).any(|line| {
        let mut f = line.split_whitespace();
        let (_sl, local, _remote, state) = (f.next(), f.next(), f.next(), f.next());
        let local_port = local
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        local_port == Some(port) && state == Some("0A")
    })
}

/// Whether process `pid` exists (and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_counted_after_command_name_with_spaces() {
        let s = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                 37 12 0 0 20 0 1 0 555 1000 100 18446744073709551615";
        assert_eq!(parse_stat_utime_stime(s), Some((37, 12)));
        assert_eq!(parse_stat_utime_stime("garbage"), None);
        assert_eq!(parse_stat_utime_stime("1 (x) S 1 2"), None);
    }

    #[test]
    fn vm_rss_parsed_from_status() {
        let s = "Name:\tcat\nVmPeak:\t  9000 kB\nVmRSS:\t    1480 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss_kib(s), Some(1480));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn listen_lines_found_by_port_and_state() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000\n\
   1: 0100007F:0050 0100007F:C350 01 00000000:00000000 00:00000000\n";
        assert!(proc_net_tcp_listens(text, 8080));
        // port 80 is only in ESTABLISHED (01) state
        assert!(!proc_net_tcp_listens(text, 80));
        assert!(!proc_net_tcp_listens(text, 81));
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id() as i32;
        assert!(pid_alive(me));
        assert!(vm_rss_kib(me).is_some_and(|k| k > 0));
        assert!(process_clock_ns(me).is_some());
        assert!(
            schedstat_ns(me).is_some() || !std::path::Path::new("/proc/self/schedstat").exists()
        );
        assert!(stat_utime_stime_ns(me).is_some());
    }
}
