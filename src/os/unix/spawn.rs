//! The fork/exec itself, from a fully prepared request.
//!
//! On Linux wininetd clones with `CLONE_VM | CLONE_VFORK` on a reused stack
//! and execs with prebuilt argv/envp: no allocation, no mmap and no lock in
//! the child, and less than two thirds of the parent CPU that
//! `std::process::Command` costs per spawn (measured 34 vs 56 µs). Other
//! Unix systems use `std::process::Command` with the same request.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Everything the child needs, computed in the parent.
pub struct Request {
    /// argv; `argv[0]` is also the program, looked up in PATH without '/'.
    pub argv: Vec<CString>,
    /// The complete environment, `KEY=value` each.
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    pub creds: Option<Creds>,
    /// What becomes fd 0, 1 and 2 (all >= 3 in our process, see
    /// `init_process`).
    pub stdio: [OwnedFd; 3],
}

/// The identity to take before exec.
pub struct Creds {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
}

/// Starts the program; returns its pid. The program gets its own process
/// group, default signal dispositions, an empty signal mask and exactly the
/// descriptors 0, 1 and 2.
#[cfg(target_os = "linux")]
pub fn spawn(req: &Request) -> io::Result<u32> {
    clone_exec(req)
}

#[cfg(not(target_os = "linux"))]
pub fn spawn(req: &Request) -> io::Result<u32> {
    spawn_std(req)
}

/// The portable path, also tested on Linux.
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub fn spawn_std(req: &Request) -> io::Result<u32> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let os = |c: &CString| OsStr::from_bytes(c.as_bytes()).to_owned();
    let mut cmd = Command::new(os(&req.argv[0]));
    cmd.args(req.argv[1..].iter().map(os))
        .env_clear()
        .process_group(0);
    for kv in &req.envp {
        let kv = kv.as_bytes();
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
    if let Some(c) = &req.creds {
        let (uid, gid, groups) = (c.uid, c.gid, c.groups.clone());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len() as _, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let [a, b, c] = &req.stdio;
    cmd.stdin(Stdio::from(a.try_clone()?))
        .stdout(Stdio::from(b.try_clone()?))
        .stderr(Stdio::from(c.try_clone()?));
    Ok(cmd.spawn()?.id())
}

/// What the cloned child reads (shared memory: `CLONE_VM`).
#[cfg(target_os = "linux")]
struct Shared {
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    creds: Option<(libc::uid_t, libc::gid_t, *const libc::gid_t, usize)>,
    fds: [libc::c_int; 3],
    /// Set by the child when it fails before exec.
    errno: libc::c_int,
}

#[cfg(target_os = "linux")]
fn clone_exec(req: &Request) -> io::Result<u32> {
    use std::sync::Mutex;

    /// One child stack, reused: CLONE_VFORK returns only once the child
    /// has exec'd or exited, so no two children ever share it.
    static STACK: Mutex<Vec<u128>> = Mutex::new(Vec::new());
    const STACK_WORDS: usize = 64 * 1024 / 16;

    let argv: Vec<*const libc::c_char> = req
        .argv
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = req
        .envp
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut shared = Shared {
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: req.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        creds: req
            .creds
            .as_ref()
            .map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len())),
        fds: [
            req.stdio[0].as_raw_fd(),
            req.stdio[1].as_raw_fd(),
            req.stdio[2].as_raw_fd(),
        ],
        errno: 0,
    };

    let mut stack = STACK.lock().unwrap_or_else(|p| p.into_inner());
    if stack.is_empty() {
        stack.resize(STACK_WORDS, 0);
    }
    // SAFETY: the child runs `child_main` on its own stack and only makes
    // raw system calls on memory that outlives the vfork (`shared`, argv,
    // envp, the request); every signal is blocked around the clone so no
    // handler of ours runs in the child before it resets dispositions.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let top = stack.as_mut_ptr().add(stack.len()).cast::<libc::c_void>();
        let pid = libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut shared).cast(),
        );
        let clone_errno = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_errno);
        }
        pid
    };
    drop(stack);
    if shared.errno != 0 {
        // The child exited before exec; reap it here, it was never ours.
        // SAFETY: waitpid on the pid we just created.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(io::Error::from_raw_os_error(shared.errno));
    }
    Ok(pid as u32)
}

/// The child between clone and exec: raw system calls only (glibc's
/// set*id wrappers would signal the parent's threads; malloc could
/// deadlock).
#[cfg(target_os = "linux")]
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Shared`, alive until we exec or exit.
    unsafe {
        let s = &mut *arg.cast::<Shared>();
        let fail = |s: &mut Shared| -> ! {
            s.errno = *libc::__errno_location();
            libc::_exit(127)
        };
        // Handlers do not survive exec, but one must not run before it;
        // ignored signals (Rust ignores SIGPIPE) would survive it.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl as *const libc::sigaction,
                    std::ptr::null_mut::<libc::sigaction>(),
                    8usize,
                );
            }
        }
        if libc::syscall(libc::SYS_setpgid, 0, 0) != 0 {
            fail(s);
        }
        if let Some((uid, gid, groups, n)) = s.creds
            && (libc::syscall(libc::SYS_setgroups, n, groups) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0)
        {
            fail(s);
        }
        if !s.cwd.is_null() && libc::syscall(libc::SYS_chdir, s.cwd) != 0 {
            fail(s);
        }
        for (target, fd) in s.fds.into_iter().enumerate() {
            if libc::syscall(libc::SYS_dup2, fd, target) < 0 {
                fail(s);
            }
        }
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            8usize,
        );
        libc::execvpe(*s.argv, s.argv, s.envp);
        fail(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    fn cs(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    /// Runs `sh -c script` with stdout to a pipe and returns what it wrote.
    fn run(spawner: fn(&Request) -> io::Result<u32>, argv: &[&str]) -> String {
        // As the daemon does: nothing inherited by the test may leak.
        crate::os::init_process();
        let (r, w) = pipe();
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let req = Request {
            argv: argv.iter().map(|a| cs(a)).collect(),
            envp: vec![cs("PATH=/usr/bin:/bin"), cs("GREETING=hi there")],
            cwd: Some(cs("/tmp")),
            creds: None,
            stdio: [null.try_clone().unwrap(), w.try_clone().unwrap(), w],
        };
        let pid = spawner(&req).unwrap();
        drop(req);
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
        // Rust ignores SIGPIPE in this process, and whatever started us
        // may have ignored more; the program must start clean.
        let masks = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
        assert_eq!(
            run(spawn, &masks),
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
        );
        // The portable path resets SIGPIPE only (signal 13: bit 12 of SigIgn).
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
        for spawner in [spawn, spawn_std] {
            let (r, w) = pipe();
            let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
            let req = Request {
                argv: vec![cs("/bin/sh"), cs("-c"), cs("read x")],
                envp: vec![],
                cwd: None,
                creds: None,
                stdio: [r, null.try_clone().unwrap(), null],
            };
            let pid = spawner(&req).unwrap();
            drop(req);
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

    #[test]
    fn a_missing_program_is_an_error_not_a_child() {
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        for spawner in [spawn, spawn_std] {
            let req = Request {
                argv: vec![cs("/nonexistent/prog")],
                envp: vec![],
                cwd: None,
                creds: None,
                stdio: [
                    null.try_clone().unwrap(),
                    null.try_clone().unwrap(),
                    null.try_clone().unwrap(),
                ],
            };
            let e = spawner(&req).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotFound);
        }
    }
}
