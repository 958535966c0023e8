//! What every export shares: the panic boundary, the thread's last error, pointer
//! checks, and the registry that turns handle pointers into live objects.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::status::{Error, Result, Status};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `message` as the calling thread's last error.
pub fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The calling thread's last error; valid until the thread's next failing call.
pub fn last_error_ptr() -> *const libc::c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs an export's body: its error becomes the status and the thread's last error
/// (prefixed with the function's name); a panic becomes `SWAPPER_STATUS_PANIC`.
pub fn guard(name: &str, body: impl FnOnce() -> Result<()>) -> Status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => Status::Ok,
        Ok(Err(e)) => {
            set_last_error(&format!("{name}: {}", e.message()));
            crate::log!(Debug, "{name} failed: {e}");
            e.status()
        }
        Err(panic) => {
            let msg = format!(
                "{name}: internal error (panic): {}",
                crate::status::panic_text(&*panic)
            );
            crate::log!(Error, "{msg}");
            set_last_error(&msg);
            Status::Panic
        }
    }
}

/// Runs an export that returns a value instead of a status: an error or a panic gives
/// `fallback` and sets the thread's last error.
pub fn guard_value<T>(name: &str, fallback: T, body: impl FnOnce() -> Result<T>) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(&format!("{name}: {}", e.message()));
            fallback
        }
        Err(panic) => {
            let msg = format!(
                "{name}: internal error (panic): {}",
                crate::status::panic_text(&*panic)
            );
            crate::log!(Error, "{msg}");
            set_last_error(&msg);
            fallback
        }
    }
}

fn null(name: &str) -> Error {
    Error::new(Status::NullPointer, format!("{name} is NULL"))
}

/// `&*ptr`, or `NullPointer` naming the argument.
///
/// # Safety
/// A non-NULL `ptr` must point to a valid `T` for the lifetime the caller picks.
pub unsafe fn arg_ref<'a, T>(ptr: *const T, name: &str) -> Result<&'a T> {
    // SAFETY: the caller's contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| null(name))
}

/// Stores `value` through an out-pointer, or `NullPointer` naming it.
///
/// # Safety
/// A non-NULL `ptr` must be valid for writing one `T`.
pub unsafe fn write_out<T>(ptr: *mut T, name: &str, value: T) -> Result<()> {
    if ptr.is_null() {
        return Err(null(name));
    }
    // SAFETY: the caller's contract; `write` does not read or drop the old value.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Sets a non-NULL out-pointer to its neutral value, all zero bytes (NULL, 0, a
/// zero-filled struct). Every export with out-parameters calls it on each of them first,
/// so a failure, wherever it happens, leaves them neutral: the header's one rule.
///
/// # Safety
/// A non-NULL `ptr` must be valid for writing one `T`. No `T` value is made: the bytes
/// are the C caller's, which reads them as its own type (for which zero is valid).
pub unsafe fn clear_out<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: the caller's contract; write_bytes neither reads nor drops a `T`.
        unsafe { ptr.write_bytes(0, 1) };
    }
}

/// Stores `value` through an optional out-pointer (NULL: nothing is stored).
///
/// # Safety
/// A non-NULL `ptr` must be valid for writing one `T`.
pub unsafe fn write_opt<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: the caller's contract.
        unsafe { ptr.write(value) };
    }
}

/// The slice `ptr[0..count]`: NULL is allowed only with `count` 0.
///
/// # Safety
/// A non-NULL `ptr` must point to `count` valid `T`s for the lifetime the caller picks.
pub unsafe fn arg_slice<'a, T>(ptr: *const T, count: usize, name: &str) -> Result<&'a [T]> {
    if count == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Error::new(
            Status::NullPointer,
            format!("{name} is NULL but the count is {count}"),
        ));
    }
    if count
        .checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Error::invalid(format!("count {count} of {name} is too large")));
    }
    // SAFETY: the caller's contract; the size was checked above.
    Ok(unsafe { std::slice::from_raw_parts(ptr, count) })
}

/// A path from a NUL-terminated C string.
///
/// # Safety
/// A non-NULL `ptr` must point to a NUL-terminated string.
pub unsafe fn arg_path(ptr: *const libc::c_char, name: &str) -> Result<PathBuf> {
    if ptr.is_null() {
        return Err(null(name));
    }
    // SAFETY: the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    if bytes.is_empty() {
        return Err(Error::invalid(format!("{name} is an empty string")));
    }
    Ok(PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes),
    ))
}

/// A NUL-terminated string, as UTF-8.
///
/// # Safety
/// A non-NULL `ptr` must point to a NUL-terminated string.
pub unsafe fn arg_str<'a>(ptr: *const libc::c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(null(name));
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{name} is not valid UTF-8")))
}

/// One live handle: its value and the process that created it.
struct Entry<T> {
    value: Arc<T>,
    pid: u32,
}

/// Live handles of one type. The pointer a C caller holds is a key into this table, never
/// dereferenced: a NULL, destroyed, foreign or wrong-type handle is an error, not a
/// crash, and a destroy racing another thread's call cannot free what that call uses
/// (each call holds its own `Arc` until it returns; [`Registry::destroy`] waits for them).
/// A handle used in a forked child of the process that created it is `BadState`: its
/// worker threads are in the parent.
pub struct Registry<T> {
    what: &'static str,
    tag: usize,
    live: RwLock<HashMap<usize, Entry<T>>>,
    next: AtomicUsize,
}

impl<T> Registry<T> {
    /// An empty table; `tag` (1..=15) keeps the keys of different types apart.
    pub fn new(what: &'static str, tag: usize) -> Registry<T> {
        Registry {
            what,
            tag,
            live: RwLock::new(HashMap::new()),
            next: AtomicUsize::new(1),
        }
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<usize, Entry<T>>> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a value; returns its handle (non-zero, never reused).
    pub fn insert(&self, value: T) -> usize {
        let key = (self.next.fetch_add(1, Ordering::Relaxed) << 8) | (self.tag << 4);
        self.live.write().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            Entry {
                value: Arc::new(value),
                pid: std::process::id(),
            },
        );
        key
    }

    /// The value behind a handle.
    pub fn get(&self, key: usize) -> Result<Arc<T>> {
        if key == 0 {
            return Err(null(self.what));
        }
        let map = self.map();
        let entry = map.get(&key).ok_or_else(|| {
            Error::invalid(format!(
                "{} {key:#x} is not a live handle (destroyed, or not created by libswapper)",
                self.what
            ))
        })?;
        let me = std::process::id();
        if entry.pid != me {
            return Err(Error::bad_state(format!(
                "{} {key:#x} belongs to process {}; process {me} is a fork of it, where the handle's I/O threads do not exist: create a new handle in this process",
                self.what, entry.pid
            )));
        }
        Ok(Arc::clone(&entry.value))
    }

    /// Takes a handle out of the table; the value is dropped when the last call using it returns.
    pub fn remove(&self, key: usize) -> Option<Arc<T>> {
        self.live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .map(|e| e.value)
    }

    /// Destroys a handle: takes it out of the table (later calls with it are errors), runs
    /// `close` on it (which must make every other call on it return soon: stop its I/O and
    /// wake its waiters), waits until every other call still using it has returned, and
    /// drops it on this thread. So when `destroy` returns, nothing of the handle runs any
    /// more. In a forked child of the creating process the handle is only forgotten: its
    /// memory, files and locks are the parent's, and its threads are not in the child.
    pub fn destroy(&self, key: usize, close: impl FnOnce(&T)) -> Result<()> {
        let entry = self
            .live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .ok_or_else(|| Error::invalid(format!("{key:#x} is not a live {}", self.what)))?;
        if entry.pid != std::process::id() {
            crate::log!(
                Debug,
                "{} {key:#x} destroyed in a forked child: forgotten, the parent's copy is untouched",
                self.what
            );
            std::mem::forget(entry.value);
            return Ok(());
        }
        close(&entry.value);
        let mut value = entry.value;
        let mut pause = std::time::Duration::from_micros(50);
        loop {
            match Arc::try_unwrap(value) {
                Ok(v) => {
                    drop(v);
                    return Ok(());
                }
                Err(still_shared) => {
                    // Another thread is still inside a call on this handle; with the I/O
                    // stopped it returns soon.
                    value = still_shared;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(5));
                }
            }
        }
    }

    /// How many handles are live.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no handle is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs an export's body in the panic boundary: `ffi_boundary!("name", { ... Ok(()) })`
/// returns a `Status`; `ffi_boundary!("name", fallback, { ... Ok(value) })` returns the
/// value, or `fallback` on error.
#[macro_export]
macro_rules! ffi_boundary {
    ($name:expr, $body:block) => {
        $crate::ffi::boundary::guard($name, move || -> $crate::status::Result<()> { $body })
    };
    ($name:expr, $fallback:expr, $body:block) => {
        $crate::ffi::boundary::guard_value($name, $fallback, move || $body)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_errors_and_panics_into_statuses() {
        assert_eq!(guard("f", || Ok(())), Status::Ok);
        assert_eq!(guard("f", || Err(Error::bad_state("nope"))), Status::BadState);
        // SAFETY: the pointer comes from this thread's last error.
        let msg = unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(msg, "f: nope");
        assert_eq!(guard("g", || panic!("boom")), Status::Panic);
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(last_error_ptr()) }
            .to_str()
            .unwrap()
            .to_string();
        assert!(msg.contains("boom"), "{msg}");
        assert_eq!(guard_value("h", 7u32, || Err(Error::invalid("x"))), 7);
    }

    #[test]
    fn registry_rejects_dead_and_foreign_handles() {
        let r: Registry<u32> = Registry::new("test handle", 1);
        let k = r.insert(5);
        assert_eq!(*r.get(k).unwrap(), 5);
        assert!(r.remove(k).is_some());
        assert_eq!(r.get(k).unwrap_err().status(), Status::InvalidArgument);
        assert_eq!(r.get(0).unwrap_err().status(), Status::NullPointer);
        assert!(r.get(0xdead_beef).is_err());
        let k2 = r.insert(6);
        assert_ne!(k, k2);
    }

    #[test]
    fn slices_and_strings_are_checked() {
        // SAFETY: NULL with count 0 is the documented empty case; the others are errors.
        unsafe {
            assert!(arg_slice::<u64>(std::ptr::null(), 0, "ids").unwrap().is_empty());
            assert_eq!(
                arg_slice::<u64>(std::ptr::null(), 3, "ids").unwrap_err().status(),
                Status::NullPointer
            );
            let x = [1u64];
            assert!(arg_slice(x.as_ptr(), usize::MAX / 2, "ids").is_err());
            assert_eq!(
                arg_path(c"".as_ptr(), "path").unwrap_err().status(),
                Status::InvalidArgument
            );
        }
    }
}
