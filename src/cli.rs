//! The command line, keeping WinInetd 0.7's long options as they were.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{Format, Handoff};

/// An inetd-like super-server for Windows and Unix (WinInetd rebuilt).
///
/// Each connection to a configured port runs a program with the connection
/// as its standard input, output and error.
#[derive(Debug, Clone, Parser)]
// args_override_self: a later option wins, so SCM start parameters can
// follow the service's launch arguments.
#[command(name = "wininetd", version = VERSION, about, args_override_self = true)]
pub struct Cli {
    /// The config file; `.toml` selects the extended format.
    #[arg(long, value_name = "FILE", default_value_os_t = default_config())]
    pub cfgfile: PathBuf,

    /// Socket send/receive timeout in seconds (SO_SNDTIMEO/SO_RCVTIMEO); 0 = none.
    #[arg(long, value_name = "N")]
    pub timeout: Option<u32>,

    /// SO_LINGER in seconds for sockets handed to programs (default 60); 0 = off.
    /// At most 65535: Windows keeps it in 16 bits.
    #[arg(long = "linger-timeout", value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=65_535))]
    pub linger_timeout: Option<u32>,

    /// Log to the console (stderr) instead of journald or syslog; on Windows,
    /// run in the console instead of as a service (Ctrl-C stops, Ctrl-Break
    /// reloads). On Unix wininetd always stays in the foreground.
    #[arg(long)]
    pub debug: bool,

    /// Install wininetd as a service with the options given here.
    #[arg(long, conflicts_with_all = ["remove", "check", "reload"])]
    pub install: bool,

    /// With --install (systemd): also write a wininetd-NAME.socket unit per
    /// service (one listening socket per address, named after the service),
    /// which systemd keeps open while wininetd restarts, so no connection
    /// is refused.
    #[arg(long = "socket-activation", requires = "install")]
    pub socket_activation: bool,

    /// Stop and remove the installed service.
    #[arg(long, conflicts_with_all = ["check", "reload"])]
    pub remove: bool,

    /// Validate the config and check its programs and users on this machine
    /// (errors: start would refuse; warnings: connections would fail); list
    /// its services; exit 0 (no error) or 1.
    #[arg(long, conflicts_with = "reload")]
    pub check: bool,

    /// Ask the running daemon to re-read its config (over the control
    /// channel, else through the service manager).
    #[arg(long)]
    pub reload: bool,

    /// Default handoff for services that do not choose one: `direct` gives
    /// the program the socket, `pipe` relays through pipes.
    #[arg(long, value_name = "MODE", value_parser = parse_handoff)]
    pub handoff: Option<Handoff>,

    /// On stop, end the programs still running instead of leaving them be.
    #[arg(long = "kill-on-stop")]
    pub kill_on_stop: bool,

    /// Set by the service manager when it starts us (Windows SCM).
    #[arg(long, hide = true)]
    pub service: bool,

    /// The config's format, instead of guessing it from the file name
    /// (`*.toml`: toml, `inetd.conf`: inetd, anything else: classic).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<Format>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands; without one, wininetd runs (or checks, installs, …).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Ask the running daemon what it serves: each service's addresses,
    /// live programs and totals, and each live program. Root or
    /// Administrators only; exit 1 when no daemon answers.
    Status {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print an inetd.conf, xinetd or classic config as a `.toml` config.
    ///
    /// The TOML goes to stdout. What has no equivalent is a comment there
    /// and a FILE:LINE warning on stderr; exit 0 when everything was
    /// carried, 3 when something was not, 1 when FILE has errors.
    Convert {
        /// The config to convert.
        file: PathBuf,
        /// Its format, instead of guessing from its name and contents.
        #[arg(long, value_name = "FORMAT", value_parser = parse_source)]
        from: Option<Source>,
    },
}

/// What `convert` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Inetd,
    Xinetd,
    Classic,
}

fn parse_source(s: &str) -> Result<Source, String> {
    match s {
        "inetd" => Ok(Source::Inetd),
        "xinetd" => Ok(Source::Xinetd),
        "classic" => Ok(Source::Classic),
        _ => Err(format!("{s:?} is not `inetd`, `xinetd` or `classic`")),
    }
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("{s:?} is not `classic`, `toml` or `inetd`"))
}

/// The version and the git commit it was built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WININETD_COMMIT"),
    ")"
);

fn parse_handoff(s: &str) -> Result<Handoff, String> {
    Handoff::parse(s).ok_or_else(|| format!("{s:?} is not `direct` or `pipe`"))
}

/// `/etc/wininetd.conf` on Unix, `%WINDIR%\wininetd.conf` on Windows.
pub fn default_config() -> PathBuf {
    if cfg!(windows) {
        let windir = std::env::var_os("WINDIR").unwrap_or_else(|| "C:\\Windows".into());
        PathBuf::from(windir).join("wininetd.conf")
    } else {
        PathBuf::from("/etc/wininetd.conf")
    }
}

impl Cli {
    /// The options a service launch should carry, for `--install`: the
    /// config path made absolute so the service finds it from anywhere.
    pub fn service_args(&self) -> Vec<String> {
        let cfg = std::path::absolute(&self.cfgfile).unwrap_or_else(|_| self.cfgfile.clone());
        let mut args = vec!["--cfgfile".to_string(), cfg.display().to_string()];
        if let Some(t) = self.timeout {
            args.extend(["--timeout".into(), t.to_string()]);
        }
        if let Some(t) = self.linger_timeout {
            args.extend(["--linger-timeout".into(), t.to_string()]);
        }
        if let Some(h) = self.handoff {
            args.extend(["--handoff".into(), h.as_str().into()]);
        }
        if self.kill_on_stop {
            args.push("--kill-on-stop".into());
        }
        if let Some(f) = self.format {
            args.extend(["--format".into(), f.as_str().into()]);
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_long_options_parse() {
        let c = Cli::try_parse_from([
            "wininetd",
            "--cfgfile",
            "x.conf",
            "--timeout",
            "30",
            "--linger-timeout",
            "5",
            "--debug",
        ])
        .unwrap();
        assert_eq!(c.cfgfile, PathBuf::from("x.conf"));
        assert_eq!(c.timeout, Some(30));
        assert_eq!(c.linger_timeout, Some(5));
        assert!(c.debug);
        let args = c.service_args();
        assert!(args.ends_with(&[
            "--timeout".into(),
            "30".into(),
            "--linger-timeout".into(),
            "5".into()
        ]));
        assert!(PathBuf::from(&args[1]).is_absolute());
    }

    #[test]
    fn default_config_is_the_platform_one() {
        let c = Cli::try_parse_from(["wininetd"]).unwrap();
        #[cfg(unix)]
        assert_eq!(c.cfgfile, PathBuf::from("/etc/wininetd.conf"));
        #[cfg(windows)]
        assert!(c.cfgfile.ends_with("wininetd.conf"));
    }

    #[test]
    fn format_and_convert_parse_and_flags_alone_still_work() {
        let c = Cli::try_parse_from(["wininetd", "--format", "inetd", "--cfgfile", "x"]).unwrap();
        assert_eq!(c.format, Some(Format::Inetd));
        assert!(c.command.is_none());
        assert!(
            c.service_args()
                .ends_with(&["--format".into(), "inetd".into()])
        );
        assert!(Cli::try_parse_from(["wininetd", "--format", "xml"]).is_err());
        let c = Cli::try_parse_from(["wininetd", "convert", "/etc/inetd.conf"]).unwrap();
        match c.command {
            Some(Command::Convert { file, from: None }) => {
                assert_eq!(file, PathBuf::from("/etc/inetd.conf"))
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["wininetd", "convert", "--from", "xinetd", "f"]).unwrap();
        assert!(matches!(
            c.command,
            Some(Command::Convert {
                from: Some(Source::Xinetd),
                ..
            })
        ));
        assert!(Cli::try_parse_from(["wininetd", "convert"]).is_err());
    }

    #[test]
    fn install_and_remove_exclude_each_other() {
        assert!(Cli::try_parse_from(["wininetd", "--install", "--remove"]).is_err());
        assert!(Cli::try_parse_from(["wininetd", "--handoff", "sideways"]).is_err());
        assert!(Cli::try_parse_from(["wininetd", "--linger-timeout", "65536"]).is_err());
        assert!(Cli::try_parse_from(["wininetd", "--socket-activation"]).is_err());
        let c = Cli::try_parse_from(["wininetd", "--install", "--socket-activation"]).unwrap();
        assert!(c.socket_activation);
        assert!(
            !c.service_args()
                .contains(&"--socket-activation".to_string())
        );
    }
}
