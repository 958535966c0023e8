//! The I/O engine against real files: round trips over every size, offset, buffer
//! alignment, backend and O_DIRECT mode; many asynchronous operations and one wait;
//! the errors a caller meets.

mod common;

use common::{disk_dir, pattern, patterned, TestBuf};
use swapper::io::handle::IoHandle;
use swapper::io::IoEngine;
use swapper::sys::RawBuf;
use swapper::{Backend, DirectIo, IoConfig, Status};

fn config(backend: Backend, direct_io: DirectIo) -> IoConfig {
    IoConfig {
        backend,
        direct_io,
        ..IoConfig::default()
    }
}

use common::backends;

#[test]
fn round_trips_every_size_offset_alignment_backend_and_mode() {
    let dir = disk_dir();
    let sizes = [0usize, 1, 511, 4096, (1 << 20) + 3, 64 << 20];
    let mut case = 0u64;
    for backend in backends() {
        for direct in [DirectIo::Auto, DirectIo::On, DirectIo::Off] {
            let engine = IoEngine::new(config(backend, direct)).unwrap();
            for &size in &sizes {
                for &file_offset in &[0u64, 4096 + 7] {
                    for &buf_offset in &[0usize, 3] {
                        if size == 64 << 20
                            && (file_offset != 0 || buf_offset != 0)
                            && direct == DirectIo::Off
                        {
                            continue; // the buffered path does not care about alignment
                        }
                        case += 1;
                        let path = dir.path().join(format!("f{case}"));
                        let data = pattern(size, case);
                        let mut src = TestBuf::new(size, buf_offset);
                        src.as_mut_slice().copy_from_slice(&data);
                        engine.write(src.as_slice(), &path, file_offset).unwrap();
                        let meta = std::fs::metadata(&path).unwrap();
                        let expected = if size == 0 { 0 } else { file_offset + size as u64 };
                        assert_eq!(meta.len(), expected, "file size, case {case}");
                        let mut dst = TestBuf::new(size, buf_offset);
                        engine.read(dst.as_mut_slice(), &path, file_offset).unwrap();
                        assert!(
                            dst.as_slice() == &data[..],
                            "data differs: {backend:?} {direct:?} size {size} file offset {file_offset} buffer offset {buf_offset}"
                        );
                        std::fs::remove_file(&path).unwrap();
                    }
                }
            }
        }
    }
}

#[test]
fn small_blocks_many_threads_and_settings() {
    let dir = disk_dir();
    let data = pattern((3 << 20) + 777, 9);
    for backend in backends() {
        for (bs, qd, tc, single, overlap) in [
            (4096u64, 1u32, 1u32, false, true),
            (8192, 4, 3, true, false),
            (65536, 32, 2, false, false),
            (1 << 20, 2, 7, true, true),
        ] {
            let engine = IoEngine::new(IoConfig {
                block_size: bs,
                queue_depth: qd,
                thread_count: tc,
                single_submit: single,
                overlap_events: overlap,
                backend,
                direct_io: DirectIo::Auto,
            })
            .unwrap();
            let path = dir.path().join(format!("s{bs}-{tc}"));
            let mut src = TestBuf::new(data.len(), 5);
            src.as_mut_slice().copy_from_slice(&data);
            engine.write(src.as_slice(), &path, 12345).unwrap();
            let mut dst = TestBuf::new(data.len(), 0);
            engine.read(dst.as_mut_slice(), &path, 12345).unwrap();
            assert!(dst.as_slice() == &data[..], "{backend:?} bs {bs} qd {qd} tc {tc}");
        }
    }
}

#[test]
fn many_async_ops_then_one_wait() {
    let dir = disk_dir();
    for backend in backends() {
        let h = IoHandle::new(IoConfig {
            thread_count: 2,
            backend,
            ..IoConfig::default()
        })
        .unwrap();
        let n = 48;
        let size = 300_000 + 17;
        let mut bufs: Vec<TestBuf> = (0..n)
            .map(|i| {
                let mut b = TestBuf::new(size, i % 2);
                b.as_mut_slice().copy_from_slice(&pattern(size, i as u64 + 100));
                b
            })
            .collect();
        let path = dir.path().join("many");
        for (i, b) in bufs.iter_mut().enumerate() {
            let ptr = RawBuf(b.as_mut_slice().as_mut_ptr());
            // SAFETY: the buffers live until after the wait below.
            unsafe { h.submit(true, ptr, size as u64, &path, (i * size) as u64, true) }.unwrap();
        }
        let (done, r) = h.wait();
        r.unwrap();
        assert_eq!(done, n as u64);
        assert_eq!(h.pending(), 0);
        let mut back: Vec<TestBuf> = (0..n).map(|_| TestBuf::new(size, 1)).collect();
        for (i, b) in back.iter_mut().enumerate() {
            let ptr = RawBuf(b.as_mut_slice().as_mut_ptr());
            // SAFETY: as above.
            unsafe { h.submit(false, ptr, size as u64, &path, (i * size) as u64, true) }.unwrap();
        }
        let (done, r) = h.wait();
        r.unwrap();
        assert_eq!(done, n as u64);
        for (i, b) in back.iter().enumerate() {
            assert!(b.as_slice() == &pattern(size, i as u64 + 100)[..], "op {i}");
        }
        let (done, r) = h.wait();
        assert_eq!(done, 0);
        r.unwrap();
    }
}

#[test]
fn several_threads_share_one_handle() {
    let dir = disk_dir();
    let h = IoHandle::new(IoConfig::default()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let h = &h;
            let path = dir.path().join(format!("t{t}"));
            s.spawn(move || {
                for round in 0..10u64 {
                    let data = pattern(200_000 + t as usize, t * 1000 + round);
                    let mut src = TestBuf::new(data.len(), 0);
                    src.as_mut_slice().copy_from_slice(&data);
                    h.engine().write(src.as_slice(), &path, round * 4096).unwrap();
                    let mut dst = TestBuf::new(data.len(), 0);
                    h.engine().read(dst.as_mut_slice(), &path, round * 4096).unwrap();
                    assert!(dst.as_slice() == &data[..]);
                }
            });
        }
    });
}

#[test]
fn missing_file_short_file_and_unwritable_folder() {
    let dir = disk_dir();
    for backend in backends() {
        let engine = IoEngine::new(config(backend, DirectIo::Auto)).unwrap();
        let mut buf = TestBuf::new(8192, 0);
        let missing = dir.path().join("missing");
        let e = engine.read(buf.as_mut_slice(), &missing, 0).unwrap_err();
        assert_eq!(e.status(), Status::NotFound);
        assert!(e.message().contains(missing.to_str().unwrap()), "{e}");

        let short = dir.path().join("short");
        std::fs::write(&short, pattern(5000, 1)).unwrap();
        let e = engine.read(buf.as_mut_slice(), &short, 0).unwrap_err();
        assert_eq!(e.status(), Status::IoError);
        assert!(
            e.message().contains("past end of file") && e.message().contains("5000"),
            "{e}"
        );
        let e = engine
            .read(&mut buf.as_mut_slice()[..10], &short, 4999)
            .unwrap_err();
        assert!(e.message().contains("past end of file"), "{e}");
        engine.read(&mut buf.as_mut_slice()[..5000], &short, 0).unwrap();

        // A folder that is a file cannot hold files, whoever we are.
        let not_dir = short.join("child");
        let e = engine.write(buf.as_slice(), &not_dir, 0).unwrap_err();
        assert_eq!(e.status(), Status::IoError);
        assert!(
            e.message().contains("Not a directory") && e.message().contains("short/child"),
            "{e}"
        );
        // A read-only folder: root ignores permissions, so use sysfs, which refuses new files.
        let ro = if unsafe { libc::geteuid() } == 0 {
            std::path::PathBuf::from("/sys/kernel/swapper-test-file")
        } else {
            use std::os::unix::fs::PermissionsExt;
            let ro = dir.path().join("ro");
            std::fs::create_dir(&ro).unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
            ro.join("f")
        };
        let e = engine.write(buf.as_slice(), &ro, 0).unwrap_err();
        assert_ne!(e.status(), Status::Ok);
        assert!(e.message().contains(ro.to_str().unwrap()), "{e}");
    }
}

/// A file system without O_DIRECT: ramfs, mounted for the test where we may mount
/// (tmpfs has O_DIRECT since Linux 6.6, so it no longer serves).
struct Ramfs(tempfile::TempDir);

impl Ramfs {
    fn mount() -> Option<Ramfs> {
        let dir = disk_dir();
        let ok = std::process::Command::new("mount")
            .args(["-t", "ramfs", "ramfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Ramfs(dir))
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

fn check_direct_fallback(dir: &std::path::Path) {
    let path = dir.join("f");
    let data = pattern(100_000, 3);
    let auto = IoEngine::new(config(Backend::Auto, DirectIo::Auto)).unwrap();
    auto.write(&data, &path, 0).unwrap();
    let mut back = vec![0u8; data.len()];
    auto.read(&mut back, &path, 0).unwrap();
    assert_eq!(back, data);
    let on = IoEngine::new(config(Backend::Auto, DirectIo::On)).unwrap();
    let e = on.read(&mut back, &path, 0).unwrap_err();
    assert_eq!(e.status(), Status::Unsupported);
    assert!(e.message().contains("O_DIRECT"), "{e}");
}

#[test]
fn a_file_system_without_o_direct_falls_back_in_auto_mode_and_fails_in_on_mode() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match Ramfs::mount() {
        Some(fs) => check_direct_fallback(fs.0.path()),
        // Only a developer without root may go without; as root (and in CI) it must run.
        None if !root && std::env::var_os("CI").is_none() => {
            eprintln!("cannot mount ramfs without root: this test did not run (CI runs it as root)")
        }
        None => panic!("mount -t ramfs failed: this test needs root and ramfs"),
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn o_direct_refused_by_open_falls_back() {
    use swapper::sys::fault::{self, Call, Fault, Rule};
    let dir = disk_dir();
    fault::install(Rule {
        call: Call::OpenDirect,
        path_contains: "no-direct-here".into(),
        fault: Fault::Errno(libc::EINVAL),
        skip: 0,
        times: u64::MAX,
    });
    let sub = dir.path().join("no-direct-here");
    std::fs::create_dir(&sub).unwrap();
    check_direct_fallback(&sub);
}

#[test]
fn created_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = disk_dir();
    let engine = IoEngine::new(IoConfig::default()).unwrap();
    let path = dir.path().join("p");
    engine.write(&pattern(4096, 1), &path, 0).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn bytes_are_counted() {
    let dir = disk_dir();
    let engine = IoEngine::new(IoConfig::default()).unwrap();
    let path = dir.path().join("c");
    engine.write(&pattern(10_000, 1), &path, 0).unwrap();
    let mut b = vec![0u8; 10_000];
    engine.read(&mut b, &path, 0).unwrap();
    assert_eq!(engine.bytes_moved(), (10_000, 10_000));
}

#[test]
fn checksums_computed_by_the_workers_match_the_data() {
    let dir = disk_dir();
    for backend in backends() {
        let engine = IoEngine::new(IoConfig {
            block_size: 64 << 10,
            thread_count: 2,
            backend,
            ..IoConfig::default()
        })
        .unwrap();
        for (size, buf_offset, covered) in [
            (1usize, 0usize, 1u64),
            (300_001, 3, 250_000),
            (1 << 20, 0, 1 << 20),
        ] {
            let path = dir.path().join(format!("crc{size}"));
            let data = pattern(size, size as u64);
            let mut src = TestBuf::new(size, buf_offset);
            src.as_mut_slice().copy_from_slice(&data);
            let want = crc32c::crc32c(&data[..covered as usize]);
            let req = swapper::io::Request {
                write: true,
                buf: RawBuf(src.as_mut_slice().as_mut_ptr()),
                len: size as u64,
                path: &path,
                offset: 0,
                nofollow: true,
                dir: None,
                checksum_len: Some(covered),
            };
            // SAFETY: `src` outlives the wait.
            let t = unsafe { engine.submit(&req) }.unwrap();
            t.wait().unwrap();
            assert_eq!(t.checksum(), Some(want), "write {size} {backend:?}");
            let mut dst = TestBuf::new(size, buf_offset);
            let req = swapper::io::Request {
                write: false,
                buf: RawBuf(dst.as_mut_slice().as_mut_ptr()),
                ..req
            };
            // SAFETY: `dst` outlives the wait.
            let t = unsafe { engine.submit(&req) }.unwrap();
            t.wait().unwrap();
            assert_eq!(t.checksum(), Some(want), "read {size} {backend:?}");
            let parts = t.checksum_parts();
            assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), covered);
        }
    }
}

#[test]
fn the_blocking_backend_caps_its_threads() {
    let before = std::fs::read_dir("/proc/self/task").unwrap().count();
    let engine = IoEngine::new(IoConfig {
        queue_depth: 4096,
        thread_count: 256,
        backend: Backend::Blocking,
        ..IoConfig::default()
    })
    .unwrap();
    let during = std::fs::read_dir("/proc/self/task").unwrap().count();
    assert!(during - before <= 512 + 8, "{} threads started", during - before);
    let dir = disk_dir();
    engine
        .write(&pattern(3 << 20, 1), &dir.path().join("f"), 0)
        .unwrap();
}

#[cfg(feature = "fault-injection")]
#[test]
fn wait_lists_every_failed_operation() {
    use swapper::sys::fault::{self, Call, Fault, Rule};
    let dir = disk_dir();
    let h = IoHandle::new(IoConfig::default()).unwrap();
    let data = pattern(3 * 8192, 5);
    for i in 0..3 {
        h.engine()
            .write(&data, &dir.path().join(format!("multi{i}")), 0)
            .unwrap();
    }
    fault::install(Rule {
        call: Call::Read,
        path_contains: dir.path().join("multi").to_string_lossy().into_owned(),
        fault: Fault::Errno(libc::EIO),
        skip: 0,
        times: 2,
    });
    let mut bufs: Vec<TestBuf> = (0..3).map(|_| TestBuf::new(8192, 0)).collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        let path = dir.path().join(format!("multi{i}"));
        // SAFETY: the buffers outlive the wait below.
        unsafe { h.submit(false, RawBuf(b.as_mut_slice().as_mut_ptr()), 8192, &path, 0, true) }.unwrap();
    }
    let (n, r) = h.wait();
    assert_eq!(n, 3);
    let e = r.unwrap_err();
    assert_eq!(e.status(), Status::IoError);
    assert!(e.message().starts_with("2 of 3 operations failed"), "{e}");
    assert_eq!(e.message().matches("Input/output error").count(), 2, "{e}");
}

#[test]
fn engines_started_beside_each_other_meter_one_device() {
    let dir = disk_dir();
    let reads = IoEngine::new(IoConfig::default()).unwrap();
    let writes = reads.beside(IoConfig::default()).unwrap();
    let alone = IoEngine::new(IoConfig::default()).unwrap();
    let path = dir.path().join("f");
    let data = pattern(4 << 20, 7);
    let src = patterned(data.len(), 7);
    writes.write(src.as_slice(), &path, 0).unwrap();
    // The write engine's bytes show in the read engine's activity: a drive whose writes
    // have their own engine is measured by its writes too.
    assert_eq!(reads.activity().bytes, 4 << 20);
    let mut dst = TestBuf::new(data.len(), 0);
    reads.read(dst.as_mut_slice(), &path, 0).unwrap();
    assert!(dst.as_slice() == &data[..]);
    let (r, w) = (reads.activity(), writes.activity());
    assert_eq!(r.bytes, 8 << 20);
    assert_eq!(w.bytes, r.bytes);
    assert!(r.busy > std::time::Duration::ZERO);
    // An engine started on its own keeps its own meter.
    assert_eq!(alone.activity().bytes, 0);
}
