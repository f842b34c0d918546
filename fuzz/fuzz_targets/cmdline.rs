//! Command-line splitting. Unix: a raw CMDLINE that splits into words
//! re-joins (shell-quoted) to the same words. Windows: an argv (the input
//! cut at NULs) quoted for CreateProcessW reads back as the same argv
//! under the Microsoft C runtime's rules, which the programs use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wininetd::fuzzing::CommandLine;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(words) = CommandLine::Raw(text.to_string()).argv() {
        assert!(!words.is_empty());
        if let Ok(joined) = shlex::try_join(words.iter().map(String::as_str)) {
            let again = CommandLine::Raw(joined.clone()).argv();
            assert_eq!(
                again.as_ref(),
                Ok(&words),
                "{text:?} re-joined as {joined:?}"
            );
        }
    }
    let argv: Vec<String> = text.split('\0').map(str::to_string).collect();
    // A program name holds no quote and (quoted) ends in no backslash.
    let name = &argv[0];
    if name.is_empty() || name.contains('"') || name.ends_with('\\') {
        return;
    }
    let line = CommandLine::Argv(argv.clone()).windows_command_line();
    assert_eq!(crt_split(&line), argv, "quoted as {line:?}");
});

/// The UCRT's `parse_command_line`: argv[0] up to a blank outside quotes
/// with no escapes; then words where 2n backslashes before a quote are n
/// and a quote toggles, 2n+1 give n and a literal quote, and `""` inside
/// quotes is a literal quote.
fn crt_split(line: &str) -> Vec<String> {
    let c: Vec<char> = line.chars().collect();
    let blank = |ch: char| ch == ' ' || ch == '\t';
    let mut i = 0;
    let mut args = Vec::new();
    let mut arg = String::new();
    let mut quoted = false;
    while i < c.len() && (quoted || !blank(c[i])) {
        if c[i] == '"' {
            quoted = !quoted;
        } else {
            arg.push(c[i]);
        }
        i += 1;
    }
    args.push(arg);
    loop {
        while i < c.len() && blank(c[i]) {
            i += 1;
        }
        if i >= c.len() {
            return args;
        }
        let mut arg = String::new();
        let mut quoted = false;
        loop {
            let mut backslashes = 0;
            while i < c.len() && c[i] == '\\' {
                backslashes += 1;
                i += 1;
            }
            if i < c.len() && c[i] == '"' {
                arg.extend(std::iter::repeat_n('\\', backslashes / 2));
                if backslashes % 2 == 1 {
                    arg.push('"');
                    i += 1;
                } else if quoted && c.get(i + 1) == Some(&'"') {
                    arg.push('"');
                    i += 2;
                } else {
                    quoted = !quoted;
                    i += 1;
                }
                continue;
            }
            arg.extend(std::iter::repeat_n('\\', backslashes));
            if i >= c.len() || (!quoted && blank(c[i])) {
                break;
            }
            arg.push(c[i]);
            i += 1;
        }
        args.push(arg);
    }
}
