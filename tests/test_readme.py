"""The demo the README's main command runs: its output, its database, its first impression."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent_session_store import migrations

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
        env={**os.environ, "AGENT_SESSION_STORE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in DEMO_LINES:
        assert expected in out, out
    # It ran in the past and came back to now: nothing stamped in the future is left behind.
    with contextlib.closing(sqlite3.connect(tmp_path / "demo.db")) as db:
        stamps = db.execute(
            "SELECT max(created_at), max(updated_at), max(last_heartbeat) "
            "FROM agent_sessions_sessions"
        ).fetchone()
        stamps += db.execute("SELECT max(created_at) FROM agent_sessions_checkpoints").fetchone()
    now = datetime.now(UTC)
    assert all(datetime.fromisoformat(s).replace(tzinfo=UTC) <= now for s in stamps), stamps


def _demo_checkout(tmp_path: Path) -> Path:
    """A copy of the checkout whose .venv borrows this one's packages (no pip install)."""
    copy = tmp_path / "checkout"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    venv = copy / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(
        p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "sqlalchemy").is_dir()
    )
    (site / "deps.pth").write_text(f"{copy}\n{deps}\n")
    cli = venv / "bin" / "agent-session-store"
    cli.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom agent_session_store.cli import main\n"
        "sys.exit(main())\n"
    )
    cli.chmod(0o755)
    return copy


def _run_demo(copy: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SESSION_STORE_")}
    return subprocess.run(
        ["bash", "scripts/demo"], cwd=copy, env={**clean, **env}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_the_demo_says_what_it_does_and_what_to_try_next(tmp_path: Path) -> None:
    copy = _demo_checkout(tmp_path)
    stamp = hashlib.sha256((copy / "pyproject.toml").read_bytes()).hexdigest()
    (copy / ".venv" / ".agent-session-store-demo-install").write_text(stamp + "\n")
    result = _run_demo(copy, PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "skipping pip install" in out  # nothing changed since the last install
    database = copy / "agent_sessions.db"
    assert f"== migrating the SQLite database {database}" in out
    assert f"The sessions are in {database}." in out
    cli = copy / ".venv" / "bin" / "agent-session-store"
    commands = [line.strip() for line in out.splitlines() if line.startswith(f"  {cli} ")]
    assert [c.split()[1:3] for c in commands] == [
        ["sessions", "list"], ["sessions", "show"], ["stats", "--url"],
    ]  # fmt: skip
    for command in commands:  # each works as printed, from anywhere
        ran = subprocess.run(
            command.split(), cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, (command, ran.stderr)
    assert (
        "coder"
        in subprocess.run(
            commands[1].split(), cwd=tmp_path, capture_output=True, text=True, timeout=60
        ).stdout
    )


def test_the_demo_replaces_a_venv_of_an_unsupported_python(tmp_path: Path) -> None:
    copy = _scripts_only(tmp_path)
    old = copy / ".venv" / "bin" / "python"
    old.parent.mkdir(parents=True)
    old.write_text("#!/bin/sh\n[ \"$1\" = -V ] && echo 'Python 3.8.10'\nexit 1\n")
    old.chmod(0o755)
    # A Python that passes the version check and records, instead of making, the new venv.
    fake = tmp_path / "python3.12"
    fake.write_text(
        f"#!/bin/sh\n[ \"$1\" = -V ] && echo 'Python 3.12.1' && exit 0\n"
        f'[ "$1" = -m ] && echo "$@" > {tmp_path / "made"} && exit 7\nexit 0\n'
    )
    fake.chmod(0o755)
    result = _run_demo(copy, PYTHON=str(fake))
    assert "== replacing .venv: it was made by Python 3.8.10" in result.stdout
    assert "== creating a virtualenv in .venv with Python 3.12.1" in result.stdout
    assert (tmp_path / "made").read_text().split() == ["-m", "venv", ".venv"]
    assert not old.exists()


def _scripts_only(tmp_path: Path) -> Path:
    copy = tmp_path / "checkout"
    (copy / "scripts").mkdir(parents=True)
    for script in ("demo", "_python.sh"):
        shutil.copy2(ROOT / "scripts" / script, copy / "scripts" / script)
    return copy


def test_the_demo_keeps_a_venv_that_scripts_test_made_with_another_python(tmp_path: Path) -> None:
    # scripts/test and scripts/demo share .venv; each used to rebuild it for its own Python.
    copy = _scripts_only(tmp_path)
    venv_python = copy / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    # A supported Python whose pip install fails, so the demo stops right after choosing.
    venv_python.write_text(
        "#!/bin/sh\n[ \"$1\" = -V ] && echo 'Python 3.13.0' && exit 0\n"
        '[ "$1" = -c ] && exit 0\nexit 9\n'
    )
    venv_python.chmod(0o755)
    other = tmp_path / "python3.11"
    other.write_text("#!/bin/sh\n[ \"$1\" = -V ] && echo 'Python 3.11.7'\nexit 0\n")
    other.chmod(0o755)
    result = _run_demo(copy, PYTHON=str(other))
    assert venv_python.exists()
    assert "replacing" not in result.stdout and "creating a virtualenv" not in result.stdout
    assert f"== using .venv as it is (Python 3.13; {other} is 3.11)" in result.stdout


def test_the_demo_refuses_an_unsupported_python(tmp_path: Path) -> None:
    fake = tmp_path / "python3.8"
    fake.write_text("#!/bin/sh\n[ \"$1\" = -V ] && echo 'Python 3.8.10'\nexit 1\n")
    fake.chmod(0o755)
    result = _run_demo(ROOT, PYTHON=str(fake))
    assert result.returncode == 1
    assert "needs Python 3.11 or newer, and" in result.stderr
    assert "Python 3.8.10" in result.stderr


def test_readme_framework_example_runs(tmp_path: Path) -> None:
    code = readme_block("For agent frameworks")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["2 [4, 3, 2, 1] tool 2", "{'visits': 1}"]
