//! Swap-in: reading NOT_AVAILABLE params back, into pool buffers or the caller's.

use crate::status::{Error, Result, Status};
use crate::store::StoreTicket as Ticket;
use crate::sys::RawBuf;

use super::batch::{self, Unknown};
use super::param::{Io, ParamStatus, Slot};
use super::wait::Kind;
use super::Swapper;
use crate::checksum::{self, Checksum};

/// A param claimed for a read: what the submission outside the lock needs.
struct Claim {
    id: u64,
    slot: Slot,
    /// Bytes of the last complete write (the file's valid length).
    on_disk: u64,
    /// Bytes to read.
    len: u64,
    checksum_len: Option<u64>,
}

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
        let claims: Vec<Claim> = {
            let mut st = self.lock();
            batch::check(&st, ids, Unknown::Refuse, |k, id, p| {
                batch::swappable_in(id, p)?;
                match capacities.and_then(|c| c.get(k)) {
                    Some(&cap) if cap < p.numel => Err(Error::new(
                        Status::NoBuffer,
                        format!(
                            "param {id} has {} elements; destination buffer {k} holds {cap}",
                            p.numel
                        ),
                    )),
                    _ => Ok(()),
                }
            })?;
            if dest.is_none() && st.buffers.free() < ids.len() {
                return Err(Error::new(
                    Status::NoBuffer,
                    format!(
                        "swapping in {} needs {} free buffers; {} are free",
                        describe(ids),
                        ids.len(),
                        st.buffers.free()
                    ),
                ));
            }
            let mut claims = Vec::with_capacity(ids.len());
            for (k, &id) in ids.iter().enumerate() {
                let slot = match dest {
                    Some(d) => Slot::Caller(d[k]),
                    None => Slot::Pool(st.buffers.take().expect("counted above")),
                };
                let elem = self.elem as u64;
                let p = st.param(id);
                let on_disk = p.on_disk.expect("checked: on disk");
                claims.push(Claim {
                    id,
                    slot,
                    on_disk,
                    len: match slot {
                        Slot::Pool(_) => on_disk,
                        Slot::Caller(_) => p.numel * elem,
                    },
                    checksum_len: p.checksum.as_ref().map(|_| p.numel * elem),
                });
                p.slot = Some(slot);
                p.status = ParamStatus::Inflight;
                p.io = Some(Io::Submitting);
            }
            claims
        };
        // 2. Submit, without the lock.
        let submitted: Vec<(u64, Result<Ticket>)> = claims
            .iter()
            .map(|c| {
                let r = self.check_file(c.id, c.on_disk).and_then(|()| {
                    // SAFETY: pool buffers outlive the engine's work; caller buffers are
                    // covered by this function's contract.
                    unsafe { self.submit_file_io(c.id, false, self.slot_buf(c.slot), c.len, c.checksum_len) }
                });
                (c.id, r.map_err(|e| read_error(c.id, e)))
            })
            .collect();
        // 3. Record, under the lock.
        let mut failed = Vec::new();
        {
            let mut st = self.lock();
            for (id, outcome) in submitted {
                match outcome {
                    Ok(ticket) => {
                        st.param(id).io = Some(Io::Read(ticket));
                        st.pending_reads.insert(id);
                    }
                    Err(e) => {
                        let p = st.param(id);
                        p.io = None;
                        p.status = ParamStatus::NotAvailable;
                        if let Some(Slot::Pool(i)) = p.slot.take() {
                            st.buffers.give(i);
                        }
                        failed.push((id, e));
                    }
                }
            }
        }
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
        let (on_disk, numel, want) = {
            let mut st = self.lock();
            let p = st.params.get(&id).ok_or_else(|| batch::not_known(id))?;
            let on_disk = batch::swappable_in(id, p)?;
            if dest_numel < p.numel {
                return Err(Error::new(
                    Status::NoBuffer,
                    format!("param {id} has {} elements; dest holds {dest_numel}", p.numel),
                ));
            }
            let claimed = (on_disk, p.numel, p.checksum.clone());
            st.param(id).io = Some(Io::Submitting);
            claimed
        };
        // 2. Read and verify, without the lock.
        let read = self.read_into(id, dest, on_disk, numel, want.as_ref());
        // 3. Record.
        self.lock().param(id).io = None;
        let waited = self.wait_reads();
        read.and(waited)
    }

    fn read_into(
        &self,
        id: u64,
        dest: RawBuf,
        on_disk: u64,
        numel: u64,
        want: Option<&Checksum>,
    ) -> Result<()> {
        let bytes = numel * self.elem as u64;
        self.check_file(id, on_disk).map_err(|e| read_error(id, e))?;
        let checksum_len = want.map(|_| bytes);
        // SAFETY: the caller's contract; the ticket is waited for before returning.
        let ticket = unsafe { self.submit_file_io(id, false, dest, bytes, checksum_len) }
            .map_err(|e| read_error(id, e))?;
        ticket.wait().map_err(|e| read_error(id, e))?;
        // SAFETY: the read has completed; `dest` holds `bytes` bytes (the caller's contract).
        unsafe {
            checksum::verify(
                &format!("param {id}"),
                |o| format!("{} at offset {o}", self.param_path(id).display()),
                want,
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
