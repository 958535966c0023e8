"""swapper.deepspeed_optimizer_swapper.DeepSpeedOptimizerSwapper driven as ZeRO-3's stage
drives it (docs/deepspeed-optimizer-swapper-protocol.md), against the same training in
memory; where DeepSpeed's swappers assert (buffer_count, sub-group size); the safe
get/set API; a step left part-way; and checkpoint snapshots (save, restore, adoption). Needs
torch and deepspeed (skipped without them, a failure with SWAPPER_REQUIRE_DEEPSPEED=1,
as scripts/deepspeed-test.sh runs it)."""

import fcntl
import importlib
import os
import shutil
import struct
import subprocess
import types

import numpy as np
import pytest

REQUIRE = os.environ.get("SWAPPER_REQUIRE_DEEPSPEED") == "1"


def _need(name):
    if not REQUIRE:
        return pytest.importorskip(name)
    return importlib.import_module(name)


torch = _need("torch")
deepspeed = _need("deepspeed")

from swapper import errors  # noqa: E402
from swapper.deepspeed_optimizer_swapper import DeepSpeedOptimizerSwapper  # noqa: E402

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


def shut_down(folder):
    """FS_IOC_SHUTDOWN (without flushing the log) on the file system holding `folder`:
    every later read and write on it fails with EIO, as after a device failure."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0x8004587D, struct.pack("I", 2))  # _IOR('X', 125, __u32), FSOP_GOING_FLAGS_NOLOGFLUSH
    finally:
        os.close(fd)


def test_the_last_steps_writes_overlap_the_next_pass_and_a_failure_is_raised_at_the_next_call(make, tmp_path):
    """After the last sub-group of a step is handed back, its writes go on while the
    caller runs the next forward pass; the next call that needs them waits. A write that
    fails there (a real ext4 loop mount shut down before the last hand-back) is raised by
    that call, naming it, and not lost."""
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        params = [flat(f"{i}_{i}") for i in range(2)]
        opt = torch.optim.Adam([torch.nn.Parameter(torch.empty(0))], lr=1e-2)
        s = make(params, folder=str(mnt / "nvme"), optimizer=opt)
        gen = torch.Generator().manual_seed(13)
        s.initialize_parameters(params, [torch.randn(n, generator=gen) for n in NUMELS[:2]])
        group = opt.param_groups[0]
        step_all(s, opt, params, [torch.randn(n, generator=gen) for n in NUMELS[:2]], group)
        # The step's writes were left to the next call: the native step is still under way.
        with pytest.raises(errors.BadStateError, match="a step is already under way"):
            s.opt.begin_step([0])
        grads = [torch.randn(n, generator=gen) for n in NUMELS[:2]]
        for p, g in zip(params, grads):
            s.swap_out_gradients(p, [0], [g])  # the first waits for the last step's writes
        for i, p in enumerate(params):
            s.swap_in_optimizer_state(p, async_parameter=params[1] if i == 0 else None)
            group["params"] = [p]
            opt.step()
            group["params"] = []
            if i == 1:
                shut_down(mnt)
            s.swap_out_optimizer_state(p, async_swap=i == 0)  # the last returns: its write goes on
        with pytest.raises(errors.SwapperIOError, match=r"the last optimizer step's writes, waited for at swap_out_gradients"):
            s.swap_out_gradients(params[0], [0], [grads[0]])
        s.close()
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)  # the swapper may still hold files


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


def native_state(s):
    """Every state tensor of every sub-group of `s`, read through its native swapper."""
    out = {}
    for v in s.opt.step(list(range(len(s._by_index)))):
        for name in v.names:
            if name != "grad":
                out[(v.subgroup, name)] = v[name].copy()
        v.discard()
    return out


def trained(make, folder, **options):
    """Two sub-groups after two Adam steps through the swapper: (swapper, params)."""
    params = [flat(f"{i}_{i}") for i in range(2)]
    opt = torch.optim.Adam([torch.nn.Parameter(torch.empty(0))], lr=1e-2)
    s = make(params, folder=folder, optimizer=opt, **options)
    gen = torch.Generator().manual_seed(11)
    s.initialize_parameters(params, [torch.randn(n, generator=gen) for n in NUMELS[:2]])
    for _ in range(2):
        step_all(s, opt, params, [torch.randn(n, generator=gen) for n in NUMELS[:2]], opt.param_groups[0])
    return s, params


def fresh(make, folder, numels=NUMELS[:2], **options):
    params = [flat(f"{i}_{i}") for i in range(len(numels))]
    s = make(params, folder=folder, **options)
    s.initialize_parameters(params, [torch.zeros(n) for n in numels])
    return s, params


def equal(x, y):
    return x.keys() == y.keys() and all(np.array_equal(x[k].view(np.int32), y[k].view(np.int32)) for k in x)


@pytest.mark.parametrize("checksums", [False, True])
def test_a_checkpoint_snapshot_is_restored_and_adopted(make, tmp_path, checksums):
    """DeepSpeed's checkpoint copy of the swap folder, as the patched engine does it
    (deepspeed_training.py runs the engine's own save and load): the snapshot brings
    back every state tensor bit for bit, with checksums verified when on."""
    a, _ = trained(make, "a", verify_checksums=checksums)
    saved = tmp_path / "ckpt" / "global_step2" / "offloaded_tensors" / "rank0"
    a.save_snapshot(saved)
    assert (saved / "drive0" / "zero_stage_3" / "optimizer" / "rank0" / "manifest.json").is_file()
    with pytest.raises(FileExistsError):
        a.save_snapshot(saved)  # as DeepSpeed's copytree(dirs_exist_ok=False)
    want = native_state(a)
    b, params = fresh(make, "b", verify_checksums=checksums)
    assert not equal(native_state(b), want)
    b.load_snapshot(saved)
    assert equal(native_state(b), want)
    # The stage's calls go on over the restored state (reset_swap_buffers, then steps).
    b.swap_in_optimizer_state(params[1])
    assert np.array_equal(params[1].detach().numpy(), want[(1, "param")])
    b.swap_out_optimizer_state(params[1])
    if checksums:
        # A flipped byte in the checkpoint: the adoption names the tensor.
        data = sorted((saved / "drive0" / "zero_stage_3" / "optimizer" / "rank0").glob("extent-*.swp"))[0]
        with open(data, "r+b") as f:
            f.seek(4096 * 3)
            byte = f.read(1)
            f.seek(4096 * 3)
            f.write(bytes([byte[0] ^ 0x40]))
        c, _ = fresh(make, "c", verify_checksums=True)
        with pytest.raises(errors.BadStateError, match=r"cannot adopt .*unusable until the engine is rebuilt"):
            c.load_snapshot(saved)


def test_a_snapshot_of_other_sub_groups_or_no_snapshot_is_refused(make, tmp_path):
    a, _ = trained(make, "a")
    saved = tmp_path / "ckpt" / "rank0"
    a.save_snapshot(saved)
    # A sub-group of another size: the native registration names the tensor.
    b, _ = fresh(make, "b", numels=[NUMELS[0], NUMELS[1] - 1000])
    with pytest.raises(errors.BadStateError, match=r"sub-group 1, tensor \"param\".*unusable until the engine"):
        b.load_snapshot(saved)
    # One sub-group more here, or fewer: none would read as zeros.
    c, _ = fresh(make, "c", numels=NUMELS)
    with pytest.raises(errors.BadStateError, match=r"other sub-groups: 2 sub-groups of 3 state tensors .* there, 3 here"):
        c.load_snapshot(saved)
    d, _ = fresh(make, "d", numels=NUMELS[:1])
    with pytest.raises(errors.BadStateError, match=r"other sub-groups: 2 sub-groups .* there, 1 here, 3 tensors"):
        d.load_snapshot(saved)
    # DeepSpeed's own copy of a swap folder (no snapshot): refused, nothing changed.
    e, params = fresh(make, "e")
    copied = tmp_path / "stock-copy"
    shutil.copytree(a.swap_folder, copied)
    with pytest.raises(errors.NotFoundError, match="no libswapper snapshot"):
        e.load_snapshot(copied)
    e.swap_in_optimizer_state(params[0])
    assert float(params[0][3]) == 0.0
    e.release_swap_buffers(params[0])


def test_a_snapshot_refused_before_the_restore_leaves_the_swapper_as_it_was(make, tmp_path, monkeypatch):
    a, _ = trained(make, "a")
    saved = tmp_path / "ckpt" / "rank0"
    a.save_snapshot(saved)
    # The snapshot of rank 0 loaded by rank 1: refused before anything is emptied; the
    # swapper adopts back the state of its last step.
    monkeypatch.setattr(importlib.import_module("deepspeed.comm"), "get_rank", lambda *a, **k: 1)
    b, params = fresh(make, "b")
    want = native_state(b)
    with pytest.raises(errors.NotFoundError, match=r"optimizer/rank1 holds no manifest"):
        b.load_snapshot(saved)
    assert equal(native_state(b), want)
    b.swap_in_optimizer_state(params[0])
    b.swap_out_optimizer_state(params[0])
