//! Swap-out: writing AVAILABLE params' buffers to their files.

use crate::status::{Error, Result};
use crate::store::StoreTicket as Ticket;

use super::batch::{self, Unknown};
use super::param::{PendingWrite, Slot};
use super::state::Fate;
use super::wait::Kind;
use super::Swapper;

/// A param claimed for a write: what the submission outside the lock needs.
struct Planned {
    id: u64,
    slot: Slot,
    numel: u64,
}

impl Swapper {
    /// Writes each param's buffer to its file. Asynchronous: returns once queued; the
    /// buffers must not change until `wait_writes`. The params stay AVAILABLE. A
    /// synchronous call also finishes every earlier asynchronous write (DeepSpeed's
    /// `synchronize_writes`).
    ///
    /// If some params cannot be queued (their file cannot be opened), the others are
    /// queued all the same; the error names each param that was not, which stays
    /// AVAILABLE with its buffer, ready to be swapped out again on its own.
    pub fn swap_out(&self, ids: &[u64], async_op: bool) -> Result<()> {
        self.write_batch(ids, async_op, false)
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
        self.write_batch(ids, async_op, true)
    }

    fn write_batch(&self, ids: &[u64], async_op: bool, release: bool) -> Result<()> {
        let call = if release {
            "swap_out_and_release"
        } else {
            "swap_out"
        };
        // 1. Claim, under the lock.
        let mut claim = self.claim()?;
        batch::check(claim.state(), ids, Unknown::Refuse, |_, id, p| {
            batch::swappable_out(id, p)
        })?;
        let planned: Vec<Planned> = ids
            .iter()
            .map(|&id| {
                self.step(call, "claim");
                let (slot, numel) = claim.claim_write(id, call);
                Planned { id, slot, numel }
            })
            .collect();
        claim.unlock();
        // 2. Submit, without the lock; each outcome is noted in the claim.
        let mut failed = Vec::new();
        for (k, c) in planned.iter().enumerate() {
            self.step(call, "submit");
            match self.submit_write(c) {
                Ok((ticket, bytes)) => claim.entry_mut(k).set_fate(Fate::Write(PendingWrite {
                    ticket,
                    release,
                    bytes,
                })),
                Err(e) => failed.push((c.id, e)),
            }
            self.step(call, "submitted");
        }
        // 3. Record, under the lock: the queued writes become pending, the others are
        // as they were.
        claim.end()?;
        let errors = batch::not_queued(ids.len(), failed, "AVAILABLE with their buffers and data");
        self.end_batch(Kind::Write, async_op, errors.into_iter().collect())
    }

    /// Queues the write of one claimed param: a pool buffer is written whole up to the
    /// aligned length (its padding zeroed first), a caller buffer for the param's bytes.
    fn submit_write(&self, c: &Planned) -> Result<(Ticket, u64)> {
        let data_bytes = c.numel as usize * self.elem;
        let len = match c.slot {
            Slot::Pool(i) => {
                let aligned = self.io_aligned_numel(c.numel) as usize * self.elem;
                // SAFETY: the buffer belongs to this param, which this call has claimed
                // (Io::Submitting): no I/O and no other call uses it.
                unsafe { self.pool.zero(i, data_bytes, aligned) };
                aligned
            }
            Slot::Caller(_) => data_bytes,
        } as u64;
        let checksum_len = self.config.verify_checksums.then_some(data_bytes as u64);
        // SAFETY: pool buffers live as long as the swapper, whose engine is drained
        // before the pool is freed; caller buffers are kept valid by the caller until
        // the param is released (swap_in's contract).
        let ticket = unsafe { self.submit_file_io(c.id, true, self.slot_buf(c.slot), len, checksum_len) }
            .map_err(|e| e.context(format!("swap out of param {}", c.id)))?;
        Ok((ticket, len))
    }
}
