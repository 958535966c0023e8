//! The optimizer swapper under bad input and faults: every refusal names what is wrong,
//! and no fault loses the state of the previous step or presents a half-written file as
//! valid. ENOSPC in the middle of a write-behind is injected (the store reserves every
//! tensor's space when it is registered, so a real full file system fails the
//! registration instead: tests/optimizer_real_faults.rs).

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use swapper::optimizer::{OptimizerSettings, OptimizerSwapper, TensorKind, TensorSpec};
use swapper::sys::fault::{self, Call, Fault, Rule};
use swapper::{IoConfig, Status};

/// Fault rules are process-wide and match every optimizer file: the tests run one at a time.
static FAULTS: Mutex<()> = Mutex::new(());

fn opt(dir: &Path, ring: u64) -> OptimizerSwapper {
    OptimizerSwapper::new(OptimizerSettings {
        nvme_paths: vec![dir.to_path_buf()],
        ring_bytes: ring,
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

fn specs(n: u64) -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("param", n, TensorKind::State),
        TensorSpec::new("exp_avg", n, TensorKind::State),
        TensorSpec::new("grad", n, TensorKind::Gradient),
    ]
}

/// Asserts `r` failed with `status` and a message holding every one of `words`.
fn fails<T>(r: swapper::Result<T>, status: Status, words: &[&str]) -> String {
    let e = r
        .err()
        .unwrap_or_else(|| panic!("expected {status:?} with {words:?}, got success"));
    assert_eq!(e.status(), status, "{}", e.message());
    for w in words {
        assert!(e.message().contains(w), "{:?} lacks {w:?}", e.message());
    }
    e.message().to_string()
}

/// One step over `order` that fills each sub-group's state tensors with `value(i, k)`.
fn fill_step(o: &OptimizerSwapper, order: &[u32], value: impl Fn(u32, usize) -> f32) -> swapper::Result<()> {
    o.begin_step(order)?;
    while let Some(mut v) = o.next_ready()? {
        let i = v.index();
        for k in 0..2 {
            v.tensor_mut(k).fill(value(i, k));
        }
        v.hand_back()?;
    }
    o.end_step()
}

/// One step over `order` that checks each sub-group's state tensors hold `value(i, k)`.
fn check_step(o: &OptimizerSwapper, order: &[u32], value: impl Fn(u32, usize) -> f32) {
    o.begin_step(order).unwrap();
    while let Some(v) = o.next_ready().unwrap() {
        let i = v.index();
        for k in 0..2 {
            assert!(
                v.tensor(k).iter().all(|&x| x == value(i, k)),
                "sub-group {i} tensor {k}: expected {}, found {:?}",
                value(i, k),
                &v.tensor(k)[..4]
            );
        }
        v.discard().unwrap();
    }
    o.end_step().unwrap();
}

#[test]
fn bad_input_is_refused_with_the_reason_and_changes_nothing() {
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::disk_dir();
    let o = opt(dir.path(), 1 << 20);
    o.register(0, &specs(1000)).unwrap();
    fails(
        o.register(0, &specs(1000)),
        Status::BadState,
        &["sub-group 0", "already registered"],
    );
    fails(
        o.register(1, &[]),
        Status::InvalidArgument,
        &["sub-group 1", "no tensors"],
    );
    fails(
        o.register(1, &[TensorSpec::new("m", 0, TensorKind::State)]),
        Status::InvalidArgument,
        &["\"m\"", "0 elements"],
    );
    fails(
        o.register(
            1,
            &[
                TensorSpec::new("m", 1, TensorKind::State),
                TensorSpec::new("m", 2, TensorKind::State),
            ],
        ),
        Status::InvalidArgument,
        &["two tensors", "\"m\""],
    );
    // Larger than the ring: the message says what ring_bytes would fit.
    let msg = fails(
        o.register(1, &specs(200_000)),
        Status::NoBuffer,
        &["sub-group 1", "ring_bytes"],
    );
    assert!(msg.contains("at least 2408448"), "{msg}"); // 3 x 800000 bytes, each rounded up to 4096
    fails(
        o.begin_step(&[7]),
        Status::NotFound,
        &["sub-group 7 is not registered"],
    );
    fails(
        o.begin_step(&[0, 0]),
        Status::InvalidArgument,
        &["sub-group 0", "twice"],
    );
    fails(
        o.next_ready().map(|v| v.is_some()),
        Status::BadState,
        &["no step"],
    );
    fails(o.end_step(), Status::BadState, &["no step"]);
    // Gradients: unknown sub-group, not a gradient tensor, no such tensor, outside.
    let g = vec![1.0f32; 10];
    fails(
        o.swap_out_gradients(9, 2, &[(0, &g)]),
        Status::NotFound,
        &["sub-group 9"],
    );
    fails(
        o.swap_out_gradients(0, 0, &[(0, &g)]),
        Status::InvalidArgument,
        &["\"param\"", "not a gradient"],
    );
    fails(
        o.swap_out_gradients(0, 5, &[(0, &g)]),
        Status::InvalidArgument,
        &["no tensor 5"],
    );
    fails(
        o.swap_out_gradients(0, 2, &[(0, &g), (995, &g)]),
        Status::InvalidArgument,
        &["fragment 1", "10 elements at offset 995", "1000 elements"],
    );
    // Nothing of the refused call was written: the gradient still reads as zeros.
    o.begin_step(&[0]).unwrap();
    fails(o.begin_step(&[0]), Status::BadState, &["already under way"]);
    fails(
        o.swap_out_gradients(0, 2, &[(0, &g)]),
        Status::BadState,
        &["during a step"],
    );
    fails(o.purge(), Status::BadState, &["during a step"]);
    let v = o.next_ready().unwrap().unwrap();
    assert!(v.tensor(2).iter().all(|&x| x == 0.0));
    let s = common::swapper_in(dir.path(), swapper::Dtype::Fp16, 2, 4096);
    fails(
        v.swap_out_params(0, &s, &[42], &[100]),
        Status::BadState,
        &["partitioned swap space"],
    );
    s.reserve_partitioned_swap_space(&[4096]).unwrap();
    fails(v.swap_out_params(0, &s, &[42], &[100]), Status::NotFound, &["42"]);
    fails(
        v.swap_out_params(0, &s, &[42], &[100, 1]),
        Status::InvalidArgument,
        &["1 ids but 2 numels"],
    );
    v.discard().unwrap();
    assert!(o.next_ready().unwrap().is_none());
    o.end_step().unwrap();
}

#[test]
fn a_sub_group_handed_back_twice_never_or_dropped() {
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::disk_dir();
    let o = opt(dir.path(), 1 << 20);
    for i in 0..3 {
        o.register(i, &specs(3000)).unwrap();
    }
    fill_step(&o, &[0, 1, 2], |i, k| (i * 10 + k as u32) as f32).unwrap();
    o.begin_step(&[2, 1, 0]).unwrap();
    let mut a = o.next_ready().unwrap().unwrap();
    assert_eq!(a.index(), 2);
    a.tensor_mut(0).fill(-1.0);
    // By number (the C API's way): once is fine, twice is refused.
    std::mem::forget(a);
    // SAFETY: the visit was forgotten: nothing uses its slices.
    unsafe { o.hand_back_index(2) }.unwrap();
    // SAFETY: as above.
    fails(
        unsafe { o.hand_back_index(2) },
        Status::BadState,
        &["sub-group 2", "already handed back"],
    );
    // SAFETY: sub-group 0 was never taken.
    fails(
        unsafe { o.hand_back_index(0) },
        Status::BadState,
        &["sub-group 0", "not out"],
    );
    // SAFETY: unknown.
    fails(
        unsafe { o.hand_back_index(9) },
        Status::NotFound,
        &["sub-group 9"],
    );
    let mut b = o.next_ready().unwrap().unwrap();
    assert_eq!(b.index(), 1);
    b.tensor_mut(1).fill(-2.0);
    // Ending the step with a sub-group out is refused, naming it; the step goes on.
    fails(o.end_step(), Status::BadState, &["sub-groups 1 still out"]);
    drop(b); // dropped without hand_back: its update is discarded
    let mut c = o.next_ready().unwrap().unwrap();
    c.tensor_mut(0).fill(-3.0);
    c.hand_back().unwrap();
    fails(
        o.end_step(),
        Status::BadState,
        &["sub-group 1", "dropped without hand_back", "previous step"],
    );
    // 2 and 0 have their new state, 1 the state of the previous step.
    check_step(&o, &[0, 1, 2], |i, k| match (i, k) {
        (2, 0) => -1.0,
        (0, 0) => -3.0,
        _ => (i * 10 + k as u32) as f32,
    });
    // A step that takes nothing: its sub-groups are reported, their files unchanged.
    o.begin_step(&[0, 1]).unwrap();
    fails(
        o.end_step(),
        Status::BadState,
        &["sub-groups 0, 1", "never taken"],
    );
    // A panic in the caller's step: the visit's update is discarded, the handle works on.
    o.begin_step(&[0]).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut v = o.next_ready().unwrap().unwrap();
        v.tensor_mut(0).fill(123.0);
        panic!("the caller's Adam panicked");
    }));
    assert!(caught.is_err());
    fails(o.end_step(), Status::BadState, &["sub-group 0", "panic"]);
    check_step(&o, &[0], |_, k| match k {
        0 => -3.0,
        _ => 1.0,
    });
}

#[test]
fn a_truncated_or_replaced_file_is_found_before_it_is_read() {
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::disk_dir();
    let o = opt(dir.path(), 1 << 20);
    for i in 0..2 {
        o.register(i, &specs(5000)).unwrap();
    }
    fill_step(&o, &[0, 1], |i, _| i as f32 + 0.5).unwrap();
    let ext = o.tensor_locations(1, 0).unwrap();
    let path = ext[0].path.clone();
    // Truncated behind the swapper's back.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(ext[0].file_offset).unwrap();
    drop(f);
    o.begin_step(&[0, 1]).unwrap();
    let msg = fails(
        o.next_ready().map(|v| v.map(|v| v.index())),
        Status::CorruptData,
        &["sub-group", "tensor", "truncated"],
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    // The step goes on without it.
    while let Some(v) = o.next_ready().unwrap_or(None) {
        v.discard().unwrap();
    }
    let e = o.end_step().unwrap_err();
    assert_eq!(e.status(), Status::CorruptData, "{}", e.message());

    // Replaced by another file of the same name.
    let dir = common::disk_dir();
    let o = opt(dir.path(), 1 << 20);
    o.register(0, &specs(5000)).unwrap();
    fill_step(&o, &[0], |_, _| 7.0).unwrap();
    let path = o.tensor_locations(0, 1).unwrap()[0].path.clone();
    let other = path.with_extension("other");
    std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
    std::fs::rename(&other, &path).unwrap();
    o.begin_step(&[0]).unwrap();
    let msg = fails(
        o.next_ready().map(|v| v.is_some()),
        Status::CorruptData,
        &["sub-group 0", "replaced"],
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(o.next_ready().unwrap().is_none());
    assert_eq!(o.end_step().unwrap_err().status(), Status::CorruptData);
}

#[test]
fn a_flipped_byte_is_a_checksum_mismatch_naming_the_file_and_offset() {
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::disk_dir();
    let o = opt(dir.path(), 1 << 20);
    o.register(0, &specs(5000)).unwrap();
    fill_step(&o, &[0], |_, _| 3.0).unwrap();
    // Gradients too: each fragment carries its own checksum.
    let g: Vec<f32> = (0..5000).map(|x| x as f32).collect();
    o.swap_out_gradients(0, 2, &[(0, &g[..1234]), (1234, &g[1234..])])
        .unwrap();
    o.wait_gradients().unwrap();
    let ext = &o.tensor_locations(0, 1).unwrap()[0];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&ext.path)
        .unwrap();
    f.write_at(&[0x55], ext.file_offset + 10_000).unwrap();
    f.sync_all().unwrap();
    o.begin_step(&[0]).unwrap();
    let msg = fails(
        o.next_ready().map(|v| v.is_some()),
        Status::CorruptData,
        &["sub-group 0", "\"exp_avg\"", "checksum mismatch", "bytes 0 to"],
    );
    let place = format!("{} at offset {}", ext.path.display(), ext.file_offset);
    assert!(msg.contains(&place), "{msg} lacks {place}");
    let _ = o.end_step();
    // A flipped gradient byte names its fragment.
    o.register(1, &specs(5000)).unwrap();
    o.swap_out_gradients(1, 2, &[(0, &g[..1234]), (1234, &g[1234..])])
        .unwrap();
    o.wait_gradients().unwrap();
    let gext = &o.tensor_locations(1, 2).unwrap()[0];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gext.path)
        .unwrap();
    f.write_at(&[0x55], gext.file_offset + 4 * 2000).unwrap();
    f.sync_all().unwrap();
    o.begin_step(&[1]).unwrap();
    fails(
        o.next_ready().map(|v| v.is_some()),
        Status::CorruptData,
        &[
            "sub-group 1",
            "\"grad\"",
            "checksum mismatch",
            "fragment of 3766 elements at element offset 1234",
        ],
    );
    let _ = o.end_step();
}

#[test]
fn enospc_in_a_write_behind_keeps_the_new_state_in_memory_and_writes_it_again() {
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::disk_dir();
    let o = opt(dir.path(), 1 << 20);
    for i in 0..3 {
        o.register(i, &specs(40_000)).unwrap();
    }
    fill_step(&o, &[0, 1, 2], |i, k| (i * 10 + k as u32) as f32).unwrap();
    // The second 64 KiB request of some write of the next step fails with ENOSPC.
    fault::install(Rule {
        call: Call::Write,
        path_contains: "zero_stage_3/optimizer".into(),
        fault: Fault::Errno(libc::ENOSPC),
        skip: 4,
        times: 1,
    });
    let r = fill_step(&o, &[0, 1, 2], |i, k| (100 + i * 10 + k as u32) as f32);
    fault::clear();
    let msg = fails(
        r,
        Status::IoError,
        &[
            "sub-group",
            "tensor",
            "write-behind",
            "offset",
            "extent-",
            "kept in memory",
        ],
    );
    assert!(msg.contains("No space left on device"), "{msg}");
    // The next step sees every sub-group's newest state: the failed one from memory, never
    // the half-written file; its hand-back writes it again.
    check_step(&o, &[2, 1, 0], |i, k| (100 + i * 10 + k as u32) as f32);
    // A sub-group whose data is only in memory stays so until handed back: do that now.
    fill_step(&o, &[0, 1, 2], |i, k| (200 + i * 10 + k as u32) as f32).unwrap();
    check_step(&o, &[0, 1, 2], |i, k| (200 + i * 10 + k as u32) as f32);
    // A failed read skips the sub-group and keeps its file.
    fault::install(Rule {
        call: Call::Read,
        path_contains: "zero_stage_3/optimizer".into(),
        fault: Fault::Errno(libc::EIO),
        skip: 0,
        times: 1,
    });
    o.begin_step(&[1, 2]).unwrap();
    let first = o.next_ready();
    fault::clear();
    fails(
        first.map(|v| v.is_some()),
        Status::IoError,
        &["sub-group 1", "read failed", "skipped"],
    );
    let v = o.next_ready().unwrap().unwrap();
    assert_eq!(v.index(), 2);
    v.discard().unwrap();
    fails(o.end_step(), Status::IoError, &["sub-group 1"]);
    check_step(&o, &[0, 1, 2], |i, k| (200 + i * 10 + k as u32) as f32);
}

#[test]
fn a_failed_gradient_fragment_is_reported_and_blocks_the_read_until_rewritten() {
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::disk_dir();
    let o = opt(dir.path(), 1 << 20);
    o.register(0, &specs(40_000)).unwrap();
    let g: Vec<f32> = (0..40_000).map(|x| x as f32).collect();
    fault::install(Rule {
        call: Call::Write,
        path_contains: "zero_stage_3/optimizer".into(),
        fault: Fault::Errno(libc::EIO),
        skip: 0,
        times: 1,
    });
    o.swap_out_gradients(0, 2, &[(100, &g[100..30_000])]).unwrap();
    let r = o.wait_gradients();
    fault::clear();
    fails(
        r,
        Status::IoError,
        &["sub-group 0", "\"grad\"", "element offset 100", "write it again"],
    );
    o.begin_step(&[0]).unwrap();
    fails(
        o.next_ready().map(|v| v.is_some()),
        Status::CorruptData,
        &["\"grad\"", "no valid copy"],
    );
    let _ = o.end_step();
    // Written again, it reads back.
    o.swap_out_gradients(0, 2, &[(100, &g[100..30_000])]).unwrap();
    o.begin_step(&[0]).unwrap();
    let v = o.next_ready().unwrap().unwrap();
    assert_eq!(&v.tensor(2)[100..30_000], &g[100..30_000]);
    v.discard().unwrap();
    o.end_step().unwrap();
}

#[test]
fn bookkeeping_answers_while_a_step_waits_for_slow_reads_and_writes() {
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::disk_dir();
    let o = std::sync::Arc::new(opt(dir.path(), 1 << 20));
    o.register(0, &specs(10_000)).unwrap();
    o.register(1, &specs(10_000)).unwrap();
    fill_step(&o, &[0, 1], |i, _| i as f32).unwrap();
    // Every request of the next reads and writes takes 150 ms.
    for call in [Call::Read, Call::Write] {
        fault::install(Rule {
            call,
            path_contains: "zero_stage_3/optimizer".into(),
            fault: Fault::DelayMs(150),
            skip: 0,
            times: 4,
        });
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (o, done) = (o.clone(), done.clone());
        std::thread::spawn(move || {
            let mut slowest = std::time::Duration::ZERO;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                o.stats().unwrap();
                o.subgroups().unwrap();
                slowest = slowest.max(t.elapsed());
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            slowest
        })
    };
    let started = std::time::Instant::now();
    fill_step(&o, &[1, 0], |i, _| 10.0 + i as f32).unwrap();
    let took = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let slowest = watcher.join().unwrap();
    fault::clear();
    assert!(
        took >= std::time::Duration::from_millis(150),
        "the delay did not apply: {took:?}"
    );
    assert!(
        slowest < std::time::Duration::from_millis(100),
        "a bookkeeping call waited {slowest:?} while the step waited for I/O"
    );
    check_step(&o, &[0, 1], |i, _| 10.0 + i as f32);
}

/// Gradient fragments overwrite (nothing accumulates, as in DeepSpeed); a fragment may
/// replace earlier ones it covers whole, and one overlapping another part-way is refused
/// with both named, so every element written stays under one fragment's checksum: a
/// flipped byte anywhere in the replaced range is found, naming the covering fragment.
#[test]
fn overlapping_gradient_fragments_keep_every_element_under_one_checksum() {
    let _serial = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = common::disk_dir();
    let o = opt(dir.path(), 1 << 20);
    o.register(0, &specs(5000)).unwrap();
    let a: Vec<f32> = (0..5000).map(|x| x as f32).collect();
    let b: Vec<f32> = (0..5000).map(|x| -(x as f32)).collect();
    o.swap_out_gradients(0, 2, &[(0, &a[..1000]), (1000, &a[1000..2000])])
        .unwrap();
    // The same fragment again (DeepSpeed's next boundary), then one covering both.
    o.swap_out_gradients(0, 2, &[(0, &b[..1000])]).unwrap();
    o.swap_out_gradients(0, 2, &[(0, &b[..2000])]).unwrap();
    // Part-way: refused before anything is written, both fragments named.
    fails(
        o.swap_out_gradients(0, 2, &[(3000, &a[..10]), (1500, &a[..1000])]),
        Status::InvalidArgument,
        &[
            "fragment 1 (1000 elements at offset 1500)",
            "fragment of 2000 elements at offset 0 part-way",
            "nothing of this call was written",
        ],
    );
    // Inside one fragment is part-way too; overlapping one of the same call as well.
    fails(
        o.swap_out_gradients(0, 2, &[(10, &a[..10])]),
        Status::InvalidArgument,
        &["part-way"],
    );
    fails(
        o.swap_out_gradients(0, 2, &[(3000, &a[..100]), (3050, &a[..100])]),
        Status::InvalidArgument,
        &["fragment of 100 elements at offset 3000 part-way"],
    );
    o.wait_gradients().unwrap();
    o.begin_step(&[0]).unwrap();
    let v = o.next_ready().unwrap().unwrap();
    let grad = v.tensor(2);
    assert_eq!(&grad[..2000], &b[..2000]);
    assert!(
        grad[2000..].iter().all(|&x| x == 0.0),
        "nothing of the refused calls landed"
    );
    v.hand_back().unwrap();
    o.end_step().unwrap();
    // A byte of the first, replaced fragment's range is covered by the new one's checksum.
    let gext = &o.tensor_locations(0, 2).unwrap()[0];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gext.path)
        .unwrap();
    f.write_at(&[0x55], gext.file_offset + 4 * 1500).unwrap();
    f.sync_all().unwrap();
    o.begin_step(&[0]).unwrap();
    fails(
        o.next_ready().map(|v| v.is_some()),
        Status::CorruptData,
        &["\"grad\"", "fragment of 2000 elements at element offset 0"],
    );
    let _ = o.end_step();
}
