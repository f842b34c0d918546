//! What differs between Unix and Windows, behind two small interfaces.
//!
//! **Launching** ([`launch`], [`Exits`]): start a program with a connection
//! (or a pair of pipes) as its stdin/stdout/stderr, and learn when it ends;
//! before that, [`logon_pending`] (Windows USER services: a logon off the
//! accept loop; nothing on Unix).
//! **Being a service** ([`Host`], [`install`], [`remove`]): receive stop and
//! reload requests from the service manager, report our state to it, and
//! register or unregister ourselves with it.
//!
//! **Trusting files** ([`check_config_file`], [`check_password_file`]): as
//! root or LocalSystem, refuse a file another account could change.
//!
//! Each platform module provides the same names; the core in `server.rs`
//! uses only these.

use std::time::Instant;

use crate::config::{RunAs, StderrMode};
use crate::conn_env::ConnEnv;

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
    /// What is fixed for the service's program ([`ExecTemplate`], built
    /// once per config).
    pub template: &'a ExecTemplate,
    /// The connection's variables (CLIENT_IP, …), set on top of the
    /// template's environment.
    pub env: ConnEnv,
    pub stderr: StderrMode,
    /// The user's logon, done beforehand off the accept loop
    /// ([`logon_pending`]); `None` where none is needed.
    pub logon: Option<Logon>,
}

/// The daemon's variables a program never gets, whatever `pass_env` says:
/// they describe the daemon's own service manager and settings.
pub fn never_passed(name: &[u8]) -> bool {
    name == b"NOTIFY_SOCKET" || name.starts_with(b"LISTEN_") || name.starts_with(b"WININETD_")
}

/// Whether the daemon's variable `name` goes to programs under `pass_env`.
pub fn passed_from_daemon(pass_env: &[String], name: &[u8]) -> bool {
    !never_passed(name)
        && pass_env
            .iter()
            .any(|p| crate::config::pass_env_matches(p, name))
}

/// What the program's standard handles are.
pub enum ChildStdio {
    /// The socket itself (a connection, or a UDP `wait` service's socket).
    Socket(socket2::Socket),
    /// Fresh pipes, returned in [`Launched::pipes`] for the relay; `wide`:
    /// each [`WIDE_PIPE`] bytes instead of the system's default (the
    /// caller has budgeted for it).
    Pipes { wide: bool },
}

/// What a widened relay pipe holds, where pipes can be widened (Linux's
/// unprivileged maximum: fewer wakeups per byte than its default 64 KiB).
/// Windows relay pipes keep a fixed 64 KiB buffer.
pub const WIDE_PIPE: Option<u64> = if cfg!(target_os = "linux") {
    Some(1 << 20)
} else {
    None
};

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
    /// Refused for a reason logged a moment ago (not logged again, so a
    /// flood of connections is not a flood of lines).
    Quiet,
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::User(m) => f.write_str(m),
            LaunchError::Spawn(e) => write!(f, "cannot start the program: {e}"),
            LaunchError::Quiet => f.write_str("refused (the reason was logged a moment ago)"),
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

/// An internal service runs inside wininetd: a `user` on it may only name
/// the account wininetd runs as (converted inetd/xinetd configs say `root`).
pub fn check_internal_users(
    config: &crate::config::Config,
) -> Result<(), crate::config::ConfigErrors> {
    let errors: Vec<_> = config
        .services
        .iter()
        .filter_map(|s| match (&s.program, &s.user) {
            (crate::config::Program::Internal(_), RunAs::User { name, .. })
                if !is_own_account(name) =>
            {
                Some(crate::config::ConfigError {
                    location: s.origin.clone(),
                    message: format!(
                        "service {} is internal (it runs inside wininetd) but names user {name:?}, which is not the account wininetd runs as; remove `user`",
                        s.name
                    ),
                })
            }
            _ => None,
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(crate::config::ConfigErrors(errors))
    }
}

#[cfg(unix)]
fn is_own_account(name: &str) -> bool {
    matches!(nix::unistd::User::from_name(name), Ok(Some(u)) if u.uid == nix::unistd::Uid::effective())
}

#[cfg(windows)]
fn is_own_account(name: &str) -> bool {
    std::env::var("USERNAME").is_ok_and(|me| me.eq_ignore_ascii_case(name))
}

/// Accounts a config names that do not exist here: `--check` and a load
/// warn (`FILE:LINE`), since each connection of such a service is refused.
pub fn unknown_accounts(config: &crate::config::Config) -> Vec<crate::config::ConfigError> {
    let mut out = Vec::new();
    for s in &config.services {
        let (crate::config::Program::Command(_), RunAs::User { name, .. }) = (&s.program, &s.user)
        else {
            continue;
        };
        let mut missing = Vec::new();
        if !account_exists(name, false) {
            missing.push(format!("user {name:?}"));
        }
        if let Some(g) = &s.group
            && !account_exists(g, true)
        {
            missing.push(format!("group {g:?}"));
        }
        if !missing.is_empty() {
            out.push(crate::config::ConfigError {
                location: s.origin.clone(),
                message: format!(
                    "service {}: unknown {}: its connections are refused until it exists",
                    s.name,
                    missing.join(" and ")
                ),
            });
        }
    }
    out
}

#[cfg(unix)]
fn account_exists(name: &str, group: bool) -> bool {
    // A failed lookup (no NSS) is not "unknown": say nothing then.
    if group {
        !matches!(nix::unistd::Group::from_name(name), Ok(None))
    } else {
        !matches!(nix::unistd::User::from_name(name), Ok(None))
    }
}

/// Windows logs users on per connection; there is nothing to look up.
#[cfg(windows)]
fn account_exists(_name: &str, _group: bool) -> bool {
    true
}
