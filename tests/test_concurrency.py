"""Concurrent writers, the caller's transaction (bind), and failures that must not be swallowed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import (
    ConcurrentUpdateError,
    SessionRepository,
    SessionState,
    StorageError,
    StorageTimeoutError,
    create_engine,
)
from tests.conftest import Backend


async def test_two_copies_updated_at_once_one_conflicts(repo: SessionRepository) -> None:
    created = await repo.create_session("planner")
    copies = [await repo.get_session(created.session_id) for _ in range(2)]
    for i, copy in enumerate(copies):
        assert copy is not None
        copy.context["writer"] = i
        copy.checkpoint(f"by-{i}")
    results = await asyncio.gather(
        *(repo.update_session(c) for c in copies if c is not None), return_exceptions=True
    )
    conflicts = [r for r in results if isinstance(r, ConcurrentUpdateError)]
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(conflicts) == 1 and len(winners) == 1
    stored = await repo.get_session(created.session_id)
    assert stored is not None
    assert stored.context == winners[0].context and stored.checkpoint_count == 2


async def test_ten_workers_racing_on_one_version_exactly_one_wins(repo: SessionRepository) -> None:
    created = await repo.create_session("planner")
    copies = [await repo.get_session(created.session_id) for _ in range(10)]
    results = await asyncio.gather(
        *(repo.update_session(c) for c in copies if c is not None), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(
        isinstance(r, ConcurrentUpdateError) for r in results if isinstance(r, BaseException)
    )


async def test_twenty_concurrent_add_checkpoint_get_distinct_consecutive_seqs(
    repo: SessionRepository,
) -> None:
    created = await repo.create_session("planner")
    added = await asyncio.gather(
        *(repo.add_checkpoint(created.session_id, f"cp-{i}", {"i": i}) for i in range(20))
    )
    assert sorted(cp.seq for cp in added if cp.seq is not None) == list(range(2, 22))
    history = await repo.list_checkpoints(created.session_id)
    assert [cp.seq for cp in history] == list(range(1, 22))
    assert {cp.name for cp in history[1:]} == {f"cp-{i}" for i in range(20)}


async def test_heartbeats_racing_with_updates_never_conflict(repo: SessionRepository) -> None:
    created = await repo.create_session("planner")
    session = await repo.get_session(created.session_id)
    assert session is not None
    for step in range(5):
        session.context["step"] = step
        session, *_ = await asyncio.gather(
            repo.update_session(session), *(repo.heartbeat(created.session_id) for _ in range(3))
        )
    assert session.version == 6


async def test_bind_writes_inside_the_callers_transaction_and_rolls_back(
    repo: SessionRepository, db: Backend
) -> None:
    kept = await repo.create_session("planner", context={"v": 0})
    async with db.factory() as s, s.begin():
        bound = repo.bind(s)
        created = await bound.create_session("planner")
        current = await bound.get_session(kept.session_id)
        assert current is not None
        current.context["v"] = 1
        await bound.update_session(current)
        await bound.add_checkpoint(kept.session_id, "inside")
        assert await bound.get_session(created.session_id) is not None  # sees its own writes
        await s.rollback()
    assert await repo.get_session(created.session_id) is None
    stored = await repo.get_session(kept.session_id)
    assert stored is not None
    assert stored.context == {"v": 0} and stored.checkpoint_count == 1 and stored.version == 1


async def test_bind_commits_with_the_caller(repo: SessionRepository, db: Backend) -> None:
    assert repo.session_factory is db.factory  # what a caller opens its transaction with
    kept = await repo.create_session("planner")
    async with repo.session_factory() as s, s.begin():
        bound = repo.bind(s)
        current = await bound.get_session(kept.session_id)
        assert current is not None
        current.pause()
        await bound.update_session(current)
        await bound.add_checkpoint(kept.session_id, "inside")
    stored = await repo.get_session(kept.session_id)
    assert stored is not None
    assert stored.state is SessionState.PAUSED and stored.checkpoint_count == 2


async def test_bind_never_commits_on_its_own(repo: SessionRepository, db: Backend) -> None:
    async with db.factory() as s:
        await s.begin()
        created = await repo.bind(s).create_session("planner")
        assert s.in_transaction()
        assert await repo.get_session(created.session_id) is None  # not visible outside yet
        await s.commit()
    assert await repo.get_session(created.session_id) is not None


@pytest.fixture
async def failing_checkpoint_insert(db: Backend) -> AsyncIterator[None]:
    """A trigger that makes the database refuse checkpoints named 'boom'."""
    async with db.engine.begin() as conn:
        if db.name == "sqlite":
            # A pooled SQLite connection may still have the dropped trigger in its schema cache.
            await conn.execute(text("DROP TRIGGER IF EXISTS boom"))
            await conn.execute(text(
                "CREATE TRIGGER boom BEFORE INSERT ON agent_sessions_checkpoints "
                "WHEN NEW.name = 'boom' BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
            ))  # fmt: skip
        else:
            await conn.execute(text(
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.name = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF; "
                "RETURN NEW; END $$"
            ))  # fmt: skip
            await conn.execute(text(
                "CREATE TRIGGER boom BEFORE INSERT ON agent_sessions_checkpoints "
                "FOR EACH ROW EXECUTE FUNCTION boom()"
            ))  # fmt: skip
    yield
    async with db.engine.begin() as conn:
        if db.name == "sqlite":
            await conn.execute(text("DROP TRIGGER boom"))
        else:
            await conn.execute(text("DROP TRIGGER boom ON agent_sessions_checkpoints"))
            await conn.execute(text("DROP FUNCTION boom()"))


@pytest.mark.usefixtures("failing_checkpoint_insert")
async def test_database_error_on_save_raises_and_leaves_nothing_half_written(
    repo: SessionRepository,
) -> None:
    # The old manager swallowed database errors on save: data lost without a sound.
    created = await repo.create_session("planner", context={"v": 0})
    session = await repo.get_session(created.session_id)
    assert session is not None
    session.context["v"] = 1
    session.checkpoint("fine")
    session.checkpoint("boom")
    with pytest.raises(StorageError, match="boom refused"):
        await repo.update_session(session)
    with pytest.raises(StorageError, match="boom refused"):
        await repo.add_checkpoint(created.session_id, "boom")
    stored = await repo.get_session(created.session_id)
    assert stored is not None
    assert stored.context == {"v": 0} and stored.version == 1 and stored.checkpoint_count == 1


async def test_unreachable_database_raises_storage_error() -> None:
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    try:
        repo = SessionRepository(async_sessionmaker(engine))
        with pytest.raises(StorageError, match="create_session failed"):
            await repo.create_session("planner")
        with pytest.raises(StorageError, match="heartbeat failed"):
            await repo.heartbeat(str(uuid.uuid4()))
    finally:
        await engine.dispose()


async def test_exhausted_pool_raises_a_timeout_error_not_a_hang(db: Backend) -> None:
    url = db.engine.url.render_as_string(hide_password=False)
    engine = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        repo = SessionRepository(async_sessionmaker(engine))
        await repo.create_session("planner")  # the schema check is done
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(StorageTimeoutError, match="pool_size"):
                await repo.create_session("planner")
    finally:
        await engine.dispose()
