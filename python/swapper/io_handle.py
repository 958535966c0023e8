"""The I/O engine (SwapperIo): IoHandle and its settings, IoConfig."""

import dataclasses
import threading
from ctypes import byref, c_uint64, c_void_p

from . import _buffers
from ._handle import Handle
from ._args import _path, _uint
from ._lib import IoConfigStruct, lib
from .enums import Backend, DirectIo, _enum
from .errors import NoBufferError, check


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


class IoHandle(Handle):
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
