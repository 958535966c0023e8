//! The optimizer swapper against real faults: a full loop-mounted file system, the file
//! size limit (RLIMIT_FSIZE, in a forked child) and a fork using the parent's handle.
//! The store reserves a sub-group's space when it is registered, so running out of space
//! fails the registration (naming the drive and the sub-group); the sub-groups registered
//! before keep their state.
//!
//! A write-behind can still fail for real after that, in two ways the tests below make
//! happen: the file size limit lowered after registration (a write past it is EFBIG
//! whatever was reserved), and reserved space taken away behind the swapper's back (a hole
//! punched in an extent file, then the file system filled by another writer: the write
//! into the hole needs new blocks, ENOSPC). Either way the new state stays in memory, the
//! failure names the sub-group, the tensor, the file and the offset, and the next step
//! writes it again once the cause is gone. (ext4's unwritten extents, which reserved
//! space is, convert to written without new data blocks; the extent tree may need a
//! metadata block, which ext4 keeps a reserve of, so that path is not made to fail here.)
//!
//! One test in this binary: limits are per process, and no other test thread may hold a
//! lock at the moment of a fork. Needs root (losetup, mount) and e2fsprogs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::drive_bed::DriveBed;
use swapper::optimizer::{OptimizerSettings, OptimizerSwapper, TensorKind, TensorSpec};
use swapper::{IoConfig, Status};

fn opt(dir: &Path) -> OptimizerSwapper {
    OptimizerSwapper::new(OptimizerSettings {
        nvme_paths: vec![dir.to_path_buf()],
        ring_bytes: 8 << 20,
        pin_memory: false,
        verify_checksums: true,
        io: IoConfig::default(),
        ..OptimizerSettings::default()
    })
    .unwrap()
}

/// 1 MiB of state and 1 MiB of moment per sub-group.
fn specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("param", 1 << 18, TensorKind::State),
        TensorSpec::new("exp_avg", 1 << 18, TensorKind::State),
    ]
}

fn fill(o: &OptimizerSwapper, order: &[u32], base: f32) {
    o.begin_step(order).unwrap();
    while let Some(mut v) = o.next_ready().unwrap() {
        let x = base + v.index() as f32;
        v.tensor_mut(0).fill(x);
        v.tensor_mut(1).fill(-x);
        v.hand_back().unwrap();
    }
    o.end_step().unwrap();
}

fn check(o: &OptimizerSwapper, order: &[u32], base: f32) {
    o.begin_step(order).unwrap();
    while let Some(v) = o.next_ready().unwrap() {
        let x = base + v.index() as f32;
        assert!(v.tensor(0).iter().all(|&y| y == x), "sub-group {}", v.index());
        assert!(v.tensor(1).iter().all(|&y| y == -x), "sub-group {}", v.index());
        v.discard().unwrap();
    }
    o.end_step().unwrap();
}

/// Registers sub-groups until the file system is full: the failure names the drive and
/// the sub-group, the failed one is not registered, the others keep every byte.
fn full_file_system() {
    let bed = DriveBed::up(1, &["--fs", "ext4", "--size", "24M"]);
    let o = opt(bed.paths()[0]);
    let mut registered = Vec::new();
    let err = loop {
        let i = registered.len() as u32;
        match o.register(i, &specs()) {
            Ok(()) => registered.push(i),
            Err(e) => break e,
        }
        assert!(registered.len() < 64, "a 24 MiB file system took 64 MiB");
    };
    assert!(registered.len() >= 2, "{err}");
    assert_eq!(err.status(), Status::IoError, "{err}");
    let failed = registered.len();
    let msg = err.message();
    assert!(msg.contains(&format!("sub-group {failed}")), "{msg}");
    assert!(
        msg.contains("No space left on device") && msg.contains("drive 0"),
        "{msg}"
    );
    assert_eq!(
        o.begin_step(&[failed as u32]).unwrap_err().status(),
        Status::NotFound
    );
    fill(&o, &registered, 1.0);
    check(&o, &registered, 1.0);
}

/// Waits for a child, killing it after `secs` (a hang); its exit code.
fn reap(pid: libc::pid_t, secs: u64) -> i32 {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(libc::WIFEXITED(status), "the child died: status {status:#x}");
            return libc::WEXITSTATUS(status);
        }
        if start.elapsed() > Duration::from_secs(secs) {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the child hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// In a forked child: the parent's handle refuses at once (its I/O threads are the
/// parent's); under a file size limit of 1 MiB a new swapper's registration fails with
/// EFBIG naming the sub-group. The exit code names the first check that failed.
fn child(parent: &OptimizerSwapper, dir: &Path) -> i32 {
    let forked = |r: swapper::Result<()>| {
        r.is_err_and(|e| e.status() == Status::BadState && e.message().contains("fork"))
    };
    if !forked(parent.begin_step(&[0])) {
        return 10;
    }
    // SAFETY: ignoring SIGXFSZ so that a write past the limit fails with EFBIG, and
    // setting this process's own limit.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: libc::RLIM_INFINITY,
        };
        if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
            return 11;
        }
    }
    let Ok(mine) = OptimizerSwapper::new(OptimizerSettings {
        nvme_paths: vec![dir.to_path_buf()],
        ring_bytes: 4 << 20,
        pin_memory: false,
        ..OptimizerSettings::default()
    }) else {
        return 12;
    };
    match mine.register(0, &specs()) {
        Err(e)
            if e.status() == Status::IoError
                && e.message().contains("File too large")
                && e.message().contains("sub-group 0") =>
        {
            0
        }
        Err(e) => {
            eprintln!("child: unexpected {e}");
            13
        }
        Ok(()) => 14,
    }
}

fn fork_and_file_size_limit() {
    let dir = common::disk_dir();
    let o = opt(&dir.path().join("parent").tap_mkdir());
    o.register(0, &specs()).unwrap();
    fill(&o, &[0], 5.0);
    let child_dir = dir.path().join("child").tap_mkdir();
    // SAFETY: fork; the child only runs `child` and exits without unwinding.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child(&o, &child_dir);
        // SAFETY: leave the child at once, running no destructor of the parent's state.
        unsafe { libc::_exit(code) };
    }
    assert_eq!(reap(pid, 60), 0, "the child's check failed (see its exit code)");
    // The parent's swapper is untouched.
    check(&o, &[0], 5.0);
}

/// Hand back every sub-group of a step over `order` with `base`, running `before(i)`
/// before sub-group i is handed back; the step's outcome.
fn step_with(
    o: &OptimizerSwapper,
    order: &[u32],
    base: f32,
    mut before: impl FnMut(u32),
) -> swapper::Result<()> {
    o.begin_step(order)?;
    while let Some(mut v) = o.next_ready()? {
        let x = base + v.index() as f32;
        v.tensor_mut(0).fill(x);
        v.tensor_mut(1).fill(-x);
        before(v.index());
        v.hand_back()?;
    }
    o.end_step()
}

/// A hole punched in the extent file under sub-group 1's params, then the file system
/// filled by another writer: its write-behind meets a real ENOSPC. The new state stays
/// in memory and is written again once space is back; the others are untouched.
fn reserved_space_taken_behind_the_swappers_back() {
    let bed = DriveBed::up(1, &["--fs", "ext4", "--size", "48M"]);
    let fs = bed.paths()[0];
    let o = opt(fs);
    for i in 0..3 {
        o.register(i, &specs()).unwrap();
    }
    fill(&o, &[0, 1, 2], 1.0);
    let ext = o.tensor_locations(1, 0).unwrap()[0].clone();
    let filler = fs.join("filler");
    let r = step_with(&o, &[0, 1, 2], 2.0, |i| {
        if i != 1 {
            return;
        }
        let f = std::fs::OpenOptions::new().write(true).open(&ext.path).unwrap();
        // SAFETY: fallocate on a file we opened, within its size.
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                ext.file_offset as libc::off_t,
                ext.len as libc::off_t,
            )
        };
        assert_eq!(rc, 0, "punch: {}", std::io::Error::last_os_error());
        // Another writer takes every free block (root may use the reserved ones too).
        let mut w = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 1 << 20];
        loop {
            match std::io::Write::write(&mut w, &chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
        let _ = w.sync_all();
    });
    let e = r.expect_err("the write-behind into the punched hole should meet ENOSPC");
    let msg = e.message();
    assert!(
        msg.contains("No space left on device")
            && msg.contains("sub-group 1, tensor \"param\"")
            && msg.contains(&format!("{}", ext.path.display()))
            && msg.contains("kept in memory"),
        "{msg}"
    );
    assert!(
        !msg.contains("sub-group 0,") && !msg.contains("sub-group 2,"),
        "{msg}"
    );
    // Still full: the next step's write fails again, and the state is still kept.
    assert!(step_with(&o, &[1], 2.0, |_| {}).is_err());
    std::fs::remove_file(&filler).unwrap();
    // The data in memory is visited and written again; then all read back from disk.
    o.begin_step(&[0, 1, 2]).unwrap();
    while let Some(v) = o.next_ready().unwrap() {
        let x = 2.0 + v.index() as f32;
        assert!(v.tensor(0).iter().all(|&y| y == x), "sub-group {}", v.index());
        v.hand_back().unwrap();
    }
    o.end_step().unwrap();
    check(&o, &[0, 1, 2], 2.0);
    drop(o);
}

/// In a forked child: sub-groups registered (their space reserved) under no file size
/// limit; then RLIMIT_FSIZE is lowered under sub-group 1's place. Its write-behind fails
/// for real (EFBIG), the failure naming it, and its new state stays in memory; with the
/// limit raised again the next step writes it and everything reads back. The exit code
/// names the first check that failed.
fn limit_lowered_after_registration(dir: &Path) -> i32 {
    let o = OptimizerSwapper::new(OptimizerSettings {
        nvme_paths: vec![dir.to_path_buf()],
        ring_bytes: 8 << 20,
        pin_memory: false,
        verify_checksums: true,
        ..OptimizerSettings::default()
    });
    let Ok(o) = o else { return 20 };
    for i in 0..3 {
        if o.register(i, &specs()).is_err() {
            return 21;
        }
    }
    if step_with(&o, &[0, 1, 2], 1.0, |_| {}).is_err() {
        return 22;
    }
    let Ok(at) = o.tensor_locations(1, 0) else {
        return 23;
    };
    let limit = at[0].file_offset;
    let Ok(zero) = o.tensor_locations(0, 1) else {
        return 23;
    };
    if zero[0].path != at[0].path || zero[0].file_offset + zero[0].len > limit {
        return 24;
    }
    let set = |cur: u64| {
        let lim = libc::rlimit {
            rlim_cur: cur,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: this process's own limit.
        unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &lim) == 0 }
    };
    // SAFETY: ignoring SIGXFSZ, so that a write past the limit fails with EFBIG.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if !set(limit) {
        return 25;
    }
    match step_with(&o, &[0, 1, 2], 2.0, |_| {}) {
        Err(e)
            if e.message().contains("File too large")
                && e.message().contains("sub-group 1, tensor \"param\"")
                && e.message().contains("kept in memory") => {}
        Err(e) => {
            eprintln!("child: unexpected {e}");
            return 26;
        }
        Ok(()) => return 27,
    }
    if !set(libc::RLIM_INFINITY) {
        return 28;
    }
    // Visited from memory, written again, then read back from disk.
    if step_with(&o, &[0, 1, 2], 3.0, |_| {}).is_err() {
        return 29;
    }
    if o.begin_step(&[0, 1, 2]).is_err() {
        return 30;
    }
    while let Ok(Some(v)) = o.next_ready() {
        let x = 3.0 + v.index() as f32;
        if !v.tensor(0).iter().all(|&y| y == x) || !v.tensor(1).iter().all(|&y| y == -x) {
            return 31;
        }
        let _ = v.discard();
    }
    if o.end_step().is_err() {
        return 32;
    }
    0
}

fn file_size_limit_after_registration() {
    let dir = common::disk_dir();
    // SAFETY: fork; the child only runs the check and exits without unwinding.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = limit_lowered_after_registration(dir.path());
        // SAFETY: leave the child at once, running no destructor of the parent's state.
        unsafe { libc::_exit(code) };
    }
    assert_eq!(reap(pid, 60), 0, "the child's check failed (see its exit code)");
}

#[test]
fn real_faults_keep_the_previous_state() {
    full_file_system();
    fork_and_file_size_limit();
    reserved_space_taken_behind_the_swappers_back();
    file_size_limit_after_registration();
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
