//! Unix: fork/exec on a socket, SIGCHLD reaping, signals, systemd.

mod activation;
mod control;
mod file_trust;
mod launch;
mod memory;
mod preflight;
mod process_stats;
mod service;
mod signals;
mod spawn;
mod template;

pub use activation::take_listen_fds;
pub use control::{
    ControlListener, ControlStream, control_address, control_listen, control_request,
};
pub use file_trust::{check_config_file, check_password_file};
pub use launch::{
    Exits, PipeReader, PipeWriter, check_users, init_process, kill, launch, terminate,
};
pub use memory::release_free_memory;
pub use preflight::preflight;
pub use process_stats::process_stats;
pub use service::{Host, install, install_socket_activated, reload, remove};
pub use template::{DEFAULT_PATH, ExecTemplate};

/// Unix needs no logon: a program switches to its user with setuid.
pub enum Logon {}

/// Nothing to wait for before a launch on Unix.
pub fn logon_pending(
    _user: &crate::config::RunAs,
) -> Option<std::future::Ready<Result<Logon, crate::os::LaunchError>>> {
    None
}

/// A socket for a listener: close-on-exec (socket2's default), and
/// SO_REUSEADDR so a restart rebinds at once despite TIME_WAIT connections.
pub fn new_socket(domain: socket2::Domain, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(domain, ty, None)?;
    sock.set_reuse_address(true)?;
    Ok(sock)
}

/// Whether [`wake_after`] holds readiness back (here it does).
pub const WAKE_AFTER_WORKS: bool = true;

/// Readable (for poll, epoll) only once `bytes` are in, or at the end:
/// SO_RCVLOWAT, so a peer trickling bytes does not wake us for each.
pub fn wake_after<S: std::os::fd::AsFd>(sock: &S, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a live socket with an int of the right size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Peeks at what a connection has received, without waiting and without
/// touching its blocking mode (MSG_DONTWAIT: one system call).
pub fn peek_now(stream: &std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    recv(
        stream.as_raw_fd(),
        buf,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)
}
