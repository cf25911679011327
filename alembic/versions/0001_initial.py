"""Create the sessions and checkpoints tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Never imports the live models: this file describes the schema as it was at this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "agent_sessions_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("agent_type", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(256), server_default="", nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("context", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("checkpoint_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('active', 'paused', 'completed', 'failed', 'deleted')",
            name=op.f("ck_agent_sessions_sessions_state"),
        ),
        sa.PrimaryKeyConstraint("id", name="pk_agent_sessions_sessions"),
    )
    op.create_index(
        "ix_agent_sessions_sessions_user_id_created_at_id",
        "agent_sessions_sessions",
        ["user_id", "created_at", "id"],
    )
    op.create_index(
        "ix_agent_sessions_sessions_agent_type_created_at_id",
        "agent_sessions_sessions",
        ["agent_type", "created_at", "id"],
    )
    op.create_index(
        "ix_agent_sessions_sessions_created_at_id",
        "agent_sessions_sessions",
        ["created_at", "id"],
    )
    op.create_index(
        "ix_agent_sessions_sessions_state_last_heartbeat",
        "agent_sessions_sessions",
        ["state", "last_heartbeat"],
    )
    op.create_table(
        "agent_sessions_checkpoints",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["agent_sessions_sessions.id"],
            name="fk_agent_sessions_checkpoints_session_id",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "seq", name="pk_agent_sessions_checkpoints"),
    )


def downgrade() -> None:
    op.drop_table("agent_sessions_checkpoints")
    op.drop_index("ix_agent_sessions_sessions_state_last_heartbeat", "agent_sessions_sessions")
    op.drop_index("ix_agent_sessions_sessions_created_at_id", "agent_sessions_sessions")
    op.drop_index("ix_agent_sessions_sessions_agent_type_created_at_id", "agent_sessions_sessions")
    op.drop_index("ix_agent_sessions_sessions_user_id_created_at_id", "agent_sessions_sessions")
    op.drop_table("agent_sessions_sessions")
