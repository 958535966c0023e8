//! The swapper's bookkeeping behind its one lock, and every change to it: this is the
//! only file that changes a param's status, slot, I/O, copy on disk or checksum, the
//! pending sets, the pool's accounting or the partitioned space's flag. The fields are
//! private, so the compiler holds every other file to the read-only accessors and the
//! transitions below.
//!
//! Each transition runs inside [`State::change`], which marks the bookkeeping as changing
//! while it runs: a panic in the middle of one leaves it marked, and that breaks the
//! handle (see [`crate::claim`]). A transition does its checks before its change, so a
//! failed check changes nothing.
//!
//! The calls that do I/O change params through a claim ([`ParamClaim`]): each claimed
//! param gets an entry holding the param as it was and what the claim took for it; the
//! call notes what became of its I/O in the entry's [`Fate`]; and ending the claim
//! records or undoes each entry ([`Ledger::resolve`]), whether the call returns or panics.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::claim::{Claim, Ledger, Settle};
use crate::status::{Error, Result, Status};
use crate::store::StoreTicket as Ticket;
use crate::sys::RawBuf;

use super::param::{Io, ParamStatus, PendingWrite, Slot};
use super::partition::PartitionSpace;
use super::pool::{BufferId, Buffers};
use super::wait::Kind;
use crate::checksum::Checksum;

/// Totals kept for the stats.
#[derive(Default)]
pub(crate) struct Counters {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub read_wait_ns: u64,
    pub write_wait_ns: u64,
}

/// What the swapper knows of one param. Read through its accessors; changed only by the
/// transitions of this file.
pub(crate) struct Param {
    numel: u64,
    status: ParamStatus,
    /// The buffer holding the param (AVAILABLE, INFLIGHT); None when NOT_AVAILABLE.
    slot: Option<Slot>,
    /// Bytes of the last complete write, if the file holds a valid copy of the param.
    on_disk: Option<u64>,
    /// Whether a write of the param was ever queued, so its swap file exists (a
    /// partitioned swap-out overwrites only such files, as in DeepSpeed).
    has_file: bool,
    /// The checksum of the bytes on disk (None with checksums off).
    checksum: Option<Checksum>,
    io: Option<Io>,
}

impl Param {
    fn new(numel: u64) -> Param {
        Param {
            numel,
            status: ParamStatus::NotAvailable,
            slot: None,
            on_disk: None,
            has_file: false,
            checksum: None,
            io: None,
        }
    }

    /// A copy of an idle param (one with no I/O), kept by a claim to undo itself.
    fn copy_idle(&self) -> Param {
        debug_assert!(self.io.is_none(), "only idle params are claimed");
        Param {
            numel: self.numel,
            status: self.status,
            slot: self.slot,
            on_disk: self.on_disk,
            has_file: self.has_file,
            checksum: self.checksum.clone(),
            io: None,
        }
    }

    /// Elements.
    pub fn numel(&self) -> u64 {
        self.numel
    }

    /// AVAILABLE, NOT_AVAILABLE or INFLIGHT.
    pub fn status(&self) -> ParamStatus {
        self.status
    }

    /// The buffer holding the param, if any.
    pub fn slot(&self) -> Option<Slot> {
        self.slot
    }

    /// Bytes of the last complete write, if the file holds a valid copy.
    pub fn on_disk(&self) -> Option<u64> {
        self.on_disk
    }

    /// Whether the param's swap file exists.
    pub fn has_file(&self) -> bool {
        self.has_file
    }

    /// The checksum of the bytes on disk.
    pub fn checksum(&self) -> Option<&Checksum> {
        self.checksum.as_ref()
    }

    /// The I/O under way, if any.
    pub fn io(&self) -> Option<&Io> {
        self.io.as_ref()
    }

    /// The ticket of the read under way, if any.
    pub fn read_ticket(&self) -> Option<&Ticket> {
        match &self.io {
            Some(Io::Read(t)) => Some(t),
            _ => None,
        }
    }

    /// The ticket of the write under way, if any.
    pub fn write_ticket(&self) -> Option<&Ticket> {
        match &self.io {
            Some(Io::Write(w)) => Some(&w.ticket),
            _ => None,
        }
    }

    /// What the param's I/O is doing, for messages and dumps ("" when idle).
    pub fn io_name(&self) -> &'static str {
        match self.io {
            None => "",
            Some(Io::Submitting) => "I/O being submitted",
            Some(Io::Read(_)) => "read in flight",
            Some(Io::Write(_)) => "write in flight",
        }
    }
}

/// Everything that changes, behind the swapper's mutex.
pub(crate) struct State {
    params: HashMap<u64, Param>,
    buffers: Buffers,
    /// Params with a read queued (their `io` is `Io::Read`).
    pending_reads: BTreeSet<u64>,
    /// Params with a write queued (their `io` is `Io::Write`).
    pending_writes: BTreeSet<u64>,
    /// The partitioned swap space, if reserved; a call that uses it holds a clone, so a
    /// new reservation never frees memory under a running conversion.
    partition: Option<Arc<PartitionSpace>>,
    /// A partitioned swap-out is using the space.
    partition_busy: bool,
    counters: Counters,
    /// A transition is running; still set after it, it was torn by a panic.
    changing: bool,
    /// The swap folder, naming this swapper's fault-injection points.
    tag: String,
}

impl State {
    /// The state of a new swapper with `buffers` pool buffers; `tag` names its steps for
    /// fault injection (the swap folder).
    pub fn new(buffers: usize, tag: String) -> State {
        State {
            params: HashMap::new(),
            buffers: Buffers::new(buffers),
            pending_reads: BTreeSet::new(),
            pending_writes: BTreeSet::new(),
            partition: None,
            partition_busy: false,
            counters: Counters::default(),
            changing: false,
            tag,
        }
    }

    /// Runs one transition, marked as changing while it runs. (Tests may inject a panic
    /// here, `<swap folder>|change`: the middle of a transition.)
    fn change<R>(&mut self, f: impl FnOnce(&mut State) -> R) -> R {
        self.changing = true;
        crate::sys::fault::point(|| format!("{}|change", self.tag));
        let r = f(self);
        self.changing = false;
        r
    }

    /// The param `id`, if known.
    pub fn param(&self, id: u64) -> Option<&Param> {
        self.params.get(&id)
    }

    /// Every param.
    pub fn params(&self) -> impl Iterator<Item = (u64, &Param)> {
        self.params.iter().map(|(&id, p)| (id, p))
    }

    /// How many params are known.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// The pool's accounting.
    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// Params with an operation of `kind` queued.
    pub fn pending(&self, kind: Kind) -> &BTreeSet<u64> {
        match kind {
            Kind::Read => &self.pending_reads,
            Kind::Write => &self.pending_writes,
        }
    }

    /// The partitioned swap space, if reserved.
    pub fn partition(&self) -> Option<&Arc<PartitionSpace>> {
        self.partition.as_ref()
    }

    /// The totals.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    // ---- Transitions that need no claim: one step under the lock. ----

    /// Releases an AVAILABLE, idle param: NOT_AVAILABLE, its pool buffer back in the pool
    /// (a caller buffer is let go). An unknown id is left alone.
    pub fn release(&mut self, id: u64) {
        if !self.params.contains_key(&id) {
            return;
        }
        self.change(|st| {
            let p = st.params.get_mut(&id).expect("looked up above");
            p.status = ParamStatus::NotAvailable;
            if let Some(Slot::Pool(i)) = p.slot.take() {
                st.buffers.give(i);
            }
        })
    }

    /// Moves up to `n` free pool buffers to the caller's reserved list.
    pub fn reserve_buffers(&mut self, n: usize) -> Vec<BufferId> {
        self.change(|st| st.buffers.reserve(n))
    }

    /// Puts every reserved buffer back in the pool.
    pub fn unreserve_buffers(&mut self) {
        self.change(|st| st.buffers.unreserve_all())
    }

    /// Installs a new partitioned swap space.
    pub fn set_partition(&mut self, space: Arc<PartitionSpace>) {
        self.change(|st| st.partition = Some(space))
    }

    /// Adds to the time callers spent waiting.
    pub fn add_wait_ns(&mut self, kind: Kind, ns: u64) {
        self.change(|st| match kind {
            Kind::Read => st.counters.read_wait_ns += ns,
            Kind::Write => st.counters.write_wait_ns += ns,
        })
    }

    /// A finished read: AVAILABLE, or NOT_AVAILABLE with its pool buffer back on failure.
    /// A read another thread's wait already finished is skipped.
    pub fn finish_read(&mut self, id: u64, ticket: &Ticket, elem: usize, result: Result<()>) -> Result<()> {
        let Some(p) = self.params.get(&id) else {
            return Ok(());
        };
        if !p.read_ticket().is_some_and(|t| t.same(ticket)) {
            return Ok(()); // finished by a concurrent wait
        }
        let bytes = p.numel * elem as u64;
        let moved = match p.slot {
            Some(Slot::Pool(_)) => p.on_disk.unwrap_or(bytes),
            _ => bytes,
        };
        self.change(|st| {
            st.pending_reads.remove(&id);
            let p = st.params.get_mut(&id).expect("looked up above");
            p.io = None;
            match result {
                Ok(()) => {
                    p.status = ParamStatus::Available;
                    st.counters.bytes_read += moved;
                    Ok(())
                }
                Err(e) => {
                    p.status = ParamStatus::NotAvailable;
                    if let Some(Slot::Pool(i)) = p.slot.take() {
                        st.buffers.give(i);
                    }
                    Err(e)
                }
            }
        })
    }

    /// A finished write: the file now holds the param (and the buffer goes back for a
    /// release), or, on failure, the param stays AVAILABLE with its data and its file is
    /// no longer a valid copy. A write another thread's wait already finished is skipped.
    pub fn finish_write(&mut self, id: u64, ticket: &Ticket, result: Result<()>) -> Result<()> {
        let Some(p) = self.params.get(&id) else {
            return Ok(());
        };
        if !p.write_ticket().is_some_and(|t| t.same(ticket)) {
            return Ok(());
        }
        self.change(|st| {
            st.pending_writes.remove(&id);
            let p = st.params.get_mut(&id).expect("looked up above");
            let Some(Io::Write(w)) = p.io.take() else {
                unreachable!("checked above: a write is in flight");
            };
            match result {
                Ok(()) => {
                    p.on_disk = Some(w.bytes);
                    p.checksum = Checksum::of(&w.ticket);
                    if w.release {
                        p.status = ParamStatus::NotAvailable;
                        if let Some(Slot::Pool(i)) = p.slot.take() {
                            st.buffers.give(i);
                        }
                    }
                    st.counters.bytes_written += w.bytes;
                    Ok(())
                }
                Err(e) => {
                    p.on_disk = None;
                    Err(e)
                }
            }
        })
    }
}

/// What became of a claimed param's I/O: what ending the claim does with it.
pub(crate) enum Fate {
    /// Nothing was submitted (or its submission failed): the param goes back to how it
    /// was before the claim, and a pool buffer the claim took goes back to the pool.
    Undo,
    /// The claim's change stands as it is (`get_buffer`).
    Keep,
    /// A read was queued into the param's slot: INFLIGHT with this ticket, pending.
    Read(Ticket),
    /// A write was queued from the param's slot: pending, its file now exists.
    Write(PendingWrite),
    /// A synchronous read into memory lent for the call only (`swap_into_buffer`):
    /// waited for, then the param is as it was (it never changed state).
    ReadInto(Ticket),
    /// A partition write from the call's staging space, waited for: the file holds the
    /// param (`Some(true)`), or is no longer a valid copy; `None` until known.
    Overwrite {
        ticket: Ticket,
        bytes: u64,
        ok: Option<bool>,
    },
    /// A partition write that failed: the param's file is no longer a valid copy.
    Invalid,
}

/// One entry of a claim on the param swapper's bookkeeping.
pub(crate) enum Claimed {
    /// A param the claim changed.
    Param {
        id: u64,
        /// The call, naming its record step for fault injection.
        call: &'static str,
        /// The param before the claim (None: the claim registered it).
        before: Option<Param>,
        /// The pool buffer the claim took for it.
        took: Option<BufferId>,
        fate: Fate,
    },
    /// The partitioned space, marked busy.
    Space {
        /// Keeps the space alive until the claim has ended (its writes waited for), even
        /// if a new reservation replaced it and the call's own clone is gone.
        _alive: Arc<PartitionSpace>,
    },
}

impl Claimed {
    /// Notes what became of this param's I/O.
    pub fn set_fate(&mut self, fate: Fate) {
        if let Claimed::Param { fate: f, .. } = self {
            *f = fate;
        }
    }
}

impl Settle for Claimed {
    /// Waits for I/O that uses the call's own memory, so that the claim never ends
    /// while the kernel still reads or writes it.
    fn settle(&mut self) {
        match self {
            Claimed::Param {
                fate: Fate::ReadInto(t),
                ..
            } => {
                let _ = t.wait();
            }
            Claimed::Param {
                fate:
                    Fate::Overwrite {
                        ticket,
                        ok: ok @ None,
                        ..
                    },
                ..
            } => *ok = Some(ticket.wait().is_ok()),
            _ => {}
        }
    }
}

impl Ledger for State {
    type Entry = Claimed;

    fn torn(&self) -> bool {
        self.changing
    }

    fn resolve(&mut self, entry: &mut Claimed) {
        match entry {
            Claimed::Space { .. } => self.change(|st| st.partition_busy = false),
            Claimed::Param {
                id,
                call,
                before,
                took,
                fate,
            } => {
                let id = *id;
                crate::sys::fault::point(|| format!("{}|{call}:record", self.tag));
                assert!(
                    self.params.contains_key(&id),
                    "param {id} was claimed and cannot have been removed"
                );
                self.change(|st| {
                    let p = st.params.get_mut(&id).expect("looked up above");
                    match std::mem::replace(fate, Fate::Keep) {
                        Fate::Keep => {}
                        Fate::Undo | Fate::ReadInto(_) => {
                            match before.take() {
                                Some(b) => *p = b,
                                None => {
                                    st.params.remove(&id);
                                }
                            }
                            if let Some(i) = took.take() {
                                st.buffers.give(i);
                            }
                        }
                        Fate::Read(ticket) => {
                            p.io = Some(Io::Read(ticket));
                            st.pending_reads.insert(id);
                        }
                        Fate::Write(w) => {
                            p.io = Some(Io::Write(w));
                            p.has_file = true;
                            st.pending_writes.insert(id);
                        }
                        Fate::Overwrite { ticket, bytes, ok } => {
                            p.io = None;
                            if ok == Some(true) {
                                p.on_disk = Some(bytes);
                                p.checksum = Checksum::of(&ticket);
                                st.counters.bytes_written += bytes;
                            } else {
                                p.on_disk = None;
                                p.checksum = None;
                            }
                        }
                        Fate::Invalid => {
                            p.io = None;
                            p.on_disk = None;
                            p.checksum = None;
                        }
                    }
                })
            }
        }
    }
}

/// A claim on the param swapper's bookkeeping.
pub(crate) type ParamClaim<'a> = Claim<'a, State>;

/// What the submit step of a claimed read needs.
pub(crate) struct ReadPlan {
    pub numel: u64,
    /// Bytes of the last complete write (the file's valid length).
    pub on_disk: u64,
    pub checksum: Option<Checksum>,
}

// ---- Transitions of a claim: each checks, then changes one param and logs its entry. ----
impl ParamClaim<'_> {
    /// Registers param `id` (or reuses a known NOT_AVAILABLE, idle one) with a free pool
    /// buffer for `numel` elements: AVAILABLE, no copy on disk. `NoBuffer` if none is free.
    pub fn get_buffer(&mut self, id: u64, numel: u64, count: u32) -> Result<BufferId> {
        let (st, entries) = self.parts();
        if let Some(p) = st.params.get(&id) {
            if p.status != ParamStatus::NotAvailable || p.io.is_some() {
                return Err(Error::bad_state(format!(
                    "param {id} is {} and already has a buffer",
                    p.status.name()
                )));
            }
        }
        if st.buffers.free() == 0 {
            return Err(Error::new(
                Status::NoBuffer,
                format!("param {id}: no free buffer (all {count} are in use)"),
            ));
        }
        entries.reserve(1);
        let i = st.change(|st| {
            let i = st.buffers.take().expect("checked: one is free");
            entries.push(Claimed::Param {
                id,
                call: "get_buffer",
                before: st.params.get(&id).map(Param::copy_idle),
                took: Some(i),
                fate: Fate::Undo,
            });
            let p = st.params.entry(id).or_insert_with(|| Param::new(numel));
            p.numel = numel;
            p.status = ParamStatus::Available;
            p.slot = Some(Slot::Pool(i));
            p.on_disk = None;
            i
        });
        Ok(i)
    }

    /// Claims an AVAILABLE, idle param (checked by the caller) for a write: its I/O is
    /// `Submitting` until the claim ends. Returns its slot and element count.
    pub fn claim_write(&mut self, id: u64, call: &'static str) -> (Slot, u64) {
        let (st, entries) = self.parts();
        let p = st.params.get(&id).expect("the batch was checked");
        let slot = p.slot.expect("checked: an AVAILABLE param has a slot");
        let numel = p.numel;
        entries.reserve(1);
        st.change(|st| {
            let p = st.params.get_mut(&id).expect("looked up above");
            entries.push(Claimed::Param {
                id,
                call,
                before: Some(p.copy_idle()),
                took: None,
                fate: Fate::Undo,
            });
            p.io = Some(Io::Submitting);
        });
        (slot, numel)
    }

    /// Claims a NOT_AVAILABLE, idle param with a copy on disk (checked by the caller) for
    /// a read into `dest`, or into a free pool buffer (the caller checked one is free):
    /// INFLIGHT, `Submitting` until the claim ends. Returns the slot read into.
    pub fn claim_read(&mut self, id: u64, dest: Option<RawBuf>, call: &'static str) -> (Slot, ReadPlan) {
        let (st, entries) = self.parts();
        let p = st.params.get(&id).expect("the batch was checked");
        let on_disk = p.on_disk.expect("checked: on disk");
        let (numel, checksum) = (p.numel, p.checksum.clone());
        if dest.is_none() {
            assert!(st.buffers.free() > 0, "the caller counted the free buffers");
        }
        entries.reserve(1);
        let slot = st.change(|st| {
            let took = match dest {
                Some(_) => None,
                None => st.buffers.take(),
            };
            let slot = match (dest, took) {
                (Some(b), _) => Slot::Caller(b),
                (None, Some(i)) => Slot::Pool(i),
                (None, None) => unreachable!("counted above"),
            };
            let p = st.params.get_mut(&id).expect("looked up above");
            entries.push(Claimed::Param {
                id,
                call,
                before: Some(p.copy_idle()),
                took,
                fate: Fate::Undo,
            });
            p.slot = Some(slot);
            p.status = ParamStatus::Inflight;
            p.io = Some(Io::Submitting);
            slot
        });
        (
            slot,
            ReadPlan {
                numel,
                on_disk,
                checksum,
            },
        )
    }

    /// Claims an idle param (checked by the caller) so that no other call changes it
    /// while this one reads or overwrites its file: `Submitting` until the claim ends,
    /// its state otherwise unchanged. Returns what a read of it needs.
    pub fn claim_idle(&mut self, id: u64, call: &'static str) -> ReadPlan {
        let (st, entries) = self.parts();
        let p = st.params.get(&id).expect("the batch was checked");
        let plan = ReadPlan {
            numel: p.numel,
            on_disk: p.on_disk.unwrap_or(0),
            checksum: p.checksum.clone(),
        };
        entries.reserve(1);
        st.change(|st| {
            let p = st.params.get_mut(&id).expect("looked up above");
            entries.push(Claimed::Param {
                id,
                call,
                before: Some(p.copy_idle()),
                took: None,
                fate: Fate::Undo,
            });
            p.io = Some(Io::Submitting);
        });
        plan
    }

    /// Claims the partitioned space: `BadState` if none is reserved, `Busy` if another
    /// call uses it. Returns it (kept alive by the claim too).
    pub fn claim_space(&mut self) -> Result<Arc<PartitionSpace>> {
        let (st, entries) = self.parts();
        let Some(space) = st.partition.clone() else {
            return Err(Error::bad_state(
                "no partitioned swap space: call swapper_reserve_partitioned_swap_space first",
            ));
        };
        if st.partition_busy {
            return Err(Error::new(
                Status::Busy,
                "another swap_out_partitioned is using the partitioned swap space",
            ));
        }
        entries.reserve(1);
        st.change(|st| {
            st.partition_busy = true;
            entries.push(Claimed::Space {
                _alive: Arc::clone(&space),
            });
        });
        Ok(space)
    }

    /// The bookkeeping, for the checks of the claim step.
    pub fn state(&mut self) -> &State {
        self.parts().0
    }
}
