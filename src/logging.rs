//! Where log lines go: the console with `--debug`; as a daemon, journald,
//! syslog or (Windows) the Event Log. `log_format = "json"` can switch the
//! line format once the config is read, so the sink is set up first and
//! config errors are logged like everything else.
//!
//! The thread that logs never writes to the sink itself: it formats the
//! line into a reused buffer and copies it into a bounded queue that a
//! writer thread drains. A sink that stalls (a journal nobody reads, a
//! stopped terminal) then costs lines, never connections: when the queue
//! is full a line is dropped and counted, and `N log lines dropped` is
//! written once the sink takes lines again.

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;
use crate::text::{write_addr, write_padded, write_u64};

static JSON: AtomicBool = AtomicBool::new(false);

/// Switches every later line to `format`.
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Where the daemon logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// `--debug`: stderr, with timestamps.
    Console,
    /// Run by a service manager.
    Daemon,
}

/// The level: `info`, or what `WININETD_LOG` says (error … trace).
fn level() -> LevelFilter {
    std::env::var("WININETD_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::INFO)
}

/// Installs the global subscriber and starts the writer thread. Call once,
/// before anything logs.
pub fn init(sink: Sink) {
    let (out, ansi, timed): (Box<dyn LineSink>, bool, bool) = match sink {
        Sink::Console => (Box::new(Stderr::new()), io::stderr().is_terminal(), true),
        Sink::Daemon => daemon_sink(),
    };
    let queue = Arc::clone(global());
    if start_writer(Arc::clone(&queue), out).is_err() {
        return; // no thread, no logging; the daemon still serves
    }
    let level = level();
    let installed = tracing_subscriber::registry()
        .with(level)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(Queued(queue))
                .with_ansi(ansi)
                .event_format(Switch::new(timed)),
        )
        .try_init();
    if installed.is_ok() {
        let by_hand = if level < LevelFilter::INFO {
            BY_HAND_OFF
        } else if ansi {
            BY_HAND_NO // colours: tracing's formatter
        } else if timed {
            BY_HAND_TIMED
        } else {
            BY_HAND_UNTIMED
        };
        BY_HAND.store(by_hand, Ordering::Relaxed);
    }
}

/// How [`connection_ended`] writes its line: through tracing (not set up
/// here, or colours), by hand with or without a timestamp, or not at all
/// (the level is below `info`).
static BY_HAND: AtomicU8 = AtomicU8::new(BY_HAND_NO);
const BY_HAND_NO: u8 = 0;
const BY_HAND_OFF: u8 = 1;
const BY_HAND_TIMED: u8 = 2;
const BY_HAND_UNTIMED: u8 = 3;

/// The end of a connection's program: the one line per connection at the
/// default level.
pub struct Ended<'a> {
    pub service: &'a str,
    pub peer: SocketAddr,
    /// The PROXY balancer it came through.
    pub via: Option<SocketAddr>,
    pub pid: u32,
    /// `None`: not known (written `unknown`).
    pub status: Option<&'a ExitStatus>,
    pub duration: Duration,
    /// Bytes relayed to the program and to the client (pipe and TLS).
    pub bytes: Option<(u64, u64)>,
}

/// Logs a connection's end at `info`. The text line is written here by
/// hand, byte for byte what tracing's formatter writes for the same event
/// (the tests compare them), into the queue: it is written once per
/// connection, and tracing's field visitor and `core::fmt` cost several
/// times more. JSON and coloured lines go through tracing.
pub fn connection_ended(e: &Ended<'_>) {
    let by_hand = BY_HAND.load(Ordering::Relaxed);
    if by_hand == BY_HAND_OFF {
        return;
    }
    if by_hand == BY_HAND_NO || JSON.load(Ordering::Relaxed) {
        return ended_by_tracing(e);
    }
    thread_local! {
        static LINE: std::cell::RefCell<(Vec<u8>, Stamp, LastStatus)> =
            std::cell::RefCell::new((Vec::with_capacity(256), Stamp::default(), None));
    }
    LINE.with_borrow_mut(|(buf, stamp, last)| {
        buf.clear();
        if by_hand == BY_HAND_TIMED {
            stamp.write(buf, std::time::SystemTime::now());
            buf.push(b' ');
        }
        write_ended(buf, e, last);
        global().push(Level::INFO, buf);
    });
}

fn ended_by_tracing(e: &Ended<'_>) {
    let status = e
        .status
        .map_or_else(|| "unknown".to_string(), |s| s.to_string());
    let duration = format_args!("{:.3}s", e.duration.as_secs_f64());
    match e.bytes {
        None => tracing::info!(
            service = %e.service,
            peer = %e.peer,
            via = e.via.map(tracing::field::display),
            pid = e.pid,
            %status,
            %duration,
            "ended"
        ),
        Some((to_program, to_client)) => tracing::info!(
            service = %e.service,
            peer = %e.peer,
            via = e.via.map(tracing::field::display),
            pid = e.pid,
            %status,
            %duration,
            bytes_in = to_program,
            bytes_out = to_client,
            "ended"
        ),
    }
}

/// The line after the timestamp, as tracing's `Full` text format writes it
/// (level, message, then the fields in the order of [`ended_by_tracing`]).
fn write_ended(buf: &mut Vec<u8>, e: &Ended<'_>, last: &mut LastStatus) {
    buf.extend_from_slice(b" INFO ended service=");
    buf.extend_from_slice(e.service.as_bytes());
    buf.extend_from_slice(b" peer=");
    write_addr(buf, &e.peer);
    if let Some(via) = &e.via {
        buf.extend_from_slice(b" via=");
        write_addr(buf, via);
    }
    buf.extend_from_slice(b" pid=");
    write_u64(buf, e.pid.into());
    buf.extend_from_slice(b" status=");
    match e.status {
        Some(s) => write_status(buf, s, last),
        None => buf.extend_from_slice(b"unknown"),
    }
    buf.extend_from_slice(b" duration=");
    write_duration(buf, e.duration);
    if let Some((to_program, to_client)) = e.bytes {
        buf.extend_from_slice(b" bytes_in=");
        write_u64(buf, to_program);
        buf.extend_from_slice(b" bytes_out=");
        write_u64(buf, to_client);
    }
}

/// The last exit status written and its text: programs end with the
/// same few statuses.
type LastStatus = Option<(ExitStatus, String)>;

/// As `ExitStatus`'s `Display`, the last one's text kept in `last`.
fn write_status(buf: &mut Vec<u8>, status: &ExitStatus, last: &mut LastStatus) {
    match last {
        Some((s, text)) if s == status => buf.extend_from_slice(text.as_bytes()),
        _ => {
            let text = status.to_string();
            buf.extend_from_slice(text.as_bytes());
            *last = Some((*status, text));
        }
    }
}

/// As `format!("{:.3}s", d.as_secs_f64())`. Off an exact half millisecond
/// the float rounds as the nanoseconds do; the tie and durations too long
/// for a float to hold to the nanosecond go through `core::fmt`.
fn write_duration(buf: &mut Vec<u8>, d: Duration) {
    let nanos = d.subsec_nanos();
    if nanos % 1_000_000 == 500_000 || d.as_secs() >= 1 << 20 {
        let _ = write!(buf, "{:.3}s", d.as_secs_f64());
        return;
    }
    let millis = u64::from((nanos + 500_000) / 1_000_000);
    let (secs, millis) = if millis == 1000 {
        (d.as_secs() + 1, 0)
    } else {
        (d.as_secs(), millis)
    };
    write_u64(buf, secs);
    buf.push(b'.');
    write_padded(buf, millis, 3);
    buf.push(b's');
}

/// The timestamp of tracing's `SystemTime` (RFC 3339 UTC, microseconds),
/// its date and time of day formatted once per second.
#[derive(Default)]
struct Stamp {
    /// The second `text` holds, since the epoch.
    secs: Option<i64>,
    /// `YYYY-MM-DDTHH:MM:SS`.
    text: Vec<u8>,
}

impl Stamp {
    fn write(&mut self, buf: &mut Vec<u8>, now: std::time::SystemTime) {
        let (secs, nanos) = match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                match d.subsec_nanos() {
                    0 => (-(d.as_secs() as i64), 0),
                    n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
                }
            }
        };
        if self.secs != Some(secs) {
            self.text.clear();
            civil_text(&mut self.text, secs);
            self.secs = Some(secs);
        }
        buf.extend_from_slice(&self.text);
        buf.push(b'.');
        write_padded(buf, u64::from(nanos / 1000), 6);
        buf.push(b'Z');
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time, as tracing writes it (years past
/// 9999 as `+YYYYY`, before year 0 as `-YYYY`).
fn civil_text(buf: &mut Vec<u8>, t: i64) {
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400) as u64);
    let (year, month, day) = crate::internal::civil_from_days(days);
    let (month, day) = (u64::from(month), u64::from(day));
    if (0..=9999).contains(&year) {
        write_padded(buf, year as u64, 4);
    } else if year > 9999 {
        let _ = write!(buf, "+{year}");
    } else {
        let _ = write!(buf, "{year:05}");
    }
    for (sep, n) in [
        (b'-', month),
        (b'-', day),
        (b'T', rem / 3600),
        (b':', rem / 60 % 60),
        (b':', rem % 60),
    ] {
        buf.push(sep);
        write_padded(buf, n, 2);
    }
}

/// The daemon's sink, and whether its lines need timestamps (the journal,
/// syslog and the Event Log stamp lines themselves).
fn daemon_sink() -> (Box<dyn LineSink>, bool, bool) {
    #[cfg(unix)]
    {
        // systemd sets JOURNAL_STREAM when stderr is the journal.
        if std::env::var_os("JOURNAL_STREAM").is_some()
            && let Some(j) = Journald::connect()
        {
            return (Box::new(j), false, false);
        }
        if let Some(s) = Syslog::connect() {
            return (Box::new(s), false, false);
        }
        // No journal and no syslog: stderr, for whatever collects it.
        (Box::new(Stderr::new()), false, true)
    }
    #[cfg(windows)]
    {
        (Box::new(crate::os::EventLog::new()), false, false)
    }
}

/// Lines dropped because the sink could not keep up, since the start (for
/// metrics).
pub fn dropped_lines() -> u64 {
    global().dropped.load(Ordering::Relaxed)
}

/// Waits (at most `limit`) until every queued line has been written: for
/// the last lines before the process exits.
pub fn flush(limit: Duration) {
    if let Some(q) = QUEUE.get() {
        q.flush(limit);
    }
}

/// Where the writer thread puts whole lines (no line break).
pub trait LineSink: Send + 'static {
    fn write_line(&mut self, level: Level, line: &[u8]) -> io::Result<()>;

    /// The end of a batch: a sink that gathers lines writes them now, and
    /// says how many it lost.
    fn end_batch(&mut self) -> u64 {
        0
    }
}

/// After a batch the writer rests this long before taking the next, so that
/// under load lines are written in batches (one wakeup each), not one by one.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// How many bytes of lines may wait for the sink: a few thousand lines.
const QUEUE_BYTES: usize = 256 * 1024;

static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();

fn global() -> &'static Arc<Queue> {
    QUEUE.get_or_init(|| Arc::new(Queue::new(QUEUE_BYTES)))
}

/// Lines waiting for the writer thread, as records `[level][len u32][bytes]`
/// in one buffer that the writer swaps for its empty one (no allocation per
/// line once both have grown).
struct Queue {
    state: Mutex<State>,
    /// The writer waits here for lines.
    wake: Condvar,
    /// [`Queue::flush`] waits here for the writer to be idle.
    idle: Condvar,
    capacity: usize,
    /// Every line dropped, ever.
    dropped: AtomicU64,
    /// Dropped and not yet reported in the log.
    unreported: AtomicU64,
}

struct State {
    buf: Vec<u8>,
    /// The writer waits on `wake` (so a push must notify it).
    waiting: bool,
    /// The writer is between batches with nothing to write.
    idle: bool,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(State {
                buf: Vec::new(),
                waiting: false,
                idle: false,
            }),
            wake: Condvar::new(),
            idle: Condvar::new(),
            capacity,
            dropped: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one line, or drops and counts it when the queue is full.
    /// Never waits for the sink.
    fn push(&self, level: Level, line: &[u8]) {
        let len = line.len().min(u32::MAX as usize);
        let mut s = self.lock();
        if s.buf.len() + 5 + len > self.capacity {
            drop(s);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
            return;
        }
        s.buf.push(level_byte(level));
        s.buf.extend_from_slice(&(len as u32).to_le_bytes());
        s.buf.extend_from_slice(&line[..len]);
        if s.waiting {
            s.waiting = false;
            self.wake.notify_one();
        }
    }

    /// The writer thread: takes every queued line at once, writes them,
    /// then reports what was dropped meanwhile.
    fn drain(&self, sink: &mut dyn LineSink) {
        let mut batch = Vec::new();
        loop {
            {
                let mut s = self.lock();
                while s.buf.is_empty() {
                    s.idle = true;
                    self.idle.notify_all();
                    s.waiting = true;
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.idle = false;
                std::mem::swap(&mut s.buf, &mut batch);
            }
            let mut rest = &batch[..];
            while rest.len() >= 5 {
                let level = level_of(rest[0]);
                let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                let end = (5 + len).min(rest.len());
                // Losing a line to a sink error beats stopping the writer;
                // it is counted as dropped, like a line the queue refused.
                if sink.write_line(level, &rest[5..end]).is_err() {
                    self.lost(1);
                }
                rest = &rest[end..];
            }
            batch.clear();
            self.lost(sink.end_batch());
            let n = self.unreported.swap(0, Ordering::Relaxed);
            if n > 0 {
                // In a batch of its own, so that it counts what that lost.
                let note = format!("{n} log lines dropped");
                if sink.write_line(Level::WARN, note.as_bytes()).is_err() || sink.end_batch() > 0 {
                    // Still no sink: the count waits for one.
                    self.unreported.fetch_add(n, Ordering::Relaxed);
                }
            }
            std::thread::sleep(BATCH_PAUSE);
        }
    }

    /// Counts `n` lines the sink lost as dropped.
    fn lost(&self, n: u64) {
        if n > 0 {
            self.dropped.fetch_add(n, Ordering::Relaxed);
            self.unreported.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut s = self.lock();
        while !(s.idle && s.buf.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            s = self
                .idle
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

fn start_writer(queue: Arc<Queue>, mut sink: Box<dyn LineSink>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("log writer".into())
        .spawn(move || queue.drain(&mut *sink))
        .map(drop)
}

fn level_byte(level: Level) -> u8 {
    match level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        Level::TRACE => 4,
    }
}

fn level_of(b: u8) -> Level {
    match b {
        0 => Level::ERROR,
        1 => Level::WARN,
        2 => Level::INFO,
        3 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// The fmt layer's writer. The layer formats each event into its own
/// reused per-thread buffer and hands it over with one `write_all`, so
/// each write is one whole line, copied into the queue as it is.
struct Queued(Arc<Queue>);

struct QueuedLine<'a> {
    queue: &'a Queue,
    level: Level,
}

impl<'a> MakeWriter<'a> for Queued {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> QueuedLine<'a> {
        QueuedLine {
            queue: &self.0,
            level: Level::INFO,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> QueuedLine<'a> {
        QueuedLine {
            queue: &self.0,
            level: *meta.level(),
        }
    }
}

impl Write for QueuedLine<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut end = b.len();
        while end > 0 && matches!(b[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        if end > 0 {
            self.queue.push(self.level, &b[..end]);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Text or JSON, chosen per line from [`set_format`].
struct Switch {
    text: format::Format<format::Full, SystemTime>,
    text_untimed: format::Format<format::Full, ()>,
    json: format::Format<format::Json, SystemTime>,
    timed: bool,
}

impl Switch {
    fn new(timed: bool) -> Switch {
        Switch {
            text: format::format().with_target(false),
            text_untimed: format::format().with_target(false).without_time(),
            json: format::format().json().with_target(false),
            timed,
        }
    }
}

impl<S, N> FormatEvent<S, N> for Switch
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if JSON.load(Ordering::Relaxed) {
            self.json.format_event(ctx, writer, event)
        } else if self.timed {
            self.text.format_event(ctx, writer, event)
        } else {
            self.text_untimed.format_event(ctx, writer, event)
        }
    }
}

/// Lines on stderr (the console, or a daemon with nowhere else to log).
struct Stderr {
    buf: Vec<u8>,
}

impl Stderr {
    fn new() -> Stderr {
        Stderr { buf: Vec::new() }
    }
}

impl LineSink for Stderr {
    fn write_line(&mut self, _level: Level, line: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        Ok(())
    }

    /// The whole batch in one write. A failed write is not counted: nobody
    /// would read the note either.
    fn end_batch(&mut self) -> u64 {
        let _ = io::stderr().lock().write_all(&self.buf);
        self.buf.clear();
        0
    }
}

/// Syslog's severity for a level: err, warning, info, debug.
#[cfg(unix)]
fn severity(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Datagrams to a local socket (syslog's, journald's), one per line:
/// gathered over a batch and sent with as few system calls as it takes
/// (`sendmmsg`), on a socket connected once (no path lookup per line). A
/// daemon that restarts binds a new socket at the path, and the old
/// connection only fails: on a send error the socket is connected again,
/// at most once per batch.
#[cfg(unix)]
struct Datagrams {
    sock: Option<std::os::unix::net::UnixDatagram>,
    path: std::path::PathBuf,
    /// This batch's datagrams back to back, and where each ends.
    buf: Vec<u8>,
    ends: Vec<usize>,
}

#[cfg(unix)]
impl Datagrams {
    fn connect_to(path: &std::path::Path) -> io::Result<Datagrams> {
        Ok(Datagrams {
            sock: Some(Self::open(path)?),
            path: path.to_owned(),
            buf: Vec::with_capacity(16 * 1024),
            ends: Vec::new(),
        })
    }

    fn open(path: &std::path::Path) -> io::Result<std::os::unix::net::UnixDatagram> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        sock.connect(path)?;
        Ok(sock)
    }

    /// Ends the datagram written into `buf` since the last one.
    fn push(&mut self) {
        self.ends.push(self.buf.len());
    }

    /// Sends the batch; returns how many of its datagrams were lost.
    fn send(&mut self) -> u64 {
        let Datagrams {
            sock,
            path,
            buf,
            ends,
        } = self;
        let mut start = 0;
        let list: Vec<&[u8]> = ends
            .iter()
            .map(|&end| {
                let d = &buf[start..end];
                start = end;
                d
            })
            .collect();
        let (mut i, mut lost, mut reconnected) = (0, 0, false);
        while i < list.len() {
            let Some(s) = sock.as_ref() else {
                if reconnected {
                    lost += list.len() - i;
                    break;
                }
                reconnected = true;
                match Self::open(path) {
                    Ok(s) => *sock = Some(s),
                    Err(_) => {
                        lost += list.len() - i;
                        break;
                    }
                }
                continue;
            };
            match crate::os::send_datagrams(s, &list[i..]) {
                Ok(n) => i += n.max(1),
                // The reader is gone (or a new one took the path).
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::NotConnected
                            | io::ErrorKind::NotFound
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    *sock = None;
                    if reconnected {
                        lost += 1;
                        i += 1;
                    }
                }
                // This datagram (too long, say): lost alone.
                Err(_) => {
                    lost += 1;
                    i += 1;
                }
            }
        }
        buf.clear();
        ends.clear();
        lost as u64
    }
}

/// RFC 3164 lines to the local syslog socket, facility daemon (3).
#[cfg(unix)]
struct Syslog {
    out: Datagrams,
    /// `<PRI>wininetd[PID]: ` per severity (0 … 7).
    heads: [Vec<u8>; 8],
}

#[cfg(unix)]
const SYSLOG_SOCKET: &str = "/dev/log";

#[cfg(unix)]
impl Syslog {
    fn connect() -> Option<Syslog> {
        Self::connect_to(SYSLOG_SOCKET.as_ref())
    }

    fn connect_to(path: &std::path::Path) -> Option<Syslog> {
        let pid = std::process::id();
        Some(Syslog {
            out: Datagrams::connect_to(path).ok()?,
            heads: std::array::from_fn(|sev| {
                format!("<{}>wininetd[{pid}]: ", 3 * 8 + sev).into_bytes()
            }),
        })
    }
}

#[cfg(unix)]
impl LineSink for Syslog {
    fn write_line(&mut self, level: Level, line: &[u8]) -> io::Result<()> {
        let buf = &mut self.out.buf;
        buf.extend_from_slice(&self.heads[usize::from(severity(level))]);
        buf.extend_from_slice(line.trim_ascii_start());
        self.out.push();
        Ok(())
    }

    fn end_batch(&mut self) -> u64 {
        self.out.send()
    }
}

/// journald's native protocol: one datagram per line with its priority,
/// our identifier and pid, and the line (fields included) as MESSAGE.
#[cfg(unix)]
struct Journald {
    out: Datagrams,
    /// Every field before MESSAGE's value, per severity (0 … 7).
    heads: [Vec<u8>; 8],
}

#[cfg(unix)]
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

#[cfg(unix)]
impl Journald {
    fn connect() -> Option<Journald> {
        let pid = std::process::id();
        Some(Journald {
            out: Datagrams::connect_to(JOURNALD_SOCKET.as_ref()).ok()?,
            heads: std::array::from_fn(|sev| journald_head(pid, sev as u8)),
        })
    }
}

/// What comes before MESSAGE's length in a datagram.
#[cfg(unix)]
fn journald_head(pid: u32, severity: u8) -> Vec<u8> {
    format!("PRIORITY={severity}\nSYSLOG_IDENTIFIER=wininetd\nSYSLOG_PID={pid}\nMESSAGE\n")
        .into_bytes()
}

/// The datagram for one line: MESSAGE length-prefixed, so any byte (a
/// newline in a program's output) stays inside it.
#[cfg(unix)]
fn journald_datagram(buf: &mut Vec<u8>, head: &[u8], line: &[u8]) {
    buf.extend_from_slice(head);
    buf.extend_from_slice(&(line.len() as u64).to_le_bytes());
    buf.extend_from_slice(line);
    buf.push(b'\n');
}

#[cfg(unix)]
impl LineSink for Journald {
    fn write_line(&mut self, level: Level, line: &[u8]) -> io::Result<()> {
        let head = &self.heads[usize::from(severity(level))];
        journald_datagram(&mut self.out.buf, head, line.trim_ascii_start());
        self.out.push();
        Ok(())
    }

    fn end_batch(&mut self) -> u64 {
        self.out.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that holds every line until the test lets it go, like a
    /// journal nobody reads; says when it first holds one.
    struct Stalled {
        entered: Option<mpsc::Sender<()>>,
        gate: mpsc::Receiver<()>,
        out: mpsc::Sender<String>,
    }

    impl LineSink for Stalled {
        fn write_line(&mut self, _level: Level, line: &[u8]) -> io::Result<()> {
            if let Some(e) = self.entered.take() {
                let _ = e.send(());
            }
            let _ = self.gate.recv();
            let _ = self.out.send(String::from_utf8_lossy(line).into_owned());
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_costs_lines_not_time_and_the_loss_is_reported() {
        let queue = Arc::new(Queue::new(1000));
        let (entered, stuck) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let (out, lines) = mpsc::channel();
        let sink = Stalled {
            entered: Some(entered),
            gate,
            out,
        };
        start_writer(Arc::clone(&queue), Box::new(sink)).unwrap();
        let line = [b'x'; 20];
        queue.push(Level::INFO, &line);
        stuck.recv_timeout(Duration::from_secs(10)).unwrap();
        // The writer is stuck in the sink with that line. 9 999 more lines
        // of 20 bytes (25 queued) against a 1000-byte queue: 40 wait, the
        // rest are dropped, and no push waits for the sink.
        for _ in 1..10_000 {
            queue.push(Level::INFO, &line);
        }
        let dropped = queue.dropped.load(Ordering::Relaxed);
        assert_eq!(dropped, 9_999 - 40);
        // The sink takes lines again: every kept line, and the count once.
        for _ in 0..=41 {
            let _ = open.send(());
        }
        let got: Vec<String> = (0..42)
            .map(|_| lines.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        let notes: Vec<&String> = got.iter().filter(|l| l.contains("dropped")).collect();
        assert_eq!(notes, vec![&format!("{dropped} log lines dropped")]);
        assert_eq!(got.iter().filter(|l| l.as_bytes() == line).count(), 41);
        queue.flush(Duration::from_secs(10));
        assert!(queue.lock().buf.is_empty() && queue.lock().idle);
        assert_eq!(queue.unreported.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn lines_that_keep_coming_are_written_in_batches() {
        struct Batches(mpsc::Sender<usize>, usize);
        impl LineSink for Batches {
            fn write_line(&mut self, _level: Level, _line: &[u8]) -> io::Result<()> {
                self.1 += 1;
                Ok(())
            }
            fn end_batch(&mut self) -> u64 {
                let _ = self.0.send(std::mem::take(&mut self.1));
                0
            }
        }
        let queue = Arc::new(Queue::new(QUEUE_BYTES));
        let (tx, rx) = mpsc::channel();
        start_writer(Arc::clone(&queue), Box::new(Batches(tx, 0))).unwrap();
        // 1 000 lines, one every ~0.1 ms, as connections end under load: a
        // writer woken for each line would write ~1 000 batches. The sleeps
        // last longer where timers are coarse (Wine): the bound is the rest
        // after each batch, so one batch per 10 ms at most, and the last.
        let start = Instant::now();
        for _ in 0..1000 {
            queue.push(Level::INFO, b"a connection ended");
            std::thread::sleep(Duration::from_micros(100));
        }
        let pushing = start.elapsed();
        queue.flush(Duration::from_secs(10));
        let sizes: Vec<usize> = rx.try_iter().collect();
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        let most = (pushing.as_millis() / 10 + 2).min(500) as usize;
        assert!(
            sizes.len() <= most,
            "{} batches in {pushing:?} (at most {most}): {sizes:?}",
            sizes.len()
        );
    }

    #[test]
    fn records_keep_their_level_and_bytes() {
        struct Collect(mpsc::Sender<(Level, Vec<u8>)>);
        impl LineSink for Collect {
            fn write_line(&mut self, level: Level, line: &[u8]) -> io::Result<()> {
                let _ = self.0.send((level, line.to_vec()));
                Ok(())
            }
        }
        let queue = Arc::new(Queue::new(QUEUE_BYTES));
        let (tx, rx) = mpsc::channel();
        start_writer(Arc::clone(&queue), Box::new(Collect(tx))).unwrap();
        queue.push(Level::ERROR, b"one\nwith a break");
        queue.push(Level::DEBUG, b"");
        queue.push(Level::WARN, b"three");
        let got: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(
            got,
            vec![
                (Level::ERROR, b"one\nwith a break".to_vec()),
                (Level::DEBUG, Vec::new()),
                (Level::WARN, b"three".to_vec()),
            ]
        );
    }

    #[test]
    fn lines_the_sink_refuses_are_counted_as_dropped_and_reported_once_it_takes_lines() {
        /// Fails while `down` holds, then collects.
        struct Flaky {
            down: Arc<AtomicBool>,
            out: mpsc::Sender<String>,
        }
        impl LineSink for Flaky {
            fn write_line(&mut self, _level: Level, line: &[u8]) -> io::Result<()> {
                if self.down.load(Ordering::SeqCst) {
                    return Err(io::ErrorKind::ConnectionRefused.into());
                }
                let _ = self.out.send(String::from_utf8_lossy(line).into_owned());
                Ok(())
            }
        }
        let queue = Arc::new(Queue::new(QUEUE_BYTES));
        let down = Arc::new(AtomicBool::new(true));
        let (out, lines) = mpsc::channel();
        let sink = Flaky {
            down: Arc::clone(&down),
            out,
        };
        start_writer(Arc::clone(&queue), Box::new(sink)).unwrap();
        for _ in 0..5 {
            queue.push(Level::INFO, b"lost");
        }
        queue.flush(Duration::from_secs(10));
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 5);
        // The note could not be written either: it waits for the sink.
        assert_eq!(queue.unreported.load(Ordering::Relaxed), 5);
        down.store(false, Ordering::SeqCst);
        queue.push(Level::INFO, b"back");
        let got: Vec<String> = (0..2)
            .map(|_| lines.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, ["back", "5 log lines dropped"]);
    }

    /// What tracing's own formatter (this module's `Switch`, untimed, no
    /// colours) writes for the same connection end.
    fn by_tracing(e: &Ended<'_>) -> String {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .event_format(Switch::new(false)),
        );
        tracing::subscriber::with_default(subscriber, || ended_by_tracing(e));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.strip_suffix('\n').unwrap().to_string()
    }

    fn by_hand(e: &Ended<'_>) -> String {
        by_hand_keeping(e, &mut None)
    }

    fn by_hand_keeping(e: &Ended<'_>, last: &mut LastStatus) -> String {
        let mut buf = Vec::new();
        write_ended(&mut buf, e, last);
        String::from_utf8(buf).unwrap()
    }

    #[cfg(unix)]
    fn exit_status(code: i32) -> ExitStatus {
        std::os::unix::process::ExitStatusExt::from_raw(code << 8)
    }

    #[cfg(windows)]
    fn exit_status(code: i32) -> ExitStatus {
        std::os::windows::process::ExitStatusExt::from_raw(code as u32)
    }

    #[test]
    fn the_hand_written_end_line_is_tracings_byte_for_byte() {
        let ok = exit_status(0);
        let three = exit_status(3);
        let v4: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let v4_wide: SocketAddr = "255.0.10.200:65535".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1:0:0:1]:443".parse().unwrap();
        let v6_scoped: SocketAddr = "[fe80::1%3]:7".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:0".parse().unwrap();
        let base = Ended {
            service: "cat",
            peer: v4,
            via: None,
            pid: 4_294_967_295,
            status: Some(&ok),
            duration: Duration::from_micros(2_345),
            bytes: None,
        };
        let cases = [
            Ended { ..base },
            Ended {
                peer: v4_wide,
                via: Some(v6),
                pid: 0,
                status: Some(&three),
                ..base
            },
            Ended {
                peer: v6,
                via: Some(v4),
                ..base
            },
            Ended {
                peer: v6_scoped,
                bytes: Some((0, u64::MAX)),
                ..base
            },
            Ended {
                peer: mapped,
                status: None,
                bytes: Some((5, 5)),
                ..base
            },
            // Odd names are written as they are, as tracing writes a
            // Display field: no quotes, no escaping.
            Ended {
                service: "odd \"name\"\x1b[31m=é\\",
                ..base
            },
        ];
        for e in &cases {
            assert_eq!(by_hand(e), by_tracing(e));
        }
        // The status as std writes it: "exit status: 0" on Unix, "exit
        // code: 0" on Windows.
        assert_eq!(
            by_hand(&cases[0]),
            format!(
                " INFO ended service=cat peer=127.0.0.1:40001 pid=4294967295 \
                 status={ok} duration=0.002s"
            )
        );
        assert_eq!(
            by_hand(&cases[3]),
            format!(
                " INFO ended service=cat peer=[fe80::1%3]:7 pid=4294967295 \
                 status={ok} duration=0.002s bytes_in=0 bytes_out=18446744073709551615"
            )
        );
        // Rounding: up, down, to the next second, the exact tie (through
        // core::fmt) and durations past what the shortcut takes.
        for d in [
            Duration::ZERO,
            Duration::from_nanos(499_999),
            Duration::from_nanos(500_001),
            Duration::from_nanos(1_500_000),
            Duration::from_nanos(2_500_000),
            Duration::new(59, 999_500_001),
            Duration::new(1, 999_999_999),
            Duration::new(12, 34_000_000),
            Duration::new(1 << 20, 1),
            Duration::new(u64::MAX / 4, 999_999_999),
        ] {
            let e = Ended {
                duration: d,
                ..base
            };
            assert_eq!(by_hand(&e), by_tracing(&e), "{d:?}");
        }
        let e = Ended {
            duration: Duration::new(59, 999_600_000),
            ..base
        };
        assert!(
            by_hand(&e).ends_with(" duration=60.000s"),
            "{}",
            by_hand(&e)
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_signal_status_is_written_as_tracing_writes_it() {
        let killed: ExitStatus = std::os::unix::process::ExitStatusExt::from_raw(9);
        let ok = exit_status(0);
        let base = Ended {
            service: "s",
            peer: "10.1.2.3:4".parse().unwrap(),
            via: None,
            pid: 1,
            status: Some(&killed),
            duration: Duration::from_millis(1),
            bytes: None,
        };
        // Alternating: the kept text is reused, or replaced.
        let mut last = None;
        for status in [&killed, &ok, &killed, &killed, &ok] {
            let e = Ended {
                status: Some(status),
                ..base
            };
            assert_eq!(by_hand_keeping(&e, &mut last), by_tracing(&e));
            assert_eq!(last.as_ref().map(|(s, _)| s), Some(status));
        }
    }

    fn stamp_at(stamp: &mut Stamp, secs: i64, nanos: u32) -> String {
        let t = if secs >= 0 {
            std::time::UNIX_EPOCH + Duration::new(secs as u64, nanos)
        } else {
            std::time::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(nanos.into())
        };
        let mut buf = Vec::new();
        stamp.write(&mut buf, t);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn the_timestamp_is_rfc3339_utc_with_microseconds() {
        let mut s = Stamp::default();
        for (secs, nanos, want) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (0, 999, "1970-01-01T00:00:00.000000Z"),
            (0, 1_000, "1970-01-01T00:00:00.000001Z"),
            (951_782_400, 999_999_999, "2000-02-29T00:00:00.999999Z"),
            (951_868_799, 120_000, "2000-02-29T23:59:59.000120Z"),
            (1_709_251_199, 5_000_000, "2024-02-29T23:59:59.005000Z"),
            (4_107_542_399, 0, "2100-02-28T23:59:59.000000Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000Z"),
            (253_402_300_800, 0, "+10000-01-01T00:00:00.000000Z"),
            (-1, 0, "1969-12-31T23:59:59.000000Z"),
            (-1, 250_000_000, "1969-12-31T23:59:59.250000Z"),
        ] {
            assert_eq!(stamp_at(&mut s, secs, nanos), want, "{secs} s {nanos} ns");
        }
    }

    #[test]
    fn the_timestamp_cache_rolls_over_with_the_second() {
        let mut s = Stamp::default();
        // 2024-12-31T23:59:58: within a second the date part is kept; each
        // new second (and with it minute, hour, day, month and year) is
        // formatted again.
        let t = 1_735_689_598;
        assert_eq!(stamp_at(&mut s, t, 1_000), "2024-12-31T23:59:58.000001Z");
        assert_eq!(s.secs, Some(t));
        assert_eq!(
            stamp_at(&mut s, t, 999_999_000),
            "2024-12-31T23:59:58.999999Z"
        );
        assert_eq!(stamp_at(&mut s, t + 1, 0), "2024-12-31T23:59:59.000000Z");
        assert_eq!(s.secs, Some(t + 1));
        assert_eq!(
            stamp_at(&mut s, t + 2, 7_000),
            "2025-01-01T00:00:00.000007Z"
        );
        assert_eq!(
            stamp_at(&mut s, t + 2, 8_000),
            "2025-01-01T00:00:00.000008Z"
        );
        // The clock stepped back: formatted again, not kept.
        assert_eq!(stamp_at(&mut s, t, 0), "2024-12-31T23:59:58.000000Z");
    }

    #[cfg(unix)]
    #[test]
    fn syslog_connects_again_when_its_socket_is_gone_and_back() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = UnixDatagram::bind(&path).unwrap();
        let mut sink = Syslog::connect_to(&path).unwrap();
        sink.write_line(Level::INFO, b"one").unwrap();
        assert_eq!(sink.end_batch(), 0);
        let mut buf = [0u8; 512];
        let n = first.recv(&mut buf).unwrap();
        let pid = std::process::id();
        assert_eq!(&buf[..n], format!("<30>wininetd[{pid}]: one").as_bytes());
        // syslog stops: the socket and its path are gone. Both lines of the
        // batch are lost, and said to be.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        sink.write_line(Level::INFO, b"lost").unwrap();
        sink.write_line(Level::INFO, b"lost too").unwrap();
        assert_eq!(sink.end_batch(), 2);
        // syslog is back, on a new socket at the same path.
        let second = UnixDatagram::bind(&path).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sink.write_line(Level::ERROR, b"two").unwrap();
        assert_eq!(sink.end_batch(), 0);
        let n = second.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], format!("<27>wininetd[{pid}]: two").as_bytes());
    }

    #[cfg(unix)]
    #[test]
    fn a_batch_of_lines_goes_as_one_datagram_each_in_order() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let reader = UnixDatagram::bind(&path).unwrap();
        reader
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut sink = Syslog::connect_to(&path).unwrap();
        // More than one sendmmsg call takes (64), and more than the
        // reader's queue holds (the sender waits for the reader).
        let lines: Vec<String> = (0..150)
            .map(|i| format!("  line {i}\nwith a break"))
            .collect();
        for (i, l) in lines.iter().enumerate() {
            let level = if i % 2 == 0 {
                Level::INFO
            } else {
                Level::DEBUG
            };
            sink.write_line(level, l.as_bytes()).unwrap();
        }
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            for _ in 0..150 {
                let n = reader.recv(&mut buf).unwrap();
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            reader.set_nonblocking(true).unwrap();
            (got, reader)
        });
        assert_eq!(sink.end_batch(), 0);
        let (got, reader) = reading.join().unwrap();
        let pid = std::process::id();
        for (i, l) in lines.iter().enumerate() {
            let pri = if i % 2 == 0 { 30 } else { 31 };
            assert_eq!(
                got[i],
                format!("<{pri}>wininetd[{pid}]: {}", l.trim_start())
            );
        }
        // The batch is gone once sent: an empty one sends nothing.
        assert_eq!(sink.end_batch(), 0);
        std::thread::sleep(Duration::from_millis(50));
        assert!(reader.recv(&mut [0u8; 512]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_journald_datagram_carries_priority_identifier_and_the_line() {
        let mut d = Vec::new();
        journald_datagram(&mut d, &journald_head(42, severity(Level::WARN)), b"x\ny");
        let mut want = b"PRIORITY=4\nSYSLOG_IDENTIFIER=wininetd\nSYSLOG_PID=42\nMESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"x\ny\n");
        assert_eq!(d, want);
    }
}
