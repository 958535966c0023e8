"""The header is plain C: after the preprocessor, cffi's cdef accepts it, and a write /
read round trip works through cffi's dlopen."""

import os
import shutil
import subprocess

import pytest

from conftest import HEADER

cffi = pytest.importorskip("cffi")


def preprocessed_header():
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the preprocessor")
    # cffi knows the standard types itself: drop the system includes, keep everything else.
    text = "".join(line for line in open(HEADER) if not line.startswith("#include"))
    # SWAPPER_MUST_USE defined empty: cffi's parser knows no __attribute__.
    out = subprocess.run(
        [cc, "-E", "-P", "-DSWAPPER_MUST_USE=", "-x", "c", "-"], input=text, capture_output=True, text=True, check=True
    )
    return out.stdout


def test_cdef_accepts_header_and_round_trip(folder):
    cdef = preprocessed_header()
    assert "extern \"C\"" not in cdef and "#" not in cdef
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    lib = ffi.dlopen(_find())
    assert ffi.string(lib.swapper_version()).decode().count(".") == 2

    cfg = ffi.new("SwapperIoConfig *")
    lib.swapper_io_config_default(cfg)
    assert cfg.block_size == 1 << 20 and cfg.queue_depth == 8
    io = ffi.new("SwapperIo **")
    assert lib.swapper_io_create(cfg, io) == lib.SWAPPER_STATUS_OK
    try:
        n = (1 << 20) + 17
        src = ffi.new("void **")
        assert lib.swapper_alloc_aligned(n, True, src) == 0
        data = ffi.buffer(src[0], n)
        data[:] = bytes(i % 251 for i in range(n))
        path = os.path.join(folder, "cffi.bin").encode()
        assert lib.swapper_io_pwrite(io[0], src[0], n, path, 0, True) == 0
        done = ffi.new("uint64_t *")
        assert lib.swapper_io_wait(io[0], done) == 0 and done[0] == 1
        back = ffi.new("unsigned char[]", n)
        assert lib.swapper_io_pread(io[0], back, n, path, 0, False) == 0
        assert ffi.buffer(back, n)[:] == data[:]
        missing = os.path.join(folder, "nope").encode()
        assert lib.swapper_io_pread(io[0], back, 10, missing, 0, False) == lib.SWAPPER_STATUS_NOT_FOUND
        assert b"nope" in ffi.string(lib.swapper_last_error())
        lib.swapper_free_aligned(src[0])
    finally:
        lib.swapper_io_destroy(io[0])


def _find():
    from swapper._lib import candidate_paths

    for _, path in candidate_paths():
        if os.path.exists(path):
            return path
    pytest.skip("libswapper.so not built")
