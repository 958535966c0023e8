#![cfg(feature = "fault-injection")]
//! A panic inside any optimizer swapper call, through the C ABI: a panic is injected
//! (fault injection, `Call::Point`) at each step of the claim, the submit and the record
//! of every call that claims (register, begin_step, next_ready, hand_back, discard,
//! end_step, swap_out_gradients, wait_gradients, swap_out_params, purge), and after each
//! the call has returned `SWAPPER_STATUS_PANIC` and the handle is either fully usable or
//! broken:
//! - usable: the step under way (if any) can be finished (every sub-group taken, handed
//!   back, the step ended: nothing stuck out, being handed out or being submitted), every
//!   sub-group's state holds one of the versions it was given (both state tensors the same
//!   one) and its gradient halves ones they were given (checksums on: a read of bytes the
//!   bookkeeping got wrong fails), the ring is empty after the next step, the next step
//!   writes and reads a new version, and a registration and a purge work;
//! - broken (a panic in the middle of a transition, `<rank folder>|change`): every call
//!   returns `SWAPPER_STATUS_PANIC` saying so;
//!
//! and in both cases destroy returns (no hang). Every rule names its swapper's rank
//! folder, so the scenarios, each with a swapper of its own, do not disturb each other.
//!
//! A registration on an adopted folder takes up the sub-group's adopted tensors inside
//! its claim; a panic there gives them back (a later registration of the same sub-group
//! still finds them, and a flush and the next adoption keep them). With
//! `flush_at_end_step`, a panic at end_step's flush leaves the previous generation
//! durable and the handle usable.

mod common;

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::ptr::null_mut;
use std::sync::mpsc;
use std::time::Duration;

use common::disk_dir;
use swapper::ffi::boundary::last_error_ptr;
use swapper::ffi::optimizer::*;
use swapper::ffi::swapper::{
    swapper_config_default, swapper_create, swapper_destroy, swapper_get_buffer,
    swapper_reserve_partitioned_swap_space, swapper_swap_out_and_release, Swapper, SwapperConfig,
};
use swapper::optimizer::{OptimizerStats, TensorKind};
use swapper::store::manifest::{self, Manifest};
use swapper::sys::fault::{self, Call, Fault, Rule};
use swapper::{Dtype, Status};

/// Elements per tensor (not a multiple of 1024: tensors end inside a 4 KiB unit).
const N: usize = 3000;
const HALF: usize = N / 2;
/// The sub-groups of every scenario; `EXTRA` is registered by the check afterwards.
const GROUPS: [u32; 3] = [0, 1, 2];
const EXTRA: u32 = 9;
/// Tensors: 0 "param", 1 "exp_avg" (state), 2 "grad" (gradient).
const GRAD: usize = 2;

fn last_error() -> String {
    // SAFETY: the pointer is this thread's last error, valid until its next failing call.
    unsafe { CStr::from_ptr(last_error_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn ok(st: Status, what: &str) {
    assert_eq!(st, Status::Ok, "{what}: {}", last_error());
}

/// State tensor `k` of sub-group `g` at `version` (0: never written, zeros).
fn state(g: u32, k: usize, version: u32) -> Vec<f32> {
    if version == 0 {
        return vec![0.0; N];
    }
    (0..N)
        .map(|i| (g * 100 + k as u32 * 10 + version) as f32 + (i % 97) as f32 * 0.25)
        .collect()
}

/// Half `h` of sub-group `g`'s gradient at `version` (0: zeros).
fn grad_half(g: u32, h: usize, version: u32) -> Vec<f32> {
    if version == 0 {
        return vec![0.0; HALF];
    }
    (0..HALF)
        .map(|i| (g * 100 + 50 + version) as f32 + ((i + h * HALF) % 89) as f32 * 0.5)
        .collect()
}

/// An optimizer swapper (and a parameter swapper for `swap_out_params`) through the C
/// ABI, and the versions each sub-group may hold.
struct World {
    o: *mut SwapperOptimizer,
    s: *mut Swapper,
    _dir: tempfile::TempDir,
    /// The rank folder, as the swapper names its fault-injection points.
    folder: String,
    /// Versions each sub-group's state may hold.
    states: HashMap<u32, Vec<u32>>,
    /// Versions each half of each sub-group's gradient may hold.
    grads: HashMap<(u32, usize), Vec<u32>>,
    /// The sub-group the scenario holds out (taken by next_ready, not handed back).
    held: Option<u32>,
    /// The sub-groups registered (when a panic may have left it either way: checked).
    extra_may_exist: bool,
}

fn specs() -> (Vec<CString>, Vec<SwapperTensorSpec>) {
    let names: Vec<CString> = ["param", "exp_avg", "grad"]
        .iter()
        .map(|n| CString::new(*n).unwrap())
        .collect();
    let kinds = [TensorKind::State, TensorKind::State, TensorKind::Gradient];
    let specs = names
        .iter()
        .zip(kinds)
        .map(|(n, k)| SwapperTensorSpec {
            name: n.as_ptr(),
            numel: N as u64,
            kind: k as i32,
        })
        .collect();
    (names, specs)
}

impl World {
    /// Sub-groups 0..3 registered, their gradients and state at version 1 on disk; a ring
    /// of two sub-groups (plus room for gradient fragments); checksums on. Param 1 of a
    /// parameter swapper swapped out, its partitioned space reserved.
    fn new() -> World {
        let dir = disk_dir();
        let nvme = CString::new(dir.path().to_str().unwrap()).unwrap();
        let mut o = null_mut();
        let mut s = null_mut();
        // SAFETY: the defaults fill the structs; the strings outlive the creates.
        unsafe {
            let mut c = std::mem::MaybeUninit::<SwapperOptimizerConfig>::uninit();
            swapper_optimizer_config_default(c.as_mut_ptr());
            let mut c = c.assume_init();
            c.nvme_path = nvme.as_ptr();
            c.ring_bytes = 3 * 3 * 12288;
            c.pin_memory = 0;
            c.verify_checksums = 1;
            c.io.block_size = 4096;
            ok(swapper_optimizer_create(&c, &mut o), "create");
            let mut p = std::mem::MaybeUninit::<SwapperConfig>::uninit();
            swapper_config_default(p.as_mut_ptr());
            let mut p = p.assume_init();
            p.nvme_path = nvme.as_ptr();
            p.dtype = Dtype::Fp16 as i32;
            p.buffer_count = 2;
            p.buffer_numel = N as u64;
            p.pin_memory = 0;
            ok(swapper_create(&p, &mut s), "create the parameter swapper");
            let mut buf = null_mut();
            ok(swapper_get_buffer(s, 1, N as u64, &mut buf), "get_buffer");
            ok(
                swapper_swap_out_and_release(s, &1u64, 1, false, true),
                "swap out param 1",
            );
            ok(
                swapper_reserve_partitioned_swap_space(s, &(N as u64), 1),
                "reserve",
            );
        }
        let folder = std::fs::canonicalize(dir.path())
            .unwrap()
            .join("zero_stage_3/optimizer/rank0")
            .display()
            .to_string();
        let mut w = World {
            o,
            s,
            _dir: dir,
            folder,
            states: HashMap::new(),
            grads: HashMap::new(),
            held: None,
            extra_may_exist: false,
        };
        for g in GROUPS {
            w.register(g);
            w.states.insert(g, vec![0]);
            w.grads.insert((g, 0), vec![0]);
            w.grads.insert((g, 1), vec![0]);
            ok(w.gradients(g, 1), "gradients");
        }
        ok(w.wait_gradients(), "wait_gradients");
        for g in GROUPS {
            w.grads.insert((g, 0), vec![1]);
            w.grads.insert((g, 1), vec![1]);
        }
        w.full_step("the first step");
        w
    }

    fn register(&self, g: u32) -> Status {
        let (_names, specs) = specs();
        // SAFETY: three specs whose names outlive the call.
        unsafe { swapper_optimizer_register(self.o, g, specs.as_ptr(), specs.len()) }
    }

    /// Both halves of sub-group `g`'s gradient at `version`, in one call (two fragments).
    fn gradients(&self, g: u32, version: u32) -> Status {
        let halves = [grad_half(g, 0, version), grad_half(g, 1, version)];
        let data = [halves[0].as_ptr(), halves[1].as_ptr()];
        // SAFETY: two fragments of HALF elements each.
        unsafe {
            swapper_optimizer_swap_out_gradients(
                self.o,
                g,
                GRAD,
                [0u64, HALF as u64].as_ptr(),
                data.as_ptr(),
                [HALF as u64, HALF as u64].as_ptr(),
                2,
            )
        }
    }

    fn wait_gradients(&self) -> Status {
        swapper_optimizer_wait_gradients(self.o)
    }

    fn begin(&self, order: &[u32]) -> Status {
        // SAFETY: `order` holds its length.
        unsafe { swapper_optimizer_begin_step(self.o, order.as_ptr(), order.len()) }
    }

    /// next_ready: the sub-group (NONE at the end) and its tensors.
    fn next(&self) -> (Status, u32, Vec<*mut f32>) {
        let mut sub = 0;
        let mut ptrs = [null_mut(); 3];
        let mut count = 0;
        // SAFETY: valid out-pointers, three entries.
        let st = unsafe { swapper_optimizer_next_ready(self.o, &mut sub, ptrs.as_mut_ptr(), 3, &mut count) };
        (st, sub, ptrs[..count].to_vec())
    }

    fn stats(&self) -> (Status, OptimizerStats) {
        let mut s = OptimizerStats::default();
        // SAFETY: a valid out-pointer.
        let st = unsafe { swapper_optimizer_stats(self.o, &mut s) };
        (st, s)
    }

    /// Checks a taken sub-group's tensors against the versions it may hold; returns the
    /// state's version.
    fn check(&self, g: u32, ptrs: &[*mut f32], what: &str) -> u32 {
        assert_eq!(ptrs.len(), 3, "{what}: sub-group {g}");
        // SAFETY: the tensors of an out sub-group, N elements each.
        let t = |k: usize| unsafe { std::slice::from_raw_parts(ptrs[k], N) };
        let version = self.states[&g]
            .iter()
            .copied()
            .find(|&v| t(0) == state(g, 0, v).as_slice())
            .unwrap_or_else(|| panic!("{what}: sub-group {g}'s params hold a version never given"));
        assert_eq!(
            t(1),
            state(g, 1, version).as_slice(),
            "{what}: sub-group {g}'s exp_avg is not of the params' version {version}"
        );
        for h in 0..2 {
            let got = &t(GRAD)[h * HALF..(h + 1) * HALF];
            assert!(
                self.grads[&(g, h)]
                    .iter()
                    .any(|&v| got == grad_half(g, h, v).as_slice()),
                "{what}: sub-group {g}'s gradient half {h} holds a version never given"
            );
        }
        version
    }

    /// Writes a new version into a taken sub-group and hands it back; the disk may then
    /// hold it.
    fn update_and_hand_back(&mut self, g: u32, ptrs: &[*mut f32], what: &str) {
        let v = self.states[&g].iter().max().unwrap() + 1;
        for (k, &p) in ptrs.iter().enumerate().take(2) {
            // SAFETY: the tensors of an out sub-group, N elements each.
            unsafe { std::slice::from_raw_parts_mut(p, N) }.copy_from_slice(&state(g, k, v));
        }
        self.states.get_mut(&g).unwrap().push(v);
        ok(
            swapper_optimizer_hand_back(self.o, g),
            &format!("{what}: hand back {g}"),
        );
    }

    /// A whole step over every sub-group: each read checked, updated, handed back.
    fn full_step(&mut self, what: &str) {
        ok(self.begin(&GROUPS), &format!("{what}: begin_step"));
        loop {
            let (st, g, ptrs) = self.next();
            ok(st, &format!("{what}: next_ready"));
            if g == SWAPPER_OPTIMIZER_NONE {
                break;
            }
            self.check(g, &ptrs, what);
            self.update_and_hand_back(g, &ptrs, what);
        }
        ok(swapper_optimizer_end_step(self.o), &format!("{what}: end_step"));
        // Only the new versions are on disk now.
        for g in GROUPS {
            let v = *self.states[&g].iter().max().unwrap();
            self.states.insert(g, vec![v]);
        }
    }

    /// After a panic that left the handle usable: finishes the step under way, proves
    /// nothing is stuck and every byte is one it was given, then runs two more steps, a
    /// registration and a purge.
    fn prove_usable(&mut self, what: &str) {
        // The sub-group the scenario held: hand it back (BAD_STATE: it already was).
        if let Some(g) = self.held.take() {
            let st = swapper_optimizer_hand_back(self.o, g);
            assert!(
                matches!(st, Status::Ok | Status::BadState),
                "{what}: hand back {g} again: {st:?} {}",
                last_error()
            );
        }
        // Finish the step under way, if any: every sub-group comes out or is skipped.
        let mut in_step = false;
        for _ in 0..16 {
            let (st, g, ptrs) = self.next();
            match st {
                Status::BadState if !in_step => break,
                Status::Ok if g == SWAPPER_OPTIMIZER_NONE => {
                    in_step = true;
                    break;
                }
                Status::Ok => {
                    in_step = true;
                    self.check(g, &ptrs, what);
                    self.update_and_hand_back(g, &ptrs, what);
                }
                // A sub-group skipped (its read interrupted): its files are unchanged.
                Status::Panic | Status::CorruptData | Status::BadState => in_step = true,
                other => panic!("{what}: next_ready {other:?}: {}", last_error()),
            }
        }
        if in_step {
            let st = swapper_optimizer_end_step(self.o);
            assert_ne!(st, Status::Busy, "{what}: end_step: {}", last_error());
            let (st, _, _) = self.next();
            assert_eq!(
                st,
                Status::BadState,
                "{what}: the step did not end: {}",
                last_error()
            );
        }
        let st = self.wait_gradients();
        assert!(
            matches!(st, Status::Ok | Status::Panic),
            "{what}: wait_gradients: {st:?} {}",
            last_error()
        );
        // Nothing stuck, every version right, and the ring empty after a step that
        // writes every sub-group again.
        let (st, stats) = self.stats();
        ok(st, what);
        assert_eq!(
            stats.subgroups,
            3 + u64::from(self.extra_may_exist && stats.subgroups == 4),
            "{what}"
        );
        self.full_step(&format!("{what}, the step after"));
        let (_, stats) = self.stats();
        assert_eq!(stats.ring_in_use, 0, "{what}: the ring keeps regions: {stats:?}");
        self.full_step(&format!("{what}, the second step after"));
        // New gradients land whole.
        for g in GROUPS {
            ok(self.gradients(g, 7), &format!("{what}: gradients"));
            self.grads.insert((g, 0), vec![7]);
            self.grads.insert((g, 1), vec![7]);
        }
        ok(self.wait_gradients(), &format!("{what}: wait_gradients"));
        self.full_step(&format!("{what}, with new gradients"));
        // A registration (BAD_STATE when the scenario's went through) reads zeros.
        let st = self.register(EXTRA);
        assert!(
            st == Status::Ok || (self.extra_may_exist && st == Status::BadState),
            "{what}: register {EXTRA}: {st:?} {}",
            last_error()
        );
        ok(self.begin(&[EXTRA]), what);
        let (st, g, ptrs) = self.next();
        ok(st, what);
        assert_eq!(g, EXTRA, "{what}");
        // SAFETY: the tensors of an out sub-group, N elements each.
        let zeros = (0..3).all(|k| {
            unsafe { std::slice::from_raw_parts(ptrs[k], N) }
                .iter()
                .all(|&x| x == 0.0)
        });
        assert!(
            zeros || self.extra_may_exist,
            "{what}: a new sub-group does not read zeros"
        );
        ok(swapper_optimizer_discard(self.o, EXTRA), what);
        ok(swapper_optimizer_end_step(self.o), what);
        ok(swapper_optimizer_purge(self.o), &format!("{what}: purge"));
        let (_, stats) = self.stats();
        assert_eq!((stats.subgroups, stats.ring_in_use), (0, 0), "{what}");
    }

    /// After a panic that broke the handle: every call returns PANIC, saying so.
    fn prove_broken(&self, what: &str) {
        let order = [0u32];
        let frag = [0.0f32; 4];
        let mut buf = null_mut();
        let mut numel = 0;
        let (_names, specs) = specs();
        // SAFETY: valid pointers of the sizes given.
        let calls: Vec<(&str, Status)> = unsafe {
            vec![
                (
                    "register",
                    swapper_optimizer_register(self.o, 5, specs.as_ptr(), 3),
                ),
                (
                    "begin_step",
                    swapper_optimizer_begin_step(self.o, order.as_ptr(), 1),
                ),
                ("next_ready", self.next().0),
                (
                    "tensor",
                    swapper_optimizer_tensor(self.o, 0, 0, &mut buf, &mut numel),
                ),
                ("hand_back", swapper_optimizer_hand_back(self.o, 0)),
                ("discard", swapper_optimizer_discard(self.o, 0)),
                ("end_step", swapper_optimizer_end_step(self.o)),
                (
                    "swap_out_gradients",
                    swapper_optimizer_swap_out_gradients(self.o, 0, GRAD, &0u64, &frag.as_ptr(), &4u64, 1),
                ),
                ("wait_gradients", self.wait_gradients()),
                (
                    "swap_out_params",
                    swapper_optimizer_swap_out_params(self.o, 0, 0, self.s, &1u64, &(N as u64), 1),
                ),
                ("stats", self.stats().0),
                ("purge", swapper_optimizer_purge(self.o)),
            ]
        };
        for (call, st) in calls {
            assert_eq!(
                st,
                Status::Panic,
                "{what}: {call} on a broken handle: {}",
                last_error()
            );
            let msg = last_error();
            assert!(
                msg.contains("every call on it now fails"),
                "{what}: {call}: {msg}"
            );
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Register,
    BeginStep,
    NextReady,
    HandBack,
    Discard,
    EndStep,
    SwapOutGradients,
    WaitGradients,
    SwapOutParams,
    Purge,
}

const OPS: [Op; 10] = [
    Op::Register,
    Op::BeginStep,
    Op::NextReady,
    Op::HandBack,
    Op::Discard,
    Op::EndStep,
    Op::SwapOutGradients,
    Op::WaitGradients,
    Op::SwapOutParams,
    Op::Purge,
];

impl Op {
    /// The steps it passes, each with how many times at least (a panic is injected at the
    /// first pass, and at the second where there is one).
    fn steps(self) -> (&'static str, &'static [(&'static str, u64)]) {
        match self {
            Op::Register => (
                "register",
                &[("claim", 1), ("reserve", 3), ("reserved", 1), ("record", 1)],
            ),
            Op::BeginStep => (
                "begin_step",
                &[
                    ("claim", 1),
                    ("read-claim", 2),
                    ("read-submit", 2),
                    ("read-submitted", 2),
                    ("record", 2),
                ],
            ),
            Op::NextReady => ("next_ready", &[("take", 1), ("waited", 1), ("record", 1)]),
            Op::HandBack => (
                "hand_back",
                &[
                    ("claim", 1),
                    ("write-submit", 2),
                    ("write-submitted", 2),
                    ("record", 1),
                    ("writes-snapshot", 1),
                ],
            ),
            Op::Discard => ("discard", &[("claim", 1)]),
            Op::EndStep => (
                "end_step",
                &[("check", 1), ("writes-snapshot", 1), ("waited", 1), ("record", 1)],
            ),
            Op::SwapOutGradients => (
                "swap_out_gradients",
                &[("claim", 2), ("copied", 2), ("submitted", 2), ("record", 2)],
            ),
            Op::WaitGradients => (
                "wait_gradients",
                &[("grads-take", 1), ("grads-waited", 1), ("record", 1)],
            ),
            Op::SwapOutParams => ("swap_out_params", &[("claim", 1), ("convert", 1), ("record", 1)]),
            Op::Purge => ("purge", &[("grads-take", 1), ("claim", 1), ("record", 1)]),
        }
    }

    /// Brings the world to where the call runs.
    fn set_up(self, w: &mut World) {
        match self {
            Op::NextReady => ok(w.begin(&GROUPS), "begin_step"),
            Op::HandBack | Op::Discard | Op::SwapOutParams => {
                ok(w.begin(&GROUPS), "begin_step");
                let (st, g, ptrs) = w.next();
                ok(st, "next_ready");
                assert_eq!(g, 0);
                w.check(g, &ptrs, "set up");
                let v = w.states[&g].iter().max().unwrap() + 1;
                for (k, &p) in ptrs.iter().enumerate().take(2) {
                    // SAFETY: the tensors of an out sub-group, N elements each.
                    unsafe { std::slice::from_raw_parts_mut(p, N) }.copy_from_slice(&state(g, k, v));
                }
                // Handed back by the call or by the check afterwards, it lands.
                w.states.get_mut(&g).unwrap().push(v);
                w.held = Some(g);
            }
            Op::EndStep => {
                ok(w.begin(&GROUPS), "begin_step");
                loop {
                    let (st, g, ptrs) = w.next();
                    ok(st, "next_ready");
                    if g == SWAPPER_OPTIMIZER_NONE {
                        break;
                    }
                    w.update_and_hand_back(g, &ptrs, "set up");
                }
            }
            Op::WaitGradients => {
                ok(w.gradients(0, 2), "gradients");
                for h in 0..2 {
                    w.grads.get_mut(&(0, h)).unwrap().push(2);
                }
            }
            Op::SwapOutGradients => {
                for h in 0..2 {
                    w.grads.get_mut(&(0, h)).unwrap().push(2);
                }
            }
            Op::Register => w.extra_may_exist = true,
            Op::BeginStep | Op::Purge => {}
        }
    }

    fn run(self, w: &mut World) -> Status {
        match self {
            Op::Register => w.register(EXTRA),
            Op::BeginStep => w.begin(&GROUPS),
            Op::NextReady => w.next().0,
            Op::HandBack => swapper_optimizer_hand_back(w.o, 0),
            Op::Discard => swapper_optimizer_discard(w.o, 0),
            Op::EndStep => swapper_optimizer_end_step(w.o),
            Op::SwapOutGradients => w.gradients(0, 2),
            Op::WaitGradients => w.wait_gradients(),
            // SAFETY: one param of N elements.
            Op::SwapOutParams => unsafe {
                swapper_optimizer_swap_out_params(w.o, 0, 0, w.s, &1u64, &(N as u64), 1)
            },
            Op::Purge => swapper_optimizer_purge(w.o),
        }
    }
}

/// The scenario of a panic at `<rank folder>|<point>` after `skip` matches, on swappers
/// of its own; runs in a thread so that a hang fails the test instead of stalling it.
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
        let (st, stats) = w.stats();
        if op == Op::Purge && st == Status::Ok && stats.subgroups == 0 {
            // The purge went through before the panic: start again from nothing.
            for g in GROUPS {
                ok(w.register(g), &w2);
                w.states.insert(g, vec![0]);
                w.grads.insert((g, 0), vec![0]);
                w.grads.insert((g, 1), vec![0]);
            }
        }
        let broken = st == Status::Panic;
        if broken {
            w.prove_broken(&w2);
        } else {
            w.prove_usable(&w2);
        }
        swapper_optimizer_destroy(w.o);
        swapper_destroy(w.s);
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
        for &(step, passes) in steps {
            for skip in 0..passes.min(2) {
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

/// An optimizer swapper through the C ABI on `nvme`, adopting or not; checksums on.
fn create(nvme: &CString, adopt: bool) -> *mut SwapperOptimizer {
    create_with(nvme, adopt, false)
}

/// As `create`, flushing at every end_step or not.
fn create_with(nvme: &CString, adopt: bool, flush_at_end_step: bool) -> *mut SwapperOptimizer {
    let mut o = null_mut();
    // SAFETY: the defaults fill the struct; the string outlives the create.
    unsafe {
        let mut c = std::mem::MaybeUninit::<SwapperOptimizerConfig>::uninit();
        swapper_optimizer_config_default(c.as_mut_ptr());
        let mut c = c.assume_init();
        c.nvme_path = nvme.as_ptr();
        c.ring_bytes = 3 * 3 * 12288;
        c.pin_memory = 0;
        c.verify_checksums = 1;
        c.io.block_size = 4096;
        c.adopt = u8::from(adopt);
        c.flush_at_end_step = u8::from(flush_at_end_step);
        ok(swapper_optimizer_create(&c, &mut o), "create");
    }
    o
}

fn register_on(o: *mut SwapperOptimizer, g: u32) -> Status {
    let (_names, specs) = specs();
    // SAFETY: three specs whose names outlive the call.
    unsafe { swapper_optimizer_register(o, g, specs.as_ptr(), specs.len()) }
}

/// A step over `order` in which each sub-group's state tensors are checked against
/// `version` (its gradient against zeros: gradients are not adopted) and, with `write`,
/// set to `write`'s version and handed back (else discarded).
fn step_on(o: *mut SwapperOptimizer, order: &[u32], version: u32, write: Option<u32>, what: &str) {
    // SAFETY: `order` holds its length.
    ok(
        unsafe { swapper_optimizer_begin_step(o, order.as_ptr(), order.len()) },
        &format!("{what}: begin_step"),
    );
    loop {
        let mut g = 0;
        let mut ptrs = [null_mut(); 3];
        let mut count = 0;
        // SAFETY: valid out-pointers, three entries.
        let st = unsafe { swapper_optimizer_next_ready(o, &mut g, ptrs.as_mut_ptr(), 3, &mut count) };
        ok(st, &format!("{what}: next_ready"));
        if g == SWAPPER_OPTIMIZER_NONE {
            break;
        }
        for (k, &p) in ptrs.iter().enumerate() {
            let want = if k == GRAD {
                vec![0.0; N]
            } else {
                state(g, k, version)
            };
            // SAFETY: the tensors of an out sub-group, N elements each.
            let t = unsafe { std::slice::from_raw_parts_mut(p, N) };
            assert!(
                t == want.as_slice(),
                "{what}: sub-group {g}, tensor {k}: not version {version}"
            );
            if let (Some(v), true) = (write, k != GRAD) {
                t.copy_from_slice(&state(g, k, v));
            }
        }
        let st = match write {
            Some(_) => swapper_optimizer_hand_back(o, g),
            None => swapper_optimizer_discard(o, g),
        };
        ok(st, &format!("{what}: hand back {g}"));
    }
    ok(swapper_optimizer_end_step(o), &format!("{what}: end_step"));
}

/// A panic injected while a registration takes up adopted tensors gives them back: the
/// call returns PANIC, and a later registration of the same sub-group still finds them
/// (or, where the panic struck after the registration was recorded, the sub-group is
/// registered with them); a flush then keeps them, and a swapper adopting afterwards
/// finds them too. A panic in the middle of a transition breaks the handle, and the
/// folder is adopted, whole, by the next swapper.
#[test]
fn a_panic_in_a_registration_that_takes_up_adopted_tensors_gives_them_back() {
    const ADOPTED: [u32; 2] = [0, 1];
    for (step, may_have_registered) in [
        ("register:claim", false),
        ("register:reserve", false),
        ("register:reserved", false),
        ("register:record", true),
        ("change", false),
    ] {
        let what = format!("register panicking at {step}");
        let dir = disk_dir();
        let nvme = CString::new(dir.path().to_str().unwrap()).unwrap();
        let folder = std::fs::canonicalize(dir.path())
            .unwrap()
            .join("zero_stage_3/optimizer/rank0")
            .display()
            .to_string();
        // Version 1 of sub-groups 0 and 1, flushed.
        let o = create(&nvme, false);
        for g in ADOPTED {
            ok(register_on(o, g), &what);
        }
        step_on(o, &ADOPTED, 0, Some(1), &what);
        ok(swapper_optimizer_flush(o), &format!("{what}: flush"));
        swapper_optimizer_destroy(o);

        let o = create(&nvme, true);
        fault::install(Rule {
            call: Call::Point,
            path_contains: format!("{folder}|{step}"),
            fault: Fault::Panic,
            skip: 0,
            times: 1,
        });
        let st = register_on(o, 0);
        assert_eq!(
            st,
            Status::Panic,
            "{what}: the injected panic did not strike: {}",
            last_error()
        );
        assert!(
            last_error().contains("injected panic"),
            "{what}: {}",
            last_error()
        );
        let mut stats = OptimizerStats::default();
        // SAFETY: a valid out-pointer.
        let broken = unsafe { swapper_optimizer_stats(o, &mut stats) } == Status::Panic;
        let o = if broken {
            assert_eq!(step, "change", "{what} broke the handle");
            swapper_optimizer_destroy(o);
            create(&nvme, true)
        } else {
            assert_ne!(
                step, "change",
                "{what}: a torn transition did not break the handle"
            );
            o
        };
        // The same sub-group registered again takes its adopted tensors up.
        let st = register_on(o, 0);
        assert!(
            st == Status::Ok || (may_have_registered && !broken && st == Status::BadState),
            "{what}: register 0 again: {st:?} {}",
            last_error()
        );
        ok(register_on(o, 1), &format!("{what}: register 1"));
        step_on(o, &ADOPTED, 1, None, &what);
        // Flushed and adopted again: still version 1; then a new version lands.
        ok(swapper_optimizer_flush(o), &format!("{what}: flush"));
        swapper_optimizer_destroy(o);
        let o = create(&nvme, true);
        for g in ADOPTED {
            ok(register_on(o, g), &format!("{what}: register {g} after adoption"));
        }
        step_on(o, &ADOPTED, 1, Some(2), &what);
        step_on(o, &[1, 0], 2, None, &what);
        swapper_optimizer_destroy(o);
    }
}

/// The generation of the manifest in the rank folder `folder`.
fn manifest_generation(folder: &str) -> u64 {
    let path = std::path::Path::new(folder).join(manifest::NAME);
    let bytes = std::fs::read(&path).unwrap();
    Manifest::decode(&bytes, folder).unwrap().generation
}

/// With flush_at_end_step, a panic at end_step's flush (after the step ended, before the
/// manifest is written) or at the record before it returns PANIC; the handle stays usable,
/// the generation before stays the durable one, and the next end_step flushes.
#[test]
fn a_panic_in_end_steps_flush_leaves_the_previous_generation_and_the_handle_usable() {
    const GROUPS2: [u32; 2] = [0, 1];
    for step in ["end_step:record", "end_step:flush"] {
        let what = format!("end_step panicking at {step}");
        let dir = disk_dir();
        let nvme = CString::new(dir.path().to_str().unwrap()).unwrap();
        let folder = std::fs::canonicalize(dir.path())
            .unwrap()
            .join("zero_stage_3/optimizer/rank0")
            .display()
            .to_string();
        let o = create_with(&nvme, false, true);
        for g in GROUPS2 {
            ok(register_on(o, g), &what);
        }
        step_on(o, &GROUPS2, 0, Some(1), &what); // flushed: version 1
        fault::install(Rule {
            call: Call::Point,
            path_contains: format!("{folder}|{step}"),
            fault: Fault::Panic,
            skip: 0,
            times: 1,
        });
        // SAFETY: `order` holds its length.
        ok(
            unsafe { swapper_optimizer_begin_step(o, GROUPS2.as_ptr(), 2) },
            &what,
        );
        loop {
            let mut g = 0;
            let mut ptrs = [null_mut(); 3];
            let mut count = 0;
            // SAFETY: valid out-pointers, three entries.
            ok(
                unsafe { swapper_optimizer_next_ready(o, &mut g, ptrs.as_mut_ptr(), 3, &mut count) },
                &what,
            );
            if g == SWAPPER_OPTIMIZER_NONE {
                break;
            }
            for (k, &p) in ptrs.iter().enumerate().take(2) {
                // SAFETY: the tensors of an out sub-group, N elements each.
                unsafe { std::slice::from_raw_parts_mut(p, N) }.copy_from_slice(&state(g, k, 2));
            }
            ok(swapper_optimizer_hand_back(o, g), &what);
        }
        let st = swapper_optimizer_end_step(o);
        assert_eq!(st, Status::Panic, "{what}: {}", last_error());
        assert!(
            last_error().contains("injected panic"),
            "{what}: {}",
            last_error()
        );
        // Usable. At the record, the step was not ended: ending it again flushes version
        // 2 (generation 2). At the flush, the step was ended and its flush never written:
        // generation 1 (version 1) stays the durable one.
        let st = swapper_optimizer_end_step(o);
        let generation = manifest_generation(&folder);
        if step == "end_step:record" {
            ok(st, &format!("{what}: end_step again"));
            assert_eq!(generation, 2, "{what}");
        } else {
            assert_eq!(st, Status::BadState, "{what}: end_step again: {}", last_error());
            assert_eq!(generation, 1, "{what}");
        }
        // The next step reads version 2 (from the files, flushed or not) and its end_step
        // flushes version 3, which an adopter finds.
        step_on(o, &GROUPS2, 2, Some(3), &what);
        assert!(manifest_generation(&folder) > generation, "{what}");
        swapper_optimizer_destroy(o);
        let o = create(&nvme, true);
        for g in GROUPS2 {
            ok(register_on(o, g), &format!("{what}: register {g} after adoption"));
        }
        step_on(o, &GROUPS2, 3, None, &what);
        swapper_optimizer_destroy(o);
    }
}
