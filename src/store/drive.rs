//! One drive of a store: its locked rank folder, its own I/O engine (its own queue and
//! workers, so a slow drive does not hold up the others' requests) and its extent files,
//! held open for the store's life.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::folder::RankFolder;
use crate::config::{DirectIo, IoConfig};
use crate::io::{HeldFile, IoEngine};
use crate::status::{Error, Result, Status};
use crate::sys::file::{self, OpenError};

/// An extent file, held open.
#[derive(Debug)]
pub struct ExtentFile {
    /// Its name in the rank folder (`extent-<k>.swp`).
    pub name: String,
    /// Its descriptors, shared with the operations on it.
    pub held: Arc<HeldFile>,
    /// Its identity when created: the name must still lead to it.
    pub dev: u64,
    /// As `dev`.
    pub ino: u64,
}

impl ExtentFile {
    /// The file's path (for messages).
    pub fn path(&self) -> &Path {
        self.held.path()
    }
}

/// The name of extent file `k`.
pub fn extent_name(k: usize) -> String {
    format!("extent-{k}.swp")
}

/// One drive.
pub struct Drive {
    /// Its index in the store.
    pub index: usize,
    // Field order: the engines are dropped (drained) before the folder is unlocked.
    engine: IoEngine,
    /// A second engine for writes, when the store keeps them out of the reads' queue
    /// ([`super::Store::open_split`]); None: writes share `engine`.
    writer: Option<IoEngine>,
    folder: RankFolder,
    direct: DirectIo,
    /// Held while one thread grows this drive's space (fallocate, a new file): not a
    /// bookkeeping lock, nobody else waits for it but another grower of this drive.
    grow: Mutex<()>,
}

impl Drive {
    /// Locks and empties the rank folder `parts` under `root` and starts the drive's engine
    /// (and, with `split`, a second one for writes).
    pub fn open(index: usize, root: &Path, parts: &[String], io: IoConfig, split: bool) -> Result<Drive> {
        let folder = RankFolder::open(root, parts)?;
        let engine = IoEngine::new(io)?;
        let writer = if split { Some(IoEngine::new(io)?) } else { None };
        Ok(Drive {
            index,
            engine,
            writer,
            folder,
            direct: io.direct_io,
            grow: Mutex::new(()),
        })
    }

    /// The rank folder's path.
    pub fn path(&self) -> &Path {
        self.folder.path()
    }

    /// The held rank folder.
    pub fn folder(&self) -> &RankFolder {
        &self.folder
    }

    /// The drive's engine (its reads', and its writes' too unless split).
    pub fn engine(&self) -> &IoEngine {
        &self.engine
    }

    /// The engine an operation goes to: writes to the write engine when there is one.
    pub fn engine_for(&self, write: bool) -> &IoEngine {
        match (&self.writer, write) {
            (Some(w), true) => w,
            _ => &self.engine,
        }
    }

    /// Every engine of the drive (one, or the read and the write engine).
    pub fn engines(&self) -> impl Iterator<Item = &IoEngine> {
        std::iter::once(&self.engine).chain(self.writer.as_ref())
    }

    /// Serialises growth of this drive.
    pub fn growing(&self) -> MutexGuard<'_, ()> {
        self.grow.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A short description for messages: "drive 1 (/nvme1/zero_stage_3/.../rank0)".
    pub fn describe(&self) -> String {
        format!("drive {} ({})", self.index, self.path().display())
    }

    /// Creates extent file `k` (O_DIRECT as the settings say), held open, with `size`
    /// bytes reserved. File-system calls: never called under the store's lock.
    pub fn create_file(&self, k: usize, size: u64) -> Result<ExtentFile> {
        let name = extent_name(k);
        let path: PathBuf = self.path().join(&name);
        let dir = self.folder.dir();
        let fail = |what: &str, e: OpenError| match e {
            OpenError::Errno(errno) => Error::os(what, &path, None, errno),
            OpenError::NotRegular(kind) => Error::new(
                Status::CorruptData,
                format!(
                    "cannot {what}: {} is {} (not a regular file), put in the store's folder by someone else",
                    path.display(),
                    kind.describe()
                ),
            ),
        };
        let buffered = match file::open_read_write(dir, OsStr::new(&name), false, true) {
            Ok(f) => f,
            // The folder was emptied at open: whatever holds the name now was put there
            // behind the store's back. Never opened (a FIFO cannot block), never reused.
            Err(OpenError::Errno(libc::EEXIST)) => {
                let what = match self.folder.stat(&name) {
                    Ok(st) => st.kind.describe(),
                    Err(_) => "something",
                };
                return Err(Error::new(
                    Status::CorruptData,
                    format!(
                        "cannot create the extent file {}: {what} was put there behind the store's back; remove it",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(fail("create the extent file", e)),
        };
        let direct = match self.direct {
            DirectIo::Off => None,
            want => match file::open_read_write(dir, OsStr::new(&name), true, false) {
                Ok(f) => Some(f.fd),
                Err(OpenError::Errno(libc::EINVAL)) if want == DirectIo::Auto => {
                    crate::log!(
                        Info,
                        "the file system of {} does not support O_DIRECT; using buffered I/O there",
                        path.display()
                    );
                    None
                }
                Err(OpenError::Errno(libc::EINVAL)) => {
                    return Err(Error::new(
                        Status::Unsupported,
                        format!(
                            "the file system of {} does not support O_DIRECT (direct_io is on; set it to auto or off)",
                            path.display()
                        ),
                    ))
                }
                Err(e) => return Err(fail("open with O_DIRECT", e)),
            },
        };
        let st = file::fstat(&buffered.fd).map_err(|e| Error::os("cannot stat", &path, None, e))?;
        if let Some(fd) = &direct {
            let d = file::fstat(fd).map_err(|e| Error::os("cannot stat", &path, None, e))?;
            if (d.dev, d.ino) != (st.dev, st.ino) {
                return Err(Error::new(
                    Status::CorruptData,
                    format!(
                        "the extent file {} was replaced while it was being created",
                        path.display()
                    ),
                ));
            }
        }
        file::extend(&buffered.fd, st.size, size)
            .map_err(|e| Error::os(&format!("reserve {size} bytes in"), &path, None, e))?;
        Ok(ExtentFile {
            name,
            held: Arc::new(HeldFile::new(path, direct, buffered.fd)),
            dev: st.dev,
            ino: st.ino,
        })
    }

    /// Checks that `file`'s name in the rank folder still leads to the held file and that
    /// the held file still holds `capacity` bytes: `CorruptData` naming the file and what
    /// happened otherwise. Two system calls (fstatat, fstat); never under the store's lock.
    pub fn check_file(&self, file: &ExtentFile, capacity: u64) -> Result<()> {
        let path = file.path();
        match self.folder.stat(&file.name) {
            Err(libc::ENOENT) => {
                return Err(Error::new(
                    Status::CorruptData,
                    format!("the extent file {} was deleted", path.display()),
                ))
            }
            Err(e) => return Err(Error::os("cannot stat", path, None, e)),
            Ok(st) if !st.is_file() => {
                return Err(Error::new(
                    Status::CorruptData,
                    format!(
                        "the extent file {} was replaced by {}",
                        path.display(),
                        st.kind.describe()
                    ),
                ))
            }
            Ok(st) if (st.dev, st.ino) != (file.dev, file.ino) => {
                return Err(Error::new(
                    Status::CorruptData,
                    format!("the extent file {} was replaced by another file", path.display()),
                ))
            }
            Ok(_) => {}
        }
        let st = file::fstat(file.held.fd()).map_err(|e| Error::os("cannot stat", path, None, e))?;
        if st.size < capacity {
            return Err(Error::new(
                Status::CorruptData,
                format!(
                    "the extent file {} was truncated: it holds {} bytes, the store reserved {capacity}",
                    path.display(),
                    st.size
                ),
            ));
        }
        Ok(())
    }
}
