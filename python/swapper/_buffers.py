"""Zero-copy access to caller memory (buffer protocol, torch-like tensors) and numpy
views over library memory."""

import ctypes
import weakref

import numpy as np


def address_of(obj, writable):
    """(address, nbytes, keepalive) of `obj`'s memory, without copying.

    Accepts anything with the buffer protocol (numpy arrays, bytearray, memoryview,
    bytes for reads-from) and objects with `data_ptr()` and `nbytes` (torch tensors,
    which must be contiguous CPU tensors). `writable` requires writable memory.
    """
    if hasattr(obj, "data_ptr") and hasattr(obj, "nbytes") and not isinstance(obj, np.ndarray):
        # torch's is_cpu is a plain flag; its device.type builds a string (this runs once
        # per I/O operation of the DeepSpeed drop-in, so it counts for small ones).
        is_cpu = getattr(obj, "is_cpu", None)
        if is_cpu is None:
            device = getattr(obj, "device", None)
            is_cpu = device is None or getattr(device, "type", "cpu") == "cpu"
        if not is_cpu:
            raise TypeError(f"only CPU memory can be read or written, got a tensor on {obj.device}")
        is_contiguous = getattr(obj, "is_contiguous", None)
        if is_contiguous is not None and not is_contiguous():
            raise ValueError("the tensor must be contiguous")
        return int(obj.data_ptr()), int(obj.nbytes), obj
    if isinstance(obj, np.ndarray):
        arr = obj
    else:
        try:
            view = memoryview(obj)
        except TypeError:
            raise TypeError(
                f"{type(obj).__name__} is not a buffer: pass a numpy array, bytearray, "
                "memoryview or an object with data_ptr() and nbytes"
            ) from None
        if not view.c_contiguous:
            raise ValueError("the buffer must be C-contiguous")
        arr = np.frombuffer(view.cast("B"), dtype=np.uint8)
    if not arr.flags.c_contiguous:
        raise ValueError("the array must be C-contiguous")
    if writable and not arr.flags.writeable:
        raise ValueError("the buffer is read-only; a writable one is needed to read into")
    return int(arr.__array_interface__["data"][0]), int(arr.nbytes), (obj, arr)


def view(address, count, dtype, owner=None, release=None, release_at_exit=True):
    """A writable numpy array of `count` elements of `dtype` over library memory at
    `address`. `owner` is kept alive by the array; `release(address)` runs when the
    last view of the memory is gone (and at interpreter exit only if
    `release_at_exit`)."""
    dtype = np.dtype(dtype)
    mem = (ctypes.c_char * max(count * dtype.itemsize, 1)).from_address(address)
    mem._owner = owner
    if release is not None:
        weakref.finalize(mem, release, address).atexit = release_at_exit
    return np.frombuffer(mem, dtype=dtype, count=count)
