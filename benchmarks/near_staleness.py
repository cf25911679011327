"""How stale the near cache gets: ``python -m benchmarks.near_staleness [--seconds 10]``.

A writer process (``RedisCache`` without a near cache) appends checkpoints to a few sessions and
logs when each write was acknowledged; this process reads them in a loop through a
``RedisCache`` with the near cache on and logs each read's version, start and end. Meanwhile
Redis is frozen (SIGSTOP) twice for longer than the cache's time limit, so invalidations are
lost, and restarted once (empty, every subscription dropped). Times are ``CLOCK_MONOTONIC``,
shared by the processes.

For each acknowledged write, its *staleness* is the time from its acknowledgement to the end of
the last read that began after it and returned an older version (0 if none did); it is reported
for near hits (p50, p99, max), with what plain Redis/database reads showed beside (the cache's
documented residual window after a freeze, not the near cache's). The near cache's promise is
that every near-hit staleness stays below ``near_cache_max_age``. SQLite (a file) is the
database, so the figure is the cache's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import RedisCache, SessionRepository, create_engine, migrations

ROOT = Path(__file__).resolve().parents[1]
SESSIONS = 4


async def writer(config: dict[str, Any]) -> None:
    engine = create_engine(config["url"])
    client = Redis.from_url(config["redis_url"])
    repo = SessionRepository(
        async_sessionmaker(engine, expire_on_commit=False),
        cache=RedisCache(client, namespace=config["namespace"]),
    )
    acks: list[tuple[str, int, float]] = []
    ends = time.monotonic() + config["seconds"]
    i = 0
    while time.monotonic() < ends:
        sid = config["ids"][i % len(config["ids"])]
        checkpoint = await repo.add_checkpoint(sid, "step", {"i": i})
        assert checkpoint.seq is not None
        acks.append((sid, checkpoint.seq, time.monotonic()))  # seq n: version n
        i += 1
        await asyncio.sleep(0.003)  # a write every few ms, not a tight loop
    assert isinstance(repo.cache, RedisCache)
    await repo.cache.drain()
    await repo.cache.repair()
    await client.aclose()
    await engine.dispose()
    print(json.dumps(acks))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(seconds: float, max_age: timedelta, workdir: Path) -> dict[str, Any]:
    from tests.servers import RedisServer

    url = f"sqlite+aiosqlite:///{workdir / 'staleness.db'}"
    await migrations.upgrade(url)
    engine = create_engine(url)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    ids = [(await SessionRepository(factory).create_session("bench")).session_id
           for _ in range(SESSIONS)]  # fmt: skip
    with RedisServer.start(workdir / "redis") as server:
        client = Redis.from_url(server.url)
        cache = RedisCache(client, namespace="staleness", near_cache_entries=100,
                           near_cache_max_age=max_age)  # fmt: skip
        repo = SessionRepository(factory, cache=cache)
        config = {"url": url, "redis_url": server.url, "namespace": "staleness", "ids": ids,
                  "seconds": seconds}  # fmt: skip
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.near_staleness", "--writer", json.dumps(config),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        reads: list[tuple[str, int, float, float, bool]] = []
        faults: list[str] = []
        stop = asyncio.Event()

        async def read() -> None:
            i = 0
            while not stop.is_set():
                sid = ids[i % len(ids)]
                near_before = cache.stats.near_hits
                started = time.monotonic()
                session = await repo.get_session(sid)
                ended = time.monotonic()
                assert session is not None
                reads.append((sid, session.version, started, ended,
                              cache.stats.near_hits > near_before))  # fmt: skip
                i += 1
                # A near hit never suspends: an application's other awaits let the subscription
                # run; a loop of nothing but near hits must yield for it.
                await asyncio.sleep(0)

        async def inject() -> None:
            plan = [(0.2, "pause"), (0.4, "resume"), (0.3, "pause"), (0.5, "resume"),
                    (0.3, "restart")]  # fmt: skip
            scale = seconds / 5
            for delay, what in plan:
                await asyncio.sleep(delay * scale)
                faults.append(f"{time.monotonic():.3f} {what}")
                if what == "pause":
                    server.pause()
                elif what == "resume":
                    server.resume()
                else:
                    await asyncio.to_thread(server.restart)

        reader = asyncio.create_task(read())
        injector = asyncio.create_task(inject())
        out, _ = await child.communicate()
        stop.set()
        await reader
        await injector
        await cache.drain()
        await cache.aclose()
        await client.aclose()
    await engine.dispose()
    acks = json.loads(out.decode().strip().splitlines()[-1])
    by_session: dict[str, list[tuple[int, float, float, bool]]] = {}
    for sid, version, started, ended, near in reads:
        by_session.setdefault(sid, []).append((version, started, ended, near))
    near_stale: list[float] = []
    other_stale: list[float] = []
    for sid, version, acked in acks:
        last_near = last_other = acked
        for read_version, started, ended, near in by_session.get(sid, []):
            if started > acked and read_version < version:
                if near:
                    last_near = max(last_near, ended)
                else:
                    last_other = max(last_other, ended)
        near_stale.append(last_near - acked)
        other_stale.append(last_other - acked)
    stale_near = [s for s in near_stale if s > 0]
    return {
        "seconds": seconds,
        "max_age_s": max_age.total_seconds(),
        "writes": len(acks),
        "reads": len(reads),
        "near_hits": sum(1 for r in reads if r[4]),
        "faults": faults,
        "writes_with_a_stale_near_read": len(stale_near),
        "near_staleness_ms": {
            "p50": round(1000 * _percentile(near_stale, 0.5), 2),
            "p99": round(1000 * _percentile(near_stale, 0.99), 2),
            "max": round(1000 * max(near_stale, default=0.0), 2),
            "p50_of_stale": round(1000 * statistics.median(stale_near), 2) if stale_near else 0,
        },
        "redis_or_db_staleness_ms_max": round(1000 * max(other_stale, default=0.0), 2),
        "within_max_age": max(near_stale, default=0.0) < max_age.total_seconds(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.near_staleness")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-age-ms", type=float, default=1000.0)
    parser.add_argument("--writer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        asyncio.run(writer(json.loads(args.writer)))
        return 0
    with tempfile.TemporaryDirectory(prefix="near-staleness-") as tmp:
        found = asyncio.run(run(args.seconds, timedelta(milliseconds=args.max_age_ms), Path(tmp)))
    print(json.dumps(found, indent=2))
    return 0 if found["within_max_age"] else 1


if __name__ == "__main__":
    sys.exit(main())
