//! Opening files and single read and write calls on raw buffers.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::fault::{self, Call, Fault};
use super::RawBuf;

/// How to open a file.
#[derive(Clone, Copy, Debug)]
pub struct OpenMode {
    /// Open for writing (created with mode 0600 if missing) instead of reading.
    pub write: bool,
    /// Add O_DIRECT.
    pub direct: bool,
    /// Refuse a path whose last component is a symbolic link (O_NOFOLLOW).
    pub nofollow: bool,
}

/// Opens `path`; the error is the errno.
pub fn open(path: &Path, mode: OpenMode) -> Result<OwnedFd, i32> {
    if let Some(Fault::Errno(e)) = fault::check(Call::Open, path) {
        return Err(e);
    }
    if mode.direct {
        if let Some(Fault::Errno(e)) = fault::check(Call::OpenDirect, path) {
            return Err(e);
        }
    }
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    let mut flags = libc::O_CLOEXEC;
    flags |= if mode.write {
        libc::O_WRONLY | libc::O_CREAT
    } else {
        libc::O_RDONLY
    };
    if mode.direct {
        flags |= libc::O_DIRECT;
    }
    if mode.nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    loop {
        // SAFETY: `c` is a valid NUL-terminated string; the mode argument is read only with O_CREAT.
        let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint) };
        if fd >= 0 {
            // SAFETY: `fd` was just opened and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let errno = last_errno();
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// The size of the open file in bytes.
pub fn file_size(fd: &OwnedFd) -> Result<u64, i32> {
    // SAFETY: a zeroed stat is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is writable.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    if rc == 0 {
        Ok(st.st_size as u64)
    } else {
        Err(last_errno())
    }
}

/// Sets the open file's size.
pub fn set_file_size(fd: &OwnedFd, size: u64) -> Result<(), i32> {
    // SAFETY: `fd` is open; ftruncate touches no memory of ours.
    let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// Reserves disk blocks for bytes `offset..offset + len` of the open file `fd` and sets
/// its size to at least `offset + len` (`fallocate` mode 0), when that range reaches past
/// the file's end. Called once per write operation before its requests: a write into
/// allocated blocks below the file's size is not an extending write, so ext4 and XFS take
/// it on the submitting io_uring ring instead of handing every request to a kernel worker
/// (which costs throughput and several times the CPU on new files).
///
/// Returns `Ok(true)` when blocks were reserved, `Ok(false)` when nothing was needed (the
/// range ends inside the file, `len` is 0, the descriptor is not a regular file) or the
/// file system cannot preallocate (EOPNOTSUPP and the like): the write then goes ahead
/// without it. `Err(errno)` only for ENOSPC, EDQUOT and EFBIG, which say the write cannot
/// fit; the caller reports that as the operation's error. A failed fallocate may have
/// reserved part of the range (ext4 keeps what it got and extends the file that far): the
/// blocks past the file's old end are given back (a hole is punched there), so a write
/// that does not fit leaves the free space as it was; the file may stay longer than before,
/// reading zeros there. Thread-safe: concurrent calls on the same file never discard
/// data written outside their own range.
pub fn preallocate(fd: &OwnedFd, offset: u64, len: u64) -> Result<bool, i32> {
    if len == 0 {
        return Ok(false);
    }
    let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
    // SAFETY: a zeroed stat is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Ok(false);
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || end <= st.st_size as u64 {
        return Ok(false);
    }
    let (Ok(start), Ok(count)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(libc::EFBIG);
    };
    loop {
        // SAFETY: `fd` is open; fallocate touches no memory of ours.
        let rc = unsafe { libc::fallocate(fd.as_raw_fd(), 0, start, count) };
        if rc == 0 {
            return Ok(true);
        }
        match last_errno() {
            libc::EINTR => continue,
            e @ (libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => {
                let old_end = (st.st_size as u64).max(offset);
                if let Ok(from) = libc::off_t::try_from(old_end) {
                    // SAFETY: `fd` is open; fallocate touches no memory of ours. Only the part
                    // past the file's old end, inside this write's own range, is punched:
                    // it held no data before and the failed write owns it.
                    unsafe {
                        libc::fallocate(
                            fd.as_raw_fd(),
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                            from,
                            (end - old_end) as libc::off_t,
                        )
                    };
                }
                return Err(e);
            }
            _ => return Ok(false),
        }
    }
}

/// One pread or pwrite call of `len` bytes at `offset`, with fault injection applied.
/// Returns the bytes transferred or the errno (EINTR included: the caller retries).
///
/// # Safety
/// `buf` must be valid for `len` bytes: writable for a read, readable for a write, and not
/// used by anyone else during the call.
pub unsafe fn transfer(
    fd: RawFd,
    write: bool,
    buf: RawBuf,
    len: usize,
    offset: u64,
    path: &Path,
) -> Result<usize, i32> {
    // A short transfer is imitated by reporting fewer bytes than were moved: the call
    // itself keeps the O_DIRECT alignment, and the caller re-issues the rest as it would
    // after a real short transfer (moving the same bytes again is harmless).
    let cap = match fault::check(if write { Call::Write } else { Call::Read }, path) {
        Some(Fault::Errno(e)) => return Err(e),
        Some(Fault::Short(n)) => n,
        None => usize::MAX,
    };
    // SAFETY: the caller's contract covers `buf` for `len` bytes.
    let rc = unsafe {
        if write {
            libc::pwrite(fd, buf.0 as *const libc::c_void, len, offset as libc::off_t)
        } else {
            libc::pread(fd, buf.0 as *mut libc::c_void, len, offset as libc::off_t)
        }
    };
    if rc >= 0 {
        Ok((rc as usize).min(cap))
    } else {
        Err(last_errno())
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_0600_and_refuses_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mode = OpenMode {
            write: true,
            direct: false,
            nofollow: true,
        };
        let fd = open(&p, mode).unwrap();
        drop(fd);
        let perm = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(perm, 0o600);
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert_eq!(open(&link, mode).err(), Some(libc::ELOOP));
        assert_eq!(
            open(&dir.path().join("missing"), OpenMode { write: false, ..mode }).err(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn preallocate_reserves_only_past_the_end_of_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mode = OpenMode {
            write: true,
            direct: false,
            nofollow: true,
        };
        let fd = open(&p, mode).unwrap();
        assert_eq!(preallocate(&fd, 0, 0), Ok(false));
        assert_eq!(preallocate(&fd, 4096, 1 << 20), Ok(true));
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 4096 + (1 << 20));
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= 1 << 20);
        // Inside the file already: nothing to do.
        assert_eq!(preallocate(&fd, 0, 4096 + (1 << 20)), Ok(false));
        assert_eq!(preallocate(&fd, u64::MAX, 2), Err(libc::EFBIG));
        // Not a regular file: nothing to do, no error.
        let null = open(
            Path::new("/dev/null"),
            OpenMode {
                nofollow: false,
                ..mode
            },
        )
        .unwrap();
        assert_eq!(preallocate(&null, 0, 1 << 20), Ok(false));
    }
}
