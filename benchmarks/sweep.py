"""Scale: ``cleanup_stale_sessions`` over a table of stale sessions seeded in bulk.

Memory is the process's peak resident set (``ru_maxrss``), read before and after the sweep; run
this first in a process so the peak is the sweep's and not a leftover of other work. With a
cache, some stale sessions are read (and so cached) first; afterwards each must be gone from
the cache and read back FAILED.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent_session_store import AgentSession, SessionRepository, SessionState
from agent_session_store.tables import sessions_table
from benchmarks import seed
from benchmarks.counting import counting

S = sessions_table.c
FRESH_SESSIONS = 1000  # live sessions beside the stale ones: the sweep must leave them alone


@dataclass
class SweepResult:
    stale_sessions: int
    failed: int
    fresh_sessions: int
    fresh_left_active: int
    batches: int
    seed_s: float
    wall_s: float
    rss_before_mib: float
    peak_rss_mib: float
    cached_probes: int
    probes_cached_before: int
    probes_invalidated: int
    probes_read_back_failed: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


async def _probe(repo: SessionRepository, ids: list[str]) -> int:
    """How many of ``ids`` the cache holds, asking without touching the database."""
    if repo.cache is None:
        return 0
    held = 0
    for sid in ids:
        missed = False

        async def load() -> AgentSession | None:
            nonlocal missed
            missed = True
            return None  # not cached, so the probe leaves no trace

        await repo.cache.fetch(AgentSession, sid, load, id_field="session_id")
        held += not missed
    return held


async def sweep(
    engine: AsyncEngine, repo: SessionRepository, stale: int, *, cached_probes: int
) -> SweepResult:
    """Seed ``stale`` stale sessions, cache ``cached_probes`` of them, sweep, and check."""
    started = time.perf_counter()
    await seed.bulk_sessions(engine, stale, users=1000, stale=True)
    await seed.bulk_sessions(engine, FRESH_SESSIONS, users=10, user_prefix="fresh-")
    await seed.analyze(engine)
    seeded = time.perf_counter() - started

    probes: list[str] = []
    if repo.cache is not None and cached_probes:
        # Picked in the database: a million ids in Python would blur the sweep's peak memory.
        rows = (
            select(S.id)
            .where(S.user_id.like("user-%"))
            .order_by(func.random())
            .limit(cached_probes)
        )
        async with engine.connect() as conn:
            probes = [str(i) for i in (await conn.scalars(rows)).all()]
        for sid in probes:
            await repo.get_session(sid)
    cached_before = await _probe(repo, probes)

    rss_before = current_rss_mib()
    with counting(engine, "UPDATE", sessions_table.name) as batches:
        started = time.perf_counter()
        failed = await repo.cleanup_stale_sessions()
        wall = time.perf_counter() - started
    peak = peak_rss_mib()

    invalidated = len(probes) - await _probe(repo, probes)
    read_back = [await repo.get_session(sid) for sid in probes]
    async with engine.connect() as conn:
        fresh_active = await conn.scalar(
            select(func.count()).where(S.state == SessionState.ACTIVE.value)
        )
    return SweepResult(
        stale_sessions=stale,
        failed=failed,
        fresh_sessions=FRESH_SESSIONS,
        fresh_left_active=int(fresh_active or 0),
        batches=batches.count,
        seed_s=round(seeded, 2),
        wall_s=round(wall, 2),
        rss_before_mib=round(rss_before, 1),
        peak_rss_mib=round(peak, 1),
        cached_probes=len(probes),
        probes_cached_before=cached_before,
        probes_invalidated=invalidated,
        probes_read_back_failed=sum(
            s is not None and s.state is SessionState.FAILED for s in read_back
        ),
    )
