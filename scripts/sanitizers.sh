#!/usr/bin/env bash
# Runs the Rust tests that drive the io_uring path (tests/engine.rs, tests/swapper.rs)
# built with AddressSanitizer, in a target folder of their own, kept outside the clone
# so that a fresh clone on the same machine reuses it (SANITIZER_TARGET_DIR, default
# ${XDG_CACHE_HOME:-$HOME/.cache}/libswapper/target-asan).
#
# -Zsanitizer needs a nightly compiler: the nightly toolchain when rustup has one,
# otherwise the default (stable) toolchain with RUSTC_BOOTSTRAP=1, as for the fuzz
# target. std comes prebuilt (no -Zbuild-std): the library's and the tests' own code is
# instrumented, and ASan's interceptors check malloc, free, memcpy and friends in std.
# The kernel's writes through io_uring into the buffers are invisible to ASan; that
# loses nothing ASan could check (it tracks addressability, not initialisation).
#
# The C examples' ASan + UBSan build runs in cargo test (tests/c_examples.rs).
#
# With CI=true every failure to build is an error; so it is elsewhere, since a
# toolchain that cannot build with -Zsanitizer=address is a setup to fix, not to skip.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu) ;;
*)
    echo "sanitizers.sh: AddressSanitizer is not set up for host $host" >&2
    exit 1
    ;;
esac

toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
    echo "sanitizers.sh: the nightly toolchain ($(rustup run nightly rustc --version))"
else
    export RUSTC_BOOTSTRAP=1
    echo "sanitizers.sh: no nightly toolchain; $(rustc --version) with RUSTC_BOOTSTRAP=1"
fi

export CARGO_TARGET_DIR="${SANITIZER_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/libswapper/target-asan}"
# --target keeps build scripts and proc macros uninstrumented (they run in the host's
# uninstrumented cargo); frame pointers make the reports' stacks complete.
export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes"
export RUSTDOCFLAGS="$RUSTFLAGS"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1"
unset SWAPPER_IO_BACKEND
# The engine logs (at info) when io_uring is not available and it falls back.
export SWAPPER_LOG=info

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo "${toolchain[@]}" test -p libswapper --target "$host" --features fault-injection \
    --test engine --test swapper -- --nocapture 2>&1 | tee "$log"

# The point is the io_uring path: a machine where the tests fell back to the blocking
# backend has not tested it.
if grep -q "io_uring is not available" "$log"; then
    echo "sanitizers.sh: io_uring is not available here, so the ASan run did not cover it" >&2
    exit 1
fi
if grep -q "AddressSanitizer" "$log"; then
    echo "sanitizers.sh: AddressSanitizer reported an error (above)" >&2
    exit 1
fi
echo "sanitizers.sh: ASan run of tests/engine.rs and tests/swapper.rs clean (io_uring backend)"
