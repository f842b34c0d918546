//! What is fixed per service for starting its program, built once when a
//! config is applied: the argv and its PATH search, the directory, the
//! environment and the account. Per connection only the connection's
//! variables are added.
//!
//! The account (and its groups: NSS may be LDAP) is looked up off the
//! accept thread: at apply, on a blocking thread; when that fails, again
//! at most every [`RETRY_EVERY`], on a blocking thread started by a
//! connection, which is refused meanwhile.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User};

use super::spawn::{Creds, Program};
use crate::config::{Program as Configured, RunAs, Service};
use crate::os::{LaunchError, passed_from_daemon};

/// A program's PATH unless its service says otherwise (xinetd's, Debian's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How often an unknown user is looked up again, and its refusal logged.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// A service's exec template (cheap to share: one `Arc`).
#[derive(Clone)]
pub struct ExecTemplate(Arc<Inner>);

struct Inner {
    service: String,
    program: Arc<Program>,
    /// The daemon's variables named by `pass_env`, then the service's
    /// `env`: (name, value), a later one winning.
    fixed: Vec<(Vec<u8>, Vec<u8>)>,
    /// `None`: the daemon's own account.
    user: Option<String>,
    state: Mutex<State>,
}

/// What a program of the service gets, once its account is known.
#[derive(Clone)]
pub struct Ready {
    pub env: Arc<[CString]>,
    pub creds: Option<Arc<Creds>>,
}

enum State {
    Ready(Ready),
    Unknown {
        reason: String,
        next_try: Instant,
        trying: bool,
        next_log: Instant,
    },
}

impl std::fmt::Debug for ExecTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecTemplate")
            .field("argv", &self.0.program.argv)
            .field("user", &self.0.user)
            .finish_non_exhaustive()
    }
}

impl ExecTemplate {
    /// The template of `svc` (a program service), with `pass_env` the
    /// patterns in force for it. Does not look the account up: [`resolve`]
    /// does (blocking).
    ///
    /// [`resolve`]: ExecTemplate::resolve
    pub fn new(svc: &Service, pass_env: &[String]) -> Result<ExecTemplate, String> {
        let Configured::Command(command) = &svc.program else {
            return Err("an internal service runs no program".into());
        };
        let nul = |what: &str| format!("{what} contains a NUL byte");
        let argv = command
            .argv()?
            .into_iter()
            .map(|a| CString::new(a).map_err(|_| nul("the command line")))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = svc
            .working_directory
            .as_ref()
            .map(|d| CString::new(d.as_os_str().as_bytes()).map_err(|_| nul("working_directory")))
            .transpose()?;
        let mut fixed: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
            .filter(|(k, _)| passed_from_daemon(pass_env, k.as_bytes()))
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect();
        fixed.extend(
            svc.env
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
        let path = fixed
            .iter()
            .rev()
            .find(|(k, _)| k == b"PATH")
            .map_or(DEFAULT_PATH.as_bytes(), |(_, v)| v.as_slice());
        let program = Arc::new(Program::new(argv, Some(path), cwd));
        let (user, state) = match &svc.user {
            RunAs::Daemon => (None, State::Ready(Ready::default())),
            RunAs::User { name, .. } => (
                Some(name.clone()),
                State::Unknown {
                    reason: format!("user {name:?} not looked up yet"),
                    next_try: Instant::now(),
                    trying: false,
                    next_log: Instant::now(),
                },
            ),
        };
        let inner = Arc::new(Inner {
            service: svc.name.clone(),
            program,
            fixed,
            user,
            state: Mutex::new(state),
        });
        if inner.user.is_none() {
            // Until `resolve` has looked: the daemon's own variables.
            let env = inner.compose(&daemon_account_from_env());
            inner.set(State::Ready(Ready { env, creds: None }));
        }
        Ok(ExecTemplate(inner))
    }

    /// Looks the account up (blocking: call it off the accept thread).
    /// Returns a warning when the service's user is unknown: its
    /// connections are refused until a later lookup finds it.
    pub fn resolve(&self) -> Option<String> {
        self.0.resolve()
    }

    pub(super) fn program(&self) -> &Arc<Program> {
        &self.0.program
    }

    /// What a program gets now; `Err` refuses the connection while the
    /// account is unknown (and starts a lookup when one is due). The
    /// refusal is logged at most every few seconds: `Quiet` otherwise.
    pub(super) fn ready(&self) -> Result<Ready, LaunchError> {
        let mut state = self.0.state();
        let (reason, next_try, trying, next_log) = match &mut *state {
            State::Ready(r) => return Ok(r.clone()),
            State::Unknown {
                reason,
                next_try,
                trying,
                next_log,
            } => (reason, next_try, trying, next_log),
        };
        let now = Instant::now();
        if !*trying
            && now >= *next_try
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            *trying = true;
            let inner = Arc::clone(&self.0);
            runtime.spawn_blocking(move || {
                if inner.resolve().is_none() {
                    tracing::info!(service = %inner.service, "user {:?} found: serving again", inner.user.as_deref().unwrap_or_default());
                }
            });
        }
        if now < *next_log {
            return Err(LaunchError::Quiet);
        }
        *next_log = now + RETRY_EVERY;
        Err(LaunchError::User(format!(
            "{reason}: connections are refused until it can be looked up (tried again every {} s)",
            RETRY_EVERY.as_secs()
        )))
    }
}

impl Default for Ready {
    fn default() -> Ready {
        Ready {
            env: Arc::from(Vec::new()),
            creds: None,
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, state: State) {
        *self.state() = state;
    }

    fn resolve(&self) -> Option<String> {
        let Some(name) = &self.user else {
            let account = daemon_account().unwrap_or_else(daemon_account_from_env);
            let env = self.compose(&account);
            self.set(State::Ready(Ready { env, creds: None }));
            return None;
        };
        match lookup(name) {
            Ok((account, creds)) => {
                let env = self.compose(&account);
                self.set(State::Ready(Ready {
                    env,
                    creds: creds.map(Arc::new),
                }));
                None
            }
            Err(reason) => {
                let now = Instant::now();
                let next_log = match &*self.state() {
                    State::Unknown { next_log, .. } => *next_log,
                    State::Ready(_) => now,
                };
                self.set(State::Unknown {
                    reason: format!("service {}: {reason}", self.service),
                    next_try: now + RETRY_EVERY,
                    trying: false,
                    next_log,
                });
                Some(format!(
                    "service {}: {reason}; its connections are refused until the user can be looked up",
                    self.service
                ))
            }
        }
    }

    /// PATH, the account's variables, then the fixed ones; a later
    /// setting of a name wins.
    fn compose(&self, account: &[(&str, OsString)]) -> Arc<[CString]> {
        let vars: Vec<(&[u8], &[u8])> = std::iter::once((&b"PATH"[..], DEFAULT_PATH.as_bytes()))
            .chain(account.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
            .chain(self.fixed.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .collect();
        vars.iter()
            .enumerate()
            .filter(|(i, (k, _))| !vars[i + 1..].iter().any(|(later, _)| later == k))
            .filter_map(|(_, (k, v))| CString::new([*k, b"=", *v].concat()).ok())
            .collect()
    }
}

type Account = Vec<(&'static str, OsString)>;

fn account_vars(user: &User) -> Account {
    vec![
        ("HOME", user.dir.clone().into_os_string()),
        ("USER", user.name.clone().into()),
        ("LOGNAME", user.name.clone().into()),
        ("SHELL", user.shell.clone().into_os_string()),
    ]
}

/// The daemon's own account (for `none`), from the login database.
fn daemon_account() -> Option<Account> {
    User::from_uid(Uid::effective())
        .ok()
        .flatten()
        .map(|u| account_vars(&u))
}

/// The same, from the daemon's environment, when the database cannot say.
fn daemon_account_from_env() -> Account {
    ["HOME", "USER", "LOGNAME", "SHELL"]
        .into_iter()
        .filter_map(|k| Some((k, std::env::var_os(k)?)))
        .collect()
}

/// A configured account: its variables, and the identity to switch to
/// (`None` when it is the daemon's own).
fn lookup(name: &str) -> Result<(Account, Option<Creds>), String> {
    let user = User::from_name(name)
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("unknown user {name:?}"))?;
    let creds = if user.uid == Uid::effective() {
        None
    } else {
        let cname = CString::new(name).map_err(|_| format!("bad user name {name:?}"))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| format!("cannot read the groups of {name:?}: {e}"))?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        Some(Creds {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
        })
    };
    Ok((account_vars(&user), creds))
}
