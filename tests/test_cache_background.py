"""The store after a miss runs after the fetch returned: what that must and must not change.

A miss hands its value back as soon as it is loaded; the store (generation-checked, as before)
goes on in a task the cache tracks. A gate in front of the real Redis client's store script
holds that store, so each interleaving below is made on purpose, not hoped for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from agent_session_store import RedisCache
from agent_session_store._settle import run_to_end
from agent_session_store.redis_cache import _STORE_SCRIPT, _keys
from tests.conftest import cache_server_url
from tests.test_cache import GENEROUS, Source, Widget, fetch


class GatedRedis(Redis):
    """A real client whose store script, once ``gate()`` is called, waits for ``release``."""

    release: asyncio.Event | None = None
    reached = asyncio.Event()  # a store came to the gate
    after_store: asyncio.Event | None = None  # set once a store has its reply

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        if self.release is not None and sha == self.register_script(_STORE_SCRIPT).sha:
            self.reached.set()
            await self.release.wait()
        reply = await super().evalsha(sha, numkeys, *keys_and_args)
        if self.after_store is not None and sha == self.register_script(_STORE_SCRIPT).sha:
            self.after_store.set()
        return reply

    def gate(self) -> asyncio.Event:
        self.release, self.reached = asyncio.Event(), asyncio.Event()
        return self.release


def _gated(url: str) -> GatedRedis:
    return cast("GatedRedis", GatedRedis.from_url(url))


@pytest.fixture
def redis_url(cache_server: str, request: pytest.FixtureRequest) -> str:
    return cache_server_url(cache_server, request)


@pytest.fixture
async def gated(redis_url: str) -> AsyncIterator[GatedRedis]:
    client = _gated(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def cache(gated: GatedRedis, namespace: str) -> RedisCache:
    return RedisCache(gated, namespace=namespace, timeout=GENEROUS)


async def test_miss_returns_before_its_store_and_drain_waits_for_it(
    cache: RedisCache, gated: GatedRedis, redis_client: Redis, namespace: str
) -> None:
    release = gated.gate()
    assert await fetch(cache, Source(a="first"), "a") == Widget(widget_id="a", name="first")
    value_key = _keys(namespace, Widget, "a").value
    assert await redis_client.exists(value_key) == 0  # returned; the store is held
    release.set()
    await cache.drain()
    assert await redis_client.exists(value_key) == 1


async def test_store_that_loses_the_race_with_an_invalidation_is_not_stored(
    cache: RedisCache, gated: GatedRedis, redis_client: Redis, namespace: str
) -> None:
    release = gated.gate()
    source = Source(a="old")
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="old")
    await gated.reached.wait()
    source.rows["a"] = Widget(widget_id="a", name="new")
    await cache.invalidate(Widget, ["a"])  # a write committed after the load
    release.set()
    await cache.drain()
    assert cache.stats.stale_sets_rejected == 1
    assert await redis_client.exists(_keys(namespace, Widget, "a").value) == 0
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")


async def test_caller_arriving_during_the_store_reads_on_its_own(
    cache: RedisCache, gated: GatedRedis
) -> None:
    # It does not join the flight whose store is under way (that store's success would vouch
    # for a value an invalidation lost in a Redis freeze may have outdated): with the store
    # held, it finds nothing in Redis and loads again, without waiting for the held store.
    release = gated.gate()
    source = Source(a="first")
    first = await fetch(cache, source, "a")
    await gated.reached.wait()
    again = await fetch(cache, source, "a")
    assert again == first == Widget(widget_id="a", name="first") and again is not first
    assert (source.loads, cache.stats.hits, cache.stats.misses) == (2, 0, 2)
    release.set()
    await cache.drain()
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
    assert (source.loads, cache.stats.hits) == (2, 1)


async def test_a_store_another_process_made_stale_is_refused_and_later_callers_read_anew(
    cache: RedisCache, gated: GatedRedis, redis_client: Redis, namespace: str
) -> None:
    release = gated.gate()
    source = Source(a="old")
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="old")
    await gated.reached.wait()
    # Another process writes and invalidates while this cache's store is held.
    source.rows["a"] = Widget(widget_id="a", name="new")
    await RedisCache(redis_client, namespace=namespace).invalidate(Widget, ["a"])
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")
    release.set()
    await cache.drain()
    assert cache.stats.stale_sets_rejected == 1 and source.loads == 2
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="new")


async def test_cancelling_a_caller_waiting_for_a_store_leaves_the_store_running(
    cache: RedisCache, gated: GatedRedis, redis_client: Redis, namespace: str
) -> None:
    release = gated.gate()
    source = Source(a="first")
    source.hold = asyncio.Event()
    first = asyncio.create_task(fetch(cache, source, "a"))
    await source.started.wait()  # its read went out; its load is held
    late = asyncio.create_task(fetch(cache, source, "a"))
    await asyncio.sleep(0)  # it joins the load as a late caller
    source.hold.set()
    await gated.reached.wait()  # the store is held; the late caller waits for it
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert await first == Widget(widget_id="a", name="first")
    release.set()
    await cache.drain()
    assert await redis_client.exists(_keys(namespace, Widget, "a").value) == 1
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
    assert source.loads == 1


@pytest.mark.closes_clients_under_stores
def test_loop_closing_with_a_store_pending_leaves_no_warning_or_error(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # An application that exits without ``drain()``: asyncio.run cancels the held store.
    caplog.set_level(logging.DEBUG, logger="asyncio")

    async def run() -> None:
        client = _gated(redis_url)
        client.gate()
        cache = RedisCache(client, namespace=namespace, timeout=GENEROUS)
        await fetch(cache, Source(a="first"), "a")
        await client.reached.wait()
        await client.aclose()

    failures: list[BaseException] = []

    def in_thread() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and failures == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_nested_step_runs_in_place_and_to_its_end_when_the_caller_is_cancelled() -> None:
    # A write's invalidation is a run_to_end step inside the settling step of its connection.
    started, release = asyncio.Event(), asyncio.Event()
    ran: list[tuple[str, asyncio.Task[Any] | None]] = []

    async def inner() -> int:
        started.set()
        await release.wait()
        ran.append(("inner", asyncio.current_task()))
        return 1

    async def outer() -> int:
        value = await run_to_end(inner())
        ran.append(("outer", asyncio.current_task()))
        return value

    caller = asyncio.create_task(run_to_end(outer()))
    await started.wait()
    caller.cancel()
    for _ in range(3):
        await asyncio.sleep(0)  # the cancellation reaches the caller; the steps go on
    assert not caller.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert [name for name, _ in ran] == ["inner", "outer"]
    assert ran[0][1] is ran[1][1] and ran[0][1] is not caller  # one task for both steps


async def test_a_step_that_never_suspends_costs_no_turn_of_the_event_loop_on_312() -> None:
    # Handing out or giving back a pooled connection rarely waits on I/O: on Python 3.12+ the
    # step's task starts eagerly and is done before run_to_end would have scheduled it.
    order: list[str] = []

    async def step() -> str:
        order.append("step")
        return "done"

    async def other() -> None:
        order.append("other task")

    waiting = asyncio.create_task(other())  # runs at the caller's next turn of the loop
    assert await run_to_end(step()) == "done"
    order.append("caller")
    await waiting
    if sys.version_info >= (3, 12):
        assert order == ["step", "caller", "other task"]
    else:
        assert order == ["other task", "step", "caller"]


async def test_a_step_cancelled_with_every_task_before_it_started_still_runs() -> None:
    # asyncio.run cancels every task when its main coroutine ends, a step's task included; on
    # Python 3.11 one created in that last turn had not started, so its step never ran
    # ("coroutine '_checkout' was never awaited"). tests/test_shutdown.py does it through
    # asyncio.run; here the sweep is made by hand, between the step task's creation and start.
    ran: list[str] = []
    go = asyncio.get_running_loop().create_future()

    async def step() -> None:
        ran.append("step")

    async def call() -> None:
        await go
        await run_to_end(step())

    before = asyncio.all_tasks()
    caller = asyncio.create_task(call())
    await asyncio.sleep(0)  # the caller waits on go
    go.set_result(None)
    await asyncio.sleep(0)  # the caller has created the step's task (on 3.11, not started yet)
    swept = asyncio.all_tasks() - before
    if sys.version_info >= (3, 12):  # the step ran eagerly, and the caller ended with it
        assert swept == set() and caller.done()
    else:
        assert caller in swept and len(swept) == 2
    for task in swept:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await caller
    assert ran == ["step"]


async def test_a_loop_of_fetches_does_not_keep_joining_a_finished_store(
    cache: RedisCache, gated: GatedRedis
) -> None:
    # Joining a finished store does not wait, so the flight must be left then and there: a
    # caller looping on fetch would otherwise never yield to the callback that leaves it.
    source = Source(a="first")
    stored = gated.after_store = asyncio.Event()
    stop = False

    async def reader() -> int:
        await stored.wait()  # resumes in the loop turn the store ended in, before that callback
        fetches = 0
        while not stop and fetches < 50:
            assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
            fetches += 1
        return fetches

    async def stopper() -> None:
        nonlocal stop
        await stored.wait()  # runnable as soon as the reader yields once
        stop = True

    looping, stopping = asyncio.create_task(reader()), asyncio.create_task(stopper())
    await fetch(cache, source, "a")
    assert await looping < 50
    await stopping
    assert source.loads == 1
