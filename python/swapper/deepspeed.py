"""A drop-in for DeepSpeed's async I/O op (`AsyncIOBuilder().load().aio_handle`).

    from swapper.deepspeed import aio_handle
    h = aio_handle(block_size=1 << 20, queue_depth=8, single_submit=False,
                   overlap_events=True, intra_op_parallelism=1)
    h.sync_pwrite(array, "/nvme/x.swp")      # 1 (operations completed)
    h.async_pread(array, "/nvme/x.swp")      # 0 (queued)
    h.wait()                                 # 1

Method names, arguments and return values follow DeepSpeed's csrc/aio/py_lib
(deepspeed_py_io_handle.cpp): synchronous calls return the number of operations
completed by their wait (like DeepSpeed, earlier asynchronous ones included),
asynchronous calls return 0, wait() the number reaped. Differences: failures raise a
swapper.SwapperError subclass instead of returning -1 or aborting; any size, offset and
thread count work; wait() with nothing pending returns 0.

`patch_deepspeed()` makes DeepSpeed's AsyncIOBuilder().load() return this module and
replaces DeepSpeed's swapper classes with classes on libswapper's native swappers;
`patch_deepspeed(swappers=False)` replaces only the aio handle (DeepSpeed's swappers kept).
"""

import ctypes
import sys
import threading

import numpy as np

from . import _buffers
from .errors import CorruptDataError
from .io_handle import IoHandle
from .library import alignment
from .memory import alloc_aligned, allocation_state


def _is_torch_tensor(obj):
    return type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr")


class aio_handle:  # noqa: N801 - DeepSpeed's name
    """DeepSpeed's aio_handle over a swapper.IoHandle."""

    def __init__(
        self,
        block_size=1048576,
        queue_depth=8,
        single_submit=False,
        overlap_events=True,
        intra_op_parallelism=1,
        *,
        num_threads=None,
    ):
        if num_threads is not None:  # DeepSpeed's name before intra_op_parallelism
            intra_op_parallelism = num_threads
        self._io = IoHandle(
            block_size=block_size,
            queue_depth=queue_depth,
            thread_count=intra_op_parallelism,
            single_submit=single_submit,
            overlap_events=overlap_events,
        )
        self._lock = threading.Lock()
        self._validations = []  # (buffer, filename, offset) of async ops with validate
        self._locked = set()  # addresses from new_cpu_locked_tensor not yet freed

    def close(self):
        """Waits for operations in flight and stops the engine (DeepSpeed does this in
        the handle's destructor; here it also happens when the handle is collected)."""
        self._io.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- settings
    def get_block_size(self):
        return self._io.block_size

    def get_queue_depth(self):
        return self._io.queue_depth

    def get_single_submit(self):
        return self._io.single_submit

    def get_overlap_events(self):
        return self._io.overlap_events

    def get_intra_op_parallelism(self):
        return self._io.thread_count

    get_thread_count = get_intra_op_parallelism  # older DeepSpeed name

    def get_alignment(self):
        """Bytes of alignment for direct transfers (4096); others work too."""
        return alignment()

    # -- I/O
    def pread(self, buffer, filename, validate=False, async_op=False, file_offset=0):
        """Reads buffer.nbytes bytes at file_offset of filename into buffer; returns 0
        when asynchronous, else the count of operations completed."""
        self._io.pread(buffer, filename, file_offset, async_op=True)
        if validate:
            self._validations.append((buffer, filename, file_offset))
        return 0 if async_op else self.wait()

    def pwrite(self, buffer, filename, validate=False, async_op=False, file_offset=0):
        """Writes buffer at file_offset of filename; returns as pread."""
        self._io.pwrite(buffer, filename, file_offset, async_op=True)
        if validate:
            self._validations.append((buffer, filename, file_offset))
        return 0 if async_op else self.wait()

    def sync_pread(self, buffer, filename, file_offset=0):
        return self.pread(buffer, filename, False, False, file_offset)

    def sync_pwrite(self, buffer, filename, file_offset=0):
        return self.pwrite(buffer, filename, False, False, file_offset)

    def async_pread(self, buffer, filename, file_offset=0):
        return self.pread(buffer, filename, False, True, file_offset)

    def async_pwrite(self, buffer, filename, file_offset=0):
        return self.pwrite(buffer, filename, False, True, file_offset)

    def read(self, buffer, filename, validate=False, file_offset=0):
        """Synchronous read (DeepSpeed's non-parallel read)."""
        return self.pread(buffer, filename, validate, False, file_offset)

    def write(self, buffer, filename, validate=False, file_offset=0):
        """Synchronous write (DeepSpeed's non-parallel write)."""
        return self.pwrite(buffer, filename, validate, False, file_offset)

    def wait(self):
        """Waits for every operation submitted; returns how many completed."""
        done = self._io.wait()
        pending, self._validations = self._validations, []
        for buffer, filename, offset in pending:
            _validate(buffer, filename, offset)
        return done

    # -- pinned memory
    def new_cpu_locked_tensor(self, num_elem, example_tensor):
        """A tensor of num_elem elements of example_tensor's dtype in page-locked,
        4096-aligned memory (swapper_alloc_aligned with lock): a torch tensor for a torch
        example, else a numpy array. The memory is freed once free_cpu_locked_tensor has
        been called and the last reference is gone (or simply when it is collected)."""
        num_elem = int(num_elem)
        if _is_torch_tensor(example_tensor):
            import torch

            itemsize = torch.empty((), dtype=example_tensor.dtype).element_size()
            raw = alloc_aligned(num_elem * itemsize, np.uint8, lock=True)
            tensor = torch.frombuffer(raw.base, dtype=example_tensor.dtype, count=num_elem)
            address = tensor.data_ptr()
        else:
            dtype = getattr(example_tensor, "dtype", example_tensor)
            tensor = alloc_aligned(num_elem, np.dtype(dtype), lock=True)
            address = tensor.__array_interface__["data"][0]
        with self._lock:
            self._locked.add(address)
        return tensor

    def free_cpu_locked_tensor(self, tensor):
        """True if tensor came from new_cpu_locked_tensor of this handle (and was not
        freed yet); its memory goes back as soon as the last reference to it is gone."""
        address, _, _ = _buffers.address_of(tensor, writable=False)
        with self._lock:
            if address in self._locked:
                self._locked.discard(address)
                return True
        return False

    def is_pinned(self, tensor):
        """Whether `tensor` is memory this handle can use as a swap buffer: pinned by
        torch, or lying entirely inside one libswapper allocation (new_cpu_locked_tensor,
        swapper.alloc_aligned, a swapper's pool), any slice of it included, as DeepSpeed's
        own op answers for slices of its locked buffers.

        An allocation whose mlock was refused (no CAP_IPC_LOCK, RLIMIT_MEMLOCK too low)
        counts as pinned too: DeepSpeed's own op fails to allocate it at all (its
        new_cpu_locked_tensor returns NULL and training aborts at start-up), while
        libswapper's I/O works on unlocked memory just the same; the allocation logged a
        warning, and only the kernel's freedom to page the buffer out is lost.
        swapper.is_locked / allocation_state tell the two apart."""
        if _is_torch_tensor(tensor) and tensor.is_pinned():
            return True
        return allocation_state(tensor) is not None


def _validate(buffer, filename, offset):
    address, nbytes, _keep = _buffers.address_of(buffer, writable=False)
    mem = np.frombuffer((ctypes.c_char * nbytes).from_address(address), np.uint8) if nbytes else np.empty(0, np.uint8)
    with open(filename, "rb") as f:
        f.seek(offset)
        data = np.frombuffer(f.read(nbytes), np.uint8)
    if data.size != nbytes or not np.array_equal(data, mem[:nbytes]):
        raise CorruptDataError(f"validation failed: {filename} at offset {offset} differs from the buffer")


def patch_deepspeed(swappers=True, **swapper_options):
    """Puts libswapper under DeepSpeed; returns a function that undoes it.

    Always: `deepspeed.ops.op_builder.AsyncIOBuilder().load(...)` returns this module
    (whose aio_handle is libswapper's) and is_compatible() is true, so every DeepSpeed
    swapper left in place does its I/O through libswapper.

    With `swappers` (the default), DeepSpeed's swapper classes are replaced too:
    ZeRO-3's parameter swapper (`AsyncPartitionedParameterSwapper` as
    `deepspeed.runtime.zero.partition_parameters` names it) by
    swapper.deepspeed_param_swapper.DeepSpeedParamSwapper, on the native parameter
    swapper; ZeRO-3's optimizer swappers (`PartitionedOptimizerSwapper` and
    `PipelinedOptimizerSwapper` as `deepspeed.runtime.zero.stage3` names them) by
    swapper.deepspeed_optimizer_swapper.DeepSpeedOptimizerSwapper, on the native
    optimizer-state swapper (pipelined either way); and the engine's NVMe checkpoint
    copies of the optimizer swap folder (`shutil.copytree` in save_checkpoint and
    load_checkpoint) become a snapshot of that swapper and its restore and adoption
    (swapper.deepspeed_checkpoint). `swapper_options` go to each native swapper
    (verify_checksums, backend, direct_io). `patch_deepspeed(swappers=False)` keeps
    DeepSpeed's own swapper classes and copies on libswapper's aio_handle (the
    comparison point).
    """
    import importlib

    op_builder = importlib.import_module("deepspeed.ops.op_builder")
    builder = op_builder.AsyncIOBuilder
    saved = {name: builder.__dict__.get(name) for name in ("load", "is_compatible")}
    module = sys.modules[__name__]

    def load(self, verbose=True):
        return module

    def is_compatible(self, verbose=False):
        return True

    builder.load = load
    builder.is_compatible = is_compatible
    replaced = []  # (module, name, previous value)
    undo_checkpoint = None
    if swappers:
        from .deepspeed_param_swapper import DeepSpeedParamSwapper

        unknown = set(swapper_options) - {"verify_checksums", "backend", "direct_io"}
        if unknown:
            raise TypeError(f"unknown swapper options {sorted(unknown)}: verify_checksums, backend, direct_io")
        replaced.append((DeepSpeedParamSwapper, "swapper_options", DeepSpeedParamSwapper.swapper_options))
        DeepSpeedParamSwapper.swapper_options = dict(swapper_options)
        partition_parameters = importlib.import_module("deepspeed.runtime.zero.partition_parameters")
        replaced.append(
            (partition_parameters, "AsyncPartitionedParameterSwapper", partition_parameters.AsyncPartitionedParameterSwapper)
        )
        partition_parameters.AsyncPartitionedParameterSwapper = DeepSpeedParamSwapper

        from .deepspeed_optimizer_swapper import DeepSpeedOptimizerSwapper

        replaced.append((DeepSpeedOptimizerSwapper, "swapper_options", DeepSpeedOptimizerSwapper.swapper_options))
        DeepSpeedOptimizerSwapper.swapper_options = dict(swapper_options)
        stage3 = importlib.import_module("deepspeed.runtime.zero.stage3")
        for name in ("PartitionedOptimizerSwapper", "PipelinedOptimizerSwapper"):
            replaced.append((stage3, name, getattr(stage3, name)))
            setattr(stage3, name, DeepSpeedOptimizerSwapper)

        from . import deepspeed_checkpoint

        undo_checkpoint = deepspeed_checkpoint.install()
    elif swapper_options:
        raise TypeError("swapper options apply to libswapper's swappers: patch_deepspeed(swappers=True, ...)")

    def undo():
        if undo_checkpoint is not None:
            undo_checkpoint()
        for name, value in saved.items():
            if value is None:
                delattr(builder, name)
            else:
                setattr(builder, name, value)
        for owner, name, value in reversed(replaced):
            setattr(owner, name, value)

    return undo
