"""RedisCache on a real three-node Redis Cluster: hash slots, scripts, cross-node pipelines.

A value and its generation share a hash tag (one slot, so one script sees both); the namespace
epoch lives in its own slot, usually on another node, and is read in the same pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as AsyncRedisCluster

from agent_session_store import RedisCache, SessionRepository
from agent_session_store.redis_cache import _epoch_key, _keys
from tests.conftest import Backend, FakeClock
from tests.test_cache import GENEROUS, Source, Widget, fetch


def _node_of(client: AsyncRedisCluster, key: str) -> tuple[str, int]:
    node = client.get_node_from_key(key)
    assert node is not None
    return node.host, int(node.port)


@pytest.fixture
def cluster_cache(redis_cluster_client: AsyncRedisCluster, namespace: str) -> RedisCache:
    return RedisCache(redis_cluster_client, namespace=namespace, timeout=GENEROUS)


async def test_cluster_value_and_generation_share_a_slot_and_hit(
    redis_cluster_client: AsyncRedisCluster, cluster_cache: RedisCache, namespace: str
) -> None:
    await redis_cluster_client.initialize()
    epoch_node = _node_of(redis_cluster_client, _epoch_key(namespace))
    # A key on another node than the epoch, so the read pipeline really spans two nodes.
    key = next(
        f"w{i}"
        for i in range(1000)
        if _node_of(redis_cluster_client, _keys(namespace, Widget, f"w{i}").value) != epoch_node
    )
    keys = _keys(namespace, Widget, key)
    assert redis_cluster_client.keyslot(keys.gen) == redis_cluster_client.keyslot(keys.value)
    source = Source(**{key: "first"})
    assert await fetch(cluster_cache, source, key) == Widget(widget_id=key, name="first")
    await cluster_cache.drain()  # the miss stores after returning
    assert await fetch(cluster_cache, source, key) == Widget(widget_id=key, name="first")
    assert (cluster_cache.stats.hits, cluster_cache.stats.errors, source.loads) == (1, 0, 1)


async def test_cluster_invalidates_keys_spread_over_every_node(
    redis_cluster_client: AsyncRedisCluster, cluster_cache: RedisCache, namespace: str
) -> None:
    names = [f"w{i}" for i in range(30)]
    source = Source(**dict.fromkeys(names, "old"))
    for name in names:
        await fetch(cluster_cache, source, name)
    nodes = {_node_of(redis_cluster_client, _keys(namespace, Widget, n).value) for n in names}
    assert len(nodes) == 3
    for name in names:
        source.rows[name] = Widget(widget_id=name, name="new")
    await cluster_cache.invalidate(Widget, names)
    for name in names:
        assert await fetch(cluster_cache, source, name) == Widget(widget_id=name, name="new")
    stats = cluster_cache.stats
    assert (stats.invalidations, stats.errors, source.loads) == (30, 0, 60)


async def test_cluster_rejects_a_stale_set(cluster_cache: RedisCache) -> None:
    source = Source(a="old")
    source.hold = asyncio.Event()
    pending = asyncio.create_task(fetch(cluster_cache, source, "a"))
    await source.started.wait()
    source.rows["a"] = Widget(widget_id="a", name="new")
    await cluster_cache.invalidate(Widget, ["a"])
    source.hold.set()
    assert await pending == Widget(widget_id="a", name="old")
    await cluster_cache.drain()  # the store runs after the fetch returned
    assert cluster_cache.stats.stale_sets_rejected == 1
    assert await fetch(cluster_cache, source, "a") == Widget(widget_id="a", name="new")


async def test_cluster_repository_reads_follow_writes(
    db: Backend, clock: FakeClock, cluster_cache: RedisCache
) -> None:
    repo = SessionRepository(db.factory, clock=clock, cache=cluster_cache)
    sid = (await repo.create_session("planner", "alice", {"v": 1})).session_id
    session = await repo.get_session(sid)
    assert session is not None and await repo.get_session(sid, user_id="bob") is None
    session.context["v"] = 2
    await repo.update_session(session)
    await repo.add_checkpoint(sid, "next")
    found = await repo.get_session(sid)
    assert found is not None and found.context == {"v": 2} and found.checkpoint_count == 2
    assert await repo.delete_session(sid)
    assert await repo.get_session(sid) is None
    assert cluster_cache.stats.errors == 0 and cluster_cache.stats.hits >= 1


@pytest.fixture
async def cluster_admins(redis_cluster_client: AsyncRedisCluster) -> AsyncIterator[list[Redis]]:
    """One plain connection to each primary, for CLIENT PAUSE / UNPAUSE."""
    await redis_cluster_client.initialize()
    admins = [Redis(host=n.host, port=int(n.port)) for n in redis_cluster_client.get_primaries()]
    yield admins
    for admin in admins:
        await admin.client_unpause()
        await admin.aclose()


async def test_cluster_lost_invalidation_is_caught_by_a_new_epoch(
    db: Backend,
    clock: FakeClock,
    redis_cluster_client: AsyncRedisCluster,
    namespace: str,
    cluster_admins: list[Redis],
) -> None:
    # Writes are held on every node long enough for the invalidation to give up; its commands
    # are dropped with its connection, so the old value is still there once writes resume.
    cache = RedisCache(redis_cluster_client, namespace=namespace, timeout=timedelta(seconds=0.2))
    repo = SessionRepository(db.factory, clock=clock, cache=cache)
    sid = (await repo.create_session("planner", context={"v": 1})).session_id
    session = await repo.get_session(sid)
    assert session is not None
    await cache.drain()  # stored before the writes are held
    session.context["v"] = 2
    for admin in cluster_admins:
        await admin.client_pause(30_000, all=False)  # writes only
    await repo.update_session(session)
    for admin in cluster_admins:
        await admin.client_unpause()
    assert await redis_cluster_client.exists(_keys(namespace, type(session), sid).value) == 1
    found = await repo.get_session(sid)
    assert found is not None and found.context == {"v": 2}
    assert (cache.stats.errors, cache.stats.epoch_bumps, cache.stats.discarded) == (1, 1, 1)


async def test_cluster_signed_values_hit_and_altered_ones_are_rejected(
    redis_cluster_client: AsyncRedisCluster, namespace: str
) -> None:
    cache = RedisCache(redis_cluster_client, namespace=namespace, timeout=GENEROUS,
                       signing_keys=[bytes(range(32))])  # fmt: skip
    names = [f"w{i}" for i in range(12)]  # spread over the three nodes
    source = Source(**dict.fromkeys(names, "first"))
    for name in names:
        await fetch(cache, source, name)
    await cache.drain()
    for name in names:
        assert await fetch(cache, source, name) == Widget(widget_id=name, name="first")
    assert (cache.stats.hits, cache.stats.rejected, source.loads) == (12, 0, 12)
    for name in names:
        value_key = _keys(namespace, Widget, name).value
        raw = await redis_cluster_client.get(value_key)
        assert isinstance(raw, bytes) and raw.startswith(b"as1s ")
        await redis_cluster_client.set(value_key, raw.replace(b'"first"', b'"forged"'))
        source.rows[name] = Widget(widget_id=name, name="truth")
    for name in names:
        assert await fetch(cache, source, name) == Widget(widget_id=name, name="truth")
    assert (cache.stats.hits, cache.stats.rejected, source.loads) == (12, 12, 24)


async def test_cluster_near_cache_hears_another_processs_invalidation(
    redis_cluster_client: AsyncRedisCluster, redis_cluster_url: str, namespace: str
) -> None:
    # The writer publishes through whichever node its client picks; classic pub/sub reaches the
    # near cache's subscription on another node of the cluster.
    near = RedisCache(redis_cluster_client, namespace=namespace, timeout=GENEROUS,
                      near_cache_entries=10, near_cache_max_age=timedelta(hours=1))  # fmt: skip
    writer_client = AsyncRedisCluster.from_url(redis_cluster_url)
    try:
        listener = near._listener
        assert listener is not None
        listener.start()
        await listener.confirmed.wait()
        source = Source(a="old")
        await fetch(near, source, "a")
        assert await fetch(near, source, "a") == Widget(widget_id="a", name="old")
        assert near.stats.near_hits == 1
        source.rows["a"] = Widget(widget_id="a", name="new")
        heard = listener.heard
        await RedisCache(writer_client, namespace=namespace).invalidate(Widget, ["a"])
        while listener.heard == heard:
            listener.changed.clear()
            if listener.heard == heard:
                await listener.changed.wait()
        assert await fetch(near, source, "a") == Widget(widget_id="a", name="new")
        assert near.stats.near_hits == 1
    finally:
        await near.aclose()
        await writer_client.aclose()
