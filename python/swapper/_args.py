"""Checks and conversions of caller arguments before they reach ctypes: ctypes wraps an
out-of-range integer onto another value and cuts a path at a NUL byte, so both are
refused here with InvalidArgumentError."""

import operator
import os
from ctypes import c_uint64

import numpy as np

from .errors import InvalidArgumentError


def _uint(value, what, bits=64):
    """`value` as a Python int in [0, 2**bits): ctypes would silently wrap a negative or
    too large value onto another one (-1 becomes 2**64 - 1, 2**64 becomes 0). Raises
    InvalidArgumentError (a ValueError) out of range, TypeError for a non-integer (a
    float is not truncated)."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}") from None
    if not 0 <= v < 1 << bits:
        raise InvalidArgumentError(f"{what} must be in [0, 2**{bits}), got {v}")
    return v


def _ids(ids, what="param id"):
    """A (uint64 array, count) for one id or an iterable of ids, each checked by _uint."""
    if isinstance(ids, (int, np.integer)):
        ids = [ids]
    ids = [_uint(i, what) for i in ids]
    return (c_uint64 * len(ids))(*ids), len(ids)


def _path(path, what="path"):
    """`path` (str, bytes or os.PathLike) as bytes for C. An embedded NUL byte would cut
    the path short in C, so it is refused with InvalidArgumentError."""
    encoded = os.fsencode(path)
    if b"\0" in encoded:
        raise InvalidArgumentError(f"{what} contains a NUL byte: {path!r}")
    return encoded
