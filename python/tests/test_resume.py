"""Resume: flush, adopt (constructor and DeepSpeed JSON), snapshot and restore, and the
errors of a bad adoption (issue 20)."""

import json
import os

import numpy as np
import pytest

import swapper
from swapper import ParamStatus


def fill(s, pid, numel, seed):
    v = s.get_buffer(pid, numel)
    v[:] = (np.arange(numel) * seed % 1000).astype(np.float16)
    s.swap_out_and_release([pid])
    return v.copy()


def check(s, pid, want):
    assert s.param_status(pid) is ParamStatus.NOT_AVAILABLE
    s.swap_in([pid])  # no get_buffer first: the adopted param knows its numel
    got = s.param_buffer(pid)
    assert np.array_equal(got, want)
    s.release([pid])


def test_flush_then_adopt_and_rewrites_after_the_flush_do_not_show(tmp_path):
    kw = dict(buffer_count=2, buffer_numel=1 << 20, verify_checksums=True)
    with swapper.Swapper(str(tmp_path), **kw) as s:
        a = fill(s, 1, 5000, 3)
        b = fill(s, 2, 1 << 20, 7)
        s.flush()
        fill(s, 1, 5000, 11)  # after the flush: not promised
    with swapper.Swapper(str(tmp_path), adopt=True, **kw) as s:
        check(s, 1, a)
        check(s, 2, b)
    cfg = {"zero_optimization": {"offload_param": {"device": "nvme", "nvme_path": str(tmp_path),
                                                   "buffer_count": 2, "buffer_size": 1 << 20,
                                                   "libswapper_adopt": True}}}
    with swapper.Swapper.from_deepspeed_config(json.dumps(cfg)) as s:
        check(s, 2, b)


def test_snapshot_and_restore(tmp_path):
    live = tmp_path / "live"
    other = tmp_path / "other"
    live.mkdir()
    other.mkdir()
    with swapper.Swapper(str(live), buffer_count=1, buffer_numel=4096) as s:
        a = fill(s, 5, 4096, 5)
        s.snapshot(str(tmp_path / "ckpt"))
        fill(s, 5, 4096, 9)
        s.flush()
    assert os.path.exists(tmp_path / "ckpt/drive0/zero_stage_3/float16params/rank0/manifest.json")
    swapper.Swapper.restore(str(tmp_path / "ckpt"), str(other))
    with swapper.Swapper(str(other), buffer_count=1, buffer_numel=4096, adopt=True) as s:
        check(s, 5, a)


def test_a_garbled_manifest_and_a_folder_in_use_are_clear_errors(tmp_path):
    with swapper.Swapper(str(tmp_path), buffer_count=1, buffer_numel=4096) as s:
        fill(s, 1, 4096, 1)
        s.flush()
        with pytest.raises(swapper.BusyError):
            swapper.Swapper(str(tmp_path), buffer_count=1, buffer_numel=4096, adopt=True)
    manifest = tmp_path / "zero_stage_3/float16params/rank0/manifest.json"
    data = bytearray(manifest.read_bytes())
    data[-3] ^= 1
    manifest.write_bytes(bytes(data))
    with pytest.raises(swapper.CorruptDataError, match="garbled"):
        swapper.Swapper(str(tmp_path), buffer_count=1, buffer_numel=4096, adopt=True)
    assert manifest.read_bytes() == bytes(data)
    assert os.path.exists(tmp_path / "zero_stage_3/float16params/rank0/extent-0.swp")


def test_optimizer_flush_and_adopt(tmp_path):
    specs = [("param", 3000), ("exp_avg", 3000), ("grad", 3000, "gradient")]
    kw = dict(ring_bytes=1 << 20, pin_memory=False, verify_checksums=True)
    with swapper.OptimizerSwapper(tmp_path, **kw) as opt:
        opt.register(0, specs)
        for v in opt.step([0]):
            v["param"][:] = 1.25
            v["exp_avg"][:] = np.arange(3000, dtype=np.float32)
            v.hand_back()
        opt.flush()
        for v in opt.step([0]):
            v["param"][:] = 9.0  # after the flush: not promised
            v.hand_back()
    with swapper.OptimizerSwapper(tmp_path, adopt=True, **kw) as opt:
        with pytest.raises(swapper.InvalidArgumentError, match="param"):
            opt.register(0, [("param", 2999), ("exp_avg", 3000), ("grad", 3000, "gradient")])
        opt.register(0, specs)
        for v in opt.step([0]):
            assert np.all(v["param"] == 1.25)
            assert np.array_equal(v["exp_avg"], np.arange(3000, dtype=np.float32))
            v.discard()


def test_optimizer_snapshot_and_restore(tmp_path):
    specs = [("param", 2000), ("grad", 2000, "gradient")]
    live, other = tmp_path / "live", tmp_path / "other"
    live.mkdir()
    other.mkdir()
    with swapper.OptimizerSwapper(live, ring_bytes=1 << 20, pin_memory=False) as opt:
        opt.register(3, specs)
        for v in opt.step([3]):
            v["param"][:] = 2.5
            v.hand_back()
        opt.snapshot(tmp_path / "ckpt")
    swapper.OptimizerSwapper.restore(tmp_path / "ckpt", other)
    with swapper.OptimizerSwapper(other, ring_bytes=1 << 20, pin_memory=False, adopt=True) as opt:
        opt.register(3, specs)
        for v in opt.step([3]):
            assert np.all(v["param"] == 2.5)
            v.discard()


def _set_state(opt, order, value):
    for v in opt.step(order):
        v["param"][:] = value
        v["exp_avg"][:] = value + 0.5
        v.hand_back()


def _state_is(opt, order, value):
    for v in opt.step(order):
        assert np.all(v["param"] == value), (v.subgroup, v["param"][:4])
        assert np.all(v["exp_avg"] == value + 0.5)
        v.discard()


def _chattr(flag, path):
    import subprocess

    subprocess.run(["chattr", flag, str(path)], check=True)


def test_optimizer_flush_at_end_step_and_a_flush_that_fails_for_real(tmp_path):
    specs = [("param", 5000), ("exp_avg", 5000), ("grad", 5000, "gradient")]
    kw = dict(ring_bytes=1 << 20, pin_memory=False, verify_checksums=True)
    rank = tmp_path / "zero_stage_3/optimizer/rank0"
    with swapper.OptimizerSwapper(tmp_path, flush_at_end_step=True, **kw) as opt:
        opt.register(0, specs)
        opt.register(1, specs)
        _set_state(opt, [0, 1], 1.0)  # end_step flushed: no flush() call anywhere
        assert (rank / "manifest.json").exists()
        # The rank folder made immutable: the manifest cannot be replaced, so end_step's
        # flush fails for real and says so; the step is ended all the same.
        _chattr("+i", rank)
        try:
            with pytest.raises(swapper.SwapperError, match="end_step's flush") as e:
                _set_state(opt, [1, 0], 2.0)
            assert "generation 1 is still the durable one" in str(e.value)
        finally:
            _chattr("-i", rank)
        assert opt.stats().steps == 2
    with swapper.OptimizerSwapper(tmp_path, adopt=True, **kw) as opt:
        opt.register(0, specs)
        opt.register(1, specs)
        _state_is(opt, [0, 1], 1.0)


def test_optimizer_deepspeed_keys_for_adopt_and_the_flush_at_end_step(tmp_path):
    specs = [("param", 2048), ("exp_avg", 2048)]

    def config(**extra):
        block = {"device": "nvme", "nvme_path": str(tmp_path), "buffer_count": 2, **extra}
        return {"zero_optimization": {"offload_optimizer": block}}

    with swapper.OptimizerSwapper.from_deepspeed_config(config(libswapper_flush_at_end_step=True), 0, 2048) as opt:
        opt.register(0, specs)
        _set_state(opt, [0], 7.0)
    with swapper.OptimizerSwapper.from_deepspeed_config(config(libswapper_adopt=True), 0, 2048) as opt:
        opt.register(0, specs)
        _state_is(opt, [0], 7.0)
        _set_state(opt, [0], 8.0)  # not flushed: neither key asks it
    with swapper.OptimizerSwapper.from_deepspeed_config(config(libswapper_adopt=True), 0, 2048) as opt:
        opt.register(0, specs)
        _state_is(opt, [0], 7.0)
    with pytest.raises(swapper.InvalidArgumentError, match="libswapper_flush_at_end_step"):
        swapper.OptimizerSwapper.from_deepspeed_config(config(libswapper_flush_at_end_step="yes"), 0, 2048)
