"""create_engine: SQLite pragmas, and PostgreSQL connections that outlive a server restart."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_sessions import SessionRepository, StorageError, create_engine, engine, migrations
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
