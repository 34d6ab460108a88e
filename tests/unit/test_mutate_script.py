"""scripts/mutate.py, the mutation tool of docs/testing.md: each mutant changes the module in
one place, and `run` reports the mutants a test command passes on, the module restored."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutate.py"
SOURCE = '''"""A module."""
LIMIT = 10


def clamp(value, flag=True):
    """Docstring: never deleted."""
    if value > LIMIT and not flag:
        return min(value, LIMIT)
    for n in range(value):
        if n == 3:
            break
    return value + 1
'''


def load_mutate():
    spec = importlib.util.spec_from_file_location("mutate_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


mutate = load_mutate()


def test_every_mutant_is_one_listed_change_that_still_parses() -> None:
    listed = mutate.mutants(SOURCE)
    changes = [m.change for m in listed]
    for expected in (
        "Gt -> GtE",
        "And -> Or",
        "not dropped",
        "10 -> 11",
        "10 -> 9",
        "True -> False",
        "min -> max",
        "Add -> Sub",
        "Eq -> NotEq",
        "break -> continue",
        "test forced True",
        "test forced False",
    ):
        assert expected in changes
    assert not any("Docstring" in change or "import" in change for change in changes)
    original = ast.unparse(ast.parse(SOURCE)) + "\n"
    variants = {mutate.mutated(SOURCE, m.index) for m in listed}
    assert original not in variants
    assert len(variants) == len(listed)  # no two mutants alike, each one change
    for variant in variants:
        ast.parse(variant)
    with pytest.raises(IndexError):
        mutate.mutated(SOURCE, len(listed))


def test_run_reports_survivors_and_restores_the_module(tmp_path, capsys, monkeypatch) -> None:
    module = tmp_path / "subject.py"
    module.write_text(SOURCE)
    check = "import subject; assert subject.clamp(4) == 5"  # never looks at the loop's break
    monkeypatch.chdir(tmp_path)
    listed = mutate.mutants(SOURCE)
    plus = next(m.index for m in listed if m.change == "Add -> Sub")
    broken = next(m.index for m in listed if m.change == "break -> continue")
    status = mutate.main(
        ["run", str(module), "--only", f"{plus},{broken}", "--", sys.executable, "-c", check]
    )
    out = capsys.readouterr().out
    assert status == 1
    assert f"{plus}\t12\tkilled" in out
    assert f"{broken}\t11\tSURVIVED" in out
    assert f"1 of 2 survived: [{broken}]" in out
    assert module.read_text() == SOURCE


def test_a_mutant_that_hangs_the_tests_is_killed_by_the_timeout(tmp_path, capsys, monkeypatch):
    module = tmp_path / "subject.py"
    module.write_text(SOURCE)
    monkeypatch.chdir(tmp_path)
    hang = "import time; time.sleep(60)"
    status = mutate.main(
        ["run", str(module), "--only", "0", "--timeout", "0.5", "--", sys.executable, "-c", hang]
    )
    assert status == 0
    assert "\tkilled (timeout)\t" in capsys.readouterr().out
    assert module.read_text() == SOURCE


def test_a_run_stopped_by_kill_leaves_the_module_as_it_was(tmp_path):
    import signal
    import subprocess
    import time

    module = tmp_path / "subject.py"
    module.write_text(SOURCE)
    hang = "import time; time.sleep(60)"
    command = [sys.executable, str(SCRIPT), "run", str(module), "--", sys.executable, "-c", hang]
    with subprocess.Popen(command, cwd=tmp_path) as running:
        deadline = time.monotonic() + 30
        while module.read_text() == SOURCE and time.monotonic() < deadline:
            time.sleep(0.05)  # until the first mutant is written
        assert module.read_text() != SOURCE
        running.send_signal(signal.SIGTERM)
        assert running.wait(30) != 0
    assert module.read_text() == SOURCE
