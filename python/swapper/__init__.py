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
"""

from ._lib import LibraryNotFoundError, load_library
from .core import (
    Backend,
    DirectIo,
    Dtype,
    IoConfig,
    IoHandle,
    LogLevel,
    ParamStatus,
    Stats,
    Swapper,
    alignment,
    alloc_aligned,
    allocation_state,
    is_locked,
    live_handles,
    numpy_dtype,
    set_log_callback,
    version,
)
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

__version__ = "0.1.0"

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
    "OutOfMemoryError",
    "PanicError",
    "ParamStatus",
    "Stats",
    "Status",
    "Swapper",
    "SwapperError",
    "SwapperIOError",
    "UnsupportedError",
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
