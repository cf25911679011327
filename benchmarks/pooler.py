"""Per-call cost behind a transaction-pooling PgBouncer, next to a direct connection.

Three engines on one database, measured interleaved in the same repeats (see ``timing``):

- ``direct``: ``create_engine(url)`` straight to PostgreSQL, the autocommit fast path;
- ``direct_tx``: ``create_engine(url, transaction_pooling=True)`` straight to PostgreSQL: what
  the pooled path costs in itself (BEGIN and COMMIT, no statement cache), without the proxy;
- ``pgbouncer``: ``create_engine(url, transaction_pooling=True)`` through PgBouncer.

Ratios are each one ÷ ``direct``, repeat by repeat. No cache: these are database calls.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import SessionRepository, create_engine
from benchmarks import seed
from benchmarks.timing import Op, Plan, measure, paired_ratio

CONFIGS = ("direct", "direct_tx", "pgbouncer")
OPS = ("get_session", "create_session", "add_checkpoint", "heartbeat")


async def _ops(name: str, engine: AsyncEngine, tasks: int) -> dict[str, Op]:
    repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
    sids = [
        (await repo.create_session("bench-pooler", user_id="u", context=seed.CONTEXT)).session_id
        for _ in range(tasks)
    ]

    async def get(item: int, worker: int) -> None:
        if await repo.get_session(sids[worker]) is None:
            raise RuntimeError("benchmark session vanished")

    async def create(item: int, worker: int) -> None:
        await repo.create_session("bench-pooler", user_id="u", context=seed.CONTEXT)

    async def append(item: int, worker: int) -> None:
        await repo.add_checkpoint(sids[worker], "step", seed.CHECKPOINT_DATA)

    async def beat(item: int, worker: int) -> None:
        if not await repo.heartbeat(sids[worker]):
            raise RuntimeError("benchmark heartbeat refused")

    ops = {"get_session": get, "create_session": create, "add_checkpoint": append}
    return {f"{name}/{op}": fn for op, fn in {**ops, "heartbeat": beat}.items()}


async def pooled_vs_direct(direct_url: str, pooled_url: str, plan: Plan) -> dict[str, Any]:
    """Operations per second of each config and op, and each config's ratio to ``direct``."""
    pool = {} if plan.tasks == 1 else {"pool_size": plan.tasks, "max_overflow": 0}
    engines = {
        "direct": create_engine(direct_url, **pool),
        "direct_tx": create_engine(direct_url, transaction_pooling=True, **pool),
        "pgbouncer": create_engine(pooled_url, transaction_pooling=True, **pool),
    }
    try:
        ops: dict[str, Op] = {}
        for name, engine in engines.items():
            ops |= await _ops(name, engine, plan.tasks)
        rates = await measure(ops, plan)
    finally:
        for engine in engines.values():
            await engine.dispose()
    out: dict[str, Any] = {}
    for op in OPS:
        direct = rates[f"direct/{op}"]
        for config in CONFIGS:
            values = rates[f"{config}/{op}"]
            out[f"{config}/{op}"] = {
                "repeats": [round(v, 1) for v in values],
                "ops_per_s": round(sorted(values)[len(values) // 2], 1),
                "ratio_to_direct": round(paired_ratio(values, direct) or 0.0, 3),
            }
    return out


def render(results: dict[str, dict[str, Any]]) -> list[str]:
    """Lines for the report: one per mode and op, the three configs side by side."""
    lines = [f"{'pooler (ops/s; ÷ direct)':<34} {'direct':>8} {'direct_tx':>17} {'pgbouncer':>17}"]
    for mode, figures in results.items():
        for op in OPS:
            cells = [f"{figures[f'direct/{op}']['ops_per_s']:>8,.0f}"]
            for config in CONFIGS[1:]:
                figure = figures[f"{config}/{op}"]
                cells.append(f"{figure['ops_per_s']:>8,.0f} ({figure['ratio_to_direct']:.2f})")
            lines.append(f"{f'postgres/{mode}/{op}':<34} " + " ".join(f"{c:>17}" for c in cells))
    return lines
