"""Export and import (``agent_session_store.transfer``, ``agent-session-store export/import``).

A whole database (sessions in every state, keys, checkpoints, shared state, the LangGraph
checkpointer's rows) round-trips SQLite -> PostgreSQL -> SQLite, compared as full dumps of every
table of the schema; then line validation, idempotence, conflicts and the commands.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import (
    SchemaOutOfDateError,
    SessionRepository,
    SessionState,
    SessionValidationError,
    create_engine,
    migrations,
)
from agent_session_store import transfer as t
from agent_session_store._transfer_rows import STORED, encoded_row
from agent_session_store.tables import LANGGRAPH_TABLES, metadata, sessions_table
from tests.conftest import FakeClock
from tests.conftest import _backend as conftest_backend
from tests.langgraph_parts import LANGGRAPH, store_a_thread
from tests.test_cli import cli

SECRET = "payload-that-never-reaches-output"


async def sqlite_engine(path: Path) -> AsyncEngine:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await migrations.upgrade(engine)
    return engine


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = await sqlite_engine(tmp_path / "source.db")
    yield engine
    await engine.dispose()


@pytest.fixture
async def target(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = await sqlite_engine(tmp_path / "target.db")
    yield engine
    await engine.dispose()


@pytest.fixture
async def postgres(postgres_url: str, _dispose_engines: None) -> AsyncEngine:
    """The test PostgreSQL, migrated, with every table of the schema emptied."""
    backend = await conftest_backend("postgres", postgres_url)
    async with backend.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(delete(table))
    return backend.engine


@pytest.fixture
async def pooled(pgbouncer_url: str, _dispose_engines: None) -> AsyncEngine:
    """The test PostgreSQL through PgBouncer (transaction pooling), every table emptied."""
    backend = await conftest_backend("pgbouncer", pgbouncer_url)
    async with backend.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(delete(table))
    return backend.engine


async def seed(engine: AsyncEngine) -> int:
    """Sessions in every state (keys, checkpoints, metadata), shared state, LangGraph rows;
    returns how many sessions."""
    clock = FakeClock()
    repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False), clock=clock)
    data: dict[str, Any] = {
        "text": f"caf\u00e9 \u2615 \U0001f600 {SECRET}", "float": 1.5, "int": 2**53,
        "nested": {"list": [1, "two", None, True, {"x": -0.25}]}, "empty": {},
    }  # fmt: skip
    made = 0
    for i, state in enumerate(SessionState):
        for user in ("alice", "bob", ""):
            clock.advance(seconds=1.000001)
            s = await repo.create_session(
                f"agent-{i % 2}", user, {"i": i, **data}, {"tag": state.value},
                key=f"k-{state.value}-{user}" if i % 2 == 0 else None,
            )  # fmt: skip
            await repo.add_checkpoints(s.session_id, [("a", data), ("b", {"n": i})])
            made += 1
            if state is SessionState.DELETED:
                await repo.delete_session(s.session_id)
            elif state is not SessionState.ACTIVE:
                found = await repo.get_session(s.session_id)
                assert found is not None
                found.state = state
                await repo.update_session(found)
    await repo.update_shared_state("agent-0", {"theme": "dark", **data})
    await repo.update_shared_state("agent-0", {"seen": 3}, user_id="alice")
    await repo.update_shared_state("agent-1", {"seen": 1}, user_id="")
    return made + await store_a_thread(repo, "graph", "thread-1", "alice", ["hello", SECRET])


async def dump(engine: AsyncEngine) -> dict[str, list[str]]:
    """Every row of every table of the schema, each as canonical JSON, sorted."""
    tables: dict[str, list[str]] = {}
    async with engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = (await conn.execute(select(STORED[table.name]))).mappings().all()
            tables[table.name] = sorted(
                json.dumps(encoded_row(row, table.name), sort_keys=True) for row in rows
            )
    return tables


async def export_text(engine: AsyncEngine, **filters: Any) -> tuple[str, t.ExportReport]:
    out = io.StringIO()
    report = await t.export_sessions(engine, out, **filters)
    return out.getvalue(), report


async def test_a_whole_database_round_trips_sqlite_postgres_sqlite_with_every_field_equal(
    source: AsyncEngine, target: AsyncEngine, postgres: AsyncEngine
) -> None:
    sessions = await seed(source)
    original = await dump(source)
    assert all(original[t.name] for t in LANGGRAPH_TABLES) == LANGGRAPH  # every table has rows

    text, exported = await export_text(source)
    assert (exported.sessions, exported.shared_state) == (sessions, 3)
    assert exported.checkpoints == len(original["agent_sessions_checkpoints"])
    assert len(text.splitlines()) == 1 + sessions + 3 + 1  # header, sessions, documents, end
    assert json.loads(text.splitlines()[-1]) == {
        "kind": "end", "sessions": sessions, "checkpoints": exported.checkpoints,
        "shared_state": 3,
    }  # fmt: skip

    into_pg = await t.import_sessions(postgres, text.splitlines(keepends=True))
    assert (into_pg.sessions_imported, into_pg.shared_state_imported) == (sessions, 3)
    assert into_pg.conflicts == into_pg.rejected == []
    assert into_pg.complete
    assert await dump(postgres) == original

    again, _ = await export_text(postgres)
    back = await t.import_sessions(target, io.StringIO(again), batch_size=4)
    assert back.sessions_imported == sessions
    assert await dump(target) == original

    # The same file once more: everything is present, nothing changes.
    repeat = await t.import_sessions(postgres, text.splitlines())
    assert (repeat.sessions_imported, repeat.sessions_present) == (0, sessions)
    assert (repeat.shared_state_imported, repeat.shared_state_present) == (0, 3)
    assert repeat.conflicts == repeat.rejected == []
    assert await dump(postgres) == original


LATE = uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")  # sorts after every other id


async def _insert_late_session(url: str) -> None:
    engine = create_engine(url)
    now = datetime.now(UTC)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(sessions_table).values(
                    id=LATE, agent_type="planner", user_id="late", state="active", context={},
                    metadata={}, checkpoint_count=0, version=1, created_at=now, updated_at=now,
                    last_heartbeat=now,
                )
            )  # fmt: skip
    finally:
        await engine.dispose()


async def test_an_export_on_postgres_reads_one_snapshot(postgres: AsyncEngine) -> None:
    """A session committed while the export runs (after its first line) is not in it."""
    repo = SessionRepository(async_sessionmaker(postgres, expire_on_commit=False))
    for _ in range(3):
        await repo.create_session("planner", "early")
    url = postgres.url.render_as_string(hide_password=False)

    class CommitsMidway(io.StringIO):
        def write(self, text: str, /) -> int:
            if self.tell() and not getattr(self, "done", False):  # the first session's line
                self.done = True
                # Another connection commits a session now, whole, before the export goes on.
                worker = threading.Thread(target=asyncio.run, args=(_insert_late_session(url),))
                worker.start()
                worker.join()
            return super().write(text)

    out = CommitsMidway()
    report = await t.export_sessions(postgres, out, batch_size=1)

    assert report.sessions == 3
    assert str(LATE) not in out.getvalue()
    assert await repo.get_session(str(LATE)) is not None  # committed before the export ended


async def test_a_corrupt_line_is_reported_by_number_and_the_rest_is_imported(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    sessions = await seed(source)
    lines = (await export_text(source))[0].splitlines()
    session = json.loads(lines[2])
    bad = {
        3: "{not json",
        4: json.dumps({**session, "session": {**session["session"], "id": "nope"}}),
        5: json.dumps({**session, "session": {**session["session"], "colour": SECRET}}),
        6: json.dumps({**session, "session": {**session["session"], "created_at": "2026-01-01"}}),
        7: json.dumps({**session, "checkpoints": [{"seq": 1, "name": "x"}]}),
        8: json.dumps({"kind": "gossip"}),
    }
    for number, line in bad.items():
        lines[number - 1] = line
    mixed: list[str | bytes] = [*lines[:8], b"\xff\xfe{}\n", *lines[8:]]  # line 9

    report = await t.import_sessions(target, mixed)

    assert [p.line for p in report.rejected] == [3, 4, 5, 6, 7, 8, 9]
    reasons = " ".join(p.reason for p in report.rejected)
    for part in ("not valid JSON", "session.id is not a UUID", "colour", "has no time zone",
                 "checkpoints[0] has no data", "unknown kind", "not UTF-8 text"):  # fmt: skip
        assert part in reasons
    assert SECRET not in reasons
    assert report.sessions_imported == sessions - 6
    assert report.shared_state_imported == 3


async def test_export_and_import_work_through_a_transaction_pooler(
    source: AsyncEngine, pooled: AsyncEngine
) -> None:
    sessions = await seed(source)
    text, _ = await export_text(source)
    report = await t.import_sessions(pooled, text.splitlines(), batch_size=7)
    assert report.sessions_imported == sessions
    again, exported = await export_text(pooled, batch_size=5)
    assert exported.sessions == sessions
    assert len(again.splitlines()) == len(text.splitlines())
    assert await dump(pooled) == await dump(source)


async def test_a_file_cut_short_is_imported_as_far_as_it_goes_and_reported_incomplete(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    sessions = await seed(source)
    lines = (await export_text(source))[0].splitlines()

    cut = await t.import_sessions(target, lines[: 1 + sessions])  # no documents, no end line

    assert cut.sessions_imported == sessions
    assert not cut.complete
    whole = await t.import_sessions(target, [*lines, lines[1]])  # a line after the end line
    assert whole.complete
    assert (whole.sessions_present, whole.shared_state_imported) == (sessions, 3)
    assert [(p.line, p.reason) for p in whole.rejected] == [
        (len(lines) + 1, "after the export's end line")
    ]


async def test_a_session_the_target_holds_with_other_content_is_a_conflict_left_as_it_is(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    sessions = await seed(source)
    text, _ = await export_text(source)
    await t.import_sessions(target, text.splitlines())
    changed = json.loads(text.splitlines()[1])["session"]["id"]
    async with target.begin() as conn:
        await conn.execute(
            update(sessions_table)
            .where(sessions_table.c.id == uuid.UUID(changed))
            .values(metadata={"changed": True}, version=sessions_table.c.version + 1)
        )
    before = await dump(target)

    report = await t.import_sessions(target, text.splitlines())

    assert [(p.line, p.what) for p in report.conflicts] == [(2, f"session {changed}")]
    assert report.sessions_present == sessions - 1
    assert await dump(target) == before


async def test_a_key_a_live_session_of_the_target_holds_is_a_conflict(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    repo = SessionRepository(async_sessionmaker(source, expire_on_commit=False))
    await repo.create_session("planner", "alice", key="chat")
    theirs = SessionRepository(async_sessionmaker(target, expire_on_commit=False))
    await theirs.create_session("planner", "alice", key="chat")
    report = await t.import_sessions(target, (await export_text(source))[0].splitlines())
    assert [p.reason for p in report.conflicts] == [
        "a live session of the target holds its key; left out"
    ]
    assert report.sessions_imported == 0


async def test_export_of_one_user_holds_only_that_users_sessions_and_documents(
    source: AsyncEngine,
) -> None:
    await seed(source)
    text, report = await export_text(source, user_id="alice")
    items = [json.loads(line) for line in text.splitlines()[1:]]
    users = {i["session"]["user_id"] for i in items if i["kind"] == "session"}
    documents = [i["row"] for i in items if i["kind"] == "shared_state"]
    assert users == {"alice"}
    assert report.sessions == len(SessionState) + LANGGRAPH  # and the LangGraph thread
    assert [(d["scope"], d["user_id"]) for d in documents] == [("user", "alice")]
    graph = [i for i in items if i["kind"] == "session" and i["session"]["agent_type"] == "graph"]
    if LANGGRAPH:
        assert set(graph[0]["rows"]) == {table.name for table in LANGGRAPH_TABLES}


async def test_import_refuses_a_file_that_is_not_an_export_and_writes_nothing(
    target: AsyncEngine,
) -> None:
    for first in ("", "{}", '{"format": "agent-session-store-export", "version": 2}', "\x00"):
        with pytest.raises(SessionValidationError, match=r"line 1|version"):
            await t.import_sessions(target, [first, '{"kind": "gossip"}'])
    with pytest.raises(SessionValidationError, match="batch_size"):
        await t.import_sessions(target, [], batch_size=0)


async def test_export_and_import_refuse_a_database_that_is_not_migrated(tmp_path: Path) -> None:
    bare = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'bare.db'}")
    try:
        with pytest.raises(SchemaOutOfDateError):
            await t.export_sessions(bare, io.StringIO())
        with pytest.raises(SchemaOutOfDateError):
            await t.import_sessions(bare, ["{}"])
    finally:
        await bare.dispose()


async def test_export_and_import_commands_round_trip_and_report_counts(
    tmp_path: Path, source: AsyncEngine, target: AsyncEngine
) -> None:
    sessions = await seed(source)
    checkpoints = len((await dump(source))["agent_sessions_checkpoints"])
    src, dst = f"sqlite+aiosqlite:///{tmp_path / 'source.db'}", str(tmp_path / "target.db")
    exported = await cli("export", "--url", src, "--output", "out.jsonl", cwd=tmp_path)
    assert exported.code == 0, exported.err
    assert exported.out == (
        f"export: wrote {sessions} sessions ({checkpoints} checkpoints) and "
        "3 shared-state documents to out.jsonl\n"
    )
    imported = await cli("import", "out.jsonl", "--url", f"sqlite+aiosqlite:///{dst}",
                         cwd=tmp_path)  # fmt: skip
    assert imported.code == 0, imported.err
    assert imported.out.startswith(f"import: {sessions + 5} lines: {sessions} sessions imported")
    assert await dump(target) == await dump(source)
    assert SECRET not in exported.out + exported.err + imported.out + imported.err

    assert not (tmp_path / "out.jsonl.partial").exists()
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:3]) + "\n")
    cut = await cli("import", "cut.jsonl", "--url", f"sqlite+aiosqlite:///{dst}", cwd=tmp_path)
    assert cut.code == 1
    assert "cut.jsonl ends without the export's end line: it was cut short" in cut.err
    lines[2] = "{broken"
    (tmp_path / "corrupt.jsonl").write_text("\n".join(lines) + "\n")
    again = await cli("import", "corrupt.jsonl", "--url", f"sqlite+aiosqlite:///{dst}",
                      cwd=tmp_path)  # fmt: skip
    assert again.code == 1
    assert "rejected: line 3: not valid JSON" in again.out
    assert f"{sessions - 1} present" in again.out
    assert "1 line of corrupt.jsonl could not be imported" in again.err


def test_import_into_a_database_that_is_not_migrated_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent_session_store.cli import main

    (tmp_path / "empty.jsonl").write_text(json.dumps({"format": t.FORMAT, "version": 1}) + "\n")
    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).close()  # a SQLite file without the schema
    code = main(["import", str(tmp_path / "empty.jsonl"), "--url", f"sqlite+aiosqlite:///{bare}"])
    assert code == 3
    assert "agent-session-store db upgrade" in capsys.readouterr().err


def test_export_to_stdout_prints_the_summary_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent_session_store.cli import main

    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["db", "upgrade", "--url", url]) == 0
    capsys.readouterr()
    assert main(["export", "--url", url]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.splitlines()[0])["format"] == t.FORMAT
    assert [json.loads(line).get("kind") for line in out.splitlines()] == [None, "end"]
    assert (
        err == "export: wrote 0 sessions (0 checkpoints) and 0 shared-state documents to stdout\n"
    )
