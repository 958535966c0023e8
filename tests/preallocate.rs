//! Writes that extend a file reserve its blocks first (fallocate): on real, loop-mounted
//! file systems, a write that does not fit fails with ENOSPC naming the file and gives
//! the space back, and a file system that cannot preallocate still takes the writes.
//! Needs root (losetup, mount) and e2fsprogs; fails with what to install otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{disk_dir, pattern, TestBuf};
use swapper::io::IoEngine;
use swapper::{Backend, DirectIo, IoConfig, Status};

use common::backends;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} ({e}): this test needs util-linux (losetup, mount) and e2fsprogs")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {} (this test needs root for losetup and mount)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A file system image on a loop device, mounted; unmounted and detached on drop.
struct LoopFs {
    _dir: tempfile::TempDir,
    device: String,
    mount: PathBuf,
}

impl LoopFs {
    /// `mkfs` (with its arguments) over a sparse image of `mib` MiB.
    fn new(mkfs: &[&str], mib: u64) -> LoopFs {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test mounts loop devices: run it as root"
        );
        let dir = disk_dir();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .expect("image file");
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&image));
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        let fs = LoopFs {
            _dir: dir,
            device,
            mount,
        };
        run(Command::new("mount").arg(&fs.device).arg(&fs.mount));
        fs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
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
    let fs = LoopFs::new(&["mkfs.ext4", "-q", "-F"], 32);
    let keep = fs.path("keep");
    let kept = pattern(1 << 20, 7);
    let mut buf = TestBuf::new(64 << 20, 0);
    buf.as_mut_slice().copy_from_slice(&pattern(64 << 20, 1));
    for backend in backends() {
        let engine = IoEngine::new(config(backend)).unwrap();
        engine.write(&kept, &keep, 0).unwrap();
        let before = free_bytes(&fs.mount);
        let big = fs.path(&format!("big-{backend:?}"));
        let e = engine.write(buf.as_slice(), &big, 0).unwrap_err();
        assert_eq!(e.status(), Status::IoError, "{backend:?}: {e}");
        assert!(
            e.message().contains(big.to_str().unwrap()) && e.message().contains("errno 28"),
            "{backend:?}: the error names the file and ENOSPC: {e}"
        );
        // The failed write left the free space as it was (within 1 MiB of metadata),
        // instead of filling the file system with a partial file.
        let after = free_bytes(&fs.mount);
        assert!(
            after + (1 << 20) >= before,
            "{backend:?}: {before} bytes free before the failed write, {after} after"
        );
        // The file system still takes a write that fits, and the other file is intact.
        let small = fs.path(&format!("small-{backend:?}"));
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
    let fs = LoopFs::new(&["mkfs.ext2", "-q", "-F"], 64);
    let probe = std::fs::File::create(fs.path("probe")).unwrap();
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
            let path = fs.path(&format!("f{i}-{backend:?}"));
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
    let fs = LoopFs::new(&["mkfs.xfs", "-q", "-f"], 320);
    for backend in backends() {
        let engine = IoEngine::new(config(backend)).unwrap();
        let path = fs.path(&format!("f-{backend:?}"));
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
