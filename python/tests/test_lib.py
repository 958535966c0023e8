"""Loading the library, and the ctypes declarations against the header."""

import os
import re
import subprocess
import sys

import pytest

import swapper
from swapper import _lib
from conftest import HEADER


def header_functions():
    text = open(HEADER).read()
    return set(re.findall(r"^\S[^\n(]*?\b(swapper_\w+)\(", text, re.M))


def test_every_header_function_is_declared():
    funcs = header_functions()
    assert len(funcs) >= 45
    assert funcs == set(_lib.PROTOTYPES)
    lib = _lib.lib()
    for name in funcs:
        fn = getattr(lib, name)
        assert fn.argtypes is not None, name


def test_version_and_alignment():
    assert re.fullmatch(r"\d+\.\d+\.\d+", swapper.version())
    assert swapper.__version__ == swapper.version()
    assert swapper.alignment() == 4096


# The names core.py held before it was split one concept per module: code written
# against `swapper.core.X` keeps working, and gets the very object `swapper.X` is.
CORE_NAMES = (
    "Backend DirectIo Dtype ParamStatus LogLevel numpy_dtype version alignment live_handles "
    "alloc_aligned is_locked allocation_state set_log_callback IoConfig IoHandle Stats Swapper"
).split()


def test_core_keeps_every_public_name():
    from swapper import core

    for name in CORE_NAMES:
        assert getattr(core, name) is getattr(swapper, name), name
        assert name in swapper.__all__, name


def test_missing_library_error_names_every_place(monkeypatch, tmp_path):
    missing = str(tmp_path / "nope" / "libswapper.so")
    monkeypatch.setenv("SWAPPER_LIBRARY", missing)
    with pytest.raises(swapper.LibraryNotFoundError) as info:
        _lib.load_library()
    msg = str(info.value)
    assert missing in msg and "SWAPPER_LIBRARY" in msg and "no such file" in msg
    assert len(info.value.tried) == 1  # an explicit choice never falls back


def test_search_order_without_env(monkeypatch):
    monkeypatch.delenv("SWAPPER_LIBRARY", raising=False)
    places = [p for _, p in _lib.candidate_paths()]
    pkg = os.path.dirname(swapper.__file__)
    assert places[0] == os.path.join(pkg, "libswapper.so")
    assert places[1].endswith(os.path.join("target", "release", "libswapper.so"))
    assert places[2].endswith(os.path.join("target", "debug", "libswapper.so"))


def test_error_lists_all_places_in_a_fresh_process(tmp_path):
    # A copy of the package where no library exists anywhere it looks.
    import shutil

    pkg = tmp_path / "python" / "swapper"
    shutil.copytree(os.path.dirname(swapper.__file__), pkg, ignore=shutil.ignore_patterns("*.so*", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "SWAPPER_LIBRARY"}
    env["PYTHONPATH"] = str(tmp_path / "python")
    out = subprocess.run(
        [sys.executable, "-c", "import swapper; swapper.version()"],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert out.returncode != 0
    for where in ("next to the package", "crate release build", "crate debug build"):
        assert where in out.stderr
    assert "LibraryNotFoundError" in out.stderr


def test_not_a_library(monkeypatch, tmp_path):
    bogus = tmp_path / "libswapper.so"
    bogus.write_text("not an ELF file")
    monkeypatch.setenv("SWAPPER_LIBRARY", str(bogus))
    with pytest.raises(swapper.LibraryNotFoundError, match="libswapper.so"):
        _lib.load_library()


def test_log_callback_receives_messages():
    got = []
    swapper.set_log_callback(lambda level, msg: got.append((level, msg)), swapper.LogLevel.DEBUG)
    try:
        foreign = bytearray(64)
        import ctypes

        # Freeing memory libswapper did not allocate is logged as an error, not done.
        _lib.lib().swapper_free_aligned(ctypes.addressof((ctypes.c_char * 64).from_buffer(foreign)))
    finally:
        swapper.set_log_callback(None)
    assert any(lvl == swapper.LogLevel.ERROR for lvl, _ in got), got
    assert all(isinstance(m, str) for _, m in got)
