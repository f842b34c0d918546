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
/// What `--install --socket-activation` wrote before units were per service;
/// `--remove` still deletes it.
const OLD_SOCKET_UNIT: &str = "wininetd.socket";

/// One listener of the config: its service's name, protocol and address.
pub type Listener = (String, Protocol, SocketAddr);

/// The systemd unit that runs `exe` with `args`.
///
/// Type=notify because we report READY only once every listener is bound;
/// KillMode=process so that stopping us leaves running programs to finish,
/// as inetd does; CPUWeight= so the programs (each in its own session)
/// share the service's scheduling group instead of getting an autogroup
/// each. With `sockets` (socket unit file names), it needs them: they hold
/// the listening sockets across restarts.
pub fn unit_text(exe: &Path, args: &[String], sockets: &[String]) -> String {
    let mut exec = systemd_quote(&exe.to_string_lossy());
    for a in args {
        exec.push(' ');
        exec.push_str(&systemd_quote(a));
    }
    let (needs_sockets, takes_sockets) = if sockets.is_empty() {
        (String::new(), String::new())
    } else {
        let list = sockets.join(" ");
        (
            format!("Requires={list}\nAfter={list}\n"),
            format!("Sockets={list}\n"),
        )
    };
    format!(
        "[Unit]\n\
         Description=wininetd super-server (WinInetd for Unix)\n\
         Documentation=man:wininetd(8) man:wininetd.conf(5)\n\
         After=network.target\n\
         {needs_sockets}\
         \n\
         [Service]\n\
         Type=notify\n\
         ExecStart={exec}\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         KillMode=process\n\
         # Turns on the cpu controller for this unit, so the programs (each started in\n\
         # its own session) share the service's scheduling group with wininetd instead\n\
         # of getting one autogroup each: under a full CPU that keeps the accept loop's\n\
         # latency tail where a peer's is. 100 is the default weight.\n\
         CPUWeight=100\n\
         Restart=on-failure\n\
         {takes_sockets}\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The socket units for `listeners`, as (file name, text): one per service,
/// because `FileDescriptorName=` names every socket of a unit alike and
/// wininetd matches a passed socket to the service of that name. Each holds
/// one `ListenStream=`/`ListenDatagram=` per address of its service. systemd
/// binds them and keeps them open while wininetd restarts, so clients wait
/// in the queue instead of being refused. IPv6 sockets are IPv6-only, as
/// wininetd's own are.
pub fn socket_units(listeners: &[Listener]) -> Vec<(String, String)> {
    let mut names: Vec<&str> = Vec::new();
    for (name, _, _) in listeners {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names
        .iter()
        .enumerate()
        .map(|(n, name)| {
            let mine: Vec<_> = listeners
                .iter()
                .filter(|(s, _, _)| s == name)
                .map(|(_, p, a)| (*p, *a))
                .collect();
            (socket_unit_name(name, n), socket_unit_text(name, &mine))
        })
        .collect()
}

/// `wininetd-<name>.socket`, the name escaped as `systemd-escape` does; a
/// name too long for a unit file takes the service's place in the config.
fn socket_unit_name(service: &str, index: usize) -> String {
    let mut escaped = String::new();
    for (i, b) in service.bytes().enumerate() {
        match b {
            b'/' => escaped.push('-'),
            b'.' if i == 0 => escaped.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => {
                escaped.push(b as char)
            }
            b => escaped.push_str(&format!("\\x{b:02x}")),
        }
    }
    let file = format!("wininetd-{escaped}.socket");
    // systemd's limit on a unit name.
    if file.len() <= 255 {
        file
    } else {
        format!("wininetd-{index}.socket")
    }
}

/// What systemd accepts as a `FileDescriptorName=`: printable ASCII without
/// `:` (the separator in LISTEN_FDNAMES), at most 255 bytes. A service with
/// another name gets none and is matched by address alone.
fn fd_name_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b':')
        && name.trim() == name
        && !name.contains(['%', '\\'])
}

fn socket_unit_text(service: &str, listeners: &[(Protocol, SocketAddr)]) -> String {
    let mut listen = String::new();
    for (protocol, addr) in listeners {
        let key = match protocol {
            Protocol::Tcp => "ListenStream",
            Protocol::Udp => "ListenDatagram",
        };
        listen.push_str(&format!("{key}={addr}\n"));
    }
    let fd_name = if fd_name_is_valid(service) {
        format!("FileDescriptorName={service}\n")
    } else {
        String::new()
    };
    format!(
        "[Unit]\n\
         Description=wininetd listening sockets of service {service:?}\n\
         Documentation=man:wininetd(8)\n\
         \n\
         [Socket]\n\
         {listen}\
         {fd_name}\
         Service={SERVICE_UNIT}\n\
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

/// `--install --socket-activation`: the unit and a socket unit per service
/// holding `listeners`.
pub fn install_socket_activated(args: &[String], listeners: &[Listener]) -> Result<String, String> {
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
    socket: Option<&[Listener]>,
    systemd: bool,
) -> Result<String, String> {
    let unit = dir.join(SERVICE_UNIT);
    let sockets = socket.map(socket_units).unwrap_or_default();
    let socket_files: Vec<String> = sockets.iter().map(|(f, _)| f.clone()).collect();
    let mut paths = vec![unit.clone(), dir.join(OLD_SOCKET_UNIT)];
    paths.extend(socket_files.iter().map(|f| dir.join(f)));
    for u in &paths {
        if u.exists() {
            return Err(format!(
                "{} already exists: run `wininetd --remove` first",
                u.display()
            ));
        }
    }
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text)
            .map_err(|e| format!("cannot write {}: {e} (are you root?)", path.display()))
    };
    for (file, text) in &sockets {
        write(&dir.join(file), text)?;
    }
    write(&unit, &unit_text(exe, args, &socket_files))?;
    let mut written = vec![unit.display().to_string()];
    written.extend(
        socket_files
            .iter()
            .map(|f| dir.join(f).display().to_string()),
    );
    let written = written.join(", ");
    if systemd {
        systemctl(&["daemon-reload"])?;
        let mut enable = vec!["enable", SERVICE_UNIT];
        enable.extend(socket_files.iter().map(String::as_str));
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

/// The socket units the installed service unit names in `Sockets=`, plus
/// the single socket unit an earlier version wrote, where they exist.
fn installed_socket_units(dir: &Path, unit_text: &str) -> Vec<String> {
    let mut units: Vec<String> = unit_text
        .lines()
        .filter_map(|l| l.strip_prefix("Sockets="))
        .flat_map(|l| l.split_whitespace())
        // Only names install writes: never a path out of `dir`.
        .filter(|u| u.starts_with("wininetd") && u.ends_with(".socket") && !u.contains('/'))
        .map(String::from)
        .collect();
    if !units.iter().any(|u| u == OLD_SOCKET_UNIT) {
        units.push(OLD_SOCKET_UNIT.to_string());
    }
    units.retain(|u| dir.join(u).exists());
    units
}

fn remove_at(dir: &Path, systemd: bool) -> Result<String, String> {
    let unit = dir.join(SERVICE_UNIT);
    let text = std::fs::read_to_string(&unit).map_err(|e| {
        format!(
            "{} cannot be read ({e}): wininetd is not installed",
            unit.display()
        )
    })?;
    let sockets = installed_socket_units(dir, &text);
    if systemd {
        let mut disable = vec!["disable", "--now", SERVICE_UNIT];
        disable.extend(sockets.iter().map(String::as_str));
        systemctl(&disable)?;
    }
    let mut removed = Vec::new();
    for u in std::iter::once(unit).chain(sockets.iter().map(|s| dir.join(s))) {
        std::fs::remove_file(&u).map_err(|e| format!("cannot delete {}: {e}", u.display()))?;
        removed.push(u.display().to_string());
    }
    if systemd {
        systemctl(&["daemon-reload"])?;
    }
    Ok(format!("removed {}", removed.join(", ")))
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
        let unit = unit_text(Path::new("/usr/local/bin/wininetd"), &args, &[]);
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
            unit_text(exe, &args, &[])
        );
        assert!(!dir.path().join("wininetd.socket").exists());
        let again = install_at(dir.path(), exe, &args, None, false).unwrap_err();
        assert!(again.contains("already exists"), "{again}");
        remove_at(dir.path(), false).unwrap();
        assert!(!unit.exists());
        let gone = remove_at(dir.path(), false).unwrap_err();
        assert!(gone.contains("not installed"), "{gone}");
    }

    fn listener(name: &str, protocol: Protocol, addr: &str) -> Listener {
        (name.to_string(), protocol, addr.parse().unwrap())
    }

    /// The value of every `key=` line of a unit, in order.
    fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    }

    #[test]
    fn socket_activation_writes_a_socket_unit_per_service_named_after_it_and_remove_deletes_all() {
        let dir = tempfile::tempdir().unwrap();
        let exe = Path::new("/usr/sbin/wininetd");
        let args = ["--cfgfile".to_string(), "/etc/w.toml".to_string()];
        let listeners = [
            listener("echo", Protocol::Tcp, "127.0.0.1:7007"),
            listener("echo", Protocol::Tcp, "[::]:7007"),
            listener("tcp/79", Protocol::Tcp, "0.0.0.0:79"),
            listener("time-udp", Protocol::Udp, "0.0.0.0:7013"),
        ];
        let msg = install_at(dir.path(), exe, &args, Some(&listeners), false).unwrap();
        let files = [
            "wininetd-echo.socket",
            "wininetd-tcp-79.socket",
            "wininetd-time\\x2dudp.socket",
        ];
        for f in files {
            assert!(msg.contains(f), "{msg}");
        }
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let echo = read(files[0]);
        assert_eq!(
            values(&echo, "ListenStream"),
            ["127.0.0.1:7007", "[::]:7007"]
        );
        assert_eq!(values(&echo, "FileDescriptorName"), ["echo"]);
        assert_eq!(values(&echo, "Service"), ["wininetd.service"]);
        assert_eq!(values(&echo, "BindIPv6Only"), ["ipv6-only"]);
        assert_eq!(values(&echo, "WantedBy"), ["sockets.target"]);
        let finger = read(files[1]);
        assert_eq!(values(&finger, "ListenStream"), ["0.0.0.0:79"]);
        assert_eq!(values(&finger, "FileDescriptorName"), ["tcp/79"]);
        let time = read(files[2]);
        assert_eq!(values(&time, "ListenDatagram"), ["0.0.0.0:7013"]);
        assert!(values(&time, "ListenStream").is_empty(), "{time}");
        assert_eq!(values(&time, "FileDescriptorName"), ["time-udp"]);

        let service = read("wininetd.service");
        let list = files.join(" ");
        assert_eq!(values(&service, "Sockets"), [list.as_str()]);
        assert_eq!(values(&service, "Requires"), [list.as_str()]);
        assert_eq!(values(&service, "After"), ["network.target", list.as_str()]);
        assert_eq!(
            values(&service, "ExecStart"),
            ["/usr/sbin/wininetd --cfgfile /etc/w.toml"]
        );
        let again = install_at(dir.path(), exe, &args, Some(&listeners), false).unwrap_err();
        assert!(again.contains("already exists"), "{again}");

        let msg = remove_at(dir.path(), false).unwrap();
        for f in files {
            assert!(msg.contains(f), "{msg}");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn remove_deletes_the_single_socket_unit_of_earlier_versions() {
        let dir = tempfile::tempdir().unwrap();
        let exe = Path::new("/usr/sbin/wininetd");
        let old = "[Unit]\nRequires=wininetd.socket\n";
        std::fs::write(dir.path().join("wininetd.service"), old).unwrap();
        std::fs::write(dir.path().join("wininetd.socket"), "[Socket]\n").unwrap();
        let busy = install_at(dir.path(), exe, &[], None, false).unwrap_err();
        assert!(busy.contains("already exists"), "{busy}");
        remove_at(dir.path(), false).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn unit_names_are_escaped_and_bad_fd_names_left_out() {
        assert_eq!(socket_unit_name("a.b_c:d", 0), "wininetd-a.b_c:d.socket");
        assert_eq!(
            socket_unit_name(".x y@z", 0),
            "wininetd-\\x2ex\\x20y\\x40z.socket"
        );
        assert_eq!(socket_unit_name(&"n".repeat(300), 4), "wininetd-4.socket");
        for bad in ["a:b", "é", "50%", "", " lead", "tab\t"] {
            let unit = socket_unit_text(bad, &[(Protocol::Tcp, "127.0.0.1:1".parse().unwrap())]);
            assert!(values(&unit, "FileDescriptorName").is_empty(), "{unit}");
            assert_eq!(values(&unit, "Service"), ["wininetd.service"]);
        }
        assert!(fd_name_is_valid("udp/37 time"));
    }

    /// The Debian package's units are what `--install --socket-activation`
    /// would write for its config, so the two cannot drift apart. (The
    /// packaged service does not require the sockets: they are shipped
    /// disabled, and each names wininetd.service as its `Service=`.)
    #[test]
    fn the_packaged_units_are_what_install_writes() {
        let args = ["--cfgfile", "/etc/wininetd.toml"].map(String::from);
        assert_eq!(
            include_str!("../../../packaging/debian/wininetd.service"),
            unit_text(Path::new("/usr/sbin/wininetd"), &args, &[])
        );
        let config = crate::config::parse(
            Path::new("wininetd.toml"),
            include_bytes!("../../../packaging/debian/wininetd.toml"),
        )
        .unwrap();
        let listeners: Vec<_> = config
            .services
            .iter()
            .flat_map(|s| s.addrs().map(move |a| (s.name.clone(), s.protocol, a)))
            .collect();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd");
        let units = socket_units(&listeners);
        let mut files: Vec<_> = std::fs::read_dir(&shipped)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let mut want: Vec<_> = units.iter().map(|(f, _)| f.clone()).collect();
        want.sort();
        assert_eq!(files, want);
        for (file, text) in units {
            assert_eq!(
                std::fs::read_to_string(shipped.join(&file)).unwrap(),
                text,
                "{file}"
            );
        }
    }

    #[test]
    fn specifiers_and_variables_are_escaped() {
        assert_eq!(systemd_quote("/a%b$c"), "/a%%b$$c");
        assert_eq!(systemd_quote("a\"b"), "\"a\\\"b\"");
        assert_eq!(systemd_quote(""), "\"\"");
    }
}
