"""The Python copies of the header's enums and structs must match include/swapper.h:
every enum value (both ways: no constant missing, none extra), every struct's size and
every field's offset, as the C compiler sees them. A small C program generated from the
header and the ctypes definitions prints what the compiler computes."""

import ctypes
import os
import re
import shutil
import subprocess

import pytest

from swapper import _lib, core, errors
from swapper.enums import TensorKind

from conftest import HEADER

ENUMS = {
    "SWAPPER_STATUS_": errors.Status,
    "SWAPPER_LOG_LEVEL_": core.LogLevel,
    "SWAPPER_BACKEND_": core.Backend,
    "SWAPPER_DIRECT_IO_": core.DirectIo,
    "SWAPPER_PARAM_STATUS_": core.ParamStatus,
    "SWAPPER_DTYPE_": core.Dtype,
    "SWAPPER_TENSOR_KIND_": TensorKind,
}
ENUM_TYPES = [
    "SwapperStatus",
    "SwapperLogLevel",
    "SwapperBackend",
    "SwapperDirectIo",
    "SwapperParamStatus",
    "SwapperDtype",
    "SwapperTensorKind",
]
STRUCTS = {
    "SwapperIoConfig": _lib.IoConfigStruct,
    "SwapperConfig": _lib.ConfigStruct,
    "SwapperStats": _lib.StatsStruct,
    "SwapperOptimizerConfig": _lib.OptimizerConfigStruct,
    "SwapperTensorSpec": _lib.TensorSpecStruct,
    "SwapperOptimizerStats": _lib.OptimizerStatsStruct,
}


def header_enum_constants():
    text = open(HEADER).read()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(SWAPPER_[A-Z0-9_]+) = (-?\d+),?$", text, re.M)}


def compiler_view(tmp_path):
    """{key: number} printed by a C program compiled against the header."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("a C compiler (cc) is needed to check the layouts: install gcc")
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "swapper.h"', "int main(void) {"]
    for name in header_enum_constants():
        lines.append(f'    printf("{name} %lld\\n", (long long){name});')
    for t in ENUM_TYPES:
        lines.append(f'    printf("sizeof {t} %zu\\n", sizeof({t}));')
    for cname, py in STRUCTS.items():
        lines.append(f'    printf("sizeof {cname} %zu\\n", sizeof({cname}));')
        for field, _ in py._fields_:
            lines.append(f'    printf("offsetof {cname}.{field} %zu\\n", offsetof({cname}, {field}));')
    lines += ["    return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    include = os.path.dirname(os.path.abspath(HEADER))
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", include, str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}


def test_every_enum_value_matches_the_header():
    constants = header_enum_constants()
    assert len(constants) > 20, "the header scan found too few enum constants"
    for prefix, enum in ENUMS.items():
        in_header = {k[len(prefix):]: v for k, v in constants.items() if k.startswith(prefix)}
        in_python = {m.name: int(m.value) for m in enum}
        assert in_python == in_header, f"{enum.__name__} differs from the header's {prefix}* constants"
    covered = {k for k in constants if any(k.startswith(p) for p in ENUMS)}
    assert covered == set(constants), f"header enum constants with no Python enum: {set(constants) - covered}"


def test_every_struct_size_and_field_offset_matches_the_compiler(tmp_path):
    seen = compiler_view(tmp_path)
    for name, value in header_enum_constants().items():
        assert seen[name] == value, name
    for t in ENUM_TYPES:
        assert seen[f"sizeof {t}"] == ctypes.sizeof(_lib.c_enum), t
    for cname, py in STRUCTS.items():
        assert seen[f"sizeof {cname}"] == ctypes.sizeof(py), f"sizeof {cname}"
        for field, _ in py._fields_:
            assert seen[f"offsetof {cname}.{field}"] == getattr(py, field).offset, f"{cname}.{field}"
