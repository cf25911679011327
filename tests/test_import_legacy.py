"""``import-legacy``: a hand-written session manager's table moved into this library's tables.

The old table is built with the old schema (``context``/``metadata``/``checkpoints`` JSONB, naive
timestamps as ``datetime.utcnow()`` wrote them) in a database of its own on the test PostgreSQL;
the target is another fresh database, migrated. A SQLite source covers what JSONB cannot hold
(text that is not JSON) and old tables without a ``metadata`` column.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    Table,
    Text,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import SessionRepository, SessionState, create_engine, migrations
from agent_session_store.errors import SchemaOutOfDateError, SessionValidationError
from agent_session_store.legacy import ImportReport, import_batches, import_legacy, session_id_for
from agent_session_store.tables import checkpoints_table, sessions_table
from tests.servers import PostgresServer
from tests.test_cli import cli

T0 = datetime(2024, 5, 1, 9, 0)  # naive, as the old manager wrote them (utcnow)


def old_table(
    metadata: MetaData,
    json_type: Any,
    *,
    unique_ids: bool = True,
    with_metadata: bool = True,
    id_type: Any = Text,
) -> Table:
    """The old manager's table (its schema, not its data); some had no ``metadata`` column."""
    return Table(
        "agent_sessions",
        metadata,
        Column("id", id_type, primary_key=unique_ids),
        Column("agent_type", Text),
        Column("user_id", Text),
        Column("state", Text),
        Column("context", json_type),
        *([Column("metadata", json_type)] if with_metadata else []),
        Column("checkpoints", json_type),
        Column("created_at", DateTime()),
        Column("updated_at", DateTime()),
        Column("last_heartbeat", DateTime()),
    )


def row(old_id: Any, **values: Any) -> dict[str, Any]:
    """A well-formed old row, with ``values`` replacing fields."""
    base: dict[str, Any] = {
        "id": old_id,
        "agent_type": "research",
        "user_id": "alice",
        "state": "active",
        "context": {"goal": "Q3"},
        "metadata": None,
        "checkpoints": [
            {"name": "plan", "data": {"steps": 2}, "timestamp": "2024-05-01T09:01:00"},
            {"name": "search", "data": {"q": "x"}, "timestamp": "2024-05-01T09:02:00"},
        ],
        "created_at": T0,
        "updated_at": T0 + timedelta(minutes=2),
        "last_heartbeat": T0 + timedelta(minutes=3),
    }
    return {**base, **values}


@pytest.fixture
def fresh_pg(postgres_server: PostgresServer | None) -> Any:
    if postgres_server is None:
        pytest.skip("needs a PostgreSQL server of the test tooling (it creates databases)")

    def create(prefix: str) -> str:
        return postgres_server.create_database(f"{prefix}_{uuid.uuid4().hex[:12]}")

    return create


@pytest.fixture
async def source(fresh_pg: Any) -> AsyncIterator[AsyncEngine]:
    """A database with an empty old-schema ``agent_sessions`` table."""
    engine = create_engine(fresh_pg("legacy"))
    metadata = MetaData()
    old_table(metadata, JSONB(none_as_null=True))
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def target(fresh_pg: Any) -> AsyncIterator[AsyncEngine]:
    """A fresh, migrated agent_session_store database."""
    engine = create_engine(fresh_pg("target"))
    await migrations.upgrade(engine)
    yield engine
    await engine.dispose()


def source_table(engine: AsyncEngine) -> Table:
    json_type = JSONB(none_as_null=True) if engine.dialect.name == "postgresql" else Text
    return old_table(MetaData(), json_type)


async def fill(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(source_table(engine)), rows)


async def remove(engine: AsyncEngine, *old_ids: str) -> None:
    """Delete rows from the old table, as an operator would between two runs."""
    table = source_table(engine)
    async with engine.begin() as conn:
        await conn.execute(delete(table).where(table.c.id.in_(old_ids)))


def repository(engine: AsyncEngine) -> SessionRepository:
    return SessionRepository(async_sessionmaker(engine, expire_on_commit=False))


async def count(engine: AsyncEngine, table: Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


def rejected(report: ImportReport) -> dict[str, str]:
    return {r.old_id: r.reason for r in report.rejected}


# -- what is imported -------------------------------------------------------------------------


async def test_import_keeps_ids_checkpoint_order_and_old_timestamps(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    sid = str(uuid.uuid4())
    await fill(source, [row(sid, state="PAUSED"), row("chat-7", user_id="bob")])

    report = await import_legacy(source, target)

    assert (report.read, report.imported, report.present, report.rejected) == (2, 2, 0, [])
    repo = repository(target)
    session = await repo.get_session(sid)
    assert session is not None
    assert session.state is SessionState.PAUSED
    assert session.key is None
    assert session.context == {"goal": "Q3"}
    assert session.metadata == {"legacy_id": sid}
    assert session.created_at == T0.replace(tzinfo=UTC)
    assert session.updated_at == (T0 + timedelta(minutes=2)).replace(tzinfo=UTC)
    assert session.last_heartbeat == (T0 + timedelta(minutes=3)).replace(tzinfo=UTC)
    assert (session.checkpoint_count, session.version) == (2, 1)
    history = await repo.list_checkpoints(sid)
    assert [(cp.seq, cp.name, cp.data) for cp in history] == [
        (1, "plan", {"steps": 2}),
        (2, "search", {"q": "x"}),
    ]
    assert history[0].timestamp == datetime(2024, 5, 1, 9, 1, tzinfo=UTC)


async def test_old_ids_that_are_not_uuids_become_keys(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    await fill(source, [row("chat-7", user_id="bob"), row("42", agent_type="coder")])

    await import_legacy(source, target)

    repo = repository(target)
    chat = await repo.get_session_by_key("research", "bob", key="chat-7")
    assert chat is not None
    assert chat.session_id == str(session_id_for("chat-7")[0])
    assert (chat.key, chat.metadata) == ("chat-7", {"legacy_id": "chat-7"})
    numbered = await repo.get_session_by_key("coder", "alice", key="42")
    assert numbered is not None and numbered.checkpoint_count == 2


async def test_missing_fields_are_defaulted_and_reported(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    await fill(
        source,
        [
            row(
                "sparse",
                user_id=None,
                state=None,
                context=None,
                checkpoints=[{"name": "a"}, {"name": "b", "data": None, "timestamp": None}],
                updated_at=None,
                last_heartbeat=None,
            ),
            row("empty", checkpoints=None),
        ],
    )

    report = await import_legacy(source, target)

    assert report.imported == 2 and report.rejected == []
    assert report.defaulted == {
        "sparse": [
            "context",
            "updated_at",
            "last_heartbeat",
            "checkpoints[1].data",
            "checkpoints[1].timestamp",
            "checkpoints[2].data",
            "checkpoints[2].timestamp",
            "state",
            "user_id",
        ],
        "empty": ["checkpoints"],
    }
    session = await repository(target).get_session_by_key("research", key="sparse")
    assert session is not None
    assert (session.user_id, session.state, session.context) == ("", SessionState.ACTIVE, {})
    # A missing time is the nearest one the row has, not the time of the import.
    created = T0.replace(tzinfo=UTC)
    assert session.updated_at == session.last_heartbeat == created
    assert [(cp.data, cp.timestamp) for cp in session.checkpoints] == [
        ({}, created),
        ({}, created),
    ]


# -- hostile rows -----------------------------------------------------------------------------


async def test_hostile_rows_are_rejected_with_id_and_reason_and_nothing_half_written(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    good = str(uuid.uuid4())
    duplicated = uuid.uuid4()
    await fill(
        source,
        [
            row(good),
            row("double-encoded", context='{"goal": "Q3"}'),  # a JSON string, not an object
            row("array-context", context=[1, 2]),
            row("scalar-checkpoints", checkpoints=[1, "two"]),
            row("object-checkpoints", checkpoints={"name": "plan"}),
            row("nameless-checkpoint", checkpoints=[{"data": {}}]),
            row("odd-checkpoint", checkpoints=[{"name": "a", "seq": "x", "extra": 1}]),
            row("unknown-state", state="sleeping"),
            row("no-agent-type", agent_type=None),
            row("k" * 129),  # too long for a key
            row(str(duplicated).upper()),
            row(str(duplicated)),  # the same UUID, spelled differently
        ],
    )

    report = await import_legacy(source, target, batch_size=5)

    reasons = rejected(report)
    assert set(reasons) == {
        "double-encoded", "array-context", "scalar-checkpoints", "object-checkpoints",
        "nameless-checkpoint", "odd-checkpoint", "unknown-state", "no-agent-type", "k" * 129,
        str(duplicated).upper(), str(duplicated),
    }  # fmt: skip
    assert reasons["double-encoded"] == "context is a JSON string, not an object"
    assert reasons["array-context"] == "context is a JSON array, not an object"
    assert reasons["scalar-checkpoints"] == "checkpoints[1] is a JSON number, not an object"
    assert reasons["object-checkpoints"] == "checkpoints is a JSON object, not an array"
    assert "name" in reasons["nameless-checkpoint"]
    assert "unknown state 'sleeping'" in reasons["unknown-state"]
    assert "agent_type" in reasons["no-agent-type"]
    assert "key" in reasons["k" * 129]
    assert reasons[str(duplicated)] == reasons[str(duplicated).upper()]
    assert reasons[str(duplicated)].startswith(
        f"ambiguous: the old ids {str(duplicated).upper()!r}, {str(duplicated)!r} all become "
        f"the session {duplicated}; none of them is imported"
    )
    assert (report.read, report.imported) == (12, 1)
    # Only the good row, with all its checkpoints: no session without its history.
    assert await count(target, sessions_table) == 1
    assert await count(target, checkpoints_table) == 2


async def test_text_that_is_not_json_missing_ids_and_repeated_ids_are_rejected(
    tmp_path: Path, target: AsyncEngine
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    metadata = MetaData()
    old_table(metadata, Text, unique_ids=False)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await fill(
        engine,
        [
            row("dup", context="{}", checkpoints="[]"),
            row("dup", context="{}", checkpoints="[]"),
            row("garbled", context="{not json", checkpoints="[]"),
            row("garbled-metadata", context="{}", metadata="{not json", checkpoints="[]"),
            row("fine", context='{"a": 1}', checkpoints='[{"name": "x"}]'),
            row(None, context="{}", checkpoints="[]"),  # SQLite lets a text key be NULL
            row("", context="{}", checkpoints="[]"),
        ],
    )
    try:
        # Batches of 2: ("", "dup") would split the two "dup" rows; the batch takes both.
        report = await import_legacy(engine, target, batch_size=2)
        again = await import_legacy(engine, target, batch_size=2)
    finally:
        await engine.dispose()
    reasons = rejected(report)
    assert set(reasons) == {"garbled", "garbled-metadata", "NULL", "", "dup"}
    assert reasons["dup"] == "a duplicate: the id is on two rows"
    assert reasons["garbled"] == "context is not valid JSON"
    assert reasons["garbled-metadata"] == "metadata is not valid JSON"
    assert reasons["NULL"] == "the id is NULL"
    assert "key" in reasons[""]
    assert (report.read, report.imported) == (7, 2)
    assert (again.read, again.imported, again.present, len(again.rejected)) == (7, 0, 2, 5)


async def test_ids_taken_in_the_target_are_rejected(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    repo = repository(target)
    mine = await repo.create_session("research", "bob", key="chat-7")
    other = await repo.create_session("research", "alice", key="chat-9")
    await fill(
        source,
        [
            row("chat-7", user_id="bob"),  # the key of a live session
            row(" chat-9 "),  # the same, spelled with whitespace around it
            row(mine.session_id),  # the id of a session the import did not write
            row("chat-8", user_id="bob"),
        ],
    )

    report = await import_legacy(source, target)

    reasons = rejected(report)
    assert reasons["chat-7"] == (
        f"the key 'chat-7' is taken by the live session {mine.session_id} "
        "(agent_type 'research', user_id 'bob')"
    )
    assert reasons[" chat-9 "] == (  # reported under the old id, as the source spells it
        f"the key 'chat-9' is taken by the live session {other.session_id} "
        "(agent_type 'research', user_id 'alice')"
    )
    assert reasons[mine.session_id] == (
        f"the session id {mine.session_id} is taken by another session"
    )
    assert (report.imported, report.present) == (1, 0)
    still_mine = await repo.get_session(mine.session_id)
    assert still_mine is not None and still_mine.metadata == {}


# -- metadata ---------------------------------------------------------------------------------


async def test_old_metadata_is_imported_beside_the_legacy_id(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    sid = str(uuid.uuid4())
    await fill(
        source,
        [
            row(sid, metadata={"source": "api", "tags": ["a", "b"]}),
            row("chat-7", metadata={"legacy_id": "chat-7", "n": 1}),  # the same value: no clash
            row("no-metadata", metadata=None),
        ],
    )

    report = await import_legacy(source, target)
    again = await import_legacy(source, target)

    assert (report.imported, report.rejected, report.defaulted) == (3, [], {})
    assert (again.imported, again.present) == (0, 3)
    repo = repository(target)
    with_metadata = await repo.get_session(sid)
    assert with_metadata is not None
    assert with_metadata.metadata == {"source": "api", "tags": ["a", "b"], "legacy_id": sid}
    chat = await repo.get_session_by_key("research", "alice", key="chat-7")
    assert chat is not None and chat.metadata == {"legacy_id": "chat-7", "n": 1}
    bare = await repo.get_session_by_key("research", "alice", key="no-metadata")
    assert bare is not None and bare.metadata == {"legacy_id": "no-metadata"}


async def test_metadata_that_is_not_an_object_or_has_its_own_legacy_id_is_rejected(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    await fill(
        source,
        [
            row("array", metadata=[1, 2]),
            row("string", metadata="{}"),  # a JSON string, not an object
            row("own-legacy-id", metadata={"legacy_id": "v0-secret-123", "a": 1}),
            row("huge", metadata={"blob": "x" * (1024 * 1024)}),
            row("fine", metadata={"a": 1}),
        ],
    )

    report = await import_legacy(source, target)

    reasons = rejected(report)
    assert set(reasons) == {"array", "string", "own-legacy-id", "huge"}
    assert reasons["array"] == "metadata is a JSON array, not an object"
    assert reasons["string"] == "metadata is a JSON string, not an object"
    assert reasons["own-legacy-id"] == (
        "metadata has a 'legacy_id' entry of its own, where the import keeps the old id: "
        "rename that entry in the source and run again"
    )
    assert reasons["huge"].startswith("metadata is 1048") and "over the limit" in reasons["huge"]
    assert report.imported == 1
    assert await count(target, sessions_table) == 1


async def test_a_table_without_a_metadata_column_still_imports(
    tmp_path: Path, target: AsyncEngine
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    metadata = MetaData()
    table = old_table(metadata, Text, with_metadata=False)
    old = row("chat-7", context="{}", checkpoints="[]")
    del old["metadata"]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(insert(table), [old])
        report = await import_legacy(engine, target)
    finally:
        await engine.dispose()

    assert (report.imported, report.rejected, report.defaulted) == (1, [], {})
    session = await repository(target).get_session_by_key("research", "alice", key="chat-7")
    assert session is not None and session.metadata == {"legacy_id": "chat-7"}


# -- one session, spelled more than one way ---------------------------------------------------


async def test_spellings_of_one_uuid_are_all_rejected_until_one_is_left(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    sid = uuid.uuid4()
    spellings = [str(sid).upper(), "{" + str(sid) + "}", str(sid).replace("-", "")]
    await fill(
        source,
        [
            row(spellings[0], context=None, checkpoints=None),  # an empty copy
            row(spellings[1], context={"goal": "the real one"}),
            row(spellings[2], context=None),
            row("chat-1"),
            row(str(uuid.uuid4())),
        ],
    )

    # One row a batch: each spelling is read in a batch of its own.
    report = await import_legacy(source, target, batch_size=1)

    reasons = rejected(report)
    assert set(reasons) == set(spellings)
    listed = ", ".join(repr(s) for s in sorted(spellings))
    for spelling in spellings:
        assert reasons[spelling] == (
            f"ambiguous: the old ids {listed} all become the session {sid}; none of them is "
            "imported: keep one in the source (delete or rename the others) and run again"
        )
    assert (report.read, report.imported) == (5, 2)
    repo = repository(target)
    assert await repo.get_session(str(sid)) is None

    await remove(source, spellings[0], spellings[2])
    again = await import_legacy(source, target, batch_size=1)

    assert (again.imported, again.present, again.rejected) == (1, 2, [])
    session = await repo.get_session(str(sid))
    assert session is not None
    assert (session.context, session.metadata) == (
        {"goal": "the real one"},
        {"legacy_id": spellings[1]},
    )


async def test_keys_that_differ_by_surrounding_whitespace_are_all_rejected_until_one_is_left(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    await fill(
        source,
        [
            row(" chat-42 ", context=None),
            row("chat-42", context={"goal": "the real one"}),
            row("chat-42\t"),
            row("chat-43"),
        ],
    )

    report = await import_legacy(source, target, batch_size=1)

    reasons = rejected(report)
    assert set(reasons) == {" chat-42 ", "chat-42", "chat-42\t"}
    sid = session_id_for("chat-42")[0]
    assert reasons["chat-42"] == (
        f"ambiguous: the old ids ' chat-42 ', 'chat-42', 'chat-42\\t' all become the session "
        f"{sid} (key 'chat-42'); none of them is imported: keep one in the source (delete or "
        "rename the others) and run again"
    )
    assert report.imported == 1
    repo = repository(target)
    assert await repo.get_session_by_key("research", "alice", key="chat-42") is None

    await remove(source, " chat-42 ", "chat-42")
    again = await import_legacy(source, target, batch_size=1)

    assert (again.imported, again.present, again.rejected) == (1, 1, [])
    session = await repo.get_session_by_key("research", "alice", key="chat-42")
    assert session is not None and session.session_id == str(sid)
    assert (session.key, session.metadata) == ("chat-42", {"legacy_id": "chat-42\t"})


async def test_an_old_id_is_read_as_a_key_is_and_one_that_cannot_be_a_key_is_rejected(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    padded_uuid = uuid.uuid4()
    await fill(
        source,
        [
            row(" chat-9 "),
            row(f" {padded_uuid}\n"),
            row("   "),
            row("a\x07b"),
            row("k" * 129),
        ],
    )

    report = await import_legacy(source, target)

    reasons = rejected(report)
    assert set(reasons) == {"   ", "a\x07b", "k" * 129}
    rule = "key must be printable text of 1 to 128 characters (surrounding whitespace is not part"
    for old_id in reasons:
        assert reasons[old_id].startswith(f"the id is not a UUID and cannot be a key: {rule}")
    assert report.imported == 2
    repo = repository(target)
    keyed = await repo.get_session_by_key("research", "alice", key="chat-9")
    assert keyed is not None
    assert (keyed.session_id, keyed.key) == (str(session_id_for("chat-9")[0]), "chat-9")
    assert keyed.metadata == {"legacy_id": " chat-9 "}
    by_uuid = await repo.get_session(str(padded_uuid))
    assert by_uuid is not None and by_uuid.key is None


async def test_a_key_and_the_uuid_derived_from_it_are_ambiguous(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    seven, eight = session_id_for("chat-7")[0], session_id_for("chat-8")[0]
    await fill(
        source,
        [
            row("chat-7"),
            row(str(seven)),
            row("chat-8"),
            row(str(eight).upper()),  # found by a second pass over the ids, not by a lookup
        ],
    )

    report = await import_legacy(source, target, batch_size=1)

    reasons = rejected(report)
    assert set(reasons) == {"chat-7", str(seven), "chat-8", str(eight).upper()}
    assert reasons["chat-8"].startswith(
        f"ambiguous: the old ids {str(eight).upper()!r}, 'chat-8' all become the session {eight}"
    )
    assert report.imported == 0


async def test_a_spelling_added_after_an_import_leaves_the_imported_session_alone(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    sid = uuid.uuid4()
    await fill(source, [row(str(sid))])
    assert (await import_legacy(source, target)).imported == 1
    await fill(source, [row(str(sid).upper())])

    again = await import_legacy(source, target)

    reasons = rejected(again)
    assert set(reasons) == {str(sid), str(sid).upper()}
    assert reasons[str(sid)].endswith(
        f"; the session {sid} imported from {str(sid)!r} before is left as it is"
    )
    assert (again.imported, again.present) == (0, 0)

    await remove(source, str(sid))
    last = await import_legacy(source, target)

    assert rejected(last) == {
        str(sid).upper(): f"the session {sid} was imported from old id {str(sid)!r}, another "
        "spelling of this id, and is left as it is: remove it from the target to import this "
        "row instead"
    }
    session = await repository(target).get_session(str(sid))
    assert session is not None and session.metadata == {"legacy_id": str(sid)}


async def test_a_case_insensitive_id_column_reads_each_row_once(
    tmp_path: Path, target: AsyncEngine
) -> None:
    """Under SQLite's NOCASE (or citext), two spellings are one id to the source itself."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    metadata = MetaData()
    table = old_table(metadata, Text, unique_ids=False, id_type=Text(collation="NOCASE"))
    sid = uuid.uuid4()
    ids = ["a-1", str(sid).upper(), str(sid), "b-2", "c-3"]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(insert(table), [row(i, context="{}", checkpoints="[]") for i in ids])
        # Batches of one: a batch that ended at one spelling would leave the other behind
        # ("id > last"), or, taking it in, read the first twice.
        report = await import_legacy(engine, target, batch_size=1)
    finally:
        await engine.dispose()

    assert sorted(r.old_id for r in report.rejected) == sorted([str(sid).upper(), str(sid)])
    assert all(r.reason.startswith("ambiguous: ") for r in report.rejected)
    assert (report.read, report.imported) == (5, 3)


async def test_a_uuid_typed_id_column_is_imported(fresh_pg: Any, target: AsyncEngine) -> None:
    engine = create_engine(fresh_pg("legacy_uuid"))
    metadata = MetaData()
    table = old_table(metadata, JSONB(none_as_null=True), id_type=UUID(as_uuid=True))
    sids = [uuid.uuid4() for _ in range(3)]
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(insert(table), [row(sid) for sid in sids])
        report = await import_legacy(engine, target, batch_size=2)
    finally:
        await engine.dispose()

    assert (report.imported, report.rejected) == (3, [])
    assert await count(target, sessions_table) == 3


# -- idempotence, dry run, interruption -------------------------------------------------------


async def test_rerun_imports_nothing_and_reports_sessions_present(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    await fill(source, [row(str(uuid.uuid4())), row("chat-7"), row("gone", state="deleted")])
    first = await import_legacy(source, target, batch_size=2)
    assert first.imported == 3

    again = await import_legacy(source, target, batch_size=2)

    assert (again.read, again.imported, again.present, again.rejected) == (3, 0, 3, [])
    assert await count(target, sessions_table) == 3


async def test_dry_run_writes_nothing_and_counts_what_it_would_do(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    await fill(source, [row("a"), row("b"), row("bad", state="sleeping")])

    report = await import_legacy(source, target, dry_run=True)

    assert (report.dry_run, report.imported, len(report.rejected)) == (True, 2, 1)
    assert await count(target, sessions_table) == 0
    assert await count(target, checkpoints_table) == 0


async def test_interrupted_import_runs_again_to_completion(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    await fill(source, [row(f"s{i:02}") for i in range(10)])
    inserts = 0

    def crash_in_third_batch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal inserts
        if statement.startswith("INSERT INTO agent_sessions_checkpoints"):
            inserts += 1
            if inserts == 3:  # the batch's sessions are written, its checkpoints not yet
                raise KeyboardInterrupt

    event.listen(target.sync_engine, "before_cursor_execute", crash_in_third_batch)
    with pytest.raises(KeyboardInterrupt):
        await import_legacy(source, target, batch_size=4)
    event.remove(target.sync_engine, "before_cursor_execute", crash_in_third_batch)
    # Two batches committed; the third rolled back whole.
    assert await count(target, sessions_table) == 8
    assert await count(target, checkpoints_table) == 16

    report = await import_legacy(source, target, batch_size=4)

    assert (report.imported, report.present) == (2, 8)
    assert await count(target, sessions_table) == 10
    assert await count(target, checkpoints_table) == 20


async def test_batches_are_yielded_as_they_commit(source: AsyncEngine, target: AsyncEngine) -> None:
    await fill(source, [row(f"s{i}") for i in range(5)])
    seen = []
    async for batch in import_batches(source, target, batch_size=2):
        seen.append(batch.read)
        assert await count(target, sessions_table) == sum(seen)
    assert seen == [2, 2, 1]


# -- refusals ---------------------------------------------------------------------------------


async def test_an_unmigrated_target_is_refused(source: AsyncEngine, fresh_pg: Any) -> None:
    await fill(source, [row("a")])
    engine = create_engine(fresh_pg("empty"))
    try:
        with pytest.raises(SchemaOutOfDateError, match="agent-session-store db upgrade"):
            await import_legacy(source, engine)
    finally:
        await engine.dispose()


async def test_a_missing_table_or_bad_batch_size_is_refused(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    with pytest.raises(SessionValidationError, match=r"no table 'sessions'.*--table"):
        await import_legacy(source, target, table="sessions")
    with pytest.raises(SessionValidationError, match="batch_size"):
        await import_legacy(source, target, batch_size=0)


# -- the command ------------------------------------------------------------------------------


async def test_cli_imports_then_reports_nothing_left(
    source: AsyncEngine, target: AsyncEngine, tmp_path: Path
) -> None:
    await fill(source, [row("chat-7"), row("bad", state="sleeping"), row("x", user_id=None)])
    old, new = (e.url.render_as_string(hide_password=False) for e in (source, target))
    args = ("import-legacy", "--from-url", old, "--url", new, "--batch-size", "2")

    first = await cli(*args, cwd=tmp_path)

    assert first.code == 0, first.err
    lines = first.out.splitlines()
    assert lines[0] == (
        f"import-legacy: 3 rows of 'agent_sessions' at {old}: 2 imported, "
        "0 skipped as present, 1 rejected"
    )
    assert "rejected 'bad': unknown state 'sleeping'" in lines[1]
    assert lines[2] == "defaulted 'x': user_id"

    again = await cli(*args, stderr_tty=True, cwd=tmp_path)

    assert again.code == 0, again.err
    assert again.out.splitlines()[0] == (
        f"import-legacy: 3 rows of 'agent_sessions' at {old}: 0 imported, "
        "2 skipped as present, 1 rejected"
    )
    assert "import-legacy [##############################] 3/3 rows" in again.err
    assert first.err == ""  # no progress bar when stderr is not a terminal


async def test_cli_dry_run_and_refusals(
    source: AsyncEngine, target: AsyncEngine, fresh_pg: Any, tmp_path: Path
) -> None:
    await fill(source, [row("a")])
    old, new = (e.url.render_as_string(hide_password=False) for e in (source, target))

    dry = await cli("import-legacy", "--from-url", old, "--url", new, "--dry-run", cwd=tmp_path)
    assert dry.code == 0, dry.err
    # "1 row" or "1 rows": the CLI's wording of counts is being changed as this is written.
    assert re.match(
        rf"import-legacy --dry-run: 1 rows? of 'agent_sessions' at {re.escape(old)}: 1 would be "
        "imported",
        dry.out,
    )
    assert dry.out.splitlines()[0].endswith("; nothing was written")
    assert await count(target, sessions_table) == 0

    empty = fresh_pg("empty")
    unmigrated = await cli("import-legacy", "--from-url", old, "--url", empty, cwd=tmp_path)
    assert unmigrated.code == 3, unmigrated.err
    no_table = await cli(
        "import-legacy", "--from-url", old, "--url", new, "--table", "nope", cwd=tmp_path
    )
    assert no_table.code == 2
    assert "no table 'nope'" in no_table.err
    missing = await cli(
        "import-legacy", "--from-url", f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
        "--url", new, cwd=tmp_path,
    )  # fmt: skip
    assert missing.code == 2
    assert "there is no SQLite database" in missing.err
    assert not (tmp_path / "x.db").exists()


async def test_a_key_taken_while_the_batch_is_written_is_rejected_on_the_second_pass(
    source: AsyncEngine, target: AsyncEngine
) -> None:
    await fill(source, [row("chat-7", user_id="bob"), row("chat-8", user_id="bob")])
    url = target.url.render_as_string(hide_password=False)
    created: list[str] = []

    async def create_elsewhere() -> None:
        engine = create_engine(url)
        try:
            session = await repository(engine).create_session("research", "bob", key="chat-7")
            created.append(session.session_id)
        finally:
            await engine.dispose()

    def race(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # After the checks, before the insert: another writer takes the key (and commits).
        if statement.startswith("INSERT INTO agent_sessions_sessions") and not created:
            thread = threading.Thread(target=asyncio.run, args=(create_elsewhere(),))
            thread.start()
            thread.join()

    event.listen(target.sync_engine, "before_cursor_execute", race)
    try:
        report = await import_legacy(source, target)
    finally:
        event.remove(target.sync_engine, "before_cursor_execute", race)

    assert len(created) == 1
    assert rejected(report) == {
        "chat-7": f"the key 'chat-7' is taken by the live session {created[0]} "
        "(agent_type 'research', user_id 'bob')"
    }
    assert report.imported == 1
    assert await count(target, sessions_table) == 2


async def test_cli_ctrl_c_says_how_many_were_imported_and_a_rerun_completes(
    source: AsyncEngine, target: AsyncEngine, tmp_path: Path
) -> None:
    """Batches of two; the second batch's insert waits on a row another transaction holds.

    The holder inserts, without committing, the session the fourth row becomes: the import's
    checks cannot see it, and its insert waits on the primary key until Ctrl-C arrives.
    """
    await fill(source, [row(f"s{i}") for i in range(4)])
    old, new = (e.url.render_as_string(hide_password=False) for e in (source, target))
    args = ("import-legacy", "--from-url", old, "--url", new, "--batch-size", "2")
    blocker = session_id_for("s3")[0]
    async with target.connect() as holder:
        await holder.execute(
            insert(sessions_table).values(
                id=blocker, agent_type="other", user_id="", state="active", context={},
                metadata={}, created_at=T0.replace(tzinfo=UTC),
                updated_at=T0.replace(tzinfo=UTC), last_heartbeat=T0.replace(tzinfo=UTC),
            )
        )  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_SESSION_STORE_")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent_session_store.cli", *args, cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        waiting = text("SELECT count(*) FROM pg_locks WHERE NOT granted")
        async with target.connect() as watcher:
            for _ in range(600):  # polls a condition; the time only bounds the test
                found = (await watcher.execute(waiting)).scalar_one()
                await watcher.commit()
                if found:
                    break
                await asyncio.sleep(0.05)
            else:
                proc.kill()
                pytest.fail("the import never reached its second batch")
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        await holder.rollback()

    assert proc.returncode == 130, err.decode()
    assert (
        "interrupted: 2 sessions had already been imported and committed (batches of 2); the "
        "batch in progress was rolled back. Run the same command again" in err.decode()
    )
    assert out.decode() == ""
    assert await count(target, sessions_table) == 2

    again = await cli(*args, cwd=tmp_path)

    assert again.code == 0, again.err
    assert "2 imported, 2 skipped as present, 0 rejected" in again.out


async def test_a_sqlite_source_is_only_read(tmp_path: Path, target: AsyncEngine) -> None:
    path = tmp_path / "old.db"
    plain = sa_create_engine(f"sqlite:///{path}")
    metadata = MetaData()
    table = old_table(metadata, Text)
    with plain.begin() as conn:
        metadata.create_all(conn)
        conn.execute(insert(table), [row("a", context="{}", checkpoints="[]")])
    plain.dispose()
    before = path.read_bytes()

    report = await import_legacy(f"sqlite+aiosqlite:///{path}", target)

    assert report.imported == 1
    assert path.read_bytes() == before  # not switched to WAL, nothing written
    assert not (tmp_path / "old.db-wal").exists()
