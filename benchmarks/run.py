"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--json out.json]``.

Starts throwaway PostgreSQL and Redis servers (tests/servers.py) in a temporary directory unless
``--postgres-url``/``--redis-url`` name running ones (the run then creates and drops its own
databases and keys there), prints a table and writes JSON. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, ExitStack, nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import ModelCache, SessionRepository, create_engine
from benchmarks import baselines, pooler, seed
from benchmarks.baselines import Raw
from benchmarks.databases import Databases
from benchmarks.operations import Record, Setup, run_operations
from benchmarks.report import Report, key
from benchmarks.storm import miss_storm
from benchmarks.sweep import sweep
from benchmarks.timing import Plan, measure

logger = logging.getLogger("benchmarks")

BACKENDS = ("sqlite", "postgres")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


@dataclass(frozen=True)
class Sizes:
    """How big one run is."""

    ops: int  # operations per timed repeat, single client
    conc_ops: int  # operations per timed repeat, concurrent
    sqlite_conc_ops: int  # the same on SQLite, whose concurrent writes queue on one lock
    repeats: int
    conc_repeats: int
    warmup: int
    tasks: int  # concurrent tasks (and pooled connections)
    deep_checkpoints: int
    list_sessions: int
    list_users: int
    sweep_postgres: int
    sweep_sqlite: int
    cached_probes: int
    storm_readers: int


FULL = Sizes(ops=200, conc_ops=500, sqlite_conc_ops=60, repeats=5, conc_repeats=3, warmup=30,
             tasks=50, deep_checkpoints=10_000, list_sessions=100_000, list_users=1000,
             sweep_postgres=1_000_000, sweep_sqlite=100_000, cached_probes=1000,
             storm_readers=100)  # fmt: skip
QUICK = Sizes(ops=10, conc_ops=20, sqlite_conc_ops=10, repeats=2, conc_repeats=2, warmup=3,
              tasks=5, deep_checkpoints=100, list_sessions=1000, list_users=10,
              sweep_postgres=2000, sweep_sqlite=2000, cached_probes=10,
              storm_readers=100)  # fmt: skip


def make_cache(client: Redis | None, namespace: str) -> ModelCache | None:
    """``agent_session_store.RedisCache`` on ``client``, or ``None`` when it is not available."""
    cache_class: Any = getattr(importlib.import_module("agent_session_store"), "RedisCache", None)
    if client is None or cache_class is None:
        return None
    cache: ModelCache = cache_class(client, namespace=namespace)
    return cache


def _repo(engine: AsyncEngine, cache: ModelCache | None) -> SessionRepository:
    return SessionRepository(async_sessionmaker(engine, expire_on_commit=False), cache=cache)


class Runner:
    """One run over the chosen backends; fills a :class:`Report`."""

    def __init__(
        self,
        sizes: Sizes,
        dbs: Databases,
        redis: Redis | None,
        backends: Sequence[str],
        pgbouncer_url: str | None = None,
    ) -> None:
        self.sizes = sizes
        self.pgbouncer_url = pgbouncer_url
        self.dbs = dbs
        self.redis = redis
        self.backends = list(backends)
        self.namespace = f"bench-{uuid.uuid4().hex[:8]}"
        self.caches = ["none"]
        if make_cache(redis, self.namespace) is not None:
            self.caches.append("redis")
        self.report = Report()

    def plans(self, backend: str) -> list[Plan]:
        s = self.sizes
        conc = s.sqlite_conc_ops if backend == "sqlite" else s.conc_ops
        return [Plan(s.ops, s.repeats, s.warmup), Plan(conc, s.conc_repeats, s.warmup, s.tasks)]

    def cache(self, name: str, scope: str) -> ModelCache | None:
        return None if name == "none" else make_cache(self.redis, f"{self.namespace}.{scope}")

    async def run(self) -> Report:
        started = time.perf_counter()
        self.report.meta = _meta(self.sizes, self.caches)
        if "redis" not in self.caches:
            self.report.notes.append(
                "RedisCache is not available (or no Redis): cache figures skipped"
            )
        # First: the sweep's peak memory must be its own, not left over from other work.
        for backend in self.backends:
            await self._sweep(backend)
        for backend in self.backends:
            await self._backend(backend)
        if "postgres" in self.backends:
            await self._pooler()
        self.report.meta["duration_s"] = round(time.perf_counter() - started, 1)
        return self.report

    async def _sweep(self, backend: str) -> None:
        stale = self.sizes.sweep_postgres if backend == "postgres" else self.sizes.sweep_sqlite
        cache = self.caches[-1]
        logger.info("%s: seeding %d stale sessions and sweeping (cache: %s)", backend, stale, cache)
        engine = create_engine(await self.dbs.create(backend, "sweep"))
        try:
            result = await sweep(
                engine,
                _repo(engine, self.cache(cache, f"sweep-{backend}")),
                stale,
                cached_probes=self.sizes.cached_probes,
            )
        finally:
            await engine.dispose()
            await self.dbs.drop(backend, "sweep")
        self.report.sweeps[backend] = {"cache": cache, **result.as_dict()}
        logger.info("%s: swept in %.1f s", backend, result.wall_s)

    async def _pooler(self) -> None:
        if self.pgbouncer_url is None:
            self.report.notes.append("no PgBouncer (--pgbouncer-url): pooler figures skipped")
            return
        direct = await self.dbs.create("postgres", "pooler")
        database = make_url(direct).database
        pooled = make_url(self.pgbouncer_url).set(database=database).render_as_string(False)
        try:
            for plan in self.plans("postgres"):
                logger.info("postgres: direct vs through PgBouncer (%s)", plan.mode)
                self.report.pooler[plan.mode] = await pooler.pooled_vs_direct(direct, pooled, plan)
        finally:
            await self.dbs.drop("postgres", "pooler")

    async def _backend(self, backend: str) -> None:
        s = self.sizes
        url = await self.dbs.create(backend, "ops")
        engine = create_engine(url)
        try:
            logger.info("%s: seeding %d sessions for list_sessions", backend, s.list_sessions)
            await seed.bulk_sessions(engine, s.list_sessions, users=s.list_users)
            await seed.analyze(engine)
            if backend == "postgres":
                async with engine.connect() as conn:
                    self.report.meta["postgres"] = await conn.scalar(text("SHOW server_version"))
        finally:
            await engine.dispose()
        for plan in self.plans(backend):
            async with self._raw(backend, url, plan) as raw, self._raw_redis(plan) as raw_redis:
                logger.info("%s: raw driver baselines (%s)", backend, plan.mode)
                self._record_raw(backend, plan.mode, await measure(baselines.ops(raw), plan))
                if raw_redis is not None and backend == self.backends[0]:
                    self._record_raw(
                        "redis", plan.mode, await measure(baselines.ops(raw_redis), plan)
                    )
                await self._operations(backend, url, plan, raw, raw_redis)

    async def _operations(
        self,
        backend: str,
        url: str,
        plan: Plan,
        raw: baselines.Raw,
        raw_redis: baselines.Raw | None,
    ) -> None:
        pool = {} if plan.tasks == 1 else {"pool_size": plan.tasks, "max_overflow": 0}
        engine = create_engine(url, **pool)
        try:
            for cache in self.caches:
                logger.info("%s/%s/%s: operations", backend, cache, plan.mode)
                repo = _repo(engine, self.cache(cache, f"{backend}-{plan.mode}"))
                setup = Setup(backend, cache, engine, repo, plan, raw,
                              raw_redis if cache == "redis" else None, self.sizes.deep_checkpoints,
                              self.sizes.list_users)  # fmt: skip
                await run_operations(setup, self._recorder(backend, cache, plan.mode))
                stats = getattr(repo.cache, "stats", None)
                if stats is not None and dataclasses.is_dataclass(stats):
                    config = f"{backend}/{cache}/{plan.mode}"
                    self.report.cache_stats[config] = dataclasses.asdict(stats)  # type: ignore[arg-type]
            if plan.tasks > 1:
                await self._storm(backend, engine)
        finally:
            await engine.dispose()

    def _raw(
        self, backend: str, url: str, plan: Plan
    ) -> AbstractAsyncContextManager[baselines.Raw]:
        if backend == "postgres":
            return baselines.RawPostgres.open(url, plan.tasks)
        return baselines.RawSQLite.open(Path(url.split("///", 1)[1]), plan.tasks)

    def _raw_redis(self, plan: Plan) -> AbstractAsyncContextManager[Raw | None]:
        if self.redis is None:
            return nullcontext()
        return baselines.RawRedis.open(self.redis, f"{self.namespace}.raw.{plan.mode}.")

    async def _storm(self, backend: str, engine: AsyncEngine) -> None:
        readers = self.sizes.storm_readers
        for cache in self.caches:
            repo = _repo(engine, self.cache(cache, f"storm-{backend}"))
            reads = await miss_storm(engine, repo, readers)
            self.report.storms.setdefault(backend, {})[cache] = reads

    def _record_raw(self, backend: str, mode: str, rates: dict[str, list[float]]) -> None:
        for op, values in rates.items():
            self.report.rates[key(backend, "raw", mode, op)] = values

    def _recorder(self, backend: str, cache: str, mode: str) -> Record:
        def record(op: str, rates: list[float], base: list[float], base_name: str) -> None:
            name = key(backend, cache, mode, op)
            self.report.rates[name] = rates
            self.report.paired[name] = base

        return record


def _meta(sizes: Sizes, caches: list[str]) -> dict[str, Any]:
    packages = ("sqlalchemy", "asyncpg", "aiosqlite", "redis", "pydantic", "agent-session-store")
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": asdict(sizes),
        "storm_readers": sizes.storm_readers,
        "caches": caches,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "versions": {name: metadata.version(name) for name in packages},
    }


async def run_benchmark(
    sizes: Sizes,
    *,
    postgres_url: str | None,
    redis_url: str | None,
    workdir: Path,
    backends: Sequence[str] = BACKENDS,
    pgbouncer_url: str | None = None,
) -> Report:
    """Run every benchmark on ``backends`` and return the report.

    Args:
        postgres_url: any database on the PostgreSQL server to use; the run creates (and drops)
            its own databases beside it.
        redis_url: the Redis server for the cache and the Redis baseline (``None``: no cache).
        workdir: where the SQLite database files go.
        pgbouncer_url: a PgBouncer in transaction pooling mode in front of ``postgres_url``'s
            server, passing any database name through (``None``: no pooler figures).
    """
    dbs = Databases(postgres_url, workdir)
    redis = Redis.from_url(redis_url) if redis_url else None
    runner = Runner(sizes, dbs, redis, backends, pgbouncer_url)
    try:
        return await runner.run()
    finally:
        await dbs.drop_all()
        if redis is not None:
            keys = [k async for k in redis.scan_iter(match=f"*{runner.namespace}*", count=1000)]
            for start in range(0, len(keys), 1000):
                await redis.delete(*keys[start : start + 1000])
            await redis.aclose()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the JSON")
    parser.add_argument("--backend", choices=BACKENDS, action="append", help="default: both")
    parser.add_argument("--postgres-url", help="use this running PostgreSQL server")
    parser.add_argument("--redis-url", help="use this running Redis server")
    parser.add_argument(
        "--pgbouncer-url",
        help="use this running PgBouncer (transaction mode, in front of --postgres-url's server)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    sizes = QUICK if args.quick else FULL
    backends = args.backend or list(BACKENDS)
    with (
        tempfile.TemporaryDirectory(prefix="agent-session-store-bench-") as tmp,
        ExitStack() as stack,
    ):
        from tests.servers import PgBouncerServer, PostgresServer, RedisServer

        postgres_url, redis_url = args.postgres_url, args.redis_url
        pgbouncer_url = args.pgbouncer_url
        if postgres_url is None and "postgres" in backends:
            postgres = stack.enter_context(PostgresServer.start(Path(tmp) / "pg"))
            postgres_url = postgres.url
            if pgbouncer_url is None:
                # As many server connections as concurrent tasks: the figures are the proxy hop.
                bouncer = PgBouncerServer.start(
                    Path(tmp) / "pgbouncer", postgres.port, pool_size=sizes.tasks
                )
                pgbouncer_url = stack.enter_context(bouncer).url("postgres")
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer.start(Path(tmp) / "redis")).url
        report = asyncio.run(
            run_benchmark(sizes, postgres_url=postgres_url, redis_url=redis_url,
                          workdir=Path(tmp), backends=backends, pgbouncer_url=pgbouncer_url)
        )  # fmt: skip
    publish(report, args.json)
    return 0


def publish(report: Report, json_path: Path) -> None:
    """Print the table and write the JSON."""
    print(report.table())
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    print(f"\nJSON written to {json_path}")


if __name__ == "__main__":
    sys.exit(main())
