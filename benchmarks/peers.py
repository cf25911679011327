"""The peer comparison: ``python -m benchmarks.peers [--quick] [--json out.json]``.

The same single-client workload (sequential awaits) against agent-session-store, the session
stores of Google ADK, the OpenAI Agents SDK and LangGraph, and the raw drivers, in one process
and one run, interleaved repeat by repeat; then agent-session-store with 50 tasks on one pool
next to the raw drivers with 50 connections, and what the Redis cache costs. Peers come from the
optional ``bench`` extra (``pip install -e '.[bench]'``); one that is not installed or fails is
left out with the reason. Servers as in ``benchmarks.run``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from benchmarks import langgraph_peers
from benchmarks import peer_adapters as peers
from benchmarks.cache_figures import cache_figures
from benchmarks.contenders import Contender, Ours, RawDriver
from benchmarks.databases import Databases
from benchmarks.peer_report import OPS, PeerReport, Rates
from benchmarks.run import make_cache
from benchmarks.timing import Plan, measure

logger = logging.getLogger("benchmarks")

BACKENDS = ("postgres", "sqlite")
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "peers.json"
PEER_PACKAGES = ("google-adk", "openai-agents", "langgraph-checkpoint-postgres",
                 "langgraph-checkpoint-sqlite", "psycopg")  # fmt: skip
OUR_PACKAGES = ("agent-session-store", "sqlalchemy", "asyncpg", "aiosqlite", "redis", "pydantic")


@dataclass(frozen=True)
class PeerSizes:
    """How big one peer run is."""

    ops: int  # operations per timed repeat, single client
    repeats: int
    warmup: int
    history: int  # items in the session of the get/append "at history" figures
    deep_ops: int  # operations per timed repeat at that history
    conc_ops: int  # operations per timed repeat with ``tasks`` tasks, PostgreSQL
    sqlite_conc_ops: int  # the same on SQLite, whose writes queue on one lock
    conc_repeats: int
    tasks: int


FULL = PeerSizes(ops=200, repeats=5, warmup=20, history=1000, deep_ops=40, conc_ops=500,
                 sqlite_conc_ops=200, conc_repeats=3, tasks=50)  # fmt: skip
QUICK = PeerSizes(ops=8, repeats=2, warmup=2, history=20, deep_ops=4, conc_ops=20,
                  sqlite_conc_ops=10, conc_repeats=2, tasks=5)  # fmt: skip


# Each contender of a backend: how to build it from the URL of its own scratch database (which
# the Redis peer ignores: its keys live under the run's prefix).
Build = Callable[[str], Contender]


def _contenders(backend: str, redis_url: str | None, namespace: str) -> dict[str, Build]:
    if backend == "postgres":
        builds: dict[str, Build] = {
            "ours": lambda url: Ours(backend, url),
            "raw": lambda url: RawDriver(backend, url),
            "adk": lambda url: peers.AdkDatabase(backend, url),
            "openai": lambda url: peers.OpenAISQLAlchemy(backend, url),
            "langgraph": peers.LangGraphPostgres,
        }
        if redis_url is not None:
            builds["openai_redis"] = lambda url: peers.OpenAIRedis(redis_url, f"{namespace}.oa")
        return builds
    return {
        "ours": lambda url: Ours(backend, url),
        "raw": lambda url: RawDriver(backend, url),
        "adk": lambda url: peers.AdkDatabase(backend, url),
        "adk_sqlite": peers.AdkSqlite,
        "openai": lambda url: peers.OpenAISQLAlchemy(backend, url),
        "openai_sqlite": peers.OpenAISQLite,
        "openai_async_sqlite": peers.OpenAIAsyncSQLite,
        "langgraph": peers.LangGraphSqlite,
    }


class PeerRunner:
    """One run: fills a :class:`PeerReport`."""

    def __init__(
        self,
        sizes: PeerSizes,
        dbs: Databases,
        redis_url: str | None,
        backends: Sequence[str],
    ) -> None:
        self.sizes = sizes
        self.dbs = dbs
        self.redis_url = redis_url
        self.redis = Redis.from_url(redis_url) if redis_url else None
        self.backends = list(backends)
        self.namespace = f"bench-{uuid.uuid4().hex[:8]}"
        self.report = PeerReport()

    @property
    def seq_plan(self) -> Plan:
        return Plan(self.sizes.ops, self.sizes.repeats, self.sizes.warmup)

    async def run(self) -> PeerReport:
        started = time.perf_counter()
        self.report.meta = _meta(self.sizes)
        try:
            for backend in self.backends:
                await self._single_client(backend)
            for backend in self.backends:
                await self._concurrent(backend)
            for backend in self.backends:
                await self._cache(backend)
            for backend in self.backends:
                await self._savers(backend)
        finally:
            if self.redis is not None:
                await _forget_keys(self.redis, self.namespace)
                await self.redis.aclose()
        self.report.meta["duration_s"] = round(time.perf_counter() - started, 1)
        return self.report

    async def _open(self, backend: str) -> list[Contender]:
        opened: list[Contender] = []
        for key, build in _contenders(backend, self.redis_url, self.namespace).items():
            url = await self.dbs.create(backend, f"peer_{key}", migrate=key == "ours")
            contender = build(url)
            # A peer on another kind of store: shown beside this backend's, not counted among them.
            other = isinstance(contender, peers.OpenAIRedis)
            if other:
                contender.name = f"{contender.name} (Redis)"
            try:
                await contender.open()
                await contender.check()
            except Exception as exc:
                await _close_quietly(contender)
                if contender.role != "peer":
                    raise  # ours and the raw drivers must run
                reason = _reason(exc)
                self.report.left_out.append(f"{contender.name} ({backend}): {reason}")
                logger.warning("%s: %s left out: %s", backend, contender.name, reason)
                continue
            self.report.roles[contender.name] = "other" if other else contender.role
            opened.append(contender)
        return opened

    async def _single_client(self, backend: str) -> None:
        s = self.sizes
        contenders = await self._open(backend)
        figures: dict[str, dict[str, list[float]]] = {}
        try:
            for op in OPS_ORDER:
                logger.info("%s: %s, %d contenders interleaved", backend, op, len(contenders))
                ops = {c.name: getattr(c, op) for c in contenders}
                figures[op] = await measure(ops, self.seq_plan)
            for contender in contenders:
                logger.info("%s: %s: building a %d-item history", backend, contender.name,
                            s.history)  # fmt: skip
                await contender.seed_history(s.history)
            # The history was just built through the same calls: a short warm-up is enough.
            deep = Plan(s.deep_ops, s.repeats, min(5, s.deep_ops))
            for op in ("get", "append"):
                logger.info("%s: %s at %d items", backend, op, s.history)
                ops = {c.name: getattr(c, f"{op}_deep") for c in contenders}
                figures[f"{op} @{s.history}"] = await measure(ops, deep)
        finally:
            for contender in contenders:
                await _close_quietly(contender)
        self.report.seq[backend] = {op: figures[op] for op in (*OPS, *figures) if op in figures}

    async def _concurrent(self, backend: str) -> None:
        s = self.sizes
        ops_count = s.sqlite_conc_ops if backend == "sqlite" else s.conc_ops
        plan = Plan(ops_count, s.conc_repeats, s.tasks, s.tasks)
        url = await self.dbs.create(backend, "peer_conc")
        contenders: list[Contender] = [
            Ours(backend, url, pool_size=s.tasks),
            RawDriver(backend, url, tasks=s.tasks),
        ]
        figures: Rates = {backend: {}}
        try:
            for contender in contenders:
                await contender.open()
                self.report.roles.setdefault(contender.name, contender.role)
            for op in OPS_ORDER:
                logger.info("%s: %s with %d tasks", backend, op, s.tasks)
                ops = {c.name: getattr(c, op) for c in contenders}
                figures[backend][op] = await measure(ops, plan)
        finally:
            for contender in contenders:
                await _close_quietly(contender)
        self.report.conc[backend] = {op: figures[backend][op] for op in OPS}

    async def _cache(self, backend: str) -> None:
        namespace = f"{self.namespace}.cache-{backend}"
        cache = make_cache(self.redis, namespace)
        if self.redis is None or cache is None:
            self.report.left_out.append(f"Redis cache figures ({backend}): no Redis")
            return
        logger.info("%s: the Redis cache against no cache and raw redis", backend)
        url = await self.dbs.create(backend, "peer_cache")
        self.report.cache[backend] = await cache_figures(
            url, self.redis, cache, namespace, self.seq_plan, self.sizes.history
        )

    async def _savers(self, backend: str) -> None:
        """SessionStoreSaver against LangGraph's saver of this backend (langgraph_peers)."""
        sizes = langgraph_peers.QUICK if self.sizes == QUICK else langgraph_peers.FULL
        self.report.savers[backend] = await langgraph_peers.saver_figures(
            backend, self.dbs, sizes, purpose="peer_lg"
        )
        self.report.meta["saver_turns"] = sizes.turns


# Create before reading, append before deleting: each item's session goes through all four.
OPS_ORDER = ("create", "get", "append", "delete")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return f"not installed ({exc}); pip install -e '.[bench]'"
    return f"failed: {type(exc).__name__}: {exc}"[:300]


async def _close_quietly(contender: Contender) -> None:
    try:
        await contender.close()
    except Exception as exc:  # a peer's failing close must not hide the figures
        logger.warning("closing %s failed: %s", contender.name, _reason(exc))


async def _forget_keys(redis: Redis, namespace: str) -> None:
    keys = [k async for k in redis.scan_iter(match=f"*{namespace}*", count=1000)]
    for start in range(0, len(keys), 1000):
        await redis.delete(*keys[start : start + 1000])


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _meta(sizes: PeerSizes) -> dict[str, Any]:
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": asdict(sizes),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "versions": {p: _version(p) for p in (*OUR_PACKAGES, *PEER_PACKAGES)},
    }


async def run_peers(
    sizes: PeerSizes,
    *,
    postgres_url: str | None,
    redis_url: str | None,
    workdir: Path,
    backends: Sequence[str] = BACKENDS,
) -> PeerReport:
    """Run the peer comparison on ``backends`` and return the report.

    Args:
        postgres_url: any database on the PostgreSQL server to use; the run creates (and drops)
            a database per contender beside it.
        redis_url: the Redis server for the cache figures and the Redis peer (``None``: none).
        workdir: where the SQLite files go.
    """
    dbs = Databases(postgres_url, workdir)
    runner = PeerRunner(sizes, dbs, redis_url, backends)
    with warnings.catch_warnings():
        # The peers' own deprecation and "experimental" warnings are theirs, not the run's.
        warnings.simplefilter("ignore")
        try:
            return await runner.run()
        finally:
            await dbs.drop_all()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the JSON")
    parser.add_argument("--backend", choices=BACKENDS, action="append", help="default: both")
    parser.add_argument("--postgres-url", help="use this running PostgreSQL server")
    parser.add_argument("--redis-url", help="use this running Redis server")
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
        tempfile.TemporaryDirectory(prefix="agent-session-store-peers-") as tmp,
        ExitStack() as stack,
    ):
        from tests.servers import PostgresServer, RedisServer

        postgres_url, redis_url = args.postgres_url, args.redis_url
        if postgres_url is None and "postgres" in backends:
            postgres_url = stack.enter_context(PostgresServer.start(Path(tmp) / "pg")).url
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer.start(Path(tmp) / "redis")).url
        report = asyncio.run(
            run_peers(sizes, postgres_url=postgres_url, redis_url=redis_url, workdir=Path(tmp),
                      backends=backends)
        )  # fmt: skip
    publish(report, args.json)
    return 0


def publish(report: PeerReport, json_path: Path) -> None:
    """Print the tables and write the JSON."""
    print(report.table())
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    print(f"\nJSON written to {json_path}")


if __name__ == "__main__":
    sys.exit(main())
