"""The cache against its own Redis commands: ``python -m benchmarks.cache_speed [--quick]``.

Issue 22's targets, each figure measured interleaved (``timing.measure``) with the raw redis-py
commands it is held to, in one process and one run, single client, repeat by repeat:

- **miss overhead**: (a first ``get_session`` through ``RedisCache`` - the same read by a
  repository without the cache) ÷ (a raw ``GET`` + a raw ``SET`` of the bytes the cache stores
  for such a session); target ≤ 1.5;
- **write overhead**, for create, append, update and delete: (with the cache - without) ÷ one
  raw ``SET`` of a generation token with an expiry (what an invalidation must write); target
  ≤ 1.5. Appends, updates and deletes hit sessions that are cached, as in an application that
  reads before it writes;
- **hit**: a cache hit ÷ a raw ``GET`` of the very bytes the cache stored for that session plus
  ``AgentSession.model_validate_json`` of its JSON; target ≥ 0.8; for a session with one
  checkpoint and one with 20;
- **near hit** (with ``near_cache_entries``): the same, through a cache with the near cache on;
  target ≥ 10.

Each figure is given as the median of its per-repeat ratios and the range over the repeats. The
servers are throwaway ones (``tests/servers.py``) unless ``--postgres-url``/``--redis-url`` name
running ones. ``--profile DIR`` instead runs each cached operation under pyinstrument and writes
one HTML and one text profile per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import AgentSession, RedisCache, SessionRepository, create_engine
from benchmarks import seed
from benchmarks.contenders import APPEND_DATA, expect
from benchmarks.databases import Databases
from benchmarks.timing import Op, Plan, measure

WRITES = ("create", "append", "update", "delete")


@dataclass(frozen=True)
class Sizes:
    ops: int
    repeats: int
    warmup: int


FULL = Sizes(ops=300, repeats=7, warmup=30)
QUICK = Sizes(ops=10, repeats=2, warmup=2)


def near_cache_available() -> bool:
    return "near_cache_entries" in inspect.signature(RedisCache).parameters


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def _per_op(rates: list[float]) -> list[float]:
    return [1e6 / r for r in rates]  # microseconds per operation, per repeat


class Bench:
    """One run on one backend: builds the repositories and the keys, then measures."""

    def __init__(
        self, url: str, redis: Redis, namespace: str, sizes: Sizes, before: type[Any] | None = None
    ) -> None:
        self.url = url
        self.redis = redis
        self.namespace = namespace
        self.sizes = sizes
        self.plan = Plan(sizes.ops, sizes.repeats, sizes.warmup)
        self.engine = create_engine(url)
        self.maker = async_sessionmaker(self.engine, expire_on_commit=False)
        self.cache = RedisCache(redis, namespace=namespace)
        self.plain = SessionRepository(self.maker)
        self.cached = SessionRepository(self.maker, cache=self.cache)
        # The cache of another commit (``--before``), measured in the same repeats.
        self.before_cache = None if before is None else before(redis, namespace=f"{namespace}.b")
        self.before = SessionRepository(self.maker, cache=self.before_cache)
        self.raw_prefix = f"{namespace}.raw:"
        self.results: dict[str, Any] = {}

    async def close(self) -> None:
        await self.cache.drain()
        if self.before_cache is not None:
            await self.before_cache.drain()
        await self.engine.dispose()

    # -- helpers -------------------------------------------------------------------------------

    async def sessions(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            s = await self.plain.create_session("bench", user_id="bench-user", context=seed.CONTEXT)
            out.append(s.session_id)
        return out

    async def value_key(self, session_id: str) -> str:
        async for key in self.redis.scan_iter(match=f"*{self.namespace}*{session_id}*:val"):
            return key.decode() if isinstance(key, bytes) else str(key)
        raise RuntimeError(f"the cache stored no value for {session_id}")

    def raw_get_decode(self, key: str) -> Op:
        async def get(item: int, worker: int) -> None:
            value = await self.redis.get(key)
            if not isinstance(value, bytes):
                raise RuntimeError("redis lost the value")
            AgentSession.model_validate_json(value.partition(b"\n")[2])

        return get

    def raw_get(self, key: str) -> Op:
        async def get(item: int, worker: int) -> None:
            if await self.redis.get(key) is None:
                raise RuntimeError("redis lost the value")

        return get

    def raw_set(self, value: bytes, *, px: int | None = None) -> Op:
        async def set_(item: int, worker: int) -> None:
            await self.redis.set(f"{self.raw_prefix}{item % 100}", value, px=px)

        return set_

    # -- figures -------------------------------------------------------------------------------

    async def miss(self) -> None:
        items = self.plan.items
        a, b = await self.sessions(items), await self.sessions(items)
        # The bytes the cache stores for such a session: read one through it, then GET them.
        await self.cached.get_session(a[0])
        await self.cache.drain()
        stored = await self.redis.get(await self.value_key(a[0]))
        assert isinstance(stored, bytes)
        await self.redis.set(f"{self.raw_prefix}get", stored)
        a = [*a[1:], (await self.sessions(1))[0]]

        async def cached(item: int, worker: int) -> None:
            expect(await self.cached.get_session(a[item]), "get_session")

        async def plain(item: int, worker: int) -> None:
            expect(await self.plain.get_session(b[item]), "get_session")

        sides = {
            "cached miss": cached,
            "uncached get": plain,
            "raw GET": self.raw_get(f"{self.raw_prefix}get"),
            "raw SET": self.raw_set(stored, px=86_400_000),
        }
        if self.before_cache is not None:
            d = await self.sessions(items)

            async def before(item: int, worker: int) -> None:
                expect(await self.before.get_session(d[item]), "get_session")

            sides["cached miss (before)"] = before
        rates = await measure(sides, self.plan)
        await self.close_stores()
        self._overhead("miss", rates, "cached miss", "uncached get", ("raw GET", "raw SET"))

    async def write(self, op: str) -> None:
        items = self.plan.items
        if op == "create":
            a = b = c = d = [""] * items
        else:
            a, b, c, d = [await self.sessions(items) for _ in range(4)]
        copies: dict[str, AgentSession] = {}
        for sid in a if op != "create" else ():  # cached, as in an application
            copies[sid] = expect(await self.cached.get_session(sid), "get_session")
        for sid in d if op != "create" and self.before_cache is not None else ():
            copies[sid] = expect(await self.before.get_session(sid), "get_session")
        for sid in [*b, *c] if op == "update" else ():
            copies[sid] = expect(await self.plain.get_session(sid), "get_session")
        await self.cache.drain()

        def run(repo: SessionRepository, ids: list[str]) -> Op:
            async def create(item: int, worker: int) -> None:
                await repo.create_session("bench", user_id="bench-user", context=seed.CONTEXT)

            async def append(item: int, worker: int) -> None:
                await repo.add_checkpoint(ids[item], "step", APPEND_DATA)

            async def update(item: int, worker: int) -> None:
                session = copies[ids[item]]
                session.context["step"] = item
                await repo.update_session(session)

            async def delete(item: int, worker: int) -> None:
                expect(await repo.delete_session(ids[item]), "delete_session")

            return {"create": create, "append": append, "update": update, "delete": delete}[op]

        token = secrets.token_hex(8).encode()
        without, raw_set = run(self.plain, c), self.raw_set(token, px=172_800_000)

        async def then_set(item: int, worker: int) -> None:
            await without(item, worker)
            await raw_set(item, worker)

        sides = {
            "with cache": run(self.cached, a),
            "without": run(self.plain, b),
            "raw SET": raw_set,
            "without, then raw SET": then_set,
        }
        if self.before_cache is not None:
            sides["with cache (before)"] = run(self.before, d)
        await self.close_stores()
        rates = await measure(sides, self.plan)
        self._overhead(op, rates, "with cache", "without", ("raw SET",))
        # What one SET costs right after the same write (servers woken in turn), beside the
        # same SET in a loop of its own: the floor of an invalidation sent after the commit.
        us = {k: _per_op(v) for k, v in rates.items()}
        in_place = [t - w for t, w in zip(us["without, then raw SET"], us["without"], strict=True)]
        extra = [m - w for m, w in zip(us["with cache"], us["without"], strict=True)]
        self.results[op]["raw SET after the write, us"] = round(statistics.median(in_place), 1)
        self.results[op]["overhead / raw SET after the write"] = _spread(
            [e / i for e, i in zip(extra, in_place, strict=True) if i > 0]
        )

    async def hit(self, checkpoints: int, cache: RedisCache, figure: str) -> None:
        repo = SessionRepository(self.maker, cache=cache)
        if checkpoints <= 1:
            sid = (await self.sessions(1))[0]
        else:
            [sid] = await seed.sessions_with_checkpoints(self.engine, 1, checkpoints)
        await repo.get_session(sid)  # a miss: stored
        await cache.drain()
        key = await self.value_key(sid)

        async def hit(item: int, worker: int) -> None:
            expect(await repo.get_session(sid), "get_session")

        sides = {"hit": hit, "raw GET+decode": self.raw_get_decode(key)}
        if self.before_cache is not None and not figure.startswith("near"):
            before = SessionRepository(self.maker, cache=self.before_cache)
            await before.get_session(sid)
            await self.before_cache.drain()

            async def before_hit(item: int, worker: int) -> None:
                expect(await before.get_session(sid), "get_session")

            sides["hit (before)"] = before_hit
        rates = await measure(sides, self.plan)
        raw = rates["raw GET+decode"]
        self.results[figure] = {
            "ratio": _spread([h / r for h, r in zip(rates["hit"], raw, strict=True)]),
            "us_per_op": {k: round(statistics.median(_per_op(v)), 1) for k, v in rates.items()},
        }
        if "hit (before)" in rates:
            self.results[figure]["ratio (before)"] = _spread(
                [h / r for h, r in zip(rates["hit (before)"], raw, strict=True)]
            )

    async def close_stores(self) -> None:
        """Let the stores misses left running end, so they do not land in the next figure."""
        await self.cache.drain()
        if self.before_cache is not None:
            await self.before_cache.drain()

    def _overhead(
        self, figure: str, rates: dict[str, list[float]], mine: str, base: str,
        budget: tuple[str, ...],
    ) -> None:  # fmt: skip
        us = {k: _per_op(v) for k, v in rates.items()}

        def ratios(side: str) -> list[float]:
            return [
                (us[side][r] - us[base][r]) / sum(us[b][r] for b in budget)
                for r in range(len(us[side]))
            ]

        self.results[figure] = {
            "ratio": _spread(ratios(mine)),
            "us_per_op": {k: round(statistics.median(v), 1) for k, v in us.items()},
            "overhead_us": round(statistics.median(us[mine]) - statistics.median(us[base]), 1),
        }
        if f"{mine} (before)" in us:
            self.results[figure]["ratio (before)"] = _spread(ratios(f"{mine} (before)"))

    async def run(self) -> dict[str, Any]:
        await self.miss()
        for op in WRITES:
            await self.write(op)
        await self.hit(1, self.cache, "hit")
        await self.hit(20, self.cache, "hit 20")
        if near_cache_available():
            near: Any = RedisCache(self.redis, namespace=f"{self.namespace}.near",
                                   near_cache_entries=1000)  # type: ignore[call-arg]  # fmt: skip
            try:
                await self.hit(1, near, "near hit")
                await self.hit(20, near, "near hit 20")
            finally:
                await near.drain()
                close = getattr(near, "aclose", None)
                if close is not None:
                    await close()
        return self.results


TARGETS: dict[str, tuple[str, float]] = {
    "miss": ("<=", 1.5),
    **{op: ("<=", 1.5) for op in WRITES},
    "hit": (">=", 0.8),
    "hit 20": (">=", 0.8),
    "near hit": (">=", 10.0),
    "near hit 20": (">=", 10.0),
}
WHAT = {
    "miss": "(cached miss - uncached get) / (raw GET + raw SET)",
    **{op: f"({op} with cache - without) / raw SET" for op in WRITES},
    "hit": "hit / (raw GET + decode), 1 checkpoint",
    "hit 20": "hit / (raw GET + decode), 20 checkpoints",
    "near hit": "near hit / (raw GET + decode), 1 checkpoint",
    "near hit 20": "near hit / (raw GET + decode), 20 checkpoints",
}


def near_memory(entries: int = 1000) -> dict[str, int]:
    """Bytes per near-cache entry (``tracemalloc``), for a session of 1 and of 20 checkpoints."""
    import tracemalloc
    from datetime import UTC, datetime

    from agent_session_store import SessionCheckpoint
    from agent_session_store._near_cache import NearCache

    out = {}
    for checkpoints in (1, 20):
        session = AgentSession(
            agent_type="bench", user_id="bench-user", context=seed.CONTEXT,
            checkpoints=[SessionCheckpoint(name=f"step-{i}", data=seed.CHECKPOINT_DATA, seq=i + 1,
                                           timestamp=datetime.now(UTC))
                         for i in range(checkpoints)],
            checkpoint_count=checkpoints,
        )  # fmt: skip
        near = NearCache(entries, 3600.0, time.monotonic)
        near.live = True
        keys = [str(uuid.uuid4()) for _ in range(entries)]
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            near.put("AgentSession", key, session, near.begin())
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        out[f"{checkpoints} checkpoint(s)"] = (after - before) // entries
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| backend | figure | what | before (median, range) | after (median, range) | target "
        "| met | us/op |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, figures in results.items():
        if backend == "near cache bytes per entry":
            continue
        for figure, found in figures.items():
            ratio = found["ratio"]
            sense, target = TARGETS[figure]
            value = ratio["median"]
            met = value <= target if sense == "<=" else value >= target
            us = ", ".join(f"{k} {v}" for k, v in found["us_per_op"].items())
            if "overhead / raw SET after the write" in found:
                after = found["overhead / raw SET after the write"]
                us += f"; overhead / raw SET right after the write {after['median']:.2f}"
            old = found.get("ratio (before)")
            before = (
                "-" if old is None else f"{old['median']:.2f} ({old['min']:.2f}-{old['max']:.2f})"
            )
            lines.append(
                f"| {backend} | {figure} | {WHAT[figure]} | {before} | {value:.2f} "
                f"({ratio['min']:.2f}-{ratio['max']:.2f}) | {sense} {target:g} | "
                f"{'yes' if met else 'NO'} | {us} |"
            )
    return "\n".join(lines)


def load_before(ref: str) -> type[Any]:
    """``RedisCache`` as commit ``ref`` wrote it (its own module, beside today's)."""
    import subprocess
    import types

    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{ref}:agent_session_store/redis_cache.py"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    module = types.ModuleType("agent_session_store._redis_cache_before")
    module.__file__ = f"<{ref}:agent_session_store/redis_cache.py>"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # our own history
    cache_class: type[Any] = module.RedisCache
    return cache_class


async def run(
    sizes: Sizes, postgres_url: str | None, redis_url: str, workdir: Path, backends: list[str],
    before: type[Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    dbs = Databases(postgres_url, workdir)
    redis = Redis.from_url(redis_url)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {}
    try:
        for backend in backends:
            url = await dbs.create(backend, "cache_speed")
            bench = Bench(url, redis, f"{namespace}.{backend}", sizes, before)
            try:
                out[backend] = await bench.run()
            finally:
                await bench.close()
    finally:
        keys = [k async for k in redis.scan_iter(match=f"*{namespace}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start : start + 1000])
        await redis.aclose()
        await dbs.drop_all()
    return out


async def profile(postgres_url: str | None, redis_url: str, workdir: Path, into: Path) -> None:
    """Each cached operation under pyinstrument, many times in a row."""
    from pyinstrument import Profiler

    dbs = Databases(postgres_url, workdir)
    redis = Redis.from_url(redis_url)
    backend = "postgres" if postgres_url else "sqlite"
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(into.mkdir, parents=True, exist_ok=True)
    url = await dbs.create(backend, "cache_profile")
    bench = Bench(url, redis, namespace, QUICK)
    n = 2000
    try:
        ids = await bench.sessions(3 * n)
        cached, plain = bench.cached, bench.plain
        steps: dict[str, Callable[[int], Awaitable[Any]]] = {
            "miss": lambda i: cached.get_session(ids[i]),
            "hit": lambda i: cached.get_session(ids[i]),
            "append": lambda i: cached.add_checkpoint(ids[i], "step", APPEND_DATA),
            "uncached get": lambda i: plain.get_session(ids[n + i]),
            "uncached append": lambda i: plain.add_checkpoint(ids[n + i], "step", APPEND_DATA),
            "raw GET+SET": lambda i: _get_set(redis, f"{namespace}.raw:{i % 100}"),
        }
        for name, step in steps.items():
            profiler = Profiler(interval=0.0002, async_mode="enabled")
            started = time.perf_counter()
            profiler.start()
            for i in range(n):
                await step(i)
            profiler.stop()
            elapsed = time.perf_counter() - started
            await bench.cache.drain()
            slug = name.replace(" ", "_").replace("+", "_")
            (into / f"{slug}.html").write_text(profiler.output_html())
            (into / f"{slug}.txt").write_text(profiler.output_text(unicode=False, show_all=False))
            print(f"{name}: {1e6 * elapsed / n:.0f} us/op under the profiler -> {into}/{slug}.*")
    finally:
        await bench.close()
        await redis.aclose()
        await dbs.drop_all()


async def _get_set(redis: Redis, key: str) -> None:
    await redis.get(key)
    await redis.set(key, b"x" * 1200, px=86_400_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_speed", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", choices=("postgres", "sqlite"), action="append")
    parser.add_argument("--postgres-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="profile into this directory instead")
    parser.add_argument(
        "--before", metavar="REF", help="also measure RedisCache as of this git commit, interleaved"
    )
    args = parser.parse_args(argv)
    backends = args.backend or ["postgres"]
    with tempfile.TemporaryDirectory(prefix="cache-speed-") as tmp, ExitStack() as stack:
        from tests.servers import PostgresServer, RedisServer

        postgres_url, redis_url = args.postgres_url, args.redis_url
        if postgres_url is None and "postgres" in backends:
            postgres_url = stack.enter_context(PostgresServer.start(Path(tmp) / "pg")).url
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer.start(Path(tmp) / "redis")).url
        if args.profile is not None:
            asyncio.run(profile(postgres_url, redis_url, Path(tmp), args.profile))
            return 0
        sizes = QUICK if args.quick else FULL
        before = None if args.before is None else load_before(args.before)
        results = asyncio.run(run(sizes, postgres_url, redis_url, Path(tmp), backends, before))
    results["near cache bytes per entry"] = near_memory()
    print(table(results))
    print("near cache, bytes per entry:", results["near cache bytes per entry"])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
