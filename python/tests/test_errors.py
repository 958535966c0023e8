"""Every status maps to its own SwapperError subclass; real failures raise them."""

import pytest

import swapper
from swapper.errors import ERRORS, Status, error_for

EXPECTED = {
    Status.INVALID_ARGUMENT: swapper.InvalidArgumentError,
    Status.NULL_POINTER: swapper.NullPointerError,
    Status.NOT_FOUND: swapper.NotFoundError,
    Status.BAD_STATE: swapper.BadStateError,
    Status.NO_BUFFER: swapper.NoBufferError,
    Status.IO_ERROR: swapper.SwapperIOError,
    Status.CORRUPT_DATA: swapper.CorruptDataError,
    Status.BUSY: swapper.BusyError,
    Status.UNSUPPORTED: swapper.UnsupportedError,
    Status.OUT_OF_MEMORY: swapper.OutOfMemoryError,
    Status.PANIC: swapper.PanicError,
}


@pytest.mark.parametrize("status", list(EXPECTED))
def test_status_maps_to_subclass(status):
    lib = swapper.load_library()
    cls = EXPECTED[status]
    assert ERRORS[status] is cls and issubclass(cls, swapper.SwapperError)
    err = error_for(int(status), "detail")
    assert type(err) is cls
    assert err.status == status
    assert err.status_name == lib.swapper_status_name(int(status)).decode()
    assert err.message == "detail" and "detail" in str(err)


def test_unknown_status_is_base_class():
    err = error_for(99, "odd")
    assert type(err) is swapper.SwapperError and err.status_name == "SWAPPER_STATUS_UNKNOWN"


def test_statuses_match_the_header():
    import re

    from conftest import HEADER

    text = open(HEADER).read()
    pairs = dict(re.findall(r"SWAPPER_STATUS_(\w+) = (\d+)", text))
    assert {k: int(v) for k, v in pairs.items()} == {s.name: int(s) for s in Status}


def test_message_comes_from_last_error(folder):
    with swapper.IoHandle() as io:
        with pytest.raises(swapper.NotFoundError) as info:
            io.pread(bytearray(16), folder + "/missing-file")
    assert "missing-file" in info.value.message
    assert isinstance(info.value, LookupError)


def test_real_invalid_argument():
    with pytest.raises(swapper.InvalidArgumentError, match="block"):
        swapper.IoHandle(block_size=3000)


def test_real_io_error_past_end(folder):
    with swapper.IoHandle() as io:
        io.pwrite(bytes(100), folder + "/short")
        with pytest.raises(swapper.SwapperIOError, match="past end"):
            io.pread(bytearray(200), folder + "/short")


def test_real_busy(folder):
    with swapper.Swapper(folder, buffer_count=1, buffer_numel=1024):
        with pytest.raises(swapper.BusyError):
            swapper.Swapper(folder, buffer_count=1, buffer_numel=1024)


def test_real_not_found_folder(folder):
    with pytest.raises(swapper.NotFoundError):
        swapper.Swapper(folder + "/does/not/exist", buffer_count=1, buffer_numel=1024)


def test_real_out_of_memory():
    with pytest.raises(swapper.OutOfMemoryError):
        swapper.alloc_aligned(1 << 60)
