//! Records the git commit for `--version`, and on Windows compiles the
//! resources into wininetd.exe: the Event Log message table, the version
//! information Explorer shows, and the application manifest.
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
    match resources(&out) {
        // Every target, so the unit tests can check the table too.
        Ok(obj) => println!("cargo::rustc-link-arg={}", obj.display()),
        Err(e) => println!(
            "cargo::warning=no resources ({e}): no Event Log message table (Event Viewer \
             will say the event description is missing but still show each line), no \
             version information, no manifest"
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

/// What Explorer's Details tab shows, and the manifest (run as the invoker:
/// the service runs as LocalSystem; `--install` wants an elevated prompt).
fn version_and_manifest(out: &Path) -> Result<String, String> {
    let manifest = out.join("wininetd.exe.manifest");
    std::fs::write(&manifest, MANIFEST).map_err(|e| e.to_string())?;
    let v = |k: &str| env::var(k).unwrap_or_else(|_| "0".into());
    let (major, minor, patch) = (
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
    );
    let version = env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let description = env::var("CARGO_PKG_DESCRIPTION").unwrap_or_default();
    let commit = commit();
    Ok(format!(
        "\n1 24 \"{manifest}\"\n\
         1 VERSIONINFO\n\
         FILEVERSION {major},{minor},{patch},0\n\
         PRODUCTVERSION {major},{minor},{patch},0\n\
         FILEFLAGSMASK 0x3f\n\
         FILEFLAGS 0\n\
         FILEOS 0x40004\n\
         FILETYPE 1\n\
         FILESUBTYPE 0\n\
         BEGIN\n\
         BLOCK \"StringFileInfo\"\n\
         BEGIN\n\
         BLOCK \"040904b0\"\n\
         BEGIN\n\
         VALUE \"CompanyName\", \"the wininetd authors\"\n\
         VALUE \"FileDescription\", \"{description}\"\n\
         VALUE \"FileVersion\", \"{version}\"\n\
         VALUE \"InternalName\", \"wininetd\"\n\
         VALUE \"LegalCopyright\", \"MIT License, the wininetd authors\"\n\
         VALUE \"OriginalFilename\", \"wininetd.exe\"\n\
         VALUE \"ProductName\", \"wininetd\"\n\
         VALUE \"ProductVersion\", \"{version} (commit {commit})\"\n\
         END\n\
         END\n\
         BLOCK \"VarFileInfo\"\n\
         BEGIN\n\
         VALUE \"Translation\", 0x409, 1200\n\
         END\n\
         END\n",
        manifest = manifest.display().to_string().replace('\\', "/"),
    ))
}

const MANIFEST: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<assembly xmlns="urn:schemas-microsoft-com:asm.v1" manifestVersion="1.0">
  <assemblyIdentity type="win32" name="wininetd" version="0.0.0.0"/>
  <trustInfo xmlns="urn:schemas-microsoft-com:asm.v3">
    <security>
      <requestedPrivileges>
        <requestedExecutionLevel level="asInvoker" uiAccess="false"/>
      </requestedPrivileges>
    </security>
  </trustInfo>
  <compatibility xmlns="urn:schemas-microsoft-com:compatibility.v1">
    <application>
      <supportedOS Id="{8e0f7a12-bfb3-4fe8-b9a5-48fd50a15a9a}"/>
    </application>
  </compatibility>
</assembly>
"#;

/// messages.mc → (windmc) messages.rc + MSG00409.bin; with the version
/// information and the manifest → (windres) one COFF object holding every
/// resource.
fn resources(out: &Path) -> Result<PathBuf, String> {
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
    let mut rc = std::fs::read_to_string(out.join("messages.rc")).map_err(|e| e.to_string())?;
    rc.push_str(&version_and_manifest(out)?);
    std::fs::write(out.join("resources.rc"), rc).map_err(|e| e.to_string())?;
    let obj = out.join("resources.res.o");
    run(Command::new(&windres)
        .arg("--include-dir")
        .arg(out)
        .arg("-i")
        .arg(out.join("resources.rc"))
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
