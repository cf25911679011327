"""What every part of the repository shares: the injected parts, ``bind``, how a call opens.

``SessionRepository`` (``agent_session_store.repository``) is one public class made of the parts
in this package, each a file named for its seam: ``reads``, ``writes`` (sessions and shared
state), ``checkpoints`` (appends and rewinds, the primitives the framework backends build on) and
``lifecycle`` (sweeps and purges). Each part derives from :class:`RepositoryBase`.
"""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agent_session_store._arguments import MAX_INT, check_filter, check_int
from agent_session_store._calls import Call, Database, Refused
from agent_session_store._dialects import Dialect, Shape
from agent_session_store._errors import INTEGRITY_ERRORS
from agent_session_store._sealed import Sealed, fields_for
from agent_session_store._validation import DEFAULT_MAX_PAYLOAD_BYTES, check_payload_size
from agent_session_store.encryption import FieldEncryption
from agent_session_store.errors import SessionValidationError
from agent_session_store.models import AgentSession, utcnow
from agent_session_store.readthrough import ModelCache


class RepositoryBase:
    """The state and plumbing every part of ``SessionRepository`` uses (see the package doc)."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        recent_checkpoints: int = 20,
        cache: ModelCache | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], datetime] = utcnow,
        encryption: FieldEncryption | None = None,
    ) -> None:
        check_int(recent_checkpoints, "recent_checkpoints", 0, MAX_INT)
        check_int(max_payload_bytes, "max_payload_bytes", 1, 2**62)
        self._factory = session_factory
        self._recent = recent_checkpoints
        self._cache = cache
        self._max_payload = max_payload_bytes
        self._clock = clock
        self._fields = fields_for(encryption)
        self._db = Database(session_factory)
        self._bound: AsyncSession | None = None

    @property
    def cache(self) -> ModelCache | None:
        """The cache this repository invalidates (``None`` without one)."""
        return self._cache

    @property
    def encryption(self) -> FieldEncryption | None:
        """The ``FieldEncryption`` sealing stored values (``None`` without one)."""
        return self._fields.encryption if isinstance(self._fields, Sealed) else None

    @property
    def session_factory(self) -> async_sessionmaker[AsyncSession]:
        """The ``async_sessionmaker`` the repository was built with.

        For code that runs several calls in one transaction of its own with :meth:`bind`::

            async with repo.session_factory() as db, db.begin():
                await repo.bind(db).add_checkpoint(session_id, "step")
        """
        return self._factory

    @property
    def _read_cache(self) -> ModelCache | None:
        # A bound repository reads inside the caller's transaction, which may hold
        # uncommitted changes: those must neither be served from nor put into the cache.
        return None if self._bound is not None else self._cache

    def bind(self, session: AsyncSession) -> Self:
        """The same repository working inside the caller's session and transaction.

        Its calls flush but never commit or roll back; cache invalidation happens when the
        caller commits (and not at all when it rolls back).

        Example::

            async with factory() as db, db.begin():
                db.add(Invoice(...))
                await repo.bind(db).update_session(session)
            # both are committed here, or neither
        """
        bound = copy.copy(self)
        bound._bound = session
        return bound

    def _call(
        self,
        operation: str,
        session_id: uuid.UUID | None = None,
        shape: Shape = "transaction",
        *,
        hot: bool = False,
    ) -> contextlib.AbstractAsyncContextManager[Call]:
        """Where ``operation`` runs its statements: see ``_calls`` for how it opens and settles.

        ``hot``: the call runs its statements with ``Call.fetch`` only (see ``_driver``).
        """
        return self._db.call(
            operation,
            session_id,
            shape,
            cache=self._cache,
            model=AgentSession,
            bound=self._bound,
            hot=hot,
        )

    @property
    def _dialect(self) -> Dialect:
        return self._db.dialect if self._bound is None else self._db.dialect_of(self._bound)

    def _check_sizes(self, **payloads: dict[str, Any]) -> None:
        try:
            for what, value in payloads.items():
                check_payload_size(value, what, self._max_payload)
        except ValueError as exc:
            raise SessionValidationError(str(exc)) from None

    @contextlib.asynccontextmanager
    async def _refused_on_conflict(self, db: Call) -> AsyncIterator[None]:
        """Turn a unique index's refusal into :class:`Refused` (the call wrote nothing).

        On PostgreSQL a failed statement aborts the whole transaction: inside a caller's
        transaction, a savepoint keeps the refusal from taking the caller's work with it.
        """
        savepoint = None
        if db.bound is not None and db.dialect.savepoint_for_refusals:
            savepoint = await db.bound.begin_nested()
        try:
            yield
        except INTEGRITY_ERRORS as exc:
            if savepoint is not None:
                await savepoint.rollback()
            raise Refused from exc
        if savepoint is not None:
            await savepoint.commit()


def scope(agent_type: object, user_id: object) -> dict[str, Any]:
    """The shared-state document's key: app-wide for ``user_id=None``, else that user's."""
    _check_name(agent_type, "agent_type", 1, 128)
    if user_id is None:
        return {"b_agent": agent_type, "b_scope": "app", "b_user": ""}
    _check_name(user_id, "user_id", 0, 256)
    return {"b_agent": agent_type, "b_scope": "user", "b_user": user_id}


def _check_name(value: object, what: str, shortest: int, longest: int) -> None:
    if value is None:
        raise SessionValidationError(f"{what} must be a string, got None")
    check_filter(value, what)
    assert isinstance(value, str)  # check_filter refused anything else
    if not shortest <= len(value) <= longest:
        raise SessionValidationError(
            f"{what} must be {shortest} to {longest} characters long, got {len(value)}"
        )
