#![cfg(feature = "fault-injection")]
//! No file descriptor, thread or buffer outlives its handle, across faults and destroys
//! with operations in flight. One test in its own process, so the counts are its own.

mod common;

use swapper::io::handle::IoHandle;
use swapper::sys::fault::{self, Call, Fault, Rule};
use swapper::{Dtype, IoConfig, ParamStatus, Settings, Swapper};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn fds() -> usize {
    count("/proc/self/fd")
}

fn threads() -> usize {
    count("/proc/self/task")
}

fn faults_for(path: &std::path::Path) {
    let p = path.to_string_lossy().into_owned();
    for (call, fault, skip) in [
        (Call::Write, Fault::Errno(libc::ENOSPC), 2),
        (Call::Read, Fault::Errno(libc::EIO), 1),
        (Call::Write, Fault::Errno(libc::EINTR), 0),
        (Call::Read, Fault::Short(3000), 0),
        (Call::Open, Fault::Errno(libc::EMFILE), 5),
    ] {
        fault::install(Rule {
            call,
            path_contains: p.clone(),
            fault,
            skip,
            times: 3,
        });
    }
}

fn workload(round: u64) {
    let dir = common::disk_dir();
    let s = Swapper::new(Settings {
        nvme_path: dir.path().to_path_buf(),
        dtype: Dtype::Fp16,
        buffer_count: 4,
        buffer_numel: 1 << 20,
        io: IoConfig {
            block_size: 128 << 10,
            thread_count: 3,
            ..IoConfig::default()
        },
        verify_checksums: true,
        ..Settings::default()
    })
    .unwrap();
    faults_for(dir.path());
    let data: Vec<Vec<u8>> = (0..4).map(|i| common::pattern(2 << 20, round * 10 + i)).collect();
    for (id, d) in data.iter().enumerate() {
        let buf = s.get_buffer(id as u64, 1 << 20).unwrap();
        // SAFETY: a fresh pool buffer.
        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, d.len()) };
    }
    // Retry until every write lands: faults make some of them fail, never lose data.
    for _ in 0..10 {
        let pending: Vec<u64> = (0..4)
            .filter(|id| s.param_status(*id).unwrap() == ParamStatus::Available)
            .collect();
        if pending.is_empty() {
            break;
        }
        let _ = s.swap_out_and_release(&pending, true, true);
        let _ = s.wait_writes();
    }
    for _ in 0..10 {
        let todo: Vec<u64> = (0..4)
            .filter(|id| s.param_status(*id).unwrap() == ParamStatus::NotAvailable)
            .collect();
        if todo.is_empty() {
            break;
        }
        // SAFETY: pool buffers.
        let _ = unsafe { s.swap_in(&todo, true, None) };
        let _ = s.wait_reads();
    }
    for (id, d) in data.iter().enumerate() {
        assert_eq!(
            s.param_status(id as u64).unwrap(),
            ParamStatus::Available,
            "round {round} param {id}"
        );
        let (buf, n) = s.param_buffer(id as u64).unwrap();
        // SAFETY: AVAILABLE param.
        assert!(unsafe { swapper::sys::alloc::borrow(buf, n as usize * 2) } == &d[..]);
    }
    // Destroy with writes in flight: the drop waits for them.
    s.swap_out(&[0, 1, 2, 3], true).unwrap();
    let at = s.param_locations(3);
    drop(s);
    let mut stored = Vec::new();
    for e in &at {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; e.len as usize];
        std::fs::File::open(&e.path)
            .unwrap()
            .read_exact_at(&mut b, e.file_offset)
            .unwrap();
        stored.extend_from_slice(&b);
    }
    assert!(
        stored[..2 << 20] == data[3][..],
        "the write completed before the destroy returned"
    );
    fault::clear();

    // The engine handle too: asynchronous writes, then destroy without waiting.
    let h = IoHandle::new(IoConfig::default()).unwrap();
    let buf = common::pattern(8 << 20, round);
    for i in 0..4u64 {
        // SAFETY: `buf` outlives `h` (dropped below, which waits).
        unsafe {
            h.submit(
                true,
                swapper::sys::RawBuf(buf.as_ptr() as *mut u8),
                2 << 20,
                &dir.path().join("x"),
                i << 21,
                true,
            )
        }
        .unwrap();
    }
    drop(h);
    assert_eq!(
        std::fs::read(dir.path().join("x")).unwrap()[..2 << 20],
        buf[..2 << 20]
    );
}

#[test]
fn nothing_leaks_across_faults_and_destroys() {
    workload(0); // warm up lazily created things (the logger, the registries)
    let (fd0, th0) = (fds(), threads());
    for round in 1..6 {
        workload(round);
    }
    assert_eq!(fds(), fd0, "file descriptors leaked");
    assert_eq!(threads(), th0, "threads leaked");
    assert!(fault::injected() > 0, "faults were injected");
}
