//! Open files are bounded (issue 18, item 4): one asynchronous batch of 1100 params of
//! 4 KiB, out and back in, under `ulimit -n 1024` (the usual default), on one drive and
//! on two. The batch runs in a child process (this test binary run again) whose soft
//! RLIMIT_NOFILE is set to 1024 with setrlimit before the swapper starts; the child
//! checks every byte and reports how many descriptors it had open at the peak.

mod common;

use std::path::PathBuf;
use std::process::Command;

use swapper::{Dtype, IoConfig, ParamStatus, Settings, Swapper};

const ROLE: &str = "SWAPPER_OPEN_FILES_CHILD";
const PARAMS: u64 = 1100;
const NUMEL: u64 = 2048; // 4 KiB of fp16

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The child: the limit, then the batch.
fn child(folders: &str) {
    let lim = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: setrlimit with a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let paths: Vec<PathBuf> = folders.split(':').map(PathBuf::from).collect();
    let s = Swapper::new(Settings {
        nvme_paths: paths,
        dtype: Dtype::Fp16,
        buffer_count: PARAMS as u32,
        buffer_numel: NUMEL,
        io: IoConfig {
            thread_count: 2,
            ..IoConfig::default()
        },
        verify_checksums: true,
        ..Settings::default()
    })
    .unwrap();
    let ids: Vec<u64> = (0..PARAMS).collect();
    let data: Vec<Vec<u8>> = ids
        .iter()
        .map(|&id| common::pattern(NUMEL as usize * 2, id))
        .collect();
    for (&id, d) in ids.iter().zip(&data) {
        let buf = s.get_buffer(id, NUMEL).unwrap();
        // SAFETY: a fresh pool buffer of NUMEL fp16 elements.
        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, d.len()) };
    }
    let mut peak = open_fds();
    s.swap_out_and_release(&ids, true, true).unwrap();
    peak = peak.max(open_fds());
    s.wait_writes().unwrap();
    for &id in &ids {
        assert_eq!(s.param_status(id).unwrap(), ParamStatus::NotAvailable);
    }
    // SAFETY: pool buffers only.
    unsafe { s.swap_in(&ids, true, None) }.unwrap();
    peak = peak.max(open_fds());
    s.wait_reads().unwrap();
    for (&id, d) in ids.iter().zip(&data) {
        let (buf, numel) = s.param_buffer(id).unwrap();
        // SAFETY: the param is AVAILABLE.
        let got = unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) };
        assert!(got == d.as_slice(), "param {id}");
    }
    let drives: std::collections::BTreeSet<usize> = ids
        .iter()
        .flat_map(|&id| s.param_locations(id))
        .map(|e| e.drive)
        .collect();
    println!("CHILD-OK peak {peak} descriptors, drives used {drives:?}");
}

fn run_child(test: &str, folders: &[PathBuf]) -> String {
    let joined: Vec<String> = folders.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, joined.join(":"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "{}",
        stdout
            .lines()
            .filter(|l| l.contains("CHILD-OK"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "the child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_batch_of_1100_params_works_under_ulimit_n_1024() {
    if let Ok(folders) = std::env::var(ROLE) {
        child(&folders);
        return;
    }
    let test = "a_batch_of_1100_params_works_under_ulimit_n_1024";
    let one = common::disk_dir();
    let out = run_child(test, &[one.path().to_path_buf()]);
    assert!(out.contains("drives used {0}"), "{out}");
    let (a, b) = (common::disk_dir(), common::disk_dir());
    let out = run_child(test, &[a.path().to_path_buf(), b.path().to_path_buf()]);
    assert!(
        out.contains("drives used {0, 1}"),
        "both drives take params: {out}"
    );
}
