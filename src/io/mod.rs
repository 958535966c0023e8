//! The asynchronous I/O engine.
//!
//! An operation (read or write `len` bytes of a buffer at a file offset) is split into
//! requests of `block_size` bytes ([`op::Plan`]). Operations wait in one queue; each
//! worker claims the next request of the operation at the front, so one large
//! operation is spread over every worker, and keeps up to `queue_depth` requests in
//! flight (an io_uring ring per worker, or `queue_depth` threads per worker making
//! blocking calls); an io_uring worker whose queue runs deeper than its slots merges
//! requests that continue each other in one file into one vectored call (`worker.rs`).
//! A [`Ticket`] waits for one operation; [`handle::IoHandle`] adds the
//! "wait for everything submitted" semantics of the C API.
//!
//! O_DIRECT needs the buffer address, file offset and length aligned to 4 KiB. The
//! engine never refuses a misaligned operation: the aligned body goes direct, the
//! unaligned head and tail (under 4 KiB each) go through a buffered descriptor, and a
//! misaligned buffer is copied through a per-request bounce buffer of `block_size`
//! bytes, allocated the first time a worker needs it and kept.
//!
//! Three conditions end an engine's usefulness, and each makes every later submit and
//! wait fail instead of hanging:
//! - [`IoEngine::close`] (what destroying a handle does): new operations are refused,
//!   and it returns only once every submitted operation has finished and the workers
//!   have stopped, so no worker touches a caller's buffer afterwards;
//! - a worker panics: its requests, and every request still queued, finish with
//!   `Status::Panic`, and the engine is broken (every later call returns `Panic`);
//! - the process forked: the workers live in the parent, so the child's calls return
//!   `Status::BadState` (the parent's engine is unaffected).

pub mod handle;
pub mod held;
mod meter;
pub mod op;
pub mod race;
mod worker;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::config::{Backend, DirectIo, IoConfig};
use crate::status::{Error, Result, Status};
use crate::sys::uring::Ring;
use crate::sys::RawBuf;
pub use held::HeldFile;
pub use meter::Activity;
use meter::Meter;
use op::Op;
pub use op::{HeldRequest, Request};
pub use race::Race;

/// Most threads the blocking backend starts (it runs `queue_depth` per worker).
const MAX_BLOCKING_THREADS: u32 = 512;

/// What a request may be merged after ([`Shared::claim_next_to`]).
pub(crate) struct Adjacent {
    /// Write (true) or read.
    pub(crate) write: bool,
    /// The O_DIRECT descriptor of the requests so far.
    pub(crate) fd: std::os::fd::RawFd,
    /// The file offset where they end.
    pub(crate) end: u64,
    /// Bytes a further request may have.
    pub(crate) room: u64,
    /// Free slots the worker has beside this one: a request is merged only while more
    /// operations wait than these could take side by side.
    pub(crate) spare: usize,
}

/// State shared by the engine and its workers.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    fallback_logged: AtomicBool,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Requests carried out inside merged (vectored) calls.
    pub(crate) merged: AtomicU64,
    /// Bytes moved and busy time ([`IoEngine::activity`]); shared with the engines
    /// started [`IoEngine::beside`] this one.
    pub(crate) meter: Arc<Meter>,
    /// Set (once) when a worker panicked: the error every later call returns.
    broken: OnceLock<Error>,
    /// The process that started the workers.
    pid: u32,
}

struct Queue {
    ops: VecDeque<Arc<Op>>,
    /// Set by [`IoEngine::close`]: no new operation is accepted, and the workers stop
    /// once the queue is empty.
    shutdown: bool,
    /// Workers asleep in [`Shared::claim`]: a submit wakes one only when there is one
    /// (a condition variable's notify is a system call even with nobody waiting), and a
    /// woken worker that leaves requests behind wakes the next.
    sleeping: usize,
}

impl Queue {
    /// Takes the next request of the operation at the front (the operation leaves the
    /// queue with its last request): the operation and the request's index. A race's
    /// lane claims through its race and leaves the queue once it is done; a lane that has
    /// its share in flight already gives nothing now, and the operations behind it are
    /// looked at (it keeps its place).
    fn take_next(&mut self) -> Option<(Arc<Op>, usize)> {
        let mut at = 0;
        loop {
            let op = Arc::clone(self.ops.get(at)?);
            let Some(lane) = &op.race else {
                let i = op.next.fetch_add(1, Ordering::Relaxed);
                if i + 1 >= op.request_count() {
                    self.ops.remove(at);
                }
                return Some((op, i));
            };
            let claim = lane.race.claim(lane.index);
            if claim.lane_done {
                self.ops.remove(at);
            } else if claim.index.is_none() {
                at += 1;
            }
            if let Some(i) = claim.index {
                return Some((op, i));
            }
        }
    }
}

impl Shared {
    /// Claims the next request: the operation and the request's index. With `block`, waits
    /// for work; returns None when the engine is shutting down and the queue is empty
    /// (or, without `block`, when the queue is empty).
    pub(crate) fn claim(&self, block: bool) -> Option<(Arc<Op>, usize)> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut woken = false;
        loop {
            if let Some((op, i)) = q.take_next() {
                // Pass the wake-up on: another sleeping worker takes what is left.
                let more = woken && !q.ops.is_empty() && q.sleeping > 0;
                drop(q);
                if more {
                    self.work.notify_one();
                }
                return Some((op, i));
            }
            if q.shutdown || !block {
                return None;
            }
            q.sleeping += 1;
            q = self.work.wait(q).unwrap_or_else(|e| e.into_inner());
            q.sleeping -= 1;
            woken = true;
        }
    }

    /// Claims the next request only if it continues `after` in the same file: the
    /// operation at the front's next request writes (or reads, as `after.write`) through
    /// the same O_DIRECT descriptor from exactly `after.end`, moves at most `room` bytes,
    /// and is aligned for O_DIRECT (buffer, offset and length) without a bounce buffer;
    /// and only while more operations wait than the worker's `after.spare` free slots
    /// could take (a short queue goes to the device request by request, in parallel).
    /// Never waits. A worker merges such requests into one vectored system call
    /// ([`worker`]): adjacent small operations (params packed in an extent file) then
    /// cost the device one request instead of many.
    pub(crate) fn claim_next_to(&self, after: &Adjacent) -> Option<(Arc<Op>, usize)> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.ops.len() <= after.spare {
            return None;
        }
        let op = q.ops.front()?;
        let i = op.next.load(Ordering::Relaxed);
        if i >= op.request_count()
            || op.race.is_some()
            || op.write != after.write
            || op.bounce
            || op.direct_fd() != Some(after.fd)
        {
            return None;
        }
        let chunk = op.plan.chunk(op.offset, i);
        let buf = op.buf.offset_by(chunk.buf_offset as usize);
        if chunk.file_offset != after.end
            || chunk.len > after.room
            || !op::direct_aligned(buf, chunk.file_offset, chunk.len)
        {
            return None;
        }
        q.take_next()
    }

    /// Whether the calling process is the one that started the workers (one getpid).
    fn same_process(&self) -> Result<()> {
        let me = std::process::id();
        if me != self.pid {
            return Err(Error::bad_state(format!(
                "this I/O engine was started by process {}; process {me} is a fork of it and has none of its worker threads: create a new handle in this process",
                self.pid
            )));
        }
        Ok(())
    }

    /// The error every call returns once a worker has panicked.
    fn not_broken(&self) -> Result<()> {
        match self.broken.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Whether the engine may take calls: `BadState` in a forked child (the workers live
    /// in the parent), `Panic` once a worker has panicked.
    fn usable(&self) -> Result<()> {
        self.same_process()?;
        self.not_broken()
    }

    /// Called by a worker that panicked, after it has finished its own requests: marks the
    /// engine broken and finishes every request still queued with the same error.
    pub(crate) fn worker_panicked(&self, message: &str) {
        let error = Error::new(
            Status::Panic,
            format!(
                "an I/O worker thread panicked ({message}); the engine is broken: destroy the handle and create a new one"
            ),
        );
        crate::log!(Error, "{}", error.message());
        {
            // Under the queue lock, so that a submit either sees the engine broken or
            // queued its operation before the drain below.
            let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self.broken.set(error.clone());
        }
        while let Some((op, _)) = self.claim(false) {
            op.fail(error.clone());
            op.finish_request();
        }
        self.work.notify_all();
    }

    pub(crate) fn count_bytes(&self, write: bool, n: u64) {
        let counter = if write {
            &self.bytes_written
        } else {
            &self.bytes_read
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What `Backend::Auto` resolves to when the environment variable `SWAPPER_IO_BACKEND`
/// says so (`blocking` or `io_uring`; read once). Memory checkers such as valgrind cannot
/// see what the kernel writes through io_uring, so their runs set it to `blocking`.
fn auto_override() -> Option<Backend> {
    static OVERRIDE: std::sync::OnceLock<Option<Backend>> = std::sync::OnceLock::new();
    *OVERRIDE.get_or_init(|| match std::env::var("SWAPPER_IO_BACKEND").ok()?.trim() {
        "blocking" => Some(Backend::Blocking),
        "io_uring" => Some(Backend::IoUring),
        other => {
            crate::log!(
                Warn,
                "SWAPPER_IO_BACKEND={other} is not blocking or io_uring; ignored"
            );
            None
        }
    })
}

/// Waits for one operation.
#[derive(Clone)]
pub struct Ticket(Arc<Op>, Arc<Shared>);

impl Ticket {
    /// Blocks until the operation has finished; its result, with the path and offset of
    /// the first failed request. `BadState` at once in a forked child (the operation's
    /// worker is in the parent); `Panic` when the engine broke (a worker panicked), even
    /// for an operation that completed.
    pub fn wait(&self) -> Result<()> {
        self.1.same_process()?;
        self.wait_here()
    }

    /// As [`Ticket::wait`], for a caller that has checked it runs in the engine's process.
    pub(crate) fn wait_here(&self) -> Result<()> {
        let result = self.0.wait();
        self.1.not_broken()?;
        result
    }

    /// Whether the operation has finished.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// The crc32c of the first `checksum_len` bytes of the buffer, computed by the workers
    /// request by request and combined; None when not asked for or not finished.
    pub fn checksum(&self) -> Option<u32> {
        if !self.0.is_finished() {
            return None;
        }
        let parts = self.0.checksum_parts();
        let (first, rest) = parts.split_first()?;
        Some(rest.iter().fold(first.2, |acc, &(_, len, crc)| {
            crc32c::crc32c_combine(acc, crc, len as usize)
        }))
    }

    /// The checksum's parts, one per request: (offset in the buffer, length, crc32c).
    /// Recomputing them over a buffer locates a mismatch.
    pub fn checksum_parts(&self) -> Vec<(u64, u64, u32)> {
        self.0.checksum_parts()
    }

    /// The operation's file.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// Whether two tickets are for the same operation.
    pub fn same(&self, other: &Ticket) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The engine: worker threads and their queue. Dropping it (or [`IoEngine::close`])
/// finishes every submitted operation, then stops the workers.
pub struct IoEngine {
    shared: Arc<Shared>,
    /// Held while [`IoEngine::close`] joins them, so that a second closer waits too.
    workers: Mutex<Vec<JoinHandle<()>>>,
    config: IoConfig,
    backend: Backend,
}

impl IoEngine {
    /// Starts the workers. `Backend::Auto` picks io_uring when the kernel allows it.
    pub fn new(config: IoConfig) -> Result<IoEngine> {
        Self::with_meter(config, Arc::default())
    }

    /// Starts a second engine on the same device as `self` (its own queue and workers)
    /// whose requests count in `self`'s [`IoEngine::activity`] and it in this one's: one
    /// device's bytes and busy time, the union of both engines' busy intervals. A drive
    /// whose writes have an engine of their own is measured by both.
    pub fn beside(&self, config: IoConfig) -> Result<IoEngine> {
        Self::with_meter(config, Arc::clone(&self.shared.meter))
    }

    fn with_meter(config: IoConfig, meter: Arc<Meter>) -> Result<IoEngine> {
        config.validate()?;
        let backend = match config.backend {
            Backend::Auto if auto_override() == Some(Backend::Blocking) => Backend::Blocking,
            Backend::Auto | Backend::IoUring => match Ring::probe() {
                Ok(()) => Backend::IoUring,
                Err(errno) if config.backend == Backend::Auto => {
                    crate::log!(
                        Info,
                        "io_uring is not available here ({}); using blocking pread/pwrite",
                        uring_refusal(errno)
                    );
                    Backend::Blocking
                }
                Err(errno) => {
                    let status = match errno {
                        libc::ENOSYS | libc::EPERM => Status::Unsupported,
                        libc::ENOMEM => Status::OutOfMemory,
                        _ => Status::IoError,
                    };
                    return Err(Error::new(
                        status,
                        format!("io_uring is not available: {}", uring_refusal(errno)),
                    ));
                }
            },
            b => b,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                ops: VecDeque::new(),
                shutdown: false,
                sleeping: 0,
            }),
            work: Condvar::new(),
            fallback_logged: AtomicBool::new(false),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            merged: AtomicU64::new(0),
            meter,
            broken: OnceLock::new(),
            pid: std::process::id(),
        });
        let engine = IoEngine {
            shared,
            workers: Mutex::new(Vec::new()),
            config,
            backend,
        };
        let threads = match backend {
            Backend::IoUring => config.thread_count,
            _ => {
                let wanted = config.thread_count * config.queue_depth;
                if wanted > MAX_BLOCKING_THREADS {
                    crate::log!(
                        Warn,
                        "the blocking backend runs thread_count x queue_depth = {wanted} threads; capped at {MAX_BLOCKING_THREADS}"
                    );
                }
                wanted.min(MAX_BLOCKING_THREADS)
            }
        };
        for i in 0..threads {
            let shared = Arc::clone(&engine.shared);
            let builder = std::thread::Builder::new().name(format!("swapper-io-{i}"));
            let spawned = match backend {
                Backend::IoUring => {
                    let ring = Ring::new(config.queue_depth).map_err(|e| {
                        Error::new(
                            if e == libc::ENOMEM {
                                Status::OutOfMemory
                            } else {
                                Status::Unsupported
                            },
                            format!(
                                "cannot create an io_uring ring: {} (errno {e})",
                                crate::status::errno_text(e)
                            ),
                        )
                    })?;
                    builder.spawn(move || worker::run_uring(shared, ring, config))
                }
                _ => builder.spawn(move || worker::run_blocking(shared, config)),
            };
            match spawned {
                Ok(h) => engine.workers.lock().unwrap_or_else(|e| e.into_inner()).push(h),
                Err(e) => {
                    return Err(Error::new(
                        Status::OutOfMemory,
                        format!("cannot start I/O worker thread {i}: {e}"),
                    ))
                }
            }
        }
        crate::log!(
            Debug,
            "I/O engine started: backend {}, {} threads, block {} bytes, queue depth {}",
            backend.name(),
            threads,
            config.block_size,
            config.queue_depth
        );
        Ok(engine)
    }

    /// Queues an operation and returns at once. Errors found before queueing (a missing
    /// file, a read past the end of the file, O_DIRECT refused with `direct_io` on) are
    /// returned here; errors of the transfer come from [`Ticket::wait`]. A closed engine
    /// refuses with `BadState`, a broken one with `Panic`, and a forked child's copy with
    /// `BadState`.
    ///
    /// # Safety
    /// `req.buf` must be valid for `req.len` bytes (writable for a read) until the
    /// operation has finished, and not be written by anyone else meanwhile (nor read, for
    /// a read operation).
    pub unsafe fn submit(&self, req: &Request<'_>) -> Result<Ticket> {
        self.shared.usable()?;
        let direct = match self.config.direct_io {
            DirectIo::Off => None,
            DirectIo::Auto => Some(false),
            DirectIo::On => Some(true),
        };
        let (op, fell_back) = Op::new(req, self.config.block_size, direct)?;
        if fell_back && !self.shared.fallback_logged.swap(true, Ordering::Relaxed) {
            crate::log!(
                Warn,
                "the file system of {} does not support O_DIRECT; using buffered I/O for such files",
                req.path.display()
            );
        }
        self.enqueue(op)
    }

    /// As [`IoEngine::submit`], on a file its owner holds open ([`HeldFile`]): nothing is
    /// opened, so any number of operations may be in flight without a descriptor each.
    ///
    /// # Safety
    /// As [`IoEngine::submit`].
    pub unsafe fn submit_held(&self, req: &HeldRequest<'_>) -> Result<Ticket> {
        self.shared.usable()?;
        let op = Op::held(req, self.config.block_size)?;
        self.enqueue(op)
    }

    /// As [`IoEngine::submit_held`], as lane `lane` of `race` ([`race`]): the request
    /// covers the lane's span of the race's units ([`Race::span`]), one request of
    /// `block_size` bytes per unit (the last unit may be shorter), and the engine carries
    /// out only the units this lane claims; the others are written by the other lanes'
    /// engines. The ticket finishes once the lane is done. `InvalidArgument` if `lane` is
    /// not one of the race's or the request does not split into one aligned request per
    /// unit of the span.
    ///
    /// # Safety
    /// As [`IoEngine::submit`], for the whole span.
    pub unsafe fn submit_raced(
        &self,
        req: &HeldRequest<'_>,
        race: &Arc<Race>,
        lane: usize,
    ) -> Result<Ticket> {
        self.shared.usable()?;
        if lane >= race.lanes() {
            return Err(Error::invalid(format!(
                "lane {lane} of a race of {} lanes",
                race.lanes()
            )));
        }
        let mut op = Op::held(req, self.config.block_size)?;
        let (a, b) = race.span(lane);
        if op.request_count() as u64 != b - a || op.bounce || op.plan.head > 0 || op.plan.tail > 0 {
            return Err(Error::invalid(format!(
                "a raced request of {} bytes at offset {} of {} does not split into the {} aligned requests of its lane",
                req.len,
                req.offset,
                req.file.path().display(),
                b - a
            )));
        }
        op.race = Some(race::Lane {
            race: Arc::clone(race),
            index: lane,
        });
        let op = Arc::new(op);
        if race.register(lane, &op) {
            // Its neighbours took every unit it could have: finished already.
            return Ok(Ticket(op, Arc::clone(&self.shared)));
        }
        self.enqueue_arc(op)
    }

    /// Queues a built operation (one with no request is finished at once).
    fn enqueue(&self, op: Op) -> Result<Ticket> {
        self.enqueue_arc(Arc::new(op))
    }

    fn enqueue_arc(&self, op: Arc<Op>) -> Result<Ticket> {
        if op.request_count() > 0 {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            // Checked again under the lock: `close` and `worker_panicked` set their flags
            // under it, so an operation is either refused or seen by the drain.
            if q.shutdown {
                return Err(Error::bad_state(
                    "the I/O engine is closed (its handle was destroyed)",
                ));
            }
            self.shared.not_broken()?;
            q.ops.push_back(Arc::clone(&op));
            let wake = q.sleeping > 0;
            drop(q);
            if wake {
                self.shared.work.notify_one();
            }
        }
        Ok(Ticket(op, Arc::clone(&self.shared)))
    }

    /// Reads `buf.len()` bytes at `offset` of `path` and waits.
    pub fn read(&self, buf: &mut [u8], path: &Path, offset: u64) -> Result<()> {
        let req = Request {
            write: false,
            buf: RawBuf(buf.as_mut_ptr()),
            len: buf.len() as u64,
            path,
            offset,
            nofollow: false,
            dir: None,
            checksum_len: None,
        };
        // SAFETY: `buf` is borrowed mutably until the wait below returns.
        unsafe { self.submit(&req) }?.wait()
    }

    /// Writes `buf` at `offset` of `path` (created with mode 0600 if missing) and waits.
    pub fn write(&self, buf: &[u8], path: &Path, offset: u64) -> Result<()> {
        let req = Request {
            write: true,
            buf: RawBuf(buf.as_ptr() as *mut u8),
            len: buf.len() as u64,
            path,
            offset,
            nofollow: false,
            dir: None,
            checksum_len: None,
        };
        // SAFETY: `buf` is borrowed until the wait below returns; a write only reads it.
        unsafe { self.submit(&req) }?.wait()
    }

    /// The settings the engine was created with.
    pub fn config(&self) -> &IoConfig {
        &self.config
    }

    /// The backend in use (never `Auto`).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Bytes read and written since the engine started.
    pub fn bytes_moved(&self) -> (u64, u64) {
        (
            self.shared.bytes_read.load(Ordering::Relaxed),
            self.shared.bytes_written.load(Ordering::Relaxed),
        )
    }

    /// How many requests went to the device merged with their neighbours into one
    /// vectored call (see the worker loop's doc: adjacent requests in the same file), for
    /// statistics and tests; the rest went one call each.
    pub fn merged_requests(&self) -> u64 {
        self.shared.merged.load(Ordering::Relaxed)
    }

    /// Bytes moved (read and written) and the time during which at least one request was
    /// in flight, since the engine started: their quotient is the device's rate as this
    /// engine sees it, whatever the caller's pace (see `meter.rs`). Engines started
    /// [`IoEngine::beside`] each other report the same, both engines' requests together.
    pub fn activity(&self) -> Activity {
        self.shared.meter.activity()
    }

    /// Whether the engine still takes operations: the error a submit would return
    /// (closed, broken by a panicked worker, or a forked child's copy), or Ok.
    pub fn check_usable(&self) -> Result<()> {
        if self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown
        {
            return Err(Error::bad_state(
                "the I/O engine is closed (its handle was destroyed)",
            ));
        }
        self.shared.usable()
    }

    /// Stops the engine: refuses new operations, then returns once every operation
    /// submitted before has finished and every worker has exited; afterwards no worker
    /// reads or writes any buffer. Callable from any thread, any number of times (a
    /// second caller waits for the first); threads waiting on tickets are woken as their
    /// operations finish. In a forked child it does nothing (the workers are the
    /// parent's, and the child cannot join them).
    pub fn close(&self) {
        if std::process::id() != self.shared.pid {
            return;
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.shutdown = true;
        }
        self.shared.work.notify_all();
        let me = std::thread::current().id();
        for w in workers.drain(..) {
            if w.thread().id() == me {
                // A worker closing its own engine (from a log callback) cannot join itself;
                // it exits once the queue is empty.
                continue;
            }
            // A worker that panicked has already finished its requests (worker.rs).
            let _ = w.join();
        }
    }
}

/// The text for a failed io_uring probe: the errno's text and number, and what it means.
fn uring_refusal(errno: i32) -> String {
    let why = match errno {
        libc::ENOSYS => "the kernel has no io_uring, or a seccomp policy hides it",
        libc::EPERM => {
            "refused by sysctl kernel.io_uring_disabled or a seccomp policy; use the auto or blocking backend"
        }
        libc::EMFILE | libc::ENFILE => "out of file descriptors; this is retried at the next engine",
        libc::ENOMEM => "out of memory or over the memlock limit; this is retried at the next engine",
        _ => "this is retried at the next engine",
    };
    format!(
        "io_uring_setup failed: {} (errno {errno}): {why}",
        crate::status::errno_text(errno)
    )
}

impl Drop for IoEngine {
    fn drop(&mut self) {
        if std::process::id() != self.shared.pid {
            // A forked child's copy: the workers are not in this process; joining them
            // would wait for ever.
            let workers = std::mem::take(self.workers.get_mut().unwrap_or_else(|e| e.into_inner()));
            std::mem::forget(workers);
            return;
        }
        self.close();
    }
}
