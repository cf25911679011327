"""Import the sessions of a hand-written session manager's table into agent_session_store's tables.

The old table (``agent_sessions`` by default) has one row per session: ``id``, ``agent_type``,
``user_id``, ``state``, ``context`` (JSON), ``checkpoints`` (a JSON array of
``{name, data, timestamp}``), ``created_at``, ``updated_at``, ``last_heartbeat``. It is read in
keyset batches by ``id`` and never written.

Each row becomes one session with its checkpoints (``seq`` 1, 2, 3... in array order, the old
timestamps kept), validated with :meth:`AgentSession.from_dict` first. An old id that is a UUID
stays the session id; any other id becomes the session's ``key`` and the session id is derived
from it (``uuid5``), so that a second run finds what the first one wrote whatever the row's
state. ``metadata["legacy_id"]`` keeps the old id.

Why the import can simply be run again:

- every batch is one transaction: a batch is written whole or not at all;
- a row whose session id already holds the session imported from that same old id is counted
  as present and skipped; so an interrupted import, run again, writes only the rest.

A row that cannot be imported (not JSON, not an object, an unknown state, a taken key...) is
reported with its id and the reason and skipped; the other rows of its batch are written.

Example::

    report = await import_legacy(
        "postgresql+asyncpg://app@old-db/app", "postgresql+asyncpg://app@db/app"
    )
    print(report.imported, report.present, len(report.rejected))
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    RowMapping,
    and_,
    column,
    func,
    insert,
    inspect,
    select,
    table,
    tuple_,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from agent_session_store import migrations
from agent_session_store._errors import storage_errors
from agent_session_store._validation import DEFAULT_MAX_PAYLOAD_BYTES, check_payload_size
from agent_session_store.engine import create_engine
from agent_session_store.errors import SessionValidationError, StorageError
from agent_session_store.models import AgentSession, SessionState
from agent_session_store.tables import checkpoints_table, sessions_table

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "LEGACY_NAMESPACE",
    "ImportReport",
    "Rejected",
    "count_rows",
    "import_batches",
    "import_legacy",
    "session_id_for",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 10_000  # the ids of a batch are bound in one IN (...)
# The namespace of the session ids derived from old ids that are not UUIDs (uuid5).
LEGACY_NAMESPACE = uuid.UUID("6f1d3c1e-8a47-5e0b-9a55-3f2b9f0c7d21")
LEGACY_ID = "legacy_id"  # the metadata entry that keeps the old id

_REQUIRED = ("id", "agent_type")
_TIMES = ("created_at", "updated_at", "last_heartbeat")
_OPTIONAL = ("user_id", "state", "context", "checkpoints", *_TIMES)
_S = sessions_table.c
_STATES = frozenset(state.value for state in SessionState)
_S_METADATA = sessions_table.c["metadata"]


@dataclass(frozen=True)
class Rejected:
    """An old row that was not imported: its id (as text) and why."""

    old_id: str
    reason: str


@dataclass
class ImportReport:
    """What an import did (or, with ``dry_run``, would do); batches add up into one.

    ``defaulted`` maps an imported row's old id to the fields that were missing (``NULL``) and
    got a default, e.g. ``["user_id", "checkpoints[2].timestamp"]``.
    """

    read: int = 0
    imported: int = 0
    present: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    defaulted: dict[str, list[str]] = field(default_factory=dict)
    dry_run: bool = False

    def add(self, other: ImportReport) -> None:
        """Add ``other``'s counts and lists to this report."""
        self.read += other.read
        self.imported += other.imported
        self.present += other.present
        self.rejected.extend(other.rejected)
        self.defaulted.update(other.defaulted)


def session_id_for(old_id: str) -> tuple[uuid.UUID, str | None]:
    """The session id and key an old id becomes: a UUID stays the id; other text is the key."""
    try:
        return uuid.UUID(old_id), None
    except ValueError:
        return uuid.uuid5(LEGACY_NAMESPACE, old_id), old_id


async def import_legacy(
    source: str | AsyncEngine,
    target: str | AsyncEngine,
    *,
    table: str = "agent_sessions",
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
) -> ImportReport:
    """Import every row of the old ``table`` at ``source`` into the sessions at ``target``.

    Engines given are used and left open; URLs given get an engine that is disposed at the end.

    Args:
        source: the old manager's database (PostgreSQL or SQLite), read only.
        target: a database migrated to this release's schema.
        table: the old table's name.
        batch_size: rows read and written per transaction.
        dry_run: validate and count, write nothing.

    Returns:
        The counts: imported, skipped as present, rejected (with ids and reasons).

    Raises:
        SchemaOutOfDateError: ``target`` is not migrated (run ``agent-session-store db upgrade``).
        SessionValidationError: ``batch_size`` out of range, or no such table (or no ``id`` or
            ``agent_type`` column) at ``source``.
        StorageError: either database failed; the batches before committed, so run it again.
    """
    report = ImportReport(dry_run=dry_run)
    async for batch in import_batches(
        source, target, table=table, batch_size=batch_size, dry_run=dry_run
    ):
        report.add(batch)
    return report


async def import_batches(
    source: str | AsyncEngine,
    target: str | AsyncEngine,
    *,
    table: str = "agent_sessions",
    batch_size: int = DEFAULT_BATCH_SIZE,
    dry_run: bool = False,
) -> AsyncIterator[ImportReport]:
    """Like :func:`import_legacy`, yielding each batch's report once it is committed."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise SessionValidationError(
            f"batch_size must be from 1 to {MAX_BATCH_SIZE}, got {batch_size}"
        )
    # A plain engine for the source: the library's own would switch a SQLite file to WAL,
    # a change to a database this import promises only to read.
    source_engine = create_async_engine(source) if isinstance(source, str) else source
    target_engine = create_engine(target) if isinstance(target, str) else target
    try:
        with storage_errors("import-legacy: checking the target's schema"):
            async with target_engine.connect() as conn:
                await conn.run_sync(migrations.check_connection)
        reader = _Reader(source_engine, table, batch_size)
        await reader.describe()
        async for rows in reader.batches():
            yield await _import_batch(target_engine, rows, dry_run=dry_run)
    finally:
        if isinstance(source, str):
            await source_engine.dispose()
        if isinstance(target, str):
            await target_engine.dispose()


async def count_rows(source: AsyncEngine, table: str = "agent_sessions") -> int:
    """How many rows the old table has (for a progress bar)."""
    reader = _Reader(source, table, DEFAULT_BATCH_SIZE)
    await reader.describe()
    return await reader.count()


# -- reading ----------------------------------------------------------------------------------


class _Reader:
    """Keyset batches of the old table, by ``id``; a batch never splits rows with one id."""

    def __init__(self, engine: AsyncEngine, name: str, batch_size: int) -> None:
        self._engine = engine
        self._name = name
        self._batch_size = batch_size
        self._columns: list[str] = []
        self._json_as_text: list[str] = []

    def _operation(self, what: str) -> str:
        shown = self._engine.url.render_as_string(hide_password=True)
        return f"import-legacy: {what} the table {self._name!r} at {shown}"

    async def describe(self) -> None:
        """Learn which old columns the table has; refuse one without ``id`` or ``agent_type``."""

        def columns(conn: Connection) -> dict[str, Any] | None:
            inspector = inspect(conn)
            if not inspector.has_table(self._name):
                return None
            return {c["name"]: c["type"] for c in inspector.get_columns(self._name)}

        with storage_errors(self._operation("reading")):
            async with self._engine.connect() as conn:
                found = await conn.run_sync(columns)
        shown = self._engine.url.render_as_string(hide_password=True)
        if found is None:
            raise SessionValidationError(
                f"there is no table {self._name!r} in the source database {shown}: "
                "check --from-url and --table"
            )
        missing = [name for name in _REQUIRED if name not in found]
        if missing:
            raise SessionValidationError(
                f"the table {self._name!r} at {shown} has no {', '.join(missing)} column: "
                "it is not a session manager's table (check --table)"
            )
        self._columns = [name for name in (*_REQUIRED, *_OPTIONAL) if name in found]
        # asyncpg (through SQLAlchemy) decodes json/jsonb columns itself; anything else (text
        # columns, SQLite) hands JSON over as text, decoded per row by _convert.
        decoded = self._engine.dialect.name == "postgresql"
        self._json_as_text = [
            name
            for name in ("context", "checkpoints")
            if name in found and not (decoded and isinstance(found[name], JSON))
        ]

    @property
    def _table(self) -> Any:
        # Untyped columns: the values come back as the driver reads them (JSON as text on
        # both drivers), so that a malformed value is this module's to report, not a crash.
        return table(self._name, *(column(name) for name in self._columns))

    async def count(self) -> int:
        with storage_errors(self._operation("counting")):
            async with self._engine.connect() as conn:
                result = await conn.execute(select(func.count()).select_from(self._table))
                return int(result.scalar_one())

    def _rows(self, result: Sequence[RowMapping]) -> list[dict[str, Any]]:
        rows = [dict(row) for row in result]
        for row in rows:
            for name in self._json_as_text:
                if isinstance(row[name], str | bytes):
                    row[name] = _JsonText(_text(row[name]))
        return rows

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        old = self._table
        ids = old.c.id
        null_ids = select(*old.c).where(ids.is_(None))
        last: Any = None
        with storage_errors(self._operation("reading")):
            async with self._engine.connect() as conn:
                # Rows without an id cannot be keyed or imported: reported, once, first.
                nulls = self._rows((await conn.execute(null_ids)).mappings().all())
        if nulls:
            yield nulls
        while True:
            after = ids.is_not(None) if last is None else ids > last
            stmt = select(*old.c).where(after).order_by(ids).limit(self._batch_size)
            with storage_errors(self._operation("reading")):
                async with self._engine.connect() as conn:
                    rows = self._rows((await conn.execute(stmt)).mappings().all())
                    if len(rows) == self._batch_size:
                        # Without a unique id, rows equal to the last one could fall between
                        # this batch and the next (``id > last``): take them all now.
                        last_id = rows[-1]["id"]
                        same = await conn.execute(select(*old.c).where(ids == last_id))
                        rows = [r for r in rows if r["id"] != last_id]
                        rows.extend(self._rows(same.mappings().all()))
            if not rows:
                return
            last = rows[-1]["id"]
            yield rows


# -- converting -------------------------------------------------------------------------------


class _Reject(Exception):
    """This row cannot be imported: ``str(exc)`` says why."""


def _old_id(value: Any) -> str:
    return str(value)


class _JsonText(str):
    """JSON as the driver handed it over, not decoded yet (unlike a JSON string value)."""


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _json(value: Any, what: str) -> Any:
    """A JSON column's value, decoded if the driver handed it over as text."""
    if isinstance(value, _JsonText):
        try:
            return json.loads(value)
        except ValueError:
            raise _Reject(f"{what} is not valid JSON") from None
    return value


def _convert(row: dict[str, Any]) -> tuple[AgentSession, list[str]]:
    """The session an old row becomes, and the fields that got a default."""
    old_id = _old_id(row["id"])
    defaulted: list[str] = []
    sid, key = session_id_for(old_id)

    context = _json(row.get("context"), "context")
    if context is None:
        context = {}
        defaulted.append("context")
    if not isinstance(context, dict):
        raise _Reject(f"context is a JSON {_kind(context)}, not an object")
    checkpoints = _json(row.get("checkpoints"), "checkpoints")
    if checkpoints is None:
        checkpoints = []
        defaulted.append("checkpoints")
    if not isinstance(checkpoints, list):
        raise _Reject(f"checkpoints is a JSON {_kind(checkpoints)}, not an array")

    created, updated, heartbeat = (row.get(name) for name in _TIMES)
    # A missing time is taken from the nearest one the row has; the clock only as a last resort.
    known = [t for t in (created, updated, heartbeat) if t is not None]
    defaulted.extend(name for name in _TIMES if row.get(name) is None)
    created = created if created is not None else (known[0] if known else None)
    updated = updated if updated is not None else (known[-1] if known else None)
    heartbeat = heartbeat if heartbeat is not None else updated

    cps: list[dict[str, Any]] = []
    previous = created
    for i, cp in enumerate(checkpoints, start=1):
        if not isinstance(cp, dict):
            raise _Reject(f"checkpoints[{i}] is a JSON {_kind(cp)}, not an object")
        cp = dict(cp)
        if cp.get("data") is None:
            cp["data"] = {}
            defaulted.append(f"checkpoints[{i}].data")
        if cp.get("timestamp") is None:
            cp["timestamp"] = previous
            defaulted.append(f"checkpoints[{i}].timestamp")
        previous = cp["timestamp"]
        cps.append(cp)

    state = row.get("state")
    if state is None:
        state = SessionState.ACTIVE.value
        defaulted.append("state")
    elif isinstance(state, str) and state.lower() not in _STATES:
        raise _Reject(
            f"unknown state {state!r} (known: {', '.join(s.value for s in SessionState)})"
        )
    if row.get("user_id") is None:
        defaulted.append("user_id")

    data = {
        "session_id": str(sid),
        "agent_type": row["agent_type"],
        "user_id": row.get("user_id"),
        "state": state,
        "context": context,
        "metadata": {LEGACY_ID: old_id},
        "checkpoints": cps,
        "checkpoint_count": len(cps),
        "created_at": created,
        "updated_at": updated,
        "last_heartbeat": heartbeat,
        "key": key,
    }
    try:
        session = AgentSession.from_dict(data)
        check_payload_size(session.context, "context", DEFAULT_MAX_PAYLOAD_BYTES)
    except (SessionValidationError, ValueError) as exc:
        raise _Reject(str(exc)) from None
    for seq, cp in enumerate(session.checkpoints, start=1):
        cp.seq = seq
    return session, defaulted


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


# -- writing ----------------------------------------------------------------------------------


async def _import_batch(
    engine: AsyncEngine, rows: Sequence[dict[str, Any]], *, dry_run: bool
) -> ImportReport:
    shown = engine.url.render_as_string(hide_password=True)
    converted: dict[int, tuple[AgentSession, list[str]] | Rejected] = {}
    # Twice at most: a session written by someone else between the checks and the insert
    # makes the insert fail; the second pass sees it and skips or rejects its row.
    for attempt in (1, 2):
        try:
            with storage_errors(f"import-legacy: writing a batch to {shown}"):
                async with engine.begin() as conn:
                    report, todo = await _sort_out(conn, rows, converted)
                    if todo and not dry_run:
                        await _insert(conn, todo)
            break
        except StorageError as exc:
            if attempt == 2 or not isinstance(exc.__cause__, sa_exc.IntegrityError):
                raise
            logger.info("import-legacy: a batch met a concurrent write; checking it again")
    report.dry_run = dry_run
    logger.info(
        "import-legacy batch: %d read, %d imported, %d present, %d rejected%s",
        report.read, report.imported, report.present, len(report.rejected),
        " (dry run)" if dry_run else "",
    )  # fmt: skip
    return report


async def _sort_out(
    conn: AsyncConnection,
    rows: Sequence[dict[str, Any]],
    converted: dict[int, tuple[AgentSession, list[str]] | Rejected],
) -> tuple[ImportReport, list[AgentSession]]:
    """The batch's report and the sessions to write: rows imported before are skipped first
    (unconverted, so that a re-run is cheap); the others are converted once (``converted``,
    kept across attempts) and checked against the target's ids and live keys."""
    report = ImportReport(read=len(rows))
    ids = {
        i: session_id_for(_old_id(row["id"]))[0]
        for i, row in enumerate(rows)
        if row["id"] is not None
    }
    found = await conn.execute(select(_S.id, _S_METADATA).where(_S.id.in_(set(ids.values()))))
    imported_from = {sid: (meta or {}).get(LEGACY_ID) for sid, meta in found}
    candidates: dict[uuid.UUID, AgentSession] = {}
    seen: dict[uuid.UUID, str] = {}  # the old id that claimed each session id in this batch
    for i, row in enumerate(rows):
        if i not in ids:
            report.rejected.append(Rejected("NULL", "the id is NULL"))
            continue
        old_id, sid = _old_id(row["id"]), ids[i]
        first = seen.get(sid, imported_from.get(sid))
        if sid in seen or sid in imported_from:
            if first == old_id and sid not in seen:
                report.present += 1
            elif first == old_id:
                report.rejected.append(Rejected(old_id, "a duplicate: the id is on two rows"))
            elif isinstance(first, str):
                report.rejected.append(
                    Rejected(old_id, f"a duplicate: old id {first!r} has the same UUID")
                )
            else:
                report.rejected.append(
                    Rejected(old_id, f"the session id {sid} is taken by another session")
                )
            seen.setdefault(sid, old_id)
            continue
        seen[sid] = old_id
        if i not in converted:
            try:
                converted[i] = _convert(row)
            except _Reject as exc:
                converted[i] = Rejected(old_id, str(exc))
        outcome = converted[i]
        if isinstance(outcome, Rejected):
            report.rejected.append(outcome)
            continue
        candidates[sid] = outcome[0]
        if outcome[1]:
            report.defaulted[old_id] = outcome[1]
    report.rejected.extend(await _taken_keys(conn, candidates))
    report.imported = len(candidates)
    imported = {s.metadata[LEGACY_ID] for s in candidates.values()}
    report.defaulted = {k: v for k, v in report.defaulted.items() if k in imported}
    return report, list(candidates.values())


async def _taken_keys(
    conn: AsyncConnection, candidates: dict[uuid.UUID, AgentSession]
) -> list[Rejected]:
    """Reject (and drop from ``candidates``) the sessions whose key a live session holds."""
    keyed = {
        (s.agent_type, s.user_id, s.key): s
        for s in candidates.values()
        if s.key is not None and s.state is not SessionState.DELETED
    }
    if not keyed:
        return []
    live = await conn.execute(
        select(_S.id, _S.agent_type, _S.user_id, _S.key).where(
            and_(
                tuple_(_S.agent_type, _S.user_id, _S.key).in_(list(keyed)),
                _S.state != SessionState.DELETED.value,
            )
        )
    )
    taken = []
    for sid, agent_type, user_id, key in live:
        session = keyed[(agent_type, user_id, key)]
        del candidates[uuid.UUID(session.session_id)]
        taken.append(
            Rejected(
                key,
                f"the key {key!r} is taken by the live session {sid} "
                f"(agent_type {agent_type!r}, user_id {user_id!r})",
            )
        )
    return taken


async def _insert(conn: AsyncConnection, sessions: list[AgentSession]) -> None:
    """Core bulk inserts (executemany): two statements for the whole batch."""
    session_rows: list[dict[str, Any]] = []
    checkpoint_rows: list[dict[str, Any]] = []
    for s in sessions:
        sid = uuid.UUID(s.session_id)
        session_rows.append(
            {
                "id": sid,
                "agent_type": s.agent_type,
                "user_id": s.user_id,
                "state": s.state.value,
                "context": s.context,
                "metadata": s.metadata,
                "checkpoint_count": len(s.checkpoints),
                "version": 1,
                "created_at": s.created_at,
                "updated_at": s.updated_at,
                "last_heartbeat": s.last_heartbeat,
                "key": s.key,
            }
        )
        checkpoint_rows.extend(
            {
                "session_id": sid,
                "seq": cp.seq,
                "name": cp.name,
                "data": cp.data,
                "created_at": cp.timestamp,
            }
            for cp in s.checkpoints
        )
    await conn.execute(insert(sessions_table), session_rows)
    if checkpoint_rows:
        await conn.execute(insert(checkpoints_table), checkpoint_rows)
