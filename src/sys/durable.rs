//! Making things survive a crash: fsync and fdatasync, a small file written whole and
//! synced, an atomic rename inside a held folder, and reading a small file back. The
//! store's manifest ([`crate::store::manifest`]) is written with these.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::fault::{self, Call, Fault};
use super::file::{Dir, FileKind, OpenError};

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn retry(mut f: impl FnMut() -> libc::c_int) -> Result<libc::c_int, i32> {
    loop {
        let rc = f();
        if rc >= 0 {
            return Ok(rc);
        }
        let e = last_errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

fn name_c(name: &OsStr) -> Result<std::ffi::CString, i32> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b"." || b == b".." {
        return Err(libc::EINVAL);
    }
    std::ffi::CString::new(b).map_err(|_| libc::EINVAL)
}

/// Flushes the data of the open file `fd` (and what is needed to read it back: its size,
/// the conversion of preallocated blocks to written ones) to stable storage: fdatasync.
/// `path` names the file for fault injection (`Call::Sync`).
pub fn data_sync(fd: RawFd, path: &Path) -> Result<(), i32> {
    if let Some(Fault::Errno(e)) = fault::check(Call::Sync, path) {
        return Err(e);
    }
    // SAFETY: fdatasync on a descriptor touches no memory of ours; a closed one is EBADF.
    retry(|| unsafe { libc::fdatasync(fd) }).map(drop)
}

/// Flushes the folder `dir` (its entries: a rename, a created or removed name) to stable
/// storage: fsync on the held descriptor. `path` names it for fault injection.
pub fn sync_dir(dir: &Dir, path: &Path) -> Result<(), i32> {
    if let Some(Fault::Errno(e)) = fault::check(Call::Sync, path) {
        return Err(e);
    }
    let fd = dir.fd().as_raw_fd();
    // SAFETY: fsync on a descriptor touches no memory of ours.
    retry(|| unsafe { libc::fsync(fd) }).map(drop)
}

/// Writes `bytes` into a new file `name` inside `dir` (replacing one of that name, not
/// following a symbolic link; mode 0600) and fsyncs it. `path` names it for fault
/// injection. On failure the file may exist partly written.
pub fn write_synced(dir: &Dir, name: &OsStr, bytes: &[u8], path: &Path) -> Result<(), i32> {
    if let Some(Fault::Errno(e)) = fault::check(Call::Open, path) {
        return Err(e);
    }
    let c = name_c(name)?;
    let flags = libc::O_WRONLY
        | libc::O_CREAT
        | libc::O_TRUNC
        | libc::O_NOFOLLOW
        | libc::O_CLOEXEC
        | libc::O_NONBLOCK;
    let dirfd = dir.fd().as_raw_fd();
    // SAFETY: `c` is NUL-terminated; the mode is read with O_CREAT.
    let raw = retry(|| unsafe { libc::openat(dirfd, c.as_ptr(), flags, 0o600 as libc::c_uint) })?;
    // SAFETY: just opened, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut st: libc::stat = unsafe_zeroed_stat();
    // SAFETY: `fd` is open and `st` writable.
    retry(|| unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(libc::EINVAL);
    }
    if let Some(Fault::Errno(e)) = fault::check(Call::Write, path) {
        return Err(e);
    }
    let mut done = 0usize;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: `rest` is valid for reading `rest.len()` bytes.
        let n = retry(|| unsafe {
            libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) as libc::c_int
        })?;
        if n == 0 {
            return Err(libc::EIO);
        }
        done += n as usize;
    }
    if let Some(Fault::Errno(e)) = fault::check(Call::Sync, path) {
        return Err(e);
    }
    // SAFETY: fsync touches no memory of ours.
    retry(|| unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: a zeroed stat is a valid (if meaningless) value of this plain C struct.
    unsafe { std::mem::zeroed() }
}

/// Renames `from` to `to` inside `dir`, replacing `to` atomically (renameat).
pub fn rename(dir: &Dir, from: &OsStr, to: &OsStr) -> Result<(), i32> {
    let (a, b) = (name_c(from)?, name_c(to)?);
    let d = dir.fd().as_raw_fd();
    // SAFETY: both names are NUL-terminated; renameat touches no other memory.
    retry(|| unsafe { libc::renameat(d, a.as_ptr(), d, b.as_ptr()) }).map(drop)
}

/// Reads the whole regular file `name` inside `dir` (not following a symbolic link, a
/// FIFO refused without blocking), refusing one longer than `max` bytes (EFBIG).
pub fn read_small(dir: &Dir, name: &OsStr, max: u64) -> Result<Vec<u8>, OpenError> {
    let c = name_c(name).map_err(OpenError::Errno)?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    let dirfd = dir.fd().as_raw_fd();
    // SAFETY: `c` is NUL-terminated.
    let raw = match retry(|| unsafe { libc::openat(dirfd, c.as_ptr(), flags) }) {
        Ok(fd) => fd,
        Err(libc::ELOOP) => return Err(OpenError::NotRegular(FileKind::Symlink)),
        Err(e) => return Err(OpenError::Errno(e)),
    };
    // SAFETY: just opened, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut st = unsafe_zeroed_stat();
    // SAFETY: `fd` is open and `st` writable.
    retry(|| unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }).map_err(OpenError::Errno)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(OpenError::NotRegular(FileKind::of(st.st_mode)));
    }
    if st.st_size as u64 > max {
        return Err(OpenError::Errno(libc::EFBIG));
    }
    let mut out = vec![0u8; st.st_size as usize];
    let mut done = 0usize;
    while done < out.len() {
        let rest = &mut out[done..];
        // SAFETY: `rest` is valid for writing `rest.len()` bytes.
        let n = retry(|| unsafe {
            libc::read(fd.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) as libc::c_int
        })
        .map_err(OpenError::Errno)?;
        if n == 0 {
            break; // shrank meanwhile
        }
        done += n as usize;
    }
    out.truncate(done);
    Ok(out)
}
