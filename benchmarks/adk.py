"""ADK's session interface on agent_session_store vs ADK's own DatabaseSessionService.

``python -m benchmarks.adk [--quick] [--backend sqlite|postgres] [--postgres-url URL]``

The same workload goes through ``BaseSessionService`` on both: ``SessionStoreService`` (without
and with the Redis cache) and ``google.adk.sessions.DatabaseSessionService``, each on its own
fresh database of the same server. Each figure is operations per second, one client (get_N: a
fifth as many calls per repeat as the other operations); the ratio
is ours ÷ theirs (above 1: ours is faster), the median of repeat-by-repeat ratios, the two
measured interleaved in the same run (benchmarks/timing.py).

Operations:
    create          create_session with a caller id and a little state
    get_0           get_session of a session with no events
    get_N           get_session of a session with N events (all of them: no config)
    get_N_recent10  the same with GetSessionConfig(num_recent_events=10)
    append          append_event (text + a state delta) to one session through its object
    list            list_sessions of a user with 50 sessions
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import tempfile
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import BaseSessionService, GetSessionConfig
from google.adk.sessions.database_session_service import DatabaseSessionService
from google.adk.sessions.session import Session
from google.genai import types

from agent_session_store.integrations.adk import SessionStoreService
from benchmarks.databases import Databases
from benchmarks.timing import Op, Plan, measure, median, paired_ratio

logger = logging.getLogger("benchmarks.adk")

APP = "bench-app"
LISTED = 50


def turn(i: int) -> Event:
    return Event(
        invocation_id=f"inv-{i}",
        author="user",
        content=types.Content(role="user", parts=[types.Part(text=f"message number {i}")]),
        actions=EventActions(state_delta={"turn": i, "user:seen": i}),
    )


class Workload:
    """The prepared sessions and the timed operations of one service."""

    def __init__(self, service: BaseSessionService, events: int) -> None:
        self.service = service
        self.events = events
        self.run = uuid.uuid4().hex[:6]
        self.appending: dict[int, Session] = {}

    async def prepare(self) -> None:
        s = self.service
        await s.create_session(app_name=APP, user_id="reader", session_id="empty")
        deep = await s.create_session(app_name=APP, user_id="reader", session_id="deep")
        for i in range(self.events):
            await s.append_event(deep, turn(i))
        for i in range(LISTED):
            await s.create_session(app_name=APP, user_id="lister", session_id=f"l{i}")

    def ops(self) -> dict[str, Op]:
        s = self.service
        recent = GetSessionConfig(num_recent_events=10)

        async def create(item: int, _: int) -> Any:
            return await s.create_session(
                app_name=APP, user_id="creator", session_id=f"c-{self.run}-{item}", state={"n": 1}
            )

        async def get_0(item: int, _: int) -> Any:
            return await s.get_session(app_name=APP, user_id="reader", session_id="empty")

        async def get_n(item: int, _: int) -> Any:
            return await s.get_session(app_name=APP, user_id="reader", session_id="deep")

        async def get_n_recent(item: int, _: int) -> Any:
            return await s.get_session(
                app_name=APP, user_id="reader", session_id="deep", config=recent
            )

        async def append(item: int, worker: int) -> Any:
            session = self.appending.get(worker)
            if session is None:
                session = await s.create_session(
                    app_name=APP, user_id="writer", session_id=f"w-{self.run}-{worker}"
                )
                self.appending[worker] = session
            return await s.append_event(session, turn(item))

        async def list_(item: int, _: int) -> Any:
            return await s.list_sessions(app_name=APP, user_id="lister")

        return {
            "create": create,
            "get_0": get_0,
            f"get_{self.events}": get_n,
            f"get_{self.events}_recent10": get_n_recent,
            "append": append,
            "list": list_,
        }


async def bench_backend(
    backend: str, dbs: Databases, redis_url: str, plan: Plan, events: int
) -> list[tuple[str, float, float, float, float | None, float | None]]:
    ours_url = await dbs.create(backend, "adk_ours")
    ours_cached_url = await dbs.create(backend, "adk_ours_cached")
    theirs_url = await dbs.create(backend, "adk_theirs")  # our tables there are unused
    ours = SessionStoreService.from_url(ours_url)
    cached = SessionStoreService.from_url(
        ours_cached_url, redis_url=redis_url, namespace=f"bench-{uuid.uuid4().hex[:8]}"
    )
    theirs = DatabaseSessionService(theirs_url)
    rows = []
    try:
        workloads = {"ours": Workload(ours, events), "cached": Workload(cached, events),
                     "theirs": Workload(theirs, events)}  # fmt: skip
        for name, workload in workloads.items():
            logger.info("%s: preparing %s (%d events)", backend, name, events)
            await workload.prepare()
        per = {name: w.ops() for name, w in workloads.items()}
        for op in per["theirs"]:
            logger.info("%s: %s", backend, op)
            # A read of the whole history costs ~100x the others: fewer calls of it per repeat.
            deep = op == f"get_{events}"
            op_plan = plan
            if deep:
                op_plan = dataclasses.replace(plan, ops=max(plan.ops // 5, 2), warmup=2)
            rates = await measure({name: per[name][op] for name in per}, op_plan)
            rows.append(
                (
                    op,
                    median(rates["ours"]),
                    median(rates["cached"]),
                    median(rates["theirs"]),
                    paired_ratio(rates["ours"], rates["theirs"]),
                    paired_ratio(rates["cached"], rates["theirs"]),
                )
            )
    finally:
        await ours.aclose()
        await cached.aclose()
        await theirs.close()
        for purpose in ("adk_ours", "adk_ours_cached", "adk_theirs"):
            await dbs.drop(backend, purpose)
    return rows


def table(
    results: dict[str, list[tuple[str, float, float, float, float | None, float | None]]],
) -> str:
    lines = [
        "| backend | operation | ours ops/s | ours+redis ops/s | DatabaseSessionService ops/s "
        "| ours ÷ theirs | ours+redis ÷ theirs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for backend, rows in results.items():
        for op, ours, cached, theirs, ratio, cached_ratio in rows:
            lines.append(
                f"| {backend} | {op} | {ours:,.0f} | {cached:,.0f} | {theirs:,.0f} "
                f"| {_ratio(ratio)} | {_ratio(cached_ratio)} |"
            )
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


async def run(
    backends: Sequence[str], postgres_url: str | None, redis_url: str, workdir: Path, quick: bool
) -> str:
    plan = Plan(ops=10, repeats=2, warmup=2) if quick else Plan(ops=100, repeats=5, warmup=10)
    events = 100 if quick else 1000
    dbs = Databases(postgres_url, workdir)
    results = {}
    try:
        for backend in backends:
            results[backend] = await bench_backend(backend, dbs, redis_url, plan, events)
    finally:
        await dbs.drop_all()
    return table(results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes")
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--postgres-url", help="a running server (default: start one)")
    parser.add_argument("--redis-url", help="a running Redis (default: start one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    backends = args.backend or ["sqlite", "postgres"]
    with (
        tempfile.TemporaryDirectory(prefix="agent-session-store-adk-") as tmp,
        ExitStack() as stack,
    ):
        from tests.servers import PostgresServer, RedisServer

        postgres_url, redis_url = args.postgres_url, args.redis_url
        if postgres_url is None and "postgres" in backends:
            postgres_url = stack.enter_context(PostgresServer.start(Path(tmp) / "pg")).url
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer.start(Path(tmp) / "redis")).url
        print(asyncio.run(run(backends, postgres_url, redis_url, Path(tmp), args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
