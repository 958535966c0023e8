"""Page-aligned (optionally page-locked) memory from libswapper, and where a buffer's
bytes lie (locked, unlocked, not libswapper's)."""

from ctypes import byref, c_void_p

import numpy as np

from . import _buffers
from ._args import _uint
from ._lib import lib
from .errors import check


def _free_aligned(address):
    lib().swapper_free_aligned(c_void_p(address))


def _release_retained(address):
    lib().swapper_memory_release(c_void_p(address))


def alloc_aligned(count, dtype=np.uint8, lock=False):
    """A zero-filled numpy array of `count` elements of `dtype` in 4096-aligned memory
    from swapper_alloc_aligned (page-locked when `lock` and the memlock limit allow it;
    see is_locked). The memory is freed when the last view of it is gone."""
    dtype = np.dtype(dtype)
    out = c_void_p()
    nbytes = _uint(_uint(count, "count") * dtype.itemsize, "count * itemsize")
    check(lib().swapper_alloc_aligned(nbytes, bool(lock), byref(out)))
    return _buffers.view(out.value, count, dtype, release=_free_aligned)


def is_locked(buffer):
    """Whether all of `buffer` (an array or tensor, or a slice of one) lies inside one
    page-locked libswapper allocation (alloc_aligned / swapper_alloc_aligned, a swapper's
    pool with pin_memory). False when the memory is not libswapper's, or when it is but
    mlock was refused (no CAP_IPC_LOCK, RLIMIT_MEMLOCK too low): see allocation_state."""
    return allocation_state(buffer) == "locked"


def allocation_state(buffer):
    """Where all of `buffer`'s bytes lie: "locked" inside a page-locked libswapper
    allocation, "unlocked" inside one whose mlock was refused (libswapper's I/O works on
    it all the same, only the kernel may page it out), None if not entirely inside one
    libswapper allocation. Any slice of an allocation counts, not only its start."""
    address, nbytes, _ = _buffers.address_of(buffer, writable=False)
    state = lib().swapper_allocation_locked(c_void_p(address), nbytes)
    return {1: "locked", 0: "unlocked"}.get(state)
