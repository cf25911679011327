"""Session expiry, idempotent appends and the indexes of the list filters.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Never imports the live models: this file describes the schema as it was at this revision.
One transaction (no CONCURRENTLY): two nullable columns, added without a default, cost no
table rewrite; the new indexes are built under the transaction's lock. They are created with
IF NOT EXISTS, so a deploy of a large table may build them ahead of time with ``CREATE INDEX
CONCURRENTLY`` under the same names and definitions (see docs/operations.md). Existing
sessions never expire (``expires_at`` NULL) and existing checkpoints have no idempotency key
(NULL), so the partial unique index holds from the start.

- ``agent_sessions_sessions.expires_at``: an expired session is absent to every read; an
  index over the sessions that have one serves ``purge_expired_sessions``.
- ``agent_sessions_checkpoints.idempotency_key``: unique per session where set.
- PostgreSQL only, the list filters' indexes: ``updated_at``; ``key`` with
  ``varchar_pattern_ops`` (a key prefix as a range of ``~>=~``/``~<~``); ``metadata`` with a
  GIN ``jsonb_path_ops`` index (``@>``). SQLite scans for those (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SESSIONS = "agent_sessions_sessions"
CHECKPOINTS = "agent_sessions_checkpoints"
HAS_EXPIRY = sa.text("expires_at IS NOT NULL")
HAS_IDEMPOTENCY_KEY = sa.text("idempotency_key IS NOT NULL")
HAS_KEY = sa.text("key IS NOT NULL")


def upgrade() -> None:
    # In place (no copy of the table on SQLite: with foreign keys on, dropping the old copy
    # would cascade to every checkpoint); SQLite adds a nullable column in place.
    with op.batch_alter_table(SESSIONS, recreate="never") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table(CHECKPOINTS, recreate="never") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(256), nullable=True))
    op.create_index(
        "ix_agent_sessions_sessions_expires_at",
        SESSIONS,
        ["expires_at"],
        postgresql_where=HAS_EXPIRY,
        sqlite_where=HAS_EXPIRY,
        if_not_exists=True,
    )
    op.create_index(
        "uq_agent_sessions_checkpoints_session_id_idempotency_key",
        CHECKPOINTS,
        ["session_id", "idempotency_key"],
        unique=True,
        postgresql_where=HAS_IDEMPOTENCY_KEY,
        sqlite_where=HAS_IDEMPOTENCY_KEY,
        if_not_exists=True,
    )
    if op.get_context().dialect.name == "postgresql":
        op.create_index(
            "ix_agent_sessions_sessions_updated_at", SESSIONS, ["updated_at"], if_not_exists=True
        )
        op.create_index(
            "ix_agent_sessions_sessions_key_pattern",
            SESSIONS,
            ["key"],
            postgresql_ops={"key": "varchar_pattern_ops"},
            postgresql_where=HAS_KEY,
            if_not_exists=True,
        )
        op.create_index(
            "ix_agent_sessions_sessions_metadata",
            SESSIONS,
            ["metadata"],
            postgresql_using="gin",
            postgresql_ops={"metadata": "jsonb_path_ops"},
            if_not_exists=True,
        )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.drop_index("ix_agent_sessions_sessions_metadata", SESSIONS)
        op.drop_index("ix_agent_sessions_sessions_key_pattern", SESSIONS)
        op.drop_index("ix_agent_sessions_sessions_updated_at", SESSIONS)
    op.drop_index("uq_agent_sessions_checkpoints_session_id_idempotency_key", CHECKPOINTS)
    op.drop_index("ix_agent_sessions_sessions_expires_at", SESSIONS)
    # SQLite 3.35+ drops an unindexed column in place (never by copying the table: see upgrade).
    with op.batch_alter_table(CHECKPOINTS, recreate="never") as batch:
        batch.drop_column("idempotency_key")
    with op.batch_alter_table(SESSIONS, recreate="never") as batch:
        batch.drop_column("expires_at")
