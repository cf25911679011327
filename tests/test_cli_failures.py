"""The ``agent-session-store`` command when things go wrong: each case a newcomer hit (issue 13).

Closed pipes, absurd durations, malformed ids on a broken database, a schema from a newer
release, missing databases and directories, connect timeouts, Redis down, Ctrl-C mid-sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import (
    SessionRepository,
    SessionState,
    _cli_context,
    create_engine,
    migrations,
)
from agent_session_store._cli_format import (
    MAX_DURATION,
    count,
    draw_progress,
    duration,
    duration_text,
)
from agent_session_store.cli import EXIT_INTERRUPTED, EXIT_PIPE_CLOSED, main
from agent_session_store.tables import VERSION_TABLE
from tests.conftest import FakeClock
from tests.servers import PostgresServer
from tests.test_cli import ENV_VARS, Result, cli, in_process

UNREACHABLE = "postgresql+asyncpg://u@127.0.0.1:1/x"


@pytest.fixture
def migrated(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"
    assert main(["db", "upgrade", "--url", url]) == 0
    return url


@pytest.fixture
def fresh_pg(postgres_server: PostgresServer | None, postgres_url: str) -> str:
    if postgres_server is None:
        pytest.skip("needs a PostgreSQL server of the test tooling (it creates databases)")
    return postgres_server.create_database(f"clifail_{uuid.uuid4().hex[:12]}")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ENV_VARS}


# -- bug 2: a closed stdout -------------------------------------------------------------------


async def _into_closed_pipe(*args: str, cwd: Path) -> Result:
    """Run the command with stdout a pipe whose reader has already gone (as after `head -1`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent_session_store.cli", *args, cwd=cwd, env=_env(),
            stdout=write_end, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return Result(proc.returncode or 0, "", err.decode())


@pytest.mark.parametrize(
    "args",
    [
        ["sessions", "list"],
        ["db", "sql"],
        ["db", "sql", "--url", "notaurl"],
        ["--help"],
    ],
    ids=["sessions-list", "db-sql", "db-sql-bad-url", "help"],
)
async def test_a_closed_stdout_ends_the_command_quietly(
    args: list[str], migrated: str, tmp_path: Path
) -> None:
    if "--url" not in args:
        args = [*args, "--url", migrated] if args[0] != "--help" else args
    result = await _into_closed_pipe(*args, cwd=tmp_path)
    assert result.err == ""
    # argparse itself ignores a failed write of --help and exits 0.
    assert result.code == (0 if args == ["--help"] else EXIT_PIPE_CLOSED)


async def test_piping_into_head_prints_the_first_line_and_no_error(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"{sys.executable} -m agent_session_store.cli db sql | head -1",
        cwd=tmp_path, env=_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out.decode().startswith("-- agent_session_store ")
    assert err.decode() == ""


# -- bug 3: durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["cleanup", "--older-than", "999999999999d"],
        ["cleanup", "--older-than", "10000000w"],
        ["purge", "--deleted-before", "10000000w"],
        ["cleanup", "--older-than", f"{MAX_DURATION.days + 1}d"],
    ],
)
def test_huge_durations_are_usage_errors(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*args, "--url", UNREACHABLE])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "is too long: at most 36500d (100 years)" in err
    assert "Traceback" not in err


def test_the_longest_duration_is_accepted() -> None:
    assert duration(f"{MAX_DURATION.days}d").delta == MAX_DURATION


@pytest.mark.parametrize("text", ["-1h", "-0s", " -2d ", "-1d12h"])
def test_a_negative_age_is_refused_by_name(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="a negative age is not allowed"):
        duration(text)


@pytest.mark.parametrize("text", ["2d", "1d12h", "90s", "1h30m", "0s", "12d"])
def test_duration_text_reads_back_as_the_same_duration(text: str) -> None:
    delta = timedelta(seconds=duration(text).delta.total_seconds())
    assert duration(duration_text(delta)).delta == delta


# -- plurals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 sessions"), (1, "1 session"), (2, "2 sessions")],
)
def test_a_count_agrees_with_its_noun(n: int, expected: str) -> None:
    assert count(n, "session") == expected
    assert count(1, "session was", "sessions were") == "1 session was"


def test_the_progress_bar_of_one_row_says_row() -> None:
    stream = io.StringIO()
    draw_progress(stream, "import-legacy", 1, 1)
    assert stream.getvalue().endswith("] 1/1 row\x1b[K")


# -- bug 4: a malformed id reaches the database first -----------------------------------------


@pytest.mark.parametrize("command", ["show", "checkpoints"])
def test_a_malformed_id_is_not_found_only_on_a_working_database(
    command: str, tmp_path: Path, migrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    unreachable = in_process(capsys, "sessions", command, "not-a-uuid", "--url", UNREACHABLE)
    assert unreachable.code == 1, unreachable.err
    assert "could not connect to the database" in unreachable.err

    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).close()  # a database without the library's tables
    behind = in_process(
        capsys, "sessions", command, "not-a-uuid", "--url", f"sqlite+aiosqlite:///{bare}"
    )
    assert behind.code == 3, behind.err
    assert "agent-session-store db upgrade" in behind.err

    missing = in_process(capsys, "sessions", command, "not-a-uuid", "--url", migrated)
    assert missing.code == 4, missing.err
    assert "'not-a-uuid' not found" in missing.err


# -- bug 5: a schema migrated by a newer release ----------------------------------------------


@pytest.mark.parametrize(
    "args", [["db", "upgrade"], ["db", "downgrade", "base", "--yes"], ["db", "check"]]
)
def test_db_commands_on_a_newer_schema_exit_3_asking_to_upgrade_the_package(
    args: list[str], tmp_path: Path, migrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "sessions.db")) as db:
        db.execute(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d_future'")
        db.commit()
    result = in_process(capsys, *args, "--url", migrated)
    assert result.code == 3, result.err
    assert "at revision f00d_future, which agent_session_store" in result.err
    assert "upgrade the agent-session-store package" in result.err
    assert "Can't locate revision" not in result.err
    with contextlib.closing(
        sqlite3.connect(tmp_path / "sessions.db")
    ) as db:  # and nothing was changed
        assert db.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [
            ("f00d_future",)
        ]


# -- friction: missing database or directory, timeouts, passwords, limits ---------------------


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "current"], ["sessions", "list"]])
def test_a_missing_directory_says_so(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "no" / "such" / "dir" / "sessions.db"
    result = in_process(capsys, *command, "--url", f"sqlite+aiosqlite:///{path}")
    assert result.code == 1, result.err
    assert f"the directory {path.parent} does not exist" in result.err
    assert "rolled back" not in result.err
    assert not path.parent.exists()


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "check"], ["db", "current"]])
def test_a_missing_postgres_database_names_the_command_not_internals(
    command: list[str], fresh_pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_url(fresh_pg).set(database="no_such_database")
    shown = url.render_as_string(hide_password=False)
    result = in_process(capsys, *command, "--url", shown)
    assert result.code == 1, result.err
    assert f"agent-session-store {' '.join(command)} failed: could not connect" in result.err
    assert 'database "no_such_database" does not exist' in result.err
    assert "nothing was done" in result.err
    assert "rolled back" not in result.err
    assert "migrations." not in result.err


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (in the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_a_connect_timeout_says_it_timed_out(
    silent_port: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cli_context, "CONNECT_TIMEOUT", 0.2)
    url = f"postgresql+asyncpg://u@127.0.0.1:{silent_port}/x"
    result = in_process(capsys, "sessions", "list", "--url", url)
    assert result.code == 1, result.err
    assert "(TimeoutError: no answer in time)" in result.err
    assert "TimeoutError: )" not in result.err


def test_db_check_says_to_put_the_password_back(
    fresh_pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The test server trusts local connections, so any password gets in.
    url = make_url(fresh_pg).set(password="s3cret")
    result = in_process(capsys, "db", "check", "--url", url.render_as_string(hide_password=False))
    assert result.code == 3, result.err
    assert ":***@" in result.err
    assert "with the real password in place of ***" in result.err
    assert "s3cret" not in result.err


@pytest.mark.parametrize(
    "args",
    [
        ["sessions", "list", "--limit", "100000"],
        ["sessions", "checkpoints", str(uuid.UUID(int=1)), "--limit", "1001"],
        ["cleanup", "--older-than", "1d", "--batch-size", "50001"],
        ["purge", "--deleted-before", "1d", "--batch-size", "50001"],
    ],
)
def test_out_of_range_limits_are_refused_before_connecting(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # The URL is unreachable: connecting first would exit 1, not 2.
    with pytest.raises(SystemExit) as info:
        main([*args, "--url", UNREACHABLE])
    assert info.value.code == 2
    assert "expected a whole number from 1 to" in capsys.readouterr().err


# -- one rule for an unreachable Redis --------------------------------------------------------


@pytest.mark.parametrize("seeded", [True, False], ids=["with-stale-sessions", "nothing-to-do"])
async def test_cleanup_with_unreachable_redis_commits_reports_and_exits_1(
    seeded: bool, tmp_path: Path, migrated: str, clock: FakeClock
) -> None:
    engine = create_engine(migrated)
    try:
        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False), clock=clock)
        if seeded:
            clock.advance(days=-3)
            stale = await repo.create_session("planner")
            clock.advance(days=3)
        result = await cli(
            "cleanup", "--older-than", "48h", "--url", migrated,
            "--redis-url", "redis://:pw@127.0.0.1:1/0", cwd=tmp_path,
        )  # fmt: skip
        assert result.code == 1, result.err
        assert result.out.startswith(f"cleanup: failed {int(seeded)} ")
        assert "Redis at redis://:***@127.0.0.1:1/0 could not be used" in result.err
        assert ":pw@" not in result.err
        if not seeded:
            assert "nothing needed invalidating this time" in result.err
        if seeded:
            assert "applications may serve cached copies" in result.err
            found = await repo.get_session(stale.session_id)
            assert found is not None and found.state is SessionState.FAILED
    finally:
        await engine.dispose()


# -- Ctrl-C during cleanup --------------------------------------------------------------------

LOCK_KEY = 4242


async def test_ctrl_c_during_cleanup_says_how_many_were_committed(
    tmp_path: Path, fresh_pg: str, clock: FakeClock
) -> None:
    """Batches of one; the sweep's second UPDATE statement waits on a lock the test holds.

    A statement-level trigger counts UPDATE statements with a sequence (not rolled back) and
    makes every one after the first wait for the lock, so the first batch has committed and the
    second is in progress when Ctrl-C arrives.
    """
    engine = create_engine(fresh_pg)
    try:
        await migrations.upgrade(engine)
        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False), clock=clock)
        ids, base = [], clock.now
        for days in (5, 4, 3):
            clock.now = base - timedelta(days=days)
            ids.append((await repo.create_session("planner")).session_id)
        async with engine.begin() as conn:
            await conn.execute(text("CREATE SEQUENCE test_sweep_statements"))
            await conn.execute(
                text(
                    "CREATE FUNCTION test_block_sweep() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN IF nextval('test_sweep_statements') > 1 THEN "
                    f"PERFORM pg_advisory_xact_lock({LOCK_KEY}); END IF; RETURN NULL; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER test_block_sweep BEFORE UPDATE ON agent_sessions_sessions "
                    "FOR EACH STATEMENT EXECUTE FUNCTION test_block_sweep()"
                )
            )
        async with engine.connect() as holder:
            await holder.execute(text(f"SELECT pg_advisory_lock({LOCK_KEY})"))
            await holder.commit()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent_session_store.cli", "cleanup", "--older-than", "48h",
                "--batch-size", "1", "--no-cache", "--url", fresh_pg, cwd=tmp_path, env=_env(),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            waiting = text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            for _ in range(600):  # polls a condition; the time only bounds the test
                found = (await holder.execute(waiting)).scalar_one()
                await holder.commit()
                if found:
                    break
                await asyncio.sleep(0.05)
            else:
                proc.kill()
                pytest.fail("the sweep never reached its second batch")
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            await holder.execute(text(f"SELECT pg_advisory_unlock({LOCK_KEY})"))
            await holder.commit()
        failed = [
            i for i in ids if (s := await repo.get_session(i)) and s.state is SessionState.FAILED
        ]
        assert proc.returncode == EXIT_INTERRUPTED, err.decode()
        assert failed, "the first batch committed before the interrupt"
        noun = "stale session" if len(failed) == 1 else "stale sessions"
        assert (
            f"interrupted: {len(failed)} {noun} had already been failed and committed"
            in err.decode()
        )
        assert "Run the same command again" in err.decode()
        assert out.decode() == ""
    finally:
        await engine.dispose()


# -- alembic without a URL --------------------------------------------------------------------


@pytest.mark.parametrize(
    "ini",
    [migrations.alembic_ini(), Path(__file__).resolve().parent.parent / "alembic.ini"],
    ids=["shipped-ini", "checkout-ini"],
)
@pytest.mark.parametrize(
    "command", [["current"], ["upgrade", "head"], ["upgrade", "head", "--sql"]]
)
def test_alembic_without_a_url_says_what_to_give_and_creates_nothing(
    ini: Path, command: list[str], tmp_path: Path
) -> None:
    # A default sqlalchemy.url in alembic.ini once made `alembic current` create an empty
    # agent_sessions.db in the working directory and exit 0.
    ran = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), *command],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode != 0
    assert "-x url=" in ran.stderr
    assert "AGENT_SESSION_STORE_DATABASE_URL" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert list(tmp_path.iterdir()) == []


def test_alembic_takes_the_url_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'env.db'}"
    ran = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(migrations.alembic_ini()), "upgrade", "head"],
        cwd=tmp_path, env={**_env(), "AGENT_SESSION_STORE_DATABASE_URL": url},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert main(["db", "check", "--url", url]) == 0
