"""Export a store's sessions to JSON lines, and import them into another store.

The file is portable between SQLite and PostgreSQL. Its first line is a header; then one line
per session, with its whole history; then one line per shared-state document; last, an end
line with the counts, whose absence tells a file cut short (an export that failed half-way)::

    {"format": "agent-session-store-export", "version": 1, "library": "0.1.0", ...}
    {"kind": "session", "session": {...}, "checkpoints": [...], "rows": {...}}
    {"kind": "shared_state", "row": {...}}
    {"kind": "end", "sessions": 1, "checkpoints": 3, "shared_state": 1}

Every value is exported as stored, column by column, from the table definitions
(:mod:`agent_session_store.tables`), so a column a later migration adds comes along without a
change here: ``session`` holds every column of ``agent_sessions_sessions``, ``checkpoints`` every
row of ``agent_sessions_checkpoints`` (without ``session_id``, which is the session's), and
``rows`` the session's rows of the other tables that belong to a session (the LangGraph
checkpointer's, by table name). Nothing is decoded on the way: a value a column type transforms
(an encrypted column) is exported as the database holds it, and imported as it was. Ids are
text, times ISO 8601 in UTC with microseconds, bytes base64, JSON as JSON.

Export streams in constant memory: sessions in keyset batches by id (each with its rows), then
shared state by its key; on PostgreSQL the whole export reads one snapshot (REPEATABLE READ).

Import checks each line on its own (JSON, the columns of the target's tables, each value's
type): a line that fails is reported with its number and skipped, and the rest is imported; a
file without its end line is imported as far as it goes and reported incomplete. It
never replaces what the target holds, so importing a file again changes nothing:

- a session whose id the target holds is skipped: counted as *present* when its stored row is
  the same as the line's (every column: ``version`` and ``updated_at`` move with every write),
  else as a *conflict* (the target's copy is left as it is; compare them, delete one with
  ``delete_session(hard=True)`` and import again to replace it);
- a session whose key a live session of the target holds (same agent type and user), or whose
  rows another session's unique values hold (a LangGraph thread id), is a conflict too;
- a shared-state document the target holds is present when equal, else a conflict.

Each batch of lines is one transaction; a batch the database refuses (a value taken meanwhile)
is retried line by line. Importing writes only rows the target did not hold, so no cached copy
can be stale: no cache needs invalidating.

Example::

    with open("sessions.jsonl", "w") as out:
        exported = await export_sessions(source_engine, out, user_id="u1")
    with open("sessions.jsonl") as lines:
        report = await import_sessions(target_engine, lines)
    print(report.sessions_imported, report.sessions_present, len(report.conflicts))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import and_, insert, select, tuple_
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from agent_session_store import _statements as sql
from agent_session_store import migrations
from agent_session_store._arguments import check_filter
from agent_session_store._errors import storage_errors
from agent_session_store._transfer_rows import (
    CHECKPOINTS,
    OTHER_ROWS,
    STORED,
    TABLES,
    DocumentLine,
    Line,
    Reject,
    SessionLine,
    encode,
    encoded_row,
    parse,
    text_of,
)
from agent_session_store.engine import create_engine
from agent_session_store.errors import SessionValidationError, StorageError
from agent_session_store.tables import sessions_table, shared_state_table

__all__ = [
    "FORMAT",
    "VERSION",
    "ExportReport",
    "ImportReport",
    "Problem",
    "export_sessions",
    "import_sessions",
]

logger = logging.getLogger(__name__)

FORMAT = "agent-session-store-export"
VERSION = 1
DEFAULT_BATCH_SIZE = 100
MAX_BATCH_SIZE = 5000  # a batch's ids are bound one parameter each in IN (...)


class Writable(Protocol):
    def write(self, text: str, /) -> Any: ...


@dataclass(frozen=True)
class Problem:
    """A line that was not imported (whole or in part): its number, what, and why.

    ``what`` names the session (``session <id>``) or document, never its contents; it is
    empty for a line that could not be read as either.
    """

    line: int
    what: str
    reason: str


@dataclass
class ExportReport:
    """What an export wrote."""

    sessions: int = 0
    checkpoints: int = 0
    shared_state: int = 0


@dataclass
class ImportReport:
    """What an import did, by line; ``rejected`` lines were not imported at all."""

    lines: int = 0
    sessions_imported: int = 0
    checkpoints_imported: int = 0
    sessions_present: int = 0
    shared_state_imported: int = 0
    shared_state_present: int = 0
    conflicts: list[Problem] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)
    # Whether the file ended with the export's end line: without it, it was cut short (an
    # export that did not finish, a partial copy), and only the lines it had were imported.
    complete: bool = False


# -- export -----------------------------------------------------------------------------------


async def export_sessions(
    source: str | AsyncEngine,
    out: Writable,
    *,
    user_id: str | None = None,
    agent_type: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ExportReport:
    """Write the store's sessions and shared state to ``out`` as JSON lines (see the module).

    Args:
        source: the database (engine, used and left open, or URL), migrated to this release.
        out: where the lines go (a text file, ``sys.stdout``), each ending in ``\\n``.
        user_id: only this user's sessions and shared-state documents (GDPR art. 20).
        agent_type: only this agent type's sessions and shared state.
        batch_size: sessions read per query.

    Raises:
        SchemaOutOfDateError: ``source`` is not at this release's revision.
        SessionValidationError: a bad filter or ``batch_size``.
        StorageError: the database failed.
    """
    check_filter(user_id, "user_id")
    check_filter(agent_type, "agent_type")
    _check_batch_size(batch_size)
    engine = create_engine(source) if isinstance(source, str) else source
    report = ExportReport()
    try:
        with storage_errors("export"):
            async with _snapshot(engine) as conn:
                await conn.run_sync(migrations.check_connection)
                out.write(_header(user_id, agent_type) + "\n")
                await _export_sessions(conn, out, report, user_id, agent_type, batch_size)
                await _export_shared_state(conn, out, report, user_id, agent_type, batch_size)
                out.write(json.dumps({"kind": "end", **dataclasses.asdict(report)}) + "\n")
    finally:
        if isinstance(source, str):
            await engine.dispose()
    logger.info(
        "exported %d sessions, %d checkpoints, %d shared-state documents",
        report.sessions, report.checkpoints, report.shared_state,
    )  # fmt: skip
    return report


def _snapshot(engine: AsyncEngine) -> Any:
    """One connection in one transaction; on PostgreSQL one snapshot for the whole export."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ").begin()
    return engine.begin()


def _header(user_id: str | None, agent_type: str | None) -> str:
    from agent_session_store import __version__

    return json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "library": __version__,
            "exported_at": datetime.now(UTC).isoformat(timespec="microseconds"),
            "filters": {"user_id": user_id, "agent_type": agent_type},
            "tables": {name: [c.name for c in t.columns] for name, t in TABLES.items()},
        }
    )


async def _export_sessions(
    conn: AsyncConnection,
    out: Writable,
    report: ExportReport,
    user_id: str | None,
    agent_type: str | None,
    batch_size: int,
) -> None:
    stored = STORED[sessions_table.name]
    ids = stored.c.id
    filters = []
    if user_id is not None:
        filters.append(stored.c.user_id == user_id)
    if agent_type is not None:
        filters.append(stored.c.agent_type == agent_type)
    last: uuid.UUID | None = None
    while True:
        page = select(stored).where(*filters).order_by(ids).limit(batch_size)
        if last is not None:
            page = page.where(ids > last)
        sessions = (await conn.execute(page)).mappings().all()
        if not sessions:
            return
        batch = [row["id"] for row in sessions]
        children = {t.name: await _children(conn, t.name, batch) for t in sql.SESSION_ROWS}
        for row in sessions:
            sid = row["id"]
            checkpoints = children[CHECKPOINTS.name].get(sid, [])
            rows = {t.name: children[t.name][sid] for t in OTHER_ROWS if sid in children[t.name]}
            line = {
                "kind": "session",
                "session": encoded_row(row, sessions_table.name),
                "checkpoints": checkpoints,
                "rows": rows,
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            report.sessions += 1
            report.checkpoints += len(checkpoints)
        last = batch[-1]
        if len(sessions) < batch_size:
            return


async def _children(
    conn: AsyncConnection, name: str, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """The rows of table ``name`` of the sessions ``ids``, encoded, by session, in key order."""
    stored, source = STORED[name], TABLES[name]
    key = [stored.c[c.name] for c in source.primary_key.columns] or list(stored.c)
    query = select(stored).where(stored.c.session_id.in_(ids)).order_by(*key)
    found: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in (await conn.execute(query)).mappings():
        found.setdefault(row["session_id"], []).append(encoded_row(row, name, owner=False))
    return found


async def _export_shared_state(
    conn: AsyncConnection,
    out: Writable,
    report: ExportReport,
    user_id: str | None,
    agent_type: str | None,
    batch_size: int,
) -> None:
    stored = STORED[shared_state_table.name]
    key = tuple_(stored.c.agent_type, stored.c.scope, stored.c.user_id)
    filters = []
    if user_id is not None:
        filters += [stored.c.scope == "user", stored.c.user_id == user_id]
    if agent_type is not None:
        filters.append(stored.c.agent_type == agent_type)
    last: tuple[str, str, str] | None = None
    while True:
        page = (
            select(stored)
            .where(*filters)
            .order_by(stored.c.agent_type, stored.c.scope, stored.c.user_id)
            .limit(batch_size)
        )
        if last is not None:
            page = page.where(key > tuple_(*last))
        rows = (await conn.execute(page)).mappings().all()
        for row in rows:
            line = {"kind": "shared_state", "row": encoded_row(row, shared_state_table.name)}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            report.shared_state += 1
        if len(rows) < batch_size:
            return
        last = (rows[-1]["agent_type"], rows[-1]["scope"], rows[-1]["user_id"])


# -- import -----------------------------------------------------------------------------------


async def import_sessions(
    target: str | AsyncEngine,
    lines: Iterable[str | bytes],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ImportReport:
    """Import the lines of an export (see the module) into ``target``; never replaces anything.

    Args:
        target: the database (engine, used and left open, or URL), migrated to this release.
        lines: the export's lines, the header first: a file opened for reading (bytes are
            read as UTF-8, and a line that is not is rejected like any corrupt line).
        batch_size: lines written per transaction.

    Returns:
        The counts, with each conflicting and each rejected line (number and reason).

    Raises:
        SchemaOutOfDateError: ``target`` is not at this release's revision.
        SessionValidationError: the first line is not an export's header (of a version this
            release reads), or a bad ``batch_size``; nothing was written.
        StorageError: the database failed; the batches before it were committed (run the
            import again: what they wrote is then present).
    """
    _check_batch_size(batch_size)
    engine = create_engine(target) if isinstance(target, str) else target
    report = ImportReport()
    try:
        with storage_errors("import: checking the target's schema"):
            async with engine.connect() as conn:
                await conn.run_sync(migrations.check_connection)
        numbered = enumerate(lines, start=1)
        _check_header(next(numbered, (1, "")))
        report.lines = 1
        batch: list[Line] = []
        for number, text in numbered:
            report.lines = number
            if not text.strip():
                continue
            try:
                if report.complete:
                    raise Reject("after the export's end line")
                item = parse(number, text_of(text))
            except Reject as exc:
                report.rejected.append(Problem(number, "", str(exc)))
                continue
            if item is None:  # the end line
                report.complete = True
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                await _write_batch(engine, batch, report)
                batch = []
        if batch:
            await _write_batch(engine, batch, report)
    finally:
        if isinstance(target, str):
            await engine.dispose()
    logger.info(
        "imported %d sessions (%d checkpoints) and %d shared-state documents; %d present, "
        "%d conflicts, %d lines rejected%s",
        report.sessions_imported, report.checkpoints_imported, report.shared_state_imported,
        report.sessions_present + report.shared_state_present, len(report.conflicts),
        len(report.rejected), "" if report.complete else "; the file has no end line",
    )  # fmt: skip
    return report


def _check_batch_size(batch_size: object) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise SessionValidationError(f"batch_size must be an integer, got {batch_size!r}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise SessionValidationError(
            f"batch_size must be from 1 to {MAX_BATCH_SIZE}, got {batch_size}"
        )


def _check_header(first: tuple[int, str | bytes]) -> None:
    try:
        header = json.loads(text_of(first[1]))
    except (ValueError, Reject):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SessionValidationError(
            "line 1 is not the header of an agent-session-store export (written by "
            "`agent-session-store export`); nothing was imported"
        )
    if header.get("version") != VERSION:
        raise SessionValidationError(
            f"the file is an export of format version {header.get('version')!r}; this release "
            f"reads version {VERSION}: import it with the release that wrote it, or a newer one"
        )


# What the database says of a row it will not take (a taken unique value, a value out of its
# range); anything else (a lost connection) stops the import.
_REFUSALS = (sa_exc.IntegrityError, sa_exc.DataError)


async def _write_batch(engine: AsyncEngine, batch: list[Line], report: ImportReport) -> None:
    """Write a batch in one transaction; one the database refuses, line by line."""
    try:
        with storage_errors("import: writing a batch"):
            async with engine.begin() as conn:
                done = await _write(conn, batch)
    except StorageError as exc:
        refused = exc.__cause__
        if not isinstance(refused, _REFUSALS):
            raise
        if len(batch) == 1:
            _refused(batch[0], refused, report)
            return
        logger.info("import: the database refused a batch; writing it line by line")
        for item in batch:
            await _write_batch(engine, [item], report)
        return
    _add(report, done)


def _refused(item: Line, error: sa_exc.DBAPIError, report: ImportReport) -> None:
    """A line the database refused on its own: a taken unique value, or a value it rejects."""
    what = _what(item)
    if isinstance(error, sa_exc.IntegrityError):
        # The database's message would name the values (a key, a thread id): not repeated.
        reason = "a unique value of it (a key, a LangGraph thread id) is taken in the target"
        report.conflicts.append(Problem(item.line, what, reason))
    else:
        reason = f"the database refused it ({type(error.orig or error).__name__})"
        report.rejected.append(Problem(item.line, what, reason))


def _what(item: Line) -> str:
    if isinstance(item, SessionLine):
        return f"session {item.id}"
    agent_type, scope, _ = item.key
    return f"shared state of {agent_type!r} ({'app-wide' if scope == 'app' else 'a user'})"


@dataclass
class _Done:
    sessions: int = 0
    checkpoints: int = 0
    sessions_present: int = 0
    shared_state: int = 0
    shared_state_present: int = 0
    conflicts: list[Problem] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)


def _add(report: ImportReport, done: _Done) -> None:
    report.sessions_imported += done.sessions
    report.checkpoints_imported += done.checkpoints
    report.sessions_present += done.sessions_present
    report.shared_state_imported += done.shared_state
    report.shared_state_present += done.shared_state_present
    report.conflicts += done.conflicts
    report.rejected += done.rejected


async def _write(conn: AsyncConnection, batch: list[Line]) -> _Done:
    done = _Done()
    sessions = [item for item in batch if isinstance(item, SessionLine)]
    documents = [item for item in batch if isinstance(item, DocumentLine)]
    new_sessions = await _sort_sessions(conn, sessions, done)
    if new_sessions:
        await conn.execute(insert(STORED[sessions_table.name]), [s.row for s in new_sessions])
        for name in (t.name for t in reversed(sql.SESSION_ROWS)):  # parents first
            rows = [
                {**row, "session_id": s.id}
                for s in new_sessions
                for row in (s.checkpoints if name == CHECKPOINTS.name else s.rows.get(name, []))
            ]
            if rows:
                await conn.execute(insert(STORED[name]), rows)
    new_documents = await _sort_documents(conn, documents, done)
    if new_documents:
        await conn.execute(insert(STORED[shared_state_table.name]), [d.row for d in new_documents])
    done.sessions = len(new_sessions)
    done.checkpoints = sum(len(s.checkpoints) for s in new_sessions)
    done.shared_state = len(new_documents)
    return done


def _same(given: Mapping[str, Any], stored: Mapping[Any, Any], name: str) -> bool:
    """Whether a line's row is the stored one, compared as exported."""
    types = {c.name: c.type for c in STORED[name].columns}
    return all(encode(v, types[k]) == encode(stored[k], types[k]) for k, v in given.items())


async def _sort_sessions(
    conn: AsyncConnection, sessions: list[SessionLine], done: _Done
) -> list[SessionLine]:
    """The sessions to insert; the others counted as present, conflicting or duplicated."""
    if not sessions:
        return []
    stored = STORED[sessions_table.name]
    wanted = list({s.id for s in sessions})
    held = {
        row["id"]: row
        for row in (await conn.execute(select(stored).where(stored.c.id.in_(wanted)))).mappings()
    }
    new: dict[uuid.UUID, SessionLine] = {}
    for s in sessions:
        if s.id in new:
            reason = f"the same session as line {new[s.id].line}"
            done.rejected.append(Problem(s.line, f"session {s.id}", reason))
        elif s.id in held:
            if _same(s.row, held[s.id], sessions_table.name):
                done.sessions_present += 1
            else:
                reason = "the target holds this session id with other content; left as it is"
                done.conflicts.append(Problem(s.line, f"session {s.id}", reason))
        else:
            new[s.id] = s
    # A live session's key is unique per agent type and user: one the target's holds is taken.
    keyed = {
        (s.row["agent_type"], s.row.get("user_id", ""), s.row["key"]): s
        for s in new.values()
        if s.row.get("key") is not None and s.row["state"] != sql.DELETED
    }
    if keyed:
        live = select(stored.c.agent_type, stored.c.user_id, stored.c.key).where(
            and_(
                tuple_(stored.c.agent_type, stored.c.user_id, stored.c.key).in_(list(keyed)),
                stored.c.state != sql.DELETED,
            )
        )
        for agent_type, user_id, key in await conn.execute(live):
            s = keyed[(agent_type, user_id, key)]
            reason = "a live session of the target holds its key; left out"
            done.conflicts.append(Problem(s.line, f"session {s.id}", reason))
            del new[s.id]
    return list(new.values())


async def _sort_documents(
    conn: AsyncConnection, documents: list[DocumentLine], done: _Done
) -> list[DocumentLine]:
    if not documents:
        return []
    stored = STORED[shared_state_table.name]
    key = tuple_(stored.c.agent_type, stored.c.scope, stored.c.user_id)
    wanted = list({d.key for d in documents})
    held = {
        (row["agent_type"], row["scope"], row["user_id"]): row
        for row in (await conn.execute(select(stored).where(key.in_(wanted)))).mappings()
    }
    new: dict[tuple[str, str, str], DocumentLine] = {}
    for d in documents:
        if d.key in new:
            reason = f"the same document as line {new[d.key].line}"
            done.rejected.append(Problem(d.line, _what(d), reason))
        elif d.key in held:
            if _same(d.row, held[d.key], shared_state_table.name):
                done.shared_state_present += 1
            else:
                reason = "the target holds this document with other content; left as it is"
                done.conflicts.append(Problem(d.line, _what(d), reason))
        else:
            new[d.key] = d
    return list(new.values())
