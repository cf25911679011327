"""The repository's behaviour, on every backend (SQLite, PostgreSQL; with and without Redis)."""

from __future__ import annotations

import uuid
from datetime import UTC, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from agent_session_store import (
    AgentSession,
    ConcurrentUpdateError,
    InvalidStateTransitionError,
    SessionNotFoundError,
    SessionRepository,
    SessionState,
    SessionValidationError,
)
from agent_session_store.tables import checkpoints_table
from tests.conftest import Backend, FakeClock, repo_fixture

# The core behaviour suite also runs on Valkey (6 ways); the other repository modules stay at 4.
repo = repo_fixture("nocache", "redis", "valkey")


async def test_create_session_returns_stored_session_with_created_checkpoint(
    repo: SessionRepository, user: str
) -> None:
    created = await repo.create_session("planner", user, {"goal": "x"}, {"team": "a"})
    assert str(uuid.UUID(created.session_id)) == created.session_id
    assert created.state is SessionState.ACTIVE
    assert created.version == 1
    assert created.checkpoint_count == 1
    [cp] = created.checkpoints
    assert (cp.name, cp.seq, cp.data) == (
        "session_created",
        1,
        {"agent_type": "planner", "user_id": user},
    )
    assert await repo.get_session(created.session_id) == created


async def test_metadata_is_stored_and_read_back(repo: SessionRepository) -> None:
    # The old manager accepted metadata and never wrote it to the database.
    created = await repo.create_session("planner", metadata={"trace": "abc", "n": [1, 2]})
    fetched = await repo.get_session(created.session_id)
    assert fetched is not None
    assert fetched.metadata == {"trace": "abc", "n": [1, 2]}
    fetched.metadata["more"] = True
    await repo.update_session(fetched)
    again = await repo.get_session(created.session_id)
    assert again is not None and again.metadata == {"trace": "abc", "n": [1, 2], "more": True}


async def test_timestamps_read_back_utc_aware_and_equal(
    repo: SessionRepository, clock: FakeClock
) -> None:
    created = await repo.create_session("planner")
    fetched = await repo.get_session(created.session_id)
    assert fetched is not None
    for value in (
        fetched.created_at,
        fetched.updated_at,
        fetched.last_heartbeat,
        fetched.checkpoints[0].timestamp,
    ):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert value == clock.now


@pytest.mark.parametrize("bad_id", ["", "nope", "123", str(uuid.uuid4()), "'; DROP TABLE x; --"])
async def test_get_session_unknown_or_malformed_id_is_none(
    repo: SessionRepository, bad_id: str
) -> None:
    assert await repo.get_session(bad_id) is None


async def test_get_session_reads_every_spelling_of_an_id_as_the_same_session(
    repo: SessionRepository,
) -> None:
    created = await repo.create_session("planner")
    sid = created.session_id
    spellings = [sid, sid.upper(), "{" + sid + "}", sid.replace("-", ""), f"urn:uuid:{sid}"]
    for spelling in spellings:  # cached under the one canonical id, whatever the spelling
        found = await repo.get_session(spelling)
        assert found is not None and found.session_id == sid, spelling
    found.context["n"] = 1
    await repo.update_session(found)
    for spelling in spellings:  # the write forgot the one cached copy every spelling reads
        again = await repo.get_session(spelling)
        assert again is not None and again.version == 2 and again.context == {"n": 1}, spelling


async def test_get_session_of_another_user_is_none(repo: SessionRepository, user: str) -> None:
    created = await repo.create_session("planner", user)
    assert await repo.get_session(created.session_id, user_id=user) is not None
    assert await repo.get_session(created.session_id, user_id="someone-else") is None
    assert await repo.get_session(created.session_id, user_id="") is None


async def test_update_session_writes_context_state_and_new_checkpoints(
    repo: SessionRepository, clock: FakeClock
) -> None:
    created = await repo.create_session("planner")
    session = await repo.get_session(created.session_id)
    assert session is not None
    session.context["step"] = 2
    session.checkpoint("tool_called", {"tool": "search"})
    session.checkpoint("tool_done", {"ok": True})
    session.pause()
    clock.advance(seconds=5)
    updated = await repo.update_session(session)
    assert updated.version == 2
    assert updated.state is SessionState.PAUSED
    assert updated.checkpoint_count == 3
    assert [c.seq for c in updated.checkpoints] == [1, 2, 3]
    assert updated.last_heartbeat == clock.now
    fetched = await repo.get_session(created.session_id)
    assert fetched == updated


async def test_update_never_rewrites_stored_checkpoints(repo: SessionRepository) -> None:
    # The old manager rewrote the whole checkpoint array on every update.
    created = await repo.create_session("planner")
    session = await repo.get_session(created.session_id)
    assert session is not None
    session.checkpoints[0].data["tampered"] = True  # a stored checkpoint, changed in memory
    session.checkpoint("next")
    await repo.update_session(session)
    [first, second] = await repo.list_checkpoints(created.session_id)
    assert first.data == {"agent_type": "planner", "user_id": ""}
    assert (second.seq, second.name) == (2, "next")


async def test_update_with_stale_copy_raises_and_writes_nothing(repo: SessionRepository) -> None:
    created = await repo.create_session("planner")
    first = await repo.get_session(created.session_id)
    second = await repo.get_session(created.session_id)
    assert first is not None and second is not None
    first.context["by"] = "first"
    await repo.update_session(first)
    second.context["by"] = "second"
    second.checkpoint("lost")
    with pytest.raises(ConcurrentUpdateError) as info:
        await repo.update_session(second)
    assert (info.value.expected_version, info.value.actual_version) == (1, 2)
    stored = await repo.get_session(created.session_id)
    assert stored is not None
    assert stored.context == {"by": "first"} and stored.checkpoint_count == 1


async def test_update_after_sweep_failed_the_session_raises_conflict(
    repo: SessionRepository, clock: FakeClock
) -> None:
    # The old manager let a worker's update silently overwrite a session the sweep had failed.
    created = await repo.create_session("planner")
    worker_copy = await repo.get_session(created.session_id)
    assert worker_copy is not None
    clock.advance(hours=49)
    assert await repo.cleanup_stale_sessions() == 1
    worker_copy.context["progress"] = 99
    with pytest.raises(ConcurrentUpdateError):
        await repo.update_session(worker_copy)
    stored = await repo.get_session(created.session_id)
    assert stored is not None and stored.state is SessionState.FAILED
    assert "progress" not in stored.context


async def test_update_of_deleted_session_raises_not_found(repo: SessionRepository) -> None:
    created = await repo.create_session("planner")
    assert await repo.delete_session(created.session_id)
    created.version += 1  # even a copy at the deleted version cannot resurrect it
    with pytest.raises(SessionNotFoundError):
        await repo.update_session(created)


async def test_update_with_illegal_state_raises_transition_error(repo: SessionRepository) -> None:
    created = await repo.create_session("planner")
    session = await repo.get_session(created.session_id)
    assert session is not None
    session.complete()
    session = await repo.update_session(session)
    session.state = SessionState.ACTIVE  # bypassing resume(): the repository checks too
    with pytest.raises(InvalidStateTransitionError):
        await repo.update_session(session)
    stored = await repo.get_session(created.session_id)
    assert stored is not None and stored.state is SessionState.COMPLETED


async def test_update_unknown_session_raises_not_found(repo: SessionRepository) -> None:
    ghost = AgentSession(session_id=str(uuid.uuid4()), agent_type="planner")
    with pytest.raises(SessionNotFoundError):
        await repo.update_session(ghost)


async def test_delete_session_is_soft_and_hides_the_session(
    repo: SessionRepository, db: Backend
) -> None:
    created = await repo.create_session("planner")
    assert await repo.delete_session(created.session_id) is True
    assert await repo.get_session(created.session_id) is None
    assert await repo.delete_session(created.session_id) is False
    page = await repo.list_sessions(state=SessionState.DELETED)
    assert [s.session_id for s in page.items] == [created.session_id]
    async with db.engine.connect() as conn:  # the history is kept
        count = await conn.scalar(select(func.count()).select_from(checkpoints_table))
    assert count == 1


async def test_delete_session_unknown_malformed_or_foreign_is_false(
    repo: SessionRepository, user: str
) -> None:
    created = await repo.create_session("planner", user)
    assert await repo.delete_session(str(uuid.uuid4())) is False
    assert await repo.delete_session("not-a-uuid") is False
    assert await repo.delete_session(created.session_id, user_id="intruder") is False
    assert await repo.get_session(created.session_id) is not None
    assert await repo.delete_session(created.session_id, user_id=user) is True


async def test_get_active_sessions_filters_by_agent_type_and_user(
    repo: SessionRepository, user: str
) -> None:
    a = await repo.create_session("planner", user)
    b = await repo.create_session("coder", user)
    c = await repo.create_session("planner", "other")
    paused = await repo.get_session((await repo.create_session("planner", user)).session_id)
    assert paused is not None
    paused.pause()
    await repo.update_session(paused)
    ids = lambda sessions: {s.session_id for s in sessions}  # noqa: E731
    assert ids(await repo.get_active_sessions()) == {a.session_id, b.session_id, c.session_id}
    assert ids(await repo.get_active_sessions("planner")) == {a.session_id, c.session_id}
    assert ids(await repo.get_active_sessions(user_id=user)) == {a.session_id, b.session_id}
    assert ids(await repo.get_active_sessions("planner", user)) == {a.session_id}
    assert len(await repo.get_active_sessions(limit=2)) == 2


async def test_list_sessions_pages_through_everything_once_in_stable_order(
    repo: SessionRepository, clock: FakeClock, user: str
) -> None:
    created = []
    for i in range(7):
        if i % 3 == 0:
            clock.advance(seconds=1)  # some share a created_at: the id breaks the tie
        created.append(await repo.create_session("planner", user))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await repo.list_sessions(user_id=user, limit=3, cursor=cursor)
        pages += 1
        seen.extend(s.session_id for s in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(s.session_id for s in created)
    assert len(seen) == len(set(seen))
    expected = sorted(created, key=lambda s: (s.created_at, uuid.UUID(s.session_id)), reverse=True)
    assert seen == [s.session_id for s in expected]


async def test_list_sessions_filters_by_state(repo: SessionRepository) -> None:
    active = await repo.create_session("planner")
    done = await repo.get_session((await repo.create_session("planner")).session_id)
    assert done is not None
    done.complete()
    await repo.update_session(done)
    page = await repo.list_sessions(state="completed")
    assert [s.session_id for s in page.items] == [done.session_id]
    page = await repo.list_sessions(state=SessionState.ACTIVE)
    assert [s.session_id for s in page.items] == [active.session_id]


@pytest.mark.parametrize("spelling", ["paused", "PAUSED", "Paused", SessionState.PAUSED])
async def test_list_sessions_takes_a_states_name_or_value_in_any_case(
    repo: SessionRepository, spelling: str
) -> None:
    paused = await repo.create_session("planner")
    paused.pause()
    await repo.update_session(paused)
    await repo.create_session("planner")
    page = await repo.list_sessions(state=spelling)
    assert [s.session_id for s in page.items] == [paused.session_id]


async def test_list_sessions_rejects_a_cursor_from_other_filters(
    repo: SessionRepository, user: str
) -> None:
    for _ in range(3):
        await repo.create_session("planner", user)
    page = await repo.list_sessions(user_id=user, limit=1)
    assert page.next_cursor is not None
    with pytest.raises(SessionValidationError, match="other filters"):
        await repo.list_sessions(user_id="someone-else", limit=1, cursor=page.next_cursor)
    with pytest.raises(SessionValidationError, match="invalid cursor"):
        await repo.list_sessions(user_id=user, limit=1, cursor=page.next_cursor[:-3] + "AAA")


@pytest.mark.parametrize("limit", [0, -1, 1001, 10**9])
async def test_list_sessions_rejects_bad_limits(repo: SessionRepository, limit: int) -> None:
    with pytest.raises(SessionValidationError, match="limit"):
        await repo.list_sessions(limit=limit)


async def test_heartbeat_touches_only_last_heartbeat(
    repo: SessionRepository, clock: FakeClock
) -> None:
    created = await repo.create_session("planner")
    copy = await repo.get_session(created.session_id)
    assert copy is not None
    clock.advance(minutes=3)
    assert await repo.heartbeat(created.session_id) is True
    stored = await repo.get_session(created.session_id)
    assert stored is not None
    assert stored.last_heartbeat == clock.now
    assert stored.version == created.version
    assert stored.updated_at == created.updated_at
    copy.context["x"] = 1
    await repo.update_session(copy)  # the heartbeat made no content writer conflict


async def test_heartbeat_of_unknown_or_finished_session_is_false(repo: SessionRepository) -> None:
    assert await repo.heartbeat(str(uuid.uuid4())) is False
    assert await repo.heartbeat("garbage") is False
    created = await repo.create_session("planner")
    session = await repo.get_session(created.session_id)
    assert session is not None
    session.complete()
    await repo.update_session(session)
    assert await repo.heartbeat(created.session_id) is False


async def test_add_checkpoint_appends_with_next_seq_and_bumps_version(
    repo: SessionRepository,
) -> None:
    created = await repo.create_session("planner")
    cp = await repo.add_checkpoint(created.session_id, "plan", {"steps": [1, 2]})
    assert cp.seq == 2 and cp.data == {"steps": [1, 2]}
    stored = await repo.get_session(created.session_id)
    assert stored is not None
    assert stored.checkpoint_count == 2 and stored.version == 2
    assert stored.checkpoints[-1] == cp


async def test_add_checkpoint_to_unknown_deleted_or_foreign_session_raises(
    repo: SessionRepository, user: str
) -> None:
    with pytest.raises(SessionNotFoundError):
        await repo.add_checkpoint(str(uuid.uuid4()), "x")
    with pytest.raises(SessionNotFoundError):
        await repo.add_checkpoint("bad id", "x")
    created = await repo.create_session("planner", user)
    with pytest.raises(SessionNotFoundError):
        await repo.add_checkpoint(created.session_id, "x", user_id="intruder")
    await repo.delete_session(created.session_id)
    with pytest.raises(SessionNotFoundError):
        await repo.add_checkpoint(created.session_id, "x")


async def test_get_session_returns_only_recent_checkpoints(db: Backend, clock: FakeClock) -> None:
    repo = SessionRepository(db.factory, recent_checkpoints=5, clock=clock)
    created = await repo.create_session("planner")
    for i in range(30):
        await repo.add_checkpoint(created.session_id, f"step-{i}")
    stored = await repo.get_session(created.session_id)
    assert stored is not None
    assert stored.checkpoint_count == 31
    assert [c.seq for c in stored.checkpoints] == [27, 28, 29, 30, 31]


async def test_list_checkpoints_pages_the_full_history_oldest_first(
    repo: SessionRepository, user: str
) -> None:
    created = await repo.create_session("planner", user)
    for i in range(24):
        await repo.add_checkpoint(created.session_id, f"step-{i}")
    seqs: list[int] = []
    after = None
    while page := await repo.list_checkpoints(created.session_id, after_seq=after, limit=10):
        seqs.extend(c.seq for c in page if c.seq is not None)
        after = page[-1].seq
    assert seqs == list(range(1, 26))
    with pytest.raises(SessionNotFoundError):
        await repo.list_checkpoints(created.session_id, user_id="intruder")
    with pytest.raises(SessionNotFoundError):
        await repo.list_checkpoints(str(uuid.uuid4()))


async def test_cleanup_fails_only_stale_active_sessions(
    repo: SessionRepository, clock: FakeClock
) -> None:
    old_active = await repo.create_session("planner")
    old_paused = await repo.get_session((await repo.create_session("planner")).session_id)
    assert old_paused is not None
    old_paused.pause()
    await repo.update_session(old_paused)
    clock.advance(hours=47)
    fresh = await repo.create_session("planner")
    clock.advance(hours=2)  # old ones are 49 h without heartbeat, fresh is 2 h
    assert await repo.cleanup_stale_sessions() == 1
    swept = await repo.get_session(old_active.session_id)
    assert swept is not None
    assert swept.state is SessionState.FAILED
    assert swept.context["failure_reason"] == "heartbeat_timeout"
    assert swept.version == 2
    assert swept.updated_at == clock.now
    for other in (old_paused, fresh):
        kept = await repo.get_session(other.session_id)
        assert kept is not None and kept.state is not SessionState.FAILED
    assert await repo.cleanup_stale_sessions() == 0


async def test_cleanup_works_in_batches_and_counts_all(
    repo: SessionRepository, clock: FakeClock
) -> None:
    ids = [(await repo.create_session("planner", context={"i": i})).session_id for i in range(7)]
    clock.advance(hours=1)
    assert await repo.cleanup_stale_sessions(timedelta(minutes=30), batch_size=3) == 7
    for sid in ids:
        stored = await repo.get_session(sid)
        assert stored is not None and stored.state is SessionState.FAILED
        assert stored.context["failure_reason"] == "heartbeat_timeout" and "i" in stored.context


async def test_cleanup_never_fails_more_than_batch_size_in_one_statement(
    repo: SessionRepository, db: Backend, clock: FakeClock
) -> None:
    # On PostgreSQL a LIMIT ... FOR UPDATE SKIP LOCKED subquery, re-run by the planner for each
    # row, once skipped the rows its own statement had just locked and failed them all at once.
    for _ in range(5):
        await repo.create_session("planner")
    clock.advance(hours=1)
    failed_per_statement: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "UPDATE agent_sessions_sessions SET state" in statement:  # the sweep's
            failed_per_statement.append(cursor.rowcount)

    event.listen(db.engine.sync_engine, "after_cursor_execute", count)
    try:
        assert await repo.cleanup_stale_sessions(timedelta(minutes=30), batch_size=1) == 5
    finally:
        event.remove(db.engine.sync_engine, "after_cursor_execute", count)
    if db.name == "sqlite" and failed_per_statement[0] == -1:
        # Older SQLAlchemy/aiosqlite report no rowcount for UPDATE ... RETURNING; the statements
        # are still one per batch (the bug was PostgreSQL's).
        assert len(failed_per_statement) == 6
    else:
        assert failed_per_statement == [1, 1, 1, 1, 1, 0]


async def test_heartbeat_saves_a_session_from_the_sweep(
    repo: SessionRepository, clock: FakeClock
) -> None:
    created = await repo.create_session("planner")
    clock.advance(hours=47)
    assert await repo.heartbeat(created.session_id)
    clock.advance(hours=2)
    assert await repo.cleanup_stale_sessions() == 0


async def test_session_state_enum_values_match_the_old_manager() -> None:
    assert [s.value for s in SessionState] == ["active", "paused", "completed", "failed", "deleted"]
    assert SessionState("paused") is SessionState.PAUSED


async def test_created_at_is_utc(repo: SessionRepository) -> None:
    created = await repo.create_session("planner")
    assert created.created_at.tzinfo is UTC


async def test_purge_removes_only_long_deleted_sessions_and_their_checkpoints(
    repo: SessionRepository, clock: FakeClock, db: Backend
) -> None:
    old = await repo.create_session("planner")
    await repo.add_checkpoint(old.session_id, "work")
    await repo.delete_session(old.session_id)
    clock.advance(days=31)
    recent = await repo.create_session("planner")
    await repo.delete_session(recent.session_id)
    alive = await repo.create_session("planner")
    assert await repo.purge_deleted_sessions(timedelta(days=30), batch_size=1) == 1
    remaining = await repo.list_sessions(state=SessionState.DELETED)
    assert [s.session_id for s in remaining.items] == [recent.session_id]
    async with db.engine.connect() as conn:
        old_rows = await conn.scalar(
            select(func.count())
            .select_from(checkpoints_table)
            .where(checkpoints_table.c.session_id == uuid.UUID(old.session_id))
        )
    assert old_rows == 0
    assert await repo.get_session(alive.session_id) is not None


async def test_stats_counts_by_state_and_agent_type(
    repo: SessionRepository, clock: FakeClock
) -> None:
    first = await repo.create_session("planner")
    clock.advance(minutes=1)
    await repo.create_session("planner")
    gone = await repo.create_session("coder")
    await repo.add_checkpoint(first.session_id, "x")
    await repo.delete_session(gone.session_id)
    stats = await repo.stats()
    assert stats.by_state == {"active": 2, "deleted": 1}
    assert stats.by_agent_type == {"planner": 2}
    assert stats.oldest_active_heartbeat == first.last_heartbeat
    assert stats.checkpoints == 4
    assert stats.sessions == 3


async def test_update_and_heartbeat_scoped_by_user_never_touch_a_foreign_session(
    repo: SessionRepository, user: str
) -> None:
    created = await repo.create_session("planner", user, {"v": 0})
    copy = await repo.get_session(created.session_id)
    assert copy is not None
    copy.context["v"] = 1
    with pytest.raises(SessionNotFoundError):
        await repo.update_session(copy, user_id="intruder")
    forged = copy.model_copy(update={"user_id": "intruder"})
    with pytest.raises(SessionNotFoundError):
        await repo.update_session(forged)  # a copy claiming another owner is not that session
    assert await repo.heartbeat(created.session_id, user_id="intruder") is False
    stored = await repo.get_session(created.session_id)
    assert stored is not None and stored.context == {"v": 0} and stored.version == 1
    assert (await repo.update_session(copy, user_id=user)).version == 2
    assert await repo.heartbeat(created.session_id, user_id=user) is True
