"""Create host_invoices.

Revision ID: host0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "host0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "host_invoices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer", sa.String(200), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("agent_session_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_invoices")),
    )
    op.create_index(
        op.f("ix_host_invoices_agent_session_id"), "host_invoices", ["agent_session_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_host_invoices_agent_session_id"), table_name="host_invoices")
    op.drop_table("host_invoices")
