//! Windows: CreateProcessW on a connection (or on pipes wininetd relays),
//! the SCM, the Event Log.

mod activation;
mod control;
mod env;
mod eventlog;
mod file_trust;
mod launch;
mod logon;
mod preflight;
mod process_stats;
mod security;
mod service;
mod template;

pub use activation::take_listen_fds;
pub use control::{
    ControlListener, ControlStream, control_address, control_listen, control_request,
};
pub use eventlog::EventLog;
pub use file_trust::{check_config_file, check_password_file};
pub use launch::{
    Exits, PipeReader, PipeWriter, check_users, init_process, kill, launch, new_socket, terminate,
};
pub use logon::{Logon, logon_pending};
pub use preflight::preflight;
pub use process_stats::process_stats;
pub use service::{Host, install, reload, remove, run_as_service};
pub use template::ExecTemplate;

/// Nothing to do: the Windows heap decommits large free blocks itself.
pub fn release_free_memory() {}

/// Nothing to tune: glibc's per-thread cache is a Unix (glibc) matter.
pub fn tune_allocator() {}

/// Whether [`wake_after`] holds readiness back: not here.
pub const WAKE_AFTER_WORKS: bool = false;

/// Windows cannot set SO_RCVLOWAT: a trickling peer wakes us per segment.
pub fn wake_after<S: std::os::windows::io::AsSocket>(
    _sock: &S,
    _bytes: usize,
) -> std::io::Result<()> {
    Ok(())
}

/// Peeks at what a connection has received, without waiting (Windows has
/// no MSG_DONTWAIT: the socket is non-blocking for the call).
pub fn peek_now(stream: &std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    stream.set_nonblocking(true)?;
    let peeked = stream.peek(buf);
    stream.set_nonblocking(false)?;
    peeked
}
