"""The physical limit on this machine: plain driver round trips, no library in between.

Each baseline opens one connection per task and its own scratch table (or key prefix), with
rows preloaded for the reads; its operations can be called any number of times, so they can be
interleaved with the repository's. Payloads match what the repository stores: a ~1 KB JSON
object, and for Redis a serialized AgentSession.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import asyncpg
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from agent_session_store import AgentSession, SessionCheckpoint
from benchmarks.seed import CONTEXT
from benchmarks.timing import Op

BODY = json.dumps(CONTEXT)
PRELOADED = 1000  # rows (keys) the reads cycle through


class Raw(Protocol):
    """A raw driver baseline: a write and a read of one ~1 KB row (or value)."""

    @property
    def write_name(self) -> str: ...  # the figures' names, e.g. "insert" and "select"
    @property
    def read_name(self) -> str: ...

    async def write(self, item: int, worker: int) -> None: ...
    async def read(self, item: int, worker: int) -> None: ...


def ops(raw: Raw) -> dict[str, Op]:
    """The baseline's operations under their figure names."""
    return {raw.write_name: raw.write, raw.read_name: raw.read}


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The plain ``postgresql://`` DSN asyncpg takes, from a ``postgresql+asyncpg://`` URL."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class RawPostgres:
    """asyncpg: INSERT, and SELECT by primary key, of a ~1 KB JSONB row (autocommit)."""

    write_name, read_name = "insert", "select"

    def __init__(self, conns: list[Any], ids: list[uuid.UUID]) -> None:
        self._conns = conns
        self._ids = ids

    @classmethod
    @asynccontextmanager
    async def open(cls, sqlalchemy_url: str, tasks: int) -> AsyncIterator[RawPostgres]:
        dsn = asyncpg_dsn(sqlalchemy_url)
        conns = [await asyncpg.connect(dsn) for _ in range(tasks)]
        try:
            await conns[0].execute(
                "CREATE TABLE IF NOT EXISTS bench_raw (id uuid PRIMARY KEY, body jsonb NOT NULL)"
            )
            ids = [uuid.uuid4() for _ in range(PRELOADED)]
            await conns[0].executemany(
                "INSERT INTO bench_raw (id, body) VALUES ($1, $2)", [(i, BODY) for i in ids]
            )
            yield cls(conns, ids)
        finally:
            for conn in conns:
                await conn.close()

    async def write(self, item: int, worker: int) -> None:
        await self._conns[worker].execute(
            "INSERT INTO bench_raw (id, body) VALUES ($1, $2)", uuid.uuid4(), BODY
        )

    async def read(self, item: int, worker: int) -> None:
        await self._conns[worker].fetchrow(
            "SELECT id, body FROM bench_raw WHERE id = $1", self._ids[item % PRELOADED]
        )


# The same settings agent_session_store.create_engine gives its SQLite connections.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
)


class RawSQLite:
    """aiosqlite: INSERT (and commit), and SELECT by primary key, of a ~1 KB JSON text row."""

    write_name, read_name = "insert", "select"

    def __init__(self, conns: list[aiosqlite.Connection], ids: list[str]) -> None:
        self._conns = conns
        self._ids = ids

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path, tasks: int) -> AsyncIterator[RawSQLite]:
        conns = [await aiosqlite.connect(path) for _ in range(tasks)]
        try:
            for conn in conns:
                for pragma in SQLITE_PRAGMAS:
                    await conn.execute(pragma)
            await conns[0].execute(
                "CREATE TABLE IF NOT EXISTS bench_raw (id TEXT PRIMARY KEY, body TEXT NOT NULL)"
            )
            ids = [uuid.uuid4().hex for _ in range(PRELOADED)]
            await conns[0].executemany(
                "INSERT INTO bench_raw (id, body) VALUES (?, ?)", [(i, BODY) for i in ids]
            )
            await conns[0].commit()
            yield cls(conns, ids)
        finally:
            for conn in conns:
                await conn.close()

    async def write(self, item: int, worker: int) -> None:
        conn = self._conns[worker]
        await conn.execute(
            "INSERT INTO bench_raw (id, body) VALUES (?, ?)", (uuid.uuid4().hex, BODY)
        )
        await conn.commit()

    async def read(self, item: int, worker: int) -> None:
        key = self._ids[item % PRELOADED]
        async with self._conns[worker].execute(
            "SELECT id, body FROM bench_raw WHERE id = ?", (key,)
        ) as cursor:
            await cursor.fetchone()


def cached_session_json() -> bytes:
    """A serialized session like the ones the cache holds: ~1 KB context, one checkpoint."""
    session = AgentSession(
        session_id=str(uuid.uuid4()),
        agent_type="bench",
        user_id="bench-user",
        context=CONTEXT,
        checkpoints=[SessionCheckpoint(name="session_created", data={"agent_type": "x"}, seq=1)],
        checkpoint_count=1,
    )
    return session.model_dump_json().encode()


class RawRedis:
    """redis-py: SET, and GET plus ``AgentSession.model_validate_json``, of a session."""

    write_name, read_name = "set", "get_validate"

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._value = cached_session_json()

    @classmethod
    @asynccontextmanager
    async def open(cls, client: Redis, prefix: str) -> AsyncIterator[RawRedis]:
        raw = cls(client, prefix)
        for item in range(PRELOADED):
            await raw.write(item, 0)
        yield raw

    async def write(self, item: int, worker: int) -> None:
        await self._client.set(f"{self._prefix}{item % PRELOADED}", self._value)

    async def read(self, item: int, worker: int) -> None:
        raw = await self._client.get(f"{self._prefix}{item % PRELOADED}")
        if raw is None:
            raise RuntimeError(f"redis lost {self._prefix}{item % PRELOADED}")
        AgentSession.model_validate_json(raw)
