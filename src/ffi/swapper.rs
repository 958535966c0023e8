//! `Swapper`: the parameter swapper handle.

use std::sync::LazyLock;

use super::boundary::{arg_path, arg_ref, arg_slice, arg_str, clear_out, write_opt, write_out, Registry};
use super::io::{flag_is_set, SwapperIoConfig};
use crate::config::IoConfig;
use crate::convert::Dtype;
use crate::status::{Error, Result, Status};
use crate::swapper::{ParamStatus, Settings, Stats, Swapper as Core};
use crate::sys::alloc::ExternalAllocator;
use crate::sys::RawBuf;

/// A `SwapperDtype` as C stores it (see `StatusCode` in common.rs).
pub type DtypeCode = i32;

/// Allocates the pool's memory: `nbytes` aligned to `alignment` (4096); returns NULL on
/// failure. Called from the thread that creates the swapper.
pub type SwapperAllocFn =
    Option<extern "C" fn(nbytes: u64, alignment: u64, user_data: *mut libc::c_void) -> *mut libc::c_void>;
/// Frees memory from the matching `SwapperAllocFn`, with its size. Called when the
/// swapper is destroyed (from the destroying thread).
pub type SwapperFreeFn =
    Option<extern "C" fn(ptr: *mut libc::c_void, nbytes: u64, user_data: *mut libc::c_void)>;

/// A parameter swapper: ZeRO-Infinity parameter offload to NVMe. Create with
/// `swapper_create` or `swapper_create_from_json`, destroy with `swapper_destroy`. Every
/// function taking a `Swapper` is thread-safe (a prefetch thread beside a compute thread
/// is the normal case). Calls that block: the `wait` functions, synchronous swaps,
/// `swapper_swap_into_buffer`, `swapper_swap_out_partitioned` and `swapper_destroy`;
/// the others return at once.
pub struct Swapper {
    _opaque: [u8; 0],
}

/// The swapper's settings. Fill with `swapper_config_default`, then set `nvme_path`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SwapperConfig {
    /// Root folder of the swap files (required unless `nvme_paths` is given; must exist,
    /// be a real folder, not a symbolic link). The swapper uses
    /// `<nvme_path>/zero_stage_3/<dtype>params/rank<R>/`, created with mode 0700, locked for
    /// the handle's life and emptied at creation; the params' bytes go into a few large
    /// extent files there (`extent-<k>.swp`), not a file per param. Borrowed during
    /// `swapper_create` only. DeepSpeed `offload_param.nvme_path`. With `nvme_paths` set it
    /// may be NULL; if not NULL it must equal `nvme_paths[0]`.
    pub nvme_path: *const libc::c_char,
    /// This process's rank; each rank has its own folder. Default 0.
    pub rank: u32,
    /// Element type of the params: `SWAPPER_DTYPE_FP32`, `SWAPPER_DTYPE_FP16` (default)
    /// or `SWAPPER_DTYPE_BF16`.
    pub dtype: DtypeCode,
    /// Buffers in the pool. Default 5 (DeepSpeed `offload_param.buffer_count`).
    pub buffer_count: u32,
    /// Elements per buffer. Default 100000000 (DeepSpeed `offload_param.buffer_size`).
    pub buffer_numel: u64,
    /// Page-lock the pool (when the memlock limit allows; otherwise a warning is logged).
    /// Default 0, false (DeepSpeed `offload_param.pin_memory`). A one-byte flag: 0 is
    /// false, any other value true (an integer, so that a memset struct is well defined).
    pub pin_memory: u8,
    /// Keep a crc32c of each param (one per I/O request, combined) when it is written and check it when it is
    /// read back; a mismatch is `SWAPPER_STATUS_CORRUPT_DATA`. Default false: the I/O
    /// workers compute it while the I/O runs, but it still costs about 11% of swap-in
    /// throughput on a 2-core machine at 2.5 GB/s (README, Benchmarks). A one-byte flag:
    /// 0 is false, any other value true.
    pub verify_checksums: u8,
    /// The I/O engine's settings (DeepSpeed `aio`).
    pub io: SwapperIoConfig,
    /// Optional allocator for the pool (for example cudaHostAlloc); NULL uses libswapper's
    /// own page-aligned memory. Set both `alloc_fn` and `free_fn`, or neither.
    pub alloc_fn: SwapperAllocFn,
    /// Frees what `alloc_fn` allocated.
    pub free_fn: SwapperFreeFn,
    /// Passed to `alloc_fn` and `free_fn`; never touched by libswapper.
    pub allocator_user_data: *mut libc::c_void,
    /// Several drives: `nvme_path_count` root folders, one per drive (each as `nvme_path`
    /// says, with its own rank folder, lock and I/O queue). Params are placed across them
    /// (small ones whole on one drive, large ones split in 1 MiB units) so that each drive
    /// carries its share of the bytes: equal until the drives' rates are measured, then in
    /// proportion to each drive's rate (bytes per second while it has work); a full drive
    /// takes no new params while another has room. NULL (the default) with a count of 0: the single
    /// `nvme_path`. Borrowed during `swapper_create` only. DeepSpeed `offload_param.nvme_path`
    /// given as a list.
    pub nvme_paths: *const *const libc::c_char,
    /// Entries in `nvme_paths` (0: use `nvme_path`). Default 0.
    pub nvme_path_count: usize,
    /// Adopt the rank folders instead of emptying them: the swapper reads the manifest
    /// the last `swapper_flush` made durable, checks every extent file's size (and each
    /// param's checksum when the manifest has them: every param is read back), and knows
    /// every param it names as NOT_AVAILABLE with its numel (`swapper_swap_in` works
    /// without `swapper_get_buffer` first). Space the manifest does not name (writes after
    /// that flush) is reclaimed; extent files made after it are removed (logged). A folder
    /// without a manifest that holds only the swapper's own files starts empty, with a
    /// warning logged that names the rank folders (a wrong path, rank or dtype would
    /// otherwise resume from nothing in silence). A manifest
    /// of another rank, dtype, drive count or libswapper version, a truncated or garbled
    /// one, a file missing or shorter than recorded, a checksum mismatch: creation fails
    /// with a message naming the param and the file, and nothing is removed. Default 0
    /// (false: the folders are emptied). DeepSpeed extension key
    /// `offload_param.libswapper_adopt`. A one-byte flag: 0 is false, any other value true.
    pub adopt: u8,
}

impl TryFrom<&SwapperConfig> for Settings {
    type Error = Error;
    fn try_from(c: &SwapperConfig) -> Result<Settings> {
        let nvme_paths = if c.nvme_path_count == 0 {
            Vec::new()
        } else {
            if c.nvme_paths.is_null() {
                return Err(Error::new(
                    Status::NullPointer,
                    format!(
                        "config->nvme_paths is NULL with nvme_path_count {}",
                        c.nvme_path_count
                    ),
                ));
            }
            if c.nvme_path_count > 4096 {
                return Err(Error::invalid(format!(
                    "config->nvme_path_count {} is not a number of drives (at most 4096)",
                    c.nvme_path_count
                )));
            }
            (0..c.nvme_path_count)
                .map(|i| {
                    // SAFETY: the caller promises `nvme_path_count` readable entries, each a
                    // NUL-terminated string or NULL.
                    unsafe { arg_path(*c.nvme_paths.add(i), &format!("config->nvme_paths[{i}]")) }
                })
                .collect::<Result<Vec<_>>>()?
        };
        let nvme_path = if c.nvme_path.is_null() && !nvme_paths.is_empty() {
            std::path::PathBuf::new()
        } else {
            // SAFETY: the caller of swapper_create promises a NUL-terminated string or NULL.
            unsafe { arg_path(c.nvme_path, "config->nvme_path") }?
        };
        let allocator = allocator_of(c)?;
        let s = Settings {
            nvme_path,
            nvme_paths,
            rank: c.rank,
            dtype: Dtype::from_c(c.dtype)?,
            buffer_count: c.buffer_count,
            buffer_numel: c.buffer_numel,
            pin_memory: flag_is_set(c.pin_memory),
            verify_checksums: flag_is_set(c.verify_checksums),
            io: IoConfig::try_from(&c.io)?,
            allocator,
            adopt: flag_is_set(c.adopt),
        };
        s.validate()?;
        Ok(s)
    }
}

/// The caller's allocator, if `alloc_fn` and `free_fn` are both set.
fn allocator_of(c: &SwapperConfig) -> Result<Option<ExternalAllocator>> {
    match (c.alloc_fn, c.free_fn) {
        (Some(alloc), Some(free)) => Ok(Some(ExternalAllocator {
            alloc,
            free,
            user_data: c.allocator_user_data as usize,
        })),
        (None, None) => Ok(None),
        _ => Err(Error::invalid("set both alloc_fn and free_fn, or neither")),
    }
}

static HANDLES: LazyLock<Registry<Core>> = LazyLock::new(|| Registry::new("Swapper handle", 2));

/// The live swapper behind a handle; `SWAPPER_STATUS_PANIC` once a panic inside an
/// earlier call broke it (every call but `swapper_destroy` then fails so).
pub(crate) fn handle(s: *const Swapper) -> Result<std::sync::Arc<Core>> {
    let core = HANDLES.get(s as usize)?;
    core.usable()?;
    Ok(core)
}

fn getter<T>(name: &str, s: *const Swapper, fallback: T, f: impl FnOnce(&Core) -> T) -> T {
    crate::ffi_boundary!(name, fallback, { Ok(f(&*handle(s)?)) })
}

/// Fills `*out` with the defaults: no nvme_path, rank 0, fp16, 5 buffers of 100000000
/// elements, not pinned, checksums off, the engine's defaults, no allocator. NULL is
/// ignored. Thread-safe.
///
/// # Safety
/// `out` must be NULL or valid for writing one `SwapperConfig`.
#[no_mangle]
pub unsafe extern "C" fn swapper_config_default(out: *mut SwapperConfig) {
    let d = Settings::default();
    let c = SwapperConfig {
        nvme_path: std::ptr::null(),
        rank: d.rank,
        dtype: d.dtype as i32,
        buffer_count: d.buffer_count,
        buffer_numel: d.buffer_numel,
        pin_memory: u8::from(d.pin_memory),
        verify_checksums: u8::from(d.verify_checksums),
        io: SwapperIoConfig::from(&d.io),
        alloc_fn: None,
        free_fn: None,
        allocator_user_data: std::ptr::null_mut(),
        nvme_paths: std::ptr::null(),
        nvme_path_count: 0,
        adopt: u8::from(d.adopt),
    };
    // SAFETY: the caller's contract.
    unsafe { write_opt(out, c) }
}

/// Stores in `*out_bytes` how many bytes `swapper_create` with `*config` would page-lock
/// (pin) for the buffer pool, counted as the kernel counts locked memory: `buffer_count`
/// buffers of `buffer_numel` elements of `dtype` (each buffer rounded up to the I/O
/// alignment), the whole rounded up to pages. 0 when `pin_memory` is off or `alloc_fn`
/// provides the memory (libswapper then locks nothing). Creates and allocates nothing;
/// reads only `dtype`, `buffer_count`, `buffer_numel`, `pin_memory`, `alloc_fn` and
/// `free_fn` (`nvme_path` may be NULL). `swapper_create` checks this many bytes, before it
/// allocates, against the memory cgroup's room and MemAvailable (refused with
/// `SWAPPER_STATUS_OUT_OF_MEMORY`, the message saying how much fits and what to lower)
/// and RLIMIT_MEMLOCK (the pool is then created unlocked, with a warning). The
/// partitioned swap space, reserved later, is not included. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` (config or out_bytes NULL);
/// `SWAPPER_STATUS_INVALID_ARGUMENT` (buffer_count or buffer_numel 0, an invalid dtype,
/// only one of alloc_fn and free_fn set); `SWAPPER_STATUS_OUT_OF_MEMORY` (the pool's size
/// overflows). After a failure `*out_bytes` is 0 (when out_bytes is not NULL).
///
/// # Safety
/// `config` must be NULL or point to a `SwapperConfig`; `out_bytes` must be NULL or valid
/// for writing one `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn swapper_config_page_locked_bytes(
    config: *const SwapperConfig,
    out_bytes: *mut u64,
) -> Status {
    crate::ffi_boundary!("swapper_config_page_locked_bytes", {
        // SAFETY: the caller's contract.
        unsafe { write_opt(out_bytes, 0) };
        // SAFETY: the caller's contract.
        let c = unsafe { arg_ref(config, "config") }?;
        if out_bytes.is_null() {
            return Err(Error::new(Status::NullPointer, "out_bytes is NULL"));
        }
        let pool = Settings {
            dtype: Dtype::from_c(c.dtype)?,
            buffer_count: c.buffer_count,
            buffer_numel: c.buffer_numel,
            pin_memory: flag_is_set(c.pin_memory),
            allocator: allocator_of(c)?,
            ..Settings::default()
        };
        let bytes = crate::swapper::page_locked_bytes(&pool)?;
        // SAFETY: checked non-NULL; the caller's contract.
        unsafe { write_out(out_bytes, "out_bytes", bytes) }
    })
}

fn create(settings: Settings, out: *mut *mut Swapper) -> Result<()> {
    if out.is_null() {
        return Err(Error::new(Status::NullPointer, "out is NULL"));
    }
    let key = HANDLES.insert(Core::new(settings)?);
    // SAFETY: `out` is non-NULL and valid for writing (the exports' contract).
    unsafe { write_out(out, "out", key as *mut Swapper) }
}

/// Creates a swapper with `*config` and stores its handle in `*out`; the caller owns it and
/// frees it with `swapper_destroy`. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` (config, out or nvme_path NULL);
/// `SWAPPER_STATUS_INVALID_ARGUMENT` (a setting out of range, nvme_path not a folder or a
/// symbolic link); `SWAPPER_STATUS_NOT_FOUND` (nvme_path missing);
/// `SWAPPER_STATUS_IO_ERROR` (nvme_path not writable); `SWAPPER_STATUS_BUSY` (another
/// swapper, in this process or another, holds the same rank folder);
/// `SWAPPER_STATUS_OUT_OF_MEMORY` (the pool cannot be allocated; larger than the machine's
/// memory is refused up front).
///
/// After a failure `*out` is NULL (every out-parameter is neutral after a failure).
///
/// # Safety
/// `config` must be NULL or point to a `SwapperConfig` whose `nvme_path` is NULL or a
/// NUL-terminated string; `out` must be NULL or valid for writing one pointer.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_create(config: *const SwapperConfig, out: *mut *mut Swapper) -> Status {
    crate::ffi_boundary!("swapper_create", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) };
        // SAFETY: the caller's contract.
        let c = unsafe { arg_ref(config, "config") }?;
        create(Settings::try_from(c)?, out)
    })
}

/// Creates a swapper from a DeepSpeed configuration (JSON text): the `aio` block
/// (block_size, queue_depth, intra_op_parallelism or thread_count, single_submit,
/// overlap_events) and `zero_optimization.offload_param` (nvme_path, buffer_count,
/// buffer_size, pin_memory), with DeepSpeed's defaults for missing keys. `dtype` is one
/// of `SWAPPER_DTYPE_*`. Ownership and thread-safety as `swapper_create`.
///
/// Errors: as `swapper_create`, plus `SWAPPER_STATUS_INVALID_ARGUMENT` for text that is
/// not JSON, a key of the wrong type (the message names it) or a missing nvme_path.
///
/// After a failure `*out` is NULL (every out-parameter is neutral after a failure).
///
/// # Safety
/// `deepspeed_config_json` must be NULL or a NUL-terminated string; `out` must be NULL or
/// valid for writing one pointer.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_create_from_json(
    deepspeed_config_json: *const libc::c_char,
    rank: u32,
    dtype: DtypeCode,
    out: *mut *mut Swapper,
) -> Status {
    crate::ffi_boundary!("swapper_create_from_json", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) };
        // SAFETY: the caller's contract.
        let text = unsafe { arg_str(deepspeed_config_json, "deepspeed_config_json") }?;
        create(
            Settings::from_deepspeed_json(text, rank, Dtype::from_c(dtype)?)?,
            out,
        )
    })
}

/// Destroys a swapper: waits for every read and write in flight, frees the pool, unlocks
/// the folder (the swap files stay). NULL is ignored; a handle that is not live is
/// reported through the last error and otherwise ignored. Buffers obtained from the
/// swapper must not be used afterwards; later calls with the handle fail with
/// `SWAPPER_STATUS_INVALID_ARGUMENT`.
///
/// When it returns, no read or write of the swapper touches any memory any more (the
/// caller's destination buffers included) and the folder is unlocked, whatever other
/// threads are doing: a thread blocked in a wait on the same handle returns, a thread
/// about to submit gets an error, and destroy waits for such calls to return before it
/// frees the swapper. In a forked child of the process that created the handle, the
/// handle is only forgotten: the pool, the files and the lock stay the parent's.
#[no_mangle]
pub extern "C" fn swapper_destroy(swapper: *mut Swapper) {
    if swapper.is_null() {
        return;
    }
    let _ = crate::ffi_boundary!("swapper_destroy", {
        HANDLES.destroy(swapper as usize, |s| s.close())
    });
}

/// Gives param `param_id` a free pool buffer for `numel` elements and stores its address
/// in `*out_buffer`; the param becomes AVAILABLE. A new id is registered; a known one must
/// be NOT_AVAILABLE. Fill the buffer, then swap the param out. The buffer belongs to the
/// swapper: valid until the param is released or the swapper destroyed. Its contents are
/// whatever was there before. Thread-safe; does not block.
///
/// Errors: `SWAPPER_STATUS_INVALID_ARGUMENT` (numel 0, dead handle),
/// `SWAPPER_STATUS_NO_BUFFER` (numel larger than a buffer, or no free buffer),
/// `SWAPPER_STATUS_BAD_STATE` (the param already has a buffer), `SWAPPER_STATUS_NULL_POINTER`.
///
/// After a failure `*out_buffer` is NULL (every out-parameter is neutral after a failure).
///
/// # Safety
/// `out_buffer` must be NULL or valid for writing one pointer.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_get_buffer(
    swapper: *mut Swapper,
    param_id: u64,
    numel: u64,
    out_buffer: *mut *mut libc::c_void,
) -> Status {
    crate::ffi_boundary!("swapper_get_buffer", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out_buffer) };
        let s = handle(swapper)?;
        if out_buffer.is_null() {
            return Err(Error::new(Status::NullPointer, "out_buffer is NULL"));
        }
        let buf = s.get_buffer(param_id, numel)?;
        // SAFETY: checked non-NULL; the caller's contract.
        unsafe { write_out(out_buffer, "out_buffer", buf.0 as *mut libc::c_void) }
    })
}

/// Writes each param's buffer to its swap file. Every param must be AVAILABLE with no
/// write in flight; the batch is checked whole first, so one bad id (unknown, wrong state,
/// duplicate) changes nothing. With `async_op` the call returns once the writes are queued:
/// do not modify the buffers until `swapper_wait_writes` returns. The params stay
/// AVAILABLE. A synchronous call also finishes every earlier asynchronous write, as
/// DeepSpeed's does (its status includes their failures). Thread-safe; blocks only when
/// synchronous. No other thread's call waits for this one's file-system work.
///
/// A param whose file cannot be opened is not queued; the others are. The status is then
/// the first failure's, and the last error lists the ids of every param not queued
/// ("ids [..]"): those stay AVAILABLE with their data, ready to be swapped out again.
///
/// Errors: `SWAPPER_STATUS_NOT_FOUND`, `SWAPPER_STATUS_BAD_STATE`,
/// `SWAPPER_STATUS_INVALID_ARGUMENT` (duplicate id), `SWAPPER_STATUS_NULL_POINTER` (param_ids
/// NULL with count > 0), `SWAPPER_STATUS_IO_ERROR` (a synchronous write failed: the param
/// stays AVAILABLE with its data, retry later).
///
/// # Safety
/// `param_ids` must be NULL or point to `count` ids.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_swap_out(
    swapper: *mut Swapper,
    param_ids: *const u64,
    count: usize,
    async_op: bool,
) -> Status {
    crate::ffi_boundary!("swapper_swap_out", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract.
        let ids = unsafe { arg_slice(param_ids, count, "param_ids") }?;
        s.swap_out(ids, async_op)
    })
}

/// As `swapper_swap_out`, then gives the buffers back to the pool once the writes have
/// completed successfully; the params become NOT_AVAILABLE. Asynchronous use
/// (`async_op` true) must be confirmed with `force_buffer_release` true, as in DeepSpeed;
/// the release then happens inside `swapper_wait_writes`. A failed write keeps its param
/// AVAILABLE with its buffer. Thread-safe.
///
/// Errors: as `swapper_swap_out`, plus `SWAPPER_STATUS_INVALID_ARGUMENT` for an
/// asynchronous call without `force_buffer_release`.
///
/// # Safety
/// `param_ids` must be NULL or point to `count` ids.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_swap_out_and_release(
    swapper: *mut Swapper,
    param_ids: *const u64,
    count: usize,
    async_op: bool,
    force_buffer_release: bool,
) -> Status {
    crate::ffi_boundary!("swapper_swap_out_and_release", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract.
        let ids = unsafe { arg_slice(param_ids, count, "param_ids") }?;
        s.swap_out_and_release(ids, async_op, force_buffer_release)
    })
}

/// Reads each param back from its swap file. Every param must be NOT_AVAILABLE, with a
/// complete copy on disk and no write in flight; the batch is checked whole first. With
/// `dest_buffers` NULL each param gets a free pool buffer (not enough free buffers is
/// `SWAPPER_STATUS_NO_BUFFER`, and nothing changes); otherwise `dest_buffers[i]` receives
/// param i and must hold its elements, stay valid and untouched until the param is
/// released (it stays the caller's). The params become INFLIGHT; `swapper_wait_reads`
/// makes them AVAILABLE. A synchronous call waits for them and also finishes every
/// earlier asynchronous read (those params become AVAILABLE too), as DeepSpeed's
/// `swap_in` does; use `swapper_wait_params` to wait selectively. Thread-safe.
///
/// A param whose file is missing, replaced or cannot be opened is not queued; the others
/// are. The status is then the first failure's, and the last error lists the ids of every
/// param not queued ("ids [..]"): those stay NOT_AVAILABLE, their pool buffers back in
/// the pool, ready for a retry of just those.
///
/// Errors: `SWAPPER_STATUS_NOT_FOUND`, `SWAPPER_STATUS_BAD_STATE`,
/// `SWAPPER_STATUS_NO_BUFFER`, `SWAPPER_STATUS_INVALID_ARGUMENT` (duplicate id),
/// `SWAPPER_STATUS_NULL_POINTER`, `SWAPPER_STATUS_CORRUPT_DATA` (a swap file deleted,
/// truncated, or failing its checksum), `SWAPPER_STATUS_IO_ERROR`.
///
/// # Safety
/// `param_ids` must be NULL or point to `count` ids; `dest_buffers` must be NULL or point
/// to `count` pointers, each valid as stated above.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_swap_in(
    swapper: *mut Swapper,
    param_ids: *const u64,
    count: usize,
    async_op: bool,
    dest_buffers: *const *mut libc::c_void,
) -> Status {
    crate::ffi_boundary!("swapper_swap_in", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract.
        let ids = unsafe { arg_slice(param_ids, count, "param_ids") }?;
        let dest: Option<Vec<RawBuf>> = if dest_buffers.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            let d = unsafe { arg_slice(dest_buffers, count, "dest_buffers") }?;
            Some(d.iter().map(|p| RawBuf(*p as *mut u8)).collect())
        };
        // SAFETY: the caller's contract covers the destination buffers.
        unsafe { s.swap_in(ids, async_op, dest.as_deref()) }
    })
}

/// As `swapper_swap_in` with caller buffers, each with its size: `dest_numels[i]` is the
/// number of elements `dest_buffers[i]` holds, checked against the param before anything
/// starts (`SWAPPER_STATUS_NO_BUFFER` if one is too small). Prefer it to `swapper_swap_in`
/// with `dest_buffers`, which cannot check. Thread-safe.
///
/// # Safety
/// `param_ids`, `dest_buffers` and `dest_numels` must be NULL or hold `count` entries; each
/// buffer must be valid for `dest_numels[i]` elements until its param is released.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_swap_in_buffers(
    swapper: *mut Swapper,
    param_ids: *const u64,
    count: usize,
    async_op: bool,
    dest_buffers: *const *mut libc::c_void,
    dest_numels: *const u64,
) -> Status {
    crate::ffi_boundary!("swapper_swap_in_buffers", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract for the three arrays.
        let (ids, bufs, numels) = unsafe {
            (
                arg_slice(param_ids, count, "param_ids")?,
                arg_slice(dest_buffers, count, "dest_buffers")?,
                arg_slice(dest_numels, count, "dest_numels")?,
            )
        };
        let dest: Vec<RawBuf> = bufs.iter().map(|p| RawBuf(*p as *mut u8)).collect();
        // SAFETY: the caller's contract covers the buffers and their sizes.
        unsafe { s.swap_in_checked(ids, async_op, Some(&dest), Some(numels)) }
    })
}

/// Reads param `param_id` synchronously into `dest`, which holds `dest_numel` elements (at
/// least the param's), without using a pool buffer; any address works. The param stays
/// NOT_AVAILABLE. `dest` is borrowed for the call. Like every synchronous read, it then
/// finishes the earlier asynchronous reads too (DeepSpeed's `swap_into_buffer`).
/// Thread-safe; blocks only the calling thread (the swapper's other calls go on).
///
/// Errors: as `swapper_swap_in`, plus `SWAPPER_STATUS_NO_BUFFER` when `dest_numel` is
/// smaller than the param.
///
/// # Safety
/// `dest` must be NULL or valid for writing `dest_numel` elements.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_swap_into_buffer(
    swapper: *mut Swapper,
    param_id: u64,
    dest: *mut libc::c_void,
    dest_numel: u64,
) -> Status {
    crate::ffi_boundary!("swapper_swap_into_buffer", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract.
        unsafe { s.swap_into_buffer(param_id, RawBuf(dest as *mut u8), dest_numel) }
    })
}

/// Makes the swap folder resumable up to now: waits for every write submitted before the
/// call, then writes a new generation of the manifest on every drive (after fdatasync of
/// the extent files; write a new file, fsync, rename over the old, fsync the folder). It
/// names each param's last write that completed: a param whose write is still being
/// submitted by another thread, or that has no complete copy on disk (after
/// `swapper_get_buffer`, or a failed write), keeps what the previous manifest named. After
/// a crash at any moment, a swapper created with `adopt` finds every param as the last
/// `swapper_flush` that returned `SWAPPER_STATUS_OK` left it (or as a flush that was under
/// way at the crash left it, when that one had reached a drive). Space a flushed param
/// used is reused only after the next flush. Thread-safe: swapping goes on meanwhile; a
/// second flush waits for the first. Blocks for the writes and the syncs.
///
/// Errors: `SWAPPER_STATUS_IO_ERROR` naming the file and errno of a write in flight that
/// failed (nothing is flushed then; retry the swap-out, then the flush) or of a sync,
/// write or rename of the manifest (the previous generation stays the durable one; a
/// later flush may succeed); `SWAPPER_STATUS_INVALID_ARGUMENT` for a handle that is not
/// live; `SWAPPER_STATUS_PANIC` once the handle is broken.
#[no_mangle]
pub extern "C" fn swapper_flush(swapper: *mut Swapper) -> Status {
    crate::ffi_boundary!("swapper_flush", { handle(swapper)?.flush().map(drop) })
}

/// Flushes (as `swapper_flush`), then records that generation into the checkpoint folder
/// `dest_folder`: for each drive k, `<dest_folder>/drive<k>/zero_stage_3/<dtype>params/
/// rank<R>/` with the manifest and the extent files. Each extent file is a reflink
/// (FICLONE: shared extents, constant time in the data size) where the file system
/// allows it (XFS with reflink, btrfs, same file system), otherwise a file of the same
/// size with the ranges the manifest names copied in (copy_file_range; read and write
/// across file systems). Everything is fsynced; the manifest is written last. Swapping
/// goes on meanwhile; nothing the snapshot copies can change during the copy.
/// `dest_folder` is borrowed for the call; it is created if missing (its parent must
/// exist), and the rank folders inside it must be new or empty. Restore with
/// `swapper_restore`, or adopt the snapshot in place (nvme_path = `<dest>/drive<k>`).
/// Thread-safe; blocks.
///
/// Errors: as `swapper_flush`; `SWAPPER_STATUS_NULL_POINTER` for a NULL `dest_folder`;
/// `SWAPPER_STATUS_BAD_STATE` when a destination rank folder is not empty (nothing is
/// written); `SWAPPER_STATUS_BUSY` when another swapper holds it; `SWAPPER_STATUS_IO_ERROR`
/// naming the file of a copy or sync that failed (the folder is then incomplete and has
/// no manifest for the drive that failed).
///
/// # Safety
/// `dest_folder` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn swapper_snapshot(swapper: *mut Swapper, dest_folder: *const libc::c_char) -> Status {
    crate::ffi_boundary!("swapper_snapshot", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract.
        let dest = unsafe { arg_path(dest_folder, "dest_folder") }?;
        s.snapshot_to(&dest).map(drop)
    })
}

/// Puts a snapshot made by `swapper_snapshot` back into the rank folders `config` names
/// (its nvme_path or nvme_paths, rank and dtype; the other fields are ignored), then
/// returns: create a swapper with the same config and `adopt` set to resume from it. Each
/// rank folder is locked during the call and emptied first; the files are reflinked or
/// copied as `swapper_snapshot` does. Nothing is emptied before the snapshot's manifests
/// were read and checked. Both strings are borrowed for the call. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` for a NULL argument; `SWAPPER_STATUS_NOT_FOUND`
/// for a snapshot without a manifest for a drive; `SWAPPER_STATUS_CORRUPT_DATA` for a
/// truncated or garbled manifest or a snapshot file shorter than recorded;
/// `SWAPPER_STATUS_INVALID_ARGUMENT` or `SWAPPER_STATUS_UNSUPPORTED` for a snapshot of
/// another rank, dtype, drive count or libswapper version; `SWAPPER_STATUS_BUSY` when a
/// swapper holds a target folder; `SWAPPER_STATUS_IO_ERROR` naming the file otherwise.
///
/// # Safety
/// `snapshot_folder` must be NULL or a NUL-terminated string; `config` NULL or a valid
/// `SwapperConfig` (its strings as `swapper_create` requires).
#[no_mangle]
pub unsafe extern "C" fn swapper_restore(
    snapshot_folder: *const libc::c_char,
    config: *const SwapperConfig,
) -> Status {
    crate::ffi_boundary!("swapper_restore", {
        // SAFETY: the caller's contract.
        let snapshot = unsafe { arg_path(snapshot_folder, "snapshot_folder") }?;
        // SAFETY: the caller's contract.
        let c = unsafe { arg_ref(config, "config") }?;
        let settings = Settings::try_from(c)?;
        Core::restore(&snapshot, &settings).map(drop)
    })
}

/// Waits for every read submitted before the call; the params become AVAILABLE. A failed
/// read (I/O error or checksum mismatch) returns its buffer to the pool and leaves its
/// param NOT_AVAILABLE; the status is the first failure's and the last error names every
/// failed param. With nothing pending: `SWAPPER_STATUS_OK` at once. Thread-safe; blocks.
#[no_mangle]
#[must_use]
pub extern "C" fn swapper_wait_reads(swapper: *mut Swapper) -> Status {
    crate::ffi_boundary!("swapper_wait_reads", { handle(swapper)?.wait_reads() })
}

/// Waits for every write submitted before the call; params swapped out with release give
/// their buffers back. A failed write leaves its param AVAILABLE with its buffer and data
/// (retry the swap-out); the last error names every failed param. With nothing pending:
/// `SWAPPER_STATUS_OK` at once. Thread-safe; blocks.
#[no_mangle]
#[must_use]
pub extern "C" fn swapper_wait_writes(swapper: *mut Swapper) -> Status {
    crate::ffi_boundary!("swapper_wait_writes", { handle(swapper)?.wait_writes() })
}

/// Waits for the reads and writes of the given params only; other operations stay in
/// flight. A runtime that prefetches several layers ahead waits for the layer it needs
/// while the next ones keep the device busy (`swapper_wait_reads` would drain the queue).
/// Completion rules as `swapper_wait_reads` and `swapper_wait_writes`. A param with
/// nothing in flight is a no-op. Thread-safe; blocks.
///
/// Errors: `SWAPPER_STATUS_NOT_FOUND` (an unknown id; nothing is waited for),
/// `SWAPPER_STATUS_NULL_POINTER`, and the failures of the operations waited for.
///
/// # Safety
/// `param_ids` must be NULL or point to `count` ids.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_wait_params(
    swapper: *mut Swapper,
    param_ids: *const u64,
    count: usize,
) -> Status {
    crate::ffi_boundary!("swapper_wait_params", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract.
        let ids = unsafe { arg_slice(param_ids, count, "param_ids") }?;
        s.wait_params(ids)
    })
}

/// Gives back the buffers of AVAILABLE params (DeepSpeed's
/// `remove_partition_and_release_buffers`): pool buffers return to the pool, caller buffers
/// are let go. The params become NOT_AVAILABLE. As in DeepSpeed, a param that holds no
/// buffer (NOT_AVAILABLE) or is unknown is left alone. Checked whole first. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_BAD_STATE` (a param INFLIGHT or with a write in flight: the I/O
/// still uses its buffer; nothing is released), `SWAPPER_STATUS_INVALID_ARGUMENT`
/// (duplicate id).
///
/// # Safety
/// `param_ids` must be NULL or point to `count` ids.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_release(
    swapper: *mut Swapper,
    param_ids: *const u64,
    count: usize,
) -> Status {
    crate::ffi_boundary!("swapper_release", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract.
        let ids = unsafe { arg_slice(param_ids, count, "param_ids") }?;
        s.release(ids)
    })
}

/// Stores the param's status in `*out`. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NOT_FOUND` for an id the swapper has never seen.
///
/// After a failure `*out` is 0, no status (every out-parameter is neutral after a failure).
///
/// # Safety
/// `out` must be NULL or valid for writing one `SwapperParamStatus`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_param_status(
    swapper: *const Swapper,
    param_id: u64,
    out: *mut ParamStatus,
) -> Status {
    crate::ffi_boundary!("swapper_param_status", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) };
        let s = handle(swapper)?;
        if out.is_null() {
            return Err(Error::new(Status::NullPointer, "out is NULL"));
        }
        let st = s.param_status(param_id)?;
        // SAFETY: checked non-NULL; the caller's contract.
        unsafe { write_out(out, "out", st) }
    })
}

/// Stores the buffer of an AVAILABLE param in `*out_buffer` and its element count in
/// `*out_numel` (either may be NULL). The buffer is valid until the param is released.
/// Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NOT_FOUND`; `SWAPPER_STATUS_BAD_STATE` when the param is not
/// AVAILABLE (INFLIGHT: wait for reads first).
///
/// After a failure `*out_buffer` is NULL and `*out_numel` 0 (every out-parameter is neutral
/// after a failure).
///
/// # Safety
/// Each out-pointer must be NULL or valid for writing.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_param_buffer(
    swapper: *const Swapper,
    param_id: u64,
    out_buffer: *mut *mut libc::c_void,
    out_numel: *mut u64,
) -> Status {
    crate::ffi_boundary!("swapper_param_buffer", {
        // SAFETY: the caller's contract.
        unsafe {
            clear_out(out_buffer);
            clear_out(out_numel);
        }
        let s = handle(swapper)?;
        let (buf, numel) = s.param_buffer(param_id)?;
        // SAFETY: the caller's contract.
        unsafe {
            write_opt(out_buffer, buf.0 as *mut libc::c_void);
            write_opt(out_numel, numel);
        }
        Ok(())
    })
}

/// Free buffers in the pool; 0 for a NULL or dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_available_buffers(swapper: *const Swapper) -> u64 {
    getter("swapper_available_buffers", swapper, 0, |s| {
        s.available_buffers() as u64
    })
}

/// Takes free buffers out of the pool for the caller's own use (DeepSpeed's
/// `reserve_available_buffers`): up to `capacity` of them, their addresses stored in
/// `out_buffers[0..*out_count]`. Each holds `buffer_numel` elements (rounded up to the
/// I/O alignment) and stays the swapper's memory: valid until the swapper is destroyed;
/// `swapper_release_reserved_buffers` gives them all back. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` (out_buffers NULL with capacity > 0, or out_count NULL).
///
/// After a failure `*out_count` is 0 and no buffer is reserved (every out-parameter is
/// neutral after a failure).
///
/// # Safety
/// `out_buffers` must be NULL or valid for writing `capacity` pointers; `out_count` must be
/// NULL or valid for writing one `size_t`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_reserve_available_buffers(
    swapper: *mut Swapper,
    out_buffers: *mut *mut libc::c_void,
    capacity: usize,
    out_count: *mut usize,
) -> Status {
    crate::ffi_boundary!("swapper_reserve_available_buffers", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out_count) };
        let s = handle(swapper)?;
        if out_count.is_null() {
            return Err(Error::new(Status::NullPointer, "out_count is NULL"));
        }
        if out_buffers.is_null() && capacity > 0 {
            return Err(Error::new(
                Status::NullPointer,
                "out_buffers is NULL but capacity is not 0",
            ));
        }
        let bufs = s.reserve_available_buffers(capacity)?;
        for (i, b) in bufs.iter().enumerate() {
            // SAFETY: i < capacity; the caller's contract.
            unsafe { out_buffers.add(i).write(b.0 as *mut libc::c_void) };
        }
        // SAFETY: checked non-NULL; the caller's contract.
        unsafe { write_out(out_count, "out_count", bufs.len()) }
    })
}

/// Puts every reserved buffer back into the pool. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_BAD_STATE` while a param still uses a reserved buffer as its
/// swap-in destination (release the param first).
#[no_mangle]
#[must_use]
pub extern "C" fn swapper_release_reserved_buffers(swapper: *mut Swapper) -> Status {
    crate::ffi_boundary!("swapper_release_reserved_buffers", {
        handle(swapper)?.release_reserved_buffers()
    })
}

/// Whether a tensor of `numel` elements is worth swapping: at least max(1 MiB,
/// block_size) bytes (DeepSpeed's `swappable_tensor`). False for a NULL or dead handle.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_swappable(swapper: *const Swapper, numel: u64) -> bool {
    getter("swapper_swappable", swapper, false, |s| s.swappable(numel))
}

/// `numel` rounded up so that its bytes (at this swapper's element size) are a multiple
/// of 4096, the length a swap file holds for it. (DeepSpeed aligns to 1024 bytes times the
/// thread count; libswapper needs no divisibility by the thread count.) 0 for a NULL or
/// dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_aligned_numel(swapper: *const Swapper, numel: u64) -> u64 {
    getter("swapper_aligned_numel", swapper, 0, |s| s.io_aligned_numel(numel))
}

/// Deprecated, removed in the next release: the old name of `swapper_aligned_numel`
/// (it takes a `Swapper*`, not a `SwapperIo*`), which it calls.
#[no_mangle]
pub extern "C" fn swapper_io_aligned_numel(swapper: *const Swapper, numel: u64) -> u64 {
    getter("swapper_io_aligned_numel", swapper, 0, |s| {
        s.io_aligned_numel(numel)
    })
}

/// Allocates the packed staging space for `swapper_swap_out_partitioned` (DeepSpeed's
/// `reserve_partitioned_swap_space`): its capacity is the sum of the io-aligned lengths of
/// `numels[0..count]` (pinned when `pin_memory` is set). ZeRO-3 reserves its largest
/// sub-group once; any later batch whose io-aligned lengths add up to at most the
/// capacity fits, in any order and number. Replaces an earlier space (a partitioned
/// swap-out running meanwhile finishes with the old one). Thread-safe.
///
/// Errors: `SWAPPER_STATUS_INVALID_ARGUMENT` (count 0), `SWAPPER_STATUS_NULL_POINTER`,
/// `SWAPPER_STATUS_OUT_OF_MEMORY`.
///
/// # Safety
/// `numels` must be NULL or point to `count` values.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_reserve_partitioned_swap_space(
    swapper: *mut Swapper,
    numels: *const u64,
    count: usize,
) -> Status {
    crate::ffi_boundary!("swapper_reserve_partitioned_swap_space", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract.
        let numels = unsafe { arg_slice(numels, count, "numels") }?;
        s.reserve_partitioned_swap_space(numels)
    })
}

/// Converts each fp32 source (`src_fp32[i]`, `numels[i]` elements) to the swapper's dtype
/// (round to nearest even; infinities kept; fp16 NaN kept quiet with its sign, every bf16
/// NaN written as 0xFFFF as torch does; a copy for fp32), packed one after the other in
/// the staging space, and writes each over the swap file of `dst_param_ids[i]`. Waits for
/// pending writes first; synchronous. Each destination must be NOT_AVAILABLE with no I/O,
/// have been swapped out before (its file exists), and have as many elements as its
/// source; the params stay NOT_AVAILABLE. A param whose write failed has no valid copy on
/// disk (swap-in refuses it) until a retry of this call succeeds. The sources are
/// borrowed for the call. Thread-safe; blocks the calling thread only.
///
/// Errors: `SWAPPER_STATUS_BAD_STATE` (no staging space, a param in the wrong state or
/// never swapped out), `SWAPPER_STATUS_NO_BUFFER` (the batch needs more elements than the
/// space holds), `SWAPPER_STATUS_BUSY` (another thread's partitioned swap-out is using the
/// space),
/// `SWAPPER_STATUS_INVALID_ARGUMENT` (element counts differ, misaligned source),
/// `SWAPPER_STATUS_NULL_POINTER`, `SWAPPER_STATUS_IO_ERROR`.
///
/// # Safety
/// Each array must be NULL or hold `count` entries; each `src_fp32[i]` must be valid for
/// reading `numels[i]` floats.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_swap_out_partitioned(
    swapper: *mut Swapper,
    dst_param_ids: *const u64,
    src_fp32: *const *const f32,
    numels: *const u64,
    count: usize,
) -> Status {
    crate::ffi_boundary!("swapper_swap_out_partitioned", {
        let s = handle(swapper)?;
        // SAFETY: the caller's contract for all three arrays.
        let (ids, srcs, numels) = unsafe {
            (
                arg_slice(dst_param_ids, count, "dst_param_ids")?,
                arg_slice(src_fp32, count, "src_fp32")?,
                arg_slice(numels, count, "numels")?,
            )
        };
        let mut slices: Vec<&[f32]> = Vec::with_capacity(count);
        for (i, (&p, &n)) in srcs.iter().zip(numels).enumerate() {
            if n == 0 {
                slices.push(&[]);
                continue;
            }
            if p.is_null() {
                return Err(Error::new(Status::NullPointer, format!("src_fp32[{i}] is NULL")));
            }
            if (p as usize) % std::mem::align_of::<f32>() != 0 {
                return Err(Error::invalid(format!("src_fp32[{i}] is not aligned for float")));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|n| n.checked_mul(4).is_some_and(|b| b <= isize::MAX as usize))
                .ok_or_else(|| Error::invalid(format!("numels[{i}] is too large")))?;
            // SAFETY: the caller's contract; alignment and size checked above.
            slices.push(unsafe { crate::sys::alloc::borrow_f32(p, n) });
        }
        s.swap_out_partitioned(ids, &slices)
    })
}

/// Stores the swapper's bookkeeping in `*out`. Thread-safe.
///
/// After a failure `*out` is all zeros (every out-parameter is neutral after a failure).
///
/// # Safety
/// `out` must be NULL or valid for writing one `SwapperStats`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_stats(swapper: *const Swapper, out: *mut Stats) -> Status {
    crate::ffi_boundary!("swapper_stats", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) };
        let s = handle(swapper)?;
        // SAFETY: the caller's contract.
        unsafe { write_out(out, "out", s.stats()) }
    })
}

/// Elements per pool buffer (`buffer_numel` of the configuration); 0 for a NULL or dead
/// handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_buffer_numel(swapper: *const Swapper) -> u64 {
    getter("swapper_buffer_numel", swapper, 0, |s| s.buffer_numel())
}

/// Elements the partitioned swap space holds (the sum of the io-aligned numels given to
/// `swapper_reserve_partitioned_swap_space`); 0 before a reservation and for a NULL or
/// dead handle. Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_partitioned_swap_capacity(swapper: *const Swapper) -> u64 {
    getter("swapper_partitioned_swap_capacity", swapper, 0, |s| {
        s.partitioned_swap_capacity()
    })
}

/// Buffers in the pool (`buffer_count` of the configuration); 0 for a NULL or dead handle.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_buffer_count(swapper: *const Swapper) -> u32 {
    getter("swapper_buffer_count", swapper, 0, |s| s.config().buffer_count)
}

/// Bytes per element of the swapper's dtype (4 or 2); 0 for a NULL or dead handle.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_element_size(swapper: *const Swapper) -> u32 {
    getter("swapper_element_size", swapper, 0, |s| s.element_size() as u32)
}

/// Writes a human-readable dump of the swapper's state (settings, counters, every param)
/// into `buffer` (`capacity` bytes, NUL-terminated, cut short if needed) and stores the
/// full length, without the NUL, in `*out_len` (if not NULL): call with capacity 0 to ask
/// the size. DeepSpeed's `print_object`. Thread-safe.
///
/// After a failure `*out_len` is 0 and `buffer` (capacity > 0) holds "" (every out-parameter
/// is neutral after a failure).
///
/// # Safety
/// `buffer` must be NULL or valid for writing `capacity` bytes; `out_len` NULL or valid.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn swapper_dump(
    swapper: *const Swapper,
    buffer: *mut libc::c_char,
    capacity: usize,
    out_len: *mut usize,
) -> Status {
    crate::ffi_boundary!("swapper_dump", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out_len) };
        if !buffer.is_null() && capacity > 0 {
            // SAFETY: capacity > 0 bytes are writable (the caller's contract): "" until done.
            unsafe { buffer.write(0) };
        }
        let s = handle(swapper)?;
        let text = s.dump();
        if buffer.is_null() && capacity > 0 {
            return Err(Error::new(
                Status::NullPointer,
                "buffer is NULL but capacity is not 0",
            ));
        }
        if capacity > 0 {
            let n = text.len().min(capacity - 1);
            // SAFETY: n + 1 <= capacity bytes; the caller's contract.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), buffer as *mut u8, n);
                buffer.add(n).write(0);
            }
        }
        // SAFETY: the caller's contract.
        unsafe { write_opt(out_len, text.len()) };
        Ok(())
    })
}

/// Where one piece of a param's bytes lives on disk (see `swapper_param_extents`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SwapperExtent {
    /// The drive: an index into `nvme_paths` (0 with a single `nvme_path`).
    pub drive: u32,
    /// Where the piece starts in the file.
    pub file_offset: u64,
    /// Bytes (the param's bytes, then padding to the 4 KiB alignment in the last piece).
    pub len: u64,
    /// The extent file's absolute path, NUL-terminated (shorter than PATH_MAX, which the
    /// swapper checks at creation).
    pub path: [libc::c_char; 4096],
}

/// Where param `id`'s bytes are on disk: its pieces in order (one per drive it is split
/// over; a small param has one), each an extent file shared with other params, an offset
/// and a length. Writes up to `capacity` of them to `out` and the param's total number of
/// pieces to `*out_count` (0 when the param is not on disk yet): call with capacity 0 to
/// ask the count. Thread-safe; a snapshot (a later swap-out may move a param whose file
/// was found damaged).
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` (`out_count` NULL, or `out` NULL with a capacity);
/// `SWAPPER_STATUS_NOT_FOUND` (unknown id); `SWAPPER_STATUS_INVALID_ARGUMENT` (a dead
/// handle). After a failure `*out_count` is 0 (when not NULL) and no entry of `out` is
/// valid.
///
/// # Safety
/// `out` must be NULL or valid for writing `capacity` `SwapperExtent`s; `out_count` valid.
#[no_mangle]
pub unsafe extern "C" fn swapper_param_extents(
    swapper: *const Swapper,
    id: u64,
    out: *mut SwapperExtent,
    capacity: usize,
    out_count: *mut usize,
) -> Status {
    crate::ffi_boundary!("swapper_param_extents", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out_count) };
        let s = handle(swapper)?;
        if out_count.is_null() {
            return Err(Error::new(Status::NullPointer, "out_count is NULL"));
        }
        if out.is_null() && capacity > 0 {
            return Err(Error::new(
                Status::NullPointer,
                "out is NULL but capacity is not 0",
            ));
        }
        s.param_status(id)?;
        let extents = s.param_locations(id);
        for (k, e) in extents.iter().take(capacity).enumerate() {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(e.path.as_os_str());
            let mut x = SwapperExtent {
                drive: e.drive as u32,
                file_offset: e.file_offset,
                len: e.len,
                path: [0; 4096],
            };
            let n = bytes.len().min(x.path.len() - 1);
            for (d, &b) in x.path.iter_mut().zip(&bytes[..n]) {
                *d = b as libc::c_char;
            }
            // SAFETY: k < capacity: the caller's contract.
            unsafe { out.add(k).write(x) };
        }
        // SAFETY: checked non-NULL; the caller's contract.
        unsafe { out_count.write(extents.len()) };
        Ok(())
    })
}

/// How many `Swapper` handles are live in this process (for leak checks). Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_live_handles() -> u64 {
    HANDLES.len() as u64
}
