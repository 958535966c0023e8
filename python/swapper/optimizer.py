"""The optimizer-state swapper (OptimizerSwapper): ZeRO-Infinity's optimizer offload
(fp32 master params, optimizer moments, gradients) in sub-groups on NVMe, stepped
through a bounded ring of page-locked memory.

    with swapper.OptimizerSwapper("/nvme", ring_bytes=1 << 28) as opt:
        opt.register(0, [("param", n), ("exp_avg", n), ("exp_avg_sq", n), ("grad", n, "gradient")])
        opt.swap_out_gradients(0, "grad", [(0, grad_fragment)])   # during backward
        for v in opt.step([0]):          # begin_step, next_ready..., end_step
            adam(v["param"], v["exp_avg"], v["exp_avg_sq"], v["grad"])   # in place
            v.hand_back()                # queued for write-behind

A visit's tensors are numpy float32 views of the ring, valid until hand_back() or
discard(); the views are then made read-only (a view derived from them meanwhile is not:
do not write through it afterwards). `torch.from_numpy(view)` shares the memory
(zero-copy), so a torch optimizer can step in place. A visit left without either (an
exception in the step) is discarded by step(): the files keep the previous step's state.

DeepSpeed's configuration and calls (for a replacement of its PartitionedOptimizerSwapper
and PipelinedOptimizerSwapper):

    opt = swapper.OptimizerSwapper.from_deepspeed_config(ds_config, rank, largest_numel)
    opt.register(i, [("fp32", n), ("exp_avg", n), ("exp_avg_sq", n), ("grad", n, "gradient")])
    opt.writeback(i, {"fp32": initial_fp32})          # initialize_parameters
    opt.swap_out_gradients(i, "grad", [(offset, g)])  # during backward, at param offsets
    v = opt.swap_in(i, next=i + 1)                    # swap_in_optimizer_state
    ... step in place in v["fp32"], v["exp_avg"], ... (v["grad"] holds the gradients)
    opt.swap_out(i)                                   # swap_out_optimizer_state (write-behind)
    opt.release_swap_buffers(i)                       # after the last sub-group: the step ends
    opt.purge()                                       # purge_state
"""

import dataclasses
import json
from ctypes import byref, c_char_p, c_size_t, c_uint32, c_uint64, c_void_p

import numpy as np

from . import _buffers
from ._handle import Handle
from ._args import _path, _uint
from ._lib import (
    OPTIMIZER_NONE,
    OPTIMIZER_STATS_FIELDS,
    OptimizerConfigStruct,
    OptimizerStatsStruct,
    TensorSpecStruct,
    lib,
)
from .enums import TensorKind, _enum
from .errors import BadStateError, InvalidArgumentError, check
from .io_handle import _IO_KEYS, _fill_io_config
from .memory import _release_retained


@dataclasses.dataclass(frozen=True)
class OptimizerStats:
    """swapper_optimizer_stats: sub-groups, steps, the ring (its bytes are the page-locked
    memory when ring_locked), its use now and at its peak, the most sub-groups read ahead
    at once, bytes moved, nanoseconds spent waiting for reads and writes, and the state
    tensors of an adopted folder no registration has taken up yet."""

    subgroups: int
    steps: int
    ring_bytes: int
    ring_in_use: int
    ring_peak: int
    read_ahead_peak: int
    bytes_read: int
    bytes_written: int
    read_wait_ns: int
    write_wait_ns: int
    adopted_waiting: int
    ring_locked: bool


class Visit:
    """A sub-group out with the caller: `subgroup`, `names`, `tensors` (numpy float32
    views of the ring, in registration order; also `visit[name]` or `visit[k]`)."""

    def __init__(self, opt, subgroup, names, tensors):
        self._opt = opt
        self.subgroup = subgroup
        self.names = names
        self.tensors = tensors
        self._open = True

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                key = self.names.index(key)
            except ValueError:
                raise KeyError(f"sub-group {self.subgroup} has no tensor {key!r}; it has {self.names}") from None
        return self.tensors[key]

    def _end(self, fn):
        if not self._open:
            raise BadStateError(f"the visit of sub-group {self.subgroup} has ended")
        self._open = False
        for t in self.tensors:
            t.flags.writeable = False
        check(fn(self._opt._h(), self.subgroup))

    def hand_back(self):
        """Queues the write-behind of the state tensors; ends the visit."""
        self._end(self._opt._lib.swapper_optimizer_hand_back)

    def discard(self):
        """Ends the visit without writing (the files keep their state)."""
        self._end(self._opt._lib.swapper_optimizer_discard)

    @property
    def open(self):
        return self._open

    def swap_out_params(self, tensor, swapper, param_ids, numels):
        """Writes tensor `tensor` (name or index) to the parameter swapper `swapper`:
        its first numels[0] elements as param_ids[0], and so on, converted to the
        swapper's dtype, straight from the ring (swapper_optimizer_swap_out_params)."""
        if not self._open:
            raise BadStateError(f"the visit of sub-group {self.subgroup} has ended")
        k = self._index(tensor)
        ids = [_uint(i, "param id") for i in param_ids]
        ns = [_uint(n, "numel") for n in numels]
        if len(ids) != len(ns):
            raise InvalidArgumentError(f"{len(ids)} param ids but {len(ns)} numels")
        check(
            self._opt._lib.swapper_optimizer_swap_out_params(
                self._opt._h(),
                self.subgroup,
                k,
                swapper._h(),
                (c_uint64 * len(ids))(*ids),
                (c_uint64 * len(ns))(*ns),
                len(ids),
            )
        )

    def _index(self, tensor):
        if isinstance(tensor, str):
            if tensor not in self.names:
                raise KeyError(f"sub-group {self.subgroup} has no tensor {tensor!r}")
            return self.names.index(tensor)
        return _uint(tensor, "tensor", 32)


class OptimizerSwapper(Handle):
    """An optimizer-state swapper. Use as a context manager or call close(). Thread-safe.

    nvme_path: a folder, or a list of folders (several drives); files go under
    <path>/zero_stage_3/optimizer/rank<rank>/. ring_bytes: the page-locked ring (at least
    the largest sub-group; twice that overlaps reads with steps). read_ahead: most
    sub-groups read ahead (0: as many as the ring holds). The I/O settings are those of
    IoHandle (block_size, queue_depth, thread_count, ...). adopt: keep the rank folders and
    adopt what the last flush made durable (each sub-group takes its state up when it is
    registered again). flush_at_end_step: every end_step also flushes, once the step's
    writes are done; a failed flush raises from end_step like the step's other failures
    (the step is ended; the previous flush stays the durable one).
    """

    def __init__(
        self,
        nvme_path,
        rank=0,
        ring_bytes=1 << 30,
        read_ahead=0,
        pin_memory=True,
        verify_checksums=False,
        adopt=False,
        flush_at_end_step=False,
        **io,
    ):
        unknown = set(io) - set(_IO_KEYS)
        if unknown:
            raise TypeError(f"unknown I/O settings {sorted(unknown)}; known: {', '.join(_IO_KEYS)}")
        self._lib = lib()
        cfg = OptimizerConfigStruct()
        self._lib.swapper_optimizer_config_default(byref(cfg))
        paths = [nvme_path] if isinstance(nvme_path, (str, bytes)) or hasattr(nvme_path, "__fspath__") else list(nvme_path)
        encoded = [_path(p, "nvme_path") for p in paths]
        arr = (c_char_p * len(encoded))(*encoded)
        cfg.nvme_paths = arr
        cfg.nvme_path_count = len(encoded)
        cfg.rank = _uint(rank, "rank", 32)
        cfg.ring_bytes = _uint(ring_bytes, "ring_bytes")
        cfg.read_ahead = _uint(read_ahead, "read_ahead", 32)
        cfg.pin_memory = bool(pin_memory)
        cfg.verify_checksums = bool(verify_checksums)
        cfg.adopt = bool(adopt)
        cfg.flush_at_end_step = bool(flush_at_end_step)
        io_defaults = {k: getattr(cfg.io, k) for k in _IO_KEYS}
        io_defaults.update(io)
        _fill_io_config(cfg.io, **io_defaults)
        handle = c_void_p()
        check(self._lib.swapper_optimizer_create(byref(cfg), byref(handle)))
        self._setup(handle)

    def _setup(self, handle):
        self._handle = handle
        self._names = {}  # sub-group -> tensor names
        self._kinds = {}  # sub-group -> tensor kinds
        self._in_step = False
        self._order = []  # the step's order
        self._out = {}  # sub-group -> Visit taken by swap_in

    @classmethod
    def from_deepspeed_config(cls, config, rank=0, largest_numel=0):
        """An optimizer swapper from a DeepSpeed configuration: JSON text, a path to a
        JSON file, or a dict (its `aio` block and `zero_optimization.offload_optimizer`:
        device, nvme_path (a string or a list), buffer_count, pipeline_read,
        pipeline_write, fast_init, pin_memory). The ring is buffer_count tensors of
        `largest_numel` float32 elements (the largest tensor of any sub-group, as
        DeepSpeed sizes its swap buffers; 0 takes zero_optimization.sub_group_size), or
        offload_optimizer.ring_bytes (libswapper's key) when set. libswapper's keys
        offload_optimizer.libswapper_adopt and
        offload_optimizer.libswapper_flush_at_end_step set adopt and flush_at_end_step.
        See swapper_optimizer_create_from_json."""
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
        self = cls.__new__(cls)
        self._lib = lib()
        handle = c_void_p()
        check(
            self._lib.swapper_optimizer_create_from_json(
                encoded, _uint(rank, "rank", 32), _uint(largest_numel, "largest_numel"), byref(handle)
            )
        )
        self._setup(handle)
        return self

    # -- lifetime
    def close(self):
        """Waits for I/O in flight, frees the ring, unlocks the folders. Idempotent.
        Views of the ring still referenced keep its memory until they are gone."""
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None:
            self._lib.swapper_optimizer_destroy(handle)

    # -- sub-groups
    def register(self, subgroup, tensors):
        """Registers sub-group `subgroup`: `tensors` is a list of (name, numel) or
        (name, numel, kind) with kind "state" (default) or "gradient". Every tensor reads
        back as zeros until written (the file system provides them)."""
        subgroup = _uint(subgroup, "sub-group", 32)
        specs, names = [], []
        for t in tensors:
            name, numel, kind = (tuple(t) + ("state",))[:3]
            names.append(str(name))
            specs.append((str(name).encode(), _uint(numel, "numel"), int(_enum(TensorKind, kind, "tensor kind"))))
        arr = (TensorSpecStruct * len(specs))(*[TensorSpecStruct(n, c, k) for n, c, k in specs])
        check(self._lib.swapper_optimizer_register(self._h(), subgroup, arr, len(specs)))
        self._names[subgroup] = names
        self._kinds[subgroup] = [TensorKind(k) for _, _, k in specs]

    def purge(self):
        """Forgets every sub-group (DeepSpeed's purge_state)."""
        check(self._lib.swapper_optimizer_purge(self._h()))
        self._names = {}
        self._kinds = {}

    # -- steps
    def begin_step(self, order):
        ids = [_uint(i, "sub-group", 32) for i in order]
        check(self._lib.swapper_optimizer_begin_step(self._h(), (c_uint32 * len(ids))(*ids), len(ids)))
        self._in_step = True
        self._order = ids

    def next_ready(self):
        """The next sub-group of the step once read (a Visit), or None when all were
        handed out."""
        g, n = c_uint32(), c_size_t()
        check(self._lib.swapper_optimizer_next_ready(self._h(), byref(g), None, 0, byref(n)))
        if g.value == OPTIMIZER_NONE:
            return None
        tensors = []
        for k in range(n.value):
            ptr, numel = c_void_p(), c_uint64()
            check(self._lib.swapper_optimizer_tensor(self._h(), g.value, k, byref(ptr), byref(numel)))
            tensors.append(self._view(ptr.value, numel.value))
        names = self._names.get(g.value, [str(k) for k in range(n.value)])
        return Visit(self, g.value, names, tensors)

    def flush(self):
        """Makes the optimizer state resumable as of now (swapper_optimizer_flush): call
        it after end_step. An OptimizerSwapper created with adopt=True on the same folders
        takes each sub-group's state up when it is registered again."""
        check(self._lib.swapper_optimizer_flush(self._h()))

    def snapshot(self, dest_folder):
        """Flushes, then records that state into the checkpoint folder `dest_folder`
        (swapper_optimizer_snapshot; between steps). Restore with OptimizerSwapper.restore,
        then create with adopt=True."""
        check(self._lib.swapper_optimizer_snapshot(self._h(), _path(dest_folder, "dest_folder")))

    @staticmethod
    def restore(snapshot_folder, nvme_path, rank=0):
        """Puts a snapshot back into the rank folders of `nvme_path` (a folder or a list),
        emptying them first (swapper_optimizer_restore); then create an OptimizerSwapper
        with the same nvme_path and rank and adopt=True."""
        cfg = OptimizerConfigStruct()
        lib().swapper_optimizer_config_default(byref(cfg))
        paths = [nvme_path] if isinstance(nvme_path, (str, bytes)) or hasattr(nvme_path, "__fspath__") else list(nvme_path)
        encoded = [_path(p, "nvme_path") for p in paths]
        arr = (c_char_p * len(encoded))(*encoded)
        cfg.nvme_paths = arr
        cfg.nvme_path_count = len(encoded)
        cfg.rank = _uint(rank, "rank", 32)
        check(lib().swapper_optimizer_restore(_path(snapshot_folder, "snapshot_folder"), byref(cfg)))

    def end_step(self):
        try:
            check(self._lib.swapper_optimizer_end_step(self._h()))
        except BadStateError as e:
            # Refused with sub-groups still out: the step goes on.
            self._in_step = "still out" in str(e)
            raise
        except BaseException:
            self._in_step = False
            raise
        self._in_step = False

    def step(self, order):
        """Runs a step over `order`: yields each Visit in turn (hand it back or discard
        it), then ends the step. A visit left open (an exception in the caller's step) is
        discarded and the step ended before the exception goes on."""
        self.begin_step(order)
        visit = None
        try:
            while True:
                visit = self.next_ready()
                if visit is None:
                    break
                yield visit
                if visit.open:
                    raise BadStateError(
                        f"sub-group {visit.subgroup} was neither handed back nor discarded before the next"
                    )
        except BaseException:
            if visit is not None and visit.open:
                visit.discard()
            try:
                self.end_step()
            except Exception:
                pass
            raise
        self.end_step()

    def _view(self, address, numel):
        nbytes = int(numel) * 4
        check(self._lib.swapper_memory_retain(c_void_p(address), nbytes))
        return _buffers.view(address, int(numel), np.float32, owner=self, release=_release_retained, release_at_exit=False)

    # -- gradients
    def swap_out_gradients(self, subgroup, tensor, fragments):
        """Writes gradient fragments of tensor `tensor` (name or index) of `subgroup`:
        `fragments` is a list of (element offset, float32 array). The data is copied; the
        arrays are free again when the call returns."""
        subgroup = _uint(subgroup, "sub-group", 32)
        if isinstance(tensor, str):
            names = self._names.get(subgroup, [])
            if tensor not in names:
                raise KeyError(f"sub-group {subgroup} has no tensor {tensor!r}")
            tensor = names.index(tensor)
        keep, offsets, ptrs, numels = [], [], [], []
        for off, data in fragments:
            arr = np.ascontiguousarray(data, dtype=np.float32)
            keep.append(arr)
            offsets.append(_uint(off, "offset"))
            ptrs.append(arr.ctypes.data)
            numels.append(arr.size)
        n = len(keep)
        check(
            self._lib.swapper_optimizer_swap_out_gradients(
                self._h(),
                subgroup,
                _uint(tensor, "tensor", 32),
                (c_uint64 * n)(*offsets),
                (c_void_p * n)(*ptrs),
                (c_uint64 * n)(*numels),
                n,
            )
        )

    def wait_gradients(self):
        check(self._lib.swapper_optimizer_wait_gradients(self._h()))

    # -- DeepSpeed's optimizer-swapper calls
    def swap_in(self, subgroup, next=None):
        """DeepSpeed's swap_in_optimizer_state(parameter, async_parameter): the Visit of
        sub-group `subgroup` once read. With no step under way, begins one over
        `subgroup` and every registered sub-group after it in index order (ZeRO-3's
        order; call begin_step(order) first for another). `next` is DeepSpeed's
        async_parameter: the sub-groups after this one are read ahead anyway, as far as
        the ring (buffer_count) allows. The visit stays out until swap_out(subgroup)."""
        subgroup = _uint(subgroup, "sub-group", 32)
        if subgroup in self._out:
            return self._out[subgroup]
        if not self._in_step:
            self.begin_step([subgroup] + sorted(g for g in self._names if g > subgroup))
        v = self.next_ready()
        if v is None:
            raise BadStateError(f"swap_in({subgroup}): every sub-group of the step was handed out")
        self._out[v.subgroup] = v
        if v.subgroup != subgroup:
            raise BadStateError(
                f"swap_in({subgroup}) out of the step's order: sub-group {v.subgroup} comes next "
                "(it is out now: swap_out it); announce another order with begin_step(order)"
            )
        return v

    def swap_out(self, subgroup):
        """DeepSpeed's swap_out_optimizer_state(parameter): hands the visit of
        `subgroup` back; its write-behind runs while the next sub-group steps."""
        v = self._out.pop(_uint(subgroup, "sub-group", 32), None)
        if v is None:
            raise BadStateError(f"sub-group {subgroup} is not swapped in")
        v.hand_back()

    def release_swap_buffers(self, subgroup=None):
        """DeepSpeed's release_swap_buffers(parameter), called after each sub-group's
        swap_out: hands `subgroup` back if it is still swapped in; after the last
        sub-group of the step's order (or with no sub-group: at once) hands back any
        still swapped in and ends the step (waits for every write-behind; raises the
        step's failures). Nothing when no step is under way."""
        if subgroup is not None:
            subgroup = _uint(subgroup, "sub-group", 32)
            v = self._out.pop(subgroup, None)
            if v is not None and v.open:
                v.hand_back()
            if self._in_step and self._order and subgroup != self._order[-1]:
                return
        out, self._out = self._out, {}
        for v in out.values():
            if v.open:
                v.hand_back()
        if self._in_step:
            self.end_step()

    def writeback(self, subgroup, tensors):
        """DeepSpeed's initialize_parameters / writeback_optimizer_state_and_gradients:
        writes whole tensors of `subgroup` outside a step. `tensors` maps tensor names to
        arrays of the tensor's numel (others keep what they hold): state tensors through
        a one-sub-group step, gradient tensors as one fragment each."""
        subgroup = _uint(subgroup, "sub-group", 32)
        if self._in_step:
            raise BadStateError("writeback during a step: release_swap_buffers() (or end_step()) first")
        names = self._names.get(subgroup)
        if names is None:
            raise KeyError(f"sub-group {subgroup} is not registered")
        unknown = set(tensors) - set(names)
        if unknown:
            raise KeyError(f"sub-group {subgroup} has no tensors {sorted(unknown)}; it has {names}")
        kinds = dict(zip(names, self._kinds[subgroup]))
        grads = {n: a for n, a in tensors.items() if kinds[n] == TensorKind.GRADIENT}
        state = {n: a for n, a in tensors.items() if kinds[n] != TensorKind.GRADIENT}
        for name, arr in grads.items():
            self.swap_out_gradients(subgroup, name, [(0, arr)])
        if grads:
            self.wait_gradients()
        if state:
            for v in self.step([subgroup]):
                for name, arr in state.items():
                    src = np.asarray(arr, dtype=np.float32).reshape(-1)
                    if src.size != v[name].size:
                        v.discard()
                        raise InvalidArgumentError(
                            f"sub-group {subgroup}, tensor {name!r}: {src.size} elements given, it has {v[name].size}"
                        )
                    v[name][:] = src
                v.hand_back()

    def stats(self):
        s = OptimizerStatsStruct()
        check(self._lib.swapper_optimizer_stats(self._h(), byref(s)))
        values = {f: int(getattr(s, f)) for f in OPTIMIZER_STATS_FIELDS}
        return OptimizerStats(ring_locked=bool(s.ring_locked), **values)

    @staticmethod
    def live_handles():
        return int(lib().swapper_optimizer_live_handles())
