//! Resume (issue 20): a flushed swap folder adopted by a new swapper, copy-on-write after
//! a flush, garbage reclaimed, every kind of bad input refused with nothing removed,
//! and snapshots (reflinks on XFS and btrfs, copies on ext4 and across file systems)
//! restored and adopted. The crash proof with real kills is tests/resume_kills.rs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::drive_bed::DriveBed;
use swapper::store::manifest::{self, Manifest};
use swapper::{Dtype, IoConfig, ParamStatus, Settings, Status, Swapper};

fn settings(paths: &[&Path], adopt: bool) -> Settings {
    Settings {
        nvme_paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        dtype: Dtype::Fp16,
        buffer_count: 8,
        buffer_numel: 3 << 20,
        io: IoConfig {
            thread_count: 2,
            ..IoConfig::default()
        },
        verify_checksums: true,
        adopt,
        ..Settings::default()
    }
}

/// Params of a few sizes: small (whole on one drive) and large (split over drives).
const PARAMS: [(u64, u64); 5] = [(1, 2048), (2, 5000), (3, 1 << 20), (4, 3 << 20), (9, 100)];

fn data(id: u64, numel: u64, generation: u64) -> Vec<u8> {
    common::pattern(numel as usize * 2, id * 1000 + generation)
}

/// Writes every param with generation `g`'s pattern and releases it.
fn write_all(s: &Swapper, g: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    for &(id, numel) in &PARAMS {
        let d = data(id, numel, g);
        let buf = s.get_buffer(id, numel).unwrap();
        // SAFETY: a fresh pool buffer of at least `numel` fp16 elements.
        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, d.len()) };
        s.swap_out_and_release(&[id], false, true).unwrap();
        out.insert(id, d);
    }
    out
}

/// Reads every param of `want` back (without get_buffer) and compares.
fn check_all(s: &Swapper, want: &BTreeMap<u64, Vec<u8>>) {
    for (&id, d) in want {
        assert_eq!(
            s.param_status(id).unwrap(),
            ParamStatus::NotAvailable,
            "param {id}"
        );
        // SAFETY: pool buffers only.
        unsafe { s.swap_in(&[id], false, None) }.unwrap();
        let (buf, numel) = s.param_buffer(id).unwrap();
        assert_eq!(numel as usize * 2, d.len(), "param {id}'s numel");
        // SAFETY: the param is AVAILABLE.
        let got = unsafe { swapper::sys::alloc::borrow(buf, d.len()) };
        assert!(got == &d[..], "param {id}: bytes differ");
        s.release(&[id]).unwrap();
    }
}

fn listing(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

/// Held by every test that installs fault rules: one of them clears every rule
/// (`fault::clear`), which would take another test's rule away before it struck.
static FAULTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn faults() -> std::sync::MutexGuard<'static, ()> {
    FAULTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn rank_folder(root: &Path) -> PathBuf {
    root.join("zero_stage_3/float16params/rank0")
}

#[test]
fn a_flushed_folder_is_adopted_with_every_byte_and_rewrites_after_the_flush_do_not_show() {
    let a = common::disk_dir();
    let b = common::disk_dir();
    let drives = [a.path(), b.path()];
    let s = Swapper::new(settings(&drives, false)).unwrap();
    let g1 = write_all(&s, 1);
    assert_eq!(s.flush().unwrap(), 1);
    let placed_g1: Vec<_> = PARAMS.iter().map(|p| s.param_locations(p.0)).collect();
    // Rewrites after the flush go to fresh space; the flushed pieces are retired.
    let g2 = write_all(&s, 2);
    for (k, p) in PARAMS.iter().enumerate() {
        assert_ne!(
            s.param_locations(p.0),
            placed_g1[k],
            "param {} rewritten in place after a flush",
            p.0
        );
    }
    assert!(s.store().retired_bytes() > 0);
    // A second rewrite before the next flush reuses its own unflushed place.
    let placed_g2: Vec<_> = PARAMS.iter().map(|p| s.param_locations(p.0)).collect();
    write_all(&s, 2);
    for (k, p) in PARAMS.iter().enumerate() {
        assert_eq!(s.param_locations(p.0), placed_g2[k], "param {}", p.0);
    }
    drop(s); // no flush: the folder is as flush 1 left it
    let s = Swapper::new(settings(&drives, true)).unwrap();
    assert_eq!(s.durable_generation(), 1);
    check_all(&s, &g1);
    // Flushing generation 2 and adopting again shows it; the retired space is free again.
    write_all(&s, 2);
    assert_eq!(s.flush().unwrap(), 2);
    assert_eq!(s.store().retired_bytes(), 0);
    drop(s);
    let s = Swapper::new(settings(&drives, true)).unwrap();
    check_all(&s, &g2);
    // A param got with get_buffer and not yet written keeps its flushed bytes at a flush.
    let buf = s.get_buffer(1, 2048).unwrap();
    // SAFETY: a pool buffer of 2048 fp16 elements.
    unsafe { std::ptr::write_bytes(buf.0, 0xEE, 4096) };
    s.flush().unwrap();
    drop(s);
    let s = Swapper::new(settings(&drives, true)).unwrap();
    check_all(&s, &g2);
    drop(s);
    // The default still empties the folder.
    let s = Swapper::new(settings(&drives, false)).unwrap();
    assert!(s.param_status(1).is_err());
    assert!(listing(&rank_folder(a.path())).is_empty());
}

#[test]
fn adopting_reclaims_garbage_and_leaves_foreign_files_alone() {
    let a = common::disk_dir();
    let s = Swapper::new(settings(&[a.path()], false)).unwrap();
    let g1 = write_all(&s, 1);
    s.flush().unwrap();
    write_all(&s, 2); // garbage once adopted
    drop(s);
    let rank = rank_folder(a.path());
    std::fs::write(rank.join("extent-7.swp"), b"made after the flush").unwrap();
    std::fs::write(rank.join("manifest.json.new"), b"interrupted").unwrap();
    std::fs::write(rank.join("notes.txt"), b"the user's").unwrap();
    let s = Swapper::new(settings(&[a.path()], true)).unwrap();
    let names: Vec<String> = listing(&rank).into_keys().collect();
    assert_eq!(names, ["extent-0.swp", "manifest.json", "notes.txt"]);
    // The garbage's space is free: writing everything again grows nothing.
    let before = listing(&rank)["extent-0.swp"];
    write_all(&s, 3);
    assert_eq!(listing(&rank)["extent-0.swp"], before, "garbage space was reused");
    drop(s);
    let s = Swapper::new(settings(&[a.path()], true)).unwrap();
    check_all(&s, &g1);
}

#[test]
fn a_folder_never_flushed_starts_empty_and_one_with_foreign_files_is_refused() {
    let a = common::disk_dir();
    let s = Swapper::new(settings(&[a.path()], false)).unwrap();
    write_all(&s, 1);
    drop(s);
    let s = Swapper::new(settings(&[a.path()], true)).unwrap();
    assert!(s.param_status(1).is_err());
    drop(s);
    let rank = rank_folder(a.path());
    std::fs::write(rank.join("precious"), b"x").unwrap();
    let e = Swapper::new(settings(&[a.path()], true)).err().unwrap();
    assert_eq!(e.status(), Status::CorruptData, "{e}");
    assert!(e.message().contains("precious"), "{e}");
    assert!(rank.join("precious").exists());
}

/// Adopting a folder without a manifest starts empty and says so: one warning naming the
/// rank folders (a wrong path, rank or dtype would otherwise resume from nothing in
/// silence), from the store, so for both swappers. Adopting a flushed folder, or creating
/// without adopt, says nothing of the kind.
#[test]
fn adopting_a_folder_without_a_manifest_warns_naming_it_for_both_swappers() {
    use std::sync::{Arc, Mutex};
    use swapper::log::{set_sink, LogLevel, Sink};
    use swapper::optimizer::{OptimizerSettings, OptimizerSwapper};
    let seen: Arc<Mutex<Vec<(LogLevel, String)>>> = Arc::default();
    let sink = seen.clone();
    // Other tests of this binary log meanwhile: their messages name other folders.
    set_sink(
        Some(Sink::Rust(Box::new(move |level, m| {
            sink.lock().unwrap().push((level, m.to_string()))
        }))),
        LogLevel::Info,
    );
    let about = |dir: &Path| -> Vec<(LogLevel, String)> {
        let dir = dir.display().to_string();
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.contains("no manifest") && m.contains(&dir))
            .cloned()
            .collect()
    };
    let (a, b) = (common::disk_dir(), common::disk_dir());
    let s = Swapper::new(settings(&[a.path(), b.path()], true)).unwrap();
    let said = about(&rank_folder(a.path()));
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(said[0].0, LogLevel::Warn, "{said:?}");
    for text in [
        "starting empty",
        &rank_folder(b.path()).display().to_string(),
        "nvme_path",
    ] {
        assert!(said[0].1.contains(text), "{text:?} in {said:?}");
    }
    write_all(&s, 1);
    s.flush().unwrap();
    drop(s);
    let s = Swapper::new(settings(&[a.path(), b.path()], true)).unwrap();
    assert!(s.param_status(1).is_ok());
    drop(s);
    assert_eq!(
        about(&rank_folder(a.path())).len(),
        1,
        "a flushed folder is adopted in silence"
    );

    let c = common::disk_dir();
    let opt = |adopt| {
        OptimizerSwapper::new(OptimizerSettings {
            nvme_paths: vec![c.path().to_path_buf()],
            ring_bytes: 1 << 20,
            pin_memory: false,
            adopt,
            ..OptimizerSettings::default()
        })
        .unwrap()
    };
    drop(opt(false));
    let folder = c.path().join("zero_stage_3/optimizer/rank0");
    assert!(about(&folder).is_empty(), "without adopt: nothing to say");
    drop(opt(true));
    let said = about(&folder);
    assert_eq!(said.len(), 1, "{said:?}");
    assert_eq!(said[0].0, LogLevel::Warn, "{said:?}");
    assert!(said[0].1.contains("starting empty"), "{said:?}");
    set_sink(None, LogLevel::Info);
}

/// A flushed one-drive folder, and its files as they are.
fn flushed(dir: &Path) -> BTreeMap<String, u64> {
    let s = Swapper::new(settings(&[dir], false)).unwrap();
    write_all(&s, 1);
    s.flush().unwrap();
    drop(s);
    listing(&rank_folder(dir))
}

fn rewrite_manifest(rank: &Path, edit: impl FnOnce(&mut Manifest)) {
    let p = rank.join(manifest::NAME);
    let mut m = Manifest::decode(&std::fs::read(&p).unwrap(), "test").unwrap();
    edit(&mut m);
    std::fs::write(&p, m.encode()).unwrap();
}

/// Adoption fails with `status`, a message holding each of `texts`, and the folder as it was.
fn refused(dir: &Path, status: Status, texts: &[&str]) {
    let rank = rank_folder(dir);
    let before = listing(&rank);
    let e = Swapper::new(settings(&[dir], true)).err().unwrap();
    assert_eq!(e.status(), status, "{e}");
    for t in texts {
        assert!(e.message().contains(t), "{t:?} not in: {e}");
    }
    assert_eq!(listing(&rank), before, "nothing removed or changed");
}

#[test]
fn bad_manifests_and_files_are_refused_naming_them_and_nothing_is_removed() {
    // Another rank's manifest copied here.
    let a = common::disk_dir();
    flushed(a.path());
    rewrite_manifest(&rank_folder(a.path()), |m| m.rank = "rank3".into());
    refused(a.path(), Status::InvalidArgument, &["rank3", "manifest.json"]);
    // Another dtype's.
    let a = common::disk_dir();
    flushed(a.path());
    rewrite_manifest(&rank_folder(a.path()), |m| {
        m.kind = "zero_stage_3/bfloat16params".into()
    });
    refused(a.path(), Status::InvalidArgument, &["bfloat16"]);
    // A param recorded with another dtype.
    let a = common::disk_dir();
    flushed(a.path());
    rewrite_manifest(&rank_folder(a.path()), |m| {
        m.tensors[0].record.dtype = "float32".into()
    });
    refused(
        a.path(),
        Status::InvalidArgument,
        &["param 1", "float32", "extent-0.swp"],
    );
    // Another library version.
    let a = common::disk_dir();
    flushed(a.path());
    rewrite_manifest(&rank_folder(a.path()), |m| m.library = "0.0.9".into());
    refused(a.path(), Status::Unsupported, &["0.0.9"]);
    // Truncated, garbled.
    let a = common::disk_dir();
    flushed(a.path());
    let mp = rank_folder(a.path()).join(manifest::NAME);
    let bytes = std::fs::read(&mp).unwrap();
    std::fs::write(&mp, &bytes[..bytes.len() - 7]).unwrap();
    refused(a.path(), Status::CorruptData, &["truncated", "manifest.json"]);
    let mut g = bytes.clone();
    let k = g.len() / 2;
    g[k] ^= 1;
    std::fs::write(&mp, &g).unwrap();
    refused(a.path(), Status::CorruptData, &["garbled"]);
    // An extent file truncated, deleted; a param's bytes flipped (checksum).
    let a = common::disk_dir();
    flushed(a.path());
    let ext = rank_folder(a.path()).join("extent-0.swp");
    let f = std::fs::OpenOptions::new().write(true).open(&ext).unwrap();
    f.set_len(4096).unwrap();
    refused(
        a.path(),
        Status::CorruptData,
        &["extent-0.swp", "tensor", "4096 bytes"],
    );
    std::fs::remove_file(&ext).unwrap();
    refused(a.path(), Status::CorruptData, &["extent-0.swp"]);
    let a = common::disk_dir();
    flushed(a.path());
    let s = Swapper::new(settings(&[a.path()], true)).unwrap();
    let path = common::flip_stored_byte(&s, 4, 5000);
    drop(s);
    refused(
        a.path(),
        Status::CorruptData,
        &["param 4", "checksum mismatch", &path.to_string_lossy()],
    );
}

#[test]
fn a_folder_adopted_twice_at_once_is_busy_in_this_process_and_another() {
    let a = common::disk_dir();
    flushed(a.path());
    let s = Swapper::new(settings(&[a.path()], true)).unwrap();
    let e = Swapper::new(settings(&[a.path()], true)).err().unwrap();
    assert_eq!(e.status(), Status::Busy, "{e}");
    // Another process: a child adopting the same folder is Busy too.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "adopt_child", "--nocapture"])
        .env("RESUME_ADOPT_CHILD", a.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("child: SWAPPER_STATUS_BUSY"), "{text}");
    drop(s);
    check_all(
        &Swapper::new(settings(&[a.path()], true)).unwrap(),
        &write_all_data(1),
    );
}

fn write_all_data(g: u64) -> BTreeMap<u64, Vec<u8>> {
    PARAMS.iter().map(|&(id, n)| (id, data(id, n, g))).collect()
}

/// Run by the test above in a child process.
#[test]
fn adopt_child() {
    let Some(dir) = std::env::var_os("RESUME_ADOPT_CHILD") else {
        return;
    };
    let r = Swapper::new(settings(&[Path::new(&dir)], true));
    println!("child: {}", r.err().map_or("OK", |e| e.status().name()));
}

#[test]
fn generations_one_apart_take_the_newer_and_a_real_mix_is_refused() {
    let a = common::disk_dir();
    let b = common::disk_dir();
    let drives = [a.path(), b.path()];
    let s = Swapper::new(settings(&drives, false)).unwrap();
    write_all(&s, 1);
    s.flush().unwrap();
    let m1 = std::fs::read(rank_folder(b.path()).join(manifest::NAME)).unwrap();
    let g2 = write_all(&s, 2);
    s.flush().unwrap();
    let m2 = std::fs::read(rank_folder(b.path()).join(manifest::NAME)).unwrap();
    let g3 = write_all(&s, 3);
    s.flush().unwrap();
    let m3 = std::fs::read(rank_folder(a.path()).join(manifest::NAME)).unwrap();
    drop(s);
    // Drive 1 back at generation 2, drive 0 at 3: a flush interrupted between drives.
    // Generation 3 is adopted, and drive 1 is brought up to it.
    std::fs::write(rank_folder(b.path()).join(manifest::NAME), &m2).unwrap();
    let s = Swapper::new(settings(&drives, true)).unwrap();
    assert_eq!(s.durable_generation(), 3);
    check_all(&s, &g3);
    drop(s);
    let on_b = Manifest::decode(
        &std::fs::read(rank_folder(b.path()).join(manifest::NAME)).unwrap(),
        "b",
    )
    .unwrap();
    assert_eq!((on_b.generation, on_b.this_drive), (3, 1));
    std::fs::write(rank_folder(a.path()).join(manifest::NAME), &m3).unwrap();
    // Drive 1 back at generation 1, drive 0 at 3: not a crash's leftovers.
    std::fs::write(rank_folder(b.path()).join(manifest::NAME), &m1).unwrap();
    let e = Swapper::new(settings(&drives, true)).err().unwrap();
    assert_eq!(e.status(), Status::CorruptData, "{e}");
    assert!(e.message().contains("do not belong together"), "{e}");
    // Generation 2 on drive 1 and 2 on drive 0 (drive 0 back too): generation 2 adopted.
    std::fs::write(rank_folder(b.path()).join(manifest::NAME), &m2).unwrap();
    let mut m = Manifest::decode(&m2, "m2").unwrap();
    m.this_drive = 0;
    std::fs::write(rank_folder(a.path()).join(manifest::NAME), m.encode()).unwrap();
    let s = Swapper::new(settings(&drives, true)).unwrap();
    assert_eq!(s.durable_generation(), 2);
    check_all(&s, &g2);
    drop(s);
    // Drives given in the other order.
    let e = Swapper::new(settings(&[b.path(), a.path()], true)).err().unwrap();
    assert!(e.message().contains("order"), "{e}");
}

/// Snapshot with data 1, write data 2 and flush, restore into `target`, adopt: data 1.
fn snapshot_round_trip(
    src: &[&Path],
    dest: &Path,
    target: &[&Path],
) -> swapper::store::snapshot::SnapshotReport {
    let s = Swapper::new(settings(src, false)).unwrap();
    let g1 = write_all(&s, 1);
    let report = s.snapshot_to(dest).unwrap();
    assert_eq!(report.generation, 1);
    write_all(&s, 2);
    s.flush().unwrap();
    // A second snapshot into the same folder is refused, nothing written.
    let e = s.snapshot_to(dest).err().unwrap();
    assert_eq!(e.status(), Status::BadState, "{e}");
    drop(s);
    let r = Swapper::restore(dest, &settings(target, true)).unwrap();
    assert_eq!(r.generation, 1);
    let s = Swapper::new(settings(target, true)).unwrap();
    check_all(&s, &g1);
    drop(s);
    // The snapshot itself can be adopted in place too.
    let in_place: Vec<PathBuf> = (0..src.len()).map(|k| dest.join(format!("drive{k}"))).collect();
    let refs: Vec<&Path> = in_place.iter().map(|p| p.as_path()).collect();
    let s = Swapper::new(settings(&refs, true)).unwrap();
    check_all(&s, &g1);
    report
}

#[test]
fn snapshots_copy_on_ext4_and_restore_every_byte() {
    let a = common::disk_dir();
    let b = common::disk_dir();
    let dest = common::disk_dir();
    let t = common::disk_dir();
    let r = snapshot_round_trip(
        &[a.path(), b.path()],
        &dest.path().join("ckpt"),
        &[t.path(), b.path()],
    );
    assert_eq!(r.files, 2);
    assert_eq!(r.reflinked, 0, "ext4 shares no extents: {r:?}");
    // A restore of the wrong rank is refused before anything is emptied.
    let mut other = settings(&[t.path(), b.path()], true);
    other.rank = 1;
    let e = Swapper::restore(&dest.path().join("ckpt"), &other).err().unwrap();
    assert_eq!(e.status(), Status::NotFound, "{e}");
}

#[test]
fn snapshots_reflink_on_xfs_and_btrfs_and_copy_across_file_systems() {
    for fs in ["xfs", "btrfs"] {
        let bed = DriveBed::up(2, &["--fs", fs, "--size", "400M"]);
        let d0 = &bed.drives[0].mount;
        let d1 = &bed.drives[1].mount;
        let r = snapshot_round_trip(&[d0.as_path()], &d0.join("ckpt"), &[d1.as_path()]);
        assert_eq!((r.files, r.reflinked), (1, 1), "{fs}: {r:?}");
        // Into another file system (the ext4 disk): EXDEV, copied instead.
        let other = common::disk_dir();
        let r = snapshot_round_trip(&[d0.as_path()], &other.path().join("ckpt"), &[other.path()]);
        assert_eq!((r.files, r.reflinked), (1, 0), "{fs} to ext4: {r:?}");
    }
}

#[test]
fn snapshots_copy_into_tmpfs_and_restore_every_byte() {
    // /dev/shm is tmpfs: no shared extents, and O_DIRECT only on recent kernels; the
    // copy takes whichever path the destination allows and every byte comes back.
    let a = common::disk_dir();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let t = common::disk_dir();
    let r = snapshot_round_trip(&[a.path()], &shm.path().join("ckpt"), &[t.path()]);
    assert_eq!((r.files, r.reflinked, r.copied), (1, 0, 1), "{r:?}");
}

#[test]
fn a_snapshot_into_a_full_file_system_fails_naming_the_file_and_the_swapper_goes_on() {
    // A real ENOSPC: the checkpoint folder on an 8 MiB ext4 drive, the data larger.
    let bed = DriveBed::up(1, &["--fs", "ext4", "--size", "8M"]);
    let a = common::disk_dir();
    let s = Swapper::new(settings(&[a.path()], false)).unwrap();
    let g1 = write_all(&s, 1);
    let dest = bed.drives[0].mount.join("ckpt");
    let e = s.snapshot_to(&dest).err().unwrap();
    assert_eq!(e.status(), Status::IoError, "{e}");
    let text = e.message();
    assert!(text.contains("No space left on device"), "{e}");
    assert!(text.contains("extent-0.swp"), "names the file: {e}");
    assert!(
        text.contains(&dest.display().to_string()),
        "names the snapshot: {e}"
    );
    // No manifest: nothing can adopt the partial copy as a snapshot.
    let copy = rank_folder(&dest.join("drive0"));
    assert!(
        !copy.join(manifest::NAME).exists(),
        "a partial snapshot has no manifest"
    );
    let e = Swapper::restore(&dest, &settings(&[a.path()], true))
        .err()
        .unwrap();
    assert_eq!(e.status(), Status::NotFound, "{e}");
    // The swapper's own data are untouched and it goes on: read back, write, flush, and
    // a snapshot where there is room.
    check_all(&s, &g1);
    let g2 = write_all(&s, 2);
    s.flush().unwrap();
    let room = common::disk_dir();
    s.snapshot_to(&room.path().join("ckpt")).unwrap();
    check_all(&s, &g2);
    drop(s);
    let t = common::disk_dir();
    Swapper::restore(&room.path().join("ckpt"), &settings(&[t.path()], true)).unwrap();
    let s = Swapper::new(settings(&[t.path()], true)).unwrap();
    check_all(&s, &g2);
}

#[test]
fn a_flush_whose_syncs_fail_leaves_the_previous_generation_and_frees_nothing() {
    use swapper::sys::fault::{self, Call, Fault, Rule};
    let _faults = faults();
    let a = common::disk_dir();
    let s = Swapper::new(settings(&[a.path()], false)).unwrap();
    let g1 = write_all(&s, 1);
    s.flush().unwrap();
    write_all(&s, 2);
    let retired = s.store().retired_bytes();
    assert!(retired > 0);
    let tag = a.path().to_string_lossy().into_owned();
    for (what, skip) in [("the data", 0u64), ("the manifest", 1), ("the folder", 2)] {
        fault::install(Rule {
            call: Call::Sync,
            path_contains: tag.clone(),
            fault: Fault::Errno(libc::EIO),
            skip,
            times: 1,
        });
        let e = s.flush().err().unwrap();
        fault::clear();
        assert_eq!(e.status(), Status::IoError, "{what}: {e}");
        assert!(
            e.message().contains("generation 1 is still the durable one"),
            "{what}: {e}"
        );
        assert_eq!(s.durable_generation(), 1);
        assert!(s.store().retired_bytes() >= retired, "{what}: nothing freed");
    }
    // A failed flush of the folder sync has renamed its manifest: that generation is as
    // complete as the previous one, and adopting takes it (data 2); the others left 1.
    drop(s);
    let s = Swapper::new(settings(&[a.path()], true)).unwrap();
    assert_eq!(
        s.durable_generation(),
        4,
        "the last attempt's manifest was renamed"
    );
    check_all(&s, &write_all_data(2));
    drop(s);
    let _ = g1;
}

#[test]
fn flushes_racing_writes_on_other_threads_record_only_complete_writes() {
    let a = common::disk_dir();
    let b = common::disk_dir();
    let drives = [a.path(), b.path()];
    let s = std::sync::Arc::new(Swapper::new(settings(&drives, false)).unwrap());
    write_all(&s, 0);
    s.flush().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut g = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write_all(&s, g);
                g += 1;
            }
            g
        })
    };
    let mut flushes = 0;
    while flushes < 30 {
        s.flush().unwrap();
        flushes += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = writer.join().unwrap();
    let s = std::sync::Arc::try_unwrap(s).ok().unwrap();
    drop(s);
    // Adopted: every param verifies its checksum and holds one complete write.
    let s = Swapper::new(settings(&drives, true)).unwrap();
    for &(id, numel) in &PARAMS {
        // SAFETY: pool buffers only.
        unsafe { s.swap_in(&[id], false, None) }.unwrap();
        let (buf, n) = s.param_buffer(id).unwrap();
        assert_eq!(n, numel);
        // SAFETY: the param is AVAILABLE.
        let got = unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) };
        assert!(
            (0..last).any(|g| got == &data(id, numel, g)[..]),
            "param {id} holds no complete write"
        );
        s.release(&[id]).unwrap();
    }
}

/// Bytes of the extent files of a rank folder (their size is what they hold reserved).
fn extent_bytes(folder: &Path) -> u64 {
    listing(folder)
        .iter()
        .filter(|(name, _)| name.starts_with("extent-"))
        .map(|(_, len)| len)
        .sum()
}

#[test]
fn between_flushes_the_files_keep_one_more_copy_of_what_was_rewritten_and_stop_growing() {
    use swapper::sys::fault::{self, Call, Fault, Rule};
    let _faults = faults();
    let a = common::disk_dir();
    let s = Swapper::new(settings(&[a.path()], false)).unwrap();
    write_all(&s, 1);
    let live: u64 = PARAMS
        .iter()
        .flat_map(|p| s.param_locations(p.0))
        .map(|e| e.len)
        .sum();
    s.flush().unwrap();
    // Every param rewritten after the flush: its flushed copy is kept (retired) beside
    // the new one until the next flush is durable.
    write_all(&s, 2);
    assert_eq!(s.store().retired_bytes(), live);
    let size = extent_bytes(&rank_folder(a.path()));
    assert!(size >= 2 * live, "{size} bytes of files for twice {live}");
    // Flush and rewrite again and again: the space freed by each flush is reused, the
    // files do not grow.
    for g in 3..10 {
        s.flush().unwrap();
        assert_eq!(s.store().retired_bytes(), 0, "generation {g}");
        write_all(&s, g);
        assert_eq!(s.store().retired_bytes(), live, "generation {g}");
        assert_eq!(
            extent_bytes(&rank_folder(a.path())),
            size,
            "generation {g}: the files grew"
        );
    }
    // A flush that fails keeps what it named too (it may have reached a drive): one more
    // copy until a flush succeeds, which frees both.
    fault::install(Rule {
        call: Call::Sync,
        path_contains: a.path().to_string_lossy().into_owned(),
        fault: Fault::Errno(libc::EIO),
        skip: 0,
        times: 1,
    });
    s.flush().unwrap_err();
    write_all(&s, 20);
    assert_eq!(s.store().retired_bytes(), 2 * live);
    s.flush().unwrap();
    assert_eq!(s.store().retired_bytes(), 0);
}

#[test]
fn a_flush_syncs_the_folder_of_new_extent_files_before_any_manifest_names_them() {
    use swapper::sys::fault::{self, Call, Fault, Rule};
    let _faults = faults();
    let a = common::disk_dir();
    let s = Swapper::new(settings(&[a.path()], false)).unwrap();
    write_all(&s, 1);
    let files = listing(&rank_folder(a.path()))
        .keys()
        .filter(|n| n.starts_with("extent-"))
        .count();
    assert_eq!(files, 1);
    let tag = a.path().to_string_lossy().into_owned();
    let fail_second_sync = || {
        fault::install(Rule {
            call: Call::Sync,
            path_contains: tag.clone(),
            fault: Fault::Errno(libc::EIO),
            skip: 1,
            times: 1,
        })
    };
    // The extent file is new: after its fdatasync, the folder's fsync (its entry), which
    // fails here, before any manifest is written.
    fail_second_sync();
    let e = s.flush().unwrap_err();
    assert!(
        e.message().contains("its new extent files' entries")
            && e.message().contains("generation 0 is still the durable one"),
        "{e}"
    );
    assert!(!rank_folder(a.path()).join("manifest.json").exists());
    // Retried by the next flush, which succeeds.
    assert_eq!(s.flush().unwrap(), 2);
    // No new file since: the second sync of a flush is the manifest's own.
    write_all(&s, 3);
    fail_second_sync();
    let e = s.flush().unwrap_err();
    assert!(e.message().contains("manifest.json.new"), "{e}");
    assert_eq!(s.flush().unwrap(), 4);
}
