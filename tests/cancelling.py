"""A deterministic cancellation harness: cancel an awaiting call at its k-th suspension point.

``await cancel_at(k, coro)`` runs ``coro`` in the current task and counts each time it suspends
(each future it waits on, each bare yield). At the k-th suspension the task is cancelled, exactly
as ``asyncio.timeout`` or a client disconnect would cancel it: the awaited future is cancelled
and ``CancelledError`` is thrown into the coroutine at that point. No sleeps, no timing: the same
k cancels at the same await on every run (as long as the awaited I/O suspends there).

Usage, to exercise every suspension point of a call in turn::

    k = 1
    while True:
        outcome = await cancel_at(k, lambda: repo.heartbeat(sid))
        ...check invariants...
        if not outcome.cancelled:
            break  # the call finished before its k-th suspension: all points were tried
        k += 1
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any


class _Counting:
    """Awaits a coroutine step by step, cancelling the current task at its k-th suspension."""

    def __init__(self, awaitable: Awaitable[Any], cancel_at: int) -> None:
        self._awaitable = awaitable
        self._cancel_at = cancel_at
        self.suspensions = 0

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self._awaitable.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = inner.send(value) if error is None else inner.throw(error)
            except StopIteration as stop:
                return stop.value
            self.suspensions += 1
            if self.suspensions == self._cancel_at:
                task = asyncio.current_task()
                assert task is not None
                # Before the task sees the yielded future: it cancels that future and throws
                # CancelledError in here, exactly as for an external cancel at this await.
                task.cancel()
            try:
                value, error = (yield yielded), None
            except BaseException as exc:
                value, error = None, exc


@dataclass
class Outcome:
    """What one run under ``cancel_at`` did."""

    cancelled: bool
    """The call raised ``CancelledError`` (it was cancelled at the k-th suspension)."""
    result: Any
    """What it returned, when not cancelled and not failed."""
    error: BaseException | None
    """Another exception it raised (a cancelled call may not turn into anything else)."""
    suspensions: int
    """How many times the call suspended before it ended."""


async def cancel_at(k: int, call: Callable[[], Awaitable[Any]]) -> Outcome:
    """Run ``call()`` in a fresh task, cancelled at its ``k``-th suspension point."""
    counting = _Counting(call(), k)

    async def run() -> Any:
        return await counting

    task = asyncio.create_task(run())
    try:
        result = await task
    except asyncio.CancelledError:
        if not task.cancelled():  # pragma: no cover - our own task was cancelled
            raise
        return Outcome(True, None, None, counting.suspensions)
    except Exception as exc:
        return Outcome(False, None, exc, counting.suspensions)
    return Outcome(False, result, None, counting.suspensions)
