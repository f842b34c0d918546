//! Unix: fork/exec on a socket, SIGCHLD reaping, signals, systemd.

mod launch;
mod service;
mod spawn;

pub use launch::{Exits, PipeReader, PipeWriter, check_users, init_process, launch, terminate};
pub use service::{Host, install, reload, remove, unit_text};
