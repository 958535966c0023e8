//! Copying byte ranges from one held file to another through the I/O engines: O_DIRECT
//! reads and writes of a few chunks in flight, a chunk's write overlapping the next
//! chunks' reads. This is how a snapshot copies extent files where the file system cannot
//! share extents (ext4): no page cache on either side (the copy neither evicts the
//! training's memory nor leaves gigabytes of dirty pages for the final fsync to wait
//! on), and the disk sees reads and writes at once instead of the kernel's
//! read-a-little, write-a-little of `copy_file_range`.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::io::{HeldFile, HeldRequest, IoEngine, Ticket};
use crate::status::{Error, Result};
use crate::sys::alloc::AlignedBuf;

/// Bytes per chunk: one read, then one write, of this size.
pub(crate) const CHUNK: u64 = 8 << 20;
/// Chunks in flight (reading or writing): the copy's memory is `CHUNKS x CHUNK`,
/// not page-locked.
pub(crate) const CHUNKS: usize = 4;

/// One chunk of a range: where it is in both files, and how long.
#[derive(Clone, Copy, Debug)]
struct Span {
    offset: u64,
    len: u64,
}

/// The ranges cut into chunks of at most [`CHUNK`] bytes.
fn chunks(ranges: &[(u64, u64)]) -> Vec<Span> {
    let mut out = Vec::new();
    for &(offset, len) in ranges {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            out.push(Span {
                offset: offset + done,
                len: n,
            });
            done += n;
        }
    }
    out
}

/// The copy's buffers and the operations using them. Dropping it waits for every
/// operation still in flight before the buffers go, so an error return never frees
/// memory the engine is still moving bytes into.
struct Copier<'a> {
    read_engine: &'a IoEngine,
    write_engine: &'a IoEngine,
    src: &'a Arc<HeldFile>,
    dst: &'a Arc<HeldFile>,
    bufs: Vec<AlignedBuf>,
    free: Vec<usize>,
    reads: VecDeque<(usize, Span, Ticket)>,
    writes: VecDeque<(usize, Ticket)>,
}

impl Copier<'_> {
    fn submit(&mut self, b: usize, c: Span, write: bool) -> Result<Ticket> {
        let (engine, file) = if write {
            (self.write_engine, self.dst)
        } else {
            (self.read_engine, self.src)
        };
        let req = HeldRequest {
            write,
            buf: self.bufs[b].raw(),
            len: c.len,
            file,
            offset: c.offset,
            checksum_len: None,
        };
        // SAFETY: buffer `b` holds CHUNK >= c.len bytes, owned by `self`, which waits for
        // every ticket before its buffers are dropped (Drop); while this operation is in
        // flight, `b` is in neither `free` nor any other queued operation, so nothing else
        // reads or writes it.
        unsafe { engine.submit_held(&req) }
    }

    /// Turns the oldest read into a write, waiting for the read if `block`; returns
    /// whether one was turned.
    fn promote(&mut self, block: bool) -> Result<bool> {
        let ready = match self.reads.front() {
            Some((_, _, t)) => block || t.is_finished(),
            None => false,
        };
        if !ready {
            return Ok(false);
        }
        if let Some((b, c, t)) = self.reads.pop_front() {
            // On an error the buffer is left out of `free`: the copy stops anyway.
            t.wait()?;
            let w = self.submit(b, c, true)?;
            self.writes.push_back((b, w));
        }
        Ok(true)
    }

    /// A free buffer: finished reads become writes, and the oldest write is waited for
    /// when every buffer is busy.
    fn take(&mut self) -> Result<usize> {
        loop {
            while self.promote(false)? {}
            if let Some(b) = self.free.pop() {
                return Ok(b);
            }
            if let Some((b, t)) = self.writes.pop_front() {
                t.wait()?;
                self.free.push(b);
            } else {
                self.promote(true)?;
            }
        }
    }

    fn run(&mut self, ranges: &[(u64, u64)]) -> Result<()> {
        for c in chunks(ranges) {
            let b = self.take()?;
            let t = self.submit(b, c, false)?;
            self.reads.push_back((b, c, t));
        }
        while self.promote(true)? {}
        while let Some((b, t)) = self.writes.pop_front() {
            t.wait()?;
            self.free.push(b);
        }
        Ok(())
    }
}

impl Drop for Copier<'_> {
    fn drop(&mut self) {
        for (_, _, t) in self.reads.drain(..) {
            let _ = t.wait();
        }
        for (_, t) in self.writes.drain(..) {
            let _ = t.wait();
        }
    }
}

/// Copies bytes `offset..offset + len` of `src` to the same offsets of `dst` for each
/// `(offset, len)` of `ranges`: reads on `read_engine`, writes on `write_engine` (the
/// same engine or not), [`CHUNKS`] chunks of [`CHUNK`] bytes in flight. Offsets and
/// lengths should be multiples of 4 KiB (the engine takes anything, the unaligned rest
/// buffered). `dst` must already be as large as the ranges need. Returns when every
/// byte is written (not synced: the caller fsyncs `dst`); the first error otherwise,
/// naming the file and offset, after every operation in flight has finished.
pub fn copy_ranges(
    read_engine: &IoEngine,
    write_engine: &IoEngine,
    src: &Arc<HeldFile>,
    dst: &Arc<HeldFile>,
    ranges: &[(u64, u64)],
) -> Result<()> {
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    if total == 0 {
        return Ok(());
    }
    let count = CHUNKS.min(total.div_ceil(CHUNK) as usize).max(1);
    let size = CHUNK.min(total) as usize;
    let bufs = (0..count)
        .map(|_| AlignedBuf::new(size, false))
        .collect::<Result<Vec<_>>>()
        .map_err(|e: Error| e.context(format!("copy buffers for {}", dst.path().display())))?;
    let mut copier = Copier {
        read_engine,
        write_engine,
        src,
        dst,
        bufs,
        free: (0..count).rev().collect(),
        reads: VecDeque::new(),
        writes: VecDeque::new(),
    };
    copier.run(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_into_chunks_that_cover_them_exactly() {
        let c = chunks(&[(0, CHUNK * 2 + 4096), (CHUNK * 4, 8192)]);
        let got: Vec<(u64, u64)> = c.iter().map(|c| (c.offset, c.len)).collect();
        assert_eq!(
            got,
            vec![(0, CHUNK), (CHUNK, CHUNK), (CHUNK * 2, 4096), (CHUNK * 4, 8192)]
        );
        assert!(chunks(&[]).is_empty());
        assert!(chunks(&[(4096, 0)]).is_empty());
    }
}
