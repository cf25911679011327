"""Alembic environment for agent_session_store's own tables (async; SQLite and PostgreSQL).

The database comes from, in order: ``config.attributes["connection"]``,
``config.attributes["url"]``, ``-x url=...``, ``AGENT_SESSION_STORE_DATABASE_URL``, then
``sqlalchemy.url`` in alembic.ini (which the library's own alembic.ini files leave unset: a
default would let ``alembic current`` without a URL create an empty SQLite file wherever it
runs and report on that). With none of them, it stops with a message saying what to give. The
version table is ``agent_sessions_alembic_version`` and
only tables named ``agent_sessions_*`` are looked at, so a host application's own tables and its
own ``alembic_version`` are never touched.

``config.attributes["connection"]`` may hold what tools hand over
(``agent_session_store.migrations``, pytest-alembic, a host's own scripts):

- a ``Connection``: used as is; the caller owns its transaction and commits;
- an ``AsyncConnection``: only from inside ``await connection.run_sync(...)``, where its
  synchronous side can run; used as is, the caller commits;
- an ``Engine``: a connection of its own, committed;
- an ``AsyncEngine``: a connection of its own, on a pool of its own (a copy of the engine's,
  closed afterwards), in an event loop of its own (in a worker thread when the calling thread
  already runs one); committed. The engine's own pool is neither used nor left holding a
  connection of a finished event loop.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from alembic import context
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import StaticPool

try:
    from sqlalchemy.util.concurrency import in_greenlet
except ImportError:  # the first SQLAlchemy 2.0 releases have no in_greenlet

    def in_greenlet() -> bool:
        # Inside greenlet_spawn the running greenlet is SQLAlchemy's (marked by an attribute
        # in later 2.0 releases, by its class in the first ones).
        from greenlet import getcurrent

        current = getcurrent()
        marked = getattr(current, "__sqlalchemy_greenlet_provider__", False)
        return bool(marked) or type(current).__name__ == "_AsyncIoGreenlet"


from agent_session_store.engine import create_engine
from agent_session_store.tables import (
    POSTGRESQL_ONLY_INDEXES,
    TABLE_PREFIX,
    VERSION_TABLE,
    metadata,
)

# Two processes migrating one PostgreSQL database at once: the second waits for this lock,
# then finds the schema at head and does nothing. (Any constant; "agent_se" in ASCII.)
MIGRATION_LOCK_KEY = 0x6167656E745F7365

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get("AGENT_SESSION_STORE_DATABASE_URL")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        # Exit status 1 and this line on stderr, before anything is opened or created.
        raise SystemExit(
            "agent_session_store migrations: no database URL: pass -x url=... (e.g. "
            "-x url=postgresql+asyncpg://user:password@host/db or "
            "-x url=sqlite+aiosqlite:///path/to/sessions.db), or set "
            "AGENT_SESSION_STORE_DATABASE_URL"
        )
    return url


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ == "table":
        return bool(name) and str(name).startswith(TABLE_PREFIX) and name != VERSION_TABLE
    return True


def _include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # Autogenerate does not read an index's ddl_if: the list filters' indexes are PostgreSQL's.
    if type_ == "index" and name in POSTGRESQL_ONLY_INDEXES:
        return bool(context.get_context().dialect.name == "postgresql")
    return True


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=_include_name,
        include_object=_include_object,
        compare_type=True,
        compare_server_default=False,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL, don't run it (``alembic upgrade --sql``, ``agent-session-store db sql``)."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Transaction-scoped: released by the commit that ends the migration run.
        connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _migrate_with_engine(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
        await connection.commit()


async def _migrate_with_pool_of_our_own(engine: AsyncEngine) -> None:
    # The caller's pool may hold connections of another event loop (the caller's own, or one
    # that has ended); an asyncpg connection cannot be used from a loop it was not opened in.
    # So: the same engine (URL, dialect, events, connect arguments) on a new pool, closed here.
    if isinstance(engine.sync_engine.pool, StaticPool):
        await _migrate_with_engine(engine)  # one shared connection is the point of StaticPool
        return
    sync_engine = copy.copy(engine.sync_engine)
    sync_engine.pool = engine.sync_engine.pool.recreate()
    ours = AsyncEngine(sync_engine)
    try:
        await _migrate_with_engine(ours)
    finally:
        await ours.dispose()


def _run_in_own_loop(make: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main())
        return
    # Called synchronously from async code: this thread's loop cannot be re-entered.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-session-store-env") as pool:
        pool.submit(asyncio.run, main()).result()


def _run_with(connectable: object) -> None:
    """Migrate through what a caller put in ``config.attributes["connection"]``."""
    if isinstance(connectable, Connection):
        do_run_migrations(connectable)
    elif isinstance(connectable, AsyncConnection):
        if not in_greenlet() or connectable.sync_connection is None:
            raise RuntimeError(
                'config.attributes["connection"] is an AsyncConnection, which can only be used '
                "from inside `await connection.run_sync(lambda _: command.upgrade(config, "
                '"head"))` on an open connection; do that, or hand over the AsyncEngine or a '
                "Connection instead"
            )
        do_run_migrations(connectable.sync_connection)
    elif isinstance(connectable, Engine):
        with connectable.connect() as connection:
            do_run_migrations(connection)
            connection.commit()
    elif isinstance(connectable, AsyncEngine):
        _run_in_own_loop(lambda: _migrate_with_pool_of_our_own(connectable))
    else:
        raise TypeError(
            'config.attributes["connection"] must be a Connection, AsyncConnection, Engine or '
            f"AsyncEngine, got {type(connectable).__name__}"
        )


async def _migrate_with_url(url: str) -> None:
    # agent_session_store's create_engine understands ?transaction_pooling=true in the URL.
    engine = create_engine(url)
    try:
        await _migrate_with_engine(engine)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run_with(connectable)
    else:
        url = _url()
        _run_in_own_loop(lambda: _migrate_with_url(url))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
