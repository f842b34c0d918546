//! `wininetd convert FILE`: an inetd.conf, xinetd or classic config printed
//! as the extended format. The parsing is the config module's (pure); here
//! are only the file reading, the guess of the format, and the exit code.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::Source;
use crate::config::{
    self, Config, ConfigError, ConfigErrors, Format, ServiceTable, toml_out::Note, toml_out::Place,
};

/// Exit code when something of the source is not carried.
pub const EXIT_NOT_CARRIED: u8 = 3;

/// The converted text and what it could not carry.
#[derive(Debug)]
pub struct Converted {
    pub toml: String,
    pub warnings: Vec<ConfigError>,
}

/// Runs the subcommand: TOML on stdout, warnings and errors on stderr.
pub fn run(file: &Path, from: Option<Source>) -> ExitCode {
    match convert_file(file, from) {
        Ok(c) => {
            print!("{}", c.toml);
            for w in &c.warnings {
                eprintln!("{w}");
            }
            if c.warnings.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{}: {} setting(s) not carried (comments in the output)",
                    file.display(),
                    c.warnings.len()
                );
                ExitCode::from(EXIT_NOT_CARRIED)
            }
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error(s), nothing converted",
                file.display(),
                errors.0.len()
            );
            ExitCode::FAILURE
        }
    }
}

fn one(location: String, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError { location, message }])
}

/// Reads `file` (and what an xinetd config includes) and converts it.
pub fn convert_file(file: &Path, from: Option<Source>) -> Result<Converted, ConfigErrors> {
    let name = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|e| one(name.clone(), format!("cannot read: {e}")))?;
    let source = match from {
        Some(s) => s,
        None => guess(file, &bytes).map_err(|m| one(name.clone(), m))?,
    };
    convert(
        &name,
        &bytes,
        source,
        &ServiceTable::system(),
        &mut read_include,
    )
}

/// xinetd's `include FILE` and `includedir DIR` (the files of DIR in name
/// order, except names with a dot or ending in `~`, as xinetd skips them).
fn read_include(path: &str, dir: bool) -> Result<Vec<(String, Vec<u8>)>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    if !dir {
        return Ok(vec![(path.to_string(), read(Path::new(path))?)]);
    }
    let mut names: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.contains('.') && !n.ends_with('~'))
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|p| Ok((p.display().to_string(), read(&p)?)))
        .collect()
}

/// The source format, by name and then by content.
fn guess(file: &Path, bytes: &[u8]) -> Result<Source, String> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let in_xinetd_d = file
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "xinetd.d");
    if name == "xinetd.conf" || in_xinetd_d {
        return Ok(Source::Xinetd);
    }
    match Format::detect(file) {
        Format::Toml => return Err("this is already the extended (.toml) format".into()),
        Format::Inetd => return Ok(Source::Inetd),
        Format::Classic => {}
    }
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => {}
            [w, ..] if w.starts_with('#') => {}
            ["defaults" | "service" | "include" | "includedir", ..] => return Ok(Source::Xinetd),
            [_, "stream" | "dgram" | "raw" | "rdm" | "seqpacket", ..] => return Ok(Source::Inetd),
            [w, ..] if w.starts_with(|c: char| c.is_ascii_digit()) => return Ok(Source::Classic),
            _ => {}
        }
    }
    Err("cannot tell the format (inetd, xinetd or classic): say it with --from".into())
}

/// Converts config text (pure but for `read`, which serves xinetd includes).
pub fn convert(
    name: &str,
    bytes: &[u8],
    source: Source,
    table: &ServiceTable,
    read: &mut config::xinetd::Reader<'_>,
) -> Result<Converted, ConfigErrors> {
    let path = Path::new(name);
    let (config, notes, what) = match source {
        Source::Xinetd => {
            let (c, notes) = config::parse_xinetd(name, bytes, table, read)?;
            (c, notes, "xinetd")
        }
        Source::Inetd => {
            let c = config::parse_as(path, bytes, Format::Inetd, table)?;
            let notes = inetd_notes(&c);
            (c, notes, "inetd.conf")
        }
        Source::Classic => (
            config::parse_as(path, bytes, Format::Classic, table)?,
            Vec::new(),
            "classic WinInetd",
        ),
    };
    let mut toml = format!(
        "# wininetd convert: from {} ({what})\n",
        config::toml_out::comment_safe(name)
    );
    if config.services.is_empty() {
        toml.push_str("# (no service is enabled there; wininetd needs at least one)\n");
    }
    toml.push('\n');
    toml.push_str(&config::to_toml(&config, &notes));
    // What we print must load here (on Windows a Unix-only setting such
    // as `group` is refused by name).
    if !config.services.is_empty()
        && let Err(e) = config::parse(Path::new("converted.toml"), toml.as_bytes())
    {
        return Err(one(
            name.to_string(),
            format!("the converted config would not load on this system:\n{e}"),
        ));
    }
    Ok(Converted {
        toml,
        warnings: config.warnings,
    })
}

/// inetd.conf warnings as comments: inside the service of their line, or
/// before the next service for a line that is not served.
fn inetd_notes(c: &Config) -> Vec<Note> {
    let line = |loc: &str| {
        loc.rsplit(':')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    };
    c.warnings
        .iter()
        .map(|w| {
            let at = line(&w.location);
            let place = match c.services.iter().position(|s| line(&s.origin) >= at) {
                Some(i) if line(&c.services[i].origin) == at => Place::In(i),
                Some(i) => Place::Before(i),
                None => Place::Before(c.services.len()),
            };
            Note {
                place,
                text: format!("{}: not carried: {}", w.location, w.message),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_include(_: &str, _: bool) -> Result<Vec<(String, Vec<u8>)>, String> {
        Err("none".into())
    }

    fn conv(name: &str, text: &str, source: Source) -> Converted {
        convert(
            name,
            text.as_bytes(),
            source,
            &ServiceTable::builtin(),
            &mut no_include,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_format_is_guessed_by_name_then_content() {
        let g = |name: &str, text: &str| guess(Path::new(name), text.as_bytes());
        assert_eq!(g("/etc/xinetd.conf", ""), Ok(Source::Xinetd));
        assert_eq!(g("/etc/xinetd.d/echo", ""), Ok(Source::Xinetd));
        assert_eq!(g("/etc/inetd.conf", ""), Ok(Source::Inetd));
        assert_eq!(g("a", "# x\n\nservice foo\n{\n}\n"), Ok(Source::Xinetd));
        assert_eq!(
            g("a", "7000 stream tcp nowait root /bin/cat cat\n"),
            Ok(Source::Inetd)
        );
        assert_eq!(g("a", "7000 none /bin/cat\n"), Ok(Source::Classic));
        assert!(g("a.toml", "").unwrap_err().contains("already"));
        assert!(g("a", "# nothing\n").unwrap_err().contains("--from"));
    }

    #[test]
    fn inetd_warnings_become_comments_in_place() {
        let c = conv(
            "inetd.conf",
            concat!(
                "echo stream tcp nowait root internal\n",
                "rstatd/1-3 dgram rpc/udp wait root /usr/sbin/rpc.rstatd rpc.rstatd\n",
                "7000 stream,sndbuf=1024 tcp nowait nobody /bin/cat cat\n",
            ),
            Source::Inetd,
        );
        assert_eq!(c.warnings.len(), 2);
        let t = &c.toml;
        let rpc = t.find("# inetd.conf:2: not carried: RPC").expect(t);
        let second = t.rfind("[[service]]").unwrap();
        let sndbuf = t
            .find("# inetd.conf:3: not carried: `sndbuf=1024`")
            .expect(t);
        assert!(rpc < second && second < sndbuf, "{t}");
    }

    #[test]
    fn classic_converts_with_nothing_lost() {
        let c = conv("w.conf", "7000 none /bin/cat\n", Source::Classic);
        assert!(c.warnings.is_empty());
        assert!(c.toml.contains("command = \"/bin/cat\""), "{}", c.toml);
        assert!(c.toml.contains("bind = [\"0.0.0.0\"]"), "{}", c.toml);
    }

    #[test]
    fn errors_stop_the_conversion() {
        let e = convert(
            "inetd.conf",
            b"nosuch stream tcp nowait root /bin/cat cat\n",
            Source::Inetd,
            &ServiceTable::builtin(),
            &mut no_include,
        )
        .unwrap_err();
        assert_eq!(e.0[0].location, "inetd.conf:1");
    }
}
