"""A LangGraph thread in tests that are not about LangGraph, where LangGraph is installed.

The lowest-dependency job cannot install LangGraph (our pydantic floor is below its own), so
the erasure and transfer tests store a thread only where they can, and count it only then.
"""

from __future__ import annotations

from typing import Any

from agent_session_store import SessionRepository

try:
    from agent_session_store.integrations.langgraph import SessionStoreSaver
except ImportError:  # the lowest job
    LANGGRAPH = False
else:
    LANGGRAPH = True


async def store_a_thread(
    repo: SessionRepository, agent_type: str, thread_id: str, user_id: str, said: Any = "hello"
) -> int:
    """A thread of ``user_id`` with one checkpoint and one pending write; how many sessions that
    made (1, or 0 without LangGraph)."""
    if not LANGGRAPH:
        return 0
    from tests.test_integration_langgraph import checkpoint

    saver = SessionStoreSaver(repo, agent_type=agent_type)
    config: Any = {"configurable": {"thread_id": thread_id, "user_id": user_id}}
    stored = await saver.aput(config, checkpoint({"said": said}), {}, {"said": 1})
    await saver.aput_writes(stored, [("said", f"more from {user_id}")], "task-1")
    return 1
