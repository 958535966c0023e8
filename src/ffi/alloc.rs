//! Aligned, optionally page-locked memory for callers' I/O buffers.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use super::boundary::{clear_out, write_out};
use crate::memory_budget::{self, Demand};
use crate::status::Status;
use crate::sys::alloc::{find_allocation, release, retain, AlignedBuf};

/// Live allocations by address: freeing looks the pointer up, so a foreign or double
/// free is reported instead of corrupting memory.
static ALLOCATIONS: LazyLock<Mutex<HashMap<usize, AlignedBuf>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn allocations() -> std::sync::MutexGuard<'static, HashMap<usize, AlignedBuf>> {
    ALLOCATIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Allocates `nbytes` (0 gives one page) of zero-filled memory aligned to at least 4096
/// bytes, suitable for O_DIRECT. With `lock` true the pages are locked in RAM (pinned)
/// when RLIMIT_MEMLOCK allows it (or the process holds CAP_IPC_LOCK); otherwise the memory
/// stays unlocked and a warning is logged (`swapper_is_locked` tells which). The caller
/// owns the memory and frees it with `swapper_free_aligned`. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` if `out` is NULL; `SWAPPER_STATUS_OUT_OF_MEMORY`
/// if the memory cannot be had (more than the machine's RAM is refused up front; with
/// `lock`, more than MemAvailable or than the memory cgroup's room is refused up front,
/// the message saying how much fits).
///
/// After a failure `*out` is NULL (every out-parameter is neutral after a failure).
///
/// # Safety
/// `out` must be NULL or valid for writing one pointer.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_alloc_aligned(
    nbytes: u64,
    lock: bool,
    out: *mut *mut libc::c_void,
) -> Status {
    crate::ffi_boundary!("swapper_alloc_aligned", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) };
        if out.is_null() {
            return Err(crate::Error::new(Status::NullPointer, "out is NULL"));
        }
        let len = usize::try_from(nbytes)
            .map_err(|_| crate::Error::new(Status::OutOfMemory, format!("cannot allocate {nbytes} bytes")))?;
        let lock = lock
            && memory_budget::check(&[Demand::new(
                format!("swapper_alloc_aligned of {nbytes} bytes"),
                "nbytes",
                nbytes,
            )])?
            .lock;
        let buf = AlignedBuf::new(len, lock)?;
        let ptr = buf.as_ptr() as *mut libc::c_void;
        allocations().insert(ptr as usize, buf);
        // SAFETY: `out` is non-NULL and valid for writing (the caller's contract).
        unsafe { write_out(out, "out", ptr) }
    })
}

/// Frees memory from `swapper_alloc_aligned`. NULL is ignored. A pointer that libswapper
/// did not allocate, or already freed, is not touched: the call logs an error and sets
/// the thread's last error. No I/O may still be using the memory. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_free_aligned(ptr: *mut libc::c_void) {
    if ptr.is_null() {
        return;
    }
    let _ = crate::ffi_boundary!("swapper_free_aligned", {
        match allocations().remove(&(ptr as usize)) {
            Some(buf) => {
                drop(buf);
                Ok(())
            }
            None => {
                crate::log!(Error, "swapper_free_aligned: {ptr:p} was not allocated by swapper_alloc_aligned (or was freed already); ignored");
                Err(crate::Error::invalid(format!(
                    "{ptr:p} was not allocated by swapper_alloc_aligned, or was freed already"
                )))
            }
        }
    });
}

/// Whether `ptr` lies inside memory libswapper allocated (`swapper_alloc_aligned`, or a
/// swapper's buffer pool or staging space) whose pages are locked in RAM: any address of
/// the allocation counts, not only its first byte. False for NULL, for unlocked
/// allocations and for memory libswapper did not allocate. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_is_locked(ptr: *const libc::c_void) -> bool {
    crate::ffi_boundary!("swapper_is_locked", false, {
        Ok(!ptr.is_null() && find_allocation(ptr as usize, 0) == Some(true))
    })
}

/// Whether the `nbytes` bytes at `ptr` lie inside one live libswapper allocation
/// (`swapper_alloc_aligned`, or a swapper's buffer pool or staging space), for example a
/// tensor sliced from the middle of a buffer: 1 if that allocation's pages are locked in
/// RAM, 0 if it is not locked (mlock was refused: no CAP_IPC_LOCK, or RLIMIT_MEMLOCK too
/// low; libswapper's I/O works on it all the same), -1 if the range is not entirely
/// inside one allocation (NULL included). Never fails, never sets the last error; one
/// process-wide lookup under a short lock. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_allocation_locked(ptr: *const libc::c_void, nbytes: u64) -> i32 {
    crate::ffi_boundary!("swapper_allocation_locked", -1, {
        let Ok(len) = usize::try_from(nbytes) else {
            return Ok(-1);
        };
        if ptr.is_null() {
            return Ok(-1);
        }
        Ok(match find_allocation(ptr as usize, len) {
            Some(true) => 1,
            Some(false) => 0,
            None => -1,
        })
    })
}

/// Keeps the libswapper allocation holding all of the `nbytes` bytes at `ptr` mapped until
/// a matching `swapper_memory_release`, even after its owner is gone: a swapper's pool
/// survives `swapper_destroy` (the memory then belongs to nobody; I/O no longer touches
/// it), memory from `swapper_alloc_aligned` survives `swapper_free_aligned`. For language
/// bindings that hand out views of pool buffers which cannot be revoked: a view used
/// after its swapper is destroyed then reads stale bytes instead of crashing. Every
/// successful call needs one release. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` if `ptr` is NULL; `SWAPPER_STATUS_NOT_FOUND` if
/// the range is not entirely inside one live libswapper allocation.
#[no_mangle]
#[must_use]
pub extern "C" fn swapper_memory_retain(ptr: *const libc::c_void, nbytes: u64) -> Status {
    crate::ffi_boundary!("swapper_memory_retain", {
        if ptr.is_null() {
            return Err(crate::Error::new(Status::NullPointer, "ptr is NULL"));
        }
        let len = usize::try_from(nbytes).map_err(|_| {
            crate::Error::new(
                Status::NotFound,
                format!("{nbytes} bytes is not a range of memory"),
            )
        })?;
        retain(ptr as usize, len)
    })
}

/// Ends one `swapper_memory_retain` of the allocation holding `ptr` (any address inside
/// it). The last release of an allocation whose owner is gone unmaps it; the memory must
/// not be used afterwards. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` if `ptr` is NULL; `SWAPPER_STATUS_INVALID_ARGUMENT`
/// if `ptr` is not inside retained libswapper memory (nothing is changed).
#[no_mangle]
#[must_use]
pub extern "C" fn swapper_memory_release(ptr: *const libc::c_void) -> Status {
    crate::ffi_boundary!("swapper_memory_release", {
        if ptr.is_null() {
            return Err(crate::Error::new(Status::NullPointer, "ptr is NULL"));
        }
        release(ptr as usize)
    })
}
