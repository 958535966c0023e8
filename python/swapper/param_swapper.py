"""The parameter swapper (Swapper): ZeRO-Infinity parameter offload to NVMe."""

import ctypes
import json
import os
import threading
import warnings
from ctypes import byref, c_int, c_size_t, c_uint64, c_void_p

import numpy as np

from . import _buffers
from ._handle import Handle
from ._args import _ids, _path, _uint
from ._lib import STATS_FIELDS, ConfigStruct, ExtentStruct, StatsStruct, lib
from .enums import ParamStatus, _dtype, numpy_dtype
from .errors import BadStateError, InvalidArgumentError, check
from .io_handle import _IO_KEYS, _fill_io_config
from .memory import _release_retained
from .stats import Stats


def _set_paths(cfg, nvme_path):
    """Puts one path or a list of paths (several drives) into `cfg`; returns what must stay
    alive while `cfg` is used."""
    if isinstance(nvme_path, (list, tuple)):
        # Several drives: one rank folder, lock and I/O queue each.
        if not nvme_path:
            raise InvalidArgumentError("nvme_path is an empty list")
        paths = [_path(p, f"nvme_path[{k}]") for k, p in enumerate(nvme_path)]
        array = (ctypes.c_char_p * len(paths))(*paths)
        cfg.nvme_paths = ctypes.cast(array, ctypes.POINTER(ctypes.c_char_p))
        cfg.nvme_path_count = len(paths)
        return (paths, array)
    path = _path(nvme_path, "nvme_path")
    cfg.nvme_path = path
    return path


class Swapper(Handle):
    """A parameter swapper (ZeRO-Infinity parameter offload to NVMe). Use as a context
    manager or call close(). Thread-safe.

    Pool buffers (get_buffer, param_buffer, reserve_available_buffers) are numpy views
    of the library's memory (float16, float32, or for bf16 ml_dtypes.bfloat16 if
    importable, else uint16): they hold the param's data while the param holds the
    buffer (reserved ones until release_reserved_buffers). A view cannot be revoked, so
    each one keeps its memory mapped (swapper_memory_retain): after close(), a view still
    referenced reads the bytes it had and writes go nowhere (the pool belongs to nobody
    any more); the memory is unmapped when the last view of it is gone. Nothing crashes.

    Param ids, sizes and counts must be integers in [0, 2**64) (InvalidArgumentError
    otherwise: ctypes would wrap them onto other ids); paths must not contain NUL.
    """

    def __init__(
        self,
        nvme_path,
        rank=0,
        dtype="fp16",
        buffer_count=5,
        buffer_numel=100_000_000,
        pin_memory=False,
        verify_checksums=False,
        adopt=False,
        **io,
    ):
        unknown = set(io) - set(_IO_KEYS)
        if unknown:
            raise TypeError(f"unknown I/O settings {sorted(unknown)}; known: {', '.join(_IO_KEYS)}")
        self._lib = lib()
        cfg = ConfigStruct()
        self._lib.swapper_config_default(byref(cfg))
        _keep = _set_paths(cfg, nvme_path)  # noqa: F841 (kept alive through the create)
        cfg.rank = _uint(rank, "rank", 32)
        cfg.dtype = int(_dtype(dtype))
        cfg.adopt = bool(adopt)
        cfg.buffer_count = _uint(buffer_count, "buffer_count", 32)
        cfg.buffer_numel = _uint(buffer_numel, "buffer_numel")
        cfg.pin_memory = bool(pin_memory)
        cfg.verify_checksums = bool(verify_checksums)
        io_defaults = dict(
            block_size=cfg.io.block_size,
            queue_depth=cfg.io.queue_depth,
            thread_count=cfg.io.thread_count,
            single_submit=cfg.io.single_submit,
            overlap_events=cfg.io.overlap_events,
            backend=cfg.io.backend,
            direct_io=cfg.io.direct_io,
        )
        io_defaults.update(io)
        _fill_io_config(cfg.io, **io_defaults)
        handle = c_void_p()
        check(self._lib.swapper_create(byref(cfg), byref(handle)))
        self._setup(handle, _dtype(dtype), cfg.buffer_numel)

    @staticmethod
    def page_locked_bytes(dtype="fp16", buffer_count=5, buffer_numel=100_000_000, pin_memory=False):
        """Bytes a Swapper with these settings would page-lock for its pool, whole pages as
        the kernel counts them (0 when not pinned); creates nothing
        (swapper_config_page_locked_bytes). Creation checks them against the memory cgroup
        and MemAvailable (OutOfMemoryError, saying what fits) and RLIMIT_MEMLOCK (unlocked,
        with a warning)."""
        cfg = ConfigStruct()
        lib().swapper_config_default(byref(cfg))
        cfg.dtype = int(_dtype(dtype))
        cfg.buffer_count = _uint(buffer_count, "buffer_count", 32)
        cfg.buffer_numel = _uint(buffer_numel, "buffer_numel")
        cfg.pin_memory = bool(pin_memory)
        out = c_uint64()
        check(lib().swapper_config_page_locked_bytes(byref(cfg), byref(out)))
        return out.value

    @classmethod
    def from_deepspeed_config(cls, config, rank=0, dtype="fp16"):
        """A swapper from a DeepSpeed configuration: JSON text, a path to a JSON file, or
        a dict (its `aio` block and `zero_optimization.offload_param`)."""
        if isinstance(config, dict):
            text = json.dumps(config)
        elif isinstance(config, bytes):
            text = config.decode()
        elif isinstance(config, str) and config.lstrip().startswith("{"):
            text = config
        else:
            with open(config, encoding="utf-8") as f:
                text = f.read()
        encoded = text.encode()
        if b"\0" in encoded:
            raise InvalidArgumentError("the DeepSpeed configuration contains a NUL character")
        rank = _uint(rank, "rank", 32)
        self = cls.__new__(cls)
        self._lib = lib()
        handle = c_void_p()
        check(self._lib.swapper_create_from_json(encoded, rank, int(_dtype(dtype)), byref(handle)))
        numel = json.loads(text).get("zero_optimization", {}).get("offload_param", {}).get("buffer_size", 100_000_000)
        self._setup(handle, _dtype(dtype), int(numel))
        return self

    def _setup(self, handle, dtype, buffer_numel):
        self._handle = handle
        self.dtype = dtype
        self.numpy_dtype = numpy_dtype(dtype)
        self.buffer_numel = buffer_numel
        self._lock = threading.Lock()
        self._dest = {}  # param id -> caller buffer used as swap-in destination (kept alive)

    # -- lifetime
    def close(self):
        """Waits for I/O in flight, frees the pool, unlocks the folder. Idempotent.
        Views of pool buffers still referenced keep their memory (detached from any
        swapper) until they are gone; see the class documentation."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            self._lib.swapper_destroy(handle)
            self._dest = {}

    def _view(self, address, numel, param_id=None):
        """A numpy view of `numel` elements at `address`: pool memory is retained (kept
        mapped past close()) until the view is gone; a caller's swap-in destination is
        kept alive by the view instead."""
        numel = int(numel)
        nbytes = numel * self.numpy_dtype.itemsize
        if self._lib.swapper_memory_retain(c_void_p(address), nbytes) == 0:
            return _buffers.view(
                address, numel, self.numpy_dtype, owner=self, release=_release_retained, release_at_exit=False
            )
        with self._lock:
            dest = self._dest.get(param_id)
        if dest is None:
            raise BadStateError(f"{nbytes} bytes at {address:#x} are neither pool memory nor a swap-in destination")
        return _buffers.view(address, numel, self.numpy_dtype, owner=(self, dest))

    # -- buffers and swaps
    @property
    def element_size(self):
        """Bytes per element (2 or 4)."""
        return int(self._lib.swapper_element_size(self._h()))

    def get_buffer(self, param_id, numel):
        """A free pool buffer for `numel` elements of param `param_id` (which becomes
        AVAILABLE), as a numpy view: fill it, then swap the param out."""
        out = c_void_p()
        param_id, numel = _uint(param_id, "param id"), _uint(numel, "numel")
        check(self._lib.swapper_get_buffer(self._h(), param_id, numel, byref(out)))
        return self._view(out.value, numel)

    def swap_out(self, ids, async_op=False):
        """Writes the params' buffers to their swap files; they stay AVAILABLE. With
        async_op, leave the buffers alone until wait_writes()."""
        arr, n = _ids(ids)
        check(self._lib.swapper_swap_out(self._h(), arr, n, bool(async_op)))

    def swap_out_and_release(self, ids, async_op=False, force_buffer_release=False):
        """swap_out, then the buffers go back (params NOT_AVAILABLE). Asynchronous use
        needs force_buffer_release=True, as in DeepSpeed (released in wait_writes)."""
        arr, n = _ids(ids)
        check(
            self._lib.swapper_swap_out_and_release(
                self._h(), arr, n, bool(async_op), bool(force_buffer_release)
            )
        )
        if not async_op:
            # A synchronous call also released the buffers of earlier asynchronous writes.
            self._prune_dest()

    def swap_in(self, ids, async_op=False, dest_buffers=None):
        """Reads the params back into pool buffers, or into `dest_buffers` (one writable
        buffer per param, kept alive here until the param is released). Params are
        INFLIGHT until wait_reads() (a synchronous call waits itself)."""
        arr, n = _ids(ids)
        id_list = list(arr)
        if dest_buffers is None:
            check(self._lib.swapper_swap_in(self._h(), arr, n, bool(async_op), None))
            return
        dest_buffers = list(dest_buffers)
        if len(dest_buffers) != n:
            raise ValueError(f"{n} ids but {len(dest_buffers)} destination buffers")
        ptrs = (c_void_p * n)()
        numels = (c_uint64 * n)()
        keeps = []
        for i, buf in enumerate(dest_buffers):
            address, nbytes, keep = _buffers.address_of(buf, writable=True)
            ptrs[i] = address
            numels[i] = nbytes // self.element_size
            keeps.append(keep)
        with self._lock:
            # The checked variant: the library refuses a destination smaller than its param.
            check(self._lib.swapper_swap_in_buffers(self._h(), arr, n, bool(async_op), ptrs, numels))
            for pid, keep in zip(id_list, keeps):
                self._dest[pid] = keep

    def swap_into_buffer(self, param_id, dest):
        """Reads param `param_id` synchronously into the writable buffer `dest` (at least
        the param's size), without a pool buffer; the param stays NOT_AVAILABLE."""
        address, nbytes, _keep = _buffers.address_of(dest, writable=True)
        check(
            self._lib.swapper_swap_into_buffer(
                self._h(), _uint(param_id, "param id"), c_void_p(address), nbytes // self.element_size
            )
        )

    def wait_params(self, ids):
        """Waits for the reads and writes of these params only; the others stay in flight."""
        arr, n = _ids(ids)
        check(self._lib.swapper_wait_params(self._h(), arr, n))

    def wait_reads(self):
        """Waits for every read submitted before the call (params become AVAILABLE)."""
        check(self._lib.swapper_wait_reads(self._h()))

    def flush(self):
        """Makes the swap folder resumable up to now (swapper_flush): waits for the writes
        in flight, then makes a new manifest durable. A Swapper created with adopt=True on
        the same folders (after a crash, a restart) finds every param as this flush left
        it, NOT_AVAILABLE and ready for swap_in."""
        check(self._lib.swapper_flush(self._h()))

    def snapshot(self, dest_folder):
        """Flushes, then records that state into the checkpoint folder `dest_folder`
        (swapper_snapshot): reflinks where the file system shares extents (XFS, btrfs),
        copies of the live ranges otherwise. Restore with Swapper.restore, then create
        with adopt=True."""
        check(self._lib.swapper_snapshot(self._h(), _path(dest_folder, "dest_folder")))

    @staticmethod
    def restore(snapshot_folder, nvme_path, rank=0, dtype="fp16"):
        """Puts a snapshot back into the rank folders of `nvme_path` (a path or a list,
        as for the constructor), emptying them first (swapper_restore). Then create a
        Swapper with the same nvme_path, rank, dtype and adopt=True."""
        cfg = ConfigStruct()
        lib().swapper_config_default(byref(cfg))
        _keep = _set_paths(cfg, nvme_path)  # noqa: F841
        cfg.rank = _uint(rank, "rank", 32)
        cfg.dtype = int(_dtype(dtype))
        check(lib().swapper_restore(_path(snapshot_folder, "snapshot_folder"), byref(cfg)))

    def wait_writes(self):
        """Waits for every write submitted before the call (releasing buffers of
        params swapped out with release)."""
        try:
            check(self._lib.swapper_wait_writes(self._h()))
        finally:
            self._prune_dest()

    def _prune_dest(self):
        """Lets go of the caller buffers of params that no longer hold them (NOT_AVAILABLE:
        released); an INFLIGHT param's destination is still being read into."""
        with self._lock:
            for pid in list(self._dest):
                if self._status(pid) in (None, ParamStatus.NOT_AVAILABLE):
                    del self._dest[pid]

    def release(self, ids):
        """Gives back the buffers of AVAILABLE params (they become NOT_AVAILABLE)."""
        arr, n = _ids(ids)
        check(self._lib.swapper_release(self._h(), arr, n))
        self._forget_dest(ids)

    def _forget_dest(self, ids):
        with self._lock:
            for pid in _ids(ids)[0]:
                self._dest.pop(pid, None)

    def _status(self, param_id):
        out = c_int()
        if self._lib.swapper_param_status(self._h(), _uint(param_id, "param id"), byref(out)) != 0:
            return None
        return ParamStatus(out.value)

    def param_status(self, param_id):
        """ParamStatus.AVAILABLE, NOT_AVAILABLE or INFLIGHT."""
        out = c_int()
        check(self._lib.swapper_param_status(self._h(), _uint(param_id, "param id"), byref(out)))
        return ParamStatus(out.value)

    def param_buffer(self, param_id):
        """The buffer of an AVAILABLE param, as a numpy view of its elements."""
        address = c_void_p()
        numel = c_uint64()
        param_id = _uint(param_id, "param id")
        check(self._lib.swapper_param_buffer(self._h(), param_id, byref(address), byref(numel)))
        return self._view(address.value, numel.value, param_id)

    def available_buffers(self):
        """Free buffers in the pool."""
        return int(self._lib.swapper_available_buffers(self._h()))

    def reserve_available_buffers(self):
        """Takes every free buffer out of the pool for the caller: a list of numpy views
        of aligned_numel(buffer_numel) elements (the whole buffer, as DeepSpeed hands
        them out), valid until release_reserved_buffers() or close()."""
        capacity = self.stats().total_buffers
        ptrs = (c_void_p * max(capacity, 1))()
        count = c_size_t()
        check(self._lib.swapper_reserve_available_buffers(self._h(), ptrs, capacity, byref(count)))
        numel = self.aligned_numel(self.buffer_numel)
        return [self._view(ptrs[i], numel) for i in range(count.value)]

    def release_reserved_buffers(self):
        """Puts every reserved buffer back into the pool."""
        check(self._lib.swapper_release_reserved_buffers(self._h()))

    def swappable(self, numel):
        """Whether a tensor of `numel` elements is worth swapping (DeepSpeed's rule)."""
        return bool(self._lib.swapper_swappable(self._h(), _uint(numel, "numel")))

    def aligned_numel(self, numel):
        """`numel` rounded up to a multiple of 4096 bytes (C swapper_aligned_numel, C++
        Swapper::aligned_numel)."""
        return int(self._lib.swapper_aligned_numel(self._h(), _uint(numel, "numel")))

    def io_aligned_numel(self, numel):
        """Deprecated, removed in the next release: the old name of aligned_numel
        (DeepSpeed's swapper calls its method _io_aligned_numel; the aio_handle drop-in
        in swapper.deepspeed does not need this one)."""
        warnings.warn("Swapper.io_aligned_numel is deprecated: use aligned_numel", DeprecationWarning, stacklevel=2)
        return self.aligned_numel(numel)

    def reserve_partitioned_swap_space(self, numels):
        """Allocates the packed staging space of swap_out_partitioned: the sum of the
        io-aligned `numels` (ZeRO-3 gives its largest sub-group); any later batch whose
        io-aligned numels add up to at most that fits, in any order and number."""
        arr, n = _ids(numels, "numel")
        check(self._lib.swapper_reserve_partitioned_swap_space(self._h(), arr, n))

    def partitioned_swap_capacity(self):
        """Elements the partitioned swap space holds (the sum of the io-aligned numels
        given to reserve_partitioned_swap_space); 0 before a reservation."""
        return int(self._lib.swapper_partitioned_swap_capacity(self._h()))

    def swap_out_partitioned(self, ids, fp32_arrays):
        """Converts each float32 array to the swapper's dtype (round to nearest even)
        and writes it over the swap file of the matching param (NOT_AVAILABLE)."""
        id_arr, n = _ids(ids)
        fp32_arrays = list(fp32_arrays)
        if len(fp32_arrays) != n:
            raise ValueError(f"{n} ids but {len(fp32_arrays)} arrays")
        srcs = (c_void_p * n)()
        numels = (c_uint64 * n)()
        keeps = []
        for i, a in enumerate(fp32_arrays):
            dt = getattr(a, "dtype", None)
            if isinstance(a, np.ndarray) and dt != np.float32:
                raise TypeError(f"array {i} is {dt}, float32 is needed")
            if dt is not None and not isinstance(a, np.ndarray) and "float32" not in str(dt):
                raise TypeError(f"tensor {i} is {dt}, float32 is needed")
            address, nbytes, keep = _buffers.address_of(a, writable=False)
            srcs[i] = address
            numels[i] = nbytes // 4
            keeps.append(keep)
        check(self._lib.swapper_swap_out_partitioned(self._h(), id_arr, srcs, numels, n))

    def stats(self):
        """The swapper's counters, as a Stats dataclass (stats().as_dict() for a dict)."""
        out = StatsStruct()
        check(self._lib.swapper_stats(self._h(), byref(out)))
        return Stats(*(int(getattr(out, f)) for f in STATS_FIELDS))

    def param_extents(self, param_id):
        """Where a param's bytes are on disk, in order: a list of (drive, path,
        file_offset, length), one per drive the param is split over (empty when it is
        not on disk yet). The files are extent files shared with other params."""
        h = self._h()
        pid = _uint(param_id, "param id")
        count = c_size_t()
        check(self._lib.swapper_param_extents(h, pid, None, 0, byref(count)))
        while True:
            out = (ExtentStruct * max(count.value, 1))()
            need = c_size_t()
            check(self._lib.swapper_param_extents(h, pid, out, count.value, byref(need)))
            if need.value <= count.value:
                return [
                    (int(e.drive), os.fsdecode(e.path), int(e.file_offset), int(e.len))
                    for e in out[: need.value]
                ]
            count = need

    def dump(self):
        """A human-readable dump of the state (DeepSpeed's print_object)."""
        h = self._h()
        size = c_size_t()
        check(self._lib.swapper_dump(h, None, 0, byref(size)))
        while True:
            buf = ctypes.create_string_buffer(size.value + 1)
            need = c_size_t()
            check(self._lib.swapper_dump(h, buf, len(buf), byref(need)))
            if need.value < len(buf):
                return buf.value.decode("utf-8", "replace")
            size = need  # grew between the two calls

    def __repr__(self):
        if self.closed:
            return "<swapper.Swapper closed>"
        return f"<swapper.Swapper {self.dtype.name.lower()} {self.stats()}>"
