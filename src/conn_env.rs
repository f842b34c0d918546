//! A connection's variables (CLIENT_IP, PROXY_*, SSL_*…), built once per
//! connection in the form a program's environment takes: each
//! `NAME=value` with its NUL in one allocation, handed to the spawn as is
//! (Unix) or read back as pairs (Windows builds its UTF-16 block from
//! them). Names are the daemon's own; values are text it made printable.

use std::ffi::CString;
use std::fmt;
use std::net::IpAddr;

use crate::text;

/// The variables, in the order they were set (a later one of the same
/// name wins where the OS merges them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnEnv {
    vars: Vec<CString>,
}

impl ConnEnv {
    pub fn with_capacity(n: usize) -> ConnEnv {
        ConnEnv {
            vars: Vec::with_capacity(n),
        }
    }

    /// Sets `name` to `value`. A value holding a NUL cannot be passed and
    /// is left out (the daemon's values are printable, so none does).
    pub fn push(&mut self, name: &str, value: &str) {
        self.push_with(name, value.len(), |buf| {
            buf.extend_from_slice(value.as_bytes())
        });
    }

    /// Sets each of `names` to `ip` as `Display` writes it.
    pub fn push_ip(&mut self, names: &[&str], ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                let len = v4
                    .octets()
                    .iter()
                    .map(|&o| text::u64_len(o.into()))
                    .sum::<usize>()
                    + 3;
                self.push_all(names, len, |buf| text::write_ip(buf, ip));
            }
            IpAddr::V6(_) => {
                let text = ip.to_string();
                self.push_all(names, text.len(), |buf| {
                    buf.extend_from_slice(text.as_bytes())
                });
            }
        }
    }

    /// Sets each of `names` to `n` in decimal.
    pub fn push_u64(&mut self, names: &[&str], n: u64) {
        self.push_all(names, text::u64_len(n), |buf| text::write_u64(buf, n));
    }

    /// The value (`len` bytes) is written once, for the first name; the
    /// others copy it.
    fn push_all(&mut self, names: &[&str], len: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let Some((first, rest)) = names.split_first() else {
            return;
        };
        let at = self.vars.len();
        self.push_with(first, len, write);
        for name in rest {
            let Some(value) = self.vars.get(at).map(|v| &v.as_bytes()[first.len() + 1..]) else {
                return;
            };
            let var = var(name, value.len(), |buf| buf.extend_from_slice(value));
            self.vars.extend(var);
        }
    }

    fn push_with(&mut self, name: &str, len: usize, write: impl FnOnce(&mut Vec<u8>)) {
        self.vars.extend(var(name, len, write));
    }

    /// Adds `other`'s variables after these.
    pub fn extend(&mut self, other: ConnEnv) {
        self.vars.extend(other.vars);
    }

    /// Keeps the variables whose name `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.vars.retain(|v| keep(split(v).0));
    }

    /// Each `NAME=value`, NUL-terminated.
    pub fn into_vars(self) -> Vec<CString> {
        self.vars
    }

    /// Each variable as its name and value.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(split)
    }

    /// The value of the last variable named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs()
            .filter(|(n, _)| *n == name)
            .last()
            .map(|(_, v)| v)
    }
}

/// `name=value` and its NUL in one allocation of the exact size (a CString
/// is a boxed slice: spare room would cost a `realloc`); `None` if the
/// value holds a NUL.
fn var(name: &str, len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Option<CString> {
    let mut var = Vec::with_capacity(name.len() + len + 2);
    var.extend_from_slice(name.as_bytes());
    var.push(b'=');
    write(&mut var);
    var.push(0);
    CString::from_vec_with_nul(var).ok()
}

/// A variable's name and value; both were `&str` when it was made, so the
/// UTF-8 check cannot fail (an empty pair if it somehow did).
fn split(var: &CString) -> (&str, &str) {
    let s = var.to_str().unwrap_or_default();
    s.split_once('=').unwrap_or((s, ""))
}

impl fmt::Debug for ConnEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.pairs()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_gets_the_value_written_once() {
        let mut env = ConnEnv::with_capacity(8);
        env.push("PROTO", "TCP");
        env.push_ip(
            &["CLIENT_IP", "REMOTE_ADDR"],
            "2001:db8::1".parse().unwrap(),
        );
        env.push_u64(&["CLIENT_PORT", "REMOTE_PORT", "TCPREMOTEPORT"], 65535);
        env.push_ip(&["TCPLOCALIP"], "127.0.0.1".parse().unwrap());
        let vars: Vec<_> = env.clone().into_vars();
        let text: Vec<&str> = vars.iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            text,
            [
                "PROTO=TCP",
                "CLIENT_IP=2001:db8::1",
                "REMOTE_ADDR=2001:db8::1",
                "CLIENT_PORT=65535",
                "REMOTE_PORT=65535",
                "TCPREMOTEPORT=65535",
                "TCPLOCALIP=127.0.0.1",
            ]
        );
        assert_eq!(env.get("REMOTE_PORT"), Some("65535"));
        assert_eq!(env.pairs().count(), 7);
    }

    #[test]
    fn a_value_with_a_nul_is_left_out_and_an_equals_sign_stays_in_the_value() {
        let mut env = ConnEnv::default();
        env.push("A", "x\0y");
        env.push("B", "k=v");
        env.push_ip(&[], "127.0.0.1".parse().unwrap());
        assert_eq!(env.pairs().collect::<Vec<_>>(), [("B", "k=v")]);
    }

    #[test]
    fn retain_and_extend_keep_the_order_a_later_value_wins_in() {
        let mut env = ConnEnv::default();
        env.push("SSL_PROTOCOL", "from-the-header");
        env.push("PROXY_VERSION", "2");
        let mut tls = ConnEnv::default();
        tls.push("SSL_PROTOCOL", "TLSv1.3");
        env.retain(|name| !name.starts_with("SSL_"));
        env.extend(tls);
        assert_eq!(
            env.pairs().collect::<Vec<_>>(),
            [("PROXY_VERSION", "2"), ("SSL_PROTOCOL", "TLSv1.3")]
        );
        assert_eq!(
            format!("{env:?}"),
            r#"{"PROXY_VERSION": "2", "SSL_PROTOCOL": "TLSv1.3"}"#
        );
    }
}
