"""Every code block in README.md, docs/*.md and examples/host_app/README.md runs as written.

How each kind of block is checked:

- ``python``: the block is a script, run on its own (``python -c``) in an empty directory, with
  ``examples/`` on ``PYTHONPATH`` (for ``host_app``). It must exit 0.
- ``bash``: each line that runs ``agent-session-store`` runs through the installed entry point, in
  order, in an empty directory, and must exit 0; other lines (``pip install``, ``bash scripts/...``,
  ``alembic upgrade head``) are not run here (scripts/demo and scripts/test have their own tests).
- ``console``: a transcript. Each ``$`` command runs in order in one sandbox per file (``cd`` is
  followed), and what the block shows after it must be what it prints (stdout; for a failing
  command stdout then stderr), except for the parts that differ from run to run: session ids,
  times, ages, cursors, Redis latency, memory and counters. A line ``...`` stands for any
  number of lines; ``$ echo $?`` shows the exit code of the command before it (any other
  command must exit 0); a command with nothing shown after it is only run; a command with an
  elided argument (``...``) is not run.
  docs/cli.md's transcripts run on a database seeded like the one they were recorded on.
- Substitutions (the only edits made before running): ``postgresql+asyncpg://app@db/app`` and
  ``$DATABASE_URL`` become a temporary SQLite database; ``postgresql+asyncpg://app@localhost/app``
  a fresh database on the test PostgreSQL server; ``redis://localhost:6379/0`` and
  ``redis://localhost:6399/0`` the test Redis server; ``python`` this interpreter.

A block that cannot run on its own (a fragment of a file, like an ``env.py`` excerpt) is preceded
by ``<!-- docs-test: skip (the reason) -->``; the test lists them and keeps the list short.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import SessionRepository, create_engine
from tests.conftest import FakeClock
from tests.servers import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HOST_APP_README = ROOT / "examples" / "host_app" / "README.md"
SKIP = re.compile(r"<!-- docs-test: skip \((.+?)\) -->\s*$")
FENCE = re.compile(r"^( *)```(\w*)\s*$")
BIN = Path(sys.executable).parent
MAX_SKIPPED = 2
ALEMBIC_INFO = re.compile(r"INFO  \[alembic\.runtime\.migration\] ")


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, lang, start = match.group(1), match.group(2), i
        body = []
        i += 1
        while not lines[i].startswith(f"{indent}```"):
            body.append(lines[i][len(indent) :])
            i += 1
        before = lines[start - 1] if start else ""
        skip = SKIP.match(before.strip())
        code = "\n".join(body) + "\n"
        found.append(Block(path, start + 1, lang, code, skip.group(1) if skip else None))
        i += 1
    return found


# scripts/test-lowest runs without the agent frameworks (they need newer dependencies than our
# floors): blocks that use a framework backend are left out there, and run in scripts/test.
WITHOUT_FRAMEWORKS = os.environ.get("AGENT_SESSION_STORE_TEST_FRAMEWORKS") == "off"
ALL = [
    b
    for path in [*DOCS, HOST_APP_README]
    for b in blocks(path)
    if not (WITHOUT_FRAMEWORKS and "agent_session_store.integrations" in b.code)
]


def _of(lang: str, *paths: Path) -> list[Block]:
    return [b for b in ALL if b.lang == lang and (not paths or b.path in paths)]


def test_blocks_are_found_and_skips_stay_rare() -> None:
    assert len(_of("python")) >= 8
    skipped = [f"{b.name} ({b.skip})" for b in ALL if b.skip]
    assert len(skipped) <= MAX_SKIPPED, skipped
    unknown = {b.lang for b in ALL} - {"python", "bash", "console", ""}
    assert not unknown, unknown


@pytest.fixture
def substitutions(tmp_path: Path, redis_url: str) -> dict[str, str]:
    return {
        "postgresql+asyncpg://app@db/app": f"sqlite+aiosqlite:///{tmp_path / 'example.db'}",
        "redis://localhost:6379/0": redis_url,
        "redis://localhost:6399/0": redis_url,
    }


def _substitute(text: str, substitutions: dict[str, str]) -> str:
    for old, new in substitutions.items():
        text = text.replace(old, new)
    return text


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SESSION_STORE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


# -- python -----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [b for b in _of("python") if not b.skip], ids=lambda b: b.name)
def test_python_block_runs(block: Block, tmp_path: Path, substitutions: dict[str, str]) -> None:
    code = _substitute(block.code, substitutions)
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=90,
        env=_env(PYTHONPATH=str(ROOT / "examples")),
    )  # fmt: skip
    assert result.returncode == 0, f"{block.name}:\n{result.stderr}"
    # A block shows no output of its own: what it prints to stderr (a warning, a log line) is
    # what a reader would see and the docs do not explain. Alembic's INFO lines, which an
    # application's own alembic.ini logs on purpose, are the one exception.
    unexplained = [line for line in result.stderr.splitlines() if not ALEMBIC_INFO.match(line)]
    assert not unexplained, f"{block.name} printed to stderr:\n{result.stderr}"


# -- bash -------------------------------------------------------------------------------------


def _agent_session_store_lines(block: Block) -> list[str]:
    return [
        line.split("  #")[0].strip()
        for line in block.code.splitlines()
        if line.strip().startswith("agent-session-store ")
    ]


BASH = [b for b in _of("bash") if not b.skip and _agent_session_store_lines(b)]


@pytest.mark.parametrize("block", BASH, ids=lambda b: b.name)
def test_bash_block_agent_session_store_lines_run(
    block: Block, tmp_path: Path, substitutions: dict[str, str]
) -> None:
    url = substitutions["postgresql+asyncpg://app@db/app"]
    env = _env(DATABASE_URL=url, AGENT_SESSION_STORE_DATABASE_URL=url)
    for line in _agent_session_store_lines(block):
        command = _substitute(line, substitutions)
        result = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=90,
        )  # fmt: skip
        assert result.returncode == 0, f"{block.name}: {line}\n{result.stderr}"


# -- console ----------------------------------------------------------------------------------

VARIABLE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<id>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"), "<time>"),
    (re.compile(r"\(\d+[smhd] ago\)"), "(<age> ago)"),
    (re.compile(r"next cursor: \S+"), "next cursor: <cursor>"),
    (re.compile(r"[\d.]+ ms \(Redis [\d.]+\)"), "<ms> ms (Redis <version>)"),
    (re.compile(r"server hits: .*"), "server hits: <counters>"),
    (re.compile(r"server memory: .*"), "server memory: <memory>"),
    (re.compile(r" +"), " "),
]


def _normalize(text: str) -> list[str]:
    lines = []
    for line in text.rstrip("\n").splitlines():
        for pattern, replacement in VARIABLE:
            line = pattern.sub(replacement, line)
        lines.append(line.rstrip())
    return lines


def _matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; an expected ``...`` matches any run of lines."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(_matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and _matches(expected[1:], actual[1:])


def _commands(block: Block) -> Iterator[tuple[str, list[str]]]:
    command: str | None = None
    shown: list[str] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, shown
            command, shown = line[2:], []
        elif command is not None:
            shown.append(line)
    if command is not None:
        yield command, shown


async def _run_transcripts(
    path: Path, sandbox: Path, substitutions: dict[str, str], seed: object = None
) -> None:
    cwd, last_code, seeded = sandbox, 0, False
    reverse = {new: old for old, new in substitutions.items()}
    env = _env()
    for block in _of("console", path):
        if block.skip:
            continue
        for command, shown in _commands(block):
            where = f"{block.name}: $ {command}"
            if command == "echo $?":
                assert shown == [str(last_code)], f"{where}: the command before exited {last_code}"
                continue
            if command.startswith("cd "):
                cwd = cwd / command[3:].strip()
                continue
            if "..." in command:
                continue
            if callable(seed) and not seeded and command.startswith("agent-session-store sessions"):
                await seed(cwd)
                seeded = True
            run = _substitute(command, substitutions)
            run = re.sub(r"^python ", f"{sys.executable} ", run)
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", run, cwd=cwd, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            last_code = proc.returncode or 0
            # stderr is shown for a failure; on success it may hold logs (Alembic's INFO lines).
            printed = out.decode() + (err.decode() if last_code else "")
            printed = _substitute(printed, reverse)
            if shown and not _matches(_normalize("\n".join(shown)), _normalize(printed)):
                report = "\n".join(shown)
                pytest.fail(f"{where}\n--- shown:\n{report}\n--- printed:\n{printed}")
            next_is_echo = False  # exit codes other than 0 must be shown with `echo $?`
            lines = block.code.splitlines()
            for i, line in enumerate(lines):
                if line == f"$ {command}":
                    following = [x for x in lines[i + 1 :] if x.startswith("$ ")]
                    next_is_echo = bool(following) and following[0] == "$ echo $?"
            if not next_is_echo:
                assert last_code == 0, f"{where}: exit {last_code}\n{printed}"


async def _seed_like_the_cli_docs(cwd: Path) -> None:
    """The sessions docs/cli.md was recorded on (agent types, users, checkpoints, ages)."""
    engine = create_engine(f"sqlite+aiosqlite:///{cwd / 'agent_sessions.db'}")
    clock = FakeClock()
    repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False), clock=clock)
    try:
        now = clock.now
        clock.now = now - timedelta(days=3)
        for _ in range(2):
            await repo.create_session("research-agent", user_id="bob")
        clock.now = now - timedelta(minutes=20)
        planner = await repo.create_session(
            "planner", user_id="alice", context={"goal": "plan the offsite"}, key="offsite"
        )
        await repo.add_checkpoint(planner.session_id, "tool_called", {"tool": "calendar.search"})
        await repo.add_checkpoint(planner.session_id, "plan_drafted", {"steps": 4})
        clock.now = now
        await repo.create_session("coder", user_id="carol")
    finally:
        await engine.dispose()
    # The transcripts name the planner's id as recorded: run them on this database's.
    CLI_DOC_IDS["ff5df1d5-711e-46fc-962f-c8c2292b87a0"] = planner.session_id


CLI_DOC_IDS: dict[str, str] = {}


async def test_cli_transcripts_print_what_they_show(
    tmp_path: Path, substitutions: dict[str, str]
) -> None:
    subs = dict(substitutions)

    async def seed(cwd: Path) -> None:
        await _seed_like_the_cli_docs(cwd)
        subs.update(CLI_DOC_IDS)

    await _run_transcripts(ROOT / "docs" / "cli.md", tmp_path, subs, seed)


@pytest.fixture
def host_app_substitutions(
    substitutions: dict[str, str], postgres_server: PostgresServer | None, postgres_url: str
) -> dict[str, str]:
    url = postgres_url
    if postgres_server is not None:
        url = postgres_server.create_database(f"docs_{os.getpid()}_{id(substitutions)}")
    return {**substitutions, "postgresql+asyncpg://app@localhost/app": url}


async def test_host_app_readme_transcripts_print_what_they_show(
    tmp_path: Path, host_app_substitutions: dict[str, str]
) -> None:
    shutil.copytree(
        ROOT / "examples",
        tmp_path / "examples",
        ignore=shutil.ignore_patterns("*.db", "__pycache__"),
    )
    await _run_transcripts(HOST_APP_README, tmp_path, host_app_substitutions)
