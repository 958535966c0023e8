"""What every handle class of the package shares: `closed`, the context manager, closing
on garbage collection, and the live handle or a BadStateError once closed. A subclass
sets `self._handle` (None once closed) and defines `close()`."""

from .errors import BadStateError


class Handle:
    _handle = None

    @property
    def closed(self):
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _h(self):
        if getattr(self, "_handle", None) is None:
            raise BadStateError(f"the {type(self).__name__} is closed")
        return self._handle
