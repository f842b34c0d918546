//! Giving freed heap back to the system after a crowd of sessions.

/// Returns the allocator's free pages to the kernel. glibc keeps what was
/// freed (in every arena, not only at the top of the heap) for the next
/// allocation, so after thousands of sessions have ended the daemon would
/// stay as large as at its peak; `malloc_trim` releases whole free pages.
/// Elsewhere (musl, the BSDs, macOS) there is no such call: a no-op.
/// First the spawn slots let go of the last programs they started.
pub fn release_free_memory() {
    super::spawn::forget_started();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The glibc tunable sizing the per-thread cache of freed chunks.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";

/// Chunks kept per size: glibc's 7 pin a crowd's pages; none costs every
/// connection more allocator work; one keeps the release within 5 % at a
/// fraction of that work (docs/reliability.md, *Held sessions*).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TCACHE_KEEP: &[u8] = b"=1";

/// Starts the daemon again (same pid, arguments and descriptors) with
/// glibc's per-thread cache cut to [`TCACHE_KEEP`] chunks per size, unless
/// `GLIBC_TUNABLES` already sets it.
/// That cache keeps up to 7 freed chunks per small size out of
/// `malloc_trim`'s reach; after a crowd they lie scattered over the
/// crowd's pages and pinned ~0.3 MiB of them (docs/reliability.md, *Held
/// sessions*). It can only be set at a program's start. Programs do not
/// inherit the variable: their environment is built (`pass_env`).
/// Elsewhere, set-id, or if the exec fails, a no-op.
///
/// Call it first in `run`, before any thread exists: it changes the
/// environment.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::{CString, OsString};
        use std::os::unix::ffi::{OsStrExt, OsStringExt};

        // Set-id or with file capabilities, glibc drops the setting: the
        // exec would come again and again.
        // SAFETY: getauxval only reads the auxiliary vector.
        if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
            return;
        }
        let old = std::env::var_os("GLIBC_TUNABLES");
        if old.as_ref().is_some_and(|t| {
            t.as_bytes()
                .split(|&b| b == b':')
                .any(|kv| kv.starts_with(TCACHE_COUNT.as_bytes()))
        }) {
            return;
        }
        let Ok(argv) = std::env::args_os()
            .map(|a| CString::new(a.into_vec()))
            .collect::<Result<Vec<_>, _>>()
        else {
            return;
        };
        let mut tunables = old.clone().map(OsString::into_vec).unwrap_or_default();
        if !tunables.is_empty() {
            tunables.push(b':');
        }
        tunables.extend_from_slice(TCACHE_COUNT.as_bytes());
        tunables.extend_from_slice(TCACHE_KEEP);
        // SAFETY: called before any thread exists (see above), so nothing
        // reads the environment concurrently.
        unsafe { std::env::set_var("GLIBC_TUNABLES", OsString::from_vec(tunables)) };
        let _ = nix::unistd::execv(c"/proc/self/exe", &argv);
        // Still here: run as we are.
        // SAFETY: as above.
        unsafe {
            match old {
                Some(t) => std::env::set_var("GLIBC_TUNABLES", t),
                None => std::env::remove_var("GLIBC_TUNABLES"),
            }
        }
    }
}
