#!/usr/bin/env bash
# Runs, as written, every ```sh block of README.md that follows a
# "<!-- run by scripts/readme-commands.sh -->" line, each in its own fresh copy of the
# clone (the files git tracks or would track, as a fresh clone has them), with
# CARGO_TARGET_DIR and SWAPPER_LIBRARY unset as on a newcomer's machine. The copy's
# target/ is a link to this clone's target folder, so the release build is reused.
# Also checks that the README's C quick start is examples-c/quickstart.c, whole.
# Prints one line per block and "N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$target"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

passed=0
failed=0

# The C quick start shown in the README is the example file, byte for byte.
shown=$(awk '/^`examples-c\/quickstart.c` \(shown whole\):$/ {f = 1; next}
             f && /^```c$/ {c = 1; next}
             c && /^```$/ {exit}
             c {print}' README.md)
if [ "$shown" == "$(cat examples-c/quickstart.c)" ]; then
    echo "README C quick start is examples-c/quickstart.c: ok"
    passed=$((passed + 1))
else
    echo "README C quick start differs from examples-c/quickstart.c: FAILED"
    failed=$((failed + 1))
fi

# Split the marked blocks into block-N.sh files.
awk -v out="$scratch" '
    /^<!-- run by scripts\/readme-commands.sh -->$/ {marked = 1; next}
    marked && /^```sh$/ {n++; file = out "/block-" n ".sh"; marked = 0; inblock = 1; next}
    inblock && /^```$/ {inblock = 0; close(file); next}
    inblock {print > file}
    {marked = 0}
' README.md
blocks=("$scratch"/block-*.sh)
if [ ! -e "${blocks[0]}" ]; then
    echo "no marked sh block in README.md: FAILED"
    exit 1
fi

for block in "${blocks[@]}"; do
    name=$(basename "$block" .sh)
    clone="$scratch/clone-$name"
    mkdir "$clone"
    git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - | tar -xf - -C "$clone"
    ln -s "$target" "$clone/target"
    echo "-- $name (README lines: $(head -c 60 "$block" | head -n 1)...)"
    if (cd "$clone" && env -u CARGO_TARGET_DIR -u SWAPPER_LIBRARY bash -euo pipefail "$block"); then
        echo "$name: ok"
        passed=$((passed + 1))
    else
        echo "$name: FAILED"
        cat "$block"
        failed=$((failed + 1))
    fi
done

echo "readme-commands: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
