//! Checksums of the bytes on disk, for both swappers: the crc32c the I/O workers computed
//! while a tensor was written (with its parts, one per request), compared with the one
//! they compute while it is read back; a mismatch is located by recomputing the parts.

use crate::status::{Error, Result, Status};
use crate::store::StoreTicket as Ticket;
use crate::sys::alloc;
use crate::sys::RawBuf;

/// A tensor's checksum: the crc32c of its bytes, and its parts as the I/O workers
/// computed them (offset, length, crc32c), which locate a mismatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checksum {
    crc: u32,
    parts: Vec<(u64, u64, u32)>,
}

impl Checksum {
    /// A checksum from its whole crc32c and its parts.
    pub fn new(crc: u32, parts: Vec<(u64, u64, u32)>) -> Checksum {
        Checksum { crc, parts }
    }

    /// The checksum a finished operation computed, if it was asked for.
    pub fn of(ticket: &Ticket) -> Option<Checksum> {
        Some(Checksum::new(ticket.checksum()?, ticket.checksum_parts()))
    }
}

/// Compares `got`, the crc32c the workers computed while reading `len` bytes into `buf`,
/// with `want`, recorded when they were written; a mismatch is `CorruptData` naming
/// `what` and `place(offset)` (where byte `offset` of the data lies on disk), located by
/// recomputing the parts over the buffer. Runs without any lock.
///
/// # Safety
/// The read into `buf` must have completed and `buf` be valid for reading `len` bytes.
pub(crate) unsafe fn verify(
    what: &str,
    place: impl Fn(u64) -> String,
    want: Option<&Checksum>,
    got: Option<u32>,
    buf: RawBuf,
    len: usize,
) -> Result<()> {
    let Some(want) = want else {
        return Ok(());
    };
    if got == Some(want.crc) {
        return Ok(());
    }
    // SAFETY: the caller's contract.
    let data = unsafe { alloc::borrow(buf, len) };
    let bad = want.parts.iter().find(|(start, n, crc)| {
        let end = (start + n) as usize;
        end > data.len() || crc32c::crc32c(&data[*start as usize..end]) != *crc
    });
    let where_ = match bad {
        Some((start, n, crc)) => format!(
            "{} (bytes {start} to {}; crc32c expected {crc:#010x})",
            place(*start),
            start + n
        ),
        None => format!("{} (crc32c of the whole expected {:#010x})", place(0), want.crc),
    };
    Err(Error::new(
        Status::CorruptData,
        format!("{what}: checksum mismatch in {where_}"),
    ))
}
