//! The swap store on several real drives (the drive bed, scripts/drive-bed.sh: loop
//! devices over files in /dev/shm, ext4 and XFS): every byte back across 1, 2 and 4
//! drives with the bytes spread by placement, a lock per drive folder, placement that
//! follows the drives' measured rates (one drive throttled to half the other's), a drive
//! that fills up (the params go to the other drive; only when all are full does a
//! swap-out fail, naming the drive and the param) or fails (EIO, a shut-down file system)
//! in the middle — the error names the drive and the param, the other drives' params
//! stay good — and the folder faults on every drive.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::drive_bed::DriveBed;
use swapper::{Dtype, IoConfig, ParamStatus, Settings, Status, Swapper};

fn settings(paths: &[&Path], buffers: u32, numel: u64) -> Settings {
    Settings {
        nvme_paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        dtype: Dtype::Fp16,
        buffer_count: buffers,
        buffer_numel: numel,
        io: IoConfig {
            thread_count: 2,
            ..IoConfig::default()
        },
        verify_checksums: true,
        ..Settings::default()
    }
}

fn put(s: &Swapper, id: u64, numel: u64) -> Vec<u8> {
    let d = common::pattern(numel as usize * 2, id * 7 + 1);
    let buf = s.get_buffer(id, numel).unwrap();
    // SAFETY: a fresh pool buffer of at least `numel` fp16 elements.
    unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, d.len()) };
    d
}

fn held(s: &Swapper, id: u64) -> Vec<u8> {
    let (buf, numel) = s.param_buffer(id).unwrap();
    // SAFETY: the param is AVAILABLE.
    unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) }.to_vec()
}

/// Params of many sizes: small ones (whole on one drive) and large ones (split).
fn sizes() -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = (0..48).map(|id| (id, 2048 * (1 + id % 24))).collect();
    v.extend((48..52).map(|id| (id, 4 << 20))); // 8 MiB
    v.push((52, 20 << 20)); // 40 MiB
    v
}

/// Every byte back across `drives`. With `pinned`, placement follows set equal weights
/// (bytes per drive balanced, large params split over all drives); without, the large
/// params' first writes race ([`swapper::io::race`]: nothing is measured yet), and each
/// keeps one piece per drive, in drive order, with no reserved span left behind.
fn round_trip(drives: &[&Path], pinned: bool) {
    let params = sizes();
    let s = Swapper::new(settings(drives, params.len() as u32, 20 << 20)).unwrap();
    assert_eq!(s.folders().len(), drives.len());
    if pinned {
        s.store().set_weights(&vec![1.0; drives.len()]).unwrap();
    }
    let data: Vec<Vec<u8>> = params.iter().map(|&(id, n)| put(&s, id, n)).collect();
    let ids: Vec<u64> = params.iter().map(|p| p.0).collect();
    s.swap_out_and_release(&ids, true, true).unwrap();
    s.wait_writes().unwrap();
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&ids, true, None) }.unwrap();
    s.wait_reads().unwrap();
    for (&(id, _), d) in params.iter().zip(&data) {
        assert_eq!(s.param_status(id).unwrap(), ParamStatus::Available);
        assert!(held(&s, id) == *d, "param {id} on {} drives", drives.len());
    }
    let loads = s.store().loads();
    let total: u64 = loads.iter().sum();
    let bytes: u64 = params.iter().map(|&(_, n)| n * 2).sum();
    assert_eq!(
        total, bytes,
        "the drives carry the params' bytes, no more: {loads:?}"
    );
    for &(id, n) in &params {
        let at = s.param_locations(id);
        assert_eq!(at.iter().map(|e| e.len).sum::<u64>(), n * 2, "param {id}: {at:?}");
        assert!(
            at.windows(2).all(|w| w[0].drive < w[1].drive),
            "param {id}: at most one piece per drive, in drive order: {at:?}"
        );
    }
    if !pinned {
        if drives.len() > 1 {
            assert!(
                loads.iter().all(|&l| l > 0),
                "every drive took a share: {loads:?}"
            );
        }
        return;
    }
    // Placement: every drive carries a share, the large params are split over all drives,
    // and the bytes per drive are balanced (equal weights).
    for (d, &l) in loads.iter().enumerate() {
        let share = l as f64 / total as f64;
        let want = 1.0 / drives.len() as f64;
        assert!(
            (share - want).abs() < 0.05,
            "drive {d} carries {share:.3} of the bytes, not ~{want:.3}: {loads:?}"
        );
    }
    for id in [48u64, 52] {
        let on: std::collections::BTreeSet<usize> = s.param_locations(id).iter().map(|e| e.drive).collect();
        assert_eq!(on.len(), drives.len(), "param {id} is split over every drive");
    }
    for (d, f) in s.folders().iter().enumerate() {
        assert!(f.starts_with(drives[d]), "{}", f.display());
        let names: Vec<_> = std::fs::read_dir(f)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["extent-0.swp"],
            "drive {d}: one extent file for all its params"
        );
    }
    // Overwrite in place and read back once more: a rewrite keeps its place while the
    // weights stay (set: the measured rates of these unthrottled loop drives are the
    // CPU's noise, and a move by measured weights has a test of its own).
    let before = s.param_locations(52);
    s.swap_out_and_release(&ids, false, false).unwrap();
    assert_eq!(s.param_locations(52), before);
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&ids, false, None) }.unwrap();
    for (&(id, _), d) in params.iter().zip(&data) {
        assert!(held(&s, id) == *d, "param {id} after a rewrite");
    }
}

#[test]
fn every_byte_comes_back_across_1_2_and_4_ext4_drives() {
    for n in [1usize, 2, 4] {
        let bed = DriveBed::up(n, &["--size", "256M"]);
        round_trip(&bed.paths(), false);
        if n == 2 {
            round_trip(&bed.paths(), true);
        }
    }
}

#[test]
fn every_byte_comes_back_across_2_xfs_drives() {
    let bed = DriveBed::up(2, &["--fs", "xfs", "--size", "320M"]);
    round_trip(&bed.paths(), false);
}

/// Each swap-in or swap-out checks each extent file it touches once (the store's check),
/// not once in the swapper and again in the store.
#[test]
fn a_swap_checks_each_extent_file_it_touches_once() {
    let (x, y) = (common::disk_dir(), common::disk_dir());
    let s = Swapper::new(settings(&[x.path(), y.path()], 2, 2 << 20)).unwrap();
    // Equal weights set: param 1 is split by them, not by a race that could leave a drive out.
    s.store().set_weights(&[1.0, 1.0]).unwrap();
    put(&s, 1, 2 << 20); // 4 MiB: split over both drives
    put(&s, 2, 2048); // 4 KiB: whole on one
    s.swap_out_and_release(&[1, 2], false, false).unwrap();
    assert_eq!(s.param_locations(1).len(), 2);
    let checks = || s.store().file_checks();
    let before = checks();
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[1], false, None) }.unwrap();
    assert_eq!(checks() - before, 2, "one check per drive's file");
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[2], false, None) }.unwrap();
    assert_eq!(checks() - before, 3);
    s.swap_out_and_release(&[1, 2], false, false).unwrap();
    assert_eq!(checks() - before, 6);
    let mut dest = vec![0u16; 2 << 20];
    // SAFETY: `dest` holds the param's elements for the call.
    unsafe { s.swap_into_buffer(1, swapper::sys::RawBuf(dest.as_mut_ptr().cast()), 2 << 20) }.unwrap();
    assert_eq!(checks() - before, 8);
}

#[test]
fn each_drive_folder_is_locked_on_its_own() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| common::disk_dir()).collect();
    let p: Vec<&Path> = dirs.iter().map(|d| d.path()).collect();
    let s = Swapper::new(settings(&[p[0], p[1]], 1, 1024)).unwrap();
    // A second swapper that shares any one folder is Busy, naming it.
    for shared in [p[0], p[1]] {
        let e = Swapper::new(settings(&[p[2], shared], 1, 1024)).err().unwrap();
        assert_eq!(e.status(), Status::Busy, "{e}");
        assert!(e.message().contains(&*shared.to_string_lossy()), "{e}");
    }
    // Its own folder was let go when it failed.
    drop(Swapper::new(settings(&[p[2]], 1, 1024)).unwrap());
    drop(s);
    drop(Swapper::new(settings(&[p[1], p[0]], 1, 1024)).unwrap());
    // The same folder twice is refused.
    let e = Swapper::new(settings(&[p[0], p[0]], 1, 1024)).err().unwrap();
    assert_eq!(e.status(), Status::InvalidArgument, "{e}");
}

#[test]
fn a_full_drive_takes_no_more_and_only_when_all_are_full_is_a_swap_out_refused() {
    let bed = DriveBed::up(2, &["--sizes", "128M,16M"]);
    let s = Swapper::new(settings(&bed.paths(), 2, 2 << 20)).unwrap();
    let mut kept: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut split_checked = false;
    let mut failure = None;
    for id in 0..400u64 {
        // 1 MiB params (whole on one drive); once the tiny drive is full, one of 4 MiB,
        // which would otherwise be split over both drives.
        let tiny_full = s.store().full()[1];
        let numel = if tiny_full && !split_checked {
            2 << 20
        } else {
            1 << 19
        };
        let d = put(&s, id, numel);
        match s.swap_out_and_release(&[id], false, false) {
            Ok(()) => {
                if numel == 2 << 20 {
                    split_checked = true;
                    let on: Vec<usize> = s.param_locations(id).iter().map(|e| e.drive).collect();
                    assert_eq!(on, [0], "param {id} is not split onto the full drive");
                }
                kept.push((id, d));
            }
            Err(e) => {
                assert_eq!(
                    s.param_status(id).unwrap(),
                    ParamStatus::Available,
                    "the data stays"
                );
                assert!(held(&s, id) == d);
                failure = Some((id, e));
                break;
            }
        }
    }
    let (id, e) = failure.expect("both drives fill up");
    assert!(split_checked, "the tiny drive filled up first");
    assert_eq!(s.store().full(), [true, true]);
    let folders = s.folders();
    assert!(
        e.message().contains("No space left")
            && e.message().contains(&format!("param {id}"))
            && folders
                .iter()
                .any(|f| e.message().contains(&*f.to_string_lossy())),
        "the error names a full drive and the param: {e}"
    );
    let on = |k: u64| s.param_locations(k)[0].drive;
    let tiny = kept.iter().filter(|(k, _)| on(*k) == 1).count();
    assert!(tiny >= 4, "the tiny drive took its share first: {tiny} params");
    assert!(
        kept.len() as u64 > 64,
        "the big drive took the params the tiny one could not: {} kept",
        kept.len()
    );
    s.release(&[id]).unwrap();
    for (k, d) in &kept {
        // SAFETY: pool buffers only.
        unsafe { s.swap_in(&[*k], false, None) }.unwrap();
        assert!(held(&s, *k) == *d, "param {k} stays good");
        s.release(&[*k]).unwrap();
    }
}

/// Moves the calling thread (only) into blkio group `cgroup` (cgroup v1 `tasks`); the
/// threads it starts afterwards are in the group too.
fn join_blkio_group(cgroup: &Path) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    std::fs::write(cgroup.join("tasks"), tid.to_string())
        .unwrap_or_else(|e| panic!("join {}: {e}", cgroup.display()));
}

/// A store over the bed's drives whose I/O threads run in the bed's blkio group (the
/// throttle binds I/O issued from inside it): they start while this thread is in the
/// group, which it leaves again at once.
fn store_in_bed(bed: &DriveBed) -> swapper::store::Store {
    store_in_bed_with(bed, swapper::store::Store::open)
}

/// As [`store_in_bed`], opened by `open` ([`Store::open_split`]: reads and writes on
/// engines of their own).
fn store_in_bed_with(
    bed: &DriveBed,
    open: fn(swapper::store::StoreConfig) -> swapper::Result<swapper::store::Store>,
) -> swapper::store::Store {
    use swapper::store::StoreConfig;
    join_blkio_group(&bed.cgroup);
    let s = open(StoreConfig {
        paths: bed.paths().iter().map(|p| p.to_path_buf()).collect(),
        folder: ["zero_stage_3", "float16params", "rank0"]
            .map(String::from)
            .to_vec(),
        io: IoConfig::default(),
        adopt: false,
    });
    join_blkio_group(Path::new("/sys/fs/cgroup/blkio"));
    s.unwrap()
}

#[test]
fn a_split_drive_is_measured_by_its_writes_too() {
    // A store with writes on an engine of their own (the optimizer's): a drive that has
    // only been written must have a rate, or placement weighs it by its reads alone.
    let bed = DriveBed::up(1, &["--size", "256M", "--rate-mbps", "100"]);
    let s = store_in_bed_with(&bed, swapper::store::Store::open_split);
    let mut buf = common::patterned(8 << 20, 4);
    for key in 0..12u64 {
        s.reserve(key, 8 << 20, false).unwrap();
        s.transfer(key, true, buf.as_mut_slice(), 0).unwrap();
    }
    // 96 MiB through a 100 MB/s drive: about a second of busy time, all of it writes.
    let rate = s.rates()[0].unwrap_or_else(|| panic!("no rate after 96 MiB of writes"));
    assert!(
        rate > 50e6 && rate < 400e6,
        "rate {rate} for a drive throttled to 100 MB/s"
    );
}

#[test]
fn placement_follows_the_drives_rates_when_one_is_at_half_rate() {
    let bed = DriveBed::up(2, &["--size", "512M", "--rates", "100,50"]);
    let s = store_in_bed(&bed);
    let mut buf = common::patterned(4 << 20, 3);
    // A batch of writes, all queued before any is waited for (as a swap-out of many params
    // is), so that each drive streams without pause.
    let src = swapper::sys::RawBuf(buf.as_mut_slice().as_mut_ptr());
    let write = |from: u64, to: u64| {
        let tickets: Vec<_> = (from..to)
            .map(|key| {
                s.reserve(key, 4 << 20, false).unwrap();
                // SAFETY: `buf` outlives the waits below and is only read meanwhile.
                unsafe { s.submit(key, true, src, 0, 4 << 20, None) }.unwrap()
            })
            .collect();
        for t in tickets {
            t.wait().unwrap();
        }
    };
    // Nothing is measured at first: the first tensors are split equally, the later ones
    // of the batch by the rates measured meanwhile.
    write(0, 48);
    let rates = s.rates();
    let (fast, slow) = (
        rates[0].expect("drive 0 measured"),
        rates[1].expect("drive 1 measured"),
    );
    // Bytes over busy time. The first samples run fast: the blkio throttle lets a drive
    // that was idle start a 100 ms slice with that slice's bytes at once, and drive 0 idles
    // while drive 1 finishes its equal half; as placement keeps both busy, the moving
    // average settles near the throttles' ratio.
    assert!(
        slow / fast < 0.75,
        "drive 1 runs at about half drive 0's rate: {rates:?}"
    );
    let before = s.loads();
    write(48, 96);
    let w = s.weights();
    assert_eq!(w[0], 1.0, "{w:?}");
    assert!(
        (0.3125..=0.625).contains(&w[1]),
        "drive 1 weighs about half: {w:?}, rates {:?}",
        s.rates()
    );
    let after = s.loads();
    let share = (after[1] - before[1]) as f64 / ((after[0] - before[0]) + (after[1] - before[1])) as f64;
    assert!(
        share < 0.42,
        "the half-rate drive takes less than its equal share of new bytes: {share:.3} ({before:?} -> {after:?})"
    );
    // Every byte back, from both drives.
    for key in [0u64, 50, 95] {
        let mut got = common::TestBuf::new(4 << 20, 0);
        s.transfer(key, false, got.as_mut_slice(), 0).unwrap();
        assert!(got.as_slice() == buf.as_slice(), "key {key}");
    }
    drop(s); // its threads leave the group before the bed goes
}

/// Bytes of `key` on each of two drives.
fn bytes_per_drive(s: &swapper::store::Store, key: u64) -> [u64; 2] {
    let mut per = [0u64; 2];
    for e in s.locations(key) {
        per[e.drive] += e.len;
    }
    per
}

#[test]
fn a_tensor_split_before_the_rates_were_known_follows_them_at_its_next_whole_rewrite() {
    use swapper::store::REPLACE_STEP;
    let bed = DriveBed::up(2, &["--size", "512M", "--rates", "100,50"]);
    let s = store_in_bed(&bed);
    const LEN: usize = 64 << 20;
    let mut a = common::patterned(LEN, 7);
    // Key 0 first: nothing measured, and its first use is not a whole write (which would
    // split it by a race), so it takes the equal split.
    s.reserve(0, LEN as u64, false).unwrap();
    s.transfer(0, true, &mut a.as_mut_slice()[..1 << 20], 0).unwrap();
    assert_eq!(bytes_per_drive(&s, 0), [32 << 20, 32 << 20]);
    s.transfer(0, true, a.as_mut_slice(), 0).unwrap();
    assert_eq!(bytes_per_drive(&s, 0), [32 << 20, 32 << 20]);
    // Key 1 written a few times: the drives' rates are measured (64 MiB, 100 ms samples).
    for _ in 0..4 {
        s.reserve(1, LEN as u64, false).unwrap();
        s.transfer(1, true, a.as_mut_slice(), 0).unwrap();
    }
    let w = swapper::store::placement::weights_from_rates(&s.rates());
    assert!(
        w[0] - w[1] >= REPLACE_STEP,
        "drive 1 at half rate weighs less by a step: {w:?} from {:?}",
        s.rates()
    );
    // A partial write of key 0 keeps its place (its other bytes are needed).
    let mut part = common::patterned(1 << 20, 8);
    s.transfer(0, true, part.as_mut_slice(), 4 << 20).unwrap();
    assert_eq!(bytes_per_drive(&s, 0), [32 << 20, 32 << 20]);
    let mut want = a.as_slice().to_vec();
    want[4 << 20..5 << 20].copy_from_slice(part.as_slice());
    let mut got = common::TestBuf::new(LEN, 0);
    s.transfer(0, false, got.as_mut_slice(), 0).unwrap();
    assert!(got.as_slice() == &want[..], "key 0 after a partial write");
    // A whole rewrite follows the weights: the slow drive's share falls toward its
    // weight's (1/3 at exactly half rate), and the new bytes come back.
    let mut b = common::patterned(LEN, 9);
    s.transfer(0, true, b.as_mut_slice(), 0).unwrap();
    let per = bytes_per_drive(&s, 0);
    assert_eq!(per[0] + per[1], LEN as u64);
    assert!(
        per[1] <= (LEN as u64) * 2 / 5,
        "the half-rate drive keeps at most 40% of the rewritten tensor: {per:?}, weights {w:?}"
    );
    s.transfer(0, false, got.as_mut_slice(), 0).unwrap();
    assert!(got.as_slice() == b.as_slice(), "key 0 after its move");
    drop(s); // its threads leave the group before the bed goes
}

/// The first write of a tensor placed before any drive is measured splits it by the
/// drives' real speed (a race, `io/race.rs`): with one drive at half the other's rate,
/// the fast drive takes about two thirds, as an ideal split would, where an equal split
/// left the fast drive idle for a third of the write. One piece per drive, the spans'
/// unused parts freed, every byte and the checksum right; later tensors are placed by
/// the rates the race measured.
#[test]
fn a_first_write_splits_by_the_drives_real_speed() {
    let bed = DriveBed::up(2, &["--size", "512M", "--rates", "100,50"]);
    let s = store_in_bed(&bed);
    const LEN: usize = 128 << 20;
    let mut a = common::patterned(LEN, 11);
    s.reserve(0, LEN as u64, false).unwrap();
    assert_eq!(s.rates(), [None, None], "nothing measured yet");
    // SAFETY: `a` outlives the wait below and is only read meanwhile.
    let t = unsafe {
        s.submit(
            0,
            true,
            swapper::sys::RawBuf(a.as_mut_slice().as_mut_ptr()),
            0,
            LEN as u64,
            Some(LEN as u64),
        )
    }
    .unwrap();
    let crc = t.wait().unwrap().expect("a checksum was asked for");
    assert_eq!(
        crc,
        crc32c::crc32c(a.as_slice()),
        "the lanes' checksums combine in tensor order"
    );
    let at = s.locations(0);
    assert_eq!(at.len(), 2, "one piece per drive: {at:?}");
    assert_eq!((at[0].drive, at[1].drive), (0, 1));
    let fast = at[0].len as f64 / LEN as f64;
    assert!(
        (0.58..=0.75).contains(&fast),
        "the fast drive takes about 2/3 of the tensor (an equal split gives 1/2): {fast:.3} ({at:?})"
    );
    assert_eq!(
        s.loads(),
        [at[0].len, at[1].len],
        "the spans' unused parts are not counted"
    );
    let mut got = common::TestBuf::new(LEN, 0);
    s.transfer(0, false, got.as_mut_slice(), 0).unwrap();
    assert!(got.as_slice() == a.as_slice(), "every byte back");
    // Both drives now have a rate; the next tensor is placed by them, without a race, and
    // the space the spans left is used again (nothing grows for it).
    let rates = s.rates();
    assert!(rates.iter().all(Option::is_some), "{rates:?}");
    let w = s.weights();
    s.reserve(1, 16 << 20, false).unwrap();
    assert!(
        s.weights()[1] < 1.0,
        "drive 1 weighs less: {:?} (was {w:?})",
        s.weights()
    );
    assert_eq!(s.locations(1).len(), 2, "placed at once, by the weights");
    // Its next whole write places it by the measured weights (the first writes' rates are
    // not the steady ones); every byte of the new contents back.
    let mut b = common::patterned(LEN, 12);
    s.transfer(0, true, b.as_mut_slice(), 0).unwrap();
    let after = s.locations(0);
    assert_ne!(after, at, "moved by the weights");
    let fast = after[0].len as f64 / LEN as f64;
    assert!(
        (0.55..=0.8).contains(&fast),
        "still about 2/3 on the fast drive: {fast:.3}"
    );
    s.transfer(0, false, got.as_mut_slice(), 0).unwrap();
    assert!(got.as_slice() == b.as_slice(), "the rewrite back");
    drop(s); // its threads leave the group before the bed goes
}

/// A race needs room for more than a drive's share (its span: the whole tensor on each
/// of two drives), and a move by the weights needs room beside the old place: neither may
/// mark a drive full that has room for its share. Drive 0 (the fast one) holds 82 MiB,
/// drive 1 134 MiB.
#[test]
fn a_drive_short_of_room_for_a_span_or_a_move_is_not_taken_for_full() {
    let bed = DriveBed::up(2, &["--sizes", "100M,160M", "--rates", "100,50"]);
    let s = store_in_bed(&bed);
    const MIB: u64 = 1 << 20;
    // 96 MiB: no room for a span on drive 0; split by the (equal) weights instead.
    let mut a = common::patterned(96 << 20, 21);
    s.reserve(0, 96 * MIB, false).unwrap();
    assert_eq!(s.full(), [false, false]);
    s.transfer(0, true, a.as_mut_slice(), 0).unwrap();
    let lens: Vec<u64> = s.locations(0).iter().map(|e| e.len).collect();
    assert_eq!(lens, [48 * MIB, 48 * MIB]);
    // (A part back: the whole would measure drive 0.)
    let mut got = common::TestBuf::new(4 << 20, 0);
    s.transfer(0, false, got.as_mut_slice(), 46 * MIB).unwrap();
    assert!(got.as_slice() == &a.as_slice()[46 << 20..50 << 20]);
    s.forget(0);
    assert_eq!(s.rates()[0], None, "48 MiB do not measure drive 0 yet");
    // 72 MiB: spans fit; the race gives drive 0 about 48 MiB; its whole rewrite by the
    // measured weights (about the same split) has no room beside the old place on drive 0
    // (72 + 48 > 82 MiB) and goes over it.
    const LEN: usize = 72 << 20;
    let mut b = common::patterned(LEN, 22);
    s.reserve(1, LEN as u64, false).unwrap();
    s.transfer(1, true, b.as_mut_slice(), 0).unwrap();
    assert!(s.rates().iter().all(Option::is_some), "{:?}", s.rates());
    let mut c = common::patterned(LEN, 23);
    s.transfer(1, true, c.as_mut_slice(), 0).unwrap();
    assert_eq!(s.full(), [false, false], "no drive taken for full");
    let at = s.locations(1);
    assert_eq!(at.len(), 2, "{at:?}");
    let fast = at[0].len as f64 / LEN as f64;
    assert!(
        (0.55..=0.8).contains(&fast),
        "about 2/3 on the fast drive: {fast:.3} {at:?}"
    );
    let mut got = common::TestBuf::new(LEN, 0);
    s.transfer(1, false, got.as_mut_slice(), 0).unwrap();
    assert!(got.as_slice() == c.as_slice(), "the rewrite back");
    drop(s); // its threads leave the group before the bed goes
}

/// A race whose second drive has failed (its file system shut down: every write EIO):
/// the write fails naming that drive and the key, the other drive's tensor stays good,
/// and the failed tensor's reservation (both spans) goes back whole when it is forgotten.
#[test]
fn a_race_on_a_failed_drive_fails_naming_it_and_leaves_nothing_behind() {
    let bed = DriveBed::up(2, &["--size", "256M"]);
    let s = store_in_bed(&bed);
    let mut small = common::patterned(1 << 20, 5);
    s.reserve(1, 1 << 20, false).unwrap(); // under two units: whole, on drive 0
    s.transfer(1, true, small.as_mut_slice(), 0).unwrap();
    assert_eq!(s.locations(1)[0].drive, 0);
    const LEN: usize = 64 << 20;
    let mut a = common::patterned(LEN, 6);
    s.reserve(0, LEN as u64, false).unwrap();
    bed.drives[1].fail();
    let e = s.transfer(0, true, a.as_mut_slice(), 0).unwrap_err();
    let folder = s.folder(1).to_string_lossy().into_owned();
    assert!(
        e.message().contains("key 0")
            && e.message().contains(&folder)
            && e.message().contains("Input/output error"),
        "the error names the key and the failed drive: {e}"
    );
    let mut got = common::TestBuf::new(1 << 20, 0);
    s.transfer(1, false, got.as_mut_slice(), 0).unwrap();
    assert!(got.as_slice() == small.as_slice(), "drive 0's tensor stays good");
    s.forget(0);
    assert_eq!(
        s.loads(),
        [1 << 20, 0],
        "the failed tensor's spans are all given back"
    );
    drop(s);
}

#[test]
fn a_drive_that_fails_with_eio_is_named_and_the_others_stay_readable() {
    for (fs, size) in [("ext4", "128M"), ("xfs", "320M")] {
        let bed = DriveBed::up(2, &["--fs", fs, "--size", size]);
        let b = &bed.drives[1];
        let s = Swapper::new(settings(&bed.paths(), 12, 4 << 20)).unwrap();
        // Equal weights set: the large params are split over both drives for certain (a
        // race could leave one on a drive whole). A race meeting a failing drive: below.
        s.store().set_weights(&[1.0, 1.0]).unwrap();
        let ids: Vec<u64> = (0..12).collect();
        // 10 small params spread whole over both drives, 2 large ones split across both.
        let numel = |id: u64| if id < 10 { 8192 } else { 4 << 20 };
        let data: Vec<Vec<u8>> = ids.iter().map(|&id| put(&s, id, numel(id))).collect();
        s.swap_out_and_release(&ids, false, false).unwrap();
        let on = |id: u64| -> Vec<usize> { s.param_locations(id).iter().map(|e| e.drive).collect() };
        let only_a: Vec<u64> = ids.iter().copied().filter(|&id| on(id) == [0]).collect();
        let touches_b: Vec<u64> = ids.iter().copied().filter(|&id| on(id).contains(&1)).collect();
        assert!(
            !only_a.is_empty() && touches_b.contains(&10),
            "{only_a:?} {touches_b:?}"
        );
        let b_folder = s.folders()[1].clone();
        // Param 11 (split over both drives) is in memory when drive b fails.
        // SAFETY: pool buffers only.
        unsafe { s.swap_in(&[11], false, None) }.unwrap();
        b.fail();
        for &id in touches_b.iter().filter(|&&id| id != 11) {
            // SAFETY: pool buffers only.
            let e = unsafe { s.swap_in(&[id], false, None) }.unwrap_err();
            assert!(
                e.message().contains(&format!("param {id}"))
                    && e.message().contains(&*b_folder.to_string_lossy())
                    && e.message().contains("Input/output error"),
                "{fs:?}: the error names the drive and the param: {e}"
            );
            assert_eq!(s.param_status(id).unwrap(), ParamStatus::NotAvailable);
        }
        for &id in &only_a {
            // SAFETY: pool buffers only.
            unsafe { s.swap_in(&[id], false, None) }.unwrap();
            assert!(
                held(&s, id) == data[id as usize],
                "{fs:?}: param {id} on the good drive"
            );
        }
        // A write that touches the failed drive fails naming it; the param keeps its data.
        let e = s.swap_out(&[11], false).unwrap_err();
        assert!(
            e.message().contains("param 11") && e.message().contains(&*b_folder.to_string_lossy()),
            "{fs:?}: {e}"
        );
        assert_eq!(s.param_status(11).unwrap(), ParamStatus::Available);
        assert!(held(&s, 11) == data[11], "{fs:?}: param 11 keeps its data");
        // The good drive still takes writes.
        s.swap_out_and_release(&[only_a[0]], false, false).unwrap();
        drop(s);
        let name = bed.name.clone();
        drop(bed);
        let left = common::drive_bed::leftovers(&name);
        assert!(left.is_empty(), "{fs}: the failed drive's bed is gone: {left:?}");
    }
}

/// The folder faults of tests/folder_faults.rs, on each drive of a two-drive swapper:
/// a renamed rank folder, a rank folder replaced by a symbolic link, an extent file
/// replaced by a FIFO.
#[test]
fn folder_faults_on_every_drive() {
    for d in 0..2 {
        let (x, y) = (common::disk_dir(), common::disk_dir());
        let s = Arc::new(Swapper::new(settings(&[x.path(), y.path()], 4, 1 << 20)).unwrap());
        let data: Vec<Vec<u8>> = (0..4)
            .map(|id| put(&s, id, if id == 0 { 1 << 20 } else { 4096 }))
            .collect();
        s.swap_out_and_release(&[0, 1, 2, 3], false, false).unwrap();
        let rank: PathBuf = s.folders()[d].clone();
        // Rename drive d's folder and put a link to elsewhere, with a same-named file there.
        let moved = rank.with_file_name("rank0.moved");
        std::fs::rename(&rank, &moved).unwrap();
        let elsewhere = rank.with_file_name("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("extent-0.swp"), [7u8; 4096]).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &rank).unwrap();
        for id in 0..4u64 {
            // SAFETY: pool buffers only.
            unsafe { s.swap_in(&[id], false, None) }.unwrap();
            assert!(held(&s, id) == data[id as usize], "drive {d}: param {id}");
        }
        s.swap_out_and_release(&[0, 1, 2, 3], false, false).unwrap();
        assert_eq!(
            std::fs::read(elsewhere.join("extent-0.swp")).unwrap(),
            [7u8; 4096]
        );
        // Drive d's extent file replaced by a FIFO: a param with bytes there is refused
        // (naming the file), without hanging.
        let file = moved.join("extent-0.swp");
        std::fs::remove_file(&file).unwrap();
        let c = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let victim = (0..4u64)
            .find(|&id| s.param_locations(id).iter().any(|e| e.drive == d))
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = Arc::clone(&s);
        // SAFETY: pool buffers only.
        std::thread::spawn(move || tx.send(unsafe { s2.swap_in(&[victim], false, None) }));
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a swap-in from a FIFO hung")
            .unwrap_err();
        assert_eq!(e.status(), Status::CorruptData, "{e}");
        assert!(
            e.message().contains("FIFO") && e.message().contains("extent-0.swp"),
            "{e}"
        );
        assert!(e.message().contains(&format!("drive {d}")), "{e}");
    }
}

/// Space reused for a tensor that must read as zeros is zeroed by the file system
/// (FALLOC_FL_ZERO_RANGE on ext4 and XFS), on real drives, and fresh space reads as zeros.
#[test]
fn reused_space_reserved_zeroed_reads_zeros_on_ext4_and_xfs() {
    use swapper::store::{Store, StoreConfig};
    for (fs, size) in [("ext4", "64M"), ("xfs", "320M")] {
        let bed = DriveBed::up(1, &["--fs", fs, "--size", size]);
        let s = Store::open(StoreConfig {
            paths: vec![bed.drives[0].path().to_path_buf()],
            folder: ["zero_stage_3", "optimizer", "rank0"].map(String::from).to_vec(),
            io: IoConfig::default(),
            adopt: false,
        })
        .unwrap();
        let mut buf = common::patterned(3 << 20, 5);
        s.reserve(1, 3 << 20, false).unwrap();
        s.transfer(1, true, buf.as_mut_slice(), 0).unwrap();
        let old = s.locations(1);
        s.forget(1);
        s.reserve(2, 3 << 20, true).unwrap();
        assert_eq!(
            s.locations(2)[0].file_offset,
            old[0].file_offset,
            "{fs:?}: the same space, reused"
        );
        s.reserve(3, 1 << 20, true).unwrap(); // fresh space
        for (key, len) in [(2u64, 3usize << 20), (3, 1 << 20)] {
            let mut got = common::TestBuf::new(len, 0);
            got.as_mut_slice().fill(0xAA);
            s.transfer(key, false, got.as_mut_slice(), 0).unwrap();
            assert!(
                got.as_slice().iter().all(|&b| b == 0),
                "{fs:?}: key {key} reads zeros"
            );
        }
    }
}
