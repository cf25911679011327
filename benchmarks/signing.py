"""What signing cache entries costs: ``python -m benchmarks.signing [--quick] [--redis-url URL]``.

``RedisCache`` objects on one Redis, one with ``signing_keys`` and two without, measured
interleaved in the same repeats (``timing.measure``); each figure is signed ÷ unsigned, paired
by repeat (below 1.00: signing is slower), next to the second unsigned cache ÷ the first: the
same code against itself, so the noise floor of that figure on this machine. No database:
``load`` returns a prepared session, so the figures are the cache's own cost, where signing
weighs the most.

- ``hit``: ``fetch`` of a cached session (MGET, verify, ``model_validate_json``);
- ``hit <n> checkpoints``: the same for a session holding ``n`` checkpoints (a bigger entry);
- ``miss``: ``fetch`` of a session not cached (MGET, load, sign, store) and its store drained;
- ``write``: ``invalidate`` of a cached session, the cache's part of every repository write.

Then the CPU alone, in microseconds per call: building the stored entry and reading it back
(``RedisCache._encode`` / ``_decode``), with and without the signature, and what the
difference is of a hit measured above: the signing's share, free of the round trip's noise.
Starts a throwaway Redis
(tests/servers.py) unless ``--redis-url`` names one (keys under ``bench-sign-<random>``,
deleted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

from redis.asyncio import Redis

from agent_session_store import AgentSession, RedisCache, SessionCheckpoint
from agent_session_store.redis_cache import _keys
from benchmarks import seed
from benchmarks.timing import Op, Plan, measure, median, paired_ratio

FULL = Plan(ops=2000, repeats=15, warmup=300)
QUICK = Plan(ops=50, repeats=2, warmup=10)
KEY = b"benchmark signing key, 32 bytes+"
CHECKPOINTS = 20  # what get_session returns of a long history


def _session(checkpoints: int = 0) -> AgentSession:
    return AgentSession(
        agent_type="bench",
        user_id="bench-user",
        context=seed.CONTEXT,
        checkpoints=[
            SessionCheckpoint(seq=i + 1, name="step", data={"i": i, "note": "x" * 200})
            for i in range(checkpoints)
        ],
        checkpoint_count=checkpoints,
    )


def _hit(cache: RedisCache, session: AgentSession) -> Op:
    async def load() -> AgentSession:
        raise AssertionError("a hit must not load")

    async def op(item: int, worker: int) -> None:
        await cache.fetch(AgentSession, session.session_id, load, id_field="session_id")

    return op


def _miss(cache: RedisCache, sessions: list[AgentSession]) -> Op:
    async def op(item: int, worker: int) -> None:
        session = sessions[item]

        async def load() -> AgentSession:
            return session

        await cache.fetch(AgentSession, session.session_id, load, id_field="session_id")
        await cache.drain()  # the store is part of a miss's cost

    return op


def _write(cache: RedisCache, session: AgentSession) -> Op:
    async def op(item: int, worker: int) -> None:
        await cache.invalidate(AgentSession, [session.session_id])

    return op


async def _cached(cache: RedisCache, session: AgentSession) -> AgentSession:
    async def load() -> AgentSession:
        return session

    await cache.fetch(AgentSession, session.session_id, load, id_field="session_id")
    await cache.drain()
    return session


def _cpu(cache: RedisCache, session: AgentSession, rounds: int) -> tuple[float, float]:
    """Microseconds per ``_encode`` and per ``_decode`` of ``session``'s entry."""
    keys = _keys(cache.namespace, AgentSession, session.session_id)
    epoch, gen = b"0123456789abcdef", b"fedcba9876543210"
    start = time.perf_counter()
    for _ in range(rounds):
        raw = cache._encode(session, keys, epoch, gen)
    encode = (time.perf_counter() - start) / rounds * 1e6
    start = time.perf_counter()
    for _ in range(rounds):
        found = cache._decode(raw, AgentSession, session.session_id, "session_id", keys, epoch, gen)
    decode = (time.perf_counter() - start) / rounds * 1e6
    if found.value is None:
        raise RuntimeError(f"the benchmark's entry does not decode: {found.problem}")
    return encode, decode


class Row(NamedTuple):
    figure: str
    signed: float  # ops/s, median
    unsigned: float
    ratio: float  # signed ÷ unsigned, paired by repeat
    control: float  # the second unsigned cache ÷ the first: the noise floor


async def run(redis_url: str, plan: Plan) -> list[Row]:
    """One row per figure."""
    redis = Redis.from_url(redis_url)
    prefix = f"bench-sign-{uuid.uuid4().hex[:8]}"
    signed = RedisCache(redis, namespace=f"{prefix}.signed", signing_keys=[KEY])
    plain = RedisCache(redis, namespace=f"{prefix}.plain")
    again = RedisCache(redis, namespace=f"{prefix}.again")
    caches = (signed, plain, again)
    rows: list[Row] = []

    async def figure(name: str, make: Callable[[RedisCache], Op]) -> None:
        ops = {"signed": make(signed), "plain": make(plain), "again": make(again)}
        rates = await measure(ops, plan)
        ratio = paired_ratio(rates["signed"], rates["plain"]) or float("nan")
        control = paired_ratio(rates["again"], rates["plain"]) or float("nan")
        rows.append(Row(name, median(rates["signed"]), median(rates["plain"]), ratio, control))

    try:
        small, deep = _session(), _session(CHECKPOINTS)
        for cache in caches:
            for session in (small, deep):
                await _cached(cache, session)
        await figure("hit", lambda cache: _hit(cache, small))
        await figure(f"hit {CHECKPOINTS} checkpoints", lambda cache: _hit(cache, deep))
        await figure("miss", lambda cache: _miss(cache, [_session() for _ in range(plan.items)]))
        await figure("write", lambda cache: _write(cache, small))
        if any(cache.stats.rejected or cache.stats.errors for cache in caches):
            raise RuntimeError(f"the caches did not run cleanly: {[c.stats for c in caches]}")
    finally:
        keys = [k async for k in redis.scan_iter(match=f"*{prefix}*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.signing", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds")
    parser.add_argument("--redis-url", help="use this running Redis server")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    with (
        tempfile.TemporaryDirectory(prefix="agent-session-store-bench-") as tmp,
        ExitStack() as stack,
    ):
        from tests.servers import RedisServer

        url = args.redis_url or stack.enter_context(RedisServer.start(Path(tmp) / "redis")).url
        rows = asyncio.run(run(url, plan))
    print(f"{'figure':<22} {'signed/s':>9} {'unsigned/s':>10} {'ratio':>6} {'cost':>6}"
          f" {'noise floor':>12}")  # fmt: skip
    for row in rows:
        print(f"{row.figure:<22} {row.signed:>9.0f} {row.unsigned:>10.0f} {row.ratio:>6.3f}"
              f" {1 / row.ratio - 1:>6.1%} {row.control:>12.3f}")  # fmt: skip
    rounds = 40 if args.quick else 1000
    print(f"\nCPU per call (µs, best of 5 x {rounds})  encode  decode  signing's share of a hit")
    hits = {rows[0].figure: rows[0].unsigned, rows[1].figure: rows[1].unsigned}
    plain = RedisCache(Redis(), namespace="cpu")
    signed = RedisCache(Redis(), namespace="cpu", signing_keys=[KEY])
    for (figure, hit_rate), checkpoints in zip(hits.items(), (0, CHECKPOINTS), strict=True):
        session = _session(checkpoints)
        # Five batches each, alternating, the fastest kept: the least disturbed by other load.
        batches = [(_cpu(plain, session, rounds), _cpu(signed, session, rounds)) for _ in range(5)]
        encode, decode = (min(b[0][i] for b in batches) for i in (0, 1))
        signed_encode, signed_decode = (min(b[1][i] for b in batches) for i in (0, 1))
        share = (signed_decode - decode) * hit_rate / 1e6
        print(f"  {figure + ', unsigned':<34} {encode:>6.1f}  {decode:>6.1f}")
        print(f"  {figure + ', signed':<34} {signed_encode:>6.1f}  {signed_decode:>6.1f}"
              f"  {share:>6.1%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
