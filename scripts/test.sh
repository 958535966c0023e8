#!/usr/bin/env bash
# Runs every test of libswapper: formatting and lints, the Rust unit and integration
# tests (which build and run the C examples plain, under valgrind and with ASan + UBSan,
# and the MPI example under mpirun), an ASan build of the io_uring tests, the Python
# tests, the Python package installed by pip into a fresh virtual environment, and the
# commands the README shows. Ends with one summary line (passed, failed, skipped).
#
# First, in about a second, scripts/prerequisites.sh checks every tool the tests use and
# installs what is missing (as root or with passwordless sudo: apt-get; rustup for
# clippy and rustfmt), or stops with one line saying what to install. The Python packages
# (numpy, pytest, cffi) go into a virtual environment it creates once and reuses:
# $SWAPPER_VENV, default ${XDG_CACHE_HOME:-$HOME/.cache}/libswapper/venv.
#
# Since every tool is then present, a test that skips for want of one is a failure here
# (SWAPPER_NO_SKIPS=1, as under CI=true); python/tests/skip_policy.py lists the skips
# allowed, each with the place that runs the test instead.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

echo "== prerequisites"
# shellcheck source=scripts/prerequisites.sh
source scripts/prerequisites.sh
swapper_prerequisites || exit 1
export SWAPPER_NO_SKIPS=1

log=$(mktemp)
scratch=$(mktemp -d)
trap 'rm -rf "$log" "$scratch"' EXIT
target=${CARGO_TARGET_DIR:-$PWD/target}

echo "== python virtual environment"
venv=${SWAPPER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/libswapper/venv}
python_packages="numpy pytest cffi"
if [ "$(cat "$venv/.swapper-packages" 2>/dev/null)" != "$python_packages" ]; then
    python3 -m venv "$venv" || { echo "python3 -m venv failed: install python3-venv" >&2; exit 1; }
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install -q $python_packages
    echo "$python_packages" > "$venv/.swapper-packages"
fi
python="$venv/bin/python"

echo "== every command the tests run is in scripts/prerequisites.sh"
python3 scripts/tool_coverage.py 2>&1 | tee -a "$log"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --features fault-injection -- -D warnings

echo "== cargo test"
# cargo test links the tests against the rlib only; the C examples and the install test
# need libswapper.so and libswapper.a, which a build of the same profile and features makes.
cargo build --features fault-injection
cargo test --features fault-injection 2>&1 | tee -a "$log"

# AddressSanitizer build of the Rust tests that drive the io_uring path, in a target
# folder of its own (the C examples' ASan + UBSan build is part of cargo test above).
echo "== sanitizers"
./scripts/sanitizers.sh 2>&1 | tee -a "$log"

echo "== pytest"
cargo build --release --lib
SWAPPER_LIBRARY="$target/release/libswapper.so" "$python" -m pytest -q -rs python/tests 2>&1 | tee -a "$log"

echo "== pip install ./python into a fresh virtual environment"
"$python" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install -q ./python
(cd "$scratch" && env -u SWAPPER_LIBRARY "$scratch/venv/bin/python" -c '
import os, importlib.metadata, numpy as np, swapper, swapper._lib as L
lib = L.candidate_paths()[0][1]
assert lib.startswith(os.path.dirname(swapper.__file__)), lib
# One version: the wheel metadata (setup.py reads Cargo.toml), the package, the library.
assert importlib.metadata.version("swapper") == swapper.__version__ == swapper.version(), (
    importlib.metadata.version("swapper"), swapper.version())
with swapper.Swapper(".", buffer_count=2, buffer_numel=4096) as s:
    s.get_buffer(1, 100)[:] = 2.5
    s.swap_out_and_release([1]); s.swap_in([1]); s.wait_reads()
    assert (s.param_buffer(1) == 2.5).all()
print("1 passed, 0 failed: pip-installed package with its bundled", os.path.basename(lib))
') 2>&1 | tee -a "$log"

echo "== DeepSpeed: the differential test and ZeRO-3 training, stock op against libswapper"
./scripts/deepspeed-test.sh 2>&1 | tee -a "$log"

echo "== README commands"
./scripts/readme-commands.sh 2>&1 | tee -a "$log"

# Sum what the runners reported: cargo's "test result:" lines, pytest's last lines, and the
# "N passed, N failed" lines of the steps above. Skipped: pytest's skips (each allowed by
# python/tests/skip_policy.py, with its reason above); ignored: cargo's #[ignore] tests,
# which other tests run in a process of their own.
total() { grep -hoE "[0-9]+ $1" "$log" | awk '{s += $1} END {print s + 0}'; }
echo "all tests: $(total passed) passed, $(total failed) failed, $(total skipped) skipped, $(total ignored) ignored by cargo ($(( $(date +%s) - start )) s)"
