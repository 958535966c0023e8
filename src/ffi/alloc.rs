//! Aligned, optionally page-locked memory for callers' I/O buffers.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use super::boundary::write_out;
use crate::status::Status;
use crate::sys::alloc::AlignedBuf;

/// Live allocations by address: freeing looks the pointer up, so a foreign or double
/// free is reported instead of corrupting memory.
static ALLOCATIONS: LazyLock<Mutex<HashMap<usize, AlignedBuf>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn allocations() -> std::sync::MutexGuard<'static, HashMap<usize, AlignedBuf>> {
    ALLOCATIONS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Allocates `nbytes` (0 gives one page) of zero-filled memory aligned to at least 4096
/// bytes, suitable for O_DIRECT. With `lock` true the pages are locked in RAM (pinned)
/// when RLIMIT_MEMLOCK allows it; otherwise the memory stays unlocked and a warning is
/// logged (`swapper_is_locked` tells which). The caller owns the memory and frees it with
/// `swapper_free_aligned`. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` if `out` is NULL; `SWAPPER_STATUS_OUT_OF_MEMORY`
/// if the memory cannot be had (more than the machine's RAM is refused up front).
///
/// # Safety
/// `out` must be NULL or valid for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn swapper_alloc_aligned(
    nbytes: u64,
    lock: bool,
    out: *mut *mut libc::c_void,
) -> Status {
    crate::ffi_boundary!("swapper_alloc_aligned", {
        if out.is_null() {
            return Err(crate::Error::new(Status::NullPointer, "out is NULL"));
        }
        let len = usize::try_from(nbytes)
            .map_err(|_| crate::Error::new(Status::OutOfMemory, format!("cannot allocate {nbytes} bytes")))?;
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

/// Whether `ptr` is an allocation from `swapper_alloc_aligned` whose pages are locked in
/// RAM. False for NULL, for unlocked allocations and for memory libswapper did not
/// allocate. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_is_locked(ptr: *const libc::c_void) -> bool {
    crate::ffi_boundary!("swapper_is_locked", false, {
        Ok(allocations().get(&(ptr as usize)).is_some_and(|b| b.is_locked()))
    })
}
