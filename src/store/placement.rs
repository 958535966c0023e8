//! Which drive gets which bytes of a tensor: a pure function of the tensor's size, each
//! drive's weight (its share of the bandwidth) and the bytes each drive carries already.
//!
//! - A small tensor goes whole to one drive: the one whose load, with the tensor added,
//!   is lowest relative to its weight (so bytes per drive follow the weights).
//! - A tensor of at least two `SPLIT_UNIT`s (1 MiB) is cut into consecutive chunks, one per
//!   drive that gets a share, in drive order: each drive's share is its weight's share of
//!   the tensor, whatever the drives carry already, so that a transfer of this tensor
//!   alone keeps every drive busy for the same time (a split that let a lagging drive
//!   catch up would leave the others idle while one tensor moves: with one or a few
//!   tensors in flight, the time of each transfer is its slowest piece's). Bytes per
//!   drive still follow the weights: every split does, and the small tensors fill by
//!   load. Shares are whole `SPLIT_UNIT`s (the last chunk takes the tensor's remainder),
//!   so every chunk starts on a 1 MiB boundary of the tensor and reads and writes of it
//!   stay large.
//!
//! The weights come from the drives' measured rates ([`weights_from_rates`]): bounded,
//! in coarse steps and with a dead band, so that measurement noise on equal drives does
//! not move bytes, and a drive twice as fast takes twice the bytes.

/// The unit a tensor is split in, and the alignment of its chunks: 1 MiB.
pub(crate) const SPLIT_UNIT: u64 = 1 << 20;

/// The least weight a measured drive gets (relative to the fastest's 1): even a very slow
/// drive keeps taking a share, so its rate stays measured.
pub(crate) const MIN_WEIGHT: f64 = 1.0 / 8.0;
/// Weights are multiples of this step.
pub(crate) const WEIGHT_STEP: f64 = 1.0 / 16.0;
/// A drive at least this fraction of the fastest's rate weighs as much as the fastest.
/// Measured rates of equal drives differ by up to 20% (four equal drives throttled by
/// blkio, while the first writes allocate: 258-322 MB/s), and weights that follow such
/// noise split tensors unequally, which costs more than it gains; a drive truly this
/// much slower, split equally, still gives 2 x 0.75 = 1.5 of the ideal 1.75 (0.86).
pub(crate) const SAME_RATE: f64 = 0.75;

/// Each drive's weight from its measured rate (bytes per second of busy time; None when
/// not measured yet). Until every drive is measured, or if a rate is not a positive
/// number, all weigh 1. Otherwise a drive weighs its rate over the fastest drive's,
/// counted as 1 from `SAME_RATE` (0.75) up, at least `MIN_WEIGHT` (1/8), rounded to a multiple of
/// `WEIGHT_STEP` (1/16). A pure function: the same rates give the same weights.
pub fn weights_from_rates(rates: &[Option<f64>]) -> Vec<f64> {
    let measured: Option<Vec<f64>> = rates
        .iter()
        .map(|r| r.filter(|&r| r.is_finite() && r > 0.0))
        .collect();
    let Some(rates) = measured else {
        return vec![1.0; rates.len()];
    };
    let fastest = rates.iter().copied().fold(0.0, f64::max);
    rates
        .iter()
        .map(|&r| {
            let w = r / fastest;
            if w >= SAME_RATE {
                1.0
            } else {
                ((w / WEIGHT_STEP).round() * WEIGHT_STEP).clamp(MIN_WEIGHT, 1.0)
            }
        })
        .collect()
}

/// One chunk of a tensor: `len` bytes on drive `drive`, following the previous chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The drive's index.
    pub drive: usize,
    /// Bytes.
    pub len: u64,
}

/// Where the `bytes` of a tensor go. `weights[d]` is drive d's weight (> 0 to take
/// bytes; a drive of weight 0 or not finite gets none unless every drive has such a
/// weight, when all count as 1); `loads[d]` the bytes it carries already. Returns the
/// chunks in tensor order; their lengths add up to `bytes` (nothing for 0 bytes).
pub fn plan(bytes: u64, weights: &[f64], loads: &[u64]) -> Vec<Chunk> {
    let n = weights.len().min(loads.len());
    if bytes == 0 || n == 0 {
        return Vec::new();
    }
    let usable = |w: f64| w.is_finite() && w > 0.0;
    let w: Vec<f64> = if weights[..n].iter().any(|&w| usable(w)) {
        weights[..n]
            .iter()
            .map(|&w| if usable(w) { w } else { 0.0 })
            .collect()
    } else {
        vec![1.0; n]
    };
    let takers: Vec<usize> = (0..n).filter(|&d| w[d] > 0.0).collect();
    let whole = |takers: &[usize]| -> Vec<Chunk> {
        let best = takers
            .iter()
            .copied()
            .min_by(|&a, &b| {
                let la = (loads[a] as f64 + bytes as f64) / w[a];
                let lb = (loads[b] as f64 + bytes as f64) / w[b];
                la.total_cmp(&lb)
            })
            .unwrap_or(0);
        vec![Chunk {
            drive: best,
            len: bytes,
        }]
    };
    if takers.len() == 1 || bytes < 2 * SPLIT_UNIT {
        return whole(&takers);
    }
    // Each drive's share by weight, in units.
    let units = bytes / SPLIT_UNIT;
    let sum_w: f64 = takers.iter().map(|&d| w[d]).sum();
    let ideal: Vec<f64> = (0..n)
        .map(|d| {
            if w[d] > 0.0 {
                units as f64 * w[d] / sum_w
            } else {
                0.0
            }
        })
        .collect();
    let mut share: Vec<u64> = ideal.iter().map(|&x| (x.floor() as u64).min(units)).collect();
    let mut given: u64 = share.iter().sum();
    while given > units {
        // Float rounding can overshoot by a unit: take it from the largest share.
        let d = (0..n).max_by_key(|&d| share[d]).unwrap_or(0);
        share[d] -= 1;
        given -= 1;
    }
    // The units the rounding left go to the drives that carry least for their weight
    // (so that over many tensors the rounding evens out), then to the largest losses.
    let mut by_loss: Vec<usize> = (0..n).filter(|&d| w[d] > 0.0).collect();
    by_loss.sort_by(|&a, &b| {
        let (ca, cb) = (loads[a] as f64 / w[a], loads[b] as f64 / w[b]);
        let la = ideal[a] - share[a] as f64;
        let lb = ideal[b] - share[b] as f64;
        ca.total_cmp(&cb).then(lb.total_cmp(&la)).then(a.cmp(&b))
    });
    for &d in by_loss.iter().cycle().take((units - given) as usize) {
        share[d] += 1;
    }
    let mut chunks: Vec<Chunk> = (0..n)
        .filter(|&d| share[d] > 0)
        .map(|d| Chunk {
            drive: d,
            len: share[d] * SPLIT_UNIT,
        })
        .collect();
    let rest = bytes % SPLIT_UNIT;
    match chunks.last_mut() {
        Some(c) => c.len += rest,
        None => return whole(&takers),
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn total(c: &[Chunk]) -> u64 {
        c.iter().map(|c| c.len).sum()
    }

    #[test]
    fn small_tensors_go_whole_to_the_least_loaded_drive_by_weight() {
        assert_eq!(
            plan(4096, &[1.0, 1.0], &[0, 0]),
            vec![Chunk { drive: 0, len: 4096 }]
        );
        assert_eq!(
            plan(4096, &[1.0, 1.0], &[8192, 0]),
            vec![Chunk { drive: 1, len: 4096 }]
        );
        // Drive 1 weighs twice as much: it takes bytes until it carries twice drive 0's.
        assert_eq!(
            plan(MIB, &[1.0, 2.0], &[MIB, MIB]),
            vec![Chunk { drive: 1, len: MIB }]
        );
        assert_eq!(
            plan(MIB, &[1.0, 2.0], &[MIB, 3 * MIB]),
            vec![Chunk { drive: 0, len: MIB }]
        );
        assert!(plan(0, &[1.0], &[0]).is_empty());
        assert!(plan(10, &[], &[]).is_empty());
    }

    #[test]
    fn many_small_tensors_spread_bytes_by_weight() {
        let weights = [1.0, 1.0, 2.0, 0.5];
        let mut loads = [0u64; 4];
        for k in 0..4000u64 {
            let bytes = 4096 * (1 + k % 16);
            let c = plan(bytes, &weights, &loads);
            assert_eq!(c.len(), 1);
            loads[c[0].drive] += bytes;
        }
        let sum: u64 = loads.iter().sum();
        for (d, &w) in weights.iter().enumerate() {
            let want = sum as f64 * w / 4.5;
            let got = loads[d] as f64;
            assert!(
                (got - want).abs() / want < 0.01,
                "drive {d}: {got} bytes, want {want}"
            );
        }
    }

    #[test]
    fn a_large_tensor_is_split_by_weight_in_whole_mebibytes() {
        let c = plan(1 << 30, &[1.0; 4], &[0; 4]);
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|c| c.len == 256 * MIB), "{c:?}");
        assert_eq!(c.iter().map(|c| c.drive).collect::<Vec<_>>(), [0, 1, 2, 3]);
        // One drive at half rate gets half the bytes of the others.
        let c = plan(700 * MIB, &[1.0, 1.0, 0.5], &[0; 3]);
        assert_eq!(c.iter().map(|c| c.len / MIB).collect::<Vec<_>>(), [280, 280, 140]);
        // A remainder under a unit goes to the last chunk; chunks start on whole units.
        let c = plan(32 * MIB + 4096, &[1.0, 1.0], &[0, 0]);
        assert_eq!(
            c,
            vec![
                Chunk {
                    drive: 0,
                    len: 16 * MIB
                },
                Chunk {
                    drive: 1,
                    len: 16 * MIB + 4096
                }
            ]
        );
        // What the drives carry already does not bend a split: each tensor by weight, so
        // that its own transfer keeps every drive busy equally long.
        let c = plan(8 * MIB, &[1.0, 1.0], &[0, 6 * MIB]);
        assert_eq!(c.iter().map(|c| c.len / MIB).collect::<Vec<_>>(), [4, 4]);
        let c = plan(9 * MIB, &[1.0, 0.5], &[64 * MIB, 0]);
        assert_eq!(c.iter().map(|c| c.len / MIB).collect::<Vec<_>>(), [6, 3]);
    }

    #[test]
    fn every_plan_covers_the_tensor_once_on_drives_that_take_bytes() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5000 {
            let n = 1 + (next() % 6) as usize;
            let weights: Vec<f64> = (0..n)
                .map(|_| match next() % 5 {
                    0 => 0.0,
                    k => k as f64 * 0.5,
                })
                .collect();
            let loads: Vec<u64> = (0..n).map(|_| next() % (64 * MIB)).collect();
            let bytes = 4096 * (next() % 40_000);
            let c = plan(bytes, &weights, &loads);
            assert_eq!(total(&c), bytes, "{weights:?} {loads:?} {bytes}");
            let mut seen = vec![false; n];
            for ch in &c {
                assert!(ch.len > 0);
                assert!(!seen[ch.drive], "one chunk per drive");
                seen[ch.drive] = true;
                if weights.iter().any(|&w| w > 0.0) {
                    assert!(weights[ch.drive] > 0.0, "a drive of weight 0 takes nothing");
                }
            }
            for ch in &c[..c.len() - usize::from(!c.is_empty())] {
                assert_eq!(ch.len % SPLIT_UNIT, 0, "chunks start on whole units");
            }
        }
    }

    #[test]
    fn weights_follow_measured_rates_bounded_and_in_steps() {
        let m = 1e6;
        // Not every drive measured yet, or a rate that is not a positive number: equal.
        assert_eq!(weights_from_rates(&[Some(100.0 * m), None]), [1.0, 1.0]);
        assert_eq!(weights_from_rates(&[Some(100.0 * m), Some(0.0)]), [1.0, 1.0]);
        assert_eq!(weights_from_rates(&[Some(f64::NAN), Some(m)]), [1.0, 1.0]);
        assert!(weights_from_rates(&[]).is_empty());
        // One drive at half the rate of the other: half the weight.
        assert_eq!(
            weights_from_rates(&[Some(200.0 * m), Some(100.0 * m)]),
            [1.0, 0.5]
        );
        assert_eq!(weights_from_rates(&[Some(98.0 * m), Some(203.0 * m)]), [0.5, 1.0]);
        // Noise between equal drives (within 25%) moves nothing.
        assert_eq!(
            weights_from_rates(&[Some(200.0 * m), Some(155.0 * m), Some(195.0 * m)]),
            [1.0, 1.0, 1.0]
        );
        // Steps of 1/16, and a floor of 1/8 for a drive that barely moves.
        assert_eq!(
            weights_from_rates(&[Some(160.0 * m), Some(100.0 * m)]),
            [1.0, 0.625]
        );
        assert_eq!(
            weights_from_rates(&[Some(1000.0 * m), Some(m)]),
            [1.0, MIN_WEIGHT]
        );
        let w = weights_from_rates(&[Some(300.0 * m), Some(211.0 * m)]);
        assert_eq!(w, [1.0, 0.6875]);
    }

    #[test]
    fn a_half_rate_drive_takes_a_third_of_a_large_tensor_and_of_many_small_ones() {
        let w = weights_from_rates(&[Some(200e6), Some(100e6)]);
        let c = plan(1 << 30, &w, &[0, 0]);
        assert_eq!(
            c.iter().map(|c| c.len / MIB).collect::<Vec<_>>(),
            [683, 341],
            "the ideal byte split of 1 GiB is 2:1"
        );
        let mut loads = [0u64; 2];
        for _ in 0..300 {
            for c in plan(32 * MIB, &w, &loads) {
                loads[c.drive] += c.len;
            }
        }
        let share = loads[1] as f64 / (loads[0] + loads[1]) as f64;
        assert!((share - 1.0 / 3.0).abs() < 0.01, "{loads:?}");
    }

    #[test]
    fn weights_all_zero_count_as_equal() {
        let c = plan(4 * MIB, &[0.0, f64::NAN], &[0, 0]);
        assert_eq!(total(&c), 4 * MIB);
        assert_eq!(c.len(), 2);
    }
}
