//! `--check`'s look at the system. Windows finds a program (CreateProcessW
//! with its search order and implied `.exe`) and logs a user on only when a
//! connection comes, with the password of that moment, so nothing here can
//! say in advance what would fail.

use crate::config::Service;
use crate::os::Finding;

pub fn preflight(_svc: &Service) -> Vec<Finding> {
    Vec::new()
}
