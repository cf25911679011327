"""One workload, many session stores: agent-session-store, the raw drivers, and the peers' adapters.

A contender maps the four operations of the peer comparison onto its own API (the mapping is
documented in benchmarks/README.md): ``create`` a session, ``get`` it, ``append`` one item to it,
``delete`` it, plus ``get``/``append`` on one session whose history was built beforehand through
the same API. Handles (ids, session objects, configs) are kept per measured item, so each item's
session is created, read, appended to and deleted exactly once, like ``benchmarks.operations``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import ModelCache, SessionRepository, create_engine
from benchmarks import seed
from benchmarks.baselines import Raw, RawPostgres, RawSQLite

OURS = "agent-session-store"
APPEND_DATA = seed.CHECKPOINT_DATA


class Contender:
    """A session store under the peer workload; subclasses map the four operations."""

    name: str = ""
    role: str = "peer"  # "ours" | "peer" | "raw"

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.stack = AsyncExitStack()
        self._handles: dict[int, Any] = {}
        self._deep: Any = None

    async def open(self) -> None:
        """Connect and create whatever tables the store creates itself."""

    async def close(self) -> None:
        # The history's session and any item a failed run left behind: nothing deletes them, and
        # a peer's session object may hold connections (OpenAI SQLiteSession: one per worker
        # thread) that would otherwise be closed by the garbage collector, with a ResourceWarning.
        handles = [*self._handles.values(), *([self._deep] if self._deep is not None else [])]
        self._handles, self._deep = {}, None
        try:
            for handle in handles:
                await self._release(handle)
        finally:
            await self.stack.aclose()

    async def _release(self, handle: Any) -> None:
        """Close what one session object holds (its own connections), where it holds any."""

    async def _create(self, item: int) -> Any:
        raise NotImplementedError

    async def _get(self, handle: Any) -> None:
        raise NotImplementedError

    async def _append(self, handle: Any) -> Any:
        raise NotImplementedError

    async def _delete(self, handle: Any) -> None:
        raise NotImplementedError

    # The operations as ``timing.Op``: called with (item, worker).
    async def create(self, item: int, worker: int) -> None:
        self._handles[item] = await self._create(item)

    async def get(self, item: int, worker: int) -> None:
        await self._get(self._handles[item])

    async def append(self, item: int, worker: int) -> None:
        self._handles[item] = await self._append(self._handles[item])

    async def delete(self, item: int, worker: int) -> None:
        await self._delete(self._handles.pop(item))

    async def seed_history(self, items: int) -> None:
        """One session holding ``items`` appended items, built through the store's own API."""
        handle = await self._create(-1)
        for _ in range(items):
            handle = await self._append(handle)
        self._deep = handle

    async def get_deep(self, item: int, worker: int) -> None:
        await self._get(self._deep)

    async def append_deep(self, item: int, worker: int) -> None:
        self._deep = await self._append(self._deep)

    async def check(self) -> None:
        """One of each operation, before anything is timed: a store that fails is left out."""
        probe = -1_000_000
        await self.create(probe, 0)
        await self.get(probe, 0)
        await self.append(probe, 0)
        await self.get(probe, 0)
        await self.delete(probe, 0)


def expect(value: Any, what: str) -> Any:
    if value is None or value == []:
        raise RuntimeError(f"benchmark operation failed: {what} returned nothing")
    return value


class Ours(Contender):
    """``SessionRepository`` (no cache unless given one) on ``create_engine``."""

    name = OURS
    role = "ours"

    def __init__(
        self,
        backend: str,
        url: str,
        *,
        pool_size: int | None = None,
        cache: ModelCache | None = None,
        name: str = OURS,
    ) -> None:
        super().__init__(backend)
        self.name = name
        self._url = url
        self._pool: dict[str, Any] = {}
        if pool_size is not None:
            self._pool = {"pool_size": pool_size, "max_overflow": 0}
        self._cache = cache
        self.engine: AsyncEngine | None = None
        self.repo: SessionRepository | None = None

    async def open(self) -> None:
        self.engine = create_engine(self._url, **self._pool)
        self.stack.push_async_callback(self.engine.dispose)
        maker = async_sessionmaker(self.engine, expire_on_commit=False)
        self.repo = SessionRepository(maker, cache=self._cache)

    def _repo(self) -> SessionRepository:
        assert self.repo is not None, "open() first"
        return self.repo

    async def _create(self, item: int) -> Any:
        session = await self._repo().create_session(
            "bench", user_id="bench-user", context=seed.CONTEXT
        )
        return session.session_id

    async def _get(self, handle: Any) -> None:
        expect(await self._repo().get_session(handle), "get_session")

    async def _append(self, handle: Any) -> Any:
        await self._repo().add_checkpoint(handle, "step", APPEND_DATA)
        return handle

    async def _delete(self, handle: Any) -> None:
        expect(await self._repo().delete_session(handle), "delete_session")


class RawDriver(Contender):
    """asyncpg / aiosqlite (``benchmarks.baselines``): a SELECT for reads, an INSERT for writes."""

    role = "raw"

    def __init__(self, backend: str, url: str, tasks: int = 1) -> None:
        super().__init__(backend)
        self.name = "asyncpg" if backend == "postgres" else "aiosqlite"
        self._url = url
        self._tasks = tasks
        self._raw: Raw | None = None

    async def open(self) -> None:
        if self.backend == "postgres":
            raw: Raw = await self.stack.enter_async_context(
                RawPostgres.open(self._url, self._tasks)
            )
        else:
            path = Path(self._url.split("///", 1)[1])
            raw = await self.stack.enter_async_context(RawSQLite.open(path, self._tasks))
        self._raw = raw

    def _driver(self) -> Raw:
        assert self._raw is not None, "open() first"
        return self._raw

    async def create(self, item: int, worker: int) -> None:
        await self._driver().write(item, worker)

    async def get(self, item: int, worker: int) -> None:
        await self._driver().read(item, worker)

    append = delete = append_deep = create
    get_deep = get

    async def seed_history(self, items: int) -> None:
        """Nothing to build: the raw figures are one round trip whatever the history."""
