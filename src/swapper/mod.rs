//! The parameter swapper: ZeRO-Infinity parameter offload over the I/O engine.
//!
//! A param is known by a 64-bit id and is AVAILABLE (its data is in a buffer, usable),
//! NOT_AVAILABLE (its data is only on disk) or INFLIGHT (a read is under way). The
//! runtime gets a pool buffer for a param, fills it and swaps it out; later it swaps the
//! param back in (usually asynchronously, one layer ahead), waits, uses it and releases
//! the buffer.
//!
//! # The rooms
//! - [`param`]: what a param can be: its states, its slot (pool or caller buffer), its
//!   one I/O under way.
//! - [`pool`]: the pool's memory (read without the lock) and its free/reserved lists.
//! - [`state`]: the bookkeeping behind the one mutex (the params, the pool's accounting,
//!   the pending sets, the partitioned space's flag) and *every change to it*: the
//!   transitions, and the claim entries that record or undo a call's changes. Its
//!   fields are private, so no other file can change a param but through them.
//! - [`buffers`]: handing buffers to params and to the caller: get_buffer, release,
//!   reserve_available_buffers, and what a param holds.
//! - [`batch`]: the one validation of a batch of ids, and how a batch reports failures.
//! - [`swap_out`], [`swap_in`]: batches of writes and reads.
//! - [`wait`]: completion: the waits, and what a finished read or write does to its param.
//! - [`partition`]: the packed staging space for fp32 partitions and their swap-out.
//! - [`stats`]: the counters and the dump.
//! - [`config`]: the settings and the DeepSpeed configuration reader.
//!
//! Where the bytes go is the [`crate::store`]'s business: a param's id is its key there,
//! and this module knows neither the drives nor the files.
//!
//! # The lock discipline
//! All bookkeeping sits behind one mutex, and no call holds it across a file-system
//! call (stat, open), a conversion, a copy or a wait. A call that does I/O runs in three
//! steps:
//! 1. *claim*, under the lock: check the whole batch ([`batch::check`]), take buffers,
//!    move each param to its new state and mark it `Io::Submitting`, so no other call
//!    touches it;
//! 2. *submit*, without the lock: zero the padding, place the param in the store (a
//!    write), and queue the requests ([`Store::submit`], which first checks the files);
//! 3. *record*, under the lock: attach each ticket, or undo the claim of a param whose
//!    submission failed (the error names exactly those; the others are queued).
//!
//! A synchronous call then waits without the lock, for every pending operation of its
//! kind (as DeepSpeed's `synchronize_reads` / `synchronize_writes` do).
//!
//! The three steps are one value, a claim ([`crate::claim::Claim`], on this swapper
//! [`state::ParamClaim`]): opened holding the lock, it logs an entry per claimed param
//! (the param as it was, the pool buffer it took) before changing it; the submit step
//! notes each outcome in the entry ([`state::Fate`]); ending the claim resolves every
//! entry under the lock: a queued read or write is recorded, anything else is undone.
//! A claim dropped without being ended (an early `?`, or a panic unwinding through the
//! call, at any step) ends itself the same way, after waiting (without the lock) for any
//! I/O into memory the call owns (`swap_into_buffer`'s destination, the partitioned
//! space). So no param is ever left `Io::Submitting`, no buffer lost, and
//! `partition_busy` never stays set.
//!
//! # Panics
//! A panic inside a call leaves the swapper in one of two states, and std's poison flag
//! is not what decides (see [`crate::claim`]):
//! - *usable*, the rule: between two transitions the bookkeeping is consistent, and the
//!   claim undid or recorded whatever the call had claimed. The poison is cleared and
//!   every call works as before; the panicking call returned `SWAPPER_STATUS_PANIC`.
//! - *broken*, when the panic struck in the middle of a transition ([`state::State`]
//!   marks itself as changing while one runs): every later call returns
//!   `SWAPPER_STATUS_PANIC` ("... destroy the handle and create a new one"), as the I/O
//!   engine does after a worker panicked; `swapper_destroy` still works. The read-only
//!   Rust methods (`stats`, `dump`, `available_buffers`) still answer; the C ABI refuses
//!   every call.
//!
//! `tests/swapper_panics.rs` injects a panic at each step (`Call::Point` rules of the
//! fault injection: `<swap folder>|<call>:<step>`, and `<swap folder>|change` for the
//! middle of a transition) of every call, through the C ABI.
//!
//! # Reusing the claim (the optimizer-state swapper)
//! [`crate::claim`] knows nothing of params: a second swapper keeps its bookkeeping in a
//! [`crate::claim::Bookkeeping`], implements [`crate::claim::Ledger`] for it (whether a
//! change is half-done; how an entry is recorded or undone) and
//! [`crate::claim::Settle`] for its entries (waiting for I/O into memory the call
//! owns), and writes its transitions as this swapper's `state.rs` does.
//!
//! # One param, from `swapper_swap_in` to the disk
//! ```text
//! ffi::swapper::swapper_swap_in          pointers checked, handle looked up
//!   Swapper::swap_in_checked (swap_in)   claim: NOT_AVAILABLE -> INFLIGHT, pool buffer taken
//!     Store::submit (store)              checks the param's extent files are still the
//!                                        store's own (once per file), then queues the
//!                                        param's pieces (one per drive it is split over),
//!                                        each an operation on a held extent file
//!       IoEngine::submit_held (io)       per drive: plans block_size requests, queues them
//!         io::worker                     a drive's worker claims requests, keeps queue_depth
//!           sys::uring::Ring             in flight: io_uring submission and completion
//!   record (swap_in)                     Io::Read(store ticket), pending_reads
//! swapper_wait_reads -> wait             ticket waited without the lock (every piece),
//!                                        checksum combined and verified,
//!                                        then INFLIGHT -> AVAILABLE under the lock
//! ```

pub mod batch;
pub mod buffers;
pub mod config;
pub mod param;
pub mod partition;
pub mod pool;
pub mod state;
pub mod stats;
pub mod swap_in;
pub mod swap_out;
pub mod wait;

use std::ops::Deref;
use std::path::PathBuf;

use crate::claim::{Bookkeeping, Held};
use crate::config::IO_ALIGNMENT;
use crate::status::{Error, Result, Status};
use crate::store::{Extent, Store, StoreConfig, StoreTicket};
use crate::sys::RawBuf;
pub use config::Settings;
pub use param::ParamStatus;
use param::Slot;
use pool::Pool;
use state::{ParamClaim, State};
pub use stats::Stats;

/// The parameter swapper. Dropping it waits for every read and write in flight.
pub struct Swapper {
    // Field order matters: the store's engines are dropped (and drained) before the memory.
    store: Store,
    state: Bookkeeping<State>,
    pool: Pool,
    config: Settings,
    elem: usize,
}

/// Bytes a swapper with these settings page-locks for its pool, as the kernel counts
/// them (0 when not pinned); creates nothing. Reads only the pool's settings.
pub fn page_locked_bytes(config: &Settings) -> Result<u64> {
    Pool::page_locked_bytes(config)
}

impl Swapper {
    /// Opens the store (a rank folder per drive, locked and emptied, and an engine per
    /// drive) and the buffer pool.
    pub fn new(config: Settings) -> Result<Swapper> {
        config.validate()?;
        let store = Store::open(StoreConfig {
            paths: config.drive_paths(),
            folder: vec![
                "zero_stage_3".to_string(),
                format!("{}params", config.dtype.folder_name()),
                format!("rank{}", config.rank),
            ],
            io: config.io,
        })?;
        let pool = Pool::new(&config)?;
        crate::log!(
            Info,
            "swapper ready in {}{}: {} buffers of {} elements ({} bytes each), {}",
            store.folder(0).display(),
            match store.drives() {
                1 => String::new(),
                n => format!(" and {} more drives", n - 1),
            },
            config.buffer_count,
            config.buffer_numel,
            pool.buffer_bytes(),
            if pool.is_locked() {
                "page-locked"
            } else {
                "not page-locked"
            }
        );
        let name = store.folder(0).display().to_string();
        Ok(Swapper {
            store,
            state: Bookkeeping::new(State::new(pool.count(), name.clone()), format!("swapper {name}")),
            pool,
            elem: config.dtype.size(),
            config,
        })
    }

    /// The bookkeeping, locked. Held only for bookkeeping (see the module doc); `Panic`
    /// once a panic broke the swapper.
    pub(crate) fn lock(&self) -> Result<Held<'_, State>> {
        self.state.lock()
    }

    /// The bookkeeping, locked for reading only (stats, dumps), even when broken.
    pub(crate) fn peek(&self) -> impl Deref<Target = State> + '_ {
        self.state.peek()
    }

    /// Opens a claim, holding the lock (see the module doc); `Panic` once broken.
    pub(crate) fn claim(&self) -> Result<ParamClaim<'_>> {
        self.state.claim()
    }

    /// `Panic` once a panic inside a call broke the swapper (every call then fails with
    /// it; only destroying the swapper works), else Ok.
    pub fn usable(&self) -> Result<()> {
        self.state.usable()
    }

    /// A step of a call, where a test may inject a panic (feature `fault-injection`;
    /// nothing otherwise): named `<swap folder>|<call>:<step>`.
    fn step(&self, call: &str, step: &str) {
        crate::sys::fault::point(|| format!("{}|{call}:{step}", self.store.folder(0).display()));
    }

    /// The settings.
    pub fn config(&self) -> &Settings {
        &self.config
    }

    /// The rank folder of the first drive.
    pub fn folder(&self) -> PathBuf {
        self.store.folder(0).to_path_buf()
    }

    /// The rank folder of every drive.
    pub fn folders(&self) -> Vec<PathBuf> {
        (0..self.store.drives())
            .map(|d| self.store.folder(d).to_path_buf())
            .collect()
    }

    /// The file holding the first byte of param `id` (an extent file shared with other
    /// params); the first drive's rank folder for a param not on disk.
    pub fn param_path(&self, id: u64) -> PathBuf {
        match self.store.locations(id).into_iter().next() {
            Some(e) => e.path,
            None => self.folder(),
        }
    }

    /// Where param `id`'s bytes are: (drive, extent file, offset, length) in order; empty
    /// for a param not on disk.
    pub fn param_locations(&self, id: u64) -> Vec<Extent> {
        self.store.locations(id)
    }

    /// The first drive's engine (its settings and backend are every drive's).
    pub fn engine(&self) -> &crate::io::IoEngine {
        self.store.engine(0)
    }

    /// The store under the swapper.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops every drive's engine: returns once all I/O in flight has finished (what
    /// destroying the handle does first).
    pub fn close(&self) {
        self.store.close()
    }

    /// Elements per pool buffer, as configured.
    pub fn buffer_numel(&self) -> u64 {
        self.config.buffer_numel
    }

    /// Elements a pool buffer really holds: `buffer_numel` rounded up to the I/O
    /// alignment (the length DeepSpeed gives the buffers of `reserve_available_buffers`).
    pub fn aligned_buffer_numel(&self) -> u64 {
        self.io_aligned_numel(self.config.buffer_numel)
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

    /// The address of a slot.
    fn slot_buf(&self, slot: Slot) -> RawBuf {
        match slot {
            Slot::Pool(i) => self.pool.buf(i),
            Slot::Caller(b) => b,
        }
    }

    /// Queues one read or write of `len` bytes between `buf` and param `id`'s bytes in the
    /// store, from its start, with a checksum of the first `checksum_len` bytes if asked.
    /// A write first places the param (idempotent for the same size). This is the one
    /// place that turns a param into store operations; it makes file-system calls, so it
    /// is never called under the state lock.
    ///
    /// # Safety
    /// `buf` must be valid for `len` bytes (writable for a read) until the ticket has
    /// finished, and not be used by anyone else meanwhile.
    unsafe fn submit_file_io(
        &self,
        id: u64,
        write: bool,
        buf: RawBuf,
        len: u64,
        checksum_len: Option<u64>,
    ) -> Result<StoreTicket> {
        if write {
            self.store.reserve(id, len, false)?;
        }
        // SAFETY: the caller's contract.
        unsafe { self.store.submit(id, write, buf, 0, len, checksum_len) }
    }

    /// Checks that param `id` has a place in the store holding the `bytes` its last write
    /// stored: bookkeeping only (the store's lock, no file-system call). Whether the
    /// extent files behind that place are still the store's own (not deleted, replaced or
    /// truncated) is checked once per operation, by [`Store::submit`], which names the
    /// param's key, the file and the drive.
    fn check_place(&self, id: u64, bytes: u64) -> Result<()> {
        match self.store.reserved(id) {
            Some(r) if r >= bytes => Ok(()),
            _ => Err(Error::new(
                Status::CorruptData,
                format!("param {id} has no place in the store holding its {bytes} bytes"),
            )),
        }
    }
}

/// `numel` rounded up so that `numel * elem` is a multiple of the O_DIRECT alignment.
pub fn io_aligned_numel(numel: u64, elem: usize) -> u64 {
    let align = IO_ALIGNMENT / elem as u64;
    numel.div_ceil(align).saturating_mul(align)
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
