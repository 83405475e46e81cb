//! The process's memory allocator: mimalloc instead of glibc's. A request allocates and frees many small
//! buffers on two or more threads; glibc's allocator spent ≈ 11 % of the server's CPU per GET and ≈ 13 % per
//! SET on that (`malloc_consolidate` runs before every allocation of 1 KiB or more). With mimalloc a SET costs
//! the server 5–14 % less CPU and a GET up to 15 % less (BENCHMARKS.md, session 4).
//!
//! Two settings keep memory as low as glibc's when idle (≈ 2 MiB of anonymous memory in a `--dev` server
//! instead of 27): no transparent huge pages (the `no_thp` build feature; with them a few live bytes pin
//! 2 MiB pages), and freed memory goes back to the OS soon after it is freed, idle or not ([`configure`],
//! [`start_purger`]).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::{c_int, c_long, c_void};

use libmimalloc_sys as mi;

#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc as Rust's allocator. Unlike the `mimalloc` crate's, which asks for every allocation's alignment,
/// it calls plain `mi_malloc` when the alignment is at most a word's — nearly every allocation (bytes,
/// strings, most structs). mimalloc's aligned entry point serves only blocks of 1 KiB or less on its fast
/// path: every larger buffer (hyper's and rustls's, a request body) took its generic path, which allocates
/// the size plus the alignment and then aligns (about 190 instructions more, 4 times per GET).
struct Mimalloc;

/// Every mimalloc block is aligned to at least a word: block sizes are multiples of the word size and pages
/// start 16-byte aligned (`MI_PAGE_MIN_START_BLOCK_ALIGN`). Stricter alignments go through the aligned calls.
const WORD_ALIGN: usize = std::mem::size_of::<usize>();

// SAFETY: each method forwards to the mimalloc call with the same contract (a null pointer on failure, `ptr`
// from this allocator for `dealloc` and `realloc`), and returns memory aligned as `layout` asks: plain calls
// only when the alignment is at most a word, which every mimalloc block has (see `WORD_ALIGN`).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl; mimalloc frees blocks of either kind with `mi_free`.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// mimalloc's number for its `purge_delay` option (`mi_option_t` in `mimalloc.h`, the same in mimalloc 2
/// and 3; the Rust binding does not name it).
const PURGE_DELAY: c_int = 15;

/// How long freed memory stays mapped before mimalloc gives it back to the OS: 100 ms.
///
/// Session 4 purged at once (no delay): every free that emptied a span returned it to the OS (`madvise`, and
/// on two cores an inter-processor interrupt to flush the other core's TLB), and the next allocation faulted
/// the pages in again: 0.5 `madvise` calls and 1 page fault per SET, 0.1 page faults per GET. With the delay,
/// memory freed and reused within it stays mapped: 0.00 `madvise` and 0.06 page faults per SET, 0.01–0.02 per GET
/// (`keyvault-bench --perf-stat`; BENCHMARKS.md, session 13). mimalloc purges only when some thread allocates
/// or collects, so an idle server would keep what it freed last (an argon2 check of a client secret takes
/// 19 MiB): see [`start_purger`].
const PURGE_DELAY_MS: c_long = 100;
/// How often the purger thread gives back what was freed more than [`PURGE_DELAY_MS`] ago.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Every this many turns, the purger gives back everything free, however recently freed.
const FORCE_EVERY_TURNS: u32 = 10;

/// Sets the purge delay ([`PURGE_DELAY_MS`]). Called first thing in `main`.
pub fn configure() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` only stores an integer in mimalloc's table of options (`PURGE_DELAY` is a valid
    // option, see above); it is called before `main` starts any other thread.
    unsafe {
        mi::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
    }
}

/// Gives free memory back to the OS now: with `force`, every free block however recently freed (this
/// thread's heap, then every pending purge); without, what has been free for [`PURGE_DELAY_MS`].
pub fn collect(force: bool) {
    #[allow(unsafe_code)]
    // SAFETY: `mi_collect` may be called from any thread at any time; it frees nothing in use.
    unsafe {
        mi::mi_collect(force);
    }
}

/// For long-running commands (`serve`): a thread that has mimalloc return, every [`PURGE_EVERY`], the memory
/// freed more than [`PURGE_DELAY_MS`] ago, and once a second ([`FORCE_EVERY_TURNS`]) all free memory, so that
/// an idle server is back at its idle size within a fraction of a second (anonymous memory of a `--dev`
/// server after three token requests, each an argon2 check: 22.8 MiB at once, 4.5 MiB half a second later;
/// it stayed at 22.8 MiB without this thread). A turn with nothing due costs a clock read; the forced turn,
/// once a second, a few `madvise` calls under load.
pub fn start_purger() {
    let spawned = std::thread::Builder::new()
        .name("mem-purge".into())
        .spawn(|| {
            let mut turn = 0u32;
            loop {
                std::thread::sleep(PURGE_EVERY);
                turn = (turn + 1) % FORCE_EVERY_TURNS;
                collect(turn == 0);
            }
        });
    if let Err(e) = spawned {
        // Memory is still returned, only later (when a thread next allocates): not worth failing start-up for.
        tracing::warn!("could not start the memory purger thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every size class and alignment come back aligned as asked, keep their contents through
    /// `realloc`, and are zeroed by `alloc_zeroed`.
    #[test]
    fn alignment_contents_and_zeroing() {
        #[allow(unsafe_code)]
        // SAFETY: every layout has a non-zero size; each pointer is checked for null, used within its size
        // and freed once with the layout it was allocated with (or reallocated to).
        unsafe {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                for size in [1, 7, 8, 24, 40, 100, 1000, 1024, 1025, 4096, 70_000] {
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let p = GLOBAL.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xab, size);
                    let q = GLOBAL.realloc(p, layout, size * 3);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xab));
                    GLOBAL.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = GLOBAL.alloc_zeroed(layout);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    GLOBAL.dealloc(z, layout);
                }
            }
        }
    }
}
