//! One read or write operation: its files, how it splits into requests, and its outcome.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use super::held::HeldFile;
use super::race::Lane;
use crate::config::IO_ALIGNMENT;
use crate::status::{Error, Result, Status};
use crate::sys::file::{self, Dir, OpenError, OpenMode};
use crate::sys::RawBuf;

/// How an operation's bytes split into requests. With O_DIRECT, the unaligned head
/// (up to the first aligned file offset) and tail (after the last one) are requests of
/// their own, so that every body request starts and ends on an aligned file offset;
/// the body is cut into `block` bytes. Without O_DIRECT the whole range is cut into
/// `block` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Bytes before the aligned body.
    pub head: u64,
    /// Bytes of the aligned body.
    pub body: u64,
    /// Bytes after the aligned body.
    pub tail: u64,
    /// Bytes per body request.
    pub block: u64,
}

/// Whether a transfer of `len` bytes between `buf` and file offset `offset` may go with
/// O_DIRECT: address, offset and length all aligned to [`IO_ALIGNMENT`].
#[inline]
pub(crate) fn direct_aligned(buf: RawBuf, offset: u64, len: u64) -> bool {
    buf.addr() as u64 % IO_ALIGNMENT == 0 && offset % IO_ALIGNMENT == 0 && len % IO_ALIGNMENT == 0
}

/// One request of a plan: `len` bytes at `file_offset`, `buf_offset` bytes into the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Where in the file.
    pub file_offset: u64,
    /// Where in the caller's buffer, from its start.
    pub buf_offset: u64,
    /// How many bytes.
    pub len: u64,
}

impl Plan {
    /// The plan for `len` bytes at `offset`.
    pub fn new(offset: u64, len: u64, block: u64, direct: bool) -> Plan {
        let end = offset + len;
        let a_start = offset.div_ceil(IO_ALIGNMENT) * IO_ALIGNMENT;
        let a_end = end / IO_ALIGNMENT * IO_ALIGNMENT;
        if !direct || a_start >= a_end {
            return Plan {
                head: 0,
                body: len,
                tail: 0,
                block,
            };
        }
        Plan {
            head: a_start - offset,
            body: a_end - a_start,
            tail: end - a_end,
            block,
        }
    }

    fn body_chunks(&self) -> usize {
        self.body.div_ceil(self.block) as usize
    }

    /// How many requests.
    pub fn count(&self) -> usize {
        usize::from(self.head > 0) + self.body_chunks() + usize::from(self.tail > 0)
    }

    /// Request `i` (0-based) of an operation at file `offset`.
    pub fn chunk(&self, offset: u64, i: usize) -> Chunk {
        let mut i = i;
        if self.head > 0 {
            if i == 0 {
                return Chunk {
                    file_offset: offset,
                    buf_offset: 0,
                    len: self.head,
                };
            }
            i -= 1;
        }
        if i < self.body_chunks() {
            let start = i as u64 * self.block;
            return Chunk {
                file_offset: offset + self.head + start,
                buf_offset: self.head + start,
                len: self.block.min(self.body - start),
            };
        }
        Chunk {
            file_offset: offset + self.head + self.body,
            buf_offset: self.head + self.body,
            len: self.tail,
        }
    }
}

/// Writes shorter than this are not preallocated: measured on ext4 (tools/vs_deepspeed.py),
/// fallocate made 2048 new files of 64 KiB 0.54x as fast and of 8 KiB 0.7x (one request
/// each, so there is nothing to gain from keeping them off the kernel workers), while a
/// new 1 GiB file became 1.45x as fast at 0.12x the CPU. Sizes in between are unmeasured.
const PREALLOCATE_MIN: u64 = 1 << 20;

/// Preallocates a write of at least [`PREALLOCATE_MIN`] bytes that extends its file
/// ([`file::preallocate`]), unless the environment variable `SWAPPER_PREALLOCATE` is `0`
/// (for comparing the two in the benchmarks). Errors only when the write cannot fit
/// (ENOSPC, EDQUOT, EFBIG).
fn preallocate(fd: &OwnedFd, req: &Request<'_>) -> std::result::Result<(), i32> {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| std::env::var_os("SWAPPER_PREALLOCATE").is_none_or(|v| v != "0"));
    if enabled && req.len >= PREALLOCATE_MIN {
        file::preallocate(fd, req.offset, req.len)?;
    }
    Ok(())
}

/// What an operation asks for.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Write (true) or read (false).
    pub write: bool,
    /// The caller's buffer.
    pub buf: RawBuf,
    /// Bytes to move.
    pub len: u64,
    /// The file. With `dir`, only its last component is opened (inside `dir`), and the
    /// whole path names the file in messages and fault-injection rules.
    pub path: &'a Path,
    /// The folder holding the file, held open: the file is opened relative to it (openat),
    /// so a chdir, a renamed folder or a folder replaced by a symbolic link cannot redirect
    /// the I/O. A file there that is not regular is reported as `CorruptData` (someone
    /// replaced the caller's own file); without `dir` it is `InvalidArgument`.
    pub dir: Option<&'a Dir>,
    /// Where in the file.
    pub offset: u64,
    /// Refuse a path whose last component is a symbolic link.
    pub nofollow: bool,
    /// Compute a crc32c of the first this-many bytes of the buffer, request by request in
    /// the workers (before a write is submitted, after a read completes), so that the
    /// checksum overlaps the I/O instead of adding to it. [`crate::io::Ticket::checksum`]
    /// gives it once the operation has finished.
    pub checksum_len: Option<u64>,
}

/// What an operation on a [`HeldFile`] asks for: as [`Request`], without the file's
/// path and folder (the file is open already, and is not opened again).
#[derive(Clone, Copy, Debug)]
pub struct HeldRequest<'a> {
    /// Write (true) or read (false).
    pub write: bool,
    /// The caller's buffer.
    pub buf: RawBuf,
    /// Bytes to move.
    pub len: u64,
    /// The file, held open by its owner.
    pub file: &'a Arc<HeldFile>,
    /// Where in the file.
    pub offset: u64,
    /// As [`Request::checksum_len`].
    pub checksum_len: Option<u64>,
}

/// The descriptors of an operation: opened for it (from a [`Request`]), or its owner's
/// (a [`HeldRequest`]).
enum Files {
    Opened {
        nofollow: bool,
        dir: Option<Dir>,
        direct: Option<OwnedFd>,
        buffered: OnceLock<std::result::Result<OwnedFd, OpenError>>,
    },
    Held(Arc<HeldFile>),
}

/// The error of a failed open of `path`. A file that is not regular is refused: inside a
/// held folder (`in_dir`) it is the caller's own file replaced by something else
/// (`CorruptData`); a path the caller named is the wrong kind of file (`InvalidArgument`).
fn open_error(what: &str, path: &Path, in_dir: bool, e: OpenError) -> Error {
    match e {
        OpenError::Errno(errno) => Error::os(what, path, None, errno),
        OpenError::NotRegular(kind) if in_dir => Error::new(
            Status::CorruptData,
            format!(
                "cannot {what}: {} was replaced by {} (not a regular file)",
                path.display(),
                kind.describe()
            ),
        ),
        OpenError::NotRegular(kind) => Error::new(
            Status::InvalidArgument,
            format!(
                "cannot {what}: {} is {}, not a regular file",
                path.display(),
                kind.describe()
            ),
        ),
    }
}

#[derive(Default)]
struct Outcome {
    finished: bool,
    error: Option<Error>,
    more_errors: u64,
    /// Threads blocked in [`Op::wait`]: the last request wakes them only if there are any
    /// (a notify is a system call even with nobody waiting).
    waiters: usize,
}

/// An operation under way. Workers claim its requests one by one (under the engine's
/// queue lock) and report each one's end; the last one finishes the operation.
pub struct Op {
    pub(crate) write: bool,
    pub(crate) path: PathBuf,
    pub(crate) buf: RawBuf,
    pub(crate) offset: u64,
    pub(crate) plan: Plan,
    /// Copy the body through a bounce buffer: O_DIRECT with a misaligned caller buffer.
    pub(crate) bounce: bool,
    files: Files,
    /// Bytes covered by the checksum, and each request's crc32c of its part of them.
    checksum_len: Option<u64>,
    crcs: Vec<AtomicU32>,
    /// The next request to claim (touched only under the engine's queue lock).
    pub(crate) next: AtomicUsize,
    /// The race this operation is a lane of ([`super::race`]): its requests are claimed
    /// through the race, not in order.
    pub(crate) race: Option<Lane>,
    remaining: AtomicUsize,
    outcome: Mutex<Outcome>,
    done: Condvar,
}

impl Op {
    /// Builds an operation: opens its file (O_DIRECT where asked and possible), checks a
    /// read against the file's size, and plans its requests. `direct` is `None` for
    /// buffered I/O, `Some(required)` for O_DIRECT, where `required` makes a file system
    /// without O_DIRECT an error instead of a fallback.
    pub(crate) fn new(req: &Request<'_>, block: u64, direct: Option<bool>) -> Result<(Op, bool)> {
        let what = if req.write {
            "open for writing"
        } else {
            "open for reading"
        };
        let mode = OpenMode {
            write: req.write,
            direct: false,
            nofollow: req.nofollow,
        };
        let mut fell_back = false;
        let mut size = None;
        let direct_fd = match direct {
            None => None,
            Some(required) => match file::open(req.dir, req.path, OpenMode { direct: true, ..mode }) {
                Ok(f) => {
                    size = Some(f.size);
                    Some(f.fd)
                }
                Err(OpenError::Errno(libc::EINVAL)) if !required => {
                    fell_back = true;
                    None
                }
                Err(OpenError::Errno(libc::EINVAL)) => {
                    return Err(Error::new(
                        crate::Status::Unsupported,
                        format!(
                            "the file system of {} does not support O_DIRECT (direct_io is on; set it to auto or off)",
                            req.path.display()
                        ),
                    ))
                }
                Err(e) => return Err(open_error(what, req.path, req.dir.is_some(), e)),
            },
        };
        let buffered_fd = OnceLock::new();
        if direct_fd.is_none() {
            let f = file::open(req.dir, req.path, mode)
                .map_err(|e| open_error(what, req.path, req.dir.is_some(), e))?;
            size = Some(f.size);
            let _ = buffered_fd.set(Ok(f.fd));
        }
        let end = req.offset.checked_add(req.len).ok_or_else(|| {
            Error::invalid(format!(
                "offset {} + length {} overflows for {}",
                req.offset,
                req.len,
                req.path.display()
            ))
        })?;
        if req.write {
            let fd = match (&direct_fd, buffered_fd.get()) {
                (Some(fd), _) | (None, Some(Ok(fd))) => fd,
                _ => unreachable!("a file descriptor was opened above"),
            };
            preallocate(fd, req).map_err(|e| {
                Error::os(
                    &format!("reserve {} bytes for writing", req.len),
                    req.path,
                    Some(req.offset),
                    e,
                )
            })?;
        } else {
            let size = size.unwrap_or(0);
            if req.len > 0 && end > size {
                return Err(Error::new(
                    crate::Status::IoError,
                    format!(
                        "read past end of file: {} holds {size} bytes, the read asks for bytes {} to {end}",
                        req.path.display(),
                        req.offset
                    ),
                ));
            }
        }
        let files = Files::Opened {
            nofollow: req.nofollow,
            dir: req.dir.cloned(),
            direct: direct_fd,
            buffered: buffered_fd,
        };
        let op = Op::build(
            req.write,
            req.path,
            req.buf,
            req.offset,
            req.len,
            req.checksum_len,
            block,
            files,
        );
        Ok((op, fell_back))
    }

    /// Builds an operation on a file its owner holds open: nothing is opened, and a read is
    /// not checked against the file's size here (the owner knows what it wrote; a read
    /// that meets the end of the file fails in the worker, naming the file and offset).
    pub(crate) fn held(req: &HeldRequest<'_>, block: u64) -> Result<Op> {
        req.offset.checked_add(req.len).ok_or_else(|| {
            Error::invalid(format!(
                "offset {} + length {} overflows for {}",
                req.offset,
                req.len,
                req.file.path().display()
            ))
        })?;
        let path = req.file.path().to_path_buf();
        Ok(Op::build(
            req.write,
            &path,
            req.buf,
            req.offset,
            req.len,
            req.checksum_len,
            block,
            Files::Held(Arc::clone(req.file)),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        write: bool,
        path: &Path,
        buf: RawBuf,
        offset: u64,
        len: u64,
        checksum_len: Option<u64>,
        block: u64,
        files: Files,
    ) -> Op {
        let direct = match &files {
            Files::Opened { direct, .. } => direct.is_some(),
            Files::Held(f) => f.is_direct(),
        };
        let plan = Plan::new(offset, len, block, direct);
        let bounce = direct && (buf.addr() as u64 + plan.head) % IO_ALIGNMENT != 0;
        let count = plan.count();
        Op {
            write,
            path: path.to_path_buf(),
            buf,
            offset,
            plan,
            bounce,
            files,
            checksum_len: checksum_len.map(|n| n.min(len)),
            crcs: match checksum_len {
                Some(_) => (0..count).map(|_| AtomicU32::new(0)).collect(),
                None => Vec::new(),
            },
            next: AtomicUsize::new(0),
            race: None,
            remaining: AtomicUsize::new(count),
            outcome: Mutex::new(Outcome {
                finished: count == 0,
                ..Outcome::default()
            }),
            done: Condvar::new(),
        }
    }

    /// How many requests the operation has.
    pub(crate) fn request_count(&self) -> usize {
        self.plan.count()
    }

    /// The O_DIRECT descriptor, if the file has one.
    pub(crate) fn direct_fd(&self) -> Option<RawFd> {
        match &self.files {
            Files::Opened { direct, .. } => direct.as_ref().map(|fd| fd.as_raw_fd()),
            Files::Held(f) => f.direct_fd(),
        }
    }

    /// The buffered descriptor, opened on first use (held files have it open already).
    pub(crate) fn buffered_fd(&self) -> Result<RawFd> {
        let (nofollow, dir, buffered) = match &self.files {
            Files::Held(f) => return Ok(f.buffered_fd()),
            Files::Opened {
                nofollow,
                dir,
                buffered,
                ..
            } => (*nofollow, dir, buffered),
        };
        let fd = buffered.get_or_init(|| {
            let mode = OpenMode {
                write: self.write,
                direct: false,
                nofollow,
            };
            file::open(dir.as_ref(), &self.path, mode).map(|f| f.fd)
        });
        match fd {
            Ok(fd) => Ok(fd.as_raw_fd()),
            Err(e) => Err(open_error("open", &self.path, dir.is_some(), *e)),
        }
    }

    /// The part of request `chunk` that the checksum covers, as (buffer offset, length).
    pub(crate) fn checksum_part(&self, chunk: &Chunk) -> Option<(u64, u64)> {
        let end = self.checksum_len?;
        let start = chunk.buf_offset;
        (start < end).then(|| (start, (start + chunk.len).min(end) - start))
    }

    /// Records request `index`'s crc32c of its part.
    pub(crate) fn record_crc(&self, index: usize, crc: u32) {
        if let Some(slot) = self.crcs.get(index) {
            slot.store(crc, Ordering::Relaxed);
        }
    }

    /// Each request's part of the checksum, in order: (buffer offset, length, crc32c). A
    /// race's lane gives the parts of the requests it claimed (none before it is done).
    pub(crate) fn checksum_parts(&self) -> Vec<(u64, u64, u32)> {
        let claimed = match &self.race {
            None => 0..self.crcs.len(),
            Some(l) => match l.race.lane_taken(l.index) {
                Some((a, b)) => a..b.min(self.crcs.len()),
                None => 0..0,
            },
        };
        claimed
            .filter_map(|i| {
                let (start, len) = self.checksum_part(&self.plan.chunk(self.offset, i))?;
                Some((start, len, self.crcs[i].load(Ordering::Acquire)))
            })
            .collect()
    }

    /// Records a failed request; the first error is the operation's, later ones are counted.
    pub(crate) fn fail(&self, error: Error) {
        let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if o.error.is_none() {
            o.error = Some(error);
        } else {
            crate::log!(Debug, "further failure in the same operation: {error}");
            o.more_errors += 1;
        }
    }

    /// Marks one request finished; the last one wakes the waiters.
    pub(crate) fn finish_request(&self) {
        if let Some(l) = &self.race {
            l.race.release(l.index);
        }
        self.finish_requests(1);
    }

    /// Marks `n` requests finished at once (a race's lane: the requests its neighbours
    /// took); the last one wakes the waiters.
    pub(crate) fn finish_requests(&self, n: usize) {
        if n > 0 && self.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
            o.finished = true;
            if o.waiters > 0 {
                self.done.notify_all();
            }
        }
    }

    /// Blocks until every request has finished; returns the operation's result.
    pub(crate) fn wait(&self) -> Result<()> {
        let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        while !o.finished {
            o.waiters += 1;
            o = self.done.wait(o).unwrap_or_else(|e| e.into_inner());
            o.waiters -= 1;
        }
        match &o.error {
            None => Ok(()),
            Some(e) if o.more_errors > 0 => Err(e.clone().context(format!(
                "{} of the operation's requests failed, the first",
                o.more_errors + 1
            ))),
            Some(e) => Err(e.clone()),
        }
    }

    /// Whether every request has finished.
    pub(crate) fn is_finished(&self) -> bool {
        self.outcome.lock().unwrap_or_else(|e| e.into_inner()).finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(plan: &Plan, offset: u64) -> Vec<Chunk> {
        (0..plan.count()).map(|i| plan.chunk(offset, i)).collect()
    }

    #[test]
    fn plans_cover_the_range_exactly_once() {
        for &(offset, len) in &[
            (0u64, 0u64),
            (0, 1),
            (0, 511),
            (0, 4096),
            (3, 4096),
            (4093, 10),
            (0, (1 << 20) + 3),
            (5, 3 << 20),
            (4096, 64 << 20),
        ] {
            for direct in [false, true] {
                let plan = Plan::new(offset, len, 1 << 20, direct);
                let chunks = covered(&plan, offset);
                let mut pos = 0;
                for c in &chunks {
                    assert_eq!(c.buf_offset, pos, "{offset} {len} {direct}");
                    assert_eq!(c.file_offset, offset + pos);
                    assert!(c.len > 0 && c.len <= 1 << 20);
                    pos += c.len;
                }
                assert_eq!(pos, len, "{offset} {len} {direct}");
                if direct && offset.div_ceil(IO_ALIGNMENT) * IO_ALIGNMENT + IO_ALIGNMENT <= offset + len {
                    for c in &chunks[usize::from(plan.head > 0)..chunks.len() - usize::from(plan.tail > 0)] {
                        assert_eq!(c.file_offset % IO_ALIGNMENT, 0);
                        assert_eq!(c.len % IO_ALIGNMENT, 0);
                    }
                }
            }
        }
    }

    #[test]
    fn unaligned_tail_is_its_own_request() {
        let plan = Plan::new(0, (1 << 20) + 3, 1 << 20, true);
        assert_eq!(
            plan,
            Plan {
                head: 0,
                body: 1 << 20,
                tail: 3,
                block: 1 << 20
            }
        );
        assert_eq!(plan.count(), 2);
        let plan = Plan::new(5, 100, 1 << 20, true);
        assert_eq!(plan.count(), 1);
    }
}
