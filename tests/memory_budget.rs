//! Page-locked memory the library can promise, against real limits: a memory cgroup
//! (v1) whose limit is below the pool, RLIMIT_MEMLOCK lowered (`ulimit -l`) with
//! CAP_IPC_LOCK dropped, a pool larger than MemAvailable, and the C call that tells what
//! a configuration would page-lock, compared with what create really locks.
//!
//! Each scenario runs in a child process (this test binary re-executed with
//! `MEMLOCK_CHILD` naming the scenario): limits, cgroups and the kernel's count of locked
//! memory are per process, and a scenario that went wrong must be killed alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swapper::{Dtype, Settings, Status, Swapper};

const CHILD: &str = "MEMLOCK_CHILD";
const CHILD_DIR: &str = "MEMLOCK_CHILD_DIR";
const CHILD_CGROUP: &str = "MEMLOCK_CHILD_CGROUP";
const MIB: u64 = 1 << 20;

/// A memory cgroup (v1) of our own, removed on drop.
struct MemoryCgroup {
    path: PathBuf,
}

impl MemoryCgroup {
    /// `/sys/fs/cgroup/memory/memlock-<pid>-<tag>` limited to `limit` bytes.
    fn new(tag: &str, limit: u64) -> MemoryCgroup {
        let path = PathBuf::from(format!(
            "/sys/fs/cgroup/memory/memlock-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir(&path); // left by a crashed earlier run of this pid
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let g = MemoryCgroup { path };
        g.set_limit(limit);
        g
    }

    /// A group inside this one, with no limit of its own (removed before its parent).
    fn child(&self, name: &str) -> MemoryCgroup {
        let path = self.path.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        MemoryCgroup { path }
    }

    fn set_limit(&self, limit: u64) {
        let f = self.path.join("memory.limit_in_bytes");
        std::fs::write(&f, limit.to_string()).unwrap_or_else(|e| panic!("write {}: {e}", f.display()));
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The child that joined has exited; its charges may take a moment to leave.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove {}", self.path.display());
    }
}

/// Runs scenario `name` in a child (this binary, the test of that name alone), in the
/// memory cgroup `cgroup` if given, and returns its exit status and output.
fn run_child(
    test: &str,
    name: &str,
    dir: &Path,
    cgroup: Option<&Path>,
) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .env(CHILD_DIR, dir);
    if let Some(g) = cgroup {
        cmd.env(CHILD_CGROUP, g);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// In a child: joins the cgroup named by the parent (before allocating anything big).
fn join_cgroup() {
    if let Ok(g) = std::env::var(CHILD_CGROUP) {
        let procs = Path::new(&g).join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", procs.display()));
    }
}

fn child_dir() -> PathBuf {
    PathBuf::from(std::env::var(CHILD_DIR).unwrap())
}

fn pinned(dir: &Path, count: u32, numel: u64, dtype: Dtype) -> Settings {
    Settings {
        nvme_path: dir.to_path_buf(),
        dtype,
        buffer_count: count,
        buffer_numel: numel,
        pin_memory: true,
        ..Settings::default()
    }
}

/// Fills every buffer of the pool (a pool that is not really there would fault here).
fn fill_pool(s: &Swapper, count: u32, numel: u64) {
    for id in 0..u64::from(count) {
        let buf = s.get_buffer(id, numel).unwrap();
        // SAFETY: a fresh pool buffer of `numel` elements of 2 bytes.
        unsafe { std::ptr::write_bytes(buf.0, 0x5a, numel as usize * 2) };
    }
}

/// Issue 20's case: 5 pinned buffers of 1e8 fp16 elements (1 GB) in a memory cgroup
/// limited to 512 MiB. Before the budget, the child was OOM-killed (exit 137) while its
/// pool was locked; now create fails at once, with the sizes and the settings to lower.
/// The same in a group nested in the limited one (the tightest ancestor counts), and a
/// pool that fits the group is created, locked and filled.
#[test]
fn a_pool_above_the_memory_cgroup_limit_fails_at_once() {
    const TEST: &str = "a_pool_above_the_memory_cgroup_limit_fails_at_once";
    if let Ok(name) = std::env::var(CHILD) {
        join_cgroup();
        let dir = child_dir();
        match name.as_str() {
            "too-large" => {
                let started = Instant::now();
                let e = Swapper::new(pinned(&dir, 5, 100_000_000, Dtype::Fp16))
                    .err()
                    .expect("a 1 GB pinned pool in a 512 MiB cgroup must be refused");
                println!("refused in {:?}: {e}", started.elapsed());
                assert_eq!(e.status(), Status::OutOfMemory, "{e}");
                let m = e.message();
                assert!(
                    m.contains("needs 1000017920 bytes"),
                    "says how much was asked (5 x 200003584, io-aligned): {e}"
                );
                assert!(
                    m.contains("lower buffer_count or buffer_numel"),
                    "names the settings: {e}"
                );
                assert!(
                    m.contains("only ") && m.contains(" fit ("),
                    "says how much fits: {e}"
                );
                assert!(
                    m.contains("/sys/fs/cgroup/memory/memlock-"),
                    "names the cgroup: {e}"
                );
                assert!(started.elapsed() < Duration::from_secs(2), "at once");
            }
            "fits" => {
                let s = Swapper::new(pinned(&dir, 4, 32 * MIB, Dtype::Fp16)).unwrap();
                fill_pool(&s, 4, 32 * MIB);
                let (buf, _) = s.param_buffer(0).unwrap();
                assert_eq!(swapper::sys::alloc::find_allocation(buf.addr(), 0), Some(true));
                // The pinned partitioned swap space is checked as well: 300 MiB of fp16
                // partitions do not fit beside the 256 MiB pool (512 MiB limit).
                let e = s.reserve_partitioned_swap_space(&[150 * MIB]).unwrap_err();
                assert_eq!(e.status(), Status::OutOfMemory, "{e}");
                assert!(
                    e.message()
                        .contains("the partitioned swap space (157286400 elements)"),
                    "{e}"
                );
                assert!(e.message().contains("lower the partition sizes"), "{e}");
                s.reserve_partitioned_swap_space(&[16 * MIB]).unwrap();
            }
            other => panic!("unknown scenario {other}"),
        }
        std::process::exit(0);
    }
    let dir = common::disk_dir();
    let limited = MemoryCgroup::new("limit", 512 * MIB);
    for (group, scenario) in [(&limited, "too-large"), (&limited, "fits")] {
        let (status, out) = run_child(TEST, scenario, dir.path(), Some(&group.path));
        assert!(
            status.success(),
            "{scenario} in {}: {status:?}\n{out}",
            group.path.display()
        );
        println!("{out}");
    }
    let nested = limited.child("inner");
    let (status, out) = run_child(TEST, "too-large", dir.path(), Some(&nested.path));
    assert!(
        status.success(),
        "too-large in {}: {status:?}\n{out}",
        nested.path.display()
    );
    println!("{out}");
    drop(nested);
}

/// A `/proc/self/status` field in bytes (`VmLck`, `VmRSS`).
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Drops CAP_IPC_LOCK from this process's effective set, so that RLIMIT_MEMLOCK binds
/// (a root process ignores it otherwise).
fn drop_ipc_lock() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data structs, as the ABI asks.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
        d[0].effective &= !(1 << CAP_IPC_LOCK);
        d[0].permitted &= !(1 << CAP_IPC_LOCK);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()), 0);
    }
    // Capabilities are per thread: this one's.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap();
    let eff = u64::from_str_radix(eff.trim(), 16).unwrap();
    assert_eq!(eff & (1 << CAP_IPC_LOCK), 0, "CAP_IPC_LOCK dropped");
}

/// Sets the soft and hard RLIMIT_MEMLOCK (`ulimit -l`).
fn set_memlock(bytes: u64) {
    let r = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit with a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) }, 0);
}

/// Collects the library's warnings.
fn capture_warnings() -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    swapper::log::set_sink(
        Some(swapper::log::Sink::Rust(Box::new(move |_, m| {
            sink.lock().unwrap().push(m.to_string())
        }))),
        swapper::log::LogLevel::Warn,
    );
    seen
}

/// `ulimit -l 1024` (KiB) without CAP_IPC_LOCK: an 8 MiB pinned pool is created
/// unlocked, a warning says why and how to pin it, and it swaps correctly; a 128 KiB
/// pool fits the limit and is locked; `swapper_alloc_aligned` with lock behaves alike.
#[test]
fn under_a_small_memlock_limit_the_pool_works_unlocked_and_says_so() {
    const TEST: &str = "under_a_small_memlock_limit_the_pool_works_unlocked_and_says_so";
    if std::env::var(CHILD).is_ok() {
        drop_ipc_lock();
        set_memlock(MIB);
        let warnings = capture_warnings();
        let dir = child_dir();
        let s = Swapper::new(pinned(&dir.join("a"), 4, MIB, Dtype::Fp16)).unwrap();
        let w = warnings.lock().unwrap().join("\n");
        assert!(
            w.contains("the buffer pool (4 buffers of 2097152 bytes) is not page-locked"),
            "{w}"
        );
        assert!(w.contains("RLIMIT_MEMLOCK allows 1048576 bytes"), "{w}");
        assert!(w.contains("works unlocked") && w.contains("ulimit -l"), "{w}");
        let want = common::pattern(2 * MIB as usize, 7);
        let buf = s.get_buffer(1, MIB).unwrap();
        assert_eq!(
            swapper::sys::alloc::find_allocation(buf.addr(), 0),
            Some(false),
            "unlocked"
        );
        // SAFETY: a fresh pool buffer of 2 MiB.
        unsafe { std::ptr::copy_nonoverlapping(want.as_ptr(), buf.0, want.len()) };
        s.swap_out_and_release(&[1], false, false).unwrap();
        // SAFETY: pool buffers only.
        unsafe { s.swap_in(&[1], false, None) }.unwrap();
        let (buf, _) = s.param_buffer(1).unwrap();
        // SAFETY: the param is AVAILABLE with 2 MiB.
        assert!(unsafe { swapper::sys::alloc::borrow(buf, want.len()) } == want.as_slice());
        assert_eq!(status_bytes("VmLck"), 0);
        drop(s);

        let small = Swapper::new(pinned(&dir.join("b"), 1, 64 << 10, Dtype::Fp16)).unwrap();
        let buf = small.get_buffer(1, 64 << 10).unwrap();
        assert_eq!(
            swapper::sys::alloc::find_allocation(buf.addr(), 0),
            Some(true),
            "fits the limit"
        );
        assert_eq!(status_bytes("VmLck"), 128 << 10);
        drop(small);

        warnings.lock().unwrap().clear();
        let mut p = std::ptr::null_mut();
        // SAFETY: `p` is valid for writing one pointer.
        let st = unsafe { swapper::ffi::alloc::swapper_alloc_aligned(4 * MIB, true, &mut p) };
        assert_eq!(st, Status::Ok);
        assert!(!swapper::ffi::alloc::swapper_is_locked(p));
        let w = warnings.lock().unwrap().join("\n");
        assert!(
            w.contains("swapper_alloc_aligned of 4194304 bytes is not page-locked"),
            "{w}"
        );
        swapper::ffi::alloc::swapper_free_aligned(p);
        std::process::exit(0);
    }
    let dir = common::disk_dir();
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let (status, out) = run_child(TEST, "memlock", dir.path(), None);
    assert!(status.success(), "{status:?}\n{out}");
}

/// A pinned pool 1 GiB larger than MemAvailable fails at once, without allocating,
/// naming MemAvailable and the settings to lower. (On this 24 GiB machine that is about
/// the machine's memory; the margin is there so that memory freed by other processes
/// meanwhile cannot make the pool fit and lock most of the machine.)
#[test]
fn a_pool_above_mem_available_fails_without_allocating() {
    const TEST: &str = "a_pool_above_mem_available_fails_without_allocating";
    if std::env::var(CHILD).is_ok() {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let available = swapper::memory_budget::proc::mem_available(&meminfo).unwrap();
        let bytes = available + 1024 * MIB;
        let numel = bytes.div_ceil(4 * 2);
        let rss = status_bytes("VmRSS");
        let started = Instant::now();
        let e = Swapper::new(pinned(&child_dir(), 4, numel, Dtype::Fp16))
            .err()
            .expect("a pool above MemAvailable must be refused");
        let took = started.elapsed();
        println!("refused in {took:?}: {e}");
        assert_eq!(e.status(), Status::OutOfMemory, "{e}");
        assert!(e.message().contains("MemAvailable in /proc/meminfo is"), "{e}");
        assert!(e.message().contains("lower buffer_count or buffer_numel"), "{e}");
        assert!(took < Duration::from_secs(2), "at once: {took:?}");
        assert!(status_bytes("VmRSS") < rss + 64 * MIB, "nothing allocated");
        assert_eq!(status_bytes("VmLck"), 0);
        std::process::exit(0);
    }
    let dir = common::disk_dir();
    let (status, out) = run_child(TEST, "available", dir.path(), None);
    assert!(status.success(), "{status:?}\n{out}");
    println!("{out}");
}

/// `swapper_config_page_locked_bytes` answers exactly what `swapper_create` then locks
/// (the kernel's VmLck, in a child that locks nothing else), for odd sizes and every
/// dtype; 0 when not pinned or with the caller's allocator; errors leave 0.
#[test]
fn the_c_call_tells_what_create_locks() {
    use swapper::ffi::swapper::{
        swapper_config_default, swapper_config_page_locked_bytes, swapper_create, swapper_destroy,
        SwapperConfig,
    };
    const TEST: &str = "the_c_call_tells_what_create_locks";
    if std::env::var(CHILD).is_ok() {
        let dir = child_dir();
        let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        let config = |dtype: Dtype, count: u32, numel: u64| {
            let mut c = std::mem::MaybeUninit::<SwapperConfig>::uninit();
            // SAFETY: writes one SwapperConfig.
            unsafe { swapper_config_default(c.as_mut_ptr()) };
            // SAFETY: initialised just above.
            let mut c = unsafe { c.assume_init() };
            c.dtype = dtype as i32;
            c.buffer_count = count;
            c.buffer_numel = numel;
            c.pin_memory = 1;
            c
        };
        let page = 4096u64;
        for (dtype, count, numel) in [
            (Dtype::Fp16, 3, 1_000_000),
            (Dtype::Fp32, 2, 12_345),
            (Dtype::Bf16, 1, 1 << 20),
            (Dtype::Fp32, 7, 3_000_001),
        ] {
            let mut c = config(dtype, count, numel);
            let mut bytes = u64::MAX;
            // SAFETY: valid config and out-pointer.
            assert_eq!(
                unsafe { swapper_config_page_locked_bytes(&c, &mut bytes) },
                Status::Ok
            );
            assert_eq!(bytes % page, 0);
            let raw = numel * dtype.size() as u64 * u64::from(count);
            assert!(
                bytes >= raw && bytes < raw + u64::from(count) * 4096 + page,
                "{bytes} for {raw}"
            );
            c.nvme_path = path.as_ptr();
            let before = status_bytes("VmLck");
            let mut s = std::ptr::null_mut();
            // SAFETY: valid config and out-pointer.
            assert_eq!(unsafe { swapper_create(&c, &mut s) }, Status::Ok);
            let locked = status_bytes("VmLck") - before;
            assert_eq!(
                locked, bytes,
                "{dtype:?} x{count} x{numel}: the call said {bytes}, create locked {locked}"
            );
            swapper_destroy(s);
            assert_eq!(status_bytes("VmLck"), before);
            c.pin_memory = 0;
            // SAFETY: as above.
            assert_eq!(
                unsafe { swapper_config_page_locked_bytes(&c, &mut bytes) },
                Status::Ok
            );
            assert_eq!(bytes, 0, "not pinned");
        }
        let mut bytes = 77u64;
        let mut c = config(Dtype::Fp16, 0, 10);
        // SAFETY: as above.
        assert_eq!(
            unsafe { swapper_config_page_locked_bytes(&c, &mut bytes) },
            Status::InvalidArgument
        );
        assert_eq!(bytes, 0, "0 after a failure");
        c.buffer_count = 1;
        c.dtype = 99;
        bytes = 77;
        // SAFETY: as above.
        assert_eq!(
            unsafe { swapper_config_page_locked_bytes(&c, &mut bytes) },
            Status::InvalidArgument
        );
        assert_eq!(bytes, 0);
        bytes = 77;
        // SAFETY: NULL config is allowed and reported.
        assert_eq!(
            unsafe { swapper_config_page_locked_bytes(std::ptr::null(), &mut bytes) },
            Status::NullPointer
        );
        assert_eq!(bytes, 0);
        let c = config(Dtype::Fp16, 1, 10);
        // SAFETY: NULL out is allowed and reported.
        assert_eq!(
            unsafe { swapper_config_page_locked_bytes(&c, std::ptr::null_mut()) },
            Status::NullPointer
        );
        std::process::exit(0);
    }
    let dir = common::disk_dir();
    let (status, out) = run_child(TEST, "c-call", dir.path(), None);
    assert!(status.success(), "{status:?}\n{out}");
}
