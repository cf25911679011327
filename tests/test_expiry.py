"""Expiry: an expired session is gone for every read and write at once, its key free, purgeable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from agent_session_store import (
    SessionNotFoundError,
    SessionRepository,
    SessionState,
    SessionValidationError,
)
from agent_session_store.tables import checkpoints_table, sessions_table
from tests.conftest import Backend, FakeClock


async def _rows(db: Backend, table: object, sid: str | None = None) -> int:
    t = checkpoints_table if table == "checkpoints" else sessions_table
    stmt = select(func.count()).select_from(t)
    if sid is not None:
        column = t.c.session_id if t is checkpoints_table else t.c.id
        stmt = stmt.where(column == uuid.UUID(sid))
    async with db.engine.connect() as conn:
        return int(await conn.scalar(stmt) or 0)


async def test_a_session_is_there_until_its_expiry_and_reads_back_its_expiry(
    repo: SessionRepository, clock: FakeClock, user: str
) -> None:
    at = clock.now + timedelta(hours=1)
    created = await repo.create_session("planner", user, key="chat", expires_at=at)
    assert created.expires_at == at
    clock.advance(minutes=59)
    fetched = await repo.get_session(created.session_id)
    assert fetched is not None and fetched.expires_at == at
    assert fetched == created
    by_key = await repo.get_session_by_key("planner", user, key="chat")
    assert by_key is not None and by_key.session_id == created.session_id


async def test_an_expired_session_is_absent_to_every_read_and_write_without_a_sweep(
    repo: SessionRepository, clock: FakeClock, user: str
) -> None:
    created = await repo.create_session(
        "planner", user, key="chat", expires_at=clock.now + timedelta(minutes=5)
    )
    other = await repo.create_session("planner", user)
    stale_copy = await repo.get_session(created.session_id)  # cached, where there is a cache
    assert stale_copy is not None
    clock.advance(minutes=5)  # the very moment it expires
    sid = created.session_id
    assert await repo.get_session(sid) is None
    assert await repo.get_session(sid, recent_checkpoints=100) is None
    assert await repo.get_session_by_key("planner", user, key="chat") is None
    listed = await repo.list_sessions(user_id=user)
    assert [s.session_id for s in listed.items] == [other.session_id]
    assert await repo.count_sessions(user_id=user) == 1
    assert await repo.get_active_sessions(user_id=user) == listed.items
    assert await repo.heartbeat(sid) is False
    assert await repo.delete_session(sid) is False
    for write in (
        repo.add_checkpoint(sid, "step"),
        repo.add_checkpoints(sid, [("a", {}), ("b", {})]),
        repo.pop_checkpoint(sid),
        repo.truncate_checkpoints(sid, 1),
        repo.update_session(stale_copy),
        repo.list_checkpoints(sid),
    ):
        with pytest.raises(SessionNotFoundError):
            await write


async def test_a_cached_copy_is_not_served_after_expiry(
    repo: SessionRepository, clock: FakeClock
) -> None:
    created = await repo.create_session("planner", expires_at=clock.now + timedelta(seconds=30))
    assert await repo.get_session(created.session_id) is not None
    assert await repo.get_session(created.session_id) is not None  # a hit, with a cache
    clock.advance(seconds=31)
    assert await repo.get_session(created.session_id) is None
    assert await repo.get_session(created.session_id, recent_checkpoints=0) is None


async def test_an_expired_sessions_key_is_free_again(
    repo: SessionRepository, clock: FakeClock, user: str
) -> None:
    first = await repo.create_session(
        "planner", user, key="chat-1", expires_at=clock.now + timedelta(hours=1)
    )
    assert await repo.get_session_by_key("planner", user, key="chat-1") is not None
    clock.advance(hours=2)
    second = await repo.create_session("planner", user, key="chat-1")
    assert second.session_id != first.session_id
    found = await repo.get_session_by_key("planner", user, key="chat-1")
    assert found is not None and found.session_id == second.session_id
    assert await repo.get_session(first.session_id) is None


async def test_expiry_is_changed_by_update_session(
    repo: SessionRepository, clock: FakeClock
) -> None:
    created = await repo.create_session("planner", expires_at=clock.now + timedelta(minutes=1))
    created.expires_at = clock.now + timedelta(days=1)
    updated = await repo.update_session(created)
    assert updated.expires_at == clock.now + timedelta(days=1)
    clock.advance(hours=1)
    fetched = await repo.get_session(created.session_id)
    assert fetched is not None and fetched.expires_at == updated.expires_at
    fetched.expires_at = None  # never
    await repo.update_session(fetched)
    clock.advance(days=400)
    again = await repo.get_session(created.session_id)
    assert again is not None and again.expires_at is None
    again.expires_at = clock.now  # expires with this write
    await repo.update_session(again)
    assert await repo.get_session(created.session_id) is None


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (datetime(2030, 1, 1), "no time zone"),  # naive
        ("2030-01-01T00:00:00+00:00", "must be a datetime"),
        (timedelta(hours=-1), "not after now"),
        (timedelta(0), "not after now"),
        (datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))), "out of range"),
    ],
)
async def test_a_bad_expiry_is_refused_and_nothing_is_written(
    repo: SessionRepository, clock: FakeClock, db: Backend, when: object, message: str
) -> None:
    expires = clock.now + when if isinstance(when, timedelta) else when
    before = await _rows(db, "sessions")
    with pytest.raises(SessionValidationError, match=message):
        await repo.create_session("planner", key="k", expires_at=expires)  # type: ignore[arg-type]
    assert await _rows(db, "sessions") == before
    created = await repo.create_session("planner")
    if isinstance(when, datetime | str):  # update_session takes any aware time (past: expires)
        created.expires_at = when  # type: ignore[assignment]
        with pytest.raises(SessionValidationError):
            await repo.update_session(created)
        stored = await repo.get_session(created.session_id)
        assert stored is not None and stored.version == 1


async def test_purge_expired_sessions_removes_them_and_all_their_rows(
    repo: SessionRepository, clock: FakeClock, db: Backend
) -> None:
    soon = clock.now + timedelta(minutes=1)
    doomed = [await repo.create_session("planner", expires_at=soon) for _ in range(3)]
    await repo.add_checkpoint(doomed[0].session_id, "step")
    later = await repo.create_session("planner", expires_at=clock.now + timedelta(days=1))
    never = await repo.create_session("planner")
    assert await repo.purge_expired_sessions() == 0  # nothing has expired yet
    clock.advance(minutes=2)
    assert await repo.purge_expired_sessions(batch_size=2) == 3
    for gone in doomed:
        assert await _rows(db, "sessions", gone.session_id) == 0
        assert await _rows(db, "checkpoints", gone.session_id) == 0
    for kept in (later, never):
        assert await repo.get_session(kept.session_id) is not None
    assert await repo.purge_expired_sessions() == 0


async def test_purge_expired_sessions_also_removes_a_freed_key_holder(
    repo: SessionRepository, clock: FakeClock, db: Backend
) -> None:
    old = await repo.create_session("planner", key="k", expires_at=clock.now + timedelta(1))
    clock.advance(days=2)
    await repo.create_session("planner", key="k")
    assert await repo.purge_expired_sessions() == 1
    assert await _rows(db, "sessions", old.session_id) == 0


async def test_purge_expired_sessions_refuses_a_bad_batch_size(repo: SessionRepository) -> None:
    with pytest.raises(SessionValidationError, match="batch_size"):
        await repo.purge_expired_sessions(batch_size=0)


async def test_an_expired_session_is_not_listed_under_any_state(
    repo: SessionRepository, clock: FakeClock, user: str
) -> None:
    created = await repo.create_session("planner", user, expires_at=clock.now + timedelta(1))
    created.complete()
    await repo.update_session(created)
    assert (await repo.count_sessions(user_id=user, state=SessionState.COMPLETED)) == 1
    clock.advance(days=1)
    assert (await repo.count_sessions(user_id=user, state=SessionState.COMPLETED)) == 0
    assert datetime.now(UTC) < clock.now  # the repository's clock decides, not the server's
