//! The header's one rule for out-parameters: after a failure, each one that is not NULL
//! holds its neutral value (NULL, 0, all zeros). Each function with out-parameters is
//! called with them filled with junk and made to fail, and the list of those functions is
//! read from include/swapper.h, so a new one fails here until it is added.

mod common;

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::ptr::null_mut;

use swapper::ffi::alloc::swapper_alloc_aligned;
use swapper::ffi::io::*;
use swapper::ffi::optimizer::*;
use swapper::ffi::swapper::*;
use swapper::optimizer::OptimizerStats;
use swapper::{Stats, Status};

/// Every function checked below; the two `_config_default` functions cannot fail.
const CHECKED: &[&str] = &[
    "swapper_alloc_aligned",
    "swapper_io_create",
    "swapper_io_wait",
    "swapper_io_get_config",
    "swapper_create",
    "swapper_create_from_json",
    "swapper_get_buffer",
    "swapper_param_status",
    "swapper_param_buffer",
    "swapper_reserve_available_buffers",
    "swapper_stats",
    "swapper_dump",
    "swapper_config_page_locked_bytes",
    "swapper_param_extents",
    "swapper_optimizer_create",
    "swapper_optimizer_create_from_json",
    "swapper_optimizer_next_ready",
    "swapper_optimizer_tensor",
    "swapper_optimizer_stats",
];
const CANNOT_FAIL: &[&str] = &[
    "swapper_io_config_default",
    "swapper_config_default",
    "swapper_optimizer_config_default",
];

const JUNK: usize = 0xDEAD_BEEF;

fn junk_ptr<T>() -> *mut T {
    JUNK as *mut T
}

/// A handle value no create ever returned: an error, never a crash.
fn forged<T>() -> *mut T {
    0x5EED_0000_0000usize as *mut T
}

fn all_zero<T>(v: &T) -> bool {
    // SAFETY: reads size_of::<T>() initialised bytes of `v`.
    let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) };
    bytes.iter().all(|&b| b == 0)
}

fn junk_filled<T>() -> MaybeUninit<T> {
    let mut v = MaybeUninit::<T>::uninit();
    // SAFETY: fills every byte.
    unsafe { v.as_mut_ptr().write_bytes(0xAB, 1) };
    v
}

#[test]
fn every_function_with_out_parameters_is_checked() {
    let text = std::fs::read_to_string(common::root().join("include/swapper.h")).unwrap();
    // The declarations without their doc comments.
    let mut header = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("/*") {
        header.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    header.push_str(rest);
    let mut found: Vec<String> = Vec::new();
    // A declaration: "... swapper_name(args);", args possibly over several lines.
    for decl in header.split(';') {
        let Some(open) = decl.find("swapper_") else {
            continue;
        };
        let decl = &decl[open..];
        let Some(paren) = decl.find('(') else { continue };
        let name = &decl[..paren];
        if !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let args = &decl[paren..];
        let has_out = args.split([',', '(', ')']).any(|a| {
            a.contains('*')
                && a.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .any(|w| w.starts_with("out") || w == "completed_ops")
        });
        if has_out {
            found.push(name.to_string());
        }
    }
    found.sort();
    found.dedup();
    let mut expected: Vec<String> = CHECKED.iter().chain(CANNOT_FAIL).map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        found, expected,
        "functions of include/swapper.h with out-parameters vs the list of tests/out_params.rs: \
         a new one needs its neutral-after-failure check here"
    );
}

#[test]
fn out_parameters_are_neutral_after_a_failure() {
    // SAFETY (whole test): every pointer passed is NULL, a forged handle (an error by
    // contract) or valid for writing its type.
    unsafe {
        let mut p: *mut libc::c_void = junk_ptr();
        assert_eq!(
            swapper_alloc_aligned(u64::MAX, false, &mut p),
            Status::OutOfMemory
        );
        assert!(p.is_null(), "swapper_alloc_aligned");

        let mut icfg = MaybeUninit::<SwapperIoConfig>::uninit();
        swapper_io_config_default(icfg.as_mut_ptr());
        let mut icfg = icfg.assume_init();
        icfg.block_size = 3000;
        let mut io: *mut SwapperIo = junk_ptr();
        assert_eq!(swapper_io_create(&icfg, &mut io), Status::InvalidArgument);
        assert!(io.is_null(), "swapper_io_create");

        let mut done = 77u64;
        assert_ne!(swapper_io_wait(forged(), &mut done), Status::Ok);
        assert_eq!(done, 0, "swapper_io_wait");

        let mut got = junk_filled::<SwapperIoConfig>();
        assert_ne!(swapper_io_get_config(forged(), got.as_mut_ptr()), Status::Ok);
        assert!(all_zero(&got.assume_init()), "swapper_io_get_config");

        let dir = common::disk_dir();
        let mut cfg = MaybeUninit::<SwapperConfig>::uninit();
        swapper_config_default(cfg.as_mut_ptr());
        let mut cfg = cfg.assume_init();
        let mut s: *mut Swapper = junk_ptr();
        assert_eq!(swapper_create(&cfg, &mut s), Status::NullPointer); // nvme_path NULL
        assert!(s.is_null(), "swapper_create");

        let mut s: *mut Swapper = junk_ptr();
        let json = CString::new("not json").unwrap();
        assert_eq!(
            swapper_create_from_json(json.as_ptr(), 0, 1, &mut s),
            Status::InvalidArgument
        );
        assert!(s.is_null(), "swapper_create_from_json");

        // A real swapper, so that the next failures happen deep in the calls, not at the handle.
        let path = CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        cfg.nvme_path = path.as_ptr();
        cfg.buffer_count = 2;
        cfg.buffer_numel = 4096;
        let mut s: *mut Swapper = null_mut();
        assert_eq!(swapper_create(&cfg, &mut s), Status::Ok);

        let mut buf: *mut libc::c_void = junk_ptr();
        assert_eq!(swapper_get_buffer(s, 1, 1 << 20, &mut buf), Status::NoBuffer); // numel > buffer
        assert!(buf.is_null(), "swapper_get_buffer");

        let mut status = 0x7777_7777i32;
        assert_eq!(
            swapper_param_status(s, 99, (&mut status as *mut i32).cast()),
            Status::NotFound
        );
        assert_eq!(status, 0, "swapper_param_status");

        let (mut buf, mut numel): (*mut libc::c_void, u64) = (junk_ptr(), 77);
        assert_eq!(
            swapper_param_buffer(s, 99, &mut buf, &mut numel),
            Status::NotFound
        );
        assert!(buf.is_null() && numel == 0, "swapper_param_buffer");

        let mut count = 77usize;
        assert_eq!(
            swapper_reserve_available_buffers(s, null_mut(), 2, &mut count),
            Status::NullPointer
        );
        assert_eq!(count, 0, "swapper_reserve_available_buffers");
        assert_eq!(
            swapper_available_buffers(s),
            2,
            "a failed reservation took no buffer"
        );

        let mut stats = junk_filled::<Stats>();
        assert_ne!(swapper_stats(forged(), stats.as_mut_ptr()), Status::Ok);
        assert!(all_zero(&stats.assume_init()), "swapper_stats");

        let mut text = [b'x' as libc::c_char; 16];
        let mut len = 77usize;
        assert_ne!(
            swapper_dump(forged(), text.as_mut_ptr(), text.len(), &mut len),
            Status::Ok
        );
        assert!(len == 0 && text[0] == 0, "swapper_dump");

        let mut bytes = 77u64;
        let mut bad = cfg;
        bad.buffer_count = 0;
        assert_eq!(
            swapper_config_page_locked_bytes(&bad, &mut bytes),
            Status::InvalidArgument
        );
        assert_eq!(bytes, 0, "swapper_config_page_locked_bytes");

        let mut count = 77usize;
        assert_eq!(
            swapper_param_extents(s, 99, null_mut(), 0, &mut count),
            Status::NotFound
        );
        assert_eq!(count, 0, "swapper_param_extents");

        let mut ocfg = MaybeUninit::<SwapperOptimizerConfig>::uninit();
        swapper_optimizer_config_default(ocfg.as_mut_ptr());
        let ocfg = ocfg.assume_init(); // nvme_path NULL
        let mut o: *mut SwapperOptimizer = junk_ptr();
        assert_eq!(swapper_optimizer_create(&ocfg, &mut o), Status::NullPointer);
        assert!(o.is_null(), "swapper_optimizer_create");

        let mut o: *mut SwapperOptimizer = junk_ptr();
        assert_eq!(
            swapper_optimizer_create_from_json(json.as_ptr(), 0, 1, &mut o),
            Status::InvalidArgument
        );
        assert!(o.is_null(), "swapper_optimizer_create_from_json");

        let (mut g, mut n) = (77u32, 77usize);
        assert_ne!(
            swapper_optimizer_next_ready(forged(), &mut g, null_mut(), 0, &mut n),
            Status::Ok
        );
        assert!(
            g == SWAPPER_OPTIMIZER_NONE && n == 0,
            "swapper_optimizer_next_ready"
        );

        let (mut t, mut tn): (*mut f32, u64) = (junk_ptr(), 77);
        assert_ne!(
            swapper_optimizer_tensor(forged(), 0, 0, &mut t, &mut tn),
            Status::Ok
        );
        assert!(t.is_null() && tn == 0, "swapper_optimizer_tensor");

        let mut ostats = junk_filled::<OptimizerStats>();
        assert_ne!(swapper_optimizer_stats(forged(), ostats.as_mut_ptr()), Status::Ok);
        assert!(all_zero(&ostats.assume_init()), "swapper_optimizer_stats");

        swapper_destroy(s);
    }
}
