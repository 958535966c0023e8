//! The unsafe boundary toward the operating system. Every call libswapper makes into
//! libc (open, openat, fstat, fstatat, flock, mkdirat, unlinkat, readdir, pread, pwrite,
//! mmap, mlock, ...), every io_uring call and every foreign allocation lives below this
//! module; above it the crate uses neither `libc` functions nor `std::fs`, and reaches the
//! operating system otherwise only through std's threads, locks, condition variables and
//! environment variables. What it exports is either safe, or `unsafe` with its contract
//! stated. Raw pointers do appear above it: the `ffi` layer receives them from C and wraps
//! them in [`RawBuf`], which the engine and the swapper pass on to the `unsafe`
//! functions here, each call with a SAFETY note.
//!
//! - [`alloc`]: page-aligned, optionally page-locked memory.
//! - [`file`]: opening files (by path or inside a folder held open), the swap folder's
//!   folder operations and lock, and single pread/pwrite calls.
//! - [`uring`]: a small io_uring ring for read and write requests.
//! - [`limits`]: RLIMIT_MEMLOCK and the text files that describe memory (`/proc/meminfo`,
//!   the cgroups').
//! - [`fault`]: fault injection into the calls above (feature `fault-injection`).

pub mod alloc;
pub mod fault;
pub mod file;
pub mod limits;
pub mod uring;

/// A raw buffer address that crosses threads. Whoever builds one promises that the
/// memory stays valid, and is not used elsewhere, until the I/O on it has completed.
#[derive(Clone, Copy, Debug)]
pub struct RawBuf(pub *mut u8);

// SAFETY: a RawBuf is only an address; the promise above is made by the `unsafe`
// functions that take one, and the memory is touched by one request at a time.
unsafe impl Send for RawBuf {}
// SAFETY: as above.
unsafe impl Sync for RawBuf {}

impl RawBuf {
    /// The address `offset` bytes further on.
    pub fn offset_by(self, offset: usize) -> RawBuf {
        RawBuf(self.0.wrapping_add(offset))
    }

    /// The address as an integer, to test alignment.
    pub fn addr(self) -> usize {
        self.0 as usize
    }
}

/// Copies `len` bytes between two buffers that do not overlap.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and they must not overlap.
pub unsafe fn copy(src: RawBuf, dst: RawBuf, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.0, len) }
}
