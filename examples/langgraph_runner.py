"""A LangGraph graph checkpointed through agent_session_store, offline.

The graph has what real agents use: a tool loop (a deterministic stand-in for the model asks
for a tool, the tool answers), a parallel branch (two reviewers in one step: pending writes), a
subgraph (its own checkpoint namespace), and an interrupt that waits for a human. Run it with:

    pip install 'agent-session-store[langgraph]' langgraph
    python examples/langgraph_runner.py        # migrates ./langgraph_sessions.db first

Set ``AGENT_SESSION_STORE_DATABASE_URL`` for another database (``postgresql+asyncpg://...``).
"""

from __future__ import annotations

import asyncio
import operator
import os
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, interrupt

from agent_session_store import migrations
from agent_session_store.integrations.langgraph import SessionStoreSaver

URL = os.environ.get(
    "AGENT_SESSION_STORE_DATABASE_URL", "sqlite+aiosqlite:///langgraph_sessions.db"
)


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    reviews: Annotated[list[str], operator.add]
    summary: str
    approved: str


class Notes(TypedDict):
    summary: str
    words: int


def model(state: State) -> dict[str, Any]:
    """Asks for the ``lookup`` tool once per question, then answers with what it returned."""
    last = state["messages"][-1]
    turn = len(state["messages"])
    if isinstance(last, HumanMessage):
        call = {"name": "lookup", "args": {"q": str(last.content)}, "id": f"call-{turn}"}
        return {"messages": [AIMessage("", tool_calls=[call], id=f"ai-{turn}")]}
    return {"messages": [AIMessage(f"answer: {last.content}", id=f"ai-{turn}")]}


def tools(state: State) -> dict[str, Any]:
    last = state["messages"][-1]
    assert isinstance(last, AIMessage)
    call = last.tool_calls[0]
    found = f"{call['args']['q'].upper()} ({len(state['messages'])} messages so far)"
    return {"messages": [ToolMessage(found, tool_call_id=call["id"], id=f"tool-{call['id']}")]}


def route(state: State) -> str:
    last = state["messages"][-1]
    return "tools" if isinstance(last, AIMessage) and last.tool_calls else "review"


def review(state: State) -> dict[str, Any]:
    return {}


def style_review(state: State) -> dict[str, Any]:
    return {"reviews": [f"style ok after {len(state['messages'])} messages"]}


def fact_review(state: State) -> dict[str, Any]:
    return {"reviews": [f"facts ok: {state['messages'][-1].content}"]}


def summarize(state: Notes) -> dict[str, Any]:
    return {"words": len(state["summary"].split())}


def shorten(state: Notes) -> dict[str, Any]:
    return {"summary": " ".join(state["summary"].split()[:3])}


def prepare(state: State) -> dict[str, Any]:
    return {"summary": f"{len(state['reviews'])} reviews: " + "; ".join(sorted(state["reviews"]))}


def approve(state: State) -> dict[str, Any]:
    decision = interrupt({"question": "publish?", "summary": state["summary"]})
    return {"approved": str(decision)}


def build_graph(checkpointer: BaseCheckpointSaver[Any]) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The graph, compiled with ``checkpointer``."""
    notes = StateGraph(Notes)
    notes.add_node("summarize", summarize)
    notes.add_node("shorten", shorten)
    notes.add_edge(START, "summarize")
    notes.add_edge("summarize", "shorten")
    notes.add_edge("shorten", END)

    graph = StateGraph(State)
    graph.add_node("model", model)
    graph.add_node("tools", tools)
    graph.add_node("review", review)
    graph.add_node("style_review", style_review)
    graph.add_node("fact_review", fact_review)
    graph.add_node("prepare", prepare)
    graph.add_node("notes", notes.compile())  # a subgraph: its own checkpoint namespace
    graph.add_node("approve", approve)
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, ["tools", "review"])
    graph.add_edge("tools", "model")
    graph.add_edge("review", "style_review")  # two reviewers in one step
    graph.add_edge("review", "fact_review")
    graph.add_edge(["style_review", "fact_review"], "prepare")
    graph.add_edge("prepare", "notes")
    graph.add_edge("notes", "approve")
    graph.add_edge("approve", END)
    return graph.compile(checkpointer=checkpointer)


async def converse(checkpointer: BaseCheckpointSaver[Any], thread_id: str) -> list[Any]:
    """Two questions with an approval each, then time travel; what a user would see."""
    graph = build_graph(checkpointer)
    config: Any = {"configurable": {"thread_id": thread_id}}
    seen: list[Any] = []
    for n, question in enumerate(["where is the cat", "and the dog"]):
        paused = await graph.ainvoke({"messages": [HumanMessage(question, id=f"h-{n}")]}, config)
        seen.append(paused["__interrupt__"][0].value)
        done = await graph.ainvoke(Command(resume=f"yes {n}"), config)
        seen.append((done["approved"], done["summary"], [m.content for m in done["messages"]]))
    history = [s async for s in graph.aget_state_history(config)]
    seen.append([(s.next, s.metadata["step"] if s.metadata else None) for s in history])
    # Time travel: back to the first answer's approval, decided differently (a fork).
    first_stop = next(s for s in reversed(history) if s.next == ("approve",))
    forked = await graph.aupdate_state(first_stop.config, {"approved": "overruled"})
    seen.append((await graph.aget_state(forked)).values["approved"])
    seen.append((await graph.aget_state(config)).values["approved"])  # the latest: the fork
    seen.append(len([s async for s in graph.aget_state_history(config)]))
    return seen


async def main() -> None:
    await migrations.upgrade(URL)  # normally done by your deploy
    async with SessionStoreSaver.from_url(URL) as saver:
        graph = build_graph(saver)
        config: Any = {"configurable": {"thread_id": "demo-1", "user_id": "alice"}}
        paused = await graph.ainvoke({"messages": [HumanMessage("where is the cat")]}, config)
        print("interrupted:", paused["__interrupt__"][0].value)
        done = await graph.ainvoke(Command(resume="yes"), config)
        print("approved:", done["approved"], "|", done["summary"])
        print("answer:", done["messages"][-1].content)
        history = [s async for s in graph.aget_state_history(config)]
        print("checkpoints in the thread:", len(history))
        page = await saver.repository.list_sessions(user_id="alice", agent_type="langgraph")
        print("alice's threads:", [s.key for s in page.items])
        await saver.adelete_thread("demo-1")
        print("after delete:", await graph.aget_state(config))


if __name__ == "__main__":
    asyncio.run(main())
