"""An OpenAI Agents SDK conversation stored by agent-session-store, fully offline.

``Runner.run`` drives an agent whose model is a stub (canned replies, one of them a tool call), so
no API key and no network are needed; the conversation is persisted through
``SessionStoreSession`` on the SQLite default. Run it from a checkout:

    pip install 'agent-session-store[openai-agents]'
    python examples/openai_agents_runner.py

The database URL comes from ``AGENT_SESSION_STORE_DATABASE_URL`` (default: ``./openai_agents.db``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

# Tracing would export spans to OpenAI; switch it off before the SDK is imported.
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

from agents import (
    Agent,
    AgentOutputSchemaBase,
    Handoff,
    Model,
    ModelResponse,
    ModelSettings,
    ModelTracing,
    Runner,
    Tool,
    TResponseInputItem,
    Usage,
    function_tool,
    set_tracing_disabled,
)
from agents.items import TResponseOutputItem, TResponseStreamEvent
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import SessionRepository, create_engine, migrations
from agent_session_store.integrations.openai_agents import SessionStoreSession

URL = os.environ.get("AGENT_SESSION_STORE_DATABASE_URL", "sqlite+aiosqlite:///openai_agents.db")


class CannedModel(Model):
    """A ``Model`` that answers from a script: each reply is text, or ``("call", name, args)``.

    It records the input of every call, so a caller can see what history the model was given.
    """

    def __init__(self, replies: list[str | tuple[str, str, str]]) -> None:
        self.replies = list(replies)
        self.inputs: list[list[TResponseInputItem]] = []

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any | None,
    ) -> ModelResponse:
        turn = len(self.inputs)
        self.inputs.append(
            [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
        )
        reply = self.replies.pop(0)
        output: TResponseOutputItem
        if isinstance(reply, tuple):
            _, name, arguments = reply
            output = ResponseFunctionToolCall(
                id=f"fc_{turn}", call_id=f"call_{turn}", type="function_call",
                name=name, arguments=arguments, status="completed",
            )  # fmt: skip
        else:
            text = ResponseOutputText(type="output_text", text=reply, annotations=[])
            output = ResponseOutputMessage(
                id=f"msg_{turn}", type="message", role="assistant",
                status="completed", content=[text],
            )  # fmt: skip
        return ModelResponse(output=[output], usage=Usage(), response_id=None)

    def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("this example runs Runner.run, not Runner.run_streamed")


@function_tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"Sunny and 24 °C in {city}."


async def main() -> None:
    set_tracing_disabled(True)
    engine = create_engine(URL)
    await migrations.upgrade(engine)  # normally done by your deploy
    repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
    model = CannedModel(
        [
            "Paris.",
            ("call", "get_weather", '{"city": "Paris"}'),
            "Sunny and 24 °C: a good day for the Seine.",
        ]
    )
    agent = Agent(name="guide", instructions="Answer briefly.", model=model, tools=[get_weather])
    try:
        session = SessionStoreSession("trip-planning", repo, user_id="alice")
        await session.clear_session()  # start afresh on every run of the example
        for question in ["What is the capital of France?", "What is the weather there?"]:
            result = await Runner.run(agent, question, session=session)
            print(f"user:  {question}")
            print(f"agent: {result.final_output}")

        # Another instance (another request, another process) sees the whole conversation.
        items = await SessionStoreSession("trip-planning", repo, user_id="alice").get_items()
        kinds = [item.get("type") or item.get("role") for item in items]
        print(f"stored {len(items)} items: {', '.join(str(kind) for kind in kinds)}")
        print(f"the model's last call saw {len(model.inputs[-1])} items of history and input")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
