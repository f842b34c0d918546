//! `USER:PASS`: a batch logon for each connection, so the program runs as
//! that user or not at all — never as the service account.

use std::future::Future;
use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::time::Duration;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Security::{LOGON32_LOGON_BATCH, LOGON32_PROVIDER_DEFAULT, LogonUserW};

use super::env::wide;
use crate::config::{Password, RunAs, Secret};
use crate::os::LaunchError;

/// How long a logon (with its password-file read) may take before the
/// connection is given up: a domain controller that does not answer.
const LOGON_TIMEOUT: Duration = Duration::from_secs(30);

/// A user's logon token, for one program.
pub struct Logon(pub(super) OwnedHandle);

/// For a USER service: the logon, run on tokio's blocking pool with a
/// timeout, so that a slow domain controller or password file delays only
/// this connection. `None` for services that run as wininetd itself.
pub fn logon_pending(
    user: &RunAs,
) -> Option<impl Future<Output = Result<Logon, LaunchError>> + Send + 'static> {
    let RunAs::User { name, secret } = user else {
        return None;
    };
    let (name, secret) = (name.clone(), secret.clone());
    Some(async move {
        let who = name.clone();
        off_thread(LOGON_TIMEOUT, move || logon(&name, secret.as_ref()))
            .await
            .map(Logon)
            .map_err(|e| {
                LaunchError::User(e.unwrap_or_else(|| {
                    format!(
                        "cannot log on as user {who:?}: no answer within {} s; the \
                         connection is closed and nothing runs",
                        LOGON_TIMEOUT.as_secs()
                    )
                }))
            })
    })
}

/// Runs `work` on the blocking pool; `Err(None)` when it takes longer than
/// `limit` (it still finishes, and what it returns is dropped then).
async fn off_thread<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Option<String>> {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(r)) => r.map_err(Some),
        Ok(Err(e)) => Err(Some(format!("the logon failed: {e}"))),
        Err(_) => Err(None),
    }
}

/// How `name` is passed to LogonUserW: `DOMAIN\user` → (user, DOMAIN);
/// `user@domain` (a UPN) → (user@domain, no domain); `user` → (user, `.`),
/// the local account database.
pub fn split_user(name: &str) -> (&str, Option<&str>) {
    if let Some((domain, user)) = name.split_once('\\') {
        (user, Some(domain))
    } else if name.contains('@') {
        (name, None)
    } else {
        (name, Some("."))
    }
}

/// The password of a `USER:PASS` or `USER:@FILE` service. A file's last
/// line break is not part of the password.
fn password(name: &str, secret: Option<&Secret>) -> Result<Password, String> {
    match secret {
        Some(Secret::Inline(p)) => Ok(p.clone()),
        Some(Secret::File(path)) => {
            let mut text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read the password of user {name:?} from {}: {e}",
                    path.display()
                )
            })?;
            while text.ends_with(['\n', '\r']) {
                text.pop();
            }
            Ok(Password::new(text))
        }
        None => Err(format!(
            "user {name:?} has no password in the config; Windows needs one to log on \
             (write USER:PASS or USER:@FILE)"
        )),
    }
}

/// The message for a failed logon: the user and the Windows error (text
/// and code). It is built without the password in reach.
fn logon_failed(name: &str, err: &std::io::Error) -> String {
    format!(
        "cannot log on as user {name:?}: {err} (Windows error {}); the connection is closed \
         and nothing runs (the account needs the \"Log on as a batch job\" right)",
        err.raw_os_error().unwrap_or(0)
    )
}

/// Logs `name` on as a batch job and returns its primary token. The error
/// names the user and the Windows error, never the password.
pub fn logon(name: &str, secret: Option<&Secret>) -> Result<OwnedHandle, String> {
    let pass = password(name, secret)?;
    let (user, domain) = split_user(name);
    let bad = || format!("user name {name:?} holds a NUL");
    let user_w = wide(user).ok_or_else(bad)?;
    let domain_w = match domain {
        Some(d) => Some(wide(d).ok_or_else(bad)?),
        None => None,
    };
    let mut pass_w: Vec<u16> = pass.expose().encode_utf16().chain([0]).collect();
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: every string is NUL-terminated and outlives the call; `token`
    // is a valid out pointer.
    let ok = unsafe {
        LogonUserW(
            user_w.as_ptr(),
            domain_w.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
            pass_w.as_ptr(),
            LOGON32_LOGON_BATCH,
            LOGON32_PROVIDER_DEFAULT,
            &mut token,
        )
    };
    let err = std::io::Error::last_os_error();
    for c in pass_w.iter_mut() {
        // SAFETY: a volatile write of zero to an element we own, so the
        // password does not stay in freed memory.
        unsafe { std::ptr::write_volatile(c, 0) };
    }
    if ok == 0 || token.is_null() {
        return Err(logon_failed(name, &err));
    }
    // SAFETY: LogonUserW succeeded, so `token` is a handle we now own.
    Ok(unsafe { OwnedHandle::from_raw_handle(token) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_user_name_forms() {
        assert_eq!(split_user("davide"), ("davide", Some(".")));
        assert_eq!(split_user("CORP\\davide"), ("davide", Some("CORP")));
        assert_eq!(
            split_user("davide@corp.example"),
            ("davide@corp.example", None)
        );
    }

    #[test]
    fn password_file_loses_its_line_break_only() {
        let dir = std::env::temp_dir().join(format!("wininetd-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret.txt");
        std::fs::write(&f, "s3 cr:et \r\n").unwrap();
        let p = password("u", Some(&Secret::File(f.clone()))).unwrap();
        assert_eq!(p.expose(), "s3 cr:et ");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_password_file_is_named_and_no_password_is_an_error() {
        let e = password("u", Some(&Secret::File("C:\\no\\such\\pw.txt".into()))).unwrap_err();
        assert!(e.contains("pw.txt"), "{e}");
        assert!(password("u", None).is_err());
    }

    #[test]
    fn a_failed_logon_names_the_user_and_the_error_code() {
        // ERROR_LOGON_FAILURE
        let e = logon_failed("CORP\\davide", &std::io::Error::from_raw_os_error(1326));
        assert!(e.contains("\"CORP\\\\davide\""), "{e}");
        assert!(e.contains("Windows error 1326"), "{e}");
    }

    /// Running under Wine (ntdll exports wine_get_version).
    fn under_wine() -> bool {
        use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
        let ntdll = wide("ntdll.dll").unwrap();
        // SAFETY: ntdll is always loaded; a NUL-terminated export name.
        unsafe {
            let m = GetModuleHandleW(ntdll.as_ptr());
            !m.is_null() && GetProcAddress(m, c"wine_get_version".as_ptr().cast()).is_some()
        }
    }

    /// On Windows an unknown account fails to log on, and the message names
    /// the user, never the password. Wine's LogonUserW accepts any name and
    /// password: there the logon succeeds (and the wine.rs tests show that
    /// such a service still never runs as the service account).
    #[test]
    fn an_unknown_account_never_leaks_the_password() {
        let secret = Secret::Inline(Password::new("Sup3rS3cret!"));
        match logon("nosuchuser-wininetd", Some(&secret)) {
            Err(e) => {
                assert!(!under_wine(), "Wine refused a logon: {e}");
                assert!(e.contains("nosuchuser-wininetd"), "{e}");
                assert!(!e.contains("Sup3rS3cret!"), "{e}");
            }
            Ok(_) => assert!(under_wine(), "Windows logged an unknown account on"),
        }
    }

    /// A logon that hangs (a domain controller that does not answer) runs
    /// on the blocking pool: the event loop goes on meanwhile, and the
    /// connection is given up after the limit, not after the logon.
    #[test]
    fn a_slow_logon_leaves_the_loop_running_and_times_out() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let started = std::time::Instant::now();
            let slow = tokio::spawn(off_thread(Duration::from_millis(300), || {
                std::thread::sleep(Duration::from_secs(6));
                Ok(())
            }));
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Had the logon run on the loop, these ticks came after it.
            assert!(started.elapsed() < Duration::from_secs(3));
            assert_eq!(slow.await.unwrap(), Err(None));
            assert!(started.elapsed() < Duration::from_secs(4));
            // A failure's message comes through as it is.
            let failed = off_thread::<()>(Duration::from_secs(30), || Err("no such user".into()));
            assert_eq!(failed.await, Err(Some("no such user".to_string())));
        });
        // The hung logon's thread is not waited for.
        rt.shutdown_background();
    }
}
