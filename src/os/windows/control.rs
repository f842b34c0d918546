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
    listen_on(pipe_name())
}

fn listen_on(name: String) -> io::Result<ControlListener> {
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

#[cfg(test)]
mod tests {
    use super::super::security::{self, Sid};
    use super::*;
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Win32::Foundation::HANDLE;
    use windows_sys::Win32::Security::Authorization::SE_KERNEL_OBJECT;

    /// What Wine can show of "only Administrators may ask": Wine runs
    /// everyone as an administrator, so no refusal can be seen there, but
    /// the DACL the daemon's pipe carries is read back from the pipe itself.
    #[test]
    fn the_control_pipe_admits_system_and_administrators_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let name = format!(r"\\.\pipe\wininetd-dacl-test-{}", std::process::id());
        let listener = listen_on(name).unwrap();
        let h = listener.next.as_raw_handle() as HANDLE;
        let d = security::of_handle(h, SE_KERNEL_OBJECT).unwrap();
        let aces = d
            .dacl
            .expect("a DACL, not a NULL one (which admits everyone)");
        let mut sids: Vec<String> = aces
            .iter()
            .map(|a| {
                assert_eq!(a.kind, security::ACCESS_ALLOWED, "{aces:?}");
                a.sid.as_ref().unwrap().text()
            })
            .collect();
        sids.sort();
        let mut want = vec![
            Sid::well_known(security::WinLocalSystemSid).unwrap().text(),
            Sid::well_known(security::WinBuiltinAdministratorsSid)
                .unwrap()
                .text(),
        ];
        want.sort();
        assert_eq!(sids, want, "{aces:?}");
        // Named, for the reader: Everyone, Users, Anonymous, Authenticated Users.
        for other in ["S-1-1-0", "S-1-5-32-545", "S-1-5-7", "S-1-5-11"] {
            assert!(!sids.iter().any(|s| s == other), "{other} in {aces:?}");
        }
        assert!(
            security::dacl_protected(h, SE_KERNEL_OBJECT).unwrap(),
            "the DACL must not inherit entries"
        );
    }
}
