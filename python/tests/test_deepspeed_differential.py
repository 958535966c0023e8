"""libswapper's Swapper against DeepSpeed's own AsyncPartitionedParameterSwapper.

Both swappers are driven with the same operations (seeded random sequences, then
targeted ones), and after every step the test compares: the outcome (DeepSpeed
succeeded / asserted, libswapper succeeded / refused with a status), every param's
status, the free and reserved buffer counts, the counters DeepSpeed keeps (pending
reads and writes, inflight params and numel, available params and numel), the data of
every AVAILABLE param and of every swap file (the param's bytes), bit for bit, against
each other and against what the test wrote.

DeepSpeed is the reference, with the deliberate differences listed in DIFFERENCES
below (the README's table): where DeepSpeed asserts half-way or corrupts its own state
on misuse, libswapper refuses with a status and changes nothing. Those cases stay out
of the random sequences; each has a targeted test. The misuses where DeepSpeed asserts
before changing anything are in the random sequences, compared as "DeepSpeed asserted"
against "libswapper refused, nothing changed".

Needs torch and deepspeed (DeepSpeed's async_io op compiles at first use against
libaio-dev, with ninja); the module is skipped without them, unless
SWAPPER_REQUIRE_DEEPSPEED=1 (scripts/deepspeed-test.sh), which makes that a failure.
"""

import glob
import hashlib
import importlib
import os
import random
import time
import types

import numpy as np
import pytest

import swapper
from swapper import errors

REQUIRE = os.environ.get("SWAPPER_REQUIRE_DEEPSPEED") == "1"
DS_VERSION = "0.19.8"


def _need(name):
    if not REQUIRE:
        return pytest.importorskip(name)
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.fail(
            f"SWAPPER_REQUIRE_DEEPSPEED=1 but {name} cannot be imported ({e}); install torch and "
            f"deepspeed=={DS_VERSION} (scripts/deepspeed-test.sh makes the virtual environment)",
            pytrace=False,
        )


torch = _need("torch")
deepspeed = _need("deepspeed")
pps = importlib.import_module("deepspeed.runtime.swap_tensor.partitioned_param_swapper")
Status = pps.PartitionedParamStatus

# What each deliberate difference is; a targeted test below shows each one.
DIFFERENCES = """
| Sequence | DeepSpeed 0.19.8 | libswapper |
| --- | --- | --- |
| `get_buffer` of a param that holds a buffer (AVAILABLE, INFLIGHT, or a write in flight) | hands out a second buffer; the first is lost to the pool for good | `BAD_STATE`, nothing changes |
| `get_buffer(param, 0)` | a 0-element buffer | `INVALID_ARGUMENT` |
| `swap_in` of a batch naming a param twice | asserts after taking a buffer for the first: the buffer is lost | `INVALID_ARGUMENT`, nothing changes |
| `swap_in` of a param that was never swapped out (file missing), or given a buffer again since | reads the old file or asserts after taking the buffer | `BAD_STATE` / `NOT_FOUND`, nothing changes |
| `swap_out_and_release` of an INFLIGHT param | writes the buffer the read is filling | `BAD_STATE` |
| `swap_out_and_release` of a batch naming a param twice | writes the buffer twice | `INVALID_ARGUMENT` |
| `swap_out_and_release` of a param swapped in into caller buffers | asserts (no swap buffer) | writes the caller buffer (the param's bytes) |
| `remove_partition_and_release_buffers` of an INFLIGHT param, or one whose write is in flight | frees the buffer under the I/O; the read later makes the param AVAILABLE in a buffer another param may hold | `BAD_STATE`, nothing changes |
| `remove_partition_and_release_buffers` of a param swapped in into caller buffers | the param stays counted in `available_params` / `available_numel` forever | counted no more |
| `available_params` / `available_numel` after `get_buffer` | not counted (only swap-ins count) | counted: the param is AVAILABLE |
| `inflight_numel` / `available_numel` of a swap-in into caller buffers | the caller buffers' numel | the params' numel |
| `swap_in` into a caller buffer whose length is not io-aligned (a multiple of 1024 × intra_op_parallelism bytes) | reads garbage, silently | reads the param's bytes |
| `swap_into_buffer` with no free pool buffer and a destination not from the handle's `new_cpu_locked_tensor` (or not io-aligned) | asserts | reads straight into the destination, no pool buffer needed |
| `swap_into_buffer` into a page-locked, io-aligned destination | the param ends AVAILABLE in the caller's buffer, counted in `available_params` forever | the param stays NOT_AVAILABLE (the data is in the destination) |
| `swap_into_buffer` with a destination smaller than the param | reads, then fails in the copy with the pool buffer still taken | `NO_BUFFER`, nothing read |
| `release_reserved_buffers` while a param uses a reserved buffer as swap-in destination | puts the buffer back in the pool under the param | `BAD_STATE` |
| `swap_out_partitioned_params` to an AVAILABLE or INFLIGHT param | writes the file and marks the param NOT_AVAILABLE, its buffer still taken | `BAD_STATE`, nothing written |
| `swap_out_partitioned_params` with a source of another numel than its param | writes it (the file and the param's numel disagree) | `INVALID_ARGUMENT` |
| `swap_out_partitioned_params` of a batch larger than the reserved space | asserts half-way: the params before it stay AVAILABLE | `NO_BUFFER`, nothing changes |
| `swap_out_partitioned_params` to a param whose path was only looked up (a failed `swap_out` of an unknown param) | writes a new file | `NOT_FOUND` / `BAD_STATE` |
| `_swap_out` (private; libswapper's `swap_out`, which keeps the buffers) | releases the buffers at the next `synchronize_writes` | the params stay AVAILABLE with their buffers |
"""

ELEM = {"fp16": 2, "bf16": 2, "fp32": 4}
TORCH_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
NP_BITS = {2: np.uint16, 4: np.uint32}
NP_SIGNED = {2: np.int16, 4: np.int32}
T_BITS = {2: torch.int16, 4: torch.int32}
INTRA_OP = 4  # DeepSpeed aligns to 1024 * intra_op_parallelism bytes: 4096, as libswapper
AVAILABLE, NOT_AVAILABLE, INFLIGHT = 1, 2, 3

SEQUENCES_PER_DTYPE = int(os.environ.get("SWAPPER_DIFF_SEQUENCES", "10"))
STEPS = int(os.environ.get("SWAPPER_DIFF_STEPS", "200"))


@pytest.fixture(scope="module", autouse=True)
def deepspeed_swapper_module():
    """DeepSpeed's swapper module with a rank-0 `dist` (no process group needed), and its
    async_io op built."""
    saved = pps.dist
    pps.dist = types.SimpleNamespace(get_rank=lambda: 0)
    try:
        from deepspeed.ops.op_builder import AsyncIOBuilder

        try:
            AsyncIOBuilder().load(verbose=False)
        except Exception as e:  # noqa: BLE001 - the op cannot build: say what is missing
            pytest.fail(
                f"DeepSpeed's async_io op does not build ({type(e).__name__}: {e}); install libaio-dev, "
                "ninja and a C++ compiler",
                pytrace=False,
            )
        yield
    finally:
        pps.dist = saved


class FakeParam:
    """What DeepSpeed's swapper reads of a ZeRO-3 param: ds_id, and ds_tensor with
    ds_numel and status (the runtime's partition tensor)."""

    def __init__(self, ds_id, dtype):
        self.ds_id = ds_id
        self.ds_tensor = torch.empty(0, dtype=dtype)
        self.ds_tensor.ds_numel = 0
        self.ds_tensor.status = Status.NOT_AVAILABLE


def _digest(bits):
    return hashlib.blake2b(bits.tobytes(), digest_size=16).hexdigest()


class Mismatch(AssertionError):
    pass


def _outcome_of(call, deepspeed_side):
    """ "ok"; for DeepSpeed "assert" or the exception's type name; for libswapper the
    status name (any other exception propagates)."""
    if deepspeed_side:
        try:
            call()
            return "ok"
        except AssertionError:
            return "assert"
        except Exception as e:  # noqa: BLE001 - DeepSpeed's failures are outcomes here
            return type(e).__name__
    try:
        call()
        return "ok"
    except errors.SwapperError as e:
        return e.status_name.replace("SWAPPER_STATUS_", "")


class Pair:
    """A DeepSpeed swapper and a libswapper Swapper with the same configuration, driven
    together; check() compares everything. The few facts DeepSpeed's counters depend on
    that neither swapper exposes (where a param's memory came from) are tracked here."""

    def __init__(self, root, dtype="fp16", buffer_count=4, buffer_size=6000, intra_op=INTRA_OP):
        self.dtype = dtype
        self.tdtype = TORCH_DTYPE[dtype]
        self.elem = ELEM[dtype]
        self.np_bits, self.np_signed, self.t_bits = NP_BITS[self.elem], NP_SIGNED[self.elem], T_BITS[self.elem]
        aio = dict(
            block_size=1 << 20,
            queue_depth=8,
            intra_op_parallelism=intra_op,
            single_submit=False,
            overlap_events=True,
            use_gds=False,
        )
        ds_dir, ls_dir = os.path.join(root, "ds"), os.path.join(root, "ls")
        os.makedirs(ds_dir)
        os.makedirs(ls_dir)
        offload = dict(device="nvme", nvme_path=ds_dir, buffer_count=buffer_count, buffer_size=buffer_size)
        cfg = types.SimpleNamespace(
            zero_config=types.SimpleNamespace(offload_param=types.SimpleNamespace(**offload)), aio_config=aio
        )
        self.ds = pps.AsyncPartitionedParameterSwapper(cfg, self.tdtype)
        self.ls = swapper.Swapper.from_deepspeed_config(
            {"aio": aio, "zero_optimization": {"stage": 3, "offload_param": dict(offload, nvme_path=ls_dir)}},
            dtype=dtype,
        )
        self.ls_folder = glob.glob(os.path.join(ls_dir, "zero_stage_3", "*params", "rank0"))[0]
        self.buffer_count = buffer_count
        self.buffer_size = buffer_size
        self.params = {}  # id -> FakeParam (DeepSpeed's side)
        self.numel = {}  # id -> numel
        self.mem = {}  # id -> the bits an AVAILABLE param holds
        self.disk = {}  # id -> the bits its swap file holds (a complete, current write)
        self.queued = {}  # id -> the bits of a write in flight
        self.reading = []  # ids with a read in flight
        self.origin = {}  # id -> "buf" (get_buffer), "pool" or "caller" (swap-in) while it holds memory
        self.caller = {}  # id -> (DeepSpeed's, libswapper's) caller buffers of a swap-in
        self.has_file = set()  # ids with a write ever queued
        self.leaked_ids = set()  # ids DeepSpeed still counts as available (DIFFERENCES)
        self.leaked_numel = 0
        self.reserved = []  # (DeepSpeed's, libswapper's) reserved buffer lists
        self.spaces = []  # DeepSpeed's partitioned swap spaces (freed at close)
        self.capacity = None  # elements of the partitioned swap space
        self.dirty = set()  # ids whose files changed since the last check
        self.checks = 0
        self.steps = 0
        self.last = "start"

    # ---------------------------------------------------------------- helpers
    def close(self):
        self.ls.close()
        # DeepSpeed's handles abort the process if destroyed with operations pending
        if self.ds.pending_reads:
            self.ds.aio_read_handle.wait()
        if self.ds.pending_writes:
            self.ds.aio_write_handle.wait()
        self.ds.aio_read_handle.free_cpu_locked_tensor(self.ds.buffers)
        for space in self.spaces:
            self.ds.aio_write_handle.free_cpu_locked_tensor(space)

    def param(self, pid):
        if pid not in self.params:
            self.params[pid] = FakeParam(pid, self.tdtype)
        return self.params[pid]

    def aligned(self, numel):
        return self.ls.aligned_numel(numel)

    def bits_of(self, x):
        if isinstance(x, torch.Tensor):
            return x.contiguous().view(self.t_bits).numpy().view(self.np_bits).copy()
        return np.asarray(x).view(self.np_bits).copy()

    def random_bits(self, rng, numel):
        return rng.integers(0, 1 << (8 * self.elem), numel, dtype=np.uint64).astype(self.np_bits)

    def fill(self, pid, bits):
        """The runtime writes `bits` into an AVAILABLE param, on both sides."""
        self.params[pid].ds_tensor.view(self.t_bits).copy_(torch.from_numpy(bits.view(self.np_signed)))
        self.ls.param_buffer(pid).view(self.np_bits)[:] = bits
        self.mem[pid] = bits.copy()

    def expect(self, cond, what):
        self.checks += 1
        if not cond:
            raise Mismatch(f"{self.dtype} step {self.steps} ({self.last}): {what}")

    def run(self, what, ds_call, ls_call):
        """One operation on both: (DeepSpeed's outcome, libswapper's), each "ok", or
        "assert" / the libswapper status name."""
        self.steps += 1
        self.last = what
        return _outcome_of(ds_call, True), _outcome_of(ls_call, False)

    def both_ok(self, what, ds_call, ls_call):
        outcome = self.run(what, ds_call, ls_call)
        self.expect(outcome == ("ok", "ok"), f"both should succeed: DeepSpeed {outcome[0]}, libswapper {outcome[1]}")

    def refused(self, what, ds_call, ls_call, *statuses):
        """A misuse on which DeepSpeed asserts before changing anything: libswapper must
        refuse with one of `statuses`, and neither state may change."""
        before = self.snapshot()
        outcome = self.run(what, ds_call, ls_call)
        self.expect(outcome[0] == "assert", f"DeepSpeed should assert, it returned {outcome[0]}")
        self.expect(outcome[1] in statuses, f"libswapper should refuse with {statuses}, got {outcome[1]}")
        after = self.snapshot()
        changed = [k for k, (x, y) in enumerate(zip(before, after)) if x != y]
        self.expect(not changed, f"a refused call changed the state: {[(before[k], after[k]) for k in changed]}")
        return outcome

    # ---------------------------------------------------------------- state
    def ls_status(self, pid):
        s = self.ls._status(pid)
        return None if s is None else int(s)

    def ds_status(self, pid):
        if pid not in self.ds.param_id_to_numel:
            return None
        return self.params[pid].ds_tensor.status.value

    def status(self, pid):
        return self.ls_status(pid)

    def snapshot(self):
        """Everything either side shows, for "nothing changed"."""
        ds, st = self.ds, self.ls.stats().as_dict()
        for k in ("bytes_read", "bytes_written", "read_wait_ns", "write_wait_ns"):
            del st[k]
        return (
            tuple(
                (pid, self.ds_status(pid), self.ls_status(pid))
                for pid in sorted(self.params)
                if (self.ds_status(pid), self.ls_status(pid)) != (None, None)
            ),
            tuple(sorted(ds.available_buffer_ids)),
            tuple(sorted(ds.reserved_buffer_ids)),
            ds.pending_reads,
            ds.pending_writes,
            tuple(sorted(p.ds_id for p in ds.inflight_params)),
            ds.inflight_numel,
            tuple(sorted(ds.available_params)),
            ds.available_numel,
            tuple(sorted(st.items())),
            tuple(
                (pid, _digest(self.bits_of(self.params[pid].ds_tensor)), _digest(self.bits_of(self.ls.param_buffer(pid))))
                for pid in sorted(self.params)
                if self.ls_status(pid) == AVAILABLE
            ),
        )

    def held_numel(self, pid):
        """The numel DeepSpeed counts for a swapped-in param: its caller buffer's."""
        if self.origin.get(pid) == "caller":
            return self.caller[pid][0].numel()
        return self.numel[pid]

    def check(self):
        ds, st, e = self.ds, self.ls.stats(), self.expect
        statuses = {}
        for pid in sorted(self.params):
            d, lstat = self.ds_status(pid), self.ls_status(pid)
            e(d == lstat, f"param {pid}: DeepSpeed status {d}, libswapper {lstat}")
            statuses[pid] = lstat
        free = len(ds.available_buffer_ids)
        e(free == st.free_buffers == self.ls.available_buffers(), f"free buffers: DeepSpeed {free}, libswapper {st.free_buffers}")
        e(len(ds.reserved_buffer_ids) == st.reserved_buffers,
          f"reserved buffers: DeepSpeed {len(ds.reserved_buffer_ids)}, libswapper {st.reserved_buffers}")
        e(ds.pending_reads == st.pending_reads, f"pending reads: DeepSpeed {ds.pending_reads}, libswapper {st.pending_reads}")
        e(ds.pending_writes == st.pending_writes,
          f"pending writes: DeepSpeed {ds.pending_writes}, libswapper {st.pending_writes}")
        inflight = sorted(pid for pid, s in statuses.items() if s == INFLIGHT)
        e(sorted(p.ds_id for p in ds.inflight_params) == inflight == sorted(self.reading),
          f"inflight: DeepSpeed {sorted(p.ds_id for p in ds.inflight_params)}, libswapper {inflight}")
        e(st.inflight_params == len(inflight), f"libswapper inflight_params {st.inflight_params}")
        e(st.inflight_numel == sum(self.numel[p] for p in inflight), f"libswapper inflight_numel {st.inflight_numel}")
        e(ds.inflight_numel == sum(self.held_numel(p) for p in inflight), f"DeepSpeed inflight_numel {ds.inflight_numel}")
        available = [pid for pid, s in statuses.items() if s == AVAILABLE]
        e(st.available_params == len(available), f"libswapper available_params {st.available_params}")
        e(st.available_numel == sum(self.numel[p] for p in available), f"libswapper available_numel {st.available_numel}")
        # DeepSpeed counts swapped-in params only, and goes on counting those released from
        # caller buffers (DIFFERENCES); the model of that:
        swapped_in = {p for p in available if self.origin.get(p) in ("pool", "caller")}
        e(set(ds.available_params) == swapped_in | self.leaked_ids,
          f"DeepSpeed available_params {sorted(ds.available_params)}, expected {sorted(swapped_in | self.leaked_ids)}")
        e(ds.available_numel == sum(self.held_numel(p) for p in swapped_in) + self.leaked_numel,
          f"DeepSpeed available_numel {ds.available_numel}")
        for pid in available:
            e(np.array_equal(self.bits_of(self.params[pid].ds_tensor), self.mem[pid]),
              f"param {pid}: DeepSpeed's data differs from what it should hold")
            e(np.array_equal(self.bits_of(self.ls.param_buffer(pid)), self.mem[pid]),
              f"param {pid}: libswapper's data differs from DeepSpeed's")
        for pid in sorted(self.dirty):
            self.check_files(pid)
        self.dirty.clear()

    def check_files(self, pid):
        bits = self.disk.get(pid)
        if bits is None:
            return
        nbytes = bits.size * self.elem
        with open(self.ds.id_to_path[pid], "rb") as f:
            d = f.read(nbytes)
        lbytes = b""
        for _drive, path, offset, length in self.ls.param_extents(pid):
            with open(path, "rb") as f:
                f.seek(offset)
                lbytes += f.read(length)
        lbytes = lbytes[:nbytes]
        self.expect(d == bits.tobytes(), f"param {pid}: DeepSpeed's swap file differs from what was written")
        self.expect(lbytes == d, f"param {pid}: libswapper's swap file differs from DeepSpeed's")

    # ---------------------------------------------------------------- model updates
    def writes_done(self):
        """Every queued write has completed: the files hold the data, the params gave
        their buffers back (swap_out_and_release)."""
        for pid, bits in self.queued.items():
            self.disk[pid] = bits
            self.dirty.add(pid)
            self.gave_back(pid)
        self.queued.clear()

    def reads_done(self):
        for pid in self.reading:
            self.mem[pid] = self.disk[pid]
        self.reading = []

    def gave_back(self, pid):
        """Param `pid` gives its memory back (DeepSpeed's remove_partition_and_release_buffers)."""
        origin = self.origin.pop(pid, None)
        self.mem.pop(pid, None)
        if origin == "caller":
            # not in DeepSpeed's param_id_to_buffer_id: it stays counted
            self.leaked_ids.add(pid)
            self.leaked_numel += self.caller.pop(pid)[0].numel()
        elif origin is not None and pid in self.leaked_ids:
            self.leaked_ids.discard(pid)
            if origin == "buf":  # DeepSpeed subtracts a numel it never added
                self.leaked_numel -= self.numel[pid]

    # ---------------------------------------------------------------- operations
    def get_buffer(self, pid, numel, bits=None):
        p = self.param(pid)

        def ds_call():
            buf = self.ds.get_buffer(p, numel)
            # what ZeRO-3's _partition_param does with it
            t = torch.empty(0, dtype=self.tdtype)
            t.data = buf.data
            t.ds_numel = numel
            t.status = Status.AVAILABLE
            p.ds_tensor = t

        outcome = self.run(f"get_buffer({pid}, {numel})", ds_call, lambda: self.ls.get_buffer(pid, numel))
        if outcome == ("ok", "ok"):
            self.numel[pid] = numel
            self.origin[pid] = "buf"
            self.disk.pop(pid, None)  # libswapper takes the old file as stale (DIFFERENCES)
            self.fill(pid, bits if bits is not None else np.zeros(numel, self.np_bits))
        return outcome

    def write(self, pid, bits):
        self.steps += 1
        self.last = f"write({pid})"
        self.fill(pid, bits)

    def swap_out_and_release(self, ids, async_op, force=None):
        force = async_op if force is None else force
        ps = [self.param(i) for i in ids]
        outcome = self.run(
            f"swap_out_and_release({ids}, async_op={async_op}, force_buffer_release={force})",
            lambda: self.ds.swap_out_and_release(ps, async_op=async_op, force_buffer_release=force),
            lambda: self.ls.swap_out_and_release(ids, async_op=async_op, force_buffer_release=force),
        )
        if outcome == ("ok", "ok"):
            for i in ids:
                self.queued[i] = self.mem[i]
                self.has_file.add(i)
            if not async_op:
                self.writes_done()
        return outcome

    def swap_in(self, ids, async_op, caller=False):
        ps = [self.param(i) for i in ids]
        ds_bufs = ls_bufs = None
        if caller:
            # DeepSpeed reads a caller buffer whole, and reads garbage unless its length is
            # io-aligned (DIFFERENCES)
            ds_bufs = [torch.zeros(self.aligned(self.numel[i]), dtype=self.tdtype) for i in ids]
            ls_bufs = [torch.zeros(self.aligned(self.numel[i]), dtype=self.tdtype) for i in ids]
        outcome = self.run(
            f"swap_in({ids}, async_op={async_op}, caller_buffers={caller})",
            lambda: self.ds.swap_in(ps, async_op=async_op, swap_in_buffers=ds_bufs),
            lambda: self.ls.swap_in(ids, async_op=async_op, dest_buffers=ls_bufs),
        )
        if outcome == ("ok", "ok"):
            for k, i in enumerate(ids):
                self.origin[i] = "caller" if caller else "pool"
                if caller:
                    self.caller[i] = (ds_bufs[k], ls_bufs[k])
                self.reading.append(i)
            if not async_op:
                self.reads_done()
        return outcome

    def swap_into_buffer(self, pid):
        n = self.numel[pid]
        ds_dest, ls_dest = torch.zeros(n, dtype=self.tdtype), torch.zeros(n, dtype=self.tdtype)
        outcome = self.run(
            f"swap_into_buffer({pid})",
            lambda: self.ds.swap_into_buffer(self.param(pid), ds_dest),
            lambda: self.ls.swap_into_buffer(pid, ls_dest),
        )
        if outcome == ("ok", "ok"):
            self.reads_done()
            # DeepSpeed read it through a pool buffer and released that
            self.leaked_ids.discard(pid)
            self.expect(np.array_equal(self.bits_of(ds_dest), self.disk[pid]), f"swap_into_buffer({pid}): DeepSpeed's data")
            self.expect(np.array_equal(self.bits_of(ls_dest), self.disk[pid]), f"swap_into_buffer({pid}): libswapper's data")
        return outcome

    def synchronize_reads(self):
        self.both_ok("synchronize_reads", self.ds.synchronize_reads, self.ls.wait_reads)
        self.reads_done()

    def synchronize_writes(self):
        self.both_ok("synchronize_writes", self.ds.synchronize_writes, self.ls.wait_writes)
        self.writes_done()

    def release(self, ids):
        ps = [self.param(i) for i in ids]
        outcome = self.run(
            f"release({ids})", lambda: self.ds.remove_partition_and_release_buffers(ps), lambda: self.ls.release(ids)
        )
        if outcome == ("ok", "ok"):
            for i in ids:
                self.gave_back(i)
        return outcome

    def reserve(self):
        got = {}
        self.both_ok(
            "reserve_available_buffers",
            lambda: got.__setitem__("ds", self.ds.reserve_available_buffers()),
            lambda: got.__setitem__("ls", self.ls.reserve_available_buffers()),
        )
        ds_lens = [b.numel() for b in got["ds"]]
        ls_lens = [b.size for b in got["ls"]]
        self.expect(ds_lens == ls_lens, f"reserved buffer lengths: DeepSpeed {ds_lens}, libswapper {ls_lens}")
        self.reserved.append((got["ds"], got["ls"]))
        return got

    def release_reserved(self):
        self.both_ok("release_reserved_buffers", self.ds.release_reserved_buffers, self.ls.release_reserved_buffers)
        self.reserved = []

    def reserve_partitioned(self, numels):
        self.both_ok(
            f"reserve_partitioned_swap_space({numels})",
            lambda: self.ds.reserve_partitioned_swap_space(numels),
            lambda: self.ls.reserve_partitioned_swap_space(numels),
        )
        self.spaces.append(self.ds.partitioned_swap_buffer)
        self.capacity = sum(self.aligned(n) for n in numels)
        ls_capacity = self.ls.partitioned_swap_capacity()
        self.expect(self.ds.partitioned_swap_buffer.numel() == self.capacity == ls_capacity,
                    f"partitioned space: DeepSpeed {self.ds.partitioned_swap_buffer.numel()}, libswapper {ls_capacity}")

    def swap_out_partitioned(self, ids, srcs):
        """`srcs`: float32 numpy arrays, one per param."""
        ps = [self.param(i) for i in ids]
        ts = [torch.from_numpy(s.copy()) for s in srcs]
        outcome = self.run(
            f"swap_out_partitioned_params({ids}, numels {[s.size for s in srcs]})",
            lambda: self.ds.swap_out_partitioned_params(ps, ts),
            lambda: self.ls.swap_out_partitioned(ids, srcs),
        )
        if outcome == ("ok", "ok"):
            self.writes_done()  # it finishes the pending writes first
            for i, s in zip(ids, srcs):
                self.disk[i] = self.bits_of(torch.from_numpy(s).to(self.tdtype))
                self.dirty.add(i)
        return outcome


@pytest.fixture
def pair_factory(tmp_path):
    made = []

    def make(**kw):
        p = Pair(str(tmp_path / f"pair{len(made)}"), **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# -------------------------------------------------------------------- random sequences
PARAM_IDS = list(range(8))
UNKNOWN_IDS = [100, 101]


def random_numel(rng, p):
    """Sizes at the edges: 1, around the alignment, a whole buffer, and anything between."""
    align = p.aligned(1)
    return min(p.buffer_size, int(
        rng.choice(
            [
                1,
                align - 1,
                align,
                align + 1,
                2 * align,
                p.buffer_size,
                int(rng.integers(1, p.buffer_size + 1)),
                int(rng.integers(1, p.buffer_size + 1)),
            ]
        )
    ))


def random_fp32(rng, numel):
    """float32 sources: ordinary values, values that round to ties, and raw bit patterns
    (NaNs with payloads, infinities, subnormals)."""
    kind = rng.integers(0, 3)
    if kind == 0:
        return (rng.standard_normal(numel) * 10.0 ** rng.integers(-8, 8)).astype(np.float32)
    if kind == 1:
        return rng.integers(0, 1 << 32, numel, dtype=np.uint64).astype(np.uint32).view(np.float32)
    # halfway cases for fp16 and bf16: low mantissa bits exactly 1000...0
    base = rng.integers(0, 1 << 32, numel, dtype=np.uint64).astype(np.uint32)
    base = (base & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    base[::2] = (base[::2] & np.uint32(0xFFFFE000)) | np.uint32(0x1000)
    return base.view(np.float32)


def pick(rng, items, most):
    items = list(items)
    k = int(rng.integers(1, min(most, len(items)) + 1))
    return [items[i] for i in rng.permutation(len(items))[:k]]


def random_step(p, rng):
    """One random operation, valid for both or a misuse on which DeepSpeed asserts before
    changing anything; then a full check."""
    st = {pid: p.status(pid) for pid in PARAM_IDS}
    free = p.ls.available_buffers()
    idle = {pid for pid in PARAM_IDS if pid not in p.queued and pid not in p.reading}
    available = [pid for pid in PARAM_IDS if st[pid] == AVAILABLE and pid in idle]
    in_pool = [pid for pid in available if p.origin.get(pid) in ("buf", "pool")]
    on_disk = [pid for pid in PARAM_IDS if st[pid] == NOT_AVAILABLE and pid in p.disk and pid in idle]
    holds_nothing = [pid for pid in PARAM_IDS if st[pid] in (None, NOT_AVAILABLE) and pid in idle]
    targets = [pid for pid in PARAM_IDS if st[pid] == NOT_AVAILABLE and pid in p.has_file and pid in idle]
    busy = [pid for pid in PARAM_IDS if st[pid] in (AVAILABLE, INFLIGHT)]
    choices = {
        "get_buffer": 4 if holds_nothing and free else 0,
        "write": 1 if available else 0,
        "swap_out": 4 if in_pool else 0,
        "swap_in": 3 if on_disk and free else 0,
        "swap_in_caller": 1 if on_disk else 0,
        "swap_into_buffer": 1 if on_disk and free else 0,
        "sync_reads": 2,
        "sync_writes": 2,
        "release": 2,
        "reserve": 0.3 if free else 0,
        "release_reserved": 1 if p.reserved else 0,
        "reserve_partitioned": 0.3,
        "swap_out_partitioned": 2 if targets and p.capacity else 0,
        "misuse": 2,
    }
    names = [k for k, w in choices.items() if w]
    weights = np.array([choices[k] for k in names], dtype=float)
    op = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    a = bool(rng.integers(0, 2))
    if op == "get_buffer":
        pid = int(rng.choice(holds_nothing))
        numel = random_numel(rng, p)
        p.expect(p.get_buffer(pid, numel, p.random_bits(rng, numel)) == ("ok", "ok"), "get_buffer")
    elif op == "write":
        pid = int(rng.choice(available))
        p.write(pid, p.random_bits(rng, p.numel[pid]))
    elif op == "swap_out":
        p.expect(p.swap_out_and_release(pick(rng, in_pool, 3), a) == ("ok", "ok"), "swap_out_and_release")
    elif op == "swap_in":
        p.expect(p.swap_in(pick(rng, on_disk, free), a) == ("ok", "ok"), "swap_in")
    elif op == "swap_in_caller":
        p.expect(p.swap_in(pick(rng, on_disk, 3), a, caller=True) == ("ok", "ok"), "swap_in into caller buffers")
    elif op == "swap_into_buffer":
        p.expect(p.swap_into_buffer(int(rng.choice(on_disk))) == ("ok", "ok"), "swap_into_buffer")
    elif op == "sync_reads":
        p.synchronize_reads()
    elif op == "sync_writes":
        p.synchronize_writes()
    elif op == "release":
        candidates = available + [pid for pid in PARAM_IDS if st[pid] != INFLIGHT and pid in idle] + UNKNOWN_IDS
        p.expect(p.release(sorted(set(pick(rng, candidates, 3)))) == ("ok", "ok"), "release")
    elif op == "reserve":
        p.reserve()
    elif op == "release_reserved":
        p.release_reserved()
    elif op == "reserve_partitioned":
        p.reserve_partitioned([random_numel(rng, p) for _ in range(int(rng.integers(1, 4)))])
    elif op == "swap_out_partitioned":
        ids, used = [], 0
        for pid in pick(rng, targets, len(targets)):
            if used + p.aligned(p.numel[pid]) <= p.capacity:
                ids.append(pid)
                used += p.aligned(p.numel[pid])
        if ids:
            srcs = [random_fp32(rng, p.numel[pid]) for pid in ids]
            p.expect(p.swap_out_partitioned(ids, srcs) == ("ok", "ok"), "swap_out_partitioned_params")
    else:
        random_misuse(p, rng, st, free, holds_nothing, in_pool, on_disk, busy)
    p.check()
    return op


def random_misuse(p, rng, st, free, holds_nothing, in_pool, on_disk, busy):
    """A misuse on which DeepSpeed asserts before it changes anything."""
    kinds = []
    if holds_nothing and not free:
        kinds.append("get_buffer_no_buffer")
    if holds_nothing and free:
        kinds.append("get_buffer_too_big")
    if busy:
        kinds += ["swap_in_busy", "swap_into_buffer_busy"]
    if on_disk and len(on_disk) > free:
        kinds.append("swap_in_short")
    if in_pool:
        kinds.append("swap_out_async_unforced")
    stale = [pid for pid in PARAM_IDS if st[pid] == NOT_AVAILABLE and pid in p.ds.id_to_path]
    if stale:
        kinds.append("swap_out_not_available")
    if p.capacity is None and on_disk and not p.queued:
        # with writes pending, libswapper finishes them before it refuses (the report)
        kinds.append("partitioned_unreserved")
    if not kinds:
        return
    kind = kinds[int(rng.integers(0, len(kinds)))]
    if kind == "get_buffer_no_buffer":
        pid = int(rng.choice(holds_nothing))
        n = random_numel(rng, p)
        p.refused(f"get_buffer({pid}, {n}) with no free buffer", lambda: p.ds.get_buffer(p.param(pid), n),
                  lambda: p.ls.get_buffer(pid, n), "NO_BUFFER")
    elif kind == "get_buffer_too_big":
        pid = int(rng.choice(holds_nothing))
        n = p.buffer_size + int(rng.integers(1, 3000))
        p.refused(f"get_buffer({pid}, {n}) larger than a buffer", lambda: p.ds.get_buffer(p.param(pid), n),
                  lambda: p.ls.get_buffer(pid, n), "NO_BUFFER")
    elif kind == "swap_in_busy":
        ids = pick(rng, busy, 2) + pick(rng, on_disk, 2) if on_disk else pick(rng, busy, 2)
        ids = list(dict.fromkeys(ids))
        rng.shuffle(ids)
        ps = [p.param(i) for i in ids]
        a = bool(rng.integers(0, 2))
        p.refused(f"swap_in({ids}) of AVAILABLE/INFLIGHT params", lambda: p.ds.swap_in(ps, async_op=a),
                  lambda: p.ls.swap_in(ids, async_op=a), "BAD_STATE")
    elif kind == "swap_into_buffer_busy":
        pid = int(rng.choice(busy))
        n = p.numel[pid]
        p.refused(f"swap_into_buffer({pid}) of a param {st[pid]}",
                  lambda: p.ds.swap_into_buffer(p.param(pid), torch.zeros(n, dtype=p.tdtype)),
                  lambda: p.ls.swap_into_buffer(pid, torch.zeros(n, dtype=p.tdtype)), "BAD_STATE")
    elif kind == "swap_in_short":
        ids = pick(rng, on_disk, len(on_disk))
        ids = ids if len(ids) > free else on_disk
        ps = [p.param(i) for i in ids]
        p.refused(f"swap_in({ids}) with {free} free buffers", lambda: p.ds.swap_in(ps, async_op=True),
                  lambda: p.ls.swap_in(ids, async_op=True), "NO_BUFFER")
    elif kind == "swap_out_async_unforced":
        ids = pick(rng, in_pool, 2)
        ps = [p.param(i) for i in ids]
        p.refused(f"swap_out_and_release({ids}, async_op=True) without force_buffer_release",
                  lambda: p.ds.swap_out_and_release(ps, async_op=True),
                  lambda: p.ls.swap_out_and_release(ids, async_op=True), "INVALID_ARGUMENT")
    elif kind == "swap_out_not_available":
        ids = list(dict.fromkeys(pick(rng, in_pool, 1) + pick(rng, stale, 2))) if in_pool else pick(rng, stale, 2)
        ps = [p.param(i) for i in ids]
        p.refused(f"swap_out_and_release({ids}) naming a NOT_AVAILABLE param",
                  lambda: p.ds.swap_out_and_release(ps), lambda: p.ls.swap_out_and_release(ids), "BAD_STATE")
    elif kind == "partitioned_unreserved":
        pid = int(rng.choice(on_disk))
        src = random_fp32(rng, p.numel[pid])
        p.refused(f"swap_out_partitioned_params([{pid}]) before reserve_partitioned_swap_space",
                  lambda: p.ds.swap_out_partitioned_params([p.param(pid)], [torch.from_numpy(src.copy())]),
                  lambda: p.ls.swap_out_partitioned([pid], [src]), "BAD_STATE")


def drain(p):
    """Ends a sequence: everything waited for and released, then every param read back
    one at a time and compared."""
    p.synchronize_writes()
    p.synchronize_reads()
    p.check()
    if p.reserved:
        p.release_reserved()
    held = [pid for pid in PARAM_IDS if p.status(pid) == AVAILABLE]
    if held:
        p.expect(p.release(held) == ("ok", "ok"), "release everything")
    p.check()
    for pid in sorted(p.disk):
        p.expect(p.swap_in([pid], False) == ("ok", "ok"), f"read back {pid}")
        p.check()
        p.expect(p.release([pid]) == ("ok", "ok"), f"release {pid}")
    p.check()


TOTALS = {"sequences": 0, "steps": 0, "checks": 0}


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_random_sequences(pair_factory, dtype):
    ops = {}
    for seq in range(SEQUENCES_PER_DTYPE):
        seed = 1000 * ("fp16", "bf16", "fp32").index(dtype) + seq
        rng = np.random.default_rng(seed)
        p = pair_factory(dtype=dtype, buffer_count=int(rng.integers(2, 6)), buffer_size=int(rng.choice([3000, 6000, 6144])))
        try:
            for _ in range(STEPS):
                op = random_step(p, rng)
                ops[op] = ops.get(op, 0) + 1
            drain(p)
        except Mismatch as e:
            raise Mismatch(f"seed {seed}: {e}") from None
        TOTALS["sequences"] += 1
        TOTALS["steps"] += p.steps
        TOTALS["checks"] += p.checks
    # every kind of operation ran
    assert set(ops) >= {"get_buffer", "swap_out", "swap_in", "swap_in_caller", "swap_into_buffer", "release",
                        "reserve", "swap_out_partitioned", "misuse"}, ops
    print(f"{dtype}: {TOTALS} ops {ops}")


# -------------------------------------------------------------------- targeted: the same semantics
def on_disk(p, numels, seed=7):
    """Params 0.. of these numels, written and released (NOT_AVAILABLE, on disk)."""
    rng = np.random.default_rng(seed)
    ids = list(range(len(numels)))
    for pid, n in zip(ids, numels):
        assert p.get_buffer(pid, n, p.random_bits(rng, n)) == ("ok", "ok")
    assert p.swap_out_and_release(ids, False) == ("ok", "ok")
    p.check()
    return ids


def test_sync_swap_in_finishes_earlier_async_reads(pair_factory):
    p = pair_factory()
    on_disk(p, [3000, 100, 6000])
    assert p.swap_in([0, 1], True) == ("ok", "ok")
    p.check()
    assert p.status(0) == p.status(1) == INFLIGHT
    assert p.swap_in([2], False) == ("ok", "ok")
    p.check()
    assert [p.status(i) for i in range(3)] == [AVAILABLE] * 3


def test_sync_swap_into_buffer_finishes_earlier_async_reads(pair_factory):
    p = pair_factory()
    on_disk(p, [3000, 100])
    assert p.swap_in([0], True, caller=True) == ("ok", "ok")
    p.check()
    assert p.swap_into_buffer(1) == ("ok", "ok")
    p.check()
    assert p.status(0) == AVAILABLE and p.status(1) == NOT_AVAILABLE


def test_sync_swap_out_finishes_and_releases_earlier_async_writes(pair_factory):
    p = pair_factory(buffer_count=3)
    rng = np.random.default_rng(3)
    for pid in range(3):
        p.get_buffer(pid, 2000 + pid, p.random_bits(rng, 2000 + pid))
    assert p.swap_out_and_release([0, 1], True) == ("ok", "ok")
    p.check()
    assert p.ls.stats().pending_writes == 2 and p.ls.available_buffers() == 0
    assert p.swap_out_and_release([2], False) == ("ok", "ok")
    p.check()
    assert [p.status(i) for i in range(3)] == [NOT_AVAILABLE] * 3 and p.ls.available_buffers() == 3


def test_partitioned_swap_out_finishes_and_releases_pending_writes(pair_factory):
    p = pair_factory()
    rng = np.random.default_rng(4)
    on_disk(p, [3000])
    p.get_buffer(1, 500, p.random_bits(rng, 500))
    assert p.swap_out_and_release([1], True) == ("ok", "ok")
    p.reserve_partitioned([3000])
    assert p.swap_out_partitioned([0], [random_fp32(rng, 3000)]) == ("ok", "ok")
    p.check()
    assert p.status(1) == NOT_AVAILABLE and p.ls.stats().pending_writes == 0


def test_release_of_params_without_buffer_is_a_no_op(pair_factory):
    p = pair_factory()
    on_disk(p, [100])
    before = p.snapshot()
    assert p.release([0, 55]) == ("ok", "ok")  # NOT_AVAILABLE and unknown
    p.check()
    assert p.snapshot()[1:] == before[1:]


def test_partitioned_space_is_packed(pair_factory):
    """ZeRO-3 reserves its largest sub-group once and swaps every sub-group through it:
    any batch whose io-aligned numels fit is accepted, in any order and number."""
    p = pair_factory(buffer_count=5, buffer_size=12000)
    align = p.aligned(1)
    ids = on_disk(p, [100, align, 3 * align - 5, 50, 60])
    rng = np.random.default_rng(5)
    p.reserve_partitioned([3 * align])
    for batch in ([0, 1], [1, 0], [2], [0, 3, 4], [4, 3, 0], [1, 3, 4]):
        srcs = [random_fp32(rng, p.numel[i]) for i in batch]
        assert p.swap_out_partitioned(batch, srcs) == ("ok", "ok"), batch
        p.check()
    drain(p)
    assert len(ids) == 5


def test_reserved_buffers_have_deepspeeds_length(pair_factory):
    p = pair_factory(buffer_count=3, buffer_size=6000)
    p.get_buffer(0, 10, np.arange(10, dtype=p.np_bits))
    got = p.reserve()
    assert [b.size for b in got["ls"]] == [p.aligned(6000)] * 2
    p.check()
    p.release_reserved()
    p.check()


SPECIAL_FP32 = np.array(
    [
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # zeros, infinities
        0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
        0x7FC00001, 0x7FD55555, 0xFFAAAAAA, 0x7F802000, 0x7F801000,  # NaNs, payloads
        0x00000001, 0x807FFFFF, 0x00800000, 0x33800000, 0x33000000, 0x33000001,  # subnormals, fp16 ties
        0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x7F7FFFFF, 0xFF7FFFFF,  # fp16 overflow edge
        0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF, 0x7F7F8000, 0x7F7F7FFF,  # bf16 ties, bf16 overflow
        0x38800000, 0x387FE000, 0x387FF000, 0x3F801000, 0x3F803000,  # fp16 subnormal boundary, ties
    ],
    dtype=np.uint32,
)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_conversion_matches_torch_bit_for_bit(pair_factory, dtype):
    """swap_out_partitioned_params converts with torch's copy_; libswapper must give the
    same bits for every special value (bf16 NaNs: 0xFFFF) and for 2**16 random patterns."""
    p = pair_factory(dtype=dtype, buffer_count=2, buffer_size=1 << 16)
    rng = np.random.default_rng(6)
    n = 1 << 16
    src = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    src[: SPECIAL_FP32.size] = SPECIAL_FP32
    src[SPECIAL_FP32.size : 2 * SPECIAL_FP32.size] = SPECIAL_FP32 ^ np.uint32(0x80000000)
    on_disk(p, [n])
    p.reserve_partitioned([n])
    assert p.swap_out_partitioned([0], [src.view(np.float32)]) == ("ok", "ok")
    p.check()  # compares both files with torch's conversion, bit for bit
    drain(p)


# -------------------------------------------------------------------- targeted: the deliberate differences
def free_counts(p):
    return len(p.ds.available_buffer_ids), p.ls.available_buffers()


def ls_unchanged(p, call):
    """Runs a libswapper call that must be refused; returns its status, checking that
    libswapper's state did not change."""
    before = p.snapshot()
    out = _outcome_of(call, False)
    assert out != "ok"
    after = p.snapshot()
    assert [x[2] for x in after[0]] == [x[2] for x in before[0]] and after[9:] == before[9:]
    return out


def test_difference_get_buffer_of_a_param_holding_one(pair_factory):
    p = pair_factory(buffer_count=3)
    p.get_buffer(0, 100, np.zeros(100, p.np_bits))
    assert p.swap_in is not None
    assert _outcome_of(lambda: p.ds.get_buffer(p.param(0), 100), True) == "ok"
    assert ls_unchanged(p, lambda: p.ls.get_buffer(0, 100)) == "BAD_STATE"
    assert free_counts(p) == (1, 2)  # DeepSpeed lost a buffer
    p.ds.remove_partition_and_release_buffers([p.param(0)])
    assert len(p.ds.available_buffer_ids) == 2  # for good


def test_difference_get_buffer_of_zero_elements(pair_factory):
    p = pair_factory()
    assert _outcome_of(lambda: p.ds.get_buffer(p.param(0), 0), True) == "ok"
    assert ls_unchanged(p, lambda: p.ls.get_buffer(0, 0)) == "INVALID_ARGUMENT"


def test_difference_swap_in_naming_a_param_twice(pair_factory):
    p = pair_factory()
    on_disk(p, [100])
    assert _outcome_of(lambda: p.ds.swap_in([p.param(0), p.param(0)]), True) == "assert"
    assert ls_unchanged(p, lambda: p.ls.swap_in([0, 0])) == "INVALID_ARGUMENT"
    assert free_counts(p) == (3, 4)


def test_difference_swap_in_of_a_stale_file(pair_factory):
    """get_buffer again, release without swap_out: DeepSpeed reads the old file."""
    p = pair_factory()
    on_disk(p, [100])
    old = p.disk[0]
    p.get_buffer(0, 100, np.ones(100, p.np_bits))
    assert p.release([0]) == ("ok", "ok")
    assert _outcome_of(lambda: p.ds.swap_in([p.param(0)], async_op=False), True) == "ok"
    assert np.array_equal(p.bits_of(p.param(0).ds_tensor), old)
    assert ls_unchanged(p, lambda: p.ls.swap_in([0], async_op=False)) in ("BAD_STATE", "NOT_FOUND")


def test_difference_swap_out_of_an_inflight_param(pair_factory):
    p = pair_factory()
    on_disk(p, [3000])
    assert p.swap_in([0], True) == ("ok", "ok")
    assert _outcome_of(lambda: p.ds.swap_out_and_release([p.param(0)], async_op=True, force_buffer_release=True), True) == "ok"
    assert ls_unchanged(p, lambda: p.ls.swap_out_and_release([0], async_op=True, force_buffer_release=True)) == "BAD_STATE"


def test_difference_swap_out_naming_a_param_twice(pair_factory):
    p = pair_factory()
    p.get_buffer(0, 100, np.zeros(100, p.np_bits))
    assert _outcome_of(lambda: p.ds.swap_out_and_release([p.param(0), p.param(0)], async_op=True, force_buffer_release=True), True) == "ok"
    assert p.ds.pending_writes == 2
    assert ls_unchanged(p, lambda: p.ls.swap_out_and_release([0, 0], async_op=True, force_buffer_release=True)) == "INVALID_ARGUMENT"


def test_difference_swap_out_of_a_param_in_caller_buffers(pair_factory):
    p = pair_factory()
    on_disk(p, [100])
    assert p.swap_in([0], False, caller=True) == ("ok", "ok")
    assert _outcome_of(lambda: p.ds.swap_out_and_release([p.param(0)]), True) == "assert"
    assert _outcome_of(lambda: p.ls.swap_out_and_release([0]), False) == "ok"
    assert p.ls.param_status(0) == swapper.ParamStatus.NOT_AVAILABLE


@pytest.mark.parametrize("io", ["read", "write"])
def test_difference_release_during_io(pair_factory, io):
    p = pair_factory()
    on_disk(p, [3000])
    if io == "read":
        assert p.swap_in([0], True) == ("ok", "ok")
    else:
        p.get_buffer(0, 3000, np.zeros(3000, p.np_bits))
        assert p.swap_out_and_release([0], True) == ("ok", "ok")
    assert _outcome_of(lambda: p.ds.remove_partition_and_release_buffers([p.param(0)]), True) == "ok"
    assert ls_unchanged(p, lambda: p.ls.release([0])) == "BAD_STATE"
    assert free_counts(p) == (4, 3)  # DeepSpeed's buffer is free while the I/O uses it
    if io == "read":
        p.ds.synchronize_reads()
        assert p.param(0).ds_tensor.status == Status.AVAILABLE  # in a buffer of the free list


def test_difference_counters_of_caller_buffers_and_get_buffer(pair_factory):
    p = pair_factory()
    align = p.aligned(1)
    on_disk(p, [align + 1])
    # a caller buffer of the aligned length: DeepSpeed counts its numel
    ds_buf = torch.zeros(2 * align, dtype=p.tdtype)
    ls_buf = torch.zeros(2 * align, dtype=p.tdtype)
    assert p.run("swap_in into aligned caller buffers",
                 lambda: p.ds.swap_in([p.param(0)], async_op=True, swap_in_buffers=[ds_buf]),
                 lambda: p.ls.swap_in([0], async_op=True, dest_buffers=[ls_buf])) == ("ok", "ok")
    assert p.ds.inflight_numel == 2 * align and p.ls.stats().inflight_numel == align + 1
    p.ds.synchronize_reads()
    p.ls.wait_reads()
    assert p.ds.available_numel == 2 * align and p.ls.stats().available_numel == align + 1
    p.ds.remove_partition_and_release_buffers([p.param(0)])
    p.ls.release([0])
    assert (sorted(p.ds.available_params), p.ds.available_numel) == ([0], 2 * align)  # counted forever
    assert (p.ls.stats().available_params, p.ls.stats().available_numel) == (0, 0)
    # get_buffer: AVAILABLE in both, counted by libswapper only
    p.ds.get_buffer(p.param(1), 10)
    p.ls.get_buffer(1, 10)
    assert (len(p.ds.available_params), p.ls.stats().available_params) == (1, 1)  # param 0's stale entry, param 1


def test_difference_swap_in_into_an_unaligned_caller_buffer(pair_factory):
    p = pair_factory()
    on_disk(p, [3000])
    ds_buf, ls_buf = torch.zeros(3000, dtype=p.tdtype), torch.zeros(3000, dtype=p.tdtype)
    assert p.run("swap_in into unaligned caller buffers",
                 lambda: p.ds.swap_in([p.param(0)], async_op=False, swap_in_buffers=[ds_buf]),
                 lambda: p.ls.swap_in([0], async_op=False, dest_buffers=[ls_buf])) == ("ok", "ok")
    assert not np.array_equal(p.bits_of(ds_buf), p.disk[0])
    assert np.array_equal(p.bits_of(ls_buf), p.disk[0])


def test_difference_swap_into_buffer_without_a_free_pool_buffer(pair_factory):
    p = pair_factory(buffer_count=2)
    on_disk(p, [100])
    p.reserve()
    ds_dest, ls_dest = torch.zeros(100, dtype=p.tdtype), torch.zeros(100, dtype=p.tdtype)
    assert _outcome_of(lambda: p.ds.swap_into_buffer(p.param(0), ds_dest), True) == "assert"
    assert _outcome_of(lambda: p.ls.swap_into_buffer(0, ls_dest), False) == "ok"
    assert np.array_equal(p.bits_of(ls_dest), p.disk[0])


def test_difference_swap_into_a_locked_aligned_buffer(pair_factory):
    p = pair_factory()
    align = p.aligned(1)
    on_disk(p, [align])
    ds_dest = p.ds.aio_read_handle.new_cpu_locked_tensor(align, torch.zeros(1, dtype=p.tdtype))
    try:
        ls_dest = swapper.alloc_aligned(align, p.np_bits, lock=True)
        assert _outcome_of(lambda: p.ds.swap_into_buffer(p.param(0), ds_dest), True) == "ok"
        assert _outcome_of(lambda: p.ls.swap_into_buffer(0, ls_dest), False) == "ok"
        assert p.param(0).ds_tensor.status == Status.AVAILABLE and 0 in p.ds.available_params
        assert p.ls.param_status(0) == swapper.ParamStatus.NOT_AVAILABLE
        assert np.array_equal(p.bits_of(ds_dest), p.disk[0]) and np.array_equal(p.bits_of(ls_dest), p.disk[0])
        p.ds.remove_partition_and_release_buffers([p.param(0)])
        assert 0 in p.ds.available_params  # counted forever
    finally:
        p.ds.aio_read_handle.free_cpu_locked_tensor(ds_dest)


def test_difference_swap_into_a_short_buffer(pair_factory):
    p = pair_factory()
    on_disk(p, [3000])
    out = _outcome_of(lambda: p.ds.swap_into_buffer(p.param(0), torch.zeros(100, dtype=p.tdtype)), True)
    assert out == "RuntimeError" and free_counts(p)[0] == 3  # the pool buffer stays taken
    assert ls_unchanged(p, lambda: p.ls.swap_into_buffer(0, torch.zeros(100, dtype=p.tdtype))) == "NO_BUFFER"


def test_difference_release_reserved_under_a_param(pair_factory):
    p = pair_factory(buffer_count=2)
    on_disk(p, [100])
    got = p.reserve()
    assert p.run("swap_in into a reserved buffer",
                 lambda: p.ds.swap_in([p.param(0)], async_op=False, swap_in_buffers=[got["ds"][0].narrow(0, 0, 100)]),
                 lambda: p.ls.swap_in([0], async_op=False, dest_buffers=[got["ls"][0][:100]])) == ("ok", "ok")
    assert _outcome_of(p.ds.release_reserved_buffers, True) == "ok"
    assert len(p.ds.available_buffer_ids) == 2  # param 0's memory is free in the pool
    assert ls_unchanged(p, p.ls.release_reserved_buffers) == "BAD_STATE"


def test_difference_partitioned_swap_out_misuse(pair_factory):
    p = pair_factory()
    rng = np.random.default_rng(9)
    on_disk(p, [100, 200, 3000])
    p.reserve_partitioned([3000])
    # an AVAILABLE destination
    assert p.swap_in([0], False) == ("ok", "ok")
    src = random_fp32(rng, 100)
    assert _outcome_of(lambda: p.ds.swap_out_partitioned_params([p.param(0)], [torch.from_numpy(src)]), True) == "ok"
    assert p.param(0).ds_tensor.status == Status.NOT_AVAILABLE and free_counts(p)[0] == 3  # buffer still taken
    assert ls_unchanged(p, lambda: p.ls.swap_out_partitioned([0], [src])) == "BAD_STATE"
    # another numel
    src = random_fp32(rng, 150)
    assert _outcome_of(lambda: p.ds.swap_out_partitioned_params([p.param(1)], [torch.from_numpy(src)]), True) == "ok"
    assert ls_unchanged(p, lambda: p.ls.swap_out_partitioned([1], [src])) == "INVALID_ARGUMENT"
    # more than the space holds: DeepSpeed asserts half-way
    srcs = [random_fp32(rng, 200), random_fp32(rng, 3000)]
    out = _outcome_of(lambda: p.ds.swap_out_partitioned_params([p.param(1), p.param(2)], [torch.from_numpy(s) for s in srcs]), True)
    assert out == "assert" and p.param(1).ds_tensor.status == Status.AVAILABLE
    assert ls_unchanged(p, lambda: p.ls.swap_out_partitioned([1, 2], srcs)) == "NO_BUFFER"
    # a path that was only looked up
    assert _outcome_of(lambda: p.ds.swap_out_and_release([p.param(50)]), True) == "assert"
    assert _outcome_of(lambda: p.ls.swap_out_and_release([50]), False) == "NOT_FOUND"
    src = random_fp32(rng, 10)
    assert _outcome_of(lambda: p.ds.swap_out_partitioned_params([p.param(50)], [torch.from_numpy(src)]), True) == "ok"
    assert ls_unchanged(p, lambda: p.ls.swap_out_partitioned([50], [src])) in ("NOT_FOUND", "BAD_STATE")


def test_difference_private_swap_out_releases(pair_factory):
    p = pair_factory()
    p.get_buffer(0, 100, np.zeros(100, p.np_bits))
    p.ds._swap_out([p.param(0)], async_op=False)
    p.ls.swap_out([0], async_op=False)
    assert p.param(0).ds_tensor.status == Status.NOT_AVAILABLE
    assert p.ls.param_status(0) == swapper.ParamStatus.AVAILABLE

