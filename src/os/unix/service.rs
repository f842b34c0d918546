//! Being a service on Unix: signals, sd_notify, and a systemd unit.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use sd_notify::NotifyState;

use super::signals::Signals;

use crate::os::{Control, HostStatus, ServiceHost};

/// Signals in, sd_notify out.
pub struct Host {
    signals: Signals,
}

impl Host {
    pub fn new() -> io::Result<Host> {
        Ok(Host {
            signals: Signals::new(&[Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT])?,
        })
    }
}

impl ServiceHost for Host {
    /// SIGHUP asks for a reload; SIGTERM and SIGINT for a stop.
    async fn next(&mut self) -> Control {
        match self.signals.recv().await {
            Ok(Signal::SIGHUP) => Control::Reload,
            Ok(_) => Control::Stop,
            Err(e) => {
                // Not expected: without signals nobody could stop us.
                tracing::error!("cannot read signals: {e}; stopping");
                Control::Stop
            }
        }
    }

    /// Tells systemd (when it started us with Type=notify) what we are
    /// doing; without NOTIFY_SOCKET this does nothing.
    fn status(&mut self, status: HostStatus) {
        let sent = match status {
            HostStatus::Ready => {
                sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("serving")])
            }
            HostStatus::Reloading => NotifyState::monotonic_usec_now()
                .and_then(|now| sd_notify::notify(&[NotifyState::Reloading, now])),
            HostStatus::Stopping => sd_notify::notify(&[NotifyState::Stopping]),
        };
        if let Err(e) = sent {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }
}

const UNIT_PATH: &str = "/etc/systemd/system/wininetd.service";

/// The systemd unit that runs `exe` with `args`.
///
/// Type=notify because we report READY only once every listener is bound;
/// KillMode=process so that stopping us leaves running programs to finish,
/// as inetd does.
pub fn unit_text(exe: &Path, args: &[String]) -> String {
    let mut exec = systemd_quote(&exe.to_string_lossy());
    for a in args {
        exec.push(' ');
        exec.push_str(&systemd_quote(a));
    }
    format!(
        "[Unit]\n\
         Description=wininetd super-server (WinInetd for Unix)\n\
         After=network.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         ExecStart={exec}\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         KillMode=process\n\
         Restart=on-failure\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Quotes one ExecStart word: `%` and `$` are doubled so systemd takes them
/// literally; words with blanks, quotes or backslashes are double-quoted.
fn systemd_quote(word: &str) -> String {
    let escaped = word.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && !escaped.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("systemctl {} failed: {status}", args.join(" ")))
    }
}

/// `--install`: writes the unit and, where systemd runs, enables it.
pub fn install(args: &[String]) -> Result<String, String> {
    let exe: PathBuf =
        std::env::current_exe().map_err(|e| format!("cannot find the wininetd executable: {e}"))?;
    install_at(Path::new(UNIT_PATH), &exe, args, systemd_runs())
}

fn install_at(unit: &Path, exe: &Path, args: &[String], systemd: bool) -> Result<String, String> {
    let shown = unit.display();
    if unit.exists() {
        return Err(format!(
            "{shown} already exists: run `wininetd --remove` first"
        ));
    }
    std::fs::write(unit, unit_text(exe, args))
        .map_err(|e| format!("cannot write {shown}: {e} (are you root?)"))?;
    if systemd {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "wininetd.service"])?;
        Ok(format!(
            "installed and enabled {shown}; start it with `systemctl start wininetd`"
        ))
    } else {
        Ok(format!(
            "wrote {shown}; systemd is not running here, so it was not enabled"
        ))
    }
}

/// `--remove`: stops and disables the unit where systemd runs, then deletes it.
pub fn remove() -> Result<String, String> {
    remove_at(Path::new(UNIT_PATH), systemd_runs())
}

fn remove_at(unit: &Path, systemd: bool) -> Result<String, String> {
    let shown = unit.display();
    if !unit.exists() {
        return Err(format!("{shown} does not exist: wininetd is not installed"));
    }
    if systemd {
        systemctl(&["disable", "--now", "wininetd.service"])?;
    }
    std::fs::remove_file(unit).map_err(|e| format!("cannot delete {shown}: {e}"))?;
    if systemd {
        systemctl(&["daemon-reload"])?;
    }
    Ok(format!("removed {shown}"))
}

/// `--reload`: asks the installed service to re-read its config.
pub fn reload() -> Result<String, String> {
    if !systemd_runs() {
        return Err("systemd is not running: send SIGHUP to the wininetd process".into());
    }
    systemctl(&["reload", "wininetd.service"])?;
    Ok("asked wininetd to reload".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_notify_with_reload_and_carries_the_options() {
        let args: Vec<String> = ["--cfgfile", "/etc/my inetd.conf", "--timeout", "30"]
            .map(String::from)
            .to_vec();
        let unit = unit_text(Path::new("/usr/local/bin/wininetd"), &args);
        assert!(unit.contains("\nType=notify\n"), "{unit}");
        assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
        assert!(unit.contains("\nKillMode=process\n"));
        assert!(unit.contains(
            "\nExecStart=/usr/local/bin/wininetd --cfgfile \"/etc/my inetd.conf\" --timeout 30\n"
        ));
        assert!(unit.contains("\nWantedBy=multi-user.target\n"));
    }

    #[test]
    fn install_writes_the_unit_once_and_remove_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let unit = dir.path().join("wininetd.service");
        let exe = Path::new("/usr/local/bin/wininetd");
        let args = ["--cfgfile".to_string(), "/etc/w.conf".to_string()];
        let msg = install_at(&unit, exe, &args, false).unwrap();
        assert!(msg.contains("not enabled"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(&unit).unwrap(),
            unit_text(exe, &args)
        );
        let again = install_at(&unit, exe, &args, false).unwrap_err();
        assert!(again.contains("already exists"), "{again}");
        remove_at(&unit, false).unwrap();
        assert!(!unit.exists());
        let gone = remove_at(&unit, false).unwrap_err();
        assert!(gone.contains("not installed"), "{gone}");
    }

    #[test]
    fn specifiers_and_variables_are_escaped() {
        assert_eq!(systemd_quote("/a%b$c"), "/a%%b$$c");
        assert_eq!(systemd_quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(systemd_quote(""), "\"\"");
    }
}
