"""What the Redis cache costs and saves, each figure measured interleaved with its reference.

- ``get miss``: the first ``get_session`` through the cache (a miss, then stored) against the same
  read of other sessions by a repository without the cache;
- ``create``/``append``/``delete``: the repository with the cache (appending to and deleting
  sessions that are cached, as they are in an application that reads before it writes) against
  the same write without it;
- ``get hit``/``get hit <history>``: a cache hit against a raw redis-py GET of the very bytes the
  cache stored for that session plus ``AgentSession.model_validate_json`` of its JSON.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import AgentSession, ModelCache, SessionRepository, create_engine
from benchmarks import seed
from benchmarks.contenders import APPEND_DATA, expect
from benchmarks.timing import Op, Plan, measure

# figure -> (what is measured, what it is divided by)
PAIRS = {
    "get miss": ("cached miss", "uncached get"),
    "create": ("with cache", "without"),
    "append": ("with cache", "without"),
    "delete": ("with cache", "without"),
    "get hit": ("hit", "redis GET+decode"),
}


async def _value_key(redis: Redis, namespace: str, session_id: str) -> str:
    """The key under which the cache stores ``session_id`` (found, not rebuilt)."""
    async for key in redis.scan_iter(match=f"*{namespace}*{session_id}*", count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name.endswith(":val"):
            return name
    raise RuntimeError(f"the cache stored no value for {session_id}")


def _raw_get(redis: Redis, keys: list[str]) -> Op:
    async def get(item: int, worker: int) -> None:
        value = await redis.get(keys[item % len(keys)])
        if not isinstance(value, bytes):
            raise RuntimeError(f"redis lost {keys[item % len(keys)]}")
        # The stored layout is "<format> <epoch> <schema>\n<json>": the JSON is the model.
        AgentSession.model_validate_json(value.split(b"\n", 1)[1])

    return get


async def cache_figures(
    url: str, redis: Redis, cache: ModelCache, namespace: str, plan: Plan, history: int
) -> dict[str, dict[str, list[float]]]:
    """Rates of each figure of ``PAIRS`` (and ``get hit <history>``), by side."""
    engine = create_engine(url)
    maker = async_sessionmaker(engine, expire_on_commit=False)
    plain, cached = SessionRepository(maker), SessionRepository(maker, cache=cache)
    a: dict[int, str] = {}  # created without the cache, read (so cached) through it
    b: dict[int, str] = {}
    out: dict[str, dict[str, list[float]]] = {}

    async def timed(figure: str, ours: Op, reference: Op) -> None:
        mine, theirs = PAIRS.get(figure, PAIRS["get hit"])
        out[figure] = await measure({mine: ours, theirs: reference}, plan)

    async def create(repo: SessionRepository, into: dict[int, str], item: int) -> None:
        session = await repo.create_session("bench", user_id="bench-user", context=seed.CONTEXT)
        into[item] = session.session_id

    async def get(repo: SessionRepository, sid: str) -> None:
        expect(await repo.get_session(sid), "get_session")

    async def stored() -> None:
        """Wait for the stores misses leave running (``RedisCache.drain``), if any."""
        drain = getattr(cache, "drain", None)
        if drain is not None:
            await drain()

    try:
        await timed(
            "create",
            lambda i, w: create(cached, b, i),
            lambda i, w: create(plain, a, i),
        )
        await timed("get miss", lambda i, w: get(cached, a[i]), lambda i, w: get(plain, a[i]))
        await stored()
        keys = [await _value_key(redis, namespace, a[i]) for i in range(min(len(a), 100))]
        await timed("get hit", lambda i, w: get(cached, a[i]), _raw_get(redis, keys))
        [deep] = await seed.sessions_with_checkpoints(engine, 1, history)
        await get(cached, deep)
        await stored()
        deep_key = [await _value_key(redis, namespace, deep)]
        await timed(f"get hit {history}", lambda i, w: get(cached, deep), _raw_get(redis, deep_key))

        async def append(repo: SessionRepository, sid: str) -> Any:
            return await repo.add_checkpoint(sid, "step", APPEND_DATA)

        await timed("append", lambda i, w: append(cached, a[i]), lambda i, w: append(plain, b[i]))
        await timed(
            "delete",
            lambda i, w: cached.delete_session(a[i]),
            lambda i, w: plain.delete_session(b[i]),
        )
    finally:
        await engine.dispose()
    return out
