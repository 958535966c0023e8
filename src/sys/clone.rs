//! Copying a file's bytes the cheapest way the file system offers: a reflink (FICLONE:
//! the copy shares the source's extents, in constant time, on XFS with reflink and
//! btrfs), `copy_file_range` (the kernel copies, without a trip through user memory; on
//! ext4 a real copy), or, across file systems where neither works, pread and pwrite.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::fault::{self, Call, Fault};
use super::file::Dir;

/// How a copy was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyHow {
    /// Shared extents (FICLONE).
    Reflink,
    /// copy_file_range.
    CopyFileRange,
    /// pread and pwrite through a buffer.
    ReadWrite,
    /// O_DIRECT reads and writes through the I/O engines (`store::copy`).
    Direct,
}

impl CopyHow {
    /// For messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            CopyHow::Reflink => "reflink",
            CopyHow::CopyFileRange => "copy_file_range",
            CopyHow::ReadWrite => "read/write",
            CopyHow::Direct => "direct I/O",
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Creates the regular file `name` inside `dir` for reading and writing (mode 0600, not
/// following a symbolic link); EEXIST if the name exists.
pub fn create_new(dir: &Dir, name: &OsStr) -> Result<OwnedFd, i32> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b"." || b == b".." {
        return Err(libc::EINVAL);
    }
    let c = std::ffi::CString::new(b).map_err(|_| libc::EINVAL)?;
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    loop {
        // SAFETY: `c` is NUL-terminated; the mode is read with O_CREAT.
        let fd = unsafe { libc::openat(dir.fd().as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
        if fd >= 0 {
            // SAFETY: just opened, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// Makes `dst` a reflink of the whole of `src` (FICLONE): they share extents until one is
/// written. EXDEV across file systems; EOPNOTSUPP, EINVAL or ENOTTY where the file system
/// cannot share extents. `path` names the destination for fault injection (`Call::Write`).
pub fn reflink(src: RawFd, dst: RawFd, path: &Path) -> Result<(), i32> {
    if let Some(Fault::Errno(e)) = fault::check(Call::Write, path) {
        return Err(e);
    }
    loop {
        // SAFETY: FICLONE reads the source descriptor number passed by value; no memory
        // of ours is touched.
        let rc = unsafe { libc::ioctl(dst, libc::FICLONE, src) };
        if rc == 0 {
            return Ok(());
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// Sets the open file's size (ftruncate): the destination of a copy gets the source's
/// size, holes where nothing is copied.
pub fn set_len(fd: RawFd, len: u64) -> Result<(), i32> {
    let len = libc::off_t::try_from(len).map_err(|_| libc::EFBIG)?;
    loop {
        // SAFETY: ftruncate touches no memory of ours.
        if unsafe { libc::ftruncate(fd, len) } == 0 {
            return Ok(());
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// Whether an errno of copy_file_range says "not here" (rather than a real failure).
fn unsupported(e: i32) -> bool {
    matches!(e, libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
}

/// Copies bytes `offset..offset + len` of `src` to the same offsets of `dst`:
/// copy_file_range, or pread/pwrite when the kernel cannot copy between these files
/// (EXDEV across file systems, EOPNOTSUPP, EINVAL). Returns how; the errno of the call
/// that failed otherwise (EIO for a source shorter than the range). `path` names the
/// destination for fault injection (`Call::Write`).
pub fn copy_range(src: RawFd, dst: RawFd, offset: u64, len: u64, path: &Path) -> Result<CopyHow, i32> {
    if let Some(Fault::Errno(e)) = fault::check(Call::Write, path) {
        return Err(e);
    }
    let mut done = 0u64;
    let mut how = CopyHow::CopyFileRange;
    while done < len {
        let mut off_in = libc::off64_t::try_from(offset + done).map_err(|_| libc::EFBIG)?;
        let mut off_out = off_in;
        let chunk = (len - done).min(1 << 30) as usize;
        // SAFETY: both offsets are writable locals; the kernel copies between the files
        // without touching our memory otherwise.
        let n = unsafe { libc::copy_file_range(src, &mut off_in, dst, &mut off_out, chunk, 0) };
        if n > 0 {
            done += n as u64;
            continue;
        }
        if n == 0 {
            return Err(libc::EIO); // the source ends inside the range
        }
        match errno() {
            libc::EINTR => continue,
            e if unsupported(e) && done == 0 => {
                how = CopyHow::ReadWrite;
                break;
            }
            e => return Err(e),
        }
    }
    if how == CopyHow::ReadWrite {
        read_write(src, dst, offset, len)?;
    }
    Ok(how)
}

/// pread/pwrite through a 1 MiB buffer.
fn read_write(src: RawFd, dst: RawFd, offset: u64, len: u64) -> Result<(), i32> {
    let mut buf = vec![0u8; (1usize << 20).min(len as usize).max(1)];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let at = libc::off_t::try_from(offset + done).map_err(|_| libc::EFBIG)?;
        // SAFETY: `buf` is valid for writing `want` <= its length bytes.
        let n = unsafe { libc::pread(src, buf.as_mut_ptr().cast(), want, at) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            }
        }
        if n == 0 {
            return Err(libc::EIO);
        }
        let mut w = 0usize;
        while w < n as usize {
            // SAFETY: `buf[w..n]` is valid for reading.
            let m = unsafe {
                libc::pwrite(
                    dst,
                    buf[w..].as_ptr().cast(),
                    n as usize - w,
                    at + w as libc::off_t,
                )
            };
            if m < 0 {
                match errno() {
                    libc::EINTR => continue,
                    e => return Err(e),
                }
            }
            w += m as usize;
        }
        done += n as u64;
    }
    Ok(())
}

/// Flushes the open file to stable storage (fsync).
pub fn sync(fd: RawFd, path: &Path) -> Result<(), i32> {
    if let Some(Fault::Errno(e)) = fault::check(Call::Sync, path) {
        return Err(e);
    }
    loop {
        // SAFETY: fsync touches no memory of ours.
        if unsafe { libc::fsync(fd) } == 0 {
            return Ok(());
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}
