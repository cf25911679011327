"""Alembic environment of the host application (async; SQLite and PostgreSQL).

Two things make it live next to agent_session_store in one database:

* the default version table, ``alembic_version``; agent_session_store keeps its own in
  ``agent_sessions_alembic_version``, so the two histories never see each other's revisions;
* ``include_name`` skips every table named ``agent_sessions_*``, so autogenerate neither
  proposes to drop the library's tables nor to recreate them.
"""

from __future__ import annotations

import asyncio
import logging.config
import os
from typing import Any

from alembic import context
from host_app.models import Base
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
target_metadata = Base.metadata

LIBRARY_TABLE_PREFIX = "agent_sessions_"  # agent_session_store.tables.TABLE_PREFIX

# Only from the command line: an application calling Alembic keeps its own logging set-up.
if config.config_file_name and config.attributes.get("configure_logger", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Leave agent_session_store's tables (and its version table) to agent_session_store."""
    if type_ == "table":
        return not (name or "").startswith(LIBRARY_TABLE_PREFIX)
    return True


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get("HOST_APP_DATABASE_URL")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=..., or set HOST_APP_DATABASE_URL")
    return url


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        include_name=include_name,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    # The application's deploy step hands over a connection (see host_app.app.deploy).
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
