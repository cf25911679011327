"""Pins the public namespace, so the API cannot drift by accident."""

from __future__ import annotations

import agent_session_store


def test_public_names_are_pinned() -> None:
    # Changing this list is changing the public API: do it on purpose, with a changelog line.
    assert agent_session_store.__all__ == [
        "AgentSession",
        "AgentSessionStoreError",
        "CacheStats",
        "ConcurrentUpdateError",
        "DecryptionError",
        "ErasureReport",
        "InvalidStateTransitionError",
        "ModelCache",
        "RedisCache",
        "SchemaOutOfDateError",
        "SessionCheckpoint",
        "SessionExistsError",
        "SessionNotFoundError",
        "SessionPage",
        "SessionRepository",
        "SessionState",
        "SessionStats",
        "SessionValidationError",
        "StorageError",
        "StorageTimeoutError",
        "create_engine",
        "metadata",
        "migrations",
        "read_through",
    ]
    for name in agent_session_store.__all__:
        assert getattr(agent_session_store, name) is not None, name


def test_errors_share_one_root() -> None:
    from agent_session_store import errors

    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, agent_session_store.AgentSessionStoreError), name
    assert issubclass(agent_session_store.SessionValidationError, ValueError)


def test_migrations_api() -> None:
    from agent_session_store import migrations

    for name in ("upgrade", "downgrade", "current", "check", "head"):
        assert callable(getattr(migrations, name))


def test_encryption_module_is_public() -> None:
    from agent_session_store import encryption

    assert encryption.__all__ == ["ENV_ACTIVE", "ENV_KEYS", "FieldEncryption"]
    assert issubclass(agent_session_store.DecryptionError, agent_session_store.StorageError)
