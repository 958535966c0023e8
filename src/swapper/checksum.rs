//! Checksums of the bytes on disk: the crc32c the I/O workers computed while a param was
//! written, compared with the one they compute while it is read back.

use std::path::Path;

use crate::status::{Error, Result, Status};
use crate::store::StoreTicket as Ticket;
use crate::sys::alloc;
use crate::sys::RawBuf;

/// A param's checksum: the crc32c of its bytes, and its parts as the I/O workers
/// computed them (offset, length, crc32c), which locate a mismatch.
#[derive(Clone, Debug)]
pub(crate) struct Checksum {
    crc: u32,
    parts: Vec<(u64, u64, u32)>,
}

impl Checksum {
    /// A checksum recorded elsewhere (an adopted manifest's).
    pub fn from_parts(crc: u32, parts: Vec<(u64, u64, u32)>) -> Checksum {
        Checksum { crc, parts }
    }

    /// The crc32c of the whole param.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// The parts (offset, length, crc32c).
    pub fn parts(&self) -> &[(u64, u64, u32)] {
        &self.parts
    }

    /// The checksum a finished operation computed, if it was asked for.
    pub fn of(ticket: &Ticket) -> Option<Checksum> {
        Some(Checksum {
            crc: ticket.checksum()?,
            parts: ticket.checksum_parts(),
        })
    }
}

/// Compares the checksum the workers computed while reading (`ticket`) with the one
/// recorded when param `id` was written; a mismatch is located by recomputing the parts
/// over the `len` bytes at `buf`. Runs without the state lock.
///
/// # Safety
/// The read into `buf` must have completed and `buf` be valid for reading `len` bytes.
pub(crate) unsafe fn verify(
    id: u64,
    path: &Path,
    want: Option<&Checksum>,
    ticket: &Ticket,
    buf: RawBuf,
    len: usize,
) -> Result<()> {
    let Some(want) = want else {
        return Ok(());
    };
    if ticket.checksum() == Some(want.crc) {
        return Ok(());
    }
    // SAFETY: the caller's contract.
    let data = unsafe { alloc::borrow(buf, len) };
    let bad = want.parts.iter().find(|(start, n, crc)| {
        let end = (start + n) as usize;
        end > data.len() || crc32c::crc32c(&data[*start as usize..end]) != *crc
    });
    let place = match bad {
        Some((start, n, crc)) => format!(
            "at offset {start} (bytes {start} to {}; crc32c expected {crc:#010x})",
            start + n
        ),
        None => format!("(crc32c of the whole param expected {:#010x})", want.crc),
    };
    Err(Error::new(
        Status::CorruptData,
        format!("param {id}: checksum mismatch in {} {place}", path.display()),
    ))
}
