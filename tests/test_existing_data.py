"""Data written by the release before the rename (``agent-sessions`` 0.1.0) works untouched.

The rename changed the package's names, not its data's: the tables, the Alembic version table
and its revision ids, and the cache's default namespace and entry format stay. The database
(``tests/data/release_0_1_0.sql``) and the cache entries (``release_0_1_0_cache.json``) were
made by that release; this test loads them as they are and uses them through this one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import (
    RedisCache,
    SessionRepository,
    create_engine,
    migrations,
)

DATA = Path(__file__).parent / "data"
RELEASE_CACHE = json.loads((DATA / "release_0_1_0_cache.json").read_text())


@pytest.fixture
async def old_database(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    path = tmp_path / "agent_sessions.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((DATA / "release_0_1_0.sql").read_text())
    conn.close()
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    yield engine
    await engine.dispose()


async def test_a_database_made_by_the_release_before_the_rename_upgrades_and_reads(
    old_database: AsyncEngine,
) -> None:
    await migrations.upgrade(old_database)
    await migrations.check(old_database)
    repo = SessionRepository(async_sessionmaker(old_database, expire_on_commit=False))
    chat = await repo.get_session_by_key("planner", "alice", key="chat-42")
    assert chat is not None and chat.session_id == RELEASE_CACHE["session_id"]
    assert (chat.context, chat.metadata, chat.version) == ({"goal": "Q3"}, {"team": "a"}, 2)
    assert [(cp.seq, cp.name) for cp in chat.checkpoints] == [
        (1, "session_created"),
        (2, "plan"),
        (3, "search"),
    ]
    assert (await repo.stats()).by_state == {"active": 1, "completed": 1, "deleted": 1}
    assert await repo.get_shared_state("planner", user_id="alice") == {"theme": "dark"}
    assert await repo.get_shared_state("planner") == {"lang": "en"}
    stored = await repo.add_checkpoint(chat.session_id, "write", {"words": 800})
    assert stored.seq == 4


async def test_the_release_before_the_renames_cache_entries_are_misses_since_expiry(
    old_database: AsyncEngine, redis_url: str
) -> None:
    # Revisions after 0.1.0's add tables (0003) and columns (0004: expires_at, an idempotency
    # key) and change none of its data. AgentSession gained expires_at with 0004: an entry of
    # 0.1 (which knows no expiry) would serve a session past its expiry, so its schema
    # fingerprint no longer matches and it is a miss, refilled from the database.
    await migrations.upgrade(old_database)
    client = Redis.from_url(redis_url)
    entries: dict[str, str] = RELEASE_CACHE["entries"]
    # An entry carries a fingerprint of AgentSession's JSON schema, which pydantic writes: under
    # another pydantic than the one the entries were made with (the lowest job's) the
    # fingerprint differs for that reason too. Either way the entries are misses.
    try:
        await client.delete(*entries)
        await client.mset(entries)
        cache = RedisCache(client)  # the default namespace, as the old release used it
        factory = async_sessionmaker(old_database, expire_on_commit=False)
        repo = SessionRepository(factory, cache=cache)
        uncached = await SessionRepository(factory).get_session(RELEASE_CACHE["session_id"])
        assert await repo.get_session(RELEASE_CACHE["session_id"]) == uncached
        # A miss: the entry's format, namespace and epoch are still 0.1's, its schema
        # fingerprint is not (the model has expires_at now).
        assert (cache.stats.hits, cache.stats.misses) == (0, 1)
        await cache.drain()
        assert await repo.get_session(RELEASE_CACHE["session_id"]) == uncached
        assert (cache.stats.hits, cache.stats.misses) == (1, 1)  # refilled
        await repo.add_checkpoint(RELEASE_CACHE["session_id"], "write", {"words": 800})
        again = await repo.get_session(RELEASE_CACHE["session_id"])
        assert again is not None and again.checkpoint_count == 4
        assert again.checkpoints[-1].name == "write"
        await cache.drain()
    finally:
        await client.delete(*entries)
        await client.aclose()
