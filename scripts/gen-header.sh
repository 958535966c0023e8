#!/usr/bin/env bash
# Regenerates the committed C header include/swapper.h from the Rust sources (cbindgen,
# through build.rs). Run it after changing the C API, then commit include/swapper.h;
# tests/header.rs fails while the committed copy differs from the sources.
set -euo pipefail
cd "$(dirname "$0")/.."
SWAPPER_REGENERATE_HEADER=1 cargo build --lib
git --no-pager diff --stat -- include/swapper.h
