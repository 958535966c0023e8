//! One drive of a store: its locked rank folder, its own I/O engine (its own queue and
//! workers, so a slow drive does not hold up the others' requests) and its extent files,
//! held open for the store's life. It also measures its rate (bytes per second of busy
//! time, from its engine's completed requests), which the store weighs placement by.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::folder::RankFolder;
use crate::config::{DirectIo, IoConfig};
use crate::io::{Activity, HeldFile, IoEngine};
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

/// A rate sample needs at least this many bytes moved since the last one...
const SAMPLE_BYTES: u64 = 64 << 20;
/// ... and this much busy time, so that neither one request's latency nor a burst makes a
/// rate. A device that lets an idle queue start with a burst (the blkio throttle grants
/// a fresh 100 ms slice's bytes at once; drives with a write cache do similar) looks
/// faster in short samples the more it idles, so the less placement gives it: with 20 ms
/// samples, four equal drives throttled to 200 MB/s measured 245-655 MB/s and their
/// weights swung from 0.44 to 1; with 100 ms samples, 206-222 MB/s.
const SAMPLE_BUSY: Duration = Duration::from_millis(100);
/// The weight of a new sample in the moving average.
const EWMA_NEW: f64 = 0.25;

/// A drive's measured rate: an exponentially weighted moving average of samples of
/// bytes over busy time of its engine ([`IoEngine::activity`]), a sample taken whenever
/// enough new activity has accumulated since the last.
#[derive(Debug, Default)]
pub struct RateMeter {
    /// The activity at the last sample.
    last: Activity,
    /// The average, bytes per second (None before the first sample).
    average: Option<f64>,
}

impl RateMeter {
    /// Takes a sample if the engine did enough since the last one; the average.
    pub fn update(&mut self, now: Activity) -> Option<f64> {
        let bytes = now.bytes.saturating_sub(self.last.bytes);
        let busy = now.busy.saturating_sub(self.last.busy);
        if bytes >= SAMPLE_BYTES && busy >= SAMPLE_BUSY {
            let sample = bytes as f64 / busy.as_secs_f64();
            self.average = Some(match self.average {
                Some(a) => a + EWMA_NEW * (sample - a),
                None => sample,
            });
            self.last = now;
        }
        self.average
    }
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
    /// Its measured rate (a lock of its own, never held across I/O).
    rate: Mutex<RateMeter>,
    /// Extent-file checks made ([`Drive::check_file`]), for tests and statistics.
    checks: AtomicU64,
}

impl Drive {
    /// Locks and empties the rank folder `parts` under `root` and starts the drive's engine
    /// (and, with `split`, a second one for writes).
    pub fn open(index: usize, root: &Path, parts: &[String], io: IoConfig, split: bool) -> Result<Drive> {
        Self::with_folder(index, RankFolder::open(root, parts)?, io, split)
    }

    /// As [`Drive::open`], keeping what the rank folder holds ([`RankFolder::adopt`]).
    pub fn adopt(index: usize, root: &Path, parts: &[String], io: IoConfig, split: bool) -> Result<Drive> {
        Self::with_folder(index, RankFolder::adopt(root, parts)?, io, split)
    }

    fn with_folder(index: usize, folder: RankFolder, io: IoConfig, split: bool) -> Result<Drive> {
        let engine = IoEngine::new(io)?;
        // The write engine meters into the read engine's meter: the drive's rate is both
        // directions' bytes over the time either had a request in flight.
        let writer = if split { Some(engine.beside(io)?) } else { None };
        Ok(Drive {
            index,
            engine,
            writer,
            folder,
            direct: io.direct_io,
            grow: Mutex::new(()),
            rate: Mutex::new(RateMeter::default()),
            checks: AtomicU64::new(0),
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

    /// The drive's measured rate in bytes per second of busy time (None until its engines
    /// have moved enough to tell; see [`RateMeter`]). A split drive's two engines share one
    /// meter, so its writes count as well as its reads.
    pub fn rate(&self) -> Option<f64> {
        let now = self.engine.activity();
        self.rate.lock().unwrap_or_else(|e| e.into_inner()).update(now)
    }

    /// Extent-file checks made on this drive so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// A short description for messages: "drive 1 (/nvme1/zero_stage_3/.../rank0)".
    pub fn describe(&self) -> String {
        format!("drive {} ({})", self.index, self.path().display())
    }

    /// Creates extent file `k` (O_DIRECT as the settings say), held open, with `size`
    /// bytes reserved. File-system calls: never called under the store's lock.
    pub fn create_file(&self, k: usize, size: u64) -> Result<ExtentFile> {
        self.extent_file(k, size, true)
    }

    /// Opens the existing extent file `k` of an adopted folder, held open as
    /// [`Drive::create_file`] holds a new one; its size is left as it is.
    pub fn open_file(&self, k: usize) -> Result<ExtentFile> {
        self.extent_file(k, 0, false)
    }

    fn extent_file(&self, k: usize, size: u64, create: bool) -> Result<ExtentFile> {
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
        let buffered = match file::open_read_write(dir, OsStr::new(&name), false, create) {
            Ok(f) => f,
            // The folder was emptied at open: whatever holds the name now was put there
            // behind the store's back. Never opened (a FIFO cannot block), never reused.
            Err(OpenError::Errno(libc::EEXIST)) if create => {
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
            Err(e) => {
                return Err(fail(
                    if create {
                        "create the extent file"
                    } else {
                        "open the extent file"
                    },
                    e,
                ))
            }
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
        self.checks.fetch_add(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(bytes: u64, busy_ms: u64) -> Activity {
        Activity {
            bytes,
            busy: Duration::from_millis(busy_ms),
        }
    }

    #[test]
    fn the_rate_is_a_moving_average_of_bytes_over_busy_time_in_large_enough_samples() {
        let mut r = RateMeter::default();
        assert_eq!(r.update(at(0, 0)), None);
        // Too few bytes, or too little busy time: no sample yet.
        assert_eq!(r.update(at(SAMPLE_BYTES - 1, 1000)), None);
        assert_eq!(r.update(at(1 << 30, 10)), None);
        // 100 MiB in 1 s of busy time: the first sample is the average.
        let mib = 1u64 << 20;
        assert_eq!(r.update(at(100 * mib, 1000)), Some(100.0 * mib as f64));
        // The next 100 MiB took 2 s: a quarter of the way towards 50 MiB/s.
        let avg = r.update(at(200 * mib, 3000)).unwrap();
        assert!((avg - 87.5 * mib as f64).abs() < 1.0, "{avg}");
        // Nothing new: the average stays.
        assert_eq!(r.update(at(200 * mib, 3000)), Some(avg));
    }
}
