"""Operations per second: several timed repeats of a fixed number of operations.

An operation is called with ``(item, worker)``: ``item`` is unique over the whole measurement
(warm-up included), so operations that consume prepared items (sessions to delete, to read for
the first time) never reuse one; ``worker`` is the index of the task making the call, for
operations that give each task its own connection or session.

Operations measured together are interleaved: each repeat runs one round of every operation in
turn (in alternating order), so a change of load on a shared machine hits all of them alike, and
ratios between them are taken repeat by repeat.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

Op = Callable[[int, int], Awaitable[object]]


@dataclass(frozen=True)
class Plan:
    """How much to run: ``repeats`` timed rounds of ``ops`` calls over ``tasks`` tasks."""

    ops: int
    repeats: int
    warmup: int
    tasks: int = 1

    @property
    def items(self) -> int:
        """How many distinct items a consuming operation needs."""
        return self.warmup + self.ops * self.repeats

    @property
    def mode(self) -> str:
        return "seq" if self.tasks == 1 else "conc"


async def _round(op: Op, first: int, count: int, tasks: int) -> float:
    async def worker(w: int) -> None:
        for item in range(first + w, first + count, tasks):
            await op(item, w)

    start = time.perf_counter()
    if tasks == 1:
        await worker(0)
    else:
        await asyncio.gather(*(worker(w) for w in range(tasks)))
    return time.perf_counter() - start


async def measure(ops: Mapping[str, Op], plan: Plan) -> dict[str, list[float]]:
    """Operations per second of each timed repeat of each of ``ops``, interleaved."""
    for op in ops.values():
        if plan.warmup:
            await _round(op, 0, plan.warmup, min(plan.tasks, plan.warmup))
    rates: dict[str, list[float]] = {name: [] for name in ops}
    for r in range(plan.repeats):
        order = list(ops.items())
        order = order if r % 2 == 0 else order[::-1]
        for name, op in order:
            elapsed = await _round(op, plan.warmup + r * plan.ops, plan.ops, plan.tasks)
            rates[name].append(plan.ops / elapsed)
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratio(values: list[float], reference: list[float]) -> float | None:
    """The median of repeat-by-repeat ratios (of medians when the repeats do not pair up)."""
    if not values or not reference:
        return None
    if len(values) != len(reference):
        return median(values) / median(reference)
    return median([v / r for v, r in zip(values, reference, strict=True)])
