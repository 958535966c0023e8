//! Files and folders: opening a file (by path, or by name inside a folder held open),
//! the folder operations of the swap folder (create, open, list, remove, stat, lock), and
//! single read and write calls on raw buffers.
//!
//! Every open refuses what is not a regular file (a FIFO, a device, a socket, a folder)
//! without blocking: the file is opened with O_NONBLOCK, checked with fstat, and only then
//! made blocking again, so a FIFO put in place of a file cannot hang the caller.

use std::cell::UnsafeCell;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

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

/// What kind of file a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A folder.
    Directory,
    /// A symbolic link (seen only when links are not followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl FileKind {
    fn of(mode: libc::mode_t) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => FileKind::Regular,
        }
    }

    /// The kind in words, for messages ("a FIFO").
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a folder",
            FileKind::Symlink => "a symbolic link",
            FileKind::Fifo => "a FIFO",
            FileKind::Socket => "a socket",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
        }
    }
}

/// What `fstatat` tells of a name: its kind, size and identity.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    /// The kind of file.
    pub kind: FileKind,
    /// The size in bytes.
    pub size: u64,
    /// The device holding it.
    pub dev: u64,
    /// Its inode number on that device: (dev, ino) tells whether a name still names a
    /// file held open.
    pub ino: u64,
}

impl Stat {
    /// Whether it is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == FileKind::Regular
    }

    /// Whether it is a folder.
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }

    /// The size in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether the size is zero.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn from_raw(st: &libc::stat) -> Stat {
        Stat {
            kind: FileKind::of(st.st_mode),
            size: st.st_size as u64,
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// Why an open failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The system call failed with this errno.
    Errno(i32),
    /// The path names something other than a regular file (nothing was read or written).
    NotRegular(FileKind),
}

/// An open file and its size at the time of opening.
#[derive(Debug)]
pub struct Opened {
    /// The descriptor (O_CLOEXEC, blocking).
    pub fd: OwnedFd,
    /// The file's size in bytes.
    pub size: u64,
}

/// A folder held open (O_RDONLY | O_DIRECTORY | O_CLOEXEC): names opened relative to it
/// stay in this folder whatever happens to its path afterwards (a chdir, a rename, the
/// path replaced by a symbolic link). Clones share the descriptor, which is closed when
/// the last clone is dropped; it can be used from any thread.
#[derive(Clone, Debug)]
pub struct Dir(Arc<OwnedFd>);

fn cstr(bytes: &[u8]) -> Result<CString, i32> {
    CString::new(bytes).map_err(|_| libc::EINVAL)
}

/// A single path component: not empty, no '/', not "." or "..".
fn component(name: &OsStr) -> Result<CString, i32> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b"." || b == b".." {
        return Err(libc::EINVAL);
    }
    cstr(b)
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Retries `f` while it fails with EINTR; returns its non-negative result or the errno.
fn retry(mut f: impl FnMut() -> libc::c_int) -> Result<libc::c_int, i32> {
    loop {
        let rc = f();
        if rc >= 0 {
            return Ok(rc);
        }
        let errno = last_errno();
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

fn fstatat_raw(dirfd: RawFd, name: &CStr, follow: bool) -> Result<Stat, i32> {
    // SAFETY: a zeroed stat is a valid out-parameter for fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: `name` is NUL-terminated and `st` is writable; `dirfd` is open or AT_FDCWD.
    retry(|| unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, flags) })?;
    Ok(Stat::from_raw(&st))
}

fn fstat_raw(fd: RawFd) -> Result<Stat, i32> {
    // SAFETY: a zeroed stat is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is writable.
    retry(|| unsafe { libc::fstat(fd, &mut st) })?;
    Ok(Stat::from_raw(&st))
}

fn open_raw(dirfd: RawFd, name: &CStr, flags: libc::c_int) -> Result<OwnedFd, i32> {
    // SAFETY: `name` is NUL-terminated; the mode argument is read only with O_CREAT.
    let fd = retry(|| unsafe { libc::openat(dirfd, name.as_ptr(), flags, 0o600 as libc::c_uint) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW;

/// Opens a folder, not following a symbolic link: ELOOP for a link (Linux answers ENOTDIR
/// to O_NOFOLLOW | O_DIRECTORY on one), ENOTDIR for anything else that is not a folder.
fn open_dir_raw(dirfd: RawFd, name: &CStr) -> Result<Dir, i32> {
    match open_raw(dirfd, name, DIR_FLAGS) {
        Ok(fd) => Ok(Dir(Arc::new(fd))),
        Err(libc::ENOTDIR) => match fstatat_raw(dirfd, name, false) {
            Ok(st) if st.kind == FileKind::Symlink => Err(libc::ELOOP),
            _ => Err(libc::ENOTDIR),
        },
        Err(e) => Err(e),
    }
}

impl Dir {
    /// Opens the folder `path`, refusing a symbolic link as its last component (ELOOP) and
    /// anything that is not a folder (ENOTDIR).
    pub fn open(path: &Path) -> Result<Dir, i32> {
        open_dir_raw(libc::AT_FDCWD, &cstr(path.as_os_str().as_bytes())?)
    }

    /// Opens the folder `name` inside this one, refusing a symbolic link (ELOOP) and
    /// anything that is not a folder (ENOTDIR).
    pub fn open_dir(&self, name: &OsStr) -> Result<Dir, i32> {
        open_dir_raw(self.raw(), &component(name)?)
    }

    /// Creates the folder `name` inside this one with `mode` (EEXIST if the name exists).
    pub fn make_dir(&self, name: &OsStr, mode: u32) -> Result<(), i32> {
        let c = component(name)?;
        // SAFETY: `c` is NUL-terminated and the descriptor is open.
        retry(|| unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
    }

    /// Sets this folder's permission bits.
    pub fn set_mode(&self, mode: u32) -> Result<(), i32> {
        // SAFETY: the descriptor is open; fchmod touches no memory of ours.
        retry(|| unsafe { libc::fchmod(self.raw(), mode as libc::mode_t) }).map(drop)
    }

    /// This folder's permission bits.
    pub fn mode(&self) -> Result<u32, i32> {
        // SAFETY: a zeroed stat is a valid out-parameter for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open and `st` is writable.
        retry(|| unsafe { libc::fstat(self.raw(), &mut st) })?;
        Ok(st.st_mode as u32 & 0o7777)
    }

    /// What `name` inside this folder is, without following a symbolic link.
    pub fn stat(&self, name: &OsStr) -> Result<Stat, i32> {
        fstatat_raw(self.raw(), &component(name)?, false)
    }

    /// The names in this folder (without "." and ".."), each with its kind.
    pub fn entries(&self) -> Result<Vec<(OsString, FileKind)>, i32> {
        // fdopendir takes ownership of its descriptor: give it a second one on the folder.
        let fd = open_raw(self.raw(), c".", DIR_FLAGS & !libc::O_NOFOLLOW)?;
        // SAFETY: `fd` is an open folder descriptor; on success the stream owns it.
        let stream = unsafe { libc::fdopendir(fd.as_raw_fd()) };
        if stream.is_null() {
            return Err(last_errno());
        }
        std::mem::forget(fd);
        let mut out = Vec::new();
        let result = loop {
            // readdir signals an error (as opposed to the end) only through errno.
            // SAFETY: errno is thread-local.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is an open directory stream used by this thread alone.
            let ent = unsafe { libc::readdir(stream) };
            if ent.is_null() {
                let errno = last_errno();
                break if errno == 0 { Ok(()) } else { Err(errno) };
            }
            // SAFETY: readdir returned a valid entry whose name is NUL-terminated; it stays
            // valid until the next readdir on the stream.
            let (name, d_type) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let kind = match d_type {
                libc::DT_REG => FileKind::Regular,
                libc::DT_DIR => FileKind::Directory,
                libc::DT_LNK => FileKind::Symlink,
                libc::DT_FIFO => FileKind::Fifo,
                libc::DT_SOCK => FileKind::Socket,
                libc::DT_CHR => FileKind::CharDevice,
                libc::DT_BLK => FileKind::BlockDevice,
                // DT_UNKNOWN: the file system does not say; ask.
                _ => match fstatat_raw(self.raw(), name, false) {
                    Ok(st) => st.kind,
                    Err(libc::ENOENT) => continue,
                    Err(e) => break Err(e),
                },
            };
            out.push((OsString::from_vec(bytes.to_vec()), kind));
        };
        // SAFETY: `stream` is open and not used after this; closedir closes its descriptor.
        unsafe { libc::closedir(stream) };
        result.map(|()| out)
    }

    /// Removes `name` from this folder: an empty folder when `dir`, a file otherwise.
    pub fn remove(&self, name: &OsStr, dir: bool) -> Result<(), i32> {
        let c = component(name)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: `c` is NUL-terminated and the descriptor is open.
        retry(|| unsafe { libc::unlinkat(self.raw(), c.as_ptr(), flags) }).map(drop)
    }

    /// Takes an exclusive lock on this folder, without waiting: `Err(EWOULDBLOCK)` when
    /// another holder (in this process or another) has it. See [`DirLock`].
    pub fn lock(&self) -> Result<DirLock, i32> {
        DirLock::acquire(self)
    }

    /// The descriptor, for calls relative to the folder.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An exclusive lock on a folder, released when dropped, that neither deleting a file nor
/// forking the process can defeat.
///
/// The lock is a `flock` on a descriptor of the folder itself (its own open file, opened
/// O_CLOEXEC and used for nothing else), so there is no lock file that someone could
/// delete to let a second holder in. Why flock and how fork is handled:
/// - A classic POSIX record lock (F_SETLK) is not inherited by fork, but it needs a
///   descriptor open for writing (a folder cannot be), and it is released when the process
///   closes *any* descriptor of the file, which any `read_dir` of the folder would do.
/// - An OFD lock (F_OFD_SETLK) or a flock belongs to the open file, which a fork shares
///   with the child: a child that never calls libswapper would keep the folder locked
///   after the parent has let it go. O_CLOEXEC does not help (it acts on exec only).
/// - So: flock, plus a `pthread_atfork` child handler that closes, in the child, the
///   descriptor of every lock the process holds. The child then holds no reference to the
///   lock's open file and the lock ends when the parent drops it. The registry of lock
///   descriptors is guarded by a spin flag that the prepare handler takes, so no lock is
///   half-registered at the moment of the fork; the child handler only calls `close`
///   (async-signal-safe) and frees nothing.
///
/// A child made by a raw `clone`/`fork` system call (bypassing libc's fork, so no atfork
/// handler runs) keeps the lock until it exits or execs, as with any flock.
#[derive(Debug)]
pub struct DirLock {
    fd: RawFd,
}

/// The descriptors of the locks this process holds.
struct Registry {
    busy: AtomicBool,
    fds: UnsafeCell<Vec<RawFd>>,
}

// SAFETY: `fds` is only touched by whoever holds `busy` (see `with_registry` and the
// fork handlers).
unsafe impl Sync for Registry {}

static REGISTRY: Registry = Registry {
    busy: AtomicBool::new(false),
    fds: UnsafeCell::new(Vec::new()),
};
/// pthread_atfork's result, registered once.
static ATFORK: OnceLock<libc::c_int> = OnceLock::new();

fn registry_acquire() {
    while REGISTRY
        .busy
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
}

fn registry_release() {
    REGISTRY.busy.store(false, Ordering::Release);
}

fn with_registry<R>(f: impl FnOnce(&mut Vec<RawFd>) -> R) -> R {
    registry_acquire();
    // SAFETY: `busy` is held, so nobody else touches the vector.
    let r = f(unsafe { &mut *REGISTRY.fds.get() });
    registry_release();
    r
}

extern "C" fn atfork_prepare() {
    registry_acquire();
}

extern "C" fn atfork_parent() {
    registry_release();
}

extern "C" fn atfork_child() {
    // SAFETY: the prepare handler took `busy` before the fork, so the vector is consistent
    // and this (the child's only) thread owns it.
    let fds = unsafe { &mut *REGISTRY.fds.get() };
    for &fd in fds.iter() {
        // SAFETY: `fd` is a lock descriptor inherited from the parent; the child's copy of
        // its DirLock finds it gone from the registry and does not close it again.
        unsafe { libc::close(fd) };
    }
    fds.clear();
    registry_release();
}

impl DirLock {
    fn acquire(dir: &Dir) -> Result<DirLock, i32> {
        let rc = *ATFORK.get_or_init(|| {
            // SAFETY: the handlers are `extern "C"` functions that live for the whole program.
            unsafe { libc::pthread_atfork(Some(atfork_prepare), Some(atfork_parent), Some(atfork_child)) }
        });
        if rc != 0 {
            return Err(rc);
        }
        // Open, lock and register inside the registry's critical section: a fork cannot
        // happen in between and leave the child holding an unregistered lock descriptor.
        with_registry(|fds| {
            fds.try_reserve(1).map_err(|_| libc::ENOMEM)?;
            let fd = open_raw(dir.raw(), c".", DIR_FLAGS & !libc::O_NOFOLLOW)?;
            // SAFETY: flock on an open descriptor touches no memory.
            retry(|| unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })?;
            let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
            fds.push(raw);
            Ok(DirLock { fd: raw })
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        with_registry(|fds| {
            // In a forked child the atfork handler has already closed the descriptor (and
            // its number may have been reused): close only a descriptor still registered.
            if let Some(i) = fds.iter().position(|&fd| fd == self.fd) {
                fds.swap_remove(i);
                // SAFETY: the descriptor is ours (registered) and closed exactly once.
                unsafe { libc::close(self.fd) };
            }
        });
    }
}

/// Opens a file: `path` itself when `dir` is `None`, or `path`'s last component inside
/// the folder `dir` (openat; `path` then only names the file for fault injection). A FIFO
/// or any other file that is not regular is refused (`NotRegular`) without blocking; the
/// descriptor returned is blocking, O_CLOEXEC.
pub fn open(dir: Option<&Dir>, path: &Path, mode: OpenMode) -> Result<Opened, OpenError> {
    if let Some(Fault::Errno(e)) = fault::check(Call::Open, path) {
        return Err(OpenError::Errno(e));
    }
    if mode.direct {
        if let Some(Fault::Errno(e)) = fault::check(Call::OpenDirect, path) {
            return Err(OpenError::Errno(e));
        }
    }
    let (dirfd, c) = match dir {
        Some(d) => {
            let name = path.file_name().ok_or(OpenError::Errno(libc::EINVAL))?;
            (d.raw(), component(name).map_err(OpenError::Errno)?)
        }
        None => (
            libc::AT_FDCWD,
            cstr(path.as_os_str().as_bytes()).map_err(OpenError::Errno)?,
        ),
    };
    let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
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
    open_checked(dirfd, &c, flags, !mode.nofollow, mode.direct)
}

/// Opens `c` relative to `dirfd` with `flags` (which hold O_NONBLOCK), refuses what is not
/// a regular file, and makes the descriptor blocking again (keeping O_DIRECT when
/// `direct`). `follow`: whether the name's last component may be a symbolic link.
fn open_checked(
    dirfd: RawFd,
    c: &CStr,
    flags: libc::c_int,
    follow: bool,
    direct: bool,
) -> Result<Opened, OpenError> {
    let fd = match open_raw(dirfd, c, flags) {
        Ok(fd) => fd,
        // What a non-regular file gives instead of an open: a FIFO for writing without a
        // reader (ENXIO), a folder for writing (EISDIR), a socket (ENXIO), a device without
        // a driver (ENXIO, ENODEV), a symbolic link under O_NOFOLLOW (ELOOP).
        Err(e @ (libc::ENXIO | libc::EISDIR | libc::ENODEV | libc::ELOOP | libc::EOPNOTSUPP)) => {
            return Err(match fstatat_raw(dirfd, c, follow) {
                Ok(st) if !st.is_file() => OpenError::NotRegular(st.kind),
                _ => OpenError::Errno(e),
            })
        }
        Err(e) => return Err(OpenError::Errno(e)),
    };
    let st = fstat_raw(fd.as_raw_fd()).map_err(OpenError::Errno)?;
    if !st.is_file() {
        return Err(OpenError::NotRegular(st.kind));
    }
    // Back to blocking I/O (io_uring would otherwise answer EAGAIN instead of waiting).
    // F_SETFL sets the status flags as a whole: keep O_DIRECT, drop O_NONBLOCK.
    let status = if direct { libc::O_DIRECT } else { 0 };
    // SAFETY: F_SETFL on an open descriptor touches no memory of ours.
    retry(|| unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, status) }).map_err(OpenError::Errno)?;
    Ok(Opened { fd, size: st.size })
}

/// What the open file `fd` is: kind, size and identity (fstat).
pub fn fstat(fd: &OwnedFd) -> Result<Stat, i32> {
    fstat_raw(fd.as_raw_fd())
}

/// Opens the regular file `name` inside `dir` for reading and writing, not following a
/// symbolic link, with O_DIRECT when `direct`; with `create`, the file is created (mode
/// 0600) and must not exist yet (EEXIST). What is not a regular file is refused without
/// blocking, as by [`open`].
pub fn open_read_write(dir: &Dir, name: &OsStr, direct: bool, create: bool) -> Result<Opened, OpenError> {
    let path = Path::new(name);
    if let Some(Fault::Errno(e)) = fault::check(Call::Open, path) {
        return Err(OpenError::Errno(e));
    }
    if direct {
        if let Some(Fault::Errno(e)) = fault::check(Call::OpenDirect, path) {
            return Err(OpenError::Errno(e));
        }
    }
    let c = component(name).map_err(OpenError::Errno)?;
    let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_RDWR | libc::O_NOFOLLOW;
    if create {
        flags |= libc::O_CREAT | libc::O_EXCL;
    }
    if direct {
        flags |= libc::O_DIRECT;
    }
    open_checked(dir.raw(), &c, flags, false, direct)
}

/// Gives the open regular file `fd` the size `to` (from `from`, its size now) with the
/// blocks reserved (`fallocate` mode 0), so that writes below the new size are not
/// extending writes. A file system that cannot preallocate (EOPNOTSUPP) gets the size
/// alone (ftruncate; the blocks come with the writes). ENOSPC, EDQUOT and EFBIG give back
/// what a failed fallocate reserved past `from` (a hole is punched there) and are
/// returned; so is any other errno.
pub fn extend(fd: &OwnedFd, from: u64, to: u64) -> Result<(), i32> {
    if to <= from {
        return Ok(());
    }
    let (Ok(start), Ok(count), Ok(end)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to - from),
        libc::off_t::try_from(to),
    ) else {
        return Err(libc::EFBIG);
    };
    // SAFETY: `fd` is open; fallocate touches no memory of ours.
    match retry(|| unsafe { libc::fallocate(fd.as_raw_fd(), 0, start, count) }) {
        Ok(_) => Ok(()),
        Err(libc::EOPNOTSUPP) => {
            // SAFETY: `fd` is open; ftruncate touches no memory of ours.
            retry(|| unsafe { libc::ftruncate(fd.as_raw_fd(), end) }).map(drop)
        }
        Err(e @ (libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) => {
            // SAFETY: as above; only the range past the old end, which held no data, is
            // punched (ext4 keeps what a failed fallocate got).
            unsafe {
                libc::fallocate(
                    fd.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    start,
                    count,
                )
            };
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Makes bytes `offset..offset + len` of the open regular file `fd` read as zeros, by the
/// file system and not by writing zeros: FALLOC_FL_ZERO_RANGE where the file system has
/// it (ext4, XFS), otherwise a punched hole whose blocks are reserved again (tmpfs,
/// btrfs). The file's size does not change. The errno of the last call that failed.
pub fn zero_range(fd: &OwnedFd, offset: u64, len: u64) -> Result<(), i32> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(start), Ok(count)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(libc::EFBIG);
    };
    let raw = fd.as_raw_fd();
    // SAFETY: `raw` is open; fallocate touches no memory of ours.
    match retry(|| unsafe {
        libc::fallocate(
            raw,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            start,
            count,
        )
    }) {
        Ok(_) => return Ok(()),
        Err(libc::EOPNOTSUPP | libc::EINVAL) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: as above.
    retry(|| unsafe {
        libc::fallocate(
            raw,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            start,
            count,
        )
    })?;
    // SAFETY: as above; reserves the punched blocks again (they read as zeros).
    match retry(|| unsafe { libc::fallocate(raw, libc::FALLOC_FL_KEEP_SIZE, start, count) }) {
        Ok(_) | Err(libc::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The absolute path of `path` with every symbolic link, "." and ".." resolved
/// (realpath); the error is the errno.
pub fn canonical(path: &Path) -> Result<PathBuf, i32> {
    std::fs::canonicalize(path).map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))
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
        Some(Fault::DelayMs(ms)) => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            usize::MAX
        }
        Some(Fault::Panic) => panic!("injected panic before the transfer of {}", path.display()),
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

#[cfg(test)]
mod tests {
    use super::*;

    const W: OpenMode = OpenMode {
        write: true,
        direct: false,
        nofollow: true,
    };

    #[test]
    fn open_creates_0600_and_refuses_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        drop(open(None, &p, W).unwrap());
        let perm = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(perm, 0o600);
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert_eq!(
            open(None, &link, W).err(),
            Some(OpenError::NotRegular(FileKind::Symlink))
        );
        assert_eq!(
            open(None, &dir.path().join("missing"), OpenMode { write: false, ..W }).err(),
            Some(OpenError::Errno(libc::ENOENT))
        );
    }

    #[test]
    fn opens_relative_to_the_folder_and_refuses_non_regular_files_without_blocking() {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("d")).unwrap();
        let d = Dir::open(&base.path().join("d")).unwrap();
        // Only the last component counts, relative to the folder.
        let f = open(Some(&d), Path::new("/nowhere/f"), W).unwrap();
        assert_eq!(f.size, 0);
        assert!(base.path().join("d/f").is_file());
        // SAFETY: F_GETFL on an open descriptor.
        let fl = unsafe { libc::fcntl(f.fd.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_NONBLOCK, 0, "the descriptor is blocking again");
        let fifo = CString::new(base.path().join("d/p").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for write in [false, true] {
            let mode = OpenMode { write, ..W };
            assert_eq!(
                open(Some(&d), Path::new("p"), mode).err(),
                Some(OpenError::NotRegular(FileKind::Fifo))
            );
            assert_eq!(
                open(None, &base.path().join("d/p"), mode).err(),
                Some(OpenError::NotRegular(FileKind::Fifo))
            );
        }
        std::fs::create_dir(base.path().join("d/sub")).unwrap();
        for write in [false, true] {
            assert_eq!(
                open(Some(&d), Path::new("sub"), OpenMode { write, ..W }).err(),
                Some(OpenError::NotRegular(FileKind::Directory))
            );
        }
        let mut names: Vec<_> = d.entries().unwrap();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            names,
            vec![
                ("f".into(), FileKind::Regular),
                ("p".into(), FileKind::Fifo),
                ("sub".into(), FileKind::Directory)
            ]
        );
        assert_eq!(d.stat(OsStr::new("p")).unwrap().kind, FileKind::Fifo);
        d.remove(OsStr::new("sub"), true).unwrap();
        d.remove(OsStr::new("p"), false).unwrap();
        assert_eq!(d.stat(OsStr::new("p")).err(), Some(libc::ENOENT));
        assert_eq!(d.open_dir(OsStr::new("..")).err(), Some(libc::EINVAL));
    }

    #[test]
    fn a_folder_lock_excludes_a_second_holder_until_dropped() {
        let base = tempfile::tempdir().unwrap();
        let d = Dir::open(base.path()).unwrap();
        let again = Dir::open(base.path()).unwrap();
        let lock = d.lock().unwrap();
        assert_eq!(again.lock().err(), Some(libc::EWOULDBLOCK));
        assert_eq!(
            d.lock().err(),
            Some(libc::EWOULDBLOCK),
            "each lock is its own open file"
        );
        drop(lock);
        drop(again.lock().unwrap());
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
        let fd = open(None, &p, mode).unwrap().fd;
        assert_eq!(preallocate(&fd, 0, 0), Ok(false));
        assert_eq!(preallocate(&fd, 4096, 1 << 20), Ok(true));
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 4096 + (1 << 20));
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= 1 << 20);
        // Inside the file already: nothing to do.
        assert_eq!(preallocate(&fd, 0, 4096 + (1 << 20)), Ok(false));
        assert_eq!(preallocate(&fd, u64::MAX, 2), Err(libc::EFBIG));
    }
}
