//! Where log lines go: the console with `--debug`; as a daemon, journald,
//! syslog or (Windows) the Event Log. `log_format = "json"` can switch the
//! line format once the config is read, so the sink is set up first and
//! config errors are logged like everything else.

#[cfg(unix)]
use std::io::Write;
use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(unix)]
use tracing::Level;
use tracing::{Event, Subscriber};
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

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(sink: Sink) {
    let registry = tracing_subscriber::registry().with(level());
    if sink == Sink::Console {
        let _ = registry
            .with(lines(io::stderr, io::stderr().is_terminal(), true))
            .try_init();
        return;
    }
    #[cfg(unix)]
    {
        // systemd sets JOURNAL_STREAM when stderr is the journal.
        if std::env::var_os("JOURNAL_STREAM").is_some()
            && let Ok(j) = tracing_journald::layer()
        {
            let _ = registry
                .with(j.with_syslog_identifier("wininetd".into()))
                .try_init();
            return;
        }
        if let Some(syslog) = Syslog::connect() {
            let _ = registry.with(lines(syslog, false, false)).try_init();
            return;
        }
        // No journal and no syslog: stderr, for whatever collects it.
        let _ = registry.with(lines(io::stderr, false, true)).try_init();
    }
    #[cfg(windows)]
    {
        let _ = registry
            .with(lines(crate::os::EventLog::new(), false, false))
            .try_init();
    }
}

/// A line-per-event layer writing to `writer`; `timed` adds timestamps
/// (the journal, syslog and the Event Log stamp lines themselves).
fn lines<S, W>(writer: W, ansi: bool, timed: bool) -> impl tracing_subscriber::Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .event_format(Switch::new(timed))
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

/// RFC 3164 lines to the local syslog socket, one datagram per event.
#[cfg(unix)]
#[derive(Clone)]
struct Syslog {
    sock: std::sync::Arc<std::os::unix::net::UnixDatagram>,
    pid: u32,
}

#[cfg(unix)]
impl Syslog {
    fn connect() -> Option<Syslog> {
        let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
        sock.connect("/dev/log").ok()?;
        sock.set_nonblocking(true).ok()?;
        Some(Syslog {
            sock: std::sync::Arc::new(sock),
            pid: std::process::id(),
        })
    }
}

/// One event's bytes, sent when the event is complete.
#[cfg(unix)]
struct SyslogLine {
    syslog: Syslog,
    buf: Vec<u8>,
}

#[cfg(unix)]
impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        self.line(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        self.line(*meta.level())
    }
}

#[cfg(unix)]
impl Syslog {
    fn line(&self, level: Level) -> SyslogLine {
        // Facility daemon (3); severities err, warning, info, debug.
        let severity = match level {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        let mut buf = Vec::with_capacity(256);
        let _ = write!(buf, "<{}>wininetd[{}]: ", 3 * 8 + severity, self.pid);
        SyslogLine {
            syslog: self.clone(),
            buf,
        }
    }
}

#[cfg(unix)]
impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(unix)]
impl Drop for SyslogLine {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        // Losing a log line beats blocking the daemon on a stuck syslog.
        let _ = self.syslog.sock.send(&self.buf);
    }
}
