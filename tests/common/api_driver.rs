//! Drives the C API with a sequence of calls decoded from bytes: random ids, counts,
//! states, NULL pointers and made-up handles. Nothing may crash; every failure must
//! leave a message; every param that comes back AVAILABLE must hold the bytes last
//! written for it. Shared by the property test (tests/api_sequence.rs) and the fuzz
//! target (fuzz/fuzz_targets/api_sequence.rs).
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

use swapper::ffi::common::{swapper_last_error, swapper_status_name};
use swapper::ffi::io::*;
use swapper::ffi::swapper::*;
use swapper::{ParamStatus, Stats, Status};

/// Bytes read one at a time; zeros once exhausted.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn below(&mut self, n: u64) -> u64 {
        u64::from(self.u16()) % n.max(1)
    }
    fn flag(&mut self) -> bool {
        self.u8() & 1 == 1
    }
}

#[derive(Default, Clone)]
struct Expect {
    numel: u64,
    /// What the param's buffer holds while AVAILABLE (None: unknown).
    content: Option<Vec<u8>>,
    /// What its swap file holds (None: unknown or none).
    disk: Option<Vec<u8>>,
}

fn message() -> String {
    // SAFETY: swapper_last_error never returns NULL.
    unsafe { CStr::from_ptr(swapper_last_error()) }
        .to_string_lossy()
        .into_owned()
}

thread_local! {
    static OKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Checks a status: a failure must come with a message; a panic is a bug.
fn check(what: &str, st: Status) -> bool {
    if st == Status::Ok {
        OKS.with(|c| c.set(c.get() + 1));
    }
    assert_ne!(st, Status::Panic, "{what} panicked: {}", message());
    if st != Status::Ok {
        assert!(
            !message().is_empty(),
            "{what} failed with {st:?} but left no message"
        );
        // SAFETY: static string.
        let name = unsafe { CStr::from_ptr(swapper_status_name(st as i32)) };
        assert!(name.to_bytes().starts_with(b"SWAPPER_STATUS_"));
    }
    st == Status::Ok
}

fn pattern(id: u64, version: u64, len: usize) -> Vec<u8> {
    let mut x = (id << 20 ^ version).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const IDS: u64 = 8;

/// What a run did.
#[derive(Default, Debug)]
pub struct Counts {
    /// Calls made.
    pub calls: usize,
    /// Calls that succeeded.
    pub ok: usize,
    /// Params whose bytes were checked against what was written.
    pub verified: usize,
}

/// Runs one sequence in a fresh swapper under `dir`.
pub fn run(data: &[u8], dir: &std::path::Path) -> Counts {
    let mut counts = Counts::default();
    let mut u = Input { data, pos: 0 };
    let mut cfg = std::mem::MaybeUninit::<SwapperConfig>::uninit();
    // SAFETY: fills the whole struct.
    unsafe { swapper_config_default(cfg.as_mut_ptr()) };
    // SAFETY: initialised just above.
    let mut cfg = unsafe { cfg.assume_init() };
    let path = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    cfg.nvme_path = path.as_ptr();
    cfg.rank = u32::from(u.u8() % 4);
    cfg.dtype = i32::from(u.u8() % 4); // 3 is invalid
    cfg.buffer_count = u32::from(u.u8() % 5); // 0 is invalid
    cfg.buffer_numel = 1 + u.below(6000);
    cfg.verify_checksums = u8::from(u.flag());
    cfg.io.block_size = 4096 << (u.u8() % 6);
    cfg.io.queue_depth = 1 + u32::from(u.u8() % 8);
    cfg.io.thread_count = 1 + u32::from(u.u8() % 3);
    cfg.io.backend = i32::from(u.u8() % 3);
    if u.u8() == 0xFF {
        cfg.io.block_size = 3000; // invalid
    }
    let mut s: *mut Swapper = null_mut();
    // SAFETY: valid config and out-pointer.
    let created = check("swapper_create", unsafe { swapper_create(&cfg, &mut s) });
    let valid_cfg = cfg.dtype < 3 && cfg.buffer_count > 0 && cfg.io.block_size != 3000;
    assert_eq!(created, valid_cfg, "create: {}", message());
    if !created {
        assert!(s.is_null());
        counts.calls = 1;
        return counts;
    }
    let elem = swapper_element_size(s) as usize;
    let mut model: HashMap<u64, Expect> = HashMap::new();
    let mut keep_alive: Vec<Vec<u8>> = Vec::new();
    let mut version = 0u64;
    let mut calls = 1;
    let ok_before = OKS.with(|c| c.get());
    let fake = 0xdead_0000usize as *mut Swapper;
    while !u.done() && calls < 400 {
        calls += 1;
        let op = u.u8() % 16;
        let n = 1 + u.below(3) as usize;
        let ids: Vec<u64> = (0..n).map(|_| u.below(IDS + 1)).collect();
        let async_op = u.flag();
        match op {
            0 | 1 => {
                let id = ids[0];
                let numel = if u.u8() == 0 {
                    0
                } else {
                    1 + u.below(cfg.buffer_numel + 2)
                };
                let mut buf = null_mut();
                // SAFETY: valid out-pointer.
                if check("get_buffer", unsafe {
                    swapper_get_buffer(s, id, numel, &mut buf)
                }) {
                    version += 1;
                    let bytes = pattern(id, version, numel as usize * elem);
                    // SAFETY: a fresh pool buffer of `numel` elements.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len()) };
                    let e = model.entry(id).or_default();
                    e.numel = numel;
                    e.content = Some(bytes);
                    e.disk = None;
                }
            }
            2 | 3 => {
                let release = op == 3;
                let force = u.flag();
                // SAFETY: `ids` holds `n` ids.
                let st = unsafe {
                    if release {
                        swapper_swap_out_and_release(s, ids.as_ptr(), n, async_op, force)
                    } else {
                        swapper_swap_out(s, ids.as_ptr(), n, async_op)
                    }
                };
                if check("swap_out", st) {
                    for id in &ids {
                        let e = model.get_mut(id).expect("a swapped-out param is known");
                        e.disk = e.content.clone();
                    }
                }
            }
            4 => {
                // SAFETY: `ids` holds `n` ids; pool buffers.
                if check("swap_in", unsafe {
                    swapper_swap_in(s, ids.as_ptr(), n, async_op, null())
                }) {
                    for id in &ids {
                        let e = model.get_mut(id).expect("known");
                        e.content = e.disk.clone();
                    }
                }
            }
            5 => {
                let mut bufs: Vec<Vec<u8>> = ids
                    .iter()
                    .map(|_| vec![0u8; cfg.buffer_numel as usize * elem + 1])
                    .collect();
                let ptrs: Vec<*mut libc::c_void> = bufs
                    .iter_mut()
                    .map(|b| b[1..].as_mut_ptr() as *mut libc::c_void)
                    .collect();
                let caps: Vec<u64> = ids.iter().map(|_| u.below(cfg.buffer_numel + 1)).collect();
                // SAFETY: every buffer holds buffer_numel >= caps[i] elements and is kept alive.
                let st = unsafe {
                    swapper_swap_in_buffers(s, ids.as_ptr(), n, async_op, ptrs.as_ptr(), caps.as_ptr())
                };
                keep_alive.extend(bufs);
                if check("swap_in_buffers", st) {
                    for id in &ids {
                        let e = model.get_mut(id).expect("known");
                        e.content = e.disk.clone();
                    }
                }
            }
            6 => {
                check("wait_reads", swapper_wait_reads(s));
            }
            7 => {
                check("wait_writes", swapper_wait_writes(s));
            }
            8 => {
                // SAFETY: `ids` holds `n` ids.
                check("release", unsafe { swapper_release(s, ids.as_ptr(), n) });
            }
            9 => {
                let mut out = [null_mut(); 4];
                let mut count = 0usize;
                // SAFETY: room for 4 pointers.
                check("reserve", unsafe {
                    swapper_reserve_available_buffers(s, out.as_mut_ptr(), u.below(5) as usize, &mut count)
                });
                if u.flag() {
                    check("release_reserved", swapper_release_reserved_buffers(s));
                }
            }
            10 => {
                let numels: Vec<u64> = ids.iter().map(|_| u.below(cfg.buffer_numel + 1)).collect();
                // SAFETY: `numels` holds `n` values.
                check("reserve_partitioned", unsafe {
                    swapper_reserve_partitioned_swap_space(s, numels.as_ptr(), n)
                });
                let srcs: Vec<Vec<f32>> = ids
                    .iter()
                    .map(|id| vec![1.5f32; model.get(id).map_or(3, |e| e.numel) as usize])
                    .collect();
                let ptrs: Vec<*const f32> = srcs.iter().map(|v| v.as_ptr()).collect();
                let lens: Vec<u64> = srcs.iter().map(|v| v.len() as u64).collect();
                // SAFETY: each source holds lens[i] floats.
                if check("swap_out_partitioned", unsafe {
                    swapper_swap_out_partitioned(s, ids.as_ptr(), ptrs.as_ptr(), lens.as_ptr(), n)
                }) {
                    for id in &ids {
                        model.get_mut(id).expect("known").disk = None; // converted values: not tracked
                    }
                }
            }
            11 => {
                let id = ids[0];
                let mut status = ParamStatus::Available;
                // SAFETY: valid out-pointer.
                let st = unsafe { swapper_param_status(s, id, &mut status) };
                if check("param_status", st) && status == ParamStatus::Available {
                    let (mut buf, mut numel) = (null_mut(), 0u64);
                    // SAFETY: valid out-pointers.
                    assert!(check("param_buffer", unsafe {
                        swapper_param_buffer(s, id, &mut buf, &mut numel)
                    }));
                    let e = &model[&id];
                    assert_eq!(numel, e.numel);
                    if let Some(want) = &e.content {
                        // SAFETY: an AVAILABLE param's buffer holds its elements.
                        let got = unsafe { std::slice::from_raw_parts(buf as *const u8, want.len()) };
                        assert!(
                            got == &want[..],
                            "param {id}: the buffer does not hold the bytes last written"
                        );
                        counts.verified += 1;
                    }
                } else if !st_is_ok(st) {
                    assert_eq!(st, Status::NotFound);
                    assert!(!model.contains_key(&id) || id == IDS);
                }
            }
            12 => {
                let mut stats = Stats::default();
                // SAFETY: valid out-pointer.
                assert!(check("stats", unsafe { swapper_stats(s, &mut stats) }));
                assert!(stats.free_buffers + stats.reserved_buffers <= stats.total_buffers);
                assert!(stats.available_params + stats.inflight_params <= stats.params);
                let mut len = 0usize;
                // SAFETY: capacity 0 with NULL is allowed.
                assert!(check("dump", unsafe { swapper_dump(s, null_mut(), 0, &mut len) }));
            }
            13 => {
                let id = ids[0];
                let mut dest = vec![0u8; cfg.buffer_numel as usize * elem + 3];
                let cap = u.below(cfg.buffer_numel + 1);
                // SAFETY: dest holds at least `cap` elements past the offset.
                let st = unsafe {
                    swapper_swap_into_buffer(s, id, dest[3..].as_mut_ptr() as *mut libc::c_void, cap)
                };
                if check("swap_into_buffer", st) {
                    if let Some(want) = model.get(&id).and_then(|e| e.disk.as_ref()) {
                        assert!(
                            dest[3..3 + want.len()] == want[..],
                            "param {id}: swap_into_buffer read wrong bytes"
                        );
                        counts.verified += 1;
                    }
                }
            }
            14 => {
                // Hostile pointers and handles: never a crash, never OK.
                let st = match u.u8() % 6 {
                    // SAFETY (all arms): NULL and made-up values are what is being tested.
                    0 => unsafe { swapper_swap_out(s, null(), n, async_op) },
                    1 => unsafe { swapper_swap_in(fake, ids.as_ptr(), n, async_op, null()) },
                    2 => unsafe { swapper_get_buffer(s, ids[0], 1, null_mut()) },
                    3 => unsafe { swapper_release(null_mut(), ids.as_ptr(), n) },
                    4 => unsafe { swapper_param_status(s, ids[0], null_mut()) },
                    _ => unsafe { swapper_swap_in_buffers(s, ids.as_ptr(), n, async_op, null(), null()) },
                };
                assert!(!check("hostile call", st), "a hostile call succeeded");
            }
            _ => {
                let mut io = null_mut();
                let mut io_cfg = std::mem::MaybeUninit::<SwapperIoConfig>::uninit();
                // SAFETY: fills the struct; then the engine is created and destroyed.
                unsafe {
                    swapper_io_config_default(io_cfg.as_mut_ptr());
                    let mut c = io_cfg.assume_init();
                    c.queue_depth = u32::from(u.u8() % 3);
                    if check("io_create", swapper_io_create(&c, &mut io)) {
                        let mut done = 0;
                        check("io_wait", swapper_io_wait(io, &mut done));
                        swapper_io_destroy(io);
                    }
                }
            }
        }
    }
    check("final wait_reads", swapper_wait_reads(s));
    check("final wait_writes", swapper_wait_writes(s));
    swapper_destroy(s);
    drop(keep_alive); // caller destinations outlive the swapper that wrote into them
    assert!(!check("use after destroy", swapper_wait_reads(s)));
    counts.calls = calls;
    counts.ok = OKS.with(|c| c.get()) - ok_before;
    counts
}

fn st_is_ok(st: Status) -> bool {
    st == Status::Ok
}
