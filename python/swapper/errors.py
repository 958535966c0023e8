"""Exceptions: one class per SwapperStatus, all deriving from SwapperError."""

import enum

from . import _lib


class Status(enum.IntEnum):
    OK = 0
    INVALID_ARGUMENT = 1
    NULL_POINTER = 2
    NOT_FOUND = 3
    BAD_STATE = 4
    NO_BUFFER = 5
    IO_ERROR = 6
    CORRUPT_DATA = 7
    BUSY = 8
    UNSUPPORTED = 9
    OUT_OF_MEMORY = 10
    PANIC = 11


class SwapperError(Exception):
    """A libswapper call failed. `status` is the SwapperStatus value, `status_name` its
    name as in swapper.h ("SWAPPER_STATUS_IO_ERROR"), `message` the detail from
    swapper_last_error()."""

    status = None  # set on each subclass

    def __init__(self, message, status=None):
        if status is None:
            status = type(self).status
        self.status = Status(status) if status in Status._value2member_map_ else status
        self.status_name = _status_name(status)
        self.message = message
        super().__init__(f"{self.status_name}: {message}" if message else self.status_name)


def _status_name(status):
    try:
        return f"SWAPPER_STATUS_{Status(status).name}"
    except ValueError:
        return "SWAPPER_STATUS_UNKNOWN"


class InvalidArgumentError(SwapperError, ValueError):
    status = Status.INVALID_ARGUMENT


class NullPointerError(SwapperError, ValueError):
    status = Status.NULL_POINTER


class NotFoundError(SwapperError, LookupError):
    status = Status.NOT_FOUND


class BadStateError(SwapperError):
    status = Status.BAD_STATE


class NoBufferError(SwapperError):
    status = Status.NO_BUFFER


class SwapperIOError(SwapperError, OSError):
    status = Status.IO_ERROR


class CorruptDataError(SwapperError):
    status = Status.CORRUPT_DATA


class BusyError(SwapperError):
    status = Status.BUSY


class UnsupportedError(SwapperError):
    status = Status.UNSUPPORTED


class OutOfMemoryError(SwapperError, MemoryError):
    status = Status.OUT_OF_MEMORY


class PanicError(SwapperError):
    status = Status.PANIC


ERRORS = {
    cls.status: cls
    for cls in (
        InvalidArgumentError,
        NullPointerError,
        NotFoundError,
        BadStateError,
        NoBufferError,
        SwapperIOError,
        CorruptDataError,
        BusyError,
        UnsupportedError,
        OutOfMemoryError,
        PanicError,
    )
}


def error_for(status, message=None):
    """The exception for a failing status; `message` defaults to swapper_last_error()."""
    if message is None:
        message = _lib.lib().swapper_last_error().decode("utf-8", "replace")
    return ERRORS.get(status, SwapperError)(message, status)


def check(status):
    """Raises the matching SwapperError subclass unless `status` is OK. Must be called on
    the thread that made the call (the last error is per thread)."""
    if status != 0:
        raise error_for(status)
