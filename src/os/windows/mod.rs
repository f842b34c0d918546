//! Windows: CreateProcessW on a connection (or on pipes wininetd relays),
//! the SCM, the Event Log.

mod activation;
mod env;
mod eventlog;
mod launch;
mod logon;
mod preflight;
mod service;

pub use activation::take_listen_fds;
pub use eventlog::EventLog;
pub use launch::{
    Exits, PipeReader, PipeWriter, check_users, init_process, launch, new_socket, terminate,
};
pub use preflight::preflight;
pub use service::{Host, install, reload, remove, run_as_service};
