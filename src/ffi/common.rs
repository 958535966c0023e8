//! Version, status names, the last error, and logging.

use crate::log::{self, LogLevel, Sink};
use crate::status::{Error, Status};

/// An enum value as C passes it in: read as an integer, then checked, so that an
/// out-of-range value is an error instead of undefined behaviour. The header shows
/// the enum's own name (see `cbindgen.toml`).
pub type StatusCode = i32;
/// A `SwapperLogLevel` as C passes it in (see [`StatusCode`]).
pub type LogLevelCode = i32;

/// A log callback: receives the message's level, the message (NUL-terminated, valid
/// only during the call) and the `user_data` given to `swapper_set_log_callback`.
/// It may be called from any thread, including libswapper's I/O workers, so it must be
/// thread-safe; it must not call back into libswapper.
pub type SwapperLogCallback =
    Option<extern "C" fn(level: LogLevel, message: *const libc::c_char, user_data: *mut libc::c_void)>;

static VERSION_C: &std::ffi::CStr =
    match std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => c"unknown",
    };

/// The library's version as "MAJOR.MINOR.PATCH". The string is static: never free it.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_version() -> *const libc::c_char {
    VERSION_C.as_ptr()
}

/// The calling thread's message for its last failed call: what failed, with the path,
/// offset and errno text where they apply; "" if no call has failed on this thread.
/// The string belongs to libswapper and stays valid until the next failing call on the
/// same thread: copy it to keep it. Never NULL. Thread-safe (each thread has its own).
#[no_mangle]
pub extern "C" fn swapper_last_error() -> *const libc::c_char {
    super::boundary::last_error_ptr()
}

/// The name of a status value as written in this header ("SWAPPER_STATUS_IO_ERROR");
/// "SWAPPER_STATUS_UNKNOWN" for a value that is not a status. The string is static:
/// never free it. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_status_name(status: StatusCode) -> *const libc::c_char {
    Status::from_raw(status)
        .map_or(c"SWAPPER_STATUS_UNKNOWN", Status::c_name)
        .as_ptr()
}

/// Sends libswapper's diagnostics at `max_level` and more important ones to `callback`
/// (with `user_data`, which libswapper never touches). A NULL `callback` removes it:
/// messages then go to stderr when the environment variable `SWAPPER_LOG` names a level
/// (error, warn, info, debug, trace), and nowhere otherwise. libswapper never writes to
/// stdout. Thread-safe; takes effect for messages sent after it returns.
///
/// Errors: `SWAPPER_STATUS_INVALID_ARGUMENT` for a level that is not a `SwapperLogLevel`.
#[no_mangle]
#[must_use]
pub extern "C" fn swapper_set_log_callback(
    callback: SwapperLogCallback,
    user_data: *mut libc::c_void,
    max_level: LogLevelCode,
) -> Status {
    let user_data = user_data as usize;
    crate::ffi_boundary!("swapper_set_log_callback", {
        let level = LogLevel::from_raw(max_level)
            .ok_or_else(|| Error::invalid(format!("invalid log level {max_level} (expected 1 to 5)")))?;
        let sink = callback.map(|callback| Sink::C { callback, user_data });
        log::set_sink(sink, level);
        Ok(())
    })
}
