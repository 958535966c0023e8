//! The swap folder under real faults: a renamed rank folder, a rank folder replaced by a
//! symbolic link, a FIFO in place of a swap file, a deleted lock file, a forked child that
//! outlives its parent's swapper, an nvme_path with a NUL byte or too long for PATH_MAX.
//! The chdir case is tests/folder_chdir.rs (a chdir would disturb the other tests here).
//!
//! "A second process" is this test binary run again on the same test, with an environment
//! variable that makes the test take the rank and print the status it got.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use swapper::{Dtype, IoConfig, Settings, Status, Swapper};

const ROLE: &str = "SWAPPER_FOLDER_TEST_TAKE";
const NUMEL: u64 = 1 << 16;

fn settings(nvme: &Path) -> Settings {
    Settings {
        nvme_path: nvme.to_path_buf(),
        dtype: Dtype::Fp16,
        buffer_count: 3,
        buffer_numel: NUMEL,
        io: IoConfig {
            thread_count: 2,
            ..IoConfig::default()
        },
        ..Settings::default()
    }
}

fn data(id: u64) -> Vec<u8> {
    common::pattern(NUMEL as usize * 2, id + 1000)
}

fn put_out(s: &Swapper, id: u64) {
    let d = data(id);
    let buf = s.get_buffer(id, NUMEL).unwrap();
    // SAFETY: a fresh pool buffer of NUMEL fp16 elements.
    unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, d.len()) };
    s.swap_out_and_release(&[id], false, false).unwrap();
}

fn read_back(s: &Swapper, id: u64) -> Vec<u8> {
    // SAFETY: pool buffers.
    unsafe { s.swap_in(&[id], false, None) }.unwrap();
    let (buf, numel) = s.param_buffer(id).unwrap();
    // SAFETY: the param is AVAILABLE.
    let got = unsafe { swapper::sys::alloc::borrow(buf, numel as usize * 2) }.to_vec();
    s.release(&[id]).unwrap();
    got
}

fn rank_dir(nvme: &Path) -> PathBuf {
    nvme.join("zero_stage_3/float16params/rank0")
}

/// In the second process: take rank 0 of the nvme_path in `ROLE`, print the status, exit.
/// Returns false in a normal run.
fn second_process_role() -> bool {
    let Ok(nvme) = std::env::var(ROLE) else {
        return false;
    };
    let status = match Swapper::new(settings(Path::new(&nvme))) {
        Ok(_) => Status::Ok,
        Err(e) => e.status(),
    };
    println!("TAKEN-STATUS={}", status.name());
    true
}

/// Runs `test` of this binary again as a second process that takes rank 0 of `nvme`.
fn take_in_second_process(test: &str, nvme: &Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, nvme)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "second process failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints the test's name on the same line, before the test's own output.
    stdout
        .split("TAKEN-STATUS=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the second process printed no status: {stdout}"))
        .to_string()
}

/// Runs `f` on another thread and fails the test if it has not returned within 20 s
/// (the thread is left blocked: a hang fails the test instead of freezing it).
fn within_time<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} hung (no answer in 20 s)"))
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_renamed_rank_folder_keeps_its_swap_files_and_gets_the_new_ones() {
    let base = common::disk_dir();
    let s = Swapper::new(settings(base.path())).unwrap();
    put_out(&s, 1);
    let rank = rank_dir(base.path());
    let moved = rank.with_file_name("rank0.moved");
    std::fs::rename(&rank, &moved).unwrap();
    assert!(
        read_back(&s, 1) == data(1),
        "param 1 read back from the renamed folder"
    );
    put_out(&s, 2);
    assert!(read_back(&s, 2) == data(2));
    assert!(!rank.exists(), "nothing recreated at the old path");
    assert_eq!(
        names(&moved),
        ["extent-0.swp"],
        "both params in the held folder's extent file"
    );
}

#[test]
fn a_rank_folder_replaced_by_a_symlink_redirects_nothing() {
    let base = common::disk_dir();
    let s = Swapper::new(settings(base.path())).unwrap();
    put_out(&s, 1);
    let rank = rank_dir(base.path());
    let moved = rank.with_file_name("rank0.moved");
    let elsewhere = base.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    // The link target holds a file of the name the store uses.
    std::fs::write(elsewhere.join("extent-0.swp"), vec![7u8; NUMEL as usize * 2]).unwrap();
    std::fs::rename(&rank, &moved).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &rank).unwrap();
    put_out(&s, 2);
    assert!(
        read_back(&s, 1) == data(1),
        "param 1 is the swapper's own bytes, not the link target's"
    );
    assert!(read_back(&s, 2) == data(2));
    assert_eq!(
        names(&elsewhere),
        ["extent-0.swp"],
        "nothing written through the link"
    );
    assert_eq!(
        std::fs::read(elsewhere.join("extent-0.swp")).unwrap(),
        vec![7u8; NUMEL as usize * 2]
    );
    assert_eq!(names(&moved), ["extent-0.swp"]);
    assert!(s.param_locations(2).iter().all(|e| e.path == s.param_path(1)));
}

#[test]
fn a_fifo_in_place_of_an_extent_file_is_refused_without_hanging() {
    let base = common::disk_dir();
    let s = Arc::new(Swapper::new(settings(base.path())).unwrap());
    put_out(&s, 1);
    // Swap in: the extent file holding param 1 was replaced by a FIFO.
    let p1 = s.param_path(1);
    assert!(p1.starts_with(rank_dir(base.path())), "{}", p1.display());
    std::fs::remove_file(&p1).unwrap();
    mkfifo(&p1);
    let s2 = Arc::clone(&s);
    // SAFETY: pool buffers.
    let e = within_time("swap_in of a FIFO", move || unsafe {
        s2.swap_in(&[1], false, None)
    })
    .err()
    .unwrap();
    assert_eq!(e.status(), Status::CorruptData, "{e}");
    assert!(
        e.message().contains("FIFO") && e.message().contains(&*p1.to_string_lossy()),
        "{e}"
    );
    // Swap out: a FIFO squats the name of the next extent file the store would create
    // (the first one is damaged, so a new param needs a new file).
    let p2 = rank_dir(base.path()).join("extent-1.swp");
    mkfifo(&p2);
    let d = data(2);
    let buf = s.get_buffer(2, NUMEL).unwrap();
    // SAFETY: a fresh pool buffer of NUMEL fp16 elements.
    unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, d.len()) };
    let s2 = Arc::clone(&s);
    let e = within_time("swap_out onto a FIFO", move || {
        s2.swap_out_and_release(&[2], false, false)
    })
    .err()
    .unwrap();
    assert_eq!(e.status(), Status::CorruptData, "{e}");
    assert!(
        e.message().contains("FIFO") && e.message().contains(&*p2.to_string_lossy()),
        "{e}"
    );
    assert_eq!(
        s.param_status(2).unwrap(),
        swapper::ParamStatus::Available,
        "the data stays"
    );
    // Once the FIFO is gone, the retry goes to a new extent file and reads back.
    std::fs::remove_file(&p2).unwrap();
    s.swap_out_and_release(&[2], false, false).unwrap();
    assert_eq!(s.param_path(2), p2);
    assert!(read_back(&s, 2) == data(2));
    // The swapper still answers on another thread.
    let _stats = within_time("swapper_stats after the refusals", move || s.stats());
}

#[test]
fn the_engine_refuses_a_fifo_path_without_hanging() {
    let base = common::disk_dir();
    let fifo = base.path().join("fifo");
    mkfifo(&fifo);
    for write in [false, true] {
        let engine = swapper::io::IoEngine::new(IoConfig::default()).unwrap();
        let path = fifo.clone();
        let e = within_time("an engine open of a FIFO", move || {
            let mut buf = vec![0u8; 4096];
            if write {
                engine.write(&buf, &path, 0)
            } else {
                engine.read(&mut buf, &path, 0)
            }
        })
        .err()
        .unwrap();
        assert_eq!(e.status(), Status::InvalidArgument, "write {write}: {e}");
        assert!(e.message().contains("is a FIFO, not a regular file"), "{e}");
    }
    // The C API's direct read.
    let path = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    let status = within_time("swapper_io_pread of a FIFO", move || {
        let mut io = std::ptr::null_mut();
        let mut cfg = std::mem::MaybeUninit::uninit();
        // SAFETY: valid out-pointers and a live handle; the buffer outlives the call.
        unsafe {
            swapper::ffi::io::swapper_io_config_default(cfg.as_mut_ptr());
            assert_eq!(
                swapper::ffi::io::swapper_io_create(cfg.as_ptr(), &mut io),
                Status::Ok
            );
            let mut buf = vec![0u8; 4096];
            let st = swapper::ffi::io::swapper_io_pread(
                io,
                buf.as_mut_ptr().cast(),
                4096,
                path.as_ptr(),
                0,
                false,
            );
            swapper::ffi::io::swapper_io_destroy(io);
            st
        }
    });
    assert_eq!(status, Status::InvalidArgument);
}

#[test]
fn deleting_the_lock_file_lets_no_second_process_take_the_rank() {
    if second_process_role() {
        return;
    }
    let base = common::disk_dir();
    let s = Swapper::new(settings(base.path())).unwrap();
    put_out(&s, 1);
    // Delete whatever is not a swap file (an old-style `.swapper.lock`).
    for name in names(&rank_dir(base.path())) {
        if !name.starts_with("extent-") {
            std::fs::remove_file(rank_dir(base.path()).join(name)).unwrap();
        }
    }
    let test = "deleting_the_lock_file_lets_no_second_process_take_the_rank";
    assert_eq!(take_in_second_process(test, base.path()), "SWAPPER_STATUS_BUSY");
    assert!(
        read_back(&s, 1) == data(1),
        "the swap file was not emptied by the second process"
    );
    drop(s);
    assert_eq!(take_in_second_process(test, base.path()), "SWAPPER_STATUS_OK");
}

#[test]
fn a_forked_child_does_not_keep_the_rank_locked_after_the_parent_destroys() {
    if second_process_role() {
        return;
    }
    let base = common::disk_dir();
    let s = Swapper::new(settings(base.path())).unwrap();
    put_out(&s, 1);
    // SAFETY: the child only calls pause and _exit (async-signal-safe).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        loop {
            // SAFETY: async-signal-safe calls only; the parent kills this child.
            unsafe { libc::pause() };
        }
    }
    /// Kills and reaps the child however the test ends.
    struct Reap(libc::pid_t);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: `self.0` is our child; kill and reap it.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
    let child = Reap(pid);
    let test = "a_forked_child_does_not_keep_the_rank_locked_after_the_parent_destroys";
    let busy = take_in_second_process(test, base.path());
    assert!(
        read_back(&s, 1) == data(1),
        "the parent still uses its rank after the fork"
    );
    drop(s);
    let after = take_in_second_process(test, base.path());
    drop(child);
    assert_eq!(
        busy, "SWAPPER_STATUS_BUSY",
        "the parent holds the rank while it lives"
    );
    assert_eq!(
        after, "SWAPPER_STATUS_OK",
        "the sleeping child kept the rank locked"
    );
}

#[test]
fn an_nvme_path_with_a_nul_byte_is_an_invalid_argument() {
    let json =
        r#"{"zero_optimization": {"offload_param": {"device": "nvme", "nvme_path": "/tmp/x\u0000y"}}}"#;
    let e = Settings::from_deepspeed_json(json, 0, Dtype::Fp16)
        .and_then(Swapper::new)
        .err()
        .unwrap();
    assert_eq!(e.status(), Status::InvalidArgument, "{e}");
}

#[test]
fn swap_file_paths_over_path_max_are_refused_at_create() {
    let base = common::disk_dir();
    let suffix = "/zero_stage_3/float16params/rank0/".len() + swapper::store::folder::LONGEST_NAME;
    let mut nv = std::fs::canonicalize(base.path()).unwrap();
    while nv.as_os_str().len() + suffix + 201 < libc::PATH_MAX as usize {
        nv.push("d".repeat(200));
    }
    nv.push("e".repeat(libc::PATH_MAX as usize - suffix - nv.as_os_str().len() - 1));
    std::fs::create_dir_all(&nv).unwrap();
    let e = Swapper::new(settings(&nv)).err().unwrap();
    assert_eq!(e.status(), Status::InvalidArgument, "{e}");
    assert!(e.message().contains("PATH_MAX"), "{e}");
}
