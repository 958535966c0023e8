//! Handing buffers to params and to the caller: `get_buffer`, `release`, the reserved
//! buffers, and what a param holds now. None of these does I/O, so each is one short
//! step under the lock.

use crate::status::{Error, Result, Status};
use crate::sys::RawBuf;

use super::batch::{self, Unknown};
use super::param::{Io, ParamStatus, Slot};
use super::state::Fate;
use super::Swapper;

impl Swapper {
    /// Gives param `id` a free pool buffer for `numel` elements and makes it AVAILABLE; the
    /// caller fills the buffer, then swaps the param out. A new id is registered; a known
    /// one must be NOT_AVAILABLE with no I/O (its file is then considered stale until the
    /// next swap-out).
    pub fn get_buffer(&self, id: u64, numel: u64) -> Result<RawBuf> {
        if numel == 0 {
            return Err(Error::invalid(format!("param {id}: numel is 0")));
        }
        if numel > self.config.buffer_numel {
            return Err(Error::new(
                Status::NoBuffer,
                format!(
                    "param {id}: {numel} elements do not fit a buffer of {} elements",
                    self.config.buffer_numel
                ),
            ));
        }
        let mut claim = self.claim()?;
        self.step("get_buffer", "claim");
        let i = claim.get_buffer(id, numel, self.config.buffer_count)?;
        self.step("get_buffer", "claimed");
        claim.entry_mut(0).set_fate(Fate::Keep);
        claim.end()?;
        Ok(self.pool.buf(i))
    }

    /// Gives back the buffers of AVAILABLE params (pool buffers return to the pool; caller
    /// buffers are let go); the params become NOT_AVAILABLE. As in DeepSpeed, a param that
    /// holds no buffer (NOT_AVAILABLE, or unknown) is left as it is. Refused, for the whole
    /// batch, if a param has a read or write in flight (DeepSpeed would free memory the
    /// I/O still uses).
    pub fn release(&self, ids: &[u64]) -> Result<()> {
        let mut st = self.lock()?;
        batch::check(&st, ids, Unknown::Skip, |_, id, p| {
            batch::idle(id, p, "releasing it")
        })?;
        for &id in ids {
            self.step("release", "record");
            st.release(id);
        }
        Ok(())
    }

    /// The param's status.
    pub fn param_status(&self, id: u64) -> Result<ParamStatus> {
        let st = self.lock()?;
        let p = st.param(id).ok_or_else(|| batch::not_known(id))?;
        Ok(p.status())
    }

    /// The buffer of an AVAILABLE param and its element count.
    pub fn param_buffer(&self, id: u64) -> Result<(RawBuf, u64)> {
        let st = self.lock()?;
        let p = st.param(id).ok_or_else(|| batch::not_known(id))?;
        match (p.status(), p.slot()) {
            (ParamStatus::Available, Some(slot)) if !matches!(p.io(), Some(Io::Submitting)) => {
                Ok((self.slot_buf(slot), p.numel()))
            }
            (s, _) => Err(Error::bad_state(format!(
                "param {id} is {} and has no usable buffer",
                s.name()
            ))),
        }
    }

    /// Free pool buffers (answered even by a broken swapper: it only reads).
    pub fn available_buffers(&self) -> usize {
        self.peek().buffers().free()
    }

    /// Takes up to `capacity` free buffers out of the pool for the caller; each holds
    /// [`Swapper::aligned_buffer_numel`] elements. [`Swapper::release_reserved_buffers`]
    /// puts them back.
    pub fn reserve_available_buffers(&self, capacity: usize) -> Result<Vec<RawBuf>> {
        let ids = self.lock()?.reserve_buffers(capacity);
        Ok(ids.into_iter().map(|i| self.pool.buf(i)).collect())
    }

    /// Puts every reserved buffer back into the pool. Refused while a param still uses one
    /// (as a swap-in destination).
    pub fn release_reserved_buffers(&self) -> Result<()> {
        let mut st = self.lock()?;
        for (id, p) in st.params() {
            if let Some(Slot::Caller(b)) = p.slot() {
                if self
                    .pool
                    .buffer_at(b.addr())
                    .is_some_and(|i| st.buffers().is_reserved(i))
                {
                    return Err(Error::bad_state(format!(
                        "param {id} still uses a reserved buffer; release it first"
                    )));
                }
            }
        }
        st.unreserve_buffers();
        Ok(())
    }
}
