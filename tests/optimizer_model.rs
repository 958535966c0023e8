//! A model-based test of the optimizer swapper: seeded random sequences of registrations,
//! gradient writes, steps in random orders with random hand-backs, discards, drops and
//! early ends, and calls that must be refused, run against the swapper and against a
//! small in-memory model. Every status must agree, and every tensor a visit shows must
//! hold exactly what the model says was last written.

mod common;

use std::collections::BTreeMap;

use swapper::optimizer::{OptimizerSettings, OptimizerSwapper, TensorKind, TensorSpec, Visit};
use swapper::{IoConfig, Status};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the files hold for one sub-group: two state tensors and the gradient.
#[derive(Clone)]
struct MGroup {
    state: [Vec<f32>; 2],
    grad: Vec<f32>,
    /// The gradient fragments written: (element offset, elements). A fragment may
    /// overlap earlier ones only by covering them whole.
    frags: Vec<(u64, u64)>,
}

/// A step under way in the model.
struct MStep {
    order: Vec<u32>,
    next: usize,
    /// Errors the step must report at its end (visits dropped).
    dropped: bool,
}

const MAX_GROUPS: u32 = 6;

fn specs(n: u64) -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("param", n, TensorKind::State),
        TensorSpec::new("exp_avg", n, TensorKind::State),
        TensorSpec::new("grad", n, TensorKind::Gradient),
    ]
}

fn status<T>(r: &swapper::Result<T>) -> Status {
    match r {
        Ok(_) => Status::Ok,
        Err(e) => e.status(),
    }
}

/// Checks that a visit shows what the model holds.
fn check_visit(v: &Visit<'_>, m: &MGroup, seq: usize) {
    let i = v.index();
    for k in 0..2 {
        assert!(
            v.tensor(k) == &m.state[k][..],
            "op {seq}: sub-group {i} tensor {k} differs from the model"
        );
    }
    assert!(
        v.tensor(2) == &m.grad[..],
        "op {seq}: sub-group {i} gradient differs from the model"
    );
}

fn run(seed: u64, ops: usize) {
    let mut rng = Rng(seed | 1);
    let dir = common::disk_dir();
    let sizes: Vec<u64> = (0..MAX_GROUPS).map(|_| 1 + rng.below(6000)).collect();
    let region = |n: u64| 3 * (n * 4).div_ceil(4096) * 4096;
    let largest = sizes.iter().map(|&n| region(n)).max().unwrap();
    let ring = largest + rng.below(3 * largest);
    let read_ahead = rng.below(4) as u32;
    let o = OptimizerSwapper::new(OptimizerSettings {
        nvme_paths: vec![dir.path().to_path_buf()],
        ring_bytes: ring,
        read_ahead,
        pin_memory: false,
        verify_checksums: rng.chance(50),
        io: IoConfig {
            block_size: 16 << 10,
            ..IoConfig::default()
        },
        ..OptimizerSettings::default()
    })
    .unwrap();
    let mut model: BTreeMap<u32, MGroup> = BTreeMap::new();
    let mut step: Option<MStep> = None;
    let mut out: Vec<Visit<'_>> = Vec::new();
    let mut stamp = 1.0f32;
    for seq in 0..ops {
        let pick = rng.below(100);
        match (&mut step, pick) {
            // Between steps.
            (None, 0..=14) => {
                let i = rng.below(u64::from(MAX_GROUPS) + 1) as u32;
                let r = o.register(i, &specs(sizes.get(i as usize).copied().unwrap_or(10)));
                let want = if model.contains_key(&i) {
                    Status::BadState
                } else {
                    Status::Ok
                };
                assert_eq!(status(&r), want, "op {seq}: register {i}: {r:?}");
                if r.is_ok() {
                    let n = sizes.get(i as usize).copied().unwrap_or(10) as usize;
                    model.insert(
                        i,
                        MGroup {
                            state: [vec![0.0; n], vec![0.0; n]],
                            grad: vec![0.0; n],
                            frags: Vec::new(),
                        },
                    );
                }
            }
            (None, 15..=34) => {
                let i = rng.below(u64::from(MAX_GROUPS) + 2) as u32;
                let n = model.get(&i).map_or(100, |m| m.grad.len() as u64);
                let off = rng.below(n);
                let spill = if rng.chance(5) { 3 } else { 0 };
                let len = 1 + rng.below(n - off + spill);
                stamp += 1.0;
                let data: Vec<f32> = (0..len).map(|k| stamp + k as f32 * 0.5).collect();
                let r = o.swap_out_gradients(i, 2, &[(off, &data)]);
                let end = off + len;
                let partly = |m: &MGroup| {
                    m.frags
                        .iter()
                        .any(|&(o, k)| o < end && off < o + k && !(off <= o && o + k <= end))
                };
                let want = match model.get(&i) {
                    None => Status::NotFound,
                    Some(_) if end > n => Status::InvalidArgument,
                    Some(m) if partly(m) => Status::InvalidArgument,
                    Some(_) => Status::Ok,
                };
                assert_eq!(status(&r), want, "op {seq}: gradients of {i}: {r:?}");
                if let (Ok(()), Some(m)) = (&r, model.get_mut(&i)) {
                    m.grad[off as usize..end as usize].copy_from_slice(&data);
                    m.frags.retain(|&(o, k)| o + k <= off || end <= o);
                    m.frags.push((off, len));
                }
            }
            (None, 35..=37) => {
                assert_eq!(status(&o.wait_gradients()), Status::Ok, "op {seq}");
            }
            (None, 38..=39) => {
                assert_eq!(status(&o.next_ready().map(|v| v.is_some())), Status::BadState);
                assert_eq!(status(&o.end_step()), Status::BadState);
            }
            (None, 40) => {
                o.purge().unwrap();
                model.clear();
            }
            (None, _) => {
                let mut order: Vec<u32> = model.keys().copied().filter(|_| rng.chance(80)).collect();
                for k in (1..order.len()).rev() {
                    order.swap(k, rng.below(k as u64 + 1) as usize);
                }
                if rng.chance(5) {
                    order.push(99);
                    assert_eq!(status(&o.begin_step(&order)), Status::NotFound, "op {seq}");
                    continue;
                }
                if rng.chance(5) && !order.is_empty() {
                    order.push(order[0]);
                    assert_eq!(status(&o.begin_step(&order)), Status::InvalidArgument, "op {seq}");
                    continue;
                }
                o.begin_step(&order).unwrap();
                step = Some(MStep {
                    order,
                    next: 0,
                    dropped: false,
                });
            }
            // During a step.
            (Some(s), 0..=44) => {
                let r = o.next_ready();
                match r {
                    Ok(Some(v)) => {
                        assert_eq!(v.index(), s.order[s.next], "op {seq}: the announced order");
                        s.next += 1;
                        check_visit(&v, &model[&v.index()], seq);
                        out.push(v);
                    }
                    Ok(None) => assert_eq!(s.next, s.order.len(), "op {seq}: none left too early"),
                    Err(e) => {
                        // Only a ring held by visits the caller keeps may refuse.
                        assert_eq!(e.status(), Status::NoBuffer, "op {seq}: {e}");
                        assert!(!out.is_empty(), "op {seq}: NoBuffer with nothing out: {e}");
                    }
                }
            }
            (Some(_), 45..=69) if !out.is_empty() => {
                let mut v = out.swap_remove(rng.below(out.len() as u64) as usize);
                let i = v.index();
                stamp += 1.0;
                for k in 0..2 {
                    for (e, x) in v.tensor_mut(k).iter_mut().enumerate() {
                        *x = stamp + (k * 7 + e) as f32;
                    }
                }
                let m = model.get_mut(&i).unwrap();
                m.state = [v.tensor(0).to_vec(), v.tensor(1).to_vec()];
                v.hand_back().unwrap();
            }
            (Some(s), 70..=79) if !out.is_empty() => {
                let mut v = out.swap_remove(rng.below(out.len() as u64) as usize);
                v.tensor_mut(0).fill(-1.0); // discarded: never seen again
                if rng.chance(50) {
                    v.discard().unwrap();
                } else {
                    drop(v);
                    s.dropped = true;
                }
            }
            (Some(_), 80..=84) => {
                // Refused during a step.
                assert_eq!(status(&o.begin_step(&[])), Status::BadState, "op {seq}");
                let g = [1.0f32];
                // The step is checked first: BadState even for an unknown sub-group.
                let r = o.swap_out_gradients(0, 2, &[(0, &g)]);
                assert_eq!(status(&r), Status::BadState, "op {seq}");
                // SAFETY: a sub-group number that is not out: no slices are in use.
                let r = unsafe { o.hand_back_index(MAX_GROUPS + 5) };
                assert_eq!(status(&r), Status::NotFound, "op {seq}");
            }
            (Some(s), _) => {
                let r = o.end_step();
                if !out.is_empty() {
                    assert_eq!(status(&r), Status::BadState, "op {seq}: end_step with visits out");
                    continue;
                }
                let incomplete = s.next < s.order.len();
                if incomplete || s.dropped {
                    let e = r.expect_err("an incomplete step is reported");
                    assert_eq!(e.status(), Status::BadState, "op {seq}: {e}");
                } else {
                    r.unwrap();
                }
                step = None;
            }
        }
    }
    // Wind down: hand back what is out, end the step, and read everything once more.
    for v in out.drain(..) {
        v.discard().unwrap();
    }
    if step.is_some() {
        let _ = o.end_step();
    }
    o.wait_gradients().unwrap();
    let all: Vec<u32> = model.keys().copied().collect();
    o.begin_step(&all).unwrap();
    while let Some(v) = o.next_ready().unwrap() {
        check_visit(&v, &model[&v.index()], ops);
        v.discard().unwrap();
    }
    o.end_step().unwrap();
    let stats = o.stats().unwrap();
    assert_eq!(stats.ring_in_use, 0, "{stats:?}");
    assert!(stats.ring_peak <= o.ring_bytes(), "{stats:?}");
    if read_ahead > 0 {
        assert!(stats.read_ahead_peak <= u64::from(read_ahead), "{stats:?}");
    }
}

#[test]
fn random_steps_agree_with_the_model() {
    for seed in 1..=12u64 {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 600);
    }
}
