//! A relative nvme_path and a chdir: the swapper keeps reading and writing its own rank
//! folder, not a same-named tree under the new current directory. The only test of this
//! binary, because a chdir changes the directory of every thread of the process.

mod common;

use std::path::Path;

use swapper::{Dtype, IoConfig, Settings, Swapper};

const NUMEL: u64 = 1 << 16;

#[test]
fn a_relative_nvme_path_survives_a_chdir() {
    let base = common::disk_dir();
    let first = base.path().join("first");
    let second = base.path().join("second");
    std::fs::create_dir_all(first.join("nv")).unwrap();
    std::env::set_current_dir(&first).unwrap();
    let s = Swapper::new(Settings {
        nvme_path: "nv".into(),
        dtype: Dtype::Fp16,
        buffer_count: 2,
        buffer_numel: NUMEL,
        io: IoConfig {
            thread_count: 2,
            ..IoConfig::default()
        },
        ..Settings::default()
    })
    .unwrap();
    let mine = common::pattern(NUMEL as usize * 2, 1);
    let buf = s.get_buffer(1, NUMEL).unwrap();
    // SAFETY: a fresh pool buffer of NUMEL fp16 elements.
    unsafe { std::ptr::copy_nonoverlapping(mine.as_ptr(), buf.0, mine.len()) };
    s.swap_out_and_release(&[1], false, false).unwrap();

    // Another run's tree under a second directory, same relative path, other bytes.
    let other_rank = second.join("nv/zero_stage_3/float16params/rank0");
    std::fs::create_dir_all(&other_rank).unwrap();
    let theirs = common::pattern(NUMEL as usize * 2, 2);
    std::fs::write(other_rank.join("1_param.tensor.swp"), &theirs).unwrap();
    std::env::set_current_dir(&second).unwrap();

    // SAFETY: pool buffers.
    unsafe { s.swap_in(&[1], false, None) }.unwrap();
    let (buf, numel) = s.param_buffer(1).unwrap();
    // SAFETY: the param is AVAILABLE.
    let got = unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) };
    assert!(
        got == &mine[..],
        "swap_in returned another run's bytes after the chdir"
    );
    s.release(&[1]).unwrap();
    let buf = s.get_buffer(2, NUMEL).unwrap();
    // SAFETY: as above.
    unsafe { std::ptr::copy_nonoverlapping(mine.as_ptr(), buf.0, mine.len()) };
    s.swap_out_and_release(&[2], false, false).unwrap();
    let rank_of = |root: &Path| root.join("nv/zero_stage_3/float16params/rank0");
    let at = s.param_locations(2);
    assert!(
        at.iter().all(|e| e.path.starts_with(&first) && e.path.exists()),
        "param 2 written to the swapper's own folder: {at:?}"
    );
    let names: Vec<_> = std::fs::read_dir(rank_of(&second))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["1_param.tensor.swp"],
        "nothing written under the new directory"
    );
    assert_eq!(
        std::fs::read(other_rank.join("1_param.tensor.swp")).unwrap(),
        theirs
    );
    // The path it reports was resolved once, at create.
    assert!(s.folder().is_absolute(), "{}", s.folder().display());
    std::env::set_current_dir(common::root()).unwrap();
}
