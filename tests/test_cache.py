"""RedisCache on a real Redis: coherence with the database, unusable values, single flight,
failure tolerance (a paused, killed or absent server) and the README's host example.

The repository suite (tests/test_repository.py etc.) runs with this cache as well, through the
``repo`` fixture; here are the properties that suite cannot see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from sqlalchemy import String, text, update
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session_store import (
    ModelCache,
    RedisCache,
    SessionRepository,
    read_through,
)
from agent_session_store._circuit import CircuitBreaker, Permit
from agent_session_store.redis_cache import _keys
from tests.conftest import CACHE_SERVERS, Backend, FakeClock, cache_server_url, unavailable
from tests.pausing import after_statement
from tests.servers import RedisServer, ServerUnavailable

GENEROUS = timedelta(seconds=2)  # for tests that count hits: a busy machine is not a failure
# For fault tests: small enough to pay several times, large enough that a busy machine never
# turns a healthy call into a failure (the default is 250 ms).
FAULT_LIMIT = timedelta(milliseconds=200)


class Widget(BaseModel):
    widget_id: str
    name: str


class Source:
    """A stand-in database for ``fetch``: counts loads and can hold them after reading."""

    def __init__(self, **rows: str) -> None:
        self.rows = {key: Widget(widget_id=key, name=name) for key, name in rows.items()}
        self.loads = 0
        self.cancelled = 0
        self.started = asyncio.Event()
        self.hold: asyncio.Event | None = None

    def loader(self, key: str) -> Callable[[], Awaitable[Widget | None]]:
        async def load() -> Widget | None:
            self.loads += 1
            row = self.rows.get(key)
            value = None if row is None else row.model_copy()  # read first...
            self.started.set()
            if self.hold is not None:
                try:
                    await self.hold.wait()  # ...then take a while to come back
                except asyncio.CancelledError:
                    self.cancelled += 1
                    raise
            return value

        return load


async def fetch(cache: RedisCache, source: Source, key: str) -> Widget | None:
    return await cache.fetch(Widget, key, source.loader(key), id_field="widget_id")


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def redis_url(cache_server: str, request: pytest.FixtureRequest) -> str:
    """Every test here that touches a server runs on Redis and on Valkey."""
    return cache_server_url(cache_server, request)


@pytest.fixture
def cache(redis_client: Redis, namespace: str) -> RedisCache:
    return RedisCache(redis_client, namespace=namespace, timeout=GENEROUS)


@pytest.fixture
def cached_repo(db: Backend, clock: FakeClock, cache: RedisCache) -> SessionRepository:
    return SessionRepository(db.factory, clock=clock, cache=cache)


@pytest.fixture
def plain_repo(db: Backend, clock: FakeClock) -> SessionRepository:
    """The database's truth, read without any cache."""
    return SessionRepository(db.factory, clock=clock)


# -- values ------------------------------------------------------------------------------------


async def _stored(redis_client: Redis, namespace: str, key: str) -> bytes:
    """The raw stored value of widget ``key`` (``redis_client`` does not decode)."""
    raw = await redis_client.get(_keys(namespace, Widget, key).value)
    assert isinstance(raw, bytes)
    return raw


async def test_second_fetch_is_a_hit_and_does_not_load(cache: RedisCache) -> None:
    source = Source(a="first")
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
    await cache.drain()  # the miss stores after returning
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
    assert source.loads == 1
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.loads, stats.errors) == (1, 1, 1, 0)


async def test_none_is_returned_and_not_cached(cache: RedisCache) -> None:
    source = Source()
    assert await fetch(cache, source, "ghost") is None
    assert await fetch(cache, source, "ghost") is None
    assert source.loads == 2


async def test_load_errors_propagate_and_are_not_cache_errors(cache: RedisCache) -> None:
    async def broken() -> Widget | None:
        raise LookupError("database says no")

    with pytest.raises(LookupError, match="database says no"):
        await cache.fetch(Widget, "a", broken, id_field="widget_id")
    assert cache.stats.errors == 0


async def test_values_are_json_behind_a_format_header(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    await fetch(cache, Source(a="first"), "a")
    await cache.drain()
    header, _, body = (await _stored(redis_client, namespace, "a")).partition(b"\n")
    assert header.split(b" ")[0] == b"as1"
    assert Widget.model_validate_json(body) == Widget(widget_id="a", name="first")


async def test_values_expire_with_the_ttl_and_generations_outlive_them(
    redis_client: Redis, namespace: str
) -> None:
    cache = RedisCache(redis_client, namespace=namespace, ttl=timedelta(minutes=10))
    source = Source(a="first")
    await fetch(cache, source, "a")
    keys = _keys(namespace, Widget, "a")
    assert 0 < await redis_client.pttl(keys.value) <= 600_000
    await cache.invalidate(Widget, ["a"])
    await fetch(cache, source, "a")
    assert 600_000 < await redis_client.pttl(keys.gen) <= 1_200_000


@pytest.mark.parametrize("namespace", ["", "a:b", "{x}", "a b", "x" * 101])
def test_namespace_must_be_plain(redis_client: Redis, namespace: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        RedisCache(redis_client, namespace=namespace)


# -- unusable values are misses ----------------------------------------------------------------


def _other_format(raw: bytes) -> bytes:
    return b"as0" + raw[3:]


def _other_schema(raw: bytes) -> bytes:
    header, _, body = raw.partition(b"\n")
    fmt, epoch, _schema = header.split(b" ")
    return b" ".join((fmt, epoch, b"0" * 16)) + b"\n" + body


def _other_epoch(raw: bytes) -> bytes:
    header, _, body = raw.partition(b"\n")
    fmt, _epoch, schema = header.split(b" ")
    return b" ".join((fmt, b"f" * 16, schema)) + b"\n" + body


def _invalid_json(raw: bytes) -> bytes:
    return raw.partition(b"\n")[0] + b'\n{"widget_id": "a", "na'


def _wrong_shape(raw: bytes) -> bytes:
    return raw.partition(b"\n")[0] + b'\n{"widget_id": "a", "name": ["not", "a", "string"]}'


def _truncated_utf8(raw: bytes) -> bytes:
    return raw.partition(b"\n")[0] + b'\n{"widget_id": "a", "name": "\xc3'


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: b"\x80\x04\x95 pickle?",
        _other_format,
        _other_schema,
        _other_epoch,
        _invalid_json,
        _wrong_shape,
        _truncated_utf8,
    ],
    ids=["garbage", "format", "schema", "epoch", "json", "shape", "utf8"],
)
@pytest.mark.parametrize("decode_responses", [False, True])
async def test_unusable_value_is_a_miss_and_is_replaced(
    redis_url: str, namespace: str, damage: Callable[[bytes], bytes], decode_responses: bool
) -> None:
    client = Redis.from_url(redis_url, decode_responses=decode_responses)
    raw_client = Redis.from_url(redis_url)
    try:
        cache = RedisCache(client, namespace=namespace, timeout=GENEROUS)
        source = Source(a="first")
        await fetch(cache, source, "a")
        await cache.drain()
        good = await _stored(raw_client, namespace, "a")
        await raw_client.set(_keys(namespace, Widget, "a").value, damage(good))
        source.rows["a"] = Widget(widget_id="a", name="second")
        assert await fetch(cache, source, "a") == Widget(widget_id="a", name="second")
        assert (cache.stats.discarded, cache.stats.errors, source.loads) == (1, 0, 2)
        assert await fetch(cache, source, "a") == Widget(widget_id="a", name="second")
        assert cache.stats.hits == 1  # the damaged value was replaced
    finally:
        await client.aclose()
        await raw_client.aclose()


async def test_value_stored_under_another_id_is_never_served(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    source = Source(a="mine", b="someone else's")
    await fetch(cache, source, "b")
    await cache.drain()
    await redis_client.set(
        _keys(namespace, Widget, "a").value, await _stored(redis_client, namespace, "b")
    )
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="mine")
    assert cache.stats.discarded == 1


async def test_unusable_value_is_removed_when_the_key_no_longer_loads(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    key = _keys(namespace, Widget, "a").value
    await redis_client.set(key, b"garbage")
    assert await fetch(cache, Source(), "a") is None
    await cache.drain()  # the removal runs after the fetch returned
    assert await redis_client.exists(key) == 0


async def test_loaded_value_whose_id_is_not_the_key_is_not_stored(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    source = Source(a="first")
    source.rows["A"] = source.rows["a"]  # a host whose load normalizes ids
    assert await fetch(cache, source, "A") == Widget(widget_id="a", name="first")
    await cache.drain()
    assert await redis_client.exists(_keys(namespace, Widget, "A").value) == 0


async def test_namespaces_do_not_see_each_others_values(
    redis_client: Redis, namespace: str
) -> None:
    ours = RedisCache(redis_client, namespace=namespace, timeout=GENEROUS)
    theirs = RedisCache(redis_client, namespace=f"{namespace}-other", timeout=GENEROUS)
    await fetch(ours, Source(a="ours"), "a")
    await ours.drain()
    assert await fetch(theirs, Source(a="theirs"), "a") == Widget(widget_id="a", name="theirs")
    await theirs.invalidate(Widget, ["a"])
    assert await fetch(ours, Source(a="changed"), "a") == Widget(widget_id="a", name="ours")
    assert (ours.stats.hits, theirs.stats.hits) == (1, 0)


# -- coherence through the repository ----------------------------------------------------------


async def _write_update(repo: SessionRepository, sid: str, db: Backend, clock: FakeClock) -> None:
    session = await repo.get_session(sid)
    assert session is not None
    session.context["step"] = 2
    await repo.update_session(session)


async def _write_delete(repo: SessionRepository, sid: str, db: Backend, clock: FakeClock) -> None:
    assert await repo.delete_session(sid)


async def _write_checkpoint(
    repo: SessionRepository, sid: str, db: Backend, clock: FakeClock
) -> None:
    await repo.add_checkpoint(sid, "later", {"n": 1})


async def _write_heartbeat(
    repo: SessionRepository, sid: str, db: Backend, clock: FakeClock
) -> None:
    clock.advance(minutes=1)
    assert await repo.heartbeat(sid)


async def _write_sweep(repo: SessionRepository, sid: str, db: Backend, clock: FakeClock) -> None:
    clock.advance(hours=49)
    assert await repo.cleanup_stale_sessions() == 1


async def _write_bound(repo: SessionRepository, sid: str, db: Backend, clock: FakeClock) -> None:
    async with db.factory() as session, session.begin():
        bound = repo.bind(session)
        copy = await bound.get_session(sid)
        assert copy is not None
        copy.context["step"] = 3
        await bound.update_session(copy)
        assert await bound.add_checkpoint(sid, "bound")


@pytest.mark.parametrize(
    "write",
    [_write_update, _write_delete, _write_checkpoint, _write_heartbeat, _write_sweep, _write_bound],
    ids=["update", "delete", "add_checkpoint", "heartbeat", "cleanup", "bind_commit"],
)
async def test_read_after_any_write_returns_the_new_state(
    cached_repo: SessionRepository,
    plain_repo: SessionRepository,
    cache: RedisCache,
    db: Backend,
    clock: FakeClock,
    write: Callable[[SessionRepository, str, Backend, FakeClock], Awaitable[None]],
) -> None:
    sid = (await cached_repo.create_session("planner", "u1", {"step": 1})).session_id
    before = await cached_repo.get_session(sid)
    await cache.drain()  # the miss stores after returning
    assert await cached_repo.get_session(sid) == before
    assert cache.stats.hits == 1  # it is cached, so a missing invalidation would show
    await write(cached_repo, sid, db, clock)
    after = await cached_repo.get_session(sid)
    assert after == await plain_repo.get_session(sid)
    assert after != before


async def test_rolled_back_bound_write_invalidates_nothing(
    cached_repo: SessionRepository, cache: RedisCache, db: Backend
) -> None:
    sid = (await cached_repo.create_session("planner")).session_id
    before = await cached_repo.get_session(sid)
    assert before is not None
    await cache.drain()
    async with db.factory() as session:
        await session.begin()
        await cached_repo.bind(session).add_checkpoint(sid, "abandoned")
        await session.rollback()
    assert cache.stats.invalidations == 0
    assert await cached_repo.get_session(sid) == before
    assert cache.stats.hits == 1


async def test_bound_write_is_invalidated_when_the_caller_commits(
    cached_repo: SessionRepository, cache: RedisCache, db: Backend
) -> None:
    sid = (await cached_repo.create_session("planner")).session_id
    before = await cached_repo.get_session(sid)
    async with db.factory() as session, session.begin():
        await cached_repo.bind(session).add_checkpoint(sid, "pending")
        assert cache.stats.invalidations == 0
        assert await cached_repo.get_session(sid) == before  # others still see the committed row
    after = await cached_repo.get_session(sid)
    assert after is not None and after.checkpoints[-1].name == "pending"
    assert cache.stats.invalidations == 1


async def test_per_user_check_holds_for_cached_reads(
    cached_repo: SessionRepository, cache: RedisCache
) -> None:
    sid = (await cached_repo.create_session("planner", "alice")).session_id
    assert await cached_repo.get_session(sid, user_id="alice") is not None
    await cache.drain()
    assert await cached_repo.get_session(sid, user_id="mallory") is None
    assert await cached_repo.get_session(sid, user_id="") is None
    assert cache.stats.hits == 2  # the refusals were cached reads


# -- the stale-set race ------------------------------------------------------------------------


async def test_reader_that_loaded_before_a_write_cannot_store_its_copy(
    db: Backend, clock: FakeClock, redis_client: Redis, namespace: str
) -> None:
    # Two processes sharing Redis: a reader whose database read finished just before a
    # writer's commit, and which only gets round to storing it after the writer returned.
    reader_cache = RedisCache(redis_client, namespace=namespace, timeout=GENEROUS)
    writer_cache = RedisCache(redis_client, namespace=namespace, timeout=GENEROUS)
    reader = SessionRepository(db.factory, clock=clock, cache=reader_cache)
    writer = SessionRepository(db.factory, clock=clock, cache=writer_cache)
    sid = (await writer.create_session("planner", context={"v": 1})).session_id
    await reader.get_session(sid)  # the schema check is done; nothing is cached from it
    await writer.add_checkpoint(sid, "clears the cache")

    with after_statement(db.engine) as gate:
        gate.armed = True
        slow_read = asyncio.create_task(reader.get_session(sid))
        await gate.reached.wait()
        session = await writer.get_session(sid)
        assert session is not None
        session.context["v"] = 2
        await writer.update_session(session)
        gate.release.set()
        old = await slow_read
    assert old is not None and old.context == {"v": 1}  # the interleaving really happened
    await reader_cache.drain()  # the store runs after the read returned
    assert reader_cache.stats.stale_sets_rejected == 1
    for repo in (reader, writer):
        now = await repo.get_session(sid)
        assert now is not None and now.context == {"v": 2}


async def test_load_invalidated_while_in_flight_is_not_stored(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    source = Source(a="old")
    source.hold = asyncio.Event()
    pending = asyncio.create_task(fetch(cache, source, "a"))
    await source.started.wait()
    source.rows["a"] = Widget(widget_id="a", name="new")
    await cache.invalidate(Widget, ["a"])
    source.hold.set()
    assert await pending == Widget(widget_id="a", name="old")
    await cache.drain()
    assert cache.stats.stale_sets_rejected == 1
    assert await redis_client.exists(_keys(namespace, Widget, "a").value) == 0
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")


async def test_reads_racing_writes_never_go_back_behind_a_finished_write(
    db: Backend, clock: FakeClock, redis_client: Redis, namespace: str
) -> None:
    # A stress run beside the interleavings above: two processes' caches, one writer
    # alternating between them, and readers in both that check every read against the last
    # write that had returned when the read began.
    caches = [RedisCache(redis_client, namespace=namespace, timeout=GENEROUS) for _ in range(2)]
    repos = [SessionRepository(db.factory, clock=clock, cache=c) for c in caches]
    sid = (await repos[0].create_session("planner")).session_id
    finished = 1  # the version of the last write that returned
    writing = True

    async def writer() -> None:
        nonlocal finished, writing
        for i in range(40):
            added = await repos[i % 2].add_checkpoint(sid, f"step-{i}")
            assert added.seq is not None
            finished = added.seq  # each checkpoint bumps the version by one, from 1
        writing = False

    async def reader(repo: SessionRepository) -> int:
        reads = 0
        while writing:
            floor = finished
            session = await repo.get_session(sid)
            assert session is not None and session.version >= floor
            reads += 1
        return reads

    _, *reads = await asyncio.gather(writer(), *(reader(repos[i % 2]) for i in range(6)))
    assert min(reads) > 0
    # Whether the racing readers ever hit depends on timing; after the race it must.
    before = caches[0].stats.hits
    for _ in range(2):
        final = await repos[0].get_session(sid)
        assert final is not None and final.version == finished
        await caches[0].drain()  # a miss stores after returning
    assert caches[0].stats.hits > before  # the cache was in play, not bypassed


# -- single flight -----------------------------------------------------------------------------


async def test_concurrent_misses_share_one_load(cache: RedisCache) -> None:
    source = Source(a="first")
    source.hold = asyncio.Event()
    # Each caller joins the flight synchronously, before the first one's Redis reply arrives.
    callers = [asyncio.create_task(fetch(cache, source, "a")) for _ in range(50)]
    await source.started.wait()
    callers.append(asyncio.create_task(fetch(cache, source, "a")))  # a late one joins too
    source.hold.set()
    results = await asyncio.gather(*callers)
    assert source.loads == 1
    assert all(r == Widget(widget_id="a", name="first") for r in results)
    assert (cache.stats.misses, cache.stats.loads) == (51, 1)


async def test_callers_sharing_a_load_get_their_own_copies(cache: RedisCache) -> None:
    source = Source(a="first")
    source.hold = asyncio.Event()
    callers = [asyncio.create_task(fetch(cache, source, "a")) for _ in range(3)]
    await source.started.wait()
    source.hold.set()
    first, second, third = await asyncio.gather(*callers)
    assert first is not None and second is not None and third is not None
    first.name = "mutated by its caller"
    assert second.name == third.name == "first"
    assert second is not third


async def test_invalidate_detaches_the_load_in_flight(cache: RedisCache) -> None:
    source = Source(a="old")
    hold = source.hold = asyncio.Event()
    early = asyncio.create_task(fetch(cache, source, "a"))
    await source.started.wait()
    source.rows["a"] = Widget(widget_id="a", name="new")
    await cache.invalidate(Widget, ["a"])  # the write has committed and returned
    source.hold = None
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")
    assert source.loads == 2 and not early.done()
    hold.set()
    assert await early == Widget(widget_id="a", name="old")  # it overlapped the write
    await cache.drain()
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")
    assert cache.stats.hits == 1


async def test_a_cancelled_caller_leaves_the_shared_load_to_the_others(cache: RedisCache) -> None:
    source = Source(a="first")
    hold = source.hold = asyncio.Event()
    quitter = asyncio.create_task(fetch(cache, source, "a"))
    stayer = asyncio.create_task(fetch(cache, source, "a"))
    await source.started.wait()
    quitter.cancel()
    hold.set()
    assert await stayer == Widget(widget_id="a", name="first")
    assert quitter.cancelled() and source.loads == 1


async def test_the_last_caller_cancelling_cancels_the_load(cache: RedisCache) -> None:
    source = Source(a="first")
    source.hold = asyncio.Event()
    alone = asyncio.create_task(fetch(cache, source, "a"))
    await source.started.wait()
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    source.hold = None
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
    assert (source.loads, source.cancelled) == (2, 1)  # a new load; the old one was stopped


# -- failures: the circuit breaker alone --------------------------------------------------------


def test_circuit_probe_ended_without_a_verdict_lets_the_next_call_probe() -> None:
    clock = FakeMonotonic()
    breaker = CircuitBreaker(threshold=1, cooldown=5, monotonic=clock)
    assert breaker.record(Permit.CALL, ok=False) == "opened"
    clock.advance(5)
    assert breaker.allow() is Permit.PROBE
    assert breaker.allow() is None  # one probe at a time
    breaker.record(Permit.PROBE, ok=None)  # e.g. its caller was cancelled
    assert breaker.allow() is Permit.PROBE
    assert breaker.record(Permit.PROBE, ok=True) == "closed"
    assert breaker.state == "closed"


def test_circuit_is_closed_only_by_its_probe() -> None:
    clock = FakeMonotonic()
    breaker = CircuitBreaker(threshold=2, cooldown=5, monotonic=clock)
    early = breaker.allow()
    assert early is Permit.CALL
    breaker.record(Permit.CALL, ok=False)
    assert breaker.record(Permit.CALL, ok=False) == "opened"
    assert breaker.record(early, ok=True) is None  # began before the circuit opened
    assert breaker.state == "open" and breaker.allow() is None


# -- failures: a paused, killed or absent Redis ------------------------------------------------


@pytest.fixture
def own_redis(cache_server: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A private server this test may pause or kill without disturbing the shared one."""
    try:
        server = CACHE_SERVERS[cache_server].start(tmp_path / cache_server)
    except ServerUnavailable as exc:
        unavailable(f"{cache_server}: {exc}")
    with server:
        yield server


@pytest.fixture
async def own_client(own_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def fragile_cache(own_client: Redis, namespace: str, monotonic: FakeMonotonic) -> RedisCache:
    """3 failures open the circuit for 5 s of fake time."""
    return RedisCache(own_client, namespace=namespace, timeout=FAULT_LIMIT, monotonic=monotonic)


async def test_paused_redis_costs_one_time_limit_then_reads_the_database(
    db: Backend, clock: FakeClock, own_redis: RedisServer, fragile_cache: RedisCache
) -> None:
    repo = SessionRepository(db.factory, clock=clock, cache=fragile_cache)
    sid = (await repo.create_session("planner", context={"v": 1})).session_id
    await repo.get_session(sid)
    await fragile_cache.drain()  # stored before the pause
    errors = fragile_cache.stats.errors
    own_redis.pause()
    try:
        started = time.monotonic()
        found = await repo.get_session(sid)
        elapsed = time.monotonic() - started
    finally:
        own_redis.resume()
    assert found is not None and found.context == {"v": 1}
    assert elapsed < 2  # a hang guard: the time limit is 0.2 s
    assert fragile_cache.stats.errors == errors + 1


async def test_refused_connections_never_fail_reads_or_writes(
    db: Backend, clock: FakeClock, own_redis: RedisServer, fragile_cache: RedisCache
) -> None:
    own_redis.kill()
    repo = SessionRepository(db.factory, clock=clock, cache=fragile_cache)
    created = await repo.create_session("planner")
    assert await repo.add_checkpoint(created.session_id, "next")
    found = await repo.get_session(created.session_id)
    assert found is not None and found.checkpoint_count == 2
    assert fragile_cache.stats.errors >= 1


async def test_repeated_failures_open_the_circuit_and_a_probe_closes_it(
    own_redis: RedisServer, fragile_cache: RedisCache, monotonic: FakeMonotonic
) -> None:
    source = Source(a="first")
    own_redis.pause()
    try:
        for _ in range(3):
            assert await fetch(fragile_cache, source, "a") is not None
        assert (fragile_cache.stats.errors, fragile_cache.stats.circuit) == (3, "open")
        started = time.monotonic()
        assert await fetch(fragile_cache, source, "a") is not None
        assert time.monotonic() - started < 0.2  # a hang guard: Redis is not even asked
        assert (fragile_cache.stats.errors, fragile_cache.stats.circuit_open) == (3, 1)
        monotonic.advance(5)  # the cooldown is over: one probe, which fails
        assert await fetch(fragile_cache, source, "a") is not None
        assert (fragile_cache.stats.errors, fragile_cache.stats.circuit) == (4, "open")
    finally:
        own_redis.resume()
    monotonic.advance(4.9)
    await fetch(fragile_cache, source, "a")
    assert fragile_cache.stats.circuit == "open"
    monotonic.advance(0.1)
    await fetch(fragile_cache, source, "a")  # the probe succeeds and stores
    await fragile_cache.drain()  # (after returning, on a connection opened anew)
    assert await fetch(fragile_cache, source, "a") is not None
    recovered = fragile_cache.stats
    assert (recovered.circuit, recovered.hits, source.loads) == ("closed", 1, 7)


async def _trip(cache: RedisCache, server: RedisServer) -> None:
    source = Source()
    server.pause()
    try:
        while cache.stats.circuit != "open":
            await fetch(cache, source, "any")
    finally:
        server.resume()


async def test_write_while_the_circuit_is_open_is_not_served_stale_afterwards(
    db: Backend,
    clock: FakeClock,
    own_redis: RedisServer,
    fragile_cache: RedisCache,
    monotonic: FakeMonotonic,
) -> None:
    repo = SessionRepository(db.factory, clock=clock, cache=fragile_cache)
    sid = (await repo.create_session("planner", context={"v": 1})).session_id
    session = await repo.get_session(sid)
    assert session is not None
    await fragile_cache.drain()  # stored before the circuit opens
    await _trip(fragile_cache, own_redis)  # Redis is back, but the circuit is open
    session.context["v"] = 2
    await repo.update_session(session)  # its invalidation never reaches Redis
    monotonic.advance(5)
    found = await repo.get_session(sid)
    assert found is not None and found.context == {"v": 2}
    assert fragile_cache.stats.epoch_bumps == 1 and fragile_cache.stats.discarded == 1


async def test_write_during_a_pause_is_not_served_stale_after_resume(
    db: Backend, clock: FakeClock, own_redis: RedisServer, fragile_cache: RedisCache
) -> None:
    repo = SessionRepository(db.factory, clock=clock, cache=fragile_cache)
    sid = (await repo.create_session("planner", context={"v": 1})).session_id
    session = await repo.get_session(sid)
    assert session is not None
    session.context["v"] = 2
    own_redis.pause()
    try:
        started = time.monotonic()
        await repo.update_session(session)
        assert time.monotonic() - started < 2  # a hang guard: the time limit is 0.2 s
    finally:
        own_redis.resume()
    found = await repo.get_session(sid)
    assert found is not None and found.context == {"v": 2}
    assert fragile_cache.stats.epoch_bumps == 1


async def _snapshot(client: Redis, namespace: str) -> list[tuple[bytes, bytes]]:
    """Every key of ``namespace``, DUMPed (what a snapshot or a replica would bring back)."""
    snapshot = []
    async for key in client.scan_iter(match=f"{{{namespace}*"):
        dumped = await client.dump(key)
        assert isinstance(key, bytes) and isinstance(dumped, bytes)
        snapshot.append((key, dumped))
    return snapshot


async def test_write_while_redis_was_down_is_not_served_stale_after_it_returns_with_old_data(
    db: Backend, clock: FakeClock, own_redis: RedisServer, own_client: Redis, namespace: str
) -> None:
    # Two processes; Redis dies, one of them writes, and Redis comes back with its old data
    # (a snapshot, a replica): the writer's next cache call sets a new epoch for everyone.
    writer_cache = RedisCache(own_client, namespace=namespace, timeout=FAULT_LIMIT)
    other_client = Redis.from_url(own_redis.url)
    try:
        other_cache = RedisCache(other_client, namespace=namespace, timeout=FAULT_LIMIT)
        writer = SessionRepository(db.factory, clock=clock, cache=writer_cache)
        other = SessionRepository(db.factory, clock=clock, cache=other_cache)
        sid = (await writer.create_session("planner", context={"v": 1})).session_id
        session = await writer.get_session(sid)
        assert session is not None
        await writer_cache.drain()
        snapshot = await _snapshot(own_client, namespace)
        assert any(key.endswith(b":val") for key, _ in snapshot)
        own_redis.kill()
        session.context["v"] = 2
        await writer.update_session(session)
        # Back with its old data at once, as from a snapshot: restored without giving the
        # event loop a turn, so the writer's background repair cannot run in between.
        own_redis.restart()
        with SyncRedis.from_url(own_redis.url) as sync_client:
            for key, dumped in snapshot:
                sync_client.restore(key, 0, dumped, replace=True)
        for repo in (writer, other):
            found = await repo.get_session(sid)
            assert found is not None and found.context == {"v": 2}
        assert writer_cache.stats.epoch_bumps == 1
    finally:
        await other_client.aclose()


async def test_warnings_are_rate_limited_to_one_per_cooldown(
    own_redis: RedisServer,
    fragile_cache: RedisCache,
    monotonic: FakeMonotonic,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent_session_store.redis_cache")
    source = Source(a="first")
    own_redis.kill()
    for _ in range(3):
        for _ in range(5):
            await fetch(fragile_cache, source, "a")
        monotonic.advance(5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, [r.getMessage() for r in warnings]
    assert "circuit is open" in warnings[-1].getMessage()


async def test_log_lines_never_show_the_redis_password(
    namespace: str, caplog: pytest.LogCaptureFixture, own_redis: RedisServer
) -> None:
    caplog.set_level(logging.DEBUG)
    own_redis.kill()
    client = Redis.from_url(f"redis://:hunter2-secret@127.0.0.1:{own_redis.port}/0")
    try:
        cache = RedisCache(client, namespace=namespace)
        await fetch(cache, Source(a="first"), "a")
        await cache.invalidate(Widget, ["a"])
    finally:
        await client.aclose()
    assert cache.stats.errors == 2
    assert caplog.records and "hunter2" not in caplog.text


async def test_invalidate_never_raises_when_redis_is_down(
    own_redis: RedisServer, fragile_cache: RedisCache
) -> None:
    own_redis.kill()
    for _ in range(5):  # failing, then skipped by the open circuit
        await fragile_cache.invalidate(Widget, ["a", "b"])
    assert fragile_cache.stats.errors == 3 and fragile_cache.stats.circuit_open == 2


# -- the README's host example -----------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class WidgetRow(Base):
    __tablename__ = "widgets"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str]


class WidgetRepository:
    """A host application's own repository, cached with ``read_through`` and ``RedisCache``."""

    def __init__(
        self, factory: async_sessionmaker[AsyncSession], cache: ModelCache | None = None
    ) -> None:
        self.factory = factory
        self.cache = cache  # read_through looks here (cache_attr="cache")

    @read_through(Widget, id_field="widget_id")
    async def get_widget(self, widget_id: str) -> Widget | None:
        async with self.factory() as db:
            row = await db.get(WidgetRow, widget_id)
        return None if row is None else Widget(widget_id=row.id, name=row.name)

    async def rename(self, widget_id: str, name: str) -> None:
        async with self.factory() as db, db.begin():
            await db.execute(update(WidgetRow).where(WidgetRow.id == widget_id).values(name=name))
        if self.cache is not None:  # after the commit, before returning
            await self.cache.invalidate(Widget, [widget_id])


async def test_readme_read_through_example(
    tmp_path: Path, redis_client: Redis, namespace: str
) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'host.db'}")
    try:
        async with engine.begin() as conn:  # the host's own schema (its migrations' business)
            await conn.execute(
                text("CREATE TABLE widgets (id VARCHAR(36) PRIMARY KEY, name VARCHAR NOT NULL)")
            )
        factory = async_sessionmaker(engine, expire_on_commit=False)
        async with factory() as db, db.begin():
            db.add(WidgetRow(id="w1", name="sprocket"))

        cache = RedisCache(redis_client, namespace=namespace, timeout=GENEROUS)
        widgets = WidgetRepository(factory, cache)
        assert await widgets.get_widget("w1") == Widget(widget_id="w1", name="sprocket")
        await cache.drain()  # the miss stores after returning
        assert await widgets.get_widget("w1") == Widget(widget_id="w1", name="sprocket")
        assert (cache.stats.misses, cache.stats.hits) == (1, 1)
        await widgets.rename("w1", "gear")
        assert await widgets.get_widget("w1") == Widget(widget_id="w1", name="gear")
        assert await widgets.get_widget("nope") is None
    finally:
        await engine.dispose()
