"""RedisCache: the Redis backend of ``read_through``, coherent with the database and fail-safe.

The cache knows nothing of sessions: it stores "a pydantic model with an id", as JSON. It never
serves a copy older than a finished write, and a broken Redis never fails or stalls a caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar, cast

from pydantic import BaseModel, PydanticUserError
from redis.asyncio import Redis, RedisCluster
from redis.client import NEVER_DECODE
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from agent_session_store import telemetry
from agent_session_store._circuit import CircuitBreaker, Permit, State
from agent_session_store._near_cache import EVERYTHING, Began, Listener, NearCache, channel, message
from agent_session_store._settle import run_to_end
from agent_session_store._signing import Keyring

__all__ = ["CacheStats", "RedisCache"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# The first word of every stored value; a value with another one is a miss. Change it whenever
# the layout "<format> <epoch> <schema>\n<json>" changes.
_FORMAT = b"as1"
# The same, signed (with signing_keys): "<format> <key id> <epoch> <generation> <schema>
# <signature>\n<json>", the generation "-" when the key had none. See _signing.py.
_SIGNED_FORMAT = b"as1s"
_NO_GENERATION = b"-"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
# Our values are read as bytes even through a ``decode_responses=True`` client, so a truncated
# (non-UTF-8) value is a corrupt value, not a decoding error inside redis-py.
_RAW: dict[str, list[object]] = {NEVER_DECODE: []}
# What a broken, slow or unreachable Redis raises; anything else is a bug and propagates.
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
_PER_KEY = 0.0001  # seconds added to an invalidation's time limit for each key
# After a lost invalidation, a new epoch is tried this often: first, then at most (seconds).
_REPAIR_FIRST = 0.01
_REPAIR_MAX = 0.1

# KEYS: generation, value. ARGV: the generation read before loading ("" for none), the value,
# the ttl in ms. Stores only if no invalidation happened since the generation was read.
_STORE_SCRIPT = """
local gen = redis.call('GET', KEYS[1])
if (gen or '') ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: the epoch, then generation/value pairs. ARGV: the generation's expiry in ms, a new epoch
# ("" to keep it), then one new generation per pair (made by the caller: a script's random
# numbers repeat from call to call), then the invalidation channel and its message (near
# caches, _near_cache.py: "*" when the epoch changes). One round trip for a whole sweep batch,
# where a pipeline of two commands per key spends most of its time in the client. Standalone
# Redis only: a cluster refuses scripts whose keys span slots, and keeps the pipeline.
_FORGET_SCRIPT = """
local pairs = (#KEYS - 1) / 2
if ARGV[2] ~= '' then
    redis.call('SET', KEYS[1], ARGV[2])
end
for i = 1, pairs do
    redis.call('SET', KEYS[2 * i], ARGV[i + 2], 'PX', ARGV[1])
    redis.call('DEL', KEYS[2 * i + 1])
end
redis.call('PUBLISH', ARGV[pairs + 3], ARGV[2] ~= '' and '*' or ARGV[pairs + 4])
return 1
"""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of one ``RedisCache`` since it was created, read with ``cache.stats``.

    ``near_hits + hits + misses`` is the number of ``fetch`` calls; ``loads`` counts those that
    read the database themselves (the others joined a load already in flight for the same key).
    """

    hits: int = 0
    """Fetches answered with a cached value from Redis."""
    misses: int = 0
    """Fetches answered by a load: nothing usable cached, Redis failed, or the circuit was open."""
    loads: int = 0
    """Calls of ``load`` (the database reads)."""
    errors: int = 0
    """Redis operations that failed or ran out of time."""
    circuit_open: int = 0
    """Redis operations skipped because the circuit was open."""
    invalidations: int = 0
    """Keys invalidated in Redis."""
    stale_sets_rejected: int = 0
    """Loaded values not stored because the key was invalidated while they were loading."""
    discarded: int = 0
    """Cached values dropped as unusable: corrupt, another format or schema, wrong id, old epoch."""
    rejected: int = 0
    """With ``signing_keys``: cached values refused as not signed by this application, for this
    key and generation (unsigned, unknown key, altered, copied from elsewhere, replayed)."""
    epoch_bumps: int = 0
    """New namespace epochs set after invalidations that did not reach Redis."""
    circuit: State = "closed"
    """``"closed"`` (using Redis), ``"open"`` (skipping it) or ``"half-open"`` (probing)."""
    near_hits: int = 0
    """With ``near_cache_entries``: fetches answered by the near cache, without Redis."""


class _Keys(NamedTuple):
    gen: str
    value: str


def _keys(namespace: str, model: type[BaseModel], key: str) -> _Keys:
    # One hash tag for both, so that in a cluster they share a slot and one script sees both.
    # Namespace and model name hold no ':', '{' or '}', so distinct (model, key) never collide.
    tag = f"{{{namespace}:{model.__qualname__}:{key}}}"
    return _Keys(f"{tag}:gen", f"{tag}:val")


def _epoch_key(namespace: str) -> str:
    return f"{{{namespace}}}:epoch"


def _schema_fingerprint(model: type[BaseModel]) -> bytes:
    try:
        schema: object = model.model_json_schema()
    except PydanticUserError:  # a field type with no JSON schema: fall back to the annotations
        schema = {name: repr(field.annotation) for name, field in model.model_fields.items()}
    text = json.dumps(schema, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16].encode()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Unavailable(Exception):
    """Redis failed or the circuit is open: the caller goes to the database."""


class _Decoded(NamedTuple):
    value: BaseModel | None
    problem: str = ""  # why ``value`` is None
    rejected: bool = False  # failed verification (``rejected``), not just unusable (``discarded``)


class _Found(NamedTuple):
    value: BaseModel | None
    hit: bool  # from Redis, not loaded
    # The store of a loaded value, running after the fetch returned: ``True`` once stored with no
    # invalidation between the read before the load and the store. ``None``: nothing is stored.
    stored: asyncio.Task[bool] | None = None


class _Miss(NamedTuple):
    keys: _Keys
    began: Began | None  # when the read began, for the near cache
    read: tuple[bytes, bytes, bytes | None] | None  # epoch, generation, value; None: no Redis


def _shared_copy(value: BaseModel | None) -> BaseModel | None:
    return None if value is None else value.model_copy(deep=True)


class _Flight:
    """One read of a key in progress, and the load after it, shared by the callers meanwhile.

    Its first caller (the leader) reads Redis in its own task; on a miss the load and store
    run in a task of their own (``task``), which no caller's cancellation cuts short while
    others still wait. ``outcome`` gets the result; ``None`` tells the others to read on their
    own (a hit, or a leader cancelled during its read).
    """

    __slots__ = ("callers", "outcome", "task", "waiting")

    def __init__(self, outcome: asyncio.Future[_Found | None]) -> None:
        self.outcome = outcome
        self.task: asyncio.Task[_Found] | None = None
        self.callers = 1  # ever joined: more than one means the result must be copied
        self.waiting = 0  # awaiting the load: at zero it is cancelled

    def settle(self, task: asyncio.Task[_Found]) -> None:
        """Pass the load's result (or error) on to ``outcome``."""
        if self.outcome.done():
            return
        if task.cancelled():
            self.outcome.set_result(None)
        elif (error := task.exception()) is not None:
            self.outcome.set_exception(error)
        else:
            self.outcome.set_result(task.result())


class RedisCache:
    """A Redis read-through cache for pydantic models, coherent with the database it fronts.

    Implements ``ModelCache``. Values are JSON (never pickle) under keys namespaced by
    ``namespace``, so applications sharing one Redis never see each other's entries. The cache
    keeps its own time limits, whatever the client's timeouts and retries: a fetch waits on
    Redis at most ``timeout`` (its load not counted; a store after it gets its own ``timeout``),
    an invalidation at most ``timeout`` plus 0.1 ms per key. A Redis that is down, slow or
    refusing connections only turns reads into database reads; it never makes a call fail.

    How it stays coherent:

    - **No stale sets.** Each key has a generation next to its value (one hash tag, so one
      cluster slot). A miss reads the generation before loading and stores with a script that
      writes only if the generation is unchanged; ``invalidate`` sets a new random generation,
      then deletes the value. A reader that loaded before a write cannot store after it.
    - **Stored after returning.** A miss returns its value once loaded; the store runs in a
      task the cache tracks (``drain()`` waits for them), within ``timeout``, whatever happens
      to the callers. The generation check above is what makes the delay safe: a store that
      comes after an invalidation is refused, however late it runs.
    - **Single flight.** Concurrent misses on one key share one load in this process. The
      first caller reads Redis in its own task (a hit costs no task; measured, the task and
      its shield were a fifth of a hit's client time), and only a miss starts the shared load.
      ``invalidate`` detaches that load, so a caller arriving after a write made here never
      joins it. A write made in another process is seen here only through Redis, and a
      caller that joins arrives after the first read went out: it keeps the shared result
      only if the load then stored it with the generation unchanged (no invalidation in
      between, so none before this caller began either); otherwise (or if the first read was
      a hit) it reads again on its own. A caller arriving once the value is loaded, while it
      is being stored, does not join: it reads on its own (a store vouches for the generation
      only, not for the epoch a lost invalidation's repair sets).
    - **Unusable values are misses.** A stored value carries a format tag, the model's schema
      fingerprint and the namespace epoch; a corrupt one, one of another format or schema, one
      whose id field is not its key, or one of another epoch is dropped and loaded again.
    - **Signed values** (with ``signing_keys``). Each value also carries an HMAC-SHA256, made
      with the first key, over its Redis key, the generation and epoch it was stored under,
      its format, schema and body. A value that does not verify with one of the keys, or that
      names a generation other than the key's current one, is never served: it is a miss,
      counted in ``rejected`` and logged (one warning per ``cooldown``, never its contents).
      Signing costs no round trip: the generation is read with the value already. Without
      keys, values are stored and read exactly as before, unsigned.
    - **Lost invalidations.** The namespace has an epoch, a random token in Redis that every
      value records; the epoch is read in the same pipeline as the value. When an invalidation
      fails (or is skipped because the circuit is open), the cache marks itself dirty and sets
      a new epoch before it serves or stores anything again, which makes every older value a
      miss, in every process. A dirty cache also keeps trying to set that epoch in the
      background (every 10 ms at first, then every 100 ms at most, each try bounded by
      ``timeout``), so other processes stop serving older values within about
      ``timeout`` + 100 ms of Redis answering again, without waiting for this process's next
      call. ``repair()`` does the same at once.
    - **Cancellation.** An invalidation runs to its end even if its caller is cancelled
      meanwhile (then the cancellation goes on); a cancelled fetch leaves the shared load to
      the callers still waiting for it, and the last one to leave cancels it.
    - **Near cache** (with ``near_cache_entries``). An in-process LRU in front of Redis: a
      write here drops its keys from it before its invalidation goes out, and fences them
      against reads in flight; other processes' invalidations arrive by pub/sub (each
      invalidation publishes its keys); an entry is served at most ``near_cache_max_age``
      after the read that produced it began; a lost subscription empties it. So across
      processes a read may lag a write by up to ``near_cache_max_age`` (``_near_cache.py``).
    - **Circuit breaker.** ``failure_threshold`` consecutive failures open the circuit: calls go
      straight to the database for ``cooldown``, then one call probes Redis; success closes it.
      While Redis is down one warning is logged per ``cooldown``.

    What it does not cover (the residual window):

    - While this process cannot reach Redis but others can, they may serve a copy older than a
      write made here, until this process reaches Redis again (the background repair above)
      or the ``ttl`` runs out. A process that exits in that state leaves only the ``ttl`` as
      the bound. The dirty mark is per ``RedisCache`` object: share one per namespace in a
      process.
    - Invalidations Redis acknowledged and then lost, such as a failover to a replica that had
      not received them yet, are not detected; the ``ttl`` bounds them.
    - Redis evicting a generation key (``maxmemory`` with an eviction policy) while a load for
      that key is in flight re-opens the stale-set race for it; give Redis the memory it needs
      or use ``noeviction`` (a full Redis then just fails stores). Generation keys live twice
      the ``ttl``, so a load must also not take that long.

    Args:
        client: a ``redis.asyncio.Redis`` or ``RedisCluster``, owned (and closed) by the caller.
        namespace: prefix of every key (letters, digits, ``_``, ``.``, ``-``).
        ttl: how long a value stays cached at most.
        timeout: how long a call may wait on Redis, redis-py's retries included.
        failure_threshold: consecutive failures that open the circuit.
        cooldown: how long the open circuit skips Redis before probing it again.
        monotonic: the clock of the cooldown; injectable for tests.
        signing_keys: turns on signed values: random keys of 32 bytes or more, newest first.
            The first signs, every one verifies: to rotate, put a new key first, and drop the
            old one once the values it signed are gone (after ``ttl``) or may be reloaded.
            ``None`` (the default): values are not signed.
        near_cache_entries: how many values to keep in this process, in front of Redis (the
            near cache, ``_near_cache.py``); 0, the default, keeps none. With it, another
            process's write is seen here once its invalidation message arrives, and never later
            than ``near_cache_max_age`` (a write through this process is seen at once). The
            cache then holds a pub/sub subscription of its own: ``aclose()`` ends it.
        near_cache_max_age: how long a near-cached value is served at most, counted from the
            Redis read (or database load) that produced it.

    Raises:
        ValueError: a bad ``namespace``, ``ttl`` or ``timeout``; ``signing_keys`` empty, with a
            key shorter than 32 bytes or a key listed twice; ``near_cache_entries`` negative or
            ``near_cache_max_age`` not positive.
        TypeError: ``signing_keys`` is not a sequence of ``bytes``; ``near_cache_entries`` is
            not an ``int``.

    Example::

        cache = RedisCache(Redis.from_url("redis://localhost:6379/0"), namespace="myapp")
        repo = SessionRepository(factory, cache=cache)
        session = await repo.get_session(session_id)  # from Redis when cached
        print(cache.stats.hits, cache.stats.misses)
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        namespace: str = "agent_sessions",
        ttl: timedelta = timedelta(hours=24),
        timeout: timedelta = timedelta(milliseconds=250),
        failure_threshold: int = 3,
        cooldown: timedelta = timedelta(seconds=5),
        monotonic: Callable[[], float] = time.monotonic,
        signing_keys: Sequence[bytes] | None = None,
        near_cache_entries: int = 0,
        near_cache_max_age: timedelta = timedelta(seconds=1),
    ) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                f"namespace must be 1 to 100 letters, digits, '_', '.' or '-', got {namespace!r}"
            )
        if ttl.total_seconds() < 0.001 or timeout <= timedelta(0):
            raise ValueError(f"ttl (>= 1 ms) and timeout must be positive, got {ttl}, {timeout}")
        if isinstance(near_cache_entries, bool) or not isinstance(near_cache_entries, int):
            raise TypeError(f"near_cache_entries must be an int, got {near_cache_entries!r}")
        if near_cache_entries < 0 or near_cache_max_age <= timedelta(0):
            raise ValueError(
                "near_cache_entries must be 0 (off) or more and near_cache_max_age positive, "
                f"got {near_cache_entries}, {near_cache_max_age}"
            )
        self._keyring = None if signing_keys is None else Keyring(signing_keys)
        self._client = client
        self._namespace = namespace
        self._ttl_ms = int(ttl.total_seconds() * 1000)
        self._timeout = timeout.total_seconds()
        self._cooldown = cooldown.total_seconds()
        self._monotonic = monotonic
        self._circuit = CircuitBreaker(
            threshold=failure_threshold, cooldown=self._cooldown, monotonic=monotonic
        )
        self._epoch_key = _epoch_key(namespace)
        self._channel = channel(namespace)
        self._near: NearCache | None = None
        self._listener: Listener | None = None
        if near_cache_entries:
            max_age = near_cache_max_age.total_seconds()
            self._near = NearCache(near_cache_entries, max_age, monotonic)
            self._listener = Listener(client, namespace, self._near, repr(namespace))
        self._store_script = client.register_script(_STORE_SCRIPT)
        self._forget_script = (
            None if isinstance(client, RedisCluster) else client.register_script(_FORGET_SCRIPT)
        )
        self._flights: dict[tuple[type[BaseModel], str], _Flight] = {}
        self._fingerprints: dict[type[BaseModel], bytes] = {}
        self._counts: Counter[str] = Counter()
        self._lost = 0  # invalidations that did not reach Redis, ever
        self._covered = 0  # of those, how many a new epoch has covered since
        self._repairing: asyncio.Task[None] | None = None
        self._stores: set[asyncio.Task[bool]] = set()  # stores running after their fetch returned
        # No warning of this kind ("redis": a failure, "rejected") before this (monotonic) time.
        self._quiet_until: dict[str, float] = {}

    @property
    def namespace(self) -> str:
        """The prefix of this cache's keys."""
        return self._namespace

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters and the circuit's state."""
        c = self._counts
        return CacheStats(
            hits=c["hits"],
            misses=c["misses"],
            loads=c["loads"],
            errors=c["errors"],
            circuit_open=c["circuit_open"],
            invalidations=c["invalidations"],
            stale_sets_rejected=c["stale_sets_rejected"],
            discarded=c["discarded"],
            rejected=c["rejected"],
            epoch_bumps=c["epoch_bumps"],
            circuit=self._circuit.state,
            near_hits=c["near_hits"],
        )

    def _count(self, event: str, n: int = 1) -> None:
        self._counts[event] += n
        telemetry.record_cache(event, count=n, namespace=self._namespace)

    # -- ModelCache ----------------------------------------------------------------------------

    async def fetch(
        self,
        model: type[M],
        key: str,
        load: Callable[[], Awaitable[M | None]],
        *,
        id_field: str,
    ) -> M | None:
        """The cached ``model`` for ``key``, or ``await load()``, cached unless ``None``.

        Never raises because of Redis; exceptions from ``load`` propagate. Concurrent misses on
        one key share one ``load`` (each caller gets its own copy of the result).
        """
        near = self._near
        if near is not None:
            copied = near.get(model.__qualname__, key)
            if copied is not None:
                self._count("near_hits")
                return cast("M", copied)
            assert self._listener is not None
            self._listener.start()
        flight_key = (model, key)
        flight = self._flights.get(flight_key)
        if flight is None:
            return cast("M | None", await self._lead(flight_key, model, key, load, id_field))
        # Its read went out before this call began, so it may miss a write acknowledged (in
        # another process) in between: keep its result only if the load then stored it with
        # the generation unchanged (no invalidation in between, so none before this call
        # began either); otherwise read again, without joining anyone.
        flight.callers += 1
        found = await self._wait(flight_key, flight)
        if found is None or found.stored is None or not await asyncio.shield(found.stored):
            value, hit, *_ = await self._read_or_load(model, key, load, id_field)
            self._count("hits" if hit else "misses")
            return cast("M | None", value)
        self._count("hits" if found.hit else "misses")
        # Models are mutable: callers sharing one load must not share one object.
        return cast("M | None", _shared_copy(found.value))

    async def invalidate(self, model: type[BaseModel], keys: Collection[str]) -> None:
        """Forget ``keys``; call once the write that changed them has committed. Never raises.

        Loads in flight for these keys are detached first: later callers start a new one, and
        theirs cannot store what they read before the write.
        """
        unique = list(dict.fromkeys(keys))
        if not unique:
            return
        if self._near is not None:  # first: once the write returns, nothing here is older
            self._near.drop(model.__qualname__, unique)
        for key in unique:
            self._flights.pop((model, key), None)
        # Big invalidations (a sweep) get more time: redis-py spends ~20 us on each command.
        limit = self._timeout + len(unique) * _PER_KEY
        # To its end even if the caller is cancelled: a write that happened must be forgotten.
        if await run_to_end(self._forget_within(model, unique, limit)):
            self._count("invalidations", len(unique))

    async def drain(self) -> None:
        """Wait until the stores still running after their fetch returned have ended.

        A miss returns as soon as its value is loaded; storing it in Redis goes on in the
        background (within ``timeout``, refused if the key was invalidated meanwhile). Call this
        before reading Redis directly, or before closing the client, to see every store through.
        Never raises because of Redis.
        """
        while self._stores:
            await asyncio.wait(set(self._stores))

    async def aclose(self) -> None:
        """Stop the near cache's subscription (with ``near_cache_entries``) and empty it.

        The cache opens that subscription itself, on the first fetch: close the cache before
        the client. Without a near cache this does nothing. The cache still works afterwards,
        without its near cache until a fetch subscribes again. Never raises because of Redis.
        """
        if self._listener is not None:
            await self._listener.aclose()

    async def repair(self) -> bool:
        """Set a new namespace epoch now if invalidations were lost; ``True`` when none are.

        The cache does this by itself, before serving anything and in the background; call it
        to be sure before a process exits (a lost invalidation is otherwise bounded only by the
        ``ttl`` once this process is gone). Never raises; ``False`` while Redis is unreachable.
        """
        lost = self._lost
        if lost <= self._covered:
            return True
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.set(self._epoch_key, secrets.token_hex(8))
                await self._publish(EVERYTHING)  # near caches: forget all
        except _REDIS_ERRORS as exc:
            logger.debug("cache %r: new epoch not set yet (%s)", self._namespace, _describe(exc))
            return False
        self._epoch_set(lost)
        return self._lost <= self._covered

    async def _forget_within(self, model: type[BaseModel], keys: list[str], limit: float) -> bool:
        try:
            await self._call("invalidate", lambda: self._forget(model, keys), limit)
        except _Unavailable:
            self._lost += 1  # a new epoch must come before anything else is served or stored
            self._start_repair()
            return False
        return True

    def _start_repair(self) -> None:
        if self._repairing is None or self._repairing.done():
            self._repairing = asyncio.get_running_loop().create_task(self._repair_until_done())

    async def _repair_until_done(self) -> None:
        delay = _REPAIR_FIRST
        while not await self.repair():
            await asyncio.sleep(delay)
            delay = min(2 * delay, _REPAIR_MAX)

    # -- one load, shared ----------------------------------------------------------------------

    def _detach(self, flight_key: tuple[type[BaseModel], str], flight: _Flight) -> None:
        if self._flights.get(flight_key) is flight:
            del self._flights[flight_key]

    async def _lead(
        self, flight_key: tuple[type[BaseModel], str], model: type[BaseModel], key: str,
        load: Callable[[], Awaitable[BaseModel | None]], id_field: str,
    ) -> BaseModel | None:  # fmt: skip
        """The first caller: read Redis here (a hit costs no task), load in a shared task."""
        flight = _Flight(asyncio.get_running_loop().create_future())
        self._flights[flight_key] = flight
        try:
            step = await self._read_step(model, key, id_field)
        except BaseException:  # cancelled while reading: the others read on their own
            self._detach(flight_key, flight)
            flight.outcome.set_result(None)
            raise
        if isinstance(step, _Found):  # a hit: callers who joined meanwhile read on their own
            self._detach(flight_key, flight)
            flight.outcome.set_result(None)
            self._count("hits")
            return step.value
        task = asyncio.get_running_loop().create_task(
            self._finish(flight_key, flight, model, key, load, id_field, step)
        )
        flight.task = task
        task.add_done_callback(flight.settle)
        found = await self._wait(flight_key, flight)
        if found is None:  # the load was cancelled under it (a sweep of every task)
            raise asyncio.CancelledError
        self._count("hits" if found.hit else "misses")
        return found.value if flight.callers == 1 else _shared_copy(found.value)

    async def _wait(
        self, flight_key: tuple[type[BaseModel], str], flight: _Flight
    ) -> _Found | None:
        """Wait for the flight's outcome; the last waiter to be cancelled cancels its load."""
        flight.waiting += 1
        try:
            return await asyncio.shield(flight.outcome)
        except asyncio.CancelledError:
            flight.waiting -= 1
            if flight.waiting == 0 and flight.task is not None and not flight.task.done():
                self._detach(flight_key, flight)  # nobody wants it any more
                flight.task.cancel()
            raise

    async def _finish(
        self, flight_key: tuple[type[BaseModel], str], flight: _Flight, model: type[BaseModel],
        key: str, load: Callable[[], Awaitable[BaseModel | None]], id_field: str, step: _Miss,
    ) -> _Found:  # fmt: skip
        """The flight's load after a miss, and its store after returning."""
        try:
            return await self._load_step(model, key, load, id_field, step)
        finally:
            # Left as soon as the value is loaded, before its store ends: a caller arriving
            # during the store reads on its own. Were it to join, the store's success would
            # vouch for the value, and a store succeeds whenever the generation is unchanged —
            # also after an invalidation that was lost while Redis was frozen, which only the
            # new epoch set afterwards repairs, and which a read checks but a store does not.
            self._detach(flight_key, flight)

    async def _read_or_load(
        self, model: type[BaseModel], key: str, load: Callable[[], Awaitable[BaseModel | None]],
        id_field: str,
    ) -> _Found:  # fmt: skip
        step = await self._read_step(model, key, id_field)
        if isinstance(step, _Found):
            return step
        return await self._load_step(model, key, load, id_field, step)

    async def _read_step(self, model: type[BaseModel], key: str, id_field: str) -> _Found | _Miss:
        """Redis's answer: a hit, or what a load needs to store its value afterwards."""
        keys = _keys(self._namespace, model, key)
        began = None if self._near is None else self._near.begin()
        try:
            epoch, gen, raw = await self._call("read", lambda: self._read(keys), self._timeout)
        except _Unavailable:
            return _Miss(keys, began, None)
        if raw is not None:
            found, problem, rejected = self._decode(raw, model, key, id_field, keys, epoch, gen)
            if found is not None:
                self._fill(model, key, id_field, found, began)
                return _Found(found, hit=True)
            if rejected:
                self._reject(model, key, problem)
            else:
                self._count("discarded")
                logger.debug("cache %r: dropping %s %s: %s", self._namespace, model.__name__,
                             key, problem)  # fmt: skip
        return _Miss(keys, began, (epoch, gen, raw))

    async def _load_step(
        self, model: type[BaseModel], key: str, load: Callable[[], Awaitable[BaseModel | None]],
        id_field: str, step: _Miss,
    ) -> _Found:  # fmt: skip
        """Load after a miss; store the value after returning (unless Redis failed)."""
        keys, began = step.keys, step.began
        if step.read is None:  # Redis failed or the circuit is open: nothing is stored
            loaded = await self._load(load)
            self._fill(model, key, id_field, loaded, began)
            return _Found(loaded, hit=False)
        epoch, gen, raw = step.read
        value = await self._load(load)
        if value is None or getattr(value, id_field) != key:
            if raw is not None:  # the dropped value must not stay
                self._later(self._remove(keys))
            return _Found(value, hit=False)
        self._fill(model, key, id_field, value, began)
        # Stored after returning: the caller does not wait on Redis a second time. The store
        # still checks the generation read above, so it cannot put back what a write replaced.
        payload = self._encode(value, keys, epoch, gen)
        stored = self._later(self._store_checked(model, key, keys, gen, payload))
        return _Found(value, hit=False, stored=stored)

    def _fill(
        self, model: type[BaseModel], key: str, id_field: str, value: BaseModel | None,
        began: Began | None,
    ) -> None:  # fmt: skip
        """Keep ``value`` in the near cache, if on (it refuses what a drop may have outdated)."""
        if began is not None and value is not None and getattr(value, id_field) == key:
            assert self._near is not None
            self._near.put(model.__qualname__, key, value, began)

    def _later(self, step: Coroutine[Any, Any, bool]) -> asyncio.Task[bool]:
        """Run ``step`` in a task the cache tracks (see ``drain``), whoever awaits it or not."""
        task = asyncio.get_running_loop().create_task(step)
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)
        return task

    async def _store_checked(
        self, model: type[BaseModel], key: str, keys: _Keys, gen: bytes, payload: bytes
    ) -> bool:
        if self._lost > self._covered:  # a new epoch must come before anything is stored
            return False
        try:
            stored = await self._call(
                "store", lambda: self._store(keys, gen, payload), self._timeout
            )
        except _Unavailable:
            return False
        if not stored:
            self._count("stale_sets_rejected")
            logger.debug("cache %r: %s %s changed while loading; not stored",
                         self._namespace, model.__name__, key)  # fmt: skip
        return stored

    async def _remove(self, keys: _Keys) -> bool:
        try:
            await self._call("remove", lambda: self._client.delete(keys.value), self._timeout)
        except _Unavailable:
            return False
        return True

    async def _load(self, load: Callable[[], Awaitable[BaseModel | None]]) -> BaseModel | None:
        self._count("loads")
        return await load()

    # -- Redis operations ----------------------------------------------------------------------

    async def _call(self, what: str, operation: Callable[[], Awaitable[T]], budget: float) -> T:
        """Run one Redis operation within ``budget`` seconds, through the circuit breaker.

        Raises:
            _Unavailable: the circuit is open, or Redis failed or ran out of time.
        """
        permit = self._circuit.allow()
        if permit is None:
            self._count("circuit_open")
            raise _Unavailable
        task = asyncio.current_task()
        cancelling = 0 if task is None else task.cancelling()
        try:
            async with asyncio.timeout(budget):  # wraps redis-py's retries and reconnects too
                result = await operation()
            if task is not None and task.cancelling() > cancelling:
                # Python 3.11's asyncio.wait_for (inside redis-py) returns the result when
                # a cancellation and the reply arrive together: deliver the cancellation.
                raise asyncio.CancelledError
        except _REDIS_ERRORS as exc:
            self._failed(permit, what, exc)
            raise _Unavailable from exc
        except BaseException:  # cancelled, or a bug: no verdict on Redis
            self._circuit.record(permit, None)
            raise
        if self._circuit.record(permit, True) == "closed":
            logger.info("cache %r: Redis answers again; the circuit is closed", self._namespace)
        return result

    def _level(self, kind: str) -> int:
        """WARNING for the first event of ``kind`` in a ``cooldown``, DEBUG for the others."""
        now = self._monotonic()
        if now < self._quiet_until.get(kind, float("-inf")):
            return logging.DEBUG
        self._quiet_until[kind] = now + self._cooldown
        return logging.WARNING

    def _failed(self, permit: Permit, what: str, exc: BaseException) -> None:
        self._count("errors")
        self._circuit.record(permit, False)
        level = self._level("redis")  # one warning per cooldown while Redis is down
        circuit = ""
        if self._circuit.state != "closed":
            circuit = f"; the circuit is open: Redis is skipped for {self._cooldown:g} s"
        logger.log(level, "cache %r: Redis %s failed (%s)%s", self._namespace, what,
                   _describe(exc), circuit)  # fmt: skip

    async def _read(self, keys: _Keys) -> tuple[bytes, bytes, bytes | None]:
        """Epoch, generation and value in one round trip (the epoch may live on another node)."""
        covered = self._lost if self._lost > self._covered else 0
        epoch: bytes | None
        if not covered and self._forget_script is not None:
            # Standalone: one MGET, which costs the client far less than a pipeline of three.
            names = (self._epoch_key, keys.gen, keys.value)
            epoch, gen, raw = await self._client.execute_command("MGET", *names, **_RAW)
        else:
            pipe = self._client.pipeline(transaction=False)
            if covered:  # invalidations were lost: a new epoch before anything is served
                pipe.set(self._epoch_key, secrets.token_hex(8))
            for name in (self._epoch_key, keys.gen, keys.value):
                pipe.execute_command("GET", name, **_RAW)
            *_, epoch, gen, raw = await pipe.execute()
            if covered:
                # Near caches forget everything (a cluster refuses PUBLISH in a pipeline).
                await self._publish(EVERYTHING)
                self._epoch_set(covered)
        if epoch is None:  # first use, or Redis lost it: values of any older epoch are misses
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self._epoch_key, secrets.token_hex(8), nx=True)
            pipe.execute_command("GET", self._epoch_key, **_RAW)
            _, epoch = await pipe.execute()
            if epoch is None:
                raise RedisError(f"{self._epoch_key} vanished right after it was set")
        return epoch, gen or b"", raw

    async def _forget(self, model: type[BaseModel], keys: list[str]) -> None:
        covered = self._lost if self._lost > self._covered else 0
        if self._forget_script is not None:
            names = [self._epoch_key]
            for key in keys:
                names.extend(_keys(self._namespace, model, key))
            tokens = [secrets.token_hex(8) for _ in keys]
            epoch = secrets.token_hex(8) if covered else ""
            args = [2 * self._ttl_ms, epoch, *tokens, self._channel, message(model, keys)]
            await self._script(self._forget_script, names, args)
            if covered:
                self._epoch_set(covered)
            return
        pipe = self._client.pipeline(transaction=False)
        if covered:  # earlier invalidations were lost: a new epoch, in the same round trip
            pipe.set(self._epoch_key, secrets.token_hex(8))
        for key in keys:
            gen_key, value_key = _keys(self._namespace, model, key)
            # A fresh random generation (no counter to wrap or to come back to an old value),
            # kept twice the ttl so it outlives the value and any load in flight; then the
            # delete: a reader that finds no value has already read the new generation.
            pipe.set(gen_key, secrets.token_hex(8), px=2 * self._ttl_ms)
            pipe.delete(value_key)
        await pipe.execute()
        # After the deletes, so a near cache that hears it and reads again finds no old value;
        # its own command: a cluster refuses PUBLISH in a pipeline.
        await self._publish(EVERYTHING if covered else message(model, keys))
        if covered:
            self._epoch_set(covered)

    async def _publish(self, payload: bytes) -> None:
        """Tell near caches (every process's) what to forget: ``*`` for everything."""
        # Not client.publish(): redis-py 5.0's asyncio cluster client has no such method.
        await self._client.execute_command("PUBLISH", self._channel, payload)

    async def _store(self, keys: _Keys, gen: bytes, payload: bytes) -> bool:
        stored = await self._script(self._store_script, keys, (gen, payload, self._ttl_ms))
        return bool(stored)

    async def _script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[object]
    ) -> Any:
        """``EVALSHA``, loading the script first if the server does not know it.

        What redis-py's ``AsyncScript.__call__`` does, less its per-call imports and type
        checks (measured: a tenth of an invalidation's client time).
        """
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)  # type: ignore[arg-type]
        except NoScriptError:  # a restarted or another server: load it, then run it
            script.sha = await self._client.script_load(script.script)
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)  # type: ignore[arg-type]

    def _epoch_set(self, lost: int) -> None:
        """A new epoch is set that covers the first ``lost`` lost invalidations."""
        if lost <= self._covered:
            return  # another call's new epoch covered them already
        newly, self._covered = lost - self._covered, lost
        self._count("epoch_bumps")
        logger.info(
            "cache %r: new epoch after %d invalidation(s) that did not reach Redis; "
            "every value cached before is now a miss",
            self._namespace,
            newly,
        )

    # -- values --------------------------------------------------------------------------------

    def _fingerprint(self, model: type[BaseModel]) -> bytes:
        found = self._fingerprints.get(model)
        if found is None:
            found = self._fingerprints[model] = _schema_fingerprint(model)
        return found

    def _encode(self, value: BaseModel, keys: _Keys, epoch: bytes, gen: bytes) -> bytes:
        """The stored value: its header line, then its JSON (signed with ``signing_keys``)."""
        schema = self._fingerprint(type(value))
        body = value.model_dump_json(by_alias=True, round_trip=True).encode()
        if self._keyring is None:
            return b" ".join((_FORMAT, epoch, schema)) + b"\n" + body
        signed = b" ".join((_SIGNED_FORMAT, self._keyring.signer, epoch, gen or _NO_GENERATION,
                            schema))  # fmt: skip
        signature = self._keyring.sign(keys.value.encode(), signed, body)
        return signed + b" " + signature + b"\n" + body

    def _decode(
        self, raw: bytes, model: type[BaseModel], key: str, id_field: str, keys: _Keys,
        epoch: bytes, gen: bytes,
    ) -> _Decoded:  # fmt: skip
        """The value, or why it is unusable (and whether it failed verification)."""
        header, newline, body = raw.partition(b"\n")
        if self._keyring is None:
            fields = header.split(b" ")
            if not newline or len(fields) != 3 or fields[0] != _FORMAT:
                return _Decoded(None, "not a value of this format")
            _, stored_epoch, schema = fields
        else:
            signed, _, signature = header.rpartition(b" ")
            fields = signed.split(b" ")
            if not newline or len(fields) != 5 or fields[0] != _SIGNED_FORMAT:
                unsigned = header.startswith(_FORMAT + b" ")
                return _Decoded(None, "unsigned" if unsigned else "not a signed value", True)
            _, key_id, stored_epoch, stored_gen, schema = fields
            problem = self._keyring.verify(key_id, keys.value.encode(), signed, body, signature)
            if problem:
                return _Decoded(None, problem, True)
            if stored_gen != (gen or _NO_GENERATION):
                # A write's invalidation sets a new generation and deletes the value in one
                # script, and a read sees both in one MGET, so this is an entry put back after a
                # write. (In a Redis Cluster both are pipelines: a read landing between the two
                # steps of an invalidation also gets here, rarely, and is a miss as it should.)
                if gen:
                    return _Decoded(None, "stored under another generation of the key", True)
                # No generation now: it expired (it lives twice the ttl) or Redis evicted it.
                return _Decoded(None, "stored under a generation that is gone")
        if stored_epoch != epoch:
            return _Decoded(None, "stored before the current epoch")
        if schema != self._fingerprint(model):
            return _Decoded(None, "stored with another schema of the model")
        try:
            value = model.model_validate_json(body)
        except ValueError as exc:  # pydantic's ValidationError is one
            return _Decoded(None, f"corrupt ({_describe(exc).splitlines()[0]})")
        if getattr(value, id_field) != key:
            return _Decoded(None, f"its {id_field} is not the key")
        return _Decoded(value)

    def _reject(self, model: type[BaseModel], key: str, problem: str) -> None:
        """Count and log a value that failed verification (never its contents)."""
        self._count("rejected")
        logger.log(
            self._level("rejected"),
            "cache %r: rejected the cached %s %r (%s); served from the database instead. "
            "Something other than this application's caches writes to this namespace, or uses "
            "other signing keys (docs/security.md)",
            self._namespace,
            model.__name__,
            key,
            problem,
        )
