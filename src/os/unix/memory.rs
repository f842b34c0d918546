//! Giving freed heap back to the system after a crowd of sessions.

/// Returns the allocator's free pages to the kernel. glibc keeps what was
/// freed (in every arena, not only at the top of the heap) for the next
/// allocation, so after thousands of sessions have ended the daemon would
/// stay as large as at its peak; `malloc_trim` releases whole free pages.
/// Elsewhere (musl, the BSDs, macOS) there is no such call: a no-op.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
