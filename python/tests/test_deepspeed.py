"""swapper.deepspeed.aio_handle against DeepSpeed's method names and return values."""

import os
import shutil
import sys
import types

import numpy as np
import pytest

import swapper
from swapper.deepspeed import aio_handle, patch_deepspeed


def test_constructor_and_getters():
    h = aio_handle(1 << 16, 16, True, False, 2)  # positional, as DeepSpeed's callers do
    assert h.get_block_size() == 1 << 16
    assert h.get_queue_depth() == 16
    assert h.get_single_submit() is True
    assert h.get_overlap_events() is False
    assert h.get_intra_op_parallelism() == 2 == h.get_thread_count()
    assert h.get_alignment() == 4096
    h.close()
    d = aio_handle()
    assert (d.get_block_size(), d.get_queue_depth(), d.get_intra_op_parallelism()) == (1048576, 8, 1)
    assert d.get_single_submit() is False and d.get_overlap_events() is True
    d.close()


def test_sync_and_async_return_values(folder):
    path = os.path.join(folder, "t.swp")
    src = np.random.default_rng(1).standard_normal(300_001).astype(np.float32)
    with aio_handle(intra_op_parallelism=3) as h:
        assert h.sync_pwrite(src, path) == 1
        dst = np.zeros_like(src)
        assert h.sync_pread(dst, path) == 1
        assert np.array_equal(src, dst)
        dst[:] = 0
        assert h.async_pread(dst[:1000], path) == 0
        assert h.async_pread(dst[1000:], path, file_offset=4000) == 0
        assert h.wait() == 2
        assert np.array_equal(src, dst)
        assert h.wait() == 0
        # a sync call reaps earlier async ones too, as in DeepSpeed
        h.async_pwrite(src[:10], path + "2")
        assert h.sync_pwrite(src[10:], path + "2", 40) == 2
        assert h.pwrite(src, path, True, False) == 1  # validate
        assert h.pread(dst, path, True, True) == 0
        assert h.wait() == 1


def test_failures_raise(folder):
    with aio_handle() as h:
        with pytest.raises(swapper.NotFoundError):
            h.sync_pread(np.zeros(10), os.path.join(folder, "missing"))
        h.sync_pwrite(np.zeros(10), os.path.join(folder, "short"))
        with pytest.raises(swapper.SwapperIOError):
            h.sync_pread(np.zeros(20), os.path.join(folder, "short"))


def test_locked_tensors_numpy():
    with aio_handle() as h:
        t = h.new_cpu_locked_tensor(10_000, np.zeros(1, np.float16))
        assert t.dtype == np.float16 and t.shape == (10_000,)
        assert t.__array_interface__["data"][0] % 4096 == 0
        assert h.is_pinned(t) == swapper.is_locked(t)
        assert not h.is_pinned(np.zeros(10))
        assert h.free_cpu_locked_tensor(t) is True
        assert h.free_cpu_locked_tensor(t) is False
        assert h.free_cpu_locked_tensor(np.zeros(4)) is False


def test_locked_tensor_round_trip(folder):
    path = os.path.join(folder, "p.swp")
    with aio_handle() as h:
        t = h.new_cpu_locked_tensor(1 << 18, np.empty(0, np.float32))
        t[:] = np.arange(t.size)
        h.sync_pwrite(t, path)
        u = h.new_cpu_locked_tensor(1 << 18, np.empty(0, np.float32))
        h.async_pread(u, path)
        h.wait()
        assert np.array_equal(t, u)
        h.free_cpu_locked_tensor(t)
        h.free_cpu_locked_tensor(u)


def test_torch_tensors(folder):
    torch = pytest.importorskip("torch")
    path = os.path.join(folder, "torch.swp")
    with aio_handle() as h:
        t = h.new_cpu_locked_tensor(4096, torch.empty(0, dtype=torch.bfloat16))
        assert isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 and t.numel() == 4096
        t.copy_(torch.arange(4096, dtype=torch.bfloat16))
        assert h.sync_pwrite(t, path) == 1
        back = torch.zeros(4096, dtype=torch.bfloat16)
        assert h.sync_pread(back, path) == 1
        assert torch.equal(t, back)
        assert h.free_cpu_locked_tensor(t)


@pytest.mark.parametrize("swappers", [False, True])
def test_patch_deepspeed(monkeypatch, swappers):
    class AsyncIOBuilder:
        def load(self, verbose=True):
            raise RuntimeError("would compile DeepSpeed's libaio op")

        def is_compatible(self, verbose=False):
            return False

    class StockParamSwapper:
        pass

    class StockPartitioned:
        pass

    class StockPipelined:
        pass

    class DeepSpeedEngine:
        def save_checkpoint(self, save_dir):
            return "saved"

        def load_checkpoint(self, load_dir):
            return "loaded"

    stock_save, stock_load, stock_copytree = DeepSpeedEngine.save_checkpoint, DeepSpeedEngine.load_checkpoint, shutil.copytree
    engine = types.ModuleType("deepspeed.runtime.engine")
    engine.DeepSpeedEngine = DeepSpeedEngine
    fake = types.ModuleType("deepspeed.ops.op_builder")
    fake.AsyncIOBuilder = AsyncIOBuilder
    zero = types.ModuleType("deepspeed.runtime.zero.partition_parameters")
    zero.AsyncPartitionedParameterSwapper = StockParamSwapper
    stage3 = types.ModuleType("deepspeed.runtime.zero.stage3")
    stage3.PartitionedOptimizerSwapper = StockPartitioned
    stage3.PipelinedOptimizerSwapper = StockPipelined
    for name in ("deepspeed", "deepspeed.ops", "deepspeed.runtime", "deepspeed.runtime.zero"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "deepspeed.ops.op_builder", fake)
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.zero.partition_parameters", zero)
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.zero.stage3", stage3)
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.engine", engine)
    undo = patch_deepspeed(swappers=swappers)
    try:
        from deepspeed.ops.op_builder import AsyncIOBuilder as B

        assert B().is_compatible()
        h = B().load(verbose=False).aio_handle(block_size=1 << 20, queue_depth=8, single_submit=False, overlap_events=True, intra_op_parallelism=1)
        assert isinstance(h, aio_handle)
        h.close()
        if swappers:
            from swapper.deepspeed_optimizer_swapper import DeepSpeedOptimizerSwapper
            from swapper.deepspeed_param_swapper import DeepSpeedParamSwapper

            assert zero.AsyncPartitionedParameterSwapper is DeepSpeedParamSwapper
            assert stage3.PartitionedOptimizerSwapper is DeepSpeedOptimizerSwapper
            assert stage3.PipelinedOptimizerSwapper is DeepSpeedOptimizerSwapper
            # The engine's checkpoint calls run as before (their copies of the optimizer
            # swap folder diverted: deepspeed_training.py runs them for real).
            assert DeepSpeedEngine().save_checkpoint("d") == "saved" and DeepSpeedEngine().load_checkpoint("d") == "loaded"
            assert DeepSpeedEngine.save_checkpoint is not stock_save and shutil.copytree is not stock_copytree
        else:
            assert zero.AsyncPartitionedParameterSwapper is StockParamSwapper
            assert stage3.PartitionedOptimizerSwapper is StockPartitioned
            assert DeepSpeedEngine.save_checkpoint is stock_save and shutil.copytree is stock_copytree
    finally:
        undo()
    with pytest.raises(RuntimeError):
        AsyncIOBuilder().load()
    assert zero.AsyncPartitionedParameterSwapper is StockParamSwapper
    assert stage3.PartitionedOptimizerSwapper is StockPartitioned
    assert stage3.PipelinedOptimizerSwapper is StockPipelined
    assert DeepSpeedEngine.save_checkpoint is stock_save and DeepSpeedEngine.load_checkpoint is stock_load
    assert shutil.copytree is stock_copytree
