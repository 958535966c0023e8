import os
import sys

import pytest

# The package from this source tree, whatever the working folder (scripts/test.sh runs
# pytest from the repository root).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import swapper  # noqa: E402
from skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402, F401 - hooks


@pytest.fixture
def folder(tmp_path):
    """A temporary folder on disk (tmp_path; not /dev/shm), as a str."""
    return str(tmp_path)


@pytest.fixture
def sw(tmp_path):
    """A small fp16 swapper: 4 buffers of 1 Mi elements."""
    with swapper.Swapper(str(tmp_path), buffer_count=4, buffer_numel=1 << 20) as s:
        yield s


@pytest.fixture(autouse=True)
def no_leaked_handles():
    before = swapper.live_handles()
    yield
    import gc

    gc.collect()
    assert swapper.live_handles() == before, "a test leaked a libswapper handle"


HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "include", "swapper.h")
