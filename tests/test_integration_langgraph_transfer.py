"""Import of a LangGraph thread whose thread id the target already holds (tests/test_transfer.py
for the rest of export and import; here because the lowest job cannot install LangGraph)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import SessionRepository
from agent_session_store import transfer as t
from agent_session_store.integrations.langgraph import SessionStoreSaver
from tests.test_integration_langgraph import checkpoint
from tests.test_transfer import dump, export_text, source, target

__all__ = ["source", "target"]  # the fixtures, used by name


async def test_a_langgraph_thread_the_target_holds_is_a_conflict_and_the_batch_goes_on(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    for engine in (source, target):  # one thread id in both: two sessions, one thread key
        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
        saver = SessionStoreSaver(repo, agent_type="graph")
        config: Any = {"configurable": {"thread_id": "shared"}}
        await saver.aput(config, checkpoint({"a": 1}), {}, {"a": 1})
        await repo.create_session("planner", f"u-{uuid.uuid4().hex[:8]}")
    # The target's thread session is soft-deleted: its key is free, its thread row is not.
    theirs = SessionRepository(async_sessionmaker(target, expire_on_commit=False))
    thread = await theirs.get_session_by_key("graph", key="shared")
    assert thread is not None
    await theirs.delete_session(thread.session_id)
    before = await dump(target)

    report = await t.import_sessions(target, (await export_text(source))[0].splitlines())

    assert [p.reason for p in report.conflicts] == [
        "a unique value of it (a key, a LangGraph thread id) is taken in the target"
    ]
    assert report.sessions_imported == 1  # the other session of the same batch
    after = await dump(target)
    assert len(after["agent_sessions_sessions"]) == len(before["agent_sessions_sessions"]) + 1
    assert after["agent_sessions_lg_threads"] == before["agent_sessions_lg_threads"]
