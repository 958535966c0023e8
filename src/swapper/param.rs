//! A param: its state, where its bytes are in memory and on disk, and the one I/O it may
//! have under way.

use crate::store::StoreTicket as Ticket;
use crate::sys::RawBuf;

use super::pool::BufferId;
use crate::checksum::Checksum;

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
    /// that would change the param is refused until it records the outcome.
    Submitting,
    /// A read into the param's slot.
    Read(Ticket),
    /// A write from the param's slot.
    Write(PendingWrite),
}

/// What the swapper knows of one param.
pub(crate) struct Param {
    pub numel: u64,
    pub status: ParamStatus,
    /// The buffer holding the param (AVAILABLE, INFLIGHT); None when NOT_AVAILABLE.
    pub slot: Option<Slot>,
    /// Bytes of the last complete write, if the file holds a valid copy of the param.
    pub on_disk: Option<u64>,
    /// Whether a write of the param was ever queued, so its swap file exists (a
    /// partitioned swap-out overwrites only such files, as in DeepSpeed).
    pub has_file: bool,
    /// The checksum of the bytes on disk (None with checksums off).
    pub checksum: Option<Checksum>,
    pub io: Option<Io>,
}

impl Param {
    /// A param just registered by `get_buffer`.
    pub fn new(numel: u64) -> Param {
        Param {
            numel,
            status: ParamStatus::NotAvailable,
            slot: None,
            on_disk: None,
            has_file: false,
            checksum: None,
            io: None,
        }
    }

    /// The ticket of the read under way, if any.
    pub fn read_ticket(&self) -> Option<&Ticket> {
        match &self.io {
            Some(Io::Read(t)) => Some(t),
            _ => None,
        }
    }

    /// The ticket of the write under way, if any.
    pub fn write_ticket(&self) -> Option<&Ticket> {
        match &self.io {
            Some(Io::Write(w)) => Some(&w.ticket),
            _ => None,
        }
    }

    /// What the param's I/O is doing, for messages and dumps ("" when idle).
    pub fn io_name(&self) -> &'static str {
        match self.io {
            None => "",
            Some(Io::Submitting) => "I/O being submitted",
            Some(Io::Read(_)) => "read in flight",
            Some(Io::Write(_)) => "write in flight",
        }
    }
}
