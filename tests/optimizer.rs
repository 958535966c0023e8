//! The optimizer-state swapper against real files: steps with an Adam compared bit for bit
//! with the same training in memory, read-ahead bounded by the ring, gradients at
//! offsets, the new params into the parameter swapper, and every kind of bad input with
//! the message it must give.

mod common;

use std::path::Path;

use swapper::optimizer::{OptimizerSettings, OptimizerStats, OptimizerSwapper, TensorKind, TensorSpec};
use swapper::{Dtype, IoConfig, Status};

/// A swapper in `dir` with a ring of `ring` bytes and checksums on.
fn opt(dir: &Path, ring: u64, read_ahead: u32) -> OptimizerSwapper {
    OptimizerSwapper::new(OptimizerSettings {
        nvme_paths: vec![dir.to_path_buf()],
        ring_bytes: ring,
        read_ahead,
        pin_memory: false,
        verify_checksums: true,
        io: IoConfig {
            block_size: 64 << 10,
            ..IoConfig::default()
        },
        ..OptimizerSettings::default()
    })
    .unwrap()
}

/// Adam's tensors for a sub-group of `n` elements.
fn adam_specs(n: u64) -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("param", n, TensorKind::State),
        TensorSpec::new("exp_avg", n, TensorKind::State),
        TensorSpec::new("exp_avg_sq", n, TensorKind::State),
        TensorSpec::new("grad", n, TensorKind::Gradient),
    ]
}

/// One Adam update in place (the same code runs on the ring and on the in-memory copy).
fn adam(step: i32, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    let (lr, b1, b2, eps) = (1e-2f32, 0.9f32, 0.999f32, 1e-8f32);
    let c1 = 1.0 - b1.powi(step);
    let c2 = 1.0 - b2.powi(step);
    for i in 0..p.len() {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
    }
}

/// A gradient depending on the params, the step and the sub-group.
fn gradient(p: &[f32], step: i32, index: u32) -> Vec<f32> {
    p.iter()
        .enumerate()
        .map(|(i, x)| (x * 0.5 + ((i as f32 + index as f32) * 0.37 + step as f32).sin()) * 0.1)
        .collect()
}

/// Trains `sizes.len()` sub-groups for `steps` steps on NVMe and in memory; the params,
/// both moments are compared bit for bit after every step.
fn train(dir: &Path, sizes: &[u64], ring: u64, read_ahead: u32, steps: i32, shuffle: bool) -> OptimizerStats {
    let o = opt(dir, ring, read_ahead);
    let mut mem: Vec<[Vec<f32>; 3]> = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        o.register(i as u32, &adam_specs(n)).unwrap();
        let p: Vec<f32> = (0..n)
            .map(|k| ((k * 7 + i as u64) % 100) as f32 / 100.0 - 0.5)
            .collect();
        mem.push([p, vec![0.0; n as usize], vec![0.0; n as usize]]);
    }
    // Step 0: the initial params go in through a visit (the moments read back as zeros).
    let order: Vec<u32> = (0..sizes.len() as u32).collect();
    o.begin_step(&order).unwrap();
    while let Some(mut v) = o.next_ready().unwrap() {
        let i = v.index() as usize;
        assert!(v
            .tensor(1)
            .iter()
            .chain(v.tensor(2))
            .chain(v.tensor(3))
            .all(|&x| x == 0.0));
        v.tensor_mut(0).copy_from_slice(&mem[i][0]);
        v.hand_back().unwrap();
    }
    o.end_step().unwrap();
    for step in 1..=steps {
        // Backward: gradients out in two fragments each.
        let mut grads = Vec::new();
        for (i, m) in mem.iter().enumerate() {
            let g = gradient(&m[0], step, i as u32);
            let half = g.len() / 3;
            o.swap_out_gradients(i as u32, 3, &[(0, &g[..half]), (half as u64, &g[half..])])
                .unwrap();
            grads.push(g);
        }
        let mut order: Vec<u32> = (0..sizes.len() as u32).collect();
        if shuffle {
            order.rotate_left(step as usize % sizes.len());
            if step % 2 == 0 {
                order.reverse();
            }
        }
        o.begin_step(&order).unwrap();
        let mut seen = Vec::new();
        while let Some(mut v) = o.next_ready().unwrap() {
            let i = v.index() as usize;
            seen.push(v.index());
            let mut t = v.tensors_mut();
            let [p, m, s, g] = &mut t[..] else {
                panic!("four tensors")
            };
            assert_eq!(
                &g[..],
                &grads[i][..],
                "step {step}: the gradient of sub-group {i}"
            );
            adam(step, p, m, s, g);
            let [mp, mm, ms] = &mut mem[i];
            adam(step, mp, mm, ms, &grads[i]);
            v.hand_back().unwrap();
        }
        assert_eq!(seen, order);
        o.end_step().unwrap();
    }
    // Read everything back in one last step and compare bit for bit.
    o.begin_step(&order).unwrap();
    while let Some(v) = o.next_ready().unwrap() {
        let i = v.index() as usize;
        for (k, want) in mem[i].iter().enumerate() {
            let same = v
                .tensor(k)
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "sub-group {i} tensor {k} differs from the in-memory training"
            );
        }
        v.discard().unwrap();
    }
    o.end_step().unwrap();
    let stats = o.stats().unwrap();
    assert!(stats.ring_peak <= o.ring_bytes(), "{stats:?}");
    assert_eq!(stats.ring_in_use, 0, "{stats:?}");
    assert_eq!(stats.steps, steps as u64 + 2);
    stats
}

#[test]
fn adam_on_nvme_matches_adam_in_memory_bit_for_bit() {
    let dir = common::disk_dir();
    // Odd sizes (tensors not multiples of 4 KiB), a ring of about two sub-groups.
    train(
        dir.path(),
        &[10_000, 7_001, 12_288, 3, 9_999],
        2 * 4 * 12 * 4096,
        0,
        4,
        false,
    );
}

#[test]
fn any_order_and_a_ring_of_one_sub_group() {
    let dir = common::disk_dir();
    // The ring holds exactly the largest sub-group: no overlap, still correct.
    let stats = train(dir.path(), &[4096, 4096, 2048, 1000], 4 * 4 * 4096, 0, 3, true);
    assert_eq!(stats.ring_peak, 4 * 4 * 4096, "{stats:?}");
}

#[test]
fn read_ahead_is_bounded_by_the_setting() {
    let dir = common::disk_dir();
    train(
        dir.path(),
        &[5000, 5000, 5000, 5000, 5000, 5000],
        1 << 22,
        1,
        2,
        true,
    );
}

#[test]
fn the_new_params_go_to_the_parameter_swapper_straight_from_the_ring() {
    let dir = common::disk_dir();
    let o = opt(dir.path(), 1 << 20, 0);
    let s = common::swapper_in(dir.path(), Dtype::Bf16, 2, 8192);
    // Two params of 3000 and 1500 elements make up sub-group 0's 4500.
    for (id, n) in [(1u64, 3000u64), (2, 1500)] {
        s.get_buffer(id, n).unwrap();
        s.swap_out_and_release(&[id], false, true).unwrap();
    }
    s.reserve_partitioned_swap_space(&[4500]).unwrap();
    o.register(0, &adam_specs(4500)).unwrap();
    o.begin_step(&[0]).unwrap();
    let mut v = o.next_ready().unwrap().unwrap();
    for (k, x) in v.tensor_mut(0).iter_mut().enumerate() {
        *x = k as f32 * 0.25 - 100.0;
    }
    v.swap_out_params(0, &s, &[1, 2], &[3000, 1500]).unwrap();
    // Wrong sizes are refused with the reason.
    let e = v.swap_out_params(0, &s, &[1, 2], &[3000, 1600]).unwrap_err();
    assert_eq!(e.status(), Status::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("add up to more"), "{}", e.message());
    v.hand_back().unwrap();
    o.end_step().unwrap();
    // The params read back are the bf16 of the step's fp32.
    // SAFETY: no caller buffers: the params go to pool buffers.
    unsafe { s.swap_in(&[1, 2], false, None) }.unwrap();
    let want: Vec<f32> = (0..4500).map(|k| k as f32 * 0.25 - 100.0).collect();
    let mut got = Vec::new();
    for id in [1u64, 2] {
        let (buf, n) = s.param_buffer(id).unwrap();
        // SAFETY: the param is AVAILABLE; its buffer holds n bf16 values.
        let bytes = unsafe { std::slice::from_raw_parts(buf.0, n as usize * 2) };
        got.extend(
            bytes
                .chunks(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        );
    }
    let expect: Vec<f32> = want.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
    assert_eq!(got, expect);
}
