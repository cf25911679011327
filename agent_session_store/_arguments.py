"""Checks of the repository's scalar arguments: ids, limits, filters."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from agent_session_store._validation import check_text
from agent_session_store.errors import SessionValidationError

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


def check_expiry(expires_at: object, now: datetime) -> datetime | None:
    """A new session's ``expires_at``: ``None``, or a UTC-aware time after ``now``."""
    if expires_at is None:
        return None
    when = check_aware(expires_at, "expires_at")
    if when <= now:
        raise SessionValidationError(
            f"expires_at {when.isoformat()} is not after now ({now.isoformat()}): a session "
            "must be created to exist for a while; pass a time in the future, or None for never"
        )
    return when


def check_idempotency_key(key: object, what: str) -> str | None:
    """An append's idempotency key: ``None``, or text of 1 to 256 characters (kept as given)."""
    if key is None:
        return None
    check_filter(key, what)
    assert isinstance(key, str)  # check_filter refused anything else
    if not 1 <= len(key) <= 256:
        raise SessionValidationError(
            f"{what} (an idempotency key) must be 1 to 256 characters long, got {len(key)}"
        )
    return key


def check_key(key: object) -> str:
    """A session key as stored: printable text of 1 to 128 characters, without surrounding spaces.

    The one rule for every entry point that takes a key (``create_session``,
    ``get_session_by_key``, ``import-legacy``, the CLI, the framework backends): whitespace
    around a key is not part of it, so ``" chat-42 "`` and ``"chat-42"`` name one session. Google
    ADK strips its session ids the same way.
    """
    if key is None:
        raise SessionValidationError("key must be a string, got NoneType")
    check_filter(key, "key")
    assert isinstance(key, str)  # check_filter refused anything else
    stripped = key.strip()
    if not 1 <= len(stripped) <= 128 or not stripped.isprintable():
        raise SessionValidationError(
            "key must be printable text of 1 to 128 characters (surrounding whitespace is not "
            f"part of a key), got {key[:140]!r}"
        )
    return stripped


def checked_now(clock: Callable[[], object]) -> datetime:
    """The repository clock's time, in UTC; a clock that is not a UTC-aware clock is refused.

    The clock is the host's code, but its value is written into rows: a naive or out-of-range
    datetime must stop the call here, the same way in every method, not reach the driver.
    """
    value = clock()
    try:
        if isinstance(value, datetime) and value.utcoffset() is not None:
            return value.astimezone(UTC)
    except (ValueError, OverflowError):
        pass  # an offset that moves the time out of datetime's range (year 1 to 9999)
    raise SessionValidationError(
        f"the repository's clock returned {value!r}, not a timezone-aware datetime from year 1 "
        "to 9999; give SessionRepository a clock that returns one, e.g. "
        "clock=lambda: datetime.now(UTC)"
    )


def check_cutoff(age: object, what: str, now: datetime) -> datetime:
    """``now - age`` for a duration argument: a ``timedelta``, not negative, within range."""
    if not isinstance(age, timedelta):
        raise SessionValidationError(
            f"{what} must be a datetime.timedelta, got {type(age).__name__} ({age!r:.80})"
        )
    if age < timedelta(0):
        raise SessionValidationError(f"{what} must not be negative, got {age}")
    try:
        return now - age
    except OverflowError:
        raise SessionValidationError(
            f"{what} of {age.days} days reaches back before year 1, where no session can be; "
            f"pass at most {(now - datetime.min.replace(tzinfo=UTC)).days} days"
        ) from None
