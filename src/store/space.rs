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
//! # Crash consistency (issue 20)
//! Space named by a durable manifest must not be written until a newer manifest that no
//! longer names it is durable: a crash in between would show the old manifest pointing at
//! new bytes. So a piece the last manifests name is not freed when its tensor is rewritten
//! (placed afresh, copy-on-write) or forgotten: it is *retired* with the generation of the
//! last manifest that names it ([`Space::retire`]), allocation never looks at it, and once
//! a manifest of a later generation is durable on every drive, [`Space::release_through`]
//! frees every piece retired up to the generation before it. A flush that still names a
//! retired piece (the tensor's new write is not done yet, so the manifest keeps its old
//! bytes) moves its generation up ([`Space::extend_retirement`]). A piece no manifest ever
//! named is freed at once, as before.
//!
//! An adopted folder's files come back with [`Space::adopt_file`]: everything the manifest
//! does not name is free (the garbage of writes after the last flush is reclaimed).

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
    /// Pieces a manifest still names, with the generation of the last one that does.
    retired: Vec<(Piece, u64)>,
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

    /// Takes back exactly `piece`, which must lie in the free list (one just freed, with
    /// nothing allocated since): true if it did; false (nothing changed) otherwise.
    pub fn take(&mut self, piece: Piece) -> bool {
        let Some(f) = self.files.get_mut(piece.file) else {
            return false;
        };
        if piece.len == 0 {
            return true;
        }
        let Some((&start, &n)) = f.free.range(..=piece.offset).next_back() else {
            return false;
        };
        let end = piece.offset + piece.len;
        if end > start + n {
            return false;
        }
        f.free.remove(&start);
        if piece.offset > start {
            f.free.insert(start, piece.offset - start);
        }
        if start + n > end {
            f.free.insert(end, start + n - end);
        }
        true
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

    /// Parks `piece` until a manifest newer than generation `epoch` (the last one that
    /// names it) is durable: it is not handed out meanwhile.
    pub fn retire(&mut self, piece: Piece, epoch: u64) {
        if piece.len > 0 {
            self.retired.push((piece, epoch));
        }
    }

    /// A manifest of generation `epoch` names `piece` again (its tensor's new bytes are
    /// not written yet): the piece stays retired until a later one is durable. Nothing
    /// happens for a piece that is not retired.
    pub fn extend_retirement(&mut self, piece: Piece, epoch: u64) {
        for (p, e) in &mut self.retired {
            if (p.file, p.offset, p.len) == (piece.file, piece.offset, piece.len) {
                *e = (*e).max(epoch);
            }
        }
    }

    /// Frees every piece retired with a generation up to `epoch` (a manifest of a later
    /// generation is durable). Returns the bytes freed.
    pub fn release_through(&mut self, epoch: u64) -> u64 {
        let (go, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(_, e)| *e <= epoch);
        self.retired = keep;
        let mut bytes = 0;
        for (p, _) in go {
            bytes += p.len;
            self.free(p);
        }
        bytes
    }

    /// Bytes retired and not yet released.
    pub fn retired_bytes(&self) -> u64 {
        self.retired.iter().map(|(p, _)| p.len).sum()
    }

    /// Adds the next extent file, adopted from a manifest: `capacity` bytes, of which the
    /// ranges `used` (offset, length) hold tensors; every other byte is free (not fresh:
    /// it may hold old data). The ranges must lie inside the file and not overlap
    /// (`Err` naming the first that does not).
    pub fn adopt_file(&mut self, capacity: u64, used: &[(u64, u64)]) -> Result<usize, (u64, u64)> {
        let mut v = used.to_vec();
        v.sort_unstable();
        let mut f = FileSpace {
            capacity,
            frontier: capacity,
            ..FileSpace::default()
        };
        let mut at = 0u64;
        for &(o, n) in &v {
            if o < at || o.checked_add(n).is_none_or(|e| e > capacity) {
                return Err((o, n));
            }
            if o > at {
                Self::insert_free(&mut f.free, at, o - at);
            }
            at = o + n;
        }
        if capacity > at {
            Self::insert_free(&mut f.free, at, capacity - at);
        }
        self.files.push(f);
        Ok(self.files.len() - 1)
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
    fn a_freed_piece_is_taken_back_exactly() {
        let mut s = Space::new();
        s.grown(0, 1 << 20);
        let a = s.allocate(K4, K4).unwrap();
        let b = s.allocate(2 * K4, K4).unwrap();
        let c = s.allocate(K4, K4).unwrap();
        s.free(a);
        s.free(b);
        s.free(c);
        // b sits in the middle of one merged free range: taken back, the rest stays free.
        assert!(s.take(b));
        assert!(!s.take(b), "not free any more");
        assert_eq!(s.allocate(K4, K4).map(|p| p.offset), Some(a.offset));
        assert_eq!(s.allocate(K4, K4).map(|p| p.offset), Some(c.offset));
        assert!(!s.take(Piece { file: 3, ..a }), "no such file");
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

    #[test]
    fn retired_pieces_wait_for_a_newer_manifest() {
        let mut s = Space::new();
        s.grown(0, 4 * K4);
        let a = s.allocate(K4, K4).unwrap();
        let b = s.allocate(K4, K4).unwrap();
        s.retire(a, 1);
        s.retire(b, 1);
        s.extend_retirement(b, 2);
        let c = s.allocate(K4, K4).unwrap();
        let d = s.allocate(K4, K4).unwrap();
        assert_eq!(s.allocate(K4, K4), None, "retired pieces are not handed out");
        assert_eq!(s.retired_bytes(), 2 * K4);
        assert_eq!(s.release_through(1), K4);
        assert_eq!(s.allocate(K4, K4).unwrap().offset, a.offset);
        assert_eq!(s.allocate(K4, K4), None, "b is named by generation 2");
        assert_eq!(s.release_through(2), K4);
        assert_eq!(s.allocate(K4, K4).unwrap().offset, b.offset);
        let _ = (c, d);
    }

    #[test]
    fn an_adopted_file_frees_what_the_manifest_does_not_name() {
        let mut s = Space::new();
        let k = s.adopt_file(8 * K4, &[(4 * K4, K4), (0, K4)]).unwrap();
        assert_eq!(k, 0);
        assert_eq!(s.free_bytes(), 6 * K4);
        let p = s.allocate(3 * K4, K4).unwrap();
        assert_eq!((p.offset, p.fresh), (K4, false));
        assert_eq!(s.allocate(3 * K4, K4).unwrap().offset, 5 * K4);
        assert_eq!(s.adopt_file(8 * K4, &[(0, 2 * K4), (K4, K4)]), Err((K4, K4)));
        assert_eq!(s.adopt_file(8 * K4, &[(7 * K4, 2 * K4)]), Err((7 * K4, 2 * K4)));
    }
}
