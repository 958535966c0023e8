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
    /// Bytes per unit (the engines' block size); the tensor's last unit may be shorter.
    pub unit: u64,
    /// The tensor's reserved bytes.
    pub bytes: u64,
    /// Lane d's drive and reserved span, in lane order.
    pub spans: Vec<(usize, Piece)>,
    /// Bytes counted in each lane's drive's load until the layout is known (the equal
    /// split's).
    pub counted: Vec<u64>,
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
    /// Reserves for `bytes` over the drives `lanes` (lane d on drive `lanes[d]`), in units
    /// of `unit`: None when the tensor has fewer units than drives.
    pub fn plan(bytes: u64, unit: u64, lanes: usize) -> Option<(Arc<Race>, Vec<u64>)> {
        let race = Race::new(bytes.div_ceil(unit), lanes)?;
        let lens = (0..lanes)
            .map(|d| {
                let (a, b) = race.span(d);
                Self::bytes_of(bytes, unit, a, b)
            })
            .collect();
        Some((race, lens))
    }

    /// Bytes of units `a..b` of a tensor of `bytes`.
    fn bytes_of(bytes: u64, unit: u64, a: u64, b: u64) -> u64 {
        (b * unit).min(bytes).saturating_sub(a * unit)
    }

    /// Where lane `d`'s span starts in the tensor, and its bytes.
    pub fn span_bytes(&self, d: usize) -> (u64, u64) {
        let (a, b) = self.race.span(d);
        (a * self.unit, Self::bytes_of(self.bytes, self.unit, a, b))
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
            let before = Self::bytes_of(self.bytes, self.unit, a, lo);
            let kept = Self::bytes_of(self.bytes, self.unit, lo, hi);
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
        let (race, lens) = Pending::plan(bytes, MIB, lanes).expect("a race");
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
        Pending {
            race,
            unit: MIB,
            bytes,
            spans,
            counted: vec![0; lanes],
            started: false,
        }
    }

    #[test]
    fn two_drives_reserve_the_whole_tensor_each_and_keep_a_half_by_default() {
        let p = pending(10 * MIB + 8192, 2);
        assert_eq!(p.spans[0].1.len, 10 * MIB + 8192);
        assert_eq!(p.spans[1].1.len, 10 * MIB + 8192);
        let cut = p.cut(&p.layout().expect("the equal split"));
        let lens: Vec<u64> = cut.pieces.iter().map(|(_, pc)| pc.len).collect();
        assert_eq!(lens, vec![5 * MIB, 5 * MIB + 8192]);
        // Drive 1 keeps the back of its span: the tensor's bytes 5 MiB.. sit at its
        // span's offset 5 MiB on.
        assert_eq!(cut.pieces[1].1.offset, 100 * MIB + 5 * MIB);
        let freed: u64 = cut.freed.iter().map(|(_, pc)| pc.len).sum();
        assert_eq!(freed, 10 * MIB + 8192);
    }

    #[test]
    fn a_cut_keeps_every_byte_once_and_frees_the_rest() {
        for lanes in 2..5 {
            let bytes = 37 * MIB + 4096;
            let p = pending(bytes, lanes);
            let units = p.race.units();
            // Any layout within the spans: here the lanes' starts pushed to one side.
            let mut taken = p.race.even();
            let mid = taken[0].1.saturating_sub(1).max(taken[0].0);
            taken[0].1 = mid;
            taken[1].0 = mid;
            let cut = p.cut(&taken);
            let kept: u64 = cut.pieces.iter().map(|(_, pc)| pc.len).sum();
            assert_eq!(kept, bytes);
            let reserved: u64 = p.spans.iter().map(|(_, pc)| pc.len).sum();
            let freed: u64 = cut.freed.iter().map(|(_, pc)| pc.len).sum();
            assert_eq!(kept + freed, reserved);
            assert_eq!(taken.last().map(|t| t.1), Some(units));
        }
    }
}
