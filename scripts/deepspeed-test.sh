#!/usr/bin/env bash
# DeepSpeed ZeRO-3 + NVMe offload training with DeepSpeed's stock async_io op and swappers
# against patch_deepspeed() (python/tests/deepspeed_training.py): bit-identical losses and
# weights, and DeepSpeed's NVMe checkpointing test; the differential test against
# DeepSpeed's parameter swapper; the replacement parameter and optimizer swappers' own tests.
# Creates (first run: pip install, ~4 min; DeepSpeed's op compiles at first use against
# libaio-dev, ~2 min more) or reuses a virtual environment outside the clone:
#   $SWAPPER_DEEPSPEED_VENV (default ~/.cache/libswapper/deepspeed-venv).
# Needs python3 (with venv), a C++ compiler, ninja and libaio-dev (apt-get install
# libaio-dev ninja-build). Fails, never skips, when any of it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SWAPPER_DEEPSPEED_VENV:-$HOME/.cache/libswapper/deepspeed-venv}"
DEEPSPEED_VERSION=0.19.8
# DeepSpeed's op is built once, into a folder of ours, with the venv's ninja (PATH below):
# in torch's shared ~/.cache/torch_extensions another torch, DeepSpeed or ninja (Debian's
# 1.11 hashes command lines differently from pip's 1.13) would rebuild it, minutes each.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/libswapper/torch-extensions}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, numpy, pytest, cffi, deepspeed, sys; sys.exit(deepspeed.__version__ != '$DEEPSPEED_VERSION')" 2>/dev/null; then
    "$VENV/bin/pip" install -q torch "deepspeed==$DEEPSPEED_VERSION" numpy pytest cffi
fi
"$VENV/bin/python" -c "import torch, deepspeed; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__)"
if [ ! -e /usr/include/libaio.h ]; then
    echo "error: libaio-dev is missing (DeepSpeed's stock async_io op compiles against it): apt-get install libaio-dev" >&2
    exit 1
fi
cargo build --release --lib
TARGET="${CARGO_TARGET_DIR:-target}"
export SWAPPER_LIBRARY="$PWD/$TARGET/release/libswapper.so"
case "$TARGET" in /*) export SWAPPER_LIBRARY="$TARGET/release/libswapper.so" ;; esac
export PATH="$VENV/bin:$PATH"
start=$(date +%s)
# The differential test and the tests on torch tensors skip without torch/deepspeed in the
# plain pytest run (python/tests/skip_policy.py allows that there); here they run, and a
# skip of any of them is a failure (SWAPPER_NO_SKIPS=1).
SWAPPER_REQUIRE_DEEPSPEED=1 SWAPPER_NO_SKIPS=1 "$VENV/bin/python" -m pytest -q -rs \
    python/tests/test_deepspeed_differential.py python/tests/test_deepspeed_param_swapper.py \
    python/tests/test_deepspeed_optimizer_swapper.py \
    python/tests/deepspeed_training.py \
    python/tests/test_deepspeed.py::test_torch_tensors \
    python/tests/test_safety.py::test_is_pinned_on_slices_of_locked_buffers "$@"
echo "deepspeed training test: $(( $(date +%s) - start )) s"

# The side-by-side benchmark against DeepSpeed's aio_handle, at smoke-test sizes: it must
# run both implementations, verify the bytes each read back and print the ratios.
case "$TARGET" in /*) target_abs=$TARGET ;; *) target_abs=$PWD/$TARGET ;; esac
smoke_dir=$(mktemp -d "$target_abs/vs-deepspeed.XXXXXX")
trap 'rm -rf "$smoke_dir"' EXIT
smoke=$("$VENV/bin/python" tools/vs_deepspeed.py --smoke --dir "$smoke_dir" 2>/dev/null)
echo "$smoke" | grep -E '^==|ls/ds:|swapper/ds '
if echo "$smoke" | grep -q '^vs_deepspeed: done' \
    && [ "$(echo "$smoke" | grep -c 'bytes verified')" -eq 6 ] \
    && [ "$(echo "$smoke" | grep -c 'ls/ds: throughput')" -eq 9 ] \
    && [ "$(echo "$smoke" | grep -c 'param data verified')" -eq 4 ] \
    && [ "$(echo "$smoke" | grep -c 'swapper/ds ')" -eq 6 ]; then
    echo "1 passed, 0 failed: tools/vs_deepspeed.py --smoke"
else
    echo "$smoke"
    echo "0 passed, 1 failed: tools/vs_deepspeed.py --smoke"
    exit 1
fi

# The optimizer-swapping benchmark (update phase through DeepSpeed's optimizer swappers,
# end-to-end training stock against patched) at smoke-test sizes: every implementation
# must run and agree (the same fp32 params after the update steps, the same losses).
opt_dir=$(mktemp -d "$smoke_dir/optimizer.XXXXXX")
opt=$("$VENV/bin/python" tools/vs_deepspeed_optimizer.py --smoke --dir "$opt_dir" 2>"$opt_dir.err") || true
echo "$opt" | grep -E '^==|identical'
if echo "$opt" | grep -q '^vs_deepspeed_optimizer: done' \
    && echo "$opt" | grep -q '^update: digest identical across 6' \
    && echo "$opt" | grep -q '^train: losses identical across 2'; then
    echo "1 passed, 0 failed: tools/vs_deepspeed_optimizer.py --smoke"
else
    echo "$opt"
    tail -n 40 "$opt_dir.err" # why: the worker's traceback
    echo "0 passed, 1 failed: tools/vs_deepspeed_optimizer.py --smoke"
    exit 1
fi

# The checkpoint mode (DeepSpeed's NVMe checkpoint save and load of the same state, stock
# copytree against patched snapshots) at smoke-test sizes: both must run and the losses
# after a load agree.
ckpt_dir=$(mktemp -d "$smoke_dir/checkpoint.XXXXXX")
ckpt=$("$VENV/bin/python" tools/vs_deepspeed_optimizer.py --mode checkpoint --smoke --dir "$ckpt_dir" 2>"$ckpt_dir.err") || true
echo "$ckpt" | grep -E '^==|^impl |^stock |^patched|identical'
if echo "$ckpt" | grep -q '^vs_deepspeed_optimizer: done' \
    && echo "$ckpt" | grep -q '^checkpoint: losses identical across 2' \
    && echo "$ckpt" | grep -q '^patched/stock: save '; then
    echo "1 passed, 0 failed: tools/vs_deepspeed_optimizer.py --mode checkpoint --smoke"
else
    echo "$ckpt"
    tail -n 40 "$ckpt_dir.err" # why: the worker's traceback
    echo "0 passed, 1 failed: tools/vs_deepspeed_optimizer.py --mode checkpoint --smoke"
    exit 1
fi
