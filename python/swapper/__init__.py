"""Python bindings for libswapper (ctypes, no compile step).

    import swapper
    with swapper.Swapper("/nvme", buffer_count=4, buffer_numel=1 << 20) as s:
        buf = s.get_buffer(7, 1000)      # numpy float16 view of the pool buffer
        buf[:] = 1.5
        s.swap_out_and_release([7])
        s.swap_in([7])
        assert (s.param_buffer(7) == 1.5).all()

The library is found through $SWAPPER_LIBRARY, next to this package, or in the crate's
target/release (then target/debug) folder. swapper.deepspeed.aio_handle is a drop-in
for DeepSpeed's async I/O handle.

One module per concept: enums (Backend, DirectIo, Dtype, ParamStatus, LogLevel),
library (version, alignment, live_handles), memory (alloc_aligned, is_locked,
allocation_state), log (set_log_callback), io_handle (IoHandle, IoConfig), stats (Stats),
param_swapper (Swapper), optimizer (OptimizerSwapper, its Visit and OptimizerStats), errors (Status and the exceptions), deepspeed (aio_handle).
swapper.core re-exports the first seven for code written against it.
"""

from ._lib import LibraryNotFoundError, load_library
from .enums import Backend, DirectIo, Dtype, LogLevel, ParamStatus, TensorKind, numpy_dtype
from .io_handle import IoConfig, IoHandle
from .library import alignment, live_handles, version
from .log import set_log_callback
from .memory import alloc_aligned, allocation_state, is_locked
from .optimizer import OptimizerStats, OptimizerSwapper, Visit
from .param_swapper import Swapper
from .stats import Stats
from .errors import (
    BadStateError,
    BusyError,
    CorruptDataError,
    InvalidArgumentError,
    NoBufferError,
    NotFoundError,
    NullPointerError,
    OutOfMemoryError,
    PanicError,
    Status,
    SwapperError,
    SwapperIOError,
    UnsupportedError,
)


def __getattr__(name):
    # `swapper.__version__` is the loaded library's version (swapper_version(), from
    # Cargo.toml), asked for when first read so that importing needs no library; the
    # wheel's metadata gets the same Cargo.toml version from setup.py.
    if name == "__version__":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Backend",
    "BadStateError",
    "BusyError",
    "CorruptDataError",
    "DirectIo",
    "Dtype",
    "InvalidArgumentError",
    "IoConfig",
    "IoHandle",
    "LibraryNotFoundError",
    "LogLevel",
    "NoBufferError",
    "NotFoundError",
    "NullPointerError",
    "OptimizerStats",
    "OptimizerSwapper",
    "OutOfMemoryError",
    "PanicError",
    "ParamStatus",
    "Stats",
    "Status",
    "Swapper",
    "SwapperError",
    "SwapperIOError",
    "TensorKind",
    "UnsupportedError",
    "Visit",
    "alignment",
    "alloc_aligned",
    "allocation_state",
    "is_locked",
    "live_handles",
    "load_library",
    "numpy_dtype",
    "set_log_callback",
    "version",
]
