"""The repository's operations, each timed as operations per second beside its baseline.

Sessions created by the ``create_session`` figure feed the figures after it, each item once:
the first ``get_session`` of each is a cache miss, the second a hit, then each is updated, beaten
and finally deleted. Sessions holding 0, 20 and ``deep_checkpoints`` (10,000) checkpoints are
seeded in bulk; ``get_session`` rereads one of them, ``add_checkpoint`` appends to one (per task).
``get_session_by_key`` rereads one session created with a key and holding 20 checkpoints (in
``get_session_20``'s group without the cache); ``add_checkpoints_10`` appends batches of 10 in
``add_checkpoint_0``'s group.

Each group of operations is measured interleaved with its raw baseline (see ``timing``), and the
figures that are compared with each other (history 0 vs 10,000, a page vs one read) share a group.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from agent_session_store import AgentSession, SessionRepository
from benchmarks import seed
from benchmarks.baselines import Raw
from benchmarks.timing import Op, Plan, measure

BASELINE = "baseline"


@dataclass(frozen=True)
class Setup:
    """One configuration: a backend, with or without the cache, single client or concurrent."""

    backend: str  # "sqlite" | "postgres"
    cache: str  # "none" | "redis"
    engine: AsyncEngine
    repo: SessionRepository
    plan: Plan
    raw: Raw  # the database's baseline
    raw_redis: Raw | None  # the cache's baseline
    deep_checkpoints: int
    list_users: int


# record(op name, its rates, its baseline's rates in the same repeats, the baseline's name)
Record = Callable[[str, list[float], list[float], str], None]


def _expect(value: object) -> Any:
    if value is None or value is False:
        raise RuntimeError("benchmark operation failed: the repository returned nothing")
    return value


async def run_operations(setup: Setup, record: Record) -> None:
    """Time every operation of ``setup`` and ``record`` each."""
    repo, plan = setup.repo, setup.plan
    cached = setup.cache != "none"
    created: list[str] = []
    loaded: list[AgentSession] = []

    async def timed(ops: dict[str, Op], baseline: Raw, read: bool) -> None:
        base = baseline.read if read else baseline.write
        base_name = baseline.read_name if read else baseline.write_name
        rates = await measure({**ops, BASELINE: base}, plan)
        for name in ops:
            record(name, rates[name], rates[BASELINE], base_name)

    async def create(item: int, worker: int) -> None:
        session = await repo.create_session("bench", user_id="bench-user", context=seed.CONTEXT)
        created.append(session.session_id)

    await timed({"create_session": create}, setup.raw, read=False)

    async def get_first(item: int, worker: int) -> None:
        loaded.append(_expect(await repo.get_session(created[item])))

    async def list_page(item: int, worker: int) -> None:
        page = await repo.list_sessions(user_id=f"user-{item % setup.list_users}", limit=50)
        _expect(page.items)

    await timed({"get_session_miss": get_first, "list_sessions": list_page}, setup.raw, read=True)

    if cached:
        if setup.raw_redis is None:
            raise ValueError("a cached setup needs the Redis baseline")

        async def get_again(item: int, worker: int) -> None:
            _expect(await repo.get_session(created[item]))

        await timed({"get_session_hit": get_again}, setup.raw_redis, read=True)

    async def update(item: int, worker: int) -> None:
        session = loaded[item]
        session.context["step"] = item
        _expect(await repo.update_session(session))

    async def beat(item: int, worker: int) -> None:
        _expect(await repo.heartbeat(created[item]))

    await timed({"update_session": update, "heartbeat": beat}, setup.raw, read=False)

    if not cached and plan.tasks == 1:
        # Rereading one stored session; with the cache these would all be hits.
        reads = {}
        for label, count in (("0", 0), ("20", 20), ("deep", setup.deep_checkpoints)):
            [sid] = await seed.sessions_with_checkpoints(setup.engine, 1, count)
            reads[f"get_session_{label}"] = _getter(repo, sid)
        reads["get_session_by_key"] = await _keyed_getter(repo)
        await timed(reads, setup.raw, read=True)
    else:
        # With the cache: the key resolved by an index probe, then a cache hit.
        await timed({"get_session_by_key": await _keyed_getter(repo)}, setup.raw, read=True)

    # Appending to sessions that start empty: one per task (the row lock serializes appends).
    appends = {
        "add_checkpoint_0": _appender(repo, await _sessions(setup, plan.tasks, 0)),
        "add_checkpoints_10": _batch_appender(repo, await _sessions(setup, plan.tasks, 0)),
    }
    if plan.tasks == 1:
        deep = await _sessions(setup, 1, setup.deep_checkpoints)
        appends["add_checkpoint_deep"] = _appender(repo, deep)
    await timed(appends, setup.raw, read=False)

    async def delete(item: int, worker: int) -> None:
        _expect(await repo.delete_session(created[item]))

    await timed({"delete_session": delete}, setup.raw, read=False)


async def _sessions(setup: Setup, count: int, checkpoints: int) -> list[str]:
    return await seed.sessions_with_checkpoints(setup.engine, count, checkpoints)


def _getter(repo: SessionRepository, sid: str) -> Op:
    async def get(item: int, worker: int) -> None:
        _expect(await repo.get_session(sid))

    return get


async def _keyed_getter(repo: SessionRepository) -> Op:
    key = f"bench-{uuid.uuid4().hex}"
    created = await repo.create_session("bench", "bench-user", seed.CONTEXT, key=key)
    await repo.add_checkpoints(
        created.session_id, [("step", seed.CHECKPOINT_DATA) for _ in range(19)]
    )

    async def get(item: int, worker: int) -> None:
        _expect(await repo.get_session_by_key("bench", "bench-user", key=key))

    return get


def _batch_appender(repo: SessionRepository, sids: list[str]) -> Op:
    batch = [("step", seed.CHECKPOINT_DATA) for _ in range(10)]

    async def append(item: int, worker: int) -> None:
        await repo.add_checkpoints(sids[worker], batch)

    return append


def _appender(repo: SessionRepository, sids: list[str]) -> Op:
    async def append(item: int, worker: int) -> None:
        await repo.add_checkpoint(sids[worker], "step", seed.CHECKPOINT_DATA)

    return append
