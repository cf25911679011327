"""Turns database driver failures into the library's StorageError family."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from asyncpg.exceptions import InternalClientError
from sqlalchemy import exc as sa_exc

from agent_sessions.errors import StorageError, StorageTimeoutError


@contextmanager
def storage_errors(operation: str) -> Iterator[None]:
    """Re-raise database failures inside the block as ``StorageError``; let the rest through."""
    try:
        yield
    except sa_exc.TimeoutError as exc:  # the pool's QueuePool timeout
        raise StorageTimeoutError(
            f"{operation}: no database connection became free in time ({exc}); lower the "
            "number of concurrent callers or raise the engine's pool_size/max_overflow"
        ) from exc
    # InternalClientError: asyncpg reusing a connection its server dropped mid-operation;
    # older SQLAlchemy 2.0 releases let it through untranslated (engine.py discards it).
    except (sa_exc.DBAPIError, InternalClientError, OSError, TimeoutError) as exc:
        detail = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
        first_line = str(detail).splitlines()[0] if str(detail) else ""
        if isinstance(detail, OSError):  # refused, unresolvable, timed out: never connected
            raise StorageError(
                f"{operation} failed: could not reach the database ({type(detail).__name__}: "
                f"{first_line}); nothing was done: check the URL and that the server is up"
            ) from exc
        raise StorageError(
            f"{operation} failed in the database ({type(detail).__name__}: {first_line}). "
            "Its transaction was rolled back, unless the connection was lost while committing: "
            "then it may have been applied, so re-read before retrying a non-idempotent call"
        ) from exc
