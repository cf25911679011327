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
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
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
    # When the session stops existing for readers (``None``: never); purge_expired_sessions
    # removes its rows later.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

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
# purge_expired_sessions: expires_at <= now, over the (few) sessions that have an expiry.
_HAS_EXPIRY = text("expires_at IS NOT NULL")
Index(None, SessionRow.expires_at, postgresql_where=_HAS_EXPIRY, sqlite_where=_HAS_EXPIRY)
# The list filters, on PostgreSQL (SQLite scans for them: docs/operations.md): updated
# after/before; a key prefix as a range of the pattern operators (~>=~, ~<~), which compare
# bytes whatever the database's collation; metadata containment (@>).
Index("ix_agent_sessions_sessions_updated_at", SessionRow.updated_at).ddl_if(dialect="postgresql")
Index(
    "ix_agent_sessions_sessions_key_pattern",
    SessionRow.key,
    postgresql_ops={"key": "varchar_pattern_ops"},
    postgresql_where=text("key IS NOT NULL"),
).ddl_if(dialect="postgresql")
Index(
    "ix_agent_sessions_sessions_metadata",
    SessionRow.metadata_,
    postgresql_using="gin",
    postgresql_ops={"metadata": "jsonb_path_ops"},
).ddl_if(dialect="postgresql")


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
    # The caller's name for this append (a framework's event id): stored once per session.
    idempotency_key: Mapped[str | None] = mapped_column(String(256), nullable=True)

    # list_checkpoints(since=...): the checkpoints from a time on, without reading older ones.
    __table_args__ = (
        Index(None, "session_id", "created_at"),
        Index(
            "uq_agent_sessions_checkpoints_session_id_idempotency_key",
            "session_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
    )


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


# -- LangGraph checkpoints (agent_session_store.integrations.langgraph) -----------------------
# A LangGraph thread is a session; these tables hold what LangGraph stores per thread. Every row
# hangs off its session (ON DELETE CASCADE), so a hard delete or a purge removes it too.


class LangGraphThreadRow(Base):
    """A LangGraph thread: its id, global per agent type, and the session that is the thread.

    LangGraph reads a thread by its id alone (no user), so the id is unique per agent type
    across users; the session's own key (unique per user) cannot say that.
    """

    __tablename__ = "agent_sessions_lg_threads"

    agent_type: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The session's key (the thread id mapped onto the key rule), and the thread id as given.
    thread_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    thread_id: Mapped[str] = mapped_column(Text)
    session_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey(SessionRow.id, ondelete="CASCADE")
    )

    # A session is one thread at most; also the way from a session to its thread.
    __table_args__ = (Index("uq_agent_sessions_lg_threads_session_id", "session_id", unique=True),)


class LangGraphCheckpointRow(Base):
    """One LangGraph checkpoint, without its channel values (those are blobs, stored once).

    ``checkpoint`` is the serializer's bytes (``type`` names its format); ``metadata`` is JSON
    so that ``alist(filter=...)`` is a query; ``channel_versions`` says which blobs it needs.
    """

    __tablename__ = "agent_sessions_lg_checkpoints"

    session_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey(SessionRow.id, ondelete="CASCADE"), primary_key=True
    )
    checkpoint_ns: Mapped[str] = mapped_column(Text, primary_key=True)
    checkpoint_id: Mapped[str] = mapped_column(Text, primary_key=True)
    parent_checkpoint_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    type: Mapped[str] = mapped_column(String(32))
    checkpoint: Mapped[bytes] = mapped_column(LargeBinary)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType)
    # metadata["run_id"], for adelete_for_runs (NULL when the checkpoint has none).
    run_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    # {channel: version} as text: the blobs to read with the checkpoint, in the same statement.
    channel_versions: Mapped[dict[str, str]] = mapped_column(JsonType)

    __table_args__ = (Index(None, "run_id"),)


class LangGraphBlobRow(Base):
    """A channel's value at one version: stored once per (thread, namespace, channel, version).

    A list that grows (a conversation's messages) is stored as a *delta* when its serialized
    form starts with the bytes of an earlier version of the same channel: ``blob`` holds only
    the items added since ``base_version``, so a thread stores each message once rather than
    once per turn. ``item_count``, ``size`` and ``digest`` (SHA-256) describe the whole list at this
    version; ``delta_size`` counts the bytes held in deltas down to the nearest full copy
    (``base_version`` NULL), which is written again once the deltas outgrow it, so a read
    costs at most about twice the value's size.
    """

    __tablename__ = "agent_sessions_lg_blobs"

    session_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey(SessionRow.id, ondelete="CASCADE"), primary_key=True
    )
    checkpoint_ns: Mapped[str] = mapped_column(Text, primary_key=True)
    channel: Mapped[str] = mapped_column(Text, primary_key=True)
    version: Mapped[str] = mapped_column(Text, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    base_version: Mapped[str | None] = mapped_column(Text, nullable=True)
    item_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    delta_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    digest: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class LangGraphWriteRow(Base):
    """A pending write of a task, attached to the checkpoint it was made from."""

    __tablename__ = "agent_sessions_lg_writes"

    session_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey(SessionRow.id, ondelete="CASCADE"), primary_key=True
    )
    checkpoint_ns: Mapped[str] = mapped_column(Text, primary_key=True)
    checkpoint_id: Mapped[str] = mapped_column(Text, primary_key=True)
    task_id: Mapped[str] = mapped_column(Text, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    channel: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(32))
    blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    task_path: Mapped[str] = mapped_column(Text, server_default="")


sessions_table: Table = SessionRow.__table__  # type: ignore[assignment]
checkpoints_table: Table = CheckpointRow.__table__  # type: ignore[assignment]
shared_state_table: Table = SharedStateRow.__table__  # type: ignore[assignment]
lg_threads_table: Table = LangGraphThreadRow.__table__  # type: ignore[assignment]
lg_checkpoints_table: Table = LangGraphCheckpointRow.__table__  # type: ignore[assignment]
lg_blobs_table: Table = LangGraphBlobRow.__table__  # type: ignore[assignment]
lg_writes_table: Table = LangGraphWriteRow.__table__  # type: ignore[assignment]
POSTGRESQL_ONLY_INDEXES = frozenset(
    {
        "ix_agent_sessions_sessions_updated_at",
        "ix_agent_sessions_sessions_key_pattern",
        "ix_agent_sessions_sessions_metadata",
    }
)
"""The indexes created on PostgreSQL only (``ddl_if``): the list filters'."""
LANGGRAPH_TABLES = (lg_writes_table, lg_blobs_table, lg_checkpoints_table, lg_threads_table)
"""The LangGraph tables, children first (the order their rows are deleted in)."""
