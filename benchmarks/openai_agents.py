"""SessionStoreSession next to the SDK's own SQLAlchemySession, through the Session interface.

    .venv/bin/python -m benchmarks.openai_agents            # both backends, own throwaway servers
    .venv/bin/python -m benchmarks.openai_agents --quick    # seconds
    .venv/bin/python -m benchmarks.openai_agents --backend sqlite --postgres-url postgresql+asyncpg://...

The same workload runs against both stores on the same server (each in its own fresh database),
interleaved round by round (benchmarks/timing.py), each call on a new Session instance as a
request handler would make one. Operations:

- ``create``: the first ``add_items`` (one item) of a new ``session_id``;
- ``get_0`` / ``get_1000``: ``get_items()`` of a conversation holding 0 / 1,000 items;
- ``get_last_20``: ``get_items(limit=20)`` of a 1,000-item conversation (a Runner with
  ``SessionSettings(limit=20)``: the windowed listing);
- ``append``: ``add_items`` of a turn (a user and an assistant message) to a growing conversation;
- ``pop``: ``pop_item()`` of a long conversation.

Figures are operations per second (median of the timed repeats) and the ratio ours ÷ theirs of
operations per second, repeat by repeat (above 1: ours is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from agents.extensions.memory import SQLAlchemySession
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from agent_session_store import SessionRepository, create_engine
from agent_session_store.integrations.openai_agents import SessionStoreSession
from benchmarks.databases import Databases
from benchmarks.timing import Op, Plan, measure, median, paired_ratio

BACKENDS = ("sqlite", "postgres")
OPERATIONS = ("create", "get_0", "get_1000", "get_last_20", "append", "pop")
DEEP = 1000


@dataclass(frozen=True)
class Row:
    backend: str
    operation: str
    ours: float
    theirs: float
    ratio: float | None


def turn(i: int) -> list[Any]:
    return [{"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i} " + "x" * 200}]  # fmt: skip


async def _ops(
    make: Any, *, workers: int, pops: int, deep: int = DEEP, prefix: str
) -> dict[str, Op]:
    """The workload on one store; ``make(session_id)`` builds a Session instance."""
    empty, full = f"{prefix}-empty", f"{prefix}-full"
    await make(empty).add_items([{"role": "user", "content": "gone"}])
    await make(empty).pop_item()  # the conversation exists and holds nothing
    await make(full).add_items([m for i in range(deep // 2) for m in turn(i)])
    for w in range(workers):
        await make(f"{prefix}-append-{w}").add_items(turn(0))
    popped = f"{prefix}-pop"
    for start in range(0, pops, 1000):
        batch = [
            {"role": "user", "content": f"item {i}"} for i in range(start, min(start + 1000, pops))
        ]
        await make(popped).add_items(batch)

    async def create(item: int, worker: int) -> object:
        await make(f"{prefix}-new-{item}").add_items(turn(item)[:1])
        return None

    async def get_0(item: int, worker: int) -> object:
        return await make(empty).get_items()

    async def get_1000(item: int, worker: int) -> object:
        return await make(full).get_items()

    async def get_last_20(item: int, worker: int) -> object:
        return await make(full).get_items(limit=20)

    async def append(item: int, worker: int) -> object:
        await make(f"{prefix}-append-{worker}").add_items(turn(item))
        return None

    async def pop(item: int, worker: int) -> object:
        return await make(popped).pop_item()

    return {"create": create, "get_0": get_0, "get_1000": get_1000,
            "get_last_20": get_last_20, "append": append, "pop": pop}  # fmt: skip


async def run_backend(backend: str, dbs: Databases, plan: Plan) -> list[Row]:
    ours_url = await dbs.create(backend, "oa_ours")
    theirs_url = await dbs.create(backend, "oa_theirs")
    ours_engine = create_engine(ours_url)
    theirs_engine: AsyncEngine = create_async_engine(theirs_url)
    try:
        repo = SessionRepository(async_sessionmaker(ours_engine, expire_on_commit=False))
        await SQLAlchemySession("setup", engine=theirs_engine, create_tables=True).get_items()

        def ours(session_id: str) -> SessionStoreSession:
            return SessionStoreSession(session_id, repo)

        def theirs(session_id: str) -> SQLAlchemySession:
            return SQLAlchemySession(session_id, engine=theirs_engine)

        pops = plan.items * 2
        ops = {f"ours/{k}": v for k, v in (await _ops(ours, workers=plan.tasks, pops=pops,
                                                       prefix="o")).items()}  # fmt: skip
        ops |= {f"theirs/{k}": v for k, v in (await _ops(theirs, workers=plan.tasks, pops=pops,
                                                          prefix="t")).items()}  # fmt: skip
        rates = await measure(ops, plan)
    finally:
        await ours_engine.dispose()
        await theirs_engine.dispose()
    return [
        Row(backend, op, median(rates[f"ours/{op}"]), median(rates[f"theirs/{op}"]),
            paired_ratio(rates[f"ours/{op}"], rates[f"theirs/{op}"]))
        for op in OPERATIONS
    ]  # fmt: skip


async def run(
    backends: Sequence[str], *, postgres_url: str | None, workdir: Path, plan: Plan
) -> list[Row]:
    """Every operation on every backend; the databases are dropped at the end."""
    dbs = Databases(postgres_url, workdir)
    try:
        rows: list[Row] = []
        for backend in backends:
            rows += await run_backend(backend, dbs, plan)
        return rows
    finally:
        await dbs.drop_all()


def table(rows: Sequence[Row]) -> str:
    lines = ["| backend | operation | ours (ops/s) | SQLAlchemySession (ops/s) | ours ÷ theirs |",
             "|---|---|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(f"| {r.backend} | {r.operation} | {r.ours:,.0f} | {r.theirs:,.0f} | {ratio} |")
    return "\n".join(lines)


FULL = Plan(ops=100, repeats=5, warmup=10)
QUICK = Plan(ops=5, repeats=2, warmup=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openai_agents", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--backend", choices=BACKENDS, action="append", help="default: both")
    parser.add_argument("--postgres-url", help="use this running PostgreSQL server")
    args = parser.parse_args(argv)
    backends = args.backend or list(BACKENDS)
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="agent-session-store-oa-") as tmp, ExitStack() as stack:
        postgres_url = args.postgres_url
        if postgres_url is None and "postgres" in backends:
            from tests.servers import PostgresServer

            postgres_url = stack.enter_context(PostgresServer.start(Path(tmp) / "pg")).url
        rows = asyncio.run(run(backends, postgres_url=postgres_url, workdir=Path(tmp), plan=plan))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
