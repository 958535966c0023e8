"""Finding and loading libswapper.so, and the ctypes prototypes of every function of
include/swapper.h (keep the two in step: tests/test_lib.py checks that every function
of the header is declared here)."""

import ctypes
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)

ENV_VAR = "SWAPPER_LIBRARY"
LIB_NAME = "libswapper.so"

# C enums are ints.
c_status = c_int
c_enum = c_int


class IoConfigStruct(Structure):
    _fields_ = [
        ("block_size", c_uint64),
        ("queue_depth", c_uint32),
        ("thread_count", c_uint32),
        ("single_submit", ctypes.c_uint8),  # 0 false, non-zero true
        ("overlap_events", ctypes.c_uint8),
        ("backend", c_enum),
        ("direct_io", c_enum),
    ]


LogCallback = CFUNCTYPE(None, c_enum, c_char_p, c_void_p)
AllocFn = CFUNCTYPE(c_void_p, c_uint64, c_uint64, c_void_p)
FreeFn = CFUNCTYPE(None, c_void_p, c_uint64, c_void_p)


class ConfigStruct(Structure):
    _fields_ = [
        ("nvme_path", c_char_p),
        ("rank", c_uint32),
        ("dtype", c_enum),
        ("buffer_count", c_uint32),
        ("buffer_numel", c_uint64),
        ("pin_memory", ctypes.c_uint8),  # 0 false, non-zero true
        ("verify_checksums", ctypes.c_uint8),
        ("io", IoConfigStruct),
        ("alloc_fn", AllocFn),
        ("free_fn", FreeFn),
        ("allocator_user_data", c_void_p),
        ("nvme_paths", POINTER(c_char_p)),
        ("nvme_path_count", c_size_t),
        ("adopt", ctypes.c_uint8),  # 0 false, non-zero true
    ]


class ExtentStruct(Structure):
    _fields_ = [
        ("drive", c_uint32),
        ("file_offset", c_uint64),
        ("len", c_uint64),
        ("path", ctypes.c_char * 4096),
    ]


STATS_FIELDS = (
    "params",
    "pending_reads",
    "pending_writes",
    "inflight_params",
    "inflight_numel",
    "available_params",
    "available_numel",
    "free_buffers",
    "reserved_buffers",
    "total_buffers",
    "bytes_read",
    "bytes_written",
    "read_wait_ns",
    "write_wait_ns",
)


class StatsStruct(Structure):
    _fields_ = [(name, c_uint64) for name in STATS_FIELDS]


class OptimizerConfigStruct(Structure):
    _fields_ = [
        ("nvme_path", c_char_p),
        ("nvme_paths", POINTER(c_char_p)),
        ("nvme_path_count", c_size_t),
        ("rank", c_uint32),
        ("ring_bytes", c_uint64),
        ("read_ahead", c_uint32),
        ("pin_memory", ctypes.c_uint8),  # 0 false, non-zero true
        ("verify_checksums", ctypes.c_uint8),
        ("io", IoConfigStruct),
        ("adopt", ctypes.c_uint8),  # 0 false, non-zero true
        ("flush_at_end_step", ctypes.c_uint8),  # 0 false, non-zero true
    ]


class TensorSpecStruct(Structure):
    _fields_ = [("name", c_char_p), ("numel", c_uint64), ("kind", c_enum)]


OPTIMIZER_STATS_FIELDS = (
    "subgroups",
    "steps",
    "ring_bytes",
    "ring_in_use",
    "ring_peak",
    "read_ahead_peak",
    "bytes_read",
    "bytes_written",
    "read_wait_ns",
    "write_wait_ns",
    "adopted_waiting",
)


class OptimizerStatsStruct(Structure):
    _fields_ = [(name, c_uint64) for name in OPTIMIZER_STATS_FIELDS] + [("ring_locked", ctypes.c_uint8)]


# swapper_optimizer_next_ready's sub-group when the step has none left.
OPTIMIZER_NONE = 0xFFFFFFFF


_p = c_void_p  # opaque handles (SwapperIo *, Swapper *)
_u64p = POINTER(c_uint64)

# name: (restype, argtypes), in the header's order.
PROTOTYPES = {
    "swapper_alloc_aligned": (c_status, [c_uint64, c_bool, POINTER(c_void_p)]),
    "swapper_free_aligned": (None, [c_void_p]),
    "swapper_is_locked": (c_bool, [c_void_p]),
    "swapper_allocation_locked": (c_int, [c_void_p, c_uint64]),
    "swapper_memory_retain": (c_status, [c_void_p, c_uint64]),
    "swapper_memory_release": (c_status, [c_void_p]),
    "swapper_version": (c_char_p, []),
    "swapper_last_error": (c_char_p, []),
    "swapper_status_name": (c_char_p, [c_status]),
    "swapper_set_log_callback": (c_status, [LogCallback, c_void_p, c_enum]),
    "swapper_io_config_default": (None, [POINTER(IoConfigStruct)]),
    "swapper_io_create": (c_status, [POINTER(IoConfigStruct), POINTER(c_void_p)]),
    "swapper_io_destroy": (None, [_p]),
    "swapper_io_pread": (c_status, [_p, c_void_p, c_uint64, c_char_p, c_uint64, c_bool]),
    "swapper_io_pwrite": (c_status, [_p, c_void_p, c_uint64, c_char_p, c_uint64, c_bool]),
    "swapper_io_wait": (c_status, [_p, _u64p]),
    "swapper_io_get_config": (c_status, [_p, POINTER(IoConfigStruct)]),
    "swapper_io_block_size": (c_uint64, [_p]),
    "swapper_io_queue_depth": (c_uint32, [_p]),
    "swapper_io_thread_count": (c_uint32, [_p]),
    "swapper_io_single_submit": (c_bool, [_p]),
    "swapper_io_overlap_events": (c_bool, [_p]),
    "swapper_io_backend": (c_enum, [_p]),
    "swapper_io_direct_io": (c_enum, [_p]),
    "swapper_io_pending": (c_uint64, [_p]),
    "swapper_io_alignment": (c_uint64, []),
    "swapper_io_live_handles": (c_uint64, []),
    "swapper_config_default": (None, [POINTER(ConfigStruct)]),
    "swapper_config_page_locked_bytes": (c_status, [POINTER(ConfigStruct), POINTER(c_uint64)]),
    "swapper_create": (c_status, [POINTER(ConfigStruct), POINTER(c_void_p)]),
    "swapper_create_from_json": (c_status, [c_char_p, c_uint32, c_enum, POINTER(c_void_p)]),
    "swapper_destroy": (None, [_p]),
    "swapper_get_buffer": (c_status, [_p, c_uint64, c_uint64, POINTER(c_void_p)]),
    "swapper_swap_out": (c_status, [_p, _u64p, c_size_t, c_bool]),
    "swapper_swap_out_and_release": (c_status, [_p, _u64p, c_size_t, c_bool, c_bool]),
    "swapper_swap_in": (c_status, [_p, _u64p, c_size_t, c_bool, POINTER(c_void_p)]),
    "swapper_swap_in_buffers": (
        c_status,
        [_p, _u64p, c_size_t, c_bool, POINTER(c_void_p), _u64p],
    ),
    "swapper_swap_into_buffer": (c_status, [_p, c_uint64, c_void_p, c_uint64]),
    "swapper_wait_reads": (c_status, [_p]),
    "swapper_wait_params": (c_status, [_p, _u64p, c_size_t]),
    "swapper_wait_writes": (c_status, [_p]),
    "swapper_flush": (c_status, [_p]),
    "swapper_snapshot": (c_status, [_p, c_char_p]),
    "swapper_restore": (c_status, [c_char_p, POINTER(ConfigStruct)]),
    "swapper_release": (c_status, [_p, _u64p, c_size_t]),
    "swapper_param_status": (c_status, [_p, c_uint64, POINTER(c_enum)]),
    "swapper_param_buffer": (c_status, [_p, c_uint64, POINTER(c_void_p), _u64p]),
    "swapper_available_buffers": (c_uint64, [_p]),
    "swapper_reserve_available_buffers": (
        c_status,
        [_p, POINTER(c_void_p), c_size_t, POINTER(c_size_t)],
    ),
    "swapper_release_reserved_buffers": (c_status, [_p]),
    "swapper_swappable": (c_bool, [_p, c_uint64]),
    "swapper_aligned_numel": (c_uint64, [_p, c_uint64]),
    "swapper_io_aligned_numel": (c_uint64, [_p, c_uint64]),
    "swapper_reserve_partitioned_swap_space": (c_status, [_p, _u64p, c_size_t]),
    "swapper_swap_out_partitioned": (
        c_status,
        [_p, _u64p, POINTER(c_void_p), _u64p, c_size_t],
    ),
    "swapper_stats": (c_status, [_p, POINTER(StatsStruct)]),
    "swapper_element_size": (c_uint32, [_p]),
    "swapper_buffer_numel": (c_uint64, [_p]),
    "swapper_buffer_count": (c_uint32, [_p]),
    "swapper_partitioned_swap_capacity": (c_uint64, [_p]),
    "swapper_dump": (c_status, [_p, POINTER(c_char), c_size_t, POINTER(c_size_t)]),
    "swapper_param_extents": (c_status, [_p, c_uint64, POINTER(ExtentStruct), c_size_t, POINTER(c_size_t)]),
    "swapper_live_handles": (c_uint64, []),
    "swapper_optimizer_config_default": (None, [POINTER(OptimizerConfigStruct)]),
    "swapper_optimizer_create": (c_status, [POINTER(OptimizerConfigStruct), POINTER(c_void_p)]),
    "swapper_optimizer_create_from_json": (c_status, [c_char_p, c_uint32, c_uint64, POINTER(c_void_p)]),
    "swapper_optimizer_flush": (c_status, [_p]),
    "swapper_optimizer_snapshot": (c_status, [_p, c_char_p]),
    "swapper_optimizer_restore": (c_status, [c_char_p, POINTER(OptimizerConfigStruct)]),
    "swapper_optimizer_destroy": (None, [_p]),
    "swapper_optimizer_register": (c_status, [_p, c_uint32, POINTER(TensorSpecStruct), c_size_t]),
    "swapper_optimizer_purge": (c_status, [_p]),
    "swapper_optimizer_begin_step": (c_status, [_p, POINTER(c_uint32), c_size_t]),
    "swapper_optimizer_next_ready": (
        c_status,
        [_p, POINTER(c_uint32), POINTER(c_void_p), c_size_t, POINTER(c_size_t)],
    ),
    "swapper_optimizer_tensor": (c_status, [_p, c_uint32, c_size_t, POINTER(c_void_p), _u64p]),
    "swapper_optimizer_hand_back": (c_status, [_p, c_uint32]),
    "swapper_optimizer_discard": (c_status, [_p, c_uint32]),
    "swapper_optimizer_end_step": (c_status, [_p]),
    "swapper_optimizer_swap_out_gradients": (
        c_status,
        [_p, c_uint32, c_size_t, _u64p, POINTER(c_void_p), _u64p, c_size_t],
    ),
    "swapper_optimizer_wait_gradients": (c_status, [_p]),
    "swapper_optimizer_swap_out_params": (
        c_status,
        [_p, c_uint32, c_size_t, _p, _u64p, _u64p, c_size_t],
    ),
    "swapper_optimizer_stats": (c_status, [_p, POINTER(OptimizerStatsStruct)]),
    "swapper_optimizer_live_handles": (c_uint64, []),
}


class LibraryNotFoundError(OSError):
    """libswapper.so could not be found or loaded; the message names every place tried."""

    def __init__(self, message, tried):
        super().__init__(message)
        self.tried = tried


def candidate_paths():
    """The places searched for libswapper.so, in order. With SWAPPER_LIBRARY set, that
    path only: an explicit choice never silently falls back to another copy."""
    env = os.environ.get(ENV_VAR)
    if env:
        return [(f"${ENV_VAR}", env)]
    here = os.path.dirname(os.path.abspath(__file__))
    python_dir = os.path.dirname(here)
    return [
        ("next to the package", os.path.join(here, LIB_NAME)),
        ("crate release build", os.path.normpath(os.path.join(python_dir, "..", "target", "release", LIB_NAME))),
        ("crate debug build", os.path.normpath(os.path.join(python_dir, "..", "target", "debug", LIB_NAME))),
    ]


def _declare(lib):
    for name, (restype, argtypes) in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def load_library():
    """Loads libswapper (uncached) and declares every prototype; raises
    LibraryNotFoundError naming every place tried."""
    tried = []
    for where, path in candidate_paths():
        if not os.path.exists(path):
            tried.append(f"{path} ({where}): no such file")
            continue
        try:
            return _declare(ctypes.CDLL(path))
        except (OSError, AttributeError) as e:
            tried.append(f"{path} ({where}): {e}")
    hint = (
        f"set {ENV_VAR} to the path of libswapper.so, copy it into the swapper package "
        "folder, or run `cargo build --release --lib` in the crate"
    )
    raise LibraryNotFoundError(
        "libswapper.so could not be loaded; looked in:\n  " + "\n  ".join(tried) + "\n" + hint,
        tried,
    )


_lib = None
_lock = threading.Lock()


def lib():
    """The loaded library (loaded on first use)."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                _lib = load_library()
    return _lib
