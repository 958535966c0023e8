//! A real fork: the child inherits the parent's handles but none of their worker threads.
//! Every call it makes with them must return `SWAPPER_STATUS_BAD_STATE` at once (not wait
//! for ever on work nobody does), destroying them in the child must return and leave the
//! parent's resources alone, and the parent keeps working. The child reports through its
//! exit code: 0 is success, any other value names the first check that failed.
//!
//! This binary holds a single test, so that no other test thread holds a lock at the
//! moment of the fork.

mod common;

use std::ffi::{CStr, CString};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

use common::{disk_dir, pattern, TestBuf};
use swapper::ffi::common::swapper_last_error;
use swapper::ffi::io::*;
use swapper::ffi::swapper::*;
use swapper::{Backend, Dtype, ParamStatus, Status};

const LEN: usize = 1 << 20;

fn last_error() -> String {
    // SAFETY: swapper_last_error never returns NULL and the string is NUL-terminated.
    unsafe { CStr::from_ptr(swapper_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// The child's checks; returns the number of the first that fails, or 0.
fn child(io: *mut SwapperIo, s: *mut Swapper, path: &CString, buf: *mut u8) -> i32 {
    let bad = |st: Status| st == Status::BadState && last_error().contains("fork");
    // SAFETY: `buf` holds LEN bytes (the child's copy of the parent's buffer); the handles
    // are the parent's, used only through the API.
    unsafe {
        if !bad(swapper_io_pread(io, buf.cast(), 4096, path.as_ptr(), 0, false)) {
            return 10;
        }
        if !bad(swapper_io_wait(io, null_mut())) {
            return 11;
        }
        if !bad(swapper_swap_in(s, &1, 1, false, std::ptr::null())) {
            return 12;
        }
        let mut status = ParamStatus::NotAvailable;
        if !bad(swapper_param_status(s, 1, &mut status)) {
            return 13;
        }
        if !bad(swapper_wait_reads(s)) {
            return 14;
        }
        swapper_io_destroy(io);
        swapper_destroy(s);
        // The child can make handles of its own.
        let mut cfg = std::mem::MaybeUninit::<SwapperIoConfig>::uninit();
        swapper_io_config_default(cfg.as_mut_ptr());
        let mut mine = null_mut();
        if swapper_io_create(cfg.as_ptr(), &mut mine) != Status::Ok {
            return 15;
        }
        if swapper_io_pread(mine, buf.cast(), LEN as u64, path.as_ptr(), 0, false) != Status::Ok {
            return 16;
        }
        swapper_io_destroy(mine);
    }
    0
}

/// Waits for the child, killing it after `secs` (a hang).
fn reap(pid: libc::pid_t, secs: u64) -> Result<i32, String> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            return Err(format!("the child ended abnormally (wait status {status:#x})"));
        }
        if start.elapsed() > Duration::from_secs(secs) {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!(
                "the child hung for {secs} s in a call on an inherited handle"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_forked_child_gets_bad_state_and_the_parent_keeps_working() {
    assert!(
        swapper::sys::uring::Ring::available(),
        "io_uring is not available on this machine: this test covers both backends"
    );
    for backend in [Backend::Blocking, Backend::IoUring] {
        let dir = disk_dir();
        let path = dir.path().join("f");
        let data = pattern(LEN, 11);
        std::fs::write(&path, &data).unwrap();
        let cpath = CString::new(path.to_str().unwrap()).unwrap();
        let root = CString::new(dir.path().to_str().unwrap()).unwrap();

        let mut io_cfg = std::mem::MaybeUninit::<SwapperIoConfig>::uninit();
        let mut cfg = std::mem::MaybeUninit::<SwapperConfig>::uninit();
        let (mut io, mut s) = (null_mut(), null_mut());
        let mut buf = TestBuf::new(LEN, 0);
        let mut pool_buf = null_mut();
        // SAFETY: defaults fill the structs; the out-pointers are valid; the pool buffer
        // holds LEN bytes; `buf` outlives the engine.
        let c = unsafe {
            swapper_io_config_default(io_cfg.as_mut_ptr());
            let mut ic = io_cfg.assume_init();
            ic.backend = backend as i32;
            assert_eq!(swapper_io_create(&ic, &mut io), Status::Ok);
            swapper_config_default(cfg.as_mut_ptr());
            let mut c = cfg.assume_init();
            c.nvme_path = root.as_ptr();
            c.dtype = Dtype::Fp16 as i32;
            c.buffer_count = 2;
            c.buffer_numel = (LEN / 2) as u64;
            c.io = ic;
            assert_eq!(swapper_create(&c, &mut s), Status::Ok);
            assert_eq!(
                swapper_get_buffer(s, 1, (LEN / 2) as u64, &mut pool_buf),
                Status::Ok
            );
            std::ptr::copy_nonoverlapping(data.as_ptr(), pool_buf.cast::<u8>(), LEN);
            assert_eq!(swapper_swap_out_and_release(s, &1, 1, false, false), Status::Ok);
            // An asynchronous read left pending across the fork.
            let st = swapper_io_pread(
                io,
                buf.as_mut_slice().as_mut_ptr().cast(),
                LEN as u64,
                cpath.as_ptr(),
                0,
                true,
            );
            assert_eq!(st, Status::Ok);
            c
        };

        // SAFETY: the child runs only the checks above and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = child(io, s, &cpath, buf.as_mut_slice().as_mut_ptr());
            // SAFETY: ends the child without running the parent's destructors or test harness.
            unsafe { libc::_exit(code) };
        }
        match reap(pid, 30) {
            Ok(0) => {}
            Ok(code) => panic!("{backend:?}: the child's check {code} failed (see child() in tests/fork.rs)"),
            Err(e) => panic!("{backend:?}: {e}"),
        }

        // The parent's handles are untouched by the child's calls and destroys.
        let mut n = 0;
        // SAFETY: live handles; `buf` and the pool are valid.
        unsafe {
            assert_eq!(swapper_io_wait(io, &mut n), Status::Ok, "{}", last_error());
            assert_eq!(n, 1);
            assert!(buf.as_slice() == &data[..]);
            assert_eq!(
                swapper_io_pread(
                    io,
                    buf.as_mut_slice().as_mut_ptr().cast(),
                    4096,
                    cpath.as_ptr(),
                    0,
                    false
                ),
                Status::Ok
            );
            assert_eq!(
                swapper_swap_in(s, &1, 1, false, std::ptr::null()),
                Status::Ok,
                "{}",
                last_error()
            );
            let mut p = null_mut();
            let mut numel = 0;
            assert_eq!(swapper_param_buffer(s, 1, &mut p, &mut numel), Status::Ok);
            assert!(std::slice::from_raw_parts(p.cast::<u8>(), LEN) == &data[..]);
            // The child's destroy did not unlock the parent's folder.
            let mut other = null_mut();
            assert_eq!(
                swapper_create(&c, &mut other),
                Status::Busy,
                "the child's destroy released the parent's lock"
            );
        }
        swapper_destroy(s);
        swapper_io_destroy(io);
    }
}
