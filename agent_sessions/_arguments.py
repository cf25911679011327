"""Checks of the repository's scalar arguments: ids, limits, filters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from agent_sessions._validation import check_text
from agent_sessions.errors import SessionValidationError

MAX_PAGE_SIZE = 1000
MAX_BATCH_SIZE = 50_000
MAX_INT = 2**31 - 1  # version and seq are INTEGER columns: 32 bits on PostgreSQL


def parse_id(session_id: object) -> uuid.UUID | None:
    """The UUID in ``session_id``, or ``None`` when it is not one (an unknown session)."""
    if isinstance(session_id, uuid.UUID):
        return session_id
    if not isinstance(session_id, str):
        return None
    try:
        return uuid.UUID(session_id)
    except ValueError:
        return None


def check_int(value: object, what: str, minimum: int, maximum: int) -> int:
    """``value`` if it is an int (not a bool) from ``minimum`` to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise SessionValidationError(
            f"{what} must be an integer from {minimum} to {maximum}, got {value!r}"
        )
    return value


def check_limit(limit: object, what: str = "limit", maximum: int = MAX_PAGE_SIZE) -> int:
    """A page or batch size from 1 to ``maximum``."""
    return check_int(limit, what, 1, maximum)


def check_filter(value: object, what: str) -> None:
    """Refuse a text filter no stored value can equal (not a string, NUL, lone surrogate).

    Such a value would reach PostgreSQL as a driver error and SQLite as a raw exception or an
    empty answer: refuse it the same way on both, before the database is asked.
    """
    if value is None:
        return
    if not isinstance(value, str):
        raise SessionValidationError(f"{what} must be a string, got {type(value).__name__}")
    try:
        check_text(value, what)
    except ValueError as exc:
        raise SessionValidationError(str(exc)) from None


def check_aware(value: object, what: str) -> datetime:
    """``value`` in UTC, if it is a timezone-aware datetime."""
    if not isinstance(value, datetime):
        raise SessionValidationError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise SessionValidationError(
            f"{what} {value.isoformat()} has no time zone; pass a UTC-aware datetime "
            "(e.g. datetime.now(UTC))"
        )
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise SessionValidationError(f"{what} {value.isoformat()} is out of range") from None


def check_key(key: object) -> str:
    """A session key: printable text of 1 to 128 characters."""
    if not isinstance(key, str):
        raise SessionValidationError(f"key must be a string, got {type(key).__name__}")
    try:
        check_text(key, "key")
    except ValueError as exc:
        raise SessionValidationError(str(exc)) from None
    if not 1 <= len(key) <= 128 or not key.isprintable():
        raise SessionValidationError(
            f"key must be printable text of 1 to 128 characters, got {key[:140]!r}"
        )
    return key
