"""Domain models: what callers read and write. They know nothing of SQLAlchemy or Redis."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from agent_session_store._validation import check_json_object, check_text
from agent_session_store.errors import InvalidStateTransitionError, SessionValidationError


class SessionState(enum.StrEnum):
    """Lifecycle state of a session.

    Allowed transitions: ACTIVE <-> PAUSED; ACTIVE or PAUSED -> COMPLETED or FAILED;
    any state but DELETED -> DELETED (through ``SessionRepository.delete_session``).
    """

    # COMPLETED and FAILED are finished: the session's context and checkpoints are final (the
    # write that completes or fails it may still carry them), its metadata stays writable. A
    # state is taken by its name or value in any case: SessionState("ACTIVE").
    # (Said here, not in the docstring: the docstrings of the models and of this enum are part
    # of AgentSession's JSON schema, whose fingerprint every cached entry carries. Changing one
    # makes every process of the new release discard the entries of the old one, and the
    # reverse, during a rolling deploy; tests/test_existing_data.py pins it.)

    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"

    @classmethod
    def _missing_(cls, value: object) -> SessionState | None:
        """A state's name or value in any case: ``SessionState("ACTIVE") is ACTIVE``, so every
        place that takes a state (filters, models, the CLI) takes ``"Active"`` too."""
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.ACTIVE: frozenset(
        {SessionState.PAUSED, SessionState.COMPLETED, SessionState.FAILED, SessionState.DELETED}
    ),
    SessionState.PAUSED: frozenset(
        {SessionState.ACTIVE, SessionState.COMPLETED, SessionState.FAILED, SessionState.DELETED}
    ),
    SessionState.COMPLETED: frozenset({SessionState.DELETED}),
    SessionState.FAILED: frozenset({SessionState.DELETED}),
    SessionState.DELETED: frozenset(),
}


def allowed_sources(target: SessionState) -> frozenset[SessionState]:
    """States from which a session may be written with state ``target`` (staying put included)."""
    sources = {state for state, targets in _TRANSITIONS.items() if target in targets}
    if target is not SessionState.DELETED:
        sources.add(target)
    return frozenset(sources)


def utcnow() -> datetime:
    """The current time, UTC-aware."""
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware (e.g. datetime.now(UTC))")
    return value.astimezone(UTC)


def _session_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"session_id {value!r} is not a UUID") from None


def _new_session_id() -> str:
    return str(uuid.uuid4())


def _json_object(what: str) -> AfterValidator:
    return AfterValidator(lambda value: check_json_object(value, what))


UtcDateTime = Annotated[datetime, AfterValidator(_utc)]
AgentType = Annotated[
    str, Field(min_length=1, max_length=128), AfterValidator(lambda v: check_text(v, "agent_type"))
]
UserId = Annotated[str, Field(max_length=256), AfterValidator(lambda v: check_text(v, "user_id"))]
CheckpointName = Annotated[
    str, Field(min_length=1, max_length=128), AfterValidator(lambda v: check_text(v, "name"))
]


def _session_key(value: str) -> str:
    check_text(value, "key")
    if not value.isprintable():
        raise ValueError(f"key {value!r} holds a non-printable character; use printable text")
    return value


SessionKey = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_session_key)]
Context = Annotated[dict[str, Any], _json_object("context")]
Metadata = Annotated[dict[str, Any], _json_object("metadata")]
CheckpointData = Annotated[dict[str, Any], _json_object("data")]


def validation_error(exc: ValidationError, what: str) -> SessionValidationError:
    """Turn pydantic's error into ours, keeping each problem's location and message."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or what}: {err['msg']}" for err in exc.errors()
    )
    return SessionValidationError(f"invalid {what}: {problems}")


class SessionCheckpoint(BaseModel):
    """A named snapshot in a session's history; ``seq`` is set once it is stored."""

    model_config = ConfigDict(extra="forbid")

    name: CheckpointName
    data: CheckpointData = Field(default_factory=dict)
    timestamp: UtcDateTime = Field(default_factory=utcnow)
    seq: int | None = Field(default=None, ge=1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict`` reads it back unchanged."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build a checkpoint from ``to_dict()`` output (or an older manager's ``{name, data,
        timestamp}``, as :meth:`AgentSession.from_dict` accepts it).

        Raises:
            SessionValidationError: the dict does not describe a valid checkpoint.
        """
        try:
            return cls.model_validate(_from_older_dict(data, session=False))
        except ValidationError as exc:
            raise validation_error(exc, "checkpoint") from exc


def _new_checkpoint(name: str, data: dict[str, Any] | None) -> SessionCheckpoint:
    try:
        return SessionCheckpoint(name=name, data={} if data is None else data)
    except ValidationError as exc:
        raise validation_error(exc, "checkpoint") from exc


class AgentSession(BaseModel):
    """One agent's session: who runs it, its state, context and recent checkpoints.

    ``checkpoints`` holds the most recent stored checkpoints (oldest first) plus any added
    with :meth:`checkpoint` since the session was read (those have ``seq=None`` until
    ``SessionRepository.update_session`` stores them). ``checkpoint_count`` counts the
    stored ones. ``version`` increases with every stored change except heartbeats. ``key`` is
    the caller's own name for the session, fixed at creation (``None`` when none was given).
    ``expires_at`` is when the session stops existing for every read (``None``: never).

    Built directly, without ``session_id``, it mints a random UUID like the hand-written
    managers it replaces; such a session exists in the store only once created there
    (``create_session``): ``update_session`` refuses it with ``SessionNotFoundError``.

    Example::

        session = await repo.get_session(session_id)
        session.checkpoint("tool_called", {"tool": "search"})
        session.context["step"] = 3
        session = await repo.update_session(session)
    """

    model_config = ConfigDict(extra="forbid")

    session_id: Annotated[str, AfterValidator(_session_id)] = Field(default_factory=_new_session_id)
    agent_type: AgentType
    user_id: UserId = ""
    state: SessionState = SessionState.ACTIVE
    context: Context = Field(default_factory=dict)
    metadata: Metadata = Field(default_factory=dict)
    checkpoints: list[SessionCheckpoint] = Field(default_factory=list)
    checkpoint_count: int = Field(default=0, ge=0)
    created_at: UtcDateTime = Field(default_factory=utcnow)
    updated_at: UtcDateTime = Field(default_factory=utcnow)
    last_heartbeat: UtcDateTime = Field(default_factory=utcnow)
    version: int = Field(default=1, ge=1)
    key: SessionKey | None = None
    expires_at: UtcDateTime | None = None

    @property
    def pending_checkpoints(self) -> list[SessionCheckpoint]:
        """Checkpoints added in memory and not stored yet."""
        return [cp for cp in self.checkpoints if cp.seq is None]

    def checkpoint(self, name: str, data: dict[str, Any] | None = None) -> SessionCheckpoint:
        """Append a checkpoint in memory; ``update_session`` stores it.

        Raises:
            SessionValidationError: empty or over-long name, or data that is not a JSON object.
        """
        cp = _new_checkpoint(name, data)
        self.checkpoints.append(cp)
        return cp

    def heartbeat(self) -> None:
        """Mark the session alive now (also done by every ``update_session``)."""
        self.last_heartbeat = utcnow()

    def pause(self) -> None:
        """ACTIVE -> PAUSED."""
        self._move_to(SessionState.PAUSED)

    def resume(self) -> None:
        """PAUSED -> ACTIVE."""
        self._move_to(SessionState.ACTIVE)

    def complete(self) -> None:
        """ACTIVE or PAUSED -> COMPLETED."""
        self._move_to(SessionState.COMPLETED)

    def fail(self, reason: str) -> None:
        """ACTIVE or PAUSED -> FAILED, keeping ``reason`` in ``context['failure_reason']``."""
        self._check_move(SessionState.FAILED)
        cp = _new_checkpoint("session_failed", {"reason": reason})
        self.state = SessionState.FAILED
        self.context["failure_reason"] = reason
        self.checkpoints.append(cp)

    def _check_move(self, target: SessionState) -> None:
        if target not in _TRANSITIONS[self.state]:
            raise InvalidStateTransitionError(self.session_id, self.state.value, target.value)

    def _move_to(self, target: SessionState) -> None:
        self._check_move(target)
        self.state = target

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_dict`` reads it back unchanged."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build a session from ``to_dict()`` output, or from an older session manager's dict.

        Older dicts are accepted as they were commonly written: ``id`` for ``session_id``,
        no ``version`` or ``checkpoint_count``, checkpoints without ``seq`` (they come in as
        not stored yet), ``None`` for an empty ``user_id``/``context``/``metadata``/``data`` or
        an unknown timestamp, timestamps without a time zone (taken as UTC) and states in
        capitals. ``to_dict()`` output is read back unchanged.

        Raises:
            SessionValidationError: the dict does not describe a valid session.
        """
        try:
            return cls.model_validate(_from_older_dict(data))
        except ValidationError as exc:
            raise validation_error(exc, "session") from exc


_EMPTY_IF_NONE = {"user_id": "", "context": {}, "metadata": {}, "data": {}}
_TIMESTAMPS = ("created_at", "updated_at", "last_heartbeat", "timestamp")


def _from_older_dict(data: Any, *, session: bool = True) -> Any:
    """``data`` with an older session manager's conventions turned into this model's."""
    if not isinstance(data, dict):
        return data  # pydantic explains
    out = dict(data)
    if session and "session_id" not in out and "id" in out:
        out["session_id"] = out.pop("id")
    for key, empty in _EMPTY_IF_NONE.items():
        if key in out and out[key] is None:
            out[key] = type(empty)()
    for key in _TIMESTAMPS:
        if key in out:
            if out[key] is None:
                del out[key]  # the model's default: now
            else:
                out[key] = _assume_utc(out[key])
    if isinstance(out.get("checkpoints"), list):
        out["checkpoints"] = [_from_older_dict(cp, session=False) for cp in out["checkpoints"]]
    return out


def _assume_utc(value: Any) -> Any:
    """A naive timestamp (``datetime.utcnow()`` and its ``isoformat()``) taken as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value  # pydantic explains
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class SessionPage(BaseModel):
    """One page of ``list_sessions``; pass ``next_cursor`` back to get the next one."""

    items: list[AgentSession]
    next_cursor: str | None = None


class SessionStats(BaseModel):
    """What ``SessionRepository.stats`` reports about the store."""

    by_state: dict[str, int]
    by_agent_type: dict[str, int]
    oldest_active_heartbeat: datetime | None
    checkpoints: int

    @property
    def sessions(self) -> int:
        """All sessions, soft-deleted ones included."""
        return sum(self.by_state.values())
