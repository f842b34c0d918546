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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    let _ = tracing_subscriber::registry()
        .with(level())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(Queued(queue))
                .with_ansi(ansi)
                .event_format(Switch::new(timed)),
        )
        .try_init();
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

    /// The end of a batch: a sink that gathers lines writes them now.
    fn end_batch(&mut self) -> io::Result<()> {
        Ok(())
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
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    self.unreported.fetch_add(1, Ordering::Relaxed);
                }
                rest = &rest[end..];
            }
            batch.clear();
            let n = self.unreported.swap(0, Ordering::Relaxed);
            if n > 0 {
                let note = format!("{n} log lines dropped");
                if sink.write_line(Level::WARN, note.as_bytes()).is_err() {
                    // Still no sink: the count waits for one.
                    self.unreported.fetch_add(n, Ordering::Relaxed);
                }
            }
            let _ = sink.end_batch();
            std::thread::sleep(BATCH_PAUSE);
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

    /// The whole batch in one write.
    fn end_batch(&mut self) -> io::Result<()> {
        let r = io::stderr().lock().write_all(&self.buf);
        self.buf.clear();
        r
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

/// RFC 3164 lines to the local syslog socket, one datagram per line,
/// facility daemon (3). A syslog daemon that restarts binds a new socket
/// at the path, and the old connection only fails: on a send error the
/// socket is connected again (at most once per batch while that fails).
#[cfg(unix)]
struct Syslog {
    sock: Option<std::os::unix::net::UnixDatagram>,
    path: std::path::PathBuf,
    /// A reconnect failed in this batch: the rest of it is not retried.
    gone: bool,
    pid: u32,
    buf: Vec<u8>,
}

#[cfg(unix)]
const SYSLOG_SOCKET: &str = "/dev/log";

#[cfg(unix)]
impl Syslog {
    fn connect() -> Option<Syslog> {
        Self::connect_to(SYSLOG_SOCKET.as_ref())
    }

    fn connect_to(path: &std::path::Path) -> Option<Syslog> {
        let sock = Self::open(path).ok()?;
        Some(Syslog {
            sock: Some(sock),
            path: path.to_owned(),
            gone: false,
            pid: std::process::id(),
            buf: Vec::with_capacity(512),
        })
    }

    fn open(path: &std::path::Path) -> io::Result<std::os::unix::net::UnixDatagram> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        sock.connect(path)?;
        Ok(sock)
    }

    fn send(&mut self) -> io::Result<()> {
        if let Some(sock) = &self.sock {
            match sock.send(&self.buf) {
                Ok(_) => return Ok(()),
                Err(_) => self.sock = None,
            }
        }
        if self.gone {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        }
        match Self::open(&self.path) {
            Ok(sock) => {
                let sent = sock.send(&self.buf).map(drop);
                self.sock = Some(sock);
                sent
            }
            Err(e) => {
                self.gone = true;
                Err(e)
            }
        }
    }
}

#[cfg(unix)]
impl LineSink for Syslog {
    fn write_line(&mut self, level: Level, line: &[u8]) -> io::Result<()> {
        self.buf.clear();
        let pri = 3 * 8 + severity(level);
        write!(self.buf, "<{pri}>wininetd[{}]: ", self.pid)?;
        self.buf.extend_from_slice(line.trim_ascii_start());
        self.send()
    }

    fn end_batch(&mut self) -> io::Result<()> {
        self.gone = false;
        Ok(())
    }
}

/// journald's native protocol: one datagram per line with its priority,
/// our identifier and pid, and the line (fields included) as MESSAGE.
/// Sent to the socket's path each time, so a restarted journald is found.
#[cfg(unix)]
struct Journald {
    sock: std::os::unix::net::UnixDatagram,
    pid: u32,
    buf: Vec<u8>,
}

#[cfg(unix)]
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

#[cfg(unix)]
impl Journald {
    fn connect() -> Option<Journald> {
        let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
        // Only a probe: is a journal listening there at all?
        std::os::unix::net::UnixDatagram::unbound()
            .ok()?
            .connect(JOURNALD_SOCKET)
            .ok()?;
        Some(Journald {
            sock,
            pid: std::process::id(),
            buf: Vec::with_capacity(512),
        })
    }
}

/// The datagram for one line: MESSAGE length-prefixed, so any byte (a
/// newline in a program's output) stays inside it.
#[cfg(unix)]
fn journald_datagram(buf: &mut Vec<u8>, pid: u32, level: Level, line: &[u8]) {
    buf.clear();
    let _ = write!(
        buf,
        "PRIORITY={}\nSYSLOG_IDENTIFIER=wininetd\nSYSLOG_PID={pid}\nMESSAGE\n",
        severity(level),
    );
    buf.extend_from_slice(&(line.len() as u64).to_le_bytes());
    buf.extend_from_slice(line);
    buf.push(b'\n');
}

#[cfg(unix)]
impl LineSink for Journald {
    fn write_line(&mut self, level: Level, line: &[u8]) -> io::Result<()> {
        journald_datagram(&mut self.buf, self.pid, level, line.trim_ascii_start());
        self.sock.send_to(&self.buf, JOURNALD_SOCKET).map(drop)
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
            fn end_batch(&mut self) -> io::Result<()> {
                let _ = self.0.send(std::mem::take(&mut self.1));
                Ok(())
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

    #[cfg(unix)]
    #[test]
    fn syslog_connects_again_when_its_socket_is_gone_and_back() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = UnixDatagram::bind(&path).unwrap();
        let mut sink = Syslog::connect_to(&path).unwrap();
        sink.write_line(Level::INFO, b"one").unwrap();
        let mut buf = [0u8; 512];
        let n = first.recv(&mut buf).unwrap();
        assert!(buf[..n].ends_with(b": one"));
        // syslog stops: the socket and its path are gone.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        assert!(sink.write_line(Level::INFO, b"lost").is_err());
        assert!(sink.write_line(Level::INFO, b"lost too").is_err());
        sink.end_batch().unwrap();
        // syslog is back, on a new socket at the same path.
        let second = UnixDatagram::bind(&path).unwrap();
        second
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sink.write_line(Level::INFO, b"two").unwrap();
        let n = second.recv(&mut buf).unwrap();
        assert!(buf[..n].ends_with(b": two"), "{:?}", &buf[..n]);
    }

    #[cfg(unix)]
    #[test]
    fn a_journald_datagram_carries_priority_identifier_and_the_line() {
        let mut d = Vec::new();
        journald_datagram(&mut d, 42, Level::WARN, b"x\ny");
        let mut want = b"PRIORITY=4\nSYSLOG_IDENTIFIER=wininetd\nSYSLOG_PID=42\nMESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"x\ny\n");
        assert_eq!(d, want);
    }
}
