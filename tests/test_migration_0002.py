"""Revision 0002 (keys, the checkpoints' time index, shared state) on databases holding data.

Rows are written with plain SQL as revision 0001 left them (no live models: they describe
head), then the database goes up to head, down to 0001 and up again, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, bindparam, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import SessionExistsError, SessionRepository, create_engine, migrations
from agent_session_store.tables import UtcDateTime
from tests.test_migrations import empty_pg_url  # noqa: F401 (a fixture)
from tests.test_migrations import empty_url as empty_url_fixture

empty_url = empty_url_fixture

SESSIONS = 50
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
# Typed, so SQLite stores it as the library does (Python 3.12+ deprecates sqlite3's own adapter).
NOW_PARAM = bindparam("now", type_=UtcDateTime())


async def seed_at_0001(engine: AsyncEngine) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(SESSIONS)]
    async with engine.begin() as conn:
        for i, sid in enumerate(ids):
            state = "deleted" if i % 10 == 0 else "active"
            row = {"id": sid if conn.dialect.name == "postgresql" else sid.replace("-", ""),
                   "user": f"u{i % 3}", "state": state, "now": NOW}  # fmt: skip
            await conn.execute(
                text(
                    "INSERT INTO agent_sessions_sessions (id, agent_type, user_id, state, "
                    "context, metadata, checkpoint_count, version, created_at, updated_at, "
                    "last_heartbeat) VALUES (:id, 'planner', :user, :state, '{\"i\": 1}', '{}', "
                    "2, 2, :now, :now, :now)"
                ).bindparams(NOW_PARAM),
                row,
            )
            for seq in (1, 2):
                await conn.execute(
                    text(
                        "INSERT INTO agent_sessions_checkpoints (session_id, seq, name, data, "
                        "created_at) VALUES (:id, :seq, 'step', '{}', :now)"
                    ).bindparams(NOW_PARAM),
                    {**row, "seq": seq},
                )
    return ids


def columns(connection: Connection) -> dict[str, set[str]]:
    inspector = inspect(connection)
    return {
        table: {c["name"] for c in inspector.get_columns(table)}
        for table in inspector.get_table_names()
        if table.startswith("agent_sessions_") and not table.endswith("version")
    }


async def counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        sessions = await conn.scalar(text("SELECT count(*) FROM agent_sessions_sessions"))
        checkpoints = await conn.scalar(text("SELECT count(*) FROM agent_sessions_checkpoints"))
    return int(sessions or 0), int(checkpoints or 0)


async def test_0002_upgrade_downgrade_upgrade_keeps_the_data(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        await migrations.upgrade(engine, "0001")
        ids = await seed_at_0001(engine)
        await migrations.upgrade(engine)
        assert await counts(engine) == (SESSIONS, 2 * SESSIONS)
        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
        old = await repo.get_session(ids[1])
        assert old is not None and old.key is None and old.context == {"i": 1}
        assert [cp.seq for cp in old.checkpoints] == [1, 2]
        keyed = await repo.create_session("planner", "u1", key="k")
        with pytest.raises(SessionExistsError):
            await repo.create_session("planner", "u1", key="k")
        await repo.update_shared_state("planner", {"a": 1})
        assert (await repo.add_checkpoints(ids[1], [("x", {}), ("y", {})]))[-1].seq == 4

        await migrations.downgrade(engine, "0001")
        async with engine.connect() as conn:
            schema = await conn.run_sync(columns)
        assert "agent_sessions_shared_state" not in schema
        assert "key" not in schema["agent_sessions_sessions"]
        assert await counts(engine) == (SESSIONS + 1, 2 * SESSIONS + 3)

        await migrations.upgrade(engine)
        await migrations.check(engine)
        fresh = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
        again = await fresh.get_session(keyed.session_id)
        assert again is not None and again.key is None  # keys do not survive a downgrade
        assert await fresh.get_session_by_key("planner", "u1", key="k") is None
        assert await fresh.create_session("planner", "u1", key="k") is not None
        assert await fresh.get_shared_state("planner") == {}
        session = await fresh.get_session(ids[1])
        assert session is not None and session.checkpoint_count == 4
    finally:
        await engine.dispose()
