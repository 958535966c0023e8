"""Which skips are allowed. Under CI=true (and in scripts/test.sh, which sets
SWAPPER_NO_SKIPS=1 after scripts/prerequisites.sh has installed every tool), a skipped
test is a failure unless it is listed here and its condition holds: a test that CI is
equipped to run must run. conftest.py loads these hooks; test_skip_policy.py checks them.
"""

import importlib.util
import os

import pytest


def _missing(module):
    return importlib.util.find_spec(module) is None


# file name[::test] -> (condition under which the skip is allowed, why).
# Each one runs, and may not skip, in scripts/deepspeed-test.sh's virtual environment,
# which has torch and DeepSpeed; the main test venv has neither.
ALLOWED_SKIPS = {
    "test_deepspeed.py::test_torch_tensors": (
        lambda: _missing("torch"),
        "needs torch: scripts/deepspeed-test.sh runs it in the DeepSpeed venv",
    ),
    "test_safety.py::test_is_pinned_on_slices_of_locked_buffers": (
        lambda: _missing("torch"),
        "needs torch: scripts/deepspeed-test.sh runs it in the DeepSpeed venv",
    ),
    "test_deepspeed_differential.py": (
        lambda: _missing("torch") or _missing("deepspeed"),
        "needs torch and DeepSpeed: scripts/deepspeed-test.sh runs it with SWAPPER_REQUIRE_DEEPSPEED=1",
    ),
    "test_deepspeed_param_swapper.py": (
        lambda: _missing("torch") or _missing("deepspeed"),
        "needs torch and DeepSpeed: scripts/deepspeed-test.sh runs it with SWAPPER_REQUIRE_DEEPSPEED=1",
    ),
    "test_deepspeed_optimizer_swapper.py": (
        lambda: _missing("torch") or _missing("deepspeed"),
        "needs torch and DeepSpeed: scripts/deepspeed-test.sh runs it with SWAPPER_REQUIRE_DEEPSPEED=1",
    ),
}


def strict():
    return os.environ.get("CI") == "true" or os.environ.get("SWAPPER_NO_SKIPS") == "1"


def allowed(nodeid):
    """The reason a skip of `nodeid` is allowed here, or None."""
    path, _, rest = nodeid.partition("::")
    name = os.path.basename(path) + ("::" + rest if rest else "")
    for prefix, (condition, why) in ALLOWED_SKIPS.items():
        if (name == prefix or name.startswith(prefix + "::")) and condition():
            return why
    return None


def _enforce(report, nodeid):
    if not strict() or not report.skipped or hasattr(report, "wasxfail"):
        return
    if allowed(nodeid) is not None:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"{nodeid} skipped ({reason}) under CI=true / SWAPPER_NO_SKIPS=1, where every tool it needs is "
        "installed: a skip CI is equipped to run is a failure (allowed skips: python/tests/skip_policy.py)"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _enforce(outcome.get_result(), item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _enforce(outcome.get_result(), collector.nodeid)
