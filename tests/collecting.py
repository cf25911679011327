"""Garbage collected after every test, so a leak is reported by the test that leaked it.

A connection nobody closed is only noticed when it is freed: at once if nothing else refers to
it, but only at the next garbage collection if it sits in a reference cycle (an engine, a session
object, a frame kept by a traceback), and that collection runs whenever allocations happen to
trip it, in whichever test is running then. Its ``ResourceWarning`` ("unclosed database in
<sqlite3.Connection ...>", an error under ``filterwarnings = error``) then fails an unrelated test,
and only on some runs; or it is silenced, when the collection happens inside a
``warnings.catch_warnings()`` block.

So every test ends with a collection, in the teardown of an autouse fixture set up before the
test's other fixtures (torn down after them), before pytest turns what was reported into errors
of that test. A full collection traverses every live object (some 800,000 once the frameworks
are imported: ~150 ms a test, 10+ minutes over the suite), so the survivors are frozen
(``gc.freeze``) and the next test's collection traverses only what was allocated since. What
was frozen while alive and became garbage later (a module's fixture, something a test kept in a
global) is collected by a full collection after each module (that module's last test reports
it), and after the last test.

tests/conftest.py imports the fixtures; ``-p tests.collecting`` adds them to any pytest run.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest


def _collect_all() -> None:
    gc.unfreeze()
    gc.collect()


@pytest.fixture(autouse=True, scope="session")
def _collected_after_the_session() -> Iterator[None]:
    yield
    _collect_all()


@pytest.fixture(autouse=True, scope="module")
def _collected_after_each_module() -> Iterator[None]:
    yield
    _collect_all()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collected_after_each_test() -> Iterator[None]:
    yield
    # A failed test's exception, kept for post-mortem debugging until the next test runs, holds
    # the test's frames and all they refer to: let go of it, so what the test leaked is found now.
    for name in ("last_exc", "last_type", "last_value", "last_traceback"):
        if hasattr(sys, name):
            delattr(sys, name)
    gc.collect()
    gc.freeze()
