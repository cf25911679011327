"""Alembic environment for agent_sessions' own tables (async; SQLite and PostgreSQL).

The database comes from, in order: a connection or URL handed over by
``agent_sessions.migrations`` (``config.attributes``), ``-x url=...``,
``AGENT_SESSIONS_DATABASE_URL``, then ``sqlalchemy.url`` in alembic.ini. The version table is
``agent_sessions_alembic_version`` and only tables named ``agent_sessions_*`` are looked at, so
a host application's own tables and its own ``alembic_version`` are never touched.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from alembic import context
from sqlalchemy import Connection, func, select

from agent_sessions.engine import create_engine
from agent_sessions.tables import TABLE_PREFIX, VERSION_TABLE, metadata

# Two processes migrating one PostgreSQL database at once: the second waits for this lock,
# then finds the schema at head and does nothing. (Any constant; "agent_se" in ASCII.)
MIGRATION_LOCK_KEY = 0x6167656E745F7365

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get("AGENT_SESSIONS_DATABASE_URL")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=..., or set AGENT_SESSIONS_DATABASE_URL")
    return url


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ == "table":
        return bool(name) and str(name).startswith(TABLE_PREFIX) and name != VERSION_TABLE
    return True


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=_include_name,
        compare_type=True,
        compare_server_default=False,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL, don't run it (``alembic upgrade --sql``, ``agent-sessions db sql``)."""
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


async def run_async_migrations() -> None:
    # agent_sessions' create_engine understands ?transaction_pooling=true in the URL.
    engine = create_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
