"""How the repository reads rows: the columns it selects and the models it builds from them.

Rows come from our own database, already checked on the way in, so models are built with
``model_construct`` (no second validation).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from agent_session_store.models import AgentSession, SessionCheckpoint, SessionState
from agent_session_store.tables import checkpoints_table, sessions_table

S = sessions_table.c
C = checkpoints_table.c
SESSION_COLUMNS = (
    S.id, S.agent_type, S.user_id, S.state, S.context, S.metadata, S.checkpoint_count,
    S.version, S.created_at, S.updated_at, S.last_heartbeat, S.key, S.expires_at,
)  # fmt: skip
CHECKPOINT_COLUMNS = (C.seq, C.name, C.data, C.created_at.label("cp_created_at"))


def expired(session: AgentSession, now: datetime) -> bool:
    """Whether ``session`` has expired at ``now``: the rule the statements apply, for a copy
    that did not come from one of them (a cached copy)."""
    return session.expires_at is not None and session.expires_at <= now


def checkpoints_from_json(items: list[dict[str, Any]] | None) -> list[SessionCheckpoint]:
    """Checkpoints from the JSON array the load statement aggregates, oldest first."""
    return [
        SessionCheckpoint.model_construct(
            name=item["name"], data=item["data"], timestamp=_utc(item["ts"]), seq=item["seq"]
        )
        for item in sorted(items or (), key=lambda item: item["seq"])  # SQLite: no ORDER BY
    ]


def _utc(text: str) -> datetime:
    # PostgreSQL writes ISO 8601 with the session's offset; SQLite holds naive UTC.
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def checkpoint_from_row(row: Any) -> SessionCheckpoint:
    """A checkpoint from a row holding ``CHECKPOINT_COLUMNS``."""
    return SessionCheckpoint.model_construct(
        name=row.name, data=row.data, timestamp=row.cp_created_at, seq=row.seq
    )


def session_from_row(row: Any, checkpoints: list[SessionCheckpoint]) -> AgentSession:
    """A session from a row holding ``SESSION_COLUMNS``."""
    return AgentSession.model_construct(
        session_id=str(row.id),
        agent_type=row.agent_type,
        user_id=row.user_id,
        state=SessionState(row.state),
        context=row.context,
        metadata=row.metadata,
        checkpoints=checkpoints,
        checkpoint_count=row.checkpoint_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_heartbeat=row.last_heartbeat,
        version=row.version,
        key=row.key,
        expires_at=row.expires_at,
    )


def checkpoint_values(
    sid: uuid.UUID, cp: SessionCheckpoint, idempotency_key: str | None = None
) -> dict[str, Any]:
    """The checkpoints table's values for storing ``cp`` in session ``sid``."""
    return {"session_id": sid, "seq": cp.seq, "name": cp.name, "data": cp.data,
            "created_at": cp.timestamp, "idempotency_key": idempotency_key}  # fmt: skip
