"""A leaked connection fails the test that leaked it, on every run.

tests/collecting.py collects garbage after each test: without it, a connection left in a
reference cycle was freed by whichever later collection came first, failing a random later test
(three sqlite3 connections of the peer comparison's OpenAI ``SQLiteSession`` once failed
tests/test_pooler.py in CI), or no test at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_LEAKING_TESTS = """
class Holder:
    def __init__(self, path):
        self.file = open(path)  # never closed: a ResourceWarning when freed
        self.cycle = self  # freed only by a garbage collection


def test_leaks(tmp_path):
    (tmp_path / "f").write_text("")
    Holder(tmp_path / "f")


def test_fails_holding_a_leak(tmp_path):
    (tmp_path / "f").write_text("")
    holder = Holder(tmp_path / "f")
    assert holder is None


def test_after_the_leak():
    pass
"""


def test_a_leak_in_a_reference_cycle_fails_the_test_that_leaked_it(tmp_path: Path) -> None:
    (tmp_path / "test_leaking.py").write_text(_LEAKING_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.collecting", "-p", "no:cacheprovider",
         "-rA", "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"),
         str(tmp_path / "test_leaking.py")],
        # Only pytest's own plugins and ours: this pytest.ini does not configure the others.
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    # -rA's summary: "PASSED <path>::<test>" for each call, "ERROR <path>::<test> - ..." for each
    # teardown that failed.
    reported = {
        (line.split(" ")[0], line.split("::")[1].split(" ")[0])
        for line in result.stdout.splitlines()
        if line.startswith(("PASSED ", "ERROR ", "FAILED "))
    }
    assert reported == {
        ("PASSED", "test_leaks"),
        ("ERROR", "test_leaks"),  # at its teardown, where the collection found the file
        ("FAILED", "test_fails_holding_a_leak"),
        ("ERROR", "test_fails_holding_a_leak"),  # not only once its exception is let go
        ("PASSED", "test_after_the_leak"),
    }, result.stdout
    assert "ResourceWarning: unclosed file" in result.stdout
