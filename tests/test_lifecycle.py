"""Erasure (``erase_user``) and retention (``purge_finished_sessions``), on every backend.

Each test runs on SQLite, PostgreSQL and PostgreSQL behind PgBouncer, each without and with the
Redis cache (the ``repo`` fixture). "No row holds the user id" is checked by reading every row
of every table of the schema and looking for the id in the text of every column.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from agent_session_store import (
    ErasureReport,
    RedisCache,
    SessionRepository,
    SessionState,
    SessionValidationError,
)
from agent_session_store.tables import checkpoints_table, metadata, sessions_table
from tests.conftest import Backend, FakeClock
from tests.langgraph_parts import store_a_thread


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


async def rows_holding(db: Backend, needle: str) -> list[tuple[str, str]]:
    """Every (table, column) of the schema where a row's value holds ``needle`` as text."""
    found = []
    async with db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in (await conn.execute(select(table))).mappings():
                found += [(table.name, col) for col, v in row.items() if needle in _text(v)]
    return found


async def count(db: Backend, table: Any, **where: Any) -> int:
    stmt = select(func.count()).select_from(table)
    for name, value in where.items():
        stmt = stmt.where(table.c[name] == value)
    async with db.engine.connect() as conn:
        return int(await conn.scalar(stmt) or 0)


async def drain(repo: SessionRepository) -> None:
    if isinstance(repo.cache, RedisCache):
        await repo.cache.drain()  # a miss stores its copy after returning


async def seed_user(repo: SessionRepository, user: str, agent_type: str = "planner") -> list[str]:
    """Sessions of ``user`` in every state, with checkpoints, a key and shared state holding
    the id; returns their ids."""
    about = {"owner": user, "note": f"written by {user}"}
    ids = []
    for state in SessionState:
        s = await repo.create_session(agent_type, user, about, about, key=f"{state.value}-{user}")
        await repo.add_checkpoint(s.session_id, "said", about)
        if state is SessionState.DELETED:
            assert await repo.delete_session(s.session_id)
        elif state is not SessionState.ACTIVE:
            s = await repo.get_session(s.session_id)
            assert s is not None
            s.state = state
            await repo.update_session(s)
        ids.append(s.session_id)
    await repo.update_shared_state(agent_type, {"last": user}, user_id=user)
    return ids


async def test_erase_user_leaves_no_row_holding_the_user_id(
    repo: SessionRepository, db: Backend, user: str
) -> None:
    other = f"other-{uuid.uuid4().hex[:8]}"
    mine = await seed_user(repo, user)
    mine += await seed_user(repo, user, agent_type="writer")
    theirs = await seed_user(repo, other)
    await repo.update_shared_state("planner", {"theme": "dark"})  # app-wide: nobody's
    # A LangGraph thread of the user, where the lowest job has LangGraph (it cannot install it).
    threads = await store_a_thread(repo, f"lg-{uuid.uuid4().hex[:8]}", f"thread-{user}", user)
    assert len(await rows_holding(db, user)) > 10  # the scan does find the id where it is

    report = await repo.erase_user(user)

    assert report.sessions == len(mine) + threads  # a LangGraph thread is a session of the user
    assert report.checkpoints == 2 * len(mine) + threads
    assert report.shared_state == 2
    assert await rows_holding(db, user) == []
    for session_id in mine:
        assert await repo.get_session(session_id) is None
    for session_id in theirs[:-1]:  # the last one is soft-deleted
        found = await repo.get_session(session_id)
        assert found is not None and found.checkpoint_count == 2
    assert await count(db, sessions_table, user_id=other) == len(theirs)
    assert await repo.get_shared_state("planner", user_id=other) == {"last": other}
    assert await repo.get_shared_state("planner") == {"theme": "dark"}
    assert await repo.erase_user(user) == ErasureReport(0, 0, 0)


async def test_erase_user_never_serves_a_cached_copy_afterwards(
    repo: SessionRepository, user: str
) -> None:
    ids = await seed_user(repo, user)
    for session_id in ids:
        await repo.get_session(session_id)
    await repo.get_session_by_key("planner", user, key=f"active-{user}")
    await drain(repo)
    if isinstance(repo.cache, RedisCache):
        hits = repo.cache.stats.hits
        assert await repo.get_session(ids[0]) is not None
        assert repo.cache.stats.hits == hits + 1  # served from the cache before the erasure

    await repo.erase_user(user)

    for session_id in ids:
        assert await repo.get_session(session_id) is None
    assert await repo.get_session_by_key("planner", user, key=f"active-{user}") is None


async def test_erase_user_with_agent_type_erases_only_that_agent_types_data(
    repo: SessionRepository, db: Backend, user: str
) -> None:
    planner = await seed_user(repo, user)
    writer = await seed_user(repo, user, agent_type="writer")

    report = await repo.erase_user(user, agent_type="writer")

    assert report == ErasureReport(len(writer), 2 * len(writer), 1)
    assert await count(db, sessions_table, user_id=user) == len(planner)
    assert await repo.get_shared_state("writer", user_id=user) == {}
    assert await repo.get_shared_state("planner", user_id=user) == {"last": user}
    assert await repo.erase_user(user, agent_type="writer") == ErasureReport()


@contextmanager
def failing_statement(db: Backend, starts: str, nth: int) -> Iterator[list[int]]:
    """Make the ``nth`` statement starting with ``starts`` fail (the ones before run)."""
    seen = [0]

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(starts):
            seen[0] += 1
            if seen[0] == nth:
                raise RuntimeError("injected failure")

    event.listen(db.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", before)


async def test_an_erasure_interrupted_between_batches_keeps_its_batches_and_resumes(
    repo: SessionRepository, db: Backend, user: str
) -> None:
    ids = await seed_user(repo, user)  # 5 sessions
    for session_id in ids:
        await repo.get_session(session_id)
    await drain(repo)

    with (
        failing_statement(db, "DELETE FROM AGENT_SESSIONS_SESSIONS", nth=2) as seen,
        pytest.raises(RuntimeError, match="injected"),
    ):
        await repo.erase_user(user, batch_size=2)
    assert seen[0] == 2  # the second batch failed: the first one was committed, alone
    assert await count(db, sessions_table, user_id=user) == len(ids) - 2
    gone = [sid for sid in ids if await repo.get_session(sid) is None]
    assert len(gone) >= 2  # the first batch is not served from the cache either

    report = await repo.erase_user(user, batch_size=2)

    assert report == ErasureReport(len(ids) - 2, 2 * (len(ids) - 2), 1)
    assert await rows_holding(db, user) == []
    for session_id in ids:
        assert await repo.get_session(session_id) is None


@pytest.mark.parametrize(
    "bad",
    ["", None, 7, b"user", ["user"], "a\x00b", "lone \ud800", "x" * 257],
    ids=["empty", "None", "int", "bytes", "list", "NUL", "surrogate", "too long"],
)
async def test_erase_user_refuses_a_user_id_that_names_no_one_and_erases_nothing(
    repo: SessionRepository, db: Backend, user: str, bad: Any
) -> None:
    await repo.create_session("planner", "")  # the sessions with no user are nobody's
    await seed_user(repo, user)
    before = await count(db, sessions_table)
    with pytest.raises(SessionValidationError, match="user_id"):
        await repo.erase_user(bad)
    with pytest.raises(SessionValidationError, match="agent_type"):
        await repo.erase_user(user, agent_type="")
    with pytest.raises(SessionValidationError, match="batch_size"):
        await repo.erase_user(user, batch_size=0)
    assert await count(db, sessions_table) == before


# -- retention ------------------------------------------------------------------------------


async def finish(repo: SessionRepository, state: SessionState, **kwargs: Any) -> str:
    created = await repo.create_session("planner", **kwargs)
    await repo.add_checkpoint(created.session_id, "step")
    if state is SessionState.DELETED:
        await repo.delete_session(created.session_id)
    elif state is not SessionState.ACTIVE:
        created = await repo.get_session(created.session_id)  # type: ignore[assignment]
        created.state = state
        await repo.update_session(created)
    return created.session_id


async def test_purge_finished_removes_only_finished_sessions_not_updated_for_the_age(
    repo: SessionRepository, db: Backend, clock: FakeClock
) -> None:
    clock.advance(days=-100)
    old = {state: await finish(repo, state) for state in SessionState}
    clock.advance(days=100)
    recent = await finish(repo, SessionState.COMPLETED)
    for session_id in (old[SessionState.COMPLETED], old[SessionState.FAILED], recent):
        await repo.get_session(session_id)
    await drain(repo)

    assert await repo.purge_finished_sessions(timedelta(days=90)) == 2

    assert await repo.get_session(old[SessionState.COMPLETED]) is None  # nor from the cache
    assert await repo.get_session(old[SessionState.FAILED]) is None
    for state in (SessionState.COMPLETED, SessionState.FAILED):
        sid = uuid.UUID(old[state])
        assert await count(db, checkpoints_table, session_id=sid) == 0
    for state in (SessionState.ACTIVE, SessionState.PAUSED):
        assert await repo.get_session(old[state]) is not None
    assert await count(db, sessions_table, id=uuid.UUID(old[SessionState.DELETED])) == 1
    assert await repo.get_session(recent) is not None
    assert await repo.purge_finished_sessions(timedelta(days=90)) == 0


async def test_purge_finished_takes_the_states_to_purge(
    repo: SessionRepository, clock: FakeClock
) -> None:
    clock.advance(days=-10)
    completed = await finish(repo, SessionState.COMPLETED)
    failed = await finish(repo, SessionState.FAILED)
    clock.advance(days=10)
    states = [SessionState.FAILED]
    assert await repo.purge_finished_sessions(timedelta(days=1), states=states) == 1
    assert await repo.get_session(failed) is None
    assert await repo.get_session(completed) is not None
    assert await repo.purge_finished_sessions(timedelta(days=1), states=["COMPLETED"]) == 1


async def test_purge_finished_works_in_batches_and_counts_all(
    repo: SessionRepository, db: Backend, clock: FakeClock
) -> None:
    clock.advance(days=-10)
    for _ in range(5):
        await finish(repo, SessionState.COMPLETED)
    clock.advance(days=10)
    with failing_statement(db, "DELETE FROM AGENT_SESSIONS_SESSIONS", nth=0) as seen:
        assert await repo.purge_finished_sessions(timedelta(days=1), batch_size=2) == 5
    assert seen[0] == 3  # 2 + 2 + 1: the short batch ends it
    assert await count(db, sessions_table) == 0


@pytest.mark.parametrize(
    "states",
    [
        (SessionState.ACTIVE,),
        (SessionState.COMPLETED, SessionState.PAUSED),
        ("deleted",),
        ("sleeping",),
        (None,),
        "completed",
        (),
    ],
)
async def test_purge_finished_refuses_states_that_are_not_finished(
    repo: SessionRepository, db: Backend, clock: FakeClock, states: Any
) -> None:
    clock.advance(days=-10)
    await finish(repo, SessionState.COMPLETED)
    await finish(repo, SessionState.ACTIVE)
    clock.advance(days=10)
    with pytest.raises(SessionValidationError, match="states"):
        await repo.purge_finished_sessions(timedelta(days=1), states=states)
    assert await count(db, sessions_table) == 2


async def test_purge_finished_refuses_bad_ages_and_batch_sizes(repo: SessionRepository) -> None:
    for age in (timedelta(days=-1), 30, None):
        with pytest.raises(SessionValidationError, match="older_than"):
            await repo.purge_finished_sessions(age)  # type: ignore[arg-type]
    with pytest.raises(SessionValidationError, match="batch_size"):
        await repo.purge_finished_sessions(timedelta(days=1), batch_size=50_001)


async def test_purge_deleted_sessions_removes_the_checkpoints_through_the_shared_removal(
    repo: SessionRepository, db: Backend, clock: FakeClock
) -> None:
    clock.advance(days=-40)
    doomed = await finish(repo, SessionState.DELETED)
    clock.advance(days=40)
    assert await repo.purge_deleted_sessions(timedelta(days=30), batch_size=1) == 1
    assert await count(db, checkpoints_table, session_id=uuid.UUID(doomed)) == 0
