"""A ready-to-use async engine for when the host application does not bring its own."""

from __future__ import annotations

import time
from typing import Any

from asyncpg.exceptions import InternalClientError
from sqlalchemy import event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection

DEFAULT_URL = "sqlite+aiosqlite:///agent_sessions.db"
# A PostgreSQL connection idle for longer than this is pinged before it is handed out.
IDLE_PING_AFTER = 5.0
_IDLE_SINCE = "agent_sessions.idle_since"


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the single writer; a busy timeout makes writers queue
    # instead of failing at once with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Like ``pool_pre_ping``, but only for connections that sat idle for a while.

    ``pool_pre_ping`` costs asyncpg three round trips on every checkout, more than the
    statement it guards. A connection used moments ago is alive or will fail like any
    in-flight call; one idle longer may have died with a server restart, so it is pinged
    and, if dead, silently replaced by the pool.
    """
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    def idle_from_now(_conn: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    def ping_if_idle(
        dbapi_connection: DBAPIConnection,
        record: ConnectionPoolEntry,
        _proxy: PoolProxiedConnection,
    ) -> None:
        if time.monotonic() - record.info.get(_IDLE_SINCE, 0.0) < IDLE_PING_AFTER:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure of the ping means: do not use this one
            raise sa_exc.DisconnectionError(f"idle connection is dead: {exc}") from exc
        if not alive:
            raise sa_exc.DisconnectionError("idle connection is dead")

    event.listen(pool, "connect", idle_from_now)
    event.listen(pool, "checkin", idle_from_now)
    event.listen(pool, "checkout", ping_if_idle)


def _discard_broken_asyncpg_connections(context: ExceptionContext) -> None:
    """Treat asyncpg's ``InternalClientError`` as a lost connection, so the pool drops it.

    asyncpg raises it when a connection whose server went away mid-operation is used again
    ("cannot switch to state 12; another operation (2) is in progress"). Older SQLAlchemy 2.0
    releases (2.0.30 among them) pass it through untranslated, so the broken connection went
    back to the pool and failed the next caller that drew it; invalidated, it is replaced.
    """
    if isinstance(context.original_exception, InternalClientError):
        context.is_disconnect = True


def _is_sqlite_file(url: str) -> bool:
    parsed = make_url(url)
    return (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and parsed.query.get("mode") != "memory"
    )


def create_engine(url: str = DEFAULT_URL, **kwargs: Any) -> AsyncEngine:
    """Create an ``AsyncEngine`` with settings suited to agent_sessions.

    PostgreSQL (``postgresql+asyncpg://``): connections idle for more than a few seconds are
    pinged before use, so the pool recovers on its own after a server restart (pass
    ``pool_pre_ping=True`` to ping on every checkout instead). SQLite (``sqlite+aiosqlite://``):
    WAL mode, foreign keys on, a 30 s busy timeout, and a file database pooled on every
    SQLAlchemy 2.0 release (2.0.38 and later do that themselves). Extra keyword arguments go to
    ``sqlalchemy.ext.asyncio.create_async_engine``.

    Example::

        engine = create_engine("sqlite+aiosqlite:///sessions.db")
    """
    if "poolclass" not in kwargs and "pool" not in kwargs and _is_sqlite_file(url):
        # The pool SQLAlchemy 2.0.38+ picks for a file database. Before 2.0.38 aiosqlite got a
        # NullPool: a new connection (and its pragmas) on every checkout, and pool_size refused.
        kwargs["poolclass"] = AsyncAdaptedQueuePool
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if engine.dialect.driver == "asyncpg":
        event.listen(engine.sync_engine, "handle_error", _discard_broken_asyncpg_connections)
    if "pool_pre_ping" not in kwargs:
        _ping_idle_connections(engine)
    return engine
