//! `SwapperOptimizer`: the optimizer-state swapper handle.

use std::sync::LazyLock;

use super::boundary::{arg_path, arg_ref, arg_slice, arg_str, clear_out, write_opt, write_out, Registry};
use super::io::{flag_is_set, SwapperIoConfig};
use super::swapper::Swapper;
use crate::config::IoConfig;
use crate::optimizer::{OptimizerSettings, OptimizerStats, OptimizerSwapper as Core, TensorKind, TensorSpec};
use crate::status::{Error, Result, Status};

/// A `SwapperTensorKind` as C stores it (see `StatusCode` in common.rs).
pub type TensorKindCode = i32;

/// What `swapper_optimizer_next_ready` stores in `*out_subgroup` when every sub-group of
/// the step has been handed out.
pub const SWAPPER_OPTIMIZER_NONE: u32 = u32::MAX;

/// An optimizer-state swapper: the fp32 master params, optimizer moments and gradients of
/// ZeRO-Infinity's optimizer offload, in sub-groups, on NVMe, stepped through a bounded
/// ring of page-locked memory. Create with `swapper_optimizer_create`, destroy with
/// `swapper_optimizer_destroy`. Every function taking one is thread-safe; the step calls
/// (`begin_step`, `next_ready`, `hand_back`, `end_step`) are meant for one thread at a
/// time, and two threads may each take and hand back sub-groups of the same step.
/// Nothing is ever called back from the library's I/O threads: the pipeline advances
/// inside these calls. A bug striking inside a call (a Rust panic) makes it return
/// `SWAPPER_STATUS_PANIC`; the handle is then either fully usable (what the call claimed
/// was recorded or undone: nothing stays stuck, the files keep a good state) or broken,
/// when the panic struck in the middle of a change of its bookkeeping: every later call
/// returns `SWAPPER_STATUS_PANIC` and only `swapper_optimizer_destroy` works.
pub struct SwapperOptimizer {
    _opaque: [u8; 0],
}

/// The optimizer swapper's settings. Fill with `swapper_optimizer_config_default`, then
/// set `nvme_path` (or `nvme_paths`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SwapperOptimizerConfig {
    /// Root folder of the swap files (DeepSpeed `offload_optimizer.nvme_path`): the files
    /// go to `<nvme_path>/zero_stage_3/optimizer/rank<R>/`. Ignored when `nvme_paths` is
    /// set. Borrowed during `swapper_optimizer_create` only.
    pub nvme_path: *const libc::c_char,
    /// Several drives' folders (`nvme_path_count` strings), each with its own rank
    /// folder and queue; NULL to use `nvme_path`. Borrowed during create only.
    pub nvme_paths: *const *const libc::c_char,
    /// Entries of `nvme_paths`.
    pub nvme_path_count: usize,
    /// This process's rank. Default 0.
    pub rank: u32,
    /// Bytes of the ring of page-locked buffers the step runs in: at least the largest
    /// sub-group's bytes (each tensor rounded up to 4096); twice that lets the next
    /// sub-group's read overlap this one's step. Default 1 GiB.
    pub ring_bytes: u64,
    /// Most sub-groups read ahead of the caller; 0 (the default): as many as the ring holds.
    pub read_ahead: u32,
    /// Page-lock the ring. Default 1. A one-byte flag: 0 is false, any other value true.
    pub pin_memory: u8,
    /// Keep a crc32c of every tensor written (of every gradient fragment) and check it on
    /// every read; a mismatch is `SWAPPER_STATUS_CORRUPT_DATA`. Default 0.
    pub verify_checksums: u8,
    /// The I/O engine's settings (DeepSpeed `aio`).
    pub io: SwapperIoConfig,
    /// Adopt the rank folders instead of emptying them: the state the last
    /// `swapper_optimizer_flush` made durable. The manifest and the files' sizes are
    /// checked at create (and each state tensor's crc32c when the manifest has one: every
    /// such tensor is read back); each sub-group takes up its tensors when it is registered
    /// again with the same tensors (a different name or numel is
    /// `SWAPPER_STATUS_INVALID_ARGUMENT` naming the tensor and the file). Gradients are
    /// not kept (they read as zeros). Errors at create as `swapper_create` with `adopt`;
    /// nothing is removed on a mismatch. Default 0 (the folders are emptied). A one-byte
    /// flag: 0 is false, any other value true.
    pub adopt: u8,
    /// Flush at the end of every step: `swapper_optimizer_end_step`, once every write of
    /// the step is done, makes the state durable as `swapper_optimizer_flush` does, and a
    /// flush that fails is one of the failures it returns (`SWAPPER_STATUS_IO_ERROR`
    /// naming the file and errno; the step is ended all the same and the previous
    /// generation stays the durable one). DeepSpeed JSON:
    /// `offload_optimizer.libswapper_flush_at_end_step`. Default 0 (only
    /// `swapper_optimizer_flush` flushes). A one-byte flag: 0 is false, any other value
    /// true.
    pub flush_at_end_step: u8,
}

/// One tensor of a sub-group, as `swapper_optimizer_register` takes it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SwapperTensorSpec {
    /// Its name, unique in the sub-group (NUL-terminated; borrowed for the call).
    pub name: *const libc::c_char,
    /// fp32 elements, at least 1.
    pub numel: u64,
    /// `SWAPPER_TENSOR_KIND_STATE` or `SWAPPER_TENSOR_KIND_GRADIENT`.
    pub kind: TensorKindCode,
}

impl TryFrom<&SwapperOptimizerConfig> for OptimizerSettings {
    type Error = Error;
    fn try_from(c: &SwapperOptimizerConfig) -> Result<OptimizerSettings> {
        let nvme_paths = if c.nvme_paths.is_null() {
            // SAFETY: the caller of swapper_optimizer_create promises a string or NULL.
            vec![unsafe { arg_path(c.nvme_path, "config->nvme_path") }?]
        } else {
            // SAFETY: as above, for the array and its strings.
            let ptrs = unsafe { arg_slice(c.nvme_paths, c.nvme_path_count, "config->nvme_paths") }?;
            if ptrs.is_empty() {
                return Err(Error::invalid("config->nvme_path_count is 0"));
            }
            ptrs.iter()
                .enumerate()
                // SAFETY: as above.
                .map(|(i, &p)| unsafe { arg_path(p, &format!("config->nvme_paths[{i}]")) })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(OptimizerSettings {
            nvme_paths,
            rank: c.rank,
            ring_bytes: c.ring_bytes,
            read_ahead: c.read_ahead,
            pin_memory: flag_is_set(c.pin_memory),
            verify_checksums: flag_is_set(c.verify_checksums),
            io: IoConfig::try_from(&c.io)?,
            adopt: flag_is_set(c.adopt),
            flush_at_end_step: flag_is_set(c.flush_at_end_step),
        })
    }
}

static HANDLES: LazyLock<Registry<Core>> = LazyLock::new(|| Registry::new("SwapperOptimizer handle", 3));

fn handle(h: *const SwapperOptimizer) -> Result<std::sync::Arc<Core>> {
    HANDLES.get(h as usize)
}

/// Fills `*out` with the defaults: no nvme_path, rank 0, a ring of 1 GiB, read-ahead as
/// the ring allows, pinned, checksums off, the engine's defaults. NULL is ignored.
/// Thread-safe.
///
/// # Safety
/// `out` must be NULL or valid for writing one `SwapperOptimizerConfig`.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_config_default(out: *mut SwapperOptimizerConfig) {
    let d = OptimizerSettings::default();
    let c = SwapperOptimizerConfig {
        nvme_path: std::ptr::null(),
        nvme_paths: std::ptr::null(),
        nvme_path_count: 0,
        rank: d.rank,
        ring_bytes: d.ring_bytes,
        read_ahead: d.read_ahead,
        pin_memory: u8::from(d.pin_memory),
        verify_checksums: u8::from(d.verify_checksums),
        io: SwapperIoConfig::from(&d.io),
        adopt: u8::from(d.adopt),
        flush_at_end_step: u8::from(d.flush_at_end_step),
    };
    // SAFETY: the caller's contract.
    unsafe { write_opt(out, c) }
}

/// Creates an optimizer swapper with `*config` and stores its handle in `*out`; the caller
/// owns it and frees it with `swapper_optimizer_destroy`. Opens (creates, mode 0700, and
/// locks) the rank folder on every drive and allocates the ring. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER` (config, out or the path NULL),
/// `SWAPPER_STATUS_INVALID_ARGUMENT` (a setting out of range, ring_bytes under 4096, a
/// path that is not a folder), `SWAPPER_STATUS_NOT_FOUND` (a path missing),
/// `SWAPPER_STATUS_BUSY` (another handle holds the rank folder),
/// `SWAPPER_STATUS_OUT_OF_MEMORY` (the ring cannot be allocated, or page-locked within
/// the limits), `SWAPPER_STATUS_IO_ERROR`. After a failure `*out` is NULL (every
/// out-parameter is neutral after a failure).
///
/// # Safety
/// `config` must be NULL or point to a `SwapperOptimizerConfig` whose strings are NULL or
/// NUL-terminated (and whose `nvme_paths`, if not NULL, holds `nvme_path_count` of them);
/// `out` must be NULL or valid for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_create(
    config: *const SwapperOptimizerConfig,
    out: *mut *mut SwapperOptimizer,
) -> Status {
    crate::ffi_boundary!("swapper_optimizer_create", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) };
        // SAFETY: the caller's contract.
        let c = unsafe { arg_ref(config, "config") }?;
        if out.is_null() {
            return Err(Error::new(Status::NullPointer, "out is NULL"));
        }
        let core = Core::new(OptimizerSettings::try_from(c)?)?;
        let key = HANDLES.insert(core);
        // SAFETY: checked non-NULL; the caller's contract.
        unsafe { write_out(out, "out", key as *mut SwapperOptimizer) }
    })
}

/// Creates an optimizer swapper from a DeepSpeed configuration (JSON text): the `aio`
/// block and `zero_optimization.offload_optimizer` (device, nvme_path as a string or a
/// list, buffer_count, pipeline_read, pipeline_write, fast_init, pin_memory), with
/// DeepSpeed's defaults for missing keys. The ring is `buffer_count` x the bytes of the
/// largest tensor of any sub-group (`largest_numel` elements, as DeepSpeed sizes its swap
/// buffers; 0 takes `zero_optimization.sub_group_size`), or
/// `offload_optimizer.ring_bytes` when that (libswapper's own key) is set;
/// `pipeline_read` true reads as many sub-groups ahead as the ring holds, false one.
/// libswapper's keys `offload_optimizer.libswapper_adopt` and
/// `offload_optimizer.libswapper_flush_at_end_step` (booleans, default false) set the
/// config's `adopt` and `flush_at_end_step`.
/// Ownership and thread-safety as `swapper_optimizer_create`.
///
/// Errors: as `swapper_optimizer_create`, plus `SWAPPER_STATUS_INVALID_ARGUMENT` for text
/// that is not JSON, a key of the wrong type (the message names it), a device other than
/// "nvme", a missing nvme_path, or no way to size the ring. On failure `*out` is NULL.
///
/// # Safety
/// `deepspeed_config_json` must be NULL or a NUL-terminated string; `out` must be NULL or
/// valid for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_create_from_json(
    deepspeed_config_json: *const libc::c_char,
    rank: u32,
    largest_numel: u64,
    out: *mut *mut SwapperOptimizer,
) -> Status {
    // SAFETY: the caller's contract.
    unsafe { write_opt(out, std::ptr::null_mut()) };
    crate::ffi_boundary!("swapper_optimizer_create_from_json", {
        // SAFETY: the caller's contract.
        let text = unsafe { arg_str(deepspeed_config_json, "deepspeed_config_json") }?;
        if out.is_null() {
            return Err(Error::new(Status::NullPointer, "out is NULL"));
        }
        let core = Core::new(OptimizerSettings::from_deepspeed_json(text, rank, largest_numel)?)?;
        let key = HANDLES.insert(core);
        // SAFETY: checked non-NULL; the caller's contract.
        unsafe { write_out(out, "out", key as *mut SwapperOptimizer) }
    })
}

/// Destroys an optimizer swapper: waits for every read and write in flight, frees the
/// ring, unlocks the folders (the files stay). NULL is ignored; a handle that is not live
/// is reported through the last error and otherwise ignored. Pointers from
/// `swapper_optimizer_next_ready` must not be used afterwards; data of a failed
/// write-behind that was never written again is lost. Thread-safe as
/// `swapper_destroy`: when it returns, no I/O of the handle touches memory any more.
#[no_mangle]
pub extern "C" fn swapper_optimizer_destroy(optimizer: *mut SwapperOptimizer) {
    if optimizer.is_null() {
        return;
    }
    let _ = crate::ffi_boundary!("swapper_optimizer_destroy", {
        HANDLES.destroy(optimizer as usize, |o| o.store().close())
    });
}

/// Registers sub-group `subgroup` with `count` tensors: reserves their space in the
/// store; every tensor reads back as zeros until written (the file system provides the
/// zeros: none go through the CPU). The names are copied. Thread-safe; refused during a
/// step only for the sub-groups in it.
///
/// Errors: `SWAPPER_STATUS_BAD_STATE` (already registered), `SWAPPER_STATUS_INVALID_ARGUMENT`
/// (no tensors, an empty or repeated name, numel 0, an unknown kind),
/// `SWAPPER_STATUS_NO_BUFFER` (the sub-group is larger than the ring: the message names
/// the ring_bytes that would fit), `SWAPPER_STATUS_NULL_POINTER`, `SWAPPER_STATUS_IO_ERROR`
/// (no space on a drive: nothing stays registered).
///
/// # Safety
/// `tensors` must be NULL or point to `count` specs whose names are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_register(
    optimizer: *mut SwapperOptimizer,
    subgroup: u32,
    tensors: *const SwapperTensorSpec,
    count: usize,
) -> Status {
    crate::ffi_boundary!("swapper_optimizer_register", {
        let o = handle(optimizer)?;
        // SAFETY: the caller's contract.
        let raw = unsafe { arg_slice(tensors, count, "tensors") }?;
        let specs = raw
            .iter()
            .enumerate()
            .map(|(k, t)| {
                Ok(TensorSpec {
                    // SAFETY: the caller's contract.
                    name: unsafe { arg_str(t.name, &format!("tensors[{k}].name")) }?.to_string(),
                    numel: t.numel,
                    kind: TensorKind::from_c(t.kind)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        o.register(subgroup, &specs)
    })
}

/// Forgets every sub-group and frees its space (DeepSpeed's `purge_state`). Refused
/// during a step and while gradient writes are in flight. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_BAD_STATE`, `SWAPPER_STATUS_BUSY` (a registration under way).
#[no_mangle]
pub extern "C" fn swapper_optimizer_purge(optimizer: *mut SwapperOptimizer) -> Status {
    crate::ffi_boundary!("swapper_optimizer_purge", { handle(optimizer)?.purge() })
}

/// Starts a step that visits `order[0..count]` (registered sub-groups, each at most once,
/// in any order). Waits for gradient writes first (their failures are returned here and
/// the step does not start), then queues the first reads. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_BAD_STATE` (a step is under way), `SWAPPER_STATUS_NOT_FOUND`
/// (an unknown sub-group), `SWAPPER_STATUS_INVALID_ARGUMENT` (a sub-group twice),
/// `SWAPPER_STATUS_IO_ERROR` (a gradient write failed), `SWAPPER_STATUS_NULL_POINTER`.
///
/// # Safety
/// `order` must be NULL or point to `count` values.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_begin_step(
    optimizer: *mut SwapperOptimizer,
    order: *const u32,
    count: usize,
) -> Status {
    crate::ffi_boundary!("swapper_optimizer_begin_step", {
        let o = handle(optimizer)?;
        // SAFETY: the caller's contract.
        let order = unsafe { arg_slice(order, count, "order") }?;
        o.begin_step(order)
    })
}

/// Takes the next sub-group of the step's order once its reads are done (and checked):
/// stores its number in `*out_subgroup`, the address of each of its tensors (fp32, in
/// registration order, at most `capacity` of them) in `out_tensors`, and its tensor count
/// in `*out_count`. The tensors are the swapper's memory, zero-copy: compute in place,
/// then hand the sub-group back with `swapper_optimizer_hand_back`; the addresses are
/// valid until then. With every sub-group of the step handed out, `*out_subgroup` is
/// `SWAPPER_OPTIMIZER_NONE` and `*out_count` 0. Blocks until the reads are done. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_BAD_STATE` (no step), `SWAPPER_STATUS_NO_BUFFER` (the ring is
/// held by sub-groups the caller keeps: hand one back), `SWAPPER_STATUS_IO_ERROR` or
/// `SWAPPER_STATUS_CORRUPT_DATA` (the sub-group's read failed, or a file was truncated or
/// replaced: the message names the sub-group, the tensor, the file and the offset; the
/// sub-group is skipped for this step, its files unchanged, and the next call goes on with
/// the one after it), `SWAPPER_STATUS_NULL_POINTER`. After a failure `*out_subgroup` is
/// `SWAPPER_OPTIMIZER_NONE` and `*out_count` 0 (when the pointers are not NULL).
///
/// # Safety
/// `out_subgroup` and `out_count` must be NULL or valid for writing; `out_tensors` must be
/// NULL (with `capacity` 0) or valid for writing `capacity` pointers.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_next_ready(
    optimizer: *mut SwapperOptimizer,
    out_subgroup: *mut u32,
    out_tensors: *mut *mut f32,
    capacity: usize,
    out_count: *mut usize,
) -> Status {
    // SAFETY: the caller's contract.
    unsafe {
        write_opt(out_subgroup, SWAPPER_OPTIMIZER_NONE);
        write_opt(out_count, 0);
    }
    let (subgroup_at, count_at, tensors_at) =
        (out_subgroup as usize, out_count as usize, out_tensors as usize);
    crate::ffi_boundary!("swapper_optimizer_next_ready", {
        let (out_subgroup, out_count, out_tensors) = (
            subgroup_at as *mut u32,
            count_at as *mut usize,
            tensors_at as *mut *mut f32,
        );
        if out_subgroup.is_null() || out_count.is_null() {
            return Err(Error::new(
                Status::NullPointer,
                "out_subgroup or out_count is NULL",
            ));
        }
        if out_tensors.is_null() && capacity > 0 {
            return Err(Error::new(
                Status::NullPointer,
                "out_tensors is NULL but capacity is not 0",
            ));
        }
        let o = handle(optimizer)?;
        let Some(visit) = o.next_ready()? else {
            return Ok(());
        };
        let n = visit.len();
        let ptrs: Vec<*mut f32> = (0..n).map(|k| visit.raw(k).0 as *mut f32).collect();
        let index = visit.into_index();
        // SAFETY: checked non-NULL; the caller's contract for `capacity` entries.
        unsafe {
            for (k, p) in ptrs.into_iter().take(capacity).enumerate() {
                out_tensors.add(k).write(p);
            }
            out_count.write(n);
            out_subgroup.write(index);
        }
        Ok(())
    })
}

/// The address and element count of tensor `tensor` of sub-group `subgroup`, which must
/// be out with the caller (taken by `swapper_optimizer_next_ready`, not yet handed back).
/// Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NOT_FOUND`, `SWAPPER_STATUS_BAD_STATE` (not out),
/// `SWAPPER_STATUS_INVALID_ARGUMENT` (no such tensor), `SWAPPER_STATUS_NULL_POINTER`.
/// After a failure `*out_buffer` is NULL and `*out_numel` 0 (when not NULL).
///
/// # Safety
/// `out_buffer` must be NULL or valid for writing one pointer, `out_numel` NULL or valid
/// for writing one value.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_tensor(
    optimizer: *mut SwapperOptimizer,
    subgroup: u32,
    tensor: usize,
    out_buffer: *mut *mut f32,
    out_numel: *mut u64,
) -> Status {
    crate::ffi_boundary!("swapper_optimizer_tensor", {
        // SAFETY: the caller's contract.
        unsafe {
            clear_out(out_buffer);
            clear_out(out_numel);
        }
        let o = handle(optimizer)?;
        if out_buffer.is_null() {
            return Err(Error::new(Status::NullPointer, "out_buffer is NULL"));
        }
        let (buf, numel) = o.out_tensor(subgroup, tensor)?;
        // SAFETY: the caller's contract.
        unsafe {
            write_out(out_buffer, "out_buffer", buf.0 as *mut f32)?;
            write_opt(out_numel, numel);
        }
        Ok(())
    })
}

/// Hands sub-group `subgroup` back: queues the write-behind of its state tensors (not its
/// gradients) and returns at once. Its tensor addresses must not be used afterwards.
/// Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NOT_FOUND` (unknown sub-group), `SWAPPER_STATUS_BAD_STATE` (not
/// out with the caller: never taken, or handed back twice; no step),
/// `SWAPPER_STATUS_BUSY` (`swapper_optimizer_swap_out_params` on it runs in another
/// thread), `SWAPPER_STATUS_IO_ERROR` (a write could not be queued: the new state stays in
/// the ring and is written again at the sub-group's next visit; `end_step` reports it too),
/// `SWAPPER_STATUS_PANIC` (a bug struck inside the call: when the handle is not broken, the
/// sub-group is either handed back, its new state kept in memory until written, or still
/// out when nothing was queued; call `hand_back` again, which answers
/// `SWAPPER_STATUS_BAD_STATE` if it already was).
#[no_mangle]
pub extern "C" fn swapper_optimizer_hand_back(optimizer: *mut SwapperOptimizer, subgroup: u32) -> Status {
    crate::ffi_boundary!("swapper_optimizer_hand_back", {
        let o = handle(optimizer)?;
        // SAFETY: the C caller promises (this function's documentation) not to use the
        // sub-group's addresses afterwards.
        unsafe { o.hand_back_index(subgroup) }
    })
}

/// Ends the visit of sub-group `subgroup` without writing it: its files keep the state
/// they had before the step (the caller's changes are dropped). Its tensor addresses must
/// not be used afterwards. Thread-safe.
///
/// Errors: as `swapper_optimizer_hand_back`, without the I/O error.
#[no_mangle]
pub extern "C" fn swapper_optimizer_discard(optimizer: *mut SwapperOptimizer, subgroup: u32) -> Status {
    crate::ffi_boundary!("swapper_optimizer_discard", {
        let o = handle(optimizer)?;
        // SAFETY: as swapper_optimizer_hand_back.
        unsafe { o.discard_index(subgroup) }
    })
}

/// Ends the step: waits for every write-behind and for reads queued ahead and never taken;
/// returns the step's failures, all listed in the last error (reads skipped, writes
/// failed, sub-groups of the order never taken). A sub-group whose write failed keeps its
/// new state in the ring and is written again at its next visit; its previous file is
/// never presented as valid. Refused while sub-groups are out with the caller (the step
/// goes on). Blocks. Thread-safe.
///
/// With `flush_at_end_step` set, it then flushes as `swapper_optimizer_flush` does; a
/// failed flush is listed with the step's other failures (the step is ended; the previous
/// generation stays the durable one).
///
/// Errors: `SWAPPER_STATUS_BAD_STATE` (no step; sub-groups still out, named),
/// `SWAPPER_STATUS_IO_ERROR`, `SWAPPER_STATUS_CORRUPT_DATA` (the step ended; the first
/// failure's status).
#[no_mangle]
pub extern "C" fn swapper_optimizer_end_step(optimizer: *mut SwapperOptimizer) -> Status {
    crate::ffi_boundary!("swapper_optimizer_end_step", { handle(optimizer)?.end_step() })
}

/// Makes the optimizer state resumable as of now: call it after
/// `swapper_optimizer_end_step` (between steps). Writes a new generation of the manifest
/// on every drive as `swapper_flush` does (data synced first; write, fsync, rename,
/// fsync the folder), naming every state tensor of every idle sub-group; a sub-group whose
/// last write-behind failed keeps what the previous flush recorded. After a crash at any
/// moment, an optimizer swapper created with `adopt` finds the state of the last flush
/// that returned OK (or of one under way that had reached a drive). Gradients are not
/// recorded. Thread-safe; blocks for the syncs.
///
/// Errors: `SWAPPER_STATUS_BAD_STATE` during a step; `SWAPPER_STATUS_IO_ERROR` naming the
/// file and errno of a sync, write or rename (the previous generation stays the durable
/// one); `SWAPPER_STATUS_INVALID_ARGUMENT` for a handle that is not live;
/// `SWAPPER_STATUS_PANIC` once the handle is broken.
#[no_mangle]
pub extern "C" fn swapper_optimizer_flush(optimizer: *mut SwapperOptimizer) -> Status {
    crate::ffi_boundary!("swapper_optimizer_flush", {
        handle(optimizer)?.flush().map(drop)
    })
}

/// Flushes (as `swapper_optimizer_flush`, between steps), then records that state into
/// the checkpoint folder `dest_folder` as `swapper_snapshot` does: for each drive k,
/// `<dest_folder>/drive<k>/zero_stage_3/optimizer/rank<R>/`, reflinks where the file
/// system shares extents, copies of the recorded ranges otherwise, fsynced, manifest last.
/// `dest_folder` is borrowed for the call, created if missing; its rank folders must be
/// new or empty. Thread-safe; blocks.
///
/// Errors: as `swapper_optimizer_flush`; `SWAPPER_STATUS_NULL_POINTER` for a NULL
/// `dest_folder`; `SWAPPER_STATUS_BAD_STATE` for a destination that is not empty (nothing
/// written); `SWAPPER_STATUS_BUSY` when another handle holds it; `SWAPPER_STATUS_IO_ERROR`
/// naming the file of a copy or sync that failed.
///
/// # Safety
/// `dest_folder` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_snapshot(
    optimizer: *mut SwapperOptimizer,
    dest_folder: *const libc::c_char,
) -> Status {
    crate::ffi_boundary!("swapper_optimizer_snapshot", {
        let o = handle(optimizer)?;
        // SAFETY: the caller's contract.
        let dest = unsafe { arg_path(dest_folder, "dest_folder") }?;
        o.snapshot_to(&dest).map(drop)
    })
}

/// Puts a snapshot made by `swapper_optimizer_snapshot` back into the rank folders
/// `config` names (its nvme_path or nvme_paths and rank; the other fields are ignored),
/// emptying them first (each locked meanwhile); then create an optimizer swapper with the
/// same config and `adopt` set. Nothing is emptied before the snapshot's manifests were
/// read and checked. Both arguments are borrowed for the call. Thread-safe.
///
/// Errors: as `swapper_restore`.
///
/// # Safety
/// `snapshot_folder` must be NULL or a NUL-terminated string; `config` NULL or a valid
/// `SwapperOptimizerConfig` (its strings as `swapper_optimizer_create` requires).
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_restore(
    snapshot_folder: *const libc::c_char,
    config: *const SwapperOptimizerConfig,
) -> Status {
    crate::ffi_boundary!("swapper_optimizer_restore", {
        // SAFETY: the caller's contract.
        let snapshot = unsafe { arg_path(snapshot_folder, "snapshot_folder") }?;
        // SAFETY: the caller's contract.
        let c = unsafe { arg_ref(config, "config") }?;
        Core::restore(&snapshot, &OptimizerSettings::try_from(c)?).map(drop)
    })
}

/// Writes `count` gradient fragments of tensor `tensor` (a `SWAPPER_TENSOR_KIND_GRADIENT`
/// tensor) of sub-group `subgroup`: fragment i is `numels[i]` floats from `data[i]`,
/// written at element `offsets[i]` of the tensor (DeepSpeed's `swap_out_gradients`).
/// The data is copied into the ring and queued; the caller's memory is free again when
/// the call returns. `swapper_optimizer_wait_gradients` (or the next `begin_step`)
/// reports the writes. Refused during a step. The whole call is checked before anything
/// is written. Thread-safe.
///
/// A fragment overwrites the elements it covers (nothing accumulates, as in DeepSpeed,
/// whose fragments are the params' disjoint ranges of the sub-group, written again at the
/// same offsets at every accumulation boundary). It may overlap earlier fragments (written
/// or in flight, or earlier in the same call) only by covering each of them whole, and
/// then replaces them; a fragment overlapping another part-way is refused, so that every
/// element stays covered by exactly one fragment's checksum.
///
/// Errors: `SWAPPER_STATUS_NOT_FOUND`, `SWAPPER_STATUS_BAD_STATE` (during a step),
/// `SWAPPER_STATUS_INVALID_ARGUMENT` (not a gradient tensor, a fragment outside it, a
/// fragment overlapping another part-way: the message names both),
/// `SWAPPER_STATUS_NULL_POINTER`, `SWAPPER_STATUS_IO_ERROR` (a fragment could not be
/// queued; the ones before it are).
///
/// # Safety
/// Each array must be NULL or hold `count` entries; `data[i]` must be valid for reading
/// `numels[i]` floats.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_swap_out_gradients(
    optimizer: *mut SwapperOptimizer,
    subgroup: u32,
    tensor: usize,
    offsets: *const u64,
    data: *const *const f32,
    numels: *const u64,
    count: usize,
) -> Status {
    crate::ffi_boundary!("swapper_optimizer_swap_out_gradients", {
        let o = handle(optimizer)?;
        // SAFETY: the caller's contract for the three arrays.
        let (offsets, data, numels) = unsafe {
            (
                arg_slice(offsets, count, "offsets")?,
                arg_slice(data, count, "data")?,
                arg_slice(numels, count, "numels")?,
            )
        };
        let mut fragments = Vec::with_capacity(count);
        for i in 0..count {
            let n = usize::try_from(numels[i])
                .map_err(|_| Error::invalid(format!("numels[{i}] is too large")))?;
            // SAFETY: the caller's contract for data[i].
            let s = unsafe { arg_slice(data[i], n, &format!("data[{i}]")) }?;
            fragments.push((offsets[i], s));
        }
        o.swap_out_gradients(subgroup, tensor, &fragments)
    })
}

/// Waits for every gradient fragment queued before the call; the failures (sub-group,
/// tensor, file, offset) are returned, all listed in the last error. A failed fragment's
/// tensor cannot be read until the same fragment is written again. Blocks. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_IO_ERROR` and the like, from the writes.
#[no_mangle]
pub extern "C" fn swapper_optimizer_wait_gradients(optimizer: *mut SwapperOptimizer) -> Status {
    crate::ffi_boundary!("swapper_optimizer_wait_gradients", {
        handle(optimizer)?.wait_gradients()
    })
}

/// Writes the new fp32 master params of sub-group `subgroup` (out with the caller, after
/// its step) to the parameter swapper `swapper`, straight from the ring: tensor `tensor`'s
/// first `numels[0]` elements become param `param_ids[0]`, the next `numels[1]` param
/// `param_ids[1]`, and so on, converted to the swapper's dtype in its partitioned space
/// and written over the params' files (`swapper_swap_out_partitioned`'s rules:
/// synchronous; the params NOT_AVAILABLE and swapped out before; the batch fits the space
/// reserved with `swapper_reserve_partitioned_swap_space`). Do not write the tensor
/// meanwhile. Blocks. Thread-safe.
///
/// Errors: `SWAPPER_STATUS_BAD_STATE` (the sub-group is not out; a param in the wrong
/// state), `SWAPPER_STATUS_INVALID_ARGUMENT` (no such tensor, numels adding up to more than
/// it holds, a numel differing from its param's), `SWAPPER_STATUS_NO_BUFFER` (the
/// partitioned space is too small), `SWAPPER_STATUS_NULL_POINTER`, `SWAPPER_STATUS_IO_ERROR`.
///
/// # Safety
/// `param_ids` and `numels` must be NULL or hold `count` entries.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_swap_out_params(
    optimizer: *mut SwapperOptimizer,
    subgroup: u32,
    tensor: usize,
    swapper: *mut Swapper,
    param_ids: *const u64,
    numels: *const u64,
    count: usize,
) -> Status {
    crate::ffi_boundary!("swapper_optimizer_swap_out_params", {
        let o = handle(optimizer)?;
        let s = super::swapper::handle(swapper)?;
        // SAFETY: the caller's contract.
        let (ids, numels) = unsafe {
            (
                arg_slice(param_ids, count, "param_ids")?,
                arg_slice(numels, count, "numels")?,
            )
        };
        o.swap_out_params_of(subgroup, tensor, &s, ids, numels)
    })
}

/// Fills `*out` with the swapper's counters: sub-groups, steps, the ring's bytes (the
/// page-locked memory it holds), its use now and at its peak, the most sub-groups read
/// ahead at once, bytes moved, and the time calls spent blocked on reads and writes.
/// Thread-safe.
///
/// Errors: `SWAPPER_STATUS_NULL_POINTER`; `SWAPPER_STATUS_PANIC` for a broken handle.
/// After a failure `*out` is all zeros (when not NULL).
///
/// # Safety
/// `out` must be NULL or valid for writing one `SwapperOptimizerStats`.
#[no_mangle]
pub unsafe extern "C" fn swapper_optimizer_stats(
    optimizer: *const SwapperOptimizer,
    out: *mut OptimizerStats,
) -> Status {
    crate::ffi_boundary!("swapper_optimizer_stats", {
        // SAFETY: the caller's contract.
        unsafe { clear_out(out) };
        let stats = handle(optimizer)?.stats()?;
        // SAFETY: the caller's contract.
        unsafe { write_out(out, "out", stats) }
    })
}

/// How many optimizer swapper handles are live in the process (for leak checks).
/// Thread-safe.
#[no_mangle]
pub extern "C" fn swapper_optimizer_live_handles() -> u64 {
    HANDLES.len() as u64
}
