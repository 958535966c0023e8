"""Swapper: pool buffers as numpy views, swaps, errors, partitioned swap-out, stats."""

import glob
import json
import os

import numpy as np
import pytest

import swapper
from swapper import ParamStatus


def test_defaults_and_dtypes(folder):
    for dtype, npdt, size in (("fp16", np.float16, 2), ("fp32", np.float32, 4), ("bf16", None, 2)):
        with swapper.Swapper(folder, dtype=dtype, buffer_count=1, buffer_numel=4096) as s:
            assert s.element_size == size
            v = s.get_buffer(1, 10)
            assert v.shape == (10,)
            if npdt is not None:
                assert v.dtype == npdt
            else:
                assert v.dtype == swapper.numpy_dtype("bf16")
                assert v.dtype.itemsize == 2
            assert v.flags.writeable
            assert v.__array_interface__["data"][0] % 4096 == 0


def test_pool_view_round_trip(sw):
    expected = np.arange(5000, dtype=np.float16) % 1000
    buf = sw.get_buffer(7, 5000)
    assert sw.param_status(7) is ParamStatus.AVAILABLE
    buf[:] = expected  # write through the view into the library's memory
    sw.swap_out([7])
    buf[:] = 0  # the file has the data; the buffer is ours to spoil
    sw.release([7])
    assert sw.param_status(7) == ParamStatus.NOT_AVAILABLE
    assert sw.available_buffers() == 4
    sw.swap_in([7])
    back = sw.param_buffer(7)
    assert back.dtype == np.float16 and back.shape == (5000,)
    assert np.array_equal(back, expected)


def test_async_swaps_many_params(sw):
    data = {pid: np.full(3000 + pid, pid, np.float16) for pid in range(4)}
    for pid, arr in data.items():
        sw.get_buffer(pid, arr.size)[:] = arr
    sw.swap_out_and_release(list(data), async_op=True, force_buffer_release=True)
    sw.wait_writes()
    assert all(sw.param_status(p) == ParamStatus.NOT_AVAILABLE for p in data)
    sw.swap_in([0, 1], async_op=True)
    assert sw.param_status(0) in (ParamStatus.INFLIGHT, ParamStatus.AVAILABLE)
    sw.wait_reads()
    for p in (0, 1):
        assert np.array_equal(sw.param_buffer(p), data[p])
    st = sw.stats()
    assert st.available_params == 2 and st.free_buffers == 2 and st.total_buffers == 4
    assert st.bytes_written >= sum(a.nbytes for a in data.values())
    assert st.as_dict()["params"] == 4


def test_wait_params_waits_for_the_named_params(sw):
    for pid in (1, 2, 3):
        sw.get_buffer(pid, 3000)[:] = pid
    sw.swap_out_and_release([1, 2, 3])
    sw.swap_in([1, 2, 3], async_op=True)
    sw.wait_params([2])
    assert sw.param_status(2) is ParamStatus.AVAILABLE
    assert (sw.param_buffer(2) == 2).all()
    with pytest.raises(swapper.NotFoundError):
        sw.wait_params([77])
    sw.wait_params([1, 3])
    assert sw.stats().pending_reads == 0


def test_short_caller_buffer_is_refused(sw):
    sw.get_buffer(5, 1000)[:] = 1.0
    sw.swap_out_and_release([5])
    with pytest.raises(swapper.NoBufferError):
        sw.swap_in([5], dest_buffers=[np.zeros(999, dtype=np.float16)])
    assert sw.param_status(5) is ParamStatus.NOT_AVAILABLE


def test_swap_in_to_caller_buffers(sw):
    sw.get_buffer(3, 4096)[:] = 2.5
    sw.swap_out_and_release(3)
    dest = np.zeros(4096, np.float16)
    sw.swap_in([3], dest_buffers=[dest])
    assert np.all(dest == 2.5)
    assert np.shares_memory(sw.param_buffer(3), dest)
    assert sw.available_buffers() == 4  # no pool buffer used
    sw.release([3])
    out = bytearray(4096 * 2 + 10)
    sw.swap_into_buffer(3, out)
    assert np.all(np.frombuffer(out, np.float16, 4096) == 2.5)
    assert sw.param_status(3) == ParamStatus.NOT_AVAILABLE
    with pytest.raises(swapper.NoBufferError):
        sw.swap_into_buffer(3, np.zeros(100, np.float16))
    with pytest.raises(ValueError):
        sw.swap_in([3], dest_buffers=[])


def test_errors_from_real_misuse(sw):
    sw.get_buffer(1, 100)
    with pytest.raises(swapper.BadStateError):
        sw.get_buffer(1, 100)  # already has a buffer
    with pytest.raises(swapper.NoBufferError):
        sw.get_buffer(2, (1 << 20) + 1)  # larger than a buffer
    for pid in (2, 3, 4):
        sw.get_buffer(pid, 10)
    with pytest.raises(swapper.NoBufferError):
        sw.get_buffer(5, 10)  # pool exhausted
    with pytest.raises(swapper.InvalidArgumentError):
        sw.get_buffer(6, 0)
    with pytest.raises(swapper.InvalidArgumentError):
        sw.swap_out([1, 1])  # duplicate id
    with pytest.raises(swapper.InvalidArgumentError):
        sw.swap_out_and_release([1], async_op=True)  # needs force_buffer_release
    with pytest.raises(swapper.NotFoundError):
        sw.param_status(999)
    with pytest.raises(swapper.NotFoundError):
        sw.swap_in([999])
    with pytest.raises(swapper.BadStateError):
        sw.swap_in([1])  # AVAILABLE, not on disk only
    sw.release([1, 2, 3, 4])
    sw.release([1])  # nothing to release: a no-op, as in DeepSpeed
    sw.release([999])  # unknown: a no-op too
    with pytest.raises(swapper.BadStateError):
        sw.param_buffer(1)


def test_corrupt_swap_file_detected(folder):
    with swapper.Swapper(folder, buffer_count=2, buffer_numel=1 << 16, verify_checksums=True) as s:
        s.get_buffer(9, 1 << 15)[:] = 1.0
        s.swap_out_and_release([9])
        ((drive, path, offset, length),) = s.param_extents(9)
        assert drive == 0 and length == 1 << 16
        assert glob.glob(os.path.join(folder, "zero_stage_3", "*", "rank0", "*")) == [path]
        with open(path, "r+b") as f:
            f.seek(offset + 100)
            f.write(b"\x55" * 8)
        with pytest.raises(swapper.CorruptDataError):
            s.swap_in([9])
        assert s.param_status(9) == ParamStatus.NOT_AVAILABLE
        assert s.available_buffers() == 2


def test_reserved_buffers(sw):
    bufs = sw.reserve_available_buffers()
    assert len(bufs) == 4 and sw.available_buffers() == 0
    assert all(b.shape == (1 << 20,) and b.dtype == np.float16 for b in bufs)
    bufs[0][:] = 3.0
    assert sw.stats().reserved_buffers == 4
    with pytest.raises(swapper.NoBufferError):
        sw.get_buffer(1, 10)
    sw.release_reserved_buffers()
    assert sw.available_buffers() == 4


def test_sizes(sw):
    assert sw.aligned_numel(1) == 2048  # fp16: 4096 bytes
    assert sw.aligned_numel(2048) == 2048
    with pytest.deprecated_call():
        assert sw.io_aligned_numel(1) == 2048  # the old name, until the next release
    assert not sw.swappable(1000)
    assert sw.swappable(1 << 20)


def bf16_bits(x):
    """Round-to-nearest-even float32 -> bfloat16 bits (numpy has no bfloat16)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_partitioned_swap_out_matches_numpy(folder, dtype):
    rng = np.random.default_rng(5)
    sizes = [5000, 7001]
    srcs = [(rng.standard_normal(n) * 1000).astype(np.float32) for n in sizes]
    srcs[0][:4] = [np.inf, -np.inf, 65519.0, 1e-8]
    with swapper.Swapper(folder, dtype=dtype, buffer_count=2, buffer_numel=1 << 16) as s:
        for pid, n in enumerate(sizes):
            s.get_buffer(pid, n)[:] = 0
        s.swap_out_and_release([0, 1])
        with pytest.raises(swapper.BadStateError):
            s.swap_out_partitioned([0, 1], srcs)  # no staging space yet
        s.reserve_partitioned_swap_space(sizes)
        with pytest.raises(TypeError):
            s.swap_out_partitioned([0], [srcs[0].astype(np.float64)])
        s.swap_out_partitioned([0, 1], srcs)
        for pid, src in enumerate(srcs):
            s.swap_in([pid])
            got = s.param_buffer(pid)
            if dtype == "fp16":
                assert np.array_equal(got, src.astype(np.float16))
            elif dtype == "bf16":
                assert np.array_equal(got.view(np.uint16), bf16_bits(src))
            else:
                assert np.array_equal(got, src)
            s.release([pid])


def test_bf16_nan_stays_nan(folder):
    with swapper.Swapper(folder, dtype="bf16", buffer_count=1, buffer_numel=4096) as s:
        s.get_buffer(0, 4)
        s.swap_out_and_release([0])
        s.reserve_partitioned_swap_space([4])
        s.swap_out_partitioned([0], [np.array([np.nan, 1.0, -0.0, 3.0], np.float32)])
        out = np.zeros(4, np.uint16)
        s.swap_into_buffer(0, out)
        assert (out[0] & 0x7F80) == 0x7F80 and (out[0] & 0x7F) != 0
        assert list(out[1:]) == [0x3F80, 0x8000, 0x4040]


def test_from_deepspeed_config(folder, tmp_path):
    cfg = {
        "aio": {"block_size": 1 << 16, "queue_depth": 4, "intra_op_parallelism": 2},
        "zero_optimization": {"offload_param": {"nvme_path": folder, "buffer_count": 3, "buffer_size": 1 << 16}},
    }
    with swapper.Swapper.from_deepspeed_config(cfg, rank=1, dtype="fp32") as s:
        st = s.stats()
        assert st.total_buffers == 3 and s.element_size == 4
        assert "rank1" in s.dump()
        assert len(s.reserve_available_buffers()[0]) == 1 << 16
        s.release_reserved_buffers()
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    with swapper.Swapper.from_deepspeed_config(str(path)) as s:
        assert s.stats().total_buffers == 3
    with pytest.raises(swapper.InvalidArgumentError):
        swapper.Swapper.from_deepspeed_config("{not json")
    with pytest.raises(swapper.InvalidArgumentError):
        swapper.Swapper.from_deepspeed_config({"aio": {}})  # no nvme_path


def test_io_keywords_and_unknown(folder):
    with swapper.Swapper(folder, buffer_count=1, buffer_numel=4096, block_size=1 << 16, thread_count=2, backend="blocking") as s:
        d = s.dump()
        assert "blocking" in d and "65536" in d
    with pytest.raises(TypeError, match="bogus"):
        swapper.Swapper(folder, bogus=1)
    with pytest.raises(ValueError):
        swapper.Swapper(folder, dtype="int8")


def test_context_manager_and_close(folder):
    s = swapper.Swapper(folder, buffer_count=1, buffer_numel=4096)
    with s:
        assert swapper.live_handles()[1] >= 1
    assert s.closed and "closed" in repr(s)
    s.close()
    with pytest.raises(swapper.BadStateError):
        s.stats()
    # the folder lock is gone: a new swapper can take it
    with swapper.Swapper(folder, buffer_count=1, buffer_numel=4096):
        pass


def test_dump(sw):
    sw.get_buffer(42, 10)
    text = sw.dump()
    assert "42" in text and "Fp16" in text or "fp16" in text.lower()


def test_reserved_buffers_have_deepspeeds_aligned_length(folder):
    # DeepSpeed hands out whole buffers, io_aligned_numel(buffer_size) long, and ZeRO
    # asserts on that length.
    with swapper.Swapper(folder, buffer_count=2, buffer_numel=1000) as s:
        bufs = s.reserve_available_buffers()
        assert [len(b) for b in bufs] == [2048, 2048]
        s.release_reserved_buffers()


def test_a_wait_for_writes_keeps_the_destination_of_a_read_in_flight(folder):
    # wait_writes let go of every caller destination whose param was not AVAILABLE,
    # including an INFLIGHT one still being read into: its view then failed.
    with swapper.Swapper(folder, buffer_count=2, buffer_numel=4096) as s:
        s.get_buffer(1, 100)[:] = 2.5
        s.swap_out_and_release([1])
        dest = np.zeros(100, np.float16)
        s.swap_in([1], async_op=True, dest_buffers=[dest])
        s.get_buffer(3, 10)
        s.swap_out([3], async_op=True)
        s.wait_writes()
        s.wait_reads()
        assert (s.param_buffer(1) == 2.5).all()


def test_several_drives(tmp_path):
    drives = [str(tmp_path / f"drive{k}") for k in range(3)]
    for d in drives:
        os.mkdir(d)
    with swapper.Swapper(drives, buffer_count=3, buffer_numel=3 << 20, verify_checksums=True) as s:
        rng = np.random.default_rng(7)
        data = {}
        for pid, n in [(1, 3 << 20), (2, 2048), (3, 4096)]:
            data[pid] = rng.standard_normal(n).astype(np.float16)
            s.get_buffer(pid, n)[:] = data[pid]
        s.swap_out_and_release([1, 2, 3])
        ext = s.param_extents(1)
        assert [e[0] for e in ext] == [0, 1, 2], "a 6 MiB param is split over the three drives"
        assert all(e[1].startswith(drives[e[0]]) for e in ext)
        assert sum(e[3] for e in ext) == 6 << 20
        s.swap_in([1, 2, 3])
        for pid, want in data.items():
            assert np.array_equal(s.param_buffer(pid), want)
    with pytest.raises(swapper.InvalidArgumentError):
        swapper.Swapper([], buffer_count=1, buffer_numel=16)
    with pytest.raises(swapper.InvalidArgumentError):
        swapper.Swapper([drives[0], drives[0]], buffer_count=1, buffer_numel=16)
    cfg = {"zero_optimization": {"offload_param": {"nvme_path": drives[:2], "buffer_count": 1, "buffer_size": 4096}}}
    with swapper.Swapper.from_deepspeed_config(cfg) as s:
        assert s.dump().startswith("swapper " + os.path.realpath(drives[0]))
        with pytest.raises(swapper.BusyError):
            swapper.Swapper(drives[1], buffer_count=1, buffer_numel=16)
