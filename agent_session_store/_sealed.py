"""Where the repository's values are encrypted and decrypted: one object, chosen once.

``SessionRepository`` holds a :class:`Fields`: :class:`Sealed` with ``encryption=...``, else
:class:`Plain`. Values are sealed just before a statement sends them and opened just after
the database or the cache hands them back, so the Redis copies (a dump of the session as
loaded) hold ciphertext only; opening makes new objects, never changing a loaded one (the
cache may still be serializing it).

The places a value is bound to (AEAD associated data, see ``encryption.place``):

==================  =====================================================================
value               bound to
==================  =====================================================================
session context     ``sessions``, ``context``, session id
checkpoint data     ``checkpoints``, ``data``, session id, seq
shared state        ``shared_state``, ``value``, agent type, scope, user id, top-level key
==================  =====================================================================

The stale sweep marks a failed session in SQL, without the keys: it adds
``"failure_reason": "heartbeat_timeout"`` beside the context's envelope. That one key, with that
one value, is accepted next to an envelope and merged into the decrypted context (it is readable
anyway: the session's state says FAILED); any other key beside an envelope is refused.
"""

from __future__ import annotations

from typing import Any

from agent_session_store.encryption import (
    MARK,
    FieldEncryption,
    envelope_kid,
    is_envelope,
    place,
    place_part,
)
from agent_session_store.errors import DecryptionError
from agent_session_store.models import AgentSession, SessionCheckpoint

_SWEEP_MARK = ("failure_reason", "heartbeat_timeout")


def context_place(sid: str) -> bytes:
    return place("sessions", "context", sid)


def checkpoint_place(sid: str, seq: int) -> bytes:
    return place("checkpoints", "data", sid, str(seq))


def _checkpoints_of(sid: str) -> bytes:
    # The places of a session's checkpoints share this prefix (see ``place``).
    return place("checkpoints", "data", sid)


def shared_place(scope: dict[str, Any], key: str) -> bytes:
    return place("shared_state", "value", scope["b_agent"], scope["b_scope"], scope["b_user"], key)


def shared_what(scope: dict[str, Any], key: str) -> str:
    kind = "app-wide" if scope["b_scope"] == "app" else "user"
    return f"shared state of agent type {scope['b_agent']!r} ({kind}) key {key!r}"


def _cp_what(seq: object) -> str:
    return f"checkpoint {seq} data"


class Fields:
    """How stored values are sealed and opened (see the module's docstring)."""

    on: bool = False

    def seal_context(self, sid: str, context: dict[str, Any]) -> Any:
        return context

    def seal_checkpoint(self, sid: str, seq: int, data: dict[str, Any]) -> Any:
        return data

    def seal_shared(self, scope: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        return changes

    def open_session(self, session: AgentSession) -> AgentSession:
        raise NotImplementedError

    def open_checkpoint(self, sid: str, cp: SessionCheckpoint) -> SessionCheckpoint:
        raise NotImplementedError

    def open_shared(self, scope: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class Plain(Fields):
    """No encryption: values go out as they are; an encrypted value read back is refused."""

    def open_session(self, session: AgentSession) -> AgentSession:
        if MARK in session.context:
            raise DecryptionError.no_encryption(
                "context", session.session_id, envelope_kid(session.context)
            )
        for cp in session.checkpoints:
            if MARK in cp.data:
                raise DecryptionError.no_encryption(
                    _cp_what(cp.seq), session.session_id, envelope_kid(cp.data)
                )
        return session

    def open_checkpoint(self, sid: str, cp: SessionCheckpoint) -> SessionCheckpoint:
        if MARK in cp.data:
            raise DecryptionError.no_encryption(_cp_what(cp.seq), sid, envelope_kid(cp.data))
        return cp

    def open_shared(self, scope: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        for key, value in state.items():
            if is_envelope(value):
                raise DecryptionError.no_encryption(
                    shared_what(scope, key), None, envelope_kid(value)
                )
        return state


class Sealed(Fields):
    """Encryption on: see the module's docstring."""

    on = True

    def __init__(self, encryption: FieldEncryption) -> None:
        self.encryption = encryption

    def seal_context(self, sid: str, context: dict[str, Any]) -> Any:
        return self.encryption.seal(context, context_place(sid))

    def seal_checkpoint(self, sid: str, seq: int, data: dict[str, Any]) -> Any:
        return self.encryption.seal(data, checkpoint_place(sid, seq))

    def seal_shared(self, scope: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        seal = self.encryption.seal
        return {key: seal(value, shared_place(scope, key)) for key, value in changes.items()}

    def open_context(self, sid: str, stored: Any) -> Any:
        swept = is_envelope(stored) and stored.get(_SWEEP_MARK[0]) == _SWEEP_MARK[1]
        if swept:
            stored = {k: v for k, v in stored.items() if k != _SWEEP_MARK[0]}
        context = self.encryption.open(stored, context_place(sid), "context", sid)
        if swept:
            if not isinstance(context, dict):
                raise DecryptionError.malformed("context", sid)
            context = {**context, _SWEEP_MARK[0]: _SWEEP_MARK[1]}
        return context

    def open_data(self, sid: str, seq: int, stored: Any) -> Any:
        return self.encryption.open(stored, checkpoint_place(sid, seq), _cp_what(seq), sid)

    def open_session(self, session: AgentSession) -> AgentSession:
        sid = session.session_id
        context = self.open_context(sid, session.context)
        prefix, opened = _checkpoints_of(sid), self.encryption.open
        checkpoints = [
            cp.model_copy(
                update={"data": opened(cp.data, prefix + place_part(str(cp.seq)),
                                       _cp_what(cp.seq), sid)}
            )
            for cp in session.checkpoints
        ]  # fmt: skip
        return session.model_copy(update={"context": context, "checkpoints": checkpoints})

    def open_checkpoint(self, sid: str, cp: SessionCheckpoint) -> SessionCheckpoint:
        assert cp.seq is not None  # a checkpoint read back from the database has its seq
        return cp.model_copy(update={"data": self.open_data(sid, cp.seq, cp.data)})

    def open_shared(self, scope: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        opened = self.encryption.open
        return {
            key: opened(value, shared_place(scope, key), shared_what(scope, key), None)
            for key, value in state.items()
        }


def fields_for(encryption: FieldEncryption | None) -> Fields:
    """The repository's :class:`Fields` for its ``encryption`` option."""
    if encryption is None:
        return Plain()
    if not isinstance(encryption, FieldEncryption):
        raise TypeError(f"encryption must be a FieldEncryption, got {type(encryption).__name__}")
    return Sealed(encryption)
