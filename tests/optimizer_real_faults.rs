//! The optimizer swapper against real faults: a full loop-mounted file system, the file
//! size limit (RLIMIT_FSIZE, in a forked child) and a fork using the parent's handle.
//! The store reserves a sub-group's space when it is registered, so running out of space
//! fails the registration (naming the drive and the sub-group), never a later
//! write-behind; the sub-groups registered before keep their state.
//!
//! One test in this binary: limits are per process, and no other test thread may hold a
//! lock at the moment of a fork. Needs root (losetup, mount) and e2fsprogs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::loop_drive::{Fs, LoopDrive};
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
    let fs = LoopDrive::new(Fs::Ext4, 24);
    let o = opt(fs.path());
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

#[test]
fn real_faults_keep_the_previous_state() {
    full_file_system();
    fork_and_file_size_limit();
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
