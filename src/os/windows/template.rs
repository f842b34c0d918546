//! What is fixed per service for starting its program on Windows, built
//! once when a config is applied: the command line, the directory, the
//! account, and the variables every program of the service gets.
//!
//! A program's environment is its account's (CreateEnvironmentBlock: the
//! logged-on user's for a USER service, the daemon account's own for
//! `none`, never the daemon's process environment), the system variables
//! Windows programs cannot run without when that lacks them, the daemon's
//! variables named by `pass_env`, the service's `env`, then the
//! connection's.

use std::ffi::OsString;
use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::env;
use crate::config::{Program, RunAs, Service};
use crate::conn_env::ConnEnv;
use crate::os::never_passed;

/// Taken from the daemon when the account's block lacks them: without
/// SystemRoot, Winsock and much else fail to load; none is a secret.
const ESSENTIAL: [&str; 8] = [
    "SystemRoot",
    "SystemDrive",
    "windir",
    "ComSpec",
    "PATHEXT",
    "Path",
    "TEMP",
    "TMP",
];

type Vars = Vec<(OsString, OsString)>;

/// A service's exec template (cheap to share: one `Arc`).
#[derive(Clone)]
pub struct ExecTemplate(Arc<Inner>);

struct Inner {
    command_line: String,
    working_directory: Option<PathBuf>,
    user: RunAs,
    /// The daemon's values of [`ESSENTIAL`].
    essential: Vars,
    /// The daemon's variables named by `pass_env`, then the service's `env`.
    fixed: Vars,
    /// `none`: the daemon account's own environment, once looked up.
    own: Mutex<Arc<Vars>>,
}

impl std::fmt::Debug for ExecTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecTemplate")
            .field("command_line", &self.0.command_line)
            .finish_non_exhaustive()
    }
}

impl ExecTemplate {
    pub fn new(svc: &Service, pass_env: &[String]) -> Result<ExecTemplate, String> {
        Self::with_daemon_env(svc, pass_env, std::env::vars_os().collect())
    }

    fn with_daemon_env(
        svc: &Service,
        pass_env: &[String],
        daemon_env: Vars,
    ) -> Result<ExecTemplate, String> {
        let Program::Command(command) = &svc.program else {
            return Err("an internal service runs no program".into());
        };
        // Windows names are case-insensitive: so is `pass_env` here.
        let upper = |s: &std::ffi::OsStr| s.to_string_lossy().to_uppercase();
        let patterns: Vec<String> = pass_env.iter().map(|p| p.to_uppercase()).collect();
        let essential = daemon_env
            .iter()
            .filter(|(k, _)| ESSENTIAL.iter().any(|e| e.eq_ignore_ascii_case(&upper(k))))
            .cloned()
            .collect();
        let mut fixed: Vars = daemon_env
            .into_iter()
            .filter(|(k, _)| {
                let name = upper(k);
                !never_passed(name.as_bytes())
                    && patterns
                        .iter()
                        .any(|p| crate::config::pass_env_matches(p, name.as_bytes()))
            })
            .collect();
        fixed.extend(
            svc.env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        Ok(ExecTemplate(Arc::new(Inner {
            command_line: command.windows_command_line(),
            working_directory: svc.working_directory.clone(),
            user: svc.user.clone(),
            essential,
            fixed,
            own: Mutex::new(Arc::new(Vec::new())),
        })))
    }

    /// For `none`, reads the daemon account's own environment (off the
    /// accept thread: it reads the registry and the profile). A USER's is
    /// read at each logon. Returns a warning if it cannot be read.
    pub fn resolve(&self) -> Option<String> {
        if !matches!(self.0.user, RunAs::Daemon) {
            return None;
        }
        match own_environment() {
            Ok(vars) => {
                *self.0.own.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(vars);
                None
            }
            Err(e) => Some(format!(
                "cannot read the environment of wininetd's own account: {e}; programs get only the system variables, `pass_env` and `env`"
            )),
        }
    }

    pub(super) fn command_line(&self) -> &str {
        &self.0.command_line
    }

    pub(super) fn working_directory(&self) -> Option<&Path> {
        self.0.working_directory.as_deref()
    }

    pub(super) fn user(&self) -> &RunAs {
        &self.0.user
    }

    /// The environment block of one program: `account` (a logged-on user's;
    /// `None`: the daemon account's), the essential variables it lacks, the
    /// fixed ones, then the connection's.
    pub(super) fn block(&self, account: Option<Vars>, connection: &ConnEnv) -> Vec<u16> {
        let own;
        let account: &[(OsString, OsString)] = match &account {
            Some(vars) => vars,
            None => {
                own = Arc::clone(&self.0.own.lock().unwrap_or_else(|p| p.into_inner()));
                &own
            }
        };
        let base = self
            .0
            .essential
            .iter()
            .chain(account)
            .chain(&self.0.fixed)
            .cloned();
        env::block(base, connection)
    }
}

/// CreateEnvironmentBlock for our own token, without our variables.
fn own_environment() -> std::io::Result<Vars> {
    use windows_sys::Win32::Foundation::HANDLE;
    use windows_sys::Win32::Security::{TOKEN_DUPLICATE, TOKEN_IMPERSONATE, TOKEN_QUERY};
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: our own process's pseudo-handle; `token` is an out value.
    let ok = unsafe {
        OpenProcessToken(
            GetCurrentProcess(),
            TOKEN_QUERY | TOKEN_IMPERSONATE | TOKEN_DUPLICATE,
            &mut token,
        )
    };
    if ok == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: OpenProcessToken succeeded; the handle is ours.
    let token = unsafe { OwnedHandle::from_raw_handle(token as _) };
    super::launch::user_environment(&token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path as StdPath;

    fn service(extra: &str) -> Service {
        let text = format!("[[service]]\nport = 7000\ncommand = \"cmd.exe /c set\"\n{extra}");
        let mut c = crate::config::parse(StdPath::new("t.toml"), text.as_bytes()).unwrap();
        c.services.remove(0)
    }

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn text(block: &[u16]) -> String {
        String::from_utf16(block).unwrap()
    }

    #[test]
    fn a_program_gets_its_accounts_environment_the_system_variables_and_what_is_named() {
        let daemon = vars(&[
            ("SystemRoot", "C:\\windows"),
            ("Path", "C:\\daemon\\bin"),
            ("SECRET_TOKEN", "s3cret"),
            ("WININETD_LOG", "debug"),
            ("NOTIFY_SOCKET", "x"),
            ("tz", "UTC"),
            ("LC_TIME", "C"),
            ("OTHER", "no"),
        ]);
        let svc = service("env = { GREETING = \"hi\" }");
        let t = ExecTemplate::with_daemon_env(
            &svc,
            &[
                "TZ".into(),
                "LC_*".into(),
                "WININETD_*".into(),
                "NOTIFY_SOCKET".into(),
            ],
            daemon,
        )
        .unwrap();
        let account = vars(&[("USERPROFILE", "C:\\users\\bob"), ("Path", "C:\\bob")]);
        let mut conn = ConnEnv::default();
        conn.push("CLIENT_IP", "127.0.0.1");
        assert_eq!(
            text(&t.block(Some(account), &conn)),
            "CLIENT_IP=127.0.0.1\0GREETING=hi\0LC_TIME=C\0Path=C:\\bob\0SystemRoot=C:\\windows\0tz=UTC\0USERPROFILE=C:\\users\\bob\0\0"
        );
        // `none` before its account's environment is read: the essentials.
        assert_eq!(
            text(&t.block(None, &ConnEnv::default())),
            "GREETING=hi\0LC_TIME=C\0Path=C:\\daemon\\bin\0SystemRoot=C:\\windows\0tz=UTC\0\0"
        );
    }
}
