//! Real process limits (one test in this binary, because limits are per process):
//! RLIMIT_NOFILE with no descriptor to spare, and RLIMIT_FSIZE failing a partitioned
//! swap-out, which must leave everything retryable. (The batch of 1100 params under
//! `ulimit -n 1024` is tests/open_files.rs.)

mod common;

use swapper::{Dtype, IoConfig, ParamStatus, Settings, Status, Swapper};

fn set_limit(resource: libc::__rlimit_resource_t, soft: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(resource, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(resource, &new), 0);
    }
    old.rlim_cur
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// Takes every descriptor number still free under the limit (the numbers below it that
/// closed files left), so that the next open fails with EMFILE.
fn fill_descriptors() -> Vec<std::fs::File> {
    let mut v = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        v.push(f);
    }
    v
}

fn swapper_in(dir: &std::path::Path, buffers: u32) -> Swapper {
    Swapper::new(Settings {
        nvme_path: dir.to_path_buf(),
        dtype: Dtype::Fp16,
        buffer_count: buffers,
        buffer_numel: 1 << 14,
        io: IoConfig {
            block_size: 1 << 20,
            ..IoConfig::default()
        },
        verify_checksums: true,
        ..Settings::default()
    })
    .unwrap()
}

fn fill(s: &Swapper, id: u64) -> Vec<u8> {
    let bytes = common::pattern(1 << 15, id);
    let buf = s.get_buffer(id, 1 << 14).unwrap();
    // SAFETY: a fresh pool buffer of 2^14 fp16 elements.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.0, bytes.len()) };
    bytes
}

/// Descriptors run out: a batch of 60 asynchronous reads still goes through whole (the
/// store's extent files are held open, no operation opens a file), and EMFILE comes only
/// when a file must really be opened (here a new extent file, after the first was found
/// truncated): the error names it, the param keeps its data, and the retry works once
/// descriptors are free.
fn fd_limit(dir: &std::path::Path) {
    let s = swapper_in(dir, 64);
    let ids: Vec<u64> = (0..60).collect();
    let data: Vec<Vec<u8>> = ids.iter().map(|&id| fill(&s, id)).collect();
    s.swap_out_and_release(&ids, false, false).unwrap();
    // Not one descriptor of headroom.
    let old = set_limit(libc::RLIMIT_NOFILE, open_fds());
    let fillers = fill_descriptors();
    // SAFETY: pool buffers only.
    let r = unsafe { s.swap_in(&ids, true, None) };
    let waited = s.wait_reads();
    drop(fillers);
    set_limit(libc::RLIMIT_NOFILE, old);
    r.unwrap();
    waited.unwrap();
    for (&id, want) in ids.iter().zip(&data) {
        let (buf, numel) = s.param_buffer(id).unwrap();
        // SAFETY: the param is AVAILABLE.
        let got = unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) };
        assert!(got == want.as_slice(), "param {id} bytes");
    }
    // The extent file is truncated behind the store's back: a swap-out of param 0 must go
    // to a new file, which cannot be opened under the limit.
    let file = s.param_path(0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let old = set_limit(libc::RLIMIT_NOFILE, open_fds());
    let fillers = fill_descriptors();
    let e = s.swap_out(&[0], false);
    drop(fillers);
    set_limit(libc::RLIMIT_NOFILE, old);
    let e = e.unwrap_err();
    assert!(e.message().contains("Too many open files"), "{e}");
    assert!(
        e.message().contains("extent-1.swp") && e.message().contains("param 0"),
        "{e}"
    );
    assert_eq!(s.param_status(0).unwrap(), ParamStatus::Available);
    s.swap_out_and_release(&[0], false, false).unwrap();
    assert!(s.param_path(0).ends_with("extent-1.swp"));
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[0], false, None) }.unwrap();
    let (buf, numel) = s.param_buffer(0).unwrap();
    // SAFETY: the param is AVAILABLE.
    assert!(unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) } == data[0].as_slice());
}

/// A partitioned swap-out whose writes fail (the file size limit, EFBIG) can be retried
/// once the cause is gone, and the retry's bytes are what a swap-in returns.
fn file_size_limit_in_partitioned_swap_out(dir: &std::path::Path) {
    let s = swapper_in(dir, 4);
    for id in [1, 2] {
        fill(&s, id);
    }
    s.swap_out_and_release(&[1, 2], false, false).unwrap();
    s.reserve_partitioned_swap_space(&[1 << 14, 1 << 14]).unwrap();
    let a: Vec<f32> = (0..1 << 14).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..1 << 14).map(|i| -(i as f32)).collect();
    // SAFETY: ignoring SIGXFSZ so that a write over the limit fails with EFBIG.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let old = set_limit(libc::RLIMIT_FSIZE, 4096);
    let e = s.swap_out_partitioned(&[1, 2], &[&a, &b]).unwrap_err();
    set_limit(libc::RLIMIT_FSIZE, old);
    assert_eq!(e.status(), Status::IoError, "{e}");
    assert!(
        e.message().contains("too large") || e.message().contains("File too large"),
        "{e}"
    );
    // A param whose write failed has no valid copy: swap-in refuses it, the retry works.
    // SAFETY: pool buffers only.
    let refused = unsafe { s.swap_in(&[1], false, None) }.unwrap_err();
    assert_eq!(refused.status(), Status::BadState, "{refused}");
    s.swap_out_partitioned(&[1, 2], &[&a, &b]).unwrap();
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&[1, 2], false, None) }.unwrap();
    let (buf, _) = s.param_buffer(2).unwrap();
    // SAFETY: the param is AVAILABLE with 2^14 fp16 elements.
    let got = unsafe { swapper::sys::alloc::borrow(buf, 1 << 15) };
    let want: Vec<u8> = b
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_bits().to_ne_bytes())
        .collect();
    assert!(got == want.as_slice());
}

#[test]
fn real_limits_leave_every_param_retryable() {
    let dir = common::disk_dir();
    fd_limit(&dir.path().join("a").tap_mkdir());
    file_size_limit_in_partitioned_swap_out(&dir.path().join("b").tap_mkdir());
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir(&self).unwrap();
        self
    }
}
