//! A file its owner holds open for the life of many operations (the swap store's extent
//! files): the engine reads and writes it through these descriptors instead of opening
//! the file per operation, so the number of open files does not grow with the number of
//! operations in flight.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// A regular file held open: an O_DIRECT descriptor (when the file system has O_DIRECT
/// and the owner asked for it) for aligned transfers, and a buffered one for the
/// unaligned head and tail of an operation. Shared (in an `Arc`) by every operation on
/// the file, so it stays open until the last of them has finished.
#[derive(Debug)]
pub struct HeldFile {
    path: PathBuf,
    direct: Option<OwnedFd>,
    buffered: OwnedFd,
}

impl HeldFile {
    /// A file held through `buffered` and, if given, `direct` (opened with O_DIRECT).
    /// `path` names the file in messages and fault-injection rules only.
    pub fn new(path: PathBuf, direct: Option<OwnedFd>, buffered: OwnedFd) -> HeldFile {
        HeldFile {
            path,
            direct,
            buffered,
        }
    }

    /// The file's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The O_DIRECT descriptor, if any.
    pub fn direct_fd(&self) -> Option<RawFd> {
        self.direct.as_ref().map(|fd| fd.as_raw_fd())
    }

    /// The buffered descriptor.
    pub fn buffered_fd(&self) -> RawFd {
        self.buffered.as_raw_fd()
    }

    /// The buffered descriptor, owned (for fstat, fallocate).
    pub fn fd(&self) -> &OwnedFd {
        &self.buffered
    }

    /// Whether transfers can go direct.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }
}
