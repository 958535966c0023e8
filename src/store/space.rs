//! The free space inside one drive's extent files: pure bookkeeping, no file-system call.
//!
//! Each extent file has a `capacity` (the bytes the store has reserved with fallocate,
//! which is also the file's size) and a `frontier`: bytes past the frontier have never
//! been handed out, so they read as zeros (fallocate's unwritten blocks); bytes below it
//! are either held by a tensor or in the file's free list. A piece is taken from the
//! free lists first (best fit: the smallest free range that holds it, aligned), then from
//! a file's frontier; a freed piece joins its file's free list, merged with its
//! neighbours, and the frontier never moves back (freed bytes hold old data).
//!
//! A piece says whether it is `fresh` (all past the old frontier): a tensor that must
//! read as zeros needs the file system to zero only a piece that is not.
//!
//! # The hook for crash consistency (issue 20)
//! Today a freed piece is reusable at once ([`Space::free`]). A store that must survive a
//! crash rewrites a tensor after a flush into fresh space and may free the old piece only
//! once a newer manifest is durable: that is a `retire(piece, epoch)` that parks the
//! piece in a list beside the free lists, and a `release_through(epoch)` that moves every
//! piece retired up to that epoch into the free lists with [`Space::free`]. Nothing else
//! here changes: allocation never looks at retired pieces.

use std::collections::BTreeMap;

/// A piece of an extent file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The extent file's index on its drive.
    pub file: usize,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Never handed out before: reads as zeros without being zeroed.
    pub fresh: bool,
}

/// One extent file's space.
#[derive(Clone, Debug, Default)]
struct FileSpace {
    capacity: u64,
    frontier: u64,
    /// Free ranges below the frontier: offset -> length, merged, not touching each other.
    free: BTreeMap<u64, u64>,
    /// Found truncated or replaced: nothing new is placed in it.
    damaged: bool,
}

/// How to make room for a piece that fits nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Growth {
    /// Extend file `file` from `from` bytes to `to`.
    Extend { file: usize, from: u64, to: u64 },
    /// Create extent file `file` (the next index) with `to` bytes.
    Create { file: usize, to: u64 },
}

/// The space of one drive's extent files.
#[derive(Clone, Debug, Default)]
pub struct Space {
    files: Vec<FileSpace>,
}

fn align_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align).saturating_mul(align)
}

impl Space {
    /// No file yet.
    pub fn new() -> Space {
        Space::default()
    }

    /// How many extent files there are.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// A file's capacity (its size as the store made it).
    pub fn capacity(&self, file: usize) -> u64 {
        self.files.get(file).map_or(0, |f| f.capacity)
    }

    /// Bytes reserved in every file together.
    pub fn total_capacity(&self) -> u64 {
        self.files.iter().map(|f| f.capacity).sum()
    }

    /// Takes `len` bytes (> 0) at an offset that is a multiple of `align` (a power of
    /// two), from the free lists (best fit) or a file's frontier; None when no file has
    /// room (then [`Space::growth`] says how to make some).
    pub fn allocate(&mut self, len: u64, align: u64) -> Option<Piece> {
        debug_assert!(len > 0 && align.is_power_of_two());
        // Best fit among the free ranges of every usable file.
        let mut best: Option<(u64, usize, u64, u64)> = None; // (range len, file, range start, aligned start)
        for (k, f) in self.files.iter().enumerate().filter(|(_, f)| !f.damaged) {
            for (&start, &n) in &f.free {
                let at = align_up(start, align);
                if at + len <= start + n && best.is_none_or(|b| n < b.0) {
                    best = Some((n, k, start, at));
                }
            }
        }
        if let Some((n, k, start, at)) = best {
            let f = &mut self.files[k];
            f.free.remove(&start);
            if at > start {
                f.free.insert(start, at - start);
            }
            if start + n > at + len {
                f.free.insert(at + len, start + n - (at + len));
            }
            return Some(Piece {
                file: k,
                offset: at,
                len,
                fresh: false,
            });
        }
        for (k, f) in self.files.iter_mut().enumerate().filter(|(_, f)| !f.damaged) {
            let at = align_up(f.frontier, align);
            if at + len <= f.capacity {
                if at > f.frontier {
                    Self::insert_free(&mut f.free, f.frontier, at - f.frontier);
                }
                f.frontier = at + len;
                return Some(Piece {
                    file: k,
                    offset: at,
                    len,
                    fresh: true,
                });
            }
        }
        None
    }

    /// Takes back a piece just allocated and not used (the allocation of a tensor that did
    /// not fit whole): a fresh piece at the frontier moves the frontier back, so it stays
    /// fresh; any other is freed.
    pub fn undo(&mut self, piece: Piece) {
        if let Some(f) = self.files.get_mut(piece.file) {
            if piece.fresh && piece.offset + piece.len == f.frontier {
                // (An alignment gap left below it stays in the free list: it cannot be told
                // apart from freed space there, which holds old data.)
                f.frontier = piece.offset;
                return;
            }
        }
        self.free(piece);
    }

    /// Gives a piece back; it can be handed out again (not fresh).
    pub fn free(&mut self, piece: Piece) {
        if let Some(f) = self.files.get_mut(piece.file) {
            if piece.len > 0 {
                Self::insert_free(&mut f.free, piece.offset, piece.len);
            }
        }
    }

    fn insert_free(free: &mut BTreeMap<u64, u64>, mut offset: u64, mut len: u64) {
        if let Some((&s, &n)) = free.range(..=offset).next_back() {
            if s + n == offset {
                free.remove(&s);
                offset = s;
                len += n;
            }
        }
        if let Some(&n) = free.get(&(offset + len)) {
            free.remove(&(offset + len));
            len += n;
        }
        free.insert(offset, len);
    }

    /// How to make room for `len` bytes aligned to `align`: extend the last usable file by
    /// at least `step` (and at least what the piece needs) while it stays within
    /// `max_file` bytes, or create a new file. Ignores the free lists (call it after
    /// [`Space::allocate`] failed).
    pub fn growth(&self, len: u64, align: u64, step: u64, max_file: u64) -> Growth {
        if let Some((k, f)) = self.files.iter().enumerate().next_back() {
            if !f.damaged {
                let need = align_up(f.frontier, align) + len;
                if need <= max_file {
                    let to = need.max(f.capacity.saturating_add(step).min(max_file));
                    return Growth::Extend {
                        file: k,
                        from: f.capacity,
                        to,
                    };
                }
            }
        }
        Growth::Create {
            file: self.files.len(),
            to: len.max(step),
        }
    }

    /// Records a growth that succeeded: file `file` now holds `to` bytes (a new file is
    /// added when `file` is the next index).
    pub fn grown(&mut self, file: usize, to: u64) {
        if file == self.files.len() {
            self.files.push(FileSpace::default());
        }
        if let Some(f) = self.files.get_mut(file) {
            f.capacity = f.capacity.max(to);
        }
    }

    /// Marks a file damaged (truncated or replaced behind the store's back): nothing new
    /// goes there, and its pieces are never handed out again.
    pub fn damage(&mut self, file: usize) {
        if let Some(f) = self.files.get_mut(file) {
            f.damaged = true;
        }
    }

    /// Whether a file is damaged.
    pub fn is_damaged(&self, file: usize) -> bool {
        self.files.get(file).is_some_and(|f| f.damaged)
    }

    /// Bytes free below the frontiers plus past them, in usable files.
    pub fn free_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| !f.damaged)
            .map(|f| f.free.values().sum::<u64>() + (f.capacity - f.frontier.min(f.capacity)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K4: u64 = 4096;
    const M1: u64 = 1 << 20;

    #[test]
    fn pieces_come_from_the_frontier_aligned_then_from_freed_space() {
        let mut s = Space::new();
        assert_eq!(s.allocate(K4, K4), None);
        assert_eq!(
            s.growth(K4, K4, 16 * M1, 64 * M1),
            Growth::Create { file: 0, to: 16 * M1 }
        );
        s.grown(0, 16 * M1);
        let a = s.allocate(K4, K4).unwrap();
        assert_eq!(
            a,
            Piece {
                file: 0,
                offset: 0,
                len: K4,
                fresh: true
            }
        );
        // A large piece is aligned to 1 MiB; the gap before it is free space.
        let b = s.allocate(2 * M1, M1).unwrap();
        assert_eq!((b.offset, b.fresh), (M1, true));
        let c = s.allocate(8 * K4, K4).unwrap();
        assert_eq!((c.offset, c.fresh), (K4, false), "taken from the alignment gap");
        s.free(a);
        let d = s.allocate(K4, K4).unwrap();
        assert_eq!(
            (d.offset, d.fresh),
            (0, false),
            "freed space is reused, not fresh"
        );
        assert_eq!(s.free_bytes(), 16 * M1 - 3 * M1 + (M1 - 9 * K4));
    }

    #[test]
    fn freed_neighbours_merge_and_best_fit_keeps_large_ranges_whole() {
        let mut s = Space::new();
        s.grown(0, 64 * M1);
        let p: Vec<Piece> = (0..8).map(|_| s.allocate(M1, K4).unwrap()).collect();
        for k in [1, 2, 3] {
            s.free(p[k]);
        }
        s.free(p[6]);
        // A 1 MiB piece fits best in the 1 MiB hole, not the 3 MiB one.
        assert_eq!(s.allocate(M1, K4).unwrap().offset, 6 * M1);
        // 3 MiB fit in the merged 1..4.
        assert_eq!(s.allocate(3 * M1, K4).unwrap().offset, M1);
    }

    #[test]
    fn growth_extends_the_last_file_up_to_its_limit_then_creates_one() {
        let mut s = Space::new();
        s.grown(0, 16 * M1);
        s.allocate(15 * M1, M1).unwrap();
        assert_eq!(
            s.growth(2 * M1, M1, 16 * M1, 64 * M1),
            Growth::Extend {
                file: 0,
                from: 16 * M1,
                to: 32 * M1
            }
        );
        assert_eq!(
            s.growth(40 * M1, M1, 16 * M1, 64 * M1),
            Growth::Extend {
                file: 0,
                from: 16 * M1,
                to: 55 * M1
            }
        );
        // Past the limit: the step is cut to the limit, or a new file is made.
        assert_eq!(
            s.growth(2 * M1, M1, 60 * M1, 64 * M1),
            Growth::Extend {
                file: 0,
                from: 16 * M1,
                to: 64 * M1
            }
        );
        assert_eq!(
            s.growth(50 * M1, M1, 16 * M1, 64 * M1),
            Growth::Create { file: 1, to: 50 * M1 }
        );
        s.grown(1, 50 * M1);
        assert_eq!(s.allocate(50 * M1, M1).unwrap().file, 1);
    }

    #[test]
    fn a_damaged_file_takes_nothing_new() {
        let mut s = Space::new();
        s.grown(0, 16 * M1);
        let a = s.allocate(K4, K4).unwrap();
        s.damage(0);
        s.free(a);
        assert_eq!(s.allocate(K4, K4), None);
        assert!(matches!(
            s.growth(K4, K4, M1, 64 * M1),
            Growth::Create { file: 1, .. }
        ));
        assert_eq!(s.free_bytes(), 0);
    }
}
