//! A store operation under way: one engine ticket per piece of the tensor it touches
//! (pieces on several drives run in parallel, each in its drive's queue), waited for and
//! checksummed as one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::Ticket;
use crate::status::{Error, Result};

use super::Key;

/// One piece of a store operation.
pub(crate) struct Part {
    pub drive: usize,
    /// The drive's rank folder (for messages).
    pub folder: PathBuf,
    /// Where the piece starts in the operation's buffer.
    pub buf_offset: u64,
    /// Bytes of the piece the checksum covers (a prefix of it).
    pub checksum_len: u64,
    pub ticket: Ticket,
}

struct Inner {
    key: Key,
    write: bool,
    parts: Vec<Part>,
}

/// Waits for one store operation (all its pieces). Clones wait for the same operation.
#[derive(Clone)]
pub struct StoreTicket(Arc<Inner>);

impl StoreTicket {
    pub(crate) fn new(key: Key, write: bool, parts: Vec<Part>) -> StoreTicket {
        StoreTicket(Arc::new(Inner { key, write, parts }))
    }

    /// Blocks until every piece has finished (even after one failed: none of the buffer
    /// is in use when this returns); the operation's checksum when one was asked for, or
    /// the first failure, naming the drive, the key, the file and the offset (and how many
    /// pieces failed). `BadState` at once in a forked child, `Panic` when a drive's engine
    /// broke.
    pub fn wait(&self) -> Result<Option<u32>> {
        let mut first: Option<Error> = None;
        let mut failed = 0;
        for p in &self.0.parts {
            if let Err(e) = p.ticket.wait() {
                failed += 1;
                if first.is_none() {
                    first = Some(e.context(format!(
                        "{} of key {} on drive {} ({})",
                        if self.0.write { "write" } else { "read" },
                        self.0.key,
                        p.drive,
                        p.folder.display()
                    )));
                }
            }
        }
        match first {
            None => Ok(self.checksum()),
            Some(e) if failed > 1 => Err(e.context(format!(
                "{failed} of the {} pieces failed, the first",
                self.0.parts.len()
            ))),
            Some(e) => Err(e),
        }
    }

    /// Whether every piece has finished.
    pub fn is_finished(&self) -> bool {
        self.0.parts.iter().all(|p| p.ticket.is_finished())
    }

    /// The crc32c of the first `checksum_len` bytes of the operation's buffer, combined
    /// over the pieces; None when not asked for or not finished.
    /// (The pieces of a raced write cover overlapping spans, of which each drive wrote
    /// the part it claimed: the parts are combined in buffer order.)
    pub fn checksum(&self) -> Option<u32> {
        if !self.is_finished() || self.0.parts.iter().all(|p| p.checksum_len == 0) {
            return None;
        }
        let mut parts = self.checksum_parts();
        parts.sort_unstable_by_key(|&(offset, _, _)| offset);
        let (first, rest) = parts.split_first()?;
        Some(rest.iter().fold(first.2, |acc, &(_, len, crc)| {
            crc32c::crc32c_combine(acc, crc, len as usize)
        }))
    }

    /// The checksum's parts, as the workers computed them: (offset in the operation's
    /// buffer, length, crc32c). Recomputing them over a buffer locates a mismatch.
    pub fn checksum_parts(&self) -> Vec<(u64, u64, u32)> {
        self.0
            .parts
            .iter()
            .flat_map(|p| {
                p.ticket
                    .checksum_parts()
                    .into_iter()
                    .map(move |(o, n, c)| (o + p.buf_offset, n, c))
            })
            .collect()
    }

    /// The file of the operation's first piece (for messages).
    pub fn path(&self) -> &Path {
        self.0.parts.first().map_or(Path::new(""), |p| p.ticket.path())
    }

    /// Whether two tickets are for the same operation.
    pub fn same(&self, other: &StoreTicket) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The key.
    pub fn key(&self) -> Key {
        self.0.key
    }
}
