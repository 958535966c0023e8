//! Swap-in: reading NOT_AVAILABLE params back, into pool buffers or the caller's.

use crate::status::{Error, Result, Status};
use crate::sys::RawBuf;

use super::batch::{self, Unknown};
use super::param::Slot;
use super::state::{Fate, ParamClaim, ReadPlan};
use super::wait::Kind;
use super::Swapper;
use crate::checksum;

impl Swapper {
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
    /// A synchronous call also finishes every earlier asynchronous read (DeepSpeed's
    /// `synchronize_reads`): those params become AVAILABLE too. If some params cannot be
    /// queued (their file is missing, replaced or cannot be opened), the others are
    /// queued all the same; the error names each param that was not, which stays
    /// NOT_AVAILABLE (its pool buffer back in the pool).
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
        // 1. Claim, under the lock.
        let mut claim = self.claim()?;
        batch::check(claim.state(), ids, Unknown::Refuse, |k, id, p| {
            batch::swappable_in(id, p)?;
            match capacities.and_then(|c| c.get(k)) {
                Some(&cap) if cap < p.numel() => Err(Error::new(
                    Status::NoBuffer,
                    format!(
                        "param {id} has {} elements; destination buffer {k} holds {cap}",
                        p.numel()
                    ),
                )),
                _ => Ok(()),
            }
        })?;
        let free = claim.state().buffers().free();
        if dest.is_none() && free < ids.len() {
            return Err(Error::new(
                Status::NoBuffer,
                format!(
                    "swapping in {} needs {} free buffers; {free} are free",
                    describe(ids),
                    ids.len(),
                ),
            ));
        }
        let elem = self.elem as u64;
        let planned: Vec<(u64, (Slot, ReadPlan))> = ids
            .iter()
            .enumerate()
            .map(|(k, &id)| {
                self.step("swap_in", "claim");
                (id, claim.claim_read(id, dest.map(|d| d[k]), "swap_in"))
            })
            .collect();
        claim.unlock();
        // 2. Submit, without the lock; each outcome is noted in the claim.
        let mut failed = Vec::new();
        for (k, (id, (slot, c))) in planned.iter().enumerate() {
            self.step("swap_in", "submit");
            let len = match slot {
                Slot::Pool(_) => c.on_disk,
                Slot::Caller(_) => c.numel * elem,
            };
            let checksum_len = c.checksum.as_ref().map(|_| c.numel * elem);
            let r = self.check_place(*id, c.on_disk).and_then(|()| {
                // SAFETY: pool buffers outlive the engine's work; caller buffers are
                // covered by this function's contract.
                unsafe { self.submit_file_io(*id, false, self.slot_buf(*slot), len, checksum_len) }
            });
            match r {
                Ok(ticket) => claim.entry_mut(k).set_fate(Fate::Read(ticket)),
                Err(e) => failed.push((*id, read_error(*id, e))),
            }
            self.step("swap_in", "submitted");
        }
        // 3. Record, under the lock: the queued reads become pending, the others are
        // NOT_AVAILABLE again with their pool buffers back.
        claim.end()?;
        let errors = batch::not_queued(ids.len(), failed, "NOT_AVAILABLE, buffers back in the pool");
        self.end_batch(Kind::Read, async_op, errors.into_iter().collect())
    }

    /// Reads param `id` synchronously into `dest` (at least the param's elements), without
    /// using a pool buffer; the param stays NOT_AVAILABLE. As a synchronous call it then
    /// also finishes every earlier asynchronous read, as DeepSpeed's does.
    ///
    /// # Safety
    /// `dest` must be valid for writing `dest_numel` elements during the call.
    pub unsafe fn swap_into_buffer(&self, id: u64, dest: RawBuf, dest_numel: u64) -> Result<()> {
        if dest.0.is_null() {
            return Err(Error::new(Status::NullPointer, "dest is NULL"));
        }
        // 1. Claim: the param must not change state during the read.
        let mut claim = self.claim()?;
        let p = claim.state().param(id).ok_or_else(|| batch::not_known(id))?;
        batch::swappable_in(id, p)?;
        if dest_numel < p.numel() {
            return Err(Error::new(
                Status::NoBuffer,
                format!("param {id} has {} elements; dest holds {dest_numel}", p.numel()),
            ));
        }
        self.step("swap_into_buffer", "claim");
        let plan = claim.claim_idle(id, "swap_into_buffer");
        claim.unlock();
        // 2. Read and verify, without the lock.
        let read = self.read_into(id, dest, &plan, &mut claim);
        // 3. Record: the param is as it was.
        claim.end()?;
        let waited = self.wait_reads();
        read.and(waited)
    }

    /// The read of `swap_into_buffer`: submitted, noted in the claim (so that a panic
    /// waits for it before the claim ends), waited for and verified.
    fn read_into(&self, id: u64, dest: RawBuf, plan: &ReadPlan, claim: &mut ParamClaim<'_>) -> Result<()> {
        let bytes = plan.numel * self.elem as u64;
        self.step("swap_into_buffer", "submit");
        self.check_place(id, plan.on_disk)
            .map_err(|e| read_error(id, e))?;
        let checksum_len = plan.checksum.as_ref().map(|_| bytes);
        // SAFETY: the caller's contract; the ticket is waited for before the claim ends
        // (here, or by the claim's settle if this call panics).
        let ticket = unsafe { self.submit_file_io(id, false, dest, bytes, checksum_len) }
            .map_err(|e| read_error(id, e))?;
        claim.entry_mut(0).set_fate(Fate::ReadInto(ticket.clone()));
        self.step("swap_into_buffer", "submitted");
        ticket.wait().map_err(|e| read_error(id, e))?;
        // SAFETY: the read has completed; `dest` holds `bytes` bytes (the caller's contract).
        unsafe {
            checksum::verify(
                &format!("param {id}"),
                |o| format!("{} at offset {o}", self.param_path(id).display()),
                plan.checksum.as_ref(),
                ticket.checksum(),
                dest,
                bytes as usize,
            )
        }
    }
}

/// The context of every failed read.
pub(crate) fn read_error(id: u64, e: Error) -> Error {
    e.context(format!("swap in of param {id}"))
}

fn describe(ids: &[u64]) -> String {
    if ids.len() == 1 {
        format!("param {}", ids[0])
    } else {
        format!("{} params", ids.len())
    }
}
