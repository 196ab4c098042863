//! Process-wide allocator settings for tensor workloads.
//!
//! Every tensor op allocates its output, and most are large (a training step on SmolLM2-135M at
//! 4 x 512 tokens allocates tens of GB over its life). glibc serves allocations past 32 MiB with
//! `mmap` and gives them back with `munmap` on free, so each op's output is faulted in and zeroed by
//! the kernel page by page: measured on `trainer bench` (SmolLM2, 4 x 512), 19 million page faults and
//! 35 s of system time per step against 48 s of user time. Serving them from the heap and keeping
//! freed memory for the next op cut that to 3 million faults and 7.6 s, at the same peak memory
//! (+4%). The cost: memory freed late in a run is not returned to the system until it ends.

/// Keeps freed memory in the process for the next allocation instead of returning it to the
/// system (glibc on Linux; elsewhere the allocator's defaults stay). Call once, first thing in
/// `main`, before threads start.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
