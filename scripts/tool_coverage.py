#!/usr/bin/env python3
"""Checks that scripts/prerequisites.sh names every external command the tests call.

Scans, in the clone:
  - Rust (tests/, tools/, src/, build.rs): `Command::new("x")`, `have("x")`, and every
    `Command::new(expr)` whose argument is not a literal, which must be in DYNAMIC below
    with the commands it can run;
  - Python (python/, tools/): `subprocess.*([ "x", ...` and `shutil.which("x")`, and every
    subprocess call whose program is not a literal (same DYNAMIC rule);
  - shell (scripts/*.sh, .ci/run, the Makefile's recipes, README blocks run by
    scripts/readme-commands.sh): the first word of every simple command, after the
    wrappers (env, sudo, timeout, xargs, trap '...', bash -c '...');
and fails, naming file and line, for a command that is neither in the list nor in the
allow-lists below. Usage: tool_coverage.py [ROOT] (default: the clone of this script).
python/tests/test_tool_coverage.py runs the scanners on fixtures, so the check can fail.
"""

import os
import re
import sys

# Shell builtins and keywords (bash): never looked up on PATH.
BUILTINS = set(
    """. : [ [[ ]] alias bg bind break builtin caller case cd command compgen complete continue
    declare dirs disown do done echo elif else enable esac eval exec exit export false fc fg fi
    for function getopts hash help history if in jobs kill let local logout mapfile popd printf
    pushd pwd read readarray readonly return select set shift shopt source suspend test then
    time times trap true type typeset ulimit umask unalias unset until wait while { } !""".split()
)

# Commands the build or the tests create, not the machine (relative paths are skipped
# anyway; these are the bare names).
BUILT = {
    "pip",  # a virtual environment's, after `. .venv/bin/activate` (README)
}

# Used only when present, and the script checks `command -v` first.
OPTIONAL = {
    "sudo",  # prerequisites.sh: to install as a user with passwordless sudo
    "apt-get",  # prerequisites.sh: to install on Debian and derivatives
}

# Call sites whose program is an expression, with the commands it can be: a new
# dynamic call site fails the check until it is listed here. "built" = made by the
# build or the test itself (an example binary, the test's own executable, a venv's python).
DYNAMIC = {
    ("tests/common/mod.rs", "tool"): ["have"],  # have("x"): every literal x is checked
    ("tests/c_examples.rs", "compiler"): ["cc", "c++", "mpicc"],
    ("tests/c_examples.rs", "bin"): ["built"],
    ("tests/c_examples.rs", "&bin"): ["built"],
    ("tests/install.rs", "bin"): ["built"],
    ("tests/preallocate.rs", "mkfs[0]"): ["mkfs.ext4", "mkfs.ext2", "mkfs.xfs"],
    ("python/setup.py", "cargo"): ["cargo"],
    ("python/tests/test_cffi.py", "cc"): ["cc"],
    ("python/tests/test_header_layout.py", "cc"): ["cc"],
    ("python/tests/test_header_layout.py", "str(exe)"): ["built"],
}
DYNAMIC_ANY_FILE = {
    "std::env::current_exe()": "built",  # a test re-running itself
    "std::env::current_exe().unwrap()": "built",
    'env!("CARGO_BIN_EXE_swapper-bench")': "built",
    "sys.executable": "built",  # the running venv's python
}

# Wrappers whose argument is the command really run: name -> options that take a value.
WRAPPERS = {
    "env": {"-u", "--unset", "-C", "--chdir"},
    "sudo": {"-u", "-g"},
    "timeout": {"-s", "-k", "--signal", "--kill-after"},
    "nice": {"-n"},
    "xargs": {"-n", "-I", "-d", "-L", "-P", "-s", "-E"},
    "exec": set(),
    "time": set(),
    "nohup": set(),
    "command": set(),
}


def prerequisites(root):
    """The commands scripts/prerequisites.sh lists (its SWAPPER_APT_COMMANDS table and
    SWAPPER_RUST_COMMANDS)."""
    text = open(os.path.join(root, "scripts/prerequisites.sh"), encoding="utf-8").read()
    return parse_prerequisites(text)


def parse_prerequisites(text):
    table = re.search(r"^SWAPPER_APT_COMMANDS='(.*?)'", text, re.M | re.S)
    rust = re.search(r"^SWAPPER_RUST_COMMANDS='(.*?)'", text, re.M | re.S)
    if not table or not rust:
        raise SystemExit("tool_coverage: no SWAPPER_APT_COMMANDS or SWAPPER_RUST_COMMANDS in prerequisites.sh")
    names = set(rust.group(1).split())
    for line in table.group(1).splitlines():
        words = line.split()
        names.update(words[1:])
    return names


# -- Rust


def rust_commands(path, text):
    """(line, command) pairs of a Rust file; dynamic call sites become ("?expr", ...)."""
    out = []
    for m in re.finditer(r"Command::new\(\s*((?:[^()]|\([^()]*\))*)\)", text):
        line = text.count("\n", 0, m.start()) + 1
        arg = m.group(1).strip()
        lit = re.fullmatch(r'"([^"]+)"', arg)
        out.append((line, lit.group(1) if lit else "?" + arg))
    for m in re.finditer(r'\bhave\(\s*"([^"]+)"\s*\)', text):
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


# -- Python


def python_commands(path, text):
    out = []
    for m in re.finditer(r"subprocess\.(?:run|call|check_call|check_output|Popen)\(\s*\[\s*([^,\]]+)", text):
        line = text.count("\n", 0, m.start()) + 1
        arg = m.group(1).strip()
        lit = re.fullmatch(r"""["']([^"']+)["']""", arg)
        out.append((line, lit.group(1) if lit else "?" + arg))
    for m in re.finditer(r"""shutil\.which\(\s*["']([^"']+)["']""", text):
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    for m in re.finditer(r"os\.(?:system|popen|exec\w*)\(", text):
        out.append((text.count("\n", 0, m.start()) + 1, "?os." + m.group(0)))
    return out


# -- shell


def _balanced(text, i, open_ch="(", close_ch=")"):
    """Index just past the `close_ch` matching the `open_ch` before i (quotes respected)."""
    depth = 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'":
            j = text.find("'", i + 1)
            i = len(text) if j < 0 else j + 1
            continue
        if c == '"':
            i = _dquote_end(text, i + 1)
            continue
        if c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def _dquote_end(text, i):
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        if text.startswith("$(", i):
            i = _balanced(text, i + 2)
            continue
        i += 1
    return i


def shell_commands(text, first_line=1):
    """(line, first word) of every simple command of shell `text`, with the commands in
    $(...), `...`, "$(...)", trap '...' and bash -c '...' too. Words that are not plain
    names (a $variable, a path with /) are left out: they are not looked up on PATH."""
    commands = []  # (line, [words]) ; words: (text, quoted)
    words = []
    word = ""
    quoted = False
    line = first_line
    cmd_line = line
    i = 0
    n = len(text)
    nested = []  # (line, text) to scan recursively
    heredocs = []

    def end_word():
        nonlocal word, quoted
        if word or quoted:
            words.append((word, quoted))
        word, quoted = "", False

    def end_command():
        nonlocal words
        end_word()
        if words:
            commands.append((cmd_line, words))
        words = []

    while i < n:
        c = text[i]
        if not words and not word:
            cmd_line = line
        if c == "\\" and i + 1 < n:
            if text[i + 1] == "\n":
                line += 1
            else:
                word += text[i + 1]
            i += 2
            continue
        if c == "#" and not word:
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "'":
            j = text.find("'", i + 1)
            j = n if j < 0 else j
            word += "\x00" + text[i + 1 : j]  # \x00 marks quoted content
            quoted = True
            line += text.count("\n", i, j)
            i = j + 1
            continue
        if c == '"':
            j = _dquote_end(text, i + 1)
            inner = text[i + 1 : j - 1]
            for m in re.finditer(r"\$\(", inner):
                if inner.startswith("$((", m.start()):
                    continue
                e = _balanced(inner, m.end())
                nested.append((line + inner.count("\n", 0, m.start()), inner[m.end() : e - 1]))
            word += "\x00" + inner
            quoted = True
            line += text.count("\n", i, j)
            i = j
            continue
        if not word and (text.startswith("((", i) or text.startswith("[[ ", i)):
            # An arithmetic command ((...)) (also for ((...))) or a test [[ ... ]]: operands
            # and operators, never a command looked up on PATH.
            if text.startswith("((", i):
                j = _balanced(text, i + 2)
                j = j + 1 if text.startswith(")", j) else j
            else:
                j = text.find("]]", i + 3)
                j = n if j < 0 else j + 2
            words.append(("[[", False))
            line += text.count("\n", i, j)
            i = j
            continue
        if text.startswith("$((", i):
            j = _balanced(text, i + 3)
            j = _balanced(text, j) if j < n and text[j - 1] == ")" and text.startswith(")", j) else j
            word += "$"
            line += text.count("\n", i, j)
            i = j
            continue
        if text.startswith("$(", i):
            j = _balanced(text, i + 2)
            nested.append((line, text[i + 2 : j - 1]))
            word += "$"
            line += text.count("\n", i, j)
            i = j
            continue
        if text.startswith("${", i):
            j = _balanced(text, i + 2, "{", "}")
            word += "$"
            i = j
            continue
        if c == "`":
            j = text.find("`", i + 1)
            j = n if j < 0 else j
            nested.append((line, text[i + 1 : j]))
            word += "$"
            i = j + 1
            continue
        if c in " \t":
            end_word()
            i += 1
            continue
        if c == "\n":
            end_command()
            line += 1
            i += 1
            while heredocs:
                delim = heredocs.pop(0)
                while i < n:
                    j = text.find("\n", i)
                    j = n if j < 0 else j
                    body_line = text[i:j]
                    i = j + 1
                    line += 1
                    if body_line.strip() == delim:
                        break
            continue
        if text.startswith("<<", i) and not text.startswith("<<<", i):
            end_word()
            m = re.match(r"<<-?\s*['\"]?(\w+)['\"]?", text[i:])
            if m:
                heredocs.append(m.group(1))
                i += m.end()
                continue
        if c in "<>":
            # A redirection (2>&1, >file): its fd and target are not commands.
            if word.isdigit():
                word = ""
            end_word()
            m = re.match(r"[<>]+&?\s*(\"[^\"]*\"|'[^']*'|[^\s;|&()]+)?", text[i:])
            i += m.end()
            continue
        if c == "(" and word.endswith("="):
            # An array assignment, name=(a b c): values, not commands.
            j = _balanced(text, i + 1)
            word += "$"
            line += text.count("\n", i, j)
            i = j
            continue
        if c in ";&|()":
            end_command()
            commands.append((line, [(c, False)]))  # a separator, for the case logic
            i += 1
            continue
        word += c
        i += 1
    end_command()

    found = []
    in_case = 0
    expect_pattern = False
    prev_sep = None
    for cmd_line, ws in commands:
        first = ws[0][0]
        if len(ws) == 1 and first in (";", "&", "|", "(", ")"):
            if first == ")" and expect_pattern:
                expect_pattern = False
            if first == ";" and prev_sep == ";" and in_case:
                expect_pattern = True
            prev_sep = first
            continue
        prev_sep = None
        if expect_pattern:
            if first == "esac":
                in_case -= 1
                expect_pattern = False
            continue  # a case pattern
        if first == "case":
            in_case += 1
            expect_pattern = True
            continue
        if first == "esac":
            in_case -= 1
            continue
        found.extend(_command_words(cmd_line, ws, nested))
    for nested_line, body in nested:
        found.extend(shell_commands(body, nested_line))
    return found


def _command_words(line, ws, nested):
    words = [w for w, _ in ws]
    i = 0
    while i < len(words):
        w = words[i]
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=", w):  # an assignment
            i += 1
            continue
        if w in ("if", "then", "else", "elif", "do", "while", "until", "!", "{", "time"):
            i += 1
            continue
        if w in ("for", "select", "function", "done", "fi", "}", "esac", "in"):
            return []
        break
    if i >= len(words):
        return []
    w = words[i]
    if w == "trap" and i + 1 < len(words) and not words[i + 1].startswith("-"):
        nested.append((line, words[i + 1].replace("\x00", "")))
        return []
    if w == "trap":
        return []  # trap - SIGNALS, trap -p: resets and questions, nothing run
    if w in ("bash", "sh") and "-c" in words[i + 1 :]:
        k = words.index("-c", i + 1)
        if k + 1 < len(words):
            nested.append((line, words[k + 1].replace("\x00", "")))
        return [(line, w)]
    if w == "command" and i + 1 < len(words) and words[i + 1].startswith("-"):
        return []  # command -v x: a question, not a run
    if w in WRAPPERS:
        out = [] if w in BUILTINS or w in ("exec", "time", "command") else [(line, w)]
        takes_value = WRAPPERS[w]
        j = i + 1
        while j < len(words):
            a = words[j]
            if a in takes_value:
                j += 2
            elif a.startswith("-") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", a):
                j += 1
            elif w == "timeout" and re.fullmatch(r"[0-9.]+[smhd]?", a):
                j += 1
            else:
                break
        if j < len(words):
            out.extend(_command_words(line, [(x, False) for x in words[j:]], nested))
        return out
    # A function definition: name() { ... }
    return [(line, w)]


def plain(word):
    """The word if it is a command name looked up on PATH, else None."""
    if "\x00" in word:
        word = word.replace("\x00", "")
        if "$" in word:
            return None
    if not word or "$" in word or "/" in word or "=" in word:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", word):
        return None
    return word


def shell_functions(text):
    return set(re.findall(r"^\s*(?:function\s+)?([A-Za-z_][\w-]*)\s*\(\)", text, re.M))


def makefile_recipes(text):
    """The recipe lines of a Makefile (tab-indented, with `\\` continuations), make's
    own $(...) functions and variables replaced by a placeholder word."""
    out = []
    lines = text.split("\n")
    k = 0
    while k < len(lines):
        ln = lines[k]
        start = k + 1
        if ln.startswith("\t"):
            body = ln[1:]
            while body.endswith("\\") and k + 1 < len(lines):
                k += 1
                body = body + "\n" + lines[k].lstrip("\t")
            body = body.lstrip("@-+")
            body = re.sub(r"\$\(([A-Z_]+)\)", lambda m: "MAKE_" + m.group(1), body)
            body = body.replace("$$", "$")
            out.append((start, body))
        k += 1
    return out


# -- the check


def readme_blocks(text):
    out = []
    lines = text.split("\n")
    k = 0
    while k < len(lines):
        if lines[k] == "<!-- run by scripts/readme-commands.sh -->" and k + 1 < len(lines) and lines[k + 1] == "```sh":
            start = k + 2
            j = start
            while j < len(lines) and lines[j] != "```":
                j += 1
            out.append((start + 1, "\n".join(lines[start:j])))
            k = j
        k += 1
    return out


def scan(root):
    """(file, line, command) for every command call found under root."""
    calls = []

    def rel(p):
        return os.path.relpath(p, root)

    def walk(sub, ext):
        base = os.path.join(root, sub)
        if os.path.isfile(base):
            yield base
            return
        for d, dirs, files in os.walk(base):
            dirs[:] = [x for x in dirs if x not in ("target", "__pycache__", ".git", "node_modules")]
            for f in sorted(files):
                if f.endswith(ext):
                    yield os.path.join(d, f)

    for sub in ("tests", "tools", "src", "build.rs"):
        for p in walk(sub, ".rs"):
            for line, cmd in rust_commands(p, open(p, encoding="utf-8").read()):
                calls.append((rel(p), line, cmd))
    for sub in ("python", "tools"):
        for p in walk(sub, ".py"):
            for line, cmd in python_commands(p, open(p, encoding="utf-8").read()):
                calls.append((rel(p), line, cmd))
    shell_files = sorted(walk("scripts", ".sh")) + [os.path.join(root, ".ci/run")]
    shell_files = [p for p in shell_files if os.path.isfile(p)]
    # Functions any of the scripts define (a script may call those of one it sources).
    funcs = set()
    for p in shell_files:
        funcs |= shell_functions(open(p, encoding="utf-8").read())
    for p in shell_files:
        text = open(p, encoding="utf-8").read()
        for line, cmd in shell_commands(text):
            cmd = plain(cmd)
            if cmd and cmd not in funcs:
                calls.append((rel(p), line, cmd))
    makefile = os.path.join(root, "Makefile")
    if os.path.isfile(makefile):
        for start, body in makefile_recipes(open(makefile, encoding="utf-8").read()):
            for line, cmd in shell_commands(body, start):
                cmd = plain(cmd)
                if cmd and not cmd.startswith("MAKE_"):
                    calls.append(("Makefile", line, cmd))
            for var in re.findall(r"MAKE_([A-Z_]+)", body.split()[0] if body.split() else ""):
                calls.append(("Makefile", start, {"CARGO": "cargo", "INSTALL": "install"}.get(var, "?" + var)))
    readme = os.path.join(root, "README.md")
    if os.path.isfile(readme):
        for start, body in readme_blocks(open(readme, encoding="utf-8").read()):
            for line, cmd in shell_commands(body, start):
                cmd = plain(cmd)
                if cmd:
                    calls.append(("README.md", line, cmd))
    return calls


def problems(calls, listed):
    """Messages for calls that the list does not cover."""
    out = []
    for path, line, cmd in calls:
        if cmd.startswith("?"):
            expr = cmd[1:]
            names = DYNAMIC.get((path, expr)) or ([DYNAMIC_ANY_FILE[expr]] if expr in DYNAMIC_ANY_FILE else None)
            if names is None:
                out.append(
                    f"{path}:{line}: runs a program named by the expression `{expr}`: list it, with the "
                    "commands it can be, in DYNAMIC of scripts/tool_coverage.py"
                )
                continue
            for name in names:
                if name not in ("built", "have") and name not in listed:
                    out.append(f"{path}:{line}: `{expr}` can be {name}, which scripts/prerequisites.sh does not list")
            continue
        if cmd in listed or cmd in BUILTINS or cmd in BUILT or cmd in OPTIONAL:
            continue
        out.append(f"{path}:{line}: runs {cmd}, which scripts/prerequisites.sh does not list")
    return out


def main(argv):
    root = os.path.abspath(argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    listed = prerequisites(root)
    calls = scan(root)
    found = problems(calls, listed)
    for msg in found:
        print(msg)
    distinct = len({c for _, _, c in calls})
    if found:
        print(f"0 passed, 1 failed: tool coverage ({len(found)} commands the prerequisite list misses)")
        return 1
    print(f"1 passed, 0 failed: tool coverage ({len(calls)} calls of {distinct} commands, all in scripts/prerequisites.sh)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
