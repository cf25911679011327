"""Faults injected into real servers: nothing acknowledged is lost, and failures are clear.

Each test here starts its own PostgreSQL or Redis in a temporary directory (the shared servers of
the test session are never restarted): PostgreSQL restarted and killed in the middle of work,
Redis killed, restarted and frozen (SIGSTOP), a connection pool exhausted, and the migrations
run by two processes at once. Every repository call made while a fault is in place runs under a
generous hang guard (``asyncio.wait_for``); there are no precise timing asserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from subprocess import PIPE
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import (
    AgentSession,
    ConcurrentUpdateError,
    RedisCache,
    SessionCheckpoint,
    SessionRepository,
    StorageError,
    StorageTimeoutError,
    create_engine,
    migrations,
)
from agent_session_store.tables import VERSION_TABLE, checkpoints_table
from tests.conftest import CACHE_SERVERS, Backend, unavailable
from tests.servers import PostgresServer, RedisServer, ServerUnavailable

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD = 20.0  # seconds: far above any healthy call, far below the test timeout
MIGRATION_LOCK_KEY = 0x6167656E745F7365  # alembic/env.py's advisory lock key


async def guarded(awaitable: Awaitable[T]) -> T:
    """Await with a hang guard: a call that never returns is a failure, not a stuck test."""
    return await asyncio.wait_for(awaitable, HANG_GUARD)


async def poll(condition: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    """Wait for ``condition`` around a server restart, with a bounded deadline."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres(servers_dir: Path) -> Iterator[PostgresServer]:
    # Not under pytest's tmp_path: another pytest process resets that tree to mode 0700.
    try:
        server = PostgresServer.start(servers_dir / "faults-pg")
    except ServerUnavailable as exc:
        unavailable(f"PostgreSQL: {exc}")
    with server:
        yield server


@pytest.fixture
async def pg(own_postgres: PostgresServer) -> AsyncIterator[tuple[SessionRepository, str]]:
    """A repository on a fresh, migrated database of the module's own server.

    Its connections ask for ``synchronous_commit=on`` (the throwaway server defaults to off), so
    an acknowledged commit is in the WAL before the call returns, as on a production server.
    """
    url = own_postgres.create_database(f"faults_{uuid.uuid4().hex[:12]}")
    engine = create_engine(url, connect_args={"server_settings": {"synchronous_commit": "on"}})
    try:
        await migrations.upgrade(engine)
        yield SessionRepository(async_sessionmaker(engine, expire_on_commit=False)), url
    finally:
        await engine.dispose()


class Ledger:
    """What the repository acknowledged: per session, the checkpoint names at their seqs."""

    def __init__(self) -> None:
        self.names: dict[str, dict[int, str]] = {}
        self.versions: dict[str, int] = {}
        self.contexts: dict[str, dict[str, Any]] = {}

    def created(self, session: AgentSession) -> None:
        self.names[session.session_id] = {1: "session_created"}
        self.saved(session)

    def saved(self, session: AgentSession) -> None:
        self.versions[session.session_id] = session.version
        self.contexts[session.session_id] = dict(session.context)
        for cp in session.checkpoints:
            assert cp.seq is not None
            self.names[session.session_id][cp.seq] = cp.name

    async def assert_all_present(self, repo: SessionRepository) -> int:
        """Every acknowledged checkpoint, context and version is stored; returns the count."""
        total = 0
        for sid, names in self.names.items():
            history = await guarded(repo.list_checkpoints(sid, limit=1000))
            stored = {cp.seq: cp.name for cp in history}
            for seq, name in names.items():
                assert stored.get(seq) == name, f"acknowledged checkpoint {name!r} lost"
            assert [cp.seq for cp in history] == list(range(1, len(history) + 1))
            session = await guarded(repo.get_session(sid))
            assert session is not None
            assert session.version >= self.versions[sid], "an acknowledged version was lost"
            total += len(names)
        return total


async def acknowledged_work(repo: SessionRepository, ledger: Ledger, sessions: int) -> None:
    for i in range(sessions):
        created = await repo.create_session("planner", "u", {"i": i})
        ledger.created(created)
        for step in range(3):
            created.context["step"] = step
            created.checkpoint(f"step-{step}")
            created = await repo.update_session(created)
            ledger.saved(created)


async def test_after_a_postgres_restart_one_call_fails_and_the_next_ones_reconnect(
    own_postgres: PostgresServer, pg: tuple[SessionRepository, str]
) -> None:
    # Connections used moments ago are not pinged (engine.IDLE_PING_AFTER): after a fast
    # restart the pool holds several dead ones. The first call that draws one fails, like any
    # call in flight; it must also tell the pool that the server went away, so the next calls
    # get new connections instead of failing one dead connection at a time.
    repo, _url = pg
    created = await repo.create_session("planner")
    # Three connections in the pool, each used moments ago.
    await asyncio.gather(*(repo.get_session(created.session_id) for _ in range(3)))
    await asyncio.to_thread(own_postgres.restart)
    with pytest.raises(StorageError):
        await guarded(repo.get_session(created.session_id))  # the hot path draws a dead one
    for _ in range(3):
        assert await guarded(repo.get_session(created.session_id)) is not None
        assert (await guarded(repo.add_checkpoint(created.session_id, "after"))).seq is not None


async def test_postgres_restart_fails_in_flight_calls_with_storage_error_and_loses_nothing(
    own_postgres: PostgresServer, pg: tuple[SessionRepository, str]
) -> None:
    repo, url = pg
    ledger = Ledger()
    await acknowledged_work(repo, ledger, sessions=3)
    target = next(iter(ledger.names))
    copy = await repo.get_session(target)
    assert copy is not None
    copy.context["in_flight"] = True
    copy.checkpoint("in-flight-update")

    # Hold the target's row, so two calls are provably in flight (waiting in the server).
    dsn = url.replace("postgresql+asyncpg", "postgresql")
    blocker, observer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await blocker.execute("BEGIN")
        await blocker.execute(
            "SELECT 1 FROM agent_sessions_sessions WHERE id = $1 FOR UPDATE", uuid.UUID(target)
        )
        in_flight = [
            asyncio.create_task(repo.update_session(copy)),
            asyncio.create_task(repo.add_checkpoint(target, "in-flight-append")),
        ]

        async def both_waiting() -> bool:
            # Outside any transaction: pg_stat_activity is a snapshot per transaction.
            waiting = await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
            return bool(waiting == len(in_flight))

        await poll(both_waiting, "the in-flight calls to wait on the row lock")
        await asyncio.to_thread(own_postgres.restart)  # a clean (fast) shutdown, then start
    finally:
        blocker.terminate()
        observer.terminate()

    updated, appended = await guarded(asyncio.gather(*in_flight, return_exceptions=True))
    # Each call failed whole or happened whole. Almost always both fail with the server; but a
    # fast shutdown signals its backends one at a time, so on a loaded machine the blocker's can
    # end (releasing the row) before a waiter's is told to stop, and that waiter may commit.
    for outcome in (updated, appended):
        if isinstance(outcome, StorageError):
            assert "rolled back" in str(outcome)
    assert isinstance(appended, StorageError | SessionCheckpoint), f"append ended: {appended!r}"
    assert isinstance(updated, StorageError | AgentSession | ConcurrentUpdateError), f"{updated!r}"
    if isinstance(updated, ConcurrentUpdateError):  # only an append committed first outdates it
        assert isinstance(appended, SessionCheckpoint)
    if isinstance(updated, AgentSession):
        ledger.saved(updated)
    if isinstance(appended, SessionCheckpoint):
        assert appended.seq is not None
        ledger.names[target][appended.seq] = appended.name

    # The same repository and engine work again at once: the pool drops the dead connections.
    stored = await guarded(repo.get_session(target))
    assert stored is not None
    assert stored.version == ledger.versions[target] + isinstance(appended, SessionCheckpoint)
    assert ("in_flight" in stored.context) == isinstance(updated, AgentSession)
    assert await ledger.assert_all_present(repo) == 3 * 4 + sum(
        isinstance(outcome, AgentSession | SessionCheckpoint) for outcome in (updated, appended)
    )
    names = {cp.name for cp in await repo.list_checkpoints(target)}
    assert ("in-flight-update" in names) == isinstance(updated, AgentSession)
    assert ("in-flight-append" in names) == isinstance(appended, SessionCheckpoint)
    stored.context["after"] = True
    ledger.saved(await guarded(repo.update_session(stored)))


async def test_calls_while_postgres_is_down_raise_storage_error_and_work_once_it_is_back(
    own_postgres: PostgresServer, pg: tuple[SessionRepository, str]
) -> None:
    repo, _ = pg
    ledger = Ledger()
    await acknowledged_work(repo, ledger, sessions=2)
    sid = next(iter(ledger.names))
    await asyncio.to_thread(own_postgres.stop)
    try:
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: repo.get_session(sid),
            lambda: repo.create_session("planner"),
            lambda: repo.add_checkpoint(sid, "while-down"),
            lambda: repo.heartbeat(sid),
            lambda: repo.list_sessions(),
            lambda: repo.cleanup_stale_sessions(),
        ]
        for call in calls:
            with pytest.raises(StorageError, match="failed"):
                await guarded(call())
    finally:
        await asyncio.to_thread(own_postgres.restart)
    assert await ledger.assert_all_present(repo) == 2 * 4
    assert await guarded(repo.add_checkpoint(sid, "back")) is not None


async def test_postgres_killed_under_load_keeps_every_acknowledged_write(
    own_postgres: PostgresServer, pg: tuple[SessionRepository, str]
) -> None:
    repo, _ = pg
    ledger = Ledger()
    await acknowledged_work(repo, ledger, sessions=4)
    sids = list(ledger.names)
    acked: dict[str, dict[int, str]] = {sid: {} for sid in sids}
    errors: Counter[str] = Counter()
    enough_before, recovered = asyncio.Event(), asyncio.Event()
    successes_after: Counter[int] = Counter()

    async def worker(w: int) -> None:
        n = 0
        while successes_after[w] < 5:
            sid = sids[n % len(sids)]
            n += 1
            try:
                cp = await guarded(repo.add_checkpoint(sid, f"w{w}-{n}"))
            except StorageError as exc:
                errors[type(exc).__name__] += 1
                await recovered.wait()  # the server is down until the test restarts it
                continue
            assert cp.seq is not None
            acked[sid][cp.seq] = cp.name
            if recovered.is_set():
                successes_after[w] += 1
            elif sum(len(a) for a in acked.values()) >= 40:
                enough_before.set()

    workers = [asyncio.create_task(worker(w)) for w in range(6)]
    await guarded(enough_before.wait())
    await asyncio.to_thread(own_postgres.kill)  # SIGKILL: no shutdown checkpoint
    await asyncio.to_thread(own_postgres.restart)  # crash recovery replays the WAL
    recovered.set()
    await guarded(asyncio.gather(*workers))

    for sid, names in acked.items():
        ledger.names[sid].update(names)
    total = await ledger.assert_all_present(repo)
    print(f"\nkill -9 under load: {total} acknowledged checkpoints kept, errors {dict(errors)}")
    assert errors["StorageError"] > 0, "the kill did not hit any call: nothing was tested"
    assert set(errors) == {"StorageError"}


async def test_two_processes_migrating_one_database_at_once_both_succeed(
    own_postgres: PostgresServer,
) -> None:
    url = own_postgres.create_database(f"migrate_{uuid.uuid4().hex[:12]}")
    holder = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    script = "import asyncio, sys; from agent_session_store import migrations; " \
             "asyncio.run(migrations.upgrade(sys.argv[1]))"  # fmt: skip
    children: list[asyncio.subprocess.Process] = []
    try:
        # Take the migrations' advisory lock first, so both processes provably wait on it.
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        for _ in range(2):
            children.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    script,
                    url,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=PIPE,
                    stderr=PIPE,
                )
            )

        async def both_waiting() -> bool:
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            return bool(waiting == 2)

        await poll(both_waiting, "both migrating processes to wait on the advisory lock", 60)
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        outputs = [await guarded(child.communicate()) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
        await holder.close()
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).all()
        assert [r[0] for r in rows] == [migrations.head()]
        await migrations.check(engine)
        assert await SessionRepository(async_sessionmaker(engine)).create_session("planner")
    finally:
        await engine.dispose()


# -- connection pool ---------------------------------------------------------------------


async def checkpoint_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(checkpoints_table)) or 0)


async def test_exhausted_pool_times_out_every_waiter_writes_nothing_and_recovers(
    db: Backend,
) -> None:
    url = db.engine.url.render_as_string(hide_password=False)
    engine = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=1)
    try:
        repo = SessionRepository(async_sessionmaker(engine))
        created = await repo.create_session("planner")
        before = await checkpoint_count(db.engine)
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            waiters = [repo.add_checkpoint(created.session_id, f"c{i}") for i in range(5)]
            results = await guarded(asyncio.gather(*waiters, return_exceptions=True))
            assert all(isinstance(r, StorageTimeoutError) for r in results), results
        assert await checkpoint_count(db.engine) == before
        added = [await guarded(repo.add_checkpoint(created.session_id, "after")) for _ in range(3)]
        assert [cp.seq for cp in added] == [2, 3, 4]
    finally:
        await engine.dispose()


# -- Redis --------------------------------------------------------------------------------


class FakeMonotonic:
    """The cache's circuit-breaker clock, moved by the test instead of waiting for cooldowns."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def own_redis(cache_server: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis or Valkey (``cache_server``): the faults run against both servers."""
    try:
        server = CACHE_SERVERS[cache_server].start(tmp_path / cache_server)
    except ServerUnavailable as exc:
        unavailable(f"{cache_server}: {exc}")
    with server:
        yield server


class CachedSetup:
    def __init__(self, db: Backend, server: RedisServer) -> None:
        self.server = server
        self.client = Redis.from_url(server.url)
        self.clock = FakeMonotonic()
        self.cache = RedisCache(self.client, namespace="faults", monotonic=self.clock)
        self.repo = SessionRepository(db.factory, cache=self.cache)
        self.plain = SessionRepository(db.factory)  # the database's answer, for comparison
        self.slowest = 0.0

    async def call(self, awaitable: Awaitable[T]) -> T:
        began = time.monotonic()
        try:
            return await guarded(awaitable)
        finally:
            self.slowest = max(self.slowest, time.monotonic() - began)

    async def fresh(self, session_id: str) -> AgentSession:
        """Read through the cache; it must equal the database's copy."""
        cached = await self.call(self.repo.get_session(session_id))
        assert cached is not None
        assert cached == await self.plain.get_session(session_id), "a stale read"
        return cached

    async def recover(self, session_id: str) -> None:
        """After the fault: once the cooldown passes, the cache serves hits again, fresh."""
        for _ in range(10):  # a probe may still meet a connection from before the restart
            self.clock.now += 60
            await self.fresh(session_id)
            if self.cache.stats.circuit == "closed":
                break
        await self.fresh(session_id)  # stored again, if the probe's read was a miss
        await self.cache.drain()  # the store runs after the read returns
        hits = self.cache.stats.hits
        await self.fresh(session_id)
        assert self.cache.stats.hits == hits + 1, f"the cache is not used again: {self.cache.stats}"
        assert self.cache.stats.circuit == "closed"


@pytest.fixture
async def cached(db: Backend, own_redis: RedisServer) -> AsyncIterator[CachedSetup]:
    setup = CachedSetup(db, own_redis)
    yield setup
    # A fault may have left the cache repairing its epoch in the background, retrying until
    # Redis answers: stopped before the client closes, or its next try opens a connection that
    # nobody closes (an unclosed socket, seen once in a fresh-clone run).
    repairing = setup.cache._repairing
    if repairing is not None and not repairing.done():
        repairing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await repairing
    await setup.cache.drain()
    await setup.client.aclose()


async def work_through_the_fault(setup: CachedSetup, session: AgentSession) -> AgentSession:
    """Every kind of call succeeds and reads its own writes while Redis is unusable."""
    repo = setup.repo
    current = await setup.fresh(session.session_id)
    current.context["during"] = "fault"
    current.checkpoint("during-fault")
    current = await setup.call(repo.update_session(current))
    assert (await setup.fresh(session.session_id)).version == current.version
    await setup.call(repo.add_checkpoint(session.session_id, "appended-during-fault"))
    assert await setup.call(repo.heartbeat(session.session_id))
    page = await setup.call(repo.list_sessions(user_id=session.user_id))
    assert session.session_id in {s.session_id for s in page.items}
    other = await setup.call(repo.create_session("planner", session.user_id))
    assert await setup.call(repo.delete_session(other.session_id))
    assert await setup.call(repo.get_session(other.session_id)) is None
    return await setup.fresh(session.session_id)


async def cached_session(setup: CachedSetup) -> AgentSession:
    created = await setup.repo.create_session("planner", f"u-{uuid.uuid4().hex[:6]}")
    await setup.fresh(created.session_id)
    await setup.cache.drain()  # the miss stores after returning
    hits = setup.cache.stats.hits
    await setup.fresh(created.session_id)
    assert setup.cache.stats.hits == hits + 1  # cached in Redis now
    return created


async def test_redis_killed_then_restarted_no_call_fails_and_no_read_is_stale(
    cached: CachedSetup,
) -> None:
    session = await cached_session(cached)
    await asyncio.to_thread(cached.server.kill)
    await work_through_the_fault(cached, session)
    assert cached.cache.stats.errors > 0
    await asyncio.to_thread(cached.server.restart)  # empty: nothing survives
    await cached.recover(session.session_id)
    print(f"\nRedis killed: slowest call {cached.slowest * 1000:.0f} ms; {cached.cache.stats}")


async def test_redis_frozen_then_resumed_no_call_fails_and_no_read_is_stale(
    cached: CachedSetup,
) -> None:
    # The dangerous one: Redis comes back with its data, including the copy cached before the
    # writes whose invalidations it never received (the circuit opened first: none was sent).
    session = await cached_session(cached)
    stale_key = f"{{faults:AgentSession:{session.session_id}}}:val"
    cached.server.pause()
    try:
        for _ in range(3):
            await cached.fresh(session.session_id)
        assert cached.cache.stats.circuit == "open"
        latest = await work_through_the_fault(cached, session)
    finally:
        cached.server.resume()
    assert await cached.client.exists(stale_key), "the stale copy should still be in Redis"
    await cached.recover(session.session_id)
    assert (await cached.fresh(session.session_id)).version == latest.version
    assert cached.cache.stats.epoch_bumps >= 1
    print(f"\nRedis frozen: slowest call {cached.slowest * 1000:.0f} ms; {cached.cache.stats}")


async def test_redis_frozen_while_a_read_is_storing_no_stale_copy_survives(
    cached: CachedSetup,
) -> None:
    # Writes are acknowledged while Redis is frozen with a whole backlog of commands in its
    # sockets; they all run on SIGCONT, in whatever order. None may leave an old copy behind.
    session = await cached_session(cached)
    cached.server.pause()
    try:
        current = session
        for step in range(5):
            reader = asyncio.create_task(cached.call(cached.repo.get_session(session.session_id)))
            latest = await cached.plain.get_session(session.session_id)
            assert latest is not None
            latest.context["step"] = step
            current = await cached.call(cached.repo.update_session(latest))
            await reader
    finally:
        cached.server.resume()
    with contextlib.suppress(Exception):
        await cached.client.ping()  # let Redis drain its backlog before reading
    await cached.recover(session.session_id)
    assert (await cached.fresh(session.session_id)).version == current.version
