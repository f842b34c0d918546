//! The signals wininetd takes (SIGCHLD, SIGHUP, SIGTERM, SIGINT), as
//! streams without handlers.
//!
//! On Linux they are blocked from the start and read from a signalfd: no
//! handler runs per program exit (a signal frame, a pipe write, a
//! sigreturn), and none can run in a child between clone and exec, so the
//! spawner need not mask signals around each clone. Elsewhere tokio's
//! handlers deliver them.

use std::io;

use nix::sys::signal::Signal;

/// Every signal some [`Signals`] reads.
const TAKEN: [Signal; 4] = [
    Signal::SIGCHLD,
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGINT,
];

/// Blocks the taken signals in this thread and the threads it starts; called
/// first thing, before any thread exists, so none can take them by default.
pub fn block_taken() {
    #[cfg(target_os = "linux")]
    {
        let mut set = nix::sys::signal::SigSet::empty();
        TAKEN.iter().for_each(|&s| set.add(s));
        let _ = set.thread_block();
    }
}

#[cfg(target_os = "linux")]
pub use signalfd::Signals;

#[cfg(target_os = "linux")]
mod signalfd {
    use super::*;
    use nix::sys::signal::SigSet;
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use tokio::io::unix::AsyncFd;

    /// Some of the taken signals, read from one signalfd.
    pub struct Signals {
        fd: AsyncFd<SignalFd>,
    }

    impl Signals {
        pub fn new(which: &[Signal]) -> io::Result<Signals> {
            debug_assert!(which.iter().all(|s| TAKEN.contains(s)));
            let mut set = SigSet::empty();
            which.iter().for_each(|&s| set.add(s));
            // Blocked already by `block_taken` in the daemon; again here
            // for any other caller (tests), or the signal would not queue.
            set.thread_block()?;
            let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
            // SAFETY: the signalfd is ours, and open for as long as the
            // AsyncFd holds it.
            let fd = unsafe { AsyncFd::register(fd)? };
            Ok(Signals { fd })
        }

        /// The next signal (standard signals coalesce while pending).
        pub async fn recv(&mut self) -> io::Result<Signal> {
            loop {
                let mut ready = self.fd.readable().await?;
                match ready.get_inner().read_signal() {
                    Ok(Some(info)) => {
                        if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                            return Ok(sig);
                        }
                    }
                    Ok(None) => ready.clear_ready(),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub use handlers::Signals;

#[cfg(not(target_os = "linux"))]
mod handlers {
    use super::*;
    use tokio::signal::unix::{Signal as Stream, SignalKind, signal};

    /// Some of the taken signals, from tokio's handlers.
    pub struct Signals {
        streams: Vec<(Signal, Stream)>,
    }

    impl Signals {
        pub fn new(which: &[Signal]) -> io::Result<Signals> {
            let streams = which
                .iter()
                .map(|&s| Ok((s, signal(SignalKind::from_raw(s as i32))?)))
                .collect::<io::Result<_>>()?;
            Ok(Signals { streams })
        }

        pub async fn recv(&mut self) -> io::Result<Signal> {
            std::future::poll_fn(|cx| {
                for (sig, stream) in &mut self.streams {
                    if stream.poll_recv(cx).is_ready() {
                        return std::task::Poll::Ready(Ok(*sig));
                    }
                }
                std::task::Poll::Pending
            })
            .await
        }
    }
}
