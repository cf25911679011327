"""The LangGraph checkpointer's tables: threads, checkpoints, channel blobs, pending writes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Never imports the live models: this file describes the schema as it was at this revision.
New tables only, in one transaction (no CONCURRENTLY: they are empty). Every row hangs off its
session with ON DELETE CASCADE.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _session_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["session_id"],
        ["agent_sessions_sessions.id"],
        name=f"fk_{table}_session_id",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "agent_sessions_lg_threads",
        sa.Column("agent_type", sa.String(128), nullable=False),
        sa.Column("thread_key", sa.String(128), nullable=False),
        sa.Column("thread_id", sa.Text(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        _session_fk("agent_sessions_lg_threads"),
        sa.PrimaryKeyConstraint("agent_type", "thread_key", name="pk_agent_sessions_lg_threads"),
    )
    op.create_index(
        "uq_agent_sessions_lg_threads_session_id",
        "agent_sessions_lg_threads",
        ["session_id"],
        unique=True,
    )
    op.create_table(
        "agent_sessions_lg_checkpoints",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("checkpoint_ns", sa.Text(), nullable=False),
        sa.Column("checkpoint_id", sa.Text(), nullable=False),
        sa.Column("parent_checkpoint_id", sa.Text(), nullable=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("channel_versions", JSON, nullable=False),
        _session_fk("agent_sessions_lg_checkpoints"),
        sa.PrimaryKeyConstraint(
            "session_id", "checkpoint_ns", "checkpoint_id", name="pk_agent_sessions_lg_checkpoints"
        ),
    )
    op.create_index(
        "ix_agent_sessions_lg_checkpoints_run_id", "agent_sessions_lg_checkpoints", ["run_id"]
    )
    op.create_table(
        "agent_sessions_lg_blobs",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("checkpoint_ns", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=True),
        sa.Column("base_version", sa.Text(), nullable=True),
        sa.Column("item_count", sa.Integer(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=True),
        sa.Column("delta_size", sa.Integer(), nullable=True),
        sa.Column("digest", sa.LargeBinary(), nullable=True),
        _session_fk("agent_sessions_lg_blobs"),
        sa.PrimaryKeyConstraint(
            "session_id", "checkpoint_ns", "channel", "version", name="pk_agent_sessions_lg_blobs"
        ),
    )
    op.create_table(
        "agent_sessions_lg_writes",
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("checkpoint_ns", sa.Text(), nullable=False),
        sa.Column("checkpoint_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=True),
        sa.Column("task_path", sa.Text(), server_default="", nullable=False),
        _session_fk("agent_sessions_lg_writes"),
        sa.PrimaryKeyConstraint(
            "session_id",
            "checkpoint_ns",
            "checkpoint_id",
            "task_id",
            "idx",
            name="pk_agent_sessions_lg_writes",
        ),
    )


def downgrade() -> None:
    op.drop_table("agent_sessions_lg_writes")
    op.drop_table("agent_sessions_lg_blobs")
    op.drop_index("ix_agent_sessions_lg_checkpoints_run_id", "agent_sessions_lg_checkpoints")
    op.drop_table("agent_sessions_lg_checkpoints")
    op.drop_index("uq_agent_sessions_lg_threads_session_id", "agent_sessions_lg_threads")
    op.drop_table("agent_sessions_lg_threads")
