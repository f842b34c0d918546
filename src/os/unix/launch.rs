//! Starting a program on a connection, and reaping it, on Unix.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use nix::unistd::{Uid, User};

use super::signals::{Signals, block_taken};
use super::spawn::{Request, note_dispositions, prepare, raise_nofile, spawn, start_error};
use crate::config::StderrMode;
use crate::os::{ChildStdio, Exit, LaunchError, LaunchSpec, Launched};

pub type PipeWriter = tokio::net::unix::pipe::Sender;
pub type PipeReader = tokio::net::unix::pipe::Receiver;

/// Starts the program of `spec` with `stdio` as its standard handles.
///
/// The program gets its own session, default signal handling, and no
/// descriptor but 0, 1 and 2.
pub fn launch(spec: LaunchSpec<'_>, stdio: ChildStdio) -> Result<Launched, LaunchError> {
    let template = spec.template;
    let ready = template.ready()?;
    let extra = spec.env.into_vars();

    let mut pipes = None;
    let mut stderr_reader = None;
    // The program's descriptors, ours until it has them: a socket serves
    // as stdin, stdout and (usually) stderr without being duplicated.
    let (input, output): (OwnedFd, Option<OwnedFd>) = match stdio {
        ChildStdio::Socket(sock) => {
            // The socket must be blocking for the program (`cat` fails with
            // EAGAIN otherwise); the flag is shared with every duplicate.
            sock.set_nonblocking(false).map_err(LaunchError::Spawn)?;
            (OwnedFd::from(sock), None)
        }
        ChildStdio::Pipes { wide } => {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            if wide {
                widen(&in_w);
                widen(&out_r);
            }
            pipes = Some((
                PipeWriter::from_owned_fd(in_w).map_err(LaunchError::Spawn)?,
                PipeReader::from_owned_fd(out_r).map_err(LaunchError::Spawn)?,
            ));
            (in_r, Some(out_w))
        }
    };
    let output = output.as_ref().unwrap_or(&input);
    let log_pipe = match spec.stderr {
        StderrMode::Log => {
            let (r, w) = pipe()?;
            stderr_reader = Some(PipeReader::from_owned_fd(r).map_err(LaunchError::Spawn)?);
            Some(w)
        }
        StderrMode::Socket | StderrMode::Null => None,
    };
    let errors = match (&log_pipe, spec.stderr) {
        (Some(w), _) => w.as_fd(),
        (None, StderrMode::Null) => dev_null()?,
        (None, _) => output.as_fd(),
    };

    let program = template.program();
    let request = Request {
        program: Arc::clone(program),
        env: ready.env,
        extra,
        creds: ready.creds,
        stdio: [input.as_fd(), output.as_fd(), errors],
    };
    let pid = spawn(request).map_err(|e| {
        let name = program.argv.first().map(|a| a.to_string_lossy());
        LaunchError::Spawn(io::Error::new(
            e.kind(),
            format!("{}: {e}", name.unwrap_or_default()),
        ))
    })?;
    // Our copies of the child's ends close on return; the child itself is
    // reaped by [`Exits`], never waited on per connection.
    Ok(Launched {
        id: pid,
        started: Instant::now(),
        pipes,
        stderr: stderr_reader,
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| LaunchError::Spawn(io::Error::from(e)))
}

/// Relayed pipes carry whole streams: a larger pipe means fewer wakeups of
/// the program and of the relay per byte (64 KiB by default on Linux).
/// Best effort: a smaller pipe still works.
fn widen(_pipe: &OwnedFd) {
    #[cfg(target_os = "linux")]
    if let Some(size) = crate::os::WIDE_PIPE {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETPIPE_SZ on a pipe we own.
        unsafe { libc::fcntl(_pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    }
}

/// /dev/null, opened once and given to each program that wants it.
fn dev_null() -> Result<BorrowedFd<'static>, LaunchError> {
    static NULL: OnceLock<io::Result<OwnedFd>> = OnceLock::new();
    match NULL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
    }) {
        Ok(fd) => Ok(fd.as_fd()),
        Err(e) => Err(LaunchError::Spawn(io::Error::new(
            e.kind(),
            format!("/dev/null: {e}"),
        ))),
    }
}

/// Makes sure 0, 1 and 2 are open (so no socket or pipe of ours can take
/// those numbers and be clobbered when a program's stdio is set up), and
/// marks every descriptor we inherited beyond them close-on-exec, so that
/// whatever started us cannot leak a descriptor into a program. Also blocks
/// the signals read later by signalfd, before any thread exists, notes
/// which signals a program must have reset (the ignored ones), and raises
/// the open-files limit (programs get the one we started with).
pub fn init_process() {
    raise_nofile();
    block_taken();
    note_dispositions();
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
    // Now, while descriptor numbers are low (see `prepare`).
    prepare();
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

/// `--kill-on-stop`: SIGTERM to the program's whole process group, then
/// SIGCONT, so that a stopped program gets it too (as systemd does).
pub fn terminate(id: crate::os::ChildId) {
    let group = nix::unistd::Pid::from_raw(id as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGCONT);
}

/// `--kill-on-stop`, once the grace is over: SIGKILL to the process group
/// (a program that ignores SIGTERM must not outlive the daemon's stop).
pub fn kill(id: crate::os::ChildId) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(id as i32),
        nix::sys::signal::Signal::SIGKILL,
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
    sigchld: Signals,
    ready: VecDeque<(u32, ExitStatus)>,
}

impl Exits {
    pub fn new() -> io::Result<Exits> {
        Ok(Exits {
            sigchld: Signals::new(&[nix::sys::signal::Signal::SIGCHLD])?,
            ready: VecDeque::new(),
        })
    }

    /// The next program that ended, with its status (or, when its exec
    /// failed, why).
    pub async fn next(&mut self) -> Exit {
        loop {
            if self.ready.is_empty() {
                self.collect();
            }
            if let Some((pid, status)) = self.ready.pop_front() {
                // A crowd's exits came at once; that many rarely do again.
                if self.ready.is_empty() && self.ready.capacity() > 1024 {
                    self.ready.shrink_to(64);
                }
                return (pid, start_error(pid).map_or(Ok(status), Err));
            }
            if let Err(e) = self.sigchld.recv().await {
                // Not expected; poll rather than never reap again.
                tracing::error!("cannot read SIGCHLD: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
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
