"""SessionStoreService held to Google ADK's session-service contract.

The behaviours are those ``BaseSessionService``'s docstrings and ADK's shared session-service
tests (tests/unittests/sessions/ in google/adk-python) promise, plus regression tests for the
upstream reports the primitives issue names. Every test taking ``service`` runs on SQLite,
PostgreSQL and PostgreSQL behind PgBouncer, each without and with the Redis cache.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

# Imported plainly, not with importorskip: google-adk is in the dev extra, and CI must fail,
# not skip, when it is missing.
from google.adk.errors._stale_session_error import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import (
    SessionNotFoundError as AdkSessionNotFoundError,
)
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import GetSessionConfig
from google.adk.sessions.session import Session
from google.genai import types
from sqlalchemy import event as sa_event
from sqlalchemy import insert

from agent_session_store import SchemaOutOfDateError, SessionRepository, SessionValidationError
from agent_session_store.integrations.adk import (
    EVENT_CHECKPOINT,
    SessionStoreService,
)
from agent_session_store.tables import checkpoints_table, sessions_table
from tests.conftest import Backend

APP = "my_app"


@pytest.fixture
def service(repo: SessionRepository) -> SessionStoreService:
    return SessionStoreService(repo)


def said(text: str, **kwargs: Any) -> Event:
    return Event(
        invocation_id=kwargs.pop("invocation_id", "inv"),
        author=kwargs.pop("author", "user"),
        content=types.Content(role="user", parts=[types.Part(text=text)]),
        **kwargs,
    )


def delta(**state: Any) -> Event:
    return Event(invocation_id="inv", author="user", actions=EventActions(state_delta=state))


async def fetch(service: SessionStoreService, session: Session, **kwargs: Any) -> Session:
    got = await service.get_session(
        app_name=session.app_name, user_id=session.user_id, session_id=session.id, **kwargs
    )
    assert got is not None
    return got


# -- create, get, delete ---------------------------------------------------------------------


async def test_get_unknown_session_is_none(service: SessionStoreService) -> None:
    assert await service.get_session(app_name=APP, user_id="u", session_id="123") is None
    # ids, users and apps no session can have are unknown too, not errors
    assert await service.get_session(app_name=APP, user_id="u", session_id="x" * 200) is None
    assert await service.get_session(app_name="", user_id="u", session_id="s") is None


async def test_create_get_delete_round_trip(service: SessionStoreService) -> None:
    before = datetime.now(UTC).timestamp()
    created = await service.create_session(app_name=APP, user_id="u", state={"key": "value"})
    assert (created.app_name, created.user_id, created.state) == (APP, "u", {"key": "value"})
    assert uuid.UUID(created.id)  # a minted id
    assert created.events == [] and before - 5 <= created.last_update_time
    assert await fetch(service, created) == created
    await service.delete_session(app_name=APP, user_id="u", session_id=created.id)
    assert await service.get_session(app_name=APP, user_id="u", session_id=created.id) is None
    # deleting again, or an id that never existed, is not an error
    await service.delete_session(app_name=APP, user_id="u", session_id=created.id)
    await service.delete_session(app_name=APP, user_id="u", session_id="never")


async def test_create_with_caller_id(service: SessionStoreService) -> None:
    created = await service.create_session(app_name=APP, user_id="u", session_id="chat-1")
    assert created.id == "chat-1"
    assert (await fetch(service, created)).id == "chat-1"


async def test_padded_session_id_reads_and_deletes(service: SessionStoreService) -> None:
    created = await service.create_session(app_name=APP, user_id="u", session_id="  s1 ")
    assert created.id == "s1"
    got = await service.get_session(app_name=APP, user_id="u", session_id=" s1  ")
    assert got is not None and got.id == "s1"
    await service.delete_session(app_name=APP, user_id="u", session_id=" s1")
    assert await service.get_session(app_name=APP, user_id="u", session_id="s1") is None


async def test_duplicate_id_raises_already_exists(service: SessionStoreService) -> None:
    await service.create_session(app_name=APP, user_id="u", session_id="s")
    with pytest.raises(AlreadyExistsError, match="s already exists"):
        await service.create_session(app_name=APP, user_id="u", session_id="s")
    # ids are unique per app and user
    assert (await service.create_session(app_name=APP, user_id="v", session_id="s")).id == "s"
    assert (await service.create_session(app_name="other", user_id="u", session_id="s")).id == "s"


async def test_duplicate_id_with_shared_state_writes_nothing(
    service: SessionStoreService,
) -> None:
    await service.create_session(app_name=APP, user_id="u", session_id="s")
    with pytest.raises(AlreadyExistsError):
        await service.create_session(
            app_name=APP, user_id="u", session_id="s", state={"app:a": 1, "user:b": 2}
        )
    assert await service.repository.get_shared_state(APP) == {}
    assert await service.get_user_state(app_name=APP, user_id="u") == {}


async def test_concurrent_creates_of_one_id_one_wins(service: SessionStoreService) -> None:
    results = await asyncio.gather(
        *(
            service.create_session(app_name=APP, user_id="u", session_id="race", state={"i": i})
            for i in range(25)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, Session)]
    lost = [r for r in results if isinstance(r, AlreadyExistsError)]
    assert (len(won), len(lost)) == (1, 24)
    assert (await fetch(service, won[0])).state == won[0].state


async def test_a_deleted_id_can_be_used_again(service: SessionStoreService) -> None:
    first = await service.create_session(app_name=APP, user_id="u", session_id="s")
    await service.append_event(first, said("old"))
    await service.delete_session(app_name=APP, user_id="u", session_id="s")
    again = await service.create_session(app_name=APP, user_id="u", session_id="s")
    assert (await fetch(service, again)).events == []


async def test_bad_input_is_a_clear_error_and_writes_nothing(service: SessionStoreService) -> None:
    with pytest.raises(SessionValidationError, match="key"):
        await service.create_session(app_name=APP, user_id="u", session_id="x" * 129)
    with pytest.raises(SessionValidationError, match="agent_type"):
        await service.create_session(app_name="", user_id="u")
    assert (await service.list_sessions(app_name=APP)).sessions == []


# -- state scopes ----------------------------------------------------------------------------


async def test_state_scopes(service: SessionStoreService) -> None:
    s1 = await service.create_session(
        app_name=APP, user_id="u1", session_id="s1", state={"app:k1": "v1", "user:k1": "u", "sk": 1}
    )
    await service.append_event(s1, delta(**{"app:k2": "v2", "user:k2": "w", "sk": 2}))
    assert s1.state == {"app:k1": "v1", "app:k2": "v2", "user:k1": "u", "user:k2": "w", "sk": 2}

    # the user's other sessions see app and user state, not another session's own keys
    s1b = await service.create_session(app_name=APP, user_id="u1", session_id="s1b")
    assert s1b.state == {"app:k1": "v1", "app:k2": "v2", "user:k1": "u", "user:k2": "w"}
    # another user sees the app's state only
    s2 = await service.create_session(app_name=APP, user_id="u2", session_id="s2")
    assert s2.state == {"app:k1": "v1", "app:k2": "v2"}
    # another app sees nothing
    assert (await service.create_session(app_name="other", user_id="u1")).state == {}
    # a fresh read of the first session has everything
    assert (await fetch(service, s1)).state == s1.state

    # stored as the mapping says: own keys in the context, the rest in shared state
    stored = await service.repository.get_session_by_key(APP, "u1", key="s1")
    assert stored is not None and stored.context == {"sk": 2}
    assert await service.repository.get_shared_state(APP) == {"k1": "v1", "k2": "v2"}
    assert await service.get_user_state(app_name=APP, user_id="u1") == {"k1": "u", "k2": "w"}


async def test_temp_state_lives_in_memory_only(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u", state={"temp:t0": 0})
    assert "temp:t0" not in (await fetch(service, session)).state
    event = delta(**{"temp:k": "v", "sk": "v2"})
    await service.append_event(session, event)
    # visible to the rest of the invocation, trimmed from the stored event
    assert session.state["temp:k"] == "v"
    assert event.actions.state_delta == {"sk": "v2"}
    got = await fetch(service, session)
    assert "temp:k" not in got.state and got.state["sk"] == "v2"
    assert "temp:k" not in got.events[0].actions.state_delta


async def test_get_user_state(service: SessionStoreService) -> None:
    assert await service.get_user_state(app_name=APP, user_id="u1") == {}
    session = await service.create_session(app_name=APP, user_id="u1")
    await service.append_event(session, delta(**{"user:profile": {"name": "Alice"}, "own": 1}))
    await service.append_event(session, delta(**{"user:counter": 2}))
    assert await service.get_user_state(app_name=APP, user_id="u1") == {
        "profile": {"name": "Alice"},
        "counter": 2,
    }
    assert await service.get_user_state(app_name=APP, user_id="u2") == {}
    assert await service.get_user_state(app_name="other", user_id="u1") == {}


async def test_non_json_state_is_stored_as_json(service: SessionStoreService) -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    session = await service.create_session(app_name=APP, user_id="u", state={"when": when})
    assert (await fetch(service, session)).state["when"] == "2025-01-02T03:04:05Z"


async def test_get_session_respects_user_id(service: SessionStoreService) -> None:
    mine = await service.create_session(app_name=APP, user_id="u1", session_id="s1")
    await service.append_event(mine, said("hi"))
    await service.create_session(app_name=APP, user_id="u2", session_id="s1")
    theirs = await service.get_session(app_name=APP, user_id="u2", session_id="s1")
    assert theirs is not None and theirs.user_id == "u2" and theirs.events == []
    assert await service.get_session(app_name=APP, user_id="u3", session_id="s1") is None


# -- events ----------------------------------------------------------------------------------


async def test_event_with_bytes_round_trips(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    content = types.Content(
        role="user", parts=[types.Part.from_bytes(data=b"\x89PNG\x00", mime_type="image/png")]
    )
    grounding = types.GroundingMetadata(search_entry_point=types.SearchEntryPoint(sdk_blob=b"blob"))
    await service.append_event(
        session, Event(author="user", content=content, grounding_metadata=grounding)
    )
    (event,) = (await fetch(service, session)).events
    assert event.content == content and event.grounding_metadata == grounding


async def test_event_with_every_field_round_trips(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    event = Event(
        invocation_id="invocation",
        author="user",
        content=types.Content(role="user", parts=[types.Part(text="test_text")]),
        turn_complete=True,
        partial=False,
        actions=EventActions(artifact_delta={"file": 0}, transfer_to_agent="agent", escalate=True),
        long_running_tool_ids={"tool1"},
        error_code="error_code",
        error_message="error_message",
        interrupted=True,
        grounding_metadata=types.GroundingMetadata(web_search_queries=["query1"]),
        usage_metadata=types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1, candidates_token_count=1, total_token_count=2
        ),
        citation_metadata=types.CitationMetadata(),
        custom_metadata={"custom_key": "custom_value"},
        timestamp=1700000000.123,
        input_transcription=types.Transcription(text="in", finished=True),
        output_transcription=types.Transcription(text="out", finished=True),
    )
    await service.append_event(session, event)
    assert await fetch(service, session) == session


async def test_events_are_checkpoints_at_the_event_time(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u", session_id="s")
    event = said("hello", timestamp=1_700_000_000.25)
    await service.append_event(session, event)
    stored = await service.repository.get_session_by_key(APP, "u", key="s")
    assert stored is not None
    checkpoint = stored.checkpoints[-1]
    assert checkpoint.name == EVENT_CHECKPOINT
    assert checkpoint.data == event.model_dump(mode="json")
    assert checkpoint.timestamp == datetime.fromtimestamp(1_700_000_000.25, UTC)


async def test_last_update_time_is_the_event_time(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    later = session.last_update_time + 10
    await service.append_event(session, Event(author="user", timestamp=later))
    assert session.last_update_time == pytest.approx(later, abs=1e-6)
    assert (await fetch(service, session)).last_update_time == pytest.approx(later, abs=1e-6)


async def test_partial_events_are_not_stored(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    returned = await service.append_event(session, Event(author="user", partial=True))
    assert returned.partial and session.events == []
    assert (await fetch(service, session)).events == []
    # and the session is not stale afterwards
    await service.append_event(session, said("whole"))
    assert len((await fetch(service, session)).events) == 1


async def test_get_session_config(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    for i in range(1, 6):
        await service.append_event(session, Event(author="user", timestamp=i))

    def stamps(got: Session) -> list[float]:
        return [e.timestamp for e in got.events]

    assert stamps(await fetch(service, session)) == [1, 2, 3, 4, 5]
    assert stamps(await fetch(service, session, config=GetSessionConfig())) == [1, 2, 3, 4, 5]
    assert stamps(await fetch(service, session, config=GetSessionConfig(num_recent_events=0))) == []
    recent = GetSessionConfig(num_recent_events=3)
    assert stamps(await fetch(service, session, config=recent)) == [3, 4, 5]
    assert stamps(await fetch(service, session, config=GetSessionConfig(num_recent_events=9))) == [
        1,
        2,
        3,
        4,
        5,
    ]
    after = GetSessionConfig(after_timestamp=4.0)  # inclusive
    assert stamps(await fetch(service, session, config=after)) == [4, 5]
    assert stamps(await fetch(service, session, config=GetSessionConfig(after_timestamp=50))) == []
    both = GetSessionConfig(after_timestamp=2.0, num_recent_events=2)
    assert stamps(await fetch(service, session, config=both)) == [4, 5]
    zero_after = GetSessionConfig(after_timestamp=0.0)  # no filter, as ADK reads it
    assert stamps(await fetch(service, session, config=zero_after)) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="num_recent_events"):
        GetSessionConfig(num_recent_events=-1)


async def test_windowed_reads_see_every_committed_append(service: SessionStoreService) -> None:
    """Windows up to the repository's default are served by the cache (with Redis): an append
    invalidates it when its transaction commits, and a failed one leaves it right."""
    session = await service.create_session(app_name=APP, user_id="u")
    window = GetSessionConfig(num_recent_events=5)
    for i in range(3):
        assert len((await fetch(service, session, config=window)).events) == i
        await service.append_event(session, delta(n=i))
    got = await fetch(service, session, config=window)
    assert len(got.events) == 3 and got.state["n"] == 2
    with pytest.raises(SessionValidationError):
        await service.append_event(session, delta(n=float("nan")))
    got = await fetch(service, session, config=window)
    assert len(got.events) == 3 and got.state["n"] == 2


async def test_events_come_back_in_append_order(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    for text, at in (("a", 30.0), ("b", 10.0), ("c", 10.0), ("d", 20.0)):
        await service.append_event(session, said(text, timestamp=at))
    got = await fetch(service, session)
    assert [e.content.parts[0].text for e in got.events if e.content and e.content.parts] == [
        "a",
        "b",
        "c",
        "d",
    ]
    assert got.events == session.events


async def test_append_to_deleted_session_raises_not_found(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u", session_id="s")
    await service.delete_session(app_name=APP, user_id="u", session_id="s")
    with pytest.raises(AdkSessionNotFoundError):
        await service.append_event(session, said("lost"))
    never = Session(id="never", app_name=APP, user_id="u")
    with pytest.raises(AdkSessionNotFoundError):
        await service.append_event(never, said("lost"))


async def test_failed_append_writes_nothing(service: SessionStoreService) -> None:
    """The event, the session's state and the shared state commit together or not at all."""
    session = await service.create_session(app_name=APP, user_id="u", state={"sk": 0})
    huge = "x" * (1024 * 1024 + 1)  # over the repository's max_payload_bytes
    with pytest.raises(SessionValidationError):
        await service.append_event(session, delta(**{"sk": 1, "user:u": 1, "app:big": huge}))
    got = await fetch(service, session)
    assert got.events == [] and got.state == {"sk": 0}
    assert await service.get_user_state(app_name=APP, user_id="u") == {}
    # the session object is still the stored revision
    fresh = await fetch(service, session)
    await service.append_event(fresh, delta(sk=2))
    assert (await fetch(service, session)).state == {"sk": 2}


# -- stale sessions and concurrency (google/adk-python#1733, #4751) --------------------------


async def test_stale_session_is_rejected_and_writes_nothing(service: SessionStoreService) -> None:
    original = await service.create_session(app_name=APP, user_id="u")
    await service.append_event(original, delta(sk1="v1"))
    updated = await fetch(service, original)
    await service.append_event(updated, delta(sk2="v2"))
    with pytest.raises(StaleSessionError, match="modified in storage") as caught:
        await service.append_event(original, delta(sk3="v3"))
    assert isinstance(caught.value, ValueError)  # what ADK callers catch
    final = await fetch(service, original)
    assert len(final.events) == 2 and final.state == {"sk1": "v1", "sk2": "v2"}


async def test_a_session_appended_through_is_never_stale(service: SessionStoreService) -> None:
    """No false conflicts: equal, backwards and sub-microsecond timestamps all append."""
    session = await service.create_session(app_name=APP, user_id="u")
    for at in (100.0, 100.0, 50.0, 100.0000001, 100.0000002, 0.0):
        await service.append_event(session, Event(author="user", timestamp=at))
    assert len((await fetch(service, session)).events) == 6


async def test_concurrent_stale_copies_exactly_one_wins(service: SessionStoreService) -> None:
    session = await service.create_session(app_name=APP, user_id="u")
    for i in range(8):
        latest = await fetch(service, session)
        one, two = latest.model_copy(deep=True), latest.model_copy(deep=True)
        results = await asyncio.gather(
            service.append_event(one, delta(**{f"k{i}": "one"})),
            service.append_event(two, delta(**{f"k{i}": "two"})),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], StaleSessionError), results
    final = await fetch(service, session)
    assert len(final.events) == 8
    assert all(final.state[f"k{i}"] in ("one", "two") for i in range(8))


async def test_concurrent_sessions_of_one_user_never_conflict(
    service: SessionStoreService,
) -> None:
    """Different sessions writing the same user's and app's state: all succeed, none lost."""
    sessions = [
        await service.create_session(app_name=APP, user_id="u", session_id=f"s{i}")
        for i in range(10)
    ]
    await asyncio.gather(
        *(
            service.append_event(s, delta(**{f"user:k{i}": i, f"app:k{i}": i, "own": i}))
            for i, s in enumerate(sessions)
        )
    )
    assert await service.get_user_state(app_name=APP, user_id="u") == {
        f"k{i}": i for i in range(10)
    }
    for i, s in enumerate(sessions):
        got = await fetch(service, s)
        assert got.state["own"] == i and len(got.events) == 1


async def test_copy_without_marker_is_checked_against_its_events(
    service: SessionStoreService,
) -> None:
    session = await service.create_session(app_name=APP, user_id="u", session_id="s")
    await service.append_event(session, said("one"))
    current = Session.model_validate(session.model_dump())  # no private marker
    await service.append_event(current, said("two"))
    stale = Session.model_validate(session.model_dump())
    stale.events = stale.events[:1]
    with pytest.raises(StaleSessionError):
        await service.append_event(stale, said("three"))
    assert len((await fetch(service, session)).events) == 2


# -- listing (google/adk-python#4621) --------------------------------------------------------


async def test_list_sessions_of_a_user_and_of_the_app(service: SessionStoreService) -> None:
    for user, sid in (("u1", "a"), ("u1", "b"), ("u2", "c")):
        await service.create_session(
            app_name=APP, user_id=user, session_id=sid, state={"key": sid, f"user:{user}": 1}
        )
    s = await service.create_session(app_name=APP, user_id="u1", session_id="d")
    await service.append_event(s, delta(**{"app:shared": True}))
    await service.create_session(app_name="other", user_id="u1")

    mine = (await service.list_sessions(app_name=APP, user_id="u1")).sessions
    assert {x.id for x in mine} == {"a", "b", "d"}
    everyone = (await service.list_sessions(app_name=APP)).sessions
    assert {(x.user_id, x.id) for x in everyone} == {
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "c"),
        ("u1", "d"),
    }
    by_id = {x.id: x for x in everyone}
    assert by_id["a"].state == {"key": "a", "user:u1": 1, "app:shared": True}
    assert by_id["c"].state == {"key": "c", "user:u2": 1, "app:shared": True}
    assert all(x.events == [] for x in everyone)  # listing never reads events
    assert (await service.list_sessions(app_name=APP, user_id="nobody")).sessions == []


async def test_list_sessions_oldest_update_first(service: SessionStoreService) -> None:
    sessions = [
        await service.create_session(app_name=APP, user_id="u", session_id=f"s{i}")
        for i in range(4)
    ]
    # the newest event decides: s2, s0, s3, s1
    for s, at in zip(sessions, (2e9 + 2, 2e9 + 4, 2e9 + 1, 2e9 + 3), strict=True):
        await service.append_event(s, Event(author="user", timestamp=at))
    listed = (await service.list_sessions(app_name=APP, user_id="u")).sessions
    assert [x.id for x in listed] == ["s2", "s0", "s3", "s1"]
    assert [x.last_update_time for x in listed] == sorted(x.last_update_time for x in listed)


async def test_list_ignores_sessions_made_without_adk(service: SessionStoreService) -> None:
    await service.repository.create_session(APP, "u")  # no key: not an ADK session
    await service.create_session(app_name=APP, user_id="u", session_id="adk")
    assert [s.id for s in (await service.list_sessions(app_name=APP)).sessions] == ["adk"]


@pytest.fixture
def statements(db: Backend) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    sa_event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    yield seen
    sa_event.remove(db.engine.sync_engine, "before_cursor_execute", record)


async def test_listing_10000_sessions_reads_pages_not_events(
    db: Backend, statements: list[str]
) -> None:
    """google/adk-python#4621: 10,000 sessions listed in keyset pages; no event row read."""
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "agent_type": APP,
            "user_id": f"u{i % 4}",
            "state": "active",
            "context": {"i": i},
            "metadata": {},
            "checkpoint_count": 1,
            "version": 1,
            "created_at": now,
            "updated_at": now,
            "last_heartbeat": now,
            "key": f"s{i}",
        }
        for i in range(10_000)
    ]
    async with db.engine.begin() as conn:
        await conn.execute(insert(sessions_table), rows)
        await conn.execute(
            insert(checkpoints_table),
            [
                {
                    "session_id": r["id"],
                    "seq": 1,
                    "name": "session_created",
                    "data": {},
                    "created_at": now,
                }
                for r in rows[:50]
            ],
        )
    service = SessionStoreService(SessionRepository(db.factory))
    await service.list_sessions(app_name="warm-up")  # the schema check, once per repository
    statements.clear()
    listed = (await service.list_sessions(app_name=APP)).sessions
    assert len(listed) == 10_000 and {s.id for s in listed} == {f"s{i}" for i in range(10_000)}
    assert listed[0].state == {"i": int(listed[0].id[1:])}
    assert not [s for s in statements if "agent_sessions_checkpoints" in s]
    # 10 keyset pages of 1,000, the app's shared state and one read per user (4 users)
    assert len(statements) == 10 + 1 + 4, statements


# -- reads that do not load every event (google/adk-python#4917) ------------------------------


class _Recording(SessionRepository):
    windows: list[int | None]

    async def get_session_by_key(self, *args: Any, **kwargs: Any) -> Any:
        self.windows.append(kwargs.get("recent_checkpoints"))
        return await super().get_session_by_key(*args, **kwargs)


async def test_recent_events_read_only_the_window(db: Backend) -> None:
    repo = _Recording(db.factory)
    repo.windows = []
    service = SessionStoreService(repo)
    session = await service.create_session(app_name=APP, user_id="u")
    for i in range(60):
        await service.append_event(session, said(f"m{i}"))
    repo.windows.clear()
    got = await fetch(service, session, config=GetSessionConfig(num_recent_events=5))
    assert [e.content.parts[0].text for e in got.events if e.content and e.content.parts] == [
        f"m{i}" for i in range(55, 60)
    ]
    assert repo.windows == [5]  # the repository reads 5 checkpoint rows, whatever the history


# -- migrations, not create_all (google/adk-python#456, #3343, #4387) -------------------------


async def test_unmigrated_database_names_the_command(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    async with SessionStoreService.from_url(url) as service:
        with pytest.raises(SchemaOutOfDateError, match="agent-session-store db upgrade"):
            await service.create_session(app_name=APP, user_id="u")
        with pytest.raises(SchemaOutOfDateError):
            await service.get_session(app_name=APP, user_id="u", session_id="s")


async def test_from_url_with_redis_owns_and_closes_its_clients(
    tmp_path: Path, redis_url: str
) -> None:
    from agent_session_store import migrations

    url = f"sqlite+aiosqlite:///{tmp_path / 'adk.db'}"
    await migrations.upgrade(url)
    service = SessionStoreService.from_url(url, redis_url=redis_url, namespace=uuid.uuid4().hex)
    assert service.repository.cache is not None
    session = await service.create_session(app_name=APP, user_id="u", session_id="s")
    await service.append_event(session, said("cached"))
    assert await fetch(service, session) == await fetch(service, session) == session
    engine = service._engine
    await service.aclose()
    assert service._engine is None and engine is not None
    assert "Current Checked out connections: 0" in engine.pool.status()
    await service.aclose()  # twice is fine


async def test_from_url_signs_the_cache_and_encrypts_at_rest_when_asked(
    tmp_path: Path, redis_url: str
) -> None:
    from redis.asyncio import Redis

    from agent_session_store import migrations
    from agent_session_store.encryption import FieldEncryption

    url, canary = f"sqlite+aiosqlite:///{tmp_path / 'adk.db'}", "canary-7f3a"
    await migrations.upgrade(url)
    namespace = uuid.uuid4().hex
    service = SessionStoreService.from_url(
        url, redis_url=redis_url, namespace=namespace, signing_keys=[b"k" * 32],
        encryption=FieldEncryption({"one": bytes(range(32))}, "one"),
    )  # fmt: skip
    try:
        session = await service.create_session(
            app_name=APP, user_id="u", session_id="s", state={"note": canary}
        )
        await service.append_event(session, said(canary))
        assert await fetch(service, session) == await fetch(service, session) == session
        repo, cache = service.repository, service.repository.cache
        assert cache is not None
        # ADK reads whole histories, which bypass the cache: a repository read fills it.
        other = await repo.create_session("planner", "u", {"note": canary})
        assert await repo.get_session(other.session_id) == await repo.get_session(other.session_id)
        await cache.drain()
        assert (cache.stats.hits, cache.stats.rejected) == (1, 0)
    finally:
        await service.aclose()
    client = Redis.from_url(redis_url)
    try:
        values = [await client.get(k) async for k in client.scan_iter(match=f"*{namespace}*")]
    finally:
        await client.aclose()
    stored = [v for v in values if v is not None and v.startswith(b"as1")]
    assert stored and all(v.startswith(b"as1s") for v in stored)  # signed entries only
    assert not any(canary.encode() in v for v in values if v is not None)
    assert canary.encode() not in (tmp_path / "adk.db").read_bytes()


# -- an ADK Runner on top (examples/adk_runner.py) --------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


async def test_runner_conversation_persists(service: SessionStoreService) -> None:
    from examples.adk_runner import APP as EXAMPLE_APP
    from examples.adk_runner import converse

    first = await converse(service, "alice", ["hello", "again"])
    second = await converse(service, "alice", ["new chat"])
    session = await service.get_session(app_name=EXAMPLE_APP, user_id="alice", session_id=first)
    assert session is not None
    texts = [e.content.parts[0].text for e in session.events if e.content and e.content.parts]
    assert texts == ["hello", "turn 1: HELLO", "again", "turn 2: AGAIN"]
    assert session.state == {"turns": 2, "user:messages": 3}  # the user's tally spans sessions
    other = await service.get_session(app_name=EXAMPLE_APP, user_id="alice", session_id=second)
    assert other is not None and other.state["turns"] == 1
    # RunConfig.get_session_config reaches get_session: later turns can read a window only
    window = await service.get_session(
        app_name=EXAMPLE_APP,
        user_id="alice",
        session_id=first,
        config=GetSessionConfig(num_recent_events=1),
    )
    assert window is not None and window.events == session.events[-1:]


def test_runner_example_runs_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'adk.db'}"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "adk_runner.py")],
        env={**os.environ, "AGENT_SESSION_STORE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert " echo: turn 3: BYE" in lines
    assert "stored: 6 events, state {'turns': 3, 'user:messages': 3}" in lines


@pytest.mark.slow
async def test_benchmark_reports_every_operation(tmp_path: Path, redis_url: str) -> None:
    """benchmarks/adk.py still runs (quick, SQLite); no timing is asserted."""
    from benchmarks import adk as bench

    table = await bench.run(["sqlite"], None, redis_url, tmp_path, quick=True)
    rows = [line.split("|")[2].strip() for line in table.splitlines()[2:]]
    assert rows == ["create", "get_0", "get_100", "get_100_recent10", "append", "list"]
    assert "n/a" not in table


def test_readme_adk_block_runs(tmp_path: Path, redis_url: str) -> None:
    from tests.test_readme import readme_block

    code = readme_block("Google ADK")
    code = code.replace(
        "postgresql+asyncpg://app@db/app", f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    )
    code = code.replace("redis://localhost:6379/0", redis_url)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["greeter hello, alice", "2 events stored"]


# -- re-delivered events (issue 19) ----------------------------------------------------------


async def test_a_redelivered_event_is_kept_once_with_its_state_delta_applied_once(
    service: SessionStoreService,
) -> None:
    session = await service.create_session(app_name=APP, user_id="u1")
    first = delta(n=1, **{"user:seen": 1})
    await service.append_event(session, first)
    await service.append_event(session, first.model_copy(deep=True))  # the same delivery again
    got = await fetch(service, session)
    assert [e.id for e in got.events] == [first.id]
    # A later event, then the first one re-delivered on a fresh copy: its delta is not applied
    # over the later one's.
    await service.append_event(got, delta(n=2))
    fresh = await fetch(service, session)
    await service.append_event(fresh, first.model_copy(deep=True))
    final = await fetch(service, session)
    assert len(final.events) == 2 and final.state["n"] == 2
    assert await service.get_user_state(app_name=APP, user_id="u1") == {"seen": 1}


async def test_a_redelivered_event_on_a_copy_without_our_marker_is_kept_once(
    service: SessionStoreService,
) -> None:
    session = await service.create_session(app_name=APP, user_id="u1")
    event = said("hello")
    await service.append_event(session, event)
    by_hand = Session(
        id=session.id, app_name=APP, user_id="u1", state={}, events=[event.model_copy(deep=True)]
    )
    await service.append_event(by_hand, event.model_copy(deep=True))
    assert [e.id for e in (await fetch(service, session)).events] == [event.id]
