//! The local control channel (`wininetd status`, `--reload`): a Unix
//! socket, mode 0600, in a directory only root may write to
//! (`/run/wininetd`, or `WININETD_RUN_DIR`). Each connection's peer
//! credentials are checked too, so a socket left readable by mistake still
//! admits only root and the daemon's own user.

use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

/// The directory of the control socket.
pub fn run_dir() -> PathBuf {
    std::env::var_os("WININETD_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/wininetd"))
}

fn socket_path() -> PathBuf {
    run_dir().join("control")
}

/// Where a message says the channel is.
pub fn control_address() -> String {
    socket_path().display().to_string()
}

/// The daemon's end; the socket file goes when it is dropped.
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
}

/// One accepted request's stream.
pub type ControlStream = UnixStream;

/// Binds the control socket. Refuses a directory another user could
/// change, and a socket another daemon still answers on.
pub fn control_listen() -> io::Result<ControlListener> {
    let dir = run_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)?;
    let meta = std::fs::symlink_metadata(&dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory owned by uid {me} that no one else can write to",
                dir.display()
            ),
        ));
    }
    let path = socket_path();
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another wininetd answers on {}", path.display()),
        ));
    }
    // A stale socket of a daemon that is gone.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(ControlListener { listener, path })
}

impl ControlListener {
    /// The next connection from root or our own user; others are closed.
    pub async fn accept(&mut self) -> io::Result<ControlStream> {
        let (stream, _) = self.listener.accept().await?;
        let uid = stream.peer_cred()?.uid();
        if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("uid {uid} may not use the control channel"),
            ));
        }
        Ok(stream)
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The client's side: sends `request` and returns the whole answer.
pub fn control_request(request: &str, wait: Duration) -> io::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket_path())?;
    s.set_read_timeout(Some(wait))?;
    s.set_write_timeout(Some(wait))?;
    s.write_all(request.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
