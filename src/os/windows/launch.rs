//! Starting a program on a connection, and reaping it, on Windows.
//!
//! CreateProcessW (CreateProcessAsUserW with a USER) with the command line
//! verbatim, CREATE_NO_WINDOW, an environment block built for this child,
//! and inheritance limited by PROC_THREAD_ATTRIBUTE_HANDLE_LIST to exactly
//! its three std handles. Each child goes into its own Job object, so
//! `--kill-on-stop` ends the program with everything it started.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::io;
use std::os::windows::io::{AsRawHandle, AsRawSocket, FromRawHandle, OwnedHandle, RawHandle};
use std::os::windows::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};
use tokio::sync::mpsc;
use windows_sys::Win32::Foundation::{
    GENERIC_READ, GENERIC_WRITE, HANDLE, HANDLE_FLAG_INHERIT, INVALID_HANDLE_VALUE,
    SetHandleInformation,
};
use windows_sys::Win32::Security::Cryptography::{
    BCRYPT_USE_SYSTEM_PREFERRED_RNG, BCryptGenRandom,
};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_ALL_ACCESS, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::Environment::{CreateEnvironmentBlock, DestroyEnvironmentBlock};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    CREATE_NO_WINDOW, CREATE_SUSPENDED, CREATE_UNICODE_ENVIRONMENT, CreateProcessAsUserW,
    CreateProcessW, DeleteProcThreadAttributeList, EXTENDED_STARTUPINFO_PRESENT,
    GetExitCodeProcess, INFINITE, InitializeProcThreadAttributeList,
    PROC_THREAD_ATTRIBUTE_HANDLE_LIST, PROCESS_INFORMATION, RegisterWaitForSingleObject,
    ResumeThread, STARTF_USESTDHANDLES, STARTUPINFOEXW, TerminateProcess, UnregisterWait,
    UpdateProcThreadAttribute, WT_EXECUTEONLYONCE,
};

use super::env::{self, wide};
use super::logon;
use super::security::{self, OnlyFor, Sid};
use crate::config::{RunAs, StderrMode};
use crate::os::{ChildStdio, LaunchError, LaunchSpec, Launched};

/// Our overlapped ends of a program's pipes (the program's ends are
/// ordinary, non-overlapped handles).
pub type PipeWriter = NamedPipeServer;
pub type PipeReader = NamedPipeServer;

/// A running program: what [`Exits`] and [`terminate`] need.
struct Running {
    process: OwnedHandle,
    job: Option<OwnedHandle>,
    /// The thread-pool wait registered on `process` (0 until registered).
    wait: usize,
}

/// Every program started and not yet reaped, by process id. The process
/// handle held here keeps the id from being reused until we reap it.
static RUNNING: Mutex<BTreeMap<u32, Running>> = Mutex::new(BTreeMap::new());

/// Where the thread pool's wait callbacks post the id of a program that
/// ended; set by [`Exits::new`].
static EXITED: Mutex<Option<mpsc::UnboundedSender<u32>>> = Mutex::new(None);

fn running() -> std::sync::MutexGuard<'static, BTreeMap<u32, Running>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the program of `spec` with `stdio` as its standard handles.
pub fn launch(spec: LaunchSpec<'_>, stdio: ChildStdio) -> Result<Launched, LaunchError> {
    let cmdline = spec.template.command_line().to_string();
    if cmdline.trim().is_empty() {
        return Err(spawn_err(
            io::ErrorKind::InvalidInput,
            "the command line is empty",
        ));
    }
    let mut cmdline_w = wide(&cmdline)
        .ok_or_else(|| spawn_err(io::ErrorKind::InvalidInput, "NUL in the command line"))?;
    let cwd_w = match spec.template.working_directory() {
        Some(d) => Some(
            wide(d)
                .ok_or_else(|| spawn_err(io::ErrorKind::InvalidInput, "NUL in the directory"))?,
        ),
        None => None,
    };

    // Logged on first (normally off the accept loop, by logon_pending): a
    // failed logon must not leave pipes or a process behind.
    let here;
    let token = match (spec.template.user(), &spec.logon) {
        (RunAs::Daemon, _) => None,
        (RunAs::User { .. }, Some(l)) => Some(&l.0),
        (RunAs::User { name, secret }, None) => {
            here = logon::logon(name, secret.as_ref()).map_err(LaunchError::User)?;
            Some(&here)
        }
    };
    let mut env_block = match token {
        None => spec.template.block(None, &spec.env),
        Some(t) => {
            let vars = user_environment(t).map_err(|e| {
                LaunchError::User(format!(
                    "cannot read the environment of user {:?}: {e}; nothing runs",
                    user_name(spec.template.user())
                ))
            })?;
            spec.template.block(Some(vars), &spec.env)
        }
    };

    // The program's ends (inheritable, closed here once it has started)
    // and ours.
    let mut pipes = None;
    let mut stderr_reader = None;
    let (stdin, stdout): (ChildHandle, ChildHandle) = match &stdio {
        ChildStdio::Socket(sock) => {
            // Blocking for the program; the flag is shared with its copy.
            sock.set_nonblocking(false).map_err(LaunchError::Spawn)?;
            let h = sock.as_raw_socket() as HANDLE;
            inheritable(h).map_err(LaunchError::Spawn)?;
            (ChildHandle::Borrowed(h), ChildHandle::Borrowed(h))
        }
        ChildStdio::Pipes { .. } => {
            let (to_program, child_in) = pipe(false).map_err(LaunchError::Spawn)?;
            let (from_program, child_out) = pipe(true).map_err(LaunchError::Spawn)?;
            pipes = Some((to_program, from_program));
            (ChildHandle::Owned(child_in), ChildHandle::Owned(child_out))
        }
    };
    let stderr = match spec.stderr {
        StderrMode::Socket => ChildHandle::Borrowed(stdout.raw()),
        StderrMode::Null => ChildHandle::Owned(null_device().map_err(LaunchError::Spawn)?),
        StderrMode::Log => {
            let (reader, child_err) = pipe(true).map_err(LaunchError::Spawn)?;
            stderr_reader = Some(reader);
            ChildHandle::Owned(child_err)
        }
    };

    let pi = create_process(
        token,
        &mut cmdline_w,
        &mut env_block,
        cwd_w.as_deref(),
        [stdin.raw(), stdout.raw(), stderr.raw()],
    )
    .map_err(|e| {
        let what = match spec.template.user() {
            RunAs::Daemon => format!("{cmdline}: {e}"),
            user => format!("{cmdline} (as user {:?}): {e}", user_name(user)),
        };
        LaunchError::Spawn(io::Error::new(e.kind(), what))
    })?;
    // Our copies of the program's ends go now, so EOF reaches it (and us)
    // when the other side closes.
    drop((stdin, stdout, stderr));
    if let ChildStdio::Socket(sock) = stdio {
        drop(sock);
    }

    // SAFETY: CreateProcess succeeded; both handles are ours to own.
    let (process, thread) = unsafe {
        (
            OwnedHandle::from_raw_handle(pi.hProcess as RawHandle),
            OwnedHandle::from_raw_handle(pi.hThread as RawHandle),
        )
    };
    let job = new_job(&process);
    // SAFETY: a suspended thread handle we own.
    unsafe { ResumeThread(thread.as_raw_handle() as HANDLE) };
    drop(thread);
    watch(pi.dwProcessId, process, job).map_err(LaunchError::Spawn)?;

    Ok(Launched {
        id: pi.dwProcessId,
        started: Instant::now(),
        pipes,
        stderr: stderr_reader,
    })
}

fn user_name(user: &RunAs) -> &str {
    match user {
        RunAs::Daemon => "none",
        RunAs::User { name, .. } => name,
    }
}

fn spawn_err(kind: io::ErrorKind, msg: &str) -> LaunchError {
    LaunchError::Spawn(io::Error::new(kind, msg))
}

/// A std handle for the program: one we close after the spawn, or one
/// whose owner (the socket) closes it.
enum ChildHandle {
    Owned(OwnedHandle),
    Borrowed(HANDLE),
}

impl ChildHandle {
    fn raw(&self) -> HANDLE {
        match self {
            ChildHandle::Owned(h) => h.as_raw_handle() as HANDLE,
            ChildHandle::Borrowed(h) => *h,
        }
    }
}

/// Makes `h` inheritable; only the handle list decides which child gets it.
fn inheritable(h: HANDLE) -> io::Result<()> {
    // SAFETY: sets a flag on a handle that stays valid for the call.
    if unsafe { SetHandleInformation(h, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Who may open a program's pipe: wininetd's own account (LocalSystem as a
/// service, the user who runs `--debug`) and SYSTEM, nobody else. Only
/// wininetd opens the program's end; the program inherits that handle,
/// which needs no access check. Built once.
fn pipe_security() -> io::Result<&'static OnlyFor> {
    static SD: OnceLock<OnlyFor> = OnceLock::new();
    if let Some(sd) = SD.get() {
        return Ok(sd);
    }
    let mut sids = vec![Sid::well_known(security::WinLocalSystemSid)?];
    let me = Sid::process_user()?;
    if !sids.contains(&me) {
        sids.push(me);
    }
    let sd = OnlyFor::new(sids, FILE_ALL_ACCESS, false)?;
    Ok(SD.get_or_init(|| sd))
}

/// A pipe name no other process can guess: 128 bits from the OS RNG, new
/// for each pipe (a name listed under `\\.\pipe\` tells nothing about the
/// next one).
fn pipe_name() -> io::Result<String> {
    let mut r = [0u8; 16];
    // SAFETY: a 16-byte buffer; the system-preferred RNG needs no handle.
    let status = unsafe {
        BCryptGenRandom(
            std::ptr::null_mut(),
            r.as_mut_ptr(),
            r.len() as u32,
            BCRYPT_USE_SYSTEM_PREFERRED_RNG,
        )
    };
    if status != 0 {
        return Err(io::Error::other(format!(
            "no random pipe name (BCryptGenRandom: 0x{:x})",
            status as u32
        )));
    }
    let mut name = String::from(r"\\.\pipe\wininetd-");
    for b in r {
        name.push_str(&format!("{b:02x}"));
    }
    Ok(name)
}

/// One pipe for a program: our end overlapped (a tokio named pipe server),
/// the program's end an ordinary synchronous handle, inheritable. `inbound`
/// means the program writes and we read. Both ends carry [`pipe_security`].
fn pipe(inbound: bool) -> io::Result<(NamedPipeServer, OwnedHandle)> {
    let name = pipe_name()?;
    let security = pipe_security()?;
    // SAFETY: the attributes (and the descriptor they point to) are static
    // and only read.
    let ours = unsafe {
        ServerOptions::new()
            .first_pipe_instance(true)
            .reject_remote_clients(true)
            .max_instances(1)
            .access_inbound(inbound)
            .access_outbound(!inbound)
            .in_buffer_size(64 * 1024)
            .out_buffer_size(64 * 1024)
            .create_with_security_attributes_raw(&name, security.attributes() as *mut c_void)?
    };
    let name_w = wide(&name).ok_or_else(|| io::Error::other("pipe name"))?;
    let sa = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: std::ptr::null_mut(),
        bInheritHandle: 1,
    };
    let access = if inbound { GENERIC_WRITE } else { GENERIC_READ };
    // SAFETY: a NUL-terminated name and valid attributes; no
    // FILE_FLAG_OVERLAPPED, so the program gets a plain synchronous handle.
    let h = unsafe {
        CreateFileW(
            name_w.as_ptr(),
            access,
            0,
            &sa,
            OPEN_EXISTING,
            0,
            std::ptr::null_mut(),
        )
    };
    if h == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CreateFileW succeeded; the handle is ours.
    let theirs = unsafe { OwnedHandle::from_raw_handle(h as RawHandle) };
    connected(&ours)?;
    Ok((ours, theirs))
}

/// Tells the runtime that the pipe's client is there. Ours was opened
/// already, so ConnectNamedPipe answers ERROR_PIPE_CONNECTED and tokio's
/// `connect` is ready at the first poll; until then no read would start.
fn connected(server: &NamedPipeServer) -> io::Result<()> {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let connect = std::pin::pin!(server.connect());
    match connect.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::Error::other("the program's pipe end did not connect")),
    }
}

/// `NUL`, inheritable, for `stderr = "null"`.
fn null_device() -> io::Result<OwnedHandle> {
    let sa = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: std::ptr::null_mut(),
        bInheritHandle: 1,
    };
    let name = wide("NUL").ok_or_else(|| io::Error::other("NUL"))?;
    // SAFETY: a NUL-terminated name and valid attributes.
    let h = unsafe {
        CreateFileW(
            name.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            &sa,
            OPEN_EXISTING,
            0,
            std::ptr::null_mut(),
        )
    };
    if h == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CreateFileW succeeded; the handle is ours.
    Ok(unsafe { OwnedHandle::from_raw_handle(h as RawHandle) })
}

/// The logged-on user's own environment (its profile's variables).
pub(super) fn user_environment(
    token: &OwnedHandle,
) -> io::Result<Vec<(std::ffi::OsString, std::ffi::OsString)>> {
    let mut block: *mut c_void = std::ptr::null_mut();
    // SAFETY: a valid token and out pointer; FALSE = not inheriting ours.
    if unsafe { CreateEnvironmentBlock(&mut block, token.as_raw_handle() as HANDLE, 0) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the block is a sequence of NUL-terminated UTF-16 strings
    // ending with an empty one; we read up to that terminator only.
    let pairs = unsafe {
        let p = block as *const u16;
        let mut len = 0usize;
        while !(*p.add(len) == 0 && (len == 0 || *p.add(len - 1) == 0)) {
            len += 1;
        }
        env::parse_block(std::slice::from_raw_parts(p, len + 1))
    };
    // SAFETY: the block came from CreateEnvironmentBlock.
    unsafe { DestroyEnvironmentBlock(block) };
    Ok(pairs)
}

/// CreateProcessW / CreateProcessAsUserW, suspended, with only `std`
/// inheritable into the child.
fn create_process(
    token: Option<&OwnedHandle>,
    cmdline: &mut [u16],
    env_block: &mut [u16],
    cwd: Option<&[u16]>,
    std: [HANDLE; 3],
) -> io::Result<PROCESS_INFORMATION> {
    let mut list: Vec<HANDLE> = Vec::with_capacity(3);
    for h in std {
        if !list.contains(&h) {
            list.push(h);
        }
    }
    let mut attrs = AttributeList::with_handles(&list)?;
    // SAFETY: zeroed STARTUPINFOEXW is a valid "no options" value.
    let mut si: STARTUPINFOEXW = unsafe { std::mem::zeroed() };
    si.StartupInfo.cb = std::mem::size_of::<STARTUPINFOEXW>() as u32;
    si.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
    si.StartupInfo.hStdInput = std[0];
    si.StartupInfo.hStdOutput = std[1];
    si.StartupInfo.hStdError = std[2];
    si.lpAttributeList = attrs.ptr();
    // SAFETY: zeroed PROCESS_INFORMATION is a valid out value.
    let mut pi: PROCESS_INFORMATION = unsafe { std::mem::zeroed() };
    let flags = CREATE_NO_WINDOW
        | CREATE_UNICODE_ENVIRONMENT
        | EXTENDED_STARTUPINFO_PRESENT
        | CREATE_SUSPENDED;
    let cwd = cwd.map_or(std::ptr::null(), |d| d.as_ptr());
    // SAFETY: every pointer is valid for the call: the command line is a
    // mutable NUL-terminated buffer, the environment a double-NUL block,
    // the attribute list (and the handle array it points to) outlive it.
    let ok = unsafe {
        match token {
            None => CreateProcessW(
                std::ptr::null(),
                cmdline.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                1,
                flags,
                env_block.as_mut_ptr() as *const c_void,
                cwd,
                &si.StartupInfo,
                &mut pi,
            ),
            Some(t) => CreateProcessAsUserW(
                t.as_raw_handle() as HANDLE,
                std::ptr::null(),
                cmdline.as_mut_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                1,
                flags,
                env_block.as_mut_ptr() as *const c_void,
                cwd,
                &si.StartupInfo,
                &mut pi,
            ),
        }
    };
    drop(attrs);
    drop(list);
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pi)
}

/// A PROC_THREAD_ATTRIBUTE_LIST holding one HANDLE_LIST attribute.
struct AttributeList {
    buf: Vec<usize>,
}

impl AttributeList {
    /// `handles` must outlive the list (the list points into it).
    fn with_handles(handles: &[HANDLE]) -> io::Result<AttributeList> {
        let mut size = 0usize;
        // SAFETY: the documented size query (null list); it "fails" with
        // ERROR_INSUFFICIENT_BUFFER and sets `size`.
        unsafe { InitializeProcThreadAttributeList(std::ptr::null_mut(), 1, 0, &mut size) };
        if size == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut list = AttributeList {
            buf: vec![0usize; size.div_ceil(std::mem::size_of::<usize>())],
        };
        // SAFETY: the buffer is `size` bytes, pointer-aligned.
        if unsafe { InitializeProcThreadAttributeList(list.ptr(), 1, 0, &mut size) } == 0 {
            list.buf.clear(); // nothing to delete
            return Err(io::Error::last_os_error());
        }
        // SAFETY: an initialized list; the handle array outlives it (caller).
        let ok = unsafe {
            UpdateProcThreadAttribute(
                list.ptr(),
                0,
                PROC_THREAD_ATTRIBUTE_HANDLE_LIST as usize,
                handles.as_ptr() as *const c_void,
                std::mem::size_of_val(handles),
                std::ptr::null_mut(),
                std::ptr::null(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(list)
    }

    fn ptr(&mut self) -> *mut c_void {
        self.buf.as_mut_ptr() as *mut c_void
    }
}

impl Drop for AttributeList {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            // SAFETY: initialized by InitializeProcThreadAttributeList.
            unsafe { DeleteProcThreadAttributeList(self.ptr()) };
        }
    }
}

/// A Job object of its own for the program, so [`terminate`] ends it with
/// everything it started. No kill-on-close limit: if wininetd goes, its
/// programs stay, as inetd's do. `None` (and [`terminate`] falls back to
/// the process alone) where jobs are unavailable, e.g. a parent job that
/// forbids nesting.
fn new_job(process: &OwnedHandle) -> Option<OwnedHandle> {
    // SAFETY: an anonymous job with default security.
    let job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if job.is_null() {
        tracing::debug!("cannot create a job object: {}", io::Error::last_os_error());
        return None;
    }
    // SAFETY: CreateJobObjectW succeeded; the handle is ours.
    let job = unsafe { OwnedHandle::from_raw_handle(job as RawHandle) };
    // SAFETY: two valid handles; the process is still suspended, so it has
    // started nothing outside the job.
    let ok = unsafe {
        AssignProcessToJobObject(
            job.as_raw_handle() as HANDLE,
            process.as_raw_handle() as HANDLE,
        )
    };
    if ok == 0 {
        tracing::debug!(
            "cannot assign the program to a job: {}",
            io::Error::last_os_error()
        );
        return None;
    }
    Some(job)
}

/// Records the program and asks the thread pool to tell [`Exits`] when it
/// ends: one wait registration per program, no thread of its own (a pool
/// wait thread watches up to 63 handles).
fn watch(pid: u32, process: OwnedHandle, job: Option<OwnedHandle>) -> io::Result<()> {
    let raw = process.as_raw_handle() as HANDLE;
    // Held across the registration, so an [`Exits::next`] woken by a
    // program that ended at once finds its entry complete.
    let mut table = running();
    table.insert(
        pid,
        Running {
            process,
            job,
            wait: 0,
        },
    );
    let mut wait: HANDLE = std::ptr::null_mut();
    // SAFETY: `raw` stays open until the entry is removed, which happens
    // only after UnregisterWait; the context is the pid, not a pointer.
    let ok = unsafe {
        RegisterWaitForSingleObject(
            &mut wait,
            raw,
            Some(on_exit),
            pid as usize as *const c_void,
            INFINITE,
            WT_EXECUTEONLYONCE,
        )
    };
    if ok == 0 {
        let e = io::Error::last_os_error();
        if let Some(r) = table.remove(&pid) {
            // Unwatched, it could never be reaped: end it instead.
            // SAFETY: a valid process handle.
            unsafe { TerminateProcess(r.process.as_raw_handle() as HANDLE, 1) };
        }
        return Err(e);
    }
    if let Some(r) = table.get_mut(&pid) {
        r.wait = wait as usize;
    }
    Ok(())
}

/// Thread-pool callback: a program ended. Only posts its id.
unsafe extern "system" fn on_exit(context: *mut c_void, _timed_out: bool) {
    let pid = context as usize as u32;
    if let Some(tx) = EXITED.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        let _ = tx.send(pid);
    }
}

/// Process-wide setup: Winsock (listeners are created with WSASocketW
/// before anything else would start it), and no error dialogs for us or
/// the programs (they inherit the mode): a missing DLL must fail the
/// program, not wait for a click on a service desktop.
pub fn init_process() {
    use windows_sys::Win32::Networking::WinSock::{WSADATA, WSAStartup};
    use windows_sys::Win32::System::Diagnostics::Debug::{
        SEM_FAILCRITICALERRORS, SEM_NOGPFAULTERRORBOX, SetErrorMode,
    };
    // SAFETY: plain process-wide settings; WSADATA is an out value.
    unsafe {
        SetErrorMode(SEM_FAILCRITICALERRORS | SEM_NOGPFAULTERRORBOX);
        let mut data: WSADATA = std::mem::zeroed();
        WSAStartup(0x0202, &mut data);
    }
}

/// `--kill-on-stop`: ends the program and everything it started (its job).
pub fn terminate(id: crate::os::ChildId) {
    let table = running();
    let Some(r) = table.get(&id) else { return };
    // SAFETY: valid job/process handles held by the table.
    unsafe {
        match &r.job {
            Some(job) => TerminateJobObject(job.as_raw_handle() as HANDLE, 1),
            None => TerminateProcess(r.process.as_raw_handle() as HANDLE, 1),
        };
    }
}

/// Terminating a job is already final: the same as [`terminate`].
pub fn kill(id: crate::os::ChildId) {
    terminate(id);
}

/// Windows logs users on per connection (the password is checked then),
/// so there is nothing to check at startup.
pub fn check_users<'a>(_users: impl Iterator<Item = &'a str>) -> Result<(), String> {
    Ok(())
}

/// A socket for a listener: created without WSA_FLAG_OVERLAPPED, so that
/// accepted connections (which inherit it) are plain sockets a `direct`
/// program can use as its std handles on real Windows; not inheritable;
/// SO_EXCLUSIVEADDRUSE so no other process can bind the port over us.
pub fn new_socket(domain: socket2::Domain, ty: socket2::Type) -> io::Result<socket2::Socket> {
    use std::os::windows::io::FromRawSocket;
    use windows_sys::Win32::Networking::WinSock::{
        INVALID_SOCKET, SO_EXCLUSIVEADDRUSE, SOL_SOCKET, WSA_FLAG_NO_HANDLE_INHERIT,
        WSAGetLastError, WSASocketW, setsockopt,
    };
    // SAFETY: plain socket creation; no protocol info.
    let s = unsafe {
        WSASocketW(
            domain.into(),
            ty.into(),
            0,
            std::ptr::null(),
            0,
            WSA_FLAG_NO_HANDLE_INHERIT,
        )
    };
    if s == INVALID_SOCKET {
        // SAFETY: reads this thread's last Winsock error.
        return Err(io::Error::from_raw_os_error(unsafe { WSAGetLastError() }));
    }
    // SAFETY: a socket we just created and now own.
    let sock = unsafe { socket2::Socket::from_raw_socket(s as _) };
    let one: i32 = 1;
    // SAFETY: a 4-byte BOOL option on our socket.
    let r = unsafe {
        setsockopt(
            s,
            SOL_SOCKET,
            SO_EXCLUSIVEADDRUSE,
            &one as *const i32 as *const u8,
            4,
        )
    };
    if r != 0 {
        // SAFETY: reads this thread's last Winsock error.
        return Err(io::Error::from_raw_os_error(unsafe { WSAGetLastError() }));
    }
    Ok(sock)
}

/// Exit notifications of every program we started: the thread pool's wait
/// callbacks post ids to one channel; nothing per connection but a wait
/// registration and the handles.
pub struct Exits {
    rx: mpsc::UnboundedReceiver<u32>,
}

impl Exits {
    pub fn new() -> io::Result<Exits> {
        let (tx, rx) = mpsc::unbounded_channel();
        *EXITED.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(Exits { rx })
    }

    /// The next program that ended, with its exit code (CreateProcess
    /// reports a program that cannot start at once, so never `Err`).
    pub async fn next(&mut self) -> crate::os::Exit {
        loop {
            let Some(pid) = self.rx.recv().await else {
                return std::future::pending().await;
            };
            let Some(r) = running().remove(&pid) else {
                continue;
            };
            let mut code = 0u32;
            // SAFETY: the wait was registered with WT_EXECUTEONLYONCE and
            // has fired; the process handle is valid until `r` drops.
            unsafe {
                UnregisterWait(r.wait as HANDLE);
                GetExitCodeProcess(r.process.as_raw_handle() as HANDLE, &mut code);
            }
            return (pid, Ok(ExitStatus::from_raw(code)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use windows_sys::Win32::Security::Authorization::SE_KERNEL_OBJECT;

    #[test]
    fn each_pipe_gets_its_own_random_name() {
        let a = pipe_name().unwrap();
        let b = pipe_name().unwrap();
        assert_ne!(a, b);
        for n in [&a, &b] {
            let hex = n.strip_prefix(r"\\.\pipe\wininetd-").unwrap();
            assert_eq!(hex.len(), 32, "{n}");
            assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{n}");
        }
    }

    /// What Wine shows: the DACL read back from both ends of a program's
    /// pipe holds exactly our account and SYSTEM, each allowed.
    #[test]
    fn a_program_pipe_is_open_to_our_account_and_system_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (ours, theirs) = pipe(true).unwrap();
        let me = Sid::process_user().unwrap();
        let system = Sid::well_known(security::WinLocalSystemSid).unwrap();
        for h in [ours.as_raw_handle(), theirs.as_raw_handle()] {
            let d = security::of_handle(h as HANDLE, SE_KERNEL_OBJECT).unwrap();
            let aces = d.dacl.expect("a DACL, not a NULL one");
            let mut sids: Vec<String> = aces
                .iter()
                .map(|a| {
                    assert_eq!(a.kind, security::ACCESS_ALLOWED, "{aces:?}");
                    a.sid.as_ref().unwrap().text()
                })
                .collect();
            sids.sort();
            let mut want = vec![system.text(), me.text()];
            want.sort();
            want.dedup();
            assert_eq!(sids, want, "{aces:?}");
        }
    }
}
