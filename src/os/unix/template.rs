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
    /// The primary group instead of the user's own (`user.group`).
    group: Option<String>,
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
        Self::with_daemon_env(svc, pass_env, std::env::vars_os())
    }

    fn with_daemon_env(
        svc: &Service,
        pass_env: &[String],
        daemon_env: impl Iterator<Item = (OsString, OsString)>,
    ) -> Result<ExecTemplate, String> {
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
        let mut fixed: Vec<(Vec<u8>, Vec<u8>)> = daemon_env
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
        let argv0 = svc
            .argv0
            .as_ref()
            .map(|a| CString::new(a.as_str()).map_err(|_| nul("argv0")))
            .transpose()?;
        let program = Arc::new(Program::new(argv, argv0, Some(path), cwd));
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
            group: svc.group.clone(),
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
        if !*trying && now >= *next_try {
            let inner = Arc::clone(&self.0);
            // A thread of its own: out of processes, tokio's spawn_blocking
            // would panic; here the lookup just waits for the next try.
            *trying = std::thread::Builder::new()
                .name("lookup".into())
                .spawn(move || {
                    if inner.resolve().is_none() {
                        tracing::info!(service = %inner.service, "user {:?} found: serving again", inner.user.as_deref().unwrap_or_default());
                    }
                })
                .is_ok();
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
        match lookup(name, self.group.as_deref()) {
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
                    reason: reason.clone(),
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
fn lookup(name: &str, group: Option<&str>) -> Result<(Account, Option<Creds>), String> {
    let mut user = User::from_name(name)
        .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
        .ok_or_else(|| format!("unknown user {name:?}"))?;
    if let Some(g) = group {
        // `user.group`: that group is the primary one; the user's
        // supplementary groups stay.
        user.gid = nix::unistd::Group::from_name(g)
            .map_err(|e| format!("cannot look up group {g:?}: {e}"))?
            .ok_or_else(|| format!("unknown group {g:?}"))?
            .gid;
    }
    let creds = if user.uid == Uid::effective() && (group.is_none() || user.gid == Gid::effective())
    {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn service(extra: &str) -> Service {
        let text = format!("[[service]]\nport = 7000\ncommand = [\"/usr/bin/env\"]\n{extra}");
        let mut c = crate::config::parse(Path::new("t.toml"), text.as_bytes()).unwrap();
        c.services.remove(0)
    }

    fn daemon_env() -> impl Iterator<Item = (OsString, OsString)> {
        [
            ("PATH", "/root/bin:/usr/bin"),
            ("SECRET_TOKEN", "s3cret"),
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("LISTEN_FDS", "3"),
            ("WININETD_LOG", "debug"),
            ("TZ", "UTC"),
            ("LANG", "C.UTF-8"),
            ("LC_TIME", "C"),
            ("LCX", "not a locale"),
            ("HOME", "/root"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
    }

    fn env_of(t: &ExecTemplate) -> Vec<String> {
        let ready = t.ready().unwrap_or_else(|e| panic!("{e}"));
        ready
            .env
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    fn names(env: &[String]) -> Vec<&str> {
        let mut v: Vec<&str> = env.iter().map(|kv| kv.split('=').next().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_program_gets_a_defined_environment_not_the_daemons() {
        let svc = service("env = { GREETING = \"hi\" }");
        let t = ExecTemplate::with_daemon_env(&svc, &svc_pass_env(&svc), daemon_env()).unwrap();
        assert_eq!(t.resolve(), None);
        let env = env_of(&t);
        assert_eq!(
            names(&env),
            [
                "GREETING", "HOME", "LANG", "LC_TIME", "LOGNAME", "PATH", "SHELL", "TZ", "USER"
            ],
            "{env:?}"
        );
        assert!(env.contains(&format!("PATH={DEFAULT_PATH}")));
        assert!(env.contains(&"TZ=UTC".to_string()));
        // PATH is searched as the program's, not the daemon's.
        assert_eq!(t.program().candidates[0].to_bytes(), b"/usr/bin/env");
        let words = Program::new(
            vec![CString::new("env").unwrap()],
            None,
            Some(DEFAULT_PATH.as_bytes()),
            None,
        );
        assert_eq!(words.candidates[0].to_bytes(), b"/usr/local/sbin/env");
    }

    fn svc_pass_env(svc: &Service) -> Vec<String> {
        svc.pass_env
            .clone()
            .unwrap_or_else(|| crate::config::Globals::default().pass_env)
    }

    #[test]
    fn pass_env_names_what_passes_but_never_the_daemons_own_settings() {
        let svc = service(
            "pass_env = [\"SECRET_*\", \"NOTIFY_SOCKET\", \"LISTEN_FDS\", \"WININETD_*\", \"PATH\"]\nenv = { TZ = \"Europe/Rome\" }",
        );
        let t = ExecTemplate::with_daemon_env(&svc, &svc_pass_env(&svc), daemon_env()).unwrap();
        t.resolve();
        let env = env_of(&t);
        assert!(env.contains(&"SECRET_TOKEN=s3cret".to_string()), "{env:?}");
        assert!(
            env.contains(&"PATH=/root/bin:/usr/bin".to_string()),
            "{env:?}"
        );
        // The service's env wins over a passed variable; TZ was not passed.
        assert!(env.contains(&"TZ=Europe/Rome".to_string()), "{env:?}");
        for never in ["NOTIFY_SOCKET", "LISTEN_FDS", "WININETD_LOG", "LANG"] {
            assert!(!names(&env).contains(&never), "{never} in {env:?}");
        }
        // The search follows the program's PATH.
        let svc = service("pass_env = [\"PATH\"]");
        let svc = Service {
            program: crate::config::Program::Command(crate::config::CommandLine::Argv(vec![
                "env".into(),
            ])),
            ..svc
        };
        let t = ExecTemplate::with_daemon_env(&svc, &svc_pass_env(&svc), daemon_env()).unwrap();
        let c: Vec<&[u8]> = t
            .program()
            .candidates
            .iter()
            .map(|c| c.to_bytes())
            .collect();
        assert_eq!(c, [&b"/root/bin/env"[..], b"/usr/bin/env"]);
    }

    #[test]
    fn an_unknown_user_refuses_with_a_reason_logged_once_per_window() {
        let svc = service("user = \"wininetd-no-such-user\"");
        let t = ExecTemplate::with_daemon_env(&svc, &svc_pass_env(&svc), daemon_env()).unwrap();
        let warning = t.resolve().expect("a warning");
        assert!(
            warning.contains("unknown user \"wininetd-no-such-user\""),
            "{warning}"
        );
        match t.ready() {
            Err(LaunchError::User(m)) => assert!(m.contains("wininetd-no-such-user"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
        // The next refusals within the window are not logged again.
        for _ in 0..100 {
            assert!(matches!(t.ready(), Err(LaunchError::Quiet)));
        }
    }

    #[test]
    fn a_user_unknown_at_load_is_looked_up_again_off_the_calling_thread() {
        // As if the lookup at load had failed (say, the directory server
        // was down): the next connection is refused and starts a lookup
        // on a blocking thread; once it has found the user, programs run.
        let svc = service("user = \"nobody\"");
        let t = ExecTemplate::with_daemon_env(&svc, &svc_pass_env(&svc), daemon_env()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _in_runtime = runtime.enter();
        assert!(matches!(t.ready(), Err(LaunchError::User(_))));
        let deadline = Instant::now() + Duration::from_secs(10);
        let ready = loop {
            if let Ok(r) = t.ready() {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "the user was not looked up again"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(ready.env.iter().any(|kv| kv.to_bytes() == b"USER=nobody"));
    }

    #[test]
    fn a_known_user_gets_its_account_and_identity() {
        let svc = service("user = \"nobody\"");
        let t = ExecTemplate::with_daemon_env(&svc, &svc_pass_env(&svc), daemon_env()).unwrap();
        assert_eq!(t.resolve(), None);
        let nobody = User::from_name("nobody").unwrap().unwrap();
        let env = env_of(&t);
        assert!(env.contains(&"USER=nobody".to_string()), "{env:?}");
        assert!(env.contains(&"LOGNAME=nobody".to_string()), "{env:?}");
        assert!(
            env.contains(&format!("HOME={}", nobody.dir.display())),
            "{env:?}"
        );
        let ready = t.ready().unwrap();
        let creds = ready
            .creds
            .expect("an identity to switch to (run the tests as root, as CI does)");
        assert_eq!(
            (creds.uid, creds.gid),
            (nobody.uid.as_raw(), nobody.gid.as_raw())
        );
    }
}
