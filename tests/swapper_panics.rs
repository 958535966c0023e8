#![cfg(feature = "fault-injection")]
//! A panic inside any swapper call, through the C ABI: a panic is injected (fault
//! injection, `Call::Point`) at each step of the claim, the submit and the record of every
//! call that changes params, and after each the call has returned `SWAPPER_STATUS_PANIC`
//! and the handle is either fully usable or broken:
//! - usable: nothing is left "being submitted" or in flight after the waits, every pool
//!   buffer is free, reserved or held by a param, every param holds bytes it was given
//!   (checksums on: a read of a param whose bookkeeping went wrong fails), and each param
//!   goes through a whole get/swap-out/swap-in/release cycle again;
//! - broken (a panic in the middle of a transition, `<folder>|change`): every call returns
//!   `SWAPPER_STATUS_PANIC` saying so;
//!
//! and in both cases destroy returns (no hang). Every rule names its swapper's folder, so
//! the scenarios, each with a swapper of its own, do not disturb each other.

mod common;

use std::collections::HashMap;
use std::ffi::CStr;
use std::ptr::{null, null_mut};
use std::sync::mpsc;
use std::time::Duration;

use common::{disk_dir, pattern, TestBuf};
use swapper::ffi::boundary::last_error_ptr;
use swapper::ffi::swapper::*;
use swapper::sys::fault::{self, Call, Fault, Rule};
use swapper::{Dtype, ParamStatus, Stats, Status};

const NUMEL: u64 = 2048; // fp16: 4 KiB per param
const BYTES: usize = NUMEL as usize * 2;
const BUFFERS: u32 = 6;

fn last_error() -> String {
    // SAFETY: the pointer is this thread's last error, valid until its next failing call.
    unsafe { CStr::from_ptr(last_error_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A swapper through the C ABI, and what its params may hold.
struct World {
    s: *mut Swapper,
    _dir: tempfile::TempDir,
    /// The swap folder, as the swapper names it.
    folder: String,
    /// Caller buffers lent to the swapper (kept until after destroy).
    dests: Vec<TestBuf>,
    /// fp32 sources of the partitioned swap-out.
    srcs: Vec<Vec<f32>>,
    /// The bytes each param may hold.
    may_hold: HashMap<u64, Vec<Vec<u8>>>,
}

fn ok(st: Status, what: &str) {
    assert_eq!(st, Status::Ok, "{what}: {}", last_error());
}

impl World {
    /// Params 1 and 2 on disk (NOT_AVAILABLE), 3 and 4 AVAILABLE and filled, a
    /// partitioned space for two params; checksums on.
    fn new() -> World {
        let dir = disk_dir();
        let nvme = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let mut cfg = std::mem::MaybeUninit::<SwapperConfig>::uninit();
        let mut s = null_mut();
        // SAFETY: the default fills the struct; nvme outlives the create.
        let st = unsafe {
            swapper_config_default(cfg.as_mut_ptr());
            let mut c = cfg.assume_init();
            c.nvme_path = nvme.as_ptr();
            c.dtype = Dtype::Fp16 as i32;
            c.buffer_count = BUFFERS;
            c.buffer_numel = NUMEL;
            c.verify_checksums = 1;
            swapper_create(&c, &mut s)
        };
        ok(st, "create");
        let mut w = World {
            s,
            _dir: dir,
            folder: String::new(),
            dests: (0..2).map(|_| TestBuf::new(BYTES, 0)).collect(),
            srcs: Vec::new(),
            may_hold: HashMap::new(),
        };
        w.folder = w
            .dump()
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("swapper ")
            .to_string();
        for id in 1..=4 {
            w.fill(id, pattern(BYTES, id));
        }
        ok(
            // SAFETY: two valid ids.
            unsafe { swapper_swap_out_and_release(s, [1u64, 2].as_ptr(), 2, false, true) },
            "swap out 1, 2",
        );
        // SAFETY: two valid numels.
        ok(
            unsafe { swapper_reserve_partitioned_swap_space(s, [NUMEL, NUMEL].as_ptr(), 2) },
            "reserve",
        );
        for id in [1u64, 2] {
            let src: Vec<f32> = (0..NUMEL).map(|i| ((i + id * 7) % 1024) as f32).collect();
            let mut converted = vec![0u8; BYTES];
            swapper::convert::from_f32(&src, Dtype::Fp16, &mut converted);
            w.may_hold.get_mut(&id).unwrap().push(converted);
            w.srcs.push(src);
        }
        w
    }

    /// get_buffer, then fills the buffer with `data`.
    fn fill(&mut self, id: u64, data: Vec<u8>) {
        let mut buf = null_mut();
        // SAFETY: `buf` is a valid out-pointer.
        ok(
            unsafe { swapper_get_buffer(self.s, id, NUMEL, &mut buf) },
            "get_buffer",
        );
        // SAFETY: the pool buffer holds NUMEL fp16 elements.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.cast::<u8>(), BYTES) };
        self.may_hold.entry(id).or_default().push(data);
    }

    fn dump(&self) -> String {
        let mut text = vec![0 as libc::c_char; 1 << 16];
        let mut len = 0usize;
        // SAFETY: `text` has the capacity given.
        let st = unsafe { swapper_dump(self.s, text.as_mut_ptr(), text.len(), &mut len) };
        ok(st, "dump");
        // SAFETY: dump NUL-terminates within the capacity.
        unsafe { CStr::from_ptr(text.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::default();
        // SAFETY: `s` is a valid out-pointer.
        ok(unsafe { swapper_stats(self.s, &mut s) }, "stats");
        s
    }

    fn status(&self, id: u64) -> Result<ParamStatus, Status> {
        let mut out = ParamStatus::NotAvailable;
        // SAFETY: `out` is a valid out-pointer.
        match unsafe { swapper_param_status(self.s, id, &mut out) } {
            Status::Ok => Ok(out),
            e => Err(e),
        }
    }

    /// The bytes of an AVAILABLE param.
    fn bytes(&self, id: u64) -> Vec<u8> {
        let mut buf = null_mut();
        let mut numel = 0;
        // SAFETY: valid out-pointers.
        ok(
            unsafe { swapper_param_buffer(self.s, id, &mut buf, &mut numel) },
            "param_buffer",
        );
        assert_eq!(numel, NUMEL);
        // SAFETY: the param's buffer holds its bytes until it is released.
        unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), BYTES) }.to_vec()
    }

    fn check_holds(&self, id: u64, what: &str) {
        let got = self.bytes(id);
        assert!(
            self.may_hold[&id].contains(&got),
            "{what}: param {id} holds bytes it was never given"
        );
    }

    fn release(&self, id: u64) {
        // SAFETY: one valid id.
        ok(unsafe { swapper_release(self.s, &id, 1) }, "release");
    }

    /// After a panic that left the handle usable: nothing stuck, every param's bytes
    /// right, and every param usable for a whole cycle.
    fn prove_usable(&mut self, what: &str) {
        let dump = self.dump();
        assert!(
            !dump.contains("being submitted"),
            "{what}: a param is stuck:\n{dump}"
        );
        let (r, wr) = (swapper_wait_reads(self.s), swapper_wait_writes(self.s));
        assert_ne!(r, Status::Panic, "{what}: {}", last_error());
        assert_ne!(wr, Status::Panic, "{what}: {}", last_error());
        let st = self.stats();
        assert_eq!(
            (st.pending_reads, st.pending_writes, st.inflight_params),
            (0, 0, 0),
            "{what}: {st:?}"
        );
        let dump = self.dump();
        let held = dump.matches(" pool buffer ").count() as u64;
        assert_eq!(
            st.free_buffers + st.reserved_buffers + held,
            st.total_buffers,
            "{what}: a pool buffer was lost or doubled:\n{dump}"
        );
        for id in 1..=5u64 {
            match self.status(id) {
                Err(Status::NotFound) => assert_eq!(id, 5, "{what}: param {id} vanished"),
                Err(e) => panic!("{what}: param_status({id}) = {e:?}: {}", last_error()),
                Ok(ParamStatus::Inflight) => panic!("{what}: param {id} INFLIGHT after the waits"),
                Ok(ParamStatus::Available) => {
                    if id != 5 {
                        self.check_holds(id, what);
                    }
                    self.release(id);
                }
                Ok(ParamStatus::NotAvailable) => {
                    // SAFETY: one valid id, pool buffers.
                    match unsafe { swapper_swap_in(self.s, &id, 1, false, null()) } {
                        Status::Ok => {
                            self.check_holds(id, what);
                            self.release(id);
                        }
                        // Its file is not a valid copy any more (a partitioned write that
                        // did not finish): refused, not read.
                        Status::BadState => {}
                        e => panic!("{what}: swap in of param {id}: {e:?}: {}", last_error()),
                    }
                }
            }
        }
        for id in 1..=5u64 {
            let data = pattern(BYTES, 1000 + id);
            self.fill(id, data);
            // SAFETY: one valid id.
            ok(
                unsafe { swapper_swap_out_and_release(self.s, &id, 1, false, true) },
                &format!("{what}: swap out {id} again"),
            );
            // SAFETY: as above.
            ok(
                unsafe { swapper_swap_in(self.s, &id, 1, false, null()) },
                &format!("{what}: swap in {id} again"),
            );
            let got = self.bytes(id);
            assert!(
                got == pattern(BYTES, 1000 + id),
                "{what}: param {id} read back wrong"
            );
            self.release(id);
        }
        let st = self.stats();
        assert_eq!(st.free_buffers, BUFFERS as u64, "{what}: {st:?}");
    }

    /// After a panic that broke the handle: every call says so.
    fn prove_broken(&self, what: &str) {
        let mut buf = null_mut();
        let mut stats = Stats::default();
        let mut status = ParamStatus::NotAvailable;
        // SAFETY: valid out-pointers and ids.
        let answers = unsafe {
            [
                swapper_get_buffer(self.s, 9, NUMEL, &mut buf),
                swapper_swap_in(self.s, [1u64].as_ptr(), 1, true, null()),
                swapper_swap_out(self.s, [3u64].as_ptr(), 1, true),
                swapper_wait_reads(self.s),
                swapper_wait_writes(self.s),
                swapper_release(self.s, [3u64].as_ptr(), 1),
                swapper_param_status(self.s, 1, &mut status),
                swapper_stats(self.s, &mut stats),
            ]
        };
        for (k, a) in answers.iter().enumerate() {
            assert_eq!(*a, Status::Panic, "{what}: call {k} after the break");
        }
        let msg = last_error();
        assert!(msg.contains("destroy the handle"), "{what}: {msg}");
    }
}

/// What a scenario does: set-up that must succeed, then the call the panic strikes.
#[derive(Clone, Copy, Debug)]
enum Op {
    GetBuffer,
    SwapOut,
    SwapOutAndRelease,
    SwapInPool,
    SwapInBuffers,
    SwapIntoBuffer,
    SwapOutPartitioned,
    WaitReads,
    WaitWrites,
    WaitParams,
    Release,
}

impl Op {
    /// The name its steps carry, and its steps.
    fn steps(self) -> (&'static str, &'static [&'static str]) {
        const IO: &[&str] = &["claim", "submit", "submitted", "record"];
        match self {
            Op::GetBuffer => ("get_buffer", &["claim", "claimed", "record"]),
            Op::SwapOut => ("swap_out", IO),
            Op::SwapOutAndRelease => ("swap_out_and_release", IO),
            Op::SwapInPool | Op::SwapInBuffers => ("swap_in", IO),
            Op::SwapIntoBuffer => ("swap_into_buffer", IO),
            Op::SwapOutPartitioned => (
                "swap_out_partitioned",
                &["claim", "convert", "submitted", "waited", "record"],
            ),
            Op::WaitReads | Op::WaitParams => ("wait_reads", &["snapshot", "waited", "record"]),
            Op::WaitWrites => ("wait_writes", &["snapshot", "waited", "record"]),
            Op::Release => ("release", &["record"]),
        }
    }

    fn set_up(self, w: &mut World) {
        let s = w.s;
        // SAFETY: valid ids on a live handle.
        unsafe {
            match self {
                Op::WaitReads | Op::WaitParams => ok(
                    swapper_swap_in(s, [1u64, 2].as_ptr(), 2, true, null()),
                    "prefetch",
                ),
                Op::WaitWrites => ok(swapper_swap_out(s, [3u64, 4].as_ptr(), 2, true), "write"),
                _ => {}
            }
        }
    }

    fn run(self, w: &mut World) -> Status {
        let s = w.s;
        let pair = [1u64, 2];
        let avail = [3u64, 4];
        // SAFETY: valid ids, buffers of NUMEL elements that outlive the swapper, sources
        // of NUMEL elements.
        unsafe {
            match self {
                Op::GetBuffer => {
                    let mut buf = null_mut();
                    swapper_get_buffer(s, 5, NUMEL, &mut buf)
                }
                Op::SwapOut => swapper_swap_out(s, avail.as_ptr(), 2, true),
                Op::SwapOutAndRelease => swapper_swap_out_and_release(s, avail.as_ptr(), 2, false, true),
                Op::SwapInPool => swapper_swap_in(s, pair.as_ptr(), 2, true, null()),
                Op::SwapInBuffers => {
                    let dests: Vec<*mut libc::c_void> = w
                        .dests
                        .iter_mut()
                        .map(|d| d.as_mut_slice().as_mut_ptr().cast())
                        .collect();
                    swapper_swap_in_buffers(
                        s,
                        pair.as_ptr(),
                        2,
                        false,
                        dests.as_ptr(),
                        [NUMEL, NUMEL].as_ptr(),
                    )
                }
                Op::SwapIntoBuffer => {
                    let dest = w.dests[0].as_mut_slice().as_mut_ptr().cast();
                    swapper_swap_into_buffer(s, 1, dest, NUMEL)
                }
                Op::SwapOutPartitioned => {
                    let srcs: Vec<*const f32> = w.srcs.iter().map(|v| v.as_ptr()).collect();
                    swapper_swap_out_partitioned(s, pair.as_ptr(), srcs.as_ptr(), [NUMEL, NUMEL].as_ptr(), 2)
                }
                Op::WaitReads => swapper_wait_reads(s),
                Op::WaitWrites => swapper_wait_writes(s),
                Op::WaitParams => swapper_wait_params(s, pair.as_ptr(), 2),
                Op::Release => swapper_release(s, avail.as_ptr(), 2),
            }
        }
    }
}

const OPS: [Op; 11] = [
    Op::GetBuffer,
    Op::SwapOut,
    Op::SwapOutAndRelease,
    Op::SwapInPool,
    Op::SwapInBuffers,
    Op::SwapIntoBuffer,
    Op::SwapOutPartitioned,
    Op::WaitReads,
    Op::WaitWrites,
    Op::WaitParams,
    Op::Release,
];

/// The scenario of a panic at `<folder>|<point>` after `skip` matches, on a swapper of
/// its own; runs in a thread so that a hang fails the test instead of stalling it.
/// Returns whether the handle came out broken.
fn scenario(op: Op, point: String, skip: u64) -> bool {
    let what = format!("{op:?} panicking at {point} (skip {skip})");
    let (tx, rx) = mpsc::channel();
    let w2 = what.clone();
    let worker = std::thread::spawn(move || {
        let mut w = World::new();
        op.set_up(&mut w);
        fault::install(Rule {
            call: Call::Point,
            path_contains: format!("{}|{point}", w.folder),
            fault: Fault::Panic,
            skip,
            times: 1,
        });
        let st = op.run(&mut w);
        assert_eq!(
            st,
            Status::Panic,
            "{w2}: the injected panic did not strike: {}",
            last_error()
        );
        let msg = last_error();
        assert!(msg.contains("injected panic"), "{w2}: {msg}");
        let broken = {
            let mut stats = Stats::default();
            // SAFETY: a valid out-pointer.
            unsafe { swapper_stats(w.s, &mut stats) == Status::Panic }
        };
        if broken {
            w.prove_broken(&w2);
        } else {
            w.prove_usable(&w2);
        }
        swapper_destroy(w.s);
        // The swapper is gone; the buffers it was lent may go now.
        drop(w);
        let _ = tx.send(broken);
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(broken) => {
            worker.join().unwrap();
            broken
        }
        // The scenario failed: report its own message.
        Err(_) if worker.is_finished() => match worker.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("a scenario that finished sent its answer"),
        },
        Err(_) => panic!("{what}: hung (no answer within 60 s)"),
    }
}

#[test]
fn a_panic_at_any_step_of_a_claim_submit_or_record_leaves_the_handle_usable() {
    for op in OPS {
        let (call, steps) = op.steps();
        for step in steps {
            // The first param, and (for batches) the second after the first went ahead.
            // (A step a call passes once has only the first.)
            let skips: &[u64] = match (op, *step) {
                (Op::GetBuffer | Op::SwapIntoBuffer, _) | (_, "snapshot") => &[0],
                _ => &[0, 1],
            };
            for &skip in skips {
                let broken = scenario(op, format!("{call}:{step}"), skip);
                assert!(!broken, "{op:?} at {call}:{step} (skip {skip}) broke the handle");
            }
        }
    }
}

#[test]
fn a_panic_in_the_middle_of_a_transition_breaks_the_handle_and_destroy_still_works() {
    for op in OPS {
        assert!(
            scenario(op, "change".to_string(), 0),
            "{op:?}: a torn transition did not break the handle"
        );
    }
}
