//! As LocalSystem (or an elevated administrator), wininetd refuses a config
//! or a password file that a non-administrator can change: its owner must
//! be SYSTEM, Administrators, TrustedInstaller or wininetd's own account,
//! and no other account may hold write access in its DACL.

use std::path::Path;

use windows_sys::Win32::Foundation::GENERIC_ALL;
use windows_sys::Win32::Foundation::GENERIC_WRITE;
use windows_sys::Win32::Security::Authorization::SE_FILE_OBJECT;
use windows_sys::Win32::Security::INHERIT_ONLY_ACE;
use windows_sys::Win32::Storage::FileSystem::{
    DELETE, FILE_APPEND_DATA, FILE_WRITE_DATA, WRITE_DAC, WRITE_OWNER,
};

use super::env::wide;
use super::security::{self, Descriptor, Sid};

/// Rights that let an account change a file or what it says.
const WRITE_RIGHTS: u32 = FILE_WRITE_DATA
    | FILE_APPEND_DATA
    | DELETE
    | WRITE_DAC
    | WRITE_OWNER
    | GENERIC_WRITE
    | GENERIC_ALL;

const TRUSTED_INSTALLER: &str = "S-1-5-80-956008885-3425870976-2464297105-1042437464-2358498437";

pub fn check_config_file(path: &Path) -> Result<(), String> {
    check_file(path, "config")
}

pub fn check_password_file(path: &Path) -> Result<(), String> {
    check_file(path, "password file")
}

fn check_file(path: &Path, what: &str) -> Result<(), String> {
    if !security::privileged() {
        return Ok(());
    }
    let Some(name) = wide(path.display().to_string()) else {
        return Ok(());
    };
    // A file that cannot be read is left to the read, which names the error.
    let Ok(d) = security::of_named(&name, SE_FILE_OBJECT) else {
        return Ok(());
    };
    judge(&path.display().to_string(), what, &d, &trusted())
}

/// Administrators, SYSTEM, TrustedInstaller and our own account.
fn trusted() -> Vec<Sid> {
    let mut t: Vec<Sid> = [
        security::WinLocalSystemSid,
        security::WinBuiltinAdministratorsSid,
    ]
    .into_iter()
    .filter_map(|k| Sid::well_known(k).ok())
    .collect();
    t.extend(Sid::parse(TRUSTED_INSTALLER).ok());
    t.extend(Sid::process_user().ok());
    t
}

/// The verdict on one descriptor: `Err` names the file, the account that
/// can change it, and the fix.
fn judge(path: &str, what: &str, d: &Descriptor, trusted: &[Sid]) -> Result<(), String> {
    let fix = format!(
        "fix: icacls \"{path}\" /inheritance:r /grant:r SYSTEM:F Administrators:F \
         /setowner Administrators"
    );
    let is_trusted = |s: &Sid| trusted.contains(s);
    if let Some(owner) = &d.owner
        && !is_trusted(owner)
    {
        return Err(format!(
            "{path} is owned by {owner:?}, not an administrator; wininetd runs as an \
             administrator and refuses a {what} another account can change; {fix}"
        ));
    }
    let Some(aces) = &d.dacl else {
        return Err(format!(
            "{path} has no access list (everyone may change it); wininetd runs as an \
             administrator and refuses a {what} another account can change; {fix}"
        ));
    };
    let creator_owner = Sid::well_known(security::WinCreatorOwnerSid).ok();
    for ace in aces {
        let Some(sid) = &ace.sid else { continue };
        if ace.kind != security::ACCESS_ALLOWED
            || u32::from(ace.flags) & INHERIT_ONLY_ACE != 0
            || ace.mask & WRITE_RIGHTS == 0
            || is_trusted(sid)
            || creator_owner.as_ref() == Some(sid)
        {
            continue;
        }
        return Err(format!(
            "{path} can be changed by {sid:?} (access mask 0x{:x}); wininetd runs as an \
             administrator and refuses a {what} another account can change; {fix}",
            ace.mask
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::windows::security::{ACCESS_ALLOWED, Ace};
    use windows_sys::Win32::Security::WinBuiltinUsersSid;

    fn sid(k: windows_sys::Win32::Security::WELL_KNOWN_SID_TYPE) -> Sid {
        Sid::well_known(k).unwrap()
    }

    fn allow(s: Sid, mask: u32) -> Ace {
        Ace {
            kind: ACCESS_ALLOWED,
            flags: 0,
            mask,
            sid: Some(s),
        }
    }

    fn trusted() -> Vec<Sid> {
        vec![
            sid(security::WinLocalSystemSid),
            sid(security::WinBuiltinAdministratorsSid),
        ]
    }

    #[test]
    fn administrators_and_system_only_is_trusted_and_users_may_read() {
        let d = Descriptor {
            owner: Some(sid(security::WinBuiltinAdministratorsSid)),
            dacl: Some(vec![
                allow(sid(security::WinLocalSystemSid), 0x1f01ff),
                allow(sid(security::WinBuiltinAdministratorsSid), 0x1f01ff),
                allow(sid(WinBuiltinUsersSid), 0x1200a9), // read and execute
            ]),
        };
        assert_eq!(judge("C:\\w.conf", "config", &d, &trusted()), Ok(()));
    }

    #[test]
    fn write_access_for_users_is_named_with_the_fix() {
        for mask in [FILE_WRITE_DATA, FILE_APPEND_DATA, WRITE_DAC, 0x1f01ff] {
            let d = Descriptor {
                owner: Some(sid(security::WinBuiltinAdministratorsSid)),
                dacl: Some(vec![
                    allow(sid(security::WinLocalSystemSid), 0x1f01ff),
                    allow(sid(WinBuiltinUsersSid), mask),
                ]),
            };
            let e = judge("C:\\w.conf", "config", &d, &trusted()).unwrap_err();
            assert!(
                e.starts_with("C:\\w.conf can be changed by S-1-5-32-545"),
                "{e}"
            );
            assert!(e.contains(&format!("0x{mask:x}")), "{e}");
            assert!(e.contains("fix: icacls \"C:\\w.conf\""), "{e}");
        }
    }

    #[test]
    fn an_untrusted_owner_and_a_null_dacl_are_refused() {
        let d = Descriptor {
            owner: Some(sid(WinBuiltinUsersSid)),
            dacl: Some(vec![]),
        };
        let e = judge("C:\\pw.txt", "password file", &d, &trusted()).unwrap_err();
        assert!(e.contains("owned by S-1-5-32-545"), "{e}");
        assert!(e.contains("refuses a password file"), "{e}");
        let d = Descriptor {
            owner: None,
            dacl: None,
        };
        let e = judge("C:\\w.conf", "config", &d, &trusted()).unwrap_err();
        assert!(e.contains("has no access list"), "{e}");
    }

    /// What Wine shows: a file's owner and DACL read back from disk (Wine
    /// gives its files SYSTEM and the user full access, Everyone read, and
    /// keeps no DACL set later), judged with the real trusted accounts:
    /// read access for Everyone is not write access; write access for
    /// Everyone added to that same list is refused.
    #[test]
    fn a_file_dacl_read_back_from_disk_is_judged() {
        let dir = std::env::temp_dir().join(format!("wininetd-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("w.conf");
        std::fs::write(&f, "10007 none cmd\n").unwrap();
        let path = f.display().to_string();
        let name = wide(path.clone()).unwrap();
        let mut d = security::of_named(&name, SE_FILE_OBJECT).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(d.owner.is_some(), "{d:?}");
        let aces = d.dacl.as_mut().expect("a DACL");
        assert!(!aces.is_empty(), "{d:?}");
        assert_eq!(
            judge(&path, "config", &d, &super::trusted()),
            Ok(()),
            "{d:?}"
        );
        let everyone = Sid::parse("S-1-1-0").unwrap();
        d.dacl
            .as_mut()
            .unwrap()
            .push(allow(everyone, FILE_WRITE_DATA));
        let e = judge(&path, "config", &d, &super::trusted()).unwrap_err();
        assert!(e.contains("can be changed by S-1-1-0"), "{e}");
    }
}
