"""SessionRepository: the async store of agent sessions and their checkpoints.

Statements are SQLAlchemy Core on the declarative tables: every write is one or two bulk
statements, reads never touch more than ``recent_checkpoints`` checkpoint rows, and rows read
back from our own database are not validated a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agent_sessions import _cursor, _invalidation, telemetry
from agent_sessions import _statements as sql
from agent_sessions._arguments import (
    MAX_BATCH_SIZE,
    MAX_INT,
    check_cutoff,
    check_filter,
    check_int,
    check_limit,
    checked_now,
    parse_id,
)
from agent_sessions._errors import storage_errors
from agent_sessions._rows import (
    CHECKPOINT_COLUMNS,
    C,
    S,
    checkpoint_from_row,
    checkpoint_values,
    checkpoints_from_json,
    context_with_failure_reason,
    session_from_row,
)
from agent_sessions._validation import DEFAULT_MAX_PAYLOAD_BYTES, check_payload_size
from agent_sessions.errors import (
    ConcurrentUpdateError,
    InvalidStateTransitionError,
    SessionNotFoundError,
    SessionValidationError,
)
from agent_sessions.migrations import SchemaGate
from agent_sessions.models import (
    AgentSession,
    SessionCheckpoint,
    SessionPage,
    SessionState,
    SessionStats,
    allowed_sources,
    utcnow,
    validation_error,
)
from agent_sessions.readthrough import ModelCache, read_through
from agent_sessions.tables import checkpoints_table, sessions_table

__all__ = ["SessionRepository"]

logger = logging.getLogger(__name__)

_Mode = Literal["read", "statement", "write"]


class SessionRepository:
    """Create, read, update and sweep agent sessions.

    Each call is its own transaction, committed before it returns, unless the repository is
    bound to a caller's ``AsyncSession`` with :meth:`bind`. One repository is safe to share
    between many tasks.

    Args:
        session_factory: the host's ``async_sessionmaker`` (any ``expire_on_commit``).
        recent_checkpoints: how many of the newest checkpoints ``get_session`` returns.
        cache: a ``ModelCache`` such as ``RedisCache``; ``None`` reads the database every time.
        max_payload_bytes: the largest serialized context, metadata or checkpoint data accepted.
        clock: returns the current UTC-aware time; injectable for tests. A call that finds it
            returning anything else (a naive datetime, say) raises ``SessionValidationError``
            before writing anything.

    Example::

        engine = create_engine("sqlite+aiosqlite:///sessions.db")
        await migrations.upgrade(engine)
        repo = SessionRepository(async_sessionmaker(engine))
        session = await repo.create_session("planner", user_id="u1")
    """

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        recent_checkpoints: int = 20,
        cache: ModelCache | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        check_int(recent_checkpoints, "recent_checkpoints", 0, MAX_INT)
        check_int(max_payload_bytes, "max_payload_bytes", 1, 2**62)
        self._factory = session_factory
        self._recent = recent_checkpoints
        self._cache = cache
        self._max_payload = max_payload_bytes
        self._clock = clock
        self._gate = SchemaGate()
        self._write_lock = asyncio.Lock()
        self._bound: AsyncSession | None = None

    @property
    def cache(self) -> ModelCache | None:
        """The cache this repository invalidates (``None`` without one)."""
        return self._cache

    @property
    def _read_cache(self) -> ModelCache | None:
        # A bound repository reads inside the caller's transaction, which may hold
        # uncommitted changes: those must neither be served from nor put into the cache.
        return None if self._bound is not None else self._cache

    def bind(self, session: AsyncSession) -> SessionRepository:
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

    @asynccontextmanager
    async def _transaction(
        self, operation: str, session_id: uuid.UUID | None = None, *, mode: _Mode = "write"
    ) -> AsyncIterator[tuple[AsyncSession, str]]:
        """A session to run ``operation`` in, and the dialect's name.

        Bound: the caller's session. Otherwise a new one: for ``"write"`` in a transaction
        committed at the end; for ``"read"`` (reads needing no common snapshot) and
        ``"statement"`` (one writing statement) in autocommit mode, which saves the BEGIN and
        COMMIT round trips.
        """
        # The span wraps storage_errors, so it records the library's error, not the driver's.
        sid = None if session_id is None else str(session_id)
        with (
            telemetry.span(operation, session_id=sid, bound=self._bound is not None),
            storage_errors(operation),
        ):
            if self._bound is not None:
                yield self._bound, await self._gate.pass_through(self._bound)
                return
            async with self._sqlite_writer(mode), self._factory() as session:
                if mode == "write":
                    async with session.begin():
                        yield session, await self._gate.pass_through(session)
                else:
                    await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                    yield session, await self._gate.pass_through(session)
                    await _invalidation.run_pending(session)

    def _sqlite_writer(self, mode: _Mode) -> contextlib.AbstractAsyncContextManager[Any]:
        # SQLite has one writer at a time; writers that wait on its lock sleep in the busy
        # handler and a crowd of them collapses to a few dozen writes a second. Queueing this
        # process's writers on an asyncio lock instead keeps them at full speed.
        if mode == "read" or self._gate.dialect != "sqlite":
            return contextlib.nullcontext()
        return self._write_lock

    def _invalidate_on_commit(self, session: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
        if self._cache is not None and ids:
            _invalidation.on_commit(session, self._cache, AgentSession, [str(i) for i in ids])

    def _check_sizes(self, **payloads: dict[str, Any]) -> None:
        try:
            for what, value in payloads.items():
                check_payload_size(value, what, self._max_payload)
        except ValueError as exc:
            raise SessionValidationError(str(exc)) from None

    # -- create ---------------------------------------------------------------------------

    async def create_session(
        self,
        agent_type: str,
        user_id: str = "",
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> AgentSession:
        """Create an ACTIVE session, recording a ``session_created`` checkpoint.

        Raises:
            SessionValidationError: bad agent_type, user_id, context or metadata; nothing written.
        """
        now = checked_now(self._clock)
        try:
            session = AgentSession(
                session_id=str(uuid.uuid4()),
                agent_type=agent_type,
                user_id=user_id,
                context={} if context is None else context,
                metadata={} if metadata is None else metadata,
                created_at=now,
                updated_at=now,
                last_heartbeat=now,
                checkpoints=[
                    SessionCheckpoint(
                        name="session_created",
                        data={"agent_type": agent_type, "user_id": user_id},
                        timestamp=now,
                        seq=1,
                    )
                ],
                checkpoint_count=1,
                version=1,
            )
        except ValidationError as exc:
            raise validation_error(exc, "session") from exc
        self._check_sizes(context=session.context, metadata=session.metadata)
        sid = uuid.UUID(session.session_id)
        first = session.checkpoints[0]
        if self._gate.dialect == "postgresql":
            params = {"b_sid": sid, "b_agent": session.agent_type, "b_user": session.user_id,
                      "b_context": session.context, "b_metadata": session.metadata,
                      "b_now": now, "b_name": first.name, "b_data": first.data}  # fmt: skip
            async with self._transaction("create_session", sid, mode="statement") as (db, _):
                await db.execute(sql.CREATE_IN_ONE, params)
            return session
        async with self._transaction("create_session", sid) as (db, _):
            await db.execute(
                sql.INSERT_SESSION,
                {
                    "id": sid,
                    "agent_type": session.agent_type,
                    "user_id": session.user_id,
                    "state": session.state.value,
                    "context": session.context,
                    "metadata": session.metadata,
                    "checkpoint_count": 1,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    "last_heartbeat": now,
                },
            )
            await db.execute(sql.INSERT_CHECKPOINT, checkpoint_values(sid, first))
        logger.debug("created session %s (%s)", session.session_id, session.agent_type)
        return session

    # -- read -----------------------------------------------------------------------------

    async def get_session(
        self, session_id: str, *, user_id: str | None = None
    ) -> AgentSession | None:
        """The session with its newest ``recent_checkpoints`` checkpoints, or ``None``.

        ``None`` for an unknown, malformed or deleted id, and, with ``user_id``, for a session
        of another user. The cost does not grow with the length of the history.

        Raises:
            SessionValidationError: a ``user_id`` that is not a string, or holds NUL or a lone
                surrogate.
        """
        check_filter(user_id, "user_id")
        sid = parse_id(session_id)
        if sid is None:
            return None
        session = await self._load(str(sid))
        if session is None or (user_id is not None and session.user_id != user_id):
            return None
        return session

    @read_through(AgentSession, id_field="session_id", cache_attr="_read_cache")
    async def _load(self, session_id: str) -> AgentSession | None:
        sid = uuid.UUID(session_id)
        params = {"b_sid": sid, "b_recent": self._recent}
        async with self._transaction("get_session", sid, mode="read") as (db, dialect):
            load = sql.LOAD["postgresql" if dialect == "postgresql" else "sqlite"]
            row = (await db.execute(load, params)).first()
        if row is None:
            return None
        return session_from_row(row, checkpoints_from_json(row.recent))

    async def get_active_sessions(
        self, agent_type: str | None = None, user_id: str | None = None, *, limit: int = 100
    ) -> list[AgentSession]:
        """The newest ACTIVE sessions, optionally of one agent type and/or user (no checkpoints)."""
        page = await self.list_sessions(
            agent_type=agent_type, user_id=user_id, state=SessionState.ACTIVE, limit=limit
        )
        return page.items

    async def list_sessions(
        self,
        *,
        agent_type: str | None = None,
        user_id: str | None = None,
        state: SessionState | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        """One page of sessions, newest first, with keyset pagination.

        Deleted sessions are left out unless ``state=SessionState.DELETED`` is asked for. Listed
        sessions carry ``checkpoint_count`` but no checkpoints (use ``get_session``).

        Raises:
            SessionValidationError: a bad ``limit``, ``state``, ``cursor`` (including a
                cursor made for other filters), or text filter (not a string, NUL, surrogate).
        """
        check_limit(limit)
        check_filter(agent_type, "agent_type")
        check_filter(user_id, "user_id")
        try:
            wanted = None if state is None else SessionState(state)
        except ValueError:
            raise SessionValidationError(
                f"state must be one of {[s.value for s in SessionState]}, got {state!r}"
            ) from None
        filters = (agent_type, user_id, None if wanted is None else wanted.value)
        params: dict[str, Any] = {
            "b_agent": agent_type,
            "b_user": user_id,
            "b_state": filters[2],
            "b_limit": limit + 1,
        }
        if cursor is not None:
            params["b_after_at"], params["b_after_id"] = _cursor.decode(cursor, filters)
        stmt = sql.list_page(
            agent_type is not None, user_id is not None, wanted is not None, cursor is not None
        )
        async with self._transaction("list_sessions", mode="read") as (db, _):
            rows = (await db.execute(stmt, params)).all()
        items = [session_from_row(r, []) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _cursor.encode(last.created_at, last.id, filters)
        return SessionPage.model_construct(items=items, next_cursor=next_cursor)

    async def list_checkpoints(
        self,
        session_id: str,
        *,
        after_seq: int | None = None,
        limit: int = 100,
        user_id: str | None = None,
    ) -> list[SessionCheckpoint]:
        """The session's full history in pages, oldest first: seqs above ``after_seq``.

        Raises:
            SessionNotFoundError: unknown, malformed, deleted, or (with ``user_id``) foreign id.
            SessionValidationError: a bad ``limit``, ``after_seq`` or ``user_id``.
        """
        check_limit(limit)
        check_filter(user_id, "user_id")
        if after_seq is not None:
            check_int(after_seq, "after_seq", 0, MAX_INT)
        sid = parse_id(session_id)
        if sid is None:
            raise SessionNotFoundError(str(session_id))
        owner = select(S.id).where(S.id == sid, S.state != sql.DELETED)
        if user_id is not None:
            owner = owner.where(S.user_id == user_id)
        stmt = (
            select(*CHECKPOINT_COLUMNS)
            .where(C.session_id == owner.scalar_subquery(), C.seq > (after_seq or 0))
            .order_by(C.seq)
            .limit(limit)
        )
        async with self._transaction("list_checkpoints", sid, mode="read") as (db, _):
            rows = (await db.execute(stmt)).all()
            if not rows and (await db.execute(owner)).first() is None:
                raise SessionNotFoundError(str(session_id))
        return [checkpoint_from_row(r) for r in rows]

    # -- write ----------------------------------------------------------------------------

    async def update_session(
        self, session: AgentSession, *, user_id: str | None = None
    ) -> AgentSession:
        """Store context, metadata, state and new checkpoints; heartbeat; bump ``version``.

        Checkpoints added with ``session.checkpoint()`` since it was read are appended; stored
        ones are never rewritten. ``agent_type`` and ``user_id`` are fixed at creation: a copy
        whose ``user_id`` is not the stored one is not that session. With ``user_id``, only that
        user's session is written.

        Returns:
            The stored session, with its new ``version``.

        Raises:
            ConcurrentUpdateError: the stored version moved since this copy was read (another
                worker, or the stale sweep); nothing was written.
            InvalidStateTransitionError: the stored state cannot move to ``session.state``.
            SessionNotFoundError: the session does not exist, was deleted, or is another
                user's.
            SessionValidationError: bad context, metadata or checkpoint, or a ``version`` no
                stored session can have; nothing was written.
        """
        check_filter(user_id, "user_id")
        sid = parse_id(session.session_id)
        if sid is None or (user_id is not None and session.user_id != user_id):
            raise SessionNotFoundError(str(session.session_id))
        check_int(session.version, "version (pass the session as it was read)", 1, MAX_INT)
        target, pending = self._validated_changes(session)
        now = checked_now(self._clock)
        params = {
            "b_sid": sid,
            "b_owner": session.user_id,
            "b_version": session.version,
            "b_sources": [s.value for s in allowed_sources(target)],
            "b_context": session.context,
            "b_metadata": session.metadata,
            "b_state": target.value,
            "b_now": now,
            "b_added": len(pending),
        }
        # Without new checkpoints the update is one statement: no transaction needed.
        mode: _Mode = "write" if pending else "statement"
        async with self._transaction("update_session", sid, mode=mode) as (db, _):
            row = (await db.execute(sql.UPDATE, params)).first()
            if row is None:
                await self._explain_failed_update(db, sid, session, target)
                raise AssertionError("unreachable")  # pragma: no cover
            first_seq = row.checkpoint_count - len(pending) + 1
            stored = [cp.model_copy(update={"seq": first_seq + i}) for i, cp in enumerate(pending)]
            if stored:
                await db.execute(
                    sql.INSERT_CHECKPOINT, [checkpoint_values(sid, cp) for cp in stored]
                )
            self._invalidate_on_commit(db, [sid])
        kept = [cp for cp in session.checkpoints if cp.seq is not None] + stored
        return AgentSession.model_construct(
            **{
                **dict(session),
                "state": target,
                "checkpoints": kept[-self._recent :] if self._recent else [],
                "checkpoint_count": row.checkpoint_count,
                "created_at": row.created_at,
                "updated_at": now,
                "last_heartbeat": now,
                "version": session.version + 1,
            }
        )

    def _validated_changes(
        self, session: AgentSession
    ) -> tuple[SessionState, list[SessionCheckpoint]]:
        # The model is mutable and pydantic does not validate assignments: check again here.
        try:
            target = SessionState(session.state)
            checked = AgentSession.model_validate(
                {
                    "session_id": session.session_id,
                    "agent_type": session.agent_type,
                    "user_id": session.user_id,
                    "context": session.context,
                    "metadata": session.metadata,
                    "version": session.version,
                }
            )
            pending = [
                SessionCheckpoint.model_validate(
                    {"name": cp.name, "data": cp.data, "timestamp": cp.timestamp}
                )
                for cp in session.pending_checkpoints
            ]
        except ValidationError as exc:
            raise validation_error(exc, "session") from exc
        except ValueError as exc:
            raise SessionValidationError(f"invalid session state: {exc}") from None
        self._check_sizes(context=checked.context, metadata=checked.metadata)
        for cp in pending:
            self._check_sizes(**{f"checkpoint {cp.name!r} data": cp.data})
        return target, pending

    async def _explain_failed_update(
        self, db: AsyncSession, sid: uuid.UUID, session: AgentSession, target: SessionState
    ) -> None:
        stored = (
            await db.execute(select(S.version, S.state, S.user_id).where(S.id == sid))
        ).first()
        if stored is None or stored.state == sql.DELETED or stored.user_id != session.user_id:
            raise SessionNotFoundError(session.session_id)
        if stored.version != session.version:
            raise ConcurrentUpdateError(session.session_id, session.version, stored.version)
        raise InvalidStateTransitionError(session.session_id, stored.state, target.value)

    async def delete_session(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Soft-delete: the session becomes DELETED and invisible to reads.

        Returns:
            ``False`` when the id is unknown, malformed, foreign or already deleted.

        Raises:
            SessionValidationError: a ``user_id`` that is not a string, or holds NUL or a lone
                surrogate.
        """
        check_filter(user_id, "user_id")
        sid = parse_id(session_id)
        if sid is None:
            return False
        params = {"b_sid": sid, "b_now": checked_now(self._clock), "b_user": user_id}
        async with self._transaction("delete_session", sid, mode="statement") as (db, _):
            stmt = sql.DELETE[user_id is not None]
            deleted = (await db.execute(stmt, params)).first() is not None
            if deleted:
                self._invalidate_on_commit(db, [sid])
        return deleted

    async def heartbeat(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Record that the session's agent is alive; touches ``last_heartbeat`` only.

        Does not bump ``version``, so it never makes a content writer conflict.

        Returns:
            ``False`` when the session is unknown, malformed, (with ``user_id``) another user's,
            or not ACTIVE/PAUSED (a swept, completed or deleted session gets no heartbeat: the
            agent should stop).
        """
        check_filter(user_id, "user_id")
        sid = parse_id(session_id)
        if sid is None:
            return False
        params = {"b_sid": sid, "b_now": checked_now(self._clock), "b_user": user_id}
        async with self._transaction("heartbeat", sid, mode="statement") as (db, _):
            alive = (await db.execute(sql.HEARTBEAT[user_id is not None], params)).first()
            alive = alive is not None
            if alive:
                self._invalidate_on_commit(db, [sid])
        return alive

    async def add_checkpoint(
        self,
        session_id: str,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        user_id: str | None = None,
    ) -> SessionCheckpoint:
        """Append one checkpoint; its cost does not depend on the history's length.

        Concurrent appends to one session all succeed with consecutive ``seq`` values. Bumps the
        session's ``version`` (copies read before it are stale).

        Raises:
            SessionNotFoundError: unknown, malformed, deleted, or (with ``user_id``) foreign id.
            SessionValidationError: bad name, data or ``user_id``; nothing written.
        """
        check_filter(user_id, "user_id")
        try:
            cp = SessionCheckpoint(
                name=name, data={} if data is None else data, timestamp=checked_now(self._clock)
            )
        except ValidationError as exc:
            raise validation_error(exc, "checkpoint") from exc
        self._check_sizes(data=cp.data)
        sid = parse_id(session_id)
        if sid is None:
            raise SessionNotFoundError(str(session_id))
        params = {"b_sid": sid, "b_now": cp.timestamp, "b_user": user_id,
                  "b_name": cp.name, "b_data": cp.data}  # fmt: skip
        if self._gate.dialect == "postgresql":
            async with self._transaction("add_checkpoint", sid, mode="statement") as (db, _):
                stmt = sql.APPEND_IN_ONE[user_id is not None]
                seq = (await db.execute(stmt, params)).scalar()
                if seq is None:
                    raise SessionNotFoundError(str(session_id))
                self._invalidate_on_commit(db, [sid])
            cp.seq = seq
            return cp
        async with self._transaction("add_checkpoint", sid) as (db, _):
            seq = (await db.execute(sql.APPEND[user_id is not None], params)).scalar()
            if seq is None:
                raise SessionNotFoundError(str(session_id))
            cp.seq = seq
            await db.execute(sql.INSERT_CHECKPOINT, checkpoint_values(sid, cp))
            self._invalidate_on_commit(db, [sid])
        return cp

    async def cleanup_stale_sessions(
        self, max_age: timedelta = timedelta(hours=48), *, batch_size: int = 2000
    ) -> int:
        """Fail every ACTIVE session whose last heartbeat is older than ``max_age``.

        Each becomes FAILED with ``context["failure_reason"] == "heartbeat_timeout"`` and a new
        ``version`` (so a worker holding an older copy gets ``ConcurrentUpdateError``). Works in
        bulk statements of ``batch_size`` rows, each its own transaction unless bound.

        Returns:
            How many sessions were failed.

        Raises:
            SessionValidationError: ``max_age`` is not a ``timedelta``, is negative or reaches
                back before year 1, or a bad ``batch_size``; nothing was written.
        """
        check_limit(batch_size, "batch_size", MAX_BATCH_SIZE)
        now = checked_now(self._clock)
        cutoff = check_cutoff(max_age, "max_age", now)
        stale = and_(S.state == SessionState.ACTIVE.value, S.last_heartbeat < cutoff)
        total = 0
        while True:
            async with self._transaction("cleanup_stale_sessions") as (db, dialect):
                batch = select(S.id).where(stale).order_by(S.last_heartbeat).limit(batch_size)
                if dialect == "postgresql":
                    # Rows another sweeper holds are skipped, not waited for.
                    batch = batch.with_for_update(skip_locked=True)
                stmt = (
                    update(sessions_table)
                    .where(S.id.in_(batch.scalar_subquery()), stale)
                    .values(
                        state=SessionState.FAILED.value,
                        context=context_with_failure_reason(dialect),
                        version=S.version + 1,
                        updated_at=now,
                    )
                    .returning(S.id)
                )
                ids = (await db.execute(stmt)).scalars().all()
                self._invalidate_on_commit(db, ids)
            total += len(ids)
            if len(ids) < batch_size:
                break
        if total:
            logger.info("failed %d sessions with no heartbeat since %s", total, cutoff.isoformat())
        return total

    async def purge_deleted_sessions(
        self, older_than: timedelta = timedelta(days=30), *, batch_size: int = 500
    ) -> int:
        """Hard-delete sessions soft-deleted more than ``older_than`` ago, with their checkpoints.

        Works in batches of ``batch_size`` sessions, each its own transaction unless bound.

        Returns:
            How many sessions were removed.

        Raises:
            SessionValidationError: ``older_than`` is not a ``timedelta``, is negative or
                reaches back before year 1, or a bad ``batch_size``; nothing was written.
        """
        check_limit(batch_size, "batch_size", MAX_BATCH_SIZE)
        cutoff = check_cutoff(older_than, "older_than", checked_now(self._clock))
        doomed = (
            select(S.id)
            .where(S.state == sql.DELETED, S.updated_at < cutoff)
            .order_by(S.updated_at)
            .limit(batch_size)
        )
        total = 0
        while True:
            async with self._transaction("purge_deleted_sessions") as (db, _):
                ids = (await db.execute(doomed)).scalars().all()
                if ids:
                    # Explicitly, not by ON DELETE CASCADE: SQLite enforces foreign keys only
                    # when the host's engine turned them on.
                    await db.execute(delete(checkpoints_table).where(C.session_id.in_(ids)))
                    await db.execute(delete(sessions_table).where(S.id.in_(ids)))
            total += len(ids)
            if len(ids) < batch_size:
                break
        if total:
            logger.info("purged %d sessions deleted before %s", total, cutoff.isoformat())
        return total

    async def stats(self) -> SessionStats:
        """Counts by state and agent type, the oldest ACTIVE heartbeat, the checkpoint total."""
        async with self._transaction("stats", mode="read") as (db, _):
            by_state = (await db.execute(select(S.state, func.count()).group_by(S.state))).all()
            by_type = (
                await db.execute(
                    select(S.agent_type, func.count())
                    .where(S.state != sql.DELETED)
                    .group_by(S.agent_type)
                )
            ).all()
            oldest = await db.scalar(
                select(func.min(S.last_heartbeat)).where(S.state == SessionState.ACTIVE.value)
            )
            checkpoints = await db.scalar(select(func.coalesce(func.sum(S.checkpoint_count), 0)))
        return SessionStats(
            by_state={state: count for state, count in by_state},
            by_agent_type={agent_type: count for agent_type, count in by_type},
            oldest_active_heartbeat=oldest,
            checkpoints=int(checkpoints or 0),
        )
