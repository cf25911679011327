"""The near cache: an in-process LRU in front of Redis, kept coherent by Redis pub/sub.

``RedisCache(near_cache_entries=N)`` keeps the last ``N`` values it read in the process, so a
hit never leaves it. What makes that safe, and why each rule:

- **In the process, strict.** ``RedisCache.invalidate`` drops the keys here first, before its
  Redis round trip. A read that was already in flight when a key was dropped (it may carry the
  older copy) must not put it back afterwards: every drop bumps a counter, each read notes the
  counter when it begins, and a read that began before the key's last drop (its *fence*) does
  not fill. So once a write through this process has returned, no read here serves what it
  replaced.
- **Across processes, through Redis.** Every ``RedisCache`` publishes the keys it invalidates on
  the namespace's channel (inside the invalidation's own script on a standalone server: no
  extra round trip), and a new namespace epoch as ``*``. A near cache subscribes and drops what
  it hears. Classic pub/sub reaches every node of a cluster, and Valkey speaks it alike.
- **Bounded whatever the channel does.** An entry is served only until ``max_age`` after the
  Redis read (or database load) that produced it *began*: a message that never comes, a Redis
  frozen mid-write, a writer whose invalidation was lost, all end there.
- **A lost channel empties the cache.** Pub/sub delivers at most once: messages published while
  the subscription is down are gone. So the near cache serves and fills only while the
  subscription is confirmed; a disconnect, an error, or a reconnection (redis-py reconnects and
  resubscribes on its own: its connect callback tells us) empties it and raises the floor, so a
  read that began before the loss cannot fill afterwards; it serves again once Redis confirms
  the new subscription.
- **Copies.** Callers may mutate what they get, so each hit is a copy (JSON-shaped values are
  copied by hand, which is several times faster than ``copy.deepcopy``), and so is each fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import enum
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import BaseModel
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import RedisClusterException, RedisError

logger = logging.getLogger(__name__)

# What a broken or unreachable Redis raises on the subscription.
_REDIS_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)
# A new namespace epoch: every key, in every process.
EVERYTHING = b"*"
_RETRY_FIRST = 0.01  # seconds before resubscribing after a failure, doubling up to:
_RETRY_MAX = 1.0
_POLL = 1.0  # how long one wait for a message lasts (then a PING keeps the connection honest)


def channel(namespace: str) -> str:
    """The pub/sub channel on which the namespace's invalidations are published."""
    return f"{namespace}:invalidations"


def message(model: type[BaseModel], keys: list[str]) -> bytes:
    """One invalidation message: the model's name, then each key, newline-separated."""
    return "\n".join((model.__qualname__, *keys)).encode()


class Began(NamedTuple):
    """When a read began: the drop counter and the clock, both noted before reading."""

    tick: int
    at: float


class _Entry(NamedTuple):
    value: BaseModel
    read_at: float  # when the read that produced it began (monotonic seconds)


def copy_value(value: Any) -> Any:
    """A deep copy of a model or JSON-shaped value, by hand where the shape is known.

    Immutable leaves are shared, checked inline (a call per leaf would cost more than the
    copy); types found immutable by ``isinstance`` are remembered by their exact type.
    """
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is dict:
        return {k: v if type(v) in _IMMUTABLE else copy_value(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _IMMUTABLE else copy_value(v) for v in value]
    if kind in _MODELS or isinstance(value, BaseModel):
        _MODELS.add(kind)
        # What pydantic's __copy__ does (no validation), with each field copied as above.
        model_class: type[BaseModel] = kind
        copied = model_class.__new__(model_class)
        _set(copied, "__dict__", {
            k: v if type(v) in _IMMUTABLE else copy_value(v) for k, v in value.__dict__.items()
        })  # fmt: skip
        _set(copied, "__pydantic_fields_set__", set(value.__pydantic_fields_set__))
        extra = value.__pydantic_extra__  # None unless the model allows extra fields
        _set(copied, "__pydantic_extra__", None if extra is None else copy_value(extra))
        private = getattr(value, "__pydantic_private__", None)  # None unless it has some
        _set(copied, "__pydantic_private__", None if private is None else copy_value(private))
        return copied
    if isinstance(value, _IMMUTABLE_BASES):
        _IMMUTABLE.add(kind)  # an enum, a subclass of str...: its exact type, from now on
        return value
    return copy.deepcopy(value)  # anything else (a set, a custom class): the general way


_set = object.__setattr__
_MODELS: set[type] = set()  # the pydantic model classes seen
# Exact types whose values are shared, never copied; grows with the subclasses seen.
_IMMUTABLE: set[type] = {
    str, int, float, bool, type(None), bytes, datetime.datetime, datetime.date,
    datetime.timedelta, uuid.UUID,
}  # fmt: skip
_IMMUTABLE_BASES: tuple[type, ...] = (
    str, int, float, bytes, datetime.datetime, datetime.date, datetime.timedelta, enum.Enum,
    uuid.UUID, frozenset,
)  # fmt: skip


class NearCache:
    """The LRU itself: values by (model name, key), with fences and a floor (module docstring).

    Serves and fills only while ``live`` (the invalidation channel is confirmed).
    """

    def __init__(self, entries: int, max_age: float, monotonic: Callable[[], float]) -> None:
        self._max_entries = entries
        self._max_age = max_age
        self._monotonic = monotonic
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._tick = 0  # bumped by every drop and every clear
        self._fences: dict[tuple[str, str], int] = {}  # key -> tick of its last drop
        self._floor = 0  # a read that began before this tick never fills
        self.live = False

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self) -> Began:
        return Began(self._tick, self._monotonic())

    def get(self, name: str, key: str) -> BaseModel | None:
        """A copy of the value, or ``None``: absent, too old, or the channel is down."""
        entry = self._entries.get((name, key))
        if entry is None or not self.live:
            return None
        if self._monotonic() - entry.read_at >= self._max_age:
            del self._entries[(name, key)]
            return None
        self._entries.move_to_end((name, key))
        return copy_value(entry.value)  # type: ignore[no-any-return]

    def put(self, name: str, key: str, value: BaseModel, began: Began) -> bool:
        """Keep a copy of ``value``, read from Redis or loaded, unless it may be outdated."""
        if not self.live or began.tick < self._floor:
            return False
        if self._fences.get((name, key), -1) > began.tick:
            return False  # dropped after this read began: it may carry the older copy
        if self._monotonic() - began.at >= self._max_age:
            return False
        self._entries[(name, key)] = _Entry(copy_value(value), began.at)
        self._entries.move_to_end((name, key))
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return True

    def drop(self, name: str, keys: list[str]) -> None:
        """Forget ``keys`` and fence them against reads in flight."""
        self._tick += 1
        for key in keys:
            self._entries.pop((name, key), None)
            self._fences[(name, key)] = self._tick
        if len(self._fences) > 4 * self._max_entries + 1024:
            # The fences only matter for reads in flight: trade them for a floor (such reads
            # then do not fill at all), so they cannot grow without bound.
            self._floor = self._tick
            self._fences.clear()

    def clear(self) -> None:
        """Forget everything, and keep every read in flight from filling."""
        self._tick += 1
        self._floor = self._tick
        self._entries.clear()
        self._fences.clear()

    def heard(self, payload: bytes) -> None:
        """Apply one message of the channel."""
        if payload == EVERYTHING:
            self.clear()
            return
        name, *keys = payload.decode("utf-8", "replace").split("\n")
        if keys:
            self.drop(name, keys)


class _Subscription(PubSub):
    """A ``PubSub`` that reports every (re)connection, which means messages may have been lost."""

    lost: Callable[[], None] = staticmethod(lambda: None)

    async def on_connect(self, connection: Any) -> None:
        self.lost()  # before it resubscribes: anything published meanwhile is gone
        await super().on_connect(connection)


class Listener:
    """Keeps a subscription to the namespace's channel and applies it to a ``NearCache``.

    Started on the first fetch (it needs a running loop); ``aclose`` stops it. While it has no
    confirmed subscription the near cache is not live.
    """

    def __init__(
        self, client: Redis | RedisCluster, namespace: str, near: NearCache, label: str
    ) -> None:
        self._client = client
        self._channel = channel(namespace)
        self._near = near
        self._label = label
        self._task: asyncio.Task[None] | None = None
        self._pool: ConnectionPool | None = None
        # For tests, which wait on events rather than sleep: set while a subscription is
        # confirmed; set on every message applied, subscription lost or confirmed.
        self.confirmed = asyncio.Event()
        self.changed = asyncio.Event()
        self.heard = 0  # messages applied
        self.losses = 0  # subscriptions lost while live

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        self._lose()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise
        if self._pool is not None:
            await self._pool.disconnect()
            self._pool = None

    def _lose(self) -> None:
        was_live = self._near.live
        self._near.live = False
        self._near.clear()
        self.confirmed.clear()
        if was_live:
            self.losses += 1
            self.changed.set()

    def _subscription(self) -> _Subscription:
        if isinstance(self._client, RedisCluster):
            # Classic pub/sub reaches every node of a cluster: one node will do. redis-py's
            # cluster client has no pub/sub of its own before 5.x's latest releases.
            if self._pool is None:
                nodes = self._client.get_nodes()
                if not nodes:
                    raise RedisClusterException("the cluster client knows no node yet")
                node = nodes[0]
                self._pool = ConnectionPool(
                    connection_class=node.connection_class, **node.connection_kwargs
                )
            pool = self._pool
        else:
            pool = self._client.connection_pool
        subscription = _Subscription(pool, ignore_subscribe_messages=False)
        subscription.lost = self._lose
        return subscription

    async def _run(self) -> None:
        delay = _RETRY_FIRST
        while True:
            subscription: _Subscription | None = None
            try:
                if isinstance(self._client, RedisCluster):
                    await self._client.initialize()
                subscription = self._subscription()
                await subscription.subscribe(self._channel)
                while True:
                    found = await subscription.get_message(timeout=_POLL)
                    if found is None:
                        await subscription.ping()  # a dead connection shows up here
                        continue
                    kind = found["type"]
                    kind = kind.decode() if isinstance(kind, bytes) else kind
                    if kind == "subscribe":
                        self._near.clear()  # whatever was published before is unknown
                        self._near.live = True
                        self.confirmed.set()
                        self.changed.set()
                        delay = _RETRY_FIRST
                    elif kind == "message":
                        data = found["data"]
                        self._near.heard(data if isinstance(data, bytes) else str(data).encode())
                        self.heard += 1
                        self.changed.set()
            except _REDIS_ERRORS as exc:
                self._lose()
                logger.debug(
                    "cache %s: the near cache's subscription failed (%s: %s); emptied, "
                    "resubscribing",
                    self._label,
                    type(exc).__name__,
                    exc,
                )
            finally:
                if subscription is not None:
                    self._lose()
                    with contextlib.suppress(*_REDIS_ERRORS):
                        await subscription.aclose()
            await asyncio.sleep(delay)
            delay = min(2 * delay, _RETRY_MAX)
