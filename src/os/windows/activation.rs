//! Socket activation is systemd's; a Windows service binds its own sockets.

pub fn take_listen_fds() -> Result<Vec<(socket2::Socket, String)>, String> {
    Ok(Vec::new())
}
