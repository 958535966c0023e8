#![cfg(feature = "fault-injection")]
//! The engine when things go wrong around it: a destroy while another thread waits on a
//! slow read (destroy must not return while the read still writes into the caller's
//! memory), and a worker thread that panics (its requests fail with `Panic`, the engine
//! is broken, nothing hangs). A slow device is imitated by delaying each read request
//! (fault injection); every rule is bounded to the requests of its own file, so the tests
//! of this binary do not disturb each other.

mod common;

use std::ffi::CString;
use std::ptr::null_mut;
use std::time::Duration;

use common::{disk_dir, held_file, pattern, patterned, within, TestBuf};
use swapper::ffi::io::*;
use swapper::ffi::swapper::*;
use swapper::io::handle::IoHandle;
use swapper::sys::fault::{self, Call, Fault, Rule};
use swapper::sys::RawBuf;
use swapper::{Backend, DirectIo, Dtype, IoConfig, Settings, Status, Swapper as Core};

fn backends() -> Vec<Backend> {
    assert!(
        swapper::sys::uring::Ring::available(),
        "io_uring is not available on this machine (kernel.io_uring_disabled?): these tests need both backends"
    );
    vec![Backend::Blocking, Backend::IoUring]
}

fn delay_reads(path: &std::path::Path, requests: u64, ms: u64) {
    fault::install(Rule {
        call: Call::Read,
        path_contains: path.to_string_lossy().into_owned(),
        fault: Fault::DelayMs(ms),
        skip: 0,
        times: requests,
    });
}

const BLOCK: u64 = 256 << 10;
const LEN: usize = 4 << 20; // 16 requests of BLOCK

#[test]
fn io_destroy_waits_for_a_read_another_thread_is_waiting_on() {
    for backend in backends() {
        let dir = disk_dir();
        let path = dir.path().join(format!("slow-{}", backend.name()));
        let data = pattern(LEN, 3);
        std::fs::write(&path, &data).unwrap();
        let mut cfg = std::mem::MaybeUninit::<SwapperIoConfig>::uninit();
        let mut io = null_mut();
        // SAFETY: the default fills the struct; `io` is a valid out-pointer.
        let st = unsafe {
            swapper_io_config_default(cfg.as_mut_ptr());
            let mut c = cfg.assume_init();
            c.block_size = BLOCK;
            c.queue_depth = 1;
            c.thread_count = 1;
            c.backend = backend as i32;
            swapper_io_create(&c, &mut io)
        };
        assert_eq!(st, Status::Ok);
        let mut dest = TestBuf::new(LEN, 0);
        dest.as_mut_slice().fill(0xAA);
        // Every request sleeps 40 ms: the read takes about 640 ms.
        delay_reads(&path, (LEN as u64).div_ceil(BLOCK), 40);
        let cpath = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `dest` outlives the engine (checked below: destroy waits for the read).
        let st = unsafe {
            swapper_io_pread(
                io,
                dest.as_mut_slice().as_mut_ptr().cast(),
                LEN as u64,
                cpath.as_ptr(),
                0,
                true,
            )
        };
        assert_eq!(st, Status::Ok);
        let key = io as usize;
        let waiter = std::thread::spawn(move || {
            let mut n = 0;
            // SAFETY: the handle is live, or dead (an error), never freed memory.
            unsafe { swapper_io_wait(key as *mut SwapperIo, &mut n) }
        });
        std::thread::sleep(Duration::from_millis(80)); // the waiter is blocked, the read under way
        swapper_io_destroy(io);
        // The read must be over: every byte arrived, and nothing changes any more.
        let after = dest.as_slice().to_vec();
        assert!(
            after == data,
            "{backend:?}: swapper_io_destroy returned while the read was still writing into the buffer ({} of {LEN} bytes still the fill pattern)",
            after.iter().filter(|&&b| b == 0xAA).count()
        );
        let st = waiter.join().unwrap();
        assert!(st == Status::Ok || st == Status::InvalidArgument, "{st:?}");
        assert!(
            dest.as_slice() == &after[..],
            "{backend:?}: the buffer changed after destroy"
        );
        // SAFETY: a dead handle is an error, not a crash.
        assert_eq!(
            unsafe { swapper_io_wait(io, null_mut()) },
            Status::InvalidArgument
        );
        drop(dest); // freeing the buffer after destroy is safe
    }
}

#[test]
fn swapper_destroy_waits_for_a_read_into_caller_memory_and_unlocks_the_folder() {
    for backend in backends() {
        let dir = disk_dir();
        let root = CString::new(dir.path().to_str().unwrap()).unwrap();
        let mut cfg = std::mem::MaybeUninit::<SwapperConfig>::uninit();
        // SAFETY: the default fills the struct.
        let mut c = unsafe {
            swapper_config_default(cfg.as_mut_ptr());
            cfg.assume_init()
        };
        c.nvme_path = root.as_ptr();
        c.dtype = Dtype::Fp16 as i32;
        c.buffer_count = 2;
        c.buffer_numel = (LEN / 2) as u64;
        c.io.block_size = BLOCK;
        c.io.queue_depth = 1;
        c.io.thread_count = 1;
        c.io.backend = backend as i32;
        let mut s = null_mut();
        // SAFETY: valid config and out-pointer.
        assert_eq!(unsafe { swapper_create(&c, &mut s) }, Status::Ok);
        let data = pattern(LEN, 5);
        let mut buf = null_mut();
        // SAFETY: a pool buffer of LEN bytes is filled, then swapped out synchronously.
        unsafe {
            assert_eq!(swapper_get_buffer(s, 1, (LEN / 2) as u64, &mut buf), Status::Ok);
            std::ptr::copy_nonoverlapping(data.as_ptr(), buf.cast::<u8>(), LEN);
            assert_eq!(swapper_swap_out_and_release(s, &1, 1, false, false), Status::Ok);
        }
        let mut dest = TestBuf::new(LEN, 0);
        dest.as_mut_slice().fill(0xAA);
        delay_reads(dir.path(), (LEN as u64).div_ceil(BLOCK), 40);
        let dests = [dest.as_mut_slice().as_mut_ptr().cast::<libc::c_void>()];
        let numels = [(LEN / 2) as u64];
        // SAFETY: `dest` holds the param and outlives the swapper.
        let st = unsafe { swapper_swap_in_buffers(s, &1, 1, true, dests.as_ptr(), numels.as_ptr()) };
        assert_eq!(st, Status::Ok);
        let key = s as usize;
        // The handle is live, or dead (an error), never freed memory.
        let waiter = std::thread::spawn(move || swapper_wait_reads(key as *mut Swapper));
        std::thread::sleep(Duration::from_millis(80));
        swapper_destroy(s);
        let after = dest.as_slice().to_vec();
        assert!(
            after == data,
            "{backend:?}: swapper_destroy returned while the read was still writing into the caller's buffer ({} of {LEN} bytes still the fill pattern)",
            after.iter().filter(|&&b| b == 0xAA).count()
        );
        // The folder is unlocked when destroy returns, although the waiter may still be
        // on its way out: a new swapper takes the same rank at once.
        let mut s2 = null_mut();
        // SAFETY: valid config and out-pointer.
        let st = unsafe { swapper_create(&c, &mut s2) };
        assert_eq!(
            st,
            Status::Ok,
            "{backend:?}: the rank folder was still locked after destroy"
        );
        swapper_destroy(s2);
        let st = waiter.join().unwrap();
        assert!(st == Status::Ok || st == Status::InvalidArgument, "{st:?}");
        assert!(
            dest.as_slice() == &after[..],
            "{backend:?}: the buffer changed after destroy"
        );
        // A dead handle is an error, not a crash.
        assert_eq!(swapper_wait_reads(s), Status::InvalidArgument);
    }
}

fn panic_on_read(path: &std::path::Path, skip: u64) {
    fault::install(Rule {
        call: Call::Read,
        path_contains: path.to_string_lossy().into_owned(),
        fault: Fault::Panic,
        skip,
        times: 1,
    });
}

#[test]
fn a_worker_that_panics_fails_its_requests_and_breaks_the_io_engine() {
    for backend in backends() {
        let dir = disk_dir();
        let path = dir.path().join(format!("panic-{}", backend.name()));
        let len = 2usize << 20;
        std::fs::write(&path, pattern(len, 7)).unwrap();
        let h = IoHandle::new(IoConfig {
            block_size: 64 << 10,
            queue_depth: 4,
            thread_count: 2,
            backend,
            direct_io: DirectIo::Auto,
            ..IoConfig::default()
        })
        .unwrap();
        panic_on_read(&path, 5);
        let path2 = path.clone();
        let st = within(20, "a wait after a worker panic", move || {
            let mut buf = TestBuf::new(len, 0);
            // SAFETY: `buf` outlives the wait below.
            unsafe {
                h.submit(
                    false,
                    RawBuf(buf.as_mut_slice().as_mut_ptr()),
                    len as u64,
                    &path2,
                    0,
                    true,
                )
            }
            .unwrap();
            let (n, first) = h.wait();
            assert_eq!(n, 1);
            let first = first.unwrap_err();
            // Every later call fails with the same status, and nothing hangs.
            // SAFETY: as above.
            let again = unsafe {
                h.submit(
                    false,
                    RawBuf(buf.as_mut_slice().as_mut_ptr()),
                    4096,
                    &path2,
                    0,
                    false,
                )
            }
            .unwrap_err();
            let (_, wait) = h.wait();
            drop(h);
            (first, again, wait.unwrap_err())
        });
        for e in [&st.0, &st.1, &st.2] {
            assert_eq!(e.status(), Status::Panic, "{backend:?}: {e}");
        }
        assert!(st.0.message().contains("panic"), "{}", st.0);
    }
}

#[test]
fn a_worker_that_panics_breaks_the_swapper_without_a_hang() {
    for backend in backends() {
        let dir = disk_dir();
        let s = Core::new(Settings {
            nvme_path: dir.path().to_path_buf(),
            dtype: Dtype::Fp16,
            buffer_count: 2,
            buffer_numel: 1 << 20,
            io: IoConfig {
                block_size: 64 << 10,
                thread_count: 2,
                backend,
                ..IoConfig::default()
            },
            ..Settings::default()
        })
        .unwrap();
        for id in [1u64, 2] {
            let buf = s.get_buffer(id, 1 << 20).unwrap();
            let d = pattern(2 << 20, id);
            // SAFETY: a fresh pool buffer of 2 MiB.
            unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), buf.0, d.len()) };
            s.swap_out_and_release(&[id], false, false).unwrap();
        }
        panic_on_read(dir.path(), 3);
        let (sync, later, wait) = within(20, "swap-ins after a worker panic", move || {
            // SAFETY: pool buffers.
            let sync = unsafe { s.swap_in(&[1], false, None) }.unwrap_err();
            // SAFETY: as above.
            let later = unsafe { s.swap_in(&[2], true, None) }
                .and_then(|()| s.wait_reads())
                .unwrap_err();
            let wait = s.engine().check_usable().unwrap_err();
            drop(s);
            (sync, later, wait)
        });
        for e in [&sync, &later, &wait] {
            assert_eq!(e.status(), Status::Panic, "{backend:?}: {e}");
        }
    }
}

#[test]
fn c_calls_after_a_worker_panic_return_panic() {
    for backend in backends() {
        let dir = disk_dir();
        let path = dir.path().join("c-panic");
        std::fs::write(&path, pattern(1 << 20, 9)).unwrap();
        let cpath = CString::new(path.to_str().unwrap()).unwrap();
        let mut cfg = std::mem::MaybeUninit::<SwapperIoConfig>::uninit();
        let mut io = null_mut();
        // SAFETY: the default fills the struct; `io` is a valid out-pointer.
        let st = unsafe {
            swapper_io_config_default(cfg.as_mut_ptr());
            let mut c = cfg.assume_init();
            c.block_size = 64 << 10;
            c.backend = backend as i32;
            swapper_io_create(&c, &mut io)
        };
        assert_eq!(st, Status::Ok);
        panic_on_read(&path, 2);
        let key = io as usize;
        let statuses = within(20, "C calls after a worker panic", move || {
            let io = key as *mut SwapperIo;
            let mut buf = TestBuf::new(1 << 20, 0);
            let p = buf.as_mut_slice().as_mut_ptr().cast();
            // SAFETY: `buf` outlives every call; the handle is live until destroyed below.
            unsafe {
                let sync = swapper_io_pread(io, p, 1 << 20, cpath.as_ptr(), 0, false);
                let again = swapper_io_pread(io, p, 4096, cpath.as_ptr(), 0, true);
                let wait = swapper_io_wait(io, null_mut());
                swapper_io_destroy(io);
                (sync, again, wait)
            }
        });
        assert_eq!(
            statuses,
            (Status::Panic, Status::Panic, Status::Panic),
            "{backend:?}"
        );
    }
}

const SMALL: usize = 64 << 10;

/// An io_uring engine with one worker, so that requests meet fault injection in the
/// order they were submitted.
fn one_ring() -> swapper::io::IoEngine {
    swapper::io::IoEngine::new(IoConfig {
        backend: Backend::IoUring,
        direct_io: DirectIo::On,
        block_size: 1 << 20,
        queue_depth: 4,
        thread_count: 1,
        ..IoConfig::default()
    })
    .unwrap()
}

/// Submits `n` adjacent operations of SMALL bytes on `file` (the first one held up 200 ms
/// by fault injection, so that the rest queue behind it), each with its checksum;
/// returns their results and checksums.
fn adjacent_ops(
    engine: &swapper::io::IoEngine,
    file: &std::sync::Arc<swapper::io::HeldFile>,
    write: bool,
    bufs: &mut [TestBuf],
) -> Vec<(swapper::Result<()>, Option<u32>)> {
    fault::install(Rule {
        call: if write { Call::Write } else { Call::Read },
        path_contains: file.path().to_string_lossy().into_owned(),
        fault: Fault::DelayMs(200),
        skip: 0,
        times: 1,
    });
    let tickets: Vec<_> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| {
            let req = swapper::io::HeldRequest {
                write,
                buf: RawBuf(b.as_mut_slice().as_mut_ptr()),
                len: SMALL as u64,
                file,
                offset: (i * SMALL) as u64,
                checksum_len: Some(SMALL as u64),
            };
            // SAFETY: each buffer outlives its operation (waited for below) and nothing
            // else touches it meanwhile.
            unsafe { engine.submit_held(&req) }.unwrap()
        })
        .collect();
    tickets.iter().map(|t| (t.wait(), t.checksum())).collect()
}

/// `n` patterns of SMALL bytes (seeds from `seed` on) and aligned buffers holding them.
fn small_patterns(n: usize, seed: u64) -> (Vec<Vec<u8>>, Vec<TestBuf>) {
    let seeds = seed..seed + n as u64;
    let data = seeds.clone().map(|s| pattern(SMALL, s)).collect();
    (data, seeds.map(|s| patterned(SMALL, s)).collect())
}

#[test]
fn adjacent_small_operations_in_a_held_file_go_merged_and_every_byte_lands() {
    let dir = disk_dir();
    let path = dir.path().join("merged");
    let file = held_file(&path);
    let engine = one_ring();
    let n = 64;
    let (data, mut bufs) = small_patterns(n, 100);
    for (i, (res, crc)) in adjacent_ops(&engine, &file, true, &mut bufs)
        .into_iter()
        .enumerate()
    {
        res.unwrap();
        assert_eq!(crc, Some(crc32c::crc32c(&data[i])), "write {i}");
    }
    let merged_writes = engine.merged_requests();
    // The first write went alone (held up); the 63 behind it queued and went merged, in
    // calls of at most block_size (16 of them).
    assert!(
        merged_writes >= 48,
        "only {merged_writes} of 64 writes went merged"
    );
    assert_eq!(std::fs::read(&path).unwrap(), data.concat());
    for b in bufs.iter_mut() {
        b.as_mut_slice().fill(0);
    }
    for (i, (res, crc)) in adjacent_ops(&engine, &file, false, &mut bufs)
        .into_iter()
        .enumerate()
    {
        res.unwrap();
        assert!(bufs[i].as_slice() == &data[i][..], "read {i}");
        assert_eq!(crc, Some(crc32c::crc32c(&data[i])), "read {i}");
    }
    assert!(engine.merged_requests() - merged_writes >= 48);
}

#[test]
fn a_merged_read_that_meets_the_end_of_the_file_fails_only_the_request_past_it() {
    let dir = disk_dir();
    let path = dir.path().join("short");
    // 15.5 requests' worth: the 16th read meets the end of the file half-way.
    let data = pattern(15 * SMALL + SMALL / 2, 9);
    std::fs::write(&path, &data).unwrap();
    let file = held_file(&path);
    let engine = one_ring();
    let mut bufs: Vec<TestBuf> = (0..16).map(|_| TestBuf::new(SMALL, 0)).collect();
    let results = adjacent_ops(&engine, &file, false, &mut bufs);
    assert!(engine.merged_requests() > 0, "nothing went merged");
    for (i, (res, _)) in results.iter().enumerate().take(15) {
        assert!(res.is_ok(), "read {i}: {res:?}");
        assert!(
            bufs[i].as_slice() == &data[i * SMALL..(i + 1) * SMALL],
            "read {i}"
        );
    }
    let err = results[15].0.as_ref().unwrap_err();
    assert_eq!(err.status(), Status::IoError, "{err}");
    let at = format!("at offset {}", 15 * SMALL + SMALL / 2);
    assert!(
        err.message().contains("unexpected end of file") && err.message().contains(&at),
        "{err}"
    );
}

#[test]
fn an_injected_error_in_a_merged_write_fails_the_request_it_was_injected_into_and_no_other() {
    let dir = disk_dir();
    let path = dir.path().join("eio");
    let file = held_file(&path);
    let engine = one_ring();
    // The 10th write request fails (the rules are asked in order: this one lets nine
    // through, the first of them also held up by adjacent_ops' rule).
    fault::install(Rule {
        call: Call::Write,
        path_contains: path.to_string_lossy().into_owned(),
        fault: Fault::Errno(libc::EIO),
        skip: 9,
        times: 1,
    });
    let (data, mut bufs) = small_patterns(32, 500);
    let results = adjacent_ops(&engine, &file, true, &mut bufs);
    assert!(engine.merged_requests() > 0, "nothing went merged");
    let on_disk = std::fs::read(&path).unwrap();
    for (i, (res, _)) in results.iter().enumerate() {
        if i == 9 {
            let err = res.as_ref().unwrap_err();
            assert!(
                err.message().contains(&format!("offset {}", 9 * SMALL)) && err.message().contains("errno 5"),
                "{err}"
            );
        } else {
            assert!(res.is_ok(), "write {i}: {res:?}");
            assert!(on_disk[i * SMALL..(i + 1) * SMALL] == data[i][..], "write {i}");
        }
    }
}
