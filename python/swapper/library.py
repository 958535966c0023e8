"""Facts about the loaded library: its version, the O_DIRECT alignment, live handles."""

from ._lib import lib


def version():
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return lib().swapper_version().decode()


def alignment():
    """The O_DIRECT alignment in bytes (4096)."""
    return int(lib().swapper_io_alignment())


def live_handles():
    """(live IoHandle count, live Swapper count) in this process, for leak checks."""
    return int(lib().swapper_io_live_handles()), int(lib().swapper_live_handles())
