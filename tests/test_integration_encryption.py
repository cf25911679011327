"""Encryption at rest under the framework backends: what they store is ciphertext too.

The ADK service and the OpenAI Agents session store through the repository's contexts,
checkpoints and shared state, so a repository with ``encryption=...`` seals all of it. A canary
written through each (events, state of every scope, items) must be nowhere in the database's
bytes nor in Redis, on SQLite, PostgreSQL and PgBouncer, without and with the cache; the
control (no encryption) finds it, so the search can fail. LangGraph's saver: see
test_integration_langgraph_encryption.py.
"""

from __future__ import annotations

import uuid

import pytest

from agent_session_store import RedisCache, SessionRepository
from tests.conftest import IN_CI, Backend, FakeClock
from tests.test_encryption import ENC, _database_bytes, _redis_values, cache  # noqa: F401

try:
    from agents import TResponseInputItem
    from google.adk.events.event import Event
    from google.adk.events.event_actions import EventActions
    from google.genai import types
except ImportError:  # pragma: no cover - the dev extras install them
    if IN_CI:
        raise
    pytest.skip("the agent frameworks are not installed", allow_module_level=True)

from agent_session_store.integrations.adk import SessionStoreService
from agent_session_store.integrations.openai_agents import SessionStoreSession


async def _write_through_frameworks(repo: SessionRepository, canary: str) -> None:
    service = SessionStoreService(repo)
    session = await service.create_session(
        app_name="app", user_id="u1", session_id="s1",
        state={"app:a": canary, "user:u": canary, "own": canary},
    )  # fmt: skip
    event = Event(
        invocation_id="inv",
        author="user",
        content=types.Content(role="user", parts=[types.Part(text=canary)]),
        actions=EventActions(state_delta={"app:b": canary, "user:v": canary, "own2": canary}),
    )
    await service.append_event(session, event)
    read = await service.get_session(app_name="app", user_id="u1", session_id="s1")
    assert read is not None and read.state["own2"] == canary
    assert read.events[-1].content is not None and read.events[-1].content.parts
    assert read.events[-1].content.parts[0].text == canary

    items = SessionStoreSession("chat", repo, user_id="u1")
    item: TResponseInputItem = {"role": "user", "content": canary}
    await items.add_items([item, {"role": "assistant", "content": canary}])
    assert await items.get_items() == [item, {"role": "assistant", "content": canary}]


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "control"])
async def test_framework_canary_is_nowhere_in_storage(
    db: Backend,
    clock: FakeClock,
    cache: RedisCache | None,  # noqa: F811 - the fixture imported above
    namespace: str,
    request: pytest.FixtureRequest,
    encrypted: bool,
) -> None:
    repo = SessionRepository(
        db.factory,
        clock=clock,
        cache=cache,
        encryption=ENC if encrypted else None,
    )
    canary = f"CANARY-{uuid.uuid4().hex}"
    await _write_through_frameworks(repo, canary)
    stored = await _database_bytes(db, request)
    cached = await _redis_values(cache, namespace, request)
    if cache is not None:
        assert cached, "the cache holds copies to search"
    if not encrypted:
        assert canary.encode() in stored
        return
    assert canary.encode() not in stored
    assert not [value for value in cached if canary.encode() in value]
