//! Passwords, kept in types that cannot print them.

use std::fmt;
use std::path::PathBuf;

/// A password. Debug and Display print a redaction, so it cannot reach a
/// log line, an error or a panic message by accident; [`Password::expose`]
/// is the one way to read it, and only the Windows logon calls it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(s: impl Into<String>) -> Password {
        Password(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        // Best effort: do not leave the text in freed memory.
        let bytes = unsafe { self.0.as_mut_vec() };
        bytes.iter_mut().for_each(|b| {
            // SAFETY: a volatile write of zero to a byte we own.
            unsafe { std::ptr::write_volatile(b, 0) }
        });
    }
}

/// Where a user's password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in the config (`USER:PASS`).
    Inline(Password),
    /// Read from a file when needed (`USER:@PATH` or `password_file`), so
    /// the config itself need not hold it.
    File(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_prints() {
        let p = Password::new("DamnYou");
        assert!(!format!("{p}").contains("DamnYou"));
        assert!(!format!("{p:?}").contains("DamnYou"));
        let s = Secret::Inline(p.clone());
        assert!(!format!("{s:?}").contains("DamnYou"));
        assert_eq!(p.expose(), "DamnYou");
    }
}
