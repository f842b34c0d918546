//! `--check`'s look at the system: would each service's program and user
//! work here? Errors are what start would refuse; warnings what would fail
//! only when a connection comes.

use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, Uid, User, access};

use crate::config::{Program, RunAs, Service};
use crate::os::Finding;

/// What is wrong with `svc` on this machine, as wininetd would run it now
/// (as the user running `--check`).
pub fn preflight(svc: &Service) -> Vec<Finding> {
    let mut found = Vec::new();
    if let RunAs::User { name, .. } = &svc.user {
        let me = Uid::effective();
        match User::from_name(name) {
            Ok(Some(u)) if me.is_root() || u.uid == me => {}
            Ok(Some(_)) => found.push(Finding::Error(format!(
                "runs as user {name:?}, but wininetd would run as uid {me}, not root, and \
                 cannot switch users: start would refuse"
            ))),
            _ if me.is_root() => found.push(Finding::Warning(format!(
                "user {name:?} does not exist: every connection would be refused"
            ))),
            _ => found.push(Finding::Error(format!(
                "user {name:?} does not exist (and wininetd would not run as root): start \
                 would refuse"
            ))),
        }
    }
    if let Some(g) = &svc.group
        && matches!(nix::unistd::Group::from_name(g), Ok(None))
    {
        found.push(Finding::Warning(format!(
            "group {g:?} does not exist: every connection would be refused"
        )));
    }
    if let Program::Command(cmd) = &svc.program
        && let Ok(argv) = cmd.argv()
        && let Some(problem) = program_problem(&argv[0], &program_path(svc))
    {
        found.push(Finding::Warning(format!(
            "{problem}: every connection would fail to start it"
        )));
    }
    if let Some(dir) = &svc.working_directory
        && !dir.is_dir()
    {
        found.push(Finding::Warning(format!(
            "working_directory {} is not a directory: every connection would fail",
            dir.display()
        )));
    }
    found
}

/// The PATH a program of `svc` is looked up in: its `env`'s, else the
/// default every program gets (see `template.rs`).
fn program_path(svc: &Service) -> String {
    svc.env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or_else(|| crate::os::DEFAULT_PATH.to_string(), |(_, v)| v.clone())
}

/// Why `program` (argv[0]: a path, or a name looked up in `path` as execvp
/// does) cannot be executed, if it cannot.
fn program_problem(program: &str, path: &str) -> Option<String> {
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        match find_in_path(program, path) {
            Some(p) => p,
            None => return Some(format!("program {program:?} is not found in PATH")),
        }
    };
    match path.metadata() {
        Err(e) => Some(format!("program {}: {e}", path.display())),
        Ok(m) if !m.is_file() => Some(format!("program {} is not a file", path.display())),
        Ok(_) if access(&path, AccessFlags::X_OK).is_err() => {
            Some(format!("program {} is not executable", path.display()))
        }
        Ok(_) => None,
    }
}

fn find_in_path(name: &str, path: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| Path::new(p).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_that_cannot_run_are_named() {
        assert_eq!(program_problem("/bin/cat", crate::os::DEFAULT_PATH), None);
        assert_eq!(program_problem("cat", crate::os::DEFAULT_PATH), None);
        let missing = program_problem("/nonexistent/prog", crate::os::DEFAULT_PATH).unwrap();
        assert!(missing.contains("/nonexistent/prog"), "{missing}");
        assert!(
            program_problem("no-such-program-here", crate::os::DEFAULT_PATH)
                .unwrap()
                .contains("PATH")
        );
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        // Even root may execute only a file with an x bit; this one has none.
        let p = program_problem(plain.to_str().unwrap(), crate::os::DEFAULT_PATH).unwrap();
        assert!(p.contains("not executable"), "{p}");
        assert!(
            program_problem(dir.path().to_str().unwrap(), crate::os::DEFAULT_PATH)
                .unwrap()
                .contains("not a file")
        );
    }
}
