#!/usr/bin/env bash
# Runs every test of libswapper: formatting and lints, the Rust unit and integration
# tests (which build and run the C examples, under valgrind where installed), and the
# Python tests when the Python binding is present.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --features fault-injection -- -D warnings
echo "== cargo test"
cargo test --features fault-injection
if [ -d python/tests ]; then
    echo "== pytest"
    cargo build --release --lib
    SWAPPER_LIBRARY="$PWD/target/release/libswapper.so" python3 -m pytest -q python/tests
fi
