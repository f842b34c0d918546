//! Records the git commit for `--version`, and on Windows compiles the
//! Event Log message table into wininetd.exe.
//!
//! The Event Log stores only an event id and our text; Event Viewer renders
//! it through the source's message file (our exe). One message, id 1 =
//! "%1", makes it show each line as is instead of "the description for
//! Event ID 1 cannot be found". Built with binutils' windmc/windres
//! (mingw); where they are missing the exe still builds, with a warning.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const MESSAGES: &str = "\
MessageIdTypedef=DWORD
LanguageNames=(English=0x409:MSG00409)

MessageId=1
Severity=Success
SymbolicName=WININETD_LINE
Language=English
%1
.
";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=WINDMC");
    println!("cargo::rerun-if-env-changed=WINDRES");
    println!("cargo::rustc-env=WININETD_COMMIT={}", commit());
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    match message_table(&out) {
        // Every target, so the unit tests can check the table too.
        Ok(obj) => println!("cargo::rustc-link-arg={}", obj.display()),
        Err(e) => println!(
            "cargo::warning=no Event Log message table ({e}); Event Viewer will say the event \
             description is missing but still show each line"
        ),
    }
}

/// The commit being built: `WININETD_COMMIT` if set (a source tarball has
/// no .git), else `git rev-parse`, else "unknown".
fn commit() -> String {
    println!("cargo::rerun-if-env-changed=WININETD_COMMIT");
    if let Ok(c) = env::var("WININETD_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // Rebuild when HEAD moves or the branch it names gets a new commit.
    if let Some(p) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo::rerun-if-changed={p}");
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--git-path", &r])
    {
        println!("cargo::rerun-if-changed={p}");
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// messages.mc → (windmc) messages.rc + MSG00409.bin → (windres) a COFF
/// object holding the MESSAGETABLE resource.
fn message_table(out: &Path) -> Result<PathBuf, String> {
    let mc = out.join("messages.mc");
    std::fs::write(&mc, MESSAGES).map_err(|e| e.to_string())?;
    let windmc = env::var("WINDMC").unwrap_or_else(|_| "x86_64-w64-mingw32-windmc".into());
    let windres = env::var("WINDRES").unwrap_or_else(|_| "x86_64-w64-mingw32-windres".into());
    run(Command::new(&windmc)
        .arg("-h")
        .arg(out)
        .arg("-r")
        .arg(out)
        .arg(&mc))?;
    let obj = out.join("messages.res.o");
    run(Command::new(&windres)
        .arg("--include-dir")
        .arg(out)
        .arg("-i")
        .arg(out.join("messages.rc"))
        .arg("-O")
        .arg("coff")
        .arg("-o")
        .arg(&obj))?;
    Ok(obj)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{name} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}
