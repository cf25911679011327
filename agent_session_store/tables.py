"""Declarative ORM tables: the single source of the schema. They know nothing of pydantic.

The tables live on their own ``MetaData`` (:data:`metadata`), so a host application can
include them in or exclude them from its own Alembic autogenerate.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    Uuid,
    and_,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TABLE_PREFIX = "agent_sessions_"
VERSION_TABLE = "agent_sessions_alembic_version"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always hands back UTC-aware values, SQLite included."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; agent_session_store stores UTC-aware datetimes")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    metadata = metadata


STATES = ("active", "paused", "completed", "failed", "deleted")


class SessionRow(Base):
    """One agent session. ``version`` is the compare-and-set counter."""

    __tablename__ = "agent_sessions_sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    agent_type: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(256), server_default="")
    state: Mapped[str] = mapped_column(String(16))
    context: Mapped[dict[str, Any]] = mapped_column(JsonType)
    # "metadata" is reserved on declarative classes; the column keeps the name.
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType)
    checkpoint_count: Mapped[int] = mapped_column(Integer, server_default="0")
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_heartbeat: Mapped[datetime] = mapped_column(UtcDateTime())
    # The caller's own name for the session (``None`` when it chose none).
    key: Mapped[str | None] = mapped_column(String(128), nullable=True)

    __table_args__ = (
        CheckConstraint(
            "state IN ('active', 'paused', 'completed', 'failed', 'deleted')", name="state"
        ),
        # Listing by user / by agent type / overall, newest first, keyset on (created_at, id).
        Index(None, "user_id", "created_at", "id"),
        Index(None, "agent_type", "created_at", "id"),
        Index(None, "created_at", "id"),
        # The stale sweep: state = 'active' AND last_heartbeat < cutoff.
        Index(None, "state", "last_heartbeat"),
    )


# A key names one live session per (agent_type, user_id); a deleted session frees its key.
# Partial, so that deleted sessions and the (many) sessions without a key are not in it.
_LIVE_KEYED = and_(text("key IS NOT NULL"), text("state <> 'deleted'"))
Index(
    "uq_agent_sessions_sessions_agent_type_user_id_key",
    SessionRow.agent_type,
    SessionRow.user_id,
    SessionRow.key,
    unique=True,
    postgresql_where=_LIVE_KEYED,
    sqlite_where=_LIVE_KEYED,
)


class CheckpointRow(Base):
    """One checkpoint; append-only, ``seq`` runs 1, 2, 3... per session."""

    __tablename__ = "agent_sessions_checkpoints"

    session_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey(SessionRow.id, ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(128))
    data: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())

    # list_checkpoints(since=...): the checkpoints from a time on, without reading older ones.
    __table_args__ = (Index(None, "session_id", "created_at"),)


SCOPES = ("app", "user")


class SharedStateRow(Base):
    """State shared by the sessions of one agent type: app-wide, or per user of it.

    ``scope`` keeps the app-wide document (``"app"``, ``user_id`` empty) apart from the
    document of the user whose id is ``""`` (``"user"``).
    """

    __tablename__ = "agent_sessions_shared_state"

    agent_type: Mapped[str] = mapped_column(String(128), primary_key=True)
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JsonType)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (
        CheckConstraint("scope IN ('app', 'user')", name="scope"),
        CheckConstraint("scope = 'user' OR user_id = ''", name="app_scope_has_no_user"),
    )


sessions_table: Table = SessionRow.__table__  # type: ignore[assignment]
checkpoints_table: Table = CheckpointRow.__table__  # type: ignore[assignment]
shared_state_table: Table = SharedStateRow.__table__  # type: ignore[assignment]
