"""Swapper.page_locked_bytes: what a configuration would page-lock, without creating
anything, and the same bytes a pinned swapper then locks (the kernel's VmLck, read in a
fresh interpreter that locks nothing else)."""

import os
import subprocess
import sys
import textwrap

import pytest

import swapper

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bytes_of_a_configuration():
    # 3 buffers of 2**16 fp32 elements: 768 KiB, whole pages.
    assert swapper.Swapper.page_locked_bytes("fp32", 3, 1 << 16, pin_memory=True) == 3 << 18
    assert swapper.Swapper.page_locked_bytes("fp32", 3, 1 << 16, pin_memory=False) == 0
    # An odd size is rounded up to the I/O alignment per buffer, then to pages, never to
    # a power of two.
    odd = swapper.Swapper.page_locked_bytes("fp16", 5, 100_000_000, pin_memory=True)
    assert odd % 4096 == 0 and 1_000_000_000 <= odd < 1_000_000_000 + 5 * 4096
    with pytest.raises(swapper.InvalidArgumentError):
        swapper.Swapper.page_locked_bytes("fp16", 0, 10, pin_memory=True)
    with pytest.raises(swapper.InvalidArgumentError):
        swapper.Swapper.page_locked_bytes("fp16", -1, 10, pin_memory=True)


def test_create_locks_what_it_said(tmp_path):
    code = f"""
        import swapper

        def vm_lck():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmLck:"))

        said = swapper.Swapper.page_locked_bytes("bf16", 3, 333_333, pin_memory=True)
        before = vm_lck()
        with swapper.Swapper({str(tmp_path)!r}, dtype="bf16", buffer_count=3, buffer_numel=333_333, pin_memory=True):
            print(said, vm_lck() - before)
        """
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    said, locked = map(int, out.stdout.split())
    assert said == locked and said >= 3 * 333_333 * 2, out.stdout
