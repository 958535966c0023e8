#!/usr/bin/env bash
# drives_bench.sh: issue 18 item 3's measurement matrix for the parameter swapper over
# several drives, on the drive bed (scripts/drive-bed.sh: throttled loop drives).
#
#   tools/drives_bench.sh [--rate MBPS] [--rounds R] [--params N] [--param-size S]
#                         [--big S] [--configs LIST] [--bench PATH] [--out DIR]
#                         [--backing allocated|sparse] [--smoke]
#
# Configurations (--configs, comma-separated; default all, in this order):
#   ext4-1       one ext4 drive at --rate (the reference)
#   ext4-2       two equal ext4 drives at --rate
#   ext4-4       four equal ext4 drives at --rate
#   ext4-2half   two ext4 drives, the second at half --rate
#   xfs-1        one XFS drive at --rate (the XFS reference)
#   xfs-2        two equal XFS drives at --rate
# Workloads, each measured per configuration with `swapper-bench swap` (a fresh swapper
# per run: new = swap-out of new params, write = swap-out overwriting them, read = a
# forward pass of swap-ins):
#   many   --params N params of --param-size (default 64 x 32MiB), 4 buffers, prefetch 1
#   big    one tensor of --big bytes (default 1GiB), 1 buffer, no prefetch
# Each round runs every configuration and workload once, the rounds alternating the
# order (forward, then reversed), so that drift of the machine spreads over all; each
# run gets a bed of its own (up, run, down; torn down on every exit path). The drives'
# files in /dev/shm have their memory allocated up front (--backing allocated, the
# default), so that a first write costs what an overwrite does below the file system,
# as on a real drive; --backing sparse allocates it as blocks are first written.
#
# Prints, per configuration, workload and op: the median MiB/s over the rounds with
# [min..max], and the ratio the targets are about: for N equal drives, the aggregate
# over N x the one-drive median (target >= 0.9); for one drive at half rate, the
# aggregate over the ideal byte split, (1 + 0.5) x the one-drive median (target >= 0.9,
# "ideal minus 10%"). Raw JSON per run and a summary are kept in --out (default
# target/drives-bench-<time>).
#
# --smoke: tiny sizes, unthrottled drives, one round, ext4-1, ext4-2 and ext4-2half:
# checks the tooling, measures nothing (run by tools/tests/bench_cli.rs).
# Needs root (the bed), python3; builds swapper-bench (release) unless --bench is given.
# Do not run it on a busy machine: the figures are only worth what the machine's quiet.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BED="$ROOT/scripts/drive-bed.sh"
RATE=200 ROUNDS=3 PARAMS=64 PSIZE=32MiB BIG=1GiB BENCH="" OUT="" SMOKE=0 BACKING=allocated
CONFIGS="ext4-1,ext4-2,ext4-4,ext4-2half,xfs-1,xfs-2"

die() {
    echo "drives_bench: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
    --rounds) ROUNDS=${2:?--rounds needs a value}; shift 2 ;;
    --params) PARAMS=${2:?--params needs a value}; shift 2 ;;
    --param-size) PSIZE=${2:?--param-size needs a value}; shift 2 ;;
    --big) BIG=${2:?--big needs a value}; shift 2 ;;
    --configs) CONFIGS=${2:?--configs needs a value}; shift 2 ;;
    --bench) BENCH=${2:?--bench needs a value}; shift 2 ;;
    --out) OUT=${2:?--out needs a value}; shift 2 ;;
    --backing) BACKING=${2:?--backing needs a value}; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (--help)" ;;
    esac
done
if ((SMOKE)); then
    RATE=0 ROUNDS=1 PARAMS=4 PSIZE=4MiB BIG=8MiB CONFIGS="ext4-1,ext4-2,ext4-2half"
fi
[[ $RATE =~ ^[0-9]+$ ]] || die "--rate must be MB/s, an integer"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be 1 or more"
[[ $PARAMS =~ ^[1-9][0-9]*$ ]] || die "--params must be 1 or more"
case $BACKING in allocated | sparse) ;; *) die "--backing must be allocated or sparse" ;; esac
command -v python3 >/dev/null || die "python3 is needed for the summary"

if [[ -z $BENCH ]]; then
    (cd "$ROOT" && cargo build --release -q -p swapper-tools --bin swapper-bench)
    BENCH="$ROOT/target/release/swapper-bench"
fi
[[ -x $BENCH ]] || die "no swapper-bench at $BENCH"
[[ -n $OUT ]] || OUT="$ROOT/target/drives-bench-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"

# Bytes of a size like 32MiB, 64K, 1GiB (binary suffixes, as swapper-bench reads them).
bytes() {
    python3 -c '
import re, sys
m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", sys.argv[1].strip(), re.I)
if not m: sys.exit("invalid size " + sys.argv[1])
print(int(m.group(1)) << (10 * " KMGT".index((m.group(2) or " ").upper())))' "$1"
}
MANY_BYTES=$(($(bytes "$PSIZE") * PARAMS))
BIG_BYTES=$(bytes "$BIG")

# A configuration's bed options: "N FS RATES".
config_bed() {
    local half=$((RATE / 2))
    case $1 in
    ext4-1) echo "1 ext4 $RATE" ;;
    ext4-2) echo "2 ext4 $RATE,$RATE" ;;
    ext4-4) echo "4 ext4 $RATE,$RATE,$RATE,$RATE" ;;
    ext4-2half) echo "2 ext4 $RATE,$half" ;;
    xfs-1) echo "1 xfs $RATE" ;;
    xfs-2) echo "2 xfs $RATE,$RATE" ;;
    *) die "unknown configuration '$1' (ext4-1, ext4-2, ext4-4, ext4-2half, xfs-1, xfs-2)" ;;
    esac
}
IFS=, read -r -a LIST <<<"$CONFIGS"
for c in "${LIST[@]}"; do config_bed "$c" >/dev/null; done

# One measurement: a bed for configuration $1, workload $2, round $3.
measure() {
    local config=$1 workload=$2 round=$3 n fs rates bytes size_mib args
    read -r n fs rates <<<"$(config_bed "$config")"
    case $workload in
    many) bytes=$MANY_BYTES args=(--params "$PARAMS" --param-size "$PSIZE" --buffers 4 --prefetch 1) ;;
    big) bytes=$BIG_BYTES args=(--params 1 --param-size "$BIG" --buffers 1 --prefetch 0) ;;
    esac
    # Each drive holds its share twice over, plus room for the file system (XFS needs 300 MiB).
    size_mib=$((bytes * 2 / n / 1048576 + 512))
    echo "round $round: $config $workload (drives at ${rates//,/, } MB/s; 0 = unthrottled)" >&2
    # The bed's facts (its stdout) go to a .bed file, the benchmark's JSON to a .json file.
    "$BED" with "$n" --fs "$fs" --size "${size_mib}M" --rates "$rates" --backing "$BACKING" -- \
        sh -c 'out=$1; shift; exec "$0" swap --dirs "$SWAPPER_DRIVES" --runs 1 --json "$@" >"$out"' \
        "$BENCH" "$OUT/$config-$workload-$round.json" "${args[@]}" >"$OUT/$config-$workload-$round.bed"
}

for ((r = 1; r <= ROUNDS; r++)); do
    order=("${LIST[@]}")
    if ((r % 2 == 0)); then
        order=()
        for ((i = ${#LIST[@]} - 1; i >= 0; i--)); do order+=("${LIST[i]}"); done
    fi
    for c in "${order[@]}"; do
        if ((r % 2)); then wl=(many big); else wl=(big many); fi
        for w in "${wl[@]}"; do measure "$c" "$w" "$r"; done
    done
done

python3 - "$OUT" "$RATE" <<'EOF' | tee "$OUT/summary.txt"
import glob, json, os, statistics, sys

out, rate = sys.argv[1], int(sys.argv[2])
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    config, workload, _ = os.path.basename(path)[:-5].rsplit("-", 2)
    with open(path) as f:
        v = json.load(f)
    for op, s in v["results"]["swapper"].items():
        for run in s["runs"]:
            runs.setdefault((config, workload, op), []).append(run["mib_s"])

def median(key):
    xs = runs.get(key)
    return statistics.median(xs) if xs else None

print(f"drives at {rate} MB/s each (0 = unthrottled); MiB/s median [min..max] over rounds")
for (config, workload, op), xs in sorted(runs.items()):
    fs, kind = config.split("-", 1)
    m = statistics.median(xs)
    line = f"{config:<11} {workload:<5} {op:<6} {m:9.1f} [{min(xs):.1f}..{max(xs):.1f}] ({len(xs)} runs)"
    one = median((f"{fs}-1", workload, op))
    if kind != "1" and one:
        if kind == "2half":
            ideal = 1.5 * one
            line += f"  x{m / ideal:.3f} of the ideal split (1.5 x one drive; target >= 0.9)"
        else:
            n = int(kind)
            line += f"  x{m / (n * one):.3f} of {n} x one drive (target >= 0.9)"
    print(line)
EOF
echo "raw results: $OUT" >&2
