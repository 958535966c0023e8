//! The parameter swapper: ZeRO-Infinity parameter offload over the I/O engine.
//!
//! A param is known by a 64-bit id and is AVAILABLE (its data is in a buffer, usable),
//! NOT_AVAILABLE (its data is only on disk) or INFLIGHT (a read is under way). The
//! runtime gets a pool buffer for a param, fills it and swaps it out; later it swaps the
//! param back in (usually asynchronously, one layer ahead), waits, uses it and releases
//! the buffer. Every batch is checked as a whole before anything changes, so a bad id
//! leaves everything as it was. All state sits behind one mutex; waits let go of it
//! while they block, so a prefetch thread and a compute thread can share a swapper.
//!
//! - [`config`]: settings and the DeepSpeed configuration reader.
//! - [`folder`]: the locked swap folder and its file names.

pub mod config;
pub mod folder;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::config::IO_ALIGNMENT;
use crate::convert;
use crate::io::{IoEngine, Request, Ticket};
use crate::status::{Error, Result, Status};
use crate::sys::alloc::{self, Memory};
use crate::sys::RawBuf;
pub use config::Settings;
use folder::SwapFolder;

/// Where a param's data lives in memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamStatus {
    /// The data is in a buffer and usable.
    Available = 1,
    /// The data is only on disk.
    NotAvailable = 2,
    /// A read into a buffer is under way; `swapper_wait_reads` makes it AVAILABLE.
    Inflight = 3,
}

impl ParamStatus {
    fn name(self) -> &'static str {
        match self {
            ParamStatus::Available => "AVAILABLE",
            ParamStatus::NotAvailable => "NOT_AVAILABLE",
            ParamStatus::Inflight => "INFLIGHT",
        }
    }
}

/// The swapper's bookkeeping (DeepSpeed's counters, plus totals).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Params the swapper knows.
    pub params: u64,
    /// Reads submitted and not yet waited for.
    pub pending_reads: u64,
    /// Writes submitted and not yet waited for.
    pub pending_writes: u64,
    /// Params INFLIGHT.
    pub inflight_params: u64,
    /// Elements of the INFLIGHT params.
    pub inflight_numel: u64,
    /// Params AVAILABLE.
    pub available_params: u64,
    /// Elements of the AVAILABLE params.
    pub available_numel: u64,
    /// Pool buffers free.
    pub free_buffers: u64,
    /// Pool buffers taken by `swapper_reserve_available_buffers`.
    pub reserved_buffers: u64,
    /// Pool buffers in all.
    pub total_buffers: u64,
    /// Bytes read by completed swap-ins.
    pub bytes_read: u64,
    /// Bytes written by completed swap-outs.
    pub bytes_written: u64,
    /// Nanoseconds callers spent blocked waiting for reads.
    pub read_wait_ns: u64,
    /// Nanoseconds callers spent blocked waiting for writes.
    pub write_wait_ns: u64,
}

/// A param's checksum: the crc32c of its bytes, and its parts as the I/O workers
/// computed them (offset, length, crc32c), which locate a mismatch.
#[derive(Clone, Debug)]
struct Checksum {
    crc: u32,
    parts: Vec<(u64, u64, u32)>,
}

impl Checksum {
    /// The checksum a finished operation computed, if it was asked for.
    fn of(ticket: &Ticket) -> Option<Checksum> {
        Some(Checksum {
            crc: ticket.checksum()?,
            parts: ticket.checksum_parts(),
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Pool(usize),
    Caller(RawBuf),
}

struct PendingWrite {
    ticket: Ticket,
    release: bool,
    bytes: u64,
}

struct Param {
    numel: u64,
    status: ParamStatus,
    slot: Option<Slot>,
    /// Bytes of the last complete write, if the file holds the param.
    on_disk: Option<u64>,
    /// The checksum of the bytes on disk (None with checksums off).
    checksum: Option<Checksum>,
    write: Option<PendingWrite>,
    read: Option<Ticket>,
}

struct Partition {
    memory: Memory,
    /// (byte offset, capacity in elements) of each partition's staging slot.
    slots: Vec<(usize, u64)>,
}

struct State {
    params: HashMap<u64, Param>,
    free: Vec<usize>,
    reserved: Vec<usize>,
    pending_reads: BTreeSet<u64>,
    pending_writes: BTreeSet<u64>,
    partition: Option<Partition>,
    bytes_read: u64,
    bytes_written: u64,
    read_wait_ns: u64,
    write_wait_ns: u64,
}

/// The parameter swapper. Dropping it waits for every read and write in flight.
pub struct Swapper {
    // Field order matters: the engine is dropped (and drained) before the memory.
    engine: IoEngine,
    state: Mutex<State>,
    pool: Memory,
    folder: SwapFolder,
    config: Settings,
    elem: usize,
    buffer_bytes: usize,
}

fn describe(ids: &[u64]) -> String {
    if ids.len() == 1 {
        format!("param {}", ids[0])
    } else {
        format!("{} params", ids.len())
    }
}

impl Swapper {
    /// Creates the swap folder (locked, emptied), the engine and the buffer pool.
    pub fn new(config: Settings) -> Result<Swapper> {
        config.validate()?;
        let elem = config.dtype.size();
        let aligned = io_aligned_numel(config.buffer_numel, elem);
        let buffer_bytes = aligned
            .checked_mul(elem as u64)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| Error::new(Status::OutOfMemory, "buffer_numel is too large"))?;
        let total = buffer_bytes
            .checked_mul(config.buffer_count as usize)
            .ok_or_else(|| Error::new(Status::OutOfMemory, "buffer_count * buffer_numel is too large"))?;
        let folder = SwapFolder::open(&config.nvme_path, config.dtype, config.rank)?;
        let engine = IoEngine::new(config.io)?;
        let pool = Memory::allocate(total, config.pin_memory, config.allocator).map_err(|e| {
            e.context(format!(
                "buffer pool of {} x {buffer_bytes} bytes",
                config.buffer_count
            ))
        })?;
        crate::log!(
            Info,
            "swapper ready in {}: {} buffers of {} elements ({} bytes each), {}",
            folder.path().display(),
            config.buffer_count,
            config.buffer_numel,
            buffer_bytes,
            if pool.is_locked() {
                "page-locked"
            } else {
                "not page-locked"
            }
        );
        Ok(Swapper {
            engine,
            state: Mutex::new(State {
                params: HashMap::new(),
                free: (0..config.buffer_count as usize).rev().collect(),
                reserved: Vec::new(),
                pending_reads: BTreeSet::new(),
                pending_writes: BTreeSet::new(),
                partition: None,
                bytes_read: 0,
                bytes_written: 0,
                read_wait_ns: 0,
                write_wait_ns: 0,
            }),
            pool,
            folder,
            elem,
            buffer_bytes,
            config,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The settings.
    pub fn config(&self) -> &Settings {
        &self.config
    }

    /// The swap folder.
    pub fn folder(&self) -> PathBuf {
        self.folder.path().to_path_buf()
    }

    /// The swap file of a param.
    pub fn param_path(&self, id: u64) -> PathBuf {
        self.folder.param_path(id)
    }

    /// The engine.
    pub fn engine(&self) -> &IoEngine {
        &self.engine
    }

    /// Elements per pool buffer.
    pub fn buffer_numel(&self) -> u64 {
        self.config.buffer_numel
    }

    /// Bytes per element.
    pub fn element_size(&self) -> usize {
        self.elem
    }

    /// `numel` rounded up so that its bytes are a multiple of the O_DIRECT alignment.
    pub fn io_aligned_numel(&self, numel: u64) -> u64 {
        io_aligned_numel(numel, self.elem)
    }

    /// Whether a tensor of `numel` elements is worth swapping: at least max(1 MiB,
    /// block_size) bytes, as in DeepSpeed.
    pub fn swappable(&self, numel: u64) -> bool {
        numel.saturating_mul(self.elem as u64) >= (1u64 << 20).max(self.config.io.block_size)
    }

    /// Free pool buffers.
    pub fn available_buffers(&self) -> usize {
        self.lock().free.len()
    }

    fn pool_buf(&self, i: usize) -> RawBuf {
        self.pool.raw().offset_by(i * self.buffer_bytes)
    }

    fn slot_buf(&self, slot: Slot) -> RawBuf {
        match slot {
            Slot::Pool(i) => self.pool_buf(i),
            Slot::Caller(b) => b,
        }
    }

    fn known(st: &State, id: u64) -> Result<&Param> {
        st.params.get(&id).ok_or_else(|| {
            Error::new(
                Status::NotFound,
                format!("param {id} is not known to this swapper"),
            )
        })
    }

    fn no_duplicates(ids: &[u64]) -> Result<()> {
        let mut seen = HashSet::with_capacity(ids.len());
        for id in ids {
            if !seen.insert(*id) {
                return Err(Error::invalid(format!("param {id} appears twice in the batch")));
            }
        }
        Ok(())
    }

    /// Gives param `id` a free pool buffer for `numel` elements and makes it AVAILABLE; the
    /// caller fills the buffer, then swaps the param out. A new id is registered; a known
    /// one must be NOT_AVAILABLE (its file is then considered stale until the next swap-out).
    pub fn get_buffer(&self, id: u64, numel: u64) -> Result<RawBuf> {
        if numel == 0 {
            return Err(Error::invalid(format!("param {id}: numel is 0")));
        }
        if numel > self.config.buffer_numel {
            return Err(Error::new(
                Status::NoBuffer,
                format!(
                    "param {id}: {numel} elements do not fit a buffer of {} elements",
                    self.config.buffer_numel
                ),
            ));
        }
        let mut st = self.lock();
        if let Some(p) = st.params.get(&id) {
            if p.status != ParamStatus::NotAvailable || p.write.is_some() {
                return Err(Error::bad_state(format!(
                    "param {id} is {} and already has a buffer",
                    p.status.name()
                )));
            }
        }
        let Some(i) = st.free.pop() else {
            return Err(Error::new(
                Status::NoBuffer,
                format!(
                    "param {id}: no free buffer (all {} are in use)",
                    self.config.buffer_count
                ),
            ));
        };
        let p = st.params.entry(id).or_insert(Param {
            numel,
            status: ParamStatus::NotAvailable,
            slot: None,
            on_disk: None,
            checksum: None,
            write: None,
            read: None,
        });
        p.numel = numel;
        p.status = ParamStatus::Available;
        p.slot = Some(Slot::Pool(i));
        p.on_disk = None;
        Ok(self.pool_buf(i))
    }

    fn check_swap_out(st: &State, ids: &[u64]) -> Result<()> {
        Self::no_duplicates(ids)?;
        for &id in ids {
            let p = Self::known(st, id)?;
            if p.status != ParamStatus::Available || p.slot.is_none() {
                return Err(Error::bad_state(format!(
                    "param {id} is {}: only an AVAILABLE param with a buffer can be swapped out",
                    p.status.name()
                )));
            }
            if p.write.is_some() {
                return Err(Error::bad_state(format!(
                    "a write of param {id} is already in flight; call swapper_wait_writes first"
                )));
            }
        }
        Ok(())
    }

    /// Writes each param's buffer to its file. Asynchronous: returns once queued; the
    /// buffers must not change until `wait_writes`. The params stay AVAILABLE.
    pub fn swap_out(&self, ids: &[u64], async_op: bool) -> Result<()> {
        self.swap_out_inner(ids, async_op, false)
    }

    /// As [`Swapper::swap_out`], then releases the buffers once the writes have completed
    /// successfully (the params become NOT_AVAILABLE). Asynchronous use must be asked for
    /// with `force_buffer_release`; the release then happens in `wait_writes`.
    pub fn swap_out_and_release(
        &self,
        ids: &[u64],
        async_op: bool,
        force_buffer_release: bool,
    ) -> Result<()> {
        if async_op && !force_buffer_release {
            return Err(Error::invalid(
                "an asynchronous swap_out_and_release releases buffers only after the writes complete, in \
                 swapper_wait_writes; set force_buffer_release to ask for that",
            ));
        }
        self.swap_out_inner(ids, async_op, true)
    }

    fn swap_out_inner(&self, ids: &[u64], async_op: bool, release: bool) -> Result<()> {
        let mut st = self.lock();
        Self::check_swap_out(&st, ids)?;
        let mut submit_error = None;
        for &id in ids {
            let (numel, slot) = {
                let p = &st.params[&id];
                (p.numel, p.slot.unwrap_or(Slot::Pool(usize::MAX)))
            };
            let data_bytes = numel as usize * self.elem;
            let buf = self.slot_buf(slot);
            let len = match slot {
                Slot::Pool(i) => {
                    let aligned = self.io_aligned_numel(numel) as usize * self.elem;
                    // SAFETY: the padding past the param's elements belongs to the pool
                    // buffer and no I/O uses this buffer (checked: no write in flight).
                    unsafe {
                        self.pool
                            .slice_mut(i * self.buffer_bytes + data_bytes, aligned - data_bytes)
                    }
                    .fill(0);
                    aligned
                }
                Slot::Caller(_) => data_bytes,
            };
            let path = self.folder.param_path(id);
            let req = Request {
                write: true,
                buf,
                len: len as u64,
                path: &path,
                offset: 0,
                nofollow: true,
                dir: Some(self.folder.dir()),
                checksum_len: self.config.verify_checksums.then_some(data_bytes as u64),
            };
            // SAFETY: pool buffers live as long as the swapper, whose engine is drained
            // before the pool is freed; caller buffers are kept valid by the caller until
            // the param is released (swap_in's contract).
            match unsafe { self.engine.submit(&req) } {
                Ok(ticket) => {
                    let p = st.params.get_mut(&id).expect("checked above");
                    p.write = Some(PendingWrite {
                        ticket,
                        release,
                        bytes: len as u64,
                    });
                    st.pending_writes.insert(id);
                }
                Err(e) => {
                    submit_error = Some(e.context(format!("swap out of param {id}")));
                    break;
                }
            }
        }
        drop(st);
        self.end_batch(false, ids, async_op, submit_error)
    }

    /// Reads each param into a free pool buffer (or into `dest[i]`, which must hold the
    /// param's elements) and makes it INFLIGHT; synchronous calls wait and make it
    /// AVAILABLE. Every param must be NOT_AVAILABLE and on disk.
    ///
    /// # Safety
    /// Each `dest` buffer must be valid for writing the param's bytes, and stay valid and
    /// unused by anything else until the param is released.
    pub unsafe fn swap_in(&self, ids: &[u64], async_op: bool, dest: Option<&[RawBuf]>) -> Result<()> {
        // SAFETY: forwarded contract.
        unsafe { self.swap_in_checked(ids, async_op, dest, None) }
    }

    /// As [`Swapper::swap_in`], with the element capacity of each destination buffer, checked
    /// against the param's size before anything starts (`NoBuffer` if one is too small).
    ///
    /// # Safety
    /// As [`Swapper::swap_in`].
    pub unsafe fn swap_in_checked(
        &self,
        ids: &[u64],
        async_op: bool,
        dest: Option<&[RawBuf]>,
        capacities: Option<&[u64]>,
    ) -> Result<()> {
        let mut st = self.lock();
        Self::no_duplicates(ids)?;
        if let Some(d) = dest {
            if d.len() != ids.len() {
                return Err(Error::invalid(format!(
                    "{} ids but {} destination buffers",
                    ids.len(),
                    d.len()
                )));
            }
            if let Some(i) = d.iter().position(|b| b.0.is_null()) {
                return Err(Error::new(
                    Status::NullPointer,
                    format!("destination buffer {i} is NULL"),
                ));
            }
        }
        for (k, &id) in ids.iter().enumerate() {
            let p = Self::known(&st, id)?;
            self.check_readable(id, p)?;
            if let Some(&cap) = capacities.and_then(|c| c.get(k)) {
                if cap < p.numel {
                    return Err(Error::new(
                        Status::NoBuffer,
                        format!(
                            "param {id} has {} elements; destination buffer {k} holds {cap}",
                            p.numel
                        ),
                    ));
                }
            }
        }
        if dest.is_none() && st.free.len() < ids.len() {
            return Err(Error::new(
                Status::NoBuffer,
                format!(
                    "swapping in {} needs {} free buffers; {} are free",
                    describe(ids),
                    ids.len(),
                    st.free.len()
                ),
            ));
        }
        let mut submit_error = None;
        for (k, &id) in ids.iter().enumerate() {
            let slot = match dest {
                Some(d) => Slot::Caller(d[k]),
                None => Slot::Pool(st.free.pop().expect("counted above")),
            };
            let p = &st.params[&id];
            let len = match slot {
                Slot::Pool(_) => p.on_disk.unwrap_or(0),
                Slot::Caller(_) => p.numel * self.elem as u64,
            };
            let path = self.folder.param_path(id);
            let req = Request {
                write: false,
                buf: self.slot_buf(slot),
                len,
                path: &path,
                offset: 0,
                nofollow: true,
                dir: Some(self.folder.dir()),
                checksum_len: p.checksum.as_ref().map(|_| p.numel * self.elem as u64),
            };
            // SAFETY: pool buffers outlive the engine's work; caller buffers are covered by
            // this function's contract.
            match unsafe { self.engine.submit(&req) } {
                Ok(ticket) => {
                    let p = st.params.get_mut(&id).expect("checked above");
                    p.slot = Some(slot);
                    p.status = ParamStatus::Inflight;
                    p.read = Some(ticket);
                    st.pending_reads.insert(id);
                }
                Err(e) => {
                    if let Slot::Pool(i) = slot {
                        st.free.push(i);
                    }
                    submit_error = Some(self.read_error(id, e));
                    break;
                }
            }
        }
        drop(st);
        self.end_batch(true, ids, async_op, submit_error)
    }

    /// Ends a batch whose submission stopped at `submit_error` (if any): a synchronous batch
    /// waits for what it submitted; the submission error comes first.
    fn end_batch(&self, reads: bool, ids: &[u64], async_op: bool, submit_error: Option<Error>) -> Result<()> {
        let waited = if async_op {
            Ok(())
        } else {
            self.wait(reads, Some(ids))
        };
        match submit_error {
            Some(e) => Err(e),
            None => waited,
        }
    }

    fn check_readable(&self, id: u64, p: &Param) -> Result<()> {
        if p.status != ParamStatus::NotAvailable {
            return Err(Error::bad_state(format!(
                "param {id} is {}: only a NOT_AVAILABLE param can be swapped in",
                p.status.name()
            )));
        }
        if p.write.is_some() {
            return Err(Error::bad_state(format!(
                "a write of param {id} is in flight; call swapper_wait_writes first"
            )));
        }
        let Some(bytes) = p.on_disk else {
            return Err(Error::bad_state(format!(
                "param {id} has no complete copy on disk (never swapped out, or its last swap-out failed)"
            )));
        };
        let path = self.folder.param_path(id);
        match self.folder.metadata(id) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::new(
                Status::CorruptData,
                format!("the swap file of param {id} was deleted: {}", path.display()),
            )),
            Err(e) => Err(Error::os(
                &format!("param {id}: cannot stat"),
                &path,
                None,
                e.raw_os_error().unwrap_or(libc::EIO),
            )),
            Ok(m) if !m.is_file() => Err(Error::new(
                Status::CorruptData,
                format!(
                    "the swap file of param {id} was replaced by something else: {}",
                    path.display()
                ),
            )),
            Ok(m) if m.len() < bytes => Err(Error::new(
                Status::CorruptData,
                format!(
                    "the swap file of param {id} is truncated: {} holds {} bytes, {bytes} were written",
                    path.display(),
                    m.len()
                ),
            )),
            Ok(_) => Ok(()),
        }
    }

    fn read_error(&self, id: u64, e: Error) -> Error {
        e.context(format!("swap in of param {id}"))
    }

    /// Reads param `id` synchronously into `dest` (at least the param's elements), without
    /// using a pool buffer; the param stays NOT_AVAILABLE.
    ///
    /// # Safety
    /// `dest` must be valid for writing `dest_numel` elements during the call.
    pub unsafe fn swap_into_buffer(&self, id: u64, dest: RawBuf, dest_numel: u64) -> Result<()> {
        if dest.0.is_null() {
            return Err(Error::new(Status::NullPointer, "dest is NULL"));
        }
        // Hold the lock: the param must not change state during the read.
        let st = self.lock();
        let p = Self::known(&st, id)?;
        self.check_readable(id, p)?;
        if dest_numel < p.numel {
            return Err(Error::new(
                Status::NoBuffer,
                format!("param {id} has {} elements; dest holds {dest_numel}", p.numel),
            ));
        }
        let bytes = p.numel * self.elem as u64;
        let path = self.folder.param_path(id);
        let req = Request {
            write: false,
            buf: dest,
            len: bytes,
            path: &path,
            offset: 0,
            nofollow: true,
            dir: Some(self.folder.dir()),
            checksum_len: p.checksum.as_ref().map(|_| bytes),
        };
        // SAFETY: the caller's contract; the ticket is waited for before returning.
        let ticket = unsafe { self.engine.submit(&req) }.map_err(|e| self.read_error(id, e))?;
        ticket.wait().map_err(|e| self.read_error(id, e))?;
        self.verify(id, p.checksum.as_ref(), &ticket, dest, bytes as usize)
    }

    /// Compares the checksum the workers computed while reading with the one recorded when
    /// the param was written; a mismatch is located by recomputing the parts over `buf`.
    fn verify(
        &self,
        id: u64,
        want: Option<&Checksum>,
        ticket: &Ticket,
        buf: RawBuf,
        len: usize,
    ) -> Result<()> {
        let Some(want) = want else {
            return Ok(());
        };
        if ticket.checksum() == Some(want.crc) {
            return Ok(());
        }
        let path = self.folder.param_path(id);
        // SAFETY: the read into `buf` has completed and nothing else writes it.
        let data = unsafe { alloc::borrow(buf, len) };
        let bad = want.parts.iter().find(|(start, n, crc)| {
            let end = (start + n) as usize;
            end > data.len() || crc32c::crc32c(&data[*start as usize..end]) != *crc
        });
        let place = match bad {
            Some((start, n, crc)) => format!(
                "at offset {start} (bytes {start} to {}; crc32c expected {crc:#010x})",
                start + n
            ),
            None => format!("(crc32c of the whole param expected {:#010x})", want.crc),
        };
        Err(Error::new(
            Status::CorruptData,
            format!("param {id}: checksum mismatch in {} {place}", path.display()),
        ))
    }

    /// Waits for every read submitted before the call; the params become AVAILABLE. A
    /// failed read returns its buffer to the pool and leaves its param NOT_AVAILABLE; the
    /// error names every failed param. With nothing pending it returns at once.
    pub fn wait_reads(&self) -> Result<()> {
        self.wait(true, None)
    }

    /// Waits for every write submitted before the call; params swapped out with release
    /// give back their buffers. A failed write leaves its param AVAILABLE with its buffer
    /// and data, ready for a retry; the error names every failed param.
    pub fn wait_writes(&self) -> Result<()> {
        self.wait(false, None)
    }

    /// Waits for the reads and writes of these params only (others stay in flight), so a
    /// runtime prefetching several layers ahead waits for the layer it needs while the next
    /// ones keep the device busy. Unknown ids are `NotFound`; a param with nothing in
    /// flight is a no-op.
    pub fn wait_params(&self, ids: &[u64]) -> Result<()> {
        {
            let st = self.lock();
            for &id in ids {
                Self::known(&st, id)?;
            }
        }
        let reads = self.wait(true, Some(ids));
        let writes = self.wait(false, Some(ids));
        reads.and(writes)
    }

    fn wait(&self, reads: bool, only: Option<&[u64]>) -> Result<()> {
        let start = Instant::now();
        let snapshot: Vec<(u64, Ticket)> = {
            let st = self.lock();
            let pending = if reads {
                &st.pending_reads
            } else {
                &st.pending_writes
            };
            let pick = |id: &u64| -> Option<(u64, Ticket)> {
                let p = st.params.get(id)?;
                let t = if reads {
                    p.read.clone()
                } else {
                    p.write.as_ref().map(|w| w.ticket.clone())
                };
                t.map(|t| (*id, t))
            };
            match only {
                Some(ids) => ids
                    .iter()
                    .filter(|id| pending.contains(id))
                    .filter_map(pick)
                    .collect(),
                None => pending.iter().filter_map(pick).collect(),
            }
        };
        if snapshot.is_empty() {
            return Ok(());
        }
        for (_, t) in &snapshot {
            let _ = t.wait();
        }
        let mut st = self.lock();
        let mut errors = Vec::new();
        for (id, ticket) in snapshot {
            let result = ticket.wait();
            let r = if reads {
                self.finish_read(&mut st, id, &ticket, result)
            } else {
                self.finish_write(&mut st, id, &ticket, result)
            };
            if let Err(e) = r {
                errors.push(e);
            }
        }
        let ns = start.elapsed().as_nanos() as u64;
        if reads {
            st.read_wait_ns += ns;
        } else {
            st.write_wait_ns += ns;
        }
        drop(st);
        combine(errors)
    }

    fn finish_read(&self, st: &mut State, id: u64, ticket: &Ticket, result: Result<()>) -> Result<()> {
        let Some(p) = st.params.get_mut(&id) else {
            return Ok(());
        };
        if !p.read.as_ref().is_some_and(|t| t.same(ticket)) {
            return Ok(()); // finished by a concurrent wait
        }
        p.read = None;
        st.pending_reads.remove(&id);
        let p = st.params.get_mut(&id).expect("present");
        let bytes = p.numel as usize * self.elem;
        let checked = result.map_err(|e| self.read_error(id, e)).and_then(|()| {
            let buf = self.slot_buf(p.slot.unwrap_or(Slot::Pool(usize::MAX)));
            self.verify(id, p.checksum.as_ref(), ticket, buf, bytes)
        });
        let moved = match p.slot {
            Some(Slot::Pool(_)) => p.on_disk.unwrap_or(bytes as u64),
            _ => bytes as u64,
        };
        match checked {
            Ok(()) => {
                p.status = ParamStatus::Available;
                st.bytes_read += moved;
                Ok(())
            }
            Err(e) => {
                p.status = ParamStatus::NotAvailable;
                if let Some(Slot::Pool(i)) = p.slot.take() {
                    st.free.push(i);
                }
                Err(e.context("the param stays NOT_AVAILABLE and its buffer went back to the pool"))
            }
        }
    }

    fn finish_write(&self, st: &mut State, id: u64, ticket: &Ticket, result: Result<()>) -> Result<()> {
        let Some(p) = st.params.get_mut(&id) else {
            return Ok(());
        };
        if !p.write.as_ref().is_some_and(|w| w.ticket.same(ticket)) {
            return Ok(());
        }
        let Some(w) = p.write.take() else {
            return Ok(());
        };
        st.pending_writes.remove(&id);
        let p = st.params.get_mut(&id).expect("present");
        match result {
            Ok(()) => {
                p.on_disk = Some(w.bytes);
                p.checksum = Checksum::of(&w.ticket);
                st.bytes_written += w.bytes;
                if w.release {
                    p.status = ParamStatus::NotAvailable;
                    if let Some(Slot::Pool(i)) = p.slot.take() {
                        st.free.push(i);
                    }
                }
                Ok(())
            }
            Err(e) => {
                p.on_disk = None;
                Err(e.context(format!(
                    "swap out of param {id} failed; it stays AVAILABLE with its buffer and data"
                )))
            }
        }
    }

    /// Gives back the buffers of AVAILABLE params (pool buffers return to the pool; caller
    /// buffers are let go); the params become NOT_AVAILABLE.
    pub fn release(&self, ids: &[u64]) -> Result<()> {
        let mut st = self.lock();
        Self::no_duplicates(ids)?;
        for &id in ids {
            let p = Self::known(&st, id)?;
            if p.status != ParamStatus::Available || p.slot.is_none() {
                return Err(Error::bad_state(format!(
                    "param {id} is {} and holds no buffer to release",
                    p.status.name()
                )));
            }
            if p.write.is_some() {
                return Err(Error::bad_state(format!(
                    "a write of param {id} is in flight; call swapper_wait_writes before releasing it"
                )));
            }
        }
        for &id in ids {
            let p = st.params.get_mut(&id).expect("checked above");
            p.status = ParamStatus::NotAvailable;
            if let Some(Slot::Pool(i)) = p.slot.take() {
                st.free.push(i);
            }
        }
        Ok(())
    }

    /// The param's status.
    pub fn param_status(&self, id: u64) -> Result<ParamStatus> {
        Ok(Self::known(&self.lock(), id)?.status)
    }

    /// The buffer of an AVAILABLE param and its element count.
    pub fn param_buffer(&self, id: u64) -> Result<(RawBuf, u64)> {
        let st = self.lock();
        let p = Self::known(&st, id)?;
        match (p.status, p.slot) {
            (ParamStatus::Available, Some(slot)) => Ok((self.slot_buf(slot), p.numel)),
            (s, _) => Err(Error::bad_state(format!(
                "param {id} is {} and has no usable buffer",
                s.name()
            ))),
        }
    }

    /// Takes up to `capacity` free buffers out of the pool for the caller (each holds
    /// `buffer_numel` elements); [`Swapper::release_reserved_buffers`] puts them back.
    pub fn reserve_available_buffers(&self, capacity: usize) -> Vec<RawBuf> {
        let mut st = self.lock();
        let n = capacity.min(st.free.len());
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = st.free.pop().expect("counted");
            st.reserved.push(i);
            out.push(self.pool_buf(i));
        }
        out
    }

    /// Puts every reserved buffer back into the pool. Refused while a param still uses one
    /// (as a swap-in destination).
    pub fn release_reserved_buffers(&self) -> Result<()> {
        let mut st = self.lock();
        let base = self.pool.raw().addr();
        for (id, p) in &st.params {
            if let Some(Slot::Caller(b)) = p.slot {
                let a = b.addr();
                if a >= base
                    && a < base + self.pool.len()
                    && st.reserved.contains(&((a - base) / self.buffer_bytes))
                {
                    return Err(Error::bad_state(format!(
                        "param {id} still uses a reserved buffer; release it first"
                    )));
                }
            }
        }
        let reserved = std::mem::take(&mut st.reserved);
        st.free.extend(reserved);
        Ok(())
    }

    /// Allocates one staging buffer with an aligned slot per partition size, for
    /// [`Swapper::swap_out_partitioned`]. Replaces an earlier one.
    pub fn reserve_partitioned_swap_space(&self, numels: &[u64]) -> Result<()> {
        if numels.is_empty() {
            return Err(Error::invalid("no partition sizes given"));
        }
        let mut slots = Vec::with_capacity(numels.len());
        let mut total: usize = 0;
        for &n in numels {
            let bytes =
                usize::try_from(self.io_aligned_numel(n).saturating_mul(self.elem as u64)).map_err(|_| {
                    Error::new(
                        Status::OutOfMemory,
                        format!("partition of {n} elements is too large"),
                    )
                })?;
            slots.push((total, n));
            total = total
                .checked_add(bytes)
                .ok_or_else(|| Error::new(Status::OutOfMemory, "the partitions are too large together"))?;
        }
        let memory = Memory::allocate(total, self.config.pin_memory, self.config.allocator)?;
        let mut st = self.lock();
        st.partition = Some(Partition { memory, slots });
        Ok(())
    }

    /// Converts each fp32 source to the swapper's dtype in the staging buffer and writes it
    /// to the destination param's existing file (synchronously, after waiting for pending
    /// writes). Each destination must be NOT_AVAILABLE with a file and as many elements as
    /// its source.
    pub fn swap_out_partitioned(&self, ids: &[u64], srcs: &[&[f32]]) -> Result<()> {
        if ids.len() != srcs.len() {
            return Err(Error::invalid(format!(
                "{} ids but {} sources",
                ids.len(),
                srcs.len()
            )));
        }
        self.wait_writes()?;
        let mut st = self.lock();
        let Some(part) = st.partition.as_ref() else {
            return Err(Error::bad_state(
                "no partitioned swap space: call swapper_reserve_partitioned_swap_space first",
            ));
        };
        if ids.len() > part.slots.len() {
            return Err(Error::new(
                Status::NoBuffer,
                format!(
                    "{} partitions given, space was reserved for {}",
                    ids.len(),
                    part.slots.len()
                ),
            ));
        }
        Self::no_duplicates(ids)?;
        for (k, (&id, src)) in ids.iter().zip(srcs).enumerate() {
            let p = Self::known(&st, id)?;
            if p.status != ParamStatus::NotAvailable || p.write.is_some() || p.read.is_some() {
                return Err(Error::bad_state(format!(
                    "param {id} is {}: a partitioned swap-out needs NOT_AVAILABLE params",
                    p.status.name()
                )));
            }
            if p.on_disk.is_none() {
                return Err(Error::bad_state(format!(
                    "param {id} has no swap file to overwrite"
                )));
            }
            if src.len() as u64 != p.numel {
                return Err(Error::invalid(format!(
                    "source {k} has {} elements; param {id} has {}",
                    src.len(),
                    p.numel
                )));
            }
            if p.numel > part.slots[k].1 {
                return Err(Error::new(
                    Status::NoBuffer,
                    format!(
                        "param {id} has {} elements; partition slot {k} holds {}",
                        p.numel, part.slots[k].1
                    ),
                ));
            }
        }
        let mut tickets = Vec::with_capacity(ids.len());
        let mut first_error = None;
        for (k, (&id, src)) in ids.iter().zip(srcs).enumerate() {
            let (offset, _) = part.slots[k];
            let data_bytes = src.len() * self.elem;
            let aligned = self.io_aligned_numel(src.len() as u64) as usize * self.elem;
            // SAFETY: slot k is this call's alone (the state lock is held and no I/O uses it).
            let staging = unsafe { part.memory.slice_mut(offset, aligned) };
            convert::from_f32(src, self.config.dtype, &mut staging[..data_bytes]);
            staging[data_bytes..].fill(0);
            let path = self.folder.param_path(id);
            let req = Request {
                write: true,
                buf: part.memory.raw().offset_by(offset),
                len: aligned as u64,
                path: &path,
                offset: 0,
                nofollow: true,
                dir: Some(self.folder.dir()),
                checksum_len: self.config.verify_checksums.then_some(data_bytes as u64),
            };
            // SAFETY: the staging memory outlives the wait below (the lock is held).
            match unsafe { self.engine.submit(&req) } {
                Ok(t) => tickets.push((id, t, aligned as u64)),
                Err(e) => {
                    first_error = Some(e.context(format!("partitioned swap out of param {id}")));
                    break;
                }
            }
        }
        let mut errors: Vec<Error> = first_error.into_iter().collect();
        for (id, t, bytes) in tickets {
            let p = st.params.get_mut(&id).expect("checked above");
            match t.wait() {
                Ok(()) => {
                    p.on_disk = Some(bytes);
                    p.checksum = Checksum::of(&t);
                    st.bytes_written += bytes;
                }
                Err(e) => {
                    p.on_disk = None;
                    errors.push(e.context(format!(
                        "partitioned swap out of param {id}; its file is now invalid"
                    )));
                }
            }
        }
        combine(errors)
    }

    /// The bookkeeping.
    pub fn stats(&self) -> Stats {
        let st = self.lock();
        let mut s = Stats {
            params: st.params.len() as u64,
            pending_reads: st.pending_reads.len() as u64,
            pending_writes: st.pending_writes.len() as u64,
            free_buffers: st.free.len() as u64,
            reserved_buffers: st.reserved.len() as u64,
            total_buffers: self.config.buffer_count as u64,
            bytes_read: st.bytes_read,
            bytes_written: st.bytes_written,
            read_wait_ns: st.read_wait_ns,
            write_wait_ns: st.write_wait_ns,
            ..Stats::default()
        };
        for p in st.params.values() {
            match p.status {
                ParamStatus::Available => {
                    s.available_params += 1;
                    s.available_numel += p.numel;
                }
                ParamStatus::Inflight => {
                    s.inflight_params += 1;
                    s.inflight_numel += p.numel;
                }
                ParamStatus::NotAvailable => {}
            }
        }
        s
    }

    /// A human-readable dump of the whole state (DeepSpeed's `print_object`).
    pub fn dump(&self) -> String {
        let s = self.stats();
        let st = self.lock();
        let mut out = String::new();
        let _ = writeln!(out, "swapper {}", self.folder.path().display());
        let _ = writeln!(
            out,
            "  dtype {:?} ({} bytes), buffers {} x {} elements ({} bytes), pinned {}, checksums {}",
            self.config.dtype,
            self.elem,
            self.config.buffer_count,
            self.config.buffer_numel,
            self.buffer_bytes,
            self.pool.is_locked(),
            self.config.verify_checksums
        );
        let io = self.engine.config();
        let _ = writeln!(
            out,
            "  io: backend {}, block {} bytes, queue depth {}, threads {}, direct {}",
            self.engine.backend().name(),
            io.block_size,
            io.queue_depth,
            io.thread_count,
            io.direct_io.name()
        );
        let _ = writeln!(out, "  {s:?}");
        let mut ids: Vec<_> = st.params.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let p = &st.params[&id];
            let slot = match p.slot {
                Some(Slot::Pool(i)) => format!("pool buffer {i}"),
                Some(Slot::Caller(b)) => format!("caller buffer {:p}", b.0),
                None => "no buffer".into(),
            };
            let _ = writeln!(
                out,
                "  param {id}: {} numel {} {slot}, on disk {}{}{}",
                p.status.name(),
                p.numel,
                p.on_disk.map_or("no".into(), |b| format!("{b} bytes")),
                if p.write.is_some() {
                    ", write in flight"
                } else {
                    ""
                },
                if p.read.is_some() { ", read in flight" } else { "" },
            );
        }
        out
    }
}

/// `numel` rounded up so that `numel * elem` is a multiple of the O_DIRECT alignment.
pub fn io_aligned_numel(numel: u64, elem: usize) -> u64 {
    let align = IO_ALIGNMENT / elem as u64;
    numel.div_ceil(align).saturating_mul(align)
}

fn combine(errors: Vec<Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.into_iter().next().expect("one error")),
        n => {
            let status = errors[0].status();
            let text: Vec<&str> = errors.iter().map(|e| e.message()).collect();
            Err(Error::new(
                status,
                format!("{n} params failed: {}", text.join("; ")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_numel() {
        assert_eq!(io_aligned_numel(1, 2), 2048);
        assert_eq!(io_aligned_numel(2048, 2), 2048);
        assert_eq!(io_aligned_numel(2049, 2), 4096);
        assert_eq!(io_aligned_numel(1, 4), 1024);
        assert_eq!(io_aligned_numel(0, 2), 0);
    }
}
