//! systemd socket activation: the listening sockets systemd passes us.

use std::os::fd::FromRawFd;

/// Takes the sockets passed with `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`
/// (close-on-exec from now on), with their names, and unsets the three
/// variables so that no program we start ever sees them.
///
/// Call it before any thread exists: it changes the environment.
pub fn take_listen_fds() -> Result<Vec<(socket2::Socket, String)>, String> {
    // SAFETY: called from `run` before the runtime and the logging thread
    // exist, so nothing reads the environment concurrently.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(|e| format!("cannot take the sockets systemd passed (LISTEN_FDS): {e}"))?;
    Ok(fds
        // SAFETY: systemd passed these descriptors to us alone; each is
        // owned by exactly one Socket from here on.
        .map(|(fd, name)| (unsafe { socket2::Socket::from_raw_fd(fd) }, name))
        .collect())
}
