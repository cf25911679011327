"""A finished session's context and checkpoints are final.

A COMPLETED or FAILED session takes no checkpoint and no context change, and its version does
not move for them: the write that completes or fails it may still carry its last context and
checkpoints, its metadata stays writable, and it can be deleted. Every test runs on SQLite and
PostgreSQL, without and with the Redis cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import select

from agent_session_store import (
    AgentSession,
    InvalidStateTransitionError,
    SessionRepository,
    SessionState,
)
from agent_session_store.tables import checkpoints_table, sessions_table
from tests.conftest import Backend, FakeClock


async def finished(repo: SessionRepository, state: SessionState) -> AgentSession:
    """A session with two checkpoints, completed or failed by its own last write."""
    session = await repo.create_session("planner", "u1", {"step": 1}, {"team": "a"})
    await repo.add_checkpoint(session.session_id, "plan", {"n": 1})
    copy = await repo.get_session(session.session_id)
    assert copy is not None
    if state is SessionState.COMPLETED:
        copy.complete()
    else:
        copy.fail("gave up")
    return await repo.update_session(copy)


async def stored_rows(db: Backend, session_id: str) -> tuple[Any, list[Any]]:
    """The session's row and its checkpoints, straight from the database."""
    sid = UUID(session_id)
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(sessions_table).where(sessions_table.c.id == sid))).one()
        checkpoints = (
            await conn.execute(
                select(checkpoints_table)
                .where(checkpoints_table.c.session_id == sid)
                .order_by(checkpoints_table.c.seq)
            )
        ).all()
    return tuple(row), [tuple(cp) for cp in checkpoints]


FINISHED = [SessionState.COMPLETED, SessionState.FAILED]

WRITES: dict[str, Callable[[SessionRepository, str], Awaitable[Any]]] = {
    "add_checkpoint": lambda repo, sid: repo.add_checkpoint(sid, "late", {"x": 1}),
    "add_checkpoint as its user": lambda repo, sid: repo.add_checkpoint(
        sid, "late", {"x": 1}, user_id="u1"
    ),
    "add_checkpoints": lambda repo, sid: repo.add_checkpoints(sid, [("a", {}), ("b", {})]),
    "pop_checkpoint": lambda repo, sid: repo.pop_checkpoint(sid),
    "truncate_checkpoints": lambda repo, sid: repo.truncate_checkpoints(sid, 1),
    "truncate_checkpoints (nothing after)": lambda repo, sid: repo.truncate_checkpoints(sid, 9),
}


@pytest.mark.parametrize("state", FINISHED, ids=lambda s: s.value)
@pytest.mark.parametrize("write", list(WRITES))
async def test_a_finished_sessions_checkpoints_refuse_every_write_naming_its_state(
    repo: SessionRepository, db: Backend, clock: FakeClock, state: SessionState, write: str
) -> None:
    done = await finished(repo, state)
    before = await stored_rows(db, done.session_id)
    cached = await repo.get_session(done.session_id)  # a cached copy, where there is a cache
    clock.advance(minutes=1)
    with pytest.raises(InvalidStateTransitionError, match=f"is {state.value}") as info:
        await WRITES[write](repo, done.session_id)
    assert (info.value.current, info.value.target) == (state.value, state.value)
    assert "final" in str(info.value) and "nothing was written" in str(info.value)
    assert await stored_rows(db, done.session_id) == before
    assert await repo.get_session(done.session_id) == cached


@pytest.mark.parametrize("state", FINISHED, ids=lambda s: s.value)
async def test_updating_a_finished_sessions_context_is_refused_and_writes_nothing(
    repo: SessionRepository, db: Backend, state: SessionState
) -> None:
    done = await finished(repo, state)
    before = await stored_rows(db, done.session_id)
    done.context["step"] = 2
    done.metadata["team"] = "b"
    with pytest.raises(InvalidStateTransitionError, match="cannot change its context") as info:
        await repo.update_session(done)
    assert (info.value.current, info.value.target) == (state.value, state.value)
    assert await stored_rows(db, done.session_id) == before


@pytest.mark.parametrize("state", FINISHED, ids=lambda s: s.value)
async def test_updating_a_finished_session_with_new_checkpoints_is_refused(
    repo: SessionRepository, db: Backend, state: SessionState
) -> None:
    done = await finished(repo, state)
    before = await stored_rows(db, done.session_id)
    done.checkpoint("late", {"x": 1})
    with pytest.raises(InvalidStateTransitionError, match="cannot add checkpoints"):
        await repo.update_session(done)
    assert await stored_rows(db, done.session_id) == before


@pytest.mark.parametrize("state", FINISHED, ids=lambda s: s.value)
async def test_a_finished_sessions_metadata_stays_writable(
    repo: SessionRepository, state: SessionState
) -> None:
    done = await finished(repo, state)
    done.metadata["reviewed"] = True
    stored = await repo.update_session(done)
    assert stored.version == done.version + 1 and stored.state is state
    again = await repo.get_session(done.session_id)
    assert again is not None and again.metadata == {"team": "a", "reviewed": True}
    assert again.context == done.context and again.checkpoint_count == done.checkpoint_count


async def test_the_write_that_completes_a_session_may_carry_its_last_context_and_checkpoints(
    repo: SessionRepository,
) -> None:
    session = await repo.create_session("planner", context={"step": 1})
    session.context["step"] = 2
    session.checkpoint("answer", {"text": "42"})
    session.complete()
    done = await repo.update_session(session)
    assert done.state is SessionState.COMPLETED and done.context == {"step": 2}
    assert [cp.name for cp in done.checkpoints] == ["session_created", "answer"]


async def test_a_session_failed_by_the_sweep_keeps_its_metadata_writable(
    repo: SessionRepository, clock: FakeClock
) -> None:
    # The sweep writes the failure reason with the database's own JSON functions, so the
    # stored context is not spelled as Python would: it must still compare equal to the copy.
    created = await repo.create_session("planner", context={"step": 1, "deep": {"a": [1, 2.5]}})
    clock.advance(hours=49)
    assert await repo.cleanup_stale_sessions(timedelta(hours=48)) == 1
    swept = await repo.get_session(created.session_id)
    assert swept is not None and swept.state is SessionState.FAILED
    swept.metadata["seen"] = "yes"
    stored = await repo.update_session(swept)
    assert stored.metadata == {"seen": "yes"} and stored.context == swept.context
    swept = stored
    swept.context["step"] = 2
    with pytest.raises(InvalidStateTransitionError, match="is failed"):
        await repo.update_session(swept)


@pytest.mark.parametrize("state", FINISHED, ids=lambda s: s.value)
async def test_a_finished_session_can_still_be_deleted_and_purged(
    repo: SessionRepository, clock: FakeClock, state: SessionState
) -> None:
    done = await finished(repo, state)
    assert await repo.delete_session(done.session_id)
    assert await repo.get_session(done.session_id) is None
    clock.advance(days=31)
    assert await repo.purge_deleted_sessions(timedelta(days=30)) == 1
