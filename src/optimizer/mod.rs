//! The optimizer-state swapper: ZeRO-Infinity's optimizer offload (fp32 master params,
//! Adam's moments, gradients) over the swap store, as a caller-driven pipeline.
//!
//! A runtime registers sub-groups, each a list of named fp32 tensors of known numel
//! ([`TensorSpec`]: optimizer state, or gradients). A step visits sub-groups in an order
//! the caller announces ([`OptimizerSwapper::begin_step`]); [`OptimizerSwapper::next_ready`]
//! returns the next sub-group's tensors, in place in the ring ([`Visit`], zero-copy: the
//! caller's Adam runs in them); [`Visit::hand_back`] queues its write-behind;
//! [`OptimizerSwapper::end_step`] waits for every write and reports every failure. While
//! the caller computes on sub-group i, the reads of i+1..i+k are in flight (as many as the
//! ring and `read_ahead` allow) and the writes of i-1.. drain. Nothing runs behind the
//! caller's back: the pipeline advances inside its calls, and no I/O thread calls it.
//!
//! # The rooms
//! - [`subgroup`]: the registry: sub-groups, their tensors' layout, keys, checksums and
//!   phase (every phase change is a method there).
//! - [`ring`]: the page-locked ring of the caller's budget, carved into exact regions.
//! - [`step`]: the pipeline: begin_step, next_ready, hand_back, end_step, read-ahead and
//!   write-behind.
//! - [`gradients`]: gradient fragments written during backward, through the ring.
//! - [`params`]: a visited sub-group's new fp32 params straight to the parameter
//!   swapper's fp16/bf16 files.
//! - `ledger`: what each claim remembers, and how it is recorded or undone (the
//!   optimizer's side of the shared claim guard, `crate::claim`).
//! - [`config`]: the settings from DeepSpeed's `offload_optimizer` block.
//! - [`durability`]: flushing the manifest between steps, and adopting a folder (each
//!   sub-group takes up its tensors when it is registered again).
//!
//! Below it: the swap store ([`crate::store`], opened with separate read and write
//! engines per drive, so a write-behind never delays the next read), the page-lock budget
//! ([`crate::memory_budget`], checked before the ring is pinned) and the checksums
//! ([`crate::checksum`], shared with the parameter swapper).
//!
//! # The lock discipline
//! One mutex holds the bookkeeping (registry, arena, step): the shared
//! `crate::claim::Bookkeeping`, as under the parameter swapper. No call holds it across
//! a file-system call, a submission, a wait, a copy or a conversion. Every I/O runs as
//! *claim* (under the lock: check, move the sub-group to its new phase, take a ring
//! region), *submit* (without the lock, through the store), *record* (under the lock:
//! the tickets, or the failure). The claim is the shared guard (`crate::claim::Claim`
//! with the entries of `ledger`): ended or dropped by a panic, it records what was
//! submitted and undoes what was not, so a panic at any step of claim, submit or record
//! leaves nothing stuck (the `ledger` module's table says what each claim becomes).
//!
//! # What a panic leaves
//! The poison policy is the parameter swapper's: every change of the bookkeeping runs as
//! one transition (`State::change`); a panic in the middle of one breaks the handle
//! (every later call returns `Panic`, destroy still works, the files written before are
//! intact); any other panic leaves it fully usable. A test injects a panic at each step
//! of every call that claims (`tests/optimizer_panics.rs`, through the C ABI).

//! # Failures keep the last good state
//! A failed read skips its sub-group (its files are untouched; [`OptimizerSwapper::end_step`]
//! reports it). A failed write-behind keeps the sub-group's new data in the ring
//! (`Unsaved`) and marks its file invalid: the next step visits that data instead of the
//! file, and the next successful write makes the file valid again. A file truncated or
//! replaced behind the swapper's back is found before it is read (`CorruptData`).
//!
//! # One sub-group through a step
//! ```text
//! begin_step([2, 0, 1])         Idle -> Planned; pump: regions taken in order, reads queued
//!   step::pump                  claim Planned -> Reading{region}; Store::submit per tensor; record
//! next_ready()                  waits sub-group 2's reads (no lock), checks their crc32c,
//!                               Reading -> Out, pumps the next read-ahead; returns the Visit
//!   (caller: Adam in place; Visit::swap_out_params -> Swapper::swap_out_partitioned)
//! Visit::hand_back()            claim Out -> Writing; Store::submit of the state tensors; record
//!   step::reap                  a finished write frees its region (Writing -> Done), or
//!                               keeps it (-> Unsaved) on failure
//! end_step()                    waits every write; every sub-group back to Idle; all failures
//! ```

pub mod config;
pub mod durability;
pub mod gradients;
mod ledger;
pub mod params;
pub mod ring;
pub mod step;
pub mod subgroup;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::claim::{Bookkeeping, Held};
use crate::config::IoConfig;
use crate::status::{Error, Result, Status};
use crate::store::{Store, StoreConfig};
use ring::{Arena, RingMemory};
pub use step::Visit;

/// A claim on the optimizer swapper's bookkeeping.
pub(crate) type OptClaim<'a> = crate::claim::Claim<'a, State>;

use step::{GradWrite, Step};
use subgroup::{Phase, SubGroup};
pub use subgroup::{TensorKind, TensorSpec};

/// The optimizer swapper's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptimizerSettings {
    /// The drives' folders (DeepSpeed `offload_optimizer.nvme_path`); the files go under
    /// `<path>/zero_stage_3/optimizer/rank<rank>/`.
    pub nvme_paths: Vec<PathBuf>,
    /// This process's rank.
    pub rank: u32,
    /// Bytes of page-locked ring: at least the largest sub-group's aligned bytes; twice
    /// that or more lets the read of the next sub-group overlap the step of this one.
    pub ring_bytes: u64,
    /// Most sub-groups read ahead of the caller (0: as many as the ring holds).
    pub read_ahead: u32,
    /// Page-lock the ring.
    pub pin_memory: bool,
    /// Keep a crc32c of every tensor (of every gradient fragment) and check it on every read.
    pub verify_checksums: bool,
    /// The engine's settings.
    pub io: IoConfig,
    /// Adopt the rank folders (the state the last flush made durable) instead of emptying
    /// them; see [`durability`].
    pub adopt: bool,
    /// Flush at the end of every step: [`OptimizerSwapper::end_step`], once every write
    /// of the step is done, makes the state durable as [`OptimizerSwapper::flush`] does
    /// and reports a failed flush with the step's other failures (the previous generation
    /// stays the durable one).
    pub flush_at_end_step: bool,
}

impl Default for OptimizerSettings {
    fn default() -> OptimizerSettings {
        OptimizerSettings {
            nvme_paths: Vec::new(),
            rank: 0,
            ring_bytes: 1 << 30,
            read_ahead: 0,
            pin_memory: true,
            verify_checksums: false,
            io: IoConfig::default(),
            adopt: false,
            flush_at_end_step: false,
        }
    }
}

/// The bookkeeping behind the one mutex.
pub(crate) struct State {
    pub groups: BTreeMap<u32, SubGroup>,
    pub arena: Arena,
    pub step: Option<Step>,
    /// Gradient fragments being written.
    pub grads: Vec<GradWrite>,
    /// Failures of gradient writes (and of writes settled outside a step) not yet reported.
    pub grad_errors: Vec<Error>,
    /// Calls settling gradient writes without the lock.
    pub grads_settling: usize,
    /// The counters of [`OptimizerStats`] kept here.
    pub counters: Counters,
    /// Store keys of registrations a panic undid: the store forgets them at the next
    /// register or purge (forgetting takes the store's lock, not taken inside a drop).
    pub orphans: Vec<u64>,
    /// A transition is running; still set after it, it was torn by a panic.
    pub changing: bool,
    /// The first drive's rank folder, naming this swapper's fault-injection points.
    pub tag: String,
    /// Tensors an adopted manifest names whose sub-group is not registered yet, by key.
    pub adopted: HashMap<u64, crate::store::manifest::TensorEntry>,
}

/// Counters kept under the lock.
#[derive(Default)]
pub(crate) struct Counters {
    pub steps: u64,
    pub ahead_peak: u64,
    pub ring_peak: u64,
    pub read_wait_ns: u64,
    pub write_wait_ns: u64,
}

impl State {
    /// The bookkeeping of a new swapper with a ring of `ring_bytes`; `tag` names its
    /// fault-injection points.
    fn new(
        ring_bytes: u64,
        tag: String,
        adopted: HashMap<u64, crate::store::manifest::TensorEntry>,
    ) -> State {
        State {
            groups: BTreeMap::new(),
            arena: Arena::new(ring_bytes),
            step: None,
            grads: Vec::new(),
            grad_errors: Vec::new(),
            grads_settling: 0,
            counters: Counters::default(),
            orphans: Vec::new(),
            changing: false,
            tag,
            adopted,
        }
    }

    /// Notes the ring's use and the read-ahead after a claim.
    pub fn note_use(&mut self) {
        let used = self.arena.in_use();
        self.counters.ring_peak = self.counters.ring_peak.max(used);
        if let Some(s) = &self.step {
            let ahead = (s.read - s.next) as u64;
            self.counters.ahead_peak = self.counters.ahead_peak.max(ahead);
        }
    }
}

/// What the optimizer swapper has done, and the memory it holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptimizerStats {
    /// Sub-groups registered.
    pub subgroups: u64,
    /// Steps ended.
    pub steps: u64,
    /// Bytes of the ring: the page-locked memory the swapper holds (when `ring_locked`).
    pub ring_bytes: u64,
    /// Bytes of the ring in use now.
    pub ring_in_use: u64,
    /// Most bytes of the ring ever in use at once.
    pub ring_peak: u64,
    /// Most sub-groups ever read (or being read) ahead of the caller at once.
    pub read_ahead_peak: u64,
    /// Bytes read and written by the swapper's store since it opened.
    pub bytes_read: u64,
    /// As `bytes_read`, written.
    pub bytes_written: u64,
    /// Nanoseconds `next_ready` spent blocked waiting for reads (the I/O the step did not hide).
    pub read_wait_ns: u64,
    /// Nanoseconds spent blocked waiting for writes (end_step, and a full ring).
    pub write_wait_ns: u64,
    /// State tensors of an adopted folder that no registration has taken up yet (0
    /// without adopt): after registering every sub-group it had, a resume expects 0, and
    /// the drop across the registrations is the count of tensors they took up.
    pub adopted_waiting: u64,
    /// Whether the ring's pages are locked in RAM: 1 or 0.
    pub ring_locked: u8,
}

impl State {
    /// The sub-group `index`, or `NotFound` naming it.
    pub fn group(&mut self, index: u32) -> Result<&mut SubGroup> {
        self.groups.get_mut(&index).ok_or_else(|| unknown(index))
    }
}

pub(crate) fn unknown(index: u32) -> Error {
    Error::new(Status::NotFound, format!("sub-group {index} is not registered"))
}

/// The optimizer-state swapper. Dropping it waits for every read and write in flight.
pub struct OptimizerSwapper {
    // Field order matters: the store (and its engines) drains before the ring is freed.
    store: Store,
    state: Bookkeeping<State>,
    ring: RingMemory,
    config: OptimizerSettings,
}

impl OptimizerSwapper {
    /// Opens the store under `<path>/zero_stage_3/optimizer/rank<r>/` on every drive and
    /// allocates the ring (page-locked when asked, after checking the budget).
    pub fn new(config: OptimizerSettings) -> Result<OptimizerSwapper> {
        if config.nvme_paths.is_empty() {
            return Err(Error::invalid("no nvme_path given"));
        }
        config.io.validate()?;
        let ring = RingMemory::new(config.ring_bytes, config.pin_memory)?;
        // Reads and writes in separate queues: a write-behind never delays the next read.
        let store = Store::open_split(StoreConfig {
            paths: config.nvme_paths.clone(),
            folder: durability::folder_parts(config.rank),
            io: config.io,
            adopt: config.adopt,
        })?;
        let adopted = durability::verify_adopted(&store)?;
        crate::log!(
            Info,
            "optimizer swapper ready: ring of {} bytes ({}), read-ahead {}",
            ring.bytes(),
            if ring.is_locked() {
                "page-locked"
            } else {
                "not page-locked"
            },
            config.read_ahead
        );
        Ok(OptimizerSwapper {
            state: Self::bookkeeping(&store, ring.bytes(), adopted),
            store,
            ring,
            config,
        })
    }

    /// The bookkeeping of a new swapper over `store`.
    fn bookkeeping(
        store: &Store,
        ring_bytes: u64,
        adopted: HashMap<u64, crate::store::manifest::TensorEntry>,
    ) -> Bookkeeping<State> {
        let tag = store.folder(0).display().to_string();
        Bookkeeping::new(
            State::new(ring_bytes, tag.clone(), adopted),
            format!("optimizer swapper {tag}"),
        )
    }

    /// The bookkeeping, locked; `Panic` once a panic broke it (every call then fails the
    /// same way; the files of every sub-group written before are intact).
    pub(crate) fn lock(&self) -> Result<Held<'_, State>> {
        self.state.lock()
    }

    /// Opens a claim (see `ledger`), holding the lock; `Panic` once broken.
    pub(crate) fn claim(&self) -> Result<OptClaim<'_>> {
        self.state.claim()
    }

    /// A step of a call, where a test may inject a panic (feature `fault-injection`;
    /// nothing otherwise): named `<rank folder>|<call>:<step>`.
    pub(crate) fn point(&self, call: &str, step: &str) {
        crate::sys::fault::point(|| format!("{}|{call}:{step}", self.store.folder(0).display()));
    }

    /// Whether the handle takes calls: `Panic` once a panic broke its bookkeeping; and
    /// whether the store's engines take operations: `BadState` in a forked child (the I/O
    /// threads are the parent's), `Panic` once an engine broke, `BadState` once closed.
    /// Every call that changes state checks it first, so such a call fails at once.
    pub(crate) fn usable(&self) -> Result<()> {
        self.state.usable()?;
        self.store.check_usable()
    }

    /// Makes the store forget the space of purged sub-groups and of registrations a
    /// panic undid, under the bookkeeping lock (so no registration of the same keys runs
    /// meanwhile; the store only updates its index, no file-system call).
    fn forget_orphans(&self, st: &mut State) {
        for key in std::mem::take(&mut st.orphans) {
            self.store.forget(key);
        }
    }

    /// The settings.
    pub fn config(&self) -> &OptimizerSettings {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The counters.
    pub fn stats(&self) -> Result<OptimizerStats> {
        let (bytes_read, bytes_written) = self.store.bytes_moved();
        let st = self.lock()?;
        Ok(OptimizerStats {
            subgroups: st.groups.len() as u64,
            steps: st.counters.steps,
            ring_bytes: self.ring.bytes(),
            ring_in_use: st.arena.in_use(),
            ring_peak: st.counters.ring_peak,
            read_ahead_peak: st.counters.ahead_peak,
            bytes_read,
            bytes_written,
            read_wait_ns: st.counters.read_wait_ns,
            write_wait_ns: st.counters.write_wait_ns,
            adopted_waiting: st.adopted.len() as u64,
            ring_locked: u8::from(self.ring.is_locked()),
        })
    }

    /// Bytes of the ring.
    pub fn ring_bytes(&self) -> u64 {
        self.ring.bytes()
    }

    /// Whether the ring is page-locked.
    pub fn ring_locked(&self) -> bool {
        self.ring.is_locked()
    }

    /// Registers sub-group `index` with its tensors: reserves their space in the store,
    /// reading back as zeros (no zeros go through the CPU). `BadState` if it is registered.
    pub fn register(&self, index: u32, tensors: &[TensorSpec]) -> Result<()> {
        self.usable()?;
        let group = SubGroup::new(index, tensors, |k| subgroup::key(index, k))?;
        if group.region_bytes > self.ring.bytes() {
            return Err(Error::new(
                Status::NoBuffer,
                format!(
                    "sub-group {index} needs {} bytes of ring; ring_bytes is {}: set ring_bytes to at least {} ({} to read the next sub-group while this one steps)",
                    group.region_bytes,
                    self.ring.bytes(),
                    group.region_bytes,
                    2 * group.region_bytes
                ),
            ));
        }
        let mut group = group;
        // 1. Claim, under the lock: a placeholder, so no other call takes the index.
        let mut claim = self.claim()?;
        let (st, entries) = claim.parts();
        st.point("register", "claim");
        self.forget_orphans(st);
        if st.groups.contains_key(&index) {
            return Err(Error::bad_state(format!(
                "sub-group {index} is already registered"
            )));
        }
        let taken = durability::take_adopted(&mut st.adopted, index, &mut group, &self.store)?;
        let reserve: Vec<(u64, u64)> = group
            .tensors
            .iter()
            .filter(|t| !taken.iter().any(|e| e.key == t.key))
            .map(|t| (t.key, t.bytes()))
            .collect();
        st.change(|st| {
            let mut placeholder = group;
            placeholder.phase = Phase::Registering;
            st.groups.insert(index, placeholder);
        });
        entries.push(ledger::Claimed::Register {
            index,
            keys: reserve.iter().map(|&(k, _)| k).collect(),
            adopted: taken,
            reserved: false,
        });
        claim.unlock();
        // 2. Without the lock: the store creates and sizes files.
        let mut result = Ok(());
        for &(key, bytes) in &reserve {
            self.point("register", "reserve");
            if let Err(e) = self.store.reserve(key, bytes, true) {
                result = Err(e.context(format!("registering sub-group {index}")));
                break;
            }
        }
        self.point("register", "reserved");
        // 3. Record: idle, or forgotten with the space it reserved (adopted tensors it
        // took go back to the adopted set, their files untouched).
        if let ledger::Claimed::Register { reserved, .. } = claim.entry_mut(0) {
            *reserved = result.is_ok();
        }
        claim.end()?;
        if result.is_err() {
            self.forget_orphans(&mut *self.lock()?);
        }
        result
    }

    /// The registered sub-groups, in index order, with their tensors.
    pub fn subgroups(&self) -> Result<Vec<(u32, Vec<TensorSpec>)>> {
        let st = self.lock()?;
        Ok(st
            .groups
            .iter()
            .map(|(&i, g)| (i, g.tensors.iter().map(|t| t.spec.clone()).collect()))
            .collect())
    }

    /// Forgets every sub-group and its files (DeepSpeed's `purge_state`): refused during a
    /// step. Waits for gradient writes in flight first (their outcome no longer matters).
    /// Data whose write-behind failed is dropped.
    pub fn purge(&self) -> Result<()> {
        self.usable()?;
        if self.lock()?.step.is_some() {
            return Err(Error::bad_state("purge during a step: end the step first"));
        }
        self.settle_gradients(true, "purge")?;
        {
            let mut st = self.lock()?;
            st.point("purge", "claim");
            if st.step.is_some() {
                return Err(Error::bad_state("purge during a step: end the step first"));
            }
            if !st.grads.is_empty() || st.grads_settling > 0 {
                return Err(Error::new(
                    Status::Busy,
                    "gradient writes were queued by another thread during purge: call purge again",
                ));
            }
            if let Some((i, g)) = st
                .groups
                .iter()
                .find(|(_, g)| matches!(g.phase, Phase::Registering))
            {
                return Err(Error::new(
                    Status::Busy,
                    format!("sub-group {i} is being registered ({})", g.phase.name()),
                ));
            }
            st.change(|st| {
                let groups = std::mem::take(&mut st.groups);
                for g in groups.values() {
                    if let Some(r) = g.phase.region() {
                        st.arena.free(r);
                    }
                }
                st.grad_errors.clear();
                // The store forgets them below (after a panic: at the next register or
                // purge).
                st.orphans
                    .extend(groups.values().flat_map(|g| g.tensors.iter().map(|t| t.key)));
            });
            st.point("purge", "record");
            self.forget_orphans(&mut st);
        }
        Ok(())
    }

    /// The store's file and offset of each extent of tensor `k` of sub-group `index`, for
    /// messages and tools.
    pub fn tensor_locations(&self, index: u32, k: usize) -> Result<Vec<crate::store::Extent>> {
        let key = {
            let mut st = self.lock()?;
            st.group(index)?.tensor(index, k)?.key
        };
        Ok(self.store.locations(key))
    }
}
