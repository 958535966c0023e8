//! The worker loops: one per io_uring ring, or one per blocking thread. Both run the
//! same request life cycle ([`Active`]): start (fill the bounce buffer for a write),
//! issue system calls until the request is whole (retrying EINTR and short transfers),
//! finish (empty the bounce buffer for a read, count bytes, tell the operation). Each
//! request is metered from start to finish (`meter.rs`: bytes and busy time).
//!
//! An io_uring worker merges requests that continue each other in the same file (the
//! next queued request starts where the one it took ends, same O_DIRECT descriptor, all
//! aligned, together at most `block_size` bytes) into one vectored call (readv/writev)
//! when more operations wait than its free slots could take: small tensors packed side
//! by side in an extent file then cost the device one request per `block_size` instead
//! of one each, while a queue the slots can hold still goes request by request, in
//! parallel. Each request still meters, checksums and finishes on its own; a merged call
//! that fails or comes back short is not trusted to say whose bytes are missing, so its
//! requests are then carried out one by one, and an error is reported by the request it
//! belongs to, with its own offset. Fault injection is consulted once per request per
//! call, as without merging. `SWAPPER_MERGE=0` turns merging off (for comparison in the
//! benchmarks). The blocking backend does not merge.
//!
//! A worker that panics does not leave its requests hanging: every [`Active`] it held
//! finishes with `Status::Panic` when dropped unfinished (an io_uring worker first waits
//! for the completions the kernel still owes, so that no buffer is given back while the
//! kernel writes into it), and [`Shared::worker_panicked`] breaks the engine.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::op::{direct_aligned, Chunk, Op};
use super::{Adjacent, Shared};
use crate::config::IoConfig;
use crate::status::{Error, Result, Status};
use crate::sys::alloc::AlignedBuf;
use crate::sys::fault::{self, Call, Fault};
use crate::sys::uring::{IoVecs, Ring};
use crate::sys::{self, file, RawBuf};

/// One request being carried out.
struct Active {
    op: Arc<Op>,
    index: usize,
    chunk: Chunk,
    done: u64,
    /// Its part of the checksum is computed already.
    checksummed: bool,
    /// The operation was told the request is over; dropped without it (a worker that
    /// panicked), the request fails with `Status::Panic`.
    reported: bool,
    /// The fault-injection answer taken for this request's next call while it was to
    /// ride in a merged call that did not happen (None: ask when issuing).
    prechecked: Option<Option<Fault>>,
}

/// Most requests merged into one vectored call.
const MAX_MERGED: usize = 128;

/// Whether workers merge adjacent requests (`SWAPPER_MERGE=0` turns it off).
fn merging() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("SWAPPER_MERGE").is_none_or(|v| v != "0"))
}

impl Drop for Active {
    fn drop(&mut self) {
        if !self.reported {
            self.reported = true;
            self.op.fail(Error::new(
                Status::Panic,
                format!(
                    "the I/O worker carrying out the {} of {} at offset {} panicked",
                    if self.op.write { "write" } else { "read" },
                    self.op.path.display(),
                    self.chunk.file_offset
                ),
            ));
            self.op.finish_request();
        }
    }
}

/// Runs a worker loop; a panic in it breaks the engine (after the loop's own requests
/// have been finished by their drop, or by `after_panic`).
fn guarded(shared: &Shared, body: impl FnOnce(), after_panic: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
        let name = std::thread::current().name().unwrap_or("swapper-io").to_string();
        after_panic();
        shared.worker_panicked(&format!("{name}: {}", crate::status::panic_text(&*panic)));
    }
}

/// One system call to make.
struct Call_ {
    fd: RawFd,
    buf: RawBuf,
    len: usize,
    offset: u64,
}

enum Step {
    /// Issue the next call for the rest of the request.
    Again,
    /// The request is over (successful or failed).
    Finished,
}

impl Active {
    /// Claims request `index` of `op`; fills the bounce buffer first when the operation
    /// copies through one.
    fn start(op: Arc<Op>, index: usize, bounce: &mut Option<AlignedBuf>, block: u64) -> Result<Active> {
        let chunk = op.plan.chunk(op.offset, index);
        if op.bounce {
            if bounce.is_none() {
                *bounce = Some(AlignedBuf::new(block as usize, false)?);
            }
            if op.write {
                if let Some(b) = bounce.as_ref() {
                    // SAFETY: the caller's buffer holds the chunk (submit's contract) and the
                    // bounce buffer holds `block` >= chunk.len bytes and is this request's alone.
                    unsafe {
                        sys::copy(
                            op.buf.offset_by(chunk.buf_offset as usize),
                            b.raw(),
                            chunk.len as usize,
                        )
                    };
                }
            }
        }
        Ok(Active {
            op,
            index,
            chunk,
            done: 0,
            checksummed: false,
            reported: false,
            prechecked: None,
        })
    }

    /// Computes this request's part of the operation's checksum from the caller's buffer,
    /// once the request is done (a write's bytes do not change during the operation, a
    /// read's have arrived).
    fn checksum(&mut self) {
        if self.checksummed {
            return;
        }
        self.checksummed = true;
        if let Some((start, len)) = self.op.checksum_part(&self.chunk) {
            // SAFETY: the caller's buffer holds the chunk (submit's contract); for a write
            // nobody changes it during the operation, for a read this request's bytes have
            // arrived and no other request touches them.
            let data =
                unsafe { crate::sys::alloc::borrow(self.op.buf.offset_by(start as usize), len as usize) };
            self.op.record_crc(self.index, crc32c::crc32c(data));
        }
    }

    /// The call that moves the rest of the request: O_DIRECT when buffer, offset and length
    /// are aligned, the buffered descriptor otherwise.
    fn next_call(&self, bounce: Option<&AlignedBuf>) -> Result<Call_> {
        let rest = self.chunk.len - self.done;
        let offset = self.chunk.file_offset + self.done;
        let buf = match (self.op.bounce, bounce) {
            (true, Some(b)) => b.raw().offset_by(self.done as usize),
            (true, None) => return Err(Error::new(Status::Panic, "bounce buffer missing")),
            (false, _) => self
                .op
                .buf
                .offset_by((self.chunk.buf_offset + self.done) as usize),
        };
        let fd = match self.op.direct_fd() {
            Some(fd) if direct_aligned(buf, offset, rest) => fd,
            _ => self.op.buffered_fd()?,
        };
        Ok(Call_ {
            fd,
            buf,
            len: rest as usize,
            offset,
        })
    }

    /// Takes the result of a call: bytes moved, or an errno.
    fn on_result(&mut self, res: std::result::Result<usize, i32>) -> Step {
        let offset = self.chunk.file_offset + self.done;
        let what = if self.op.write { "write" } else { "read" };
        match res {
            Err(libc::EINTR) | Err(libc::EAGAIN) => Step::Again,
            Err(errno) => {
                self.op.fail(Error::os(what, &self.op.path, Some(offset), errno));
                Step::Finished
            }
            Ok(0) => {
                let msg = if self.op.write {
                    format!(
                        "write of {} made no progress at offset {offset}",
                        self.op.path.display()
                    )
                } else {
                    format!(
                        "unexpected end of file {} at offset {offset} (the file shrank during the read)",
                        self.op.path.display()
                    )
                };
                self.op.fail(Error::new(Status::IoError, msg));
                Step::Finished
            }
            Ok(n) => {
                self.done += n as u64;
                if self.done < self.chunk.len {
                    Step::Again
                } else {
                    Step::Finished
                }
            }
        }
    }

    /// Ends the request: copies a bounced read out, counts bytes, tells the operation.
    fn finish(mut self, bounce: Option<&AlignedBuf>, shared: &Shared) {
        if self.done == self.chunk.len {
            if self.op.bounce && !self.op.write {
                if let Some(b) = bounce {
                    // SAFETY: the caller's buffer holds the chunk and is writable (submit's
                    // contract); the bounce buffer holds the `chunk.len` bytes just read.
                    unsafe {
                        sys::copy(
                            b.raw(),
                            self.op.buf.offset_by(self.chunk.buf_offset as usize),
                            self.chunk.len as usize,
                        )
                    };
                }
            }
            self.checksum();
            shared.count_bytes(self.op.write, self.chunk.len);
        }
        shared.meter.end(self.done);
        self.reported = true;
        self.op.finish_request();
    }
}

/// A blocking worker: one request at a time with pread/pwrite. A panic drops the request
/// in hand (which fails it) and breaks the engine.
pub(super) fn run_blocking(shared: Arc<Shared>, config: IoConfig) {
    guarded(&shared, || blocking_loop(&shared, config), || {});
}

fn blocking_loop(shared: &Shared, config: IoConfig) {
    let mut bounce: Option<AlignedBuf> = None;
    while let Some((op, index)) = shared.claim(true) {
        let mut active = match Active::start(Arc::clone(&op), index, &mut bounce, config.block_size) {
            Ok(a) => {
                shared.meter.begin();
                a
            }
            Err(e) => {
                op.fail(e);
                op.finish_request();
                continue;
            }
        };
        loop {
            let step = match active.next_call(bounce.as_ref()) {
                Ok(c) => {
                    // SAFETY: the call's buffer is the caller's (valid until the operation
                    // finishes) or this worker's bounce buffer.
                    let res = unsafe {
                        file::transfer(c.fd, active.op.write, c.buf, c.len, c.offset, &active.op.path)
                    };
                    active.on_result(res)
                }
                Err(e) => {
                    active.op.fail(e);
                    Step::Finished
                }
            };
            if let Step::Finished = step {
                active.finish(bounce.as_ref(), shared);
                break;
            }
        }
    }
}

/// An io_uring worker: up to `queue_depth` requests in flight on one ring.
///
/// Each slot (an index into `slots`, `bounces` and `caps`, and the ring's user_data) holds
/// at most one request, which moves through these places:
///
/// ```text
///   free ──refill──▶ slots[i] ──issue──▶ in the kernel ──pop──▶ ready ──on_result──┐
///    ▲                  │  ▲                                    ▲                  │
///    │                  │  └────────── Again (short, EINTR) ────┼──────────────────┤
///    │                  └── injected fault / failed open ───────┘                  │
///    └──────────────── end: finish now, or park in `finished` ◀──── Finished ──────┘
/// ```
///
/// Two lists defer checksum work so that the device never waits for the CPU:
/// - `to_checksum`: writes just issued whose bytes are checksummed once the submission
///   has gone to the kernel (a write's bytes do not change during the operation);
/// - `finished`: reads done whose checksum (over the caller's buffer) is computed, and
///   whose operation is told, only after the next refill has been submitted.
///
/// One turn of [`UringWorker::run`]: refill free slots; submit, then checksum the
/// `to_checksum` writes; submit, then finish the `finished` requests (and turn again, to
/// refill the slots they freed); otherwise submit and wait for one completion (none
/// when `ready` already has results), move completions to `ready`, and handle `ready`.
struct UringWorker {
    shared: Arc<Shared>,
    ring: Ring,
    config: IoConfig,
    /// Each slot's request (the first of a merged call).
    slots: Vec<Option<Active>>,
    /// The requests merged after each slot's, in file order.
    riders: Vec<VecDeque<Active>>,
    /// Each slot's vectored call's buffers, kept until its completion.
    iovs: Vec<IoVecs>,
    /// Slots whose merged call failed or came back short: their requests go one by one.
    solo: Vec<bool>,
    bounces: Vec<Option<AlignedBuf>>,
    free: Vec<usize>,
    /// Requests pushed to the ring whose completion has not been popped.
    in_kernel: usize,
    /// Results known without the kernel (injected faults, failed opens): (slot, result).
    ready: Vec<(usize, std::result::Result<usize, i32>)>,
    /// Injected short transfers: the most bytes a slot's next completion may report.
    caps: Vec<usize>,
    /// Requests done whose checksum is still to compute: finished after the next refill
    /// has been submitted, so that the device is busy while the CPU checksums.
    finished: Vec<Active>,
    /// Slots whose write was just issued: checksummed once it is submitted, while the
    /// device works on it (a write's bytes do not change during the operation).
    to_checksum: Vec<usize>,
}

pub(super) fn run_uring(shared: Arc<Shared>, ring: Ring, config: IoConfig) {
    let qd = config.queue_depth as usize;
    let w = UringWorker {
        shared: Arc::clone(&shared),
        ring,
        config,
        slots: (0..qd).map(|_| None).collect(),
        riders: (0..qd).map(|_| VecDeque::new()).collect(),
        iovs: (0..qd).map(|_| IoVecs::default()).collect(),
        solo: vec![false; qd],
        bounces: (0..qd).map(|_| None).collect(),
        free: (0..qd).rev().collect(),
        in_kernel: 0,
        ready: Vec::with_capacity(qd),
        caps: vec![usize::MAX; qd],
        finished: Vec::with_capacity(qd),
        to_checksum: Vec::with_capacity(qd),
    };
    let w = std::cell::RefCell::new(w);
    guarded(&shared, || w.borrow_mut().run(), || w.borrow_mut().abandon());
}

impl UringWorker {
    /// After a panic in [`UringWorker::run`]: waits for every completion the kernel still
    /// owes (their buffers are the callers'), then drops the slots' requests, which fails
    /// them with `Status::Panic`.
    fn abandon(&mut self) {
        while self.in_kernel > 0 {
            if let Err(errno) = self.ring.submit_and_wait(1) {
                crate::log!(
                    Error,
                    "io_uring wait after a worker panic failed: {}",
                    crate::status::errno_text(errno)
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            while self.ring.pop().is_some() {
                self.in_kernel = self.in_kernel.saturating_sub(1);
            }
        }
        self.ready.clear();
        self.to_checksum.clear();
        self.finished.clear();
        for slot in self.slots.iter_mut() {
            drop(slot.take());
        }
        for riders in self.riders.iter_mut() {
            riders.clear();
        }
    }

    fn idle(&self) -> bool {
        self.free.len() == self.slots.len() && self.ready.is_empty() && self.finished.is_empty()
    }

    /// Fills free slots with new requests; false when the engine is shutting down and
    /// nothing is left to do.
    fn refill(&mut self) -> bool {
        if self.config.overlap_events || self.idle() {
            while let Some(&slot) = self.free.last() {
                let idle = self.idle();
                match self.shared.claim(idle) {
                    Some((op, index)) => {
                        self.free.pop();
                        self.start(slot, op, index);
                    }
                    None if idle => return false,
                    None => break,
                }
            }
        }
        true
    }

    fn run(&mut self) {
        loop {
            if !self.refill() {
                return;
            }
            if !self.to_checksum.is_empty() {
                if self.in_kernel > 0 {
                    let _ = self.ring.submit_and_wait(0);
                }
                while let Some(slot) = self.to_checksum.pop() {
                    if let Some(a) = self.slots[slot].as_mut() {
                        a.checksum();
                    }
                    for a in self.riders[slot].iter_mut() {
                        a.checksum();
                    }
                }
            }
            if !self.finished.is_empty() {
                // The refill above is in flight before the CPU spends time on checksums.
                if self.in_kernel > 0 {
                    let _ = self.ring.submit_and_wait(0);
                }
                let mut finished = std::mem::take(&mut self.finished);
                for a in finished.drain(..) {
                    a.finish(None, &self.shared);
                }
                self.finished = finished;
                continue;
            }
            if self.in_kernel > 0 {
                let want = usize::from(self.ready.is_empty());
                if let Err(errno) = self.ring.submit_and_wait(want) {
                    crate::log!(
                        Error,
                        "io_uring submit failed: {}",
                        crate::status::errno_text(errno)
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                while let Some((slot, res)) = self.ring.pop() {
                    self.in_kernel -= 1;
                    let cap = std::mem::replace(&mut self.caps[slot as usize], usize::MAX);
                    let res = if res < 0 {
                        Err(-res)
                    } else {
                        Ok((res as usize).min(cap))
                    };
                    self.ready.push((slot as usize, res));
                }
            }
            while let Some((slot, res)) = self.ready.pop() {
                self.on_result(slot, res);
            }
        }
    }

    fn start(&mut self, slot: usize, op: Arc<Op>, index: usize) {
        match Active::start(
            Arc::clone(&op),
            index,
            &mut self.bounces[slot],
            self.config.block_size,
        ) {
            Ok(a) => {
                self.shared.meter.begin();
                self.slots[slot] = Some(a);
                self.gather(slot);
                let needs_checksum = |a: &Active| a.op.write && a.op.checksum_part(&a.chunk).is_some();
                let write_checksum = self.slots[slot].as_ref().is_some_and(needs_checksum)
                    || self.riders[slot].iter().any(needs_checksum);
                self.issue(slot);
                if write_checksum {
                    self.to_checksum.push(slot);
                }
            }
            Err(e) => {
                op.fail(e);
                op.finish_request();
                self.free.push(slot);
            }
        }
    }

    /// Claims the queued requests that continue slot `slot`'s request in its file
    /// ([`Shared::claim_next_to`]), up to `block_size` bytes and [`MAX_MERGED`] requests
    /// together, as its riders.
    fn gather(&mut self, slot: usize) {
        if !merging() {
            return;
        }
        let Some(lead) = self.slots[slot].as_ref() else {
            return;
        };
        let Some(fd) = lead.op.direct_fd() else {
            return;
        };
        let c = lead.chunk;
        let buf = lead.op.buf.offset_by(c.buf_offset as usize);
        if lead.op.bounce || !direct_aligned(buf, c.file_offset, c.len) {
            return;
        }
        let mut after = Adjacent {
            write: lead.op.write,
            fd,
            end: c.file_offset + c.len,
            room: self.config.block_size.saturating_sub(c.len),
            spare: self.free.len(),
        };
        while self.riders[slot].len() + 1 < MAX_MERGED && after.room > 0 {
            let Some((op, index)) = self.shared.claim_next_to(&after) else {
                break;
            };
            // No bounce buffer: claim_next_to takes only requests that need none.
            match Active::start(Arc::clone(&op), index, &mut None, self.config.block_size) {
                Ok(a) => {
                    self.shared.meter.begin();
                    after.end += a.chunk.len;
                    after.room -= a.chunk.len;
                    self.riders[slot].push_back(a);
                }
                Err(e) => {
                    op.fail(e);
                    op.finish_request();
                    break;
                }
            }
        }
    }

    /// Issues slot `slot`'s requests as one vectored call; false (nothing issued) when
    /// fault injection has a fault for one of them, which each then meets alone.
    fn issue_merged(&mut self, slot: usize) -> bool {
        let Some(lead) = self.slots[slot].as_mut() else {
            return true;
        };
        let kind = if lead.op.write { Call::Write } else { Call::Read };
        // One fault-injection answer per request per call, as when each goes alone; an
        // answer taken for a call that does not happen is kept for the request's own.
        let mut faulty = false;
        for a in std::iter::once(lead).chain(self.riders[slot].iter_mut()) {
            let answer = match a
                .prechecked
                .take()
                .unwrap_or_else(|| fault::check(kind, &a.op.path))
            {
                Some(Fault::DelayMs(ms)) => {
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    None
                }
                other => other,
            };
            faulty |= answer.is_some();
            a.prechecked = Some(answer);
            if faulty {
                break;
            }
        }
        let Some(lead) = self.slots[slot].as_mut() else {
            return true;
        };
        if faulty {
            return false;
        }
        let iovs = &mut self.iovs[slot];
        iovs.clear();
        for a in std::iter::once(&mut *lead).chain(self.riders[slot].iter_mut()) {
            a.prechecked = None;
            let buf = a.op.buf.offset_by((a.chunk.buf_offset + a.done) as usize);
            iovs.push(buf, (a.chunk.len - a.done) as usize);
        }
        let (write, offset) = (lead.op.write, lead.chunk.file_offset + lead.done);
        let Some(fd) = lead.op.direct_fd() else {
            return false;
        };
        loop {
            // SAFETY: the buffers are the callers' (valid until their operations finish,
            // which needs this call's completion), the iovec array is this slot's and is
            // not touched until the completion is popped, and the descriptor belongs to
            // the operations, which the slot keeps alive.
            let pushed = unsafe {
                self.ring
                    .push_vectored(fd, write, &self.iovs[slot], offset, slot as u64)
            };
            if pushed {
                break;
            }
            let _ = self.ring.submit_and_wait(0);
        }
        self.in_kernel += 1;
        let n = 1 + self.riders[slot].len() as u64;
        self.shared
            .merged
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if self.config.single_submit {
            let _ = self.ring.submit_and_wait(0);
        }
        true
    }

    /// Whether slot `slot`'s next call is a merged one.
    fn merged(&self, slot: usize) -> bool {
        !self.solo[slot] && !self.riders[slot].is_empty()
    }

    fn issue(&mut self, slot: usize) {
        if self.merged(slot) {
            if self.issue_merged(slot) {
                return;
            }
            self.solo[slot] = true;
        }
        let Some(active) = self.slots[slot].as_mut() else {
            return;
        };
        let prechecked = active.prechecked.take();
        let call = match active.next_call(self.bounces[slot].as_ref()) {
            Ok(c) => c,
            Err(e) => {
                active.op.fail(e);
                self.end(slot);
                return;
            }
        };
        let kind = if active.op.write { Call::Write } else { Call::Read };
        match prechecked.unwrap_or_else(|| fault::check(kind, &active.op.path)) {
            Some(Fault::Errno(e)) => {
                self.ready.push((slot, Err(e)));
                return;
            }
            Some(Fault::Short(n)) => self.caps[slot] = n,
            Some(Fault::DelayMs(ms)) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            Some(Fault::Panic) => panic!(
                "injected panic before issuing a request on {}",
                active.op.path.display()
            ),
            None => {}
        }
        let len = call.len;
        let write = active.op.write;
        loop {
            // SAFETY: the buffer is the caller's (valid until the operation finishes) or this
            // slot's bounce buffer; the descriptor belongs to the operation, which the slot
            // keeps alive until the completion is popped.
            let pushed = unsafe {
                self.ring
                    .push(call.fd, write, call.buf, len as u32, call.offset, slot as u64)
            };
            if pushed {
                break;
            }
            let _ = self.ring.submit_and_wait(0);
        }
        self.in_kernel += 1;
        if self.config.single_submit {
            let _ = self.ring.submit_and_wait(0);
        }
    }

    fn on_result(&mut self, slot: usize, res: std::result::Result<usize, i32>) {
        if self.merged(slot) {
            match res {
                Err(libc::EINTR) | Err(libc::EAGAIN) => self.issue(slot),
                // Whose bytes failed is not known: each request alone says.
                Err(_) => {
                    self.solo[slot] = true;
                    self.issue(slot);
                }
                Ok(n) => {
                    let mut left = n as u64;
                    let lead = self.slots[slot].as_mut();
                    for a in lead.into_iter().chain(self.riders[slot].iter_mut()) {
                        let take = left.min(a.chunk.len - a.done);
                        a.done += take;
                        left -= take;
                    }
                    let whole = |a: &Active| a.done == a.chunk.len;
                    let lead_whole = self.slots[slot].as_ref().is_none_or(whole);
                    if !(lead_whole && self.riders[slot].iter().all(whole)) {
                        // A short transfer: the rest goes request by request.
                        self.solo[slot] = true;
                    }
                    if lead_whole {
                        self.end(slot);
                    } else {
                        self.issue(slot);
                    }
                }
            }
            return;
        }
        let step = match self.slots[slot].as_mut() {
            Some(a) => a.on_result(res),
            None => return,
        };
        match step {
            Step::Again => self.issue(slot),
            Step::Finished => self.end(slot),
        }
    }

    /// Ends slot `slot`'s request; its next rider, if any, becomes the slot's request
    /// (ended too if a merged call moved all of it, issued alone otherwise), and the slot
    /// is free once none is left.
    fn end(&mut self, slot: usize) {
        loop {
            if let Some(a) = self.slots[slot].take() {
                let deferred = !a.op.bounce
                    && !a.checksummed
                    && a.done == a.chunk.len
                    && a.op.checksum_part(&a.chunk).is_some();
                if deferred {
                    self.finished.push(a);
                } else {
                    a.finish(self.bounces[slot].as_ref(), &self.shared);
                }
            }
            let Some(next) = self.riders[slot].pop_front() else {
                break;
            };
            let whole = next.done == next.chunk.len;
            self.slots[slot] = Some(next);
            if !whole {
                // Riders left after a failed or short merged call go one by one.
                self.solo[slot] = true;
                self.issue(slot);
                return;
            }
        }
        self.solo[slot] = false;
        self.free.push(slot);
    }
}
