//! The `pipe` handoff: wininetd stands between the client's socket and the
//! program's pipes and copies both ways, passing half-closes through.
//!
//! It is generic over the byte streams so the same relay can later carry a
//! TLS session or a PROXY-protocol preamble, and serves Unix and Windows.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

const BUF_SIZE: usize = 32 * 1024;

/// The kernel memory that widened relay pipes may hold, all sessions
/// together (`pipe_budget`). As root no per-user pipe limit applies, so
/// without it clients that send and never read would pin 2 MiB each.
#[derive(Debug)]
pub struct PipeBudget {
    limit: AtomicU64,
    used: AtomicU64,
}

impl PipeBudget {
    pub fn new(limit: u64) -> Arc<PipeBudget> {
        Arc::new(PipeBudget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        })
    }

    /// A lower limit takes effect as sessions end.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Takes `bytes` if the total stays within the limit.
    pub fn take(self: &Arc<Self>, bytes: u64) -> Option<PipeGrant> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .ok()?;
        Some(PipeGrant {
            budget: Arc::clone(self),
            bytes,
        })
    }

    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// Bytes of the budget held by one session's pipes; given back on drop.
#[derive(Debug)]
pub struct PipeGrant {
    budget: Arc<PipeBudget>,
    bytes: u64,
}

impl Drop for PipeGrant {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What a running relay has moved so far, for `wininetd status`.
#[derive(Debug, Default)]
pub struct Tally {
    pub to_program: AtomicU64,
    pub to_client: AtomicU64,
}

/// What a finished relay moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub to_program: u64,
    pub to_client: u64,
    /// The client's input ended without its end being said (a TLS client
    /// gone without close_notify): the program's stdin got EOF all the same.
    pub truncated: bool,
}

/// Relays until the program has closed its output and either the client
/// has half-closed or the program has exited.
///
/// - client half-closes → the program's stdin is closed;
/// - program closes stdout → the client gets a FIN (`shutdown(Write)`);
/// - the program stops reading (EPIPE) → client input is dropped, output
///   still flows;
/// - `idle`: a client silent that long, or one that accepts nothing that
///   long, ends the session, as SO_RCVTIMEO/SO_SNDTIMEO do in `direct`.
///
/// Linux uses [`relay_tcp`]'s splice path for plain TCP; this one serves
/// other systems (Windows named pipes) and streams that are not plain
/// sockets (a TLS session: each write is flushed, so a record never waits
/// in rustls for the next one).
///
/// The stream is split before the future is made: an async fn would keep
/// room for `client` (a TLS session is large) in its future for as long
/// as the session lasts.
pub fn relay<C, W, R>(
    client: C,
    mut to_program: W,
    mut from_program: R,
    program_exited: impl Future<Output = ()>,
    idle: Option<Duration>,
    tally: &Tally,
) -> impl Future<Output = io::Result<Relayed>>
where
    C: AsyncRead + AsyncWrite,
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    async move {
        let mut truncated = false;
        let relayed = {
            let upstream = std::pin::pin!(async {
                let mut buf = None;
                let mut total = 0u64;
                loop {
                    let n = match with_idle(idle, read_some(&mut client_rx, &mut buf)).await {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            truncated = true;
                            0
                        }
                        Err(e) => return Err(e),
                    };
                    if n == 0 {
                        break;
                    }
                    let bytes = buf.as_deref().unwrap_or_default();
                    if to_program.write_all(bytes).await.is_err() {
                        // The program no longer reads its input; that is its right.
                        break;
                    }
                    total += n as u64;
                    tally.to_program.fetch_add(n as u64, Ordering::Relaxed);
                }
                // Dropping our end closes the program's stdin.
                let _ = to_program.shutdown().await;
                drop(to_program);
                io::Result::Ok(total)
            });
            let downstream = std::pin::pin!(async {
                let mut buf = None;
                let mut total = 0u64;
                loop {
                    let n = read_some(&mut from_program, &mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    let bytes = buf.as_deref().unwrap_or_default();
                    with_idle(idle, async {
                        client_tx.write_all(bytes).await?;
                        client_tx.flush().await
                    })
                    .await?;
                    total += n as u64;
                    tally.to_client.fetch_add(n as u64, Ordering::Relaxed);
                }
                client_tx.shutdown().await?;
                io::Result::Ok(total)
            });
            drive(upstream, downstream, program_exited).await?
        };
        Ok(Relayed {
            truncated,
            ..relayed
        })
    }
}

/// Reads what `src` has into `buf`, which exists only while bytes come:
/// it is made for a read and dropped when the read has to wait, so an idle
/// session holds no buffer (a held TLS session kept two, resident where
/// written, for as long as it lasted). The count; 0 at the end.
async fn read_some<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut Option<Vec<u8>>,
) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let vec = buf.get_or_insert_with(|| Vec::with_capacity(BUF_SIZE));
        vec.clear();
        let mut read = ReadBuf::uninit(vec.spare_capacity_mut());
        match Pin::new(&mut *src).poll_read(cx, &mut read) {
            Poll::Pending => {
                *buf = None;
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                assert_eq!(read.filled().as_ptr(), vec.as_ptr());
                // SAFETY: poll_read initialized the first `n` bytes of the
                // spare capacity (ReadBuf::filled, the same memory: checked).
                unsafe { vec.set_len(n) };
                Poll::Ready(Ok(n))
            }
        }
    })
    .await
}

/// The relay for a plain TCP client and the program's own pipes. On Linux
/// the bytes move with splice(2) between the socket and the program's
/// pipes, never through our memory; elsewhere it is [`relay`].
pub async fn relay_tcp(
    client: tokio::net::TcpStream,
    to_program: crate::os::PipeWriter,
    from_program: crate::os::PipeReader,
    program_exited: impl Future<Output = ()>,
    idle: Option<Duration>,
    tally: &Tally,
) -> io::Result<Relayed> {
    #[cfg(target_os = "linux")]
    {
        let upstream = std::pin::pin!(async {
            let n = splice::copy(
                &client,
                &to_program,
                idle,
                splice::Dir::ToProgram,
                &tally.to_program,
            )
            .await;
            drop(to_program); // closes the program's stdin
            n
        });
        let downstream = std::pin::pin!(async {
            let n = splice::copy(
                &from_program,
                &client,
                idle,
                splice::Dir::ToClient,
                &tally.to_client,
            )
            .await?;
            socket2::SockRef::from(&client).shutdown(std::net::Shutdown::Write)?;
            Ok(n)
        });
        drive(upstream, downstream, program_exited).await
    }
    #[cfg(not(target_os = "linux"))]
    relay(
        client,
        to_program,
        from_program,
        program_exited,
        idle,
        tally,
    )
    .await
}

/// Runs both directions until output is finished and the input side has no
/// reader left (the client half-closed, or the program exited).
///
/// The directions come pinned where they were made: moved in, each would
/// take its room twice in a session's future.
async fn drive(
    mut upstream: Pin<&mut impl Future<Output = io::Result<u64>>>,
    mut downstream: Pin<&mut impl Future<Output = io::Result<u64>>>,
    program_exited: impl Future<Output = ()>,
) -> io::Result<Relayed> {
    tokio::pin!(program_exited);
    let mut up_total = None;
    let mut exited = false;
    let mut down_total = None;
    while down_total.is_none() || !(up_total.is_some() || exited) {
        tokio::select! {
            r = &mut upstream, if up_total.is_none() => {
                match r {
                    Ok(n) => up_total = Some(n),
                    // A client that resets or times out ends the session
                    // unless the program's output is already complete.
                    Err(e) if down_total.is_none() => return Err(e),
                    Err(_) => up_total = Some(0),
                }
            }
            r = &mut downstream, if down_total.is_none() => down_total = Some(r?),
            _ = &mut program_exited, if !exited => exited = true,
        }
    }
    Ok(Relayed {
        to_program: up_total.unwrap_or(0),
        to_client: down_total.unwrap_or(0),
        truncated: false,
    })
}

#[cfg(target_os = "linux")]
mod splice {
    //! Zero-copy moves between a socket and a pipe, driven by the runtime's
    //! readiness. splice(2) says EAGAIN without saying which side was not
    //! ready, so a poll(2) at that moment tells, and only that side's
    //! readiness is cleared.

    use std::io;
    use std::os::fd::{AsRawFd, RawFd};
    use std::time::Duration;

    use tokio::io::Interest;
    use tokio::net::TcpStream;
    use tokio::net::unix::pipe;

    use super::with_idle;

    /// Bytes per splice call: the most a pipe holds by default is 64 KiB.
    const CHUNK: usize = 1 << 20;

    #[derive(Clone, Copy, PartialEq, Eq)]
    pub enum Dir {
        /// socket → program: EPIPE means the program stopped reading.
        ToProgram,
        /// program → socket: every error is the client's.
        ToClient,
    }

    /// One end of a splice, with the runtime's readiness for it.
    pub trait End: AsRawFd {
        async fn wait(&self, interest: Interest) -> io::Result<()>;
        /// Forgets readiness for `interest` (it was observed not ready).
        fn clear(&self, interest: Interest);
    }

    fn would_block<T>() -> io::Result<T> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    impl End for TcpStream {
        async fn wait(&self, interest: Interest) -> io::Result<()> {
            self.ready(interest).await.map(drop)
        }
        fn clear(&self, interest: Interest) {
            let _ = self.try_io(interest, would_block::<()>);
        }
    }

    impl End for pipe::Sender {
        async fn wait(&self, interest: Interest) -> io::Result<()> {
            self.ready(interest).await.map(drop)
        }
        fn clear(&self, _: Interest) {
            let _ = self.try_io(would_block::<()>);
        }
    }

    impl End for pipe::Receiver {
        async fn wait(&self, interest: Interest) -> io::Result<()> {
            self.ready(interest).await.map(drop)
        }
        fn clear(&self, _: Interest) {
            let _ = self.try_io(would_block::<()>);
        }
    }

    /// Moves everything from `src` to `dst` until `src` ends; the count.
    pub async fn copy(
        src: &impl End,
        dst: &impl End,
        idle: Option<Duration>,
        dir: Dir,
        tally: &std::sync::atomic::AtomicU64,
    ) -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            // The client is the side the idle timeout watches.
            match dir {
                Dir::ToProgram => {
                    with_idle(idle, src.wait(Interest::READABLE)).await?;
                    dst.wait(Interest::WRITABLE).await?;
                }
                Dir::ToClient => {
                    src.wait(Interest::READABLE).await?;
                    with_idle(idle, dst.wait(Interest::WRITABLE)).await?;
                }
            }
            // SAFETY: splice between two descriptors we own; no pointers
            // but the null offsets.
            let n = unsafe {
                libc::splice(
                    src.as_raw_fd(),
                    std::ptr::null_mut(),
                    dst.as_raw_fd(),
                    std::ptr::null_mut(),
                    CHUNK,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            };
            if n > 0 {
                total += n as u64;
                tally.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            if n == 0 {
                return Ok(total);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => {
                    let (readable, writable) = poll_now(src.as_raw_fd(), dst.as_raw_fd());
                    if !readable {
                        src.clear(Interest::READABLE);
                    }
                    if !writable {
                        dst.clear(Interest::WRITABLE);
                    }
                }
                Some(libc::EINTR) => {}
                Some(libc::EPIPE) if dir == Dir::ToProgram => return Ok(total),
                _ => return Err(err),
            }
        }
    }

    /// Whether `src` has something to read (or its end) and `dst` room to
    /// write (or an error to report), right now.
    fn poll_now(src: RawFd, dst: RawFd) -> (bool, bool) {
        let mut fds = [
            libc::pollfd {
                fd: src,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: dst,
                events: libc::POLLOUT,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid pollfd entries, zero timeout.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, 0) } < 0 {
            return (true, true); // retry the splice rather than stall
        }
        let bad = libc::POLLHUP | libc::POLLERR;
        (
            fds[0].revents & (libc::POLLIN | bad) != 0,
            fds[1].revents & (libc::POLLOUT | bad) != 0,
        )
    }
}

/// `op`, failing with TimedOut if it takes longer than `idle`.
pub async fn with_idle<T>(
    idle: Option<Duration>,
    op: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match idle {
        None => op.await,
        Some(d) => tokio::time::timeout(d, op)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "client timed out"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    #[tokio::test]
    async fn bytes_and_half_close_pass_both_ways() {
        let (client_side, mut client) = duplex(1024);
        let (prog_in_w, mut prog_in_r) = duplex(1024);
        let (mut prog_out_w, prog_out_r) = duplex(1024);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<()>();
        let tally: &'static Tally = Box::leak(Box::default());
        let task = tokio::spawn(relay(
            client_side,
            prog_in_w,
            prog_out_r,
            async {
                let _ = exit_rx.await;
            },
            None,
            tally,
        ));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        prog_in_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello", "program sees the input then EOF");
        // Counted as it goes, before the session ends.
        assert_eq!(tally.to_program.load(Ordering::Relaxed), 5);
        prog_out_w.write_all(b"world").await.unwrap();
        drop(prog_out_w);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world", "client sees the output then EOF");
        let r = task.await.unwrap().unwrap();
        assert_eq!(
            r,
            Relayed {
                to_program: 5,
                to_client: 5,
                truncated: false,
            }
        );
        assert_eq!(tally.to_client.load(Ordering::Relaxed), 5);
        drop(exit_tx);
    }

    #[tokio::test]
    async fn output_of_a_program_that_ignores_input_is_not_lost() {
        let (client_side, mut client) = duplex(64);
        let (prog_in_w, prog_in_r) = duplex(8);
        drop(prog_in_r); // the program never reads
        let (mut prog_out_w, prog_out_r) = duplex(64);
        let tally: &'static Tally = Box::leak(Box::default());
        let task = tokio::spawn(relay(
            client_side,
            prog_in_w,
            prog_out_r,
            async {},
            None,
            tally,
        ));
        let _ = client.write_all(&[7u8; 32]).await;
        prog_out_w.write_all(b"output").await.unwrap();
        drop(prog_out_w);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"output");
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_ends_the_session_after_the_timeout() {
        let (client_side, _client) = duplex(64);
        let (prog_in_w, mut prog_in_r) = duplex(64);
        let (_prog_out_w, prog_out_r) = duplex(64);
        let task = tokio::spawn(relay(
            client_side,
            prog_in_w,
            prog_out_r,
            std::future::pending(),
            Some(Duration::from_secs(3)),
            Box::leak(Box::default()),
        ));
        let mut got = Vec::new();
        // With paused time the timeout elapses as soon as all tasks idle.
        prog_in_r.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "the program's stdin is closed");
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_read_that_waits_holds_no_buffer() {
        let (mut tx, mut rx) = duplex(64);
        let mut buf = None;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        {
            let read = std::pin::pin!(read_some(&mut rx, &mut buf));
            assert!(read.poll(&mut cx).is_pending());
        }
        assert!(buf.is_none(), "an idle read keeps no buffer");
        tx.write_all(b"hello").await.unwrap();
        assert_eq!(read_some(&mut rx, &mut buf).await.unwrap(), 5);
        assert_eq!(buf.as_deref(), Some(&b"hello"[..]));
        {
            let read = std::pin::pin!(read_some(&mut rx, &mut buf));
            assert!(read.poll(&mut cx).is_pending());
        }
        assert!(buf.is_none(), "the buffer goes once the bytes are read");
        drop(tx);
        assert_eq!(read_some(&mut rx, &mut buf).await.unwrap(), 0, "EOF");
    }

    #[test]
    fn the_pipe_budget_grants_while_it_lasts_and_takes_back_on_drop() {
        let b = PipeBudget::new(5);
        let g1 = b.take(2).unwrap();
        let g2 = b.take(2).unwrap();
        assert!(b.take(2).is_none(), "4 + 2 is over 5");
        let g3 = b.take(1).unwrap();
        assert_eq!(b.used(), 5);
        drop(g1);
        assert_eq!(b.used(), 3);
        let g4 = b.take(2).unwrap();
        // A lower limit holds back new grants until enough are given back.
        b.set_limit(2);
        assert!(b.take(1).is_none());
        drop((g2, g3, g4));
        assert_eq!(b.used(), 0);
        assert!(b.take(2).is_some());
        assert!(PipeBudget::new(0).take(1).is_none());
        assert!(PipeBudget::new(u64::MAX).take(u64::MAX).is_some());
    }
}
