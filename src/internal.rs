//! The classic inetd internal services, served in-process with no spawn:
//! echo (RFC 862), discard (863), chargen (864), daytime (867), time (868).

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Internal;
use crate::relay::with_idle;

/// Serves one TCP session of `kind`; `idle` bounds each read and write.
pub async fn serve_stream<S>(kind: Internal, stream: S, idle: Option<Duration>) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rx, mut tx) = tokio::io::split(stream);
    match kind {
        Internal::Echo => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = with_idle(idle, rx.read(&mut buf)).await?;
                if n == 0 {
                    break;
                }
                with_idle(idle, tx.write_all(&buf[..n])).await?;
            }
        }
        Internal::Discard => {
            let mut buf = vec![0u8; 16 * 1024];
            while with_idle(idle, rx.read(&mut buf)).await? != 0 {}
        }
        Internal::Chargen => {
            // Writes until the client goes; its input is read and dropped so
            // that a client which sends does not stall us. A block's write
            // is never abandoned half-way for that input: dropping it would
            // cut a line short and skip the rest of the block.
            let mut line = 0usize;
            let mut block = Vec::with_capacity(CHARGEN_LINE * 64);
            let mut sink = [0u8; 1024];
            let mut input_open = true;
            loop {
                block.clear();
                for _ in 0..64 {
                    block.extend_from_slice(&chargen_line(line));
                    line += 1;
                }
                let write = with_idle(idle, tx.write_all(&block));
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        r = &mut write => {
                            r?;
                            break;
                        }
                        // Half-closed input: keep writing until the write
                        // fails, as RFC 864 says.
                        r = rx.read(&mut sink), if input_open => input_open = r? != 0,
                    }
                }
            }
        }
        Internal::Daytime => tx.write_all(daytime(SystemTime::now()).as_bytes()).await?,
        Internal::Time => tx.write_all(&rfc868_time(SystemTime::now())).await?,
        // Served by the core, which holds the counters.
        Internal::Metrics => {}
    }
    tx.shutdown().await
}

/// The reply to one datagram, or `None` for discard.
pub fn datagram_reply(kind: Internal, request: &[u8], seed: u64) -> Option<Vec<u8>> {
    match kind {
        Internal::Echo => Some(request.to_vec()),
        Internal::Discard => None,
        Internal::Chargen => {
            // RFC 864: a datagram of a random length between 0 and 512.
            let len = (seed % 513) as usize;
            let mut out = Vec::with_capacity(len + CHARGEN_LINE);
            let mut line = (seed / 513) as usize;
            while out.len() < len {
                out.extend_from_slice(&chargen_line(line));
                line += 1;
            }
            out.truncate(len);
            Some(out)
        }
        Internal::Daytime => Some(daytime(SystemTime::now()).into_bytes()),
        Internal::Time => Some(rfc868_time(SystemTime::now()).to_vec()),
        // TCP only (a config error on UDP).
        Internal::Metrics => None,
    }
}

const CHARGEN_LINE: usize = 74;

/// Line `n` of RFC 864's pattern: 72 of the 95 printable characters,
/// starting one further along each line, then CR LF.
fn chargen_line(n: usize) -> [u8; CHARGEN_LINE] {
    let mut out = [0u8; CHARGEN_LINE];
    for (i, b) in out[..72].iter_mut().enumerate() {
        *b = b' ' + ((n + i) % 95) as u8;
    }
    out[72] = b'\r';
    out[73] = b'\n';
    out
}

/// Seconds since 1900-01-01 as 32 big-endian bits (wraps in 2036, as the
/// RFC's format does).
fn rfc868_time(now: SystemTime) -> [u8; 4] {
    const OFFSET_1900_1970: u64 = 2_208_988_800;
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    ((secs + OFFSET_1900_1970) as u32).to_be_bytes()
}

/// RFC 867 leaves the format free; this is the RFC's own example's form,
/// in UTC: `Friday, November 27, 2026 08:11:57-UTC` and CR LF.
fn daytime(now: SystemTime) -> String {
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {} {}, {} {:02}:{:02}:{:02}-UTC\r\n",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daytime_matches_known_dates() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_767_117); // 2026-11-27 08:11:57 UTC
        assert_eq!(daytime(t), "Friday, November 27, 2026 08:11:57-UTC\r\n");
        assert_eq!(
            daytime(UNIX_EPOCH),
            "Thursday, January 1, 1970 00:00:00-UTC\r\n"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(daytime(leap), "Tuesday, February 29, 2000 00:00:00-UTC\r\n");
    }

    #[test]
    fn time_counts_from_1900() {
        assert_eq!(rfc868_time(UNIX_EPOCH), 2_208_988_800u32.to_be_bytes());
    }

    #[test]
    fn chargen_rotates_through_the_printable_characters() {
        let l0 = chargen_line(0);
        assert_eq!(&l0[..3], b" !\"");
        assert_eq!(&l0[72..], b"\r\n");
        let l1 = chargen_line(1);
        assert_eq!(l1[0], b'!');
        assert!(l0[..72].iter().all(|b| (b' '..=b'~').contains(b)));
        assert_eq!(chargen_line(95), l0);
    }

    #[test]
    fn udp_chargen_is_at_most_512_bytes() {
        for seed in [0u64, 1, 512, 513, 99_999, u64::MAX] {
            let r = datagram_reply(Internal::Chargen, b"", seed).unwrap();
            assert!(r.len() <= 512);
            assert_eq!(r.len() as u64, seed % 513);
        }
        assert_eq!(datagram_reply(Internal::Echo, b"abc", 0).unwrap(), b"abc");
        assert!(datagram_reply(Internal::Discard, b"abc", 0).is_none());
    }
}
