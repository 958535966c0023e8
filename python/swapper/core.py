"""Pythonic classes over the two handles of the C API: IoHandle (SwapperIo) and
Swapper (Swapper)."""

import ctypes
import dataclasses
import enum
import json
import operator
import os
import threading
from ctypes import byref, c_int, c_size_t, c_uint64, c_void_p

import numpy as np

from . import _buffers
from ._lib import STATS_FIELDS, ConfigStruct, IoConfigStruct, StatsStruct, lib
from .errors import BadStateError, InvalidArgumentError, NoBufferError, check


class Backend(enum.IntEnum):
    AUTO = 0
    IO_URING = 1
    BLOCKING = 2


class DirectIo(enum.IntEnum):
    AUTO = 0
    ON = 1
    OFF = 2


class Dtype(enum.IntEnum):
    FP32 = 0
    FP16 = 1
    BF16 = 2


class ParamStatus(enum.IntEnum):
    AVAILABLE = 1
    NOT_AVAILABLE = 2
    INFLIGHT = 3


class LogLevel(enum.IntEnum):
    ERROR = 1
    WARN = 2
    INFO = 3
    DEBUG = 4
    TRACE = 5


_DTYPE_NAMES = {
    "fp32": Dtype.FP32,
    "float32": Dtype.FP32,
    "float": Dtype.FP32,
    "fp16": Dtype.FP16,
    "float16": Dtype.FP16,
    "half": Dtype.FP16,
    "bf16": Dtype.BF16,
    "bfloat16": Dtype.BF16,
}


def _enum(cls, value, what):
    if isinstance(value, str):
        try:
            return cls[value.upper().replace("-", "_")]
        except KeyError:
            pass
    else:
        try:
            return cls(value)
        except ValueError:
            pass
    names = ", ".join(repr(m.name.lower()) for m in cls)
    raise ValueError(f"{what} must be one of {names}, got {value!r}")


def _dtype(value):
    if isinstance(value, Dtype):
        return value
    if isinstance(value, str) and value.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[value.lower()]
    if isinstance(value, int):
        return _enum(Dtype, value, "dtype")
    raise ValueError(f"dtype must be 'fp16', 'bf16' or 'fp32', got {value!r}")


def numpy_dtype(dtype):
    """The numpy dtype of a swapper dtype: float16, float32, and for bf16 ml_dtypes'
    bfloat16 when importable, else uint16 (the raw bits)."""
    dtype = _dtype(dtype)
    if dtype == Dtype.FP32:
        return np.dtype(np.float32)
    if dtype == Dtype.FP16:
        return np.dtype(np.float16)
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return np.dtype(np.uint16)


def _uint(value, what, bits=64):
    """`value` as a Python int in [0, 2**bits): ctypes would silently wrap a negative or
    too large value onto another one (-1 becomes 2**64 - 1, 2**64 becomes 0). Raises
    InvalidArgumentError (a ValueError) out of range, TypeError for a non-integer (a
    float is not truncated)."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}") from None
    if not 0 <= v < 1 << bits:
        raise InvalidArgumentError(f"{what} must be in [0, 2**{bits}), got {v}")
    return v


def _ids(ids, what="param id"):
    """A (uint64 array, count) for one id or an iterable of ids, each checked by _uint."""
    if isinstance(ids, (int, np.integer)):
        ids = [ids]
    ids = [_uint(i, what) for i in ids]
    return (c_uint64 * len(ids))(*ids), len(ids)


def _path(path, what="path"):
    """`path` (str, bytes or os.PathLike) as bytes for C. An embedded NUL byte would cut
    the path short in C, so it is refused with InvalidArgumentError."""
    encoded = os.fsencode(path)
    if b"\0" in encoded:
        raise InvalidArgumentError(f"{what} contains a NUL byte: {path!r}")
    return encoded


def version():
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return lib().swapper_version().decode()


def alignment():
    """The O_DIRECT alignment in bytes (4096)."""
    return int(lib().swapper_io_alignment())


def live_handles():
    """(live IoHandle count, live Swapper count) in this process, for leak checks."""
    return int(lib().swapper_io_live_handles()), int(lib().swapper_live_handles())


def _free_aligned(address):
    lib().swapper_free_aligned(c_void_p(address))


def _release_retained(address):
    lib().swapper_memory_release(c_void_p(address))


def alloc_aligned(count, dtype=np.uint8, lock=False):
    """A zero-filled numpy array of `count` elements of `dtype` in 4096-aligned memory
    from swapper_alloc_aligned (page-locked when `lock` and the memlock limit allow it;
    see is_locked). The memory is freed when the last view of it is gone."""
    dtype = np.dtype(dtype)
    out = c_void_p()
    nbytes = _uint(_uint(count, "count") * dtype.itemsize, "count * itemsize")
    check(lib().swapper_alloc_aligned(nbytes, bool(lock), byref(out)))
    return _buffers.view(out.value, count, dtype, release=_free_aligned)


def is_locked(buffer):
    """Whether all of `buffer` (an array or tensor, or a slice of one) lies inside one
    page-locked libswapper allocation (alloc_aligned / swapper_alloc_aligned, a swapper's
    pool with pin_memory). False when the memory is not libswapper's, or when it is but
    mlock was refused (no CAP_IPC_LOCK, RLIMIT_MEMLOCK too low): see allocation_state."""
    return allocation_state(buffer) == "locked"


def allocation_state(buffer):
    """Where all of `buffer`'s bytes lie: "locked" inside a page-locked libswapper
    allocation, "unlocked" inside one whose mlock was refused (libswapper's I/O works on
    it all the same, only the kernel may page it out), None if not entirely inside one
    libswapper allocation. Any slice of an allocation counts, not only its start."""
    address, nbytes, _ = _buffers.address_of(buffer, writable=False)
    state = lib().swapper_allocation_locked(c_void_p(address), nbytes)
    return {1: "locked", 0: "unlocked"}.get(state)


_log_callback = None  # the installed ctypes callback, kept alive


def set_log_callback(callback, max_level=LogLevel.WARN):
    """Sends libswapper's diagnostics to `callback(level: LogLevel, message: str)`; None
    removes it (then SWAPPER_LOG decides). The callback may run on I/O threads."""
    global _log_callback
    from ._lib import LogCallback

    if callback is None:
        c_callback = LogCallback()
    else:

        def trampoline(level, message, _user_data):
            try:
                callback(LogLevel(level), message.decode("utf-8", "replace"))
            except Exception:  # never let an exception cross into C
                pass

        c_callback = LogCallback(trampoline)
    check(lib().swapper_set_log_callback(c_callback, None, int(_enum(LogLevel, max_level, "max_level"))))
    _log_callback = c_callback if callback is not None else None


@dataclasses.dataclass(frozen=True)
class IoConfig:
    """An engine's settings, with the backend resolved (never AUTO)."""

    block_size: int
    queue_depth: int
    thread_count: int
    single_submit: bool
    overlap_events: bool
    backend: Backend
    direct_io: DirectIo


_IO_KEYS = ("block_size", "queue_depth", "thread_count", "single_submit", "overlap_events", "backend", "direct_io")


def _fill_io_config(cfg, block_size, queue_depth, thread_count, single_submit, overlap_events, backend, direct_io):
    cfg.block_size = _uint(block_size, "block_size")
    cfg.queue_depth = _uint(queue_depth, "queue_depth", 32)
    cfg.thread_count = _uint(thread_count, "thread_count", 32)
    cfg.single_submit = bool(single_submit)
    cfg.overlap_events = bool(overlap_events)
    cfg.backend = int(_enum(Backend, backend, "backend"))
    cfg.direct_io = int(_enum(DirectIo, direct_io, "direct_io"))


class IoHandle:
    """The I/O engine (SwapperIo): worker threads reading and writing files with
    O_DIRECT. Use as a context manager or call close(). Thread-safe.

    Buffers are any buffer-protocol object (numpy arrays, bytearray, memoryview; writable
    for reads) or objects with data_ptr() and nbytes (torch CPU tensors). Nothing is
    copied; buffers of asynchronous operations are kept alive until wait() returns.
    """

    def __init__(
        self,
        block_size=1 << 20,
        queue_depth=8,
        thread_count=1,
        single_submit=False,
        overlap_events=True,
        backend="auto",
        direct_io="auto",
    ):
        self._lib = lib()
        cfg = IoConfigStruct()
        self._lib.swapper_io_config_default(byref(cfg))
        _fill_io_config(cfg, block_size, queue_depth, thread_count, single_submit, overlap_events, backend, direct_io)
        handle = c_void_p()
        check(self._lib.swapper_io_create(byref(cfg), byref(handle)))
        self._handle = handle
        self._lock = threading.Lock()
        self._inflight = []  # buffers of async operations not yet waited for

    # -- lifetime
    def close(self):
        """Waits for operations in flight, then destroys the engine. Idempotent."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            self._lib.swapper_io_destroy(handle)
            self._inflight = []

    @property
    def closed(self):
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _h(self):
        if self._handle is None:
            raise BadStateError("the IoHandle is closed")
        return self._handle

    # -- I/O
    def _op(self, fn, buffer, path, file_offset, async_op, writable, nbytes):
        address, size, keep = _buffers.address_of(buffer, writable)
        path = _path(path)
        file_offset = _uint(file_offset, "file_offset")
        if nbytes is not None:
            nbytes = _uint(nbytes, "nbytes")
            if nbytes > size:
                raise NoBufferError(f"{nbytes} bytes asked of a buffer of {size}")
            size = nbytes
        h = self._h()
        if async_op:
            with self._lock:
                check(fn(h, address, size, path, file_offset, True))
                self._inflight.append(keep)
        else:
            check(fn(h, address, size, path, file_offset, False))

    def pread(self, buffer, path, file_offset=0, async_op=False, nbytes=None):
        """Reads `nbytes` (default: the whole buffer) at `file_offset` of `path` into
        `buffer`. With async_op the read is queued; wait() reports it."""
        self._op(self._lib.swapper_io_pread, buffer, path, file_offset, async_op, True, nbytes)

    def pwrite(self, buffer, path, file_offset=0, async_op=False, nbytes=None):
        """Writes `nbytes` (default: the whole buffer) of `buffer` at `file_offset` of
        `path` (created with mode 0600 if missing, never truncated)."""
        self._op(self._lib.swapper_io_pwrite, buffer, path, file_offset, async_op, False, nbytes)

    def wait(self):
        """Waits for every asynchronous operation submitted before the call; returns how
        many were reaped. Raises for the first failure (the message lists them all)."""
        h = self._h()
        with self._lock:
            held = len(self._inflight)
        done = c_uint64()
        try:
            check(self._lib.swapper_io_wait(h, byref(done)))
        finally:
            with self._lock:
                del self._inflight[:held]
        return int(done.value)

    # -- settings
    @property
    def config(self):
        cfg = IoConfigStruct()
        check(self._lib.swapper_io_get_config(self._h(), byref(cfg)))
        return IoConfig(
            int(cfg.block_size),
            int(cfg.queue_depth),
            int(cfg.thread_count),
            bool(cfg.single_submit),
            bool(cfg.overlap_events),
            Backend(cfg.backend),
            DirectIo(cfg.direct_io),
        )

    @property
    def block_size(self):
        return int(self._lib.swapper_io_block_size(self._h()))

    @property
    def queue_depth(self):
        return int(self._lib.swapper_io_queue_depth(self._h()))

    @property
    def thread_count(self):
        return int(self._lib.swapper_io_thread_count(self._h()))

    @property
    def single_submit(self):
        return bool(self._lib.swapper_io_single_submit(self._h()))

    @property
    def overlap_events(self):
        return bool(self._lib.swapper_io_overlap_events(self._h()))

    @property
    def backend(self):
        return Backend(self._lib.swapper_io_backend(self._h()))

    @property
    def direct_io(self):
        return DirectIo(self._lib.swapper_io_direct_io(self._h()))

    @property
    def pending(self):
        """Asynchronous operations not yet reaped by wait()."""
        return int(self._lib.swapper_io_pending(self._h()))

    def __repr__(self):
        if self.closed:
            return "<swapper.IoHandle closed>"
        return f"<swapper.IoHandle {self.config}>"


@dataclasses.dataclass(frozen=True)
class Stats:
    """A Swapper's bookkeeping (swapper_stats)."""

    params: int
    pending_reads: int
    pending_writes: int
    inflight_params: int
    inflight_numel: int
    available_params: int
    available_numel: int
    free_buffers: int
    reserved_buffers: int
    total_buffers: int
    bytes_read: int
    bytes_written: int
    read_wait_ns: int
    write_wait_ns: int

    def as_dict(self):
        return dataclasses.asdict(self)


assert tuple(f.name for f in dataclasses.fields(Stats)) == STATS_FIELDS


class Swapper:
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
        **io,
    ):
        unknown = set(io) - set(_IO_KEYS)
        if unknown:
            raise TypeError(f"unknown I/O settings {sorted(unknown)}; known: {', '.join(_IO_KEYS)}")
        self._lib = lib()
        cfg = ConfigStruct()
        self._lib.swapper_config_default(byref(cfg))
        path = _path(nvme_path, "nvme_path")
        cfg.nvme_path = path
        cfg.rank = _uint(rank, "rank", 32)
        cfg.dtype = int(_dtype(dtype))
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

    @property
    def closed(self):
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _h(self):
        if getattr(self, "_handle", None) is None:
            raise BadStateError("the Swapper is closed")
        return self._handle

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
        of io_aligned_numel(buffer_numel) elements (the whole buffer, as DeepSpeed hands
        them out), valid until release_reserved_buffers() or close()."""
        capacity = self.stats().total_buffers
        ptrs = (c_void_p * max(capacity, 1))()
        count = c_size_t()
        check(self._lib.swapper_reserve_available_buffers(self._h(), ptrs, capacity, byref(count)))
        numel = self.io_aligned_numel(self.buffer_numel)
        return [self._view(ptrs[i], numel) for i in range(count.value)]

    def release_reserved_buffers(self):
        """Puts every reserved buffer back into the pool."""
        check(self._lib.swapper_release_reserved_buffers(self._h()))

    def swappable(self, numel):
        """Whether a tensor of `numel` elements is worth swapping (DeepSpeed's rule)."""
        return bool(self._lib.swapper_swappable(self._h(), _uint(numel, "numel")))

    def io_aligned_numel(self, numel):
        """`numel` rounded up to a multiple of 4096 bytes."""
        return int(self._lib.swapper_aligned_numel(self._h(), _uint(numel, "numel")))

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
