//! The fork/exec itself, from a fully prepared request.
//!
//! On Linux x86-64 wininetd clones with `CLONE_VM | CLONE_CHILD_CLEARTID`
//! on a stack of its own pool and execs with prebuilt argv/envp: no copy of
//! the address space, no allocation or lock in the child, and no wait for
//! the exec (vfork would block the one thread that accepts until the
//! program's loader has started) unless two children per CPU are still
//! before theirs (see `max_starting`). The kernel zeroes a word in the slot when
//! the child has exec'd or exited, which is when the slot may be reused; a
//! failed exec leaves its errno there for [`start_error`]. A child that
//! takes another identity is cloned without `CLONE_VM`: it must never run
//! as that user inside the daemon's memory. A `CLONE_VM` child also shares
//! the descriptor table (`CLONE_FILES`) and takes a private one holding
//! only the few lowest descriptors (`close_range` with
//! `CLOSE_RANGE_UNSHARE`), then receives its three over its slot's socket:
//! copying the table, and closing every copied connection again at exec,
//! would cost each spawn time in proportion to the connections the daemon
//! holds (a slowloris' thousands). Until the table has grown past a
//! hundred-odd descriptors it is copied instead: that is cheaper than the
//! send and receive. Other Unix systems (and other
//! architectures) use `std::process::Command` to fork, and the same child
//! setup and PATH search as the clone path.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libc::{c_char, c_int};

/// What is fixed for a service's program: built once per config.
#[derive(Debug)]
pub struct Program {
    /// argv; `argv[0]` is also the program, looked up in PATH without '/'.
    pub argv: Vec<CString>,
    /// Where execvp would look for `argv[0]`, in order.
    pub candidates: Vec<CString>,
    pub cwd: Option<CString>,
}

impl Program {
    /// `path` is the program's own PATH (`None`: execvp's default), so the
    /// search is the one a shell in the program's environment would make.
    /// `argv0` replaces argv[0] after the program is looked up by it
    /// (inetd.conf's explicit argv[0], xinetd's NAMEINARGS).
    pub fn new(
        mut argv: Vec<CString>,
        argv0: Option<CString>,
        path: Option<&[u8]>,
        cwd: Option<CString>,
    ) -> Program {
        let candidates = argv
            .first()
            .map_or_else(Vec::new, |name| candidates(name, path));
        if let (Some(a0), Some(first)) = (argv0, argv.first_mut()) {
            *first = a0;
        }
        Program {
            argv,
            candidates,
            cwd,
        }
    }
}

/// Where execvp would look for `name` with `path` as PATH.
fn candidates(name: &CStr, path: Option<&[u8]>) -> Vec<CString> {
    let bytes = name.to_bytes();
    if bytes.contains(&b'/') {
        return vec![name.to_owned()];
    }
    if bytes.is_empty() {
        return Vec::new(); // execvp's ENOENT
    }
    path.unwrap_or(b"/bin:/usr/bin")
        .split(|&b| b == b':')
        .filter_map(|dir| {
            let mut full = dir.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(bytes);
            CString::new(full).ok()
        })
        .collect()
}

/// Everything the child needs, computed in the parent.
pub struct Request<'a> {
    pub program: Arc<Program>,
    /// The service's environment, `NAME=value` each, shared by its programs.
    pub env: Arc<[CString]>,
    /// This connection's variables, `NAME=value`; each replaces the
    /// variable of that name in `env`.
    pub extra: Vec<CString>,
    pub creds: Option<Arc<Creds>>,
    /// What becomes fd 0, 1 and 2 (all >= 3 in our process, see
    /// `init_process`); the same descriptor may be given more than once.
    pub stdio: [BorrowedFd<'a>; 3],
}

/// The raw identity a child takes: uid, gid and the groups array.
type RawCreds = (libc::uid_t, libc::gid_t, *const libc::gid_t, usize);

impl Request<'_> {
    /// The working directory for the child, or null to keep ours.
    fn cwd_ptr(&self) -> *const c_char {
        self.program
            .cwd
            .as_ref()
            .map_or(std::ptr::null(), |c| c.as_ptr())
    }

    /// The identity as the child's plan holds it (the pointer stays valid
    /// while `self.creds` lives).
    fn raw_creds(&self) -> Option<RawCreds> {
        self.creds
            .as_ref()
            .map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len()))
    }
}

/// The identity to take before exec.
#[derive(Debug)]
pub struct Creds {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

const SHELL: &CStr = c"/bin/sh";

/// The signals whose disposition is not SIG_DFL in this process (bit n:
/// signal n + 1), which a child must reset before exec; all of them until
/// [`note_dispositions`] has looked.
static NOT_DEFAULT: AtomicU64 = AtomicU64::new(u64::MAX);

/// The open-files limit the daemon started with, which its programs get
/// back; unset when the daemon did not raise its own.
static CHILD_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the daemon's soft open-files limit to its hard one: a `pipe` or
/// TLS session takes three descriptors, and service managers start daemons
/// at a soft 1024 (systemd's default), a few hundred sessions. Programs
/// get the limit back, as systemd asks: one using select(2) breaks on
/// descriptors past 1024.
pub fn raise_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 || rl.rlim_cur >= rl.rlim_max {
            return;
        }
        let started = rl;
        // macOS refuses an unlimited soft limit for descriptors.
        rl.rlim_cur = rl.rlim_max.min(1 << 20);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 {
            let _ = CHILD_NOFILE.set(started);
        }
    }
}

/// The pointer arrays a child reads, rebuilt in place for each child.
#[derive(Default)]
struct Pointers {
    /// `[/bin/sh, argv..., NULL]`: argv starts at index 1; a script
    /// without `#!` runs as `/bin/sh path args` (execvp's rule).
    shell_argv: Vec<*const c_char>,
    env: Vec<*const c_char>,
    candidates: Vec<*const c_char>,
}

impl Pointers {
    fn fill(&mut self, program: &Program, env: &[CString], extra: &[CString]) {
        self.shell_argv.clear();
        self.shell_argv.push(SHELL.as_ptr());
        self.shell_argv
            .extend(program.argv.iter().map(|c| c.as_ptr()));
        self.shell_argv.push(std::ptr::null());
        self.env.clear();
        fn name(kv: &CString) -> &[u8] {
            let b = kv.as_bytes();
            &b[..b.iter().position(|&c| c == b'=').unwrap_or(b.len())]
        }
        // Each name found once, not once per pair compared: this runs per
        // connection, a dozen connection variables against the template's.
        const NAMES: usize = 32;
        let mut names: [&[u8]; NAMES] = [&[]; NAMES];
        for (n, e) in names.iter_mut().zip(extra) {
            *n = name(e);
        }
        let overridden = |kv: &CString| {
            if extra.len() > NAMES {
                return extra.iter().any(|e| name(e) == name(kv));
            }
            let b = kv.as_bytes();
            names[..extra.len()]
                .iter()
                .any(|n| b.len() > n.len() && b[n.len()] == b'=' && b.starts_with(n))
        };
        self.env
            .extend(env.iter().filter(|kv| !overridden(kv)).map(|c| c.as_ptr()));
        self.env.extend(extra.iter().map(|c| c.as_ptr()));
        self.env.push(std::ptr::null());
        self.candidates.clear();
        self.candidates
            .extend(program.candidates.iter().map(|c| c.as_ptr()));
        self.candidates.push(std::ptr::null());
    }
}

/// execvp's search over `candidates`, with its rules for which errors go
/// on, and for a file the kernel cannot execute (ENOEXEC: run it with
/// `/bin/sh`). `execve` returns the errno of a failed exec. Returns the
/// errno to report (it returns only on failure).
///
/// # Safety
/// Every pointer is valid and NUL-terminated as built by [`Pointers`].
unsafe fn exec_search(
    shell_argv: *mut *const c_char,
    envp: *const *const c_char,
    candidates: *const *const c_char,
    execve: impl Fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int,
) -> c_int {
    // SAFETY: per the contract above.
    unsafe {
        let argv = shell_argv.add(1);
        let mut denied = false;
        let mut last = libc::ENOENT;
        let mut i = 0;
        while !(*candidates.add(i)).is_null() {
            let path = *candidates.add(i);
            i += 1;
            last = execve(path, argv, envp);
            match last {
                libc::ENOEXEC => {
                    *argv = path;
                    return execve(SHELL.as_ptr(), shell_argv, envp);
                }
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => return last,
            }
        }
        if denied { libc::EACCES } else { last }
    }
}

/// Starts the program; returns its pid. The program gets its own session
/// (no controlling terminal), default signal dispositions, an empty signal
/// mask and exactly the descriptors 0, 1 and 2. On the clone path an exec
/// that fails shows as the child's exit (127), with the reason from
/// [`start_error`].
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn spawn(req: Request<'_>) -> io::Result<u32> {
    if portable_forced() {
        return spawn_std(req);
    }
    clone::spawn(req)
}

/// Test hook: `WININETD_SPAWN=portable` in the daemon's environment makes
/// it start programs by the portable path here too, so that the tests of
/// the whole daemon can run against it (read once).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn portable_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("WININETD_SPAWN").is_some_and(|v| v == "portable"))
}

/// Sets up the channels of the first slots while descriptor numbers are
/// low: a child copies only the descriptors below its slot's channel.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn prepare() {
    clone::prepare();
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn prepare() {}

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

/// Drops what the slots still hold of programs already started (their
/// connection variables, program, pointer tables): the last ones of a
/// crowd were allocated among its pages and, kept, would keep those pages
/// after it (~35 pages for 3,000 `pipe` sessions).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn forget_started() {
    clone::forget_started();
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn forget_started() {}

/// Looks at every signal's disposition once (called at start, after which
/// the daemon changes none: it reads signals by signalfd), so a child
/// resets only those (usually SIGPIPE alone) instead of making 62 system
/// calls before its exec.
pub fn note_dispositions() {
    let mut set = 0u64;
    for sig in 1..=64 {
        if !is_default(sig) {
            set |= 1 << (sig - 1);
        }
    }
    NOT_DEFAULT.store(set, Ordering::Relaxed);
}

/// Whether `sig` has its default disposition (an invalid number has).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn is_default(sig: usize) -> bool {
    // struct kernel_sigaction; handler first. Raw, so that the signals
    // libc keeps for itself are seen too.
    let mut old = [0u64; 4];
    // SAFETY: rt_sigaction with no new action only reads into `old`.
    let r = unsafe { clone::sys(libc::SYS_rt_sigaction, sig, 0, old.as_mut_ptr() as usize, 8) };
    r == 0 && old[0] == 0
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn is_default(sig: usize) -> bool {
    // SAFETY: a query only; `old` is an out value.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig as c_int, std::ptr::null(), &mut old) != 0
            || old.sa_sigaction == libc::SIG_DFL
    }
}

/// Sets `sig` to SIG_DFL in a forked child. On Linux by the system call:
/// libc refuses the signals it keeps for itself, which may be ignored.
#[cfg_attr(all(target_os = "linux", target_arch = "x86_64"), allow(dead_code))]
unsafe fn reset_signal(sig: c_int) {
    // SAFETY: setting a disposition to the default, in the child.
    unsafe {
        #[cfg(target_os = "linux")]
        {
            // struct kernel_sigaction: SIG_DFL, no flags, empty mask.
            let dfl = [0u64; 4];
            libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), 0usize, 8usize);
        }
        #[cfg(not(target_os = "linux"))]
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Raw pointers the forked child reads (its own copy of our memory).
struct ChildPlan {
    ptrs: Pointers,
    cwd: *const c_char,
    creds: Option<RawCreds>,
    to_reset: u64,
}

// SAFETY: only read in the forked child, whose copy it is; the parent
// keeps the pointees alive until `spawn` returns (std waits for the exec).
unsafe impl Send for ChildPlan {}
unsafe impl Sync for ChildPlan {}

/// The portable path: std forks and sets up the descriptors; the child
/// then does what the clone path's does (session, signals, identity,
/// directory, the same PATH search), so both start a program alike.
#[cfg_attr(all(target_os = "linux", target_arch = "x86_64"), allow(dead_code))]
pub fn spawn_std(req: Request<'_>) -> io::Result<u32> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let Some(first) = req.program.argv.first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no program"));
    };
    let mut ptrs = Pointers::default();
    ptrs.fill(&req.program, &req.env, &req.extra);
    let mut plan = ChildPlan {
        ptrs,
        cwd: req.cwd_ptr(),
        creds: req.raw_creds(),
        to_reset: NOT_DEFAULT.load(Ordering::Relaxed),
    };
    // std runs `program` only if our own exec fails without an error
    // (never): the search is ours.
    let mut cmd = Command::new(std::ffi::OsStr::from_bytes(first.as_bytes()));
    cmd.env_clear();
    // SAFETY: only async-signal-safe calls between fork and exec; the
    // plan's pointees outlive `spawn`, which waits for the exec.
    unsafe {
        cmd.pre_exec(move || {
            let p = &mut plan;
            let err = |r: c_int| io::Error::from_raw_os_error(r);
            let last = || io::Error::last_os_error();
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if rc != 0 {
                return Err(err(rc));
            }
            for sig in 1..=64 {
                if p.to_reset & (1 << (sig - 1)) != 0
                    && sig != libc::SIGKILL
                    && sig != libc::SIGSTOP
                {
                    reset_signal(sig);
                }
            }
            if libc::setsid() < 0 {
                return Err(last());
            }
            if let Some(r) = CHILD_NOFILE.get() {
                libc::setrlimit(libc::RLIMIT_NOFILE, r);
            }
            if let Some((uid, gid, groups, n)) = p.creds
                && (libc::setgroups(n as _, groups) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(last());
            }
            if !p.cwd.is_null() && libc::chdir(p.cwd) != 0 {
                return Err(last());
            }
            let e = exec_search(
                p.ptrs.shell_argv.as_mut_ptr(),
                p.ptrs.env.as_ptr(),
                p.ptrs.candidates.as_ptr(),
                |path, argv, envp| {
                    libc::execve(path, argv, envp);
                    io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO)
                },
            );
            Err(err(e))
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
    use std::collections::HashMap;
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::{Arc, LazyLock, Mutex, OnceLock};
    use std::time::Duration;

    use libc::{c_char, c_int, c_long};

    use super::{CHILD_NOFILE, NOT_DEFAULT, Pointers, Program, Request, exec_search};

    /// Reserved per slot; only the pages the child touches become resident.
    const STACK_BYTES: usize = 64 * 1024;
    /// How long a spawn waits for a child to exec when every slot is taken,
    /// before it adds a slot anyway (a child stopped before its exec must
    /// not stall the daemon).
    const SLOT_WAIT: Duration = Duration::from_millis(10);

    /// The highest descriptor a child was given: the daemon's table has
    /// been at least this large (a table never shrinks).
    static HIGHEST_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

    /// From this size on, a child shares the table rather than copy it.
    const SHARE_FROM_FD: c_int = 128;

    /// Whether a child given descriptors up to `high` shares the table and
    /// takes its three over the channel: once the table has ever grown to
    /// [`SHARE_FROM_FD`]. Below, copying the table at clone costs less
    /// than sending three descriptors and receiving them.
    fn share_table(highest: &std::sync::atomic::AtomicI32, high: c_int) -> bool {
        highest.fetch_max(high, Ordering::Relaxed).max(high) >= SHARE_FROM_FD
    }

    /// What the child reads: raw pointers into its slot, which the parent
    /// leaves alone until the child has exec'd or exited (or, without
    /// `CLONE_VM`, into the child's own copy of it).
    #[derive(Clone, Copy)]
    struct Plan {
        shell_argv: *mut *const c_char,
        envp: *const *const c_char,
        candidates: *const *const c_char,
        cwd: *const c_char,
        creds: Option<super::RawCreds>,
        fds: [c_int; 3],
        errno: *const AtomicI32,
        /// Where a child without shared memory reports a failed exec
        /// (`[pid, errno]`), or -1.
        report: c_int,
        /// Bit n set: signal n + 1 is not SIG_DFL here, so the child resets it.
        to_reset: u64,
        /// The slot's receiving socket when the child shares our descriptor
        /// table and receives `fds` from it, else -1.
        chan: c_int,
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
        /// Its child was waited for in vain once: it is not waited for
        /// again, nor counted as starting (it may be stopped for good).
        stuck: bool,
        stack: Vec<u128>,
        plan: Plan,
        program: Option<Arc<Program>>,
        env: Option<Arc<[std::ffi::CString]>>,
        extra: Vec<std::ffi::CString>,
        creds: Option<Arc<super::Creds>>,
        ptrs: Pointers,
        /// Sending, receiving end of the slot's channel (a datagram
        /// socketpair) for the child's three descriptors.
        chan: Option<(OwnedFd, OwnedFd)>,
    }

    // SAFETY: the raw pointers point into the slot's own vectors (or static
    // strings); the slot only moves between threads under the pool's lock.
    unsafe impl Send for Slot {}

    struct Pool {
        /// Boxed so a slot never moves when the vector grows: a running
        /// child reads it, and the kernel writes its `busy` word.
        #[allow(clippy::vec_box)]
        slots: Vec<Box<Slot>>,
        /// The slot of children cloned without `CLONE_VM`: free again as
        /// soon as the clone returns (the child has its own copy).
        private: Box<Slot>,
        /// Failed execs whose slot was reused (or whose child had its own
        /// memory) before the reaper asked, by pid. Every child is reaped
        /// and asked about, so this holds at most the unreaped children.
        failed: HashMap<i32, (i32, Arc<Program>)>,
        /// The program of each child cloned without `CLONE_VM`, until it is
        /// reaped (for the reason of a failed exec).
        private_children: HashMap<i32, Arc<Program>>,
        /// Read end, write end of the pipe such children report on.
        reports: Option<(OwnedFd, OwnedFd)>,
        spawned: u64,
    }

    static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| {
        Mutex::new(Pool {
            slots: Vec::new(),
            private: new_slot(),
            failed: HashMap::new(),
            private_children: HashMap::new(),
            reports: None,
            spawned: 0,
        })
    });

    /// Children allowed between clone and exec at once: two per CPU. When
    /// that many have not reached their exec yet the CPUs are saturated,
    /// and starting more would only have them queue for the CPUs together
    /// and finish late together; waiting for the oldest instead keeps the
    /// other connections in the kernel's accept queue, first come first
    /// served, and bounds the slots' memory (figures: the README).
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
            stuck: false,
            // Reserved, never written by us: only the few pages the child
            // touches become resident.
            stack: Vec::with_capacity(STACK_BYTES / 16),
            plan: Plan {
                shell_argv: std::ptr::null_mut(),
                envp: std::ptr::null(),
                candidates: std::ptr::null(),
                cwd: std::ptr::null(),
                creds: None,
                fds: [-1; 3],
                errno: std::ptr::null(),
                report: -1,
                to_reset: u64::MAX,
                chan: -1,
            },
            program: None,
            env: None,
            extra: Vec::new(),
            creds: None,
            ptrs: Pointers::default(),
            chan: None,
        })
    }

    /// The first slots, with their channels.
    pub fn prepare() {
        let mut pool = pool();
        while pool.slots.len() < max_starting() {
            let mut slot = new_slot();
            let _ = channel(&mut slot);
            pool.slots.push(slot);
        }
    }

    /// Whether a child can take a private descriptor table of its own
    /// choosing (Linux 5.9): close_range with CLOSE_RANGE_UNSHARE.
    fn can_unshare() -> bool {
        static CAN: OnceLock<bool> = OnceLock::new();
        *CAN.get_or_init(|| {
            // An empty range is refused (EINVAL) before anything is done;
            // a kernel without close_range says ENOSYS.
            // SAFETY: close_range with first > last changes nothing.
            let r =
                unsafe { libc::syscall(libc::SYS_close_range, 1, 0, libc::CLOSE_RANGE_UNSHARE) };
            r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
        })
    }

    /// The slot's channel, made on first use: its receiving end's number,
    /// or `None` when the child must copy the whole table instead.
    fn channel(slot: &mut Slot) -> Option<c_int> {
        if !can_unshare() {
            return None;
        }
        if slot.chan.is_none() {
            let flags = nix::sys::socket::SockFlag::SOCK_CLOEXEC;
            let pair = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Datagram,
                None,
                flags,
            )
            .ok()?;
            slot.chan = Some(pair);
        }
        slot.chan.as_ref().map(|(_, r)| r.as_raw_fd())
    }

    /// Room for the control message of three descriptors.
    type Cmsg = [u64; 8];

    /// Takes back and closes what waits on a slot's channel: descriptors
    /// no child received (it died first, or was never started). While they
    /// wait there they hold the connection open (bounded: one message per
    /// earlier child).
    fn drain_channel(recv: c_int) {
        for _ in 0..64 {
            let mut got = [-1; 3];
            // SAFETY: a non-blocking receive into our buffers.
            let r = unsafe { recv_fds(recv, &mut got, libc::MSG_DONTWAIT) };
            if r < 0 {
                break;
            }
            for fd in got.into_iter().filter(|&fd| fd >= 0) {
                // SAFETY: a descriptor just received, ours alone.
                unsafe { libc::close(fd) };
            }
        }
    }

    /// Sends `fds` on `sock`; first drops what a child that died before
    /// receiving left there.
    fn send_fds(sock: c_int, recv: c_int, fds: [c_int; 3]) -> io::Result<()> {
        drain_channel(recv);
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut cmsg: Cmsg = [0; 8];
        // SAFETY: msghdr and cmsg built over our own buffers, sized with
        // CMSG_SPACE for three descriptors.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(12) as usize;
            let c = libc::CMSG_FIRSTHDR(&raw const msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(12) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<c_int>(), 3);
            if libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Receives three descriptors (close-on-exec) into `fds`; the result or
    /// `-errno`. Raw system calls only: the child uses it.
    ///
    /// # Safety
    /// `sock` is a socket; nothing else is required.
    unsafe fn recv_fds(sock: c_int, fds: &mut [c_int; 3], flags: c_int) -> isize {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut cmsg: Cmsg = [0; 8];
        // SAFETY: msghdr over our own buffers; the control message is read
        // only within what the kernel wrote.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of::<Cmsg>();
            let r = sys(
                libc::SYS_recvmsg,
                sock as usize,
                &raw mut msg as usize,
                (flags | libc::MSG_CMSG_CLOEXEC) as usize,
                0,
            );
            if r < 0 {
                return r;
            }
            let c = libc::CMSG_FIRSTHDR(&raw const msg);
            if c.is_null()
                || (*c).cmsg_level != libc::SOL_SOCKET
                || (*c).cmsg_type != libc::SCM_RIGHTS
                || (*c).cmsg_len != libc::CMSG_LEN(12) as usize
                || msg.msg_flags & libc::MSG_CTRUNC != 0
            {
                return -(libc::EBADMSG as isize);
            }
            std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c).cast::<c_int>(), fds.as_mut_ptr(), 3);
            r
        }
    }

    fn is_free(slot: &Slot) -> bool {
        slot.busy.load(Ordering::Acquire) == 0
    }

    /// A slot as the choice of the next one sees it.
    #[derive(Clone, Copy, Debug)]
    struct View {
        free: bool,
        stuck: bool,
        seq: u64,
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Pick {
        Use(usize),
        /// Wait for this (the oldest starting) child first.
        Wait(usize),
        Grow,
    }

    /// A free slot if any; else wait for the oldest child still starting
    /// when `max` are; else a new slot. Stuck children do not count.
    fn pick(slots: &[View], max: usize) -> Pick {
        if let Some(i) = slots.iter().position(|s| s.free) {
            return Pick::Use(i);
        }
        let starting = slots.iter().filter(|s| !s.stuck).count();
        if starting < max {
            return Pick::Grow;
        }
        slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.stuck)
            .min_by_key(|(_, s)| s.seq)
            .map_or(Pick::Grow, |(i, _)| Pick::Wait(i))
    }

    /// Free slots to give back (highest index first) so that a pool that
    /// grew past stuck children shrinks back to `max`.
    fn surplus(slots: &[View], max: usize) -> Vec<usize> {
        let extra = slots.len().saturating_sub(max);
        (0..slots.len())
            .rev()
            .filter(|&i| slots[i].free)
            .take(extra)
            .collect()
    }

    fn views(slots: &[Box<Slot>]) -> Vec<View> {
        slots
            .iter()
            .map(|s| View {
                free: is_free(s),
                stuck: s.stuck,
                seq: s.seq,
            })
            .collect()
    }

    /// Waits (at most `SLOT_WAIT`) for the child of `slot` to exec or exit;
    /// whether it did.
    fn wait_for(slot: &Slot) -> bool {
        let deadline = std::time::Instant::now() + SLOT_WAIT;
        loop {
            let busy = slot.busy.load(Ordering::Acquire);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if busy == 0 {
                return true;
            }
            if left.is_zero() {
                return false;
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
                    slot.busy.as_ptr(),
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

    impl Pool {
        /// Moves a free slot's failed exec, if any, to `failed`.
        fn harvest(&mut self, at: usize) {
            let slot = &mut self.slots[at];
            let errno = slot.errno.swap(0, Ordering::Relaxed);
            if errno != 0
                && let Some(program) = slot.program.clone()
            {
                self.failed.insert(slot.pid, (errno, program));
            }
        }

        /// Gives back free slots past `max` (made while children were stuck).
        fn shrink(&mut self, max: usize) {
            for at in surplus(&views(&self.slots), max) {
                self.harvest(at);
                self.slots.swap_remove(at);
            }
        }

        /// A free slot for the next child: reuses, waits or grows.
        fn take_slot(&mut self) -> usize {
            let max = max_starting();
            self.shrink(max);
            let at = match pick(&views(&self.slots), max) {
                Pick::Use(at) => at,
                Pick::Grow => {
                    self.slots.push(new_slot());
                    self.slots.len() - 1
                }
                Pick::Wait(oldest) => {
                    if !wait_for(&self.slots[oldest]) {
                        self.slots[oldest].stuck = true;
                    }
                    match self.slots.iter().position(|s| is_free(s)) {
                        Some(at) => at,
                        None => {
                            self.slots.push(new_slot());
                            self.slots.len() - 1
                        }
                    }
                }
            };
            self.harvest(at);
            at
        }

        /// The write end of the report pipe (created on first use).
        fn report_fd(&mut self) -> io::Result<c_int> {
            if self.reports.is_none() {
                let flags = nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK;
                self.reports = Some(nix::unistd::pipe2(flags)?);
            }
            Ok(self.reports.as_ref().map_or(-1, |(_, w)| w.as_raw_fd()))
        }

        /// Moves every report of a failed exec from the pipe to `failed`.
        fn read_reports(&mut self) {
            let Some((r, _)) = &self.reports else { return };
            let mut buf = [0u8; 8 * 64];
            loop {
                // SAFETY: reading into our buffer from our pipe.
                let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    return;
                }
                // Writes of 8 bytes to a pipe are atomic: whole records.
                for rec in buf[..n as usize].chunks_exact(8) {
                    let pid = i32::from_ne_bytes(rec[..4].try_into().unwrap_or_default());
                    let errno = i32::from_ne_bytes(rec[4..].try_into().unwrap_or_default());
                    if let Some(program) = self.private_children.get(&pid) {
                        self.failed.insert(pid, (errno, Arc::clone(program)));
                    }
                }
            }
        }
    }

    pub fn spawn(req: Request<'_>) -> io::Result<u32> {
        if req.program.argv.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no program"));
        }
        let mut guard = pool();
        let pool = &mut *guard;
        // A child that takes another identity must not share our memory:
        // between its setresuid and its exec it would run as that user
        // inside the daemon (and make the daemon non-dumpable).
        let private = req.creds.is_some();
        let report = if private { pool.report_fd()? } else { -1 };
        pool.spawned += 1;
        let seq = pool.spawned;
        let slot: &mut Slot = if private {
            &mut pool.private
        } else {
            let at = pool.take_slot();
            &mut pool.slots[at]
        };
        slot.seq = seq;
        slot.stuck = false;
        slot.ptrs.fill(&req.program, &req.env, &req.extra);
        slot.plan = Plan {
            shell_argv: slot.ptrs.shell_argv.as_mut_ptr(),
            envp: slot.ptrs.env.as_ptr(),
            candidates: slot.ptrs.candidates.as_ptr(),
            cwd: req.cwd_ptr(),
            creds: req.raw_creds(),
            fds: req.stdio.map(|fd| fd.as_raw_fd()),
            to_reset: NOT_DEFAULT.load(Ordering::Relaxed),
            errno: &slot.errno,
            report,
            chan: -1,
        };
        // A child sharing our memory shares our descriptor table too, and
        // gets its three over the channel (see the module's doc), once the
        // table has grown: a small one is cheaper to copy than to send.
        let high = req
            .stdio
            .iter()
            .map(|fd| fd.as_raw_fd())
            .max()
            .unwrap_or(-1);
        if !private
            && share_table(&HIGHEST_FD, high)
            && let Some(recv) = channel(slot)
            && let Some((send, _)) = &slot.chan
            && send_fds(send.as_raw_fd(), recv, slot.plan.fds).is_ok()
        {
            slot.plan.chan = recv;
        }
        slot.program = Some(Arc::clone(&req.program));
        slot.env = Some(req.env);
        slot.extra = req.extra;
        slot.creds = req.creds;
        slot.busy.store(1, Ordering::Relaxed);

        let shared_files = if slot.plan.chan >= 0 {
            libc::CLONE_FILES
        } else {
            0
        };
        let (flags, clear_tid) = if private {
            (libc::SIGCHLD, std::ptr::null_mut())
        } else {
            (
                libc::CLONE_VM | shared_files | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD,
                slot.busy.as_ptr(),
            )
        };
        // SAFETY: the child runs `child_main` on the slot's stack and reads
        // only the slot, which nobody writes until the kernel has zeroed
        // `busy` (with CLONE_VM) or at all (without: it has a copy); it
        // makes raw system calls only (no errno: it may share our
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
                flags,
                (&raw mut slot.plan).cast(),
                std::ptr::null_mut::<libc::pid_t>(),
                std::ptr::null_mut::<libc::c_void>(),
                clear_tid,
            )
        };
        if private {
            // The child has its own copy of everything it reads.
            slot.busy.store(0, Ordering::Relaxed);
        }
        if pid < 0 {
            let err = io::Error::last_os_error();
            slot.busy.store(0, Ordering::Relaxed);
            // No child will take the descriptors sent for it: left on the
            // channel they would keep the refused connection open.
            if slot.plan.chan >= 0 {
                drain_channel(slot.plan.chan);
            }
            return Err(err);
        }
        slot.pid = pid;
        if private {
            pool.private_children.insert(pid, req.program);
        }
        Ok(pid as u32)
    }

    /// See [`super::forget_started`]. A slot's child is past its exec
    /// (or gone) once the slot is free; one that failed is noted first.
    pub fn forget_started() {
        let mut guard = pool();
        let pool = &mut *guard;
        // Slots made during the crowd (their stacks and sockets) go too,
        // not at the next spawn, which may be long in coming.
        pool.shrink(max_starting());
        for at in 0..pool.slots.len() {
            if is_free(&pool.slots[at]) {
                pool.harvest(at);
                forget(&mut pool.slots[at]);
            }
        }
        // Its child has a copy of its own.
        forget(&mut pool.private);
    }

    /// The next spawn sets all of these (and the plan pointing into them)
    /// again.
    fn forget(slot: &mut Slot) {
        slot.program = None;
        slot.env = None;
        slot.extra = Vec::new();
        slot.creds = None;
        slot.ptrs = Pointers::default();
    }

    /// `program: reason` for a child that exited because its exec failed.
    pub fn start_error(pid: u32) -> Option<io::Error> {
        let pid = pid as i32;
        let mut pool = pool();
        pool.read_reports();
        pool.private_children.remove(&pid);
        let from_slot = pool.slots.iter().find_map(|s| {
            if s.pid != pid || s.busy.load(Ordering::Acquire) != 0 {
                return None;
            }
            let errno = s.errno.swap(0, Ordering::Relaxed);
            (errno != 0).then(|| (errno, s.program.clone()))
        });
        let (errno, program) = match from_slot {
            Some((errno, program)) => (errno, program?),
            None => pool.failed.remove(&pid)?,
        };
        let e = io::Error::from_raw_os_error(errno);
        let name = program.argv.first().map(|c| c.to_string_lossy());
        Some(io::Error::new(
            e.kind(),
            format!("{}: {e}", name.unwrap_or_default()),
        ))
    }

    /// A system call without libc's wrapper: the child must not write
    /// `errno`, which lives in the parent thread's storage. Returns the
    /// result or `-errno`.
    pub(super) unsafe fn sys(n: c_long, a: usize, b: usize, c: usize, d: usize) -> isize {
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
            let mut fds = p.fds;
            let fail = |r: isize| -> ! {
                let errno = -r as i32;
                (*p.errno).store(errno, Ordering::Release);
                if p.report >= 0 {
                    let pid = sys(libc::SYS_getpid, 0, 0, 0, 0) as i32;
                    let mut rec = [0u8; 8];
                    rec[..4].copy_from_slice(&pid.to_ne_bytes());
                    rec[4..].copy_from_slice(&errno.to_ne_bytes());
                    sys(
                        libc::SYS_write,
                        p.report as usize,
                        rec.as_ptr() as usize,
                        8,
                        0,
                    );
                }
                loop {
                    sys(libc::SYS_exit_group, 127, 0, 0, 0);
                }
            };
            if p.chan >= 0 {
                // A table of our own with only the descriptors below the
                // channel (the daemon's first few), before anything else:
                // the shared one is the daemon's.
                let r = sys(
                    libc::SYS_close_range,
                    p.chan as usize + 1,
                    libc::c_uint::MAX as usize,
                    libc::CLOSE_RANGE_UNSHARE as usize,
                    0,
                );
                if r < 0 {
                    fail(r);
                }
                let r = recv_fds(p.chan, &mut fds, 0);
                if r < 0 {
                    fail(r);
                }
            }
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
            // Its own session: no controlling terminal (a program run for a
            // remote client must not reach the admin's terminal), and its
            // own process group for --kill-on-stop.
            ok(sys(libc::SYS_setsid, 0, 0, 0, 0));
            if let Some(r) = CHILD_NOFILE.get() {
                // Lowering a soft limit cannot fail.
                sys(
                    libc::SYS_setrlimit,
                    libc::RLIMIT_NOFILE as usize,
                    r as *const libc::rlimit as usize,
                    0,
                    0,
                );
            }
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
            for (target, fd) in fds.into_iter().enumerate() {
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
            let e = exec_search(p.shell_argv, p.envp, p.candidates, |path, argv, envp| {
                -sys(
                    libc::SYS_execve,
                    path as usize,
                    argv as usize,
                    envp as usize,
                    0,
                ) as c_int
            });
            fail(-(e as isize))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::ffi::CString;
        use std::os::fd::{AsFd, OwnedFd};

        fn view(free: bool, stuck: bool, seq: u64) -> View {
            View { free, stuck, seq }
        }

        #[test]
        fn a_started_program_s_variables_are_not_kept_once_forgotten() {
            let _serial = pool_test();
            crate::os::init_process();
            let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let mark = CString::new("WININETD_FORGET_TEST=1").unwrap();
            let held = |pool: &Pool| {
                pool.slots
                    .iter()
                    .chain([&pool.private])
                    .any(|s| s.extra.contains(&mark))
            };
            let pid = spawn(Request {
                program: Arc::new(Program::new(
                    vec![CString::new("/bin/true").unwrap()],
                    None,
                    None,
                    None,
                )),
                env: Arc::from(Vec::new()),
                extra: vec![mark.clone()],
                creds: None,
                stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
            })
            .unwrap();
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            assert!(held(&pool()), "the slot keeps its program's variables");
            forget_started();
            assert!(!held(&pool()), "kept after forget_started");
        }

        /// Held by the tests that look at or empty the one pool, so that one
        /// does not forget another's slots under it.
        static POOL_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

        fn pool_test() -> std::sync::MutexGuard<'static, ()> {
            POOL_TESTS.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// No free slot past `max_starting` (busy ones may be).
        #[track_caller]
        fn assert_no_spare_slots() {
            let pool = pool();
            let busy = pool.slots.iter().filter(|s| !is_free(s)).count();
            assert!(
                pool.slots.len() <= max_starting() + busy,
                "{} slots, {busy} busy",
                pool.slots.len()
            );
        }

        /// Seen by bench/held.sh: after a crowd the daemon kept two more
        /// descriptors (a spare slot's socket pair) until its next spawn.
        #[test]
        fn forgetting_after_a_crowd_gives_back_the_spare_slots() {
            let _serial = pool_test();
            crate::os::init_process();
            {
                let mut pool = pool();
                while pool.slots.len() < max_starting() + 3 {
                    pool.slots.push(new_slot());
                }
            }
            forget_started();
            assert_no_spare_slots();
        }

        #[test]
        fn a_small_table_is_copied_and_once_grown_it_is_shared_for_good() {
            let highest = std::sync::atomic::AtomicI32::new(-1);
            assert!(!share_table(&highest, 5), "a table of a few is copied");
            assert!(!share_table(&highest, SHARE_FROM_FD - 1));
            assert!(
                share_table(&highest, SHARE_FROM_FD),
                "a grown table is shared"
            );
            // The table does not shrink when its high descriptors close.
            assert!(share_table(&highest, 5), "still shared after a crowd");
        }

        #[test]
        fn a_stuck_slot_is_not_waited_for_again_and_the_pool_shrinks_back() {
            // Every slot busy: wait for the oldest starting child.
            let busy = [view(false, false, 5), view(false, false, 3)];
            assert_eq!(pick(&busy, 2), Pick::Wait(1));
            // Once waited for in vain, it no longer counts as starting:
            // the next one grows instead of waiting 10 ms again, and with
            // two stuck the spawn waits for the oldest of the others.
            let one_stuck = [view(false, false, 5), view(false, true, 3)];
            assert_eq!(pick(&one_stuck, 2), Pick::Grow);
            let grown = [
                view(false, false, 5),
                view(false, true, 3),
                view(false, false, 6),
            ];
            assert_eq!(pick(&grown, 2), Pick::Wait(0));
            let all_stuck = [view(false, true, 5), view(false, true, 3)];
            assert_eq!(pick(&all_stuck, 2), Pick::Grow);
            // A free slot is reused first.
            assert_eq!(
                pick(&[view(false, true, 1), view(true, false, 2)], 2),
                Pick::Use(1)
            );
            // Shrinking: free slots beyond `max` go, busy ones stay.
            let after = [
                view(true, false, 1),
                view(false, true, 2),
                view(true, false, 3),
                view(true, false, 4),
            ];
            assert_eq!(surplus(&after, 2), [3, 2]);
            assert_eq!(surplus(&after, 4), Vec::<usize>::new());
            let busy_tail = [
                view(true, false, 1),
                view(false, false, 2),
                view(false, true, 3),
            ];
            assert_eq!(surplus(&busy_tail, 2), [0]);
        }

        #[test]
        fn a_slot_taken_for_good_costs_one_bounded_wait_not_a_stall() {
            let _serial = pool_test();
            // Every slot busy with a child that never execs (say, one
            // stopped by a debugger): a spawn waits SLOT_WAIT for the
            // oldest once, marks it stuck and adds a slot; later spawns do
            // not wait for it again; once it goes, the pool shrinks back.
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
            let program = Arc::new(Program::new(
                vec![CString::new("/bin/true").unwrap()],
                None,
                None,
                None,
            ));
            let started = std::time::Instant::now();
            let mut pids = Vec::new();
            for _ in 0..2 * max_starting() {
                pids.push(
                    spawn(Request {
                        program: Arc::clone(&program),
                        env: Arc::from(Vec::new()),
                        extra: vec![],
                        creds: None,
                        stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
                    })
                    .unwrap(),
                );
            }
            let waited = started.elapsed();
            let stuck_fakes = {
                let pool = pool();
                let stuck = pool
                    .slots
                    .iter()
                    .filter(|s| s.busy.load(Ordering::Acquire) == FAKE && s.stuck)
                    .count();
                for s in &pool.slots {
                    let _ = s
                        .busy
                        .compare_exchange(FAKE, 0, Ordering::AcqRel, Ordering::Acquire);
                }
                stuck
            };
            for pid in pids {
                let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
                assert!(matches!(
                    status,
                    Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
                ));
            }
            // Each fake was waited for at most once: with SLOT_WAIT each,
            // far under 2 s even on a busy machine.
            assert!(stuck_fakes >= 1, "{stuck_fakes} of {faked:?}");
            assert!(waited < std::time::Duration::from_secs(2), "{waited:?}");
            // Stuck ones free again: the next spawns give the extra slots back.
            for _ in 0..4 {
                let pid = spawn(Request {
                    program: Arc::clone(&program),
                    env: Arc::from(Vec::new()),
                    extra: vec![],
                    creds: None,
                    stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
                })
                .unwrap();
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            }
            assert_no_spare_slots();
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
        run_program(spawner, None, argv)
    }

    /// `run`, exec'ing `program` (argv[0] is then only argv[0]).
    fn run_program(spawner: Spawner, program: Option<&str>, argv: &[&str]) -> String {
        // As the daemon does: nothing inherited by the test may leak.
        crate::os::init_process();
        let (r, w) = pipe();
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        // The program is looked up by its own name; argv[0] is then set.
        let mut words: Vec<CString> = argv.iter().map(|a| cs(a)).collect();
        let argv0 = program.map(|p| std::mem::replace(&mut words[0], cs(p)));
        let req = Request {
            program: Arc::new(Program::new(
                words,
                argv0,
                Some(b"/usr/bin:/bin"),
                Some(cs("/tmp")),
            )),
            env: Arc::from(vec![cs("PATH=/usr/bin:/bin"), cs("GREETING=hi there")]),
            extra: vec![],
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
    fn an_explicit_program_runs_with_the_argv0_given() {
        for spawner in [spawn as Spawner, spawn_std] {
            let out = run_program(spawner, Some("/bin/sh"), &["in.probe", "-c", "echo \"$0\""]);
            assert_eq!(out, "in.probe\n");
            // Looked up in PATH like argv[0] would be.
            let out = run_program(spawner, Some("sh"), &["other", "-c", "echo \"$0\""]);
            assert_eq!(out, "other\n");
        }
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
        // Both paths alike: the portable one (forced here, as on other
        // systems) resets every ignored signal too, not only SIGPIPE.
        for (name, spawner) in [("clone", spawn as Spawner), ("std", spawn_std)] {
            assert_eq!(
                run(spawner, &masks),
                "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n",
                "{name}"
            );
        }
    }

    #[test]
    fn each_program_starts_in_its_own_session() {
        // Field 6 of /proc/PID/stat is the session: the shell leads its own.
        let probe = "[ \"$(cut -d' ' -f6 /proc/$$/stat)\" = \"$$\" ] && echo own-session";
        for spawner in [spawn as Spawner, spawn_std] {
            assert_eq!(run(spawner, &["sh", "-c", probe]), "own-session\n");
        }
    }

    #[test]
    fn both_paths_search_the_programs_path_the_same_way() {
        // The program's PATH (from its template), not the daemon's nor one
        // in its environment; a script without `#!` runs in sh on both.
        crate::os::init_process();
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("wininetd-path-probe");
        std::fs::write(&script, "echo found \"$1\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = format!("/nonexistent:{}", dir.path().display());
        for spawner in [spawn as Spawner, spawn_std] {
            let (r, w) = pipe();
            let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let req = Request {
                program: Arc::new(Program::new(
                    vec![cs("wininetd-path-probe"), cs("x y")],
                    None,
                    Some(path.as_bytes()),
                    None,
                )),
                env: Arc::from(vec![cs("PATH=/usr/bin:/bin")]),
                extra: vec![],
                creds: None,
                stdio: [null.as_fd(), w.as_fd(), w.as_fd()],
            };
            let pid = spawner(req).unwrap();
            drop(w);
            let mut out = String::new();
            std::fs::File::from(r).read_to_string(&mut out).unwrap();
            assert_eq!(outcome(pid).0, 0, "{out}");
            assert_eq!(out, "found x y\n");
        }
    }

    #[test]
    fn the_connection_variables_replace_the_services_by_name() {
        crate::os::init_process();
        for spawner in [spawn as Spawner, spawn_std] {
            let (r, w) = pipe();
            let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let req = Request {
                program: Arc::new(Program::new(vec![cs("/usr/bin/env")], None, None, None)),
                env: Arc::from(vec![cs("A=1"), cs("CLIENT_IP=stale"), cs("B=2")]),
                extra: vec![cs("CLIENT_IP=127.0.0.1"), cs("CLIENT_PORT=9")],
                creds: None,
                stdio: [null.as_fd(), w.as_fd(), null.as_fd()],
            };
            let pid = spawner(req).unwrap();
            drop(w);
            let mut out = String::new();
            std::fs::File::from(r).read_to_string(&mut out).unwrap();
            assert_eq!(outcome(pid).0, 0);
            assert_eq!(out, "A=1\nB=2\nCLIENT_IP=127.0.0.1\nCLIENT_PORT=9\n");
        }
    }

    #[test]
    fn a_connection_variable_replaces_only_the_variable_of_its_exact_name() {
        let program = Program::new(vec![cs("/bin/true")], None, None, None);
        let env = [
            cs("CLIENT=a"),
            cs("CLIENT_IP=stale"),
            cs("CLIENT_IPS=b"),
            cs("CLIENT_I=c"),
            cs("PROXY_VERSION=old"),
        ];
        let strings = |p: &Pointers| -> Vec<String> {
            p.env
                .iter()
                .take_while(|c| !c.is_null())
                // SAFETY: each points into `env` or the extras, alive here.
                .map(|&c| unsafe { CStr::from_ptr(c) }.to_str().unwrap().to_string())
                .collect()
        };
        let mut p = Pointers::default();
        let extra = [cs("CLIENT_IP=1"), cs("PROXY_VERSION=2")];
        p.fill(&program, &env, &extra);
        assert_eq!(
            strings(&p),
            [
                "CLIENT=a",
                "CLIENT_IPS=b",
                "CLIENT_I=c",
                "CLIENT_IP=1",
                "PROXY_VERSION=2"
            ]
        );
        // More extras than the names kept on the stack: the same rule.
        let mut many: Vec<CString> = (0..40).map(|i| cs(&format!("X{i}=1"))).collect();
        many.push(cs("CLIENT_IP=1"));
        p.fill(&program, &env, &many);
        let got = strings(&p);
        assert_eq!(
            got[..4],
            [
                "CLIENT=a",
                "CLIENT_IPS=b",
                "CLIENT_I=c",
                "PROXY_VERSION=old"
            ]
        );
        assert_eq!(got.len(), 4 + 41);
        assert_eq!(p.env.last(), Some(&std::ptr::null()));
    }

    #[test]
    fn more_than_64_failed_execs_before_a_reap_keep_every_reason() {
        // Children that fail fast free their slots at once, so most slots
        // are reused (and their errno moved aside) before we ask.
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let n = 150;
        let pids: Vec<u32> = (0..n)
            .map(|i| {
                let name = format!("/nonexistent/prog-{i}");
                spawn(request(&[&name], no_stdio(&null))).unwrap()
            })
            .collect();
        for (i, pid) in pids.into_iter().enumerate() {
            let (code, why) = outcome(pid);
            assert_eq!(code, 127);
            let why = why.unwrap_or_else(|| panic!("child {i}: reason lost"));
            assert_eq!(why.kind(), io::ErrorKind::NotFound);
            assert!(
                why.to_string()
                    .starts_with(&format!("/nonexistent/prog-{i}: ")),
                "{why}"
            );
        }
    }

    #[test]
    fn a_child_taking_another_identity_does_not_share_the_daemons_memory() {
        // Under CLONE_VM, the child's setresuid would run as `nobody`
        // inside our memory, and make our (shared) mm non-dumpable.
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test switches users: run it as root (CI does)"
        );
        crate::os::init_process();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        // SAFETY: prctl queries.
        let dumpable = || unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
        assert_eq!(dumpable(), 1);
        let creds = Arc::new(Creds {
            uid: nobody.uid.as_raw(),
            gid: nobody.gid.as_raw(),
            groups: vec![nobody.gid.as_raw()],
        });
        for spawner in [spawn as Spawner, spawn_std] {
            let (r, w) = pipe();
            let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let mut req = request(
                &["/bin/sh", "-c", "id -u"],
                [null.as_fd(), w.as_fd(), w.as_fd()],
            );
            req.creds = Some(Arc::clone(&creds));
            let pid = spawner(req).unwrap();
            drop(w);
            let mut out = String::new();
            std::fs::File::from(r).read_to_string(&mut out).unwrap();
            assert_eq!(outcome(pid).0, 0, "{out}");
            assert_eq!(out.trim(), nobody.uid.to_string());
            assert_eq!(dumpable(), 1, "the daemon became non-dumpable");
        }
        // Its failed exec is still reported, with the program's name.
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let mut req = request(&["/nonexistent/as-nobody"], no_stdio(&null));
        req.creds = Some(creds);
        let pid = spawn(req).unwrap();
        let (code, why) = outcome(pid);
        assert_eq!(code, 127);
        let why = why.expect("the reason of a failed exec");
        assert_eq!(why.kind(), io::ErrorKind::NotFound);
        assert!(
            why.to_string().starts_with("/nonexistent/as-nobody: "),
            "{why}"
        );
    }

    #[test]
    fn the_child_has_only_descriptors_0_1_2() {
        crate::os::init_process();
        for spawner in [spawn as Spawner, spawn_std] {
            let (r, w) = pipe();
            let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let req = request(
                &["/bin/sh", "-c", "read x"],
                [r.as_fd(), null.as_fd(), null.as_fd()],
            );
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
            program: Arc::new(Program::new(
                argv.iter().map(|a| cs(a)).collect(),
                None,
                Some(b"/usr/bin:/bin"),
                None,
            )),
            env: Arc::from(Vec::new()),
            extra: vec![],
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

        // execvp's rule, kept by both paths (std's Command alone lacks it).
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for spawner in [spawn as Spawner, spawn_std] {
            assert_eq!(run(spawner, &[path, "arg one"]), "from-sh arg one\n");
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
