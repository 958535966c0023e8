"""skip_policy.py: under CI=true a skip is a failure unless it is an allowed one."""

import os
import subprocess
import sys

import skip_policy

HERE = os.path.dirname(os.path.abspath(__file__))


def run_pytest(folder, ci):
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "SWAPPER_NO_SKIPS")}
    env["PYTHONPATH"] = HERE
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "skip_policy", "-p", "no:cacheprovider", "--rootdir", str(folder), str(folder)],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
    )


def test_a_skip_fails_under_ci_and_is_counted_otherwise(tmp_path):
    (tmp_path / "test_fixture.py").write_text("import pytest\n\ndef test_x():\n    pytest.skip('no frobnicator')\n")
    relaxed = run_pytest(tmp_path, ci=False)
    assert relaxed.returncode == 0 and "1 skipped" in relaxed.stdout, relaxed.stdout
    strict = run_pytest(tmp_path, ci=True)
    assert strict.returncode == 1, strict.stdout
    assert "1 failed" in strict.stdout and "no frobnicator" in strict.stdout
    assert "a skip CI is equipped to run is a failure" in strict.stdout


def test_a_module_level_skip_fails_under_ci(tmp_path):
    (tmp_path / "test_mod.py").write_text("import pytest\n\npytest.importorskip('no_such_module_here')\n\ndef test_x():\n    pass\n")
    relaxed = run_pytest(tmp_path, ci=False)
    assert relaxed.returncode in (0, 5) and "1 skipped" in relaxed.stdout  # 5: no test ran
    strict = run_pytest(tmp_path, ci=True)
    assert strict.returncode != 0 and "no_such_module_here" in strict.stdout, strict.stdout


def test_an_allowed_skip_passes_only_while_its_condition_holds(tmp_path):
    # The nodeid of an allowed skip: allowed while torch is missing, a failure where it is
    # installed (the DeepSpeed venv), since there the test must run.
    (tmp_path / "test_deepspeed.py").write_text("import pytest\n\ndef test_torch_tensors():\n    pytest.skip('torch')\n")
    strict = run_pytest(tmp_path, ci=True)
    torch_missing = skip_policy._missing("torch")
    assert strict.returncode == (0 if torch_missing else 1), strict.stdout


def test_every_allowed_skip_runs_in_the_deepspeed_script():
    script = open(os.path.join(HERE, "..", "..", "scripts", "deepspeed-test.sh")).read()
    for name in skip_policy.ALLOWED_SKIPS:
        assert f"python/tests/{name}" in script, f"{name} may skip here but scripts/deepspeed-test.sh does not run it"
