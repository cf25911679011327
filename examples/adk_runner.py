"""An ADK Runner persisting a multi-turn conversation through agent_session_store, offline.

The agent is a small deterministic ``BaseAgent`` (no model call): it counts the user's turns in
session state, keeps a per-user tally in ``user:`` state and answers in kind. Run it with:

    pip install 'agent-session-store[adk]'
    python examples/adk_runner.py            # migrates ./adk_sessions.db first

Set ``AGENT_SESSION_STORE_DATABASE_URL`` for another database (``postgresql+asyncpg://...``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator

from google.adk.agents.base_agent import BaseAgent
from google.adk.agents.invocation_context import InvocationContext
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.runners import Runner
from google.genai import types

from agent_session_store import migrations
from agent_session_store.integrations.adk import SessionStoreService

URL = os.environ.get("AGENT_SESSION_STORE_DATABASE_URL", "sqlite+aiosqlite:///adk_sessions.db")
APP = "echo-app"


class EchoAgent(BaseAgent):
    """Replies ``turn N: <what the user said, upper-cased>``; remembers N across restarts."""

    async def _run_async_impl(self, ctx: InvocationContext) -> AsyncGenerator[Event, None]:
        said = ""
        if ctx.user_content and ctx.user_content.parts:
            said = "".join(part.text or "" for part in ctx.user_content.parts)
        turn = int(ctx.session.state.get("turns", 0)) + 1
        tally = int(ctx.session.state.get("user:messages", 0)) + 1
        yield Event(
            invocation_id=ctx.invocation_id,
            author=self.name,
            branch=ctx.branch,
            content=types.Content(
                role="model", parts=[types.Part(text=f"turn {turn}: {said.upper()}")]
            ),
            actions=EventActions(
                state_delta={"turns": turn, "user:messages": tally, "temp:scratch": said}
            ),
        )


async def converse(service: SessionStoreService, user_id: str, lines: list[str]) -> str:
    """One conversation through an ADK Runner; returns the session id."""
    runner = Runner(agent=EchoAgent(name="echo"), app_name=APP, session_service=service)
    session = await service.create_session(app_name=APP, user_id=user_id)
    for line in lines:
        message = types.Content(role="user", parts=[types.Part(text=line)])
        async for event in runner.run_async(
            user_id=user_id, session_id=session.id, new_message=message
        ):
            if event.content and event.content.parts:
                print(f"{event.author:>5}: {event.content.parts[0].text}")
    return session.id


async def main() -> None:
    await migrations.upgrade(URL)  # normally your deploy: agent-session-store db upgrade --url ...
    async with SessionStoreService.from_url(URL) as service:
        session_id = await converse(service, "alice", ["hello", "how are you", "bye"])

    # A new process (a new service) reads the conversation back from the database.
    async with SessionStoreService.from_url(URL) as service:
        session = await service.get_session(app_name=APP, user_id="alice", session_id=session_id)
        assert session is not None
        print(f"stored: {len(session.events)} events, state {session.state}")
        for event in session.events:
            if event.content and event.content.parts:
                print(f"  {event.author:>5}: {event.content.parts[0].text}")


if __name__ == "__main__":
    asyncio.run(main())
