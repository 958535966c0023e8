//! Status codes and the error type that every layer returns.
//!
//! The core returns [`Result<T>`]; an [`Error`] carries a [`Status`] (what kind of
//! failure, the value a C caller sees) and a message written for a person (what
//! failed, which path, which offset, the errno text). The `ffi` layer turns the
//! status into the return value and the message into the thread's last error.

use std::fmt;
use std::path::Path;

/// The result of every libswapper function that can fail. `SWAPPER_STATUS_OK` (0)
/// is success; every other value names one kind of failure, and
/// `swapper_last_error()` returns the calling thread's message with the detail.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// An argument is out of range or inconsistent (a size of zero, a value that is not a
    /// power of two, a count that overflows, an invalid enum value).
    InvalidArgument = 1,
    /// A pointer that must not be NULL was NULL.
    NullPointer = 2,
    /// A parameter id, file or folder that does not exist.
    NotFound = 3,
    /// The call is not allowed in the object's current state (a param that is in flight,
    /// a buffer that was never assigned, ...).
    BadState = 4,
    /// No free buffer is left in the pool, or a buffer is too small for the data.
    NoBuffer = 5,
    /// The operating system failed a read, a write or an open; the message names the path,
    /// the offset and the errno.
    IoError = 6,
    /// Data read back does not match its checksum, or a swap file is truncated.
    CorruptData = 7,
    /// The resource is held by another handle or process (a swap folder in use).
    Busy = 8,
    /// The platform or file system does not support what was asked (O_DIRECT required on a
    /// file system without it, io_uring required where the kernel refuses it).
    Unsupported = 9,
    /// Memory could not be allocated or locked.
    OutOfMemory = 10,
    /// A bug inside libswapper (a panic) was caught at the API boundary. The handle is then
    /// either fully usable (the call's changes were undone, or its I/O recorded as queued)
    /// or broken: every later call on it returns `SWAPPER_STATUS_PANIC` and says so in
    /// the last error, and only destroying it works. An I/O handle breaks when one of its
    /// worker threads panicked; a swapper, when a panic struck in the middle of a change
    /// of its bookkeeping.
    Panic = 11,
}

// The one table of status names: `c_name()` (what `swapper_status_name` returns) is
// generated from it.
c_enum!(
    Status,
    c_names [
        Ok c"SWAPPER_STATUS_OK",
        InvalidArgument c"SWAPPER_STATUS_INVALID_ARGUMENT",
        NullPointer c"SWAPPER_STATUS_NULL_POINTER",
        NotFound c"SWAPPER_STATUS_NOT_FOUND",
        BadState c"SWAPPER_STATUS_BAD_STATE",
        NoBuffer c"SWAPPER_STATUS_NO_BUFFER",
        IoError c"SWAPPER_STATUS_IO_ERROR",
        CorruptData c"SWAPPER_STATUS_CORRUPT_DATA",
        Busy c"SWAPPER_STATUS_BUSY",
        Unsupported c"SWAPPER_STATUS_UNSUPPORTED",
        OutOfMemory c"SWAPPER_STATUS_OUT_OF_MEMORY",
        Panic c"SWAPPER_STATUS_PANIC",
    ]
);

impl Status {
    /// The constant's name as it appears in the C header ([`Status::c_name`] as text).
    pub fn name(self) -> &'static str {
        // Every name above is ASCII, so the conversion cannot fail.
        self.c_name().to_str().unwrap_or("SWAPPER_STATUS_UNKNOWN")
    }
}

/// A failure: its kind and a message for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: String,
}

/// The result type of the core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error of kind `status` with `message`.
    pub fn new(status: Status, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }

    /// `InvalidArgument` with `message`.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Status::InvalidArgument, message)
    }

    /// `BadState` with `message`.
    pub fn bad_state(message: impl Into<String>) -> Error {
        Error::new(Status::BadState, message)
    }

    /// A failed system call on a file: names what was done, the path, the offset and the errno.
    pub fn os(what: &str, path: &Path, offset: Option<u64>, errno: i32) -> Error {
        let status = match errno {
            libc::ENOENT => Status::NotFound,
            libc::ENOMEM => Status::OutOfMemory,
            libc::EWOULDBLOCK => Status::Busy,
            _ => Status::IoError,
        };
        let at = match offset {
            Some(off) => format!(" at offset {off}"),
            None => String::new(),
        };
        Error::new(
            status,
            format!(
                "{what} {}{at}: {} (errno {errno})",
                path.display(),
                errno_text(errno)
            ),
        )
    }

    /// The kind of failure.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context` put in front of its message.
    pub fn context(self, context: impl fmt::Display) -> Error {
        Error {
            status: self.status,
            message: format!("{context}: {}", self.message),
        }
    }
}

/// Several failures as one error: Ok for none, the error itself for one, else the first
/// one's status with "N <what> failed: " and the first eight messages (the count of the
/// rest). Used by every call that reports a batch's failures together.
pub fn combine(errors: Vec<Error>, what: &str) -> Result<()> {
    const SHOWN: usize = 8;
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().expect("one error")),
        n => {
            let status = errors[0].status();
            let text: Vec<&str> = errors.iter().take(SHOWN).map(|e| e.message()).collect();
            let more = match n.checked_sub(SHOWN) {
                Some(m) if m > 0 => format!("; and {m} more"),
                _ => String::new(),
            };
            Err(Error::new(
                status,
                format!("{n} {what} failed: {}{more}", text.join("; ")),
            ))
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status.name(), self.message)
    }
}

impl std::error::Error for Error {}

/// The text of a caught panic (its `&str` or `String` payload).
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// The system's text for an errno value ("No space left on device").
pub fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip_and_names_are_unique() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(*s as i32, i as i32);
            assert_eq!(Status::from_raw(i as i32), Some(*s));
        }
        assert_eq!(Status::from_raw(-1), None);
        assert_eq!(Status::from_raw(12), None);
        let mut names: Vec<_> = Status::ALL.iter().map(|s| s.name()).collect();
        names.dedup();
        assert_eq!(names.len(), Status::ALL.len());
    }

    #[test]
    fn os_error_names_path_offset_and_errno() {
        let e = Error::os("write", Path::new("/x/y"), Some(4096), libc::ENOSPC);
        assert_eq!(e.status(), Status::IoError);
        assert!(e.message().contains("/x/y"), "{e}");
        assert!(e.message().contains("4096"), "{e}");
        assert!(e.message().contains("No space left on device"), "{e}");
        let e = Error::os("open", Path::new("/nope"), None, libc::ENOENT);
        assert_eq!(e.status(), Status::NotFound);
    }
}
