//! Binding the listening sockets: explicit about every option, so nothing
//! depends on a system default.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Type};

use crate::config::Protocol;

/// A bound socket, registered with the runtime.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Udp(tokio::net::UdpSocket),
}

/// Backlog for TCP listeners: bursts of connects must not be refused.
const BACKLOG: i32 = 1024;

/// Binds `addr`. Close-on-exec (socket2's default) keeps listeners out of
/// every program; IPv6 sockets are always IPv6-only, so `0.0.0.0` and `::`
/// can both be bound and an IPv6 listener never sees mapped IPv4 peers.
pub fn bind(protocol: Protocol, addr: SocketAddr) -> io::Result<Bound> {
    let ty = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let sock = crate::os::new_socket(Domain::for_address(addr), ty)?;
    // Unix: rebinding right after a restart must work despite TIME_WAIT.
    // (On Windows SO_REUSEADDR would let another process steal the port.)
    #[cfg(unix)]
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(match protocol {
        Protocol::Tcp => {
            sock.listen(BACKLOG)?;
            Bound::Tcp(tokio::net::TcpListener::from_std(sock.into())?)
        }
        Protocol::Udp => Bound::Udp(tokio::net::UdpSocket::from_std(sock.into())?),
    })
}

/// accept() errors that mean "out of descriptors or memory": retrying at
/// once would spin, so the listener backs off instead.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
    }
    #[cfg(windows)]
    {
        // WSAENOBUFS, WSAEMFILE
        matches!(e.raw_os_error(), Some(10055 | 10024))
    }
}
