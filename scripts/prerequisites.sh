# The one list of what the tests need from the machine, and the check that installs what
# is missing. Sourced by scripts/test.sh (which .ci/run calls), first thing; read by
# scripts/tool_coverage.py, which fails the test run when a test, script or tool calls a
# command this list does not name.
#
# swapper_prerequisites checks everything in about a second. What is missing it installs
# when it can (root, or sudo without a password: apt-get, non-interactive; rustup for
# Rust's components); otherwise it stops with one line naming what to install and the
# command that does it. It never lets a run fail after minutes of building for want of
# a tool.

# One line per Debian package: the package, then the commands the tests run from it.
SWAPPER_APT_COMMANDS='
gcc            cc gcc
g++            c++
make           make
pkg-config     pkg-config
cmake          cmake
binutils       readelf
valgrind       valgrind
fio            fio
libopenmpi-dev mpicc
openmpi-bin    mpirun
xfsprogs       mkfs.xfs
btrfs-progs    mkfs.btrfs
e2fsprogs      mkfs.ext4 mkfs.ext2 chattr
ninja-build    ninja
util-linux     losetup findmnt fallocate
mount          mount umount
python3        python3
bash           bash
git            git
tar            tar
findutils      xargs find
mawk           awk
sed            sed
grep           grep
coreutils      basename cat chmod cp cut date dirname env head id install ln mkdir mktemp rm rmdir sleep sort sync tail tee tr truncate wc
'
# Files that are not commands: a package, then a file it installs.
SWAPPER_APT_FILES='
libaio-dev     /usr/include/libaio.h
'
# Rust (rustup.rs): the commands, and the components clippy and rustfmt.
SWAPPER_RUST_COMMANDS='cargo rustc rustup'

# Prints the packages of $1 (a table above) whose commands or files are missing.
_swapper_missing_packages() {
    local package item
    while read -r package items; do
        [ -n "$package" ] || continue
        for item in $items; do
            case "$item" in
            /*) [ -e "$item" ] ;;
            *) command -v "$item" >/dev/null 2>&1 ;;
            esac || { echo "$package"; break; }
        done
    done <<<"$1"
}

# Prints the Debian packages missing for what is not a plain command: python3's venv and
# ensurepip (python3-venv), and the C compiler's AddressSanitizer and UBSan runtime
# (libgcc-N-dev, N = gcc's major version), which the C examples' sanitized build links.
_swapper_missing_runtimes() {
    if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        echo python3-venv
    fi
    if command -v cc >/dev/null 2>&1; then
        local dir
        dir=$(mktemp -d)
        printf 'int main(void) { return 0; }\n' >"$dir/t.c"
        if ! cc -fsanitize=address,undefined "$dir/t.c" -o "$dir/t" 2>/dev/null || ! "$dir/t"; then
            echo "libgcc-$(cc -dumpversion | cut -d. -f1)-dev"
        fi
        rm -rf "$dir"
    fi
}

# The switch scripts/sanitizers.sh uses for -Zsanitizer=address: the nightly toolchain if
# rustup has one, else RUSTC_BOOTSTRAP=1 on the default one. Fails if neither builds.
_swapper_rust_asan_works() {
    local dir rc=0
    dir=$(mktemp -d)
    printf 'fn main() {}\n' >"$dir/t.rs"
    local host
    host=$(rustc -vV | sed -n 's/^host: //p')
    if rustup run nightly rustc --version >/dev/null 2>&1; then
        rustup run nightly rustc -Zsanitizer=address --target "$host" "$dir/t.rs" -o "$dir/t" 2>/dev/null || rc=1
    else
        RUSTC_BOOTSTRAP=1 rustc -Zsanitizer=address --target "$host" "$dir/t.rs" -o "$dir/t" 2>/dev/null || rc=1
    fi
    rm -rf "$dir"
    return $rc
}

swapper_prerequisites() {
    local tool missing_rust=()
    for tool in $SWAPPER_RUST_COMMANDS; do
        command -v "$tool" >/dev/null 2>&1 || missing_rust+=("$tool")
    done
    if [ ${#missing_rust[@]} -gt 0 ]; then
        echo "prerequisites: ${missing_rust[*]} missing: install Rust with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh" >&2
        return 1
    fi
    local components=()
    cargo clippy --version >/dev/null 2>&1 || components+=(clippy)
    cargo fmt --version >/dev/null 2>&1 || components+=(rustfmt)
    if [ ${#components[@]} -gt 0 ]; then
        echo "prerequisites: rustup component add ${components[*]}"
        rustup component add "${components[@]}" >/dev/null || {
            echo "prerequisites: ${components[*]} missing and rustup could not add them: run rustup component add ${components[*]}" >&2
            return 1
        }
    fi

    local packages
    packages=$( { _swapper_missing_packages "$SWAPPER_APT_COMMANDS"; _swapper_missing_packages "$SWAPPER_APT_FILES"; \
        _swapper_missing_runtimes; } | sort -u | tr '\n' ' ')
    packages=${packages% }
    if [ -n "$packages" ]; then
        local sudo=()
        if [ "$(id -u)" -ne 0 ]; then
            if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
                sudo=(sudo)
            else
                echo "prerequisites: missing $packages: run sudo apt-get install -y $packages (or run as root, and scripts/test.sh installs them)" >&2
                return 1
            fi
        fi
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "prerequisites: missing the Debian packages $packages: install them (or your distribution's equivalents) with its package manager" >&2
            return 1
        fi
        echo "prerequisites: apt-get install $packages"
        # shellcheck disable=SC2086
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null || {
            echo "prerequisites: apt-get install $packages failed: run sudo apt-get install -y $packages" >&2
            return 1
        }
        packages=$( { _swapper_missing_packages "$SWAPPER_APT_COMMANDS"; _swapper_missing_packages "$SWAPPER_APT_FILES"; \
            _swapper_missing_runtimes; } | sort -u | tr '\n' ' ')
        if [ -n "$packages" ]; then
            echo "prerequisites: still missing after apt-get install: $packages" >&2
            return 1
        fi
    fi

    if ! _swapper_rust_asan_works; then
        echo "prerequisites: rustc cannot build with -Zsanitizer=address (scripts/sanitizers.sh): run rustup toolchain install nightly" >&2
        return 1
    fi
    echo "prerequisites: all present"
}
