"""swapper.deepspeed_optimizer_swapper.DeepSpeedOptimizerSwapper driven as ZeRO-3's stage
drives it (docs/deepspeed-optimizer-swapper-protocol.md), against the same training in
memory; where DeepSpeed's swappers assert (buffer_count, sub-group size); the safe
get/set API; a step left part-way; and the layout check after a checkpoint copy. Needs
torch and deepspeed (skipped without them, a failure with SWAPPER_REQUIRE_DEEPSPEED=1,
as scripts/deepspeed-test.sh runs it)."""

import importlib
import os
import shutil
import types

import pytest

REQUIRE = os.environ.get("SWAPPER_REQUIRE_DEEPSPEED") == "1"


def _need(name):
    if not REQUIRE:
        return pytest.importorskip(name)
    return importlib.import_module(name)


torch = _need("torch")
deepspeed = _need("deepspeed")

from swapper import errors  # noqa: E402
from swapper.deepspeed_optimizer_swapper import LAYOUT_FILE, DeepSpeedOptimizerSwapper  # noqa: E402

NUMELS = [1 << 18, (1 << 18) + 1000, 1 << 18]  # 1 MiB of fp32 and more: swappable
AIO = dict(block_size=1 << 20, queue_depth=8, intra_op_parallelism=1, single_submit=False, overlap_events=True)


def flat(ds_id):
    p = torch.empty(0, dtype=torch.float32)
    p.requires_grad = True
    p.ds_id = ds_id
    return p


@pytest.fixture
def make(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.import_module("deepspeed.comm"), "get_rank", lambda *a, **k: 0)
    made = []

    def build(params, buffer_count=4, folder="nvme", optimizer=None, largest=max(NUMELS), **options):
        optimizer = optimizer or torch.optim.Adam(params, lr=1e-2)
        config = types.SimpleNamespace(buffer_count=buffer_count)
        DeepSpeedOptimizerSwapper.swapper_options = options
        try:
            s = DeepSpeedOptimizerSwapper(
                config, AIO, str(tmp_path / folder / "zero_stage_3"), optimizer, largest, "cpu", torch.float32, None
            )
        finally:
            DeepSpeedOptimizerSwapper.swapper_options = {}
        made.append(s)
        return s

    yield build
    for s in made:
        s.close()


def step_all(s, opt, params, grads, group):
    """One optimizer step as stage3 runs it: gradients out during backward, then per
    sub-group swap in (with the next), Adam on it alone, swap out."""
    for p, g in zip(params, grads):
        half = g.numel() // 2
        s.swap_out_gradients(p, [0, half], [g[:half].clone(), g[half:].clone()])
    for i, p in enumerate(params):
        nxt = params[i + 1] if i + 1 < len(params) else None
        s.swap_in_optimizer_state(p, async_parameter=nxt)
        assert p.grad is not None and p.grad.equal(grads[i])
        group["params"] = [p]
        opt.step()
        group["params"] = []
        s.swap_out_optimizer_state(p, async_swap=nxt is not None)
        assert p.numel() == 0 and p.grad is None


def test_training_through_the_swapper_equals_training_in_memory(make):
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(n, generator=gen) for n in NUMELS]
    grads = [[torch.randn(n, generator=gen) for n in NUMELS] for _ in range(3)]
    # In memory.
    ref = [torch.nn.Parameter(t.clone()) for t in init]
    ref_opt = torch.optim.Adam(ref, lr=1e-2)
    for step in grads:
        for p, g in zip(ref, step):
            p.grad = g.clone()
        ref_opt.step()
    # Through the swapper, as stage3 drives it.
    params = [flat(f"{2 * i}_{2 * i + 1}") for i in range(len(NUMELS))]
    opt = torch.optim.Adam([torch.nn.Parameter(torch.empty(0))], lr=1e-2)
    group = opt.param_groups[0]
    s = make(params, optimizer=opt, buffer_count=8)
    s.initialize_parameters(params, init)
    for step in grads:
        step_all(s, opt, params, step, group)
    assert s.stats().steps >= 3 and s.stats().bytes_written > 0
    for p, r in zip(params, ref):
        s.swap_in_optimizer_state(p)
        assert p.data.view(torch.int32).equal(r.data.view(torch.int32))
        for name in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][name].view(torch.int32).equal(ref_opt.state[r][name].view(torch.int32)), name
        s.release_swap_buffers(p)
    # The native steps ran over the chain, two sub-groups in the ring of 8 buffers.
    assert s.stats().read_ahead_peak >= 2


def test_too_few_buffers_and_too_large_sub_groups_name_the_setting(make):
    params = [flat("0_1")]
    with pytest.raises(errors.NoBufferError, match=r"offload_optimizer.buffer_count = 3: .*set buffer_count >= 4"):
        make(params, buffer_count=3)
    s = make(params, largest=1 << 18)
    with pytest.raises(errors.NoBufferError, match=r"sub-group 0_1 of 262145 elements .*sub_group_size"):
        s.initialize_parameters(params, [torch.zeros((1 << 18) + 1)])
    with pytest.raises(errors.InvalidArgumentError, match=r"SGD.*patch_deepspeed\(swappers=False\)"):
        make(params, folder="sgd", optimizer=torch.optim.SGD([torch.nn.Parameter(torch.empty(1))], lr=1.0))


def test_safe_get_and_set_over_nvme(make):
    params = [flat("0_1")]
    opt = torch.optim.Adam([torch.nn.Parameter(torch.empty(0))], lr=1e-2)
    s = make(params, optimizer=opt)
    n = NUMELS[0]
    s.initialize_parameters(params, [torch.full((n,), 1.0)])
    s.swap_out_gradients(params[0], [0], [torch.full((n,), 2.0)])
    p = params[0]
    # get: read, drop.
    s.swap_in_optimizer_state(p)
    assert float(p.detach()[7]) == 1.0 and float(p.grad[7]) == 2.0
    p.data.fill_(9.0)
    s.release_swap_buffers(p)
    s.swap_in_optimizer_state(p)
    assert float(p.detach()[7]) == 1.0, "release_swap_buffers wrote"
    # set the gradient only.
    p.grad.fill_(3.0)
    p.data.fill_(9.0)
    s.writeback_optimizer_state_and_gradients(p, write_opt_state=False, write_gradients=True)
    s.swap_in_optimizer_state(p)
    assert float(p.detach()[7]) == 1.0 and float(p.grad[7]) == 3.0
    # set the params.
    p.data.fill_(4.0)
    s.writeback_optimizer_state_and_gradients(p, write_opt_state=True, write_gradients=False)
    s.swap_in_optimizer_state(p)
    assert float(p.detach()[7]) == 4.0
    with pytest.raises(errors.BadStateError, match="purge_state while"):
        s.purge_state()
    s.release_swap_buffers(p)
    s.purge_state()
    with pytest.raises(errors.BadStateError, match="not swapped in"):
        s.swap_out_optimizer_state(p)


def test_a_step_left_part_way_is_abandoned_and_the_files_keep_their_state(make):
    params = [flat(f"{i}_{i}") for i in range(3)]
    s = make(params, buffer_count=8)
    s.initialize_parameters(params, [torch.full((n,), float(i)) for i, n in enumerate(NUMELS)])
    for i, p in enumerate(params):  # learn the chain
        s.swap_in_optimizer_state(p, async_parameter=params[i + 1] if i < 2 else None)
        s.swap_out_optimizer_state(p)
    s.swap_in_optimizer_state(params[0], async_parameter=params[1])
    params[0].data.fill_(7.0)
    s.swap_out_optimizer_state(params[0], async_swap=True)
    s.swap_in_optimizer_state(params[1], async_parameter=params[2])
    params[1].data.fill_(7.0)
    # An exception in the step: sub-group 1 is never swapped out; the next step begins.
    s.swap_in_optimizer_state(params[0], async_parameter=params[1])
    assert float(params[0][0]) == 7.0  # handed back before: written
    s.swap_out_optimizer_state(params[0], async_swap=True)
    s.swap_in_optimizer_state(params[1], async_parameter=params[2])
    assert float(params[1][0]) == 1.0  # never handed back: its file kept the state
    s.swap_out_optimizer_state(params[1], async_swap=True)
    s.swap_in_optimizer_state(params[2])
    s.swap_out_optimizer_state(params[2])


def test_a_checkpoint_copy_is_read_when_the_layout_matches_and_refused_when_not(make, tmp_path):
    params = [flat(f"{i}_{i}") for i in range(2)]
    a = make(params, folder="a")
    a.initialize_parameters(params, [torch.full((n,), 5.0) for n in NUMELS[:2]])
    saved = tmp_path / "ckpt"
    shutil.copytree(a.swap_folder, saved)  # DeepSpeed's save_checkpoint
    # The same sub-groups: the copy is read.
    b = make(params, folder="b")
    b.initialize_parameters(params, [torch.zeros(n) for n in NUMELS[:2]])
    shutil.copytree(saved, b.swap_folder, dirs_exist_ok=True)  # DeepSpeed's load_checkpoint
    b.swap_in_optimizer_state(params[1])
    assert float(params[1][3]) == 5.0
    b.release_swap_buffers(params[1])
    # Other sub-groups: refused, naming the first difference.
    others = [flat("0_0"), flat("9_9")]
    c = make(others, folder="c")
    c.initialize_parameters(others, [torch.zeros(n) for n in NUMELS[:2]])
    shutil.copytree(saved, c.swap_folder, dirs_exist_ok=True)
    with pytest.raises(errors.BadStateError, match=r"other sub-groups.*\[1, '1_1', 263144\] there, \[1, '9_9', 263144\] here"):
        c.swap_in_optimizer_state(others[0])
    # With checksums, a copy is refused too (the kept checksums describe other bytes).
    d = make(params, folder="d", verify_checksums=True)
    d.initialize_parameters(params, [torch.zeros(n) for n in NUMELS[:2]])
    shutil.copytree(saved, d.swap_folder, dirs_exist_ok=True)
    with pytest.raises(errors.BadStateError, match="verify_checksums"):
        d.swap_in_optimizer_state(params[0])
    assert os.path.exists(os.path.join(d.swap_folder, LAYOUT_FILE))
