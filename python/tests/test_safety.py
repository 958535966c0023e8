"""Misuse that used to corrupt or crash silently: ids out of uint64 range, pool views
used after close(), paths with an embedded NUL, is_pinned on slices and on memory whose
mlock was refused."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import swapper
from swapper.deepspeed import aio_handle

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(code, preexec_fn=None):
    """Runs `code` in a fresh interpreter that imports this source tree's package."""
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=preexec_fn,
    )


@pytest.mark.parametrize("bad", [-1, 1 << 64, (1 << 64) + 7, -(1 << 64) + 7])
def test_ids_outside_uint64_are_refused_not_wrapped(sw, bad):
    sw.get_buffer(7, 100)
    with pytest.raises(swapper.InvalidArgumentError, match="2\\*\\*64"):
        sw.param_status(bad)  # (1 << 64) + 7 used to answer for param 7
    with pytest.raises(swapper.InvalidArgumentError):
        sw.get_buffer(bad, 100)
    with pytest.raises(swapper.InvalidArgumentError):
        sw.swap_out([bad])
    with pytest.raises(swapper.InvalidArgumentError):
        sw.release([7, bad])
    with pytest.raises(swapper.InvalidArgumentError):
        sw.param_buffer(bad)
    assert sw.stats().params == 1  # nothing was created or touched
    assert sw.param_status(7) is swapper.ParamStatus.AVAILABLE


def test_non_integer_ids_and_sizes_are_refused(sw):
    with pytest.raises(TypeError):
        sw.get_buffer(1.5, 10)  # used to be truncated to param 1
    with pytest.raises(swapper.InvalidArgumentError):
        sw.get_buffer(1, -5)
    with pytest.raises(swapper.InvalidArgumentError):
        sw.reserve_partitioned_swap_space([1 << 64])
    sw.get_buffer(np.uint64(3), np.int64(10))  # numpy integers are integers


def test_nul_in_paths_is_refused(folder):
    with pytest.raises(swapper.InvalidArgumentError, match="NUL"):
        swapper.Swapper(os.path.join(folder, "a\0b"), buffer_count=1, buffer_numel=4096)
    assert not os.path.exists(os.path.join(folder, "a"))  # used to swap into folder/a
    with swapper.IoHandle() as io:
        with pytest.raises(swapper.InvalidArgumentError, match="NUL"):
            io.pwrite(np.zeros(4096, np.uint8), os.path.join(folder, "f\0.swp"))
        with pytest.raises(swapper.InvalidArgumentError):
            io.pread(np.zeros(4096, np.uint8), os.path.join(folder, "f\0.swp").encode())
    assert not os.path.exists(os.path.join(folder, "f"))
    with pytest.raises(swapper.InvalidArgumentError, match="NUL"):
        swapper.Swapper.from_deepspeed_config(
            '{"zero_optimization": {"offload_param": {"nvme_path": "' + folder + '\0x"}}}'
        )


def test_views_after_close_do_not_crash(folder):
    # In a child: the old code died of SIGSEGV here.
    child = run_child(
        f"""
        import gc, numpy as np, swapper
        s = swapper.Swapper({folder!r}, buffer_count=3, buffer_numel=1 << 20)
        a = s.get_buffer(1, 1 << 20)
        a[:] = 2.0
        b = s.reserve_available_buffers()
        b[0][:5] = 3.0
        s.swap_out([1])
        c = s.param_buffer(1)[10:20]
        s.close()
        a[:] = 4.0            # writes go nowhere, but do not crash
        print(float(a[-1]), float(b[0][0]), float(b[1][-1]), float(c[0]))
        # The folder is unlocked: a new swapper takes it while the old views live.
        t = swapper.Swapper({folder!r}, buffer_count=1, buffer_numel=4096)
        t.close()
        j = swapper.Swapper.from_deepspeed_config(
            {{"zero_optimization": {{"offload_param": {{"nvme_path": {folder!r}, "buffer_count": 1, "buffer_size": 4096}}}}}}
        )
        d = j.get_buffer(5, 4096)
        j.close()
        d[:] = 1.0
        print(float(d.sum()))
        """
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    assert child.stdout.split() == ["4.0", "3.0", "0.0", "4.0", "4096.0"]


def test_pool_memory_is_unmapped_when_the_last_view_goes(folder):
    def mapped(address):
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= address < hi:
                    return True
        return False

    import gc

    s = swapper.Swapper(folder, buffer_count=2, buffer_numel=1 << 20)
    v = s.get_buffer(1, 1000)
    address = v.__array_interface__["data"][0]
    s.close()
    assert mapped(address) and swapper.allocation_state(v) == "unlocked"
    del v
    gc.collect()
    assert not mapped(address)


def test_is_pinned_on_slices_of_locked_buffers():
    torch = pytest.importorskip("torch")
    with aio_handle() as h:
        t = h.new_cpu_locked_tensor(1 << 16, torch.empty(0, dtype=torch.bfloat16))
        assert swapper.allocation_state(t) == "locked"  # root, or within RLIMIT_MEMLOCK
        middle = t.narrow(0, 1000, 5000)  # what fast_init hands to is_pinned
        assert h.is_pinned(middle) and h.is_pinned(t[-1:]) and swapper.is_locked(middle)
        assert not h.is_pinned(torch.zeros(100))
        h.free_cpu_locked_tensor(t)


def test_allocation_state_on_ranges():
    import ctypes

    a = swapper.alloc_aligned(10_000, np.uint8, lock=False)
    assert swapper.allocation_state(a[5000:6000]) == "unlocked"
    assert not swapper.is_locked(a[5000:6000])
    base = a.__array_interface__["data"][0]
    straddling = (ctypes.c_char * 200).from_address(base + 9_900)  # runs past the end
    assert swapper.allocation_state(memoryview(straddling)) is None
    assert swapper.allocation_state(np.zeros(100)) is None


def _no_memlock():
    """In the child before exec: no CAP_IPC_LOCK (out of the bounding set, so the exec'd
    interpreter does not get it back) and RLIMIT_MEMLOCK of one page."""
    import ctypes
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_IPC_LOCK = 24, 14
    libc.prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0)  # EPERM as non-root: no cap anyway
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (4096, 4096))


def test_unlocked_allocations_with_memlock_refused(folder):
    child = run_child(
        f"""
        import os, numpy as np, swapper
        from swapper.deepspeed import aio_handle
        caps = [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1]
        assert not int(caps, 16) & (1 << 14), "CAP_IPC_LOCK is still effective"
        h = aio_handle()
        t = h.new_cpu_locked_tensor(1 << 20, np.zeros(0, np.float32))  # 4 MiB > the limit
        print(swapper.allocation_state(t), swapper.is_locked(t), h.is_pinned(t[100:200]))
        t[:] = np.arange(t.size)
        path = os.path.join({folder!r}, "x.swp")
        h.sync_pwrite(t, path)
        u = h.new_cpu_locked_tensor(1 << 20, np.zeros(0, np.float32))
        h.sync_pread(u, path)
        print(bool((t == u).all()))
        s = swapper.Swapper({folder!r}, buffer_count=2, buffer_numel=1 << 20, pin_memory=True)
        print("pinned false" in s.dump(), swapper.allocation_state(s.get_buffer(1, 10)))
        s.close()
        h.close()
        """,
        preexec_fn=_no_memlock,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["unlocked", "False", "True", "True", "True", "unlocked"]
