"""The cache's coherence holes found by the adversarial review, each pinned by an interleaving.

- A savepoint rolled back inside the caller's transaction must not discard the invalidation of a
  write made before it in the same transaction.
- A read that begins after a write was acknowledged (in another process) must not adopt a load
  this process began before that write.
- A write whose invalidation Redis never got (frozen for every process) must stop being served
  by other processes once Redis answers again, without waiting for the writer's next call.

The tests that read through one process's cache run twice: without and with the near cache
(``make_cache``), whose in-process promise is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from agent_session_store import RedisCache, SessionRepository
from tests.conftest import Backend, unavailable
from tests.servers import RedisServer, ServerUnavailable
from tests.test_cache import Source, Widget, fetch

SHORT = timedelta(milliseconds=150)  # the writer's time limit while Redis is frozen


class Refused(Exception):
    pass


MakeCache = Callable[[Redis, str], Awaitable[RedisCache]]


@pytest.fixture(params=["redis", "near"])
async def make_cache(request: pytest.FixtureRequest) -> AsyncIterator[MakeCache]:
    """A ``RedisCache`` factory: plain, or with the near cache on and subscribed."""
    made: list[RedisCache] = []

    async def make(client: Redis, namespace: str) -> RedisCache:
        if request.param == "redis":
            return RedisCache(client, namespace=namespace)
        cache = RedisCache(client, namespace=namespace, near_cache_entries=100,
                           near_cache_max_age=timedelta(hours=1))  # fmt: skip
        made.append(cache)
        assert cache._listener is not None
        cache._listener.start()
        await cache._listener.confirmed.wait()
        return cache

    yield make
    for cache in made:
        await cache.aclose()


async def test_a_rolled_back_savepoint_keeps_the_earlier_writes_invalidation(
    db: Backend, redis_client: Redis, namespace: str, make_cache: MakeCache
) -> None:
    repo = SessionRepository(db.factory, cache=await make_cache(redis_client, namespace))
    created = await repo.create_session("planner", context={"v": 1})
    copy = await repo.get_session(created.session_id)  # cached at version 1
    assert copy is not None
    async with db.factory() as s, s.begin():
        copy.context["v"] = 2
        await repo.bind(s).update_session(copy)
        with contextlib.suppress(Refused):
            async with s.begin_nested():
                await repo.bind(s).add_checkpoint(created.session_id, "undone")
                raise Refused  # the savepoint rolls back; the outer transaction commits
    found = await repo.get_session(created.session_id)
    assert found is not None
    assert (found.version, found.context, found.checkpoint_count) == (2, {"v": 2}, 1)


async def test_a_rolled_back_transaction_still_invalidates_nothing(
    db: Backend, redis_client: Redis, namespace: str, make_cache: MakeCache
) -> None:
    cache = await make_cache(redis_client, namespace)
    repo = SessionRepository(db.factory, cache=cache)
    created = await repo.create_session("planner")
    await repo.get_session(created.session_id)
    await cache.drain()  # the miss stores after returning
    with contextlib.suppress(Refused):
        async with db.factory() as s, s.begin():
            await repo.bind(s).add_checkpoint(created.session_id, "undone")
            raise Refused
    assert cache.stats.invalidations == 0
    hits = cache.stats.hits + cache.stats.near_hits
    found = await repo.get_session(created.session_id)
    assert found is not None and found.checkpoint_count == 1
    assert cache.stats.hits + cache.stats.near_hits == hits + 1  # still cached: nothing changed


async def test_a_read_after_another_processs_write_never_joins_an_older_load(
    redis_client: Redis, redis_url: str, namespace: str
) -> None:
    here = RedisCache(redis_client, namespace=namespace)
    other_client = Redis.from_url(redis_url)
    try:
        there = RedisCache(other_client, namespace=namespace)  # another process's cache
        source = Source(a="v1")
        held = source.hold = asyncio.Event()
        first = asyncio.create_task(fetch(here, source, "a"))
        await source.started.wait()  # its load has read v1 and is held there
        source.rows["a"] = Widget(widget_id="a", name="v2")  # the other process writes...
        await there.invalidate(Widget, ["a"])  # ...and its write is acknowledged
        source.hold = None
        second = asyncio.create_task(fetch(here, source, "a"))  # begins after the ack
        await asyncio.sleep(0)  # one turn of the loop: it finds the load in flight
        held.set()
        # The first load read before the write: fine for its own caller, which began before
        # the write, but not for the second.
        assert await first == Widget(widget_id="a", name="v1")
        assert await second == Widget(widget_id="a", name="v2")
        assert await fetch(there, source, "a") == Widget(widget_id="a", name="v2")
    finally:
        await other_client.aclose()


async def test_callers_that_join_before_the_load_reads_share_it(
    redis_client: Redis, namespace: str, make_cache: MakeCache
) -> None:
    cache = await make_cache(redis_client, namespace)
    source = Source(a="v1")
    found = await asyncio.gather(*(fetch(cache, source, "a") for _ in range(20)))
    assert found == [Widget(widget_id="a", name="v1")] * 20
    assert source.loads == 1


@pytest.fixture
def frozen_redis(servers_dir: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(servers_dir / "coherence-redis")
    except ServerUnavailable as exc:
        unavailable(f"Redis: {exc}")
    with server:
        yield server


@pytest.fixture
async def two_processes(
    frozen_redis: RedisServer, db: Backend, namespace: str
) -> AsyncIterator[tuple[SessionRepository, SessionRepository]]:
    writer_client = Redis.from_url(frozen_redis.url)
    reader_client = Redis.from_url(frozen_redis.url)
    writer = SessionRepository(
        db.factory, cache=RedisCache(writer_client, namespace=namespace, timeout=SHORT)
    )
    reader = SessionRepository(db.factory, cache=RedisCache(reader_client, namespace=namespace))
    yield writer, reader
    await writer_client.aclose()
    await reader_client.aclose()


async def test_an_invalidation_lost_while_redis_was_frozen_is_repaired_when_it_answers(
    two_processes: tuple[SessionRepository, SessionRepository], frozen_redis: RedisServer
) -> None:
    writer, reader = two_processes
    assert isinstance(writer.cache, RedisCache)
    created = await writer.create_session("planner")
    assert (await reader.get_session(created.session_id)) is not None  # cached at version 1
    frozen_redis.pause()
    try:
        updated = await writer.add_checkpoint(created.session_id, "while-frozen")
        assert updated.seq == 2  # acknowledged; its invalidation never reached Redis
    finally:
        frozen_redis.resume()
        resumed = time.monotonic()
    # The writer makes no further call; its background repair sets a new epoch on its own.
    repairing = writer.cache._repairing
    assert repairing is not None
    await repairing
    print(f"\nnew epoch set {1000 * (time.monotonic() - resumed):.0f} ms after Redis resumed")
    assert writer.cache.stats.epoch_bumps >= 1
    found = await reader.get_session(created.session_id)
    assert found is not None and found.checkpoint_count == 2
