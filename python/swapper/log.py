"""libswapper's diagnostics sent to a Python callable."""

from ._lib import lib
from .enums import LogLevel, _enum
from .errors import check


_log_callback = None  # the installed ctypes callback, kept alive


def set_log_callback(callback, max_level=LogLevel.WARN):
    """Sends libswapper's diagnostics to `callback(level: LogLevel, message: str)`; None
    removes it (then SWAPPER_LOG decides). The callback may run on I/O threads."""
    global _log_callback
    from ._lib import LogCallback

    if callback is None:
        c_callback = LogCallback()
    else:

        def trampoline(level, message, _user_data):
            try:
                callback(LogLevel(level), message.decode("utf-8", "replace"))
            except Exception:  # never let an exception cross into C
                pass

        c_callback = LogCallback(trampoline)
    check(lib().swapper_set_log_callback(c_callback, None, int(_enum(LogLevel, max_level, "max_level"))))
    _log_callback = c_callback if callback is not None else None
