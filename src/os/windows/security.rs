//! Security descriptors: who may open what wininetd creates (its programs'
//! pipes), and who may change what it reads as LocalSystem (the config,
//! password files).

use std::ffi::c_void;
use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};

use windows_sys::Win32::Foundation::{HANDLE, HLOCAL, LocalFree};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSidToSidW, GetNamedSecurityInfoW, SE_OBJECT_TYPE,
};
use windows_sys::Win32::Security::{
    ACE_HEADER, ACL, ACL_REVISION, AddAccessAllowedAce, CheckTokenMembership, CreateWellKnownSid,
    DACL_SECURITY_INFORMATION, GetAce, GetLengthSid, GetTokenInformation, InitializeAcl,
    InitializeSecurityDescriptor, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    SECURITY_ATTRIBUTES, SECURITY_DESCRIPTOR, SECURITY_MAX_SID_SIZE, SetSecurityDescriptorDacl,
    TOKEN_QUERY, TOKEN_USER, TokenUser, WELL_KNOWN_SID_TYPE,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

pub use windows_sys::Win32::Security::{
    WinBuiltinAdministratorsSid, WinCreatorOwnerSid, WinLocalSystemSid,
};

/// ACCESS_ALLOWED_ACE_TYPE (SystemServices, not worth its feature).
pub const ACCESS_ALLOWED: u8 = 0;
const SECURITY_DESCRIPTOR_REVISION: u32 = 1;

/// A SID we own (its bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Sid(Vec<u8>);

impl Sid {
    pub fn well_known(kind: WELL_KNOWN_SID_TYPE) -> io::Result<Sid> {
        let mut buf = vec![0u8; SECURITY_MAX_SID_SIZE as usize];
        let mut len = SECURITY_MAX_SID_SIZE;
        // SAFETY: a buffer of `len` bytes for the SID; no domain.
        let ok = unsafe {
            CreateWellKnownSid(
                kind,
                std::ptr::null_mut(),
                buf.as_mut_ptr() as PSID,
                &mut len,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(len as usize);
        Ok(Sid(buf))
    }

    /// `S-1-…` text to a SID.
    pub fn parse(text: &str) -> io::Result<Sid> {
        let w: Vec<u16> = text.encode_utf16().chain([0]).collect();
        let mut psid: PSID = std::ptr::null_mut();
        // SAFETY: a NUL-terminated string and an out pointer; the SID is
        // copied, then freed with LocalFree as documented.
        unsafe {
            if ConvertStringSidToSidW(w.as_ptr(), &mut psid) == 0 {
                return Err(io::Error::last_os_error());
            }
            let sid = Sid::copy(psid);
            LocalFree(psid as HLOCAL);
            Ok(sid)
        }
    }

    /// The account this process runs as (LocalSystem for the service, the
    /// user who started it with `--debug`).
    pub fn process_user() -> io::Result<Sid> {
        let mut token: HANDLE = std::ptr::null_mut();
        // SAFETY: our own process's token, for querying.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the token handle is ours now.
        let token = unsafe { OwnedHandle::from_raw_handle(token as RawHandle) };
        let mut buf = vec![0u64; 64];
        let mut len = 0u32;
        // SAFETY: a buffer of the size given; TOKEN_USER is written to it.
        let ok = unsafe {
            GetTokenInformation(
                token.as_raw_handle() as HANDLE,
                TokenUser,
                buf.as_mut_ptr() as *mut c_void,
                (buf.len() * 8) as u32,
                &mut len,
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: GetTokenInformation filled a TOKEN_USER whose SID points
        // into `buf`, which is still alive.
        Ok(unsafe { Sid::copy((*(buf.as_ptr() as *const TOKEN_USER)).User.Sid) })
    }

    /// Copies the SID at `psid`.
    ///
    /// # Safety
    /// `psid` points to a valid SID.
    pub unsafe fn copy(psid: PSID) -> Sid {
        // SAFETY: a valid SID (caller), GetLengthSid bytes long.
        unsafe {
            let len = GetLengthSid(psid) as usize;
            Sid(std::slice::from_raw_parts(psid as *const u8, len).to_vec())
        }
    }

    pub fn as_psid(&self) -> PSID {
        self.0.as_ptr() as PSID
    }

    /// `S-1-5-18` and so on.
    pub fn text(&self) -> String {
        let mut w: *mut u16 = std::ptr::null_mut();
        // SAFETY: a valid SID; the string is read up to its NUL and freed
        // with LocalFree as documented.
        unsafe {
            if ConvertSidToStringSidW(self.as_psid(), &mut w) == 0 {
                return "an unknown account".into();
            }
            let mut n = 0;
            while *w.add(n) != 0 {
                n += 1;
            }
            let s = String::from_utf16_lossy(std::slice::from_raw_parts(w, n));
            LocalFree(w as HLOCAL);
            s
        }
    }
}

impl std::fmt::Debug for Sid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

/// A security descriptor whose DACL allows `access` to the given accounts
/// and nobody else, with the SECURITY_ATTRIBUTES that point to it. Built
/// once and shared: Windows only reads it.
pub struct OnlyFor {
    attrs: SECURITY_ATTRIBUTES,
    _sd: Box<SECURITY_DESCRIPTOR>,
    _acl: Vec<u64>,
    _sids: Vec<Sid>,
}

// SAFETY: the pointers inside point to the boxed/vec'd data owned by the
// value itself, never written after construction.
unsafe impl Send for OnlyFor {}
// SAFETY: as above; Windows only reads the descriptor.
unsafe impl Sync for OnlyFor {}

impl OnlyFor {
    pub fn new(sids: Vec<Sid>, access: u32, inherit: bool) -> io::Result<OnlyFor> {
        let ace_size = std::mem::size_of::<ACE_HEADER>() + 4; // header, mask
        let size =
            std::mem::size_of::<ACL>() + sids.iter().map(|s| ace_size + s.0.len()).sum::<usize>();
        let mut acl = vec![0u64; size.div_ceil(8)];
        let pacl = acl.as_mut_ptr() as *mut ACL;
        // SAFETY: `acl` is `size` bytes, 8-aligned; each SID is valid.
        unsafe {
            if InitializeAcl(pacl, size as u32, ACL_REVISION) == 0 {
                return Err(io::Error::last_os_error());
            }
            for s in &sids {
                if AddAccessAllowedAce(pacl, ACL_REVISION, access, s.as_psid()) == 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        // SAFETY: zeroed is a valid starting value; initialized next.
        let mut sd: Box<SECURITY_DESCRIPTOR> = Box::new(unsafe { std::mem::zeroed() });
        let psd = &mut *sd as *mut SECURITY_DESCRIPTOR as PSECURITY_DESCRIPTOR;
        // SAFETY: an absolute descriptor pointing to `acl`, which lives as
        // long as the descriptor (both owned by the result).
        unsafe {
            if InitializeSecurityDescriptor(psd, SECURITY_DESCRIPTOR_REVISION) == 0
                || SetSecurityDescriptorDacl(psd, 1, pacl, 0) == 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(OnlyFor {
            attrs: SECURITY_ATTRIBUTES {
                nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
                lpSecurityDescriptor: psd,
                bInheritHandle: i32::from(inherit),
            },
            _sd: sd,
            _acl: acl,
            _sids: sids,
        })
    }

    pub fn attributes(&self) -> *const SECURITY_ATTRIBUTES {
        &self.attrs
    }
}

/// One access control entry.
#[derive(Debug)]
pub struct Ace {
    pub kind: u8,
    pub flags: u8,
    pub mask: u32,
    /// `None` for entry types other than plain allow/deny.
    pub sid: Option<Sid>,
}

/// An object's owner and DACL as read back; `dacl: None` is a NULL DACL
/// (everyone may do everything).
#[derive(Debug)]
pub struct Descriptor {
    pub owner: Option<Sid>,
    pub dacl: Option<Vec<Ace>>,
}

/// The owner and DACL of an open object (a pipe, a file).
#[cfg(test)]
pub fn of_handle(h: HANDLE, kind: SE_OBJECT_TYPE) -> io::Result<Descriptor> {
    read(|owner, dacl, sd| {
        // SAFETY: a valid handle and out pointers (see `read`).
        unsafe {
            windows_sys::Win32::Security::Authorization::GetSecurityInfo(
                h,
                kind,
                OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
                owner,
                std::ptr::null_mut(),
                dacl,
                std::ptr::null_mut(),
                sd,
            )
        }
    })
}

/// Whether an open object's DACL is protected (inherits no entries from a
/// parent), as read back.
#[cfg(test)]
pub fn dacl_protected(h: HANDLE, kind: SE_OBJECT_TYPE) -> io::Result<bool> {
    use windows_sys::Win32::Security::{GetSecurityDescriptorControl, SE_DACL_PROTECTED};
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: a valid handle and out pointers; `sd` is freed below.
    let err = unsafe {
        windows_sys::Win32::Security::Authorization::GetSecurityInfo(
            h,
            kind,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    let (mut control, mut revision) = (0u16, 0u32);
    // SAFETY: `sd` is the descriptor just returned; freed once.
    unsafe {
        let ok = GetSecurityDescriptorControl(sd, &mut control, &mut revision);
        LocalFree(sd as HLOCAL);
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(control & SE_DACL_PROTECTED != 0)
}

/// The owner and DACL of the object named `name` (a file's path).
pub fn of_named(name: &[u16], kind: SE_OBJECT_TYPE) -> io::Result<Descriptor> {
    read(|owner, dacl, sd| {
        // SAFETY: a NUL-terminated name and out pointers (see `read`).
        unsafe {
            GetNamedSecurityInfoW(
                name.as_ptr(),
                kind,
                OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
                owner,
                std::ptr::null_mut(),
                dacl,
                std::ptr::null_mut(),
                sd,
            )
        }
    })
}

fn read(
    get: impl FnOnce(*mut PSID, *mut *mut ACL, *mut PSECURITY_DESCRIPTOR) -> u32,
) -> io::Result<Descriptor> {
    let mut owner: PSID = std::ptr::null_mut();
    let mut dacl: *mut ACL = std::ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    let err = get(&mut owner, &mut dacl, &mut sd);
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err as i32));
    }
    // SAFETY: on success `owner` and `dacl` point into `sd` (or are null),
    // which is freed with LocalFree once everything is copied.
    unsafe {
        let result = Descriptor {
            owner: (!owner.is_null()).then(|| Sid::copy(owner)),
            dacl: (!dacl.is_null()).then(|| aces(dacl)),
        };
        LocalFree(sd as HLOCAL);
        Ok(result)
    }
}

/// # Safety
/// `acl` points to a valid ACL.
unsafe fn aces(acl: *const ACL) -> Vec<Ace> {
    // SAFETY: a valid ACL (caller); GetAce returns pointers into it, and
    // allow/deny entries are a header, a mask, then the SID.
    unsafe {
        let mut out = Vec::new();
        for i in 0..u32::from((*acl).AceCount) {
            let mut p: *mut c_void = std::ptr::null_mut();
            if GetAce(acl, i, &mut p) == 0 {
                break;
            }
            let h = &*(p as *const ACE_HEADER);
            let plain = h.AceType == ACCESS_ALLOWED || h.AceType == 1; // allow, deny
            let mask = *((p as *const u8).add(4) as *const u32);
            out.push(Ace {
                kind: h.AceType,
                flags: h.AceFlags,
                mask,
                sid: plain.then(|| Sid::copy((p as *mut u8).add(8) as PSID)),
            });
        }
        out
    }
}

/// Runs with administrator rights: LocalSystem, or an elevated member of
/// Administrators.
pub fn privileged() -> bool {
    let Ok(admins) = Sid::well_known(WinBuiltinAdministratorsSid) else {
        return false;
    };
    let mut member = 0;
    // SAFETY: NULL token = this thread's (or process's) token; valid SID.
    let ok = unsafe { CheckTokenMembership(std::ptr::null_mut(), admins.as_psid(), &mut member) };
    if ok != 0 && member != 0 {
        return true;
    }
    match (Sid::process_user(), Sid::well_known(WinLocalSystemSid)) {
        (Ok(me), Ok(system)) => me == system,
        _ => false,
    }
}
