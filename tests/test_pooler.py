"""Behind a transaction-pooling PgBouncer: the engine flag, migrations, the CLI and faults.

The repository suite itself runs through the shared PgBouncer as the ``pgbouncer`` backend (see
conftest.py). Here: what ``transaction_pooling`` sets, that no repository statement runs outside
a transaction on such an engine (a host's own engine too), the issue's 30 concurrent workers,
migrations and the CLI through PgBouncer, and, on a PgBouncer of this module's own, a restart
mid-run and exhausted server connections.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
from sqlalchemy import Connection, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from agent_session_store import (
    SessionRepository,
    StorageError,
    StorageTimeoutError,
    create_engine,
    migrations,
)
from agent_session_store.cli import main
from agent_session_store.engine import TRANSACTION_POOLING, behind_transaction_pooler
from agent_session_store.tables import sessions_table
from benchmarks.pooler_workers import run_workers
from tests.conftest import unavailable
from tests.servers import PgBouncerServer, PostgresServer, ServerUnavailable

T = TypeVar("T")
HANG_GUARD = 30.0  # seconds: far above any healthy call, far below the test timeout


async def guarded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, HANG_GUARD)


def _fresh(server: PostgresServer | None, bouncer: PgBouncerServer | None) -> tuple[str, str]:
    """A new database: its direct URL and its URL through PgBouncer."""
    if server is None or bouncer is None:
        pytest.skip("needs the test tooling's own PostgreSQL and PgBouncer (to create databases)")
    name = f"pooled_{uuid.uuid4().hex[:12]}"
    return server.create_database(name), bouncer.url(name)


@pytest.fixture
def fresh(
    postgres_server: PostgresServer | None, pgbouncer_server: PgBouncerServer | None
) -> tuple[str, str]:
    return _fresh(postgres_server, pgbouncer_server)


# -- the engine flag --------------------------------------------------------------------------


async def test_transaction_pooling_marks_the_engine_and_the_url_flag_does_the_same() -> None:
    url = "postgresql+asyncpg://app@127.0.0.1:1/app"
    engines = [
        create_engine(url),
        create_engine(url, transaction_pooling=True),
        create_engine(f"{url}?transaction_pooling=true"),
        create_engine(f"{url}?transaction_pooling=false"),
    ]
    try:
        marked = [behind_transaction_pooler(e.sync_engine) for e in engines]
        assert marked == [False, True, True, False]
        # The flag never reaches the driver as a connect argument.
        assert all("transaction_pooling" not in e.url.query for e in engines)
    finally:
        for engine in engines:
            await engine.dispose()


def test_transaction_pooling_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="PostgreSQL through asyncpg"):
        create_engine("sqlite+aiosqlite:///x.db", transaction_pooling=True)
    with pytest.raises(ValueError, match="neither true nor false"):
        create_engine("postgresql+asyncpg://app@127.0.0.1:1/app?transaction_pooling=maybe")


def _record_autocommit(engine: AsyncEngine) -> list[str]:
    """The statements ``engine`` runs in autocommit mode (outside a transaction)."""
    seen: list[str] = []

    def before(conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    return seen


async def _every_call(repo: SessionRepository) -> None:
    session = await repo.create_session("every-call", user_id="u")
    await repo.add_checkpoint(session.session_id, "step")
    loaded = await repo.get_session(session.session_id)
    assert loaded is not None
    loaded.context["x"] = 1
    await repo.update_session(loaded)
    await repo.heartbeat(session.session_id)
    await repo.list_checkpoints(session.session_id)
    await repo.list_sessions(user_id="u")
    await repo.stats()
    await repo.delete_session(session.session_id)


def _hosts_pooled_engine(url: str) -> AsyncEngine:
    """A host application's own engine, configured as docs/embedding.md says."""
    return create_async_engine(
        url,
        connect_args={
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: "",
        },
        execution_options={TRANSACTION_POOLING: True},
    )


@pytest.mark.parametrize("engine_from", ["create_engine", "host"])
async def test_no_statement_runs_outside_a_transaction_on_a_pooled_engine(
    fresh: tuple[str, str], engine_from: str
) -> None:
    direct, pooled = fresh
    await migrations.upgrade(direct)
    plain = create_engine(pooled)
    marked = (
        create_engine(pooled, transaction_pooling=True)
        if engine_from == "create_engine"
        else _hosts_pooled_engine(pooled)
    )
    try:
        # The control: a direct-connection engine takes the autocommit fast path.
        plain_autocommit = _record_autocommit(plain)
        await _every_call(SessionRepository(async_sessionmaker(plain)))
        assert plain_autocommit
        pooled_autocommit = _record_autocommit(marked)
        await _every_call(SessionRepository(async_sessionmaker(marked)))
        assert pooled_autocommit == []
    finally:
        await plain.dispose()
        await marked.dispose()


async def test_thirty_workers_through_pgbouncer_all_succeed_and_lose_nothing(
    fresh: tuple[str, str],
) -> None:
    # The figure: with create_engine(url) 0 of 30 succeeded; SQLAlchemy's PgBouncer
    # settings alone, 1 (python -m benchmarks.pooler_workers shows all three side by side).
    direct, pooled = fresh
    await migrations.upgrade(direct)
    engine = create_engine(pooled, transaction_pooling=True, pool_size=30, max_overflow=0)
    check = create_engine(direct)
    try:
        outcome = await guarded(run_workers(engine, check, workers=30, rounds=3))
    finally:
        await engine.dispose()
        await check.dispose()
    assert (outcome.succeeded, outcome.lost) == (30, 0), outcome.line()
    assert outcome.acknowledged == 30 * (1 + 1 + 3 * 2)  # created, last version, 2 per round


# -- migrations and the CLI -------------------------------------------------------------------


async def test_migrations_through_pgbouncer_upgrade_downgrade_and_check(
    fresh: tuple[str, str],
) -> None:
    _, pooled = fresh
    url = f"{pooled}?transaction_pooling=true"
    await guarded(migrations.upgrade(url))
    assert await migrations.current(url) == migrations.head()
    await migrations.check(url)
    await guarded(migrations.downgrade(url, "base"))
    assert await migrations.current(url) is None


async def test_two_processes_migrating_through_pgbouncer_at_once_both_succeed(
    fresh: tuple[str, str],
) -> None:
    # They take turns on the transaction-scoped advisory lock, which a transaction pooler keeps
    # on one server connection for as long as it is held.
    _, pooled = fresh
    url = f"{pooled}?transaction_pooling=true"
    results = await asyncio.gather(*(_cli("db", "upgrade", "--url", url) for _ in range(2)))
    assert [code for code, _, _ in results] == [0, 0], results
    assert await migrations.current(url) == migrations.head()


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_session_store.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await guarded(process.communicate())
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_cli_works_through_pgbouncer_with_the_option_or_the_url_flag(
    fresh: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, pooled = fresh
    assert main(["db", "upgrade", "--url", pooled, "--transaction-pooling"]) == 0
    flagged = f"{pooled}?transaction_pooling=true"

    async def seed() -> str:
        engine = create_engine(flagged)
        try:
            repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
            return (await repo.create_session("cli-pooled", user_id="op")).session_id
        finally:
            await engine.dispose()

    sid = asyncio.run(seed())
    capsys.readouterr()
    for args in (
        ["db", "check", "--url", flagged],
        ["stats", "--json", "--url", pooled, "--transaction-pooling"],
        ["cleanup", "--older-than", "1h", "--no-cache", "--url", flagged],
        ["sessions", "show", sid, "--url", flagged],
    ):
        assert main(args) == 0, (args, capsys.readouterr().err)
    assert sid in capsys.readouterr().out


def test_cli_refuses_transaction_pooling_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    assert main(["db", "upgrade", "--url", url, "--transaction-pooling"]) == 2
    assert "PostgreSQL through asyncpg" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


# -- faults, on a PgBouncer of this module's own ----------------------------------------------

OWN_POOL = 2


@pytest.fixture(scope="module")
def own_bouncer(
    servers_dir: Path, postgres_server: PostgresServer | None
) -> Iterator[PgBouncerServer]:
    if postgres_server is None:
        pytest.skip("needs the test tooling's own PostgreSQL to put a PgBouncer in front of")
    try:
        bouncer = PgBouncerServer.start(
            # Not under pytest's tmp_path: see the servers_dir fixture.
            servers_dir / f"pgbouncer-{uuid.uuid4().hex[:8]}",
            postgres_server.port,
            pool_size=OWN_POOL,
            query_wait_timeout=1,
        )
    except ServerUnavailable as exc:
        unavailable(f"PgBouncer: {exc}")
    with bouncer:
        yield bouncer


@pytest.fixture
async def own(
    postgres_server: PostgresServer | None, own_bouncer: PgBouncerServer
) -> AsyncIterator[tuple[SessionRepository, AsyncEngine, PgBouncerServer]]:
    """A repository through the module's PgBouncer, and a direct engine to check with."""
    direct, pooled = _fresh(postgres_server, own_bouncer)
    await migrations.upgrade(direct)
    engine = create_engine(pooled, transaction_pooling=True)
    check = create_engine(direct)
    try:
        yield (
            SessionRepository(async_sessionmaker(engine, expire_on_commit=False)),
            check,
            own_bouncer,
        )
    finally:
        await engine.dispose()
        await check.dispose()


async def _count(check: AsyncEngine) -> int:
    async with check.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(sessions_table)) or 0)


async def test_pgbouncer_restarted_mid_run_calls_fail_with_storage_error_then_recover(
    own: tuple[SessionRepository, AsyncEngine, PgBouncerServer],
) -> None:
    repo, check, bouncer = own
    acknowledged = [(await repo.create_session("restart", user_id="u")).session_id]
    bouncer.stop()
    try:
        for _ in range(3):  # pooled connections are dead, new ones are refused
            with pytest.raises(StorageError):
                await guarded(repo.create_session("restart", user_id="u"))
            with pytest.raises(StorageError):
                await guarded(repo.get_session(acknowledged[0]))
    finally:
        bouncer.restart()
    recovered = None
    for _ in range(3):  # at most the connections that died with PgBouncer fail once more
        try:
            recovered = await guarded(repo.create_session("restart", user_id="u"))
            break
        except StorageError:
            continue
    assert recovered is not None, "the repository did not recover after PgBouncer came back"
    acknowledged.append(recovered.session_id)
    assert await guarded(repo.heartbeat(acknowledged[0]))
    for sid in acknowledged:
        assert await guarded(repo.get_session(sid)) is not None
    assert await _count(check) == len(acknowledged)


async def test_pgbouncer_restarted_under_load_keeps_every_acknowledged_write(
    own: tuple[SessionRepository, AsyncEngine, PgBouncerServer],
) -> None:
    repo, check, bouncer = own
    sid = (await repo.create_session("load", user_id="u")).session_id
    acknowledged: dict[int, str] = {1: "session_created"}
    failures: list[BaseException] = []
    started = asyncio.Event()
    restarted = asyncio.Event()

    async def appender(worker: int) -> None:
        for step in range(40):
            try:
                cp = await guarded(repo.add_checkpoint(sid, f"w{worker}-{step}"))
            except StorageError as exc:
                failures.append(exc)
                continue
            assert cp.seq is not None
            acknowledged[cp.seq] = cp.name
            if step == 5:
                started.set()
            if step == 10 and worker == 0:
                await restarted.wait()  # at least part of the run comes after the restart

    async def restart() -> None:
        await started.wait()
        await asyncio.to_thread(bouncer.restart)
        restarted.set()

    await guarded(asyncio.gather(restart(), *(appender(w) for w in range(4))))
    assert failures, "no call was in flight during the restart"
    assert all(type(exc) in (StorageError,) for exc in failures), failures
    history = await SessionRepository(async_sessionmaker(check)).list_checkpoints(sid, limit=500)
    stored = {cp.seq: cp.name for cp in history}
    assert {seq: stored.get(seq) for seq in acknowledged} == acknowledged
    assert [cp.seq for cp in history] == list(range(1, len(history) + 1))


async def test_exhausted_server_connections_give_storage_timeout_and_write_nothing(
    own: tuple[SessionRepository, AsyncEngine, PgBouncerServer],
) -> None:
    if tuple(int(part) for part in asyncpg.__version__.split(".")[:2]) < (0, 32):
        pytest.xfail(
            "asyncpg before 0.32 reports PgBouncer's query_wait_timeout only as a closed "
            "connection, which cannot be told from a lost one (StorageError, not "
            "StorageTimeoutError)"
        )
    repo, check, bouncer = own
    sid = (await repo.create_session("exhausted", user_id="u")).session_id
    holders = []
    try:
        for _ in range(OWN_POOL):  # every server connection held by an open transaction
            holder = await asyncpg.connect(
                host="127.0.0.1", port=bouncer.port, user="postgres",
                database=make_url(check.url).database, statement_cache_size=0,
            )  # fmt: skip
            holders.append(holder)
            await holder.execute("BEGIN; SELECT 1")
        with pytest.raises(StorageTimeoutError, match="query_wait_timeout"):
            await guarded(repo.create_session("exhausted", user_id="u"))
        with pytest.raises(StorageTimeoutError):
            await guarded(repo.add_checkpoint(sid, "never"))
    finally:
        for holder in holders:
            await holder.close()
    assert await _count(check) == 1
    assert [cp.name for cp in await repo.list_checkpoints(sid)] == ["session_created"]
    # Recovered once a server connection is free again.
    assert (await guarded(repo.add_checkpoint(sid, "after"))).seq == 2
