//! Unix: fork/exec on a socket, SIGCHLD reaping, signals, systemd.

mod activation;
mod launch;
mod preflight;
mod service;
mod signals;
mod spawn;

pub use activation::take_listen_fds;
pub use launch::{Exits, PipeReader, PipeWriter, check_users, init_process, launch, terminate};
pub use preflight::preflight;
pub use service::{Host, install, install_socket_activated, reload, remove};

/// A socket for a listener: close-on-exec (socket2's default), and
/// SO_REUSEADDR so a restart rebinds at once despite TIME_WAIT connections.
pub fn new_socket(domain: socket2::Domain, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(domain, ty, None)?;
    sock.set_reuse_address(true)?;
    Ok(sock)
}
