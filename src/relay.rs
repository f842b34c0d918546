//! The `pipe` handoff: wininetd stands between the client's socket and the
//! program's pipes and copies both ways, passing half-closes through.
//!
//! It is generic over the byte streams so the same relay can later carry a
//! TLS session or a PROXY-protocol preamble, and serves Unix and Windows.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const BUF_SIZE: usize = 32 * 1024;

/// What a finished relay moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub to_program: u64,
    pub to_client: u64,
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
pub async fn relay<C, W, R>(
    client: C,
    mut to_program: W,
    mut from_program: R,
    program_exited: impl Future<Output = ()>,
    idle: Option<Duration>,
) -> io::Result<Relayed>
where
    C: AsyncRead + AsyncWrite,
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let upstream = async {
        let mut buf = vec![0u8; BUF_SIZE];
        let mut total = 0u64;
        loop {
            let n = with_idle(idle, client_rx.read(&mut buf)).await?;
            if n == 0 {
                break;
            }
            if to_program.write_all(&buf[..n]).await.is_err() {
                // The program no longer reads its input; that is its right.
                break;
            }
            total += n as u64;
        }
        // Dropping our end closes the program's stdin.
        let _ = to_program.shutdown().await;
        drop(to_program);
        io::Result::Ok(total)
    };

    let downstream = async {
        let mut buf = vec![0u8; BUF_SIZE];
        let mut total = 0u64;
        loop {
            let n = from_program.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            with_idle(idle, client_tx.write_all(&buf[..n])).await?;
            total += n as u64;
        }
        client_tx.shutdown().await?;
        io::Result::Ok(total)
    };

    tokio::pin!(upstream, downstream, program_exited);
    let mut up_total = None;
    let mut exited = false;
    let mut down_total = None;
    // Ends when output is finished and the input side has no reader left.
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
    })
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
    use tokio::io::duplex;

    #[tokio::test]
    async fn bytes_and_half_close_pass_both_ways() {
        let (client_side, mut client) = duplex(1024);
        let (prog_in_w, mut prog_in_r) = duplex(1024);
        let (mut prog_out_w, prog_out_r) = duplex(1024);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay(
            client_side,
            prog_in_w,
            prog_out_r,
            async {
                let _ = exit_rx.await;
            },
            None,
        ));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        prog_in_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello", "program sees the input then EOF");
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
                to_client: 5
            }
        );
        drop(exit_tx);
    }

    #[tokio::test]
    async fn output_of_a_program_that_ignores_input_is_not_lost() {
        let (client_side, mut client) = duplex(64);
        let (prog_in_w, prog_in_r) = duplex(8);
        drop(prog_in_r); // the program never reads
        let (mut prog_out_w, prog_out_r) = duplex(64);
        let task = tokio::spawn(relay(client_side, prog_in_w, prog_out_r, async {}, None));
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
        ));
        let mut got = Vec::new();
        // With paused time the timeout elapses as soon as all tasks idle.
        prog_in_r.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "the program's stdin is closed");
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
