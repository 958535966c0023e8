//! From "step done" to "params on NVMe" in one call: the new fp32 master params of a
//! visited sub-group, read in place in the ring, converted to the parameter swapper's
//! fp16/bf16 in its partitioned staging space and written over its params' files
//! ([`Swapper::swap_out_partitioned`]). No copy of the fp32 data is made.

use crate::status::{Error, Result, Status};
use crate::swapper::Swapper;

use super::ledger::Claimed;
use super::step::Visit;
use super::subgroup::{Phase, ELEM};
use super::OptimizerSwapper;

impl Visit<'_> {
    /// Writes the visited sub-group's tensor `k` (its fp32 master params, after the
    /// step) to the parameter swapper: the first `numels[0]` elements as param `ids[0]`,
    /// the next `numels[1]` as `ids[1]`, and so on, converted to the swapper's dtype. As
    /// [`Swapper::swap_out_partitioned`]: synchronous, the params must be NOT_AVAILABLE and
    /// swapped out before, the batch must fit the swapper's partitioned space.
    pub fn swap_out_params(&self, k: usize, swapper: &Swapper, ids: &[u64], numels: &[u64]) -> Result<()> {
        self.sw.swap_out_params_of(self.index(), k, swapper, ids, numels)
    }
}

impl OptimizerSwapper {
    /// [`Visit::swap_out_params`] by sub-group number (the C API's way): the sub-group
    /// must be out with the caller; the caller must not write its tensor `k` meanwhile.
    pub fn swap_out_params_of(
        &self,
        index: u32,
        k: usize,
        swapper: &Swapper,
        ids: &[u64],
        numels: &[u64],
    ) -> Result<()> {
        self.usable()?;
        if ids.len() != numels.len() {
            return Err(Error::invalid(format!(
                "{} ids but {} numels",
                ids.len(),
                numels.len()
            )));
        }
        // 1. Claim, under the lock: counted as a reader of the out sub-group, so that it
        // is neither handed back nor its region reused until the claim ends.
        let mut claim = self.claim()?;
        let (st, entries) = claim.parts();
        st.point("swap_out_params", "claim");
        let g = st.group(index)?;
        let t = g.tensor(index, k)?;
        let (offset, numel, name) = (t.offset, t.spec.numel, t.spec.name.clone());
        let Phase::Out { region, .. } = g.phase else {
            return Err(Error::bad_state(format!(
                "swap_out_params of sub-group {index}, which is not out with the caller (it is {})",
                g.phase.name()
            )));
        };
        st.change(|st| {
            if let Ok(g) = st.group(index) {
                if let Phase::Out { users, .. } = &mut g.phase {
                    *users += 1;
                }
            }
        });
        entries.push(Claimed::Reader { index });
        claim.unlock();
        let base = self.ring.at(region + offset);
        let total = numels
            .iter()
            .try_fold(0u64, |a, &n| a.checked_add(n))
            .filter(|&t| t <= numel)
            .ok_or_else(|| {
                Error::new(
                    Status::InvalidArgument,
                    format!(
                        "sub-group {index}, tensor \"{name}\" has {numel} elements; the params' numels add up to more"
                    ),
                )
            })?;
        let mut srcs = Vec::with_capacity(ids.len());
        let mut at = 0u64;
        for &n in numels {
            // SAFETY: the region is out with the caller and counted as read by this call
            // (`claim`), so it is neither handed back nor reused until we return; the
            // elements [at, at + n) lie inside the tensor (total <= numel, checked above);
            // the ring is 4096-aligned, so the floats are aligned.
            srcs.push(unsafe {
                crate::sys::alloc::borrow_f32(
                    base.offset_by((at * ELEM) as usize).0 as *const f32,
                    n as usize,
                )
            });
            at += n;
        }
        debug_assert_eq!(at, total);
        self.point("swap_out_params", "convert");
        let r = swapper.swap_out_partitioned(ids, &srcs).map_err(|e| {
            e.context(format!(
                "sub-group {index}, tensor \"{name}\" to the parameter swapper"
            ))
        });
        // 3. Record: the reader count goes down (also when a panic unwinds through here).
        claim.end()?;
        r
    }
}
