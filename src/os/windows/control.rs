//! The local control channel on Windows: not yet there; `wininetd status`
//! says so and `--reload` goes through the SCM as before.

use std::io;
use std::time::Duration;

/// Where a message says the channel is.
pub fn control_address() -> String {
    r"\\.\pipe\wininetd-control".to_string()
}

pub struct ControlListener(());

pub type ControlStream = tokio::io::DuplexStream;

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "the control channel is not implemented on Windows yet",
    )
}

pub fn control_listen() -> io::Result<ControlListener> {
    Err(unsupported())
}

impl ControlListener {
    pub async fn accept(&self) -> io::Result<ControlStream> {
        Err(unsupported())
    }
}

pub fn control_request(_request: &str, _wait: Duration) -> io::Result<String> {
    Err(unsupported())
}
