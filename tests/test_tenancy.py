"""Calls scoped by ``user_id`` never reveal or touch another user's sessions, cached or not.

A foreign session must look exactly like one that does not exist: the same return value, or the
same exception type with the same message once the id itself is blanked out. Every test first
reads the owner's session as the owner, so with the Redis cache the foreign session is cached
when the intruder asks for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from agent_session_store import (
    AgentSession,
    SessionNotFoundError,
    SessionRepository,
    SessionState,
)
from agent_session_store.tables import checkpoints_table
from tests.conftest import Backend, FakeClock

OWNER, INTRUDER = "owner", "intruder"


async def owned_and_cached(repo: SessionRepository) -> AgentSession:
    created = await repo.create_session("planner", OWNER, {"secret": 42})
    await repo.add_checkpoint(created.session_id, "private", {"card": "4111"}, user_id=OWNER)
    session = await repo.get_session(created.session_id, user_id=OWNER)  # now cached, if any
    assert session is not None and session.checkpoint_count == 2
    return session


async def answer(call: Callable[[], Awaitable[Any]], session_id: str) -> tuple[str, str]:
    """What a caller can observe: the result or the exception type, and the id-blanked text."""
    try:
        result = await call()
    except SessionNotFoundError as exc:
        return type(exc).__name__, f"{exc.session_id == session_id}: " + str(exc).replace(
            session_id, "<id>"
        )
    return "returned", repr(result)


async def checkpoint_rows(db: Backend) -> int:
    async with db.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(checkpoints_table)) or 0)


async def assert_untouched(repo: SessionRepository, session: AgentSession) -> None:
    stored = await repo.get_session(session.session_id, user_id=OWNER)
    assert stored == session, "the owner's session changed"


@pytest.fixture
def unknown_id() -> str:
    return str(uuid.uuid4())


async def test_get_session_of_another_user_answers_like_an_unknown_id(
    repo: SessionRepository, unknown_id: str
) -> None:
    session = await owned_and_cached(repo)
    sid = session.session_id
    foreign = await answer(lambda: repo.get_session(sid, user_id=INTRUDER), sid)
    unknown = await answer(lambda: repo.get_session(unknown_id, user_id=INTRUDER), unknown_id)
    assert foreign == unknown == ("returned", "None")
    assert await repo.get_session(sid, user_id="") is None  # "no user" is not a wildcard
    await assert_untouched(repo, session)


async def test_delete_session_of_another_user_answers_like_an_unknown_id_and_deletes_nothing(
    repo: SessionRepository, unknown_id: str
) -> None:
    session = await owned_and_cached(repo)
    sid = session.session_id
    foreign = await answer(lambda: repo.delete_session(sid, user_id=INTRUDER), sid)
    unknown = await answer(lambda: repo.delete_session(unknown_id, user_id=INTRUDER), unknown_id)
    assert foreign == unknown == ("returned", "False")
    await assert_untouched(repo, session)
    assert await repo.delete_session(sid, user_id=OWNER) is True  # the owner still can


async def test_add_checkpoint_to_another_users_session_raises_like_an_unknown_id_and_writes_nothing(
    repo: SessionRepository, db: Backend, unknown_id: str
) -> None:
    session = await owned_and_cached(repo)
    sid = session.session_id
    before = await checkpoint_rows(db)
    foreign = await answer(lambda: repo.add_checkpoint(sid, "planted", user_id=INTRUDER), sid)
    unknown = await answer(
        lambda: repo.add_checkpoint(unknown_id, "planted", user_id=INTRUDER), unknown_id
    )
    assert foreign == unknown
    assert foreign[0] == "SessionNotFoundError"
    assert await checkpoint_rows(db) == before
    await assert_untouched(repo, session)


@pytest.mark.parametrize("after_seq", [None, 0, 1, 2, 1000])
async def test_list_checkpoints_of_another_users_session_raises_like_an_unknown_id(
    repo: SessionRepository, unknown_id: str, after_seq: int | None
) -> None:
    # after_seq past the end takes the "no rows: does the session exist?" path, which must not
    # tell a foreign session from a missing one either.
    session = await owned_and_cached(repo)
    sid = session.session_id

    def listing(session_id: str) -> Callable[[], Awaitable[Any]]:
        return lambda: repo.list_checkpoints(session_id, after_seq=after_seq, user_id=INTRUDER)

    foreign = await answer(listing(sid), sid)
    unknown = await answer(listing(unknown_id), unknown_id)
    assert foreign == unknown
    assert foreign[0] == "SessionNotFoundError"
    owned = await repo.list_checkpoints(sid, after_seq=after_seq, user_id=OWNER)
    assert [cp.seq for cp in owned] == [s for s in (1, 2) if s > (after_seq or 0)]


async def test_a_deleted_foreign_session_answers_like_an_unknown_id_too(
    repo: SessionRepository, unknown_id: str
) -> None:
    session = await owned_and_cached(repo)
    sid = session.session_id
    assert await repo.delete_session(sid, user_id=OWNER)
    calls: list[Callable[[str], Callable[[], Awaitable[Any]]]] = [
        lambda i: lambda: repo.get_session(i, user_id=INTRUDER),
        lambda i: lambda: repo.delete_session(i, user_id=INTRUDER),
        lambda i: lambda: repo.add_checkpoint(i, "x", user_id=INTRUDER),
        lambda i: lambda: repo.list_checkpoints(i, user_id=INTRUDER),
    ]
    for make in calls:
        assert await answer(make(sid), sid) == await answer(make(unknown_id), unknown_id)


async def test_list_sessions_scoped_to_a_user_lists_exactly_that_users_sessions(
    repo: SessionRepository, clock: FakeClock
) -> None:
    mine: list[tuple[str, str]] = []  # (session_id, agent_type), oldest first
    for i in range(12):  # interleaved in time, so page boundaries fall between users
        clock.advance(seconds=1)
        user = OWNER if i % 3 else INTRUDER
        agent_type = "planner" if i % 2 else "coder"
        created = await repo.create_session(agent_type, user)
        if user == INTRUDER:
            mine.append((created.session_id, agent_type))
    for state in (None, SessionState.ACTIVE):
        for kind_filter in (None, "planner"):
            listed: list[AgentSession] = []
            cursor: str | None = None
            while True:
                page = await repo.list_sessions(
                    user_id=INTRUDER, state=state, agent_type=kind_filter, limit=2, cursor=cursor
                )
                listed += page.items
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert all(s.user_id == INTRUDER for s in listed)
            expected = [sid for sid, kind in reversed(mine) if kind_filter in (None, kind)]
            assert [s.session_id for s in listed] == expected
    active = await repo.get_active_sessions(user_id=INTRUDER)
    assert {s.session_id for s in active} == {sid for sid, _ in mine}


async def test_scoped_reads_of_a_cached_session_check_the_owner_every_time(
    repo: SessionRepository,
) -> None:
    session = await owned_and_cached(repo)
    sid = session.session_id
    for _ in range(3):  # hits, when there is a cache
        assert await repo.get_session(sid, user_id=OWNER) == session
        assert await repo.get_session(sid, user_id=INTRUDER) is None
    updated = await repo.update_session(session)
    assert await repo.get_session(sid, user_id=INTRUDER) is None
    assert await repo.get_session(sid, user_id=OWNER) == updated
