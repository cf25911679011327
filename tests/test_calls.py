"""How calls reach the database: the hot path, statement listeners, factories without an engine."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import AgentSessionStoreError, SessionRepository
from agent_session_store.errors import SessionExistsError
from tests.conftest import Backend


async def _every_hot_call(repo: SessionRepository) -> dict[str, Any]:
    """Run each hot-path call once; what each returned."""
    made = await repo.create_session(
        "planner", "u1", {"text": "héllo ✓", "n": [1, 2.5, None]}, {"m": True}, key="k1"
    )
    cp = await repo.add_checkpoint(
        made.session_id, "step", {"deep": {"x": "y"}}, timestamp=datetime(2026, 1, 2, tzinfo=UTC)
    )
    alive = await repo.heartbeat(made.session_id)
    copy = await repo.get_session(made.session_id)
    assert copy is not None
    copy.context["n"] = 3
    copy.pause()
    paused = await repo.update_session(copy)
    done = await repo.update_session(paused.model_copy(update={"state": "completed"}))
    refused = []
    for bad in (copy, done.model_copy(update={"state": "active"})):  # stale; no way back
        try:
            await repo.update_session(bad)
        except AgentSessionStoreError as exc:
            refused.append(f"{type(exc).__name__}: {exc}".replace(made.session_id, "<id>"))
    return {
        "cp": (cp.name, cp.data, cp.timestamp, cp.seq),
        "alive": alive,
        "updated": [(u.version, u.state, u.context) for u in (paused, done)],
        "refused": refused,
        "got": await repo.get_session(made.session_id),
        "by_key": await repo.get_session_by_key("planner", "u1", key="k1"),
        "deleted": await repo.delete_session(made.session_id),
        "gone": await repo.get_session(made.session_id),
    }


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    out = dict(results)
    for name in ("got", "by_key"):
        # Ids and clock times differ between two runs; everything read back must not.
        session = out[name].model_dump(exclude={"session_id", "created_at", "updated_at",
                                                "last_heartbeat"})  # fmt: skip
        for cp in session["checkpoints"]:
            if cp["name"] == "session_created":
                cp.pop("timestamp")
        out[name] = session
    return out


async def test_a_statement_listener_sees_every_statement_and_the_same_values_come_back(
    db: Backend,
) -> None:
    repo = SessionRepository(db.factory)
    quiet = await _every_hot_call(repo)  # no listener: the hot path where the engine allows
    await repo.delete_session(quiet["got"].session_id, hard=True)

    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        watched = await _every_hot_call(repo)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)

    assert _comparable(watched) == _comparable(quiet)
    assert watched["alive"] and watched["deleted"] and watched["gone"] is None
    # create (one or two statements), append (one or two), heartbeat, get, key + get, delete, get
    writes = [s for s in seen if s.lstrip().startswith(("INSERT", "UPDATE", "WITH"))]
    reads = [s for s in seen if s.lstrip().startswith("SELECT")]
    assert len(writes) >= 4 and len(reads) >= 3
    assert all("agent_sessions_" in s for s in writes + reads)


async def test_echo_on_the_engine_logs_the_hot_calls(
    db: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    repo = SessionRepository(db.factory)
    made = await repo.create_session("planner")
    db.engine.sync_engine.echo = True
    try:
        with caplog.at_level("INFO", logger="sqlalchemy.engine"):
            assert await repo.get_session(made.session_id) is not None
    finally:
        db.engine.sync_engine.echo = False
    assert any("agent_sessions_sessions" in r.getMessage() for r in caplog.records)


async def test_a_factory_bound_to_a_connection_runs_every_call_through_its_sessions(
    db: Backend,
) -> None:
    async with db.engine.connect() as conn:
        repo = SessionRepository(async_sessionmaker(bind=conn, expire_on_commit=False))
        made = await repo.create_session("planner", key="on-a-connection")
        await repo.add_checkpoint(made.session_id, "step")
        got = await repo.get_session(made.session_id)
        assert got is not None and [cp.name for cp in got.checkpoints][-1] == "step"
        with pytest.raises(SessionExistsError):
            await repo.create_session("planner", key="on-a-connection")
        assert await repo.delete_session(made.session_id, hard=True)


async def test_the_first_concurrent_writes_of_a_new_repository_all_succeed(db: Backend) -> None:
    # The dialect (and with it SQLite's writer queue) is known before the first call: the
    # first writes of a fresh repository must not crowd SQLite's busy handler.
    made = await SessionRepository(db.factory).create_session("planner")
    fresh = SessionRepository(db.factory)
    seqs = await asyncio.gather(
        *(fresh.add_checkpoint(made.session_id, f"step {i}") for i in range(25))
    )
    assert sorted(cp.seq for cp in seqs) == list(range(2, 27))
