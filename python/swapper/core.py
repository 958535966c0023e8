"""Where the Pythonic classes lived before they got one module each; every name stays
importable from here (`swapper.core.Swapper` and friends) for existing code.

    enums.py          Backend, DirectIo, Dtype, ParamStatus, LogLevel, numpy_dtype
    library.py        version, alignment, live_handles
    memory.py         alloc_aligned, is_locked, allocation_state
    log.py            set_log_callback
    io_handle.py      IoHandle, IoConfig (the I/O engine, SwapperIo)
    stats.py          Stats
    param_swapper.py  Swapper
"""

from ._args import _ids, _path, _uint  # noqa: F401
from .enums import Backend, DirectIo, Dtype, LogLevel, ParamStatus, _dtype, _enum, numpy_dtype  # noqa: F401
from .io_handle import _IO_KEYS, IoConfig, IoHandle, _fill_io_config  # noqa: F401
from .library import alignment, live_handles, version  # noqa: F401
from .log import set_log_callback  # noqa: F401
from .memory import _free_aligned, _release_retained, alloc_aligned, allocation_state, is_locked  # noqa: F401
from .param_swapper import Swapper  # noqa: F401
from .stats import Stats  # noqa: F401
