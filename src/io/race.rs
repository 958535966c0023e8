//! One write shared by several engines that split it by their real speed: a *race*.
//!
//! A tensor written across several drives whose rates are not known yet cannot be split
//! by them in advance; split equally, a drive at half the others' rate holds the whole
//! write up (two drives, one at half rate: 0.67 of what the right split gives). In a race
//! the tensor's `units` (requests of `block_size` bytes) are claimed one at a time by the
//! drives' engines as their requests finish, so that each drive takes what its speed
//! gives it; and the units each drive took still form one contiguous range of the
//! tensor, in drive order, so the tensor's layout stays one piece per drive:
//!
//! ```text
//!  units 0 ──────────────────────────────────────────────────────────────── units
//!  lane 0 ──▶ · · · · ◀── lane 1 ──▶ · · · · ◀── lane 2 ──▶ · · · · ◀── lane 3
//!  start 0          start c1                start c2               start units
//! ```
//! Lane 0 (the first drive) claims from the tensor's start forwards, the last lane from
//! its end backwards, and each lane between starts at the middle of its equal share and
//! claims alternately backwards and forwards. A gap between two neighbouring lanes closes
//! when they meet; a lane whose gaps have both closed is done. With equal rates the
//! lanes meet at the equal split (lane 0 runs at the rate r towards lane 1, which comes
//! back at r/2 from 3/2 of a share: they meet at one share); a slower lane's neighbours
//! take more of the gaps beside it. Each lane may take units only between its
//! neighbours' starts ([`Race::span`]), so its drive reserves that much and gives back
//! what it did not take ([`Race::taken`]); a lane that never claims (its engine refused
//! the operation) is covered by its neighbours.
//!
//! Claims happen in the engines' queues (`Shared::claim`), one lock each, under
//! the race's own mutex; nothing here waits or calls the file system.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::op::Op;

/// The claims so far.
struct Lanes {
    /// Lane d has claimed units `lo[d]..hi[d]`.
    lo: Vec<u64>,
    hi: Vec<u64>,
    /// Where each lane may claim: `span[d].0..span[d].1`.
    span: Vec<(u64, u64)>,
    /// A middle lane's next claim is backwards (true) or forwards.
    back_next: Vec<bool>,
    /// The lane's gaps have both closed (its unclaimed requests are finished).
    done: Vec<bool>,
    /// Requests each lane has claimed and not finished.
    outstanding: Vec<u64>,
    /// Each lane's operation, once its engine has it.
    ops: Vec<Option<Weak<Op>>>,
}

impl Lanes {
    fn n(&self) -> usize {
        self.lo.len()
    }

    /// Whether the gap between lane `d` and lane `d + 1` still has units.
    fn gap_open(&self, d: usize) -> bool {
        d + 1 < self.n() && self.hi[d] < self.lo[d + 1]
    }

    fn is_done(&self, d: usize) -> bool {
        !(self.gap_open(d) || d > 0 && self.gap_open(d - 1))
    }

    /// The requests of lane `d`'s span it did not claim.
    fn unclaimed(&self, d: usize) -> usize {
        ((self.span[d].1 - self.span[d].0) - (self.hi[d] - self.lo[d])) as usize
    }

    /// Marks lane `d` done if it is, once: its operation (if it has one yet) and the
    /// requests it never claimed, which the caller finishes.
    fn settle(&mut self, d: usize) -> Option<(Arc<Op>, usize)> {
        if self.done[d] || !self.is_done(d) {
            return None;
        }
        self.done[d] = true;
        let op = self.ops[d].as_ref()?.upgrade()?;
        Some((op, self.unclaimed(d)))
    }
}

/// A claim's outcome for the claiming lane.
pub(crate) struct Claim {
    /// The request index (from the lane's span start); None when nothing was left, or
    /// (the lane not done) when the lane has its share of what is left in flight already.
    pub(crate) index: Option<usize>,
    /// The lane is done: its operation leaves the queue.
    pub(crate) lane_done: bool,
}

/// A tensor's units raced for by several lanes (see the module doc).
pub struct Race {
    units: u64,
    lanes: Mutex<Lanes>,
}

impl Race {
    /// A race of `lanes` lanes for `units` units, nothing claimed yet; None unless there
    /// are at least two lanes and as many units as lanes.
    pub fn new(units: u64, lanes: usize) -> Option<Arc<Race>> {
        let n = lanes;
        if n < 2 || units < n as u64 {
            return None;
        }
        // Lane d starts at the middle of its equal share; the first at 0, the last at the end.
        let start = |d: usize| -> u64 {
            if d == 0 {
                0
            } else if d + 1 == n {
                units
            } else {
                units * (2 * d as u64 + 1) / (2 * n as u64)
            }
        };
        let span = (0..n)
            .map(|d| {
                let lo = if d == 0 { 0 } else { start(d - 1) };
                let hi = if d + 1 == n { units } else { start(d + 1) };
                (lo, hi)
            })
            .collect();
        let starts: Vec<u64> = (0..n).map(start).collect();
        Some(Arc::new(Race {
            units,
            lanes: Mutex::new(Lanes {
                lo: starts.clone(),
                hi: starts,
                span,
                back_next: vec![true; n],
                done: vec![false; n],
                outstanding: vec![0; n],
                ops: vec![None; n],
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many units.
    pub fn units(&self) -> u64 {
        self.units
    }

    /// How many lanes.
    pub fn lanes(&self) -> usize {
        self.lock().n()
    }

    /// The units lane `d` may take (between its neighbours' starts): what its drive
    /// reserves. Panics on a lane out of range (`d >= lanes()`).
    pub fn span(&self, d: usize) -> (u64, u64) {
        self.lock().span[d]
    }

    /// The units each lane took, once every unit is claimed (None before): ranges in lane
    /// order that cover `0..units` without overlap (a lane that took nothing has an empty
    /// range).
    pub fn taken(&self) -> Option<Vec<(u64, u64)>> {
        let l = self.lock();
        let met = (0..l.n()).all(|d| !l.gap_open(d));
        met.then(|| l.lo.iter().copied().zip(l.hi.iter().copied()).collect())
    }

    /// The equal split within the spans: lane d takes units `units * d / n` to
    /// `units * (d + 1) / n` (what the lanes meet at with equal rates), for a tensor whose
    /// reservation is used before any race was run on it.
    pub fn even(&self) -> Vec<(u64, u64)> {
        let n = self.lanes() as u64;
        (0..n)
            .map(|d| (self.units * d / n, self.units * (d + 1) / n))
            .collect()
    }

    /// Lane `d`'s claimed request indices (from its span's start), once it is done.
    pub(crate) fn lane_taken(&self, d: usize) -> Option<(usize, usize)> {
        let l = self.lock();
        l.done[d].then(|| ((l.lo[d] - l.span[d].0) as usize, (l.hi[d] - l.span[d].0) as usize))
    }

    /// Gives lane `d` its operation. If the lane is done already (its neighbours took its
    /// units), the operation's requests are all finished here: returns true, and the
    /// operation need not be queued.
    pub(crate) fn register(&self, d: usize, op: &Arc<Op>) -> bool {
        let finish = {
            let mut l = self.lock();
            l.ops[d] = Some(Arc::downgrade(op));
            if l.done[d] {
                // Done before it had an operation: nothing was claimed for it.
                Some(l.unclaimed(d))
            } else {
                l.settle(d).map(|(_, n)| n)
            }
        };
        match finish {
            Some(n) => {
                op.finish_requests(n);
                true
            }
            None => false,
        }
    }

    /// Claims lane `d`'s next unit. Lanes that this claim made done (the claimer and its
    /// neighbours) have their unclaimed requests finished.
    ///
    /// A lane may have at most its share of the units left (their number over the lanes',
    /// rounded up) claimed and not finished: otherwise the first engine to look would
    /// claim as many units as it has free slots, before the others had their operations,
    /// and a tensor of a few dozen units would go to one drive whole; and at the end a
    /// drive could hold the last units in its queue while the others idle. Such a lane
    /// gets no unit now (`index` None, not done) and its engine goes on with other
    /// operations; it has requests in flight, whose ends bring its workers back.
    pub(crate) fn claim(&self, d: usize) -> Claim {
        let mut finish = Vec::new();
        let claim = {
            let mut l = self.lock();
            let left: u64 = (0..l.n() - 1).map(|g| l.lo[g + 1].saturating_sub(l.hi[g])).sum();
            if left > 0 && l.outstanding[d] >= left.div_ceil(l.n() as u64) {
                return Claim {
                    index: None,
                    lane_done: false,
                };
            }
            let back = d > 0 && l.gap_open(d - 1);
            let fwd = l.gap_open(d);
            let backwards = match (back, fwd) {
                (true, true) => {
                    let b = l.back_next[d];
                    l.back_next[d] = !b;
                    Some(b)
                }
                (true, false) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            };
            let index = backwards.map(|b| {
                let unit = if b {
                    l.lo[d] -= 1;
                    l.lo[d]
                } else {
                    l.hi[d] += 1;
                    l.hi[d] - 1
                };
                (unit - l.span[d].0) as usize
            });
            if index.is_some() {
                l.outstanding[d] += 1;
            }
            for e in [d.checked_sub(1), Some(d), Some(d + 1)].into_iter().flatten() {
                if e < l.n() {
                    finish.extend(l.settle(e));
                }
            }
            Claim {
                index,
                lane_done: l.done[d],
            }
        };
        for (op, n) in finish {
            op.finish_requests(n);
        }
        claim
    }
}

impl Race {
    /// One of lane `d`'s claimed requests has finished.
    pub(crate) fn release(&self, d: usize) {
        let mut l = self.lock();
        l.outstanding[d] = l.outstanding[d].saturating_sub(1);
    }
}

/// What an operation holds of its race: the race and its lane.
pub(crate) struct Lane {
    pub(crate) race: Arc<Race>,
    pub(crate) index: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a race with lanes claiming in proportion to `rates` (units per round, in
    /// turn); returns what each took.
    fn run(units: u64, rates: &[u32]) -> Vec<(u64, u64)> {
        let race = Race::new(units, rates.len()).expect("a race");
        let mut claimed = vec![Vec::new(); rates.len()];
        'outer: loop {
            let mut any = false;
            for (d, &r) in rates.iter().enumerate() {
                for _ in 0..r {
                    let c = race.claim(d);
                    if let Some(i) = c.index {
                        claimed[d].push(race.span(d).0 + i as u64);
                        race.release(d);
                        any = true;
                    }
                }
            }
            if !any {
                break 'outer;
            }
        }
        let taken = race.taken().expect("every unit claimed");
        // Every unit exactly once, each lane's claims are its taken range.
        let mut all: Vec<u64> = claimed.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..units).collect::<Vec<_>>());
        for (d, c) in claimed.iter().enumerate() {
            let (lo, hi) = taken[d];
            let (a, b) = race.span(d);
            assert!(
                a <= lo && lo <= hi && hi <= b,
                "lane {d}: {lo}..{hi} outside {a}..{b}"
            );
            assert_eq!(c.len() as u64, hi - lo);
            assert!(c.iter().all(|u| (lo..hi).contains(u)));
        }
        for w in taken.windows(2) {
            assert_eq!(w[0].1, w[1].0, "ranges follow each other: {taken:?}");
        }
        taken
    }

    fn shares(taken: &[(u64, u64)]) -> Vec<u64> {
        taken.iter().map(|(a, b)| b - a).collect()
    }

    #[test]
    fn equal_lanes_meet_at_the_equal_split() {
        assert_eq!(shares(&run(1024, &[1, 1])), vec![512, 512]);
        let s = shares(&run(1024, &[2, 2, 2, 2]));
        for x in s {
            assert!((255..=257).contains(&x), "{x}");
        }
    }

    #[test]
    fn a_lane_takes_units_in_proportion_to_its_speed() {
        // Two drives, the second at half the rate: 2/3 and 1/3.
        let s = shares(&run(1024, &[2, 1]));
        assert!((682..=684).contains(&s[0]), "{s:?}");
        // Three, the middle one slow: its neighbours take over its gaps.
        let s = shares(&run(900, &[2, 1, 2]));
        assert!(s[1] < 250 && s[0] > 300 && s[2] > 300, "{s:?}");
    }

    #[test]
    fn a_lane_that_never_claims_is_covered_by_its_neighbours() {
        for silent in 0..3 {
            let rates: Vec<u32> = (0..3).map(|d| u32::from(d != silent)).collect();
            let s = shares(&run(300, &rates));
            assert_eq!(s[silent], 0, "{s:?}");
        }
    }

    #[test]
    fn the_even_split_lies_within_the_spans() {
        for n in 2..7 {
            for units in n as u64..200 {
                let race = Race::new(units, n).expect("a race");
                let even = race.even();
                for (d, &(lo, hi)) in even.iter().enumerate() {
                    let (a, b) = race.span(d);
                    assert!(
                        a <= lo && lo <= hi && hi <= b,
                        "{n} lanes, {units} units, lane {d}"
                    );
                }
                assert_eq!(even[n - 1].1, units);
            }
        }
        assert!(Race::new(1, 2).is_none() && Race::new(10, 1).is_none());
    }

    #[test]
    fn a_lane_holds_at_most_its_share_of_what_is_left_in_flight() {
        // One engine with many free slots looks first: it gets half of a small tensor, not
        // all of it, and the other lane's first claim still finds units.
        let race = Race::new(8, 2).expect("a race");
        let mut first = Vec::new();
        while let Some(i) = race.claim(0).index {
            first.push(i);
        }
        // 8 left: up to 4 in flight, but 5 left after 3 claims: up to 3.
        assert_eq!(first, vec![0, 1, 2]);
        assert!(!race.claim(0).lane_done);
        assert_eq!(race.claim(1).index, Some(7));
        assert_eq!(race.claim(1).index, Some(6));
        assert_eq!(race.claim(1).index, None);
        // Finished requests let a lane claim again.
        race.release(0);
        race.release(0);
        assert_eq!(race.claim(0).index, Some(3));
    }

    #[test]
    fn small_races_still_cover_every_unit() {
        for n in 2..6 {
            for units in n as u64..(3 * n as u64 + 2) {
                run(units, &vec![1; n]);
                run(units, &(1..=n as u32).collect::<Vec<_>>());
            }
        }
    }
}
