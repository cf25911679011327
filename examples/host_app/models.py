"""The host application's own declarative models, on its own ``MetaData``.

agent_session_store's tables live on ``agent_session_store.metadata``; the two never mix, and this
application's Alembic history only ever creates the tables declared here.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, MetaData, String, Uuid
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Invoice(Base):
    """An invoice for the work an agent session did.

    ``agent_session_id`` is deliberately not a foreign key: agent-session-store's ``purge``
    hard-deletes old sessions, and the invoice must outlive them (and the two migration histories
    stay independent of each other's order).
    """

    __tablename__ = "host_invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(200))
    amount_cents: Mapped[int]
    agent_session_id: Mapped[uuid.UUID | None] = mapped_column(Uuid(), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
