"""Opaque keyset cursors for list_sessions.

A cursor holds the last row's ``(created_at, id)`` and a fingerprint of the filters it was made
for, so a cursor replayed with other filters (another user, another state) is refused rather than
silently mixing pages. It carries no rights: the filters of the call are always applied.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from datetime import UTC, datetime

from agent_session_store.errors import SessionValidationError

Filters = tuple[str | None, ...]  # _filters.SessionFilter.fingerprint()
# A real cursor is about 130 characters; anything much longer is not one of ours, and must not
# reach json.loads (a deeply nested value there raises RecursionError).
MAX_CURSOR_LENGTH = 512


def _fingerprint(filters: Filters) -> str:
    return hashlib.sha256(json.dumps(filters).encode()).hexdigest()[:16]


def encode(created_at: datetime, last_id: uuid.UUID, filters: Filters) -> str:
    """Make the cursor that continues after the row ``(created_at, last_id)``."""
    raw = json.dumps([created_at.isoformat(), str(last_id), _fingerprint(filters)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(cursor: str, filters: Filters) -> tuple[datetime, uuid.UUID]:
    """Read a cursor back, checking it was made for the same filters.

    Raises:
        SessionValidationError: the cursor is malformed, tampered with, or made for other filters.
    """
    try:
        if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("not a cursor")
        padded = cursor + "=" * (-len(cursor) % 4)
        created, last_id, fingerprint = json.loads(base64.urlsafe_b64decode(padded.encode()))
        when = datetime.fromisoformat(created)
        if when.utcoffset() is None:
            raise ValueError("naive timestamp")
        # In UTC here, not in the driver: an offset near year 1 or 9999 overflows there.
        position = (when.astimezone(UTC), uuid.UUID(last_id))
    except (
        ValueError,
        TypeError,
        OverflowError,
        binascii.Error,
        UnicodeError,
        AttributeError,
    ) as exc:
        raise SessionValidationError(
            "invalid cursor: pass back the next_cursor of a previous page unchanged"
        ) from exc
    if fingerprint != _fingerprint(filters):
        raise SessionValidationError(
            "this cursor was made for other filters (agent_type, user_id, state, key_prefix, "
            "updated_after, updated_before, metadata); "
            "start again without a cursor"
        )
    return position
