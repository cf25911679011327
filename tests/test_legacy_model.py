"""Code written for the hand-written session manager keeps working with the new model (issue 13).

The old manager's ``AgentSession(agent_type=..., user_id=..., context=..., metadata=...)``
minted its own ``session_id``; its ``to_dict()`` wrote session_id, agent_type, user_id, state,
context, metadata, checkpoints (``{name, data, timestamp}``), created_at, updated_at and
last_heartbeat, with ``datetime.utcnow()`` timestamps; its table's primary key was ``id``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from agent_session_store import (
    AgentSession,
    SessionCheckpoint,
    SessionNotFoundError,
    SessionRepository,
    SessionState,
    SessionValidationError,
)

OLD_ID = "5b0ea6f2-9c4e-4b8a-8a39-2f1d5c6e7a10"


def old_manager_dict(**changes: Any) -> dict[str, Any]:
    """What the old manager's ``to_dict()`` wrote into its Valkey cache."""
    data: dict[str, Any] = {
        "session_id": OLD_ID,
        "agent_type": "research-agent",
        "user_id": "alice",
        "state": "active",
        "context": {"goal": "Q3"},
        "metadata": {"source": "api"},
        "checkpoints": [
            {"name": "plan", "data": {"steps": 2}, "timestamp": "2024-05-01T10:00:00"},
            {"name": "search", "data": {"hits": 12}, "timestamp": "2024-05-01T10:05:00.123456"},
        ],
        "created_at": "2024-05-01T09:59:00",
        "updated_at": "2024-05-01T10:05:00.123456",
        "last_heartbeat": "2024-05-01T10:05:00.123456",
    }
    data.update(changes)
    return data


def test_a_session_built_without_an_id_mints_a_uuid4_string() -> None:
    first = AgentSession(agent_type="x")
    second = AgentSession(agent_type="x", user_id="u", context={"a": 1}, metadata={"m": True})
    assert isinstance(first.session_id, str)
    assert uuid.UUID(first.session_id).version == 4
    assert str(uuid.UUID(first.session_id)) == first.session_id
    assert first.session_id != second.session_id
    assert (second.state, second.version, second.checkpoints) == (SessionState.ACTIVE, 1, [])


def test_an_explicit_id_is_still_checked() -> None:
    with pytest.raises(ValueError, match="is not a UUID"):
        AgentSession(session_id="not-a-uuid", agent_type="x")


def test_from_dict_reads_the_old_managers_dict() -> None:
    session = AgentSession.from_dict(old_manager_dict())
    assert session.session_id == OLD_ID
    assert (session.agent_type, session.user_id) == ("research-agent", "alice")
    assert (session.context, session.metadata) == ({"goal": "Q3"}, {"source": "api"})
    assert session.version == 1  # no version in the old dicts
    assert [cp.name for cp in session.checkpoints] == ["plan", "search"]
    assert [cp.seq for cp in session.checkpoints] == [None, None]  # never stored here
    assert session.pending_checkpoints == session.checkpoints
    # utcnow() timestamps had no time zone: they were UTC.
    assert session.created_at == datetime(2024, 5, 1, 9, 59, tzinfo=UTC)
    assert session.checkpoints[1].timestamp == datetime(2024, 5, 1, 10, 5, 0, 123456, tzinfo=UTC)
    assert session.last_heartbeat.tzinfo is UTC


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"session_id": None}, None),  # replaced below by the row's "id"
        ({"state": "PAUSED"}, lambda s: s.state is SessionState.PAUSED),
        ({"user_id": None}, lambda s: s.user_id == ""),
        ({"context": None, "metadata": None}, lambda s: (s.context, s.metadata) == ({}, {})),
        ({"last_heartbeat": None}, lambda s: s.last_heartbeat.tzinfo is UTC),
        (
            {"checkpoints": [{"name": "x", "data": None, "timestamp": "2024-05-01T10:00:00"}]},
            lambda s: s.checkpoints[0].data == {},
        ),
        (
            {"created_at": datetime(2024, 5, 1, 9, 59)},  # a naive datetime object, not a string
            lambda s: s.created_at == datetime(2024, 5, 1, 9, 59, tzinfo=UTC),
        ),
    ],
    ids=["row-id", "capital-state", "null-user", "null-json", "null-heartbeat", "null-data",
         "naive-datetime"],
)  # fmt: skip
def test_from_dict_accepts_the_old_conventions(changes: dict[str, Any], check: Any) -> None:
    data = old_manager_dict(**changes)
    if check is None:  # a dict built from a row of the old table: "id", not "session_id"
        del data["session_id"]
        data["id"] = OLD_ID
        check = lambda s: s.session_id == OLD_ID  # noqa: E731
    assert check(AgentSession.from_dict(data))


def test_an_old_checkpoint_dict_reads_as_a_checkpoint() -> None:
    cp = SessionCheckpoint.from_dict({"name": "plan", "data": None, "timestamp": "2024-05-01"})
    assert (cp.data, cp.seq, cp.timestamp) == ({}, None, datetime(2024, 5, 1, tzinfo=UTC))


def test_new_dicts_still_round_trip_unchanged() -> None:
    session = AgentSession(agent_type="x", user_id="u", context={"id": 1})
    session.checkpoint("a", {"b": 1})
    assert AgentSession.from_dict(session.to_dict()) == session
    assert AgentSession.from_dict(session.to_dict()).to_dict() == session.to_dict()


@pytest.mark.parametrize(
    "changes",
    [{"state": "running"}, {"checkpoints": [{"data": {}}]}, {"context": [1, 2]}, {"extra": 1}],
    ids=["unknown-state", "nameless-checkpoint", "context-not-object", "unknown-field"],
)
def test_malformed_old_dicts_are_refused_clearly(changes: dict[str, Any]) -> None:
    with pytest.raises(SessionValidationError, match="invalid session"):
        AgentSession.from_dict(old_manager_dict(**changes))


async def test_a_minted_session_is_not_in_the_store_until_created(repo: SessionRepository) -> None:
    minted = AgentSession(agent_type="research-agent", user_id="alice")
    minted.checkpoint("plan", {"steps": 1})
    assert await repo.get_session(minted.session_id) is None
    with pytest.raises(SessionNotFoundError):
        await repo.update_session(minted)
    assert await repo.get_session(minted.session_id) is None  # nothing half-written
    with pytest.raises(SessionNotFoundError):
        await repo.add_checkpoint(minted.session_id, "x")
    assert await repo.heartbeat(minted.session_id) is False
    assert await repo.delete_session(minted.session_id) is False


async def test_an_old_cached_dict_is_not_in_the_store_either(repo: SessionRepository) -> None:
    old = AgentSession.from_dict(old_manager_dict(session_id=str(uuid.uuid4())))
    with pytest.raises(SessionNotFoundError):
        await repo.update_session(old)
    assert await repo.get_session(old.session_id) is None
