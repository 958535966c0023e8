//! Writes that extend a file reserve its blocks first (fallocate): on real, loop-mounted
//! file systems, a write that does not fit fails with ENOSPC naming the file and gives
//! the space back, and a file system that cannot preallocate still takes the writes.
//! The file systems come from the drive bed (tests/common/drive_bed.rs); it needs root,
//! e2fsprogs and xfsprogs and fails with what is missing.

mod common;

use std::path::{Path, PathBuf};

use common::drive_bed::DriveBed;
use common::{pattern, TestBuf};
use swapper::io::IoEngine;
use swapper::{Backend, DirectIo, IoConfig, Status};

use common::backends;

/// One drive of the drive bed (scripts/drive-bed.sh) with file system `fs` and `size`.
fn loop_fs(fs: &str, size: &str) -> DriveBed {
    DriveBed::up(1, &["--fs", fs, "--size", size])
}

/// A file on the bed's drive.
fn on(bed: &DriveBed, name: &str) -> PathBuf {
    bed.drives[0].mount.join(name)
}

/// Free bytes of the file system holding `path` (for unprivileged users: what they may
/// still write).
fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` writable.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

fn config(backend: Backend) -> IoConfig {
    IoConfig {
        backend,
        direct_io: DirectIo::Auto,
        ..IoConfig::default()
    }
}

#[test]
fn a_write_that_does_not_fit_fails_with_enospc_and_gives_the_space_back() {
    let fs = loop_fs("ext4", "32M");
    let keep = on(&fs, "keep");
    let kept = pattern(1 << 20, 7);
    let mut buf = TestBuf::new(64 << 20, 0);
    buf.as_mut_slice().copy_from_slice(&pattern(64 << 20, 1));
    for backend in backends() {
        let engine = IoEngine::new(config(backend)).unwrap();
        engine.write(&kept, &keep, 0).unwrap();
        let before = free_bytes(&fs.drives[0].mount);
        let big = on(&fs, &format!("big-{backend:?}"));
        let e = engine.write(buf.as_slice(), &big, 0).unwrap_err();
        assert_eq!(e.status(), Status::IoError, "{backend:?}: {e}");
        assert!(
            e.message().contains(big.to_str().unwrap()) && e.message().contains("errno 28"),
            "{backend:?}: the error names the file and ENOSPC: {e}"
        );
        // The failed write left the free space as it was (within 1 MiB of metadata),
        // instead of filling the file system with a partial file.
        let after = free_bytes(&fs.drives[0].mount);
        assert!(
            after + (1 << 20) >= before,
            "{backend:?}: {before} bytes free before the failed write, {after} after"
        );
        // The file system still takes a write that fits, and the other file is intact.
        let small = on(&fs, &format!("small-{backend:?}"));
        engine.write(&buf.as_slice()[..4 << 20], &small, 0).unwrap();
        let mut back = TestBuf::new(4 << 20, 0);
        engine.read(back.as_mut_slice(), &small, 0).unwrap();
        assert!(back.as_slice() == &buf.as_slice()[..4 << 20], "{backend:?}");
        let mut back = vec![0u8; kept.len()];
        engine.read(&mut back, &keep, 0).unwrap();
        assert_eq!(back, kept, "{backend:?}");
        std::fs::remove_file(&small).unwrap();
        let _ = std::fs::remove_file(&big);
    }
}

#[test]
fn a_file_system_that_cannot_preallocate_still_takes_the_writes() {
    // ext2 (here mounted by the ext4 driver) has no extents, so fallocate fails with
    // EOPNOTSUPP; check that first, so that the test does exercise the fallback.
    let fs = loop_fs("ext2", "64M");
    let probe = std::fs::File::create(on(&fs, "probe")).unwrap();
    // SAFETY: the descriptor is open; fallocate touches no memory of ours.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&probe), 0, 0, 4096) };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EOPNOTSUPP)),
        "ext2 was expected to refuse fallocate"
    );
    for backend in backends() {
        let engine = IoEngine::new(config(backend)).unwrap();
        for (i, &(size, offset)) in [(4096usize, 0u64), ((3 << 20) + 5, 0), (100_000, 4096 + 7)]
            .iter()
            .enumerate()
        {
            let path = on(&fs, &format!("f{i}-{backend:?}"));
            let data = pattern(size, i as u64);
            let mut src = TestBuf::new(size, 0);
            src.as_mut_slice().copy_from_slice(&data);
            engine.write(src.as_slice(), &path, offset).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().len(), offset + size as u64);
            let mut dst = TestBuf::new(size, 0);
            engine.read(dst.as_mut_slice(), &path, offset).unwrap();
            assert!(
                dst.as_slice() == &data[..],
                "{backend:?} size {size} offset {offset}"
            );
        }
    }
}

#[test]
fn writes_extending_a_file_on_xfs_round_trip() {
    // XFS preallocates differently from ext4 (and needs at least 300 MiB; the image is sparse).
    let fs = loop_fs("xfs", "320M");
    for backend in backends() {
        let engine = IoEngine::new(config(backend)).unwrap();
        let path = on(&fs, &format!("f-{backend:?}"));
        let first = pattern((2 << 20) + 3, 1);
        let second = pattern(5 << 20, 2);
        engine.write(&first, &path, 0).unwrap();
        let mut src = TestBuf::new(second.len(), 0);
        src.as_mut_slice().copy_from_slice(&second);
        // Extends the file past a gap: the gap reads as zeros.
        engine.write(src.as_slice(), &path, 4 << 20).unwrap();
        let mut back = vec![0u8; (9 << 20) as usize];
        engine.read(&mut back, &path, 0).unwrap();
        assert_eq!(&back[..first.len()], &first[..]);
        assert!(back[first.len()..4 << 20].iter().all(|&b| b == 0));
        assert_eq!(&back[4 << 20..], &second[..]);
    }
}
