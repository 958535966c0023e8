"""scripts/tool_coverage.py, the check that scripts/prerequisites.sh names every command
the tests call, on fixtures: it must find each kind of call, and fail on a missing one."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import tool_coverage as tc  # noqa: E402

PREREQUISITES = """
SWAPPER_APT_COMMANDS='
coreutils  cat rm
fio        fio
'
SWAPPER_RUST_COMMANDS='cargo rustc'
"""


# Each kind of call a script makes, and text that looks like one but is not.
SCRIPT = r"""#!/bin/bash
# a comment naming notacommand
set -euo pipefail
log=$(mktemp)
trap 'rm -rf "$log"' EXIT
opts=(+nightly --quiet)
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
x86_64-linux | aarch64-linux) ;;
*) echo "no" >&2; exit 1 ;;
esac
env -u CARGO_TARGET_DIR FOO=1 cargo test 2>&1 | tee -a "$log"
git ls-files -z | xargs -0 tar -cf - >/dev/null
echo "took $(( $(date +%s) - 3 )) s, $(wc -l <"$log") lines"
bash -c 'frob --x' && timeout 5 fio --version
python3 -c '
import os
print(os.getcwd())
'
cat <<EOF
heredoc-word is text
EOF
helper() { echo hi; }
helper
./scripts/other.sh "$log"
"$venv/bin/python" -m pytest
"""


def shell_names(text):
    return sorted({c for _, c in tc.shell_commands(text) if tc.plain(c)})


def test_shell_scanner_finds_every_kind_of_call_and_nothing_else():
    got = set(shell_names(SCRIPT))
    expected = {
        "set", "mktemp", "rm", "rustc", "sed", "echo", "exit", "env", "cargo", "tee",
        "git", "xargs", "tar", "date", "wc", "bash", "frob", "timeout", "fio", "python3", "cat", "helper",
    }
    assert got == expected, (got - expected, expected - got)
    # Functions the script defines are not looked up on PATH.
    assert tc.shell_functions(SCRIPT) == {"helper"}


def test_rust_and_python_scanners():
    rust = 'let a = Command::new("fio").arg("x");\nlet b = Command::new(compiler);\nassert!(have("valgrind"));'
    assert tc.rust_commands("x.rs", rust) == [(1, "fio"), (2, "?compiler"), (3, "valgrind")]
    py = 'subprocess.run(["findmnt", "-n"])\nsubprocess.Popen(\n    [sys.executable, "w"])\nshutil.which("gcc")'
    assert tc.python_commands("x.py", py) == [(1, "findmnt"), (2, "?sys.executable"), (4, "gcc")]


def test_makefile_recipes_and_readme_blocks():
    mk = "all:\n\t@test -f x || { echo no >&2; exit 1; }\n\t$(INSTALL) -d \"$(PREFIX)\"\n"
    bodies = [b for _, b in tc.makefile_recipes(mk)]
    assert bodies == ["test -f x || { echo no >&2; exit 1; }", 'MAKE_INSTALL -d "MAKE_PREFIX"']
    readme = "x\n<!-- run by scripts/readme-commands.sh -->\n```sh\nmake\ncc a.c\n```\n"
    assert tc.readme_blocks(readme) == [(4, "make\ncc a.c")]


def fixture_tree(tmp_path, rust):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "prerequisites.sh").write_text(PREREQUISITES)
    (tmp_path / "scripts" / "run.sh").write_text("#!/bin/bash\ncat x | fio -\nrm -f y\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.rs").write_text(rust)
    return str(tmp_path)


def test_the_check_fails_on_a_command_the_list_lacks(tmp_path, capsys):
    root = fixture_tree(tmp_path, 'fn t() { Command::new("frobnicate").status(); }\n')
    assert tc.main(["tool_coverage.py", root]) == 1
    out = capsys.readouterr().out
    assert "tests/t.rs:1: runs frobnicate, which scripts/prerequisites.sh does not list" in out
    assert "0 passed, 1 failed" in out


def test_the_check_fails_on_an_unlisted_dynamic_call_site(tmp_path, capsys):
    root = fixture_tree(tmp_path, "fn t(p: &str) { Command::new(p).status(); }\n")
    assert tc.main(["tool_coverage.py", root]) == 1
    assert "runs a program named by the expression `p`" in capsys.readouterr().out


def test_the_check_passes_when_the_list_covers_everything(tmp_path, capsys):
    root = fixture_tree(tmp_path, 'fn t() { Command::new("fio").status(); }\n')
    assert tc.main(["tool_coverage.py", root]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


def test_the_real_list_covers_the_clone(capsys):
    listed = tc.prerequisites(ROOT)
    assert {"cmake", "valgrind", "fio", "mpicc", "mpirun", "mkfs.xfs", "mkfs.btrfs", "readelf", "losetup"} <= listed
    assert tc.main(["tool_coverage.py", ROOT]) == 0, capsys.readouterr().out


def test_arithmetic_tests_and_trap_resets_are_not_commands():
    text = """
for ((i = n - 1; i >= 0; i--)); do sleep 1; done
((tries == 1)) && kill -TERM $pids
[[ -n $a && -e $b ]] || truncate -s 0 f
[[ $x =~ ^[0-9]+$ ]] && ((x <= 64)) || die "bad"
trap - EXIT INT TERM
trap 'rmdir "$d"' EXIT
"""
    assert shell_names(text) == ["die", "kill", "rmdir", "sleep", "truncate"]
