"""Cache-miss storm: many concurrent reads of one uncached session; how many reach the database."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from agent_session_store import AgentSession, SessionRepository
from agent_session_store.tables import sessions_table
from benchmarks.counting import counting


async def miss_storm(engine: AsyncEngine, repo: SessionRepository, readers: int) -> int:
    """Database reads of ``agent_sessions_sessions`` made by ``readers`` concurrent
    ``get_session`` calls on one session whose cache entry is empty (target with a cache: 1)."""
    session = await repo.create_session("bench", user_id="storm")
    if repo.cache is not None:
        await repo.cache.invalidate(AgentSession, [session.session_id])
    with counting(engine, "SELECT", sessions_table.name) as reads:
        got = await asyncio.gather(*(repo.get_session(session.session_id) for _ in range(readers)))
    if any(s is None or s.session_id != session.session_id for s in got):
        raise RuntimeError("a get_session of the miss storm returned the wrong session")
    return reads.count
