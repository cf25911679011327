"""Turns database driver failures into the library's StorageError family."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from asyncpg.exceptions import (
    IntegrityConstraintViolationError,
    InterfaceError,
    InternalClientError,
    PostgresError,
)
from sqlalchemy import exc as sa_exc

from agent_session_store.errors import StorageError, StorageTimeoutError

# What PgBouncer says, closing the connection, to a client that waited longer than its
# query_wait_timeout for a server connection.
_POOLER_WAIT_TIMEOUT = "query_wait_timeout"

# PostgreSQL refusing a connection before any statement ran: no such database, bad user or
# password, too many connections, server starting or shutting down.
_REFUSED_SQLSTATES = frozenset({"3D000", "28000", "28P01", "53300", "57P03"})


# The drivers' own errors: raised untranslated by the hot path (``_driver``), which runs
# statements on the driver's connection, and by SQLAlchemy in a few cases: asyncpg's
# InternalClientError when a connection its server dropped mid-operation is used again (older
# SQLAlchemy 2.0 releases; engine.py discards it), and a server refusal while connecting (no such
# database) with SQLAlchemy 2.0.10 and asyncpg 0.29.
DRIVER_ERRORS = (sqlite3.Error, PostgresError, InterfaceError, InternalClientError)
# A unique index refusing a row, through SQLAlchemy or from the driver.
INTEGRITY_ERRORS = (
    sa_exc.IntegrityError,
    sqlite3.IntegrityError,
    IntegrityConstraintViolationError,
)


def describe(error: BaseException) -> str:
    """``Type: first line of the message``; a message-less timeout says it timed out."""
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else ""
    if not first_line and isinstance(error, TimeoutError):
        first_line = "no answer in time"
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def never_connected(error: BaseException) -> bool:
    """Whether ``error`` happened before anything reached the database (so nothing was done)."""
    if isinstance(error, OSError):  # refused, unresolvable, timed out
        return True
    if getattr(error, "sqlstate", None) in _REFUSED_SQLSTATES:
        return True
    # SQLite: the file or its directory cannot be opened (missing directory, no permission).
    return "unable to open database file" in str(error)


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
    except (sa_exc.DBAPIError, *DRIVER_ERRORS, OSError, TimeoutError) as exc:
        detail = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig else exc
        first_line = str(detail).splitlines()[0] if str(detail) else ""
        if _POOLER_WAIT_TIMEOUT in first_line:
            # A transaction pooler hands out a server connection at BEGIN: the transaction
            # that waited for one never started.
            raise StorageTimeoutError(
                f"{operation}: no server connection became free in time at the connection "
                f"pooler ({first_line}); nothing was done: lower the number of concurrent "
                "callers, or raise the pooler's pool size (PgBouncer: default_pool_size) or "
                "its wait limit (query_wait_timeout)"
            ) from exc
        if never_connected(detail):
            raise StorageError(
                f"{operation} failed: could not connect to the database ({describe(detail)}); "
                "nothing was done: check the URL (host, port, database name, user, password "
                "or file path) and that the server is up"
            ) from exc
        raise StorageError(
            f"{operation} failed in the database ({describe(detail)}). "
            "Its transaction was rolled back, unless the connection was lost while committing: "
            "then it may have been applied, so re-read before retrying a non-idempotent call"
        ) from exc
