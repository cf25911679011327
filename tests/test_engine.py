"""create_engine: SQLite pragmas and pool; PostgreSQL connections that outlive a restart."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from asyncpg.exceptions import InternalClientError
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.pool import AsyncAdaptedQueuePool, StaticPool

from agent_session_store import SessionRepository, StorageError, create_engine, engine, migrations
from tests.conftest import unavailable
from tests.servers import PostgresServer, ServerUnavailable


async def test_sqlite_engine_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    sqlite = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with sqlite.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await sqlite.dispose()


class _Tracked(sqlite3.Connection):
    """A sqlite3 connection (``connect_args={"factory": ...}``) recording whether it was closed."""

    opened: ClassVar[list[_Tracked]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed = False
        self.opened.append(self)

    def close(self) -> None:
        self.closed = True
        super().close()


async def test_a_sqlite_connection_whose_pragmas_fail_is_closed_not_stranded(
    tmp_path: Path,
) -> None:
    # Another process holds the write lock of a database not yet in WAL mode: switching it fails
    # at once (timeout 0). Older SQLAlchemy releases drop a connection whose connect event failed
    # without closing it: its sqlite3 connection (and aiosqlite's thread) were left open.
    path = tmp_path / "locked.db"
    _Tracked.opened.clear()
    url = f"sqlite+aiosqlite:///{path}"
    sqlite = create_engine(url, connect_args={"timeout": 0, "factory": _Tracked})
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(OperationalError, match="locked"):
                async with sqlite.connect():
                    pass
        finally:
            await sqlite.dispose()
        holder.execute("ROLLBACK")
    assert len(_Tracked.opened) == 1 and _Tracked.opened[0].closed


async def test_sqlite_file_engine_is_pooled_and_takes_pool_arguments_on_every_sqlalchemy_2_0(
    tmp_path: Path,
) -> None:
    # SQLAlchemy before 2.0.38 gives aiosqlite file databases a NullPool, which refuses these.
    sqlite = create_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", pool_size=1, max_overflow=0, pool_timeout=1
    )
    memory = create_engine("sqlite+aiosqlite://")
    try:
        assert isinstance(sqlite.sync_engine.pool, AsyncAdaptedQueuePool)
        assert isinstance(memory.sync_engine.pool, StaticPool)  # one shared in-memory database
    finally:
        await sqlite.dispose()
        await memory.dispose()


async def test_asyncpg_internal_client_error_is_a_storage_error_and_discards_the_connection(
    postgres_url: str,
) -> None:
    pg = create_engine(postgres_url)

    def broken_protocol(*_args: object) -> None:
        # What asyncpg raises when a connection its server dropped mid-operation is reused.
        raise InternalClientError("cannot switch to state 12; another operation (2) is in progress")

    try:
        await migrations.upgrade(pg)
        repo = SessionRepository(async_sessionmaker(pg))
        sid = (await repo.create_session("planner")).session_id
        async with pg.connect() as conn:
            event.listen(pg.sync_engine, "do_execute", broken_protocol)
            try:
                with pytest.raises(InternalClientError):
                    await conn.execute(text("SELECT :x"), {"x": 1})
                assert conn.invalidated  # the pool will not hand this connection out again
                with pytest.raises(StorageError, match="InternalClientError"):
                    await repo.get_session(sid)
            finally:
                event.remove(pg.sync_engine, "do_execute", broken_protocol)
        assert await repo.get_session(sid) is not None
    finally:
        await pg.dispose()


@pytest.fixture
def own_postgres(servers_dir: Path) -> PostgresServer:
    # Not under pytest's tmp_path: another pytest process resets that tree to mode 0700.
    try:
        return PostgresServer.start(servers_dir / f"engine-pg-{uuid.uuid4().hex[:8]}")
    except ServerUnavailable as exc:
        unavailable(f"PostgreSQL: {exc}")
        raise


@pytest.fixture
async def pg_repo(own_postgres: PostgresServer) -> AsyncIterator[tuple[SessionRepository, str]]:
    """A repository on a private server, with one session stored (its id)."""
    with own_postgres:
        pg = create_engine(own_postgres.url)
        try:
            await migrations.upgrade(pg)
            repo = SessionRepository(async_sessionmaker(pg))
            yield repo, (await repo.create_session("planner")).session_id
        finally:
            await pg.dispose()


async def test_idle_connections_are_pinged_and_replaced_after_a_restart(
    own_postgres: PostgresServer,
    pg_repo: tuple[SessionRepository, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, sid = pg_repo
    own_postgres.restart()  # every pooled connection is now dead
    monkeypatch.setattr(engine, "IDLE_PING_AFTER", 0.0)  # they all count as idle
    assert await repo.get_session(sid) is not None


async def test_without_the_ping_a_dead_connection_fails_once_then_the_pool_recovers(
    own_postgres: PostgresServer,
    pg_repo: tuple[SessionRepository, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, sid = pg_repo
    own_postgres.restart()
    monkeypatch.setattr(engine, "IDLE_PING_AFTER", 3600.0)  # used "just now"
    with pytest.raises(StorageError):
        await repo.get_session(sid)
    assert await repo.get_session(sid) is not None
