"""The optimizer-state swapper from Python: Adam over sub-groups on NVMe against the same
Adam in numpy, bit for bit; gradients at offsets; the new params into the parameter
swapper; the errors a caller meets."""

import numpy as np
import pytest

import swapper
from swapper import OptimizerSwapper


def adam(step, p, m, v, g):
    b1, b2, lr, eps = np.float32(0.9), np.float32(0.999), np.float32(1e-2), np.float32(1e-8)
    m *= b1
    m += (np.float32(1) - b1) * g
    v *= b2
    v += (np.float32(1) - b2) * g * g
    c1 = np.float32(1) - b1**step
    c2 = np.float32(1) - b2**step
    p -= lr * (m / c1) / (np.sqrt(v / c2) + eps)


def specs(n):
    return [("param", n), ("exp_avg", n), ("exp_avg_sq", n), ("grad", n, "gradient")]


def test_adam_on_nvme_matches_numpy_bit_for_bit(tmp_path):
    sizes = [5000, 3001, 7000]
    rng = np.random.default_rng(3)
    mem = [[rng.standard_normal(n).astype(np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)] for n in sizes]
    with OptimizerSwapper(tmp_path, ring_bytes=2 * 4 * 28672, pin_memory=False, verify_checksums=True) as opt:
        for i, n in enumerate(sizes):
            opt.register(i, specs(n))
        for v in opt.step(range(len(sizes))):
            assert not v["exp_avg"].any() and not v["grad"].any()
            v["param"][:] = mem[v.subgroup][0]
            v.hand_back()
        for step in range(1, 4):
            grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
            for i, g in enumerate(grads):
                opt.swap_out_gradients(i, "grad", [(0, g[:1000]), (1000, g[1000:])])
                adam(step, *mem[i], g)
            order = [(k + step) % len(sizes) for k in range(len(sizes))]
            seen = []
            for v in opt.step(order):
                seen.append(v.subgroup)
                assert np.array_equal(v["grad"], grads[v.subgroup])
                adam(step, v["param"], v["exp_avg"], v["exp_avg_sq"], v["grad"])
                v.hand_back()
                assert not v["param"].flags.writeable  # the view is read-only once handed back
            assert seen == order
        for v in opt.step([0, 1, 2]):
            for k in range(3):
                assert v.tensors[k].tobytes() == mem[v.subgroup][k].tobytes()
            v.discard()
        st = opt.stats()
        assert st.subgroups == 3 and st.steps == 5 and st.ring_in_use == 0
        assert st.read_ahead_peak >= 2
    assert OptimizerSwapper.live_handles() == 0


def test_new_params_go_to_the_parameter_swapper(tmp_path):
    with swapper.Swapper(tmp_path, dtype="fp16", buffer_count=2, buffer_numel=4096) as s, OptimizerSwapper(
        tmp_path, ring_bytes=1 << 20, pin_memory=False
    ) as opt:
        for pid, n in [(1, 3000), (2, 1000)]:
            s.get_buffer(pid, n)
            s.swap_out_and_release([pid])
        s.reserve_partitioned_swap_space([3000, 1000])
        opt.register(0, specs(4000))
        want = np.linspace(-3, 3, 4000, dtype=np.float32)
        for v in opt.step([0]):
            v["param"][:] = want
            v.swap_out_params("param", s, [1, 2], [3000, 1000])
            v.hand_back()
        s.swap_in([1, 2])
        got = np.concatenate([s.param_buffer(1), s.param_buffer(2)])
        assert np.array_equal(got, want.astype(np.float16))


def test_errors_name_the_sub_group_and_an_exception_discards_the_visit(tmp_path):
    with OptimizerSwapper(tmp_path, ring_bytes=1 << 20, pin_memory=False) as opt:
        opt.register(0, specs(100))
        with pytest.raises(swapper.BadStateError, match="already registered"):
            opt.register(0, specs(100))
        with pytest.raises(swapper.InvalidArgumentError, match="0 elements"):
            opt.register(1, [("x", 0)])
        with pytest.raises(swapper.NotFoundError, match="sub-group 9 is not registered"):
            opt.begin_step([9])
        with pytest.raises(swapper.InvalidArgumentError, match="does not fit"):
            opt.swap_out_gradients(0, "grad", [(90, np.ones(20, np.float32))])
        with pytest.raises(swapper.InvalidArgumentError):
            OptimizerSwapper(tmp_path / "x", ring_bytes=100)
        with pytest.raises(swapper.InvalidArgumentError, match="-1"):
            opt.begin_step([-1])
        for v in opt.step([0]):
            v["param"][:] = 5.0
            v.hand_back()
        # An exception inside the step: the visit is discarded, the step ended.
        with pytest.raises(RuntimeError, match="the caller's Adam"):
            for v in opt.step([0]):
                v["param"][:] = 7.0
                raise RuntimeError("the caller's Adam failed")
        for v in opt.step([0]):
            assert (v["param"] == 5.0).all()
            v.discard()
            with pytest.raises(swapper.BadStateError, match="has ended"):
                v.hand_back()
        opt.begin_step([0])
        v = opt.next_ready()
        with pytest.raises(swapper.BadStateError, match="still out"):
            opt.end_step()
        v.hand_back()
        opt.end_step()
    with pytest.raises(swapper.BadStateError, match="closed"):
        opt.begin_step([0])


def test_deepspeed_config_and_calls_run_a_zero3_style_step(tmp_path):
    """from_deepspeed_config, then DeepSpeed's calls in ZeRO-3's order: writeback
    (initialize_parameters), swap_out_gradients at param offsets during backward,
    swap_in(i, next) / step in place / swap_out(i), release_swap_buffers, purge."""
    drives = [tmp_path / "d0", tmp_path / "d1"]
    for d in drives:
        d.mkdir()
    cfg = {
        "aio": {"block_size": 65536, "queue_depth": 8},
        "zero_optimization": {
            "offload_optimizer": {
                "device": "nvme",
                "nvme_path": [str(d) for d in drives],
                "buffer_count": 8,
                "pipeline_read": True,
                "pipeline_write": True,
                "fast_init": False,
            }
        },
    }
    sizes = [5000, 3001, 7000]
    rng = np.random.default_rng(5)
    with OptimizerSwapper.from_deepspeed_config(cfg, rank=2, largest_numel=max(sizes)) as opt:
        # buffer_count tensors of the largest numel, each 4 KiB-aligned.
        assert opt.stats().ring_bytes == 8 * ((7000 * 4 + 4095) // 4096 * 4096)
        assert (drives[0] / "zero_stage_3" / "optimizer" / "rank2").is_dir()
        mem = []
        for i, n in enumerate(sizes):
            opt.register(i, [("fp32", n), ("exp_avg", n), ("exp_avg_sq", n), ("grad", n, "gradient")])
            p = rng.standard_normal(n).astype(np.float32)
            opt.writeback(i, {"fp32": p})
            mem.append([p.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)])
        for step in (1, 2):
            grads = []
            for i, n in enumerate(sizes):
                g = rng.standard_normal(n).astype(np.float32)
                grads.append(g)
                cut = n // 3  # two params' partitions, at their offsets in the sub-group
                opt.swap_out_gradients(i, "grad", [(0, g[:cut]), (cut, g[cut:])])
            for i in range(len(sizes)):
                v = opt.swap_in(i, next=i + 1 if i + 1 < len(sizes) else None)
                assert np.array_equal(v["grad"], grads[i])
                adam(step, v["fp32"], v["exp_avg"], v["exp_avg_sq"], v["grad"])
                adam(step, *mem[i], grads[i])
                opt.swap_out(i)
                # DeepSpeed calls it after every sub-group; the step ends after the last.
                opt.release_swap_buffers(i)
                assert opt._in_step == (i + 1 < len(sizes))
        for v in opt.step(range(len(sizes))):
            for k, name in enumerate(["fp32", "exp_avg", "exp_avg_sq"]):
                assert np.array_equal(v[name], mem[v.subgroup][k]), (v.subgroup, name)
            v.discard()
        # Out of ZeRO-3's order: refused, naming the sub-group that comes next.
        opt.swap_in(1)
        with pytest.raises(swapper.BadStateError, match="sub-group 1 is not swapped in|out of the step's order"):
            opt.swap_in(0)
        opt.release_swap_buffers()
        opt.purge()
        assert opt.stats().subgroups == 0
    with pytest.raises(swapper.InvalidArgumentError, match="device"):
        OptimizerSwapper.from_deepspeed_config(
            {"zero_optimization": {"offload_optimizer": {"device": "cpu", "nvme_path": str(tmp_path)}}}, largest_numel=1
        )
    with pytest.raises(swapper.InvalidArgumentError, match="ring's size is unknown"):
        OptimizerSwapper.from_deepspeed_config('{"zero_optimization": {"offload_optimizer": {"nvme_path": "/x"}}}')
