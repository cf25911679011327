"""Finishing what a cancellation must not cut in half.

A cancelled ``await`` stops the awaiting coroutine at that point. For most of a call that is
right: nothing has happened yet, or what happened is rolled back. A few steps must not stop
halfway once started, because stopping leaves something broken behind the caller: the
rollback and release of a connection whose statement was cancelled (on SQLite it would keep
the database's write lock), or the cache invalidation after a commit (the cache would serve
the older copy until its TTL). :func:`run_to_end` runs such a step in a task of its own and
waits for it even while cancellations arrive, then re-raises the cancellation: the caller is
cancelled as asked, but only after the step has finished. Each such step is bounded in time
(a database round trip, or the cache's own time limit), so a cancellation is delayed, never
lost or ignored.

The step's task is kept to itself, but not from a sweep of every task: ``asyncio.run`` cancels
all the loop's tasks when its main coroutine ends (an exception, a shutdown), steps included. A
step task created in the loop's last turn has not started by then, and a task cancelled before
its first step never runs its coroutine: the step would be dropped unrun ("coroutine '_checkout'
was never awaited"; a connection never given back). Such a step is started again in a new task,
which the sweep does not know of. On Python 3.12+ a step starts eagerly and is never caught
unstarted; a step the sweep cancels mid-way ends as its own cleanup says, like any coroutine.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Python 3.12+ can start a task eagerly: it runs at once, in its own task, up to its first
# suspension. A step that does not suspend (a pooled connection handed out or given back
# without I/O) then finishes before ``run_to_end`` would have scheduled it, at a twentieth of
# the cost of a task that goes through the event loop.
_EAGER = sys.version_info >= (3, 12)

# The tasks ``run_to_end`` runs steps in. Nobody cancels one (run_to_end keeps it to itself; a
# sweep of every task aside, see above), so a step nested inside another one is awaited in
# place, saving a task per level (a write's cache invalidation is three levels deep). A step
# must therefore never cancel itself around a nested step (no ``asyncio.timeout`` around a
# ``run_to_end``): bound the inner step instead.
_STEPS: set[asyncio.Task[Any]] = set()


async def run_to_end(step: Coroutine[Any, Any, T]) -> T:
    """Await ``step`` to its end, even if the caller is cancelled meanwhile; then re-raise that.

    Without a cancellation this is ``await step``. With one, the step still finishes, and the
    caller then gets the ``CancelledError`` (the step's own error, if any, as its cause).
    """
    if asyncio.current_task() in _STEPS:
        return await step
    task = _start(step)
    if _EAGER and task.done():  # it did not suspend: nothing could have cancelled it
        return task.result()
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.wait({task})  # cancelling this wait leaves the task running
        except asyncio.CancelledError as exc:
            cancelled = exc
            continue
        if task.cancelled() and inspect.getcoroutinestate(step) == inspect.CORO_CREATED:
            task = _start(step)  # cancelled with every task before it began (see above)
            continue
        break
    if cancelled is not None:
        failure = None if task.cancelled() else task.exception()
        raise cancelled from failure
    return task.result()


def _start(step: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    if _EAGER:
        loop = asyncio.get_running_loop()
        return asyncio.Task(_as_step(step), loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    return asyncio.ensure_future(_as_step(step))


async def _as_step(step: Coroutine[Any, Any, T]) -> T:
    # Registered from inside: an eager task runs its first part before its constructor returns.
    task = asyncio.current_task()
    assert task is not None
    _STEPS.add(task)
    try:
        return await step
    finally:
        _STEPS.discard(task)
