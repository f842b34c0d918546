//! Writes the man pages and shell completions from their sources, so they
//! cannot drift: `wininetd(8)` from the clap definition (clap_mangen) plus
//! docs/running.md, `wininetd.conf(5)` from docs/configuration.md and the
//! inetd.conf part of docs/migration.md, and the
//! bash, zsh and fish completions (clap_complete).
//!
//! `cargo run --example gen_docs -- OUTDIR` (scripts/deb.sh runs it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

fn main() {
    let out = PathBuf::from(std::env::args_os().nth(1).expect("usage: gen_docs OUTDIR"));
    std::fs::create_dir_all(out.join("completions")).expect("create OUTDIR");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    // wininetd(8): NAME, SYNOPSIS, DESCRIPTION and OPTIONS from clap, the
    // rest from docs/running.md.
    let man = clap_mangen::Man::new(wininetd::cli::Cli::command())
        .section("8")
        .manual("System Administration")
        .source(format!("wininetd {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page).unwrap();
    man.render_name_section(&mut page).unwrap();
    man.render_synopsis_section(&mut page).unwrap();
    man.render_description_section(&mut page).unwrap();
    man.render_options_section(&mut page).unwrap();
    let mut page = String::from_utf8(page).unwrap();
    // (Its introduction is about the file, not for the man page.)
    let running = read("docs/running.md");
    let sections = running
        .find("\n## ")
        .map_or(running.as_str(), |i| &running[i..]);
    page.push_str(&markdown_to_roff(sections));
    page.push_str(
        ".SH \"SEE ALSO\"\n\\fBwininetd.conf\\fR(5), \\fBsystemd.socket\\fR(5), \\fBinetd\\fR(8)\n",
    );
    std::fs::write(out.join("wininetd.8"), page).unwrap();

    // wininetd.conf(5): all of docs/configuration.md, then the inetd.conf
    // format and TCP `wait` services from docs/migration.md (up to
    // `wininetd convert`, which is a command, not a file format).
    let mut conf = format!(
        ".TH WININETD.CONF 5 \"\" \"wininetd {}\" \"File Formats\"\n\
         .SH NAME\nwininetd.conf \\- configuration of the wininetd super-server\n.SH DESCRIPTION\n",
        env!("CARGO_PKG_VERSION")
    );
    conf.push_str(&markdown_to_roff(&read("docs/configuration.md")));
    let migration = read("docs/migration.md");
    let inetd = migration
        .find("\n## Running an inetd.conf unchanged")
        .expect("docs/migration.md: the inetd.conf section");
    let end = migration[inetd..]
        .find("\n## `wininetd convert`")
        .map_or(migration.len(), |i| inetd + i);
    conf.push_str(&markdown_to_roff(&migration[inetd..end]));
    conf.push_str(".SH \"SEE ALSO\"\n\\fBwininetd\\fR(8)\n");
    std::fs::write(out.join("wininetd.conf.5"), conf).unwrap();

    for (shell, name) in [
        (Shell::Bash, "wininetd"),
        (Shell::Zsh, "_wininetd"),
        (Shell::Fish, "wininetd.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(
            shell,
            &mut wininetd::cli::Cli::command(),
            "wininetd",
            &mut text,
        );
        std::fs::write(out.join("completions").join(name), text).unwrap();
    }
}

/// The Markdown the docs use, as man(7) roff: `#` is the page title
/// (dropped), `##` a section, `###` a subsection; paragraphs, `- ` lists,
/// fenced code and tables (each row a tagged paragraph).
fn markdown_to_roff(md: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    let mut new_paragraph = true;
    for line in md.lines() {
        if line.starts_with("```") {
            if in_code {
                out.push_str(".fi\n.RE\n");
            } else {
                out.push_str(".PP\n.RS 4\n.nf\n");
            }
            in_code = !in_code;
            new_paragraph = true;
            continue;
        }
        if in_code {
            let _ = writeln!(out, "{}", protect(&escape(line)));
            continue;
        }
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("# ") {
            new_paragraph = true;
        } else if let Some(h) = trimmed.strip_prefix("## ") {
            let _ = writeln!(out, ".SH \"{}\"", inline(h).to_uppercase());
            new_paragraph = false;
        } else if let Some(h) = trimmed
            .strip_prefix("### ")
            .or_else(|| trimmed.strip_prefix("#### "))
        {
            let _ = writeln!(out, ".SS \"{}\"", inline(h));
            new_paragraph = false;
        } else if trimmed.starts_with('|') {
            // The header row and the |---| row say nothing in a man page.
            if trimmed.chars().all(|ch| "|-: ".contains(ch)) {
                continue;
            }
            let cells: Vec<&str> = trimmed
                .trim_matches('|')
                .split(" | ")
                .map(str::trim)
                .collect();
            if new_paragraph {
                // The header row (first row of a table).
                new_paragraph = false;
                continue;
            }
            let _ = writeln!(
                out,
                ".TP\n{}\n{}",
                protect(&inline(cells[0])),
                protect(&inline(&cells[1..].join("; ")))
            );
        } else if let Some(item) = trimmed.strip_prefix("- ") {
            let _ = writeln!(out, ".IP \\(bu 2\n{}", protect(&inline(item)));
            new_paragraph = false;
        } else {
            if new_paragraph {
                out.push_str(".PP\n");
                new_paragraph = false;
            }
            let _ = writeln!(out, "{}", protect(&inline(trimmed)));
        }
    }
    out
}

/// Backslashes and the characters roff would take for its own.
fn escape(text: &str) -> String {
    let mut s = text.replace('\\', "\\e");
    for (from, to) in [
        ("—", "\\(em"),
        ("–", "\\(en"),
        ("≥", "\\(>="),
        ("≤", "\\(<="),
        ("µ", "\\(mc"),
        ("…", "..."),
        ("→", "\\(->"),
        ("÷", "\\(di"),
        ("×", "\\(mu"),
        ("≈", "\\(~~"),
    ] {
        s = s.replace(from, to);
    }
    s
}

/// A line that would start with `.` or `'` is text, not a request.
fn protect(line: &str) -> String {
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line.to_string()
    }
}

/// `code` and **strong** in bold, [links](to) as their text.
fn inline(text: &str) -> String {
    let text = escape(text);
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(c) = rest.chars().next() {
        if c == '`'
            && let Some(end) = rest[1..].find('`')
        {
            let _ = write!(out, "\\fB{}\\fR", &rest[1..1 + end]);
            rest = &rest[end + 2..];
        } else if let Some(r) = rest.strip_prefix("**")
            && let Some(end) = r.find("**")
        {
            let _ = write!(out, "\\fB{}\\fR", &r[..end]);
            rest = &r[end + 2..];
        } else if c == '['
            && let Some(close) = rest.find("](")
            && let Some(end) = rest[close..].find(')')
        {
            out.push_str(&rest[1..close]);
            rest = &rest[close + end + 1..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}
