//! Completion: waiting for reads and writes, and what a finished one does to its param.
//!
//! A wait takes a snapshot of the tickets it will wait for under the lock, waits for
//! them and verifies checksums without it, then takes the lock again to move each param
//! to its new state. A ticket that another thread's wait finished in between is skipped.

use std::time::Instant;

use crate::status::{Error, Result};
use crate::store::StoreTicket as Ticket;
use crate::sys::RawBuf;

use super::batch::{self, combine};
use super::param::{Io, ParamStatus, Slot};
use super::state::State;
use super::swap_in::read_error;
use super::Swapper;
use crate::checksum::{self, Checksum};

/// Reads or writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
}

/// One operation a wait waits for, with what verifying a read needs.
struct Waited {
    id: u64,
    ticket: Ticket,
    /// For a read: the checksum recorded at the write, the buffer and the param's bytes.
    verify: Option<(Option<Checksum>, RawBuf, usize)>,
}

impl Swapper {
    /// Waits for every read submitted before the call; the params become AVAILABLE. A
    /// failed read returns its buffer to the pool and leaves its param NOT_AVAILABLE; the
    /// error names every failed param. With nothing pending it returns at once.
    pub fn wait_reads(&self) -> Result<()> {
        self.wait(Kind::Read, None)
    }

    /// Waits for every write submitted before the call; params swapped out with release
    /// give back their buffers. A failed write leaves its param AVAILABLE with its buffer
    /// and data, ready for a retry; the error names every failed param.
    pub fn wait_writes(&self) -> Result<()> {
        self.wait(Kind::Write, None)
    }

    /// Waits for the reads and writes of these params only (others stay in flight), so a
    /// runtime prefetching several layers ahead waits for the layer it needs while the next
    /// ones keep the device busy. Unknown ids are `NotFound`; a param with nothing in
    /// flight is a no-op.
    pub fn wait_params(&self, ids: &[u64]) -> Result<()> {
        {
            let st = self.lock();
            if let Some(&id) = ids.iter().find(|id| !st.params.contains_key(id)) {
                return Err(batch::not_known(id));
            }
        }
        let reads = self.wait(Kind::Read, Some(ids));
        let writes = self.wait(Kind::Write, Some(ids));
        reads.and(writes)
    }

    /// Ends a batch: the errors of the params it could not queue, and for a synchronous
    /// batch, the outcome of waiting for every pending operation of its kind.
    pub(crate) fn end_batch(&self, kind: Kind, async_op: bool, mut errors: Vec<Error>) -> Result<()> {
        if !async_op {
            if let Err(e) = self.wait(kind, None) {
                errors.push(e);
            }
        }
        combine(errors)
    }

    fn wait(&self, kind: Kind, only: Option<&[u64]>) -> Result<()> {
        let start = Instant::now();
        let snapshot = self.snapshot(kind, only);
        if snapshot.is_empty() {
            return Ok(());
        }
        let results: Vec<Result<()>> = snapshot
            .iter()
            .map(|w| {
                w.ticket.wait()?;
                match &w.verify {
                    None => Ok(()),
                    // SAFETY: the read has completed; the buffer stays the param's until
                    // the param is finished below (an INFLIGHT param cannot be released).
                    Some((want, buf, len)) => unsafe {
                        checksum::verify(
                            &format!("param {}", w.id),
                            |o| format!("{} at offset {o}", self.param_path(w.id).display()),
                            want.as_ref(),
                            w.ticket.checksum(),
                            *buf,
                            *len,
                        )
                    },
                }
            })
            .collect();
        let mut st = self.lock();
        let mut errors = Vec::new();
        for (w, result) in snapshot.into_iter().zip(results) {
            let r = match kind {
                Kind::Read => finish_read(&mut st, w.id, &w.ticket, self.elem, result),
                Kind::Write => finish_write(&mut st, w.id, &w.ticket, result),
            };
            if let Err(e) = r {
                errors.push(e);
            }
        }
        let ns = start.elapsed().as_nanos() as u64;
        match kind {
            Kind::Read => st.counters.read_wait_ns += ns,
            Kind::Write => st.counters.write_wait_ns += ns,
        }
        drop(st);
        combine(errors)
    }

    /// The operations of `kind` pending now (of the params in `only`, if given).
    fn snapshot(&self, kind: Kind, only: Option<&[u64]>) -> Vec<Waited> {
        let st = self.lock();
        let pending = match kind {
            Kind::Read => &st.pending_reads,
            Kind::Write => &st.pending_writes,
        };
        let pick = |id: &u64| -> Option<Waited> {
            let p = st.params.get(id)?;
            let ticket = match kind {
                Kind::Read => p.read_ticket()?,
                Kind::Write => p.write_ticket()?,
            }
            .clone();
            let verify = match (kind, p.slot) {
                (Kind::Read, Some(slot)) => Some((
                    p.checksum.clone(),
                    self.slot_buf(slot),
                    p.numel as usize * self.elem,
                )),
                _ => None,
            };
            Some(Waited {
                id: *id,
                ticket,
                verify,
            })
        };
        match only {
            Some(ids) => ids
                .iter()
                .filter(|id| pending.contains(id))
                .filter_map(pick)
                .collect(),
            None => pending.iter().filter_map(pick).collect(),
        }
    }
}

/// A finished read: AVAILABLE, or NOT_AVAILABLE with its pool buffer back on failure.
fn finish_read(st: &mut State, id: u64, ticket: &Ticket, elem: usize, result: Result<()>) -> Result<()> {
    let Some(p) = st.params.get_mut(&id) else {
        return Ok(());
    };
    if !p.read_ticket().is_some_and(|t| t.same(ticket)) {
        return Ok(()); // finished by a concurrent wait
    }
    p.io = None;
    st.pending_reads.remove(&id);
    let p = st.param(id);
    let bytes = p.numel * elem as u64;
    let moved = match p.slot {
        Some(Slot::Pool(_)) => p.on_disk.unwrap_or(bytes),
        _ => bytes,
    };
    match result.map_err(|e| read_error(id, e)) {
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
            Err(e.context("the param stays NOT_AVAILABLE and its buffer went back to the pool"))
        }
    }
}

/// A finished write: the file now holds the param (and the buffer goes back for a
/// release), or, on failure, the param stays AVAILABLE with its data and its file is
/// no longer a valid copy.
fn finish_write(st: &mut State, id: u64, ticket: &Ticket, result: Result<()>) -> Result<()> {
    let Some(p) = st.params.get_mut(&id) else {
        return Ok(());
    };
    if !p.write_ticket().is_some_and(|t| t.same(ticket)) {
        return Ok(());
    }
    let Some(Io::Write(w)) = p.io.take() else {
        return Ok(());
    };
    st.pending_writes.remove(&id);
    let p = st.param(id);
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
            Err(e.context(format!(
                "swap out of param {id} failed; it stays AVAILABLE with its buffer and data"
            )))
        }
    }
}
