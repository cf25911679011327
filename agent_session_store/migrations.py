"""Run agent_session_store's Alembic migrations from code, inside a running event loop.

Example::

    from agent_session_store import migrations

    await migrations.upgrade("postgresql+asyncpg://app@db/app")
    await migrations.check(engine)  # raises SchemaOutOfDateError when behind

The migration scripts ship inside the wheel, so this works with no checkout around.
"""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from agent_session_store._errors import storage_errors
from agent_session_store.engine import create_engine
from agent_session_store.errors import SchemaOutOfDateError
from agent_session_store.tables import VERSION_TABLE

__all__ = [
    "alembic_ini",
    "check",
    "current",
    "downgrade",
    "head",
    "offline_sql",
    "script_location",
    "upgrade",
]

T = TypeVar("T")


def script_location() -> Path:
    """Where the migration scripts are: inside the installed wheel, else the checkout's alembic/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_alembic", here.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError(
        f"agent_session_store's migration scripts are missing (looked in {here / '_alembic'} and "
        f"{here.parent / 'alembic'}); reinstall the agent-session-store package"
    )


def alembic_ini() -> Path:
    """The library's ``alembic.ini``, for ``alembic -c`` (it sits next to the scripts it names).

    Example::

        INI=$(python -c 'import agent_session_store.migrations as m; print(m.alembic_ini())')
        alembic -c "$INI" -x url=postgresql+asyncpg://app@db/app upgrade head
    """
    return script_location() / "alembic.ini"


def upgrade_commands(url: URL) -> str:
    """The commands that bring the database at ``url`` to head, its password shown as ``***``."""
    shown = url.render_as_string(hide_password=True)
    text = (
        f"`agent-session-store db upgrade --url {shown}` (or `alembic -c {alembic_ini()} "
        f"-x url={shown} upgrade head`, or `await agent_session_store.migrations.upgrade(url)`)"
    )
    if url.password is not None:
        text += ", with the real password in place of ***"
    return text


def alembic_config() -> Config:
    """An Alembic ``Config`` for the library's migrations, no alembic.ini needed."""
    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(script_location()))
    return config


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@functools.cache
def _script_heads() -> tuple[str, ...]:
    return tuple(sorted(_script().get_heads()))


@functools.cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _script().walk_revisions())


def head() -> str:
    """The revision this version of the library needs."""
    heads = _script_heads()
    if len(heads) != 1:
        raise RuntimeError(f"agent_session_store's migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current_revisions(connection: Connection) -> tuple[str, ...]:
    """The revisions the database is at (empty when the schema was never created)."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return ()
    ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return tuple(sorted(ctx.get_current_heads()))


def check_connection(connection: Connection) -> None:
    """Raise ``SchemaOutOfDateError`` unless the database is at the library's head."""
    found = current_revisions(connection)
    if found == _script_heads():
        return
    unknown = [rev for rev in found if rev not in _known_revisions()]
    if unknown:
        raise SchemaOutOfDateError(
            f"the database is at revision {', '.join(unknown)}, which this version of "
            f"agent_session_store does not know (it needs {head()}): a newer release migrated it; "
            "upgrade the agent-session-store package rather than the database"
        )
    at = ", ".join(found) if found else "no agent_session_store schema"
    raise SchemaOutOfDateError(
        f"the database has {at}, but agent_session_store needs revision {head()}: run "
        + upgrade_commands(connection.engine.url)
    )


class SchemaGate:
    """Checks once, on first use, that the schema is at head."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.passed = False

    async def pass_through(self, runner: AsyncConnection | AsyncSession) -> None:
        """Raise ``SchemaOutOfDateError`` the first time if the schema is behind; then nothing."""
        if self.passed:
            return
        async with self._lock:
            if not self.passed:
                conn = await runner.connection() if isinstance(runner, AsyncSession) else runner
                await conn.run_sync(check_connection)
                self.passed = True


async def _with_connection(
    url_or_engine: str | AsyncEngine, fn: Callable[[Connection], T], operation: str
) -> T:
    engine = create_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with storage_errors(f"migrations.{operation}"):
            async with engine.connect() as conn:
                result = await conn.run_sync(fn)
                await conn.commit()
                return result
    finally:
        if engine is not url_or_engine:
            await engine.dispose()


def _command(fn: Callable[[Config], None]) -> Callable[[Connection], None]:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        fn(config)

    return run


async def upgrade(url_or_engine: str | AsyncEngine, revision: str = "head") -> None:
    """Upgrade the library's tables to ``revision`` (default: the newest).

    Safe to run from several processes at once on PostgreSQL (they take turns on an advisory lock).
    An engine you pass is used, not disposed; a URL gets a private engine for the call.
    """
    await _with_connection(
        url_or_engine, _command(lambda c: command.upgrade(c, revision)), "upgrade"
    )


async def downgrade(url_or_engine: str | AsyncEngine, revision: str) -> None:
    """Downgrade the library's tables to ``revision`` (``"base"`` drops them)."""
    await _with_connection(
        url_or_engine, _command(lambda c: command.downgrade(c, revision)), "downgrade"
    )


async def current(url_or_engine: str | AsyncEngine) -> str | None:
    """The revision the database is at, or ``None`` when the library's schema is absent."""
    revisions = await _with_connection(url_or_engine, current_revisions, "current")
    return ", ".join(revisions) or None


async def check(url_or_engine: str | AsyncEngine) -> None:
    """Raise ``SchemaOutOfDateError`` (naming the command to run) unless the schema is at head."""
    await _with_connection(url_or_engine, check_connection, "check")


def offline_sql(url: str, revision: str = "head", *, start: str | None = None) -> str:
    """The SQL that upgrading to ``revision`` would run, for review (no database needed)."""
    out = io.StringIO()
    config = alembic_config()
    config.attributes["url"] = url
    config.output_buffer = out
    target = f"{start}:{revision}" if start else revision
    command.upgrade(config, target, sql=True)
    return out.getvalue()
