"""The README's quickstart and the demo the README's main command runs keep working."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent_sessions import migrations

ROOT = Path(__file__).resolve().parent.parent


def readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"no python block under {heading}"
    return match.group(1)


def test_readme_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_block("Quickstart")
    assert "sqlite+aiosqlite:///sessions.db" in code
    monkeypatch.chdir(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sessions.db").exists()


DEMO_LINES = (
    "created",
    "conflict a stale copy was refused",
    "paused",
    "resumed",
    "alice sees it: True; bob sees it: False",
    "swept    1 stale session(s)",
    "heartbeat_timeout",
    "deleted  True; get_session now returns None",
)


async def test_demo_prints_the_lifecycle(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"
    await migrations.upgrade(url)
    result = subprocess.run(  # noqa: ASYNC221 - a child process is the point of the test
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        env={**os.environ, "AGENT_SESSIONS_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in DEMO_LINES:
        assert expected in out, out


def test_readme_framework_example_runs(tmp_path: Path) -> None:
    code = readme_block("For agent frameworks")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["2 [4, 3, 2, 1] tool 2", "{'visits': 1}"]
