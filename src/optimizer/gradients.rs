//! Gradients during backward: fragments of a sub-group's gradient tensor, each copied
//! into a ring region and written at its offset (DeepSpeed's `swap_out_gradients`); the
//! caller's memory is free again when the call returns. They come back with their
//! sub-group at step time; `begin_step` waits for them first.

use crate::status::{Error, Result, Status};

use super::ring::aligned;
use super::step::GradWrite;
use super::subgroup::{Phase, Sum, TensorKind, ELEM};
use super::{OptimizerSwapper, State};

/// A ring region taken for a fragment, given back if dropped before it is recorded (a
/// failed submission, or a panic in the copy).
struct Region<'a> {
    sw: &'a OptimizerSwapper,
    start: Option<u64>,
}

impl Drop for Region<'_> {
    fn drop(&mut self) {
        if let (Some(start), Ok(mut st)) = (self.start, self.sw.lock()) {
            st.arena.free(start);
        }
    }
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
            for (f, &(off, data)) in fragments.iter().enumerate() {
                let n = data.len() as u64;
                if n == 0 || off.checked_add(n).is_none_or(|end| end > t.spec.numel) {
                    return Err(Error::invalid(format!(
                        "sub-group {index}, tensor \"{}\": fragment {f} ({n} elements at offset {off}) does not fit its {} elements",
                        t.spec.name, t.spec.numel
                    )));
                }
            }
            (t.key, t.spec.name.clone())
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
        let start = loop {
            let oldest = {
                let mut st = self.lock()?;
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
                if overlapping.is_none() {
                    if let Some(r) = st.arena.alloc(need) {
                        break r;
                    }
                }
                overlapping.or_else(|| st.grads.first().map(|g| g.ticket.clone()))
            };
            match oldest {
                Some(t) => {
                    let _ = t.wait();
                    self.settle_gradients(false)?;
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
        let mut region = Region {
            sw: self,
            start: Some(start),
        };
        let at = self.ring.at(start + head);
        // SAFETY: the region was just taken from the arena: nothing else uses it; `data`
        // holds `bytes` bytes and lies outside the ring.
        unsafe { crate::sys::copy(crate::sys::RawBuf(data.as_ptr() as *mut u8), at, bytes as usize) };
        let checksum = self.config.verify_checksums.then_some(bytes);
        // SAFETY: the region stays taken until the ticket is settled (wait_gradients).
        let ticket = unsafe { self.store.submit(key, true, at, byte_off, bytes, checksum) }.map_err(|e| {
            e.context(format!(
                "sub-group {index}, tensor \"{name}\": gradient fragment of {} elements at element offset {off}",
                data.len()
            ))
        })?;
        let mut st = self.lock()?;
        region.start = None;
        st.note_use();
        st.grads.push(GradWrite {
            index,
            tensor,
            offset: off,
            numel: data.len() as u64,
            region: start,
            ticket,
        });
        Ok(())
    }

    /// Waits for every gradient fragment queued before the call and reports the failures
    /// (sub-group, tensor, file, offset), with those of earlier gradient writes not yet
    /// reported. A failed fragment makes its tensor unreadable until the same fragment is
    /// written again successfully.
    pub fn wait_gradients(&self) -> Result<()> {
        self.usable()?;
        self.settle_gradients(true)?;
        let errors = std::mem::take(&mut self.lock()?.grad_errors);
        crate::status::combine(errors, "gradient writes")
    }

    /// Settles finished gradient writes (all, waiting, with `block`).
    pub(crate) fn settle_gradients(&self, block: bool) -> Result<()> {
        let taken: Vec<GradWrite> = {
            let mut st = self.lock()?;
            let (ready, rest): (Vec<GradWrite>, Vec<GradWrite>) = std::mem::take(&mut st.grads)
                .into_iter()
                .partition(|g| block || g.ticket.is_finished());
            st.grads = rest;
            st.grads_settling += 1;
            ready
        };
        let results: Vec<Result<Option<u32>>> = taken.iter().map(|g| g.ticket.wait()).collect();
        let mut st = self.lock()?;
        st.grads_settling -= 1;
        let State {
            groups,
            arena,
            grad_errors,
            ..
        } = &mut *st;
        for (w, r) in taken.into_iter().zip(results) {
            arena.free(w.region);
            let Some(t) = groups.get_mut(&w.index).and_then(|g| g.tensors.get_mut(w.tensor)) else {
                continue;
            };
            let end = w.offset + w.numel;
            match r {
                Ok(crc) => {
                    // A fragment written in full heals an earlier failed one it covers.
                    t.bad.retain(|&o, &mut n| !(w.offset <= o && o + n <= end));
                    let mut frags = match std::mem::take(&mut t.sum) {
                        Sum::Fragments(f) => f,
                        _ => Default::default(),
                    };
                    // Fragments it overlaps can no longer be checked.
                    frags.retain(|&o, &mut (n, _)| o + n <= w.offset || end <= o);
                    if let Some(c) = crc {
                        frags.insert(w.offset, (w.numel, c));
                    }
                    t.sum = Sum::Fragments(frags);
                }
                Err(e) => {
                    t.bad.insert(w.offset, w.numel);
                    grad_errors.push(e.context(format!(
                        "sub-group {}, tensor \"{}\": gradient fragment of {} elements at element offset {} (write it again)",
                        w.index, t.spec.name, w.numel, w.offset
                    )));
                }
            }
            t.valid = t.bad.is_empty();
        }
        Ok(())
    }
}
