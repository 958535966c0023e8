"""DeepSpeed's ZeRO-3 optimizer swappers (`PartitionedOptimizerSwapper`,
`PipelinedOptimizerSwapper`) on libswapper's native optimizer-state swapper
(swapper.OptimizerSwapper).

`swapper.deepspeed.patch_deepspeed()` puts `DeepSpeedOptimizerSwapper` under both
module-level names of `deepspeed.runtime.zero.stage3`, which builds it as DeepSpeed's:
`cls(swap_config, aio_config, base_folder, optimizer, largest_numel, device, dtype,
timers)`. It is pipelined whatever `pipeline_read` / `pipeline_write` say: while the
caller steps sub-group i, the native swapper reads the next ones ahead and writes the
previous ones behind, as far as the ring allows. The arithmetic stays the caller's (the
stage's optimizer: DeepSpeed's CPU Adam or torch's Adam run in place in the ring).

The protocol it speaks is docs/deepspeed-optimizer-swapper-protocol.md. In short:

| DeepSpeed calls | here |
| --- | --- |
| `initialize_parameters(parameters, src_tensors)` | registers each sub-group (param, the optimizer's state tensors, gradient), writes the up-cast sources in one native step |
| `initialize_from_swapped_fp16_params(...)` (fast_init) | as above, the fp16/bf16 pieces read by param id from the replacement parameter swapper (`SwappedParamPath`), or from DeepSpeed's own files |
| `swap_out_gradients(parameter, offsets, tensors)` | `OptimizerSwapper.swap_out_gradients` (copied into the ring, written asynchronously) |
| `swap_in_optimizer_state(p, async_parameter=next)` | the first of a chain begins a native step over the chain of sub-groups learned from earlier calls (p, next, next's next, ...); each call takes the next ready visit; `p.data`, `p.grad` (once gradients were swapped out) and the optimizer's state tensors become views of the ring |
| `swap_out_optimizer_state(p, async_swap)` | copies in whatever the caller put elsewhere (the state tensors its first step created), hands the visit back (write-behind); after the last of the chain the writes go on into the next forward pass, and the next call that needs them (gradients, swap-in, checkpoint, purge, close) ends the step: waits for every write, reports every failure |
| `release_swap_buffers(p)` | discards the visit (the files keep their state) |
| `writeback_optimizer_state_and_gradients(p, write_opt_state, write_gradients)` | hands back (state) or discards, then rewrites the gradient |
| `purge_state()` | nothing to forget: see below |
| `swap_folder` | the rank folder, which holds the store's extent files and manifest |
| the engine's `save_checkpoint` / `load_checkpoint` copying `swap_folder` | `save_snapshot(dest)` / `load_snapshot(src)` (patch_deepspeed diverts the copies: below) |

State tensors: the native swapper registers every tensor of a sub-group up front, so the
names come from the optimizer's class (`state_names`): torch's Adam/AdamW (with amsgrad,
`max_exp_avg_sq` too), DeepSpeed's CPU Adam, Adagrad and Lion. Other optimizers are
refused at construction (patch_deepspeed(swappers=False) keeps DeepSpeed's classes).
Until the optimizer has created its state (its first step), the state tensors are not
bound: the optimizer creates them in memory, and swap-out copies them into the ring. A
swappable state tensor of another name is an error, never dropped. Non-tensor and small
state (torch's `step`) stays in memory, as with DeepSpeed. DeepSpeed's purge_state makes
its swapper re-bind the state tensors the optimizer holds at the next swap-in (reading
them from the files); this class binds them at every swap-in, so purge_state only
checks that no step is under way and settles gradient writes.

Memory: the ring is `offload_optimizer.buffer_count` buffers of `largest_numel` fp32
elements (4096-aligned), page-locked, as DeepSpeed's pool; a visit needs 2 + the state
tensor count of them (Adam: 4, DeepSpeed's default buffer_count), more let reads run
ahead. Too few is an error naming buffer_count and the count that fits, a sub-group
larger than largest_numel one naming sub_group_size.

Checkpoints: DeepSpeed's engine copies `swap_folder` into the checkpoint with
`shutil.copytree` at save_checkpoint (`<save_dir>/<tag>/offloaded_tensors/rank<R>`) and
back at load_checkpoint, then rewrites every sub-group through the swapper
(`reset_swap_buffers`, which also rewrites the swapped bf16/fp16 params from the fp32
master weights). Under patch_deepspeed those two copies become `save_snapshot(dest)`
and `load_snapshot(src)` (swapper.deepspeed_checkpoint): the save records a snapshot of
the optimizer state as of the last step (reflinks where the file system shares extents,
else copies of the recorded ranges; swapper.OptimizerSwapper.snapshot), the load puts
it back into the rank folder (OptimizerSwapper.restore), adopts it with a new native
swapper and registers every sub-group again, which takes each one's state up after the
library checked names, sizes and (with verify_checksums) checksums. A snapshot with
other sub-groups, or a folder DeepSpeed's own swapper saved, is an error naming it.
Gradients are not part of a checkpoint (DeepSpeed's save skips its gradient files too).
"""

import errno
import os

import numpy as np

from ._takeover import take_over
from .deepspeed_param_swapper import SwappedParamPath, swapper_io_settings
from .errors import BadStateError, InvalidArgumentError, NoBufferError, NotFoundError, SwapperError
from .optimizer import OptimizerSwapper

MIN_AIO_BYTES = 1 << 20  # DeepSpeed's swap_tensor.utils.MIN_AIO_BYTES
ALIGN = 4096
PARAM, GRAD = "param", "grad"


def _aligned(nbytes):
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


def state_names(optimizer):
    """The names of the per-element state tensors `optimizer` keeps for a parameter, in
    the order they are registered; InvalidArgumentError for an optimizer whose state this
    module does not know."""
    import torch

    kinds = [(torch.optim.AdamW, "adam"), (torch.optim.Adam, "adam"), (torch.optim.Adagrad, "adagrad")]
    try:
        from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        from deepspeed.ops.lion import DeepSpeedCPULion

        kinds += [(DeepSpeedCPUAdam, "adam"), (DeepSpeedCPUAdagrad, "cpu_adagrad"), (DeepSpeedCPULion, "lion")]
    except ImportError:
        pass
    kind = next((k for cls, k in kinds if isinstance(optimizer, cls)), None)
    amsgrad = bool(getattr(optimizer, "defaults", {}).get("amsgrad", False))
    if kind == "adam":
        return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
    if kind == "cpu_adagrad":
        return ["exp_avg_sq"]
    if kind == "adagrad":
        return ["sum"]
    if kind == "lion":
        return ["exp_avg"]
    raise InvalidArgumentError(
        f"offload_optimizer.device nvme with {type(optimizer).__module__}.{type(optimizer).__name__}: libswapper's "
        "optimizer swapper registers a sub-group's state tensors up front and knows those of torch's Adam, AdamW and "
        "Adagrad and DeepSpeed's CPU Adam, Adagrad and Lion; patch_deepspeed(swappers=False) keeps DeepSpeed's "
        "optimizer swappers for this optimizer"
    )


class _SubGroup:
    """A DeepSpeed sub-group as the native swapper knows it."""

    __slots__ = ("index", "ds_id", "numel", "has_gradients")

    def __init__(self, index, ds_id, numel):
        self.index = index
        self.ds_id = ds_id
        self.numel = numel
        self.has_gradients = False


class DeepSpeedOptimizerSwapper:
    """DeepSpeed's optimizer swapper interface on a swapper.OptimizerSwapper. Not
    thread-safe (neither is DeepSpeed's, nor its caller)."""

    # Keyword arguments for swapper.OptimizerSwapper set by patch_deepspeed(...)
    # (verify_checksums, backend, direct_io).
    swapper_options = {}

    def __init__(self, swap_config, aio_config, base_folder, optimizer, largest_numel, device, dtype, timers=None):
        import torch
        from deepspeed import comm as dist

        if dtype != torch.float32:
            raise InvalidArgumentError(
                f"optimizer state of dtype {dtype}: libswapper's optimizer swapper keeps fp32 master weights, moments "
                "and gradients (zero_optimization master weights dtype)"
            )
        self.swap_config = swap_config
        self.aio_config = aio_config
        self.optimizer = optimizer
        self.timers = timers
        self.device = device
        self.dtype = dtype
        self.state_names = state_names(optimizer)
        base_folder = os.path.normpath(str(base_folder))
        if os.path.basename(base_folder) != "zero_stage_3":
            raise InvalidArgumentError(f"base_folder {base_folder}: expected <nvme_path>/zero_stage_3, as stage3 gives it")
        nvme_path = os.path.dirname(base_folder)
        rank = dist.get_rank()
        self.swap_folder = os.path.join(base_folder, "optimizer", f"rank{rank}")
        self.swap_element_size = 4
        self.min_aio_bytes = max(MIN_AIO_BYTES, int(aio_config["block_size"]))
        self.largest_numel = int(largest_numel)
        self.buffer_count = int(swap_config.buffer_count)
        need = 2 + len(self.state_names)
        if self.buffer_count < need:
            raise NoBufferError(
                f"zero_optimization.offload_optimizer.buffer_count = {self.buffer_count}: a sub-group in memory holds "
                f"its fp32 params, its gradient and {len(self.state_names)} state tensors ({', '.join(self.state_names)}), "
                f"one buffer of up to {self.largest_numel} elements each; set buffer_count >= {need} "
                f"({2 * need} or more lets the next sub-group's read overlap the step)"
            )
        self.ring_bytes = self.buffer_count * _aligned(self.largest_numel * 4)
        self.timer_names = set()
        self.opt = None
        self._groups = {}  # ds_id -> _SubGroup
        self._by_index = []  # index -> _SubGroup
        self._succ = {}  # index -> index of the sub-group DeepSpeed steps next
        self._order = None  # the native step's order while one is under way
        self._pos = 0  # sub-groups of the order taken so far
        self._visits = {}  # index -> (swapper.optimizer.Visit, {name: torch view})
        # The last step's chain is done and its end (the wait for its writes) is left to
        # the next call that needs it (_settle): the writes overlap the next forward pass.
        self._ending = False
        self.verify_checksums = bool(self.swapper_options.get("verify_checksums", False))
        self._nvme_path, self._rank = nvme_path, rank
        self._native = dict(
            ring_bytes=self.ring_bytes,
            pin_memory=True,  # DeepSpeed page-locks its optimizer swap buffers too
            **swapper_io_settings(aio_config),
            **self.swapper_options,
        )
        os.makedirs(nvme_path, exist_ok=True)
        take_over(self.swap_folder, self)
        self.opt = OptimizerSwapper(nvme_path, rank=rank, **self._native)

    def close(self):
        """Waits for I/O in flight (the last step's writes: their failures are raised)
        and frees the ring. Idempotent."""
        if self.opt is not None:
            try:
                self._settle("close")
            finally:
                self.opt.close()

    def _settle(self, what):
        """Ends the last step if its end was left for later: waits for its writes and
        raises their failures, naming `what` waited for them."""
        if not self._ending:
            return
        self._ending = False
        try:
            self.opt.end_step()
        except SwapperError as e:
            raise type(e)(f"the last optimizer step's writes, waited for at {what}: {e.message}", e.status) from e

    def stats(self):
        return self.opt.stats()

    # -- sizes and DeepSpeed's timers
    def is_swappable_tensor(self, tensor=None, numel=None):
        if tensor is None and numel is None:
            raise InvalidArgumentError("is_swappable_tensor: give tensor or numel")
        if tensor is not None:
            if not getattr(tensor, "swappable", True):
                return False
            numel = tensor.numel()
        return self.min_aio_bytes <= int(numel) * self.swap_element_size

    def init_timers(self):
        """DeepSpeed's swappers reset their timers here; the native swapper's waits are
        in stats()."""
        self.timer_names = set()

    def log_timers(self):
        """DeepSpeed's swappers log their timers here (nothing is timed in Python)."""

    def pre_backward(self):
        self.init_timers()

    def post_backward(self):
        """Nothing to do after backward: gradient writes are waited for at the next step."""

    def flush_gradients(self):
        """Waits for every gradient write (and the last step's writes); raises their
        failures."""
        self._settle("flush_gradients")
        self.opt.wait_gradients()

    # -- registration
    def _sub(self, parameter):
        return self._groups.get(parameter.ds_id) if parameter is not None else None

    def _tensors(self, numel):
        return [(PARAM, numel)] + [(name, numel) for name in self.state_names] + [(GRAD, numel, "gradient")]

    def _register(self, parameters, numels):
        self._settle("initialize")
        subs = []
        for p, n in zip(parameters, numels):
            n = int(n)
            if p.ds_id in self._groups:
                raise BadStateError(f"sub-group {p.ds_id} is already initialised")
            if n > self.largest_numel:
                raise NoBufferError(
                    f"sub-group {p.ds_id} of {n} elements is larger than the largest sub-group ({self.largest_numel} "
                    "elements) the ring was sized for; zero_optimization.sub_group_size sets it"
                )
            sub = _SubGroup(len(self._by_index), p.ds_id, n)
            self.opt.register(sub.index, self._tensors(n))
            self._groups[p.ds_id] = sub
            self._by_index.append(sub)
            subs.append(sub)
        return subs

    # -- initialisation
    def _write_each(self, subs, fill):
        """One native step over `subs`; fill(sub, visit) sets each one's tensors, which
        are then written."""
        self._abandon_step()
        for v in self.opt.step([s.index for s in subs]):
            fill(self._by_index[v.subgroup], v)
            v.hand_back()

    def initialize_parameters(self, parameters, src_tensors):
        """Registers each parameter's sub-group and writes its source, up-cast to fp32,
        as the master weights."""
        parameters, src_tensors = list(parameters), list(src_tensors)
        if len(parameters) != len(src_tensors):
            raise InvalidArgumentError(f"{len(parameters)} parameters but {len(src_tensors)} source tensors")
        subs = self._register(parameters, [t.numel() for t in src_tensors])
        sources = {s.index: t for s, t in zip(subs, src_tensors)}

        def fill(sub, v):
            _torch(v[PARAM]).copy_(sources[sub.index].data.reshape(-1))

        self._write_each(subs, fill)

    def initialize_from_swapped_fp16_params(self, fp16_partitions_info, fp16_num_elems, fp16_pinned_buffers, fp32_parameters):
        """fast_init: each sub-group's fp16/bf16 pieces (in memory, or on NVMe: read by
        param id from libswapper's parameter swapper, or from DeepSpeed's file), up-cast
        into the master weights."""
        infos, numels, params = list(fp16_partitions_info), list(fp16_num_elems), list(fp32_parameters)
        if not len(infos) == len(numels) == len(params):
            raise InvalidArgumentError(f"{len(params)} parameters, {len(infos)} partition lists, {len(numels)} sizes")
        subs = self._register(params, numels)
        pieces = {s.index: info for s, info in zip(subs, infos)}
        bounce = list(fp16_pinned_buffers)

        def fill(sub, v):
            dst = _torch(v[PARAM])
            offset = 0
            for tensor, numel, path in pieces[sub.index]:
                numel = int(numel)
                if offset + numel > sub.numel:
                    raise InvalidArgumentError(f"sub-group {sub.ds_id}: its pieces exceed its {sub.numel} elements")
                piece = dst.narrow(0, offset, numel)
                if path is None:
                    piece.copy_(tensor.data.reshape(-1).narrow(0, 0, numel))
                else:
                    piece.copy_(_read_low_precision(path, numel, bounce))
                offset += numel

        self._write_each(subs, fill)

    # -- backward
    def swap_out_gradients(self, parameter, gradient_offsets, gradient_tensors):
        """Writes the gradient pieces at their element offsets (copied: the tensors are
        free when the call returns; the writes finish before the next step)."""
        import torch

        sub = self._sub(parameter)
        if sub is None:
            return
        fragments = [
            (int(off), t.detach().reshape(-1).to(torch.float32).contiguous().numpy())
            for off, t in zip(gradient_offsets, gradient_tensors)
        ]
        if fragments:
            self._settle("swap_out_gradients")
            self.opt.swap_out_gradients(sub.index, GRAD, fragments)
            sub.has_gradients = True

    # -- the step
    def _chain(self, start):
        order, seen = [start], {start}
        while order[-1] in self._succ and self._succ[order[-1]] not in seen:
            order.append(self._succ[order[-1]])
            seen.add(order[-1])
        return order

    def _abandon_step(self):
        """Ends a native step left under way (its caller stopped part-way: an exception
        in the step): visits out are discarded (their files keep the previous state), the
        rest of the order is taken and discarded; real failures (writes) are raised."""
        if self._order is None:
            return
        for index, (visit, _) in list(self._visits.items()):
            if visit.open:
                visit.discard()
        self._visits = {}
        try:
            while True:
                v = self.opt.next_ready()
                if v is None:
                    break
                v.discard()
        except SwapperError:
            pass  # a read that failed: its sub-group is skipped, end_step reports it
        finally:
            self._order = None
        self.opt.end_step()

    def swap_in_optimizer_state(self, parameter, async_parameter=None):
        """Makes `parameter.data`, `parameter.grad` (once gradients were swapped out) and
        the optimizer's state tensors of `parameter` views of the ring; with
        `async_parameter`, the native step goes on over the sub-groups that follow, read
        ahead as the ring allows."""
        sub = self._sub(parameter)
        if sub is None:
            return
        self._settle("swap_in_optimizer_state")
        nxt = self._sub(async_parameter)
        if nxt is not None:
            self._succ[sub.index] = nxt.index
        if self._order is not None and (self._pos >= len(self._order) or self._order[self._pos] != sub.index):
            self._abandon_step()
        if self._order is None:
            order = self._chain(sub.index) if nxt is not None else [sub.index]
            self.opt.begin_step(order)
            self._order, self._pos = order, 0
        try:
            visit = self.opt.next_ready()
        except SwapperError as e:
            self._pos += 1
            try:
                self._abandon_step()
            except SwapperError:
                pass  # the same read failure, reported again by end_step
            if isinstance(e, NoBufferError):
                raise NoBufferError(
                    f"{e} (the ring is zero_optimization.offload_optimizer.buffer_count = {self.buffer_count} buffers "
                    f"of {_aligned(self.largest_numel * 4)} bytes: raise buffer_count)"
                ) from None
            raise
        if visit is None or visit.subgroup != sub.index:
            raise BadStateError(f"sub-group {sub.ds_id}: the native step handed out {visit and visit.subgroup}")
        self._pos += 1
        self._bind(parameter, sub, visit)

    def _bind(self, parameter, sub, visit):
        views = {name: _torch(visit[name]) for name in [PARAM, GRAD] + self.state_names}
        self._visits[sub.index] = (visit, views)
        parameter.data = views[PARAM]
        if sub.has_gradients:
            parameter.grad = views[GRAD]
        state = self.optimizer.state.get(parameter) if parameter in self.optimizer.state else None
        for name in self.state_names:
            tensor = state.get(name) if state is not None else None
            if _is_tensor(tensor):
                tensor.data = views[name]

    def _visit_of(self, parameter, what):
        """The sub-group of `parameter` and the torch views of its visit; (None, None)
        for a parameter this swapper does not keep (as DeepSpeed's, a no-op then)."""
        sub = self._sub(parameter)
        if sub is None:
            return None, None
        if sub.index not in self._visits:
            raise BadStateError(f"{what} of sub-group {sub.ds_id}, which is not swapped in")
        return sub, self._visits[sub.index][1]

    def _collect(self, parameter, sub, views):
        """Copies into the ring what the caller holds elsewhere: master weights or state
        tensors that are not views of it (the state the optimizer's first step created)."""
        state = self.optimizer.state.get(parameter) if parameter in self.optimizer.state else {}
        for name, tensor in state.items():
            if name not in self.state_names and _is_tensor(tensor) and self.is_swappable_tensor(tensor=tensor):
                raise InvalidArgumentError(
                    f"sub-group {sub.ds_id}: the optimizer keeps a state tensor {name!r} of {tensor.numel()} elements; "
                    f"libswapper's optimizer swapper registered {self.state_names} for "
                    f"{type(self.optimizer).__name__} (patch_deepspeed(swappers=False) keeps DeepSpeed's swappers)"
                )
        held = [(PARAM, parameter)] + [(name, state.get(name)) for name in self.state_names]
        for name, tensor in held:
            if not _is_tensor(tensor):
                continue
            view = views[name]
            if tensor.data_ptr() == view.data_ptr() and tensor.numel() == view.numel():
                continue
            if tensor.numel() != sub.numel:
                raise InvalidArgumentError(
                    f"sub-group {sub.ds_id}: {name} has {tensor.numel()} elements, the sub-group {sub.numel}"
                )
            view.copy_(tensor.data.reshape(-1))

    def _release(self, parameter):
        import torch

        parameter.grad = None
        parameter.data = torch.empty(0, dtype=self.dtype)
        state = self.optimizer.state.get(parameter) if parameter in self.optimizer.state else {}
        for name in self.state_names:
            if _is_tensor(state.get(name)):
                state[name].data = torch.empty(0, dtype=self.dtype)

    def _end_visit(self, sub, write):
        visit, _ = self._visits.pop(sub.index)
        if write:
            visit.hand_back()
        else:
            visit.discard()
        if self._order is not None and self._pos >= len(self._order) and not self._visits:
            self._order = None
            self._ending = True

    def swap_out_optimizer_state(self, parameter, async_swap=False):
        """Hands the sub-group back for writing (params and state). After the last
        sub-group of the native step its writes go on while the caller runs the next
        forward pass: the next call that needs them (gradients swapped out, a swap-in, a
        checkpoint, purge_state, close) waits and raises their failures, naming itself."""
        sub, views = self._visit_of(parameter, "swap_out_optimizer_state")
        if sub is None:
            return
        try:
            self._collect(parameter, sub, views)
        except BaseException:
            self._release(parameter)
            self._end_visit(sub, write=False)
            raise
        self._release(parameter)
        self._end_visit(sub, write=True)

    def release_swap_buffers(self, parameter):
        """Drops the swapped-in sub-group without writing it."""
        sub = self._sub(parameter)
        if sub is None or sub.index not in self._visits:
            return
        self._release(parameter)
        self._end_visit(sub, write=False)

    def writeback_optimizer_state_and_gradients(self, parameter, write_opt_state, write_gradients):
        """The safe set API: writes the state (params and moments) if asked, else drops
        it, and rewrites the gradient if asked."""
        sub, views = self._visit_of(parameter, "writeback_optimizer_state_and_gradients")
        if sub is None:
            return
        gradient = None
        if write_gradients and sub.has_gradients:
            gradient = views[GRAD].detach().clone().numpy()
        if write_opt_state:
            self._collect(parameter, sub, views)
        self._release(parameter)
        self._end_visit(sub, write=bool(write_opt_state))
        if gradient is not None:
            self._settle("writeback_optimizer_state_and_gradients")
            self.opt.swap_out_gradients(sub.index, GRAD, [(0, gradient)])
            self.opt.wait_gradients()

    def purge_state(self):
        """DeepSpeed's purge_state makes its swapper forget which state tensors it bound,
        to bind those the optimizer holds at the next swap-in; this class binds them at
        every swap-in, so there is nothing to forget: it checks that no step is under way
        and settles the gradient writes."""
        if self._order is not None:
            raise BadStateError("purge_state while sub-groups of a step are swapped in")
        self._settle("purge_state")
        self.opt.wait_gradients()

    # -- checkpoints
    def _between_steps(self, what):
        if self._order is not None:
            raise BadStateError(f"{what} while sub-groups of a step are swapped in: between steps only")
        self._settle(what)

    def save_snapshot(self, dest):
        """DeepSpeed's save_checkpoint copy of `swap_folder` into `dest`
        (`<save_dir>/<tag>/offloaded_tensors/rank<R>`): records the optimizer state as of
        the last step there as a snapshot (reflinks where the file system shares extents,
        else copies of the recorded ranges; files and manifest synced). Like DeepSpeed's
        copy, `dest` must not exist (FileExistsError); its parents are created."""
        self._between_steps("a checkpoint save")
        dest = os.fspath(dest)
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "the checkpoint's optimizer snapshot folder exists already", dest)
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        self.opt.snapshot(dest)

    def load_snapshot(self, src):
        """DeepSpeed's load_checkpoint copy of a checkpoint's `offloaded_tensors/rank<R>`
        back into `swap_folder`: puts the snapshot saved there back into the rank folder,
        adopts it with a new native swapper (checksums verified when the snapshot has
        them) and registers every sub-group again, which takes its state up. A snapshot
        whose sub-groups differ (count, tensor names or sizes), or a folder that holds no
        snapshot (saved by DeepSpeed's own optimizer swapper), is an error naming it; the
        swapper then keeps (adopts back) the state of its last step if the snapshot was
        refused before the folder was emptied. Gradients are not in a checkpoint: they are
        rewritten by the next backward."""
        self._between_steps("a checkpoint load")
        src = os.fspath(src)
        if not os.path.isdir(os.path.join(src, "drive0")):
            raise NotFoundError(
                f"{src} holds no libswapper snapshot (no drive0/ folder): a checkpoint saved with DeepSpeed's own "
                "optimizer swapper (unpatched, or patch_deepspeed(swappers=False)) loads only there; nothing was changed"
            )
        self.opt.wait_gradients()
        self.opt.flush()  # what to come back to if the snapshot is refused
        self.opt.close()
        try:
            OptimizerSwapper.restore(src, self._nvme_path, rank=self._rank)
        except SwapperError as e:
            self._readopt(f"the checkpoint {src} was refused ({e})")
            raise
        self._readopt(f"the checkpoint {src}", expect_all=True)

    def _readopt(self, what, expect_all=False):
        """A new native swapper adopting the rank folder, every sub-group registered
        again; with expect_all, the folder must hold exactly their state tensors."""
        for sub in self._by_index:
            sub.has_gradients = False
        try:
            self.opt = OptimizerSwapper(self._nvme_path, rank=self._rank, adopt=True, **self._native)
            waiting = self.opt.stats().adopted_waiting
            for sub in self._by_index:
                self.opt.register(sub.index, self._tensors(sub.numel))
        except SwapperError as e:
            raise BadStateError(
                f"{what}; the optimizer swapper cannot adopt {self.swap_folder} ({e}): it is unusable until the engine "
                "is rebuilt"
            ) from None
        if not expect_all:
            return
        per_group = 1 + len(self.state_names)
        left = self.opt.stats().adopted_waiting
        taken = waiting - left
        if left or taken != per_group * len(self._by_index):
            self.opt.close()
            raise BadStateError(
                f"{what} is a snapshot of other sub-groups: {waiting // per_group} sub-groups of "
                f"{per_group} state tensors ({', '.join([PARAM] + self.state_names)}) there, {len(self._by_index)} "
                f"here, {taken} tensors matched; the optimizer swapper is unusable until the engine is rebuilt"
            )

    def __repr__(self):
        return f"<DeepSpeedOptimizerSwapper {self.swap_folder} {len(self._by_index)} sub-groups>"


def _torch(array):
    import torch

    return torch.from_numpy(array)


def _is_tensor(obj):
    import torch

    return torch.is_tensor(obj)


def _read_low_precision(path, numel, bounce):
    """A param's fp16/bf16 partition of `numel` elements: through libswapper's parameter
    swapper by id (a SwappedParamPath), into one of DeepSpeed's reserved pinned buffers
    when one fits, or from DeepSpeed's own swap file."""
    import torch

    if isinstance(path, SwappedParamPath):
        dtype = path.owner.dtype
        fits = [b for b in bounce if b.dtype == dtype and b.numel() >= numel]
        dest = fits[0].narrow(0, 0, numel) if fits else torch.empty(numel, dtype=dtype)
        path.read_into(dest)
        return dest
    if not bounce:
        raise InvalidArgumentError(f"fast_init: no pinned buffer says the dtype of the params in {path}")
    dtype = bounce[0].dtype
    nbytes = numel * bounce[0].element_size()
    try:
        raw = np.fromfile(str(path), dtype=np.uint8, count=nbytes)
    except OSError as e:
        raise NotFoundError(f"fast_init: cannot read {path}: {e}") from None
    if raw.size != nbytes:
        raise NotFoundError(f"fast_init: {path} holds {raw.size} bytes, the param {nbytes}")
    return torch.from_numpy(raw).view(dtype)
