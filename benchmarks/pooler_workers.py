"""The pooler issue's figure: concurrent workers through a transaction-pooling PgBouncer.

Each of ``workers`` tasks creates a session, then for ``rounds`` rounds appends a checkpoint,
reads the session, updates it (a context change and one more checkpoint) and heartbeats. A
worker succeeds when every one of its calls did; what was acknowledged is then read back through
a direct connection, and anything missing counts as a lost write.

``python -m benchmarks.pooler_workers`` starts a throwaway PostgreSQL and a PgBouncer
(``pool_mode = transaction``) and runs the workload with three engine configurations: the
documented ``create_engine(url)``, SQLAlchemy's recipe for asyncpg behind PgBouncer (no statement
caches, unique statement names) without telling the repository, and
``create_engine(url, transaction_pooling=True)``. tests/test_pooler.py runs the last one.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import SessionRepository, create_engine, migrations

_STATEMENT_NAME = re.compile(r'"__asyncpg_[^"]*"')
WORKERS = 30
ROUNDS = 5


@dataclass
class Outcome:
    """What one run of the workload did."""

    workers: int
    succeeded: int = 0
    acknowledged: int = 0  # writes the repository returned from
    lost: int = 0  # acknowledged writes not found afterwards
    errors: Counter[str] = field(default_factory=Counter)  # first error of each failed worker

    def line(self) -> str:
        text = (
            f"{self.succeeded}/{self.workers} workers succeeded, {self.acknowledged} writes "
            f"acknowledged, {self.lost} lost"
        )
        for error, count in self.errors.most_common(3):
            text += f"\n    {count} x {error[:160]}"
        return text


@dataclass
class _Ledger:
    """What the repository acknowledged for one worker's session."""

    sid: str
    checkpoints: dict[int, str]  # seq -> name
    version: int
    step: int | None = None  # the context's "step" as last stored


async def _worker(repo: SessionRepository, index: int, rounds: int, ledgers: list[_Ledger]) -> None:
    session = await repo.create_session("pooled-worker", user_id=f"worker-{index}")
    sid = session.session_id
    ledger = _Ledger(sid, {1: "session_created"}, session.version)
    ledgers.append(ledger)
    for step in range(rounds):
        appended = await repo.add_checkpoint(sid, f"append-{step}", {"step": step})
        assert appended.seq is not None
        ledger.checkpoints[appended.seq] = appended.name
        loaded = await repo.get_session(sid)
        if loaded is None:
            raise RuntimeError(f"session {sid} vanished")
        loaded.context["step"] = step
        loaded.checkpoint(f"update-{step}", {"step": step})
        stored = await repo.update_session(loaded)
        ledger.checkpoints.update({cp.seq: cp.name for cp in stored.checkpoints if cp.seq})
        ledger.version, ledger.step = stored.version, step
        if not await repo.heartbeat(sid):
            raise RuntimeError(f"heartbeat of {sid} refused")


async def run_workers(
    engine: AsyncEngine, check: AsyncEngine, *, workers: int = WORKERS, rounds: int = ROUNDS
) -> Outcome:
    """Run the workload on ``engine``; read what was acknowledged back through ``check``."""
    repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
    outcome = Outcome(workers)
    ledgers: list[list[_Ledger]] = [[] for _ in range(workers)]
    results = await asyncio.gather(
        *(_worker(repo, w, rounds, ledgers[w]) for w in range(workers)), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            error = f"{type(result).__name__}: {result}".splitlines()[0]
            outcome.errors[_STATEMENT_NAME.sub('"__asyncpg_..."', error)] += 1
        else:
            outcome.succeeded += 1
    reader = SessionRepository(async_sessionmaker(check, expire_on_commit=False))
    for ledger in (ledger for found in ledgers for ledger in found):
        stored = await reader.get_session(ledger.sid)
        history = await reader.list_checkpoints(ledger.sid, limit=1000)
        names = {cp.seq: cp.name for cp in history}
        outcome.acknowledged += len(ledger.checkpoints) + 1  # + the last version
        outcome.lost += sum(names.get(seq) != name for seq, name in ledger.checkpoints.items())
        stale = stored is None or stored.version < ledger.version
        lost_step = ledger.step is not None and (
            stored is None or stored.context.get("step") != ledger.step
        )
        outcome.lost += stale or lost_step
    return outcome


def sqlalchemy_recipe_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """SQLAlchemy's documented asyncpg settings behind PgBouncer, without the repository marker."""
    connect_args: dict[str, Any] = {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",
    }
    return create_engine(url, connect_args=connect_args, **kwargs)


async def compare(direct_url: str, pooled_url: str, workers: int, rounds: int) -> None:
    await migrations.upgrade(direct_url)
    check = create_engine(direct_url)
    configurations = {
        "create_engine(url)": lambda: create_engine(pooled_url, pool_size=workers),
        "SQLAlchemy's PgBouncer recipe, no marker": lambda: sqlalchemy_recipe_engine(
            pooled_url, pool_size=workers
        ),
        "create_engine(url, transaction_pooling=True)": lambda: create_engine(
            pooled_url, transaction_pooling=True, pool_size=workers
        ),
    }
    try:
        for label, make in configurations.items():
            engine = make()
            try:
                outcome = await run_workers(engine, check, workers=workers, rounds=rounds)
            finally:
                await engine.dispose()
            print(f"{label}:\n  {outcome.line()}")
    finally:
        await check.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pooler_workers", description=__doc__
    )
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--pool-size", type=int, default=10, help="PgBouncer's server connections")
    args = parser.parse_args(argv)
    from tests.servers import PgBouncerServer, PostgresServer

    with (
        tempfile.TemporaryDirectory(prefix="agent-session-store-pooler-") as tmp,
        PostgresServer.start(Path(tmp) / "pg") as postgres,
        PgBouncerServer.start(
            Path(tmp) / "pgbouncer", postgres.port, pool_size=args.pool_size
        ) as bouncer,
    ):
        direct = postgres.create_database("pooler_workers")
        print(
            f"{args.workers} workers x {args.rounds} rounds through PgBouncer "
            f"(pool_mode = transaction, {args.pool_size} server connections)"
        )
        asyncio.run(compare(direct, bouncer.url("pooler_workers"), args.workers, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
