"""Import the sessions of a hand-written session manager's table into agent_session_store's tables.

The old table (``agent_sessions`` by default) has one row per session: ``id``, ``agent_type``,
``user_id``, ``state``, ``context`` (JSON), ``metadata`` (JSON), ``checkpoints`` (a JSON array of
``{name, data, timestamp}``), ``created_at``, ``updated_at``, ``last_heartbeat``. Only ``id`` and
``agent_type`` must be there: a column the table lacks is read as ``NULL`` in every row. It is
read in keyset batches by ``id`` (a batch ends at an id, never between rows the source holds
equal, as a collation that folds case does) and never written.

Each row becomes one session with its checkpoints (``seq`` 1, 2, 3... in array order, the old
timestamps kept), validated with :meth:`AgentSession.from_dict` first. The old ``metadata``
object is the session's metadata, plus ``metadata["legacy_id"]``, the old id (a ``NULL`` or
missing one is an empty object, not listed as defaulted). The import owns ``legacy_id``: a row
whose metadata holds another value under that name is rejected rather than have it overwritten
(rename the entry in the source and run again).

Ids: an old id is first read as a key is everywhere (:func:`check_key`: surrounding whitespace
is not part of it). If it is then a UUID, in any spelling :class:`uuid.UUID` reads (any case,
braces, ``urn:uuid:``, without hyphens), that UUID is the session id; any other id is the
session's ``key`` and the session id is derived from it (``uuid5``), so that a second run finds
what the first one wrote whatever the row's state. An id that is neither (empty, only
whitespace, over 128 characters, not printable) is a rejected row.

Spellings: distinct old ids that become one session id (``"ABC..."`` and ``"abc..."``,
``" chat-42 "`` and ``"chat-42"``, a key and the UUID derived from it) are ambiguous: every one
of them is rejected, naming them all, and none is imported, whichever batch each falls in; once
the source holds only one, the next run imports it. Picking one (the first read) would import
whichever sorts first, an empty row as readily as the one holding the data. They are found
before anything is written, by a pass over the ids alone, run again by every run (so a resumed
run sees the source as it is then). That pass keeps in memory only the ids that are not in their
plain spelling (``str(uuid)``, or the key as :func:`check_key` returns it), a few hundred bytes
each, none for ids minted with ``str(uuid4())``. A group of spellings has at most one plain
member of each kind, so the plain spelling of each id that is not plain is looked up by equality
in the source (an index lookup on a primary key), and so is, for each key, the text of the UUID
derived from it; a non-plain spelling of such a UUID (rarer still) costs a second pass over the
ids.

Why the import can simply be run again:

- every batch is one transaction: a batch is written whole or not at all;
- a row whose session id already holds the session imported from that same old id is counted
  as present and skipped; so an interrupted import, run again, writes only the rest.
- a session in the target is never replaced: one imported from a spelling of an id that has a
  second spelling in the source since is left as it is, and the rows are reported.

A row that cannot be imported (not JSON, not an object, an unknown state, an ambiguous id, a
taken key...) is reported with its id and the reason and skipped; the other rows of its batch
are written. Reasons name ids, keys and fields, never the values of context, metadata or
checkpoints.

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
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    RowMapping,
    String,
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
from agent_session_store._arguments import check_key
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
_JSON = ("context", "metadata", "checkpoints")
_OPTIONAL = ("user_id", "state", *_JSON, *_TIMES)
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
    """The session id and key an old id becomes: a UUID stays the id; other text is the key.

    The old id is read as every key is (:func:`check_key`: surrounding whitespace is not part of
    it); a UUID in any spelling :class:`uuid.UUID` reads is the session id, with no key; other
    text is the key, and the session id is ``uuid5(LEGACY_NAMESPACE, key)``.

    Raises:
        SessionValidationError: the old id is neither a UUID nor a valid key (empty, only
            whitespace, over 128 characters, not printable).
    """
    text = check_key(old_id)
    try:
        return uuid.UUID(text), None
    except ValueError:
        return uuid.uuid5(LEGACY_NAMESPACE, text), text


def _plain(session_id: uuid.UUID, key: str | None) -> str:
    """The one spelling of an old id that is exactly what the import makes of it."""
    return str(session_id) if key is None else key


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
        ambiguous = await reader.ambiguous()
        async for rows in reader.batches():
            yield await _import_batch(target_engine, rows, ambiguous, dry_run=dry_run)
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
        self._spellings = True  # whether the id column can hold two spellings of one id

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
            for name in _JSON
            if name in found and not (decoded and isinstance(found[name], JSON))
        ]
        # A PostgreSQL uuid or integer id has one spelling per value (and comparing it with
        # text would fail); SQLite compares whatever its columns hold.
        self._spellings = not decoded or isinstance(found["id"], String)

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

    async def _ids(self) -> AsyncIterator[list[str]]:
        """The old ids as text, in keyset batches (each distinct id at least once; no NULL)."""
        ids = self._table.c.id
        last: Any = None
        while True:
            after = ids.is_not(None) if last is None else ids > last
            with storage_errors(self._operation("reading the ids of")):
                async with self._engine.connect() as conn:
                    batch = select(ids).where(await self._through_edge(conn, ids, after))
                    values = (await conn.execute(batch.order_by(ids))).scalars().all()
            if not values:
                return
            last = values[-1]
            yield [_old_id(value) for value in values]

    async def _existing(self, spellings: Collection[str]) -> list[str]:
        """Which of ``spellings`` are ids of the table (as the table spells them)."""
        ids, wanted, found = self._table.c.id, sorted(spellings), list[str]()
        if not wanted:
            return found
        with storage_errors(self._operation("reading the ids of")):
            async with self._engine.connect() as conn:
                for start in range(0, len(wanted), self._batch_size):
                    chunk = wanted[start : start + self._batch_size]
                    # Not DISTINCT: under a collation that folds case it keeps one spelling.
                    result = await conn.execute(select(ids).where(ids.in_(chunk)))
                    found.extend(_old_id(value) for value in result.scalars())
        return found

    async def ambiguous(self) -> dict[uuid.UUID, list[str]]:
        """Each session id that two or more distinct old ids become, with those ids, sorted.

        Memory holds the ids not in their plain spelling (:func:`_plain`) only. A group of ids
        that become one session has at most one plain member per kind (a UUID's ``str()``, a
        key), so every group has an id not in its plain spelling, whose plain spelling is looked
        up in the table, or is a plain key and the plain text of the UUID derived from it, looked
        up the same way. What lookups cannot find, a key and a non-plain spelling of the UUID
        derived from it (both version 5), takes a second pass over the ids, only when the first
        found such a spelling.
        """
        if not self._spellings:
            return {}
        groups: dict[uuid.UUID, set[str]] = {}  # only ids not in their plain spelling, and kin
        derived: set[uuid.UUID] = set()  # session ids spelled as UUIDs that a key could become
        async for old_ids in self._ids():
            asking: dict[uuid.UUID, set[str]] = {}  # this batch's ids that look another up
            spellings: set[str] = set()  # what they look up
            for old_id in old_ids:
                try:
                    sid, key = session_id_for(old_id)
                except SessionValidationError:
                    continue  # rejected when its row is read
                plain = _plain(sid, key)
                if old_id != plain:
                    groups.setdefault(sid, set()).add(old_id)
                    asking.setdefault(sid, set()).add(old_id)
                    spellings.add(plain)
                    if key is None and sid.version == 5:
                        derived.add(sid)
                if key is not None:
                    asking.setdefault(sid, set()).add(old_id)
                    spellings.add(str(sid))
            for found in await self._existing(spellings):
                try:
                    sid = session_id_for(found)[0]
                except SessionValidationError:
                    continue
                if sid in asking:
                    groups.setdefault(sid, set()).update(asking[sid], (found,))
        if derived:
            async for old_ids in self._ids():
                for old_id in old_ids:
                    try:
                        sid, key = session_id_for(old_id)
                    except SessionValidationError:
                        continue
                    if key is not None and sid in derived:
                        groups[sid].add(old_id)
        ambiguous = {sid: sorted(ids) for sid, ids in groups.items() if len(ids) > 1}
        if ambiguous:
            logger.info(
                "import-legacy: %d session ids are each spelled more than one way in %r",
                len(ambiguous), self._name,
            )  # fmt: skip
        return ambiguous

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
            with storage_errors(self._operation("reading")):
                async with self._engine.connect() as conn:
                    batch = select(*old.c).where(await self._through_edge(conn, ids, after))
                    result = await conn.execute(batch.order_by(ids))
                    rows = self._rows(result.mappings().all())
            if not rows:
                return
            last = rows[-1]["id"]
            yield rows

    async def _through_edge(self, conn: AsyncConnection, ids: Any, after: Any) -> Any:
        """``after``, up to the batch's last id and every id the source holds equal to it.

        Without a unique id, or under a collation that folds case (SQLite ``NOCASE``,
        ``citext``), rows the source holds equal to a batch's last id could fall between this
        batch and the next (``id > last``); so the batch ends at an id, not at a row count,
        and may hold a few more rows than ``batch_size``.
        """
        nth = select(ids).where(after).order_by(ids).offset(self._batch_size - 1).limit(1)
        edge = (await conn.execute(nth)).scalar()
        return after if edge is None else and_(after, ids <= edge)


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
    # NULL (or no such column) is no metadata: not listed as defaulted, so that a table without
    # the column does not list every row.
    metadata = _json(row.get("metadata"), "metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _Reject(f"metadata is a JSON {_kind(metadata)}, not an object")
    if metadata.get(LEGACY_ID, old_id) != old_id:
        # The import's record of the old id, which a re-run relies on, wins; dropping the row's
        # value silently would lose it, so the row waits until the source renames it.
        raise _Reject(
            f"metadata has a {LEGACY_ID!r} entry of its own, where the import keeps the old id: "
            "rename that entry in the source and run again"
        )

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
        "metadata": {**metadata, LEGACY_ID: old_id},
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
        check_payload_size(session.metadata, "metadata", DEFAULT_MAX_PAYLOAD_BYTES)
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
    engine: AsyncEngine,
    rows: Sequence[dict[str, Any]],
    ambiguous: Mapping[uuid.UUID, Sequence[str]],
    *,
    dry_run: bool,
) -> ImportReport:
    shown = engine.url.render_as_string(hide_password=True)
    converted: dict[int, tuple[AgentSession, list[str]] | Rejected] = {}
    # Twice at most: a session written by someone else between the checks and the insert
    # makes the insert fail; the second pass sees it and skips or rejects its row.
    for attempt in (1, 2):
        try:
            with storage_errors(f"import-legacy: writing a batch to {shown}"):
                async with engine.begin() as conn:
                    report, todo = await _sort_out(conn, rows, ambiguous, converted)
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


def _session_ids(rows: Sequence[dict[str, Any]]) -> dict[int, uuid.UUID | Rejected]:
    """Each row's session id (by its index in ``rows``), or why its id cannot be one."""
    ids: dict[int, uuid.UUID | Rejected] = {}
    for i, row in enumerate(rows):
        if row["id"] is None:
            ids[i] = Rejected("NULL", "the id is NULL")
            continue
        old_id = _old_id(row["id"])
        try:
            ids[i] = session_id_for(old_id)[0]
        except SessionValidationError as exc:
            ids[i] = Rejected(old_id, f"the id is not a UUID and cannot be a key: {exc}")
    return ids


def _spells(old_id: object, sid: uuid.UUID) -> bool:
    """Whether ``old_id`` is an old id (text) that becomes the session id ``sid``."""
    try:
        return isinstance(old_id, str) and session_id_for(old_id)[0] == sid
    except SessionValidationError:
        return False


def _ambiguous_reason(sid: uuid.UUID, group: Sequence[str], holder: object) -> str:
    """Why a row whose id is spelled more than one way in the source is not imported."""
    key = next((k for k in (session_id_for(i)[1] for i in group) if k is not None), None)
    reason = (
        f"ambiguous: the old ids {', '.join(map(repr, group))} all become the session {sid}"
        + (f" (key {key!r})" if key is not None else "")
        + "; none of them is imported: keep one in the source (delete or rename the others) "
        "and run again"
    )
    if _spells(holder, sid):
        reason += f"; the session {sid} imported from {holder!r} before is left as it is"
    return reason


async def _sort_out(
    conn: AsyncConnection,
    rows: Sequence[dict[str, Any]],
    ambiguous: Mapping[uuid.UUID, Sequence[str]],
    converted: dict[int, tuple[AgentSession, list[str]] | Rejected],
) -> tuple[ImportReport, list[AgentSession]]:
    """The batch's report and the sessions to write: ids spelled more than one way in the
    source are rejected, rows imported before are skipped (unconverted, so that a re-run is
    cheap); the others are converted once (``converted``, kept across attempts) and checked
    against the target's ids and live keys."""
    report = ImportReport(read=len(rows))
    ids = _session_ids(rows)
    wanted = {sid for sid in ids.values() if isinstance(sid, uuid.UUID)}
    found = await conn.execute(select(_S.id, _S_METADATA).where(_S.id.in_(wanted)))
    imported_from = {sid: (meta or {}).get(LEGACY_ID) for sid, meta in found}
    candidates: dict[uuid.UUID, AgentSession] = {}
    seen: dict[uuid.UUID, str] = {}  # the old id that claimed each session id in this batch
    for i, row in enumerate(rows):
        sid = ids[i]
        if isinstance(sid, Rejected):
            report.rejected.append(sid)
            continue
        old_id = _old_id(row["id"])
        if sid in ambiguous:
            reason = _ambiguous_reason(sid, ambiguous[sid], imported_from.get(sid))
            report.rejected.append(Rejected(old_id, reason))
            continue
        first = seen.get(sid, imported_from.get(sid))
        if sid in seen or sid in imported_from:
            if first == old_id and sid not in seen:
                report.present += 1
            elif first == old_id:
                report.rejected.append(Rejected(old_id, "a duplicate: the id is on two rows"))
            elif sid in seen:  # a spelling that reached the source after its ids were read
                report.rejected.append(
                    Rejected(
                        old_id,
                        f"a duplicate: old id {first!r} becomes the same session {sid}; run "
                        "again to have every spelling reported",
                    )
                )
            elif _spells(first, sid):
                # Imported by an earlier run (or earlier in this one) from a spelling that has
                # left the source since, or that reached it after its ids were read.
                report.rejected.append(
                    Rejected(
                        old_id,
                        f"the session {sid} was imported from old id {first!r}, another "
                        "spelling of this id, and is left as it is: remove it from the target "
                        "to import this row instead",
                    )
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
                session.metadata[LEGACY_ID],  # the old id, which may spell the key otherwise
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
