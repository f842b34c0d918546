//! sshd's StrictModes for the files root reads: a config that another user
//! can change picks the programs root starts, so as root wininetd refuses
//! one that is not owned by root or is writable by group or others — and
//! the same for each directory above it, since whoever can write to a
//! directory can replace the file in it (a sticky directory such as /tmp
//! is fine: others cannot replace an entry they do not own).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `Err(why)` when wininetd runs as root and `path` (a config) could be
/// changed by another user. A path that cannot be resolved is left to the
/// read that follows, which names the error.
pub fn check_config_file(path: &Path) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    check_owned_by(path, 0, "root")
}

/// Password files are never read on Unix (programs switch user without a
/// password), so there is nothing to check.
pub fn check_password_file(_path: &Path) -> Result<(), String> {
    Ok(())
}

fn check_owned_by(path: &Path, uid: u32, owner: &str) -> Result<(), String> {
    let Ok(real) = std::fs::canonicalize(path) else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(&real) else {
        return Ok(());
    };
    check_one(&real, &meta, uid, owner, None)?;
    for dir in real.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        check_one(dir, &meta, uid, owner, Some(path))?;
    }
    Ok(())
}

/// One file, or one directory above `of`.
fn check_one(
    path: &Path,
    meta: &std::fs::Metadata,
    uid: u32,
    owner: &str,
    of: Option<&Path>,
) -> Result<(), String> {
    let p = path.display();
    let what = match of {
        None => format!("{p}"),
        Some(f) => format!("{p} (a directory above {})", f.display()),
    };
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid {
        return Err(format!(
            "{what} is owned by uid {}, not {owner} (mode {mode:04o}); wininetd runs as {owner} \
             and refuses a config another user can change; fix: chown {owner} {p}",
            meta.uid()
        ));
    }
    let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky_dir {
        return Err(format!(
            "{what} is writable by group or others (mode {mode:04o}); wininetd runs as {owner} \
             and refuses a config another user can change; fix: chmod go-w {p}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    /// Checked against the test's own uid, so it runs as any user.
    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_private_file_in_a_private_directory_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.conf");
        std::fs::write(&f, "x").unwrap();
        mode(&f, 0o644);
        // /tmp is world-writable but sticky; the tempdir is 0700.
        let r = check_owned_by(&f, me(), "me");
        // An ancestor of the tempdir owned by someone else (a CI checkout
        // under /home) would be named; / and /tmp are root's.
        if me() == 0 {
            assert_eq!(r, Ok(()));
        } else {
            assert!(r.is_err_and(|e| e.contains("not me")));
        }
    }

    #[test]
    fn a_file_writable_by_group_or_others_is_named_with_its_mode_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.conf");
        std::fs::write(&f, "x").unwrap();
        for m in [0o664, 0o646, 0o666] {
            mode(&f, m);
            let e = check_owned_by(&f, me(), "me").unwrap_err();
            let real = std::fs::canonicalize(&f).unwrap();
            assert!(
                e.starts_with(&format!("{} is writable", real.display())),
                "{e}"
            );
            assert!(e.contains(&format!("(mode {m:04o})")), "{e}");
            assert!(
                e.ends_with(&format!("fix: chmod go-w {}", real.display())),
                "{e}"
            );
        }
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.conf");
        std::fs::write(&f, "x").unwrap();
        mode(&f, 0o600);
        let e = check_owned_by(&f, me() + 1, "root").unwrap_err();
        assert!(
            e.contains(&format!("owned by uid {}, not root", me())),
            "{e}"
        );
        assert!(e.contains("(mode 0600)"), "{e}");
        assert!(e.contains("fix: chown root "), "{e}");
    }

    #[test]
    fn a_writable_directory_above_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("etc");
        std::fs::create_dir(&sub).unwrap();
        let f = sub.join("w.conf");
        std::fs::write(&f, "x").unwrap();
        mode(&f, 0o644);
        mode(&sub, 0o777);
        let e = check_owned_by(&f, me(), "me").unwrap_err();
        let real_sub = std::fs::canonicalize(&sub).unwrap();
        assert!(
            e.starts_with(&format!("{} (a directory above", real_sub.display())),
            "{e}"
        );
        assert!(e.contains("(mode 0777)"), "{e}");
        mode(&sub, 0o1777);
        let r = check_owned_by(&f, me(), "me");
        assert!(
            r.as_ref().map_or_else(|e| !e.contains("etc"), |()| true),
            "{r:?}"
        );
    }
}
