//! Crash consistency of the optimizer-state swapper with real kills (issue 20), as
//! `resume_kills.rs` for the parameter swapper and on the same harness
//! (`common::kill_harness`): a child process adopts the rank folders, registers the
//! sub-groups again, and runs steps until it is SIGKILLed after a random 1 to 50 ms. Each
//! step visits a random subset of the sub-groups in a random order, checks what it reads,
//! writes in place in the ring a pattern of (sub-group, tensor, step) into some of the
//! state tensors (or discards the visit), hands back, and ends with `end_step`, which
//! flushes (`flush_at_end_step`); now and then a backward pass writes a gradient fragment
//! before the step, and an explicit `flush` follows it. The child logs each flush's
//! generation and promise (which step's pattern each state tensor holds) before it and
//! after it returned. After each kill this process adopts the folders, registers the same
//! sub-groups, visits them all and checks every byte of every state tensor against what
//! the last completed flush promised (or the flush under way at the kill, if that is the
//! generation found), and that gradients read as zeros (flushes do not record them).
//! 100 kills on two loop-mounted ext4 drives, 100 on two XFS drives; each child starts
//! from the folder the previous adoption left.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::kill_harness::{kills_on, Child, Flush, Log, Rng};
use swapper::optimizer::{OptimizerSettings, OptimizerSwapper, TensorKind, TensorSpec};
use swapper::IoConfig;

/// Elements of each tensor of sub-group i.
const SIZES: [u64; 5] = [1000, 8192, 30_000, 70_000, 4097];
/// The state tensors of every sub-group (tensors 0..3); tensor 3 is the gradient.
const STATE: [&str; 3] = ["param", "exp_avg", "exp_avg_sq"];
const GRAD: usize = 3;
const KILLS_PER_FS: usize = 100;

/// (sub-group, state tensor) -> the step whose pattern it holds (absent: never written,
/// zeros).
type Promise = BTreeMap<(u32, usize), u64>;

fn settings(paths: &[PathBuf], flush_at_end_step: bool) -> OptimizerSettings {
    OptimizerSettings {
        nvme_paths: paths.to_vec(),
        ring_bytes: 4 << 20,
        pin_memory: false,
        verify_checksums: true,
        io: IoConfig {
            block_size: 256 << 10,
            ..IoConfig::default()
        },
        adopt: true,
        flush_at_end_step,
        ..OptimizerSettings::default()
    }
}

fn specs(n: u64) -> Vec<TensorSpec> {
    let mut v: Vec<TensorSpec> = STATE
        .iter()
        .map(|name| TensorSpec::new(name, n, TensorKind::State))
        .collect();
    v.push(TensorSpec::new("grad", n, TensorKind::Gradient));
    v
}

fn register_all(o: &OptimizerSwapper) -> swapper::Result<()> {
    for (i, &n) in SIZES.iter().enumerate() {
        o.register(i as u32, &specs(n))?;
    }
    Ok(())
}

/// The bits of element `e` of tensor `k` of sub-group `i` after step `step` wrote it (0:
/// never written). Exponent's top bit clear: never a NaN, so the bits survive as f32.
fn word(i: u32, k: usize, step: u64, e: usize) -> u32 {
    if step == 0 {
        return 0;
    }
    let mut x = step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((i as u64) << 40 | (k as u64) << 32);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    ((x as u32).wrapping_add((e as u32).wrapping_mul(0x9E37_79B1))) & 0x3FFF_FFFF
}

fn fill(t: &mut [f32], i: u32, k: usize, step: u64) {
    for (e, x) in t.iter_mut().enumerate() {
        *x = f32::from_bits(word(i, k, step, e));
    }
}

/// The first element of `t` that is not step `step`'s.
fn mismatch(t: &[f32], i: u32, k: usize, step: u64) -> Option<usize> {
    t.iter()
        .enumerate()
        .position(|(e, x)| x.to_bits() != word(i, k, step, e))
}

fn encode(p: &Promise) -> String {
    p.iter()
        .map(|(&(i, k), s)| format!("{i}.{k}:{s}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode(s: &str) -> Promise {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            let (ik, step) = x.split_once(':').unwrap();
            let (i, k) = ik.split_once('.').unwrap();
            ((i.parse().unwrap(), k.parse().unwrap()), step.parse().unwrap())
        })
        .collect()
}

/// The child: adopts, registers, then steps at random until killed.
#[test]
fn kill_child() {
    let Some(mut child) = Child::from_env() else {
        return;
    };
    let o = OptimizerSwapper::new(settings(&child.paths, true)).unwrap();
    register_all(&o).unwrap();
    let mut rng = Rng(child.run.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // What the files hold: every step ends with a flush.
    let mut held = decode(&child.state);
    let groups = SIZES.len() as u64;
    let mut counter = 0u64;
    loop {
        // A backward pass now and then: a gradient fragment, which no flush records.
        if rng.below(3) == 0 {
            let i = rng.below(groups) as u32;
            let n = SIZES[i as usize];
            let len = 1 + rng.below(n.min(4096));
            let at = rng.below(n - len + 1);
            let data = vec![1.5f32; len as usize];
            o.swap_out_gradients(i, GRAD, &[(at, &data)]).unwrap();
        }
        counter += 1;
        let step = (child.run << 20) | counter;
        // A random subset of the sub-groups, in a random order.
        let mut order: Vec<u32> = (0..groups as u32).collect();
        for j in (1..order.len()).rev() {
            order.swap(j, rng.below(j as u64 + 1) as usize);
        }
        order.truncate(1 + rng.below(groups) as usize);
        o.begin_step(&order).unwrap();
        let mut next = held.clone();
        while let Some(mut v) = o.next_ready().unwrap() {
            let i = v.index();
            for k in 0..STATE.len() {
                let s = held.get(&(i, k)).copied().unwrap_or(0);
                if let Some(e) = mismatch(v.tensor(k), i, k, s) {
                    panic!("child: sub-group {i}, tensor {k} reads wrong at element {e} (step {s})");
                }
            }
            if rng.below(5) == 0 {
                v.discard().unwrap();
                continue;
            }
            for k in 0..STATE.len() {
                if rng.below(4) != 0 {
                    fill(v.tensor_mut(k), i, k, step);
                    next.insert((i, k), step);
                }
            }
            v.hand_back().unwrap();
        }
        let g = o.durable_generation() + 1;
        child.flush_begins(g, &encode(&next));
        o.end_step().unwrap();
        assert_eq!(o.durable_generation(), g);
        child.flush_done(g);
        held = next;
        if rng.below(4) == 0 {
            let g = g + 1;
            child.flush_begins(g, &encode(&held));
            assert_eq!(o.flush().unwrap(), g);
            child.flush_done(g);
        }
    }
}

/// Adopts the folders, registers the sub-groups, visits them all and checks every state
/// tensor against what the child's log promised, and every gradient reads as zeros;
/// returns what the folders hold.
fn verify(paths: &[PathBuf], kill: usize, log: &Log, before: &Flush) -> Flush {
    let o = OptimizerSwapper::new(settings(paths, false))
        .unwrap_or_else(|e| panic!("kill {kill}: adopt failed: {e}"));
    let g = o.durable_generation();
    let promise = log
        .expect(g, before)
        .unwrap_or_else(|e| panic!("kill {kill}: {e}"));
    let expect = decode(&promise);
    register_all(&o).unwrap_or_else(|e| panic!("kill {kill}: register after adoption: {e}"));
    let n = SIZES.len() as u32;
    let order: Vec<u32> = (0..n).map(|j| (j + kill as u32) % n).collect();
    o.begin_step(&order).unwrap();
    let mut seen = 0;
    loop {
        let v = match o.next_ready() {
            Ok(Some(v)) => v,
            Ok(None) => break,
            Err(e) => panic!("kill {kill}: generation {g}: {e}"),
        };
        let i = v.index();
        for (k, name) in STATE.iter().enumerate() {
            let s = expect.get(&(i, k)).copied().unwrap_or(0);
            if let Some(e) = mismatch(v.tensor(k), i, k, s) {
                panic!(
                    "kill {kill}: sub-group {i}, tensor {name:?} does not hold what generation {g} promised \
                     (step {s}'s pattern): element {e} is {:#x}",
                    v.tensor(k)[e].to_bits()
                );
            }
        }
        assert!(
            v.tensor(GRAD).iter().all(|x| x.to_bits() == 0),
            "kill {kill}: sub-group {i}'s gradient does not read as zeros after adoption"
        );
        v.discard().unwrap();
        seen += 1;
    }
    assert_eq!(seen, n, "kill {kill}: sub-groups visited");
    o.end_step()
        .unwrap_or_else(|e| panic!("kill {kill}: end_step after adoption: {e}"));
    (g, promise)
}

#[test]
fn after_each_of_200_sigkills_the_optimizer_folder_is_what_the_last_flush_promised() {
    let e = kills_on("ext4", "256M", "kill_child", KILLS_PER_FS, 50, 0x0F7_0001, verify);
    let x = kills_on("xfs", "320M", "kill_child", KILLS_PER_FS, 50, 0x0F7_0002, verify);
    eprintln!(
        "ext4: {} children completed a flush, {} killed inside one; xfs: {} and {}",
        e.flushed, e.mid_flush, x.flushed, x.mid_flush
    );
    // The kills must have hit both kinds of moments, or the test proved little.
    assert!(
        e.flushed + x.flushed >= 40 && e.mid_flush + x.mid_flush >= 5,
        "ext4 {e:?}, xfs {x:?}"
    );
}
