//! A tensor reserved for a race ([`crate::io::race`]): placed before every drive's rate
//! is known, it reserves on each drive the span its lane may take, and its layout (one
//! piece per drive, in drive order) is known only once its first whole write's lanes have
//! met; a first use that is not such a write takes the equal split. Cutting the spans to
//! what each lane took is pure bookkeeping, done under the store's lock the next time the
//! tensor's place is looked at.

use std::sync::Arc;

use super::space::Piece;
use crate::io::Race;

/// A tensor's reservation while its layout is not known.
pub(super) struct Pending {
    /// The race its first whole write runs (its spans sized the reservation).
    pub race: Arc<Race>,
    /// Bytes per unit (the engines' block size).
    pub unit: u64,
    /// Bytes after the last whole unit of the tensor's own size (its last partial unit and
    /// the reservation's alignment): always the last drive's, past the race.
    pub rest: u64,
    /// Lane d's drive and reserved span, in lane order.
    pub spans: Vec<(usize, Piece)>,
    /// The write that runs the race has been queued.
    pub started: bool,
}

/// What a known layout makes of the spans.
pub(super) struct Cut {
    /// The tensor's pieces in tensor order (a drive whose lane took nothing has none).
    pub pieces: Vec<(usize, Piece)>,
    /// The spans' parts no lane kept, to be freed.
    pub freed: Vec<(usize, Piece)>,
}

impl Pending {
    /// The race for a tensor of `bytes` (reserved as `reserved`, its 4 KiB multiple) over
    /// `lanes` drives in units of `unit`: the race over its whole units, and each lane's
    /// span in bytes (the last one's with the rest); None when the tensor has fewer whole
    /// units than there are drives.
    pub fn plan(bytes: u64, reserved: u64, unit: u64, lanes: usize) -> Option<(Arc<Race>, Vec<u64>)> {
        let race = Race::new(bytes / unit, lanes)?;
        let rest = reserved - race.units() * unit;
        let lens = (0..lanes)
            .map(|d| {
                let (a, b) = race.span(d);
                (b - a) * unit + if d + 1 == lanes { rest } else { 0 }
            })
            .collect();
        Some((race, lens))
    }

    /// The reservation of `reserved` bytes over `spans` (from [`Pending::plan`]) for
    /// `race`, in units of `unit`; not started.
    pub fn new(race: Arc<Race>, unit: u64, reserved: u64, spans: Vec<(usize, Piece)>) -> Pending {
        Pending {
            rest: reserved - race.units() * unit,
            race,
            unit,
            spans,
            started: false,
        }
    }

    /// Each lane's drive and the bytes the equal split gives it: what the drive's load
    /// counts until the layout is known.
    pub fn even_loads(&self) -> Vec<(usize, u64)> {
        self.cut(&self.race.even())
            .pieces
            .into_iter()
            .map(|(d, pc)| (d, pc.len))
            .collect()
    }

    /// Bytes of lane `d`'s units `lo..hi`, with the rest for the last lane.
    fn bytes_of(&self, d: usize, lo: u64, hi: u64) -> u64 {
        (hi - lo) * self.unit + if d + 1 == self.spans.len() { self.rest } else { 0 }
    }

    /// Where lane `d`'s span starts in the tensor, and its bytes of whole units (the
    /// raced part; the last lane's span holds the rest after it).
    pub fn span_units(&self, d: usize) -> (u64, u64) {
        let (a, b) = self.race.span(d);
        (a * self.unit, (b - a) * self.unit)
    }

    /// Where the rest starts in the tensor (the end of its whole units).
    pub fn rest_at(&self) -> u64 {
        self.race.units() * self.unit
    }

    /// The units each lane keeps, once known: what the race's lanes took, or the equal
    /// split if no race was started; None while the race runs.
    pub fn layout(&self) -> Option<Vec<(u64, u64)>> {
        if self.started {
            self.race.taken()
        } else {
            Some(self.race.even())
        }
    }

    /// The spans cut to `taken` (each lane's units, within its span).
    pub fn cut(&self, taken: &[(u64, u64)]) -> Cut {
        let mut pieces = Vec::with_capacity(self.spans.len());
        let mut freed = Vec::new();
        for (d, (&(drive, span), &(lo, hi))) in self.spans.iter().zip(taken).enumerate() {
            let (a, _) = self.race.span(d);
            let before = (lo - a) * self.unit;
            let kept = self.bytes_of(d, lo, hi);
            let part = |offset: u64, len: u64| Piece {
                file: span.file,
                offset: span.offset + offset,
                len,
                fresh: span.fresh,
            };
            if before > 0 {
                freed.push((drive, part(0, before)));
            }
            if kept > 0 {
                pieces.push((drive, part(before, kept)));
            }
            let after = span.len - before - kept;
            if after > 0 {
                freed.push((drive, part(before + kept, after)));
            }
        }
        Cut { pieces, freed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn pending(bytes: u64, lanes: usize) -> Pending {
        let reserved = bytes.div_ceil(4096) * 4096;
        let (race, lens) = Pending::plan(bytes, reserved, MIB, lanes).expect("a race");
        let spans = lens
            .iter()
            .enumerate()
            .map(|(d, &len)| {
                (
                    d,
                    Piece {
                        file: 0,
                        offset: 100 * MIB * d as u64,
                        len,
                        fresh: true,
                    },
                )
            })
            .collect();
        Pending::new(race, MIB, reserved, spans)
    }

    #[test]
    fn two_drives_reserve_the_whole_tensor_each_and_keep_a_half_by_default() {
        let p = pending(10 * MIB + 5000, 2);
        assert_eq!(p.rest, 8192, "the last partial unit, 4 KiB-aligned");
        assert_eq!(p.spans[0].1.len, 10 * MIB);
        assert_eq!(p.spans[1].1.len, 10 * MIB + 8192);
        let cut = p.cut(&p.layout().expect("the equal split"));
        let lens: Vec<u64> = cut.pieces.iter().map(|(_, pc)| pc.len).collect();
        assert_eq!(lens, vec![5 * MIB, 5 * MIB + 8192]);
        // Drive 1 keeps the back of its span: the tensor's bytes 5 MiB.. sit at its
        // span's offset 5 MiB on.
        assert_eq!(cut.pieces[1].1.offset, 100 * MIB + 5 * MIB);
        let freed: u64 = cut.freed.iter().map(|(_, pc)| pc.len).sum();
        assert_eq!(freed, 10 * MIB);
    }

    #[test]
    fn a_cut_keeps_every_byte_once_and_frees_the_rest() {
        for lanes in 2..5 {
            for bytes in [37 * MIB + 4096, 37 * MIB, 40 * MIB - 1] {
                let p = pending(bytes, lanes);
                let units = p.race.units();
                // Layouts within the spans: the equal split, the lanes' starts pushed to
                // one side, and the last lane taking nothing.
                let even = p.race.even();
                let mut pushed = even.clone();
                let mid = pushed[0].1.saturating_sub(1).max(pushed[0].0);
                pushed[0].1 = mid;
                pushed[1].0 = mid;
                let mut layouts = vec![even, pushed];
                if lanes == 2 {
                    // The last lane took no unit: it still keeps the rest.
                    layouts.push(vec![(0, units), (units, units)]);
                }
                for taken in layouts {
                    let cut = p.cut(&taken);
                    let kept: u64 = cut.pieces.iter().map(|(_, pc)| pc.len).sum();
                    assert_eq!(kept, bytes.div_ceil(4096) * 4096);
                    let reserved: u64 = p.spans.iter().map(|(_, pc)| pc.len).sum();
                    let freed: u64 = cut.freed.iter().map(|(_, pc)| pc.len).sum();
                    assert_eq!(kept + freed, reserved);
                    assert_eq!(taken.last().map(|t| t.1), Some(units));
                    // The rest is the last drive's, at the end of its piece.
                    if p.rest > 0 {
                        let last = cut.pieces.last().expect("a piece");
                        assert_eq!(last.0, lanes - 1);
                    }
                }
            }
        }
    }
}
