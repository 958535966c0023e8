"""One live DeepSpeed-side swapper per rank folder in a process.

DeepSpeed builds a new engine in the same process after `engine.destroy()` (its
checkpoint test does), and the new engine's swappers take the folders of the old ones.
DeepSpeed's own swappers simply reuse (or delete) the files; a native swapper holds its
rank folder locked for its life, so the new one would get `Busy`. `take_over(folder,
owner)` closes the previous owner of `folder` (its later calls raise "closed" instead of
touching files that now belong to the new one) and registers `owner`, weakly.
"""

import os
import threading
import weakref

_LIVE = {}  # realpath of a rank folder -> weakref to the object that holds it
_LOCK = threading.Lock()


def take_over(folder, owner):
    """Closes (owner.close()) the live object registered for `folder`, if any, and
    registers `owner` for it."""
    key = os.path.realpath(folder)
    with _LOCK:
        ref = _LIVE.pop(key, None)
    previous = ref() if ref is not None else None
    if previous is not None and previous is not owner:
        previous.close()
    with _LOCK:
        _LIVE[key] = weakref.ref(owner)
