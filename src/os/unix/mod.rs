//! Unix: fork/exec on a socket, SIGCHLD reaping, signals, systemd.

mod launch;
mod service;
mod spawn;

pub use launch::{Exits, PipeReader, PipeWriter, check_users, init_process, launch, terminate};
pub use service::{Host, install, reload, remove, unit_text};

/// A socket for a listener (close-on-exec, socket2's default).
pub fn new_socket(domain: socket2::Domain, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    socket2::Socket::new(domain, ty, None)
}
