//! `SwapperIo`: the asynchronous I/O engine handle.

use std::sync::LazyLock;

use super::boundary::{arg_path, arg_ref, clear_out, write_opt, write_out, Registry};
use crate::config::{Backend, DirectIo, IoConfig, IO_ALIGNMENT};
use crate::io::handle::IoHandle;
use crate::status::Status;
use crate::sys::RawBuf;

/// A `SwapperBackend` as C stores it (see `StatusCode` in common.rs).
pub type BackendCode = i32;
/// A `SwapperDirectIo` as C stores it.
pub type DirectIoCode = i32;
/// Reads a yes/no setting of a struct that C fills (`uint8_t`): 0 is false, any other
/// value true. A Rust `bool` field would make every byte value but 0 and 1 undefined
/// behaviour for a caller that fills the struct by memset or by hand.
pub(crate) fn flag_is_set(flag: u8) -> bool {
    flag != 0
}

/// An I/O engine: worker threads that read and write files with O_DIRECT, `block_size`
/// bytes per request and `queue_depth` requests in flight per thread. Create with
/// `swapper_io_create`, destroy with `swapper_io_destroy`. Every function taking a
/// `SwapperIo` is thread-safe: several threads may submit and wait on one handle.
///
/// Yes/no settings inside structs (`SwapperIoConfig`, `SwapperConfig`) are `uint8_t`: 0 is
/// false, any other value true, so a struct filled by memset or by hand is well defined.
/// Yes/no *arguments* (`async_op`, `force_buffer_release`, `lock`) stay C `bool`: a C or
/// C++ caller may pass any integer, which the compiler converts to 0 or 1. A caller
/// through another foreign-function layer must declare them as a real bool (Python
/// ctypes `c_bool`, cffi `bool`), which converts the same way; passing a byte other than
/// 0 or 1 for a `bool` argument is undefined behaviour.
///
/// A handle belongs to the process that created it: in a forked child every call with it
/// returns `SWAPPER_STATUS_BAD_STATE` (the engine's threads are in the parent, which
/// keeps working), and `swapper_io_destroy` only forgets it.
pub struct SwapperIo {
    _opaque: [u8; 0],
}

/// The engine's settings. Fill with `swapper_io_config_default`, then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SwapperIoConfig {
    /// Bytes per I/O request: a power of two from 4096 to 1 GiB. Default 1048576
    /// (DeepSpeed `aio.block_size`).
    pub block_size: u64,
    /// Requests each worker thread keeps in flight, 1 to 4096. Default 8
    /// (DeepSpeed `aio.queue_depth`).
    pub queue_depth: u32,
    /// Worker threads, 1 to 256; every operation is spread over all of them, whatever its
    /// size. Default 1 (DeepSpeed `aio.intra_op_parallelism`, formerly `thread_count`).
    pub thread_count: u32,
    /// Submit each request to the kernel as soon as it is prepared instead of in one batch
    /// per refill (io_uring backend). Default 0, false (DeepSpeed `aio.single_submit`).
    /// A flag stored in one byte: 0 is false, any other value true (libswapper writes 0
    /// or 1). An integer rather than a `bool`, so that a struct filled by memset or by
    /// hand is never undefined behaviour.
    pub single_submit: u8,
    /// Refill a worker's queue as each completion arrives (true) or only once all its
    /// requests have completed (false). Default 1, true (DeepSpeed `aio.overlap_events`).
    /// A one-byte flag like `single_submit`.
    pub overlap_events: u8,
    /// `SWAPPER_BACKEND_AUTO` (io_uring where the kernel allows it, else blocking calls),
    /// `SWAPPER_BACKEND_IO_URING` or `SWAPPER_BACKEND_BLOCKING` (each worker runs
    /// `queue_depth` threads making pread/pwrite calls, at most 512 in all). Default auto.
    pub backend: BackendCode,
    /// `SWAPPER_DIRECT_IO_AUTO` (O_DIRECT, falling back to buffered I/O with a log line on
    /// file systems without it), `SWAPPER_DIRECT_IO_ON` (refuse such file systems) or
    /// `SWAPPER_DIRECT_IO_OFF` (page cache). Default auto.
    pub direct_io: DirectIoCode,
}

impl From<&IoConfig> for SwapperIoConfig {
    fn from(c: &IoConfig) -> SwapperIoConfig {
        SwapperIoConfig {
            block_size: c.block_size,
            queue_depth: c.queue_depth,
            thread_count: c.thread_count,
            single_submit: u8::from(c.single_submit),
            overlap_events: u8::from(c.overlap_events),
            backend: c.backend as i32,
            direct_io: c.direct_io as i32,
        }
    }
}

impl TryFrom<&SwapperIoConfig> for IoConfig {
    type Error = crate::Error;
    fn try_from(c: &SwapperIoConfig) -> crate::Result<IoConfig> {
        let config = IoConfig {
            block_size: c.block_size,
            queue_depth: c.queue_depth,
            thread_count: c.thread_count,
            single_submit: flag_is_set(c.single_submit),
            overlap_events: flag_is_set(c.overlap_events),
            backend: Backend::from_c(c.backend)?,
            direct_io: DirectIo::from_c(c.direct_io)?,
        };
        config.validate()?;
        Ok(config)
    }
}

static HANDLES: LazyLock<Registry<IoHandle>> = LazyLock::new(|| Registry::new("SwapperIo handle", 1));

fn handle(io: *const SwapperIo) -> crate::Result<std::sync::Arc<IoHandle>> {
    HANDLES.get(io as usize)
}

/// Fills `*out` with the defaults (DeepSpeed's: block 1 MiB, queue depth 8, 1 thread,
/// batched submit, overlapped events; auto backend and auto O_DIRECT). NULL is ignored.
/// Thread-safe.
///
/// # Safety
/// `out` must be NULL or valid for writing one `SwapperIoConfig`.
#[no_mangle]
pub unsafe extern "C" fn swapper_io_config_default(out: *mut SwapperIoConfig) {
    // SAFETY: the caller's contract.
    unsafe { write_opt(out, SwapperIoConfig::from(&IoConfig::default())) }
}

/// Starts an engine with `*config` and stores its handle in `*out`; the caller owns it
/// and frees it with `swapper_io_destroy`. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` (config or out NULL),
/// `SWAPPER_STATUS_INVALID_ARGUMENT` (a setting out of range: the message names it),
/// `SWAPPER_STATUS_UNSUPPORTED` (io_uring asked for and refused by the kernel),
/// `SWAPPER_STATUS_OUT_OF_MEMORY` (threads could not be started).
///
/// After a failure `*out` is NULL (every out-parameter is neutral after a failure).
///
/// # Safety
/// `config` must be NULL or point to a `SwapperIoConfig`; `out` must be NULL or valid for
/// writing one pointer.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_io_create(
    config: *const SwapperIoConfig,
    out: *mut *mut SwapperIo,
) -> Status {
    crate::ffi_boundary!("swapper_io_create", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) };
        // SAFETY: the caller's contract.
        let config = IoConfig::try_from(unsafe { arg_ref(config, "config") }?)?;
        if out.is_null() {
            return Err(crate::Error::new(Status::NullPointer, "out is NULL"));
        }
        let key = HANDLES.insert(IoHandle::new(config)?);
        // SAFETY: `out` is non-NULL and valid for writing (the caller's contract).
        unsafe { write_out(out, "out", key as *mut SwapperIo) }
    })
}

/// Destroys an engine: waits for every operation still in flight, then stops its threads
/// and frees it. NULL is ignored; a handle that is not live is reported through the last
/// error and otherwise ignored. Results of asynchronous operations not yet waited for are
/// dropped (their data transfers do complete). The handle must not be used afterwards:
/// later calls with it fail with `SWAPPER_STATUS_INVALID_ARGUMENT`.
///
/// When it returns, no read or write of the engine touches any buffer any more, whatever
/// other threads are doing: a thread blocked in `swapper_io_wait` on the same handle
/// returns (with the operations' results) and a thread about to submit gets an error;
/// destroy waits for such calls to return before it frees the engine. So the caller may
/// free its buffers as soon as destroy returns. In a forked child of the process that
/// created the handle, the handle is only forgotten (its threads are in the parent).
#[no_mangle]
pub extern "C" fn swapper_io_destroy(io: *mut SwapperIo) {
    if io.is_null() {
        return;
    }
    let _ = crate::ffi_boundary!("swapper_io_destroy", {
        HANDLES.destroy(io as usize, IoHandle::close)
    });
}

// One body for pread and pwrite; the arguments are the exports' own, forwarded.
#[allow(clippy::too_many_arguments)]
unsafe fn submit(
    name: &str,
    io: *mut SwapperIo,
    write: bool,
    buffer: *mut libc::c_void,
    nbytes: u64,
    path: *const libc::c_char,
    file_offset: u64,
    async_op: bool,
) -> Status {
    crate::ffi_boundary!(name, {
        let h = handle(io)?;
        if buffer.is_null() && nbytes > 0 {
            return Err(crate::Error::new(Status::NullPointer, "buffer is NULL"));
        }
        if nbytes > isize::MAX as u64 {
            return Err(crate::Error::invalid(format!("nbytes {nbytes} is too large")));
        }
        // SAFETY: the caller's contract.
        let path = unsafe { arg_path(path, "path") }?;
        // SAFETY: the caller keeps `buffer` valid as the exported function's doc requires.
        unsafe {
            h.submit(
                write,
                RawBuf(buffer as *mut u8),
                nbytes,
                &path,
                file_offset,
                async_op,
            )
        }
    })
}

/// Reads `nbytes` at `file_offset` of the file `path` into `buffer`. Any length, offset and
/// buffer address are accepted: the 4096-aligned part goes straight to the buffer with
/// O_DIRECT, the rest through a small bounce buffer. With `async_op` false the call returns
/// when the data is in `buffer`; with true it returns once the read is queued, and
/// `swapper_io_wait` reports its outcome: `buffer` must stay valid, and untouched, until
/// then. The buffer is borrowed, never freed. Thread-safe.
///
/// Errors (returned here, or by `swapper_io_wait` for asynchronous reads):
/// `SWAPPER_STATUS_NULL_POINTER` (io, path, or buffer with nbytes > 0),
/// `SWAPPER_STATUS_INVALID_ARGUMENT` (a dead handle), `SWAPPER_STATUS_NOT_FOUND` (no such
/// file), `SWAPPER_STATUS_IO_ERROR` (a read past the end of the file, or an I/O error:
/// the message names the path, offset and errno), `SWAPPER_STATUS_UNSUPPORTED` (no O_DIRECT
/// on that file system with direct_io on).
///
/// # Safety
/// `buffer` must be valid for writing `nbytes` bytes for as long as stated above; `path`
/// must be NULL or a NUL-terminated string.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_io_pread(
    io: *mut SwapperIo,
    buffer: *mut libc::c_void,
    nbytes: u64,
    path: *const libc::c_char,
    file_offset: u64,
    async_op: bool,
) -> Status {
    // SAFETY: forwarded contract.
    unsafe {
        submit(
            "swapper_io_pread",
            io,
            false,
            buffer,
            nbytes,
            path,
            file_offset,
            async_op,
        )
    }
}

/// Writes `nbytes` of `buffer` at `file_offset` of the file `path`, which is created with
/// mode 0600 if missing (never truncated). Alignment, synchronous and asynchronous
/// behaviour as for `swapper_io_pread`: a synchronous write returns when the data has been
/// handed to the device (O_DIRECT) or to the page cache (buffered fallback); it is not an
/// fsync. `buffer` is borrowed and only read. Thread-safe.
///
/// Errors: as `swapper_io_pread`, plus `SWAPPER_STATUS_IO_ERROR` for a full disk (ENOSPC)
/// or an unwritable folder (EACCES), with the path and offset in the message.
///
/// # Safety
/// `buffer` must be valid for reading `nbytes` bytes for as long as stated above; `path`
/// must be NULL or a NUL-terminated string.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_io_pwrite(
    io: *mut SwapperIo,
    buffer: *const libc::c_void,
    nbytes: u64,
    path: *const libc::c_char,
    file_offset: u64,
    async_op: bool,
) -> Status {
    // SAFETY: forwarded contract; a write only reads the buffer.
    unsafe {
        submit(
            "swapper_io_pwrite",
            io,
            true,
            buffer as *mut libc::c_void,
            nbytes,
            path,
            file_offset,
            async_op,
        )
    }
}

/// Waits for every asynchronous operation submitted on `io` before this call and stores in
/// `*completed_ops` (if not NULL) how many it reaped. Returns the
/// status of the first failure among them; the last error then lists every failed
/// operation with its path, offset and errno. With nothing pending it returns
/// `SWAPPER_STATUS_OK` at once with 0. Thread-safe: concurrent waiters each reap a share.
///
/// After a failure `*completed_ops` is 0 (every out-parameter is neutral after a failure): the
/// last error names each failed operation.
///
/// # Safety
/// `completed_ops` must be NULL or valid for writing one `uint64_t`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_io_wait(io: *mut SwapperIo, completed_ops: *mut u64) -> Status {
    crate::ffi_boundary!("swapper_io_wait", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(completed_ops) };
        let h = handle(io)?;
        let (n, result) = h.wait();
        result?;
        // SAFETY: the caller's contract.
        unsafe { write_opt(completed_ops, n) };
        Ok(())
    })
}

/// Stores the engine's settings in `*out`, with `backend` resolved to the one in use
/// (never auto). Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER`, `SWAPPER_STATUS_INVALID_ARGUMENT` (a dead handle).
///
/// After a failure `*out` is all zeros (every out-parameter is neutral after a failure).
///
/// # Safety
/// `out` must be NULL or valid for writing one `SwapperIoConfig`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_io_get_config(io: *const SwapperIo, out: *mut SwapperIoConfig) -> Status {
    crate::ffi_boundary!("swapper_io_get_config", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) };
        let h = handle(io)?;
        let mut c = SwapperIoConfig::from(h.engine().config());
        c.backend = h.engine().backend() as i32;
        // SAFETY: the caller's contract.
        unsafe { write_out(out, "out", c) }
    })
}

fn getter<T>(name: &str, io: *const SwapperIo, fallback: T, f: impl FnOnce(&IoHandle) -> T) -> T {
    crate::ffi_boundary!(name, fallback, {
        let h = handle(io)?;
        Ok(f(&h))
    })
}

/// The engine's block size in bytes; 0 for a NULL or dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_block_size(io: *const SwapperIo) -> u64 {
    getter("swapper_io_block_size", io, 0, |h| h.engine().config().block_size)
}

/// The engine's queue depth per thread; 0 for a NULL or dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_queue_depth(io: *const SwapperIo) -> u32 {
    getter("swapper_io_queue_depth", io, 0, |h| {
        h.engine().config().queue_depth
    })
}

/// The engine's worker thread count; 0 for a NULL or dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_thread_count(io: *const SwapperIo) -> u32 {
    getter("swapper_io_thread_count", io, 0, |h| {
        h.engine().config().thread_count
    })
}

/// The engine's `single_submit` setting; false for a NULL or dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_single_submit(io: *const SwapperIo) -> bool {
    getter("swapper_io_single_submit", io, false, |h| {
        h.engine().config().single_submit
    })
}

/// The engine's `overlap_events` setting; false for a NULL or dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_overlap_events(io: *const SwapperIo) -> bool {
    getter("swapper_io_overlap_events", io, false, |h| {
        h.engine().config().overlap_events
    })
}

/// The backend in use (`SWAPPER_BACKEND_IO_URING` or `SWAPPER_BACKEND_BLOCKING`, never
/// auto); `SWAPPER_BACKEND_AUTO` for a NULL or dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_backend(io: *const SwapperIo) -> Backend {
    getter("swapper_io_backend", io, Backend::Auto, |h| h.engine().backend())
}

/// The engine's `direct_io` setting; `SWAPPER_DIRECT_IO_AUTO` for a NULL or dead handle.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_direct_io(io: *const SwapperIo) -> DirectIo {
    getter("swapper_io_direct_io", io, DirectIo::Auto, |h| {
        h.engine().config().direct_io
    })
}

/// Asynchronous operations submitted on `io` and not yet reaped by `swapper_io_wait`;
/// 0 for a NULL or dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_pending(io: *const SwapperIo) -> u64 {
    getter("swapper_io_pending", io, 0, |h| h.pending() as u64)
}

/// The alignment, in bytes, that lets a transfer go straight between the buffer and the
/// device: buffer address, file offset and length multiples of it (4096). Other
/// transfers work too, partly through a bounce buffer. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_alignment() -> u64 {
    IO_ALIGNMENT
}

/// How many `SwapperIo` handles are live in this process (for leak checks). Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_io_live_handles() -> u64 {
    HANDLES.len() as u64
}
