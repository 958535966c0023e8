"""DeepSpeed's `AsyncPartitionedParameterSwapper` on libswapper's native parameter
swapper (swapper.Swapper).

`swapper.deepspeed.patch_deepspeed()` puts `DeepSpeedParamSwapper` where ZeRO-3 builds
its parameter swapper: the module-level name `AsyncPartitionedParameterSwapper` of
`deepspeed.runtime.zero.partition_parameters` (imported there by name from
`deepspeed.runtime.swap_tensor.partitioned_param_swapper`, so that module's own name is
left alone). Built as DeepSpeed builds its own: `DeepSpeedParamSwapper(ds_config,
model_dtype)`.

What ZeRO-3 calls on it (DeepSpeed 0.19.8), all implemented here:

| caller | calls |
| --- | --- |
| partition_parameters `_partition_param` | `swappable_tensor(numel=)`, `get_buffer(param, numel)`, `swap_out_and_release([param])`, `remove_partition_and_release_buffers([param])` |
| partition_parameters `_ensure_availability_of_partitioned_params` | `swap_in(params, async_op=False)`, `synchronize_reads()` |
| partitioned_param_coordinator (prefetch, persisted params) | `available_swap_in_buffers()`, `swap_in(params, async_op=True)`, `remove_partition_and_release_buffers(params)` |
| stage3 `_move_to_flat_buffer` | `swap_into_buffer(param, dest)` |
| stage3 `_create_param_groups_fp16_flat_cpu_memory` | `reserve_partitioned_swap_space(numels)` |
| stage3 `_swap_in_sub_group_to_flat_buffer` | `swap_in([param], async_op=False)`, `remove_partition_and_release_buffers([param])` |
| stage3 `_get_sub_group_partitions` (fast_init) | `get_path(param, True)` |
| stage3 `_create_fp32_partitions` (fast_init) | `reserve_available_buffers()`, `release_reserved_buffers()` |
| stage3 `_partitioned_params_swap_out` (after each sub-group's step) | `swap_out_partitioned_params(dst_fp16_params, src_fp32_params)` |
| zenflow's Adam | `swap_in`, `swap_out_and_release`, `remove_partition_and_release_buffers` |

Also kept: `synchronize_writes()`, `swap_folder`, `dtype`, `swap_element_size`,
`elements_per_buffer`, `param_buffer_count`, `swap_config`, `aio_config`,
`invalid_buffer`, `_io_aligned_numel`, `_is_io_aligned`, and the counters
`pending_reads` / `pending_writes` / `inflight_numel` / `available_numel` (from the
native swapper's statistics). DeepSpeed's runtime reads and sets `param.ds_tensor.status`
itself, so this class keeps it (and `param.ds_tensor.data`) as DeepSpeed's does: a
swap-in makes the partition tensor a view of the pool buffer, a release points it at
`invalid_buffer`.

Where DeepSpeed asserts, this class narrows or says what to change:
- a partition larger than a buffer (`get_buffer`): an error naming
  `zero_optimization.offload_param.buffer_size` and the size that fits;
- no free buffer (`get_buffer`, a synchronous `swap_in`): buffers of finished
  asynchronous write-and-release operations are taken back first; if still too few, an
  error naming `offload_param.buffer_count` and the count that would fit;
- an asynchronous `swap_in` (prefetch) with too few buffers reads the first params that
  fit and leaves the others NOT_AVAILABLE (fetched when used);
- a `swap_out_partitioned_params` batch larger than the reserved space is written in
  pieces that fit.

Differences from DeepSpeed's (the native swapper's; see the differential test's table):
buffers are 4096-byte aligned whatever `intra_op_parallelism` says (DeepSpeed: 1024 x
intra_op_parallelism), always page-locked (as DeepSpeed's), misuse raises a
`swapper.SwapperError` instead of an assertion, and `verify_checksums` etc. can be
passed through `patch_deepspeed(...)`. A second swapper on the same rank folder in one
process (a new engine after `engine.destroy()`, as DeepSpeed's checkpoint test does)
closes the previous one, whose folder DeepSpeed's would have deleted: the old engine's
later swaps raise "the Swapper is closed" instead of reading deleted files.
"""

import os

import numpy as np

from .enums import ParamStatus
from .errors import BadStateError, InvalidArgumentError, NoBufferError, NotFoundError
from ._takeover import take_over
from .param_swapper import Swapper

_DTYPE_NAMES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def torch_view(array, torch_dtype):
    """A torch tensor of `torch_dtype` over the memory of the numpy `array` (no copy; the
    tensor keeps `array`, and with it the library's memory, alive)."""
    import torch

    return torch.from_numpy(array.view(np.uint8)).view(torch_dtype)


def swapper_io_settings(aio_config):
    """The native I/O settings of DeepSpeed's `aio` configuration (a dict with
    block_size, queue_depth, intra_op_parallelism, single_submit, overlap_events)."""
    return dict(
        block_size=int(aio_config["block_size"]),
        queue_depth=int(aio_config["queue_depth"]),
        thread_count=int(aio_config.get("intra_op_parallelism", aio_config.get("thread_count", 1))),
        single_submit=bool(aio_config["single_submit"]),
        overlap_events=bool(aio_config["overlap_events"]),
    )


class SwappedParamPath(str):
    """A param of a DeepSpeedParamSwapper, as DeepSpeed's get_path would name its file:
    the str is `libswapper:<rank folder>#param<id>` (not a file), `param_id` and
    `read_into(dest)` read it."""

    def __new__(cls, owner, param_id):
        self = super().__new__(cls, f"libswapper:{owner.swap_folder}#param{param_id}")
        self.owner = owner
        self.param_id = param_id
        return self

    def read_into(self, dest):
        """Reads the param synchronously into `dest` (a CPU tensor of the model dtype,
        at least the param's numel)."""
        self.owner.swapper.swap_into_buffer(self.param_id, dest)


class DeepSpeedParamSwapper:
    """DeepSpeed's AsyncPartitionedParameterSwapper interface on a swapper.Swapper.
    Not thread-safe (neither is DeepSpeed's, nor its callers)."""

    # Keyword arguments for swapper.Swapper set by patch_deepspeed(...) (e.g.
    # verify_checksums=True, backend=..., direct_io=...).
    swapper_options = {}

    def __init__(self, ds_config, model_dtype):
        import torch
        from deepspeed import comm as dist

        if ds_config.aio_config.get("use_gds", False):
            raise InvalidArgumentError(
                "aio.use_gds is set: GPUDirect Storage needs DeepSpeed's own parameter swapper "
                "(patch_deepspeed(swappers=False))"
            )
        self.dtype = model_dtype
        self.swap_config = ds_config.zero_config.offload_param
        self.aio_config = ds_config.aio_config
        name = str(model_dtype).split(".")[1]
        if name not in _DTYPE_NAMES:
            raise InvalidArgumentError(f"model dtype {model_dtype}: the native swapper keeps float16, bfloat16 or float32")
        rank = dist.get_rank()
        nvme_path = str(self.swap_config.nvme_path)
        self.swap_folder = os.path.join(nvme_path, "zero_stage_3", f"{name}params", f"rank{rank}")
        self.swap_element_size = torch.tensor([], dtype=model_dtype).element_size()
        self.elements_per_buffer = int(self.swap_config.buffer_size)
        self.param_buffer_count = int(self.swap_config.buffer_count)
        self.invalid_buffer = torch.tensor(1).half()
        # DeepSpeed's creates nvme_path as needed (the native swapper wants it to exist).
        os.makedirs(nvme_path, exist_ok=True)
        self.swapper = None
        take_over(self.swap_folder, self)
        self.swapper = Swapper(
            nvme_path,
            rank=rank,
            dtype=_DTYPE_NAMES[name],
            buffer_count=self.param_buffer_count,
            buffer_numel=self.elements_per_buffer,
            # DeepSpeed page-locks its pool whatever offload_param.pin_memory says.
            pin_memory=True,
            **swapper_io_settings(self.aio_config),
            **self.swapper_options,
        )
        self.aligned_elements_per_buffer = self.swapper.io_aligned_numel(self.elements_per_buffer)
        self._numel = {}  # param id -> partition numel
        self._inflight = []  # (param, caller buffer or None) with a read in flight
        self._releasing = []  # params whose asynchronous write-and-release is in flight
        self._reserved = False

    def close(self):
        """Waits for I/O in flight and frees the pool (views still referenced keep their
        memory; see swapper.Swapper). Idempotent."""
        swapper = getattr(self, "swapper", None)
        if swapper is not None:
            swapper.close()

    # -- sizes
    def available_swap_in_buffers(self):
        return self.swapper.available_buffers()

    def swappable_tensor(self, param=None, numel=None):
        if param is not None:
            if numel is not None:
                raise InvalidArgumentError("swappable_tensor: give param or numel, not both")
            numel = param.ds_tensor.ds_numel
        if numel is None:
            raise InvalidArgumentError("swappable_tensor: give param or numel")
        return self.swapper.swappable(int(numel))

    def _io_aligned_numel(self, numel):
        return self.swapper.io_aligned_numel(int(numel))

    def _is_io_aligned(self, numel):
        return self._io_aligned_numel(numel) == int(numel)

    # -- counters DeepSpeed keeps as attributes
    @property
    def pending_reads(self):
        return len(self._inflight)

    @property
    def pending_writes(self):
        return self.swapper.stats().pending_writes

    @property
    def inflight_numel(self):
        return self.swapper.stats().inflight_numel

    @property
    def available_numel(self):
        return self.swapper.stats().available_numel

    @property
    def inflight_params(self):
        return [p for p, _ in self._inflight]

    # -- paths
    def get_path(self, param, must_exist=False):
        """Where `param` is, for stage3's fast_init (`_get_sub_group_partitions`): a
        SwappedParamPath, a str naming the param in this swapper that is no file (the
        param lives in the store's shared extent files, `swapper.param_extents(id)`), so
        that whatever opens it as a file fails instead of reading other bytes. The
        replacement optimizer swapper reads the param through it by id
        (`SwappedParamPath.read_into`). With must_exist, NotFoundError if the param was
        never written."""
        if must_exist and not self._on_disk(param.ds_id):
            raise NotFoundError(f"param {param.ds_id} is not on disk in {self.swap_folder}: it was never swapped out")
        return SwappedParamPath(self, param.ds_id)

    def _on_disk(self, param_id):
        try:
            return bool(self.swapper.param_extents(param_id))
        except NotFoundError:
            return False

    # -- state of DeepSpeed's partition tensors
    def _torch(self, array):
        return torch_view(array, self.dtype)

    def _mark_released(self, params):
        from deepspeed.runtime.swap_tensor.partitioned_param_swapper import PartitionedParamStatus

        for param in params:
            param.ds_tensor.data = self.invalid_buffer.data
            param.ds_tensor.status = PartitionedParamStatus.NOT_AVAILABLE

    def _take_back_released_buffers(self):
        """Waits for asynchronous write-and-release operations, whose buffers then go
        back to the pool; a no-op without any."""
        if self._releasing:
            self.synchronize_writes()

    # -- buffers
    def get_buffer(self, param, numel):
        numel = int(numel)
        if numel > self.elements_per_buffer:
            raise NoBufferError(
                f"param {param.ds_id}: its partition of {numel} elements does not fit a buffer of "
                f"zero_optimization.offload_param.buffer_size = {self.elements_per_buffer} elements; "
                f"set buffer_size >= {numel}"
            )
        if self.swapper.available_buffers() == 0:
            self._take_back_released_buffers()
        if self.swapper.available_buffers() == 0:
            raise NoBufferError(
                f"param {param.ds_id}: all {self.param_buffer_count} buffers of "
                f"zero_optimization.offload_param.buffer_count are held by params in use; set buffer_count >= "
                f"{self.param_buffer_count + 1}"
            )
        self._numel[param.ds_id] = numel
        return self._torch(self.swapper.get_buffer(param.ds_id, numel))

    def reserve_available_buffers(self):
        """Every free pool buffer, as torch tensors of io_aligned(buffer_size) elements,
        until release_reserved_buffers()."""
        self._take_back_released_buffers()
        self._reserved = True
        return [self._torch(b) for b in self.swapper.reserve_available_buffers()]

    def release_reserved_buffers(self):
        self.swapper.release_reserved_buffers()
        self._reserved = False

    # -- writes
    def swap_out_and_release(self, params, async_op=False, force_buffer_release=False):
        if async_op and not force_buffer_release:
            raise InvalidArgumentError(
                "swap_out_and_release(async_op=True) releases buffers before the write ends; "
                "pass force_buffer_release=True to do it anyway (as DeepSpeed requires)"
            )
        params = list(params)
        if not params:
            return
        for p in params:
            self._numel.setdefault(p.ds_id, int(p.ds_tensor.ds_numel))
        self.swapper.swap_out_and_release([p.ds_id for p in params], async_op=async_op, force_buffer_release=True)
        if async_op:
            self._releasing += params
        else:
            # The synchronous call also waited for (and released) earlier asynchronous ones.
            released, self._releasing = self._releasing + params, []
            self._mark_released(released)

    def synchronize_writes(self):
        """Waits for every write; params written with release become NOT_AVAILABLE."""
        released, self._releasing = self._releasing, []
        try:
            self.swapper.wait_writes()
        finally:
            self._mark_released(released)

    # -- reads
    def swap_in(self, params, async_op=True, swap_in_buffers=None):
        from deepspeed.runtime.swap_tensor.partitioned_param_swapper import PartitionedParamStatus

        params = list(params)
        busy = [p.ds_id for p in params if p.ds_tensor.status != PartitionedParamStatus.NOT_AVAILABLE]
        if busy:
            raise BadStateError(f"swap_in: params {busy} are already available or in flight")
        if not params:
            return
        if swap_in_buffers is None:
            free = self.swapper.available_buffers()
            if free < len(params):
                self._take_back_released_buffers()
                free = self.swapper.available_buffers()
            if free < len(params):
                if async_op:
                    # A prefetch: read what fits, the rest is read when it is used.
                    params = params[:free]
                    if not params:
                        return
                else:
                    held = self.param_buffer_count - free
                    raise NoBufferError(
                        f"swap_in of {len(params)} params (ids {[p.ds_id for p in params]}) needs {len(params)} "
                        f"free buffers; {free} of zero_optimization.offload_param.buffer_count = "
                        f"{self.param_buffer_count} are free ({held} held by params in use or reserved); "
                        f"set buffer_count >= {held + len(params)}"
                    )
            dests = [None] * len(params)
            self.swapper.swap_in([p.ds_id for p in params], async_op=True)
        else:
            dests = list(swap_in_buffers)
            self.swapper.swap_in([p.ds_id for p in params], async_op=True, dest_buffers=dests)
        for p, dest in zip(params, dests):
            p.ds_tensor.status = PartitionedParamStatus.INFLIGHT
            self._inflight.append((p, dest))
        if not async_op:
            self.synchronize_reads()

    def synchronize_reads(self):
        """Waits for every read; the params become AVAILABLE, their partition tensors
        views of their buffers."""
        from deepspeed.runtime.swap_tensor.partitioned_param_swapper import PartitionedParamStatus

        if not self._inflight:
            return
        inflight, self._inflight = self._inflight, []
        try:
            self.swapper.wait_reads()
        except BaseException:
            # The failed params are NOT_AVAILABLE again in the native swapper; the others
            # are AVAILABLE: make DeepSpeed's view agree before raising.
            for p, dest in inflight:
                self._finish_read(p, dest, PartitionedParamStatus)
            raise
        for p, dest in inflight:
            self._finish_read(p, dest, PartitionedParamStatus)

    def _finish_read(self, param, dest, status_enum):
        pid = param.ds_id
        if self.swapper._status(pid) != ParamStatus.AVAILABLE:
            self._mark_released([param])
            return
        numel = self._numel[pid]
        if dest is None:
            compute = self._torch(self.swapper.param_buffer(pid))
        else:
            compute = dest.narrow(0, 0, numel)
        param.ds_tensor.data = compute.data
        param.ds_tensor.status = status_enum.AVAILABLE

    def swap_into_buffer(self, param, dest_buffer):
        """Reads `param` synchronously into `dest_buffer` (a CPU tensor of at least its
        numel); no pool buffer is used, the param stays NOT_AVAILABLE here (the caller
        points its partition at `dest_buffer`)."""
        from deepspeed.runtime.swap_tensor.partitioned_param_swapper import PartitionedParamStatus

        if param.ds_tensor.status != PartitionedParamStatus.NOT_AVAILABLE:
            raise BadStateError(f"swap_into_buffer: param {param.ds_id} is already available or in flight")
        self.swapper.swap_into_buffer(param.ds_id, dest_buffer)

    # -- release
    def remove_partition_and_release_buffers(self, params):
        """Gives back the params' buffers (after their I/O in flight ends: DeepSpeed's
        frees them under it); the params become NOT_AVAILABLE."""
        params = list(params)
        ids = {p.ds_id for p in params}
        busy = [p for p, _ in self._inflight if p.ds_id in ids] + [p for p in self._releasing if p.ds_id in ids]
        if busy:
            busy_ids = sorted({p.ds_id for p in busy})
            self.swapper.wait_params(busy_ids)
            self._inflight = [(p, d) for p, d in self._inflight if p.ds_id not in ids]
            self._releasing = [p for p in self._releasing if p.ds_id not in ids]
        held = [pid for pid in sorted(ids) if self.swapper._status(pid) == ParamStatus.AVAILABLE]
        if held:
            self.swapper.release(held)
        self._mark_released(params)

    # -- the fp16 params from the optimizer step
    def reserve_partitioned_swap_space(self, partition_num_elems):
        self.swapper.reserve_partitioned_swap_space([int(n) for n in partition_num_elems])

    def swap_out_partitioned_params(self, dst_fp16_params, src_fp32_params):
        """Converts each fp32 source to the model dtype and writes it over its param's
        swap file, in pieces that fit the reserved space."""
        dst, src = list(dst_fp16_params), list(src_fp32_params)
        if len(dst) != len(src):
            raise InvalidArgumentError(f"{len(dst)} fp16 params but {len(src)} fp32 sources")
        capacity = self.swapper.partitioned_swap_capacity()
        if capacity == 0:
            raise BadStateError("swap_out_partitioned_params before reserve_partitioned_swap_space")
        self.synchronize_writes()
        start = 0
        while start < len(dst):
            used, end = 0, start
            while end < len(dst):
                need = self._io_aligned_numel(src[end].numel())
                if used + need > capacity:
                    break
                used, end = used + need, end + 1
            if end == start:
                raise NoBufferError(
                    f"param {dst[start].ds_id}: {src[start].numel()} elements do not fit the partitioned swap "
                    f"space of {capacity} elements (reserve_partitioned_swap_space got the largest sub-group; "
                    f"zero_optimization.sub_group_size sets it)"
                )
            self.swapper.swap_out_partitioned([p.ds_id for p in dst[start:end]], src[start:end])
            start = end
        self._mark_released(dst)

    def __repr__(self):
        return f"<DeepSpeedParamSwapper {self.swap_folder} {self.swapper!r}>"
