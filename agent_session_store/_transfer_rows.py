"""How ``transfer`` reads and writes rows: each column as stored, and a line into rows.

Values move as the database holds them: a column's type is unwrapped down to the type it is
stored as (a ``TypeDecorator``'s ``impl``), so a type that transforms values (an encrypting
one) is not applied on the way out nor again on the way in. Ids are text, times ISO 8601 in UTC
with microseconds, bytes base64, JSON as JSON. Every check names a column, never a value.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Table,
    TableClause,
    TypeDecorator,
    Uuid,
    column,
    table,
)
from sqlalchemy.types import TypeEngine

from agent_session_store import _statements as sql
from agent_session_store._validation import check_text
from agent_session_store.tables import SCOPES, STATES, sessions_table, shared_state_table

CHECKPOINTS = sql.SESSION_ROWS[0]
OTHER_ROWS = sql.SESSION_ROWS[1:]  # the LangGraph checkpointer's tables, children first
assert CHECKPOINTS.name == "agent_sessions_checkpoints"


# -- the tables as stored ---------------------------------------------------------------------


def _stored_type(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    """The type a column's values are stored as: a ``TypeDecorator``'s own ``impl``, unwrapped,
    so that values move as the database holds them (an encrypting type is not applied)."""
    while isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    return type_


def _as_stored(source: Table) -> TableClause:
    return table(source.name, *(column(c.name, _stored_type(c.type)) for c in source.columns))


STORED: dict[str, TableClause] = {
    t.name: _as_stored(t) for t in (sessions_table, shared_state_table, *sql.SESSION_ROWS)
}
TABLES: dict[str, Table] = {
    t.name: t for t in (sessions_table, shared_state_table, *sql.SESSION_ROWS)
}


def encode(value: Any, type_: TypeEngine[Any]) -> Any:
    """A stored value as JSON."""
    if value is None:
        return None
    if isinstance(type_, LargeBinary):
        return base64.b64encode(value).decode("ascii")
    if isinstance(type_, Uuid):
        return str(value)
    if isinstance(type_, DateTime):
        when = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return when.isoformat(timespec="microseconds")
    return value


class Reject(Exception):
    """This line cannot be imported: ``str(exc)`` says why (never with a value in it)."""


def _decode(value: Any, col: Column[Any], where: str) -> Any:
    """A value of the line as the column stores it; ``Reject`` when it cannot be one."""
    type_ = _stored_type(col.type)
    what = f"{where}.{col.name}"
    if value is None:
        if not col.nullable:
            raise Reject(f"{what} is null, and the column takes no null")
        return None
    if isinstance(type_, LargeBinary):
        if not isinstance(value, str):
            raise Reject(f"{what} must be base64 text")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise Reject(f"{what} is not valid base64") from None
    if isinstance(type_, Uuid):
        try:
            return uuid.UUID(value)
        except (TypeError, ValueError, AttributeError):
            raise Reject(f"{what} is not a UUID") from None
    if isinstance(type_, DateTime):
        try:
            when = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise Reject(f"{what} is not an ISO 8601 time") from None
        if when.tzinfo is None:
            raise Reject(f"{what} has no time zone")
        try:
            return when.astimezone(UTC)
        except OverflowError:
            raise Reject(f"{what} is out of range") from None
    if isinstance(type_, Integer):
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**31:
            raise Reject(f"{what} must be a 32-bit integer")
        return value
    if isinstance(type_, String):  # Text included
        if not isinstance(value, str):
            raise Reject(f"{what} must be text")
        if type_.length is not None and len(value) > type_.length:
            raise Reject(f"{what} is longer than {type_.length} characters")
        try:
            check_text(value, what)
        except ValueError as exc:
            raise Reject(str(exc)) from None
        return value
    if isinstance(type_, JSON):
        return value
    raise AssertionError(f"no transfer rule for the type of {what}")  # pragma: no cover


def row_values(data: object, name: str, where: str, *, owner: bool = True) -> dict[str, Any]:
    """The values of a line's row for table ``name``; ``owner=False``: without session_id."""
    if not isinstance(data, dict):
        raise Reject(f"{where} must be a JSON object")
    source = TABLES[name]
    columns = {c.name: c for c in source.columns if owner or c.name != "session_id"}
    unknown = sorted(set(data) - set(columns))
    if unknown:
        raise Reject(
            f"{where} has columns this database's {name} does not ({', '.join(unknown)}): "
            "upgrade the target's schema (agent-session-store db upgrade) or this package"
        )
    values = {}
    for col_name, col in columns.items():
        if col_name not in data:
            if col.nullable or col.server_default is not None:
                continue  # the database's own default
            raise Reject(f"{where} has no {col_name}")
        values[col_name] = _decode(data[col_name], col, where)
    return values


def encoded_row(row: Mapping[Any, Any], name: str, *, owner: bool = True) -> dict[str, Any]:
    return {
        c.name: encode(row[c.name], c.type)
        for c in STORED[name].columns
        if owner or c.name != "session_id"
    }


# -- a line of the file --------------------------------------------------------------------------


@dataclass
class SessionLine:
    """A session's line, checked: its row, its checkpoints and its other rows, by table."""

    line: int
    row: dict[str, Any]
    checkpoints: list[dict[str, Any]]
    rows: dict[str, list[dict[str, Any]]]

    @property
    def id(self) -> uuid.UUID:
        sid: uuid.UUID = self.row["id"]
        return sid


@dataclass
class DocumentLine:
    """A shared-state document's line, checked."""

    line: int
    row: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.row["agent_type"], self.row["scope"], self.row["user_id"])


Line = SessionLine | DocumentLine


def text_of(line: str | bytes) -> str:
    """A line read as text (bytes as UTF-8)."""
    if isinstance(line, str):
        return line
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject("not UTF-8 text") from None


def parse(number: int, text: str) -> Line | None:
    """Line ``number`` of an export, checked column by column; ``Reject`` says what is wrong.

    ``None`` for the export's end line.
    """
    try:
        data = json.loads(text)
    except ValueError:
        raise Reject("not valid JSON") from None
    if not isinstance(data, dict):
        raise Reject("not a JSON object")
    kind = data.get("kind")
    if kind == "end":
        return None
    if kind == "shared_state":
        document = row_values(data.get("row"), shared_state_table.name, "row")
        scope = document.get("scope")
        if scope not in SCOPES or (scope == "app" and document.get("user_id", "") != ""):
            raise Reject("row.scope must be app (with an empty user_id) or user")
        return DocumentLine(number, document)
    if kind != "session":
        raise Reject(f"unknown kind {str(kind)[:40]!r} (expected session, shared_state or end)")
    session = row_values(data.get("session"), sessions_table.name, "session")
    if session.get("state") not in STATES:
        raise Reject(f"session.state must be one of {', '.join(STATES)}")
    checkpoints = data.get("checkpoints", [])
    if not isinstance(checkpoints, list):
        raise Reject("checkpoints must be a JSON array")
    cps = [
        row_values(cp, CHECKPOINTS.name, f"checkpoints[{i}]", owner=False)
        for i, cp in enumerate(checkpoints)
    ]
    seqs = [cp["seq"] for cp in cps]
    count = session.get("checkpoint_count", len(cps))
    if len(set(seqs)) != len(seqs) or any(not 1 <= seq <= count for seq in seqs):
        raise Reject(f"checkpoint seqs must be distinct and from 1 to checkpoint_count ({count})")
    given = data.get("rows", {})
    if not isinstance(given, dict):
        raise Reject("rows must be a JSON object of table names")
    unknown = sorted(set(given) - {t.name for t in OTHER_ROWS})
    if unknown:
        raise Reject(f"rows names tables this database does not have ({', '.join(unknown)})")
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, items in given.items():
        if not isinstance(items, list):
            raise Reject(f"rows.{name} must be a JSON array")
        rows[name] = [
            row_values(item, name, f"rows.{name}[{i}]", owner=False) for i, item in enumerate(items)
        ]
    return SessionLine(number, session, cps, rows)
