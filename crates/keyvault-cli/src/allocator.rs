//! The process's memory allocator: mimalloc instead of glibc's. A request allocates and frees many small
//! buffers on two or more threads; glibc's allocator spent ≈ 11 % of the server's CPU per GET and ≈ 13 % per
//! SET on that (`malloc_consolidate` runs before every allocation of 1 KiB or more). With mimalloc a SET costs
//! the server 5–14 % less CPU and a GET up to 15 % less (BENCHMARKS.md, session 4).
//!
//! Two settings keep memory as low as glibc's when idle (≈ 2 MiB of anonymous memory in a `--dev` server
//! instead of 27): no transparent huge pages (the `no_thp` build feature; with them a few live bytes pin
//! 2 MiB pages), and freed memory goes back to the OS when it is freed ([`configure`]).

use std::ffi::c_int;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's number for its `purge_delay` option (`mi_option_t` in `mimalloc.h`, the same in mimalloc 2
/// and 3; the Rust binding does not name it).
const PURGE_DELAY: c_int = 15;

/// Purge freed memory at once. By default mimalloc keeps it for a second and purges only when the thread
/// that freed it allocates again, so each argon2 check of a client secret (19 MiB, on a blocking thread)
/// stayed resident in an idle server. No measurable cost per request (BENCHMARKS.md). Called first thing in
/// `main`.
pub fn configure() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` only stores an integer in mimalloc's table of options (`PURGE_DELAY` is a valid
    // option, see above); it is called before `main` starts any other thread.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}
