//! The local control channel (`wininetd status`, `--reload`) on Windows: a
//! named pipe, `\\.\pipe\wininetd-control` (or `WININETD_CONTROL_PIPE`),
//! local clients only, whose DACL admits SYSTEM and Administrators alone.

use std::ffi::c_void;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};
use windows_sys::Win32::Foundation::LocalFree;
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};

/// Protected DACL: full access for SYSTEM and the Administrators group,
/// nobody else (not even the owner by default).
const SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";

fn pipe_name() -> String {
    std::env::var("WININETD_CONTROL_PIPE")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| r"\\.\pipe\wininetd-control".to_string())
}

/// Where a message says the channel is.
pub fn control_address() -> String {
    pipe_name()
}

/// A security descriptor made from [`SDDL`], freed on drop.
struct Descriptor(PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is immutable once made and only read by
// CreateNamedPipeW; it is freed once, on drop.
unsafe impl Send for Descriptor {}
unsafe impl Sync for Descriptor {}

impl Descriptor {
    fn new() -> io::Result<Descriptor> {
        let sddl: Vec<u16> = SDDL.encode_utf16().chain([0]).collect();
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: a NUL-terminated wide string and an out-pointer.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Descriptor(sd))
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptor…, once.
        unsafe { LocalFree(self.0 as _) };
    }
}

/// The daemon's end: the pipe instance waiting for the next client.
pub struct ControlListener {
    name: String,
    descriptor: Descriptor,
    next: NamedPipeServer,
}

/// One accepted request's stream.
pub type ControlStream = NamedPipeServer;

fn create(name: &str, descriptor: &Descriptor, first: bool) -> io::Result<NamedPipeServer> {
    let mut attributes = SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: descriptor.0,
        bInheritHandle: 0,
    };
    // SAFETY: the attributes and the descriptor they point to outlive
    // the call.
    unsafe {
        ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .create_with_security_attributes_raw(
                name,
                &mut attributes as *mut SECURITY_ATTRIBUTES as *mut c_void,
            )
    }
}

/// Creates the pipe; fails when another daemon already holds the name.
pub fn control_listen() -> io::Result<ControlListener> {
    let name = pipe_name();
    let descriptor = Descriptor::new()?;
    let next = create(&name, &descriptor, true).map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another wininetd holds {name}"),
            )
        } else {
            e
        }
    })?;
    Ok(ControlListener {
        name,
        descriptor,
        next,
    })
}

impl ControlListener {
    /// The next client (the DACL has already admitted it).
    pub async fn accept(&mut self) -> io::Result<ControlStream> {
        self.next.connect().await?;
        let fresh = create(&self.name, &self.descriptor, false)?;
        Ok(std::mem::replace(&mut self.next, fresh))
    }
}

/// ERROR_PIPE_BUSY: every instance is taken; try again shortly.
const ERROR_PIPE_BUSY: i32 = 231;

/// The client's side: sends `request` and returns the whole answer.
pub fn control_request(request: &str, wait: Duration) -> io::Result<String> {
    let deadline = Instant::now() + wait;
    let mut pipe = loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pipe_name())
        {
            Ok(p) => break p,
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    pipe.write_all(request.as_bytes())?;
    let mut out = String::new();
    // The server closing its end reads as the end of the answer.
    pipe.read_to_string(&mut out)?;
    Ok(out)
}
