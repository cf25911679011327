"""The ``agent-session-store`` command, through its real entry point
(``python -m agent_session_store.cli``).

Subprocess calls cost about a second each, so every command runs once that way and the remaining
cases (error paths, text vs JSON) call ``main()`` in-process. Data is seeded in-process with the
repository; a fake clock puts heartbeats and deletions in the past.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import pty
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import SessionRepository, SessionState, create_engine, migrations
from agent_session_store import _cli_format as fmt
from agent_session_store.cli import build_parser, main
from agent_session_store.redis_cache import RedisCache
from tests.conftest import FakeClock
from tests.servers import PostgresServer

ENV_VARS = ("AGENT_SESSION_STORE_DATABASE_URL", "AGENT_SESSION_STORE_REDIS_URL")


@dataclass
class Result:
    code: int
    out: str
    err: str


async def cli(*args: str, cwd: Path, stderr_tty: bool = False) -> Result:
    """Run ``python -m agent_session_store.cli ARGS`` in ``cwd``, no AGENT_SESSION_STORE_* vars."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    command = [sys.executable, "-m", "agent_session_store.cli", *args]
    if not stderr_tty:
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        return Result(proc.returncode or 0, out.decode(), err.decode())
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=slave
        )
    finally:
        os.close(slave)
    try:
        reader = asyncio.to_thread(_read_until_closed, master)
        (out, _), err_bytes = await asyncio.wait_for(asyncio.gather(proc.communicate(), reader), 60)
    finally:
        os.close(master)
    return Result(proc.returncode or 0, out.decode(), err_bytes.decode())


def _read_until_closed(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO once the child has exited and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """``main(args)`` in this process (for sync tests: it runs its own event loop)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"


@pytest.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated SQLite database in tmp_path."""
    engine = create_engine(url)
    await migrations.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def repo(engine: AsyncEngine, clock: FakeClock) -> SessionRepository:
    return SessionRepository(async_sessionmaker(engine, expire_on_commit=False), clock=clock)


# -- help and usage ---------------------------------------------------------------------------


async def test_help_lists_commands_and_exit_codes(tmp_path: Path) -> None:
    result = await cli("--help", cwd=tmp_path)
    assert result.code == 0, result.err
    for command in ("db", "sessions", "cleanup", "purge", "stats"):
        assert f"    {command} " in result.out
    assert "exit codes:" in result.out
    assert "3    the database schema is not at this version's revision" in result.out
    assert "130  interrupted (Ctrl-C)" in result.out
    assert "141  stdout was closed early" in result.out


@pytest.mark.parametrize(
    "path",
    [
        [], ["db"], ["db", "upgrade"], ["db", "downgrade"], ["db", "current"], ["db", "check"],
        ["db", "sql"], ["sessions"], ["sessions", "list"], ["sessions", "show"],
        ["sessions", "checkpoints"], ["cleanup"], ["purge"], ["stats"], ["import-legacy"],
        ["erase-user"],
    ],
)  # fmt: skip
def test_every_level_has_help(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*path, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(
        f"usage: agent-session-store {' '.join(path)}".rstrip()
    )


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the command tree, with the words that reach it."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, (*path, name))
    return found


@pytest.mark.parametrize(
    ("path", "parser"),
    [
        pytest.param(path, parser, id=" ".join(path) or "top")
        for path, parser in _parsers(build_parser())
    ],
)
def test_help_is_complete_without_the_docs(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    """The wheel ships no docs/cli.md: --help alone says what, which options, which variables."""
    text = parser.format_help()
    assert "docs/cli.md" not in text
    for variable in (*ENV_VARS, "AGENT_SESSION_STORE_REDIS_NAMESPACE"):
        assert variable in text
    assert "exit codes:" in text
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = [a for a in parser._actions if a not in commands]
    assert [a.dest for a in options if not a.help] == []
    assert [c.dest for a in commands for c in a._choices_actions if not c.help] == []
    assert parser.description
    if not commands:  # a command says what it does, in more than its one-line summary
        assert len(parser.description.split()) >= 20, parser.description


@pytest.mark.parametrize("spelling", ["paused", "PAUSED", "Paused"])
def test_sessions_list_takes_a_state_in_any_case(spelling: str) -> None:
    args = build_parser().parse_args(["sessions", "list", "--state", spelling])
    assert args.state is SessionState.PAUSED


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cleanup", "--older-than", "3x"], "invalid duration '3x'"),
        (["cleanup", "--older-than", "-1h"], "'-1h': a negative age is not allowed"),
        (["cleanup", "--older-than=-1h"], "'-1h': a negative age is not allowed"),
        (["cleanup", "--older", "-1h"], "'-1h': a negative age is not allowed"),
        (["purge", "--deleted-before", "-30d"], "'-30d': a negative age is not allowed"),
        (["purge", "--deleted-before", "soon"], "invalid duration 'soon'"),
        (["cleanup", "--older-than", "9999999999d"], "too long"),
        (["purge", "--deleted-before", "5000000d"], "too long"),
        (["sessions", "list", "--limit", "0"], "1 or more"),
        (["sessions", "list", "--state", "sleeping"], "unknown state 'sleeping'"),
        (["sessions", "show", "x", "--checkpoints", "-1"], "0 or more"),
        (["sessions", "checkpoints", "x", "--after-seq", "-1"], "0 or more"),
        (["db"], "required"),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


# -- db ---------------------------------------------------------------------------------------


async def test_db_check_upgrade_downgrade_on_a_fresh_sqlite_file(tmp_path: Path, url: str) -> None:
    db_file = tmp_path / "sessions.db"
    behind = await cli("db", "check", "--url", url, cwd=tmp_path)
    assert behind.code == 3
    assert f"run `agent-session-store db upgrade --url {url}`" in behind.err
    assert not db_file.exists()  # checking does not create an empty database

    upgraded = await cli("-v", "db", "upgrade", "--url", url, cwd=tmp_path)
    assert upgraded.code == 0, upgraded.err
    assert upgraded.out == f"{url}: upgraded from empty to {migrations.head()}\n"
    assert "Running upgrade  -> 0001" in upgraded.err  # -v shows the migration log
    assert await migrations.current(url) == migrations.head()

    checked = await cli("db", "check", "--url", url, cwd=tmp_path)
    assert (checked.code, checked.out) == (0, f"up to date: {migrations.head()} (head)\n")

    downgraded = await cli("db", "downgrade", "base", "--yes", "--url", url, cwd=tmp_path)
    assert downgraded.code == 0, downgraded.err
    assert await migrations.current(url) is None


def test_db_downgrade_to_base_needs_yes(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = in_process(capsys, "db", "downgrade", "base", "--url", url)
    assert result.code == 2
    assert "add --yes" in result.err


def test_db_upgrade_to_an_unknown_revision_is_a_usage_error(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = in_process(capsys, "db", "upgrade", "nope", "--url", url)
    assert result.code == 2
    assert "nope" in result.err and "known revisions: 0001" in result.err


def test_db_current_of_a_missing_file_is_none(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = in_process(capsys, "db", "current", "--url", url)
    assert (result.code, result.out) == (0, "none (no agent_session_store schema)\n")
    assert not (tmp_path / "sessions.db").exists()


async def test_db_sql_prints_the_postgresql_ddl(tmp_path: Path) -> None:
    result = await cli("db", "sql", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "CREATE TABLE agent_sessions_sessions" in result.out
    assert "context JSONB NOT NULL" in result.out
    assert "CREATE TABLE agent_sessions_alembic_version" in result.out
    assert "INSERT INTO agent_sessions_alembic_version (version_num) VALUES ('0001')" in result.out
    assert os.listdir(tmp_path) == []  # no database was touched


# -- errors -----------------------------------------------------------------------------------


async def test_unreachable_server_exits_1_without_password_or_traceback(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://app:s3cret@127.0.0.1:1/app"  # nothing listens on port 1
    result = await cli("sessions", "list", "--url", url, cwd=tmp_path)
    assert result.code == 1
    assert "postgresql+asyncpg://app:***@127.0.0.1:1/app" in result.err
    assert "s3cret" not in result.err + result.out
    assert "Traceback" not in result.err


async def test_unparseable_url_exits_2(tmp_path: Path) -> None:
    result = await cli("stats", "--url", "not a url with p@ssword", cwd=tmp_path)
    assert result.code == 2
    assert "cannot parse the database URL" in result.err
    assert "p@ssword" not in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+aiomysql://u:pw@localhost/db", "unsupported database 'mysql'"),
        ("sqlite:///x.db", "use an async driver"),
        # A sync-only driver named outright: a bare postgresql:// means psycopg 3 where it is
        # installed (the bench extra brings it), and psycopg 3 has an async dialect.
        ("postgresql+psycopg2://u:pw@localhost/db", "use an async driver"),
    ],
)
def test_unsupported_driver_exits_2(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = in_process(capsys, "db", "current", "--url", url)
    assert result.code == 2
    assert message in result.err
    assert ":pw@" not in result.err


def test_unreachable_server_during_migration_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    result = in_process(capsys, "db", "upgrade", "--url", "postgresql+asyncpg://u@127.0.0.1:1/x")
    assert result.code == 1
    assert "could not connect to the database (ConnectionRefusedError" in result.err
    assert "(database: postgresql+asyncpg://u@127.0.0.1:1/x)" in result.err


async def test_schema_behind_exits_3_naming_the_upgrade_command(tmp_path: Path, url: str) -> None:
    sqlite3.connect(tmp_path / "sessions.db").close()  # a database without our tables
    result = await cli("sessions", "list", "--url", url, cwd=tmp_path)
    assert result.code == 3
    assert f"`agent-session-store db upgrade --url {url}`" in result.err
    assert "Traceback" not in result.err


def test_missing_sqlite_file_exits_3_and_is_not_created(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = in_process(capsys, "stats", "--url", url)
    assert result.code == 3
    assert "there is no SQLite database" in result.err
    assert not (tmp_path / "sessions.db").exists()


def test_url_comes_from_the_environment(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AGENT_SESSION_STORE_DATABASE_URL", url)
    result = in_process(capsys, "db", "check")
    assert result.code == 3
    assert url in result.err


# -- sessions ---------------------------------------------------------------------------------


async def test_sessions_list_pages_with_the_printed_cursor(
    tmp_path: Path, url: str, repo: SessionRepository, clock: FakeClock
) -> None:
    created = []
    for i in range(3):
        created.append(await repo.create_session("planner", f"user-{i}", key=f"chat-{i}"))
        clock.advance(seconds=1)
    await repo.create_session("coder")
    newest_first = [s.session_id for s in reversed(created)]

    first = await cli(
        "sessions", "list", "--agent-type", "planner", "--limit", "2", "--url", url, cwd=tmp_path
    )
    assert first.code == 0, first.err
    lines = first.out.splitlines()
    assert lines[0].split() == [
        "SESSION_ID", "AGENT_TYPE", "USER_ID", "KEY", "STATE", "CHECKPOINTS", "VERSION",
        "CREATED_AT",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:3]] == newest_first[:2]
    assert [line.split()[3] for line in lines[1:3]] == ["chat-2", "chat-1"]
    assert lines[3].startswith("next cursor: ")
    cursor = lines[3].removeprefix("next cursor: ")

    second = await cli(
        "sessions", "list", "--agent-type", "planner", "--limit", "2", "--cursor", cursor,
        "--json", "--url", url, cwd=tmp_path,
    )  # fmt: skip
    assert second.code == 0, second.err
    page = json.loads(second.out)
    assert [item["session_id"] for item in page["items"]] == newest_first[2:]
    assert page["items"][0]["user_id"] == "user-0"
    assert page["items"][0]["key"] == "chat-0"
    assert page["next_cursor"] is None


async def test_sessions_list_shows_the_creation_time_it_is_ordered_by(
    url: str, repo: SessionRepository, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    older = await repo.create_session("planner")
    clock.advance(hours=1)
    newer = await repo.create_session("planner")
    clock.advance(hours=1)
    await repo.heartbeat(older.session_id)  # the older one is now the last updated

    listed = await asyncio.to_thread(in_process, capsys, "sessions", "list", "--url", url)

    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split()[-1] == "CREATED_AT"
    assert [row.split()[0] for row in rows] == [newer.session_id, older.session_id]
    assert [" ".join(row.split()[-2:]) for row in rows] == [
        fmt.timestamp(newer.created_at),
        fmt.timestamp(older.created_at),
    ]


async def test_sessions_show_prints_the_session_and_recent_checkpoints(
    tmp_path: Path, url: str, repo: SessionRepository
) -> None:
    session = await repo.create_session("planner", "u1", context={"goal": "ship"}, key="chat-7")
    await repo.add_checkpoint(session.session_id, "tool_called", {"tool": "search"})
    result = await cli("sessions", "show", session.session_id, "--url", url, cwd=tmp_path)
    assert result.code == 0, result.err
    assert f"session_id:     {session.session_id}" in result.out
    assert "key:            chat-7" in result.out
    assert "state:          active" in result.out
    assert 'context:        {"goal":"ship"}' in result.out
    assert "recent checkpoints (1-2 of 2):" in result.out
    assert "2    tool_called" in result.out and '{"tool":"search"}' in result.out


async def test_sessions_show_json_and_unknown_id(
    url: str, repo: SessionRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    session = await repo.create_session("planner")
    for i in range(4):
        await repo.add_checkpoint(session.session_id, f"step-{i}")
    shown = await asyncio.to_thread(
        in_process, capsys, "sessions", "show", session.session_id, "--json",
        "--checkpoints", "2", "--url", url,
    )  # fmt: skip
    assert shown.code == 0, shown.err
    data = json.loads(shown.out)
    assert data["session_id"] == session.session_id
    assert [cp["name"] for cp in data["checkpoints"]] == ["step-2", "step-3"]

    unknown = str(uuid.uuid4())
    missing = await asyncio.to_thread(in_process, capsys, "sessions", "show", unknown, "--url", url)
    assert missing.code == 4
    assert f"session '{unknown}' not found" in missing.err


async def test_sessions_show_shows_a_soft_deleted_session_with_its_state(
    url: str, repo: SessionRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    session = await repo.create_session("planner", "u1", context={"goal": "ship"}, key="chat-9")
    for i in range(3):
        await repo.add_checkpoint(session.session_id, f"step-{i}", {"i": i})
    await repo.delete_session(session.session_id)
    listed = await asyncio.to_thread(
        in_process, capsys, "sessions", "list", "--state", "deleted", "--json", "--url", url
    )
    assert [s["session_id"] for s in json.loads(listed.out)["items"]] == [session.session_id]

    text = await asyncio.to_thread(
        in_process, capsys, "sessions", "show", session.session_id, "--url", url
    )
    assert text.code == 0, text.err
    assert f"session_id:     {session.session_id}" in text.out
    assert "state:          deleted" in text.out
    assert "recent checkpoints (1-4 of 4):" in text.out
    assert "4    step-2" in text.out and '{"i":2}' in text.out

    shown = await asyncio.to_thread(
        in_process, capsys, "sessions", "show", session.session_id, "--json",
        "--checkpoints", "2", "--url", url,
    )  # fmt: skip
    assert shown.code == 0, shown.err
    data = json.loads(shown.out)
    assert (data["session_id"], data["state"], data["key"]) == (
        session.session_id, "deleted", "chat-9",
    )  # fmt: skip
    assert [cp["name"] for cp in data["checkpoints"]] == ["step-1", "step-2"]


async def test_sessions_show_by_key_shows_the_live_session_with_that_key(
    url: str, repo: SessionRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = await repo.create_session("planner", "u1", key="chat-7")
    await repo.delete_session(gone.session_id)  # frees the key
    live = await repo.create_session("planner", "u1", key="chat-7")
    await repo.create_session("planner", "u2", key="chat-7")  # another user's
    keyless_user = await repo.create_session("planner", key="chat-7")

    def show(*args: str) -> Result:
        return in_process(capsys, "sessions", "show", *args, "--json", "--url", url)

    found = await asyncio.to_thread(
        show, "--key", " chat-7 ", "--agent-type", "planner", "--user-id", "u1"
    )
    assert found.code == 0, found.err
    assert json.loads(found.out)["session_id"] == live.session_id
    no_user = await asyncio.to_thread(show, "--key", "chat-7", "--agent-type", "planner")
    assert json.loads(no_user.out)["session_id"] == keyless_user.session_id

    missing = await asyncio.to_thread(
        show, "--key", "chat-7", "--agent-type", "coder", "--user-id", "u1"
    )
    assert missing.code == 4
    assert (
        "no live session has the key 'chat-7' for agent type 'coder' and user 'u1'" in missing.err
    )
    assert "`agent-session-store sessions list --agent-type coder --user-id u1`" in missing.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(uuid.UUID(int=1)), "--key", "k", "--agent-type", "a"], "not both"),
        ([], "give a session ID, or --key KEY --agent-type TYPE"),
        (["--key", "chat-7"], "--key needs --agent-type"),
        ([str(uuid.UUID(int=1)), "--agent-type", "a"], "--agent-type and --user-id go with --key"),
        ([str(uuid.UUID(int=1)), "--user-id", "u"], "--agent-type and --user-id go with --key"),
    ],
)
def test_sessions_show_arguments_are_checked_before_connecting(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The URL is unreachable: connecting first would exit 1, not 2.
    result = in_process(
        capsys, "sessions", "show", *args, "--url", "postgresql+asyncpg://u@127.0.0.1:1/x"
    )
    assert result.code == 2, result.err
    assert message in result.err


async def test_sessions_checkpoints_pages_by_seq(
    tmp_path: Path, url: str, repo: SessionRepository
) -> None:
    session = await repo.create_session("planner")
    for i in range(3):
        await repo.add_checkpoint(session.session_id, f"step-{i}", {"i": i})
    result = await cli(
        "sessions", "checkpoints", session.session_id, "--after-seq", "1", "--limit", "2",
        "--json", "--url", url, cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.err
    page = json.loads(result.out)
    assert [(cp["seq"], cp["name"], cp["data"]) for cp in page["items"]] == [
        (2, "step-0", {"i": 0}),
        (3, "step-1", {"i": 1}),
    ]
    assert page["next_after_seq"] == 3


async def test_sessions_checkpoints_text_and_unknown_id(
    url: str, repo: SessionRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    session = await repo.create_session("planner")
    text = await asyncio.to_thread(
        in_process, capsys, "sessions", "checkpoints", session.session_id, "--url", url
    )
    assert text.code == 0, text.err
    assert text.out.splitlines()[1].split()[:2] == ["1", "session_created"]
    assert "more:" not in text.out
    missing = await asyncio.to_thread(
        in_process, capsys, "sessions", "checkpoints", "not-an-id", "--url", url
    )
    assert missing.code == 4


# -- maintenance ------------------------------------------------------------------------------


async def _seed_stale(repo: SessionRepository, clock: FakeClock) -> tuple[list[str], str]:
    """Two ACTIVE and one PAUSED session silent for 3 days, one fresh ACTIVE session."""
    clock.advance(days=-3)
    stale = [(await repo.create_session("planner")).session_id for _ in range(2)]
    paused = await repo.create_session("planner")
    paused.pause()
    await repo.update_session(paused)
    clock.advance(days=3)
    fresh = (await repo.create_session("planner")).session_id
    return stale, fresh


async def _states(repo: SessionRepository, ids: list[str]) -> list[SessionState]:
    sessions = [await repo.get_session(i) for i in ids]
    return [s.state for s in sessions if s is not None]


async def test_cleanup_dry_run_counts_then_cleanup_fails_stale_sessions(
    tmp_path: Path, url: str, repo: SessionRepository, clock: FakeClock
) -> None:
    stale, fresh = await _seed_stale(repo, clock)

    dry = await cli("cleanup", "--older-than", "48h", "--dry-run", "--url", url, cwd=tmp_path)
    assert dry.code == 0, dry.err
    assert dry.out.startswith("cleanup --dry-run: 2 ACTIVE sessions with no heartbeat for 48h")
    assert "nothing was changed" in dry.out
    assert await _states(repo, [*stale, fresh]) == [SessionState.ACTIVE] * 3

    done = await cli("cleanup", "--older-than", "48h", "--no-cache", "--url", url, cwd=tmp_path)
    assert done.code == 0, done.err
    assert done.out.startswith("cleanup: failed 2 ACTIVE sessions with no heartbeat for 48h")
    assert done.err == ""  # no progress display when stderr is not a terminal
    states = await _states(repo, [*stale, fresh])
    assert states == [SessionState.FAILED, SessionState.FAILED, SessionState.ACTIVE]


async def test_cleanup_on_a_terminal_shows_progress(
    tmp_path: Path, url: str, repo: SessionRepository, clock: FakeClock
) -> None:
    stale, _ = await _seed_stale(repo, clock)
    result = await cli(
        "cleanup", "--older-than", "2d", "--no-cache", "--url", url, cwd=tmp_path,
        stderr_tty=True,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "cleanup: failing 2 stale sessions" in result.err  # the first spinner frame
    assert result.err.endswith("\r\x1b[K")  # the progress line is cleared at the end
    assert result.out.startswith("cleanup: failed 2 ")
    assert await _states(repo, stale) == [SessionState.FAILED] * 2


async def test_cleanup_without_redis_url_or_no_cache_changes_nothing_and_exits_2(
    url: str, repo: SessionRepository, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    stale, _ = await _seed_stale(repo, clock)

    refused = await asyncio.to_thread(
        in_process, capsys, "cleanup", "--older-than", "48h", "--url", url
    )

    assert refused.code == 2
    assert "--redis-url" in refused.err and "--no-cache" in refused.err
    assert "AGENT_SESSION_STORE_REDIS_URL" in refused.err
    assert refused.out == ""
    assert await _states(repo, stale) == [SessionState.ACTIVE] * 2
    # --dry-run changes nothing, so it needs neither.
    dry = await asyncio.to_thread(
        in_process, capsys, "cleanup", "--older-than", "48h", "--dry-run", "--url", url
    )
    assert dry.code == 0, dry.err


def test_cleanup_refuses_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    result = in_process(
        capsys, "cleanup", "--url", "postgresql+asyncpg://u@127.0.0.1:1/x"
    )  # unreachable: connecting first would exit 1
    assert result.code == 2, result.err
    assert "nothing was changed" in result.err


@pytest.mark.parametrize(
    "args",
    [
        ["--redis-url", "redis://127.0.0.1:1/0", "cleanup", "--no-cache"],
        ["--no-cache", "cleanup", "--redis-url", "redis://127.0.0.1:1/0"],
        ["cleanup", "--no-cache", "--redis-url", "redis://127.0.0.1:1/0"],
    ],
)
def test_no_cache_and_redis_url_together_are_a_usage_error(
    args: list[str], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([*args, "--url", url])
    except SystemExit as exited:  # argparse, when both are on one side of the command
        code = int(exited.code or 0)
    assert code == 2
    assert "--no-cache" in capsys.readouterr().err


async def test_cleanup_takes_the_redis_url_from_the_environment_and_no_cache_overrides_it(
    url: str, repo: SessionRepository, clock: FakeClock, redis_url: str, namespace: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    stale, _ = await _seed_stale(repo, clock)
    monkeypatch.setenv("AGENT_SESSION_STORE_REDIS_URL", redis_url)
    monkeypatch.setenv("AGENT_SESSION_STORE_REDIS_NAMESPACE", namespace)
    swept = await asyncio.to_thread(
        in_process, capsys, "cleanup", "--older-than", "48h", "--url", url
    )
    assert swept.code == 0, swept.err
    assert await _states(repo, stale) == [SessionState.FAILED] * 2

    # Nothing listens there: with --no-cache it is not even tried.
    monkeypatch.setenv("AGENT_SESSION_STORE_REDIS_URL", "redis://127.0.0.1:1/0")
    again = await asyncio.to_thread(
        in_process, capsys, "cleanup", "--older-than", "48h", "--no-cache", "--url", url
    )
    assert again.code == 0, again.err
    assert again.err == ""


async def test_cleanup_without_older_than_uses_the_repositorys_default(
    url: str, repo: SessionRepository, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    default = inspect.signature(SessionRepository.cleanup_stale_sessions).parameters["max_age"]
    max_age = default.default
    clock.advance(seconds=-(max_age.total_seconds() + 3600))
    stale = await repo.create_session("planner")
    clock.advance(seconds=7200)  # silent for an hour less than the default
    recent = await repo.create_session("planner")
    clock.advance(seconds=max_age.total_seconds() - 3600)

    dry = await asyncio.to_thread(in_process, capsys, "cleanup", "--dry-run", "--url", url)
    assert dry.code == 0, dry.err
    assert dry.out.startswith(
        f"cleanup --dry-run: 1 ACTIVE session with no heartbeat for {fmt.duration_text(max_age)} "
    )
    swept = await asyncio.to_thread(in_process, capsys, "cleanup", "--no-cache", "--url", url)
    assert swept.code == 0, swept.err
    assert swept.out.startswith("cleanup: failed 1 ACTIVE session with no heartbeat for ")
    assert await _states(repo, [stale.session_id, recent.session_id]) == [
        SessionState.FAILED, SessionState.ACTIVE,
    ]  # fmt: skip


async def test_purge_removes_sessions_deleted_long_ago(
    tmp_path: Path, url: str, repo: SessionRepository, clock: FakeClock
) -> None:
    clock.advance(days=-40)
    old = await repo.create_session("planner")
    await repo.delete_session(old.session_id)
    clock.advance(days=40)
    recent = await repo.create_session("planner")
    await repo.delete_session(recent.session_id)
    kept = await repo.create_session("planner")

    result = await cli("purge", "--deleted-before", "30d", "--url", url, cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out.startswith("purge: removed 1 session soft-deleted more than 30d ago")
    assert result.out.rstrip().endswith(", with its checkpoints")
    stats = await repo.stats()
    assert stats.by_state == {"deleted": 1, "active": 1}
    assert await repo.get_session(kept.session_id) is not None


async def test_purge_dry_run_changes_nothing(
    url: str, repo: SessionRepository, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    clock.advance(days=-40)
    old = await repo.create_session("planner")
    await repo.delete_session(old.session_id)
    clock.advance(days=40)
    result = await asyncio.to_thread(
        in_process, capsys, "purge", "--deleted-before", "30d", "--dry-run", "--url", url
    )
    assert result.code == 0, result.err
    assert result.out.startswith("purge --dry-run: 1 session soft-deleted more than 30d ago")
    assert (await repo.stats()).by_state == {"deleted": 1}


def test_import_legacy_of_one_row_says_row(
    tmp_path: Path, url: str, engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(old)) as db:
        db.execute(
            "CREATE TABLE agent_sessions (id TEXT PRIMARY KEY, agent_type TEXT, user_id TEXT, "
            "state TEXT, context TEXT, checkpoints TEXT, created_at TEXT, updated_at TEXT, "
            "last_heartbeat TEXT)"
        )
        db.execute(
            "INSERT INTO agent_sessions VALUES ('chat-1', 'planner', 'u1', 'active', '{}', '[]', "
            "'2024-05-01 09:00:00', '2024-05-01 09:00:00', '2024-05-01 09:00:00')"
        )
        db.commit()
    result = in_process(
        capsys, "import-legacy", "--from-url", f"sqlite+aiosqlite:///{old}", "--url", url,
        "--dry-run",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.out.startswith("import-legacy --dry-run: 1 row of 'agent_sessions' at ")


async def test_stats_json_and_text(
    tmp_path: Path, url: str, repo: SessionRepository, clock: FakeClock,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    first = await repo.create_session("planner")
    await repo.create_session("coder")
    done = await repo.create_session("coder")
    done.complete()
    await repo.update_session(done)
    await repo.delete_session(first.session_id)

    result = await cli("stats", "--json", "--url", url, cwd=tmp_path)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["by_state"] == {"active": 1, "completed": 1, "deleted": 1}
    assert data["by_agent_type"] == {"coder": 2}
    assert (data["sessions"], data["checkpoints"]) == (3, 3)

    text = await asyncio.to_thread(in_process, capsys, "stats", "--url", url)
    assert text.code == 0, text.err
    rows = [line.split() for line in text.out.splitlines()]
    assert ["sessions:", "3", "(soft-deleted", "included)"] in rows
    assert ["coder:", "2"] in rows and ["deleted:", "1"] in rows


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer | None, postgres_url: str) -> str:
    """An empty database of its own, or the shared one when a server URL is given."""
    if postgres_server is None:
        return postgres_url
    return postgres_server.create_database(f"cli_{uuid.uuid4().hex[:12]}")


async def test_db_upgrade_current_and_sessions_list_on_postgres(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    url = fresh_postgres_url
    upgraded = await cli("db", "upgrade", "--url", url, cwd=tmp_path)
    assert upgraded.code == 0, upgraded.err
    current = await cli("db", "current", "--url", url, cwd=tmp_path)
    assert (current.code, current.out) == (0, f"{migrations.head()} (head)\n")

    engine = create_engine(url)
    try:
        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
        agent_type = f"cli-{uuid.uuid4().hex[:8]}"
        session = await repo.create_session(agent_type, "pg-user")
    finally:
        await engine.dispose()
    listed = await cli(
        "sessions", "list", "--agent-type", agent_type, "--json", "--url", url, cwd=tmp_path
    )
    assert listed.code == 0, listed.err
    page = json.loads(listed.out)
    assert [(s["session_id"], s["user_id"]) for s in page["items"]] == [
        (session.session_id, "pg-user")
    ]


# -- Redis ------------------------------------------------------------------------------------


async def test_cleanup_invalidates_the_applications_cached_copies(
    tmp_path: Path, url: str, engine: AsyncEngine, clock: FakeClock, redis_url: str,
    namespace: str,
) -> None:  # fmt: skip
    client = Redis.from_url(redis_url)
    try:
        app_repo = SessionRepository(
            async_sessionmaker(engine, expire_on_commit=False),
            clock=clock,
            cache=RedisCache(client, namespace=namespace),
        )
        stale, _ = await _seed_stale(app_repo, clock)
        assert await _states(app_repo, stale) == [SessionState.ACTIVE] * 2  # now cached
        assert await _states(app_repo, stale) == [SessionState.ACTIVE] * 2  # served from Redis

        result = await cli(
            "cleanup", "--older-than", "48h", "--url", url, "--redis-url", redis_url,
            "--redis-namespace", namespace, cwd=tmp_path,
        )  # fmt: skip
        assert result.code == 0, result.err
        assert result.out.startswith("cleanup: failed 2 ")
        assert "warning" not in result.err
        assert await _states(app_repo, stale) == [SessionState.FAILED] * 2
    finally:
        await client.aclose()


async def test_stats_reports_the_cache_server(
    tmp_path: Path, url: str, engine: AsyncEngine, redis_url: str
) -> None:
    result = await cli("stats", "--url", url, "--redis-url", redis_url, cwd=tmp_path)
    assert result.code == 0, result.err
    rows = {line.split(":")[0].strip(): line for line in result.out.splitlines()}
    assert rows["cache"].endswith(f"{redis_url} (namespace 'agent_sessions')")
    assert " ms (Redis " in rows["round trip"]
    assert "for every key of this Redis" in rows["server hits"]


def test_stats_with_unreachable_redis_exits_1(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert in_process(capsys, "db", "upgrade", "--url", url).code == 0
    result = in_process(
        capsys, "stats", "--json", "--url", url, "--redis-url", "redis://:pw@127.0.0.1:1/0"
    )
    assert result.code == 1
    assert json.loads(result.out)["cache"]["reachable"] is False
    assert "Redis at redis://:***@127.0.0.1:1/0 could not be used" in result.err
    assert ":pw@" not in result.out + result.err
