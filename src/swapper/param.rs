//! What a param can be: its states, the memory its bytes are in, and the one I/O it may
//! have under way. The param itself ([`super::state::Param`]) lives with the bookkeeping,
//! whose transitions are the only code that changes it.

use crate::store::StoreTicket as Ticket;
use crate::sys::RawBuf;

use super::pool::BufferId;

/// Where a param's data lives in memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamStatus {
    /// The data is in a buffer and usable.
    Available = 1,
    /// The data is only on disk.
    NotAvailable = 2,
    /// A read into a buffer is under way; `swapper_wait_reads` makes it AVAILABLE.
    Inflight = 3,
}

impl ParamStatus {
    /// The name used in messages and dumps.
    pub fn name(self) -> &'static str {
        match self {
            ParamStatus::Available => "AVAILABLE",
            ParamStatus::NotAvailable => "NOT_AVAILABLE",
            ParamStatus::Inflight => "INFLIGHT",
        }
    }
}

/// The memory a param's bytes are in.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Slot {
    /// A buffer of the swapper's pool.
    Pool(BufferId),
    /// A buffer the caller owns (a swap-in destination).
    Caller(RawBuf),
}

/// A write under way, and what its end does.
pub(crate) struct PendingWrite {
    pub ticket: Ticket,
    /// Give the buffer back once the write has succeeded (swap_out_and_release).
    pub release: bool,
    /// Bytes the file holds once the write is done.
    pub bytes: u64,
}

/// The one I/O a param may have under way.
pub(crate) enum Io {
    /// A call has claimed the param and is submitting (or, for the synchronous
    /// single-param calls, running) its I/O outside the state lock; every other call
    /// that would change the param is refused until the claim ends (recorded, undone, or
    /// undone by its drop when the call panicked).
    Submitting,
    /// A read into the param's slot.
    Read(Ticket),
    /// A write from the param's slot.
    Write(PendingWrite),
}
