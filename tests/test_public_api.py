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


def test_lifecycle_signatures_are_pinned() -> None:
    # Issue 19 fixed these names and parameters: callers depend on them.
    import inspect

    from agent_session_store import AgentSession, SessionRepository

    def params(name: str) -> str:
        return str(inspect.signature(getattr(SessionRepository, name))).split(" -> ")[0]

    assert params("get_or_create_session") == (
        "(self, agent_type: 'str', user_id: 'str' = '', *, key: 'str', "
        "context: 'dict[str, Any] | None' = None, metadata: 'dict[str, Any] | None' = None, "
        "expires_at: 'datetime | None' = None)"
    )
    assert params("modify_session") == (
        "(self, session_id: 'str', change: 'Change', *, user_id: 'str | None' = None, "
        "retries: 'int' = 5)"
    )
    assert params("purge_expired_sessions") == "(self, *, batch_size: 'int' = 500)"
    filters = (
        "key_prefix: 'str | None' = None, updated_after: 'datetime | None' = None, "
        "updated_before: 'datetime | None' = None, metadata: 'dict[str, Any] | None' = None"
    )
    assert params("count_sessions") == (
        "(self, *, agent_type: 'str | None' = None, user_id: 'str | None' = None, "
        f"state: 'SessionState | str | None' = None, {filters})"
    )
    assert params("list_sessions").endswith(f"cursor: 'str | None' = None, {filters})")
    assert "expires_at: 'datetime | None' = None" in params("create_session")
    assert "idempotency_key: 'str | None' = None" in params("add_checkpoint")
    assert "expires_at" in AgentSession.model_fields
