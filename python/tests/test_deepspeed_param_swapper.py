"""swapper.deepspeed_param_swapper.DeepSpeedParamSwapper where DeepSpeed's own swapper
asserts: too few buffers, a partition larger than a buffer, a batch larger than the
partitioned swap space; and the state DeepSpeed's runtime reads (ds_tensor.status and
.data) through a swap cycle. Needs torch and deepspeed (skipped without them, a failure
with SWAPPER_REQUIRE_DEEPSPEED=1, as scripts/deepspeed-test.sh runs it)."""

import importlib
import os
import types

import pytest

REQUIRE = os.environ.get("SWAPPER_REQUIRE_DEEPSPEED") == "1"


def _need(name):
    if not REQUIRE:
        return pytest.importorskip(name)
    return importlib.import_module(name)


torch = _need("torch")
deepspeed = _need("deepspeed")
pps = importlib.import_module("deepspeed.runtime.swap_tensor.partitioned_param_swapper")
Status = pps.PartitionedParamStatus

from swapper import errors  # noqa: E402
from swapper.deepspeed_param_swapper import DeepSpeedParamSwapper  # noqa: E402

NUMEL = 1 << 19  # 1 MiB of bf16: swappable


class Param:
    def __init__(self, ds_id):
        self.ds_id = ds_id
        self.ds_tensor = torch.empty(0, dtype=torch.bfloat16)
        self.ds_tensor.ds_numel = NUMEL
        self.ds_tensor.status = Status.AVAILABLE


@pytest.fixture
def make(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.import_module("deepspeed.comm"), "get_rank", lambda *a, **k: 0)
    made = []

    def build(buffer_count=2, buffer_size=NUMEL):
        offload = types.SimpleNamespace(nvme_path=str(tmp_path / "nvme"), buffer_count=buffer_count, buffer_size=buffer_size)
        aio = dict(block_size=1 << 20, queue_depth=8, intra_op_parallelism=1, single_submit=False, overlap_events=True, use_gds=False)
        cfg = types.SimpleNamespace(zero_config=types.SimpleNamespace(offload_param=offload), aio_config=aio)
        s = DeepSpeedParamSwapper(cfg, torch.bfloat16)
        made.append(s)
        return s

    yield build
    for s in made:
        s.close()


def written(s, pid, value):
    """A param given a buffer, filled with `value`, swapped out and released."""
    p = Param(pid)
    buf = s.get_buffer(p, NUMEL)
    buf.fill_(value)
    p.ds_tensor.data = buf.data
    s.swap_out_and_release([p])
    assert p.ds_tensor.status == Status.NOT_AVAILABLE
    assert p.ds_tensor.numel() == 1  # DeepSpeed's invalid_buffer
    return p


def test_swap_cycle_keeps_deepspeed_state(make):
    s = make()
    p = written(s, 3, 1.5)
    path = s.get_path(p, must_exist=True)
    assert not os.path.exists(path), "get_path names no file: the param lives in the store's extent files"
    fp16 = torch.empty(NUMEL, dtype=torch.bfloat16)
    path.read_into(fp16)
    assert bool((fp16 == 1.5).all())
    with pytest.raises(errors.NotFoundError, match="never swapped out"):
        s.get_path(Param(99), must_exist=True)
    s.swap_in([p], async_op=True)
    assert p.ds_tensor.status == Status.INFLIGHT
    s.synchronize_reads()
    assert p.ds_tensor.status == Status.AVAILABLE
    assert p.ds_tensor.dtype == torch.bfloat16 and p.ds_tensor.numel() == NUMEL
    assert bool((p.ds_tensor == 1.5).all())
    s.remove_partition_and_release_buffers([p])
    assert p.ds_tensor.status == Status.NOT_AVAILABLE and s.available_swap_in_buffers() == 2
    dest = torch.empty(NUMEL, dtype=torch.bfloat16)
    s.swap_into_buffer(p, dest)
    assert bool((dest == 1.5).all())


def test_partition_larger_than_a_buffer_names_buffer_size(make):
    s = make(buffer_size=NUMEL)
    with pytest.raises(errors.NoBufferError, match=rf"offload_param.buffer_size = {NUMEL}.*buffer_size >= {NUMEL + 1}"):
        s.get_buffer(Param(1), NUMEL + 1)


def test_too_few_buffers_name_buffer_count(make):
    s = make(buffer_count=2)
    params = [written(s, i, float(i)) for i in range(3)]
    with pytest.raises(errors.NoBufferError, match=r"buffer_count = 2 .*set buffer_count >= 3"):
        s.swap_in(params, async_op=False)
    assert all(p.ds_tensor.status == Status.NOT_AVAILABLE for p in params)  # nothing changed
    held = [Param(10), Param(11)]
    for p in held:
        s.get_buffer(p, NUMEL)
    with pytest.raises(errors.NoBufferError, match=r"all 2 buffers of zero_optimization.offload_param.buffer_count"):
        s.get_buffer(Param(12), NUMEL)


def test_prefetch_narrows_to_the_free_buffers(make):
    s = make(buffer_count=2)
    params = [written(s, i, float(i)) for i in range(3)]
    s.swap_in(params, async_op=True)  # DeepSpeed's asserts; here the first two are read
    assert [p.ds_tensor.status for p in params] == [Status.INFLIGHT, Status.INFLIGHT, Status.NOT_AVAILABLE]
    s.synchronize_reads()
    assert [float(p.ds_tensor[0]) for p in params[:2]] == [0.0, 1.0]


def test_async_release_buffers_come_back_when_needed(make):
    s = make(buffer_count=1)
    p = Param(1)
    p.ds_tensor.data = s.get_buffer(p, NUMEL).fill_(2.0).data
    s.swap_out_and_release([p], async_op=True, force_buffer_release=True)
    q = Param(2)
    s.get_buffer(q, NUMEL)  # waits for p's write, which gives its buffer back
    assert p.ds_tensor.status == Status.NOT_AVAILABLE


def test_swap_out_partitioned_params_in_pieces_that_fit(make):
    s = make(buffer_count=3)
    params = [written(s, i, 0.0) for i in range(3)]
    s.reserve_partitioned_swap_space([NUMEL])  # room for one at a time
    src = [torch.full((NUMEL,), float(i + 1), dtype=torch.float32) for i in range(3)]
    s.swap_out_partitioned_params(params, src)
    s.swap_in(params, async_op=False)
    assert [float(p.ds_tensor[-1]) for p in params] == [1.0, 2.0, 3.0]
    s.remove_partition_and_release_buffers(params)
    with pytest.raises(errors.NoBufferError, match="partitioned swap space"):
        big = Param(9)
        big.ds_tensor.status = Status.NOT_AVAILABLE
        s.swap_out_partitioned_params([big], [torch.zeros(2 * NUMEL)])


def test_a_new_swapper_on_the_folder_closes_the_previous(make):
    old = make()
    p = written(old, 1, 1.0)
    new = make()
    with pytest.raises(errors.BadStateError, match="closed"):
        old.swap_in([p])
    assert new.available_swap_in_buffers() == 2
