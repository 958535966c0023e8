"""The C API's enums as Python IntEnums, and the dtype names the constructors accept.
tests/test_header_layout.py checks every value against include/swapper.h."""

import enum

import numpy as np


class Backend(enum.IntEnum):
    AUTO = 0
    IO_URING = 1
    BLOCKING = 2


class DirectIo(enum.IntEnum):
    AUTO = 0
    ON = 1
    OFF = 2


class Dtype(enum.IntEnum):
    FP32 = 0
    FP16 = 1
    BF16 = 2


class ParamStatus(enum.IntEnum):
    AVAILABLE = 1
    NOT_AVAILABLE = 2
    INFLIGHT = 3


class TensorKind(enum.IntEnum):
    STATE = 0
    GRADIENT = 1


class LogLevel(enum.IntEnum):
    ERROR = 1
    WARN = 2
    INFO = 3
    DEBUG = 4
    TRACE = 5


_DTYPE_NAMES = {
    "fp32": Dtype.FP32,
    "float32": Dtype.FP32,
    "float": Dtype.FP32,
    "fp16": Dtype.FP16,
    "float16": Dtype.FP16,
    "half": Dtype.FP16,
    "bf16": Dtype.BF16,
    "bfloat16": Dtype.BF16,
}


def _enum(cls, value, what):
    if isinstance(value, str):
        try:
            return cls[value.upper().replace("-", "_")]
        except KeyError:
            pass
    else:
        try:
            return cls(value)
        except ValueError:
            pass
    names = ", ".join(repr(m.name.lower()) for m in cls)
    raise ValueError(f"{what} must be one of {names}, got {value!r}")


def _dtype(value):
    if isinstance(value, Dtype):
        return value
    if isinstance(value, str) and value.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[value.lower()]
    if isinstance(value, int):
        return _enum(Dtype, value, "dtype")
    raise ValueError(f"dtype must be 'fp16', 'bf16' or 'fp32', got {value!r}")


def numpy_dtype(dtype):
    """The numpy dtype of a swapper dtype: float16, float32, and for bf16 ml_dtypes'
    bfloat16 when importable, else uint16 (the raw bits)."""
    dtype = _dtype(dtype)
    if dtype == Dtype.FP32:
        return np.dtype(np.float32)
    if dtype == Dtype.FP16:
        return np.dtype(np.float16)
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return np.dtype(np.uint16)
