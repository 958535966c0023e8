//! The pipeline of a step: begin_step announces the order, next_ready hands out the next
//! sub-group once its reads are done, hand_back queues its write-behind, end_step waits
//! for every write. Reads ahead and writes behind advance inside these calls (`pump`,
//! `settle`): there is no thread of the swapper's own and no callback.

use crate::status::{Error, Result, Status};
use crate::store::StoreTicket as Ticket;
use crate::sys::RawBuf;

use super::ledger::Claimed;
use super::subgroup::{Phase, Sum, TensorKind, Tickets, ELEM};
use super::{unknown, OptimizerSwapper, State};

/// A step under way.
pub(crate) struct Step {
    /// The announced order.
    pub order: Vec<u32>,
    /// Position in `order` of the next sub-group `next_ready` hands out.
    pub next: usize,
    /// Position in `order` of the next sub-group to read.
    pub read: usize,
    /// Failures met during the step, reported by `end_step`.
    pub errors: Vec<Error>,
    /// Serial of the next claim.
    pub serial: u64,
}

/// A gradient fragment being written: which tensor, where, from which ring region.
pub(crate) struct GradWrite {
    pub index: u32,
    pub tensor: usize,
    /// Element offset and count.
    pub offset: u64,
    pub numel: u64,
    pub region: u64,
    pub ticket: Ticket,
}

/// A sub-group's tickets: (tensor index, ticket).
type TensorTickets = Vec<(usize, Ticket)>;

/// What became of one tensor's write: its index, the outcome (its crc32c when asked) and
/// the checksum's parts.
type WriteOutcome = (usize, Result<Option<u32>>, Vec<(u64, u64, u32)>);

/// One tensor to read or write: index, store key, offset in the ring, bytes, name.
struct Job {
    k: usize,
    key: u64,
    at: u64,
    bytes: u64,
    name: String,
}

/// A sub-group handed out by [`OptimizerSwapper::next_ready`]: its tensors, in place in
/// the ring, in registration order. Hand it back with [`Visit::hand_back`] to have its
/// state written; dropped without that, its update is discarded (its files keep the state
/// they had before the step, and `end_step` reports it).
pub struct Visit<'a> {
    pub(crate) sw: &'a OptimizerSwapper,
    index: u32,
    bufs: Vec<(RawBuf, usize)>,
    names: Vec<String>,
    kinds: Vec<TensorKind>,
    handed: bool,
}

impl Visit<'_> {
    /// The sub-group's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many tensors it has.
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    /// Whether it has no tensors (never: a sub-group has at least one).
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }

    /// The name of tensor `k`.
    pub fn name(&self, k: usize) -> &str {
        &self.names[k]
    }

    /// The kind of tensor `k`.
    pub fn kind(&self, k: usize) -> TensorKind {
        self.kinds[k]
    }

    /// The index of the tensor named `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Tensor `k`'s elements.
    pub fn tensor(&self, k: usize) -> &[f32] {
        let (buf, n) = self.bufs[k];
        // SAFETY: the region is this visit's alone while it is out (no I/O touches it);
        // it is 4096-aligned and holds `n` floats; the borrow of `self` keeps the visit.
        unsafe { std::slice::from_raw_parts(buf.0 as *const f32, n) }
    }

    /// Tensor `k`'s elements, for writing.
    pub fn tensor_mut(&mut self, k: usize) -> &mut [f32] {
        let (buf, n) = self.bufs[k];
        // SAFETY: as `tensor`, and `&mut self` makes this the only slice.
        unsafe { std::slice::from_raw_parts_mut(buf.0 as *mut f32, n) }
    }

    /// Every tensor, for writing (they do not overlap).
    pub fn tensors_mut(&mut self) -> Vec<&mut [f32]> {
        self.bufs
            .iter()
            // SAFETY: as `tensor_mut`; the tensors are disjoint ranges of the region.
            .map(|&(buf, n)| unsafe { std::slice::from_raw_parts_mut(buf.0 as *mut f32, n) })
            .collect()
    }

    /// The address of tensor `k`, for a caller that hands it on (C).
    pub fn raw(&self, k: usize) -> RawBuf {
        self.bufs[k].0
    }

    /// Queues the write-behind of its state tensors and ends the visit. If the sub-group
    /// is still out after a failure (or a panic) before its write was claimed, the visit's
    /// drop discards it: its files keep the previous state and `end_step` reports it.
    pub fn hand_back(mut self) -> Result<()> {
        let r = self.sw.hand_back_inner(self.index);
        self.handed = r.is_ok();
        r
    }

    /// Ends the visit without writing: its files keep the state they had (the caller's
    /// update is discarded); `end_step` does not count it as a failure.
    pub fn discard(mut self) -> Result<()> {
        let r = self.sw.discard_inner(self.index, None);
        self.handed = r.is_ok();
        r
    }

    /// Ends the visit without freeing anything, for the C API, which hands back by index.
    pub(crate) fn into_index(mut self) -> u32 {
        self.handed = true;
        self.index
    }
}

impl Drop for Visit<'_> {
    fn drop(&mut self) {
        if !self.handed {
            let why = if std::thread::panicking() {
                "a panic unwound through its visit"
            } else {
                "its Visit was dropped without hand_back"
            };
            // Never a second panic out of a drop that may run during unwinding.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.sw.discard_inner(self.index, Some(why))
            }));
        }
    }
}

impl OptimizerSwapper {
    /// Starts a step over `order` (registered sub-groups, each at most once, any order;
    /// not necessarily all). Waits for gradient writes first and reports their failures;
    /// then queues the first reads.
    pub fn begin_step(&self, order: &[u32]) -> Result<()> {
        self.usable()?;
        self.wait_gradients()?;
        {
            let mut st = self.lock()?;
            st.point("begin_step", "claim");
            if st.step.is_some() {
                return Err(Error::bad_state(
                    "a step is already under way: call end_step first",
                ));
            }
            if !st.grads.is_empty() || st.grads_settling > 0 {
                return Err(Error::new(
                    Status::Busy,
                    "gradient writes were queued (or are being settled by another thread) while this step began: call begin_step again",
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for &i in order {
                if !seen.insert(i) {
                    return Err(Error::invalid(format!(
                        "sub-group {i} is twice in the step's order"
                    )));
                }
                let g = st.groups.get(&i).ok_or_else(|| unknown(i))?;
                if !matches!(g.phase, Phase::Idle | Phase::Unsaved { .. }) {
                    return Err(Error::bad_state(format!("sub-group {i} is {}", g.phase.name())));
                }
            }
            st.change(|st| {
                for &i in order {
                    if let Some(g) = st.groups.get_mut(&i) {
                        g.phase = Phase::Planned {
                            resident: g.phase.region(),
                        };
                    }
                }
                st.step = Some(Step {
                    order: order.to_vec(),
                    next: 0,
                    read: 0,
                    errors: Vec::new(),
                    serial: 1,
                });
            });
        }
        self.pump("begin_step")
    }

    /// The next sub-group of the order, once its reads are done and checked; None when
    /// every sub-group of the step has been handed out. A sub-group whose read failed is
    /// skipped (its files are untouched) and its error returned; the next call goes on
    /// with the one after it.
    pub fn next_ready(&self) -> Result<Option<Visit<'_>>> {
        self.usable()?;
        loop {
            // 1. Claim, under the lock: the next sub-group, once its reads are queued.
            let mut claim = self.claim()?;
            let (st, entries) = claim.parts();
            st.point("next_ready", "take");
            let State { groups, step, .. } = &mut *st;
            let step = step
                .as_mut()
                .ok_or_else(|| Error::bad_state("no step under way: call begin_step first"))?;
            let Some(&j) = step.order.get(step.next) else {
                return Ok(None);
            };
            let g = groups.get_mut(&j).ok_or_else(|| unknown(j))?;
            let ready = matches!(&g.phase, Phase::Reading { io, taken, .. } if io.recorded && !*taken);
            if !ready {
                drop(claim);
                self.make_room("next_ready")?;
                continue;
            }
            let (serial, tickets) = st.change(|st| {
                let step = st.step.as_mut().expect("checked above");
                step.next += 1;
                let g = st.groups.get_mut(&j).expect("checked above");
                let Phase::Reading { io, taken, .. } = &mut g.phase else {
                    unreachable!("checked above")
                };
                *taken = true;
                (io.serial, io.queued.clone())
            });
            entries.push(Claimed::Take {
                index: j,
                serial,
                tickets: tickets.iter().map(|(_, t)| t.clone()).collect(),
                outcome: None,
            });
            claim.unlock();
            // 2. Without the lock: wait for the reads and check them.
            let started = std::time::Instant::now();
            let outcome = self.finish_read(j, &tickets);
            self.point("next_ready", "waited");
            if let Claimed::Take { outcome: o, .. } = claim.entry_mut(0) {
                *o = Some(outcome.clone());
            }
            // 3. Record: out with the caller, or skipped with its error.
            claim.end()?;
            // The visit first: if what follows fails or panics, its drop discards the
            // sub-group (the error recorded) instead of leaving it out with nobody.
            let visit = outcome.and_then(|()| self.hand_out(j, serial));
            self.lock()?.counters.read_wait_ns += started.elapsed().as_nanos() as u64;
            self.pump("next_ready")?;
            return visit.map(Some);
        }
    }

    /// Waits for a sub-group's reads, then checks their checksums.
    fn finish_read(&self, j: u32, tickets: &[(usize, Ticket)]) -> Result<()> {
        let mut crcs = Vec::with_capacity(tickets.len());
        let mut first_err = None;
        for (k, t) in tickets {
            match t.wait() {
                Ok(crc) => crcs.push((*k, crc)),
                Err(e) => {
                    first_err.get_or_insert(e.context(format!(
                        "sub-group {j}, tensor {}: read failed; its file is unchanged and the sub-group is skipped this step",
                        self.tensor_name(j, *k)
                    )));
                }
            }
        }
        // The failure recorded at submission comes first.
        let (region, failed, checks) = {
            let mut st = self.lock()?;
            let g = st.group(j)?;
            let Phase::Reading { region, io, .. } = &g.phase else {
                return Err(Error::bad_state(format!("sub-group {j} is {}", g.phase.name())));
            };
            let checks: Vec<(usize, u64, u64, Sum, u64)> = if self.config.verify_checksums {
                crcs.iter()
                    .map(|&(k, _)| {
                        let t = &g.tensors[k];
                        (k, t.key, t.offset, t.sum.clone(), t.bytes())
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (*region, io.failed.clone(), checks)
        };
        if let Some(e) = failed.or(first_err) {
            return Err(e);
        }
        for ((k, key, offset, sum, bytes), (_, crc)) in checks.into_iter().zip(&crcs) {
            // SAFETY: the reads into this region have finished; the sub-group is taken by
            // this call, so nothing else touches the region.
            let data = unsafe { crate::sys::alloc::borrow(self.ring.at(region + offset), bytes as usize) };
            self.check_sum(j, k, key, &sum, *crc, data)?;
        }
        Ok(())
    }

    /// Compares the bytes read of tensor `k` of sub-group `j` with its recorded checksum.
    fn check_sum(&self, j: u32, k: usize, key: u64, sum: &Sum, crc: Option<u32>, data: &[u8]) -> Result<()> {
        let what = format!("sub-group {j}, tensor {}", self.tensor_name(j, k));
        match sum {
            Sum::Zeros => Ok(()),
            Sum::Whole(want) => {
                let got = crc.or_else(|| Some(crc32c::crc32c(data)));
                // SAFETY: `data` is a live slice of `data.len()` bytes.
                unsafe {
                    crate::checksum::verify(
                        &what,
                        |at| self.describe_place(key, at),
                        Some(want),
                        got,
                        crate::sys::RawBuf(data.as_ptr() as *mut u8),
                        data.len(),
                    )
                }
            }
            Sum::Fragments(frags) => {
                for (&off, &(n, want)) in frags {
                    let Some(want) = want else { continue };
                    let (s, e) = ((off * ELEM) as usize, ((off + n) * ELEM) as usize);
                    let got = data.get(s..e).map(crc32c::crc32c);
                    if got != Some(want) {
                        return Err(Error::new(
                            Status::CorruptData,
                            format!(
                                "{what}: checksum mismatch in {} (the gradient fragment of {n} elements at element offset {off}; crc32c expected {want:#010x})",
                                self.describe_place(key, off * ELEM)
                            ),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Where byte `at` of a store key lies, for messages: "FILE at offset N".
    pub(crate) fn describe_place(&self, key: u64, at: u64) -> String {
        let mut pos = 0u64;
        for ext in self.store.locations(key) {
            if at < pos + ext.len {
                return format!(
                    "{} at offset {}",
                    ext.path.display(),
                    ext.file_offset + (at - pos)
                );
            }
            pos += ext.len;
        }
        format!("store key {key:#x} at byte {at}")
    }

    /// `"name"` of tensor `k` of sub-group `j`, for messages.
    pub(crate) fn tensor_name(&self, j: u32, k: usize) -> String {
        match self.lock() {
            Ok(mut st) => match st.group(j).ok().and_then(|g| g.tensors.get(k)) {
                Some(t) => format!("\"{}\"", t.spec.name),
                None => format!("{k}"),
            },
            Err(_) => format!("{k}"),
        }
    }

    /// The visit of sub-group `j`, out with the caller since `next_ready` took it.
    fn hand_out(&self, j: u32, _serial: u64) -> Result<Visit<'_>> {
        let mut st = self.lock()?;
        let g = st.group(j)?;
        let region = match &g.phase {
            Phase::Out { region, users: 0 } => *region,
            other => return Err(Error::bad_state(format!("sub-group {j} is {}", other.name()))),
        };
        Ok(Visit {
            sw: self,
            index: j,
            bufs: g
                .tensors
                .iter()
                .map(|t| (self.ring.at(region + t.offset), t.spec.numel as usize))
                .collect(),
            names: g.tensors.iter().map(|t| t.spec.name.clone()).collect(),
            kinds: g.tensors.iter().map(|t| t.spec.kind).collect(),
            handed: false,
        })
    }

    /// When the next sub-group has no region yet: settles finished writes, waits for the
    /// oldest write when the ring is full of them, and refuses (NoBuffer) when it is held
    /// by sub-groups the caller keeps.
    fn make_room(&self, call: &'static str) -> Result<()> {
        self.settle(false, call)?;
        self.pump(call)?;
        let (need, oldest, holders) = {
            let mut st = self.lock()?;
            let State {
                groups, step, arena, ..
            } = &mut *st;
            let step = step
                .as_ref()
                .ok_or_else(|| Error::bad_state("no step under way"))?;
            let Some(&j) = step.order.get(step.next) else {
                return Ok(());
            };
            let g = groups.get(&j).ok_or_else(|| unknown(j))?;
            match &g.phase {
                Phase::Planned { .. } => {}
                // Read or being read: next_ready takes it (or another thread did).
                _ => {
                    drop(st);
                    std::thread::yield_now();
                    return Ok(());
                }
            }
            let oldest = groups
                .iter()
                .filter_map(|(&i, g)| match &g.phase {
                    Phase::Writing { io, .. } if io.recorded => Some((io.serial, i, io.queued.clone())),
                    _ => None,
                })
                .min_by_key(|x| x.0);
            let holders: Vec<String> = groups
                .iter()
                .filter_map(|(&i, g)| match &g.phase {
                    Phase::Out { .. } => Some(format!("{i} (out with the caller)")),
                    Phase::Unsaved { .. } | Phase::Planned { resident: Some(_) } => {
                        Some(format!("{i} (unsaved data)"))
                    }
                    Phase::Reading { taken: true, .. } => Some(format!("{i} (being handed out)")),
                    _ => None,
                })
                .collect();
            let claiming = groups.values().any(
                |g| matches!(&g.phase, Phase::Writing { io, .. } | Phase::Reading { io, .. } if !io.recorded),
            );
            if claiming {
                // Another thread is between claim and record: let it finish.
                drop(st);
                std::thread::yield_now();
                return Ok(());
            }
            ((j, g.region_bytes, arena.size(), arena.in_use()), oldest, holders)
        };
        match oldest {
            Some((_, _, tickets)) => {
                let started = std::time::Instant::now();
                for (_, t) in &tickets {
                    let _ = t.wait();
                }
                self.lock()?.counters.write_wait_ns += started.elapsed().as_nanos() as u64;
                self.settle(false, call)
            }
            None => {
                let (j, bytes, size, used) = need;
                Err(Error::new(
                    Status::NoBuffer,
                    format!(
                        "sub-group {j} needs {bytes} bytes of ring and none is free ({used} of {size} bytes held by sub-groups {}): hand sub-groups back, or raise ring_bytes",
                        holders.join(", ")
                    ),
                ))
            }
        }
    }

    /// Queues the reads the ring and `read_ahead` allow, in the step's order (for
    /// `call`, which names the fault-injection points `<call>:read-claim`, ...).
    pub(crate) fn pump(&self, call: &'static str) -> Result<()> {
        loop {
            // 1. Claim, under the lock: a region and the sub-group, Planned -> Reading.
            let mut claim = self.claim()?;
            let (st, entries) = claim.parts();
            let Some(step) = st.step.as_ref() else {
                return Ok(());
            };
            let Some(&j) = step.order.get(step.read) else {
                return Ok(());
            };
            let ahead = self.config.read_ahead as usize;
            if ahead > 0 && step.read - step.next >= ahead {
                return Ok(());
            }
            let g = st.groups.get(&j).ok_or_else(|| unknown(j))?;
            let Phase::Planned { resident } = g.phase else {
                return Err(Error::bad_state(format!("sub-group {j} is {}", g.phase.name())));
            };
            let region_bytes = g.region_bytes;
            if resident.is_none() && !st.arena.fits(region_bytes) {
                return Ok(());
            }
            st.point(call, "read-claim");
            let (serial, jobs, refused) = st.change(|st| {
                let State {
                    groups, arena, step, ..
                } = &mut *st;
                let step = step.as_mut().expect("checked above");
                let g = groups.get_mut(&j).expect("checked above");
                let (region, only_gradients) = match resident {
                    Some(r) => (r, true),
                    None => (arena.alloc(region_bytes).expect("checked above"), false),
                };
                let serial = step.serial;
                step.serial += 1;
                step.read += 1;
                let mut jobs = Vec::new();
                let mut refused = None;
                for (k, t) in g.tensors.iter().enumerate() {
                    if only_gradients && t.spec.kind != TensorKind::Gradient {
                        continue;
                    }
                    if !t.valid {
                        refused.get_or_insert_with(|| {
                            Error::new(
                                Status::CorruptData,
                                format!(
                                    "sub-group {j}, tensor \"{}\": its file holds no valid copy (a write to it failed): write it again",
                                    t.spec.name
                                ),
                            )
                        });
                        continue;
                    }
                    jobs.push(Job {
                        k,
                        key: t.key,
                        at: region + t.offset,
                        bytes: t.bytes(),
                        name: t.spec.name.clone(),
                    });
                }
                g.phase = Phase::Reading {
                    region,
                    io: Tickets::claimed(serial),
                    taken: false,
                };
                st.note_use();
                (serial, jobs, refused)
            });
            entries.push(Claimed::Io {
                call,
                index: j,
                write: false,
                serial,
                queued: Vec::new(),
                failed: refused,
                submitted: false,
            });
            claim.unlock();
            // 2. Submit, without the lock; each ticket noted in the claim.
            self.submit_all(&mut claim, call, "read", j, &jobs, false);
            // 3. Record, under the lock: the tickets go to the sub-group's phase.
            claim.end()?;
        }
    }

    /// Submits a claimed sub-group's jobs (none when the claim already failed), noting
    /// each ticket, and the first failure, in the claim's entry 0.
    fn submit_all(
        &self,
        claim: &mut super::OptClaim<'_>,
        call: &'static str,
        what: &str,
        j: u32,
        jobs: &[Job],
        write: bool,
    ) {
        let Claimed::Io { failed, .. } = claim.entry_mut(0) else {
            unreachable!("an I/O claim")
        };
        let skip = failed.is_some();
        for job in jobs {
            if skip {
                break;
            }
            self.point(call, &format!("{what}-submit"));
            let r = self.submit(j, job, write);
            let Claimed::Io { queued, failed, .. } = claim.entry_mut(0) else {
                unreachable!("an I/O claim")
            };
            match r {
                Ok(t) => queued.push((job.k, t)),
                Err(e) => {
                    *failed = Some(e);
                    break;
                }
            }
            self.point(call, &format!("{what}-submitted"));
        }
        if let Claimed::Io { submitted, .. } = claim.entry_mut(0) {
            *submitted = true;
        }
    }

    /// Checks a tensor's file and queues its read or write; errors name the sub-group,
    /// the tensor and the file.
    fn submit(&self, j: u32, job: &Job, write: bool) -> Result<Ticket> {
        let what = || {
            format!(
                "sub-group {j}, tensor \"{}\" ({})",
                job.name,
                if write { "write-behind" } else { "read" }
            )
        };
        if !write {
            self.store.check(job.key).map_err(|e| e.context(what()))?;
        }
        let checksum = self.config.verify_checksums.then_some(job.bytes);
        // SAFETY: the region is claimed by this sub-group's phase (Reading or Writing)
        // until the ticket is settled, so nothing else uses it, and the ring outlives the
        // store's engines (field order of OptimizerSwapper).
        unsafe {
            self.store
                .submit(job.key, write, self.ring.at(job.at), 0, job.bytes, checksum)
        }
        .map_err(|e| e.context(what()))
    }

    /// The address and element count of tensor `k` of sub-group `index`, which must be out
    /// with the caller (for the C API, which looks tensors up by number).
    pub fn out_tensor(&self, index: u32, k: usize) -> Result<(RawBuf, u64)> {
        let mut st = self.lock()?;
        let g = st.group(index)?;
        let Phase::Out { region, .. } = g.phase else {
            return Err(Error::bad_state(format!(
                "sub-group {index} is not out with the caller (it is {})",
                g.phase.name()
            )));
        };
        let t = g.tensor(index, k)?;
        Ok((self.ring.at(region + t.offset), t.spec.numel))
    }

    /// Hands sub-group `index` back by number (the C API's way).
    ///
    /// # Safety
    /// No slice of the sub-group's tensors from its [`Visit`] (or pointer from the C API)
    /// may be used afterwards: the write-behind reads the region, then the ring reuses it.
    pub unsafe fn hand_back_index(&self, index: u32) -> Result<()> {
        self.hand_back_inner(index)
    }

    /// Discards sub-group `index`'s visit by number: no write, its files keep their state.
    ///
    /// # Safety
    /// As [`OptimizerSwapper::hand_back_index`].
    pub unsafe fn discard_index(&self, index: u32) -> Result<()> {
        self.discard_inner(index, None)
    }

    /// Out -> Writing, the writes of its state tensors queued.
    pub(crate) fn hand_back_inner(&self, index: u32) -> Result<()> {
        self.usable()?;
        // 1. Claim, under the lock: Out -> Writing.
        let mut claim = self.claim()?;
        let (st, entries) = claim.parts();
        st.point("hand_back", "claim");
        let State { groups, step, .. } = &mut *st;
        let step = step.as_ref().ok_or_else(|| {
            Error::bad_state(format!("sub-group {index} handed back with no step under way"))
        })?;
        let serial = step.serial;
        let g = groups.get(&index).ok_or_else(|| unknown(index))?;
        let region = match g.phase {
            Phase::Out { users, .. } if users > 0 => {
                return Err(Error::new(
                    Status::Busy,
                    format!("sub-group {index} is being read by swap_out_params on another thread"),
                ))
            }
            Phase::Out { region, .. } => region,
            Phase::Done | Phase::Writing { .. } => {
                return Err(Error::bad_state(format!(
                    "sub-group {index} was already handed back in this step (it is {})",
                    g.phase.name()
                )))
            }
            ref other => {
                return Err(Error::bad_state(format!(
                    "sub-group {index} is not out with the caller (it is {})",
                    other.name()
                )))
            }
        };
        let jobs: Vec<Job> = g
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.spec.kind == TensorKind::State)
            .map(|(k, t)| Job {
                k,
                key: t.key,
                at: region + t.offset,
                bytes: t.bytes(),
                name: t.spec.name.clone(),
            })
            .collect();
        st.change(|st| {
            if let Some(s) = st.step.as_mut() {
                s.serial += 1;
            }
            let g = st.groups.get_mut(&index).expect("checked above");
            g.phase = Phase::Writing {
                region,
                io: Tickets::claimed(serial),
            };
        });
        entries.push(Claimed::Io {
            call: "hand_back",
            index,
            write: true,
            serial,
            queued: Vec::new(),
            failed: None,
            submitted: false,
        });
        claim.unlock();
        // 2. Submit, without the lock.
        self.submit_all(&mut claim, "hand_back", "write", index, &jobs, true);
        let failed = match claim.entry_mut(0) {
            Claimed::Io { failed, .. } => failed.clone(),
            _ => None,
        };
        // 3. Record, under the lock: the tickets go to the sub-group's phase.
        claim.end()?;
        self.settle(false, "hand_back")?;
        self.pump("hand_back")?;
        match failed {
            // Kept in memory (Unsaved) when settled; end_step reports it too.
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Out -> Done without a write (the region freed); `why` makes it a failure of the step.
    pub(crate) fn discard_inner(&self, index: u32, why: Option<&str>) -> Result<()> {
        let mut st = self.lock()?;
        st.point("discard", "claim");
        let g = st.group(index)?;
        let Phase::Out { region, users } = g.phase else {
            return Err(Error::bad_state(format!(
                "sub-group {index} is not out with the caller (it is {})",
                g.phase.name()
            )));
        };
        if users > 0 {
            return Err(Error::new(
                Status::Busy,
                format!("sub-group {index} is being read by swap_out_params on another thread"),
            ));
        }
        st.change(|st| {
            let State {
                groups, arena, step, ..
            } = &mut *st;
            let g = groups.get_mut(&index).expect("checked above");
            if g.unsaved() {
                // Its only good copy is this region: keep it.
                g.phase = Phase::Unsaved { region };
            } else {
                arena.free(region);
                g.phase = Phase::Done;
            }
            if let (Some(why), Some(step)) = (why, step.as_mut()) {
                step.errors.push(Error::bad_state(format!(
                    "sub-group {index}: {why}; its update is discarded and its files keep the state of the previous step"
                )));
            }
        });
        Ok(())
    }

    /// Settles the writes that have finished (all of them, waiting, with `block`):
    /// Writing -> Done with the region freed and the new checksums, or, on failure,
    /// -> Unsaved with the data kept in the region and the files marked invalid.
    pub(crate) fn settle(&self, block: bool, call: &'static str) -> Result<()> {
        let snapshot: Vec<(u32, u64, TensorTickets)> = {
            let st = self.lock()?;
            st.point(call, "writes-snapshot");
            st.groups
                .iter()
                .filter_map(|(&i, g)| match &g.phase {
                    Phase::Writing { io, .. } if io.recorded && (block || io.finished()) => {
                        Some((i, io.serial, io.queued.clone()))
                    }
                    _ => None,
                })
                .collect()
        };
        if snapshot.is_empty() {
            return Ok(());
        }
        // Without the lock (the tickets have finished, or `block` waits for them).
        let results: Vec<Vec<WriteOutcome>> = snapshot
            .iter()
            .map(|(_, _, ts)| {
                ts.iter()
                    .map(|(k, t)| (*k, t.wait(), t.checksum_parts()))
                    .collect()
            })
            .collect();
        self.point(call, "writes-waited");
        let mut st = self.lock()?;
        st.change(|st| st.record_writes(snapshot, results));
        Ok(())
    }
}

impl State {
    /// Records the outcome of the writes of `snapshot`: Writing -> Done with the region
    /// freed and the new checksums, or, on failure, -> Unsaved with the data kept in the
    /// region and the files marked invalid. Part of a transition.
    fn record_writes(&mut self, snapshot: Vec<(u32, u64, TensorTickets)>, results: Vec<Vec<WriteOutcome>>) {
        let State {
            groups,
            arena,
            step,
            grad_errors,
            ..
        } = self;
        let mut errors = Vec::new();
        for ((index, serial, _), outcome) in snapshot.into_iter().zip(results) {
            let Some(g) = groups.get_mut(&index) else { continue };
            let Phase::Writing { region, io } = &mut g.phase else {
                continue;
            };
            if io.serial != serial {
                continue;
            }
            let region = *region;
            let mut failure = io.failed.take();
            let wrote: Vec<usize> = io.queued.iter().map(|(k, _)| *k).collect();
            for (k, r, parts) in outcome {
                let t = &mut g.tensors[k];
                match r {
                    Ok(crc) => {
                        t.valid = true;
                        t.sum = match crc {
                            Some(c) => Sum::Whole(crate::checksum::Checksum::new(c, parts)),
                            None => Sum::Zeros,
                        };
                    }
                    Err(e) => {
                        t.valid = false;
                        t.sum = Sum::Zeros;
                        failure.get_or_insert(e.context(format!(
                            "sub-group {index}, tensor \"{}\" (write-behind)",
                            t.spec.name
                        )));
                    }
                }
            }
            if failure.is_some() {
                // Every state tensor not written in full is invalid on disk.
                for (k, t) in g.tensors.iter_mut().enumerate() {
                    if t.spec.kind == TensorKind::State && !wrote.contains(&k) {
                        t.valid = false;
                    }
                }
            }
            match failure {
                None => {
                    arena.free(region);
                    g.phase = Phase::Done;
                }
                Some(e) => {
                    g.phase = Phase::Unsaved { region };
                    errors.push(e.context(
                        "the new state is kept in memory (the ring) and written again when the sub-group is next handed back",
                    ));
                }
            }
        }
        match step.as_mut() {
            Some(s) => s.errors.extend(errors),
            None => grad_errors.extend(errors),
        }
    }
}

impl OptimizerSwapper {
    /// Ends the step: waits for every write and every read still in flight; every
    /// sub-group of the step goes back to Idle (or Unsaved, its new data in memory, when
    /// its write-behind failed). Refused (`BadState`, the step continues) while sub-groups
    /// are out with the caller. Returns every failure of the step: reads skipped, writes
    /// failed, visits discarded, sub-groups of the order never taken, and, with
    /// `flush_at_end_step`, a flush that failed (the step ends all the same; the previous
    /// generation stays the durable one; see [`super::durability`]).
    pub fn end_step(&self) -> Result<()> {
        self.usable()?;
        {
            let mut st = self.lock()?;
            st.point("end_step", "check");
            let State { groups, step, .. } = &mut *st;
            let step = step
                .as_ref()
                .ok_or_else(|| Error::bad_state("no step under way: call begin_step first"))?;
            let out: Vec<String> = step
                .order
                .iter()
                .filter(|i| {
                    groups.get(i).is_some_and(|g| {
                        matches!(g.phase, Phase::Out { .. } | Phase::Reading { taken: true, .. })
                    })
                })
                .map(|i| i.to_string())
                .collect();
            if !out.is_empty() {
                return Err(Error::bad_state(format!(
                    "end_step with sub-groups {} still out (or being handed out): hand them back first; the step goes on",
                    out.join(", ")
                )));
            }
            if groups.values().any(
                |g| matches!(&g.phase, Phase::Writing { io, .. } | Phase::Reading { io, .. } if !io.recorded),
            ) {
                return Err(Error::new(
                    Status::Busy,
                    "another thread is submitting I/O of this step",
                ));
            }
        }
        let started = std::time::Instant::now();
        self.settle(true, "end_step")?;
        self.lock()?.counters.write_wait_ns += started.elapsed().as_nanos() as u64;
        // Reads queued ahead and never taken: wait, then give their regions back.
        let reads: Vec<Ticket> = {
            let st = self.lock()?;
            st.groups
                .values()
                .filter_map(|g| match &g.phase {
                    Phase::Reading { io, .. } => {
                        Some(io.queued.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>())
                    }
                    _ => None,
                })
                .flatten()
                .collect()
        };
        for t in &reads {
            let _ = t.wait();
        }
        self.point("end_step", "waited");
        // The flush lock before the bookkeeping lock, as `flush` takes them.
        let flush = self.config.flush_at_end_step.then(|| self.store.begin_flush());
        let mut st = self.lock()?;
        st.point("end_step", "record");
        if st.step.is_none() {
            return Err(Error::bad_state("the step was ended by another thread"));
        }
        let mut errors = st.change(|st| st.finish_step());
        // Listed under the same hold of the lock: nothing of a next step can be recorded.
        let prepared = flush.map(|lock| {
            let (records, keep) = st.flush_records();
            lock.prepare(records, &keep)
        });
        drop(st);
        if let Some(prepared) = prepared {
            self.point("end_step", "flush");
            if let Err(e) = prepared.and_then(|p| p.commit()) {
                errors.push(e.context("end_step's flush (flush_at_end_step)"));
            }
        }
        crate::status::combine(errors, "operations of the step")
    }
}

impl State {
    /// Ends the step: every sub-group of it back to Idle (or Unsaved); the step's
    /// failures. Part of a transition.
    fn finish_step(&mut self) -> Vec<Error> {
        let State {
            groups,
            arena,
            step,
            grad_errors,
            counters,
            ..
        } = self;
        let Some(mut step) = step.take() else {
            return Vec::new();
        };
        counters.steps += 1;
        let never: Vec<String> = step.order[step.next..].iter().map(|i| i.to_string()).collect();
        if !never.is_empty() {
            step.errors.push(Error::bad_state(format!(
                "sub-groups {} of the announced order were never taken by next_ready; their files are unchanged",
                never.join(", ")
            )));
        }
        for &i in &step.order {
            let Some(g) = groups.get_mut(&i) else { continue };
            let unsaved = g.unsaved();
            g.phase = match std::mem::replace(&mut g.phase, Phase::Idle) {
                Phase::Reading { region, .. }
                | Phase::Planned {
                    resident: Some(region),
                } if unsaved => Phase::Unsaved { region },
                Phase::Reading { region, .. } => {
                    arena.free(region);
                    Phase::Idle
                }
                p @ Phase::Unsaved { .. } => p,
                _ => Phase::Idle,
            };
        }
        step.errors.append(grad_errors);
        step.errors
    }
}
