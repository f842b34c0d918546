//! The fork/exec itself, from a fully prepared request.
//!
//! On Linux x86-64 wininetd clones with `CLONE_VM | CLONE_CHILD_CLEARTID`
//! on a stack of its own pool and execs with prebuilt argv/envp: no copy of
//! the address space, no allocation or lock in the child, and no wait for
//! the exec (vfork would block the one thread that accepts until the
//! program's loader has started) unless two children per CPU are still
//! before theirs (see `max_starting`). The kernel zeroes a word in the slot when
//! the child has exec'd or exited, which is when the slot may be reused; a
//! failed exec leaves its errno there for [`start_error`]. Other Unix
//! systems (and other architectures) use `std::process::Command`.

use std::borrow::Cow;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::BorrowedFd;

/// Everything the child needs, computed in the parent.
pub struct Request<'a> {
    /// argv; `argv[0]` is also the program, looked up in PATH without '/'.
    pub argv: Vec<CString>,
    /// The complete environment, `KEY=value` each; the daemon's own
    /// variables are borrowed, not copied for each program.
    pub envp: Vec<Cow<'static, CStr>>,
    pub cwd: Option<CString>,
    pub creds: Option<Creds>,
    /// What becomes fd 0, 1 and 2 (all >= 3 in our process, see
    /// `init_process`); the same descriptor may be given more than once.
    pub stdio: [BorrowedFd<'a>; 3],
}

/// The identity to take before exec.
pub struct Creds {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// Starts the program; returns its pid. The program gets its own process
/// group, default signal dispositions, an empty signal mask and exactly the
/// descriptors 0, 1 and 2. On the clone path an exec that fails shows as
/// the child's exit (127), with the reason from [`start_error`].
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn spawn(req: Request<'_>) -> io::Result<u32> {
    clone::spawn(req)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn spawn(req: Request<'_>) -> io::Result<u32> {
    spawn_std(req)
}

/// Why the program of `pid` could not be exec'd, once it has exited; asked
/// by the reaper for each exit (only the clone path learns this late).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn start_error(pid: u32) -> Option<io::Error> {
    clone::start_error(pid)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn start_error(_pid: u32) -> Option<io::Error> {
    None
}

/// Records which signals the children must reset (see `init_process`).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn note_dispositions() {
    clone::note_dispositions()
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn note_dispositions() {}

/// The portable path, also tested on Linux.
#[cfg_attr(all(target_os = "linux", target_arch = "x86_64"), allow(dead_code))]
pub fn spawn_std(req: Request<'_>) -> io::Result<u32> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let os = |c: &CString| OsStr::from_bytes(c.as_bytes()).to_owned();
    let Some(program) = req.argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no program"));
    };
    let mut cmd = Command::new(os(program));
    cmd.args(req.argv[1..].iter().map(os))
        .env_clear()
        .process_group(0);
    for kv in &req.envp {
        let kv = kv.to_bytes();
        if let Some(eq) = kv.iter().position(|&b| b == b'=') {
            cmd.env(
                OsStr::from_bytes(&kv[..eq]),
                OsStr::from_bytes(&kv[eq + 1..]),
            );
        }
    }
    if let Some(dir) = &req.cwd {
        cmd.current_dir(os(dir));
    }
    let creds = req.creds.as_ref().map(|c| (c.uid, c.gid, c.groups.clone()));
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The daemon blocks the signals it reads by signalfd; std
            // leaves the mask as it is.
            let empty = nix::sys::signal::SigSet::empty();
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, empty.as_ref(), std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            if let Some((uid, gid, groups)) = &creds
                && (libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let [a, b, c] = &req.stdio;
    cmd.stdin(Stdio::from(a.try_clone_to_owned()?))
        .stdout(Stdio::from(b.try_clone_to_owned()?))
        .stderr(Stdio::from(c.try_clone_to_owned()?));
    Ok(cmd.spawn()?.id())
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod clone {
    use std::borrow::Cow;
    use std::collections::VecDeque;
    use std::ffi::{CStr, CString};
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use libc::{c_char, c_int, c_long};

    use super::Request;

    /// Reserved per slot; only the pages the child touches become resident.
    const STACK_BYTES: usize = 64 * 1024;
    /// Failed execs whose slot was reused before the reaper asked.
    const FAILED_KEPT: usize = 64;
    /// How long a spawn waits for a child to exec when every slot is taken,
    /// before it adds a slot anyway (a child stopped before its exec must
    /// not stall the daemon).
    const SLOT_WAIT: std::time::Duration = std::time::Duration::from_millis(10);
    const SHELL: &CStr = c"/bin/sh";

    /// The signals whose disposition is not SIG_DFL in this process (bit
    /// n: signal n + 1), which a child must reset before exec; all of them
    /// until [`note_dispositions`] has looked.
    static NOT_DEFAULT: AtomicU64 = AtomicU64::new(u64::MAX);

    /// Looks at every signal's disposition once (called at start, after
    /// which the daemon changes none: it reads signals by signalfd), so a
    /// child resets only those (usually SIGPIPE alone) instead of making 62
    /// system calls before its exec.
    pub fn note_dispositions() {
        let mut set = 0u64;
        for sig in 1..=64usize {
            // struct kernel_sigaction; handler first.
            let mut old = [0u64; 4];
            // SAFETY: rt_sigaction with no new action only reads into `old`.
            let r = unsafe { sys(libc::SYS_rt_sigaction, sig, 0, old.as_mut_ptr() as usize, 8) };
            if r != 0 || old[0] != 0 {
                set |= 1 << (sig - 1);
            }
        }
        NOT_DEFAULT.store(set, Ordering::Relaxed);
    }

    /// What the child reads: raw pointers into its slot, which the parent
    /// leaves alone until the child has exec'd or exited.
    #[derive(Clone, Copy)]
    struct Plan {
        /// `[/bin/sh, argv..., NULL]`: argv starts at index 1; a script
        /// without `#!` runs as `/bin/sh path args` (execvp's rule).
        shell_argv: *mut *const c_char,
        envp: *const *const c_char,
        candidates: *const *const c_char,
        n_candidates: usize,
        cwd: *const c_char,
        creds: Option<(libc::uid_t, libc::gid_t, *const libc::gid_t, usize)>,
        fds: [c_int; 3],
        errno: *const AtomicI32,
        /// Bit n set: signal n + 1 is not SIG_DFL here, so the child resets it.
        to_reset: u64,
    }

    /// A child's stack and everything it reads, owned by that child from
    /// clone until it has exec'd or exited.
    struct Slot {
        /// Nonzero while a child owns the slot; the kernel zeroes it when
        /// that child execs or exits (`CLONE_CHILD_CLEARTID`).
        busy: AtomicI32,
        /// Set by the child when it fails before exec.
        errno: AtomicI32,
        pid: i32,
        /// Spawn order, to wait for the oldest child.
        seq: u64,
        stack: Vec<u128>,
        plan: Plan,
        argv: Vec<CString>,
        envp: Vec<Cow<'static, CStr>>,
        cwd: Option<CString>,
        groups: Vec<libc::gid_t>,
        candidates: Vec<CString>,
        shell_argv: Vec<*const c_char>,
        env_ptrs: Vec<*const c_char>,
        candidate_ptrs: Vec<*const c_char>,
    }

    // SAFETY: the raw pointers point into the slot's own vectors (or static
    // strings); the slot only moves between threads under the pool's lock.
    unsafe impl Send for Slot {}

    struct Pool {
        /// Boxed so a slot never moves when the vector grows: a running
        /// child reads it, and the kernel writes its `busy` word.
        #[allow(clippy::vec_box)]
        slots: Vec<Box<Slot>>,
        /// (pid, errno, program) of failed execs moved out of reused slots.
        failed: VecDeque<(i32, i32, CString)>,
        spawned: u64,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool {
        slots: Vec::new(),
        failed: VecDeque::new(),
        spawned: 0,
    });

    /// Children allowed between clone and exec at once: two per CPU. When
    /// that many have not reached their exec yet the CPUs are saturated,
    /// and starting more would only have them queue for the CPUs together
    /// and finish late together; waiting for the oldest instead keeps the
    /// other connections in the kernel's accept queue, first come first
    /// served (loadgen rate 5000 x 16 on 2 CPUs: p99 17-18 -> 10-12 ms, for
    /// ~3 us more of our CPU per connection: we sleep more), and bounds the
    /// slots' memory.
    fn max_starting() -> usize {
        static MAX: OnceLock<usize> = OnceLock::new();
        *MAX.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            (2 * cpus).clamp(2, 64)
        })
    }

    fn new_slot() -> Box<Slot> {
        Box::new(Slot {
            busy: AtomicI32::new(0),
            errno: AtomicI32::new(0),
            pid: 0,
            seq: 0,
            // Reserved, never written by us: only the few pages the child
            // touches become resident.
            stack: Vec::with_capacity(STACK_BYTES / 16),
            plan: Plan {
                shell_argv: std::ptr::null_mut(),
                envp: std::ptr::null(),
                candidates: std::ptr::null(),
                n_candidates: 0,
                cwd: std::ptr::null(),
                creds: None,
                fds: [-1; 3],
                errno: std::ptr::null(),
                to_reset: u64::MAX,
            },
            argv: Vec::new(),
            envp: Vec::new(),
            cwd: None,
            groups: Vec::new(),
            candidates: Vec::new(),
            shell_argv: Vec::new(),
            env_ptrs: Vec::new(),
            candidate_ptrs: Vec::new(),
        })
    }

    fn is_free(slot: &Slot) -> bool {
        slot.busy.load(Ordering::Acquire) == 0
    }

    /// Waits (at most `SLOT_WAIT`) for the oldest child to exec or exit.
    fn wait_for_oldest(slots: &[Box<Slot>]) {
        let Some(oldest) = slots.iter().min_by_key(|s| s.seq) else {
            return;
        };
        let deadline = std::time::Instant::now() + SLOT_WAIT;
        loop {
            let busy = oldest.busy.load(Ordering::Acquire);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if busy == 0 || left.is_zero() {
                return;
            }
            let timeout = libc::timespec {
                tv_sec: 0,
                tv_nsec: left.as_nanos() as libc::c_long,
            };
            // SAFETY: FUTEX_WAIT on a live word, with a valid timeout. Not
            // FUTEX_PRIVATE: the kernel's CLONE_CHILD_CLEARTID wake is a
            // shared one.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    oldest.busy.as_ptr(),
                    libc::FUTEX_WAIT,
                    busy,
                    &raw const timeout,
                )
            };
        }
    }

    fn pool() -> std::sync::MutexGuard<'static, Pool> {
        POOL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where execvp would look for `name`, from the daemon's PATH (which
    /// does not change while it runs).
    fn candidates(name: &CString) -> Vec<CString> {
        static PATH: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
        let bytes = name.as_bytes();
        if bytes.contains(&b'/') {
            return vec![name.clone()];
        }
        if bytes.is_empty() {
            return Vec::new(); // execvp's ENOENT
        }
        let dirs = PATH.get_or_init(|| {
            let path = std::env::var_os("PATH");
            let path = path
                .as_deref()
                .map_or(&b"/bin:/usr/bin"[..], |p| p.as_bytes());
            path.split(|&b| b == b':').map(<[u8]>::to_vec).collect()
        });
        dirs.iter()
            .filter_map(|dir| {
                let mut full = dir.clone();
                if !full.is_empty() {
                    full.push(b'/');
                }
                full.extend_from_slice(bytes);
                CString::new(full).ok()
            })
            .collect()
    }

    fn pointers<S: AsRef<CStr>>(strings: &[S], into: &mut Vec<*const c_char>) {
        into.clear();
        into.extend(strings.iter().map(|c| c.as_ref().as_ptr()));
        into.push(std::ptr::null());
    }

    pub fn spawn(req: Request<'_>) -> io::Result<u32> {
        if req.argv.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no program"));
        }
        let mut pool = pool();
        let mut free = pool.slots.iter().position(|s| is_free(s));
        if free.is_none() && pool.slots.len() >= max_starting() {
            wait_for_oldest(&pool.slots);
            free = pool.slots.iter().position(|s| is_free(s));
        }
        let at = match free {
            Some(at) => {
                let slot = &mut pool.slots[at];
                let errno = slot.errno.swap(0, Ordering::Relaxed);
                if errno != 0 {
                    let failed = (slot.pid, errno, slot.argv.swap_remove(0));
                    if pool.failed.len() == FAILED_KEPT {
                        pool.failed.pop_front();
                    }
                    pool.failed.push_back(failed);
                }
                at
            }
            None => {
                pool.slots.push(new_slot());
                pool.slots.len() - 1
            }
        };
        pool.spawned += 1;
        let seq = pool.spawned;
        let slot = &mut *pool.slots[at];
        slot.seq = seq;

        slot.candidates = candidates(&req.argv[0]);
        slot.argv = req.argv;
        slot.envp = req.envp;
        slot.cwd = req.cwd;
        let ids = req.creds.map(|c| {
            slot.groups = c.groups;
            (c.uid, c.gid)
        });
        slot.shell_argv.clear();
        slot.shell_argv.push(SHELL.as_ptr());
        slot.shell_argv.extend(slot.argv.iter().map(|c| c.as_ptr()));
        slot.shell_argv.push(std::ptr::null());
        pointers(&slot.envp, &mut slot.env_ptrs);
        pointers(&slot.candidates, &mut slot.candidate_ptrs);
        slot.plan = Plan {
            shell_argv: slot.shell_argv.as_mut_ptr(),
            envp: slot.env_ptrs.as_ptr(),
            candidates: slot.candidate_ptrs.as_ptr(),
            n_candidates: slot.candidates.len(),
            cwd: slot.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            creds: ids.map(|(uid, gid)| (uid, gid, slot.groups.as_ptr(), slot.groups.len())),
            fds: req.stdio.map(|fd| fd.as_raw_fd()),
            to_reset: NOT_DEFAULT.load(Ordering::Relaxed),
            errno: &slot.errno,
        };
        slot.busy.store(1, Ordering::Relaxed);

        // SAFETY: the child runs `child_main` on the slot's stack and reads
        // only the slot, which nobody writes until the kernel has zeroed
        // `busy`; it makes raw system calls only (no errno: it shares our
        // thread-local storage). No handler of ours can run in it before it
        // resets dispositions: the daemon installs none (see `signals`).
        let pid = unsafe {
            let top = slot
                .stack
                .as_mut_ptr()
                .add(slot.stack.capacity())
                .cast::<libc::c_void>();
            libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD,
                (&raw mut slot.plan).cast(),
                std::ptr::null_mut::<libc::pid_t>(),
                std::ptr::null_mut::<libc::c_void>(),
                slot.busy.as_ptr(),
            )
        };
        if pid < 0 {
            slot.busy.store(0, Ordering::Relaxed);
            return Err(io::Error::last_os_error());
        }
        slot.pid = pid;
        Ok(pid as u32)
    }

    /// `program: reason` for a child that exited because its exec failed.
    pub fn start_error(pid: u32) -> Option<io::Error> {
        let pid = pid as i32;
        let mut pool = pool();
        let from_slot = pool.slots.iter().find_map(|s| {
            if s.pid != pid || s.busy.load(Ordering::Acquire) != 0 {
                return None;
            }
            let errno = s.errno.swap(0, Ordering::Relaxed);
            (errno != 0).then(|| (errno, s.argv[0].clone()))
        });
        let (errno, program) = from_slot.or_else(|| {
            let at = pool.failed.iter().position(|f| f.0 == pid)?;
            pool.failed.remove(at).map(|(_, e, p)| (e, p))
        })?;
        let e = io::Error::from_raw_os_error(errno);
        Some(io::Error::new(
            e.kind(),
            format!("{}: {e}", program.to_string_lossy()),
        ))
    }

    /// A system call without libc's wrapper: the child must not write
    /// `errno`, which lives in the parent thread's storage. Returns the
    /// result or `-errno`.
    unsafe fn sys(n: c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
        let ret: isize;
        // SAFETY: the caller passes a valid system call and arguments.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => ret,
                in("rdi") a,
                in("rsi") b,
                in("rdx") c,
                in("r10") d,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret
    }

    /// The child between clone and exec.
    extern "C" fn child_main(arg: *mut libc::c_void) -> c_int {
        // SAFETY: `arg` is the slot's plan, alive and unchanged until we
        // exec or exit; every pointer in it is into the slot.
        unsafe {
            let p = &*arg.cast::<Plan>();
            let fail = |r: isize| -> ! {
                (*p.errno).store(-r as i32, Ordering::Release);
                loop {
                    sys(libc::SYS_exit_group, 127, 0, 0, 0);
                }
            };
            // Handlers do not survive exec, but one must not run before
            // it; ignored signals (Rust ignores SIGPIPE) would survive it.
            // struct kernel_sigaction: SIG_DFL, no flags, empty mask.
            let dfl = [0u64; 4];
            for sig in 1..=64 {
                if p.to_reset & (1 << (sig - 1)) != 0
                    && sig != libc::SIGKILL
                    && sig != libc::SIGSTOP
                {
                    sys(
                        libc::SYS_rt_sigaction,
                        sig as usize,
                        dfl.as_ptr() as usize,
                        0,
                        8,
                    );
                }
            }
            let ok = |r: isize| if r < 0 { fail(r) } else { r };
            ok(sys(libc::SYS_setpgid, 0, 0, 0, 0));
            if let Some((uid, gid, groups, n)) = p.creds {
                ok(sys(libc::SYS_setgroups, n, groups as usize, 0, 0));
                ok(sys(
                    libc::SYS_setresgid,
                    gid as usize,
                    gid as usize,
                    gid as usize,
                    0,
                ));
                ok(sys(
                    libc::SYS_setresuid,
                    uid as usize,
                    uid as usize,
                    uid as usize,
                    0,
                ));
            }
            if !p.cwd.is_null() {
                ok(sys(libc::SYS_chdir, p.cwd as usize, 0, 0, 0));
            }
            for (target, fd) in p.fds.into_iter().enumerate() {
                ok(sys(libc::SYS_dup2, fd as usize, target, 0, 0));
            }
            let empty = 0u64;
            sys(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as usize,
                &raw const empty as usize,
                0,
                8,
            );

            // execvp's search, with its rules for which errors go on.
            let argv = p.shell_argv.add(1);
            let envp = p.envp as usize;
            let mut denied = false;
            let mut last = -(libc::ENOENT as isize);
            for i in 0..p.n_candidates {
                let path = *p.candidates.add(i);
                last = sys(libc::SYS_execve, path as usize, argv as usize, envp, 0);
                match -last as c_int {
                    libc::ENOEXEC => {
                        *argv = path;
                        fail(sys(
                            libc::SYS_execve,
                            SHELL.as_ptr() as usize,
                            p.shell_argv as usize,
                            envp,
                            0,
                        ));
                    }
                    libc::EACCES => denied = true,
                    libc::ENOENT
                    | libc::ENOTDIR
                    | libc::ESTALE
                    | libc::ENODEV
                    | libc::ETIMEDOUT => {}
                    _ => fail(last),
                }
            }
            fail(if denied {
                -(libc::EACCES as isize)
            } else {
                last
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::os::fd::{AsFd, OwnedFd};

        #[test]
        fn a_slot_taken_for_good_costs_a_bounded_wait_not_a_stall() {
            // Every slot busy with a child that never execs (say, one
            // stopped by a debugger): the spawn waits SLOT_WAIT for the
            // oldest, then adds a slot rather than stall the daemon.
            const FAKE: i32 = -7;
            let faked: Vec<usize> = {
                let mut pool = pool();
                while pool.slots.len() < max_starting() {
                    pool.slots.push(new_slot());
                }
                let mut faked = Vec::new();
                for (i, s) in pool.slots.iter().enumerate() {
                    if s.busy
                        .compare_exchange(0, FAKE, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        faked.push(i);
                    }
                }
                faked
            };
            let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let started = std::time::Instant::now();
            let pid = spawn(Request {
                argv: vec![CString::new("/bin/true").unwrap()],
                envp: vec![],
                cwd: None,
                creds: None,
                stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
            })
            .unwrap();
            let waited = started.elapsed();
            {
                let pool = pool();
                for i in faked {
                    let _ = pool.slots[i].busy.compare_exchange(
                        FAKE,
                        0,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
            }
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            assert!(matches!(
                status,
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            ));
            assert!(waited < std::time::Duration::from_secs(2), "{waited:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsFd, OwnedFd};

    type Spawner = fn(Request<'_>) -> io::Result<u32>;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    fn cs(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    /// Runs `sh -c script` with stdout to a pipe and returns what it wrote.
    fn run(spawner: Spawner, argv: &[&str]) -> String {
        // As the daemon does: nothing inherited by the test may leak.
        crate::os::init_process();
        let (r, w) = pipe();
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let req = Request {
            argv: argv.iter().map(|a| cs(a)).collect(),
            envp: vec![
                Cow::Owned(cs("PATH=/usr/bin:/bin")),
                Cow::Borrowed(c"GREETING=hi there"),
            ],
            cwd: Some(cs("/tmp")),
            creds: None,
            stdio: [null.as_fd(), w.as_fd(), w.as_fd()],
        };
        let pid = spawner(req).unwrap();
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        assert!(matches!(
            status,
            Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
        ));
        out
    }

    const PROBE: &str = "echo \"$GREETING\"; pwd; \
                         [ \"$(cut -d' ' -f5 /proc/$$/stat)\" = \"$$\" ] && echo own-group";

    fn check(out: &str) {
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("hi there"), "{out}");
        assert_eq!(lines.next(), Some("/tmp"), "{out}");
        assert_eq!(lines.next(), Some("own-group"), "{out}");
    }

    #[test]
    fn clone_exec_sets_up_the_child_like_the_std_path() {
        check(&run(spawn, &["sh", "-c", PROBE]));
        check(&run(spawn_std, &["sh", "-c", PROBE]));
    }

    #[test]
    fn the_child_starts_with_no_signal_blocked_or_ignored() {
        // Rust ignores SIGPIPE in this process, whatever started us may
        // have ignored more, and the daemon blocks the signals it reads by
        // signalfd (`init_process`, called by `run`); the program must
        // start clean.
        let masks = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
        // As nohup ignores SIGHUP: an ignored signal we inherited (the
        // daemon notes these at start, in `init_process`).
        // SAFETY: setting a disposition to SIG_IGN.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
        crate::os::init_process();
        let mine = nix::sys::signal::SigSet::thread_get_mask().unwrap();
        assert!(!cfg!(target_os = "linux") || mine.contains(nix::sys::signal::Signal::SIGCHLD));
        assert_eq!(
            run(spawn, &masks),
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
        );
        // The portable path resets the mask and SIGPIPE (signal 13: bit 12
        // of SigIgn), not other ignored signals.
        let std_masks = run(spawn_std, &masks);
        let ign = std_masks
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("SigIgn:\t"))
            .unwrap();
        assert_eq!(
            u64::from_str_radix(ign, 16).unwrap() & (1 << 12),
            0,
            "{std_masks}"
        );
        assert!(std_masks.starts_with("SigBlk:\t0000000000000000\n"));
    }

    #[test]
    fn the_child_has_only_descriptors_0_1_2() {
        crate::os::init_process();
        for spawner in [spawn as Spawner, spawn_std] {
            let (r, w) = pipe();
            let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let req = Request {
                argv: vec![cs("/bin/sh"), cs("-c"), cs("read x")],
                envp: vec![],
                cwd: None,
                creds: None,
                stdio: [r.as_fd(), null.as_fd(), null.as_fd()],
            };
            let pid = spawner(req).unwrap();
            drop(r);
            // The shell ends up waiting on its stdin; look at it from
            // outside once the dynamic loader has closed its own files.
            let fds = |pid| -> Vec<String> {
                let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| {
                        d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                v.sort();
                v
            };
            let mut seen = fds(pid);
            for _ in 0..500 {
                if seen == ["0", "1", "2"] {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                seen = fds(pid);
            }
            drop(w);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            assert_eq!(seen, ["0", "1", "2"]);
        }
    }

    fn no_stdio(null: &OwnedFd) -> [BorrowedFd<'_>; 3] {
        [null.as_fd(), null.as_fd(), null.as_fd()]
    }

    fn request<'a>(argv: &[&str], stdio: [BorrowedFd<'a>; 3]) -> Request<'a> {
        Request {
            argv: argv.iter().map(|a| cs(a)).collect(),
            envp: vec![],
            cwd: None,
            creds: None,
            stdio,
        }
    }

    /// The exit code of `pid`, and why it could not exec, if it could not.
    fn outcome(pid: u32) -> (i32, Option<io::Error>) {
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        let Ok(nix::sys::wait::WaitStatus::Exited(_, code)) = status else {
            panic!("{status:?}");
        };
        (code, start_error(pid))
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let e = spawn_std(request(&["/nonexistent/prog"], no_stdio(&null))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // The clone path does not wait for the exec: the child reports it.
        match spawn(request(&["/nonexistent/prog"], no_stdio(&null))) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            Ok(pid) => {
                let (code, why) = outcome(pid);
                assert_eq!(code, 127);
                assert_eq!(why.map(|e| e.kind()), Some(io::ErrorKind::NotFound));
                assert!(start_error(pid).is_none(), "reported once");
            }
        }
        // Not found anywhere in PATH; an empty name is not looked up.
        for name in ["no-such-program-wininetd", ""] {
            // The clone path reports it from the child, std's at once.
            match spawn(request(&[name], no_stdio(&null))) {
                Ok(pid) => {
                    let (code, why) = outcome(pid);
                    assert_eq!(code, 127);
                    assert_eq!(
                        why.map(|e| e.kind()),
                        Some(io::ErrorKind::NotFound),
                        "{name:?}"
                    );
                }
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{name:?}"),
            }
        }
        // No argv at all is refused, not a panic.
        for spawner in [spawn as Spawner, spawn_std] {
            let e = spawner(request(&[], no_stdio(&null))).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn a_file_without_exec_permission_is_refused_and_a_script_without_a_shebang_runs_in_sh() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "echo from-sh \"$1\"\n").unwrap();
        let path = script.to_str().unwrap();
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();

        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        match spawn(request(&[path], no_stdio(&null))) {
            Ok(pid) => {
                let (code, why) = outcome(pid);
                assert_eq!(code, 127);
                assert_eq!(why.map(|e| e.kind()), Some(io::ErrorKind::PermissionDenied));
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied),
        }

        // execvp's rule, kept by the clone path (std's Command lacks it).
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_eq!(run(spawn, &[path, "arg one"]), "from-sh arg one\n");
        }
    }

    #[test]
    fn children_started_back_to_back_each_get_their_own_arguments() {
        // No wait for exec between spawns: each child must keep reading
        // its own slot while the next ones are being started.
        crate::os::init_process();
        let (r, w) = pipe();
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let n = 200;
        let pids: Vec<u32> = (0..n)
            .map(|i| {
                let arg = format!("child-{i}");
                spawn(request(
                    &["/bin/echo", &arg],
                    [null.as_fd(), w.as_fd(), null.as_fd()],
                ))
                .unwrap()
            })
            .collect();
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        for pid in pids {
            assert_eq!(outcome(pid).0, 0);
        }
        let mut got: Vec<&str> = out.lines().collect();
        got.sort();
        let mut want: Vec<String> = (0..n).map(|i| format!("child-{i}")).collect();
        want.sort();
        assert_eq!(got, want);
    }
}
