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
use crate::status::{Error, Result, Status};
use crate::store::StoreTicket as Ticket;
use crate::sys::alloc::Memory;

use super::batch::{self, combine, Unknown};
use super::param::{Io, ParamStatus};
use super::Swapper;
use crate::checksum::Checksum;

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
    /// pinned when `pin_memory` is set. Replaces an earlier one (a partitioned swap-out
    /// running meanwhile finishes with the old one).
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
        let memory = Memory::allocate(bytes, self.config.pin_memory, self.config.allocator)
            .map_err(|e| e.context(format!("partitioned swap space of {capacity} elements")))?;
        self.lock().partition = Some(Arc::new(PartitionSpace { memory, capacity }));
        Ok(())
    }

    /// Elements the partitioned swap space holds (0 before it is reserved).
    pub fn partitioned_swap_capacity(&self) -> u64 {
        self.lock().partition.as_ref().map_or(0, |p| p.capacity)
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
        let space = {
            let mut st = self.lock();
            let Some(space) = st.partition.clone() else {
                return Err(Error::bad_state(
                    "no partitioned swap space: call swapper_reserve_partitioned_swap_space first",
                ));
            };
            batch::check(&st, ids, Unknown::Refuse, |k, id, p| {
                batch::idle(id, p, "a partitioned swap-out")?;
                if p.status != ParamStatus::NotAvailable {
                    return Err(Error::bad_state(format!(
                        "param {id} is {}: a partitioned swap-out needs NOT_AVAILABLE params",
                        p.status.name()
                    )));
                }
                if !p.has_file {
                    return Err(Error::bad_state(format!(
                        "param {id} has no swap file to overwrite (it was never swapped out)"
                    )));
                }
                if srcs[k].len() as u64 != p.numel {
                    return Err(Error::invalid(format!(
                        "source {k} has {} elements; param {id} has {}",
                        srcs[k].len(),
                        p.numel
                    )));
                }
                Ok(())
            })?;
            let needed: u64 = srcs.iter().map(|s| self.io_aligned_numel(s.len() as u64)).sum();
            if needed > space.capacity {
                return Err(Error::new(
                    Status::NoBuffer,
                    format!(
                        "the {} partitions need {needed} elements (aligned); the partitioned swap space holds {}",
                        ids.len(),
                        space.capacity
                    ),
                ));
            }
            if st.partition_busy {
                return Err(Error::new(
                    Status::Busy,
                    "another swap_out_partitioned is using the partitioned swap space",
                ));
            }
            st.partition_busy = true;
            for &id in ids {
                st.param(id).io = Some(Io::Submitting);
            }
            space
        };
        // 2. Convert, write and wait, without the lock.
        let outcomes = self.write_partitions(&space, ids, srcs);
        // 3. Record.
        let mut errors = Vec::new();
        let mut st = self.lock();
        st.partition_busy = false;
        for (&id, outcome) in ids.iter().zip(outcomes) {
            let p = st.param(id);
            p.io = None;
            match outcome {
                Outcome::Written(ticket, bytes) => {
                    p.on_disk = Some(bytes);
                    p.checksum = Checksum::of(&ticket);
                    st.counters.bytes_written += bytes;
                }
                Outcome::Failed(e) => {
                    p.on_disk = None;
                    p.checksum = None;
                    errors.push(e);
                }
            }
        }
        drop(st);
        combine(errors)
    }

    /// Packs, converts and writes each partition; waits for all of them.
    fn write_partitions(&self, space: &PartitionSpace, ids: &[u64], srcs: &[&[f32]]) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(ids.len());
        let mut offset = 0usize;
        for (&id, src) in ids.iter().zip(srcs) {
            let data_bytes = src.len() * self.elem;
            let aligned = self.io_aligned_numel(src.len() as u64) as usize * self.elem;
            // SAFETY: this range of the space is this call's alone: the space is claimed
            // (partition_busy) and no I/O uses it until the write below is submitted.
            let staging = unsafe { space.memory.slice_mut(offset, aligned) };
            convert::from_f32(src, self.config.dtype, &mut staging[..data_bytes]);
            staging[data_bytes..].fill(0);
            let checksum_len = self.config.verify_checksums.then_some(data_bytes as u64);
            let buf = space.memory.raw().offset_by(offset);
            // SAFETY: the space outlives the waits below (this call holds it).
            let submitted = unsafe { self.submit_file_io(id, true, buf, aligned as u64, checksum_len) };
            outcomes.push(match submitted {
                Ok(t) => Outcome::Written(t, aligned as u64),
                Err(e) => Outcome::Failed(e.context(format!(
                    "partitioned swap out of param {id}; its file is now invalid"
                ))),
            });
            offset += aligned;
        }
        for o in &mut outcomes {
            if let Outcome::Written(t, _) = o {
                if let Err(e) = t.wait() {
                    *o = Outcome::Failed(e.context("partitioned swap out; the param's file is now invalid"));
                }
            }
        }
        outcomes
    }
}

/// What became of one partition.
enum Outcome {
    Written(Ticket, u64),
    Failed(Error),
}
