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
use super::swap_in::read_error;
use super::Swapper;
use crate::checksum::{self, Checksum};

/// Reads or writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
}

impl Kind {
    /// The wait of this kind, naming its steps for fault injection.
    fn waiter(self) -> &'static str {
        match self {
            Kind::Read => "wait_reads",
            Kind::Write => "wait_writes",
        }
    }
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
            let st = self.lock()?;
            if let Some(&id) = ids.iter().find(|&&id| st.param(id).is_none()) {
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
        let snapshot = self.snapshot(kind, only)?;
        if snapshot.is_empty() {
            return Ok(());
        }
        let call = kind.waiter();
        let results: Vec<Result<()>> = snapshot
            .iter()
            .map(|w| {
                w.ticket.wait()?;
                self.step(call, "waited");
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
        let mut st = self.lock()?;
        let mut errors = Vec::new();
        for (w, result) in snapshot.into_iter().zip(results) {
            self.step(call, "record");
            let r = match kind {
                Kind::Read => st
                    .finish_read(
                        w.id,
                        &w.ticket,
                        self.elem,
                        result.map_err(|e| read_error(w.id, e)),
                    )
                    .map_err(|e| {
                        e.context("the param stays NOT_AVAILABLE and its buffer went back to the pool")
                    }),
                Kind::Write => st.finish_write(w.id, &w.ticket, result).map_err(|e| {
                    e.context(format!(
                        "swap out of param {} failed; it stays AVAILABLE with its buffer and data",
                        w.id
                    ))
                }),
            };
            if let Err(e) = r {
                errors.push(e);
            }
        }
        st.add_wait_ns(kind, start.elapsed().as_nanos() as u64);
        drop(st);
        combine(errors)
    }

    /// The operations of `kind` pending now (of the params in `only`, if given).
    fn snapshot(&self, kind: Kind, only: Option<&[u64]>) -> Result<Vec<Waited>> {
        let st = self.lock()?;
        self.step(kind.waiter(), "snapshot");
        let pending = st.pending(kind);
        let pick = |id: &u64| -> Option<Waited> {
            let p = st.param(*id)?;
            let ticket = match kind {
                Kind::Read => p.read_ticket()?,
                Kind::Write => p.write_ticket()?,
            }
            .clone();
            let verify = match (kind, p.slot()) {
                (Kind::Read, Some(slot)) => Some((
                    p.checksum().cloned(),
                    self.slot_buf(slot),
                    p.numel() as usize * self.elem,
                )),
                _ => None,
            };
            Some(Waited {
                id: *id,
                ticket,
                verify,
            })
        };
        Ok(match only {
            Some(ids) => ids
                .iter()
                .filter(|id| pending.contains(id))
                .filter_map(pick)
                .collect(),
            None => pending.iter().filter_map(pick).collect(),
        })
    }
}
