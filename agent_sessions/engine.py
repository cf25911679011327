"""A ready-to-use async engine for when the host application does not bring its own."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

DEFAULT_URL = "sqlite+aiosqlite:///agent_sessions.db"


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer; a busy timeout makes writers queue
    # instead of failing at once with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_engine(url: str = DEFAULT_URL, **kwargs: Any) -> AsyncEngine:
    """Create an ``AsyncEngine`` with settings suited to agent_sessions.

    PostgreSQL (``postgresql+asyncpg://``): connections are pinged before use, so the pool
    recovers on its own after a server restart. SQLite (``sqlite+aiosqlite://``): WAL mode,
    foreign keys on, a 30 s busy timeout. Extra keyword arguments go to
    ``sqlalchemy.ext.asyncio.create_async_engine``.

    Example::

        engine = create_engine("sqlite+aiosqlite:///sessions.db")
    """
    if url.startswith("postgresql"):
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine
