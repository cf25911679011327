"""A host application that embeds agent_session_store next to its own models and migrations.

It owns its engine, its ``async_sessionmaker``, its declarative models (``host_app.models``) and
its Alembic history (``host_app/alembic.ini``); agent-session-store brings its own tables and
history.
The deploy step runs both; a request writes an invoice and completes the agent session in one
transaction, through ``SessionRepository.bind``.

Run it from the ``examples/`` directory::

    python -m host_app.app --url sqlite+aiosqlite:///host_app.db
    python -m host_app.app --url postgresql+asyncpg://app@localhost/app \\
        --redis-url redis://localhost:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from redis.asyncio import Redis
from sqlalchemy import Connection, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from agent_session_store import (
    AgentSession,
    RedisCache,
    SessionNotFoundError,
    SessionRepository,
    migrations,
)
from host_app.models import Invoice

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
AGENT_TYPE = "billing-agent"
CACHE_NAMESPACE = "host_app"  # agent-session-store --redis-namespace host_app, for the CLI


def host_alembic_config(connection: Connection | None = None) -> Config:
    """The host's Alembic config; with ``connection``, migrations run on it."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["configure_logger"] = False  # keep the application's logging as it is
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def deploy(engine: AsyncEngine) -> None:
    """The deploy step: agent_session_store's migrations, then the application's own.

    Each history has its own version table (``agent_sessions_alembic_version`` and the host's
    ``alembic_version``), so their order only matters if the host's tables reference the
    library's; running the library first keeps that possible.
    """
    await migrations.upgrade(engine)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(host_alembic_config(c), "head"))


@dataclass
class App:
    """What the application builds at start-up and shares between requests."""

    engine: AsyncEngine
    factory: async_sessionmaker[AsyncSession]
    sessions: SessionRepository
    redis: Redis | None = None
    cache: RedisCache | None = None

    @classmethod
    def start(cls, url: str, redis_url: str | None = None) -> App:
        """The application's own engine and session factory, shared with agent_session_store."""
        engine = create_async_engine(url)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        redis = Redis.from_url(redis_url) if redis_url else None
        cache = RedisCache(redis, namespace=CACHE_NAMESPACE) if redis is not None else None
        return cls(engine, factory, SessionRepository(factory, cache=cache), redis, cache)

    async def close(self) -> None:
        if self.cache is not None:  # a miss stores its value after returning: let it end
            await self.cache.drain()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


async def start_conversation(app: App, customer: str) -> AgentSession:
    """A new agent session for ``customer`` (its own transaction)."""
    return await app.sessions.create_session(AGENT_TYPE, user_id=customer, context={"step": 0})


async def bill_session(
    db: AsyncSession, sessions: SessionRepository, session_id: str, amount_cents: int
) -> Invoice:
    """Invoice the session's work and complete the session, inside the caller's transaction.

    Nothing is committed here: the caller's ``db.begin()`` commits both or neither.

    Raises:
        SessionNotFoundError: no such session.
        InvalidStateTransitionError: the session is already completed or failed.
    """
    repo = sessions.bind(db)
    session = await repo.get_session(session_id)
    if session is None:
        raise SessionNotFoundError(session_id)
    invoice = Invoice(
        customer=session.user_id,
        amount_cents=amount_cents,
        agent_session_id=uuid.UUID(session_id),
        created_at=datetime.now(UTC),
    )
    db.add(invoice)
    await db.flush()  # assigns invoice.id
    session.context["invoice_id"] = invoice.id
    session.checkpoint("invoiced", {"invoice_id": invoice.id, "amount_cents": amount_cents})
    session.complete()
    await repo.update_session(session)
    return invoice


async def handle_bill_request(app: App, session_id: str, amount_cents: int) -> Invoice:
    """One request: one transaction for the invoice and the session change."""
    async with app.factory() as db, db.begin():
        return await bill_session(db, app.sessions, session_id, amount_cents)


async def invoices_of(app: App, session_id: str) -> list[Invoice]:
    async with app.factory() as db:
        stmt = select(Invoice).where(Invoice.agent_session_id == uuid.UUID(session_id))
        return list((await db.scalars(stmt)).all())


async def run(url: str, redis_url: str | None) -> None:
    app = App.start(url, redis_url)
    try:
        await deploy(app.engine)
        session = await start_conversation(app, "acme")
        invoice = await handle_bill_request(app, session.session_id, 1250)
        stored = await app.sessions.get_session(session.session_id)
        assert stored is not None
        print(f"session {stored.session_id}: {stored.state.value}, version {stored.version}")
        print(f"invoice {invoice.id}: {invoice.customer}, {invoice.amount_cents} cents")
        print(f"cache: {'redis namespace ' + CACHE_NAMESPACE if app.redis else 'none'}")
    finally:
        await app.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m host_app.app", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", default="sqlite+aiosqlite:///host_app.db", help="database URL")
    parser.add_argument("--redis-url", help="use the Redis cache at this URL")
    args = parser.parse_args(argv)
    asyncio.run(run(args.url, args.redis_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
