//! The buffer pool: `buffer_count` buffers of `buffer_numel` elements (rounded up to the
//! I/O alignment) carved from one allocation, and the lists of free and reserved ones.
//!
//! [`Pool`] is the memory and its geometry; it never changes after creation, so it is
//! read without the state lock. [`Buffers`] is the accounting (which buffer is free,
//! reserved or held by a param) and lives in the locked state.

use crate::memory_budget::{self, Demand};
use crate::status::{Error, Result, Status};
use crate::sys::alloc::Memory;
use crate::sys::RawBuf;

use super::config::Settings;
use super::io_aligned_numel;

/// The index of a pool buffer. Only the pool hands them out, so one always names a
/// buffer that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BufferId(usize);

impl BufferId {
    /// The buffer's index, for messages.
    pub fn index(self) -> usize {
        self.0
    }
}

/// The pool's memory.
pub(crate) struct Pool {
    memory: Memory,
    buffer_bytes: usize,
    count: usize,
}

impl Pool {
    /// Allocates the pool for these settings (page-locked if asked, or from the caller's
    /// allocator). A pinned pool is checked first ([`memory_budget::check`]): one that
    /// does not fit memory is refused before anything is allocated, and one that only
    /// RLIMIT_MEMLOCK refuses is allocated unlocked.
    pub fn new(config: &Settings) -> Result<Pool> {
        let (buffer_bytes, count, total) = Pool::geometry(config)?;
        let lock = match Pool::demand(config)? {
            Some(demand) => memory_budget::check(&[demand])?.lock,
            None => false,
        };
        let memory = Memory::allocate(total, lock, config.allocator)
            .map_err(|e| e.context(format!("buffer pool of {count} x {buffer_bytes} bytes")))?;
        Ok(Pool {
            memory,
            buffer_bytes,
            count,
        })
    }

    /// Bytes per buffer (`buffer_numel` elements, rounded up to the I/O alignment),
    /// buffers, and bytes in all.
    fn geometry(config: &Settings) -> Result<(usize, usize, usize)> {
        if config.buffer_count == 0 || config.buffer_numel == 0 {
            return Err(Error::invalid("buffer_count and buffer_numel must be at least 1"));
        }
        let elem = config.dtype.size();
        let buffer_bytes = io_aligned_numel(config.buffer_numel, elem)
            .checked_mul(elem as u64)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| Error::new(Status::OutOfMemory, "buffer_numel is too large"))?;
        let count = config.buffer_count as usize;
        let total = buffer_bytes
            .checked_mul(count)
            .ok_or_else(|| Error::new(Status::OutOfMemory, "buffer_count * buffer_numel is too large"))?;
        Ok((buffer_bytes, count, total))
    }

    /// What the pool of these settings page-locks: nothing unless `pin_memory` is set,
    /// and nothing when the caller's allocator provides the memory.
    pub fn demand(config: &Settings) -> Result<Option<Demand>> {
        let (buffer_bytes, count, total) = Pool::geometry(config)?;
        Ok((config.pin_memory && config.allocator.is_none()).then(|| {
            Demand::new(
                format!("the buffer pool ({count} buffers of {buffer_bytes} bytes)"),
                "buffer_count or buffer_numel (DeepSpeed offload_param.buffer_count / buffer_size)",
                total as u64,
            )
        }))
    }

    /// Bytes the pool of these settings page-locks, as the kernel counts them (whole
    /// pages; 0 when nothing is locked). Creates nothing.
    pub fn page_locked_bytes(config: &Settings) -> Result<u64> {
        Pool::demand(config)?.map_or(Ok(0), |d| d.locked_bytes())
    }

    /// The address of a buffer.
    pub fn buf(&self, id: BufferId) -> RawBuf {
        self.memory.raw().offset_by(id.0 * self.buffer_bytes)
    }

    /// The pool buffer `addr` lies in, if it lies in the pool.
    pub fn buffer_at(&self, addr: usize) -> Option<BufferId> {
        let base = self.memory.raw().addr();
        (addr >= base && addr < base + self.memory.len()).then(|| BufferId((addr - base) / self.buffer_bytes))
    }

    /// Zeroes bytes `from..to` of a buffer (the padding past a param's elements, so the
    /// file never holds stale bytes of an earlier param).
    ///
    /// # Safety
    /// No I/O may use that range of the buffer, and nobody else may touch it, meanwhile:
    /// the buffer must belong to a param this call has claimed.
    pub unsafe fn zero(&self, id: BufferId, from: usize, to: usize) {
        // SAFETY: in bounds (slice_mut checks); exclusivity is the caller's contract.
        unsafe { self.memory.slice_mut(id.0 * self.buffer_bytes + from, to - from) }.fill(0);
    }

    /// Bytes per buffer (the aligned length).
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Buffers in all.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether the pool is page-locked.
    pub fn is_locked(&self) -> bool {
        self.memory.is_locked()
    }
}

/// Which buffers are free and which the caller reserved; the rest are held by params.
pub(crate) struct Buffers {
    free: Vec<BufferId>,
    reserved: Vec<BufferId>,
}

impl Buffers {
    /// Every one of `count` buffers free.
    pub fn new(count: usize) -> Buffers {
        Buffers {
            free: (0..count).rev().map(BufferId).collect(),
            reserved: Vec::new(),
        }
    }

    /// Takes a free buffer.
    pub fn take(&mut self) -> Option<BufferId> {
        self.free.pop()
    }

    /// Gives a buffer back.
    pub fn give(&mut self, id: BufferId) {
        self.free.push(id);
    }

    /// Free buffers.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Reserved buffers.
    pub fn reserved(&self) -> usize {
        self.reserved.len()
    }

    /// Whether a buffer is reserved.
    pub fn is_reserved(&self, id: BufferId) -> bool {
        self.reserved.contains(&id)
    }

    /// Moves up to `n` free buffers to the reserved list.
    pub fn reserve(&mut self, n: usize) -> Vec<BufferId> {
        let n = n.min(self.free.len());
        let taken = self.free.split_off(self.free.len() - n);
        let out: Vec<BufferId> = taken.into_iter().rev().collect();
        self.reserved.extend(&out);
        out
    }

    /// Puts every reserved buffer back on the free list.
    pub fn unreserve_all(&mut self) {
        self.free.append(&mut self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_reserve_and_give_back() {
        let mut b = Buffers::new(3);
        let first = b.take().unwrap();
        assert_eq!(first.index(), 0);
        let r = b.reserve(5);
        assert_eq!(r.len(), 2);
        assert_eq!((b.free(), b.reserved()), (0, 2));
        assert!(b.is_reserved(r[0]) && !b.is_reserved(first));
        assert!(b.take().is_none());
        b.unreserve_all();
        b.give(first);
        assert_eq!((b.free(), b.reserved()), (3, 0));
    }
}
