//! The swap store: where tensors' bytes live on one or several drives, under both
//! swappers. A tensor is known by a 64-bit key; the store places its bytes, moves them
//! in and out through each drive's own engine, checks that its files are still its own,
//! and gives the space back when the tensor is forgotten. Nothing above it knows how
//! many drives there are.
//!
//! # Layout
//! ```text
//!  nvme_path[0]/zero_stage_3/float16params/rank0/     nvme_path[1]/zero_stage_3/float16params/rank0/
//!   (locked, 0700, held open, emptied at open)          (another drive: its own lock, engine, files)
//!  ┌ extent-0.swp ─────────────────────────────────┐   ┌ extent-0.swp ───────────────────────────┐
//!  │ key 7 │ key 9 │ free │ key 3 (1st MiB-chunk) … │   │ key 3 (2nd chunk) … │ key 8 │ ▒ fresh ▒ │
//!  └───────────────────────────────────────────────┘   └─────────────────────────────────────────┘
//!   extent-1.swp …  (a new file once one reaches 64 GiB)
//! ```
//! - **Extent files** (`extent-<k>.swp`, [`drive`]): a few large files per drive, created
//!   at first need and held open (an O_DIRECT and a buffered descriptor each) for the
//!   store's life, grown by fallocate in large steps (16 MiB, then the drive's size so
//!   far, at most 1 GiB at a time). No file is created per tensor, and the open files are
//!   bounded by the number of extent files whatever the number of operations in flight.
//! - **Pieces** ([`space`]): a tensor's bytes on one drive are one piece of an extent
//!   file, at a 4 KiB-aligned offset (1 MiB-aligned for a piece of 1 MiB or more). Freed
//!   pieces are reused; a piece reused for a tensor that must read as zeros is zeroed by
//!   the file system (FALLOC_FL_ZERO_RANGE, or a punched hole), never by writing zeros.
//! - **Placement** ([`placement`]): small tensors whole on one drive, so that bytes per
//!   drive follow the drives' weights; large ones split across drives in 1 MiB units.
//!   The weights follow the drives' measured rates ([`drive::RateMeter`]: bytes per
//!   second of busy time of each drive's engine; bounded, in steps:
//!   [`placement::weights_from_rates`]), unless set ([`Store::set_weights`]). Until
//!   every drive has a rate, a large tensor is not split by guess: it is reserved for a
//!   race (`raced.rs`, [`crate::io::race`]) whose first whole write the drives' engines
//!   share unit by unit as their requests finish, so each drive takes what its real speed
//!   gives it (a drive at half rate a third of the tensor), still one piece per drive in
//!   drive order; each drive reserves the span its lane may reach and gives back the rest
//!   once the lanes have met. Placement at a tensor's first write decides where its
//!   reads come from too, until a write of the whole tensor finds the weights moved by
//!   at least [`REPLACE_STEP`] on some drive since it was placed: that write goes to a
//!   new place by the new weights (the old one is freed, or retired if a manifest names
//!   it), so a tensor placed before the drives' rates were known (split equally) follows
//!   them from its next rewrite on. A drive that runs out of space (ENOSPC or EDQUOT when its
//!   space grows) takes no new bytes until some of its space is freed; the tensor goes
//!   to the other drives, and only when every drive is full does the reservation fail,
//!   naming the drive and the key.
//! - **The index**: key -> pieces in tensor order (drive, file, offset, length), in
//!   memory, behind the store's one mutex, held only for bookkeeping: no file-system call
//!   and no wait under it (growth takes a per-drive lock that only other growers of the
//!   same drive wait for).
//! - **Operations** ([`ticket`]): a read or write of a range of a tensor becomes one
//!   engine operation per piece it touches, on the held descriptors, in the piece's
//!   drive's queue; a [`StoreTicket`] waits for them all and combines their crc32c.
//! - **Checks**: before every operation, the store checks that each extent file it
//!   touches is still the one it holds (stat by name in the held rank folder against the
//!   held descriptor's device and inode: deleted, replaced by another file or a FIFO) and
//!   still as long as the store made it (fstat of the held descriptor: truncated). A file
//!   found damaged takes no new piece; a tensor that had a piece there is placed afresh at
//!   its next reservation. I/O never goes through a name, so a FIFO cannot block it and
//!   a renamed or replaced folder cannot redirect it; nothing is written outside the rank
//!   folders.
//!
//! - **Durability** (issue 20; [`manifest`], [`flush`], [`adopt`], [`snapshot`]): at a
//!   flush the index becomes a manifest in every drive's rank folder, written atomically
//!   after the extent files' data were synced. A tensor rewritten after a flush that named
//!   it goes to fresh space (copy-on-write in [`Store::reserve`]); its old pieces are
//!   retired, not freed, until a newer manifest is durable ([`space`]); a tensor rewritten
//!   twice between two flushes reuses its own unflushed place. A store opened with
//!   `adopt` keeps the rank folders, reads the newest complete manifest and knows every
//!   tensor it names; space it does not name is free again. A snapshot clones the files
//!   a flushed manifest names into a checkpoint folder (reflinks where the file system
//!   shares extents), and a restore clones them back.

pub mod adopt;
pub mod copy;
pub mod drive;
pub mod flush;
pub mod folder;
pub mod manifest;
pub mod placement;
mod raced;
pub mod snapshot;
pub mod space;
pub mod ticket;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{IoConfig, IO_ALIGNMENT};
use crate::io::HeldRequest;
use crate::io::Race;
use crate::status::{Error, Result, Status};
use crate::sys::{file, RawBuf};
use drive::{Drive, ExtentFile};
use space::{Growth, Piece, Space};
use ticket::Part;
pub use ticket::StoreTicket;

/// A tensor's key.
pub type Key = u64;

/// Pieces of at least this many bytes start on a multiple of it in their file.
const LARGE_ALIGN: u64 = 1 << 20;
/// The first and the smallest growth step of a drive's space.
const GROW_MIN: u64 = 16 << 20;
/// The largest growth step.
const GROW_MAX: u64 = 1 << 30;
/// An extent file grows up to this size; then a new one is started.
const MAX_FILE: u64 = 64 << 30;

/// What a store is made of.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// One folder per drive (each must exist; relative paths are resolved once, at open).
    pub paths: Vec<PathBuf>,
    /// The rank folder's parts under each path, e.g. `["zero_stage_3", "optimizer", "rank0"]`.
    pub folder: Vec<String>,
    /// The I/O settings of each drive's engine.
    pub io: IoConfig,
    /// Keep what the rank folders hold and adopt it from their manifest ([`adopt`])
    /// instead of emptying them.
    pub adopt: bool,
}

/// Where part of a tensor lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// The drive's index (in [`StoreConfig::paths`]).
    pub drive: usize,
    /// The extent file.
    pub path: PathBuf,
    /// Where in the file.
    pub file_offset: u64,
    /// Bytes.
    pub len: u64,
}

/// A placed tensor: its reserved bytes and its pieces in tensor order.
struct Placed {
    bytes: u64,
    pieces: Vec<(usize, Piece)>,
    /// The last generation whose manifest names these pieces (None: no manifest does, so
    /// a rewrite may go in place).
    named: Option<u64>,
    /// The weights its placement followed (empty: one drive, or adopted).
    weights: Vec<f64>,
    /// Reserved for a race, its layout not known yet (`pieces` is empty meanwhile).
    pending: Option<raced::Pending>,
    /// Its layout is what a race's lanes took: fitted to its first write, not to the
    /// drives' measured rates, so its next whole write places it by them.
    raced: bool,
}

impl Placed {
    /// A tensor of `bytes` at `pieces`, placed by `weights`: not named by a manifest, not
    /// raced.
    fn at(bytes: u64, pieces: Vec<(usize, Piece)>, weights: Vec<f64>) -> Placed {
        Placed {
            bytes,
            pieces,
            named: None,
            weights,
            pending: None,
            raced: false,
        }
    }

    /// Every piece it holds: its pieces, or its reserved spans while pending.
    fn held(&self) -> impl Iterator<Item = &(usize, Piece)> {
        self.pieces
            .iter()
            .chain(self.pending.iter().flat_map(|p| p.spans.iter()))
    }
}

/// A whole rewrite moves a tensor when a drive's weight has changed by at least this
/// much since the tensor was placed: a quarter of the fastest drive's rate. Weights below
/// the dead band (`placement::SAME_RATE`, 0.75) are at most 0.6875, so a drive that left
/// the band is followed and noise inside it moves nothing.
pub const REPLACE_STEP: f64 = 0.25;

/// One drive's bookkeeping.
struct DriveState {
    space: Space,
    files: Vec<Arc<ExtentFile>>,
    /// Bytes placed on the drive.
    load: u64,
    /// Its space could not grow (ENOSPC, EDQUOT): it takes no new bytes until some of its
    /// space is freed.
    full: bool,
}

struct State {
    keys: HashMap<Key, Placed>,
    drives: Vec<DriveState>,
    weights: Vec<f64>,
    /// The durability bookkeeping ([`flush`]).
    durable: flush::Durable,
    /// The weights were set ([`Store::set_weights`]), not measured.
    pinned: bool,
}

/// The alignment of a piece of `len` bytes: 1 MiB for a large one, else 4 KiB.
fn piece_align(len: u64) -> u64 {
    if len >= LARGE_ALIGN {
        LARGE_ALIGN
    } else {
        IO_ALIGNMENT
    }
}

impl State {
    /// `weights` with the full drives' set to 0 (they take nothing new, unless all are
    /// full: then the growth fails, named), and each drive's load.
    fn usable(&self, weights: &[f64]) -> (Vec<f64>, Vec<u64>) {
        let w = weights
            .iter()
            .zip(&self.drives)
            .map(|(&w, d)| if d.full { 0.0 } else { w })
            .collect();
        (w, self.drives.iter().map(|d| d.load).collect())
    }

    /// Allocates every chunk from the drives' free space, or none: on the first that does
    /// not fit, those allocated are undone and (drive, bytes, alignment) of the one that
    /// did not fit is returned.
    fn allocate_all(
        &mut self,
        chunks: &[placement::Chunk],
    ) -> std::result::Result<Vec<(usize, Piece)>, (usize, u64, u64)> {
        let mut got: Vec<(usize, Piece)> = Vec::with_capacity(chunks.len());
        for c in chunks {
            let align = piece_align(c.len);
            match self.drives[c.drive].space.allocate(c.len, align) {
                Some(p) => got.push((c.drive, p)),
                None => {
                    for (d, p) in got.into_iter().rev() {
                        self.drives[d].space.undo(p);
                    }
                    return Err((c.drive, c.len, align));
                }
            }
        }
        Ok(got)
    }

    /// Gives a tensor reserved for a race its layout once it is known (`raced.rs`): the
    /// spans are cut to what each lane took (or to the equal split, when the first use
    /// was not a whole write), the rest freed, and the loads counted anew. Returns true
    /// while the race still runs (the layout is not known: the tensor's write is under
    /// way). Bookkeeping only.
    fn settle(&mut self, key: Key) -> bool {
        let State { keys, drives, .. } = self;
        let Some(p) = keys.get_mut(&key) else {
            return false;
        };
        let Some(pending) = &p.pending else {
            return false;
        };
        let Some(taken) = pending.layout() else {
            return true;
        };
        let cut = pending.cut(&taken);
        for (d, n) in pending.even_loads() {
            drives[d].load = drives[d].load.saturating_sub(n);
        }
        for (d, pc) in cut.freed {
            drives[d].space.free(pc);
        }
        for (d, pc) in &cut.pieces {
            drives[*d].load += pc.len;
        }
        p.raced = pending.started;
        p.pieces = cut.pieces;
        p.pending = None;
        false
    }
}

/// A piece of an operation, resolved under the lock.
struct Segment {
    drive: usize,
    file_index: usize,
    file: Arc<ExtentFile>,
    capacity: u64,
    file_offset: u64,
    buf_offset: u64,
    len: u64,
}

/// The swap store. Dropping it waits for every operation in flight on every drive.
pub struct Store {
    // Field order: the drives' engines are drained before the files are closed.
    drives: Vec<Drive>,
    state: Mutex<State>,
    /// Held by one flush or snapshot at a time (from the manifest's preparation to its
    /// rename, and through a snapshot's copies): not a bookkeeping lock, only flushers
    /// wait for it.
    flushing: Mutex<()>,
    /// The rank folder's parts (the manifest's kind and rank).
    parts: Vec<String>,
    /// What an adopting store found (taken once by the swapper).
    adopted: Mutex<Vec<manifest::TensorEntry>>,
}

fn align_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align).saturating_mul(align)
}

impl Store {
    /// Locks and empties the rank folder on every drive (with `adopt`: keeps it and adopts
    /// what its manifest names, see [`adopt`]) and starts each drive's engine. A folder
    /// another store holds is `Busy` (naming it); a path given twice is
    /// `InvalidArgument`; an adoption that does not match is an error naming the tensor
    /// and the file, and nothing is removed.
    pub fn open(cfg: StoreConfig) -> Result<Store> {
        Self::open_inner(cfg, false)
    }

    /// As [`Store::open`], with two engines per drive, one for reads and one for writes:
    /// a write queued behind (a write-behind) never delays a read queued after it (the
    /// next read-ahead), as DeepSpeed's pipelined optimizer swapper keeps separate read
    /// and write handles. Costs a second set of worker threads per drive.
    pub fn open_split(cfg: StoreConfig) -> Result<Store> {
        Self::open_inner(cfg, true)
    }

    fn open_inner(cfg: StoreConfig, split: bool) -> Result<Store> {
        if cfg.paths.is_empty() {
            return Err(Error::invalid(
                "no nvme_path given (the store needs at least one folder)",
            ));
        }
        cfg.io.validate()?;
        let mut seen: Vec<PathBuf> = Vec::with_capacity(cfg.paths.len());
        for p in &cfg.paths {
            if let Ok(c) = file::canonical(p) {
                if seen.contains(&c) {
                    return Err(Error::invalid(format!(
                        "nvme_path names the folder {} twice",
                        c.display()
                    )));
                }
                seen.push(c);
            }
        }
        let mut drives = Vec::with_capacity(cfg.paths.len());
        for (k, p) in cfg.paths.iter().enumerate() {
            let opened = if cfg.adopt {
                Drive::adopt(k, p, &cfg.folder, cfg.io, split)
            } else {
                Drive::open(k, p, &cfg.folder, cfg.io, split)
            };
            let d = opened.map_err(|e| {
                if cfg.paths.len() > 1 {
                    e.context(format!("drive {k} ({})", p.display()))
                } else {
                    e
                }
            })?;
            drives.push(d);
        }
        let (state, adopted) = if cfg.adopt {
            adopt::adopt(&drives, &cfg.folder)?
        } else {
            let state = State {
                keys: HashMap::new(),
                drives: (0..drives.len())
                    .map(|_| DriveState {
                        space: Space::new(),
                        files: Vec::new(),
                        load: 0,
                        full: false,
                    })
                    .collect(),
                weights: vec![1.0; drives.len()],
                pinned: false,
                durable: flush::Durable::new(manifest::new_store_id(), 0),
            };
            (state, Vec::new())
        };
        Ok(Store {
            drives,
            state: Mutex::new(state),
            flushing: Mutex::new(()),
            parts: cfg.folder.clone(),
            adopted: Mutex::new(adopted),
        })
    }

    /// The tensors an adopting store found in the manifest (each once: the first call
    /// takes them; empty for a store that did not adopt).
    pub fn take_adopted(&self) -> Vec<manifest::TensorEntry> {
        std::mem::take(&mut *self.adopted.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The error for a tensor whose layout is asked for while its first write still races.
    fn racing(key: Key) -> Error {
        Error::bad_state(format!(
            "key {key}: its first write is still under way (split across the drives as it goes); wait for it first"
        ))
    }

    /// Bytes per unit of a race: the drives' block size.
    fn unit(&self) -> u64 {
        self.drives[0].engine_for(true).config().block_size
    }

    /// How many drives.
    pub fn drives(&self) -> usize {
        self.drives.len()
    }

    /// Drive `drive`'s rank folder (absolute, canonical at open). Panics on an index out
    /// of range.
    pub fn folder(&self, drive: usize) -> &Path {
        self.drives[drive].path()
    }

    /// Drive `drive`'s engine. Panics on an index out of range.
    pub fn engine(&self, drive: usize) -> &crate::io::IoEngine {
        self.drives[drive].engine()
    }

    /// Sets each drive's share of new bytes (finite, >= 0; a drive of weight 0 takes new
    /// tensors only when all weigh 0), instead of the shares measured from the drives'
    /// rates (the default).
    pub fn set_weights(&self, weights: &[f64]) -> Result<()> {
        if weights.len() != self.drives.len() || weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(Error::invalid(format!(
                "{} weights given for {} drives; each must be finite and >= 0",
                weights.len(),
                self.drives.len()
            )));
        }
        let mut st = self.lock();
        st.weights = weights.to_vec();
        st.pinned = true;
        Ok(())
    }

    /// The weights the last placement used (measured, or set).
    pub fn weights(&self) -> Vec<f64> {
        self.lock().weights.clone()
    }

    /// Each drive's measured rate, bytes per second of busy time (None until it has moved
    /// enough to tell).
    pub fn rates(&self) -> Vec<Option<f64>> {
        self.drives.iter().map(Drive::rate).collect()
    }

    /// Extent-file checks made so far, on every drive (one per file an operation touches).
    pub fn file_checks(&self) -> u64 {
        self.drives.iter().map(Drive::checks).sum()
    }

    /// Which drives are full (their space could not grow; see the module doc).
    pub fn full(&self) -> Vec<bool> {
        self.lock().drives.iter().map(|d| d.full).collect()
    }

    /// Bytes placed on each drive.
    pub fn loads(&self) -> Vec<u64> {
        self.lock().drives.iter().map(|d| d.load).collect()
    }

    /// Closes every drive's engine ([`crate::io::IoEngine::close`]): returns once every
    /// operation submitted has finished; later submits fail.
    pub fn close(&self) {
        for e in self.drives.iter().flat_map(|d| d.engines()) {
            e.close();
        }
    }

    /// Whether every drive's engine still takes operations (the first error otherwise).
    pub fn check_usable(&self) -> Result<()> {
        self.drives
            .iter()
            .flat_map(|d| d.engines())
            .try_for_each(|e| e.check_usable())
    }

    /// Bytes read and written by every drive's engine since the store opened.
    pub fn bytes_moved(&self) -> (u64, u64) {
        self.drives
            .iter()
            .flat_map(|d| d.engines())
            .fold((0, 0), |(r, w), e| {
                let (dr, dw) = e.bytes_moved();
                (r + dr, w + dw)
            })
    }

    /// Places `bytes` (rounded up to 4 KiB) for `key`. Idempotent: a key already placed
    /// with the same size keeps its place (and its bytes), unless a file it uses was found
    /// damaged or a manifest names its place (copy-on-write: the caller is about to
    /// rewrite it, and the flushed bytes must stay until a newer manifest is durable);
    /// with another size it is placed afresh. With `zeroed`, a newly placed key
    /// reads back as zeros (the file system zeroes reused space; fresh space is zeros).
    /// Grows a drive's space when needed (fallocate, or a new extent file). A drive whose
    /// space cannot grow for lack of room is marked full and the key placed on the others;
    /// any other failure to grow, or every drive full, fails the call, naming the drive
    /// and the key (the key is then not placed). The caller has no operation on the key in
    /// flight.
    pub fn reserve(&self, key: Key, bytes: u64, zeroed: bool) -> Result<()> {
        let want = align_up(bytes, IO_ALIGNMENT);
        // The weights from the drives' rates, read without the store's lock (each drive's
        // meter has its own), once a new place is needed; and whether every drive has a
        // rate yet.
        let mut measured: Option<(Vec<f64>, bool)> = None;
        // Whether a race's spans (up to the whole tensor on a drive) may still be tried.
        let mut race_fits = true;
        loop {
            let mut st = self.lock();
            if let Some(p) = st.keys.get(&key) {
                let damaged = p.held().any(|(d, pc)| st.drives[*d].space.is_damaged(pc.file));
                if p.bytes == want && !damaged && p.named.is_none() {
                    return Ok(());
                }
                if st.settle(key) {
                    return Err(Self::racing(key));
                }
                Self::unplace(&mut st, key);
            }
            // (One drive takes every byte: no weights to measure.)
            let mut known = true;
            if !st.pinned && self.drives.len() > 1 {
                match &measured {
                    Some((w, all)) => {
                        st.weights.clone_from(w);
                        known = *all;
                    }
                    None => {
                        drop(st);
                        let rates = self.rates();
                        let all = rates.iter().all(Option::is_some);
                        measured = Some((placement::weights_from_rates(&rates), all));
                        continue;
                    }
                }
            }
            let (weights, loads) = st.usable(&st.weights);
            // Before every drive has a rate, a large tensor is reserved for a race
            // (`raced`): its first whole write splits it by the drives' real speed.
            let race = if race_fits
                && !known
                && !zeroed
                && want >= 2 * placement::SPLIT_UNIT
                && st.drives.iter().all(|d| !d.full)
            {
                raced::Pending::plan(bytes, want, self.unit(), self.drives.len())
            } else {
                None
            };
            let chunks = match &race {
                Some((_, lens)) => lens
                    .iter()
                    .enumerate()
                    .map(|(drive, &len)| placement::Chunk { drive, len })
                    .collect(),
                None => placement::plan(want, &weights, &loads),
            };
            let got = match st.allocate_all(&chunks) {
                Ok(got) => got,
                Err((d, len, align)) => {
                    drop(st);
                    if let Err(e) = self.grow(d, len, align) {
                        let mut st = self.lock();
                        if race.is_some() && st.drives[d].full {
                            // No room for a span, which is more than the drive's share: the
                            // drive is not full for that; the tensor is split by the weights.
                            st.drives[d].full = false;
                            race_fits = false;
                            continue;
                        }
                        if st.drives[d].full && st.drives.iter().any(|x| !x.full) {
                            drop(st);
                            crate::log!(
                                Warn,
                                "{} is full ({}); key {key} goes to the other drives",
                                self.drives[d].describe(),
                                e.message()
                            );
                            continue;
                        }
                        return Err(e.context(format!(
                            "cannot place {want} bytes of key {key} on {}",
                            self.drives[d].describe()
                        )));
                    }
                    continue;
                }
            };
            let to_zero: Vec<(usize, Arc<ExtentFile>, Piece)> = got
                .iter()
                .filter(|(_, p)| zeroed && !p.fresh)
                .map(|(d, p)| (*d, Arc::clone(&st.drives[*d].files[p.file]), *p))
                .collect();
            let placed_by = if self.drives.len() > 1 {
                st.weights.clone()
            } else {
                Vec::new()
            };
            let placed = match race {
                Some((race, _)) => {
                    // Each drive's load counts the equal split until the layout is known.
                    let pending = raced::Pending::new(race, self.unit(), want, got);
                    for (d, n) in pending.even_loads() {
                        st.drives[d].load += n;
                    }
                    Placed {
                        pending: Some(pending),
                        ..Placed::at(want, Vec::new(), placed_by)
                    }
                }
                None => {
                    for (d, p) in &got {
                        st.drives[*d].load += p.len;
                    }
                    Placed::at(want, got, placed_by)
                }
            };
            st.keys.insert(key, placed);
            drop(st);
            for (d, f, p) in to_zero {
                if let Err(e) = file::zero_range(f.held.fd(), p.offset, p.len) {
                    self.forget(key);
                    return Err(Error::os(
                        &format!(
                            "cannot zero {} bytes for key {key} on {} in",
                            p.len,
                            self.drives[d].describe()
                        ),
                        f.path(),
                        Some(p.offset),
                        e,
                    ));
                }
            }
            return Ok(());
        }
    }

    /// Removes `key`'s pieces (under the lock): space back to the allocator, or, for
    /// pieces a manifest names, retired until a newer manifest is durable.
    fn unplace(st: &mut State, key: Key) {
        if let Some(p) = st.keys.remove(&key) {
            if let Some(pending) = p.pending {
                // Reserved for a race that did not run to its end (or never started):
                // every span back (no manifest names any of it).
                for (d, n) in pending.even_loads() {
                    st.drives[d].load = st.drives[d].load.saturating_sub(n);
                }
                for (d, pc) in pending.spans {
                    st.drives[d].space.free(pc);
                    st.drives[d].full = false;
                }
            }
            for (d, pc) in p.pieces {
                let ds = &mut st.drives[d];
                ds.load = ds.load.saturating_sub(pc.len);
                match p.named {
                    Some(g) => ds.space.retire(pc, g),
                    None => ds.space.free(pc),
                }
                // Room again: the drive may take new bytes (its growth is tried afresh).
                ds.full = false;
            }
        }
    }

    /// Makes room on drive `d` for a piece of `len` bytes aligned to `align`: extends an
    /// extent file or creates one; marks the drive full when the file system has no room
    /// (ENOSPC, EDQUOT). File-system calls under the drive's growth lock only.
    fn grow(&self, d: usize, len: u64, align: u64) -> Result<()> {
        let drive = &self.drives[d];
        let _growing = drive.growing();
        loop {
            let (growth, step_used) = {
                let mut st = self.lock();
                let space = &mut st.drives[d].space;
                // Another grower may have made room meanwhile.
                if let Some(p) = space.allocate(len, align) {
                    space.undo(p);
                    return Ok(());
                }
                let step = space.total_capacity().clamp(GROW_MIN, GROW_MAX);
                (space.growth(len, align, step, MAX_FILE), step)
            };
            match growth {
                Growth::Create { file, .. } => {
                    let f = drive.create_file(file, 0)?;
                    let mut st = self.lock();
                    let ds = &mut st.drives[d];
                    ds.files.push(Arc::new(f));
                    ds.space.grown(file, 0);
                }
                Growth::Extend { file, from, to } => {
                    let f = Arc::clone(&self.lock().drives[d].files[file]);
                    let mut r = file::extend(f.held.fd(), from, to);
                    let mut to = to;
                    if matches!(r, Err(libc::ENOSPC) | Err(libc::EDQUOT)) && step_used > 0 {
                        // The step does not fit: try what the piece needs alone.
                        let exact = self.lock().drives[d].space.growth(len, align, 0, MAX_FILE);
                        if let Growth::Extend { to: t, .. } = exact {
                            if t < to {
                                to = t;
                                r = file::extend(f.held.fd(), from, to);
                            }
                        }
                    }
                    if let Err(e) = r {
                        if e == libc::ENOSPC || e == libc::EDQUOT {
                            self.lock().drives[d].full = true;
                        }
                        return Err(Error::os(
                            &format!("reserve {} bytes in", to - from),
                            f.path(),
                            Some(from),
                            e,
                        ));
                    }
                    self.lock().drives[d].space.grown(file, to);
                    return Ok(());
                }
            }
        }
    }

    /// Gives `key`'s space back to the allocator (nothing happens for an unknown key).
    /// The caller has no operation on the key in flight.
    pub fn forget(&self, key: Key) {
        Self::unplace(&mut self.lock(), key);
    }

    /// Whether `key` is placed, and its reserved bytes.
    pub fn reserved(&self, key: Key) -> Option<u64> {
        self.lock().keys.get(&key).map(|p| p.bytes)
    }

    /// Where `key`'s bytes are, in tensor order (empty for an unknown key).
    /// (Empty too while the tensor's first write still races: its layout is not known.)
    pub fn locations(&self, key: Key) -> Vec<Extent> {
        let mut st = self.lock();
        if st.settle(key) {
            return Vec::new();
        }
        let Some(p) = st.keys.get(&key) else {
            return Vec::new();
        };
        p.pieces
            .iter()
            .map(|(d, pc)| Extent {
                drive: *d,
                path: st.drives[*d].files[pc.file].path().to_path_buf(),
                file_offset: pc.offset,
                len: pc.len,
            })
            .collect()
    }

    /// The pieces of `key` that bytes `offset..offset + len` of the tensor touch.
    fn segments(&self, key: Key, offset: u64, len: u64) -> Result<Vec<Segment>> {
        let mut st = self.lock();
        if st.settle(key) {
            return Err(Self::racing(key));
        }
        let p = st.keys.get(&key).ok_or_else(|| {
            Error::new(
                Status::NotFound,
                format!("key {key} has no place in the store (never reserved, or forgotten)"),
            )
        })?;
        let end = offset.checked_add(len).filter(|&e| e <= p.bytes).ok_or_else(|| {
            Error::invalid(format!(
                "bytes {offset} to {} of key {key} are outside its {} reserved bytes",
                offset.saturating_add(len),
                p.bytes
            ))
        })?;
        let mut out = Vec::new();
        let mut pos = 0u64;
        for (d, pc) in &p.pieces {
            let (start, stop) = (pos, pos + pc.len);
            pos = stop;
            let (a, b) = (offset.max(start), end.min(stop));
            if a >= b {
                continue;
            }
            let ds = &st.drives[*d];
            out.push(Segment {
                drive: *d,
                file_index: pc.file,
                file: Arc::clone(&ds.files[pc.file]),
                capacity: ds.space.capacity(pc.file),
                file_offset: pc.offset + (a - start),
                buf_offset: a - offset,
                len: b - a,
            });
        }
        Ok(out)
    }

    /// Checks each distinct file of `segs` (see [`Drive::check_file`]); a damaged one is
    /// marked so and named with the key and drive.
    fn check_segments<'a>(&self, key: Key, segs: impl IntoIterator<Item = &'a Segment>) -> Result<()> {
        let mut done: Vec<(usize, usize)> = Vec::new();
        for s in segs {
            if done.contains(&(s.drive, s.file_index)) {
                continue;
            }
            done.push((s.drive, s.file_index));
            let drive = &self.drives[s.drive];
            if let Err(e) = drive.check_file(&s.file, s.capacity) {
                if e.status() == Status::CorruptData {
                    self.lock().drives[s.drive].space.damage(s.file_index);
                }
                return Err(e.context(format!("key {key} on {}", drive.describe())));
            }
        }
        Ok(())
    }

    /// Checks that `key`'s backing is still valid: every extent file it uses is still the
    /// store's own and as long as the store made it. `CorruptData` naming the key, the
    /// file and the drive otherwise; `NotFound` for an unknown key. File-system calls,
    /// without the store's lock.
    pub fn check(&self, key: Key) -> Result<()> {
        let bytes = self
            .reserved(key)
            .ok_or_else(|| Error::new(Status::NotFound, format!("key {key} has no place in the store")))?;
        let segs = self.segments(key, 0, bytes)?;
        self.check_segments(key, &segs)
    }

    /// Queues a read (`write` false) or write of bytes `offset..offset + len` of `key`'s
    /// tensor from or into `buf`, with the crc32c of the first `checksum_len` bytes of the
    /// range if asked; returns at once. `offset` should be a multiple of 4 KiB and `len`
    /// too except at the tensor's end (anything else works, through buffered I/O, but
    /// slower). The range is split at the tensor's pieces, each queued on its drive.
    /// Before queueing, each extent file involved is checked ([`Store::check`]); a write
    /// of the whole tensor whose file is found damaged goes to a new place instead (the
    /// damage is logged), any other operation fails with the check's error. If a
    /// piece cannot be queued, the pieces already queued are waited for before the error
    /// returns, so the buffer is free again.
    ///
    /// # Safety
    /// `buf` must be valid for `len` bytes (writable for a read) until the ticket has
    /// finished, and not be used by anyone else meanwhile.
    pub unsafe fn submit(
        &self,
        key: Key,
        write: bool,
        buf: RawBuf,
        offset: u64,
        len: u64,
        checksum_len: Option<u64>,
    ) -> Result<StoreTicket> {
        if write && self.copy_on_write(key, offset, len)? && offset == 0 {
            // SAFETY: as this function's contract.
            if let Some(t) = unsafe { self.race(key, buf, len, checksum_len) }? {
                return Ok(t);
            }
        }
        let mut segs = self.segments(key, offset, len)?;
        if let Err(e) = self.check_segments(key, &segs) {
            // A write of the whole tensor does not need what its old place held: it goes
            // to a new place (the damaged file takes nothing new). Anything else fails.
            let bytes = self.reserved(key).unwrap_or(0);
            let whole = write && offset == 0 && align_up(len, IO_ALIGNMENT) >= bytes;
            if !whole || e.status() != Status::CorruptData {
                return Err(e);
            }
            crate::log!(Warn, "{}; writing key {key} to a new place", e.message());
            self.reserve(key, bytes, false)?;
            segs = self.segments(key, offset, len)?;
            self.check_segments(key, &segs)?;
        }
        let segs: Vec<(Segment, Option<usize>)> = segs.into_iter().map(|s| (s, None)).collect();
        // SAFETY: the pieces are inside the caller's buffer, this function's contract.
        unsafe { self.queue(key, write, buf, len, checksum_len, &segs, None) }
    }

    /// Queues one engine operation per segment, on its drive's engine (a segment with a
    /// lane as that lane of `race`); one ticket over them all. If one cannot be queued,
    /// those queued are waited for (the buffer is free when the error returns) and the
    /// error names the key and the drive.
    ///
    /// # Safety
    /// Each segment's `buf_offset + len` lies within `buf`'s `len` bytes, valid (writable
    /// for a read) until the ticket has finished and not used by anyone else meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn queue(
        &self,
        key: Key,
        write: bool,
        buf: RawBuf,
        len: u64,
        checksum_len: Option<u64>,
        segs: &[(Segment, Option<usize>)],
        race: Option<&Arc<Race>>,
    ) -> Result<StoreTicket> {
        let mut parts: Vec<Part> = Vec::with_capacity(segs.len());
        for (s, lane) in segs {
            let drive = &self.drives[s.drive];
            let ck = checksum_len.map(|c| c.min(len).saturating_sub(s.buf_offset).min(s.len));
            let req = HeldRequest {
                write,
                buf: buf.offset_by(s.buf_offset as usize),
                len: s.len,
                file: &s.file.held,
                offset: s.file_offset,
                checksum_len: ck.filter(|&c| c > 0),
            };
            let engine = drive.engine_for(write);
            // SAFETY: the segment is inside the caller's buffer (this function's contract).
            let queued = unsafe {
                match (lane, race) {
                    (Some(l), Some(r)) => engine.submit_raced(&req, r, *l),
                    _ => engine.submit_held(&req),
                }
            };
            match queued {
                Ok(ticket) => parts.push(Part {
                    drive: s.drive,
                    folder: drive.path().to_path_buf(),
                    buf_offset: s.buf_offset,
                    checksum_len: ck.unwrap_or(0),
                    ticket,
                }),
                Err(e) => {
                    // The buffer must be free when the error returns.
                    for p in &parts {
                        let _ = p.ticket.wait();
                    }
                    return Err(e.context(format!(
                        "{} of key {key} on {}",
                        if write { "write" } else { "read" },
                        drive.describe()
                    )));
                }
            }
        }
        Ok(StoreTicket::new(key, write, parts))
    }

    /// The first whole write of a tensor reserved for a race (`raced.rs`): one lane per
    /// drive, each queued on its drive's write engine over its reserved span; the lanes
    /// split the tensor as they go. None (nothing done) when `key` is not waiting for
    /// such a write, or `buf` and `len` do not cover its reservation exactly with an
    /// aligned buffer (the caller then settles it to the equal split). A damaged file of
    /// the reservation is handled as in [`Store::submit`] (a new place, and None).
    ///
    /// # Safety
    /// As [`Store::submit`].
    unsafe fn race(
        &self,
        key: Key,
        buf: RawBuf,
        len: u64,
        checksum_len: Option<u64>,
    ) -> Result<Option<StoreTicket>> {
        // The lanes' spans (their whole units), and the rest after them on the last
        // drive, resolved under the lock.
        let (race, segs) = {
            let st = self.lock();
            let Some(p) = st.keys.get(&key) else {
                return Ok(None);
            };
            let Some(pending) = p.pending.as_ref().filter(|q| !q.started) else {
                return Ok(None);
            };
            if align_up(len, IO_ALIGNMENT) != p.bytes
                || len < pending.rest_at()
                || buf.addr() as u64 % IO_ALIGNMENT != 0
            {
                return Ok(None);
            }
            let segment = |lane: usize, buf_offset: u64, len: u64| {
                let (d, pc) = pending.spans[lane];
                let ds = &st.drives[d];
                let (start, _) = pending.span_units(lane);
                Segment {
                    drive: d,
                    file_index: pc.file,
                    file: Arc::clone(&ds.files[pc.file]),
                    capacity: ds.space.capacity(pc.file),
                    file_offset: pc.offset + (buf_offset - start),
                    buf_offset,
                    len,
                }
            };
            let lanes = pending.spans.len();
            let mut segs: Vec<(Segment, Option<usize>)> = (0..lanes)
                .map(|lane| {
                    let (start, bytes) = pending.span_units(lane);
                    (segment(lane, start, bytes), Some(lane))
                })
                .collect();
            let rest = len - pending.rest_at();
            if rest > 0 {
                segs.push((segment(lanes - 1, pending.rest_at(), rest), None));
            }
            (Arc::clone(&pending.race), segs)
        };
        if let Err(e) = self.check_segments(key, segs.iter().map(|(s, _)| s)) {
            if e.status() != Status::CorruptData {
                return Err(e);
            }
            crate::log!(Warn, "{}; writing key {key} to a new place", e.message());
            self.forget(key);
            self.reserve(key, len, false)?;
            return Ok(None);
        }
        {
            let mut st = self.lock();
            match st.keys.get_mut(&key).and_then(|p| p.pending.as_mut()) {
                Some(q) if Arc::ptr_eq(&q.race, &race) && !q.started => q.started = true,
                _ => return Ok(None),
            }
        }
        // SAFETY: the spans and the rest lie within the caller's `len` bytes, covered by
        // this function's contract.
        match unsafe { self.queue(key, true, buf, len, checksum_len, &segs, Some(&race)) } {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                // The lanes queued covered what they could; the tensor gets a race afresh
                // (lanes never queued would leave this one unsplit for ever).
                let mut st = self.lock();
                if let Some(q) = st.keys.get_mut(&key).and_then(|p| p.pending.as_mut()) {
                    if let Some(fresh) = Race::new(race.units(), race.lanes()) {
                        q.race = fresh;
                        q.started = false;
                    }
                }
                Err(e)
            }
        }
    }

    /// Before a write: a key whose place a manifest names (see [`flush`]) is placed afresh
    /// when the write covers it whole (its flushed bytes stay, retired, until a newer
    /// manifest is durable); a write of part of it is refused (`BadState`), since the rest
    /// would have to be copied. Any other key written whole may move by the drives'
    /// weights ([`Store::follow_weights`]). Bookkeeping, plus growth when the new place
    /// needs it.
    ///
    /// Returns whether the key is reserved for a race whose layout is not known yet
    /// (`raced.rs`): [`Store::race`] then queues the race if this write covers the tensor.
    fn copy_on_write(&self, key: Key, offset: u64, len: u64) -> Result<bool> {
        // One look under the lock: awaiting its race, named, or a candidate for a move, or
        // nothing to do.
        let (bytes, named) = {
            let mut st = self.lock();
            // A race that has run gives the tensor its layout now (one that has not is
            // split by this write itself, below).
            if st
                .keys
                .get(&key)
                .and_then(|p| p.pending.as_ref())
                .is_some_and(|q| q.started)
            {
                st.settle(key);
            }
            match st.keys.get(&key) {
                Some(p) if p.pending.is_some() => return Ok(true),
                Some(p) if p.named.is_some() => (p.bytes, true),
                Some(p) if !st.pinned && (p.raced || !p.weights.is_empty()) => (p.bytes, false),
                _ => return Ok(false),
            }
        };
        let whole = offset == 0 && align_up(len, IO_ALIGNMENT) >= bytes;
        if !named {
            if whole {
                self.follow_weights(key, bytes)?;
            }
            return Ok(false);
        }
        if !whole {
            return Err(Error::bad_state(format!(
                "a write of bytes {offset} to {} of key {key}: a flushed manifest names its {bytes} bytes, which may \
                 only be rewritten whole (to fresh space) until the next flush",
                offset.saturating_add(len)
            )));
        }
        self.reserve(key, bytes, false).map(|()| false)
    }

    /// Before a write of the whole of `key` (`bytes`, placed on several drives by measured
    /// weights): if the drives' weights have moved by [`REPLACE_STEP`] or more on some
    /// drive since the tensor was placed, it is placed afresh by the new weights (its old
    /// bytes are not needed: the write replaces them all). The old place is taken out of
    /// the index (its load no longer counted, so the new plan is the one a fresh tensor
    /// would get) but stays allocated until the new place is made: if that fails (every
    /// drive full), the tensor keeps its old place.
    fn follow_weights(&self, key: Key, bytes: u64) -> Result<()> {
        // Measured without the store's lock, as `reserve` does.
        let rates = self.rates();
        let known = rates.iter().all(Option::is_some);
        let now = placement::weights_from_rates(&rates);
        let old = {
            let mut st = self.lock();
            // A layout a race gave goes by the weights once every drive is measured: the
            // first writes' rates are not the steady ones (equal drives differ by up to
            // 20% while they allocate), and a split a few percent off costs every later
            // transfer of the tensor as much.
            let moved = st.keys.get(&key).is_some_and(|p| {
                p.bytes == bytes
                    && p.named.is_none()
                    && if p.raced {
                        known
                    } else {
                        p.weights
                            .iter()
                            .zip(&now)
                            .any(|(a, b)| (a - b).abs() >= REPLACE_STEP - 1e-9)
                    }
            });
            if !moved {
                return Ok(());
            }
            let Some(old) = st.keys.remove(&key) else {
                return Ok(());
            };
            for (d, pc) in &old.pieces {
                st.drives[*d].load = st.drives[*d].load.saturating_sub(pc.len);
            }
            if Self::replace_in_room(&mut st, key, &old, &now) {
                drop(st);
                crate::log!(
                    Debug,
                    "key {key}: the drives' weights moved to {now:?}; rewritten to a new place"
                );
                return Ok(());
            }
            old
        };
        let placed = self.reserve(key, bytes, false);
        let mut st = self.lock();
        match placed {
            Ok(()) => {
                for (d, pc) in old.pieces {
                    st.drives[d].space.free(pc);
                    st.drives[d].full = false;
                }
                drop(st);
                crate::log!(
                    Debug,
                    "key {key}: the drives' weights moved to {now:?}; rewritten to a new place"
                );
            }
            Err(e) => {
                for (d, pc) in &old.pieces {
                    st.drives[*d].load += pc.len;
                }
                st.keys.insert(key, old);
                drop(st);
                crate::log!(
                    Debug,
                    "key {key}: keeps its place, no new one by the weights {now:?}: {}",
                    e.message()
                );
            }
        }
        Ok(())
    }

    /// A move of `old` (taken out of the index, its loads uncounted) by `weights`, within
    /// the room the drives have now, its own place counted free (a whole rewrite needs
    /// none of its bytes): under the lock, no growth. Places the key and frees what the new
    /// place does not reuse; false (nothing changed) when it does not fit, and the caller
    /// grows the drives for a new place beside the old one.
    fn replace_in_room(st: &mut State, key: Key, old: &Placed, weights: &[f64]) -> bool {
        if old.pending.is_some() || old.named.is_some() {
            return false;
        }
        for (d, pc) in &old.pieces {
            st.drives[*d].space.free(*pc);
        }
        let (usable, loads) = st.usable(weights);
        let chunks = placement::plan(old.bytes, &usable, &loads);
        let Ok(got) = st.allocate_all(&chunks) else {
            // Back as it was: the old pieces taken again (still free: nothing else was
            // allocated meanwhile).
            for (d, pc) in &old.pieces {
                let taken = st.drives[*d].space.take(*pc);
                debug_assert!(taken, "an old piece was free again");
            }
            return false;
        };
        for (d, p) in &got {
            st.drives[*d].load += p.len;
        }
        st.weights = weights.to_vec();
        st.keys.insert(key, Placed::at(old.bytes, got, weights.to_vec()));
        true
    }

    /// Reads or writes a whole range and waits (a convenience for tests and tools).
    pub fn transfer(&self, key: Key, write: bool, buf: &mut [u8], offset: u64) -> Result<()> {
        // SAFETY: `buf` is borrowed mutably until the wait returns.
        let t = unsafe {
            self.submit(
                key,
                write,
                RawBuf(buf.as_mut_ptr()),
                offset,
                buf.len() as u64,
                None,
            )
        }?;
        t.wait().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::alloc::AlignedBuf;

    fn store(paths: &[&Path]) -> Store {
        Store::open(StoreConfig {
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            folder: vec!["zero_stage_3".into(), "optimizer".into(), "rank0".into()],
            io: IoConfig::default(),
            adopt: false,
        })
        .unwrap()
    }

    fn filled(len: usize, seed: u8) -> AlignedBuf {
        let mut b = AlignedBuf::new(len.max(1), false).unwrap();
        for (i, x) in b.as_mut_slice()[..len].iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        b
    }

    #[test]
    fn round_trips_small_and_large_tensors_and_reuses_space() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&[dir.path()]);
        assert_eq!(s.drives(), 1);
        assert!(s.folder(0).ends_with("zero_stage_3/optimizer/rank0"));
        for (key, len) in [(1u64, 4096usize), (2, 3 << 20), (3, 8192)] {
            s.reserve(key, len as u64, false).unwrap();
            let mut b = filled(len, key as u8);
            s.transfer(key, true, &mut b.as_mut_slice()[..len], 0).unwrap();
        }
        for (key, len) in [(1u64, 4096usize), (2, 3 << 20), (3, 8192)] {
            let want = filled(len, key as u8);
            let mut got = AlignedBuf::new(len, false).unwrap();
            s.transfer(key, false, &mut got.as_mut_slice()[..len], 0).unwrap();
            assert!(got.as_slice()[..len] == want.as_slice()[..len], "key {key}");
        }
        let loc = s.locations(2);
        assert_eq!(loc.len(), 1);
        assert_eq!(
            loc[0].file_offset % (1 << 20),
            0,
            "large pieces are 1 MiB-aligned"
        );
        let old = s.locations(1)[0].clone();
        s.forget(1);
        s.reserve(4, 4096, false).unwrap();
        assert_eq!(
            s.locations(4)[0],
            Extent { drive: 0, ..old },
            "freed space is reused"
        );
        // Only one extent file in the folder, however many tensors.
        let names: Vec<_> = std::fs::read_dir(s.folder(0))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["extent-0.swp"]);
    }

    #[test]
    fn reused_space_reserved_zeroed_reads_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&[dir.path()]);
        s.reserve(1, 1 << 20, false).unwrap();
        let mut b = filled(1 << 20, 9);
        s.transfer(1, true, b.as_mut_slice(), 0).unwrap();
        let at = s.locations(1)[0].clone();
        s.forget(1);
        s.reserve(2, 1 << 20, true).unwrap();
        assert_eq!(s.locations(2)[0].file_offset, at.file_offset, "the same space");
        let mut got = filled(1 << 20, 1);
        s.transfer(2, false, got.as_mut_slice(), 0).unwrap();
        assert!(got.as_slice().iter().all(|&x| x == 0));
    }

    #[test]
    fn ranges_split_across_drives_and_checksums_combine() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let s = store(&[a.path(), b.path()]);
        let len = 6usize << 20;
        s.reserve(7, len as u64, false).unwrap();
        let loc = s.locations(7);
        assert_eq!(loc.iter().map(|e| e.drive).collect::<Vec<_>>(), [0, 1]);
        let data = filled(len, 3);
        let want = crc32c::crc32c(&data.as_slice()[..len - 100]);
        // SAFETY: `data` outlives the wait.
        let t = unsafe { s.submit(7, true, data.raw(), 0, len as u64, Some(len as u64 - 100)) }.unwrap();
        assert_eq!(t.wait().unwrap(), Some(want));
        // A range across the drive boundary, read back.
        let got = AlignedBuf::new(2 << 20, false).unwrap();
        // SAFETY: `got` outlives the wait.
        let t = unsafe { s.submit(7, false, got.raw(), 2 << 20, 2 << 20, Some(2 << 20)) }.unwrap();
        let crc = t.wait().unwrap();
        assert!(got.as_slice() == &data.as_slice()[2 << 20..4 << 20]);
        assert_eq!(crc, Some(crc32c::crc32c(got.as_slice())));
        assert!(t
            .checksum_parts()
            .iter()
            .all(|&(o, n, c)| crc32c::crc32c(&got.as_slice()[o as usize..(o + n) as usize]) == c));
        // Out of range, unknown key.
        // SAFETY: refused before any I/O; the buffer outlives the call anyway.
        let e = unsafe { s.submit(7, false, got.raw(), 5 << 20, 2 << 20, None) }
            .err()
            .unwrap();
        assert_eq!(e.status(), Status::InvalidArgument);
        // SAFETY: refused before any I/O; the buffer outlives the call anyway.
        let e = unsafe { s.submit(8, false, got.raw(), 0, 4096, None) }
            .err()
            .unwrap();
        assert_eq!(e.status(), Status::NotFound);
    }

    /// Raced first writes (nothing measured) of tensors whose size is not a multiple of
    /// the unit or of 4 KiB: the lanes take the whole units, the rest goes to the last
    /// drive after them; every byte and the checksum come back, one piece per drive, and
    /// the spans leave nothing behind (loads are the reserved bytes).
    #[test]
    fn raced_writes_of_odd_sizes_keep_every_byte_and_give_the_spans_back() {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        for n in [2usize, 3] {
            let paths: Vec<&Path> = dirs[..n].iter().map(|d| d.path()).collect();
            let s = store(&paths);
            let sizes = [(8 << 20) + 5000, 9 << 20, (3 << 20) + 4096, (6 << 20) - 1];
            let mut reserved = 0;
            for (key, &len) in sizes.iter().enumerate() {
                let key = key as u64;
                s.reserve(key, len as u64, false).unwrap();
                reserved += align_up(len as u64, IO_ALIGNMENT);
                let mut b = filled(len, key as u8 + 1);
                let raw = RawBuf(b.as_mut_slice().as_mut_ptr());
                // SAFETY: `b` outlives the wait.
                let t = unsafe { s.submit(key, true, raw, 0, len as u64, Some(len as u64)) }.unwrap();
                let crc = t.wait().unwrap();
                assert_eq!(
                    crc,
                    Some(crc32c::crc32c(&b.as_slice()[..len])),
                    "{n} drives, key {key}"
                );
                let at = s.locations(key);
                assert_eq!(
                    at.iter().map(|e| e.len).sum::<u64>(),
                    align_up(len as u64, IO_ALIGNMENT)
                );
                assert!(at.windows(2).all(|w| w[0].drive < w[1].drive), "{at:?}");
                if len % (1 << 20) != 0 {
                    assert_eq!(
                        at.last().map(|e| e.drive),
                        Some(n - 1),
                        "the rest is the last drive's: {at:?}"
                    );
                }
            }
            assert_eq!(s.loads().iter().sum::<u64>(), reserved);
            for (key, &len) in sizes.iter().enumerate() {
                let want = filled(len, key as u8 + 1);
                let mut got = AlignedBuf::new(len, false).unwrap();
                s.transfer(key as u64, false, &mut got.as_mut_slice()[..len], 0)
                    .unwrap();
                assert!(
                    got.as_slice()[..len] == want.as_slice()[..len],
                    "{n} drives, key {key}"
                );
            }
        }
    }

    #[test]
    fn each_operation_checks_each_file_it_touches_once() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let s = store(&[a.path(), b.path()]);
        // (Set weights: a split by them, not a race, whose lanes may leave a drive out.)
        s.set_weights(&[1.0, 1.0]).unwrap();
        s.reserve(1, 8 << 20, false).unwrap(); // split over both drives
        s.reserve(2, 4096, false).unwrap(); // whole on one
        let mut big = filled(8 << 20, 1);
        let mut small = filled(4096, 2);
        let before = s.file_checks();
        s.transfer(1, true, big.as_mut_slice(), 0).unwrap();
        assert_eq!(s.file_checks() - before, 2, "one check per drive's file");
        s.transfer(2, true, small.as_mut_slice(), 0).unwrap();
        s.transfer(2, false, small.as_mut_slice(), 0).unwrap();
        s.transfer(1, false, big.as_mut_slice(), 0).unwrap();
        assert_eq!(s.file_checks() - before, 2 + 1 + 1 + 2);
    }

    #[test]
    fn set_weights_replace_the_measured_ones() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let s = store(&[a.path(), b.path()]);
        // Nothing measured yet: equal.
        assert_eq!(s.rates(), [None, None]);
        s.reserve(1, 8 << 20, false).unwrap();
        assert_eq!(s.weights(), [1.0, 1.0]);
        assert_eq!(s.loads(), [4 << 20, 4 << 20]);
        s.set_weights(&[3.0, 1.0]).unwrap();
        s.reserve(2, 8 << 20, false).unwrap();
        assert_eq!(s.weights(), [3.0, 1.0]);
        assert_eq!(
            s.loads(),
            [(4 + 6) << 20, (4 + 2) << 20],
            "drive 0 takes 3/4 of the new tensor"
        );
        assert_eq!(
            s.set_weights(&[1.0]).unwrap_err().status(),
            Status::InvalidArgument
        );
        assert_eq!(
            s.set_weights(&[1.0, -1.0]).unwrap_err().status(),
            Status::InvalidArgument
        );
    }

    #[test]
    fn a_second_store_on_any_folder_is_busy_and_a_path_twice_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let s = store(&[a.path(), b.path()]);
        for p in [a.path(), b.path()] {
            let e = Store::open(StoreConfig {
                paths: vec![p.to_path_buf()],
                folder: vec!["zero_stage_3".into(), "optimizer".into(), "rank0".into()],
                io: IoConfig::default(),
                adopt: false,
            })
            .err()
            .unwrap();
            assert_eq!(e.status(), Status::Busy, "{e}");
        }
        drop(s);
        let e = Store::open(StoreConfig {
            paths: vec![a.path().to_path_buf(), a.path().join(".")],
            folder: vec!["x".into()],
            io: IoConfig::default(),
            adopt: false,
        })
        .err()
        .unwrap();
        assert_eq!(e.status(), Status::InvalidArgument, "{e}");
    }

    #[test]
    fn truncated_replaced_and_deleted_extent_files_are_named_and_avoided() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&[dir.path()]);
        s.reserve(1, 4096, false).unwrap();
        let mut b = filled(4096, 1);
        s.transfer(1, true, b.as_mut_slice(), 0).unwrap();
        s.check(1).unwrap();
        let path = s.locations(1)[0].path.clone();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        let e = s.check(1).err().unwrap();
        assert_eq!(e.status(), Status::CorruptData);
        assert!(
            e.message().contains("truncated")
                && e.message().contains(&*path.to_string_lossy())
                && e.message().contains("key 1"),
            "{e}"
        );
        // The key is placed afresh, in a new file, at its next reservation.
        s.reserve(1, 4096, false).unwrap();
        let fresh = s.locations(1)[0].path.clone();
        assert_ne!(fresh, path);
        s.transfer(1, true, b.as_mut_slice(), 0).unwrap();
        s.check(1).unwrap();
        std::fs::remove_file(&fresh).unwrap();
        std::fs::write(&fresh, b"x").unwrap();
        let e = s.check(1).err().unwrap();
        assert!(e.message().contains("replaced by another file"), "{e}");
        std::fs::remove_file(&fresh).unwrap();
        // SAFETY: refused before any I/O; the buffer outlives the call anyway.
        let e = unsafe { s.submit(1, false, b.raw(), 0, 4096, None) }
            .err()
            .unwrap();
        assert!(e.message().contains("was deleted"), "{e}");
    }
}
