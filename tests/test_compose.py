"""get_or_create_session and modify_session: the races, made deterministic with barriers."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from agent_session_store import (
    AgentSession,
    ConcurrentUpdateError,
    SessionNotFoundError,
    SessionRepository,
    SessionValidationError,
)
from tests.conftest import Backend, FakeClock

CALLERS = 25
WRITERS = 10


class ReadsThenWaits(SessionRepository):
    """The repository with a barrier after each of the first ``n`` reads by key: every caller
    has read (and found nothing) before any of them creates."""

    def __init__(self, *args: Any, barrier: asyncio.Barrier, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.barrier = barrier
        self.reads = 0

    async def get_session_by_key(self, *args: Any, **kwargs: Any) -> AgentSession | None:
        found = await super().get_session_by_key(*args, **kwargs)
        self.reads += 1
        if self.reads <= self.barrier.parties:
            await self.barrier.wait()
        return found


async def test_concurrent_get_or_create_calls_give_one_session_and_one_true(
    repo: SessionRepository, db: Backend, clock: FakeClock, user: str
) -> None:
    racing = ReadsThenWaits(
        db.factory, clock=clock, cache=repo.cache, barrier=asyncio.Barrier(CALLERS)
    )
    results = await asyncio.gather(
        *(racing.get_or_create_session("planner", user, key="chat-42") for _ in range(CALLERS))
    )
    assert sorted(created for _, created in results) == [False] * (CALLERS - 1) + [True]
    assert len({s.session_id for s, _ in results}) == 1
    # Every caller found nothing first: CALLERS - 1 lost the create and read the winner.
    assert racing.reads == 2 * CALLERS - 1
    assert await repo.count_sessions(user_id=user) == 1


async def test_get_or_create_returns_the_existing_session_unchanged(
    repo: SessionRepository, clock: FakeClock, user: str
) -> None:
    first, created = await repo.get_or_create_session(
        "planner", user, key="k", context={"a": 1}, expires_at=clock.now + timedelta(hours=1)
    )
    assert created and first.context == {"a": 1} and first.expires_at is not None
    again, created = await repo.get_or_create_session("planner", user, key="k", context={"b": 2})
    assert not created and again == first
    clock.advance(hours=2)  # expired: the key is free, a new session comes
    third, created = await repo.get_or_create_session("planner", user, key="k")
    assert created and third.session_id != first.session_id


async def test_get_or_create_refuses_bad_input_before_writing(
    repo: SessionRepository, user: str
) -> None:
    with pytest.raises(SessionValidationError):
        await repo.get_or_create_session("planner", user, key="k", context={"x": {1, 2}})
    with pytest.raises(SessionValidationError):
        await repo.get_or_create_session("planner", user, key="")
    assert await repo.count_sessions(user_id=user) == 0


async def test_modify_session_under_concurrent_writers_applies_every_change_once(
    repo: SessionRepository,
) -> None:
    created = await repo.create_session("planner", context={"n": 0})
    everyone_read = asyncio.Barrier(WRITERS)
    calls = 0

    async def bump(session: AgentSession) -> None:
        nonlocal calls
        calls += 1
        first_round = calls <= WRITERS
        session.context["n"] += 1
        session.checkpoint("bump", {"n": session.context["n"]})
        if first_round:  # all ten hold the same version before any of them writes
            await everyone_read.wait()

    stored = await asyncio.gather(
        *(repo.modify_session(created.session_id, bump, retries=WRITERS) for _ in range(WRITERS))
    )
    final = await repo.get_session(created.session_id)
    assert final is not None
    assert final.context["n"] == WRITERS
    assert final.version == 1 + WRITERS
    assert final.checkpoint_count == 1 + WRITERS  # the re-applied checkpoints stored once each
    assert sorted(s.version for s in stored) == list(range(2, 2 + WRITERS))
    # The first round had one winner: the nine others conflicted at least once.
    assert calls >= WRITERS + (WRITERS - 1)


async def test_modify_session_raises_the_conflict_after_its_retries(
    repo: SessionRepository,
) -> None:
    created = await repo.create_session("planner", context={"n": 0})
    calls = 0

    async def always_overtaken(session: AgentSession) -> None:
        nonlocal calls
        calls += 1
        session.context["n"] = calls
        await repo.add_checkpoint(created.session_id, "other-writer")  # bumps the version

    with pytest.raises(ConcurrentUpdateError):
        await repo.modify_session(created.session_id, always_overtaken, retries=2)
    assert calls == 3
    stored = await repo.get_session(created.session_id)
    assert stored is not None and stored.context == {"n": 0}


async def test_modify_session_writes_nothing_when_change_raises(repo: SessionRepository) -> None:
    created = await repo.create_session("planner", context={"n": 0})

    def broken(session: AgentSession) -> None:
        session.context["n"] = 99
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await repo.modify_session(created.session_id, broken)
    stored = await repo.get_session(created.session_id)
    assert stored is not None and stored.context == {"n": 0} and stored.version == 1


async def test_modify_session_takes_a_plain_function_and_scopes_to_the_user(
    repo: SessionRepository, user: str
) -> None:
    created = await repo.create_session("planner", user)

    def pause(session: AgentSession) -> None:
        session.pause()
        session.metadata["paused_by"] = "ops"

    stored = await repo.modify_session(created.session_id, pause, user_id=user)
    assert stored.state.value == "paused" and stored.version == 2
    assert stored.metadata == {"paused_by": "ops"}
    with pytest.raises(SessionNotFoundError):
        await repo.modify_session(created.session_id, pause, user_id="someone-else")
    with pytest.raises(SessionNotFoundError):
        await repo.modify_session("not-an-id", pause)
    with pytest.raises(SessionValidationError, match="retries"):
        await repo.modify_session(created.session_id, pause, retries=-1)
