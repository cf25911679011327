"""A ready-to-use async engine for when the host application does not bring its own."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from asyncpg.exceptions import InternalClientError
from sqlalchemy import Connection, Engine, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection

DEFAULT_URL = "sqlite+aiosqlite:///agent_sessions.db"
# A PostgreSQL connection idle for longer than this is pinged before it is handed out.
IDLE_PING_AFTER = 5.0
_IDLE_SINCE = "agent_session_store.idle_since"

# The engine execution option that tells the repository its engine reaches PostgreSQL through
# a transaction-pooling proxy (PgBouncer ``pool_mode = transaction`` and the like). Set by
# ``create_engine(..., transaction_pooling=True)``; a host's own engine sets it with
# ``execution_options={TRANSACTION_POOLING: True}`` (see docs/embedding.md).
TRANSACTION_POOLING = "agent_session_store_transaction_pooling"
# The URL query parameter that turns it on, for URLs handed over in configuration (the CLI,
# ``migrations.upgrade(url)``); it is removed before the URL reaches the driver.
_URL_FLAG = "transaction_pooling"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def behind_transaction_pooler(bind: Engine | Connection) -> bool:
    """Whether ``bind`` is marked as reaching PostgreSQL through a transaction pooler."""
    return bool(bind.get_execution_options().get(TRANSACTION_POOLING, False))


def _unnamed_statement() -> str:
    # An unnamed prepared statement lives until the next one on its server connection: used
    # within one transaction it can neither collide with another client's statement (the
    # server connection is ours until COMMIT) nor pile up on the server, as unique names would
    # until the server connection closes.
    return ""


def _pooled_kwargs(url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    parsed = make_url(url)
    if (parsed.get_backend_name(), parsed.get_driver_name()) != ("postgresql", "asyncpg"):
        raise ValueError(
            "transaction_pooling applies to PostgreSQL through asyncpg "
            "(postgresql+asyncpg://...) only"
        )
    connect_args = {
        **kwargs.get("connect_args", {}),
        "statement_cache_size": 0,  # asyncpg's own cache of named statements
        "prepared_statement_cache_size": 0,  # SQLAlchemy's, across transactions
        "prepared_statement_name_func": _unnamed_statement,
    }
    options = {**kwargs.get("execution_options", {}), TRANSACTION_POOLING: True}
    return {**kwargs, "connect_args": connect_args, "execution_options": options}


def _split_url_flag(url: str) -> tuple[str, bool]:
    """The URL without ``?transaction_pooling=...``, and whether that flag was true."""
    parsed = make_url(url)
    value = parsed.query.get(_URL_FLAG)
    if value is None:
        return url, False
    text = value if isinstance(value, str) else value[-1]
    if text.lower() not in _TRUE + _FALSE:
        raise ValueError(
            f"the URL's {_URL_FLAG}={text!r} is neither true nor false; "
            f"use ?{_URL_FLAG}=true behind a transaction pooler such as PgBouncer"
        )
    bare = parsed.difference_update_query([_URL_FLAG])
    return bare.render_as_string(hide_password=False), text.lower() in _TRUE


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    try:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the single writer; a busy timeout makes writers queue
        # instead of failing at once with "database is locked".
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()
    except BaseException:
        # Switching to WAL fails while another process holds the write lock, and a cancellation
        # may land on any of these awaits. The pool then drops the new connection, and older
        # SQLAlchemy releases (2.0.10 among them) drop it without closing it: its sqlite3
        # connection and aiosqlite's thread would stay open. Closing twice does no harm.
        with contextlib.suppress(Exception):
            dbapi_connection.close()
        raise


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


def create_engine(
    url: str = DEFAULT_URL, *, transaction_pooling: bool = False, **kwargs: Any
) -> AsyncEngine:
    """Create an ``AsyncEngine`` with settings suited to agent_session_store.

    PostgreSQL (``postgresql+asyncpg://``): connections idle for more than a few seconds are
    pinged before use, so the pool recovers on its own after a server restart (pass
    ``pool_pre_ping=True`` to ping on every checkout instead). SQLite (``sqlite+aiosqlite://``):
    WAL mode, foreign keys on, a 30 s busy timeout, and a file database pooled on every
    SQLAlchemy 2.0 release (2.0.38 and later do that themselves). Extra keyword arguments go to
    ``sqlalchemy.ext.asyncio.create_async_engine``.

    Args:
        url: the database URL. ``?transaction_pooling=true`` in it is the same as the argument.
        transaction_pooling: the URL reaches PostgreSQL through a transaction-pooling proxy
            (PgBouncer's ``pool_mode = transaction``): every statement runs inside a
            transaction, prepared statements are unnamed and never cached across transactions,
            and the engine is marked so that repositories on it work this way (see
            docs/embedding.md, "Behind PgBouncer and other poolers").

    Raises:
        ValueError: ``transaction_pooling`` with a database other than PostgreSQL through
            asyncpg, or a URL flag that is neither true nor false.

    Example::

        engine = create_engine("sqlite+aiosqlite:///sessions.db")
        pooled = create_engine("postgresql+asyncpg://app@bouncer/app", transaction_pooling=True)
    """
    url, flagged = _split_url_flag(url)
    if transaction_pooling or flagged:
        kwargs = _pooled_kwargs(url, kwargs)
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
