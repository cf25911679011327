"""Scratch databases for one run: created on demand, migrated, and removed at the end."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from agent_session_store import migrations


class Databases:
    """Fresh databases on PostgreSQL (``CREATE DATABASE`` on ``postgres_url``'s server) and
    SQLite (files in ``workdir``), each migrated to head; ``drop_all`` removes them."""

    def __init__(self, postgres_url: str | None, workdir: Path) -> None:
        self._postgres_url = postgres_url
        self._workdir = workdir
        self._run = uuid.uuid4().hex[:8]
        self._created: list[tuple[str, str]] = []

    async def create(self, backend: str, purpose: str, *, migrate: bool = True) -> str:
        """The URL of a new database for ``purpose`` on ``backend``, migrated unless told not."""
        name = self._name(purpose)
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{self._workdir / f'{name}.db'}"
        else:
            if self._postgres_url is None:
                raise RuntimeError("no PostgreSQL server for the benchmark")
            await self._admin(f"CREATE DATABASE {name}")
            url = make_url(self._postgres_url).set(database=name).render_as_string(False)
        self._created.append((backend, purpose))
        if migrate:
            await migrations.upgrade(url)
        return url

    async def drop(self, backend: str, purpose: str) -> None:
        if (backend, purpose) not in self._created:
            return
        self._created.remove((backend, purpose))
        name = self._name(purpose)
        if backend == "sqlite":
            for suffix in (".db", ".db-wal", ".db-shm"):
                (self._workdir / f"{name}{suffix}").unlink(missing_ok=True)
        else:
            await self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    async def drop_all(self) -> None:
        for backend, purpose in list(self._created):
            with contextlib.suppress(Exception):  # cleanup must not hide the run's own error
                await self.drop(backend, purpose)

    def _name(self, purpose: str) -> str:
        return f"bench_{purpose}_{self._run}"

    async def _admin(self, statement: str) -> None:
        # Names are ours ("bench_<purpose>_<hex>"), never user input.
        assert self._postgres_url is not None
        engine = create_async_engine(self._postgres_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()
