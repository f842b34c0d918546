//! What a scrape reports about the daemon itself: CPU time, working set
//! and open handles, each one call on our own process handle.

use windows_sys::Win32::Foundation::FILETIME;
use windows_sys::Win32::System::ProcessStatus::{GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetProcessHandleCount, GetProcessTimes,
};

use crate::metrics::ProcessStats;

pub fn process_stats() -> ProcessStats {
    let mut stats = ProcessStats::default();
    // SAFETY: the pseudo-handle needs no closing; every out-pointer is a
    // local of the right type and size.
    unsafe {
        let me = GetCurrentProcess();
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        if GetProcessTimes(me, &mut created, &mut exited, &mut kernel, &mut user) != 0 {
            // FILETIME counts 100 ns.
            let ticks =
                |t: FILETIME| (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
            stats.cpu_seconds = Some((ticks(kernel) + ticks(user)) as f64 / 1e7);
        }
        let mut mem: PROCESS_MEMORY_COUNTERS = std::mem::zeroed();
        mem.cb = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
        if GetProcessMemoryInfo(me, &mut mem, mem.cb) != 0 {
            stats.resident_bytes = Some(mem.WorkingSetSize as u64);
        }
        let mut handles = 0u32;
        // A live process always holds handles: 0 is a stub's answer
        // (Wine's), not a count, and is left out rather than exported.
        if GetProcessHandleCount(me, &mut handles) != 0 && handles > 0 {
            stats.open_handles = Some(u64::from(handles));
        }
    }
    stats
}
