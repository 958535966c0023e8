//! The partitioned path (ZeRO-3's fp32 optimizer partitions written back as the
//! model's fp16/bf16 params): one packed staging space of a capacity in elements,
//! reserved once for the largest sub-group, through which any batch that fits is
//! converted and written.
//!
//! As in DeepSpeed, every partition takes its io-aligned length in the space, packed
//! one after the other in batch order; a batch fits when the sum of those lengths is at
//! most the capacity.

use std::sync::Arc;

use crate::convert;
use crate::memory_budget::{self, Demand};
use crate::status::{Error, Result, Status};
use crate::sys::alloc::Memory;

use super::batch::{self, combine, Unknown};
use super::param::ParamStatus;
use super::state::{Claimed, Fate, ParamClaim};
use super::Swapper;

/// The staging space.
pub(crate) struct PartitionSpace {
    memory: Memory,
    /// Elements it holds.
    capacity: u64,
}

impl PartitionSpace {
    /// Elements it holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl Swapper {
    /// Allocates the staging space for [`Swapper::swap_out_partitioned`]: the sum of the
    /// io-aligned lengths of `numels` (DeepSpeed's `reserve_partitioned_swap_space`),
    /// pinned when `pin_memory` is set (and it fits: see [`memory_budget::check`]).
    /// Replaces an earlier one (a partitioned swap-out running meanwhile finishes with
    /// the old one).
    pub fn reserve_partitioned_swap_space(&self, numels: &[u64]) -> Result<()> {
        if numels.is_empty() {
            return Err(Error::invalid("no partition sizes given"));
        }
        let too_large = || Error::new(Status::OutOfMemory, "the partitions are too large together");
        let capacity = numels
            .iter()
            .try_fold(0u64, |acc, &n| acc.checked_add(self.io_aligned_numel(n)))
            .ok_or_else(too_large)?;
        let bytes = capacity
            .checked_mul(self.elem as u64)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(too_large)?;
        let lock = self.config.pin_memory
            && self.config.allocator.is_none()
            && memory_budget::check(&[Demand::new(
                format!("the partitioned swap space ({capacity} elements)"),
                "the partition sizes given to reserve_partitioned_swap_space",
                bytes as u64,
            )])?
            .lock;
        let memory = Memory::allocate(bytes, lock, self.config.allocator)
            .map_err(|e| e.context(format!("partitioned swap space of {capacity} elements")))?;
        self.lock()?
            .set_partition(Arc::new(PartitionSpace { memory, capacity }));
        Ok(())
    }

    /// Elements the partitioned swap space holds (0 before it is reserved).
    pub fn partitioned_swap_capacity(&self) -> u64 {
        self.peek().partition().map_or(0, |p| p.capacity)
    }

    /// Converts each fp32 source to the swapper's dtype in the staging space and writes it
    /// over the destination param's swap file, synchronously, after waiting for pending
    /// writes. Each destination must be NOT_AVAILABLE with no I/O, have been swapped out
    /// before (its file exists), and have as many elements as its source; the batch must
    /// fit the space. The params stay NOT_AVAILABLE; a param whose write failed has no
    /// valid copy on disk until a retry of the call succeeds.
    pub fn swap_out_partitioned(&self, ids: &[u64], srcs: &[&[f32]]) -> Result<()> {
        if ids.len() != srcs.len() {
            return Err(Error::invalid(format!(
                "{} ids but {} sources",
                ids.len(),
                srcs.len()
            )));
        }
        self.wait_writes()?;
        // 1. Claim the params and the space.
        let mut claim = self.claim()?;
        let Some(capacity) = claim.state().partition().map(|s| s.capacity) else {
            return Err(Error::bad_state(
                "no partitioned swap space: call swapper_reserve_partitioned_swap_space first",
            ));
        };
        batch::check(claim.state(), ids, Unknown::Refuse, |k, id, p| {
            batch::idle(id, p, "a partitioned swap-out")?;
            if p.status() != ParamStatus::NotAvailable {
                return Err(Error::bad_state(format!(
                    "param {id} is {}: a partitioned swap-out needs NOT_AVAILABLE params",
                    p.status().name()
                )));
            }
            if !p.has_file() {
                return Err(Error::bad_state(format!(
                    "param {id} has no swap file to overwrite (it was never swapped out)"
                )));
            }
            if srcs[k].len() as u64 != p.numel() {
                return Err(Error::invalid(format!(
                    "source {k} has {} elements; param {id} has {}",
                    srcs[k].len(),
                    p.numel()
                )));
            }
            Ok(())
        })?;
        let needed: u64 = srcs.iter().map(|s| self.io_aligned_numel(s.len() as u64)).sum();
        if needed > capacity {
            return Err(Error::new(
                Status::NoBuffer,
                format!(
                    "the {} partitions need {needed} elements (aligned); the partitioned swap space holds {capacity}",
                    ids.len(),
                ),
            ));
        }
        let space = claim.claim_space()?;
        for &id in ids {
            self.step("swap_out_partitioned", "claim");
            claim.claim_idle(id, "swap_out_partitioned");
        }
        claim.unlock();
        // 2. Convert, write and wait, without the lock; each outcome is noted in the
        // claim (entry 0 is the space, entry k + 1 param k).
        let errors = self.write_partitions(&space, ids, srcs, &mut claim);
        // 3. Record.
        claim.end()?;
        combine(errors)
    }

    /// Packs, converts and writes each partition, noting each in the claim as it is
    /// submitted (so that a panic waits for it before the claim ends); waits for all of
    /// them. The errors of the partitions that failed.
    fn write_partitions(
        &self,
        space: &PartitionSpace,
        ids: &[u64],
        srcs: &[&[f32]],
        claim: &mut ParamClaim<'_>,
    ) -> Vec<Error> {
        const CALL: &str = "swap_out_partitioned";
        let mut errors = Vec::new();
        let mut offset = 0usize;
        for (k, (&id, src)) in ids.iter().zip(srcs).enumerate() {
            self.step(CALL, "convert");
            let data_bytes = src.len() * self.elem;
            let aligned = self.io_aligned_numel(src.len() as u64) as usize * self.elem;
            // SAFETY: this range of the space is this call's alone: the space is claimed
            // (partition_busy) and no I/O uses it until the write below is submitted.
            let staging = unsafe { space.memory.slice_mut(offset, aligned) };
            convert::from_f32(src, self.config.dtype, &mut staging[..data_bytes]);
            staging[data_bytes..].fill(0);
            let checksum_len = self.config.verify_checksums.then_some(data_bytes as u64);
            let buf = space.memory.raw().offset_by(offset);
            // SAFETY: the space outlives the write: the claim holds it, and its end (or
            // its drop) waits for the write first.
            let submitted = unsafe { self.submit_file_io(id, true, buf, aligned as u64, checksum_len) };
            claim.entry_mut(k + 1).set_fate(match submitted {
                Ok(ticket) => Fate::Overwrite {
                    ticket,
                    bytes: aligned as u64,
                    ok: None,
                },
                Err(e) => {
                    errors.push(e.context(format!(
                        "partitioned swap out of param {id}; its file is now invalid"
                    )));
                    Fate::Invalid
                }
            });
            self.step(CALL, "submitted");
            offset += aligned;
        }
        for k in 0..ids.len() {
            if let Claimed::Param {
                fate: Fate::Overwrite { ticket, ok, .. },
                ..
            } = claim.entry_mut(k + 1)
            {
                let r = ticket.wait();
                *ok = Some(r.is_ok());
                if let Err(e) = r {
                    errors.push(e.context("partitioned swap out; the param's file is now invalid"));
                }
                self.step(CALL, "waited");
            }
        }
        errors
    }
}
