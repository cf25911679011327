"""Pins the public namespace, so the API cannot drift by accident."""

from __future__ import annotations

import agent_sessions


def test_public_names_are_pinned() -> None:
    assert agent_sessions.__all__ == sorted(agent_sessions.__all__)
    assert set(agent_sessions.__all__) >= {
        "AgentSession",
        "AgentSessionsError",
        "ConcurrentUpdateError",
        "InvalidStateTransitionError",
        "SchemaOutOfDateError",
        "SessionCheckpoint",
        "SessionNotFoundError",
        "SessionPage",
        "SessionRepository",
        "SessionState",
        "SessionValidationError",
        "migrations",
        "read_through",
    }
    for name in agent_sessions.__all__:
        assert hasattr(agent_sessions, name), name


def test_errors_share_one_root() -> None:
    from agent_sessions import errors

    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, agent_sessions.AgentSessionsError), name
    assert issubclass(agent_sessions.SessionValidationError, ValueError)


def test_migrations_api() -> None:
    from agent_sessions import migrations

    for name in ("upgrade", "downgrade", "current", "check", "head"):
        assert callable(getattr(migrations, name))
