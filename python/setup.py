"""Builds the wheel of the swapper package with the native library inside it.

`pip install ./python` runs `cargo build --release --lib` on the crate one folder up
(honouring CARGO_TARGET_DIR) and copies libswapper.so into the package, next to
_lib.py, where the package looks first (after SWAPPER_LIBRARY). The wheel is tagged for
this platform, since it carries a native library.
"""

import os
import re
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
CRATE = os.path.dirname(HERE)


def cargo_version():
    """The `version` of Cargo.toml's [package] table: the package's version is the
    library's (swapper.__version__ asks the loaded library, swapper_version())."""
    with open(os.path.join(CRATE, "Cargo.toml"), encoding="utf-8") as f:
        text = f.read()
    package = re.search(r"^\[package\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    version = package and re.search(r'^version\s*=\s*"([^"]+)"', package.group(1), re.M)
    if not version:
        raise RuntimeError(f"no version in the [package] table of {CRATE}/Cargo.toml")
    return version.group(1)


def build_native_library():
    """Builds the crate's cdylib in release mode; returns the path of libswapper.so."""
    manifest = os.path.join(CRATE, "Cargo.toml")
    if not os.path.isfile(manifest):
        raise RuntimeError(
            f"no {manifest}: the swapper package is built from a libswapper source tree "
            "(pip install ./python in a clone)"
        )
    cargo = os.environ.get("CARGO", "cargo")
    try:
        subprocess.check_call([cargo, "build", "--release", "--lib", "--manifest-path", manifest], cwd=CRATE)
    except FileNotFoundError:
        raise RuntimeError("cargo is needed to build libswapper: install Rust with rustup") from None
    target = os.environ.get("CARGO_TARGET_DIR") or "target"
    if not os.path.isabs(target):
        target = os.path.join(CRATE, target)
    return os.path.join(target, "release", "libswapper.so")


class BuildPyWithLibrary(build_py):
    """build_py, then the native library into the package's build folder."""

    def run(self):
        super().run()
        library = build_native_library()
        dest = os.path.join(self.build_lib, "swapper", "libswapper.so")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(library, dest)
        os.chmod(dest, 0o755)


class NativeDistribution(Distribution):
    """Marks the wheel as platform-specific (it carries libswapper.so)."""

    def has_ext_modules(self):
        return True


setup(version=cargo_version(), cmdclass={"build_py": BuildPyWithLibrary}, distclass=NativeDistribution)
