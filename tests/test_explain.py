"""The planner picks indexes for the statements the repository really sends (PostgreSQL).

A fresh database is migrated, seeded in bulk with 20,000 sessions of realistic shape (200 users,
20 agent types, every state, 1% of the active ones stale, three checkpoints each and one long
history) and ANALYZEd. The repository's own SQL is captured with ``before_cursor_execute`` while
it runs, then EXPLAINed with the captured parameters. ``enable_seqscan`` stays on: the point
is that the planner chooses the indexes on its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from agent_session_store import SessionRepository, SessionState, create_engine, migrations

pytestmark = pytest.mark.postgres_only

SESSIONS = 20_000
USERS = 200
AGENT_TYPES = 20
LONG_HISTORY = 2_000
OUR_TABLES = re.compile(r"\bagent_sessions_(sessions|checkpoints)\b")
SEQ_SCAN = re.compile(r"Seq Scan on agent_sessions_(sessions|checkpoints)\b")

# State by i % 20: 1 paused, 1 deleted, 8 completed, 3 failed, 7 active (one in 100 stale).
_SEED_SESSIONS = """
INSERT INTO agent_sessions_sessions (id, agent_type, user_id, state, context, metadata,
    checkpoint_count, version, created_at, updated_at, last_heartbeat, key, expires_at)
SELECT gen_random_uuid(), 'agent-' || mod(i, :agent_types), 'user-' || mod(i, :users),
    CASE WHEN mod(i, 20) = 0 THEN 'paused' WHEN mod(i, 20) = 1 THEN 'deleted'
         WHEN mod(i, 20) < 10 THEN 'completed' WHEN mod(i, 20) < 13 THEN 'failed'
         ELSE 'active' END,
    jsonb_build_object('step', i), jsonb_build_object('team', 'team-' || mod(i, 500)), 3, 1,
    CAST(:now AS timestamptz) - interval '30 days' + i * interval '1 minute',
    CAST(:now AS timestamptz) - interval '30 days' + i * interval '1 minute',
    CASE WHEN mod(i, 100) = 13 THEN CAST(:now AS timestamptz) - interval '3 days'
         ELSE CAST(:now AS timestamptz) - mod(i, 3600) * interval '1 second' END,
    CASE WHEN mod(i, 4) = 0 THEN 'chat-' || i END,
    CASE WHEN mod(i, 50) = 7 THEN CAST(:now AS timestamptz) + (1 + mod(i, 7)) * interval '1 day'
         WHEN mod(i, 1000) = 9 THEN CAST(:now AS timestamptz) - interval '1 hour' END
FROM generate_series(1, :sessions) AS s(i)
"""
_SEED_CHECKPOINTS = """
INSERT INTO agent_sessions_checkpoints (session_id, seq, name, data, created_at)
SELECT s.id, n, 'step', jsonb_build_object('n', n), s.created_at
FROM agent_sessions_sessions AS s CROSS JOIN generate_series(1, 3) AS n
"""
_LONG_SESSION = """
UPDATE agent_sessions_sessions SET checkpoint_count = :count, state = 'active', expires_at = NULL
WHERE id = (SELECT id FROM agent_sessions_sessions WHERE user_id = 'user-7' LIMIT 1)
RETURNING id
"""
_LONG_CHECKPOINTS = """
INSERT INTO agent_sessions_checkpoints (session_id, seq, name, data, created_at)
SELECT :sid, n, 'step', jsonb_build_object('n', n), CAST(:now AS timestamptz)
FROM generate_series(4, :count) AS n
"""


@dataclass
class Seeded:
    engine: AsyncEngine
    repo: SessionRepository
    long_session: str
    now: datetime
    statements: list[tuple[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
async def seeded(postgres_url: str) -> AsyncIterator[Seeded]:
    """A fresh, migrated, seeded and analyzed database; removed afterwards."""
    name = f"explain_{uuid.uuid4().hex[:10]}"
    # No pool: other tests may terminate idle connections while this module runs.
    admin = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))  # our own generated name
    engine = create_engine(make_url(postgres_url).set(database=name).render_as_string(False))
    try:
        await migrations.upgrade(engine)
        now = datetime.now(UTC)
        async with engine.begin() as conn:
            params = {"sessions": SESSIONS, "users": USERS, "agent_types": AGENT_TYPES, "now": now}
            await conn.execute(text(_SEED_SESSIONS), params)
            await conn.execute(text(_SEED_CHECKPOINTS))
            sid = (await conn.execute(text(_LONG_SESSION), {"count": LONG_HISTORY})).scalar_one()
            await conn.execute(
                text(_LONG_CHECKPOINTS), {"sid": sid, "count": LONG_HISTORY, "now": now}
            )
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("VACUUM ANALYZE agent_sessions_sessions"))
            await auto.execute(text("VACUUM ANALYZE agent_sessions_checkpoints"))
        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
        yield Seeded(engine, repo, str(sid), now)
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.dispose()


async def _list_next_page(repo: SessionRepository, s: Seeded) -> object:
    first = await repo.list_sessions(user_id="user-3", limit=20)
    s.statements.clear()  # only the second page's statement
    return await repo.list_sessions(user_id="user-3", limit=20, cursor=first.next_cursor)


async def _write_then_read(repo: SessionRepository, s: Seeded) -> object:
    await repo.add_checkpoint(s.long_session, "step", {"n": 1})
    await repo.heartbeat(s.long_session)
    return await repo.list_checkpoints(s.long_session, after_seq=LONG_HISTORY - 50)


async def _by_key(repo: SessionRepository, s: Seeded) -> object:
    await repo.create_session("agent-5", "user-5", key="chat-1")
    s.statements.clear()  # only the read's statement
    return await repo.get_session_by_key("agent-5", "user-5", key="chat-1")


async def _rewind(repo: SessionRepository, s: Seeded) -> object:
    await repo.pop_checkpoint(s.long_session)
    return await repo.truncate_checkpoints(s.long_session, LONG_HISTORY - 20)


Call = Callable[[SessionRepository, Seeded], Awaitable[object]]
OPERATIONS: dict[str, Call] = {
    "list_sessions by user": lambda repo, s: repo.list_sessions(user_id="user-7"),
    "list_sessions by user, next page": _list_next_page,
    "list_sessions by agent type": lambda repo, s: repo.list_sessions(agent_type="agent-5"),
    "list_sessions by state": lambda repo, s: repo.list_sessions(state=SessionState.PAUSED),
    "list_sessions, everyone's": lambda repo, s: repo.list_sessions(),
    "get_session": lambda repo, s: repo.get_session(s.long_session),
    "cleanup_stale_sessions": lambda repo, s: repo.cleanup_stale_sessions(timedelta(hours=48)),
    "add_checkpoint, heartbeat, list_checkpoints": _write_then_read,
    "get_session_by_key": _by_key,
    "get_session with a wider window": lambda repo, s: repo.get_session(
        s.long_session, recent_checkpoints=100
    ),
    "list_checkpoints, newest first": lambda repo, s: repo.list_checkpoints(
        s.long_session, newest_first=True, limit=20
    ),
    "list_checkpoints since a time": lambda repo, s: repo.list_checkpoints(
        s.long_session, since=datetime.now(UTC) - timedelta(days=1), limit=20
    ),
    "add_checkpoints": lambda repo, s: repo.add_checkpoints(
        s.long_session, [("step", {"n": i}) for i in range(10)]
    ),
    "pop_checkpoint, truncate_checkpoints": _rewind,
    "delete_session hard": lambda repo, s: repo.delete_session(s.long_session, hard=True),
}

# The list filters (issue 19): each served by its own index, the one named here.
_DAY_ONE = timedelta(days=30)  # the seed's first updated_at is now - 30 days
FILTERS: dict[str, tuple[Call, str]] = {
    "list_sessions by key prefix": (
        lambda repo, s: repo.list_sessions(key_prefix="chat-123"),
        "ix_agent_sessions_sessions_key_pattern",
    ),
    "count_sessions by key prefix": (
        lambda repo, s: repo.count_sessions(key_prefix="chat-123"),
        "ix_agent_sessions_sessions_key_pattern",
    ),
    "list_sessions updated before": (
        lambda repo, s: repo.list_sessions(updated_before=s.now - _DAY_ONE + timedelta(hours=2)),
        "ix_agent_sessions_sessions_updated_at",
    ),
    "count_sessions updated after": (
        lambda repo, s: repo.count_sessions(updated_after=s.now - timedelta(hours=2)),
        "ix_agent_sessions_sessions_updated_at",
    ),
    "list_sessions by metadata": (
        lambda repo, s: repo.list_sessions(metadata={"team": "team-7"}),
        "ix_agent_sessions_sessions_metadata",
    ),
    "count_sessions by metadata": (
        lambda repo, s: repo.count_sessions(metadata={"team": "team-7"}),
        "ix_agent_sessions_sessions_metadata",
    ),
    "purge_expired_sessions": (
        lambda repo, s: repo.purge_expired_sessions(),
        "ix_agent_sessions_sessions_expires_at",
    ),
}


async def _captured(seeded: Seeded, call: Call) -> list[tuple[str, Any]]:
    """The statements on our tables that ``call`` made the repository send."""

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if OUR_TABLES.search(statement):
            seeded.statements.append((statement, params))

    seeded.statements.clear()
    event.listen(seeded.engine.sync_engine, "before_cursor_execute", capture)
    try:
        # Roll back whatever the call writes: the next case sees the seeded data.
        async with async_sessionmaker(seeded.engine, expire_on_commit=False)() as db:
            await db.begin()
            await call(seeded.repo.bind(db), seeded)
            await db.rollback()
    finally:
        event.remove(seeded.engine.sync_engine, "before_cursor_execute", capture)
    return list(seeded.statements)


async def _plan(engine: AsyncEngine, statement: str, params: Any) -> str:
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql(f"EXPLAIN {statement}", params)
        return "\n".join(row[0] for row in rows)


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_repository_statements_use_indexes_not_seq_scans(
    seeded: Seeded, operation: str
) -> None:
    statements = await _captured(seeded, OPERATIONS[operation])
    assert statements, f"{operation} sent no statement on the agent_session_store tables"
    for statement, params in statements:
        plan = await _plan(seeded.engine, statement, params)
        assert not SEQ_SCAN.search(plan), f"{operation}:\n{statement}\n{params}\n{plan}"
        if not statement.startswith("INSERT"):  # every read finds its rows through an index
            assert "Index" in plan, f"{operation}: no index in the plan:\n{statement}\n{plan}"


@pytest.mark.parametrize("operation", FILTERS)
async def test_each_list_filter_is_served_by_its_index(seeded: Seeded, operation: str) -> None:
    call, index = FILTERS[operation]
    statements = await _captured(seeded, call)
    assert statements, f"{operation} sent no statement on the agent_session_store tables"
    statement, params = statements[0]  # the list, the count, the purge's batch
    plan = await _plan(seeded.engine, statement, params)
    assert not SEQ_SCAN.search(plan), f"{operation}:\n{statement}\n{params}\n{plan}"
    assert index in plan, f"{operation}: {index} not in the plan:\n{statement}\n{plan}"
