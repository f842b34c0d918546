//! Windows: CreateProcessW on a connection (or on pipes wininetd relays),
//! the SCM, the Event Log.

mod env;
mod eventlog;
mod launch;
mod logon;
mod service;

pub use eventlog::EventLog;
pub use launch::{
    Exits, PipeReader, PipeWriter, check_users, init_process, launch, new_socket, terminate,
};
pub use service::{Host, install, reload, remove, run_as_service};

/// Peeks at what a connection has received, without waiting (Windows has
/// no MSG_DONTWAIT: the socket is non-blocking for the call).
pub fn peek_now(stream: &std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    stream.set_nonblocking(true)?;
    let peeked = stream.peek(buf);
    stream.set_nonblocking(false)?;
    peeked
}
