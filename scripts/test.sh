#!/usr/bin/env bash
# Runs every test of libswapper: formatting and lints, the Rust unit and integration
# tests (which build and run the C examples plain, under valgrind and with ASan + UBSan,
# and the MPI example under mpirun), an ASan build of the io_uring tests, and the
# Python tests when the Python binding is present. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

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
if [ -d python/tests ]; then
    echo "== pytest"
    cargo build --release --lib
    SWAPPER_LIBRARY="$PWD/target/release/libswapper.so" python3 -m pytest -q python/tests 2>&1 | tee -a "$log"
fi

# Sum what the runners reported: cargo's "test result:" lines and pytest's last line.
passed=$(grep -hoE '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -hoE '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo "all tests: ${passed:-0} passed, ${failed:-0} failed"
