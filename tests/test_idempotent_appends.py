"""Idempotent appends: a checkpoint whose idempotency key the session holds is not stored again."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from agent_session_store import (
    InvalidStateTransitionError,
    SessionNotFoundError,
    SessionRepository,
    SessionValidationError,
)
from tests.conftest import Backend, FakeClock


async def _version(repo: SessionRepository, sid: str) -> int:
    stored = await repo.get_session(sid)
    assert stored is not None
    return stored.version


async def test_a_known_key_returns_the_stored_checkpoint_and_stores_nothing(
    repo: SessionRepository, clock: FakeClock
) -> None:
    created = await repo.create_session("planner")
    first = await repo.add_checkpoint(created.session_id, "event", {"n": 1}, idempotency_key="e1")
    assert first.seq == 2
    clock.advance(seconds=5)
    again = await repo.add_checkpoint(created.session_id, "event", {"n": 1}, idempotency_key="e1")
    assert (again.seq, again.name, again.data, again.timestamp) == (
        2,
        "event",
        {"n": 1},
        first.timestamp,
    )
    stored = await repo.get_session(created.session_id)
    assert stored is not None and (stored.version, stored.checkpoint_count) == (2, 2)
    assert [c.seq for c in await repo.list_checkpoints(created.session_id)] == [1, 2]
    other = await repo.add_checkpoint(created.session_id, "event", {"n": 2}, idempotency_key="e2")
    assert other.seq == 3
    unkeyed = await repo.add_checkpoint(created.session_id, "event", {"n": 1})
    assert unkeyed.seq == 4  # no key: always appended


async def test_keys_are_per_session(repo: SessionRepository) -> None:
    a = await repo.create_session("planner")
    b = await repo.create_session("planner")
    assert (await repo.add_checkpoint(a.session_id, "e", idempotency_key="k")).seq == 2
    assert (await repo.add_checkpoint(b.session_id, "e", idempotency_key="k")).seq == 2
    assert await _version(repo, b.session_id) == 2


async def test_concurrent_deliveries_of_one_key_are_stored_once(
    repo: SessionRepository,
) -> None:
    created = await repo.create_session("planner")
    results = await asyncio.gather(
        *(
            repo.add_checkpoint(created.session_id, "event", {"i": 0}, idempotency_key="once")
            for _ in range(10)
        )
    )
    assert {cp.seq for cp in results} == {2}
    stored = await repo.get_session(created.session_id)
    assert stored is not None and (stored.version, stored.checkpoint_count) == (2, 2)


async def test_a_batch_appends_the_new_items_and_returns_the_known_ones(
    repo: SessionRepository,
) -> None:
    created = await repo.create_session("planner")
    sid = created.session_id
    first = await repo.add_checkpoints(sid, [("a", {"x": 1}, "k1"), ("b", {}, "k2")])
    assert [c.seq for c in first] == [2, 3]
    mixed = await repo.add_checkpoints(
        sid, [("a", {"x": 1}, "k1"), ("c", {}, "k3"), ("d", {}), ("b", {}, "k2"), ("e", {}, None)]
    )
    assert [(c.name, c.seq) for c in mixed] == [("a", 2), ("c", 4), ("d", 5), ("b", 3), ("e", 6)]
    assert mixed[0].data == {"x": 1}
    assert await _version(repo, sid) == 3  # one bump per batch with something new
    known = await repo.add_checkpoints(sid, [("b", {}, "k2"), ("c", {}, "k3")])
    assert [c.seq for c in known] == [3, 4]
    assert await _version(repo, sid) == 3  # nothing new: no bump
    assert [c.seq for c in await repo.list_checkpoints(sid)] == [1, 2, 3, 4, 5, 6]
    single = await repo.add_checkpoint(sid, "c", idempotency_key="k3")
    assert single.seq == 4


async def test_a_finished_session_still_answers_a_known_key(repo: SessionRepository) -> None:
    created = await repo.create_session("planner")
    stored = await repo.add_checkpoint(created.session_id, "event", idempotency_key="e1")
    session = await repo.get_session(created.session_id)
    assert session is not None
    session.complete()
    await repo.update_session(session)
    again = await repo.add_checkpoint(created.session_id, "event", idempotency_key="e1")
    assert again.seq == stored.seq
    assert [
        c.seq for c in await repo.add_checkpoints(created.session_id, [("event", {}, "e1")])
    ] == [2]
    with pytest.raises(InvalidStateTransitionError):
        await repo.add_checkpoint(created.session_id, "event", idempotency_key="e2")


async def test_a_known_key_of_a_gone_or_foreign_session_is_not_found(
    repo: SessionRepository, clock: FakeClock, user: str
) -> None:
    created = await repo.create_session("planner", user, expires_at=clock.now + timedelta(1))
    await repo.add_checkpoint(created.session_id, "event", idempotency_key="e1")
    with pytest.raises(SessionNotFoundError):
        await repo.add_checkpoint(created.session_id, "event", user_id="x", idempotency_key="e1")
    with pytest.raises(SessionNotFoundError):
        await repo.add_checkpoints(created.session_id, [("event", {}, "e1")], user_id="x")
    clock.advance(days=2)
    with pytest.raises(SessionNotFoundError):
        await repo.add_checkpoint(created.session_id, "event", idempotency_key="e1")


async def test_a_popped_checkpoint_frees_its_key(repo: SessionRepository) -> None:
    created = await repo.create_session("planner")
    await repo.add_checkpoint(created.session_id, "event", idempotency_key="e1")
    popped = await repo.pop_checkpoint(created.session_id)
    assert popped is not None and popped.seq == 2
    again = await repo.add_checkpoint(created.session_id, "event", idempotency_key="e1")
    assert again.seq == 2 and await _version(repo, created.session_id) == 4


async def test_inside_a_callers_transaction_a_known_key_is_answered(
    repo: SessionRepository, db: Backend
) -> None:
    created = await repo.create_session("planner")
    await repo.add_checkpoint(created.session_id, "event", idempotency_key="e1")
    async with db.factory() as session, session.begin():
        bound = repo.bind(session)
        again = await bound.add_checkpoint(created.session_id, "event", idempotency_key="e1")
        more = await bound.add_checkpoint(created.session_id, "other", idempotency_key="e2")
    assert (again.seq, more.seq) == (2, 3)
    assert await _version(repo, created.session_id) == 3


@pytest.mark.parametrize(
    ("key", "message"),
    [("", "1 to 256"), ("k" * 257, "1 to 256"), (5, "must be a string"), ("a\x00", "NUL")],
)
async def test_bad_idempotency_keys_are_refused_before_anything_is_written(
    repo: SessionRepository, key: object, message: str
) -> None:
    created = await repo.create_session("planner")
    with pytest.raises(SessionValidationError, match=message):
        await repo.add_checkpoint(created.session_id, "e", idempotency_key=key)  # type: ignore[arg-type]
    with pytest.raises(SessionValidationError, match=message):
        await repo.add_checkpoints(created.session_id, [("e", {}, key)])  # type: ignore[list-item]
    with pytest.raises(SessionValidationError, match="repeats the idempotency key"):
        await repo.add_checkpoints(created.session_id, [("e", {}, "k"), ("f", {}, "k")])
    with pytest.raises(SessionValidationError, match="idempotency_key"):
        await repo.add_checkpoints(created.session_id, [("e", {}, "k", "extra")])  # type: ignore[list-item]
    assert await _version(repo, created.session_id) == 1
