//! A thin SQLite VFS over the platform's default one that hands a commit's WAL frames to the kernel in one
//! `write` instead of two per frame.
//!
//! SQLite writes each WAL frame as two `pwrite`s (its 24-byte header, then the page), so a commit of 40 frames
//! makes 80 system calls, all appending to the same file at increasing offsets. On the benchmark machine those
//! calls were about a tenth of the server's CPU per SET (BENCHMARKS.md, session 16), for bytes that go to
//! consecutive offsets anyway. This VFS is the default one (`unix`) in every respect except that a WAL file
//! opened through it keeps consecutive writes in a buffer and writes the buffer at once:
//!
//! - when the frame that commits a transaction is complete (a frame header whose "database size after commit"
//!   field is set, followed by its page), so that a commit is in the kernel before SQLite syncs or publishes
//!   it, whatever the `synchronous` setting;
//! - before anything else is done with the file through this handle: a read, a write elsewhere, `xSync`,
//!   `xTruncate`, `xFileSize`, a file control, `xClose`; and when the buffer reaches [`CAP`] bytes.
//!
//! Why nothing can observe the buffer: other connections (readers, the checkpointer) read a WAL frame only
//! once a commit covering it is in the WAL index, which SQLite updates after the commit frame was written
//! (and, with `synchronous = FULL`, synced through `xSync`); by then the buffer is in the kernel (rule 1). The
//! connection that writes reads the file only through this handle (rule 2). A crash loses at most frames of a
//! commit that was never synced, hence never acknowledged — as if SQLite had not yet written them. An error
//! from a delayed write is returned by the call that flushed it (`xWrite`, `xSync`, …); SQLite then fails the
//! transaction as it would have on the write itself.
//!
//! Only when the database promises power-safe overwrites (`SQLITE_IOCAP_POWERSAFE_OVERWRITE`, the default on
//! Unix unless the `psow=0` URI parameter says otherwise): otherwise SQLite pads a commit to a sector boundary
//! and writes a frame's tail after the sync, which the commit rule would not see; such WAL files pass every
//! call straight through. Files other than WAL files (the database, its
//! journal) are the default VFS's own, untouched.
//!
//! The store opens only its writer's connection through this VFS ([`super::open_writer_with`]).
//!
//! `unsafe`: a VFS is a table of C callbacks over memory SQLite allocates; there is no safe interface to it
//! in `rusqlite`. Every block below states what it relies on.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name this VFS is registered under.
const NAME: &CStr = c"keyvault-walbuf";

/// Bytes a buffer holds at most before it is written out: about a hundred 1-KiB frames, what a commit of 64
/// sets writes. It must stay under 128 KiB: the default Unix VFS writes at most 0x1ffff bytes per call (it
/// masks a larger count, and reports the short write as a full disk).
const CAP: usize = 112 * 1024;

/// Size of a WAL frame header; offset 4..8 holds the database size after commit (0 for other frames).
const FRAME_HEADER: usize = 24;

/// The registered VFS's name, registering it on first use; None (use the default VFS) if SQLite has no
/// default VFS to wrap or refuses the registration.
pub(super) fn name() -> Option<&'static CStr> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find` may be called at any time (it initializes SQLite if needed) and returns
        // the default VFS, which SQLite never frees. We copy it (its callbacks, limits and app data stay the
        // default's, so they behave as the default's), change the file size, name and `xOpen`, and register
        // the copy, which is leaked: SQLite keeps the pointer for the life of the process.
        unsafe {
            let real = ffi::sqlite3_vfs_find(ptr::null());
            if real.is_null() || (*real).xOpen.is_none() {
                return false;
            }
            let mut vfs: ffi::sqlite3_vfs = ptr::read(real);
            vfs.szOsFile = (*real)
                .szOsFile
                .saturating_add(c_int::try_from(REAL_OFFSET).unwrap_or(c_int::MAX));
            vfs.zName = NAME.as_ptr();
            vfs.pNext = ptr::null_mut();
            vfs.xOpen = Some(x_open);
            let vfs = Box::into_raw(Box::new(vfs));
            if REAL.set(RealVfs(real)).is_err() {
                return false;
            }
            ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK
        }
    });
    ok.then_some(NAME)
}

/// The default VFS the registered one wraps.
struct RealVfs(*mut ffi::sqlite3_vfs);
// SAFETY: the pointer is to SQLite's default VFS, immutable and alive for the whole process; SQLite itself
// uses it from every thread.
unsafe impl Send for RealVfs {}
// SAFETY: as above (only read).
unsafe impl Sync for RealVfs {}
static REAL: OnceLock<RealVfs> = OnceLock::new();

/// What SQLite allocates for a file of this VFS (`szOsFile` bytes): this header, then the default VFS's own
/// file at [`REAL_OFFSET`]. For files that are not buffered the default VFS's file sits at the start instead
/// and this header is never written.
#[repr(C)]
struct WalFile {
    /// SQLite's view: `pMethods` points at [`METHODS`].
    base: ffi::sqlite3_file,
    /// Owned (from `Box::into_raw`), freed by `x_close`.
    buffer: *mut Buffer,
}

/// Where the default VFS's file lives in the allocation (8-byte aligned, as SQLite's allocations are).
const REAL_OFFSET: usize = std::mem::size_of::<WalFile>().next_multiple_of(8);

struct Buffer {
    /// File offset of `data[0]`.
    start: i64,
    data: Vec<u8>,
    /// The last write was the header of a commit frame: write out once its page follows.
    commit_pending: bool,
}

/// `xOpen`: the default VFS's, wrapped for WAL files.
unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(RealVfs(real_vfs)) = REAL.get() else {
        return ffi::SQLITE_ERROR;
    };
    let real_vfs = *real_vfs;
    // SAFETY: `real_vfs` is the default VFS (see `name`), alive for the whole process.
    let Some(real_open) = (unsafe { (*real_vfs).xOpen }) else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // SAFETY: SQLite gave us `szOsFile` bytes at `file`, more than the default VFS's own size, so its file
        // fits at the start; from here on SQLite calls the default VFS's methods on it directly.
        return unsafe { real_open(real_vfs, name, file, flags, out_flags) };
    }
    // SAFETY: `file` points to `szOsFile` = REAL_OFFSET + the default's size bytes, 8-byte aligned.
    let real = unsafe {
        file.cast::<u8>()
            .add(REAL_OFFSET)
            .cast::<ffi::sqlite3_file>()
    };
    // SAFETY: as above; `real` has the default VFS's size and alignment.
    let rc = unsafe { real_open(real_vfs, name, real, flags, out_flags) };
    // SAFETY: `real` was just filled in (or its `pMethods` left null) by the default VFS.
    let opened = !unsafe { (*real).pMethods }.is_null();
    if !opened {
        // SQLite does not call `xClose` on a file whose `pMethods` is null.
        // SAFETY: `file` is ours to write (see above).
        unsafe { (*file).pMethods = ptr::null() };
        return if rc == ffi::SQLITE_OK {
            ffi::SQLITE_CANTOPEN
        } else {
            rc
        };
    }
    // SQLite pads commits (and writes after the sync) unless the *database* file promises power-safe
    // overwrites. The default VFS decides that from the database's `psow` URI parameter, or else from the
    // compile-time default, which is what the WAL file itself reports (it never gets the parameter).
    // SAFETY: `real` is open; `xDeviceCharacteristics` is a version-1 method every file has.
    let characteristics =
        unsafe { call(real, |m| m.xDeviceCharacteristics) }.map_or(0, |f| unsafe { f(real) });
    // SAFETY: `name` is the WAL file name SQLite passed to xOpen, which the URI functions accept (they read
    // the database's parameters).
    let psow_parameter =
        !name.is_null() && unsafe { ffi::sqlite3_uri_boolean(name, c"psow".as_ptr(), 1) } != 0;
    let buffer = if characteristics & ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE != 0 && psow_parameter {
        Box::into_raw(Box::new(Buffer {
            start: 0,
            data: Vec::new(),
            commit_pending: false,
        }))
    } else {
        ptr::null_mut()
    };
    // SAFETY: the header fits at the start of `file` (REAL_OFFSET ≥ its size) and is aligned; `xClose` is
    // called on it even if `rc` is an error, since `pMethods` is then set (SQLite's rule).
    unsafe {
        file.cast::<WalFile>().write(WalFile {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            buffer,
        });
    }
    rc
}

/// The default VFS's file inside ours.
///
/// # Safety
/// `file` is a file this VFS opened as a WAL file (its `pMethods` is [`METHODS`]).
unsafe fn real_of(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    // SAFETY: per the contract, the default VFS's file is at REAL_OFFSET in the same allocation.
    unsafe { file.cast::<u8>().add(REAL_OFFSET).cast() }
}

/// One of the default file's methods.
///
/// # Safety
/// `real` is an open file of the default VFS.
unsafe fn call<F>(
    real: *mut ffi::sqlite3_file,
    pick: impl FnOnce(&ffi::sqlite3_io_methods) -> Option<F>,
) -> Option<F> {
    // SAFETY: an open file's `pMethods` points at its VFS's static method table.
    unsafe { (*real).pMethods.as_ref() }.and_then(pick)
}

/// Writes out what `buffer` holds (if anything) to `real`; the buffer is empty afterwards, whatever the
/// outcome.
///
/// # Safety
/// `real` is the open default-VFS file `buffer` belongs to.
unsafe fn write_out(buffer: &mut Buffer, real: *mut ffi::sqlite3_file) -> c_int {
    buffer.commit_pending = false;
    if buffer.data.is_empty() {
        return ffi::SQLITE_OK;
    }
    // The buffer never holds more than CAP bytes; no panic across the C boundary all the same.
    let Ok(len) = c_int::try_from(buffer.data.len()) else {
        buffer.data.clear();
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: `real` is open (the contract); the data pointer is valid for `len` bytes.
    let rc = match unsafe { call(real, |m| m.xWrite) } {
        Some(write) => unsafe { write(real, buffer.data.as_ptr().cast(), len, buffer.start) },
        None => ffi::SQLITE_IOERR_WRITE,
    };
    buffer.data.clear();
    rc
}

/// The file's buffer, if it buffers.
///
/// # Safety
/// `file` is a file this VFS opened as a WAL file, and no other reference to its buffer is live (SQLite calls
/// a file's methods from one thread at a time, and each method takes the buffer once).
unsafe fn buffer_of<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a mut Buffer> {
    // SAFETY: per the contract the header is ours; a non-null buffer comes from `Box::into_raw` in `x_open`
    // and lives until `x_close`.
    unsafe { (*file.cast::<WalFile>()).buffer.as_mut() }
}

/// Flushes the buffer, then runs `then` on the default VFS's file (for every method but `xWrite` and
/// `xClose`).
///
/// # Safety
/// As for [`buffer_of`].
unsafe fn flushed(
    file: *mut ffi::sqlite3_file,
    then: impl FnOnce(*mut ffi::sqlite3_file) -> c_int,
) -> c_int {
    // SAFETY: per the contract.
    let real = unsafe { real_of(file) };
    // SAFETY: per the contract; the reference ends before `then` runs.
    if let Some(buffer) = unsafe { buffer_of(file) } {
        // SAFETY: `real` is the buffer's file.
        let rc = unsafe { write_out(buffer, real) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    then(real)
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls this only on files whose `pMethods` is METHODS, i.e. WAL files we opened, one
    // thread at a time.
    let real = unsafe { real_of(file) };
    let len = usize::try_from(amount).unwrap_or(0);
    let write_through = |real: *mut ffi::sqlite3_file| {
        // SAFETY: `real` is open; `data` is valid for `amount` bytes (SQLite's contract).
        match unsafe { call(real, |m| m.xWrite) } {
            Some(write) => unsafe { write(real, data, amount, offset) },
            None => ffi::SQLITE_IOERR_WRITE,
        }
    };
    // SAFETY: as above; this is the only reference to the buffer in this call.
    let Some(buf) = (unsafe { buffer_of(file) }) else {
        // An unsupported device: every write goes straight through.
        return write_through(real);
    };
    if len == 0 || len > CAP {
        // SAFETY: `real` is the buffer's file.
        let rc = unsafe { write_out(buf, real) };
        return if rc == ffi::SQLITE_OK {
            write_through(real)
        } else {
            rc
        };
    }
    let end = buf.start + buf.data.len() as i64;
    if !buf.data.is_empty() && (offset != end || buf.data.len() + len > CAP) {
        // SAFETY: as above.
        let rc = unsafe { write_out(buf, real) };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if buf.data.is_empty() {
        buf.start = offset;
    }
    // SAFETY: SQLite passes `amount` readable bytes at `data`.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
    buf.data.extend_from_slice(bytes);
    if buf.commit_pending {
        // The commit frame's page: the commit is complete, hand it to the kernel.
        // SAFETY: as above.
        return unsafe { write_out(buf, real) };
    }
    buf.commit_pending = len == FRAME_HEADER && bytes[4..8] != [0; 4];
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls this once, last, on a WAL file we opened.
    let real = unsafe { real_of(file) };
    let mut rc = ffi::SQLITE_OK;
    // SAFETY: as above; nothing uses the buffer after this.
    unsafe {
        let header = file.cast::<WalFile>();
        let buffer = (*header).buffer;
        if !buffer.is_null() {
            (*header).buffer = ptr::null_mut();
            let mut buffer = Box::from_raw(buffer);
            rc = write_out(&mut buffer, real);
        }
    }
    // SAFETY: `real` is open; closing it is its last use.
    let closed = match unsafe { call(real, |m| m.xClose) } {
        Some(close) => unsafe { close(real) },
        None => ffi::SQLITE_OK,
    };
    if rc != ffi::SQLITE_OK { rc } else { closed }
}

/// Defines a method that flushes the buffer, then forwards its arguments to the default file's method.
macro_rules! flushing {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: SQLite calls this only on WAL files we opened, one thread at a time; the pointer
            // arguments are SQLite's own, passed on unchanged.
            unsafe {
                flushed(file, |real| match call(real, |m| m.$method) {
                    Some(f) => f(real $(, $arg)*),
                    None => $missing,
                })
            }
        }
    };
}

/// Defines a method that forwards its arguments to the default file's method (the buffer is irrelevant).
macro_rules! forwarding {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: as for `flushing!`.
            unsafe {
                let real = real_of(file);
                match call(real, |m| m.$method) {
                    Some(f) => f(real $(, $arg)*),
                    None => $missing,
                }
            }
        }
    };
}

flushing!(x_read, xRead, (data: *mut c_void, amount: c_int, offset: i64), ffi::SQLITE_IOERR_READ);
flushing!(x_truncate, xTruncate, (size: i64), ffi::SQLITE_IOERR_TRUNCATE);
flushing!(x_sync, xSync, (flags: c_int), ffi::SQLITE_IOERR_FSYNC);
flushing!(x_file_size, xFileSize, (size: *mut i64), ffi::SQLITE_IOERR_FSTAT);
flushing!(x_file_control, xFileControl, (op: c_int, arg: *mut c_void), ffi::SQLITE_NOTFOUND);
forwarding!(x_lock, xLock, (level: c_int), ffi::SQLITE_OK);
forwarding!(x_unlock, xUnlock, (level: c_int), ffi::SQLITE_OK);
forwarding!(x_check_reserved_lock, xCheckReservedLock, (out: *mut c_int), ffi::SQLITE_OK);
forwarding!(x_sector_size, xSectorSize, (), 4096);
forwarding!(x_device_characteristics, xDeviceCharacteristics, (), 0);

/// The methods of a buffered WAL file. Version 1: SQLite uses shared memory and memory mapping only through
/// the database file, never through its WAL.
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};
