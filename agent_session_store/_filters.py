"""The filters of ``list_sessions`` and ``count_sessions``: checked once, then SQL per dialect.

Each filter is one condition an index serves on PostgreSQL (docs/operations.md shows the
plans); SQLite scans for the ones it has no index for (``key_prefix`` aside, with an agent type
and user: the key's unique index):

==============  ==================================================  =========================
filter          PostgreSQL                                          SQLite
==============  ==================================================  =========================
agent_type,     the (agent_type | user_id, created_at, id) indexes  the same indexes
user_id
key_prefix      ``key ~>=~ p AND key ~<~ p || U+10FFFF``: a range   ``key >= p AND key <
                of the ``varchar_pattern_ops`` index (byte order,   p || U+10FFFF`` (binary
                whatever the collation; no LIKE, so ``%`` and       order)
                ``_`` are plain characters)
updated_*       the ``updated_at`` index                            a scan
metadata        ``metadata @> {...}``: the GIN ``jsonb_path_ops``   ``json_each`` per key
                index                                               (a scan)
==============  ==================================================  =========================

``metadata`` maps top-level keys to JSON scalars that must all match: a string, a number (``1``
and ``1.0`` are one number, as in JSON), ``true``/``false`` (never equal to a number) or
``null`` (a key holding null, not a missing key). Nested objects and arrays are refused: their
containment (``@>``) has no equivalent on SQLite that would give the same answers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, exists, func, literal, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement

from agent_session_store._arguments import check_aware, check_filter
from agent_session_store._rows import S
from agent_session_store._validation import check_text
from agent_session_store.errors import SessionValidationError
from agent_session_store.models import SessionState

MAX_METADATA_KEYS = 16
# Above every character a key may hold (keys are printable; U+10FFFF is not): the end of the
# range of keys that start with a prefix.
_AFTER_EVERY_KEY = "\U0010ffff"
_INT64 = 2**63


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions a list or count is about; built by :func:`session_filter` (checked)."""

    agent_type: str | None = None
    user_id: str | None = None
    state: str | None = None
    key_prefix: str | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    metadata: dict[str, Any] | None = None

    def fingerprint(self) -> tuple[str | None, ...]:
        """What a cursor is bound to: these filters, as text.

        The first three alone when no other filter is set, as cursors of earlier releases were.
        """
        basic = (self.agent_type, self.user_id, self.state)
        extra = (
            self.key_prefix,
            None if self.updated_after is None else self.updated_after.isoformat(),
            None if self.updated_before is None else self.updated_before.isoformat(),
            None if self.metadata is None else json.dumps(self.metadata, sort_keys=True),
        )
        return basic if extra == (None, None, None, None) else (*basic, *extra)

    def where(self, dialect: str, now: datetime) -> list[ColumnElement[bool]]:
        """The conditions, for ``dialect`` (``postgresql`` or ``sqlite``), at ``now``."""
        out: list[ColumnElement[bool]] = [
            S.state != SessionState.DELETED.value if self.state is None else S.state == self.state,
            or_(S.expires_at.is_(None), S.expires_at > now),  # see _statements._present
        ]
        if self.agent_type is not None:
            out.append(S.agent_type == self.agent_type)
        if self.user_id is not None:
            out.append(S.user_id == self.user_id)
        if self.key_prefix is not None:
            low = literal(self.key_prefix, String())
            high = literal(self.key_prefix + _AFTER_EVERY_KEY, String())
            if dialect == "postgresql":
                out.append(S.key.op("~>=~", is_comparison=True)(low))
                out.append(S.key.op("~<~", is_comparison=True)(high))
            else:
                out.extend((S.key >= low, S.key < high))
        if self.updated_after is not None:
            out.append(S.updated_at > self.updated_after)
        if self.updated_before is not None:
            out.append(S.updated_at < self.updated_before)
        if self.metadata is not None:
            if dialect == "postgresql":
                document = literal(self.metadata, postgresql.JSONB())
                out.append(S.metadata.op("@>", is_comparison=True)(document))
            else:
                out.extend(_sqlite_has(name, value) for name, value in self.metadata.items())
        return out


def _sqlite_has(name: str, value: object) -> ColumnElement[bool]:
    """SQLite: the session's metadata holds ``name`` with the JSON scalar ``value``."""
    item = func.json_each(S.metadata).table_valued("key", "type", "atom").alias("item")
    match: ColumnElement[bool]
    if value is None:
        match = item.c.type == "null"
    elif isinstance(value, bool):  # before int: True is an int to Python, never to JSON
        match = item.c.type == ("true" if value else "false")
    elif isinstance(value, int | float):
        match = and_(item.c.type.in_(("integer", "real")), item.c.atom == value)
    else:
        match = and_(item.c.type == "text", item.c.atom == value)
    return exists(select(1).select_from(item).where(item.c.key == name, match))


def session_filter(
    *,
    agent_type: object = None,
    user_id: object = None,
    state: object = None,
    key_prefix: object = None,
    updated_after: object = None,
    updated_before: object = None,
    metadata: object = None,
) -> SessionFilter:
    """The filters, checked; :class:`SessionValidationError` says what is wrong with one."""
    check_filter(agent_type, "agent_type")
    check_filter(user_id, "user_id")
    try:
        wanted = None if state is None else SessionState(state).value  # type: ignore[arg-type]
    except ValueError:
        raise SessionValidationError(
            f"state must be one of {[s.value for s in SessionState]}, got {state!r}"
        ) from None
    if key_prefix is not None:
        check_filter(key_prefix, "key_prefix")
        assert isinstance(key_prefix, str)
        if not 1 <= len(key_prefix) <= 128:
            raise SessionValidationError(
                f"key_prefix must be 1 to 128 characters long (a key's length), got "
                f"{len(key_prefix)}"
            )
    after = None if updated_after is None else check_aware(updated_after, "updated_after")
    before = None if updated_before is None else check_aware(updated_before, "updated_before")
    return SessionFilter(
        agent_type=agent_type,  # type: ignore[arg-type]
        user_id=user_id,  # type: ignore[arg-type]
        state=wanted,
        key_prefix=key_prefix,
        updated_after=after,
        updated_before=before,
        metadata=_metadata_filter(metadata),
    )


def _metadata_filter(metadata: object) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise SessionValidationError(
            "metadata must be a dict of top-level key -> JSON scalar, got "
            f"{type(metadata).__name__}"
        )
    if len(metadata) > MAX_METADATA_KEYS:
        raise SessionValidationError(
            f"metadata filters on at most {MAX_METADATA_KEYS} keys, got {len(metadata)}"
        )
    for name, value in metadata.items():
        if not isinstance(name, str):
            raise SessionValidationError(
                f"metadata filter keys are JSON object keys (strings), got {type(name).__name__}"
            )
        try:
            check_text(name, "a metadata filter key")
            if isinstance(value, str):
                check_text(value, f"metadata[{name!r}]")
        except ValueError as exc:
            raise SessionValidationError(str(exc)) from None
        _check_scalar(name, value)
    return dict(metadata) or None  # {} matches every session: no filter


def _check_scalar(name: str, value: object) -> None:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if -_INT64 <= value < _INT64:
            return
        problem = "an integer beyond 64 bits (SQLite's JSON cannot hold it)"
    elif isinstance(value, float):
        if math.isfinite(value):
            return
        problem = "NaN or an infinity, which JSON has not"
    elif isinstance(value, dict | list | tuple):
        problem = (
            f"a {type(value).__name__}: only top-level keys with JSON scalars (string, number, "
            "true/false, null) can be matched, the same way on PostgreSQL's index and on SQLite"
        )
    else:
        problem = f"a {type(value).__name__}, not a JSON value"
    raise SessionValidationError(f"metadata filter {name!r} holds {problem}")
