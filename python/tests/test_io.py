"""IoHandle: round trips with every kind of buffer, async waits, settings, lifetime."""

import os

import numpy as np
import pytest

import swapper


def rand_bytes(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def test_defaults_match_c():
    with swapper.IoHandle() as io:
        cfg = io.config
        assert (cfg.block_size, cfg.queue_depth, cfg.thread_count) == (1 << 20, 8, 1)
        assert cfg.single_submit is False and cfg.overlap_events is True
        assert cfg.backend in (swapper.Backend.IO_URING, swapper.Backend.BLOCKING)
        assert cfg.direct_io == swapper.DirectIo.AUTO
        assert io.block_size == 1 << 20 and io.queue_depth == 8 and io.thread_count == 1
        assert io.pending == 0


@pytest.mark.parametrize("backend", ["auto", "blocking"])
def test_numpy_round_trip_odd_sizes(folder, backend):
    path = os.path.join(folder, "a.bin")
    src = rand_bytes(3 * (1 << 20) + 123)
    with swapper.IoHandle(block_size=1 << 16, queue_depth=4, thread_count=3, backend=backend) as io:
        assert io.thread_count == 3
        io.pwrite(src, path)
        dst = np.zeros_like(src)
        io.pread(dst, path)
        assert np.array_equal(src, dst)
        # misaligned buffer, offset and length
        part = np.zeros(src.size + 1, np.uint8)[1 : src.size - 776]
        io.pread(part, path, file_offset=777)
        assert np.array_equal(part, src[777:])


def test_async_and_wait_counts(folder):
    path = os.path.join(folder, "b.bin")
    src = rand_bytes(1 << 20, 1).view(np.float32)
    with swapper.IoHandle() as io:
        n = src.size // 4
        for i in range(4):
            io.pwrite(src[i * n : (i + 1) * n], path, file_offset=i * n * 4, async_op=True)
        assert io.wait() == 4
        assert io.wait() == 0
        dst = np.empty_like(src)
        io.pread(dst, path, async_op=True)
        assert io.wait() == 1
        assert np.array_equal(src.view(np.uint8), dst.view(np.uint8))


def test_other_buffer_kinds(folder):
    path = os.path.join(folder, "c.bin")
    data = bytes(range(256)) * 20
    with swapper.IoHandle() as io:
        io.pwrite(data, path)  # read-only buffers can be written from
        ba = bytearray(len(data))
        io.pread(ba, path)
        assert bytes(ba) == data
        mv = memoryview(bytearray(len(data)))
        io.pread(mv, path)
        assert mv.tobytes() == data
        two_d = np.zeros((20, 256), np.uint8)
        io.pread(two_d, path)
        assert two_d.tobytes() == data
        short = bytearray(10)
        io.pread(short, path, file_offset=256, nbytes=5)
        assert bytes(short[:5]) == data[256:261] and bytes(short[5:]) == bytes(5)


def test_buffer_requirements(folder):
    path = os.path.join(folder, "d.bin")
    with swapper.IoHandle() as io:
        io.pwrite(bytes(64), path)
        with pytest.raises(ValueError, match="read-only"):
            io.pread(b"\0" * 64, path)
        with pytest.raises(ValueError, match="contiguous"):
            io.pread(np.zeros((8, 16), np.uint8)[:, ::2], path)
        with pytest.raises(TypeError):
            io.pread(12345, path)
        with pytest.raises(swapper.NoBufferError):
            io.pwrite(bytes(10), path, nbytes=11)


def test_async_failure_reported_by_wait(folder):
    with swapper.IoHandle() as io:
        buf = bytearray(4096)
        try:
            io.pread(buf, os.path.join(folder, "missing"), async_op=True)
        except swapper.NotFoundError:
            return  # reported at submission: fine too
        with pytest.raises(swapper.NotFoundError, match="missing"):
            io.wait()


def test_tensor_like_object(folder):
    """Objects with data_ptr() and nbytes (torch tensors) work without torch."""

    class FakeTensor:
        def __init__(self, arr):
            self.arr = arr
            self.nbytes = arr.nbytes

        def data_ptr(self):
            return self.arr.__array_interface__["data"][0]

    path = os.path.join(folder, "e.bin")
    src = rand_bytes(10000, 2)
    dst = np.zeros_like(src)
    with swapper.IoHandle() as io:
        io.pwrite(FakeTensor(src), path)
        io.pread(FakeTensor(dst), path)
    assert np.array_equal(src, dst)


def test_context_manager_and_close(folder):
    io = swapper.IoHandle()
    with io:
        assert not io.closed
    assert io.closed
    io.close()  # idempotent
    with pytest.raises(swapper.BadStateError):
        io.pread(bytearray(1), os.path.join(folder, "x"))
    assert "closed" in repr(io)


def test_bad_settings():
    with pytest.raises(ValueError, match="backend"):
        swapper.IoHandle(backend="libaio")
    with pytest.raises(swapper.InvalidArgumentError):
        swapper.IoHandle(queue_depth=0)
    with pytest.raises(swapper.InvalidArgumentError):
        swapper.IoHandle(thread_count=1000)


def test_aligned_allocation():
    a = swapper.alloc_aligned(1000, np.float32, lock=True)
    assert a.shape == (1000,) and a.dtype == np.float32 and not a.any()
    assert a.__array_interface__["data"][0] % 4096 == 0
    assert isinstance(swapper.is_locked(a), bool)
    assert not swapper.is_locked(np.zeros(10))
    b = swapper.alloc_aligned(10)
    assert not swapper.is_locked(b)
