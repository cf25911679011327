"""list_sessions and count_sessions filters: key prefix, updated before/after, metadata."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from agent_session_store import SessionRepository, SessionState, SessionValidationError
from tests.conftest import FakeClock


async def _all_ids(repo: SessionRepository, limit: int = 2, **filters: Any) -> list[str]:
    """Every page of the listing, with the count checked against it."""
    ids: list[str] = []
    cursor = None
    while True:
        page = await repo.list_sessions(limit=limit, cursor=cursor, **filters)
        ids += [s.session_id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert await repo.count_sessions(**filters) == len(ids)
    return ids


async def test_key_prefix_lists_the_keys_that_start_with_it_literally(
    repo: SessionRepository, user: str
) -> None:
    keys = ["chat-1", "chat-2", "chat_x", "chat%y", "chatter", "Chat-3", "chat-\u00e9", "other"]
    made = {k: (await repo.create_session("planner", user, key=k)).session_id for k in keys}
    await repo.create_session("planner", user)  # no key: never matches a prefix
    found = await _all_ids(repo, user_id=user, key_prefix="chat-")
    assert set(found) == {made["chat-1"], made["chat-2"], made["chat-\u00e9"]}
    # LIKE's metacharacters are plain characters.
    assert await _all_ids(repo, user_id=user, key_prefix="chat_") == [made["chat_x"]]
    assert await _all_ids(repo, user_id=user, key_prefix="chat%") == [made["chat%y"]]
    assert await _all_ids(repo, user_id=user, key_prefix="Chat") == [made["Chat-3"]]
    assert len(await _all_ids(repo, user_id=user, key_prefix="chat")) == 6
    assert await _all_ids(repo, user_id=user, key_prefix="chat-1") == [made["chat-1"]]


async def test_updated_after_and_before_are_strict_bounds(
    repo: SessionRepository, clock: FakeClock, user: str
) -> None:
    start = clock.now
    made = []
    for _ in range(4):
        made.append((await repo.create_session("planner", user)).session_id)
        clock.advance(minutes=10)
    # updated_at: start, +10, +20, +30 minutes (newest first in the listing)
    t = [start + timedelta(minutes=10 * i) for i in range(4)]
    assert await _all_ids(repo, user_id=user, updated_before=t[2]) == [made[1], made[0]]
    assert await _all_ids(repo, user_id=user, updated_after=t[1]) == [made[3], made[2]]
    between = await _all_ids(repo, user_id=user, updated_after=t[0], updated_before=t[3])
    assert between == [made[2], made[1]]
    # An update moves a session's updated_at.
    session = await repo.get_session(made[0])
    assert session is not None
    await repo.update_session(session)
    assert await _all_ids(repo, user_id=user, updated_after=t[3]) == [made[0]]


async def test_metadata_matches_every_given_top_level_key(
    repo: SessionRepository, user: str
) -> None:
    async def make(metadata: dict[str, Any]) -> str:
        return (await repo.create_session("planner", user, metadata=metadata)).session_id

    a = await make({"team": "a", "tier": 1, "beta": True, "note": None, "tags": ["x"]})
    b = await make({"team": "a", "tier": 2, "beta": False})
    c = await make({"team": "b", "tier": 1.0, "beta": 1})
    d = await make({})
    assert set(await _all_ids(repo, user_id=user, metadata={"team": "a"})) == {a, b}
    assert await _all_ids(repo, user_id=user, metadata={"team": "a", "tier": 1}) == [a]
    # 1 and 1.0 are one JSON number; true is not 1.
    assert set(await _all_ids(repo, user_id=user, metadata={"tier": 1})) == {a, c}
    assert await _all_ids(repo, user_id=user, metadata={"beta": True}) == [a]
    assert await _all_ids(repo, user_id=user, metadata={"beta": 1}) == [c]
    # null matches a key holding null, not a missing key.
    assert await _all_ids(repo, user_id=user, metadata={"note": None}) == [a]
    assert await _all_ids(repo, user_id=user, metadata={"team": "c"}) == []
    assert len(await _all_ids(repo, user_id=user, metadata={})) == 4  # no filter
    assert d in await _all_ids(repo, user_id=user)


async def test_filters_combine_with_the_others_and_leave_deleted_sessions_out(
    repo: SessionRepository, user: str
) -> None:
    keep = await repo.create_session("planner", user, metadata={"t": "a"}, key="job-1")
    gone = await repo.create_session("planner", user, metadata={"t": "a"}, key="job-2")
    await repo.create_session("writer", user, metadata={"t": "a"}, key="job-3")
    await repo.delete_session(gone.session_id)
    filters: dict[str, Any] = {
        "agent_type": "planner",
        "key_prefix": "job-",
        "metadata": {"t": "a"},
    }
    assert await _all_ids(repo, user_id=user, **filters) == [keep.session_id]
    deleted = await _all_ids(repo, user_id=user, state=SessionState.DELETED, **filters)
    assert deleted == [gone.session_id]


async def test_a_cursor_is_bound_to_the_new_filters(repo: SessionRepository, user: str) -> None:
    for i in range(3):
        await repo.create_session("planner", user, key=f"k-{i}", metadata={"n": i})
    page = await repo.list_sessions(user_id=user, key_prefix="k-", limit=1)
    assert page.next_cursor is not None
    with pytest.raises(SessionValidationError, match="other filters"):
        await repo.list_sessions(user_id=user, key_prefix="k", cursor=page.next_cursor)
    with pytest.raises(SessionValidationError, match="other filters"):
        await repo.list_sessions(user_id=user, cursor=page.next_cursor)
    page = await repo.list_sessions(user_id=user, metadata={"n": 1}, limit=1)
    assert page.next_cursor is None
    plain = await repo.list_sessions(user_id=user, limit=1)
    with pytest.raises(SessionValidationError, match="other filters"):
        await repo.list_sessions(user_id=user, metadata={"n": 1}, cursor=plain.next_cursor)


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"metadata": {"a": [1]}}, "holds a list"),
        ({"metadata": {"a": {"b": 1}}}, "holds a dict"),
        ({"metadata": {"a": float("nan")}}, "NaN"),
        ({"metadata": {"a": 2**70}}, "64 bits"),
        ({"metadata": {"a": b"x"}}, "not a JSON value"),
        ({"metadata": {1: "x"}}, "strings"),
        ({"metadata": {"a\x00": "x"}}, "NUL"),
        ({"metadata": {f"k{i}": i for i in range(17)}}, "at most 16"),
        ({"metadata": "team=a"}, "must be a dict"),
        ({"key_prefix": ""}, "1 to 128"),
        ({"key_prefix": 5}, "must be a string"),
        ({"updated_before": datetime(2030, 1, 1)}, "no time zone"),
        ({"updated_after": "yesterday"}, "must be a datetime"),
        ({"state": "gone"}, "state must be one of"),
    ],
)
async def test_bad_filters_are_refused_with_a_message(
    repo: SessionRepository, filters: dict[str, Any], message: str
) -> None:
    with pytest.raises(SessionValidationError, match=message):
        await repo.list_sessions(**filters)
    with pytest.raises(SessionValidationError, match=message):
        await repo.count_sessions(**filters)
