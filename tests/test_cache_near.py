"""The near cache (``RedisCache(near_cache_entries=...)``): its promises, each pinned.

- In the process, strict: a write through this process is never followed by an older near read,
  even from a read that was in flight during the write.
- Across processes: invalidations arrive through Redis pub/sub (Redis and Valkey here; a cluster
  in test_cache_cluster.py); an entry is never served ``near_cache_max_age`` after the Redis read
  that produced it, whatever the channel does; a lost channel empties the near cache.
- Callers get copies.

Waiting is on events the subscription sets (``Listener.changed``), time is a fake monotonic
clock: no sleeps.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, PrivateAttr
from redis.asyncio import Redis

from agent_session_store import AgentSession, RedisCache, SessionCheckpoint
from agent_session_store._near_cache import Began, Listener, NearCache, copy_value
from agent_session_store.redis_cache import _keys
from tests.conftest import CACHE_SERVERS, cache_server_url, unavailable
from tests.servers import RedisServer, ServerUnavailable
from tests.test_cache import FAULT_LIMIT, GENEROUS, FakeMonotonic, Source, Widget, fetch

MAX_AGE = timedelta(seconds=1)


@pytest.fixture
def redis_url(cache_server: str, request: pytest.FixtureRequest) -> str:
    """Every test here that touches a server runs on Redis and on Valkey."""
    return cache_server_url(cache_server, request)


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def own_redis(cache_server: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A private server this test may pause or restart without disturbing the shared one."""
    try:
        server = CACHE_SERVERS[cache_server].start(tmp_path / cache_server)
    except ServerUnavailable as exc:
        unavailable(f"{cache_server}: {exc}")
    with server:
        yield server


def near_cache(client: Redis, namespace: str, monotonic: FakeMonotonic, **kw: object) -> RedisCache:
    options: dict[str, object] = {"timeout": GENEROUS, "near_cache_entries": 100}
    options.update(kw)
    return RedisCache(
        client,
        namespace=namespace,
        monotonic=monotonic,
        near_cache_max_age=MAX_AGE,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def near(
    redis_client: Redis, namespace: str, monotonic: FakeMonotonic
) -> AsyncIterator[RedisCache]:
    cache = near_cache(redis_client, namespace, monotonic)
    yield cache
    await cache.aclose()  # the cache's own subscription, before the client closes


@pytest.fixture
async def other_process(redis_url: str, namespace: str) -> AsyncIterator[RedisCache]:
    """Another process's cache of the same namespace, without a near cache."""
    client = Redis.from_url(redis_url)
    yield RedisCache(client, namespace=namespace, timeout=GENEROUS)
    await client.aclose()


async def subscribed(cache: RedisCache) -> Listener:
    """The cache's subscription, once Redis has confirmed it."""
    listener = cache._listener
    assert listener is not None
    listener.start()
    await listener.confirmed.wait()
    return listener


async def until(listener: Listener, done: Callable[[], bool]) -> None:
    while not done():
        listener.changed.clear()
        if done():
            return
        await listener.changed.wait()


async def invalidate_unannounced(client: Redis, namespace: str, key: str) -> None:
    """What a writer whose message never arrives leaves in Redis: a new generation, no value."""
    keys = _keys(namespace, Widget, key)
    await client.set(keys.gen, secrets.token_hex(8))
    await client.delete(keys.value)


# -- the LRU itself (a unit: no server) ---------------------------------------------------------


def test_the_near_cache_is_off_by_default(redis_client: Redis) -> None:
    cache = RedisCache(redis_client)
    assert cache._near is None and cache._listener is None and cache.stats.near_hits == 0


@pytest.mark.parametrize(
    ("entries", "max_age", "error"),
    [(-1, MAX_AGE, ValueError), (10, timedelta(0), ValueError), (True, MAX_AGE, TypeError)],
)
def test_bad_near_cache_options_are_refused(
    redis_client: Redis, entries: int, max_age: timedelta, error: type[Exception]
) -> None:
    with pytest.raises(error, match="near_cache"):
        RedisCache(redis_client, near_cache_entries=entries, near_cache_max_age=max_age)


def _live(monotonic: FakeMonotonic, entries: int = 2) -> NearCache:
    near = NearCache(entries, 1.0, monotonic)
    near.live = True
    return near


def test_least_recently_used_entries_go_first(monotonic: FakeMonotonic) -> None:
    near = _live(monotonic)
    for key in ("a", "b"):
        near.put("W", key, Widget(widget_id=key, name=key), near.begin())
    assert near.get("W", "a") is not None  # "b" is now the least recently used
    near.put("W", "c", Widget(widget_id="c", name="c"), near.begin())
    assert (near.get("W", "b"), len(near)) == (None, 2)


def test_a_read_that_began_before_a_drop_or_a_clear_does_not_fill(
    monotonic: FakeMonotonic,
) -> None:
    near = _live(monotonic)
    value = Widget(widget_id="a", name="old")
    began = near.begin()
    near.drop("W", ["a"])
    assert not near.put("W", "a", value, began)
    assert near.put("W", "b", Widget(widget_id="b", name="b"), began)  # another key: fine
    began = near.begin()
    near.clear()
    assert not near.put("W", "b", value, began)
    assert near.put("W", "a", value, near.begin())


def test_fences_are_traded_for_a_floor_rather_than_growing_without_bound(
    monotonic: FakeMonotonic,
) -> None:
    near = _live(monotonic, entries=1)
    began = near.begin()
    for i in range(2000):
        near.drop("W", [f"k{i}"])
    assert len(near._fences) <= 4 + 1024
    assert not near.put("W", "k0", Widget(widget_id="k0", name="old"), began)


def test_entries_are_never_served_or_filled_past_their_age_or_while_not_live(
    monotonic: FakeMonotonic,
) -> None:
    near = _live(monotonic)
    near.put("W", "a", Widget(widget_id="a", name="a"), near.begin())
    monotonic.advance(0.999)
    assert near.get("W", "a") is not None
    monotonic.advance(0.001)
    assert near.get("W", "a") is None
    assert not near.put("W", "a", Widget(widget_id="a", name="a"), Began(0, monotonic() - 1.0))
    near.put("W", "a", Widget(widget_id="a", name="a"), near.begin())
    near.live = False
    assert near.get("W", "a") is None
    assert not near.put("W", "b", Widget(widget_id="b", name="b"), near.begin())


def test_copies_share_nothing_mutable_with_the_cached_value() -> None:
    session = AgentSession(
        agent_type="planner",
        context={"plan": [{"step": 1}], "notes": "n"},
        checkpoints=[SessionCheckpoint(name="a", data={"hits": [1, 2]}, seq=1)],
        checkpoint_count=1,
        last_heartbeat=datetime.now(UTC),
    )
    copied = copy_value(session)
    assert copied == session and copied is not session
    copied.context["plan"][0]["step"] = 2
    copied.checkpoints[0].data["hits"].append(3)
    copied.checkpoints.append(SessionCheckpoint(name="b", data={}))
    assert session.context["plan"][0]["step"] == 1
    assert session.checkpoints[0].data["hits"] == [1, 2] and len(session.checkpoints) == 1
    assert copied.model_fields_set == session.model_fields_set

    class Odd(BaseModel):
        tags: set[str]

    odd = Odd(tags={"x"})
    assert copy_value(odd).tags is not odd.tags  # an unknown shape: deep-copied the general way


# -- against a server ---------------------------------------------------------------------------


async def test_a_near_hit_answers_without_redis_and_each_caller_gets_a_copy(
    near: RedisCache, redis_client: Redis, namespace: str
) -> None:
    await subscribed(near)
    source = Source(a="first")
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="first")
    await near.drain()
    await redis_client.delete(_keys(namespace, Widget, "a").value)  # Redis no longer has it
    one, two = await fetch(near, source, "a"), await fetch(near, source, "a")
    assert one == two == Widget(widget_id="a", name="first") and one is not two
    assert one is not None
    one.name = "mutated by its caller"
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="first")
    assert (near.stats.near_hits, near.stats.hits, source.loads) == (3, 0, 1)


async def test_a_write_through_this_process_is_never_followed_by_an_older_near_read(
    own_redis: RedisServer, namespace: str, monotonic: FakeMonotonic
) -> None:
    # Redis is frozen while the write's invalidation runs: no message can come back, so only
    # the near cache's own drop keeps the next read from serving the older copy.
    client = Redis.from_url(own_redis.url)
    cache = near_cache(client, namespace, monotonic, timeout=FAULT_LIMIT)
    try:
        await subscribed(cache)
        source = Source(a="old")
        await fetch(cache, source, "a")
        await cache.drain()
        assert await fetch(cache, source, "a") == Widget(widget_id="a", name="old")  # near hit
        own_redis.pause()
        try:
            source.rows["a"] = Widget(widget_id="a", name="new")
            await cache.invalidate(Widget, ["a"])  # the write has committed; Redis is frozen
            assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")
        finally:
            own_redis.resume()
        assert cache.stats.near_hits == 1
    finally:
        await cache.aclose()
        await client.aclose()


async def test_a_read_in_flight_during_a_write_here_does_not_fill_the_near_cache(
    near: RedisCache,
) -> None:
    await subscribed(near)
    source = Source(a="old")
    source.hold = asyncio.Event()
    early = asyncio.create_task(fetch(near, source, "a"))
    await source.started.wait()  # it has read "old" and is held
    source.rows["a"] = Widget(widget_id="a", name="new")
    await near.invalidate(Widget, ["a"])
    source.hold.set()
    assert await early == Widget(widget_id="a", name="old")  # it began before the write
    source.hold = None
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="new")
    assert near.stats.near_hits == 0


async def test_another_processs_write_reaches_the_near_cache_through_redis(
    near: RedisCache, other_process: RedisCache
) -> None:
    listener = await subscribed(near)
    source = Source(a="old")
    await fetch(near, source, "a")
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="old")  # a near hit
    source.rows["a"] = Widget(widget_id="a", name="new")
    heard = listener.heard
    await other_process.invalidate(Widget, ["a"])  # published by a cache without a near cache
    await until(listener, lambda: listener.heard > heard)
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="new")
    assert near.stats.near_hits == 1


async def test_an_entry_is_never_served_past_its_max_age_whatever_the_channel_does(
    near: RedisCache, redis_client: Redis, namespace: str, monotonic: FakeMonotonic
) -> None:
    await subscribed(near)
    source = Source(a="old")
    await fetch(near, source, "a")  # read at fake time t
    await near.drain()
    source.rows["a"] = Widget(widget_id="a", name="new")
    await invalidate_unannounced(redis_client, namespace, "a")  # its message never comes
    monotonic.advance(MAX_AGE.total_seconds() - 0.001)
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="old")  # within age
    monotonic.advance(0.001)
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="new")


async def test_a_lost_subscription_empties_the_near_cache_before_it_serves_again(
    near: RedisCache, redis_client: Redis, namespace: str
) -> None:
    listener = await subscribed(near)
    source = Source(a="old")
    await fetch(near, source, "a")
    await near.drain()
    source.rows["a"] = Widget(widget_id="a", name="new")
    await invalidate_unannounced(redis_client, namespace, "a")  # a message that was missed
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="old")
    losses = listener.losses
    await redis_client.client_kill_filter(_type="pubsub")  # the channel is lost
    await until(listener, lambda: listener.losses > losses)
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="new")
    # It subscribes again by itself, and serves again once Redis confirms it.
    await until(listener, listener.confirmed.is_set)
    await near.drain()
    await fetch(near, source, "a")
    hits = near.stats.near_hits
    assert await fetch(near, source, "a") == Widget(widget_id="a", name="new")
    assert near.stats.near_hits == hits + 1


async def test_a_redis_restart_empties_the_near_cache_and_it_resubscribes(
    own_redis: RedisServer, namespace: str, monotonic: FakeMonotonic
) -> None:
    client = Redis.from_url(own_redis.url)
    cache = near_cache(client, namespace, monotonic, timeout=FAULT_LIMIT)
    try:
        listener = await subscribed(cache)
        source = Source(a="old")
        await fetch(cache, source, "a")
        await cache.drain()
        losses = listener.losses
        own_redis.restart()  # empty, and every subscription gone with it
        await until(listener, lambda: listener.losses > losses)
        source.rows["a"] = Widget(widget_id="a", name="new")  # written while it was down
        assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")
        await until(listener, listener.confirmed.is_set)
        await cache.drain()
        await fetch(cache, source, "a")
        assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")
        assert cache.stats.near_hits >= 1
    finally:
        await cache.aclose()
        await client.aclose()


async def test_a_frozen_redis_does_not_stall_near_hits_nor_extend_their_age(
    own_redis: RedisServer, namespace: str, monotonic: FakeMonotonic
) -> None:
    client = Redis.from_url(own_redis.url)
    cache = near_cache(client, namespace, monotonic, timeout=FAULT_LIMIT)
    try:
        await subscribed(cache)
        source = Source(a="old")
        await fetch(cache, source, "a")
        await cache.drain()
        own_redis.pause()
        try:
            source.rows["a"] = Widget(widget_id="a", name="new")  # its invalidation is lost
            assert await fetch(cache, source, "a") == Widget(widget_id="a", name="old")
            assert cache.stats.errors == 0  # answered in the process: Redis was not asked
            monotonic.advance(MAX_AGE.total_seconds())
            assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")
        finally:
            own_redis.resume()
    finally:
        await cache.aclose()
        await client.aclose()


async def test_signed_entries_work_with_the_near_cache(
    redis_client: Redis, namespace: str, monotonic: FakeMonotonic
) -> None:
    cache = near_cache(redis_client, namespace, monotonic, signing_keys=[secrets.token_bytes(32)])
    try:
        await subscribed(cache)
        source = Source(a="first")
        await fetch(cache, source, "a")
        await cache.drain()
        monotonic.advance(MAX_AGE.total_seconds())  # the near entry is too old: Redis answers
        assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
        assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
        stats = cache.stats
        assert (stats.hits, stats.near_hits, stats.rejected, source.loads) == (1, 1, 0, 1)
    finally:
        await cache.aclose()


async def test_aclose_stops_the_subscription_and_the_near_cache_serves_nothing_after(
    near: RedisCache, redis_client: Redis
) -> None:
    listener = await subscribed(near)
    source = Source(a="first")
    await fetch(near, source, "a")
    await near.aclose()
    assert not listener.confirmed.is_set()
    channels = await redis_client.pubsub_numsub(f"{near.namespace}:invalidations")
    assert channels[0][1] == 0
    await near.drain()
    await fetch(near, source, "a")
    assert near.stats.near_hits == 0


def test_copies_of_models_with_extra_and_private_attributes_share_nothing_mutable() -> None:
    class Loose(BaseModel):
        model_config = ConfigDict(extra="allow")
        _seen: list[int] = PrivateAttr(default_factory=list)

    loose = Loose.model_validate({"more": {"a": [1]}})
    loose._seen.append(1)
    copied = copy_value(loose)
    copied.more["a"].append(2)
    copied._seen.append(2)
    assert loose.more == {"a": [1]} and loose._seen == [1]
    assert copied.more == {"a": [1, 2]} and copied._seen == [1, 2]
