"""The exceptions raised by agent_session_store.

Every exception the library raises on purpose derives from one root::

    AgentSessionStoreError
    ├── SessionNotFoundError          the session does not exist (or is not yours, or is deleted)
    ├── SessionExistsError            a live session already has this key
    ├── ConcurrentUpdateError         someone else changed the session since you read it
    ├── InvalidStateTransitionError   e.g. resuming a completed session, or appending to it
    ├── SessionValidationError        bad input; also a ValueError; nothing was written
    ├── SchemaOutOfDateError          the database schema is behind this library's migrations
    └── StorageError                  the database failed (connection lost, server error)
        ├── StorageTimeoutError       no connection could be had in time (pool or pooler exhausted)
        └── DecryptionError           a stored value does not decrypt here (altered, moved, no
                                      key for it, or plaintext where ciphertext is required)

Programming errors (``TypeError``, ``AttributeError``, ...) are never wrapped.
"""

from __future__ import annotations


class AgentSessionStoreError(Exception):
    """Root of every error agent_session_store raises on purpose."""


class SessionNotFoundError(AgentSessionStoreError, LookupError):
    """The session does not exist, is soft-deleted, or belongs to another user."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(
            f"session {session_id!r} not found (unknown, deleted or not yours); "
            "check the id, or create a new session with create_session()"
        )


class SessionExistsError(AgentSessionStoreError):
    """A live session of this agent type and user already has the key; nothing was written."""

    def __init__(self, agent_type: str, user_id: str, key: str) -> None:
        self.agent_type = agent_type
        self.user_id = user_id
        self.key = key
        super().__init__(
            f"a session with key {key!r} already exists for agent type {agent_type!r} and user "
            f"{user_id!r}; nothing was written: read it with get_session_by_key(), or delete it "
            "first to reuse the key"
        )


class ConcurrentUpdateError(AgentSessionStoreError):
    """The stored session changed since this copy was read; nothing was written."""

    def __init__(self, session_id: str, expected_version: int, actual_version: int) -> None:
        self.session_id = session_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"session {session_id!r} was changed by someone else (your copy has version "
            f"{expected_version}, the stored one {actual_version}); nothing was written: "
            "read it again with get_session(), reapply your change and retry"
        )


class InvalidStateTransitionError(AgentSessionStoreError):
    """The requested state change is not allowed from the current state, or the session is
    finished (COMPLETED or FAILED) and the write would change its context or checkpoints.

    Attributes:
        session_id: the session.
        current: its stored state.
        target: the state the write asked for (``current`` for a write that moves nothing,
            such as ``add_checkpoint``).
    """

    def __init__(
        self, session_id: str, current: str, target: str, *, change: str | None = None
    ) -> None:
        self.session_id = session_id
        self.current = current
        self.target = target
        if change is None:
            message = (
                f"session {session_id!r} cannot go from {current!r} to {target!r}; "
                "see SessionState for the allowed transitions"
            )
        else:
            message = (
                f"session {session_id!r} is {current}: its context and checkpoints are final, "
                f"so it cannot {change}; nothing was written (its metadata can still change, "
                "and it can be deleted)"
            )
        super().__init__(message)


class SessionValidationError(AgentSessionStoreError, ValueError):
    """Input was rejected before anything was written."""


class SchemaOutOfDateError(AgentSessionStoreError):
    """The database schema is not at the revision this library needs."""


class StorageError(AgentSessionStoreError):
    """The database failed to carry out the operation.

    The operation's transaction was rolled back, except when the connection was lost during the
    commit itself: then its outcome is unknown, as with any database client. ``heartbeat``,
    ``update_session`` (compare-and-set) and ``delete_session`` are safe to retry;
    re-read before retrying ``create_session`` or ``add_checkpoint``.
    """


class StorageTimeoutError(StorageError):
    """No database connection became free in time; nothing was done.

    Either the engine's own pool was exhausted, or a connection pooler such as PgBouncer had
    no server connection free within its wait limit (``query_wait_timeout``).
    """


class DecryptionError(StorageError):
    """A stored value cannot be given back: nothing of it, nor of any other row, is returned.

    Raised when encryption is on (``SessionRepository(encryption=...)``) and a value is altered,
    cut short, copied from another row or field, made under a key that is not configured, or
    stored in plaintext (unless ``allow_plaintext``); and when encryption is off and a value is
    encrypted. The message names the session, the field and the key id, never a key or any
    plaintext.

    Attributes:
        session_id: the session the value belongs to (``None`` for shared state).
        field: which value, e.g. ``"context"`` or ``"checkpoint 3 data"``.
        key_id: the key id the stored value names (``None`` for a plaintext value).
    """

    def __init__(
        self, message: str, *, session_id: str | None, field: str, key_id: str | None
    ) -> None:
        self.session_id = session_id
        self.field = field
        self.key_id = key_id
        super().__init__(message)

    @staticmethod
    def _where(field: str, session_id: str | None) -> str:
        return field if session_id is None else f"session {session_id!r}: {field}"

    @classmethod
    def failed(cls, field: str, session_id: str | None, key_id: str) -> DecryptionError:
        """The value does not decrypt for this place (altered, truncated or moved)."""
        return cls(
            f"{cls._where(field, session_id)} does not decrypt under key {key_id!r}: it was "
            "altered, cut short or copied from another row or field; nothing was returned. "
            "Restore it from a backup, or delete the session",
            session_id=session_id, field=field, key_id=key_id,
        )  # fmt: skip

    @classmethod
    def unknown_key(cls, field: str, session_id: str | None, key_id: str) -> DecryptionError:
        """The value names a key this process does not have."""
        return cls(
            f"{cls._where(field, session_id)} is encrypted under key {key_id!r}, which is not "
            "configured; nothing was returned. Add that key to the keys (old keys decrypt, only "
            "the active one encrypts), or re-encrypt with `agent-session-store rotate-keys`",
            session_id=session_id, field=field, key_id=key_id,
        )  # fmt: skip

    @classmethod
    def malformed(cls, field: str, session_id: str | None) -> DecryptionError:
        """The value is shaped like an envelope but is not a valid one."""
        return cls(
            f"{cls._where(field, session_id)} is a malformed encrypted value; nothing was "
            "returned. Restore it from a backup, or delete the session",
            session_id=session_id, field=field, key_id=None,
        )  # fmt: skip

    @classmethod
    def plaintext(cls, field: str, session_id: str | None) -> DecryptionError:
        """A plaintext value where encryption requires ciphertext."""
        return cls(
            f"{cls._where(field, session_id)} is stored in plaintext, but encryption is on; "
            "nothing was returned. If it was written before encryption was turned on, use "
            "FieldEncryption(..., allow_plaintext=True) and run `agent-session-store "
            "rotate-keys`; otherwise someone wrote it to the database behind the repository",
            session_id=session_id, field=field, key_id=None,
        )  # fmt: skip

    @classmethod
    def no_encryption(cls, field: str, session_id: str | None, key_id: str) -> DecryptionError:
        """An encrypted value read by a repository with no encryption configured."""
        return cls(
            f"{cls._where(field, session_id)} is encrypted (key {key_id!r}), but this "
            "repository has no encryption configured; nothing was returned. Pass "
            "SessionRepository(..., encryption=FieldEncryption(...)) with that key",
            session_id=session_id, field=field, key_id=key_id,
        )  # fmt: skip
