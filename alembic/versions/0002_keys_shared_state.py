"""Session keys, the checkpoints' time index and the shared-state table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Never imports the live models: this file describes the schema as it was at this revision.
Existing sessions get no key (``NULL``), so the partial unique index holds from the start.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
LIVE_KEYED = sa.text("key IS NOT NULL AND state <> 'deleted'")


def upgrade() -> None:
    with op.batch_alter_table("agent_sessions_sessions", recreate="never") as batch:
        batch.add_column(sa.Column("key", sa.String(128), nullable=True))
    op.create_index(
        "uq_agent_sessions_sessions_agent_type_user_id_key",
        "agent_sessions_sessions",
        ["agent_type", "user_id", "key"],
        unique=True,
        postgresql_where=LIVE_KEYED,
        sqlite_where=LIVE_KEYED,
    )
    op.create_index(
        "ix_agent_sessions_checkpoints_session_id_created_at",
        "agent_sessions_checkpoints",
        ["session_id", "created_at"],
    )
    op.create_table(
        "agent_sessions_shared_state",
        sa.Column("agent_type", sa.String(128), nullable=False),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("state", JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "scope IN ('app', 'user')", name=op.f("ck_agent_sessions_shared_state_scope")
        ),
        sa.CheckConstraint(
            "scope = 'user' OR user_id = ''",
            name=op.f("ck_agent_sessions_shared_state_app_scope_has_no_user"),
        ),
        sa.PrimaryKeyConstraint(
            "agent_type", "scope", "user_id", name="pk_agent_sessions_shared_state"
        ),
    )


def downgrade() -> None:
    op.drop_table("agent_sessions_shared_state")
    op.drop_index(
        "ix_agent_sessions_checkpoints_session_id_created_at", "agent_sessions_checkpoints"
    )
    op.drop_index("uq_agent_sessions_sessions_agent_type_user_id_key", "agent_sessions_sessions")
    # Never by copying the table on SQLite: with foreign keys on, dropping the old copy would
    # cascade to every checkpoint. SQLite 3.35+ drops an unindexed column in place.
    with op.batch_alter_table("agent_sessions_sessions", recreate="never") as batch:
        batch.drop_column("key")
