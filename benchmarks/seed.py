"""Payloads and bulk seeding: rows are generated inside the database, never through the API.

PostgreSQL seeds with ``INSERT ... SELECT ... generate_series``, SQLite with a recursive CTE.
Values use the storage formats SQLAlchemy's types use on each backend (on SQLite: UUIDs as 32
hex digits, timestamps as ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC), so the repository reads the
seeded rows exactly like its own.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_session_store.tables import sessions_table

# About 1 KB as JSON: what an agent typically keeps in its context between steps.
CONTEXT: dict[str, Any] = {
    "goal": "Summarise the quarterly report and draft three follow-up questions",
    "plan": [f"step {i}: search, read, extract, cite" for i in range(12)],
    "notes": "n" * 320,
    "step": 0,
}
CHECKPOINT_DATA: dict[str, Any] = {"tool": "search", "query": "q3 revenue", "hits": 12}
SMALL_CONTEXT: dict[str, Any] = {"step": 3, "goal": "stale agent"}

_SQLITE_TIME = "%Y-%m-%d %H:%M:%S"

_PG_SESSIONS = """
INSERT INTO agent_sessions_sessions (id, agent_type, user_id, state, context, metadata,
    checkpoint_count, version, created_at, updated_at, last_heartbeat)
SELECT gen_random_uuid(), 'agent-' || mod(i, 10), CAST(:user_prefix AS text) || mod(i, :users),
    'active', CAST(:context AS jsonb), '{}'::jsonb, 0, 1,
    CAST(:created AS timestamptz) + i * interval '1 second',
    CAST(:created AS timestamptz) + i * interval '1 second',
    CAST(:heartbeat AS timestamptz) - i * interval '1 second'
FROM generate_series(1, CAST(:count AS integer)) AS s(i)
"""

_SQLITE_SESSIONS = """
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :count)
INSERT INTO agent_sessions_sessions (id, agent_type, user_id, state, context, metadata,
    checkpoint_count, version, created_at, updated_at, last_heartbeat)
SELECT lower(hex(randomblob(16))), 'agent-' || (i % 10), :user_prefix || (i % :users),
    'active', :context, '{}', 0, 1,
    strftime('%Y-%m-%d %H:%M:%S', :created, '+' || i || ' seconds') || '.000000',
    strftime('%Y-%m-%d %H:%M:%S', :created, '+' || i || ' seconds') || '.000000',
    strftime('%Y-%m-%d %H:%M:%S', :heartbeat, '-' || i || ' seconds') || '.000000'
FROM s
"""

_PG_CHECKPOINTS = """
INSERT INTO agent_sessions_checkpoints (session_id, seq, name, data, created_at)
SELECT :sid, i, 'step', CAST(:data AS jsonb), CAST(:created AS timestamptz)
FROM generate_series(1, CAST(:count AS integer)) AS s(i)
"""

_SQLITE_CHECKPOINTS = """
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :count)
INSERT INTO agent_sessions_checkpoints (session_id, seq, name, data, created_at)
SELECT :sid, i, 'step', :data, :created || '.000000' FROM s
"""


def _when(engine: AsyncEngine, value: datetime) -> Any:
    return value if engine.dialect.name == "postgresql" else value.strftime(_SQLITE_TIME)


async def bulk_sessions(
    engine: AsyncEngine,
    count: int,
    *,
    users: int,
    user_prefix: str = "user-",
    stale: bool = False,
    context: dict[str, Any] | None = None,
) -> None:
    """Insert ``count`` ACTIVE sessions with database-generated ids and no checkpoints.

    They belong to ``users`` users (``user_prefix`` + 0..users-1) and ten agent types, were
    created a second apart over the past weeks, and last beat their heart now (``stale``:
    three days ago or earlier, a second apart).
    """
    now = datetime.now(UTC)
    heartbeat = now - timedelta(days=3) if stale else now
    sql = _PG_SESSIONS if engine.dialect.name == "postgresql" else _SQLITE_SESSIONS
    params = {
        "count": count,
        "users": users,
        "user_prefix": user_prefix,
        "context": json.dumps(SMALL_CONTEXT if context is None else context),
        "created": _when(engine, now - timedelta(days=30)),
        "heartbeat": _when(engine, heartbeat),
    }
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def sessions_with_checkpoints(
    engine: AsyncEngine, count: int, checkpoints: int, *, user_id: str = "bench-user"
) -> list[str]:
    """Insert ``count`` ACTIVE sessions holding ``checkpoints`` checkpoints each; their ids."""
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    rows = [
        {"id": sid, "agent_type": "bench", "user_id": user_id, "state": "active",
         "context": CONTEXT, "metadata": {}, "checkpoint_count": checkpoints, "version": 1,
         "created_at": now, "updated_at": now, "last_heartbeat": now}
        for sid in ids
    ]  # fmt: skip
    postgres = engine.dialect.name == "postgresql"
    async with engine.begin() as conn:
        await conn.execute(insert(sessions_table), rows)
        for sid in ids if checkpoints else ():
            params = {
                "sid": sid if postgres else sid.hex,
                "count": checkpoints,
                "data": json.dumps(CHECKPOINT_DATA),
                "created": _when(engine, now),
            }
            await conn.execute(text(_PG_CHECKPOINTS if postgres else _SQLITE_CHECKPOINTS), params)
    return [str(sid) for sid in ids]


async def analyze(engine: AsyncEngine) -> None:
    """Refresh the planner's statistics (and, on PostgreSQL, the visibility map)."""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE agent_sessions_sessions"))
            await conn.execute(text("VACUUM ANALYZE agent_sessions_checkpoints"))
    else:
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
