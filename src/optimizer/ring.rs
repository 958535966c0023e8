//! The ring: one page-locked allocation of the caller's budget, carved into regions of
//! exact sizes (a sub-group's tensors, or a gradient fragment being written).
//!
//! The memory (`RingMemory`) is read and written without the bookkeeping lock, by the
//! caller (a sub-group out with it) and by the I/O workers (a region being read or
//! written); who may touch which region is decided by the `Arena`, which lives behind
//! the swapper's lock. Regions are handed out like a ring buffer: the next one starts
//! where the last one ended, wrapping to the start, skipping regions still in use (a
//! sub-group the caller keeps, a write still in flight, data whose write-behind failed).
//! Freeing may happen in any order.

use std::collections::BTreeMap;

use crate::config::IO_ALIGNMENT;
use crate::memory_budget::{self, Demand};
use crate::status::{Error, Result, Status};
use crate::sys::alloc::Memory;
use crate::sys::RawBuf;

/// `bytes` rounded up to the O_DIRECT alignment (every region and every tensor in a region
/// starts on it).
pub fn aligned(bytes: u64) -> u64 {
    bytes.div_ceil(IO_ALIGNMENT).saturating_mul(IO_ALIGNMENT)
}

/// The ring's memory.
pub(crate) struct RingMemory {
    memory: Memory,
    bytes: u64,
}

impl RingMemory {
    /// `budget` bytes (rounded down to the alignment; at least one aligned unit), page-locked
    /// when `lock`. The page-lock budget is checked before anything is locked
    /// ([`memory_budget::check`]): a ring the memory cannot hold is `OutOfMemory` naming
    /// `ring_bytes`; one only RLIMIT_MEMLOCK refuses is allocated unlocked (with a warning).
    pub fn new(budget: u64, lock: bool) -> Result<RingMemory> {
        let bytes = budget / IO_ALIGNMENT * IO_ALIGNMENT;
        if bytes == 0 {
            return Err(Error::invalid(format!(
                "ring_bytes {budget} is smaller than one {IO_ALIGNMENT}-byte unit"
            )));
        }
        let len = usize::try_from(bytes)
            .map_err(|_| Error::new(Status::OutOfMemory, format!("ring_bytes {budget} is too large")))?;
        let lock = lock
            && memory_budget::check(&[Demand::new(
                format!("the optimizer swapper's ring ({bytes} bytes)"),
                "ring_bytes (DeepSpeed: offload_optimizer.buffer_count x the largest sub-group)",
                bytes,
            )])?
            .lock;
        let memory = Memory::allocate(len, lock, None)
            .map_err(|e| e.context(format!("the optimizer swapper's ring of {bytes} bytes")))?;
        Ok(RingMemory { memory, bytes })
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether its pages are locked in RAM.
    pub fn is_locked(&self) -> bool {
        self.memory.is_locked()
    }

    /// The address `offset` bytes in.
    pub fn at(&self, offset: u64) -> RawBuf {
        debug_assert!(offset <= self.bytes);
        self.memory.raw().offset_by(offset as usize)
    }
}

/// Which regions of the ring are in use: start -> length, in bytes, all aligned.
#[derive(Debug)]
pub(crate) struct Arena {
    size: u64,
    used: BTreeMap<u64, u64>,
    /// Where the next region is tried first.
    cursor: u64,
}

impl Arena {
    /// An empty arena over `size` bytes.
    pub fn new(size: u64) -> Arena {
        Arena {
            size,
            used: BTreeMap::new(),
            cursor: 0,
        }
    }

    /// Bytes it spans.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes in use.
    pub fn in_use(&self) -> u64 {
        self.used.values().sum()
    }

    /// The free gaps, in address order.
    fn gaps(&self) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = 0;
        for (&start, &len) in &self.used {
            if start > at {
                gaps.push((at, start));
            }
            at = start + len;
        }
        if at < self.size {
            gaps.push((at, self.size));
        }
        gaps
    }

    /// Takes `len` bytes (rounded up to the alignment): the first free place at or after
    /// the cursor, else the first from the start. None when no gap is large enough.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = aligned(len.max(1));
        if len > self.size {
            return None;
        }
        let gaps = self.gaps();
        let after = gaps.iter().filter_map(|&(s, e)| {
            let s = s.max(self.cursor);
            (s < e && e - s >= len).then_some(s)
        });
        let before = gaps.iter().filter_map(|&(s, e)| (e - s >= len).then_some(s));
        let start = after.chain(before).next()?;
        self.used.insert(start, len);
        self.cursor = if start + len >= self.size { 0 } else { start + len };
        Some(start)
    }

    /// Whether a region of `len` bytes would be found now.
    pub fn fits(&self, len: u64) -> bool {
        let len = aligned(len.max(1));
        len <= self.size && self.gaps().iter().any(|&(s, e)| e - s >= len)
    }

    /// Gives back the region starting at `start`; false if there is none.
    pub fn free(&mut self, start: u64) -> bool {
        self.used.remove(&start).is_some()
    }

    /// The length of the region at `start`, if one is in use there.
    #[cfg(test)]
    pub fn len_of(&self, start: u64) -> Option<u64> {
        self.used.get(&start).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: u64 = IO_ALIGNMENT;

    #[test]
    fn regions_go_round_like_a_ring_and_never_overlap() {
        let mut a = Arena::new(10 * U);
        let r0 = a.alloc(3 * U).unwrap();
        let r1 = a.alloc(3 * U).unwrap();
        let r2 = a.alloc(3 * U).unwrap();
        assert_eq!((r0, r1, r2), (0, 3 * U, 6 * U));
        assert_eq!(a.alloc(3 * U), None, "1 unit left");
        assert!(a.free(r0));
        // The next region goes to the start (the cursor wraps past the 1-unit tail).
        assert_eq!(a.alloc(3 * U), Some(0));
        assert!(a.free(r2));
        assert_eq!(a.alloc(4 * U), Some(6 * U));
        assert_eq!(a.in_use(), 10 * U);
        assert!(!a.free(5 * U));
    }

    #[test]
    fn a_region_kept_in_the_middle_is_skipped() {
        let mut a = Arena::new(8 * U);
        let r0 = a.alloc(2 * U).unwrap();
        let kept = a.alloc(2 * U).unwrap();
        let r2 = a.alloc(2 * U).unwrap();
        a.free(r0);
        a.free(r2);
        // Cursor at 6U: 2U fit there, then the next 2U go to the start, never over `kept`.
        assert_eq!(a.alloc(2 * U), Some(6 * U));
        assert_eq!(a.alloc(2 * U), Some(0));
        assert_eq!(a.alloc(2 * U), Some(4 * U));
        assert_eq!(a.alloc(U), None);
        assert_eq!(a.len_of(kept), Some(2 * U));
    }

    #[test]
    fn sizes_are_rounded_to_the_alignment_and_oversized_refused() {
        let mut a = Arena::new(4 * U);
        assert_eq!(a.alloc(1), Some(0));
        assert_eq!(a.len_of(0), Some(U));
        assert_eq!(a.alloc(U + 1), Some(U));
        assert_eq!(a.alloc(5 * U), None);
        assert_eq!(aligned(0), 0);
        assert_eq!(aligned(U - 1), U);
    }

    #[test]
    fn random_allocations_never_overlap_and_stay_inside() {
        // A small deterministic generator: no dependency for one test.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut a = Arena::new(64 * U);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for _ in 0..5000 {
            if next() % 3 == 0 && !live.is_empty() {
                let k = (next() % live.len() as u64) as usize;
                let (s, _) = live.swap_remove(k);
                assert!(a.free(s));
            } else {
                let len = (next() % (16 * U)) + 1;
                if let Some(s) = a.alloc(len) {
                    let l = aligned(len);
                    assert!(s + l <= 64 * U);
                    for &(o, ol) in &live {
                        assert!(s + l <= o || o + ol <= s, "overlap");
                    }
                    live.push((s, l));
                }
            }
            assert_eq!(a.in_use(), live.iter().map(|x| x.1).sum::<u64>());
        }
    }

    #[test]
    fn ring_memory_is_aligned_and_sized() {
        let m = RingMemory::new(3 * U + 100, false).unwrap();
        assert_eq!(m.bytes(), 3 * U);
        assert_eq!(m.at(0).addr() % U as usize, 0);
        assert_eq!(
            RingMemory::new(100, false).err().unwrap().status(),
            Status::InvalidArgument
        );
    }
}
