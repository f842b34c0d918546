//! Windows: CreateProcessW on a connection (or on pipes wininetd relays),
//! the SCM, the Event Log.

mod control;
mod env;
mod eventlog;
mod launch;
mod logon;
mod process_stats;
mod service;

pub use control::{
    ControlListener, ControlStream, control_address, control_listen, control_request,
};
pub use eventlog::EventLog;
pub use launch::{
    Exits, PipeReader, PipeWriter, check_users, init_process, launch, new_socket, terminate,
};
pub use process_stats::process_stats;
pub use service::{Host, install, reload, remove, run_as_service};
