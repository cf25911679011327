"""SessionStoreSaver held to LangGraph's checkpointer contract, and to what the issue adds.

``langgraph-checkpoint-conformance`` (all capabilities, the optional ones included) runs on
every backend of the ``repo`` fixture: SQLite, PostgreSQL and PostgreSQL behind PgBouncer, each
without and with the Redis cache. The rest: real graphs against ``InMemorySaver``, growth,
forks, concurrency, the strict serializer and bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.base import Checkpoint
from langgraph.checkpoint.base.id import uuid6

# Imported plainly, not with importorskip: langgraph is in the dev extra, and CI must fail,
# not skip, when it is missing.
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from agent_session_store import (
    InvalidStateTransitionError,
    SchemaOutOfDateError,
    SessionNotFoundError,
    SessionRepository,
    SessionValidationError,
    create_engine,
    migrations,
)
from agent_session_store.integrations.langgraph import SessionStoreSaver
from agent_session_store.tables import LANGGRAPH_TABLES, lg_blobs_table
from examples.langgraph_runner import build_graph, converse
from tests.conftest import Backend, FakeClock
from tests.conftest import _backend as conftest_backend

ROOT = Path(__file__).resolve().parent.parent


class Point(BaseModel):
    x: int
    y: int


def fresh_agent_type() -> str:
    """Each saver under test its own agent type: threads are per agent type, so tests sharing
    a database never see each other's threads."""
    return f"lg-{uuid.uuid4().hex[:12]}"


def checkpoint(values: dict[str, Any], versions: dict[str, Any] | None = None) -> Checkpoint:
    """A new checkpoint holding ``values`` (at version 1 of each channel unless given)."""
    return Checkpoint(
        v=1,
        id=str(uuid6(clock_seq=-1)),
        ts=datetime.now(UTC).isoformat(),
        channel_values=values,
        channel_versions=versions if versions is not None else dict.fromkeys(values, 1),
        versions_seen={},
        updated_channels=None,
    )


@pytest.fixture
async def saver(repo: SessionRepository) -> SessionStoreSaver:
    """Made inside the event loop, which its sync methods then use."""
    return SessionStoreSaver(repo, agent_type=fresh_agent_type())


# -- the conformance suite -------------------------------------------------------------------


async def test_conformance_suite_passes_every_capability(repo: SessionRepository) -> None:
    @checkpointer_test(name="SessionStoreSaver")
    async def factory() -> AsyncIterator[SessionStoreSaver]:
        yield SessionStoreSaver(repo, agent_type=fresh_agent_type())

    report = await validate(factory)
    failures = {name: result.failures for name, result in report.results.items() if result.failures}
    assert not failures
    assert all(result.detected for result in report.results.values()), report.results
    passed = sum(result.tests_passed for result in report.results.values())
    assert passed == 81


# -- a real graph, against LangGraph's own InMemorySaver -------------------------------------


async def test_real_graph_matches_in_memory_saver(saver: SessionStoreSaver) -> None:
    """Tool loop, parallel branch, subgraph, interrupt and resume, history and time travel."""
    ours = await converse(saver, "graph-1")
    theirs = await converse(InMemorySaver(), "graph-1")
    assert ours == theirs
    assert ours[-1] > 10  # the history was really read back
    # the subgraph checkpointed in its own namespace, and the parallel step left writes
    config: Any = {"configurable": {"thread_id": "graph-1"}}
    every = [t async for t in saver.alist(config)]
    assert {t.config["configurable"]["checkpoint_ns"] for t in every} - {""}
    assert any(len(t.pending_writes or []) >= 2 for t in every)


async def test_graph_state_survives_a_new_saver(repo: SessionRepository) -> None:
    agent_type = fresh_agent_type()
    config: Any = {"configurable": {"thread_id": "restart"}}
    first = build_graph(SessionStoreSaver(repo, agent_type=agent_type))
    paused = await first.ainvoke({"messages": [HumanMessage("q", id="h")]}, config)
    assert "__interrupt__" in paused
    again = build_graph(SessionStoreSaver(repo, agent_type=agent_type))  # a "restarted" process
    done = await again.ainvoke(Command(resume="later"), config)
    assert done["approved"] == "later"


def test_runner_example_runs_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'lg.db'}"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "langgraph_runner.py")],
        env={**os.environ, "AGENT_SESSION_STORE_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "answer: answer: WHERE IS THE CAT (2 messages so far)" in lines
    assert "alice's threads: ['demo-1']" in lines
    assert lines[-1].startswith("after delete: StateSnapshot(values={}")


# -- the sync methods, from other threads ----------------------------------------------------


async def test_sync_methods_work_from_other_threads(saver: SessionStoreSaver) -> None:
    config: Any = {"configurable": {"thread_id": "sync-1", "checkpoint_ns": ""}}
    stored = await saver.aput(
        config, checkpoint({"a": 1}), {"source": "input", "step": -1}, {"a": 1}
    )

    def in_a_thread() -> tuple[Any, ...]:
        got = saver.get_tuple(stored)
        step = {"source": "loop", "step": 0}
        later = saver.put(stored, checkpoint({"a": 2}, {"a": 2}), step, {"a": 2})
        saver.put_writes(later, [("a", 3)], "task-1")
        listed = list(saver.list({"configurable": {"thread_id": "sync-1"}}))
        saver.copy_thread("sync-1", "sync-2")
        saver.prune(["sync-2"])
        saver.delete_for_runs(["no-such-run"])
        copied = list(saver.list({"configurable": {"thread_id": "sync-2"}}))
        saver.delete_thread("sync-1")
        return got, listed, copied, saver.get_tuple(config)

    got, listed, copied, gone = await asyncio.to_thread(in_a_thread)
    assert got.checkpoint["channel_values"] == {"a": 1}
    assert [t.checkpoint["channel_values"] for t in listed] == [{"a": 2}, {"a": 1}]
    assert listed[0].pending_writes == [("task-1", "a", 3)]
    assert len(copied) == 1 and copied[0].pending_writes == [("task-1", "a", 3)]
    assert gone is None


async def test_sync_call_on_the_event_loop_thread_is_refused(saver: SessionStoreSaver) -> None:
    await saver.aget_tuple({"configurable": {"thread_id": "x"}})
    with pytest.raises(asyncio.InvalidStateError, match="different thread"):
        saver.get_tuple({"configurable": {"thread_id": "x"}})


async def test_a_sync_graph_runs_in_a_worker_thread(saver: SessionStoreSaver) -> None:
    graph = build_graph(saver)
    config: Any = {"configurable": {"thread_id": "sync-graph"}}
    paused = await asyncio.to_thread(
        graph.invoke, {"messages": [HumanMessage("sync", id="h")]}, config
    )
    assert paused["__interrupt__"][0].value["question"] == "publish?"
    done = await asyncio.to_thread(graph.invoke, Command(resume="ok"), config)
    assert done["approved"] == "ok"


# -- a thread is a session -------------------------------------------------------------------


async def test_a_users_thread_is_a_session_listed_and_deleted_as_one(
    repo: SessionRepository,
) -> None:
    saver = SessionStoreSaver(repo)  # the default agent type
    tid = f"chat-{uuid.uuid4().hex[:8]}"
    user = f"u-{uuid.uuid4().hex[:8]}"
    graph = build_graph(saver)
    config: Any = {"configurable": {"thread_id": tid, "user_id": user}}
    await graph.ainvoke({"messages": [HumanMessage("hi", id="h")]}, config)
    page = await repo.list_sessions(user_id=user, agent_type="langgraph")
    assert [(s.key, s.state.value) for s in page.items] == [(tid, "paused")]
    assert (await repo.stats()).by_agent_type["langgraph"] >= 1
    # another user neither reads nor writes it; LangGraph without a user reads it
    foreign: Any = {"configurable": {"thread_id": tid, "user_id": "mallory"}}
    assert await saver.aget_tuple(foreign) is None
    assert [t async for t in saver.alist(foreign)] == []
    with pytest.raises(SessionNotFoundError):
        await saver.aput(foreign, checkpoint({}), {}, {})
    assert await saver.aget_tuple({"configurable": {"thread_id": tid}}) is not None
    await saver.adelete_thread(tid)
    assert await repo.get_session_by_key("langgraph", user, key=tid) is None
    assert await saver.aget_tuple({"configurable": {"thread_id": tid}}) is None


async def test_stale_sweep_leaves_idle_threads_alone(saver: SessionStoreSaver, clock: Any) -> None:
    config: Any = {"configurable": {"thread_id": "idle"}}
    first = await saver.aput(config, checkpoint({"n": 1}), {"step": 0}, {"n": 1})
    clock.advance(days=30)
    await saver.repository.cleanup_stale_sessions()
    second = await saver.aput(first, checkpoint({"n": 2}, {"n": 2}), {"step": 1}, {"n": 2})
    got = await saver.aget_tuple(config)
    assert got is not None and got.config == second
    assert got.checkpoint["channel_values"] == {"n": 2}


async def test_an_expired_thread_is_absent_its_id_starts_a_new_thread_and_purge_removes_it(
    saver: SessionStoreSaver, clock: FakeClock, db: Backend
) -> None:
    """A thread is a session: when its session expires (a host set ``expires_at``), the thread
    is absent to every read of the saver from that moment, as the session is to the
    repository's, and its id names a new thread; ``purge_expired_sessions`` removes its rows."""
    config: Any = {"configurable": {"thread_id": "expiring"}}
    first = await saver.aput(config, checkpoint({"n": 1}), {"step": 0}, {"n": 1})
    await saver.aput_writes(first, [("n", 5)], "task")
    old = await saver.repository.get_session_by_key(saver.agent_type, key="expiring")
    assert old is not None
    old.expires_at = clock.now + timedelta(minutes=5)
    await saver.repository.update_session(old)
    assert await saver.aget_tuple(config) is not None  # not expired yet
    clock.advance(minutes=5)

    assert await saver.aget_tuple(config) is None
    assert await saver.aget_tuple(first) is None  # by id too
    assert [t async for t in saver.alist(config)] == []
    assert [t async for t in saver.alist(None, filter={"step": 0})] == []

    again = await saver.aput(config, checkpoint({"n": 2}), {"step": 0}, {"n": 1})
    got = await saver.aget_tuple(config)
    assert got is not None and got.config == again
    assert got.checkpoint["channel_values"] == {"n": 2} and got.pending_writes == []
    new = await saver.repository.get_session_by_key(saver.agent_type, key="expiring")
    assert new is not None and new.session_id != old.session_id

    assert await saver.repository.purge_expired_sessions() == 1
    async with db.engine.connect() as conn:
        for table in LANGGRAPH_TABLES:
            left = await conn.scalar(
                select(func.count())
                .select_from(table)
                .where(table.c.session_id == uuid.UUID(old.session_id))
            )
            assert left == 0, table.name
    assert (await saver.aget_tuple(config)) is not None


async def test_hard_delete_of_the_session_removes_its_langgraph_rows(
    saver: SessionStoreSaver, db: Backend
) -> None:
    config: Any = {"configurable": {"thread_id": "erase"}}
    stored = await saver.aput(config, checkpoint({"a": "x"}), {}, {"a": 1})
    await saver.aput_writes(stored, [("a", "y")], "t")
    session = await saver.repository.get_session_by_key(saver.agent_type, key="erase")
    assert session is not None
    assert await saver.repository.delete_session(session.session_id, hard=True)
    async with db.engine.connect() as conn:
        for table in LANGGRAPH_TABLES:
            count = await conn.scalar(select(func.count()).select_from(table))
            left = await conn.scalar(
                select(func.count())
                .select_from(table)
                .where(table.c.session_id == uuid.UUID(session.session_id))
            )
            assert left == 0, (table.name, count)
    assert await saver.aget_tuple(config) is None


# -- growth: a channel value is stored once per version, a growing list in linear space ------


@pytest.fixture
async def uncached_saver(db: Backend) -> SessionStoreSaver:
    """A saver without a cache, for tests about what reaches the database."""
    return SessionStoreSaver(SessionRepository(db.factory), agent_type=fresh_agent_type())


async def stored_bytes(db: Backend, channel: str) -> int:
    async with db.engine.connect() as conn:
        total = await conn.scalar(
            select(func.coalesce(func.sum(func.length(lg_blobs_table.c.blob)), 0)).where(
                lg_blobs_table.c.channel == channel
            )
        )
    return int(total)


async def test_a_growing_message_list_is_stored_in_linear_space(
    uncached_saver: SessionStoreSaver, db: Backend
) -> None:
    saver = uncached_saver
    parent: Any = {"configurable": {"thread_id": "long", "checkpoint_ns": ""}}
    messages: list[dict[str, str]] = []
    version: str | None = None
    halfway: tuple[Any, list[dict[str, str]]] | None = None
    before = await stored_bytes(db, "messages")
    for turn in range(500):
        messages = [
            *messages,
            {"role": "user", "content": f"question {turn}: " + "why " * 10},
            {"role": "assistant", "content": f"answer {turn}: " + "because " * 10},
        ]
        version = saver.get_next_version(version, None)
        versions = {"messages": version, "turn": version}
        cp = checkpoint({"messages": messages, "turn": turn}, versions)
        parent = await saver.aput(parent, cp, {"source": "loop", "step": turn}, versions)
        if turn == 250:
            halfway = (parent, messages)
    final = len(saver.serde.dumps_typed(messages)[1])
    stored = await stored_bytes(db, "messages") - before
    # every message once, plus whole copies that double in size: a few times the final value
    # (storing the list whole every turn would be about 250 times it)
    assert stored < 4 * final, (stored, final)
    latest = await saver.aget_tuple({"configurable": {"thread_id": "long"}})
    assert latest is not None and latest.checkpoint["channel_values"]["messages"] == messages
    assert halfway is not None
    old = await saver.aget_tuple(halfway[0])
    assert old is not None and old.checkpoint["channel_values"]["messages"] == halfway[1]


async def test_a_list_that_changes_is_stored_whole_and_reads_back(
    uncached_saver: SessionStoreSaver,
) -> None:
    saver = uncached_saver
    config: Any = {"configurable": {"thread_id": "edits", "checkpoint_ns": ""}}
    values = [["a"] * 20, ["a"] * 20 + ["b"] * 5, ["c"] + ["a"] * 30, ["c"] + ["a"] * 30 + ["d"]]
    version: str | None = None
    stored = []
    for n, value in enumerate(values):
        version = saver.get_next_version(version, None)
        cp = checkpoint({"items": value}, {"items": version})
        config = await saver.aput(config, cp, {"step": n}, {"items": version})
        stored.append(config)
    for config, value in zip(stored, values, strict=True):
        got = await saver.aget_tuple(config)
        assert got is not None and got.checkpoint["channel_values"]["items"] == value


async def blob_keys(
    db: Backend, saver: SessionStoreSaver, thread_id: str
) -> dict[tuple[str, str], str | None]:
    """The (channel, version) of every value stored for the thread, with its delta's base."""
    session = await saver.repository.get_session_by_key(saver.agent_type, key=thread_id)
    assert session is not None
    b = lg_blobs_table.c
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            select(b.channel, b.version, b.base_version).where(
                b.session_id == uuid.UUID(session.session_id)
            )
        )
        return {(row.channel, row.version): row.base_version for row in rows}


def chain(stored: dict[tuple[str, str], str | None], channel: str, version: str) -> set[Any]:
    """A value's key and the keys of the values its delta builds on."""
    keys = set()
    at: str | None = version
    while at is not None:
        keys.add((channel, at))
        at = stored[(channel, at)]
    return keys


async def a_thread_of_turns(saver: SessionStoreSaver, thread_id: str, turns: int) -> list[Any]:
    """``turns`` checkpoints, each of its own run: a list that grows (stored as deltas), a
    value that changes and one that never does; the config of each."""
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    stored = []
    for turn in range(turns):
        version = f"{turn + 1:03}"
        new = {"log": version, "now": version, **({"same": "001"} if turn == 0 else {})}
        values = {"log": [f"entry {n}" for n in range(turn + 1)], "now": turn, "same": "s"}
        cp = checkpoint(values, {"log": version, "now": version, "same": "001"})
        config = await saver.aput(config, cp, {"run_id": f"run-{thread_id}-{turn}"}, new)
        stored.append(config)
    return stored


async def test_values_no_checkpoint_refers_to_go_with_pruned_checkpoints(
    uncached_saver: SessionStoreSaver, db: Backend
) -> None:
    saver = uncached_saver
    await a_thread_of_turns(saver, "pruned", 8)
    before = await blob_keys(db, saver, "pruned")
    assert len(before) == 8 + 8 + 1
    assert chain(before, "log", "008") != {("log", "008")}  # it is a delta
    await saver.aprune(["pruned"])
    # the newest checkpoint's values, and the earlier list values its delta builds on
    assert set(await blob_keys(db, saver, "pruned")) == {
        ("now", "008"),
        ("same", "001"),
        *chain(before, "log", "008"),
    }
    latest = await saver.aget_tuple({"configurable": {"thread_id": "pruned"}})
    assert latest is not None
    assert latest.checkpoint["channel_values"] == {
        "log": [f"entry {n}" for n in range(8)],
        "now": 7,
        "same": "s",
    }
    await saver.aprune(["pruned"], strategy="delete")
    assert await blob_keys(db, saver, "pruned") == {}


async def test_values_no_checkpoint_refers_to_go_with_deleted_runs(
    uncached_saver: SessionStoreSaver, db: Backend
) -> None:
    saver = uncached_saver
    configs = await a_thread_of_turns(saver, "runs", 4)
    await a_thread_of_turns(saver, "other", 2)
    before = await blob_keys(db, saver, "runs")
    await saver.adelete_for_runs(["run-runs-3", "run-runs-1", "run-other-1"])
    assert set(await blob_keys(db, saver, "runs")) == {
        ("now", "001"), ("now", "003"), ("same", "001"),
        *chain(before, "log", "001"), *chain(before, "log", "003"),
    }  # fmt: skip
    assert set(await blob_keys(db, saver, "other")) == {("now", "001"), ("same", "001"),
                                                        ("log", "001")}  # fmt: skip
    for config, turn in ((configs[0], 0), (configs[2], 2)):
        got = await saver.aget_tuple(config)
        assert got is not None
        assert got.checkpoint["channel_values"]["log"] == [f"entry {n}" for n in range(turn + 1)]


# -- no silent fork: racing writers are kept as siblings -------------------------------------


async def test_two_writers_racing_from_one_parent_are_both_kept_as_siblings(
    saver: SessionStoreSaver,
) -> None:
    config: Any = {"configurable": {"thread_id": "race", "checkpoint_ns": ""}}
    parent = await saver.aput(config, checkpoint({"n": 0}, {"n": "1"}), {"step": 0}, {"n": "1"})
    left = checkpoint({"n": "left"}, {"n": saver.get_next_version("1", None)})
    right = checkpoint({"n": "right"}, {"n": saver.get_next_version("1", None)})
    stored = await asyncio.gather(
        saver.aput(parent, left, {"step": 1, "writer": "left"}, left["channel_versions"]),
        saver.aput(parent, right, {"step": 1, "writer": "right"}, right["channel_versions"]),
    )
    listed = [t async for t in saver.alist(config)]
    assert len(listed) == 3
    children = [t for t in listed if t.parent_config is not None]
    assert {t.parent_config["configurable"]["checkpoint_id"] for t in children} == {
        parent["configurable"]["checkpoint_id"]
    }
    assert sorted(t.checkpoint["channel_values"]["n"] for t in children) == ["left", "right"]
    # the thread's latest is defined: the greater checkpoint id, with its own value
    newest = max(stored, key=lambda c: c["configurable"]["checkpoint_id"])
    latest = await saver.aget_tuple(config)
    assert latest is not None and latest.config == newest
    won = "left" if newest["configurable"]["checkpoint_id"] == left["id"] else "right"
    assert latest.checkpoint["channel_values"]["n"] == won
    assert latest.metadata["writer"] == won


# -- concurrency: many graph runs at once, on SQLite and PostgreSQL ---------------------------


def loop_graph(saver: SessionStoreSaver) -> Any:
    """The example's tool loop alone: model, tool, model, done."""
    from examples.langgraph_runner import State, model, tools

    graph = StateGraph(State)
    graph.add_node("model", model)
    graph.add_node("tools", tools)
    graph.add_edge(START, "model")
    graph.add_conditional_edges(
        "model", lambda s: "tools" if s["messages"][-1].tool_calls else END, ["tools", END]
    )
    graph.add_edge("tools", "model")
    return graph.compile(checkpointer=saver)


async def test_concurrent_graph_runs_lose_nothing(saver: SessionStoreSaver) -> None:
    graph = build_graph(saver)
    threads = [f"many-{n}" for n in range(20)]

    async def run(thread: str) -> Any:
        config: Any = {"configurable": {"thread_id": thread}}
        await graph.ainvoke({"messages": [HumanMessage(thread, id="h")]}, config)
        return await graph.ainvoke(Command(resume=thread), config)

    results = await asyncio.gather(*(run(t) for t in threads))
    assert [r["approved"] for r in results] == threads
    for thread in threads:
        state = await graph.aget_state({"configurable": {"thread_id": thread}})
        assert state.values["approved"] == thread
        assert (
            state.values["messages"][-1].content == f"answer: {thread.upper()} (2 messages so far)"
        )

    # five runs on one thread at once: each one's input and answer are stored
    looped = loop_graph(saver)
    one: Any = {"configurable": {"thread_id": "one"}}
    questions = [f"q{n}" for n in range(5)]
    answers = await asyncio.gather(
        *(looped.ainvoke({"messages": [HumanMessage(q, id=f"h-{q}")]}, one) for q in questions)
    )
    for q, answer in zip(questions, answers, strict=True):
        assert answer["messages"][-1].content.startswith(f"answer: {q.upper()}")
    inputs = [t async for t in saver.alist(one, filter={"source": "input"})]
    assert len(inputs) == 5


# -- safe by default: stored bytes never import an unexpected type ---------------------------


def planted(module: str, name: str) -> bytes:
    """What JsonPlusSerializer writes for an object of ``module.name`` built from one argument."""
    return ormsgpack.packb(ormsgpack.Ext(0, ormsgpack.packb((module, name, "echo planted"))))


async def plant(db: Backend, kind: str, blob: bytes) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            update(lg_blobs_table)
            .where(lg_blobs_table.c.channel == "secret")
            .values(type=kind, blob=blob)
        )


async def test_a_planted_blob_naming_an_unexpected_type_fails_closed(
    uncached_saver: SessionStoreSaver, db: Backend
) -> None:
    saver = uncached_saver
    config: Any = {"configurable": {"thread_id": "planted"}}
    await saver.aput(config, checkpoint({"secret": "fine"}), {}, {"secret": 1})
    await plant(db, "msgpack", planted("os", "system"))
    with pytest.raises(SessionValidationError, match=r"'os\.system'.*not on the .*allow-list"):
        await saver.aget_tuple(config)
    with pytest.raises(SessionValidationError, match=r"os\.system"):
        [t async for t in saver.alist(config)]
    # nested inside an allowed value, too; and formats this saver never writes
    await plant(db, "msgpack", ormsgpack.packb({"inner": [ormsgpack.Ext(0, planted("os", "x"))]}))
    with pytest.raises(SessionValidationError):
        await saver.aget_tuple(config)
    for kind in ("pickle", "json"):
        await plant(db, kind, b"\x80\x04K\x01.")
        with pytest.raises(SessionValidationError, match="does not read"):
            await saver.aget_tuple(config)


async def test_the_strict_serializer_still_reads_langchain_messages_and_allowed_types(
    uncached_saver: SessionStoreSaver,
) -> None:
    saver = uncached_saver.with_allowlist([Point])
    assert isinstance(saver, SessionStoreSaver)
    config: Any = {"configurable": {"thread_id": "typed"}}
    values = {"m": [HumanMessage("hi", id="1")], "p": Point(x=1, y=2), "when": datetime(2026, 1, 1)}
    await saver.aput(config, checkpoint(values), {}, dict.fromkeys(values, 1))
    got = await saver.aget_tuple(config)
    assert got is not None and got.checkpoint["channel_values"] == values
    # the same bytes, read without the allow-list entry: refused, not imported
    with pytest.raises(SessionValidationError, match="Point"):
        await uncached_saver.aget_tuple(config)


# -- bad input: a clear error, nothing written -----------------------------------------------


async def nothing_stored(saver: SessionStoreSaver) -> bool:
    page = await saver.repository.list_sessions(agent_type=saver.agent_type)
    return page.items == [] and [t async for t in saver.alist(None)] == []


async def test_a_config_without_a_thread_id_is_refused(saver: SessionStoreSaver) -> None:
    for config in ({"configurable": {}}, {}, {"configurable": {"thread_id": None}}):
        with pytest.raises(SessionValidationError, match="thread_id"):
            await saver.aput(config, checkpoint({"a": 1}), {}, {"a": 1})  # type: ignore[arg-type]
        with pytest.raises(SessionValidationError, match="thread_id"):
            await saver.aget_tuple(config)  # type: ignore[arg-type]
    with pytest.raises(SessionValidationError, match="checkpoint_id"):
        await saver.aput_writes({"configurable": {"thread_id": "t"}}, [("a", 1)], "task")
    assert await nothing_stored(saver)


@pytest.mark.parametrize(
    "thread_id", ["", " a ", "a", "a ", "~esc:a", "x" * 300, "Grüße, 世界", "tab\there"]
)
async def test_any_thread_id_is_its_own_thread(saver: SessionStoreSaver, thread_id: str) -> None:
    config: Any = {"configurable": {"thread_id": thread_id}}
    stored = await saver.aput(config, checkpoint({"id": thread_id}), {}, {"id": 1})
    assert stored["configurable"]["thread_id"] == thread_id
    others = {"", " a ", "a", "a "} - {thread_id}
    for other in others:
        assert await saver.aget_tuple({"configurable": {"thread_id": other}}) is None
    got = await saver.aget_tuple(config)
    assert got is not None and got.checkpoint["channel_values"] == {"id": thread_id}
    assert [t.config["configurable"]["thread_id"] async for t in saver.alist(None)] == [thread_id]
    await saver.adelete_thread(thread_id)
    assert await nothing_stored(saver)


async def test_ids_no_database_can_hold_are_refused(saver: SessionStoreSaver) -> None:
    for configurable in (
        {"thread_id": "nul\x00"},
        {"thread_id": "lone \ud800"},
        {"thread_id": "t", "checkpoint_ns": "a\x00"},
        {"thread_id": "t", "user_id": "x" * 300},
        {"thread_id": ["a list"]},
    ):
        with pytest.raises(SessionValidationError):
            await saver.aput({"configurable": configurable}, checkpoint({}), {}, {})
    assert await nothing_stored(saver)
    stored = await saver.aput({"configurable": {"thread_id": "t"}}, checkpoint({}), {}, {})
    for bad in ({"task_id": "t\x00"}, {"task_path": "\ud800"}, {"channel": "c\x00"}):
        arguments = {"task_id": "task", "task_path": "", "channel": "c", **bad}
        with pytest.raises(SessionValidationError, match="nothing was written"):
            await saver.aput_writes(
                stored, [(arguments["channel"], 1)], arguments["task_id"], arguments["task_path"]
            )
    with pytest.raises(SessionValidationError, match="channel"):
        await saver.aput(stored, checkpoint({"c\x00": 1}), {}, {"c\x00": 1})
    got = await saver.aget_tuple(stored)
    assert got is not None and got.pending_writes == []


async def test_values_the_serializer_cannot_store_are_refused_before_writing(
    saver: SessionStoreSaver,
) -> None:
    config: Any = {"configurable": {"thread_id": "bad-values"}}
    with pytest.raises(SessionValidationError, match="channel 'a'") as refused:
        await saver.aput(config, checkpoint({"a": object()}), {}, {"a": 1})
    assert "object at" not in str(refused.value)  # payloads stay out of messages
    with pytest.raises(SessionValidationError, match="metadata"):
        await saver.aput(config, checkpoint({}), {"odd": {1, 2}}, {})  # type: ignore[typeddict-unknown-key]
    with pytest.raises(SessionValidationError, match="metadata"):
        await saver.aput(config, checkpoint({}), {"nan": float("nan")}, {})  # type: ignore[typeddict-unknown-key]
    assert await nothing_stored(saver)
    stored = await saver.aput(config, checkpoint({}), {}, {})
    with pytest.raises(SessionValidationError, match="write to channel 'w'"):
        await saver.aput_writes(stored, [("ok", 1), ("w", object())], "task")
    got = await saver.aget_tuple(stored)
    assert got is not None and got.pending_writes == []


@pytest.mark.parametrize("key", ["source') OR 1=1 --", 'a"b', "$.x", "a b", "", "x" * 200, "é"])
async def test_metadata_filter_keys_must_be_plain_names(saver: SessionStoreSaver, key: str) -> None:
    config: Any = {"configurable": {"thread_id": "filtered"}}
    await saver.aput(config, checkpoint({}), {"source": "input"}, {})
    for where in (config, None):
        with pytest.raises(SessionValidationError, match="not a plain name"):
            [t async for t in saver.alist(where, filter={key: "input"})]
    found = [t async for t in saver.alist(config, filter={"source": "input", "x-y_1": None})]
    assert found == []
    assert len([t async for t in saver.alist(config, filter={"source": "input"})]) == 1


async def test_an_unknown_prune_strategy_is_refused(saver: SessionStoreSaver) -> None:
    with pytest.raises(SessionValidationError, match="strategy"):
        await saver.aprune(["t"], strategy="everything")


async def leftover_rows(engine: Any, session_id: str) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            table.name: await conn.scalar(
                select(func.count())
                .select_from(table)
                .where(table.c.session_id == uuid.UUID(session_id))
            )
            for table in LANGGRAPH_TABLES
        }


@pytest.mark.usefixtures("_dispose_engines")
@pytest.mark.parametrize("how", ["hard delete", "purge"])
async def test_langgraph_rows_go_with_their_session_without_foreign_keys(
    sqlite_url: str, how: str
) -> None:
    """SQLite enforces ON DELETE CASCADE only when the engine turned foreign keys on: the
    repository's hard delete and purge remove the LangGraph rows explicitly all the same."""
    backend = await conftest_backend("sqlite", sqlite_url)
    saver = SessionStoreSaver(SessionRepository(backend.factory), agent_type=fresh_agent_type())
    config: Any = {"configurable": {"thread_id": "no-fk"}}
    stored = await saver.aput(config, checkpoint({"a": [1, 2]}), {}, {"a": 1})
    await saver.aput_writes(stored, [("a", 3)], "task")
    session = await saver.repository.get_session_by_key(saver.agent_type, key="no-fk")
    assert session is not None
    assert all(await leftover_rows(backend.engine, session.session_id))
    bare = create_async_engine(sqlite_url)  # no PRAGMA foreign_keys=ON
    try:
        clock = FakeClock()
        repo = SessionRepository(async_sessionmaker(bare, expire_on_commit=False), clock=clock)
        if how == "hard delete":
            assert await repo.delete_session(session.session_id, hard=True)
        else:
            assert await repo.delete_session(session.session_id)
            clock.advance(days=31)
            assert await repo.purge_deleted_sessions() >= 1
        assert set((await leftover_rows(bare, session.session_id)).values()) == {0}
    finally:
        await bare.dispose()


# -- fast paths -------------------------------------------------------------------------------


@contextlib.contextmanager
def statements(db: Backend) -> Iterator[list[str]]:
    """The SQL statements the engine sends while the block runs."""
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    sa_event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        sa_event.remove(db.engine.sync_engine, "before_cursor_execute", count)


async def test_the_latest_checkpoint_with_writes_and_values_is_one_round_trip(
    uncached_saver: SessionStoreSaver, db: Backend
) -> None:
    saver = uncached_saver
    config: Any = {"configurable": {"thread_id": "fast"}}
    stored = config
    version: str | None = None
    for turn in range(5):
        version = saver.get_next_version(version, None)
        versions = {"messages": version, "turn": version}
        values = {"messages": list(range(20 + turn)), "turn": turn}
        stored = await saver.aput(stored, checkpoint(values, versions), {"step": turn}, versions)
    await saver.aput_writes(stored, [("messages", [99]), ("turn", 5)], "task-a")
    with statements(db) as sent:
        got = await saver.aget_tuple(config)
    assert len(sent) == 1, sent
    assert got is not None and got.config == stored
    assert got.checkpoint["channel_values"] == {"messages": list(range(24)), "turn": 4}
    assert got.pending_writes == [("task-a", "messages", [99]), ("task-a", "turn", 5)]
    with statements(db) as sent:
        assert await saver.aget_tuple({"configurable": {"thread_id": "unknown"}}) is None
    assert len(sent) == 1
    with statements(db) as sent:
        page = [t async for t in saver.alist(config, limit=3, filter={"step": 2})]
    assert [t.metadata["step"] for t in page] == [2]
    assert len(sent) == 3  # the checkpoints, their blobs, their writes
    with statements(db) as sent:  # without a filter: one statement a page
        page = [t async for t in saver.alist(config, limit=3)]
    assert [t.metadata["step"] for t in page] == [4, 3, 2]
    assert page[0] == got
    assert len(sent) == 1, sent


async def test_a_put_into_a_live_thread_does_not_look_it_up_first(
    uncached_saver: SessionStoreSaver, db: Backend
) -> None:
    saver = uncached_saver
    config: Any = {"configurable": {"thread_id": "puts", "checkpoint_ns": ""}}
    first = await saver.aput(config, checkpoint({"a": 1, "b": "x"}), {}, {"a": "1", "b": "1"})
    cp = checkpoint({"a": 2, "b": "x"}, {"a": "2", "b": "1"})
    with statements(db) as sent:
        second = await saver.aput(first, cp, {"step": 1}, {"a": "2"})
        await saver.aput_writes(second, [("a", 3), ("b", "y")], "task")
    if db.name == "sqlite":  # in one transaction each: the checkpoint, then its one value
        assert len(sent) == 2 + 3, sent  # the writes, one by one, then the thread's check
    else:  # one statement each, the thread found inside it
        assert len(sent) == 2, sent
    got = await saver.aget_tuple(config)
    assert got is not None and got.config == second
    assert got.checkpoint["channel_values"] == {"a": 2, "b": "x"}
    assert got.pending_writes == [("task", "a", 3), ("task", "b", "y")]


# the one-statement put of PostgreSQL (PgBouncer's runs in a transaction)
@pytest.mark.parametrize("db", ["postgres"], indirect=True)
async def test_a_put_racing_its_threads_deletion_stores_into_the_thread_made_again(
    uncached_saver: SessionStoreSaver, db: Backend
) -> None:
    """PostgreSQL: the put's one statement found the thread, then waited on the session row
    another transaction was deleting; refused by the foreign key, it takes the look-up path
    (a new thread), as for a thread that was never there, instead of failing."""
    saver = uncached_saver
    config: Any = {"configurable": {"thread_id": "raced", "checkpoint_ns": ""}}
    first = await saver.aput(config, checkpoint({"a": 1}), {}, {"a": "1"})
    old = await saver.repository.get_session_by_key(saver.agent_type, key="raced")
    assert old is not None
    async with db.engine.connect() as deleting, db.engine.connect() as watching:
        await deleting.execute(
            text("DELETE FROM agent_sessions_sessions WHERE id = :id"),
            {"id": uuid.UUID(old.session_id)},
        )  # uncommitted: the session row stays locked
        put = asyncio.ensure_future(
            saver.aput(first, checkpoint({"a": 2}, {"a": "2"}), {}, {"a": "2"})
        )
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        while not await watching.scalar(waiting):  # the put is blocked on the row lock
            assert not put.done(), put
            await watching.rollback()
        await deleting.commit()
        stored = await put
    new = await saver.repository.get_session_by_key(saver.agent_type, key="raced")
    assert new is not None and new.session_id != old.session_id
    got = await saver.aget_tuple(config)
    assert got is not None and got.config == stored
    assert got.checkpoint["channel_values"] == {"a": 2}


# SQLite reads the base inside its write transaction
@pytest.mark.parametrize("db", ["postgres", "pgbouncer"], indirect=True)
async def test_a_conversations_next_turn_is_one_statement_even_after_its_base_went(
    uncached_saver: SessionStoreSaver, db: Backend
) -> None:
    """PostgreSQL: the saver remembers the list it stored last, so the next turn's put reads
    nothing first; a remembered base that another saver removed meanwhile (its run deleted)
    makes that put store the list whole, never a delta on nothing."""
    saver = uncached_saver
    other = SessionStoreSaver(SessionRepository(db.factory), agent_type=saver.agent_type)
    config: Any = {"configurable": {"thread_id": "turns", "checkpoint_ns": ""}}
    messages = [f"message {n} " * 5 for n in range(20)]

    async def turn(parent: Any, n: int, *, run: str = "run") -> Any:
        version = f"{n:03}"
        cp = checkpoint({"m": messages[: 10 + n]}, {"m": version})
        return await saver.aput(parent, cp, {"run_id": f"{run}-{n}"}, {"m": version})

    first = await turn(config, 1)
    with statements(db) as sent:
        second = await turn(first, 2, run="doomed")
    assert len(sent) == 1, sent  # no read before the write
    await other.adelete_for_runs(["doomed-2"])  # the remembered base goes with its checkpoint
    assert ("m", "002") not in await blob_keys(db, saver, "turns")
    third = await turn(second, 3)
    got = await saver.aget_tuple(third)
    assert got is not None and got.checkpoint["channel_values"]["m"] == messages[:13]
    assert (await blob_keys(db, saver, "turns"))[("m", "003")] is None  # stored whole


async def test_alist_pages_through_a_long_thread_in_order(saver: SessionStoreSaver) -> None:
    config: Any = {"configurable": {"thread_id": "pages", "checkpoint_ns": ""}}
    stored = []
    for step in range(230):  # more than two of alist's pages of 100
        version = str(step + 1)
        cp = checkpoint({"n": step}, {"n": version})
        config = await saver.aput(config, cp, {"step": step}, {"n": version})
        stored.append(config)
        if step % 7 == 0:
            await saver.aput_writes(config, [("n", -step)], f"task-{step}")
    thread: Any = {"configurable": {"thread_id": "pages"}}
    listed = [t async for t in saver.alist(thread)]
    assert [t.config for t in listed] == stored[::-1]
    assert [t.checkpoint["channel_values"]["n"] for t in listed] == list(range(229, -1, -1))
    assert [t.pending_writes for t in listed] == [
        [(f"task-{step}", "n", -step)] if step % 7 == 0 else [] for step in range(229, -1, -1)
    ]
    older = [t async for t in saver.alist(thread, before=stored[150], limit=120)]
    assert [t.config for t in older] == stored[149:29:-1]


async def test_an_unmigrated_database_is_named_with_the_command_to_run(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    async with SessionStoreSaver.from_url(url) as saver:
        with pytest.raises(SchemaOutOfDateError, match="upgrade"):
            await saver.aget_tuple({"configurable": {"thread_id": "t"}})


async def test_from_url_signs_the_cache_and_encrypts_what_it_stores_when_asked(
    tmp_path: Path, redis_url: str
) -> None:
    from agent_session_store import migrations
    from agent_session_store.encryption import FieldEncryption

    url, canary = f"sqlite+aiosqlite:///{tmp_path / 'lg.db'}", "canary-51c2"
    await migrations.upgrade(url)
    async with SessionStoreSaver.from_url(
        url, redis_url=redis_url, signing_keys=[b"k" * 32],
        encryption=FieldEncryption({"one": bytes(range(32))}, "one"),
    ) as saver:  # fmt: skip
        config: Any = {"configurable": {"thread_id": "secret"}}
        await saver.aput(config, checkpoint({"said": canary}), {}, {"said": 1})
        got = await saver.aget_tuple(config)
        assert got is not None and got.checkpoint["channel_values"] == {"said": canary}
        repo, cache = saver.repository, saver.repository.cache
        assert cache is not None
        other = await repo.create_session("planner", "u", {"note": canary})
        assert await repo.get_session(other.session_id) == await repo.get_session(other.session_id)
        await cache.drain()
        assert (cache.stats.hits, cache.stats.rejected) == (1, 0)
    client = Redis.from_url(redis_url)
    try:
        names = [k async for k in client.scan_iter(match=f"*{other.session_id}*")]
        values = [v for v in [await client.get(k) for k in names] if v and v.startswith(b"as1")]
    finally:
        await client.aclose()
    assert values and all(v.startswith(b"as1s ") for v in values)  # signed
    assert not any(canary.encode() in v for v in values)
    assert canary.encode() not in (tmp_path / "lg.db").read_bytes()


def test_readme_langgraph_block_runs(tmp_path: Path, redis_url: str) -> None:
    from tests.test_readme import readme_block

    code = readme_block("LangGraph")
    code = code.replace(
        "postgresql+asyncpg://app@db/app", f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    )
    code = code.replace("redis://localhost:6379/0", redis_url)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["['hi', 'echo 1', 'again', 'echo 3']", "['chat-42']"]
    assert result.stderr == ""


# -- the planner serves the saver's reads from indexes (PostgreSQL) --------------------------

THREADS = 2_000
PER_THREAD = 10
LONG_THREAD = 5_000
LG_TABLES = re.compile(r"\bagent_sessions_(lg_\w+|sessions)\b")
LG_SEQ_SCAN = re.compile(r"Seq Scan on agent_sessions_(lg_\w+|sessions)\b")

_SEED_THREADS = """
INSERT INTO agent_sessions_sessions (id, agent_type, user_id, state, context, metadata,
    checkpoint_count, version, created_at, updated_at, last_heartbeat)
SELECT gen_random_uuid(), :agent, 'user-' || mod(i, 50), 'paused', '{}', '{}', 1, 2,
    now(), now(), now()
FROM generate_series(1, :threads) AS s(i);
"""
_SEED_THREAD_ROWS = """
INSERT INTO agent_sessions_lg_threads (agent_type, thread_key, thread_id, session_id)
SELECT :agent, 'thread-' || n, 'thread-' || n, id
FROM (SELECT id, row_number() OVER () AS n FROM agent_sessions_sessions
      WHERE agent_type = :agent AND key IS NULL) AS made
"""
# Copies of the template thread's one checkpoint, blob and write, under other ids and threads.
_SEED_CHECKPOINTS = """
INSERT INTO agent_sessions_lg_checkpoints (session_id, checkpoint_ns, checkpoint_id,
    parent_checkpoint_id, type, checkpoint, metadata, run_id, channel_versions)
SELECT t.session_id, '', lpad(n::text, 8, '0'), NULL, c.type, c.checkpoint,
    jsonb_build_object('source', CASE WHEN mod(n, 3) = 0 THEN 'input' ELSE 'loop' END, 'step', n),
    'run-' || t.thread_key || '-' || n, c.channel_versions
FROM agent_sessions_lg_threads AS t
CROSS JOIN generate_series(1, :count) AS n
CROSS JOIN (SELECT * FROM agent_sessions_lg_checkpoints WHERE session_id = :template) AS c
WHERE t.agent_type = :agent AND (t.session_id = :only OR CAST(:only AS uuid) IS NULL)
ON CONFLICT DO NOTHING
"""
_SEED_BLOBS_AND_WRITES = """
INSERT INTO agent_sessions_lg_blobs (session_id, checkpoint_ns, channel, version, type, blob)
SELECT t.session_id, '', 'ch', lpad(n::text, 8, '0'), 'msgpack', '\\x01'
FROM agent_sessions_lg_threads AS t CROSS JOIN generate_series(1, 5) AS n
WHERE t.agent_type = :agent;
"""
_SEED_WRITES = """
INSERT INTO agent_sessions_lg_writes (session_id, checkpoint_ns, checkpoint_id, task_id, idx,
    channel, type, blob, task_path)
SELECT session_id, checkpoint_ns, checkpoint_id, 'task', 0, 'ch', 'msgpack', '\\x01', ''
FROM agent_sessions_lg_checkpoints
ON CONFLICT DO NOTHING
"""


@pytest.fixture(scope="module")
async def seeded_saver(postgres_url: str) -> AsyncIterator[SessionStoreSaver]:
    """A fresh database with 2,000 threads of 10 checkpoints and one of 5,000, analyzed."""
    name = f"lg_explain_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))  # our own generated name
    engine = create_engine(make_url(postgres_url).set(database=name).render_as_string(False))
    try:
        await migrations.upgrade(engine)
        saver = SessionStoreSaver(SessionRepository(async_sessionmaker(engine)), agent_type="lg")
        template = await saver.aput(
            {"configurable": {"thread_id": "long"}}, checkpoint({"a": 1}), {}, {"a": 1}
        )
        await saver.aput_writes(template, [("a", 2)], "task")
        found = await saver.repository.get_session_by_key("lg", key="long")
        assert found is not None
        long_sid = uuid.UUID(found.session_id)
        params = {"agent": "lg", "threads": THREADS, "template": long_sid}
        async with engine.begin() as conn:
            await conn.execute(text(_SEED_THREADS), params)
            await conn.execute(text(_SEED_THREAD_ROWS), params)
            await conn.execute(
                text(_SEED_CHECKPOINTS), {**params, "count": PER_THREAD, "only": None}
            )
            await conn.execute(
                text(_SEED_CHECKPOINTS), {**params, "count": LONG_THREAD, "only": long_sid}
            )
            await conn.execute(text(_SEED_BLOBS_AND_WRITES), params)
            await conn.execute(text(_SEED_WRITES))
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("ANALYZE"))
        yield saver
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.dispose()


LONG: Any = {"configurable": {"thread_id": "long", "checkpoint_ns": ""}}
MIDDLE: Any = {"configurable": {"thread_id": "long", "checkpoint_id": "00002500"}}
READS: dict[str, Callable[[SessionStoreSaver], Awaitable[object]]] = {
    "aget_tuple, the latest": lambda s: s.aget_tuple(LONG),
    "aget_tuple, one by id": lambda s: s.aget_tuple(MIDDLE),
    "alist, limit": lambda s: first(s.alist(LONG, limit=10)),
    "alist, before and limit": lambda s: first(s.alist(LONG, before=MIDDLE, limit=10)),
    "alist, filter and limit": lambda s: first(s.alist(LONG, filter={"source": "input"}, limit=5)),
    "alist, filter, before, limit": lambda s: first(
        s.alist(LONG, filter={"step": 2400}, before=MIDDLE, limit=1)
    ),
    "adelete_for_runs": lambda s: s.adelete_for_runs(["run-thread-7-3"]),
    "aprune keep_latest": lambda s: s.aprune(["thread-9"]),
}


async def first(tuples: AsyncIterator[Any]) -> list[Any]:
    return [t async for t in tuples]


@pytest.mark.parametrize("operation", READS)
async def test_saver_statements_use_indexes_not_seq_scans(
    seeded_saver: SessionStoreSaver, operation: str
) -> None:
    engine = seeded_saver.repository.session_factory.kw["bind"]
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if LG_TABLES.search(statement):
            sent.append((statement, params))

    sa_event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        await READS[operation](seeded_saver)
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", capture)
    assert sent
    for statement, params in sent:
        async with engine.connect() as conn:
            rows = await conn.exec_driver_sql(f"EXPLAIN {statement}", params)
            plan = "\n".join(row[0] for row in rows)
        assert not LG_SEQ_SCAN.search(plan), f"{operation}:\n{statement}\n{params}\n{plan}"


# SQLite's planner; PostgreSQL's is held by the EXPLAIN tests below
@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_sqlite_finds_a_checkpoints_values_by_key_not_by_scanning_the_thread(
    uncached_saver: SessionStoreSaver, db: Backend
) -> None:
    """SQLite has no statistics: its plan must not scan a thread's values for each version."""
    saver = uncached_saver
    config: Any = {"configurable": {"thread_id": "plan", "checkpoint_ns": ""}}
    for step in range(30):
        version = f"{step + 1:03}"
        cp = checkpoint({"n": step, "same": 1}, {"n": version, "same": "1"})
        config = await saver.aput(
            config, cp, {}, {"n": version, **({"same": "1"} if not step else {})}
        )
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        sent.append((statement, params))

    sa_event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        await saver.aget_tuple({"configurable": {"thread_id": "plan"}})
        await first(saver.alist({"configurable": {"thread_id": "plan"}}, limit=5))
    finally:
        sa_event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    assert len(sent) == 2
    for statement, params in sent:
        async with db.engine.connect() as conn:
            plan = [
                row[3]
                for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params)
            ]
        blobs = [step for step in plan if "agent_sessions_lg_blobs" in step]
        assert blobs and all("channel=? AND version=?" in step for step in blobs), plan


# A user's threads, newest first, in pages, among 100,000 threads of 1,000 users (and 20,000
# sessions of other agent types): the repository's list_sessions, served by an index.
MANY_THREADS = 100_000
_SEED_MANY_THREADS = """
INSERT INTO agent_sessions_sessions (id, agent_type, user_id, state, context, metadata,
    checkpoint_count, version, created_at, updated_at, last_heartbeat, key)
SELECT gen_random_uuid(), CASE WHEN i <= :threads THEN 'langgraph' ELSE 'other-' || mod(i, 7) END,
    'user-' || mod(i, 1000), 'paused', '{}', '{}', 0, 2,
    now() - i * interval '1 second', now(), now(), 'thread-' || i
FROM generate_series(1, :threads + 20000) AS s(i);
INSERT INTO agent_sessions_lg_threads (agent_type, thread_key, thread_id, session_id)
SELECT 'langgraph', key, key, id FROM agent_sessions_sessions WHERE agent_type = 'langgraph';
"""


@pytest.fixture(scope="module")
async def many_threads(postgres_url: str) -> AsyncIterator[SessionRepository]:
    name = f"lg_threads_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))  # our own generated name
    engine = create_engine(make_url(postgres_url).set(database=name).render_as_string(False))
    try:
        await migrations.upgrade(engine)
        async with engine.begin() as conn:
            for statement in _SEED_MANY_THREADS.split(";")[:2]:
                await conn.execute(text(statement), {"threads": MANY_THREADS})
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("VACUUM ANALYZE"))
        yield SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        await admin.dispose()


async def test_a_users_threads_are_listed_newest_first_in_pages_by_an_index(
    many_threads: SessionRepository,
) -> None:
    repo = many_threads
    engine = repo.session_factory.kw["bind"]
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if LG_TABLES.search(statement):
            sent.append((statement, params))

    sa_event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        pages = [await repo.list_sessions(user_id="user-7", agent_type="langgraph", limit=40)]
        while pages[-1].next_cursor is not None:
            pages.append(
                await repo.list_sessions(
                    user_id="user-7", agent_type="langgraph", limit=40, cursor=pages[-1].next_cursor
                )
            )
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", capture)
    threads = [s for page in pages for s in page.items]
    assert len(pages) == 3 and len(threads) == MANY_THREADS // 1000
    assert [s.key for s in threads] == [f"thread-{i}" for i in range(7, MANY_THREADS, 1000)]
    assert {s.user_id for s in threads} == {"user-7"}
    for statement, params in sent[:2]:  # the first page, and one after a cursor
        async with engine.connect() as conn:
            rows = await conn.exec_driver_sql(f"EXPLAIN {statement}", params)
            plan = "\n".join(row[0] for row in rows)
        assert "Index" in plan and not LG_SEQ_SCAN.search(plan), f"{statement}\n{plan}"


# -- cancellation: a cancelled call happened whole or not at all -----------------------------


async def test_a_cancelled_put_is_stored_whole_or_not_at_all(saver: SessionStoreSaver) -> None:
    """Cancelled as its 1st, 2nd, 3rd... statement is sent: nothing is stored (a transaction
    rolled back, or a statement cancelled on the server) or all of it (a commit, or the one
    statement of PostgreSQL's put, that finished first)."""
    config: Any = {"configurable": {"thread_id": "cancelled", "checkpoint_ns": ""}}
    parent = await saver.aput(config, checkpoint({"n": []}, {"n": "1"}), {}, {"n": "1"})
    engine = saver.repository.session_factory.kw["bind"]
    sent: list[str] = []
    reached = asyncio.Event()
    wanted = 0

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)
        if len(sent) >= wanted:
            reached.set()

    outcomes = []
    sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        for wanted in range(1, 6):
            sent.clear()
            reached.clear()
            version = saver.get_next_version(str(wanted + 1), None)
            cp = checkpoint({"n": list(range(wanted)), "m": wanted}, {"n": version, "m": version})
            put = asyncio.ensure_future(saver.aput(parent, cp, {}, cp["channel_versions"]))
            waiting = asyncio.ensure_future(reached.wait())
            await asyncio.wait({put, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            put.cancel()
            result = (await asyncio.gather(put, return_exceptions=True))[0]
            at = {"configurable": {**config["configurable"], "checkpoint_id": cp["id"]}}
            stored = await saver.aget_tuple(at)
            if stored is not None:  # the checkpoint and every one of its values
                assert stored.checkpoint["channel_values"] == cp["channel_values"]
            outcomes.append((stored is not None, type(result).__name__))
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert outcomes[0] == (False, "CancelledError")  # cut at its first statement
    assert set(outcomes) <= {(False, "CancelledError"), (True, "CancelledError"), (True, "dict")}
    assert outcomes[-1] == (True, "dict")  # fewer statements than that: never cut, stored
    # nothing left behind: no connection checked out, no lock held
    latest = await saver.aput(parent, checkpoint({"n": [1]}, {"n": "9"}), {}, {"n": "9"})
    assert (await saver.aget_tuple(config)).config == latest  # type: ignore[union-attr]


async def test_two_savers_with_their_own_engines_share_one_sqlite_file(tmp_path: Path) -> None:
    """Two processes' worth of writers (each saver its own engine and writer queue): they
    meet in SQLite's busy handler, never in "database is locked"."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    await migrations.upgrade(url)
    async with SessionStoreSaver.from_url(url) as one, SessionStoreSaver.from_url(url) as two:
        graphs = [loop_graph(one), loop_graph(two)]

        async def run(n: int) -> Any:
            config: Any = {"configurable": {"thread_id": f"shared-{n % 4}"}}
            question = HumanMessage(f"q{n}", id=f"h-{n}")
            return await graphs[n % 2].ainvoke({"messages": [question]}, config)

        answers = await asyncio.gather(*(run(n) for n in range(16)))
        for n, answer in enumerate(answers):
            assert answer["messages"][-1].content.startswith(f"answer: Q{n}")
        inputs = [t async for t in one.alist(None, filter={"source": "input"})]
        assert len(inputs) == 16


async def test_a_finished_threads_checkpoints_are_final(saver: SessionStoreSaver) -> None:
    config: Any = {"configurable": {"thread_id": "done"}}
    stored = await saver.aput(config, checkpoint({"a": 1}), {}, {"a": 1})
    session = await saver.repository.get_session_by_key(saver.agent_type, key="done")
    assert session is not None
    session.complete()
    await saver.repository.update_session(session)
    with pytest.raises(InvalidStateTransitionError, match="completed"):
        await saver.aput(stored, checkpoint({"a": 2}, {"a": 2}), {}, {"a": 2})
    with pytest.raises(InvalidStateTransitionError):
        await saver.aput_writes(stored, [("a", 3)], "task")
    got = await saver.aget_tuple(config)  # still readable, as it was
    assert got is not None and got.checkpoint["channel_values"] == {"a": 1}
    assert got.pending_writes == []


async def test_the_latest_checkpoint_is_never_older_than_one_acknowledged_elsewhere(
    tmp_path: Path, redis_url: str
) -> None:
    """Two processes' savers (own engines, own Redis clients, one cache): after one's aput
    returns, the other's latest read is that checkpoint, however warm its cache."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'latest.db'}"
    await migrations.upgrade(url)
    config: Any = {"configurable": {"thread_id": "latest", "user_id": "u", "checkpoint_ns": ""}}
    async with (
        SessionStoreSaver.from_url(url, redis_url=redis_url) as one,
        SessionStoreSaver.from_url(url, redis_url=redis_url) as two,
    ):
        stored = await one.aput(config, checkpoint({"n": 0}, {"n": "1"}), {}, {"n": "1"})
        for n in range(1, 4):
            for reader in (one, two, one, two):  # warm whatever either may cache
                got = await reader.aget_tuple(config)
                assert got is not None and got.config == stored
                assert (await reader.aget_tuple(stored)) is not None
            writer = (one, two)[n % 2]
            version = f"{n + 1}"
            cp = checkpoint({"n": n}, {"n": version})
            stored = await writer.aput(stored, cp, {}, {"n": version})
            for reader in (one, two):
                got = await reader.aget_tuple(config)
                assert got is not None and got.checkpoint["channel_values"] == {"n": n}


async def test_from_url_closes_the_engine_and_client_it_opened(
    tmp_path: Path, redis_url: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'owned.db'}"
    await migrations.upgrade(url)
    async with SessionStoreSaver.from_url(url, redis_url=redis_url) as saver:
        engine, client = saver._engine, saver._redis
        assert engine is not None and client is not None
        config: Any = {"configurable": {"thread_id": "owned", "user_id": "u"}}
        await saver.aput(config, checkpoint({"a": 1}), {}, {"a": 1})
        assert await saver.repository.get_session_by_key("langgraph", "u", key="owned")
        assert await saver.aget_tuple(config) is not None
    assert (saver._engine, saver._redis) == (None, None)
    assert engine.sync_engine.pool.checkedout() == 0
    # a saver over a repository you built closes nothing of yours
    mine = create_engine(url)
    try:
        async with SessionStoreSaver(SessionRepository(async_sessionmaker(mine))) as borrowed:
            assert await borrowed.aget_tuple(config) is not None
        async with mine.connect() as conn:  # still open
            assert await conn.scalar(select(func.count()).select_from(lg_blobs_table)) >= 1
    finally:
        await mine.dispose()
