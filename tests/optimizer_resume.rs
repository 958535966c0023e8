//! Resume of the optimizer-state swapper (issue 20): a flush after a step, a step after
//! it that is never flushed, then an adopting swapper takes each sub-group up when it is
//! registered again and finds the flushed state bit for bit; a sub-group registered with
//! other tensors is refused naming the tensor, and nothing is removed; a flush during a
//! step is refused. With `flush_at_end_step`, every `end_step` flushes once its writes are
//! done: a sub-group whose write-behind failed keeps its last record, and a flush whose
//! sync fails is reported by `end_step` and leaves the previous generation adoptable.

mod common;

use std::path::Path;

use swapper::optimizer::{OptimizerSettings, OptimizerSwapper, TensorKind, TensorSpec};
use swapper::{IoConfig, Status};

fn opt(dirs: &[&Path], adopt: bool) -> OptimizerSwapper {
    OptimizerSwapper::new(settings(dirs, adopt)).unwrap()
}

/// As `opt`, flushing at every end_step.
fn flushing(dirs: &[&Path], adopt: bool) -> OptimizerSwapper {
    OptimizerSwapper::new(OptimizerSettings {
        flush_at_end_step: true,
        ..settings(dirs, adopt)
    })
    .unwrap()
}

fn settings(dirs: &[&Path], adopt: bool) -> OptimizerSettings {
    OptimizerSettings {
        nvme_paths: dirs.iter().map(|d| d.to_path_buf()).collect(),
        ring_bytes: 16 << 20,
        pin_memory: false,
        verify_checksums: true,
        io: IoConfig {
            block_size: 64 << 10,
            ..IoConfig::default()
        },
        adopt,
        ..OptimizerSettings::default()
    }
}

fn specs(n: u64) -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("param", n, TensorKind::State),
        TensorSpec::new("exp_avg", n, TensorKind::State),
        TensorSpec::new("grad", n, TensorKind::Gradient),
    ]
}

const SIZES: [u64; 3] = [1000, 300_000, 1 << 20];

/// One step that sets every state tensor of every sub-group to f(index, tensor, i, step).
fn step(o: &OptimizerSwapper, s: u32) {
    step_over(o, &[0, 1, 2], s).unwrap();
}

/// A step over `order` that sets its sub-groups' state tensors to step `s`'s values;
/// end_step's outcome.
fn step_over(o: &OptimizerSwapper, order: &[u32], s: u32) -> swapper::Result<()> {
    o.begin_step(order).unwrap();
    while let Some(mut v) = o.next_ready().unwrap() {
        let i = v.index();
        for k in 0..2 {
            for (e, x) in v.tensor_mut(k).iter_mut().enumerate() {
                *x = value(i, k, e, s);
            }
        }
        // A failed write-behind is reported here too, or at end_step.
        let _ = v.hand_back();
    }
    o.end_step()
}

fn value(i: u32, k: usize, e: usize, s: u32) -> f32 {
    (i * 1000 + k as u32 * 100 + s) as f32 + (e % 97) as f32 / 128.0
}

/// Visits every sub-group and checks it holds step `s`'s values.
fn check(o: &OptimizerSwapper, s: u32) {
    check_each(o, [s; 3]);
}

/// Visits every sub-group and checks that sub-group i holds step `s[i]`'s values.
fn check_each(o: &OptimizerSwapper, steps: [u32; 3]) {
    o.begin_step(&[2, 0, 1]).unwrap();
    while let Some(v) = o.next_ready().unwrap() {
        let i = v.index();
        let s = steps[i as usize];
        for k in 0..2 {
            assert!(
                v.tensor(k)
                    .iter()
                    .enumerate()
                    .all(|(e, x)| *x == value(i, k, e, s)),
                "sub-group {i}, tensor {k}: not step {s}'s state"
            );
        }
        assert!(
            v.tensor(2).iter().all(|x| *x == 0.0),
            "gradients read as zeros after adoption"
        );
        v.discard().unwrap();
    }
    o.end_step().unwrap();
}

#[test]
fn an_adopted_optimizer_folder_has_the_flushed_step_and_not_the_later_one() {
    let a = common::disk_dir();
    let b = common::disk_dir();
    let dirs = [a.path(), b.path()];
    let o = opt(&dirs, false);
    for (i, &n) in SIZES.iter().enumerate() {
        o.register(i as u32, &specs(n)).unwrap();
    }
    step(&o, 1);
    o.swap_out_gradients(1, 2, &[(0, &[1.0; 64])]).unwrap();
    o.wait_gradients().unwrap();
    assert_eq!(o.flush().unwrap(), 1);
    step(&o, 2); // never flushed
    o.begin_step(&[0]).unwrap();
    let e = o.flush().err().unwrap();
    assert_eq!(e.status(), Status::BadState, "{e}");
    let v = o.next_ready().unwrap().unwrap();
    v.discard().unwrap();
    o.end_step().unwrap();
    drop(o);

    let o = opt(&dirs, true);
    // Two state tensors of each of the three sub-groups wait for their registration.
    assert_eq!(o.stats().unwrap().adopted_waiting, 6);
    // Registered with another numel: refused, naming the tensor; nothing removed.
    let e = o.register(1, &specs(300_001)).err().unwrap();
    assert_eq!(e.status(), Status::InvalidArgument, "{e}");
    assert!(
        e.message().contains("\"param\"") && e.message().contains("extent-"),
        "{e}"
    );
    assert_eq!(
        o.stats().unwrap().adopted_waiting,
        6,
        "a refused registration takes nothing up"
    );
    for (i, &n) in SIZES.iter().enumerate() {
        o.register(i as u32, &specs(n)).unwrap();
        assert_eq!(o.stats().unwrap().adopted_waiting, 4 - 2 * i as u64);
    }
    // A sub-group the folder never had takes nothing up.
    o.register(3, &specs(500)).unwrap();
    assert_eq!(o.stats().unwrap().adopted_waiting, 0);
    check(&o, 1);
    // Sub-group 2 not registered after the next adoption: a flush keeps it all the same.
    step(&o, 3);
    o.flush().unwrap();
    drop(o);
    let o = opt(&dirs, true);
    o.register(0, &specs(SIZES[0])).unwrap();
    o.register(1, &specs(SIZES[1])).unwrap();
    o.flush().unwrap();
    drop(o);
    let o = opt(&dirs, true);
    for (i, &n) in SIZES.iter().enumerate() {
        o.register(i as u32, &specs(n)).unwrap();
    }
    check(&o, 3);
}

#[test]
fn a_flipped_byte_of_an_adopted_state_tensor_is_named() {
    let a = common::disk_dir();
    let o = opt(&[a.path()], false);
    o.register(0, &specs(5000)).unwrap();
    step_one(&o);
    o.flush().unwrap();
    let loc = o.tensor_locations(0, 1).unwrap();
    drop(o);
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&loc[0].path)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, loc[0].file_offset + 100).unwrap();
    byte[0] ^= 1;
    f.write_all_at(&byte, loc[0].file_offset + 100).unwrap();
    let e = OptimizerSwapper::new(OptimizerSettings {
        nvme_paths: vec![a.path().to_path_buf()],
        ring_bytes: 1 << 20,
        pin_memory: false,
        adopt: true,
        ..OptimizerSettings::default()
    })
    .err()
    .unwrap();
    assert_eq!(e.status(), Status::CorruptData, "{e}");
    assert!(
        e.message().contains("exp_avg") && e.message().contains("checksum mismatch"),
        "{e}"
    );
}

fn step_one(o: &OptimizerSwapper) {
    o.begin_step(&[0]).unwrap();
    let mut v = o.next_ready().unwrap().unwrap();
    for k in 0..2 {
        v.tensor_mut(k).iter_mut().for_each(|x| *x = 1.5);
    }
    v.hand_back().unwrap();
    o.end_step().unwrap();
}

#[test]
fn an_optimizer_snapshot_restores_into_other_folders_and_is_adopted() {
    let a = common::disk_dir();
    let t = common::disk_dir();
    let dest = common::disk_dir();
    let ckpt = dest.path().join("ckpt");
    let o = opt(&[a.path()], false);
    for (i, &n) in SIZES.iter().enumerate() {
        o.register(i as u32, &specs(n)).unwrap();
    }
    step(&o, 1);
    let r = o.snapshot_to(&ckpt).unwrap();
    assert_eq!((r.generation, r.files), (1, 1));
    step(&o, 2);
    o.flush().unwrap();
    drop(o);
    let settings = OptimizerSettings {
        nvme_paths: vec![t.path().to_path_buf()],
        ..OptimizerSettings::default()
    };
    OptimizerSwapper::restore(&ckpt, &settings).unwrap();
    let o = opt(&[t.path()], true);
    for (i, &n) in SIZES.iter().enumerate() {
        o.register(i as u32, &specs(n)).unwrap();
    }
    check(&o, 1);
    // The live folder still has step 2.
    drop(o);
    let o = opt(&[a.path()], true);
    for (i, &n) in SIZES.iter().enumerate() {
        o.register(i as u32, &specs(n)).unwrap();
    }
    check(&o, 2);
}

fn register_all(o: &OptimizerSwapper) {
    for (i, &n) in SIZES.iter().enumerate() {
        o.register(i as u32, &specs(n)).unwrap();
    }
}

#[test]
fn every_end_step_flushes_when_asked_and_a_failed_write_keeps_its_last_record() {
    use swapper::sys::fault::{self, Call, Fault, Rule};
    let a = common::disk_dir();
    let o = flushing(&[a.path()], false);
    register_all(&o);
    assert_eq!(o.durable_generation(), 0);
    step(&o, 1);
    assert_eq!(o.durable_generation(), 1, "end_step flushed");
    step(&o, 2);
    assert_eq!(o.durable_generation(), 2);
    // Sub-group 0's write-behind fails: end_step reports it, flushes all the same, and
    // the manifest keeps sub-group 0's step-2 record (its step-3 data is only in the ring).
    fault::install(Rule {
        call: Call::Write,
        path_contains: a.path().join("zero_stage_3").to_string_lossy().into_owned()
            + "/optimizer/rank0/extent-",
        fault: Fault::Errno(libc::EIO),
        skip: 0,
        times: 1,
    });
    let e = step_over(&o, &[0], 3).err().unwrap();
    assert_eq!(e.status(), Status::IoError, "{e}");
    assert!(e.message().contains("sub-group 0"), "{e}");
    assert_eq!(o.durable_generation(), 3, "flushed after the failed write");
    // Sub-group 1 moves on to step 3 and is flushed; 0 is still unsaved (not in the order).
    step_over(&o, &[1], 3).unwrap();
    assert_eq!(o.durable_generation(), 4);
    drop(o);
    // Adopted (flushing too): 0 and 2 as step 2 left them, 1 as step 3.
    let o = flushing(&[a.path()], true);
    register_all(&o);
    check_each(&o, [2, 3, 2]);
    assert_eq!(
        o.durable_generation(),
        5,
        "the adopted swapper's end_step flushed"
    );
    step(&o, 6);
    drop(o);
    let o = opt(&[a.path()], true);
    register_all(&o);
    check(&o, 6);
}

#[test]
fn an_end_step_whose_flush_fails_reports_it_and_the_previous_generation_stays_adoptable() {
    use swapper::sys::fault::{self, Call, Fault, Rule};
    let a = common::disk_dir();
    let o = flushing(&[a.path()], false);
    register_all(&o);
    step(&o, 1);
    assert_eq!(o.durable_generation(), 1);
    let tag = a.path().to_string_lossy().into_owned();
    // The data's fdatasync fails, then the manifest's fsync (before its rename).
    for (what, skip, s, words) in [
        ("the data", 0u64, 2, "cannot sync the data"),
        ("the manifest", 1, 3, "manifest.json.new"),
    ] {
        fault::install(Rule {
            call: Call::Sync,
            path_contains: tag.clone(),
            fault: Fault::Errno(libc::EIO),
            skip,
            times: 1,
        });
        let e = step_over(&o, &[0, 1, 2], s).err().unwrap();
        assert_eq!(e.status(), Status::IoError, "{what}: {e}");
        assert!(
            e.message().contains("end_step's flush (flush_at_end_step)")
                && e.message().contains("generation 1 is still the durable one")
                && e.message().contains(words),
            "{what}: {e}"
        );
        assert_eq!(o.durable_generation(), 1, "{what}");
        // The step is ended all the same: a new one begins.
        assert_eq!(o.stats().unwrap().steps, u64::from(s), "{what}");
    }
    drop(o);
    let o = opt(&[a.path()], true);
    assert_eq!(o.durable_generation(), 1);
    register_all(&o);
    check(&o, 1);
}
