//! Starting a program on a connection, and reaping it, on Unix.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use nix::unistd::{Gid, Uid, User};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::{RunAs, StderrMode};
use crate::os::{ChildStdio, LaunchError, LaunchSpec, Launched};

pub type PipeWriter = tokio::net::unix::pipe::Sender;
pub type PipeReader = tokio::net::unix::pipe::Receiver;

/// Starts the program of `spec` with `stdio` as its standard handles.
///
/// The program gets its own process group, default signal handling, and no
/// descriptor but 0, 1 and 2 (everything of ours is close-on-exec).
pub fn launch(spec: &LaunchSpec<'_>, stdio: ChildStdio) -> Result<Launched, LaunchError> {
    let argv = spec
        .command
        .argv()
        .map_err(|e| LaunchError::Spawn(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).process_group(0);
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    if let Some(dir) = spec.working_directory {
        cmd.current_dir(dir);
    }
    if let RunAs::User { name, .. } = spec.user {
        switch_user(&mut cmd, name)?;
    }

    let mut stderr_reader = None;
    let mut pipes = None;
    let out = match stdio {
        ChildStdio::Socket(sock) => {
            // The socket must be blocking for the program (`cat` fails with
            // EAGAIN otherwise); the flag is shared with every duplicate.
            sock.set_nonblocking(false).map_err(LaunchError::Spawn)?;
            let fd = OwnedFd::from(sock);
            cmd.stdin(dup(&fd)?);
            fd
        }
        ChildStdio::Pipes => {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            cmd.stdin(in_r);
            pipes = Some((
                PipeWriter::from_owned_fd(in_w).map_err(LaunchError::Spawn)?,
                PipeReader::from_owned_fd(out_r).map_err(LaunchError::Spawn)?,
            ));
            out_w
        }
    };
    match spec.stderr {
        StderrMode::Socket => {
            cmd.stderr(dup(&out)?);
        }
        StderrMode::Null => {
            cmd.stderr(Stdio::null());
        }
        StderrMode::Log => {
            let (r, w) = pipe()?;
            cmd.stderr(w);
            stderr_reader = Some(PipeReader::from_owned_fd(r).map_err(LaunchError::Spawn)?);
        }
    }
    cmd.stdout(out);

    let child = cmd
        .spawn()
        .map_err(|e| LaunchError::Spawn(io::Error::new(e.kind(), format!("{}: {e}", argv[0]))))?;
    // `cmd` (dropped here) held our copies of the child's ends; the child
    // itself is reaped by [`Exits`], never waited on per connection.
    Ok(Launched {
        id: child.id(),
        started: Instant::now(),
        pipes,
        stderr: stderr_reader,
    })
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, LaunchError> {
    fd.try_clone().map_err(LaunchError::Spawn)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| LaunchError::Spawn(io::Error::from(e)))
}

/// Makes the child run as `name`: groups, gid, uid, and the variables a
/// login would set. Looked up per connection, so a user added later works.
fn switch_user(cmd: &mut Command, name: &str) -> Result<(), LaunchError> {
    let user = User::from_name(name)
        .map_err(|e| LaunchError::User(format!("cannot look up user {name:?}: {e}")))?
        .ok_or_else(|| LaunchError::User(format!("unknown user {name:?}")))?;
    cmd.env("HOME", &user.dir)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", &user.shell);
    if user.uid == Uid::effective() {
        return Ok(());
    }
    let cname =
        CString::new(name).map_err(|_| LaunchError::User(format!("bad user name {name:?}")))?;
    let groups: Vec<libc::gid_t> = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|e| LaunchError::User(format!("cannot read the groups of {name:?}: {e}")))?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    // SAFETY: only async-signal-safe system calls run between fork and exec;
    // the group list was computed before the fork.
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
    Ok(())
}

/// Makes sure 0, 1 and 2 are open (so no socket or pipe of ours can take
/// those numbers and be clobbered when a program's stdio is set up), and
/// marks every descriptor we inherited beyond them close-on-exec, so that
/// whatever started us cannot leak a descriptor into a program.
pub fn init_process() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only queries; /dev/null is opened without
        // O_CLOEXEC on purpose, to fill the missing standard descriptor.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 && null != fd {
                    libc::dup2(null, fd);
                    libc::close(null);
                }
            }
        }
    }
    // SAFETY: close_range only changes descriptor flags.
    #[cfg(target_os = "linux")]
    if unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as _) } == 0 {
        return;
    }
    let fds: Vec<i32> =
        match std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd")) {
            Ok(dir) => dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect(),
            Err(_) => return,
        };
    for fd in fds {
        // SAFETY: setting FD_CLOEXEC on a descriptor number; a stale number
        // (the directory's own) fails harmlessly.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// `--kill-on-stop`: SIGTERM to the program's whole process group.
pub fn terminate(id: crate::os::ChildId) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(id as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// Startup check: a configured user needs a daemon that can become it.
pub fn check_users<'a>(users: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let me = Uid::effective();
    if me.is_root() {
        return Ok(());
    }
    for name in users {
        match User::from_name(name) {
            Ok(Some(u)) if u.uid == me => {}
            _ => {
                return Err(format!(
                    "services run as user {name:?}, but wininetd runs as uid {me}, not root, and cannot switch users"
                ));
            }
        }
    }
    Ok(())
}

/// Exit notifications of every program we started.
///
/// One SIGCHLD stream and `waitpid(-1)`: no thread and no task per child, so
/// memory does not grow with the number of sessions.
pub struct Exits {
    sigchld: Signal,
    ready: VecDeque<(u32, ExitStatus)>,
}

impl Exits {
    pub fn new() -> io::Result<Exits> {
        Ok(Exits {
            sigchld: signal(SignalKind::child())?,
            ready: VecDeque::new(),
        })
    }

    /// The next program that ended, with its status.
    pub async fn next(&mut self) -> (u32, ExitStatus) {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return e;
            }
            self.collect();
            if let Some(e) = self.ready.pop_front() {
                return e;
            }
            self.sigchld.recv().await;
        }
    }

    /// Reaps every child that has ended (bounded: each call reaps a child).
    fn collect(&mut self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: plain waitpid on our own children.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            self.ready
                .push_back((pid as u32, ExitStatus::from_raw(status)));
        }
    }
}
