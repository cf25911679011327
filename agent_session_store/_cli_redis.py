"""The Redis side of ``agent-session-store``: the cache its writes invalidate, what ``stats`` shows.

A ``RedisCache`` counts hits and misses per process (``cache.stats``), so this command, a
process of its own, cannot show an application's hit rate; that comes from the applications
(``RedisCache.stats`` or the ``agent_session_store.cache.events`` metric). What it can show is
whether Redis answers, how fast, and the server's own counters.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from agent_session_store.redis_cache import RedisCache

TIMEOUT = timedelta(seconds=2)


def shown(url: str) -> str:
    """The Redis URL with its password hidden (``redis://:***@host:6379/0``)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "(unparseable Redis URL)"


def open_client(url: str) -> Redis:
    """A client for ``url``; raises ``ValueError`` for a URL redis-py does not accept."""
    seconds = TIMEOUT.total_seconds()
    client: Redis = Redis.from_url(url, socket_timeout=seconds, socket_connect_timeout=seconds)
    return client


def open_cache(client: Redis, namespace: str) -> RedisCache:
    """The cache the applications use, so that the command's writes invalidate their copies."""
    # A longer time limit than an application's: an operator waits gladly, a request does not.
    return RedisCache(client, namespace=namespace, timeout=TIMEOUT)


async def report(client: Redis, url: str, namespace: str) -> dict[str, Any]:
    """Reachability, round trip and the server's keyspace counters (for every key it holds)."""
    result: dict[str, Any] = {"url": shown(url), "namespace": namespace}
    started = time.perf_counter()
    try:
        await client.ping()
        result["round_trip_ms"] = round((time.perf_counter() - started) * 1000, 2)
        info = await client.info()
    except (RedisError, OSError, TimeoutError) as exc:
        result["reachable"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        return result
    result["reachable"] = True
    hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
    result["server"] = {
        "redis_version": info.get("redis_version"),
        "keyspace_hits": hits,
        "keyspace_misses": misses,
        "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
        "used_memory_human": info.get("used_memory_human"),
    }
    return result


def report_rows(data: dict[str, Any]) -> list[tuple[str, object]]:
    """The ``cache`` rows of ``stats``."""
    rows: list[tuple[str, object]] = [("cache", f"{data['url']} (namespace {data['namespace']!r})")]
    if not data["reachable"]:
        return [*rows, ("  unreachable", data["error"])]
    server = data["server"]
    ratio = server["hit_ratio"]
    rows += [
        ("  round trip", f"{data['round_trip_ms']} ms (Redis {server['redis_version']})"),
        ("  server hits", f"{server['keyspace_hits']}, misses {server['keyspace_misses']}"
         + (f" (hit ratio {ratio:.1%})" if ratio is not None else "")
         + ", for every key of this Redis"),
        ("  server memory", server["used_memory_human"]),
        ("  per application", "RedisCache.stats, or the agent_session_store.cache.events metric"),
    ]  # fmt: skip
    return rows
