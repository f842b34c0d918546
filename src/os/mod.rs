//! What differs between Unix and Windows, behind two small interfaces.
//!
//! **Launching** ([`launch`], [`Exits`]): start a program with a connection
//! (or a pair of pipes) as its stdin/stdout/stderr, and learn when it ends.
//! **Being a service** ([`Host`], [`install`], [`remove`]): receive stop and
//! reload requests from the service manager, report our state to it, and
//! register or unregister ourselves with it.
//!
//! Each platform module provides the same names; the core in `server.rs`
//! uses only these.

use std::path::Path;
use std::time::Instant;

use crate::config::{CommandLine, RunAs, StderrMode};

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

/// Everything a platform needs to start one program.
pub struct LaunchSpec<'a> {
    /// The service's name, for messages.
    pub service: &'a str,
    pub command: &'a CommandLine,
    /// Variables added to the daemon's own environment (CLIENT_IP, …).
    pub env: &'a [(String, String)],
    pub working_directory: Option<&'a Path>,
    pub user: &'a RunAs,
    pub stderr: StderrMode,
}

/// What the program's standard handles are.
pub enum ChildStdio {
    /// The socket itself (a connection, or a UDP `wait` service's socket).
    Socket(socket2::Socket),
    /// Fresh pipes, returned in [`Launched::pipes`] for the relay.
    Pipes,
}

/// A started program.
pub struct Launched {
    pub id: ChildId,
    pub started: Instant,
    /// Our ends of the program's stdin and stdout, for `pipe` handoff.
    pub pipes: Option<(PipeWriter, PipeReader)>,
    /// Our end of the program's stderr when it goes to the log.
    pub stderr: Option<PipeReader>,
}

/// A platform's process id.
pub type ChildId = u32;

/// How a program ended ([`Exits::next`]): its status, or why it never got
/// to run (an exec that failed after the process was created).
pub type Exit = (ChildId, Result<std::process::ExitStatus, std::io::Error>);

/// Why a program could not be started. Its text never holds a password.
#[derive(Debug)]
pub enum LaunchError {
    /// The configured account does not exist (or cannot be logged on).
    User(String),
    /// The program could not be started.
    Spawn(std::io::Error),
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::User(m) => f.write_str(m),
            LaunchError::Spawn(e) => write!(f, "cannot start the program: {e}"),
        }
    }
}

/// What `--check` finds about a service on this machine ([`preflight`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Start would refuse the config.
    Error(String),
    /// Each connection to the service would fail.
    Warning(String),
}

/// A request from the service manager (or a signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Reload,
    Stop,
}

/// What we tell the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    Ready,
    Reloading,
    Stopping,
}

/// The service manager, as the core sees it: implemented by the Unix
/// signal/sd_notify host and by the Windows SCM and console hosts.
#[allow(async_fn_in_trait)]
pub trait ServiceHost {
    /// Waits for the next stop or reload request.
    async fn next(&mut self) -> Control;
    /// Reports our state (READY only once every listener is bound).
    fn status(&mut self, status: HostStatus);
}
