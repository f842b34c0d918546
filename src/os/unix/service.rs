//! Being a service on Unix: signals, sd_notify, and a systemd unit.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::Signal;
use sd_notify::NotifyState;

use super::signals::Signals;

use crate::config::Protocol;
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

const UNIT_DIR: &str = "/etc/systemd/system";
const SERVICE_UNIT: &str = "wininetd.service";
const SOCKET_UNIT: &str = "wininetd.socket";

/// The systemd unit that runs `exe` with `args`.
///
/// Type=notify because we report READY only once every listener is bound;
/// KillMode=process so that stopping us leaves running programs to finish,
/// as inetd does. With `socket`, it needs wininetd.socket, which holds the
/// listening sockets across restarts.
pub fn unit_text(exe: &Path, args: &[String], socket: bool) -> String {
    let mut exec = systemd_quote(&exe.to_string_lossy());
    for a in args {
        exec.push(' ');
        exec.push_str(&systemd_quote(a));
    }
    let needs_socket = if socket {
        "Requires=wininetd.socket\nAfter=wininetd.socket\n"
    } else {
        ""
    };
    format!(
        "[Unit]\n\
         Description=wininetd super-server (WinInetd for Unix)\n\
         Documentation=man:wininetd(8) man:wininetd.conf(5)\n\
         After=network.target\n\
         {needs_socket}\
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

/// wininetd.socket: one `ListenStream=`/`ListenDatagram=` per listener of
/// the config. systemd binds them and keeps them open while wininetd
/// restarts, so clients wait in the queue instead of being refused.
/// IPv6 sockets are IPv6-only, as wininetd's own are. (`FileDescriptorName=`
/// would name every socket of this one unit alike, so none is set: wininetd
/// matches these by address.)
pub fn socket_unit_text(listeners: &[(Protocol, SocketAddr)]) -> String {
    let mut listen = String::new();
    for (protocol, addr) in listeners {
        let key = match protocol {
            Protocol::Tcp => "ListenStream",
            Protocol::Udp => "ListenDatagram",
        };
        listen.push_str(&format!("{key}={addr}\n"));
    }
    format!(
        "[Unit]\n\
         Description=wininetd listening sockets\n\
         Documentation=man:wininetd(8)\n\
         \n\
         [Socket]\n\
         {listen}\
         BindIPv6Only=ipv6-only\n\
         Backlog=1024\n\
         \n\
         [Install]\n\
         WantedBy=sockets.target\n"
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
    let exe = current_exe()?;
    install_at(Path::new(UNIT_DIR), &exe, args, None, systemd_runs())
}

/// `--install --socket-activation`: the unit and wininetd.socket holding
/// `listeners`.
pub fn install_socket_activated(
    args: &[String],
    listeners: &[(Protocol, SocketAddr)],
) -> Result<String, String> {
    let exe = current_exe()?;
    install_at(
        Path::new(UNIT_DIR),
        &exe,
        args,
        Some(listeners),
        systemd_runs(),
    )
}

fn current_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find the wininetd executable: {e}"))
}

fn install_at(
    dir: &Path,
    exe: &Path,
    args: &[String],
    socket: Option<&[(Protocol, SocketAddr)]>,
    systemd: bool,
) -> Result<String, String> {
    let unit = dir.join(SERVICE_UNIT);
    let socket_unit = dir.join(SOCKET_UNIT);
    for u in [&unit, &socket_unit] {
        if u.exists() {
            return Err(format!(
                "{} already exists: run `wininetd --remove` first",
                u.display()
            ));
        }
    }
    let write = |path: &Path, text: String| {
        std::fs::write(path, text)
            .map_err(|e| format!("cannot write {}: {e} (are you root?)", path.display()))
    };
    if let Some(listeners) = socket {
        write(&socket_unit, socket_unit_text(listeners))?;
    }
    write(&unit, unit_text(exe, args, socket.is_some()))?;
    let written = if socket.is_some() {
        format!("{} and {}", unit.display(), socket_unit.display())
    } else {
        unit.display().to_string()
    };
    if systemd {
        systemctl(&["daemon-reload"])?;
        let mut enable = vec!["enable", SERVICE_UNIT];
        if socket.is_some() {
            enable.push(SOCKET_UNIT);
        }
        systemctl(&enable)?;
        Ok(format!(
            "installed and enabled {written}; start it with `systemctl start wininetd`"
        ))
    } else {
        Ok(format!(
            "wrote {written}; systemd is not running here, so nothing was enabled"
        ))
    }
}

/// `--remove`: stops and disables the units where systemd runs, then
/// deletes them.
pub fn remove() -> Result<String, String> {
    remove_at(Path::new(UNIT_DIR), systemd_runs())
}

fn remove_at(dir: &Path, systemd: bool) -> Result<String, String> {
    let unit = dir.join(SERVICE_UNIT);
    let socket_unit = dir.join(SOCKET_UNIT);
    if !unit.exists() {
        return Err(format!(
            "{} does not exist: wininetd is not installed",
            unit.display()
        ));
    }
    let has_socket = socket_unit.exists();
    if systemd {
        let mut disable = vec!["disable", "--now", SERVICE_UNIT];
        if has_socket {
            disable.push(SOCKET_UNIT);
        }
        systemctl(&disable)?;
    }
    let mut removed = Vec::new();
    for u in [&unit, &socket_unit] {
        if u == &unit || has_socket {
            std::fs::remove_file(u).map_err(|e| format!("cannot delete {}: {e}", u.display()))?;
            removed.push(u.display().to_string());
        }
    }
    if systemd {
        systemctl(&["daemon-reload"])?;
    }
    Ok(format!("removed {}", removed.join(" and ")))
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
        let unit = unit_text(Path::new("/usr/local/bin/wininetd"), &args, false);
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
        let msg = install_at(dir.path(), exe, &args, None, false).unwrap();
        assert!(msg.contains("nothing was enabled"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(&unit).unwrap(),
            unit_text(exe, &args, false)
        );
        assert!(!dir.path().join("wininetd.socket").exists());
        let again = install_at(dir.path(), exe, &args, None, false).unwrap_err();
        assert!(again.contains("already exists"), "{again}");
        remove_at(dir.path(), false).unwrap();
        assert!(!unit.exists());
        let gone = remove_at(dir.path(), false).unwrap_err();
        assert!(gone.contains("not installed"), "{gone}");
    }

    #[test]
    fn socket_activation_writes_a_socket_unit_per_listener_and_remove_deletes_both() {
        let dir = tempfile::tempdir().unwrap();
        let exe = Path::new("/usr/sbin/wininetd");
        let args = ["--cfgfile".to_string(), "/etc/w.toml".to_string()];
        let listeners = [
            (Protocol::Tcp, "127.0.0.1:7007".parse().unwrap()),
            (Protocol::Tcp, "[::]:7007".parse().unwrap()),
            (Protocol::Udp, "0.0.0.0:7013".parse().unwrap()),
        ];
        let msg = install_at(dir.path(), exe, &args, Some(&listeners), false).unwrap();
        assert!(msg.contains("wininetd.socket"), "{msg}");
        let socket = std::fs::read_to_string(dir.path().join("wininetd.socket")).unwrap();
        let listen: Vec<&str> = socket.lines().filter(|l| l.starts_with("Listen")).collect();
        assert_eq!(
            listen,
            [
                "ListenStream=127.0.0.1:7007",
                "ListenStream=[::]:7007",
                "ListenDatagram=0.0.0.0:7013"
            ]
        );
        assert!(socket.contains("\nBindIPv6Only=ipv6-only\n"), "{socket}");
        assert!(socket.contains("\nWantedBy=sockets.target\n"), "{socket}");
        let service = std::fs::read_to_string(dir.path().join("wininetd.service")).unwrap();
        assert!(
            service.contains("\nRequires=wininetd.socket\n"),
            "{service}"
        );
        assert!(service.contains("\nAfter=wininetd.socket\n"), "{service}");
        assert!(service.contains("\nExecStart=/usr/sbin/wininetd --cfgfile /etc/w.toml\n"));
        let msg = remove_at(dir.path(), false).unwrap();
        assert!(msg.contains("wininetd.socket"), "{msg}");
        assert!(!dir.path().join("wininetd.socket").exists());
        assert!(!dir.path().join("wininetd.service").exists());
    }

    /// The Debian package's units are what `--install --socket-activation`
    /// would write for its config, so the two cannot drift apart.
    #[test]
    fn the_packaged_units_are_what_install_writes() {
        let args = ["--cfgfile", "/etc/wininetd.toml"].map(String::from);
        assert_eq!(
            include_str!("../../../packaging/debian/wininetd.service"),
            unit_text(Path::new("/usr/sbin/wininetd"), &args, false)
        );
        let config = crate::config::parse(
            Path::new("wininetd.toml"),
            include_bytes!("../../../packaging/debian/wininetd.toml"),
        )
        .unwrap();
        let listeners: Vec<_> = config
            .services
            .iter()
            .flat_map(|s| s.addrs().map(move |a| (s.protocol, a)))
            .collect();
        assert_eq!(
            include_str!("../../../packaging/systemd/wininetd.socket"),
            socket_unit_text(&listeners)
        );
    }

    #[test]
    fn specifiers_and_variables_are_escaped() {
        assert_eq!(systemd_quote("/a%b$c"), "/a%%b$$c");
        assert_eq!(systemd_quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(systemd_quote(""), "\"\"");
    }
}
