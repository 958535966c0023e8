#!/usr/bin/env bash
# drive-bed.sh: several throttled "drives" on a one-disk machine, for the multi-drive
# tests and benchmarks. Each drive is a loop device over a file in /dev/shm (sparse, or
# with all its memory allocated up front), formatted and mounted; a cgroup v1 blkio group throttles each device's reads and
# writes (blkio.throttle.{read,write}_bps_device "MAJ:MIN BYTES_PER_S"), and commands
# run inside that group. Needs root, losetup, mkfs.<fs>, and the v1 blkio controller.
#
#   drive-bed.sh up N [--fs ext4|xfs|btrfs|ext2] [--size 2G | --sizes S1,S2,..]
#                     [--rate-mbps R | --rates R1,R2,..] [--backing sparse|allocated]
#                     [--name NAME]
#       Makes the bed and prints one key=value line per fact (below). Every drive has
#       --size bytes, or each its own (--sizes: a tiny drive beside big ones, to fill
#       it). No throttle unless asked (R in MB/s, 1 MB = 10^6 bytes; 0 = unthrottled).
#       --backing sparse (the default) gives each drive's file its memory as blocks are
#       first written, so a first write also costs the loop thread a page allocation
#       and zeroing per 4 KiB, which a real drive does not; `allocated` takes all of
#       --size from memory up front (fallocate), so first writes and overwrites cost the
#       same below the file system, as on a real drive (the benchmarks use it).
#       mkfs is told not to discard, which would give the memory back.
#       ext2 is a file system without fallocate. A bed that fails half-way, or is
#       interrupted (INT, TERM), is torn down before `up` returns.
#   drive-bed.sh run [--name NAME] -- CMD...
#       Runs CMD inside the bed's blkio group (its pid written to <group>/cgroup.procs)
#       with SWAPPER_DRIVES=/mnt/..d0:/mnt/..d1 (the mount points, in drive order),
#       DRIVE_BED_NAME and DRIVE_BED_CGROUP exported; exits with CMD's status.
#   drive-bed.sh down [--name NAME]
#       Removes everything the bed made: stops what still runs in its group, unmounts,
#       detaches the loop devices, removes the files, the mount folders and the group.
#       Idempotent: run it twice, or after a crash (it reads the state file, which
#       records each thing before it is made, and then looks by name as well).
#   drive-bed.sh with N [up options] -- CMD...
#       up, run CMD, down: down runs on every exit path (CMD failing, INT, TERM: the
#       command is stopped first), and the status is CMD's (130/143 after a signal).
#   drive-bed.sh status [--name NAME]
#       Prints the bed's state file (exit 1 if there is no such bed).
#
# `up` prints, one per line (stable, for scripts and tests):
#   name=NAME
#   state=/run/drive-bed/NAME.state
#   cgroup=/sys/fs/cgroup/blkio/NAME
#   drive=I dev=/dev/loopK majmin=7:K mount=/mnt/drive-bed/NAME/dI file=/dev/shm/NAME-I.img fs=ext4 rate_bps=B size=2G
#   drives=/mnt/drive-bed/NAME/d0:/mnt/drive-bed/NAME/d1
# --name defaults to $DRIVE_BED_NAME, else (for up and with) a fresh drive-bed-<pid>-<n>.
# The throttle binds I/O issued from inside the group: O_DIRECT reads and writes (what
# libswapper does) and reads; cgroup v1 cannot throttle buffered writeback.
# Test hook: DRIVE_BED_KILL_AT=<step> makes `up` SIGKILL itself after a step (file,
# loop, mkfs, mount, throttle), to test that `down` recovers from a crash.
set -euo pipefail

STATE_DIR=${DRIVE_BED_STATE_DIR:-/run/drive-bed}
MOUNT_BASE=${DRIVE_BED_MOUNT_BASE:-/mnt/drive-bed}
SHM=${DRIVE_BED_SHM:-/dev/shm}
BLKIO=${DRIVE_BED_BLKIO:-/sys/fs/cgroup/blkio}

CLEANUP_NAME=""   # the bed to tear down when this script exits
CHILD=""          # the command `with` runs, stopped on INT/TERM

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    echo "drive-bed: $*" >&2
    exit 2
}

valid_name() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "invalid name '$1' (letters, digits, . _ -)"
}

state_of() { echo "$STATE_DIR/$1.state"; }

# Records a thing in the state file before it is made.
record() { echo "$*" >>"$STATE"; }

crash_point() {
    if [[ ${DRIVE_BED_KILL_AT:-} == "$1" ]]; then
        kill -KILL $$
    fi
}

# Stops every process in a blkio group (TERM, then KILL), so its mounts can go.
stop_group() {
    local cg=$1 pids tries
    for tries in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        pids=$(cat "$cg/cgroup.procs" 2>/dev/null || true)
        [[ -z $pids ]] && return 0
        if ((tries == 1)); then
            kill -TERM $pids 2>/dev/null || true
        elif ((tries == 10)); then
            kill -KILL $pids 2>/dev/null || true
        fi
        sleep 0.2
    done
    echo "drive-bed: processes still in $cg: $pids" >&2
    return 1
}

# Detaches every loop device over file $1, and waits until they are gone: a device that
# someone still holds open (udev probing it after the unmount) is only marked for
# autoclear by `losetup -d` and detaches when the last holder closes it, so the file
# must not be removed, nor the bed called down, before then.
detach_file() {
    local f=$1 dev devs tries
    [[ -e $f ]] || return 0
    for ((tries = 0; tries < 100; tries++)); do
        devs=$(losetup -n -O NAME -j "$f" 2>/dev/null)
        [[ -z $devs ]] && return 0
        for dev in $devs; do
            losetup -d "$dev" 2>/dev/null || true
        done
        sleep 0.1
    done
    echo "drive-bed: loop device(s) $devs over $f still attached after 10 s" >&2
    return 1
}

# Whether $1 is a mount point, from /proc/mounts (not `mountpoint`, which stats the folder
# and so takes a shut-down file system, whose stat fails with EIO, for a plain folder).
is_mounted() {
    awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts
}

unmount() {
    local m=$1 tries
    for tries in 1 2 3 4 5 6 7 8 9 10; do
        is_mounted "$m" || return 0
        umount "$m" 2>/dev/null && return 0
        sleep 0.2
    done
    umount "$m" # the last try, with its message
}

# Tears down bed $1: what its state file lists, then anything else carrying its name.
# Idempotent; returns non-zero (keeping the state file) if something could not go.
teardown() {
    local name=$1 state ok=0 kind a b m f
    state=$(state_of "$name")
    local cg="$BLKIO/$name" base="$MOUNT_BASE/$name"
    if [[ -d $cg ]]; then
        stop_group "$cg" || ok=1
    fi
    # Mounts: listed ones, and any under the bed's folder (deepest first).
    local mounts=()
    if [[ -f $state ]]; then
        while read -r kind a b; do
            [[ $kind == mount ]] && mounts+=("$a")
        done <"$state"
    fi
    while read -r _ m _; do
        m=$(printf '%b' "$m")
        [[ $m == "$base"/* ]] && mounts+=("$m")
    done </proc/mounts
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        unmount "${mounts[i]}" || ok=1
    done
    # Loop devices and their files.
    local files=()
    if [[ -f $state ]]; then
        while read -r kind a b; do
            [[ $kind == file ]] && files+=("$a")
        done <"$state"
    fi
    for f in "$SHM/$name"-*.img; do
        [[ -e $f ]] && files+=("$f")
    done
    for f in "${files[@]}"; do
        detach_file "$f" || ok=1
        rm -f "$f" || ok=1
    done
    # Folders and the group.
    if [[ -d $base ]]; then
        for m in "$base"/*; do
            [[ -d $m ]] && ! is_mounted "$m" && rmdir "$m" 2>/dev/null
        done
        rmdir "$base" 2>/dev/null || ok=1
    fi
    if [[ -d $cg ]]; then
        rmdir "$cg" || ok=1
    fi
    if ((ok == 0)); then
        rm -f "$state"
    else
        echo "drive-bed: could not remove all of bed '$name'; run 'drive-bed.sh down --name $name' again" >&2
    fi
    return $ok
}

on_exit() {
    local rc=$?
    if [[ -n $CLEANUP_NAME ]]; then
        local name=$CLEANUP_NAME
        CLEANUP_NAME=""
        teardown "$name" || ((rc != 0)) || rc=1
    fi
    exit $rc
}

on_signal() {
    local code=$1
    trap '' INT TERM
    if [[ -n $CHILD ]]; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    exit "$code"
}

trap on_exit EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# Bytes per second from MB/s (decimal MB, as dd and fio print them).
bps() {
    [[ $1 =~ ^[0-9]+$ ]] || die "invalid rate '$1' (MB/s, an integer)"
    echo $(($1 * 1000000))
}

# up: parses options into globals and makes the bed.
UP_N="" UP_FS=ext4 UP_SIZES=() UP_RATES=() UP_BACKING=sparse UP_NAME=${DRIVE_BED_NAME:-}
parse_up() {
    [[ $# -ge 1 ]] || die "up: how many drives?"
    UP_N=$1
    shift
    [[ $UP_N =~ ^[1-9][0-9]*$ ]] && ((UP_N <= 64)) || die "up: N must be 1..64, not '$UP_N'"
    local rate="" rates="" size="" sizes=""
    while [[ $# -gt 0 ]]; do
        case $1 in
        --fs) UP_FS=${2:?--fs needs a value}; shift 2 ;;
        --size) size=${2:?--size needs a value}; shift 2 ;;
        --sizes) sizes=${2:?--sizes needs a value}; shift 2 ;;
        --rate-mbps) rate=${2:?--rate-mbps needs a value}; shift 2 ;;
        --rates) rates=${2:?--rates needs a value}; shift 2 ;;
        --backing) UP_BACKING=${2:?--backing needs a value}; shift 2 ;;
        --name) UP_NAME=${2:?--name needs a value}; shift 2 ;;
        *) die "up: unknown option '$1'" ;;
        esac
    done
    case $UP_FS in ext4 | xfs | btrfs | ext2) ;; *) die "up: --fs must be ext4, xfs, btrfs or ext2, not '$UP_FS'" ;; esac
    case $UP_BACKING in sparse | allocated) ;; *) die "up: --backing must be sparse or allocated, not '$UP_BACKING'" ;; esac
    [[ -n $size && -n $sizes ]] && die "up: give --size or --sizes, not both"
    [[ -n $rate && -n $rates ]] && die "up: give --rate-mbps or --rates, not both"
    local i list
    if [[ -n $sizes ]]; then
        IFS=, read -r -a list <<<"$sizes"
        [[ ${#list[@]} -eq $UP_N ]] || die "up: --sizes lists ${#list[@]} sizes for $UP_N drives"
        UP_SIZES=("${list[@]}")
    else
        for ((i = 0; i < UP_N; i++)); do UP_SIZES+=("${size:-2G}"); done
    fi
    for i in "${UP_SIZES[@]}"; do
        [[ $i =~ ^[0-9]+[KMG]?$ ]] || die "up: a size must be like 512M or 2G, not '$i'"
    done
    if [[ -n $rates ]]; then
        IFS=, read -r -a list <<<"$rates"
        [[ ${#list[@]} -eq $UP_N ]] || die "up: --rates lists ${#list[@]} rates for $UP_N drives"
        for i in "${list[@]}"; do UP_RATES+=("$(bps "$i")"); done
    else
        for ((i = 0; i < UP_N; i++)); do UP_RATES+=("$(bps "${rate:-0}")"); done
    fi
    [[ -n $UP_NAME ]] || UP_NAME="drive-bed-$$-$RANDOM"
    valid_name "$UP_NAME"
}

make_bed() {
    local name=$UP_NAME
    command -v "mkfs.$UP_FS" >/dev/null || die "mkfs.$UP_FS is not installed"
    [[ -d $BLKIO ]] || die "no cgroup v1 blkio controller at $BLKIO"
    STATE=$(state_of "$name")
    mkdir -p "$STATE_DIR"
    if [[ -e $STATE || -e $BLKIO/$name || -e $MOUNT_BASE/$name ]]; then
        die "a bed named '$name' exists already (drive-bed.sh down --name $name)"
    fi
    CLEANUP_NAME=$name
    : >"$STATE"
    local cg="$BLKIO/$name" base="$MOUNT_BASE/$name"
    record name "$name"
    record cgroup "$cg"
    mkdir "$cg"
    record base "$base"
    mkdir -p "$base"
    local lines=() drives=() i f dev majmin m
    for ((i = 0; i < UP_N; i++)); do
        f="$SHM/$name-$i.img"
        record file "$f"
        truncate -s "${UP_SIZES[i]}" "$f"
        if [[ $UP_BACKING == allocated ]]; then
            fallocate -l "${UP_SIZES[i]}" "$f" || die "cannot allocate ${UP_SIZES[i]} for $f (is $SHM large enough?)"
        fi
        crash_point file
        dev=$(losetup --find --show "$f")
        record loop "$dev" "$f"
        crash_point loop
        case $UP_FS in
        ext4) mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 "$dev" ;;
        ext2) mkfs.ext2 -q -F -E nodiscard "$dev" ;;
        xfs) mkfs.xfs -q -f -K "$dev" ;;
        btrfs) mkfs.btrfs -q -f -K "$dev" >/dev/null ;;
        esac
        crash_point mkfs
        m="$base/d$i"
        mkdir "$m"
        record mount "$m"
        mount "$dev" "$m"
        crash_point mount
        majmin=$(cat "/sys/class/block/${dev#/dev/}/dev")
        if ((UP_RATES[i] > 0)); then
            echo "$majmin ${UP_RATES[i]}" >"$cg/blkio.throttle.write_bps_device"
            echo "$majmin ${UP_RATES[i]}" >"$cg/blkio.throttle.read_bps_device"
        fi
        crash_point throttle
        record drive "$i" "$m" "$dev" "$majmin" "${UP_RATES[i]}"
        lines+=("drive=$i dev=$dev majmin=$majmin mount=$m file=$f fs=$UP_FS rate_bps=${UP_RATES[i]} size=${UP_SIZES[i]}")
        drives+=("$m")
    done
    local joined
    joined=$(IFS=:; echo "${drives[*]}")
    record drives "$joined"
    echo "name=$name"
    echo "state=$STATE"
    echo "cgroup=$cg"
    printf '%s\n' "${lines[@]}"
    echo "drives=$joined"
}

# The bed's group and drives, from its state file.
load_bed() {
    local name=$1 kind a b
    STATE=$(state_of "$name")
    [[ -f $STATE ]] || die "no bed named '$name' (no $STATE)"
    BED_CGROUP="" BED_DRIVES=""
    while read -r kind a b; do
        case $kind in
        cgroup) BED_CGROUP=$a ;;
        drives) BED_DRIVES=$a ;;
        esac
    done <"$STATE"
    [[ -n $BED_DRIVES && -d $BED_CGROUP ]] || die "bed '$name' is not complete (an interrupted up?); drive-bed.sh down --name $name"
}

# Starts CMD inside the bed's group, in the background (so a signal to this script is
# handled at once); sets CHILD.
start_in_bed() {
    local name=$1
    shift
    load_bed "$name"
    exec 3<&0
    (
        echo "$BASHPID" >"$BED_CGROUP/cgroup.procs"
        export SWAPPER_DRIVES=$BED_DRIVES DRIVE_BED_NAME=$name DRIVE_BED_CGROUP=$BED_CGROUP
        trap - EXIT INT TERM
        exec "$@"
    ) <&3 &
    CHILD=$!
}

wait_child() {
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return $rc
}

# Splits "[--name NAME] -- CMD..." for run.
parse_run() {
    RUN_NAME=${DRIVE_BED_NAME:-}
    while [[ $# -gt 0 && $1 != -- ]]; do
        case $1 in
        --name) RUN_NAME=${2:?--name needs a value}; shift 2 ;;
        *) die "run: unknown option '$1' (the command follows --)" ;;
        esac
    done
    [[ $# -ge 2 && $1 == -- ]] || die "run: no command (drive-bed.sh run --name NAME -- CMD...)"
    shift
    RUN_CMD=("$@")
    [[ -n $RUN_NAME ]] || die "run: which bed? (--name NAME)"
    valid_name "$RUN_NAME"
}

name_only() {
    NAME=${DRIVE_BED_NAME:-}
    while [[ $# -gt 0 ]]; do
        case $1 in
        --name) NAME=${2:?--name needs a value}; shift 2 ;;
        *) die "unknown option '$1'" ;;
        esac
    done
    [[ -n $NAME ]] || die "which bed? (--name NAME)"
    valid_name "$NAME"
}

[[ $# -ge 1 ]] || usage
cmd=$1
shift
case $cmd in
up)
    parse_up "$@"
    make_bed
    CLEANUP_NAME="" # made: it stays until down
    ;;
run)
    parse_run "$@"
    start_in_bed "$RUN_NAME" "${RUN_CMD[@]}"
    rc=0
    wait_child || rc=$?
    exit $rc
    ;;
down)
    name_only "$@"
    teardown "$NAME"
    ;;
status)
    name_only "$@"
    STATE=$(state_of "$NAME")
    [[ -f $STATE ]] || { echo "drive-bed: no bed named '$NAME'" >&2; exit 1; }
    cat "$STATE"
    ;;
with)
    up_args=()
    while [[ $# -gt 0 && $1 != -- ]]; do up_args+=("$1"); shift; done
    [[ $# -ge 2 ]] || die "with: no command (drive-bed.sh with N [up options] -- CMD...)"
    shift
    parse_up "${up_args[@]}"
    make_bed
    rc=0
    start_in_bed "$UP_NAME" "$@"
    wait_child || rc=$?
    exit $rc # on_exit tears the bed down
    ;;
-h | --help | help) usage ;;
*) die "unknown command '$cmd' (up, run, down, with, status)" ;;
esac
