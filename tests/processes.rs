//! Several processes on one disk: four ranks swapping concurrently under one nvme_path,
//! and a second process refused (busy) on a rank folder another process holds. The
//! children are this test binary run again, on the very test that spawns them, with an
//! environment variable that selects their role; in a normal run the variable is unset
//! and the test is the parent.

mod common;

use std::process::Command;

use swapper::{Dtype, IoConfig, Settings, Status, Swapper};

const ROLE: &str = "SWAPPER_TEST_ROLE";
const NVME: &str = "SWAPPER_TEST_NVME";

fn settings(nvme: &str, rank: u32) -> Settings {
    Settings {
        nvme_path: nvme.into(),
        rank,
        dtype: Dtype::Bf16,
        buffer_count: 3,
        buffer_numel: 1 << 20,
        io: IoConfig {
            thread_count: 2,
            ..IoConfig::default()
        },
        ..Settings::default()
    }
}

fn child(test: &str, role: &str, nvme: &std::path::Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(NVME, nvme);
    c
}

/// The role this process was started for, if it is a child.
fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// Child role `rank:N`: park 12 params of 2 MiB and read them back 3 times, verifying.
fn child_rank_worker(rank: &str) {
    let rank: u32 = rank.parse().unwrap();
    let s = Swapper::new(settings(&std::env::var(NVME).unwrap(), rank)).unwrap();
    let data = |id: u64| common::pattern(2 << 20, (rank as u64) << 32 | id);
    for id in 0..12u64 {
        let buf = s.get_buffer(id, 1 << 20).unwrap();
        let d = data(id);
        // SAFETY: a fresh pool buffer of 1 Mi bf16 elements.
        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, d.len()) };
        s.swap_out_and_release(&[id], false, false).unwrap();
    }
    for _ in 0..3 {
        for id in 0..12u64 {
            // SAFETY: pool buffers.
            unsafe { s.swap_in(&[id], false, None) }.unwrap();
            let (buf, n) = s.param_buffer(id).unwrap();
            // SAFETY: AVAILABLE param.
            let got = unsafe { swapper::sys::alloc::borrow(buf, n as usize * 2) };
            assert!(got == &data(id)[..], "rank {rank} param {id}");
            s.release(&[id]).unwrap();
        }
    }
}

/// Child role `busy:N`: creating rank N must fail with Busy.
fn child_expect_busy(rank: &str) {
    let e = Swapper::new(settings(&std::env::var(NVME).unwrap(), rank.parse().unwrap()))
        .err()
        .unwrap();
    assert_eq!(e.status(), Status::Busy, "{e}");
}

#[test]
fn four_ranks_in_four_processes_do_not_interfere() {
    if let Some(role) = role() {
        return child_rank_worker(role.strip_prefix("rank:").expect("a rank:N role"));
    }
    let dir = common::disk_dir();
    let children: Vec<_> = (0..4)
        .map(|r| {
            child(
                "four_ranks_in_four_processes_do_not_interfere",
                &format!("rank:{r}"),
                dir.path(),
            )
            .output_async()
        })
        .collect();
    for (r, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {r} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "rank {r} ran nothing"
        );
    }
    for r in 0..4 {
        let folder = dir.path().join(format!("zero_stage_3/bfloat16params/rank{r}"));
        let names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["extent-0.swp"],
            "the 12 params share one extent file (and the lock is on the folder itself, not a file) in {folder:?}"
        );
    }
}

#[test]
fn a_second_process_on_a_held_rank_folder_is_busy() {
    if let Some(role) = role() {
        return child_expect_busy(role.strip_prefix("busy:").expect("a busy:N role"));
    }
    let dir = common::disk_dir();
    let held = Swapper::new(settings(dir.path().to_str().unwrap(), 7)).unwrap();
    let out = child(
        "a_second_process_on_a_held_rank_folder_is_busy",
        "busy:7",
        dir.path(),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
    drop(held);
}

trait OutputAsync {
    fn output_async(&mut self) -> std::process::Child;
}

impl OutputAsync for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}
