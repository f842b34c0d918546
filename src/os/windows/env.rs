//! The environment block each program gets, built per child: setting
//! variables on the shared process environment would race between
//! connections.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::windows::ffi::{OsStrExt, OsStringExt};

use crate::conn_env::ConnEnv;

/// A CREATE_UNICODE_ENVIRONMENT block: `base` with `extra` on top (later
/// wins; names compare case-insensitively, as Windows does), sorted by
/// upper-cased name, each `NAME=VALUE` NUL-terminated, one more NUL at
/// the end.
pub fn block<I>(base: I, extra: &ConnEnv) -> Vec<u16>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    let mut vars: BTreeMap<String, (OsString, OsString)> = BTreeMap::new();
    let extra = extra
        .pairs()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    for (k, v) in base.into_iter().chain(extra) {
        // A name with NUL or an empty name cannot be represented.
        if k.is_empty() || k.encode_wide().any(|c| c == 0) || v.encode_wide().any(|c| c == 0) {
            continue;
        }
        vars.insert(k.to_string_lossy().to_uppercase(), (k, v));
    }
    let mut out = Vec::new();
    for (k, v) in vars.values() {
        out.extend(k.encode_wide());
        out.push(u16::from(b'='));
        out.extend(v.encode_wide());
        out.push(0);
    }
    if out.is_empty() {
        out.push(0);
    }
    out.push(0);
    out
}

/// Splits a double-NUL-terminated block (CreateEnvironmentBlock's) into
/// name/value pairs. Entries such as `=C:=C:\dir` keep their leading `=`
/// in the name.
pub fn parse_block(block: &[u16]) -> Vec<(OsString, OsString)> {
    block
        .split(|&c| c == 0)
        .take_while(|e| !e.is_empty())
        .filter_map(|e| {
            let eq = e.iter().skip(1).position(|&c| c == u16::from(b'='))? + 1;
            Some((
                OsString::from_wide(&e[..eq]),
                OsString::from_wide(&e[eq + 1..]),
            ))
        })
        .collect()
}

/// `s` as a NUL-terminated UTF-16 string, or `None` if it holds a NUL.
pub fn wide(s: impl AsRef<OsStr>) -> Option<Vec<u16>> {
    let mut v: Vec<u16> = s.as_ref().encode_wide().collect();
    if v.contains(&0) {
        return None;
    }
    v.push(0);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn text(block: &[u16]) -> String {
        String::from_utf16(block).unwrap()
    }

    #[test]
    fn sorted_case_insensitively_double_nul_and_extra_wins() {
        let base = os(&[
            ("Path", "C:\\bin"),
            ("b", "1"),
            ("A", "0"),
            ("client_ip", "old"),
        ]);
        let mut extra = ConnEnv::default();
        extra.push("CLIENT_IP", "127.0.0.1");
        extra.push("CLIENT_PORT", "4242");
        let b = block(base, &extra);
        assert_eq!(
            text(&b),
            "A=0\0b=1\0CLIENT_IP=127.0.0.1\0CLIENT_PORT=4242\0Path=C:\\bin\0\0"
        );
    }

    #[test]
    fn empty_environment_is_two_nuls() {
        assert_eq!(block(Vec::new(), &ConnEnv::default()), vec![0, 0]);
    }

    #[test]
    fn entries_with_nul_are_dropped_not_truncated() {
        let base = os(&[("GOOD", "1"), ("BAD", "x\0y")]);
        assert_eq!(text(&block(base, &ConnEnv::default())), "GOOD=1\0\0");
    }

    #[test]
    fn a_block_parses_back_including_drive_entries() {
        let raw: Vec<u16> = "=C:=C:\\w\0HOME=C:\\u\0X=a=b\0\0".encode_utf16().collect();
        let pairs = parse_block(&raw);
        assert_eq!(
            pairs,
            os(&[("=C:", "C:\\w"), ("HOME", "C:\\u"), ("X", "a=b")])
        );
    }

    #[test]
    fn wide_refuses_interior_nul() {
        assert_eq!(wide("ab"), Some(vec![97, 98, 0]));
        assert_eq!(wide("a\0b"), None);
    }
}
