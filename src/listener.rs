//! Binding the listening sockets: explicit about every option, so nothing
//! depends on a system default.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Type};

use crate::config::Protocol;

/// A bound socket, registered with the runtime.
pub enum Bound {
    Tcp(Acceptor),
    Udp(tokio::net::UdpSocket),
}

/// A TCP listener whose accepted connections come out as plain blocking
/// sockets, ready to be handed to a program. On Unix the listener is
/// watched for readiness only, so a connection for `direct` handoff never
/// touches the event loop (no register/deregister, no flag flipping).
pub struct Acceptor {
    #[cfg(unix)]
    inner: tokio::io::unix::AsyncFd<std::net::TcpListener>,
    #[cfg(windows)]
    inner: tokio::net::TcpListener,
}

impl Acceptor {
    fn new(listener: std::net::TcpListener) -> io::Result<Acceptor> {
        // SAFETY: the listener owns its descriptor and keeps it, unreplaced
        // and open, for as long as the AsyncFd holds it.
        #[cfg(unix)]
        let inner = unsafe { tokio::io::unix::AsyncFd::register(listener)? };
        #[cfg(windows)]
        let inner = tokio::net::TcpListener::from_std(listener)?;
        Ok(Acceptor { inner })
    }

    /// The next connection, as a blocking, close-on-exec socket.
    pub async fn accept(&self) -> io::Result<(std::net::TcpStream, SocketAddr)> {
        #[cfg(unix)]
        loop {
            let mut ready = self.inner.readable().await?;
            // std's accept is accept4(SOCK_CLOEXEC): blocking on Linux.
            if let Ok(result) = ready.try_io(|l| l.get_ref().accept()) {
                return result;
            }
        }
        #[cfg(windows)]
        {
            let (stream, peer) = self.inner.accept().await?;
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            Ok((stream, peer))
        }
    }

    /// Waits until a connection is pending, without accepting it: a TCP
    /// `wait` service's program accepts it. Readiness seen while that
    /// program ran may be stale, so the socket itself is asked.
    pub async fn pending(&self) -> io::Result<()> {
        #[cfg(unix)]
        loop {
            let mut ready = self.inner.readable().await?;
            if self.has_pending() {
                return Ok(());
            }
            ready.clear_ready();
        }
        #[cfg(windows)]
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP wait services are not supported on Windows",
        ))
    }

    /// Whether a connection is waiting to be accepted, now.
    pub fn has_pending(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let mut fd = libc::pollfd {
                fd: self.inner.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd on our own descriptor, no waiting.
            unsafe { libc::poll(&mut fd, 1, 0) > 0 }
        }
        #[cfg(windows)]
        false
    }

    /// A duplicate of the listening socket, for a TCP `wait` program.
    pub fn try_clone_socket(&self) -> io::Result<socket2::Socket> {
        #[cfg(unix)]
        return socket2::SockRef::from(self.inner.get_ref()).try_clone();
        #[cfg(windows)]
        return socket2::SockRef::from(&self.inner).try_clone();
    }

    /// Back to non-blocking after a `wait` program had the socket (the flag
    /// is shared with its duplicate).
    pub fn restore_nonblocking(&self) -> io::Result<()> {
        #[cfg(unix)]
        return self.inner.get_ref().set_nonblocking(true);
        #[cfg(windows)]
        return socket2::SockRef::from(&self.inner).set_nonblocking(true);
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        #[cfg(unix)]
        return self.inner.get_ref().local_addr();
        #[cfg(windows)]
        return self.inner.local_addr();
    }
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
    // The platform's own address-reuse rule comes with the socket.
    let sock = crate::os::new_socket(Domain::for_address(addr), ty)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(match protocol {
        Protocol::Tcp => {
            sock.listen(BACKLOG)?;
            Bound::Tcp(Acceptor::new(sock.into())?)
        }
        Protocol::Udp => Bound::Udp(tokio::net::UdpSocket::from_std(sock.into())?),
    })
}

/// Listening sockets the service manager passed us (systemd socket
/// activation), each with its protocol, address and name. They are matched
/// to services by (protocol, address, port), or by a name that is a
/// service's name. The set keeps its own copy of each for the daemon's
/// life, so a service removed by a reload and added back by another gets
/// the same socket again (the manager still holds it: binding our own would
/// fail).
#[derive(Default)]
pub struct Inherited {
    sockets: Vec<InheritedSocket>,
}

struct InheritedSocket {
    protocol: Protocol,
    addr: SocketAddr,
    name: String,
    socket: socket2::Socket,
}

impl Inherited {
    /// Sorts out what the manager passed: `Err` names each socket that is
    /// not a TCP or UDP socket on an IP address.
    pub fn new(passed: Vec<(socket2::Socket, String)>) -> Result<Inherited, String> {
        let mut sockets = Vec::new();
        let mut bad = Vec::new();
        for (socket, name) in passed {
            let protocol = match socket.r#type() {
                Ok(Type::STREAM) => Some(Protocol::Tcp),
                Ok(Type::DGRAM) => Some(Protocol::Udp),
                _ => None,
            };
            let addr = socket.local_addr().ok().and_then(|a| a.as_socket());
            match (protocol, addr) {
                (Some(protocol), Some(addr)) => sockets.push(InheritedSocket {
                    protocol,
                    addr,
                    name,
                    socket,
                }),
                _ => bad.push(format!(
                    "{name:?} (not a TCP or UDP socket on an IP address)"
                )),
            }
        }
        if bad.is_empty() {
            Ok(Inherited { sockets })
        } else {
            Err(format!(
                "the service manager passed sockets wininetd cannot serve: {}",
                bad.join(", ")
            ))
        }
    }

    /// Where a service listens when the manager passed sockets under its
    /// name (`FileDescriptorName=`) for its protocol and port: there,
    /// instead of its configured addresses.
    pub fn named(&self, name: &str, protocol: Protocol, port: u16) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter(|s| s.name == name && s.protocol == protocol && s.addr.port() == port)
            .map(|s| s.addr)
            .collect()
    }

    /// The passed sockets no listener would use (`wanted` says which
    /// protocol and address one would), as text.
    pub fn unused(&self, wanted: impl Fn(Protocol, SocketAddr) -> bool) -> Vec<String> {
        self.sockets
            .iter()
            .filter(|s| !wanted(s.protocol, s.addr))
            .map(|s| format!("{} {} (name {:?})", s.protocol, s.addr, s.name))
            .collect()
    }

    pub fn contains(&self, protocol: Protocol, addr: SocketAddr) -> bool {
        self.sockets
            .iter()
            .any(|s| s.protocol == protocol && s.addr == addr)
    }

    /// The passed socket for `addr`, ready to serve, if there is one.
    pub fn take(&self, protocol: Protocol, addr: SocketAddr) -> Option<io::Result<Bound>> {
        let s = self
            .sockets
            .iter()
            .find(|s| s.protocol == protocol && s.addr == addr)?;
        Some(s.socket.try_clone().and_then(|sock| {
            sock.set_nonblocking(true)?;
            Ok(match protocol {
                Protocol::Tcp => Bound::Tcp(Acceptor::new(sock.into())?),
                Protocol::Udp => Bound::Udp(tokio::net::UdpSocket::from_std(sock.into())?),
            })
        }))
    }
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
