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
pub use memory::{release_free_memory, tune_allocator};
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

/// Sends `datagrams` in order on a connected datagram socket, as many per
/// system call as it takes (`sendmmsg`, 64 at a time). `Ok(n)`: the first
/// `n` (at least one) went; `Err`: the first of them could not.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub fn send_datagrams<S: std::os::fd::AsFd>(
    sock: &S,
    datagrams: &[&[u8]],
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    const AT_ONCE: usize = 64;
    let datagrams = &datagrams[..datagrams.len().min(AT_ONCE)];
    let mut iov: [libc::iovec; AT_ONCE] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; AT_ONCE];
    // SAFETY: an all-zero mmsghdr is a valid empty one (no name, no
    // control data).
    let mut msgs: [libc::mmsghdr; AT_ONCE] = unsafe { std::mem::zeroed() };
    for (i, d) in datagrams.iter().enumerate() {
        iov[i] = libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        };
        msgs[i].msg_hdr.msg_iov = &raw mut iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    loop {
        // SAFETY: `msgs[..len]` point at `iov`, which point at the
        // borrowed datagrams; all outlive the call, which only reads them.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_fd().as_raw_fd(),
                msgs.as_mut_ptr(),
                datagrams.len() as libc::c_uint,
                libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            return Ok(n as usize);
        }
        if datagrams.is_empty() {
            return Ok(0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One datagram per call where there is no `sendmmsg`.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub fn send_datagrams<S: std::os::fd::AsFd>(
    sock: &S,
    datagrams: &[&[u8]],
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let Some(d) = datagrams.first() else {
        return Ok(0);
    };
    nix::sys::socket::send(
        sock.as_fd().as_raw_fd(),
        d,
        nix::sys::socket::MsgFlags::empty(),
    )
    .map(|_| 1)
    .map_err(std::io::Error::from)
}
