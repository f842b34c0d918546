//! The Event Log: the service's log lines under the source `wininetd`, and
//! registering that source.

use std::io;
use std::path::Path;
use std::sync::Arc;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;
use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, HANDLE};
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE,
    REPORT_EVENT_TYPE, RegisterEventSourceW, ReportEventW,
};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, KEY_SET_VALUE, REG_DWORD, REG_EXPAND_SZ, REG_OPTION_NON_VOLATILE,
    RegCloseKey, RegCreateKeyExW, RegDeleteTreeW, RegSetValueExW,
};

use super::env::wide;
use super::service::SERVICE_NAME;

/// The one message of our message table (build.rs): "%1", so Event Viewer
/// shows each line as it is.
const EVENT_ID: u32 = 1;

const SOURCE_KEY: &str = r"SYSTEM\CurrentControlSet\Services\EventLog\Application\wininetd";

/// A handle from RegisterEventSourceW.
struct Source(HANDLE);

// SAFETY: an event source handle may be used from any thread (ReportEventW
// is thread-safe); it is only closed on drop.
unsafe impl Send for Source {}
// SAFETY: as above.
unsafe impl Sync for Source {}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: a handle from RegisterEventSourceW, closed once.
        unsafe { DeregisterEventSource(self.0) };
    }
}

/// A tracing writer that turns each event into one Event Log entry:
/// errors and warnings always; information (connection lines) only when
/// `WININETD_LOG` asks for `info` or more, so a busy server does not flood
/// the Application log by default.
#[derive(Clone)]
pub struct EventLog {
    source: Option<Arc<Source>>,
    verbose: bool,
}

impl EventLog {
    pub fn new() -> EventLog {
        let name = wide(SERVICE_NAME).unwrap_or_default();
        // SAFETY: a NUL-terminated source name; local computer.
        let h = unsafe { RegisterEventSourceW(std::ptr::null(), name.as_ptr()) };
        let verbose = std::env::var("WININETD_LOG")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "info" | "debug" | "trace"));
        EventLog {
            source: (!h.is_null()).then(|| Arc::new(Source(h))),
            verbose,
        }
    }

    fn line(&self, level: Level) -> EventLine {
        let kind = event_type(level);
        EventLine {
            source: self.source.clone(),
            kind: (self.verbose || kind != EVENTLOG_INFORMATION_TYPE).then_some(kind),
            buf: Vec::with_capacity(256),
        }
    }
}

impl Default for EventLog {
    fn default() -> EventLog {
        EventLog::new()
    }
}

fn event_type(level: Level) -> REPORT_EVENT_TYPE {
    match level {
        Level::ERROR => EVENTLOG_ERROR_TYPE,
        Level::WARN => EVENTLOG_WARNING_TYPE,
        _ => EVENTLOG_INFORMATION_TYPE,
    }
}

impl<'a> MakeWriter<'a> for EventLog {
    type Writer = EventLine;

    fn make_writer(&'a self) -> EventLine {
        self.line(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventLine {
        self.line(*meta.level())
    }
}

/// The log writer thread's way in: one entry per line.
impl crate::logging::LineSink for EventLog {
    fn write_line(&mut self, level: Level, line: &[u8]) -> io::Result<()> {
        let mut entry = self.line(level);
        io::Write::write_all(&mut entry, line)
    }
}

/// One event's text, reported when the event is complete.
pub struct EventLine {
    source: Option<Arc<Source>>,
    /// `None`: this line is not for the Event Log.
    kind: Option<REPORT_EVENT_TYPE>,
    buf: Vec<u8>,
}

impl io::Write for EventLine {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.kind.is_some() {
            self.buf.extend_from_slice(b);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The text of an entry: the line without its line break, NUL-free.
fn entry_text(buf: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(buf);
    let mut w: Vec<u16> = text
        .trim_end_matches(['\n', '\r'])
        .encode_utf16()
        .map(|c| if c == 0 { u16::from(b' ') } else { c })
        .collect();
    w.push(0);
    w
}

impl Drop for EventLine {
    fn drop(&mut self) {
        let (Some(source), Some(kind)) = (&self.source, self.kind) else {
            return;
        };
        let text = entry_text(&self.buf);
        let strings = [text.as_ptr()];
        // SAFETY: a valid source handle and one NUL-terminated string that
        // outlives the call. Losing a line beats failing the daemon.
        unsafe {
            ReportEventW(
                source.0,
                kind,
                0,
                EVENT_ID,
                std::ptr::null_mut(),
                1,
                0,
                strings.as_ptr(),
                std::ptr::null(),
            );
        }
    }
}

/// `--install`: registers the source, with our exe as its message file.
pub fn register_source(exe: &Path) -> Result<(), String> {
    let fail = |e: u32| {
        format!(
            "cannot register the Event Log source (HKLM\\{SOURCE_KEY}): {}",
            io::Error::from_raw_os_error(e as i32)
        )
    };
    let key_w = wide(SOURCE_KEY).ok_or_else(|| fail(87))?;
    let mut key: HKEY = std::ptr::null_mut();
    // SAFETY: a NUL-terminated subkey and valid out pointers.
    let rc = unsafe {
        RegCreateKeyExW(
            HKEY_LOCAL_MACHINE,
            key_w.as_ptr(),
            0,
            std::ptr::null(),
            REG_OPTION_NON_VOLATILE,
            KEY_SET_VALUE,
            std::ptr::null(),
            &mut key,
            std::ptr::null_mut(),
        )
    };
    if rc != 0 {
        return Err(fail(rc));
    }
    let file = wide(exe).ok_or_else(|| fail(87))?;
    let types: u32 =
        (EVENTLOG_ERROR_TYPE | EVENTLOG_WARNING_TYPE | EVENTLOG_INFORMATION_TYPE).into();
    let set = |name: &str, ty: u32, data: &[u8]| {
        let name = wide(name).unwrap_or_default();
        // SAFETY: an open key, a NUL-terminated name, `data` valid.
        unsafe { RegSetValueExW(key, name.as_ptr(), 0, ty, data.as_ptr(), data.len() as u32) }
    };
    let file_bytes: Vec<u8> = file.iter().flat_map(|c| c.to_le_bytes()).collect();
    let mut rc = set("EventMessageFile", REG_EXPAND_SZ, &file_bytes);
    if rc == 0 {
        rc = set("TypesSupported", REG_DWORD, &types.to_le_bytes());
    }
    // SAFETY: the key opened above.
    unsafe { RegCloseKey(key) };
    if rc != 0 {
        return Err(fail(rc));
    }
    Ok(())
}

/// `--remove`: deletes the source's key (absent is fine).
pub fn deregister_source() -> Result<(), String> {
    let key_w = wide(SOURCE_KEY).unwrap_or_default();
    // SAFETY: a NUL-terminated subkey of HKLM.
    let rc = unsafe { RegDeleteTreeW(HKEY_LOCAL_MACHINE, key_w.as_ptr()) };
    if rc != 0 && rc != ERROR_FILE_NOT_FOUND {
        return Err(format!(
            "cannot deregister the Event Log source (HKLM\\{SOURCE_KEY}): {}",
            io::Error::from_raw_os_error(rc as i32)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_event_types() {
        assert_eq!(event_type(Level::ERROR), EVENTLOG_ERROR_TYPE);
        assert_eq!(event_type(Level::WARN), EVENTLOG_WARNING_TYPE);
        assert_eq!(event_type(Level::INFO), EVENTLOG_INFORMATION_TYPE);
        assert_eq!(event_type(Level::DEBUG), EVENTLOG_INFORMATION_TYPE);
    }

    #[test]
    fn information_is_kept_only_when_asked_for() {
        let quiet = EventLog {
            source: None,
            verbose: false,
        };
        assert_eq!(quiet.line(Level::ERROR).kind, Some(EVENTLOG_ERROR_TYPE));
        assert_eq!(quiet.line(Level::WARN).kind, Some(EVENTLOG_WARNING_TYPE));
        assert_eq!(quiet.line(Level::INFO).kind, None);
        let verbose = EventLog {
            source: None,
            verbose: true,
        };
        assert_eq!(
            verbose.line(Level::INFO).kind,
            Some(EVENTLOG_INFORMATION_TYPE)
        );
    }

    /// build.rs links the message table into every target: message 1 is
    /// "%1", so Event Viewer renders an entry as its text alone.
    #[test]
    fn the_message_table_renders_an_entry_as_its_text() {
        use windows_sys::Win32::System::Diagnostics::Debug::{
            FORMAT_MESSAGE_ARGUMENT_ARRAY, FORMAT_MESSAGE_FROM_HMODULE, FormatMessageW,
        };
        use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
        let arg = wide("listening on tcp 0.0.0.0:7").unwrap();
        let args = [arg.as_ptr() as usize];
        let mut buf = [0u16; 256];
        // SAFETY: our own module; one string argument; `buf` is writable
        // for its length.
        let n = unsafe {
            FormatMessageW(
                FORMAT_MESSAGE_FROM_HMODULE | FORMAT_MESSAGE_ARGUMENT_ARRAY,
                GetModuleHandleW(std::ptr::null()) as *const _,
                EVENT_ID,
                0x409,
                buf.as_mut_ptr(),
                buf.len() as u32,
                args.as_ptr() as *const _,
            )
        };
        assert!(n > 0, "message {EVENT_ID}: {}", io::Error::last_os_error());
        let text = String::from_utf16(&buf[..n as usize]).unwrap();
        assert_eq!(text.trim_end(), "listening on tcp 0.0.0.0:7");
    }

    #[test]
    fn an_entry_is_the_line_without_its_break() {
        let w = entry_text(b"cannot listen on tcp 0.0.0.0:7\r\n");
        assert_eq!(
            String::from_utf16(&w).unwrap(),
            "cannot listen on tcp 0.0.0.0:7\0"
        );
    }
}
