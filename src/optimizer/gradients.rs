//! Gradients during backward: fragments of a sub-group's gradient tensor, each copied
//! into a ring region and written at its offset (DeepSpeed's `swap_out_gradients`); the
//! caller's memory is free again when the call returns. They come back with their
//! sub-group at step time; `begin_step` waits for them first.
//!
//! A fragment *overwrites* the elements it covers; nothing accumulates in the swapper.
//! That is DeepSpeed's contract too: ZeRO-3 accumulates gradients in its own partitions
//! and, at the accumulation boundary, hands each param's fp32 gradient partition to
//! `swap_out_gradients` at the param's offset in its sub-group; DeepSpeed writes each to
//! a file of its own keyed by that offset (`<id>_gradient_<offset>_<length>.tensor.swp`,
//! rewritten in place at the next boundary) and `_swap_in_gradients` reads the files back
//! into `grad.narrow(offset, length)`. The params' ranges are disjoint, so DeepSpeed's
//! fragments never overlap part-way: the same fragment comes again, or a new one.
//!
//! Hence the rule here: a fragment may overlap earlier ones (written, or in flight) only
//! by covering each of them whole, and then replaces them; a fragment overlapping another
//! part-way is refused (`InvalidArgument`, naming both), because the part of the older
//! one it leaves could no longer be checked (its checksum covers bytes partly overwritten)
//! and the swapper does not read data back to recompute it. Every element written is thus
//! covered by exactly one fragment's checksum.

use std::collections::BTreeMap;

use crate::status::{Error, Result, Status};

use super::ledger::Claimed;
use super::ring::aligned;
use super::step::GradWrite;
use super::subgroup::{Phase, Sum, TensorKind, ELEM};
use super::OptimizerSwapper;

/// Replaces the fragments `offset..offset + numel` overlaps by it (its checksum when
/// there is one). Fragments it overlaps part-way are the sibling chunks of a fragment
/// that covers them (the refusal above sees to that): they are replaced as well.
pub(crate) fn cover(
    frags: &mut BTreeMap<u64, (u64, Option<u32>)>,
    offset: u64,
    numel: u64,
    crc: Option<u32>,
) {
    let end = offset + numel;
    frags.retain(|&o, &mut (n, _)| o + n <= offset || end <= o);
    frags.insert(offset, (numel, crc));
}

/// The first range of `ranges` that `offset..offset + numel` overlaps without covering it
/// whole.
fn partly_overlapped(ranges: &[(u64, u64)], offset: u64, numel: u64) -> Option<(u64, u64)> {
    let end = offset + numel;
    ranges
        .iter()
        .copied()
        .find(|&(o, n)| o < end && offset < o + n && !(offset <= o && o + n <= end))
}

impl OptimizerSwapper {
    /// Writes gradient fragments of tensor `tensor` (a `Gradient` tensor) of sub-group
    /// `index`: each `(element offset, data)` lands at that offset of the tensor. Returns
    /// once every fragment is copied into the ring and queued; [`Self::wait_gradients`]
    /// (or the next `begin_step`) reports the writes' outcome. Refused during a step. The
    /// whole call is checked before anything is written.
    pub fn swap_out_gradients(&self, index: u32, tensor: usize, fragments: &[(u64, &[f32])]) -> Result<()> {
        self.usable()?;
        let (key, name) = {
            let mut st = self.lock()?;
            if st.step.is_some() {
                return Err(Error::bad_state(format!(
                    "swap_out_gradients of sub-group {index} during a step: gradients are written between end_step and begin_step"
                )));
            }
            let g = st.group(index)?;
            if !matches!(g.phase, Phase::Idle | Phase::Unsaved { .. }) {
                return Err(Error::bad_state(format!(
                    "sub-group {index} is {}",
                    g.phase.name()
                )));
            }
            let t = g.tensor(index, tensor)?;
            if t.spec.kind != TensorKind::Gradient {
                return Err(Error::invalid(format!(
                    "sub-group {index}, tensor \"{}\" is not a gradient tensor",
                    t.spec.name
                )));
            }
            // The ranges written so far: settled, failed, in flight.
            let mut ranges: Vec<(u64, u64)> = match &t.sum {
                Sum::Fragments(f) => f.iter().map(|(&o, &(n, _))| (o, n)).collect(),
                _ => Vec::new(),
            };
            ranges.extend(t.bad.iter().map(|(&o, &n)| (o, n)));
            let (key, name, numel) = (t.key, t.spec.name.clone(), t.spec.numel);
            // Those in flight replace, in their order, what they overlap.
            for w in st.grads.iter().filter(|w| w.index == index && w.tensor == tensor) {
                let end = w.offset + w.numel;
                ranges.retain(|&(o, m)| o + m <= w.offset || end <= o);
                ranges.push((w.offset, w.numel));
            }
            for (f, &(off, data)) in fragments.iter().enumerate() {
                let n = data.len() as u64;
                if n == 0 || off.checked_add(n).is_none_or(|end| end > numel) {
                    return Err(Error::invalid(format!(
                        "sub-group {index}, tensor \"{name}\": fragment {f} ({n} elements at offset {off}) does not fit its {numel} elements"
                    )));
                }
                if let Some((o, m)) = partly_overlapped(&ranges, off, n) {
                    return Err(Error::invalid(format!(
                        "sub-group {index}, tensor \"{name}\": fragment {f} ({n} elements at offset {off}) overlaps the fragment of {m} elements at offset {o} part-way; a fragment may only overwrite earlier ones it covers whole (as DeepSpeed's, which never overlap part-way), so that every element stays covered by one checksum: nothing of this call was written"
                    )));
                }
                let end = off + n;
                ranges.retain(|&(o, m)| o + m <= off || end <= o);
                ranges.push((off, n));
            }
            (key, name)
        };
        // Chunks of at most half the ring, so that two can be in flight.
        let chunk = ((self.ring.bytes() / 2).max(4096) / ELEM - 1024).max(1);
        for &(off, data) in fragments {
            let mut done = 0u64;
            while done < data.len() as u64 {
                let n = chunk.min(data.len() as u64 - done);
                let start = (done) as usize;
                let part = &data[start..start + n as usize];
                self.write_fragment(index, tensor, key, &name, off + done, part)?;
                done += n;
            }
        }
        Ok(())
    }

    /// Copies one fragment into a ring region and queues its write.
    fn write_fragment(
        &self,
        index: u32,
        tensor: usize,
        key: u64,
        name: &str,
        off: u64,
        data: &[f32],
    ) -> Result<()> {
        let byte_off = off * ELEM;
        // The fragment sits at the same place in its 4 KiB unit as in the file, so the
        // engine writes its aligned middle direct, without a bounce buffer.
        let head = byte_off % 4096;
        let bytes = data.len() as u64 * ELEM;
        let need = aligned(head + bytes);
        let mut claim = loop {
            let oldest = {
                let mut claim = self.claim()?;
                let (st, entries) = claim.parts();
                st.point("swap_out_gradients", "claim");
                // A write in flight to an overlapping range must land first: two writes of
                // the same bytes in flight at once may land in either order.
                let end = off + data.len() as u64;
                let overlapping = st
                    .grads
                    .iter()
                    .find(|g| {
                        g.index == index && g.tensor == tensor && g.offset < end && off < g.offset + g.numel
                    })
                    .map(|g| g.ticket.clone());
                if overlapping.is_none() && st.arena.fits(need) {
                    st.change(|st| {
                        let region = st.arena.alloc(need).expect("checked above");
                        entries.push(Claimed::Fragment { region, write: None });
                    });
                    break claim;
                }
                overlapping.or_else(|| st.grads.first().map(|g| g.ticket.clone()))
            };
            match oldest {
                Some(t) => {
                    let _ = t.wait();
                    self.settle_gradients(false, "swap_out_gradients")?;
                }
                None => {
                    return Err(Error::new(
                        Status::NoBuffer,
                        format!(
                            "sub-group {index}, tensor \"{name}\": no room in the ring for a gradient fragment of {need} bytes (it holds data of failed writes): end a step that writes them again, or raise ring_bytes"
                        ),
                    ))
                }
            }
        };
        let Claimed::Fragment { region: start, .. } = *claim.entry_mut(0) else {
            unreachable!("a fragment's claim")
        };
        claim.unlock();
        let at = self.ring.at(start + head);
        // SAFETY: the region was just taken from the arena by this claim: nothing else
        // uses it; `data` holds `bytes` bytes and lies outside the ring.
        unsafe { crate::sys::copy(crate::sys::RawBuf(data.as_ptr() as *mut u8), at, bytes as usize) };
        self.point("swap_out_gradients", "copied");
        let checksum = self.config.verify_checksums.then_some(bytes);
        // SAFETY: the region stays taken until the ticket is settled (wait_gradients).
        let ticket = unsafe { self.store.submit(key, true, at, byte_off, bytes, checksum) }.map_err(|e| {
            e.context(format!(
                "sub-group {index}, tensor \"{name}\": gradient fragment of {} elements at element offset {off}",
                data.len()
            ))
        })?;
        if let Claimed::Fragment { write, .. } = claim.entry_mut(0) {
            *write = Some(GradWrite {
                index,
                tensor,
                offset: off,
                numel: data.len() as u64,
                region: start,
                ticket,
            });
        }
        self.point("swap_out_gradients", "submitted");
        // Record: the write joins those in flight (undone, the region is freed).
        claim.end()
    }

    /// Waits for every gradient fragment queued before the call and reports the failures
    /// (sub-group, tensor, file, offset), with those of earlier gradient writes not yet
    /// reported. A failed fragment makes its tensor unreadable until the same fragment is
    /// written again successfully.
    pub fn wait_gradients(&self) -> Result<()> {
        self.usable()?;
        self.settle_gradients(true, "wait_gradients")?;
        let errors = std::mem::take(&mut self.lock()?.grad_errors);
        crate::status::combine(errors, "gradient writes")
    }

    /// Settles finished gradient writes (all, waiting, with `block`), for `call`.
    pub(crate) fn settle_gradients(&self, block: bool, call: &'static str) -> Result<()> {
        // 1. Claim, under the lock: the writes to settle, out of the list in flight.
        let mut claim = self.claim()?;
        let (st, entries) = claim.parts();
        st.point(call, "grads-take");
        st.change(|st| {
            let (ready, rest): (Vec<GradWrite>, Vec<GradWrite>) = std::mem::take(&mut st.grads)
                .into_iter()
                .partition(|g| block || g.ticket.is_finished());
            st.grads = rest;
            st.grads_settling += 1;
            entries.push(Claimed::Settling {
                call,
                taken: ready,
                results: None,
            });
        });
        claim.unlock();
        // 2. Wait, without the lock.
        let results: Vec<Result<Option<u32>>> = match claim.entry_mut(0) {
            Claimed::Settling { taken, .. } => taken.iter().map(|g| g.ticket.wait()).collect(),
            _ => Vec::new(),
        };
        self.point(call, "grads-waited");
        if let Claimed::Settling { results: r, .. } = claim.entry_mut(0) {
            *r = Some(results);
        }
        // 3. Record, under the lock (undone: the writes go back to the list in flight).
        claim.end()
    }
}
