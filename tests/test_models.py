"""The pydantic domain models on their own: transitions, round trips, validation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent_session_store import (
    AgentSession,
    InvalidStateTransitionError,
    SessionCheckpoint,
    SessionState,
    SessionValidationError,
)


def make() -> AgentSession:
    return AgentSession(session_id=str(uuid.uuid4()), agent_type="planner", user_id="u1")


def test_pause_resume_complete() -> None:
    session = make()
    session.pause()
    assert session.state is SessionState.PAUSED
    session.resume()
    assert session.state is SessionState.ACTIVE
    session.complete()
    assert session.state is SessionState.COMPLETED


@pytest.mark.parametrize(
    ("start", "move"),
    [
        (SessionState.COMPLETED, "resume"),
        (SessionState.COMPLETED, "pause"),
        (SessionState.FAILED, "resume"),
        (SessionState.FAILED, "complete"),
        (SessionState.DELETED, "resume"),
        (SessionState.DELETED, "pause"),
        (SessionState.ACTIVE, "resume"),
        (SessionState.PAUSED, "pause"),
    ],
)
def test_illegal_transition_raises_and_keeps_state(start: SessionState, move: str) -> None:
    session = make()
    session.state = start
    with pytest.raises(InvalidStateTransitionError, match=start.value):
        getattr(session, move)()
    assert session.state is start


def test_fail_records_reason_and_checkpoint() -> None:
    session = make()
    session.fail("tool crashed")
    assert session.state is SessionState.FAILED
    assert session.context["failure_reason"] == "tool crashed"
    assert session.checkpoints[-1].name == "session_failed"
    assert session.checkpoints[-1].data == {"reason": "tool crashed"}
    assert session.checkpoints[-1].seq is None


def test_fail_of_completed_session_changes_nothing() -> None:
    session = make()
    session.complete()
    with pytest.raises(InvalidStateTransitionError):
        session.fail("late")
    assert session.context == {} and session.checkpoints == []


def test_fail_with_unstorable_reason_changes_nothing() -> None:
    session = make()
    with pytest.raises(SessionValidationError):
        session.fail("bad\x00reason")
    assert session.state is SessionState.ACTIVE and session.context == {}


def test_checkpoint_appends_pending_checkpoint() -> None:
    session = make()
    cp = session.checkpoint("step", {"n": 1})
    assert session.pending_checkpoints == [cp]
    assert cp.seq is None and cp.timestamp.tzinfo is not None


@pytest.mark.parametrize(
    ("name", "data"),
    [("", None), ("x" * 129, None), ("ok", {"k": {1, 2}}), ("ok", {"k": float("nan")})],
)
def test_checkpoint_rejects_bad_input(name: str, data: dict[str, object] | None) -> None:
    session = make()
    with pytest.raises(SessionValidationError):
        session.checkpoint(name, data)
    assert session.checkpoints == []


def test_heartbeat_moves_last_heartbeat_forward() -> None:
    session = make()
    session.last_heartbeat = session.last_heartbeat - timedelta(hours=1)
    before = session.last_heartbeat
    session.heartbeat()
    assert session.last_heartbeat > before


def test_session_round_trips_losslessly_through_dict() -> None:
    session = make()
    session.context = {"nested": {"list": [1, 2.5, "x", None, True]}, "ünï": "çødé"}
    session.metadata = {"m": 1}
    session.checkpoint("a", {"b": [1]})
    session.checkpoints[0].seq = 4
    session.checkpoint_count = 4
    data = session.to_dict()
    again = AgentSession.from_dict(data)
    assert again == session
    assert again.to_dict() == data


def test_checkpoint_round_trips_through_dict() -> None:
    cp = SessionCheckpoint(name="n", data={"x": 1}, seq=3)
    assert SessionCheckpoint.from_dict(cp.to_dict()) == cp


def test_timestamps_are_normalized_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    when = datetime(2026, 1, 1, 12, tzinfo=plus_two)
    cp = SessionCheckpoint(name="n", timestamp=when)
    assert cp.timestamp == when and cp.timestamp.utcoffset() == timedelta(0)


def test_naive_timestamps_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        SessionCheckpoint(name="n", timestamp=datetime(2026, 1, 1))
    # from_dict reads older managers' dicts, whose utcnow() timestamps were UTC without saying
    # so (tests/test_legacy_model.py).
    cp = SessionCheckpoint.from_dict({"name": "n", "timestamp": "2026-01-01T00:00:00"})
    assert cp.timestamp == datetime(2026, 1, 1, tzinfo=UTC)


def test_from_dict_rejects_malformed_session() -> None:
    with pytest.raises(SessionValidationError, match="session_id"):
        AgentSession.from_dict({"session_id": "nope", "agent_type": "a"})
    with pytest.raises(SessionValidationError, match="agent_type"):
        AgentSession.from_dict({"session_id": str(uuid.uuid4()), "agent_type": ""})


def test_session_id_is_canonicalized() -> None:
    raw = uuid.uuid4()
    session = AgentSession(session_id=str(raw).upper(), agent_type="a")
    assert session.session_id == str(raw)


@pytest.mark.parametrize("state", list(SessionState))
def test_a_state_is_taken_by_its_name_or_value_in_any_case(state: SessionState) -> None:
    for spelling in (state.value, state.name, state.value.title(), state.value.upper()):
        assert SessionState(spelling) is state
        assert AgentSession(agent_type="planner", state=spelling).state is state  # type: ignore[arg-type]
        assert AgentSession.from_dict({"agent_type": "planner", "state": spelling}).state is state


@pytest.mark.parametrize("spelling", ["", "activ", "ACTIVE ", "zombie", 1])
def test_an_unknown_state_is_still_refused(spelling: object) -> None:
    with pytest.raises(ValueError, match="SessionState"):
        SessionState(spelling)
