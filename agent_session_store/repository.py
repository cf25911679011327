"""SessionRepository: the async store of agent sessions and their checkpoints.

Statements are SQLAlchemy Core on the declarative tables: every write is one or two bulk
statements, reads never touch more than ``recent_checkpoints`` checkpoint rows, and rows read
back from our own database are not validated a second time.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, NoReturn, cast

from pydantic import ValidationError
from sqlalchemy import CursorResult, and_, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agent_session_store import _cursor
from agent_session_store import _statements as sql
from agent_session_store._arguments import (
    MAX_BATCH_SIZE,
    MAX_INT,
    MAX_PAGE_SIZE,
    check_aware,
    check_cutoff,
    check_filter,
    check_int,
    check_key,
    check_limit,
    checked_now,
    parse_id,
)
from agent_session_store._calls import Call, Database
from agent_session_store._dialects import Dialect, Shape
from agent_session_store._errors import INTEGRITY_ERRORS
from agent_session_store._rows import (
    CHECKPOINT_COLUMNS,
    C,
    S,
    checkpoint_from_row,
    checkpoint_values,
    checkpoints_from_json,
    session_from_row,
)
from agent_session_store._validation import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    check_json_object,
    check_payload_size,
    check_text,
)
from agent_session_store.errors import (
    ConcurrentUpdateError,
    InvalidStateTransitionError,
    SessionExistsError,
    SessionNotFoundError,
    SessionValidationError,
)
from agent_session_store.models import (
    AgentSession,
    SessionCheckpoint,
    SessionPage,
    SessionState,
    SessionStats,
    allowed_sources,
    utcnow,
    validation_error,
)
from agent_session_store.readthrough import ModelCache, read_through
from agent_session_store.tables import sessions_table

__all__ = ["SessionRepository"]

logger = logging.getLogger(__name__)

# update_session's compare-and-set, one statement per target state (the states it may be written
# from are fixed by the state machine), built once.
_UPDATE_TO = {
    target: sql.update_from(tuple(sorted(s.value for s in allowed_sources(target))))
    for target in SessionState
}


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
        self._db = Database(session_factory)
        self._bound: AsyncSession | None = None

    @property
    def cache(self) -> ModelCache | None:
        """The cache this repository invalidates (``None`` without one)."""
        return self._cache

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

    # -- create ---------------------------------------------------------------------------

    async def create_session(
        self,
        agent_type: str,
        user_id: str = "",
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> AgentSession:
        """Create an ACTIVE session, recording a ``session_created`` checkpoint.

        Args:
            key: the caller's own name for the session (printable text, 1 to 128 characters),
                unique among the live sessions of this ``agent_type`` and ``user_id``; read
                the session back with :meth:`get_session_by_key`. A deleted session's key is
                free again.

        Raises:
            SessionExistsError: a live session of this agent type and user has ``key``
                (also when two creates race: exactly one wins); nothing written.
            SessionValidationError: bad agent_type, user_id, key, context or metadata; nothing
                written.
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
                key=None if key is None else check_key(key),
            )
        except ValidationError as exc:
            raise validation_error(exc, "session") from exc
        self._check_sizes(context=session.context, metadata=session.metadata)
        sid = uuid.UUID(session.session_id)
        dialect = self._dialect
        async with (
            self._call("create_session", sid, dialect.append_shape, hot=True) as db,
            self._key_is_free(db, session),
        ):
            await dialect.create(db, session)
        logger.debug("created session %s (%s)", session.session_id, session.agent_type)
        return session

    @asynccontextmanager
    async def _key_is_free(self, db: Call, session: AgentSession) -> AsyncIterator[None]:
        """Turn the unique index's refusal of a taken key into ``SessionExistsError``."""
        if session.key is None:
            yield
            return
        # On PostgreSQL a failed statement aborts the whole transaction: inside a caller's
        # transaction, a savepoint keeps the refusal from taking the caller's work with it.
        savepoint = None
        if db.bound is not None and db.dialect.savepoint_for_refusals:
            savepoint = await db.bound.begin_nested()
        try:
            yield
        except INTEGRITY_ERRORS as exc:
            if savepoint is not None:
                await savepoint.rollback()
            raise SessionExistsError(session.agent_type, session.user_id, session.key) from exc
        if savepoint is not None:
            await savepoint.commit()

    # -- read -----------------------------------------------------------------------------

    async def get_session(
        self,
        session_id: str,
        *,
        user_id: str | None = None,
        recent_checkpoints: int | None = None,
    ) -> AgentSession | None:
        """The session with its newest ``recent_checkpoints`` checkpoints, or ``None``.

        ``None`` for an unknown, malformed or deleted id, and, with ``user_id``, for a session
        of another user. The cost does not grow with the length of the history.

        Args:
            recent_checkpoints: how many of the newest checkpoints to return (``0``: none);
                ``None`` for the repository's default.

        Raises:
            SessionValidationError: a ``user_id`` that is not a string, or holds NUL or a lone
                surrogate; a ``recent_checkpoints`` that is not an integer of 0 or more.
        """
        check_filter(user_id, "user_id")
        recent = self._window(recent_checkpoints)
        sid = parse_id(session_id)
        if sid is None:
            return None
        session = await self._load_window(str(sid), recent)
        if session is None or (user_id is not None and session.user_id != user_id):
            return None
        return session

    async def get_session_by_key(
        self,
        agent_type: str,
        user_id: str = "",
        *,
        key: str,
        recent_checkpoints: int | None = None,
    ) -> AgentSession | None:
        """The live session of ``agent_type`` and ``user_id`` created with ``key``, or ``None``.

        Like :meth:`get_session` otherwise (same window, same cache). Keys are per user:
        another user's session with the same key is never returned.

        Example (get or create: create first, so two workers racing get one session)::

            try:
                session = await repo.create_session("planner", "u1", key="chat-42")
            except SessionExistsError:
                session = await repo.get_session_by_key("planner", "u1", key="chat-42")

        Raises:
            SessionValidationError: an ``agent_type``, ``user_id`` or ``key`` no session can
                have, or a bad ``recent_checkpoints``.
        """
        check_filter(agent_type, "agent_type")
        if not isinstance(user_id, str):
            raise SessionValidationError(f"user_id must be a string, got {type(user_id).__name__}")
        check_filter(user_id, "user_id")
        key = check_key(key)
        recent = self._window(recent_checkpoints)
        params: dict[str, Any] = {"b_agent": agent_type, "b_user": user_id, "b_key": key}
        if self._read_cache is None:  # one statement: the session, found through its key
            params["b_recent"] = recent
            async with self._call("get_session_by_key", shape="read", hot=True) as db:
                rows = await db.fetch(db.dialect.load_by_key, params)
            return (
                session_from_row(rows[0], checkpoints_from_json(rows[0].recent)) if rows else None
            )
        # The key is resolved by the database on every call, never cached: a key is reused
        # after a delete, by a session with another id, and the cache is keyed by id. A
        # session's key is fixed at creation, so whatever is cached for this id has this key.
        for _ in range(2):
            async with self._call("get_session_by_key", shape="read", hot=True) as db:
                rows = await db.fetch(sql.ID_BY_KEY, params)
            if not rows:
                return None
            session = await self._load_window(str(rows[0].id), recent)
            if session is not None:
                return session
            # Deleted between the two reads: the key may already name a new session (a
            # delete and a re-create in between), so it is resolved once more.
        return None

    def _window(self, recent_checkpoints: int | None) -> int:
        if recent_checkpoints is None:
            return self._recent
        return check_int(recent_checkpoints, "recent_checkpoints", 0, MAX_INT)

    async def _load_window(self, session_id: str, recent: int) -> AgentSession | None:
        # The cache holds sessions with the default window. A smaller window is cut from the
        # cached copy; a larger one bypasses the cache (read and not stored), so the cached
        # entry is never one with another window.
        if recent > self._recent:
            return await self._load(session_id, recent=recent)
        session = await self._load(session_id)
        if session is not None and recent < self._recent:
            session.checkpoints = session.checkpoints[-recent:] if recent else []
        return session

    @read_through(AgentSession, id_field="session_id", cache_attr="_read_cache")
    async def _load(self, session_id: str, recent: int | None = None) -> AgentSession | None:
        sid = uuid.UUID(session_id)
        params = {"b_sid": sid, "b_recent": self._recent if recent is None else recent}
        async with self._call("get_session", sid, shape="read", hot=True) as db:
            rows = await db.fetch(db.dialect.load, params)
        return _session(rows)

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
        async with self._call("list_sessions", shape="read") as db:
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
        newest_first: bool = False,
        since: datetime | None = None,
    ) -> list[SessionCheckpoint]:
        """The session's full history in pages, oldest first: seqs above ``after_seq``.

        With ``newest_first``, the newest first: ``after_seq`` then continues such a listing,
        with the seqs below it. ``since`` keeps the checkpoints whose timestamp is at or after
        it. Each page costs the same whatever the history's length.

        Raises:
            SessionNotFoundError: unknown, malformed, deleted, or (with ``user_id``) foreign id.
            SessionValidationError: a bad ``limit``, ``after_seq``, ``user_id`` or ``since``
                (a naive datetime).
        """
        check_limit(limit)
        check_filter(user_id, "user_id")
        if after_seq is not None:
            check_int(after_seq, "after_seq", 0, MAX_INT)
        if since is not None:
            since = check_aware(since, "since")
        sid = parse_id(session_id)
        if sid is None:
            raise SessionNotFoundError(str(session_id))
        owner = select(S.id).where(S.id == sid, S.state != sql.DELETED)
        if user_id is not None:
            owner = owner.where(S.user_id == user_id)
        stmt = select(*CHECKPOINT_COLUMNS).where(C.session_id == owner.scalar_subquery())
        if newest_first:
            if after_seq is not None:
                stmt = stmt.where(C.seq < after_seq)
            stmt = stmt.order_by(C.seq.desc())
        else:
            stmt = stmt.where(C.seq > (after_seq or 0)).order_by(C.seq)
        if since is not None:
            stmt = stmt.where(C.created_at >= since)
        stmt = stmt.limit(limit)
        async with self._call("list_checkpoints", sid, shape="read") as db:
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
            InvalidStateTransitionError: the stored state cannot move to ``session.state``, or
                the session is finished (COMPLETED or FAILED) and the copy changes its context
                or adds checkpoints (the write that completes or fails it may still carry
                them; a finished session's metadata stays writable); nothing was written.
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
            "b_context": session.context,
            "b_metadata": session.metadata,
            "b_state": target.value,
            "b_now": now,
            "b_added": len(pending),
        }
        # Without new checkpoints the update is one statement: no transaction needed.
        shape: Shape = "transaction" if pending else "one statement"
        async with self._call("update_session", sid, shape, hot=not pending) as db:
            rows = await db.fetch(_UPDATE_TO[target], params)
            if not rows:
                await self._explain_failed_update(db, sid, session, target)
                raise AssertionError("unreachable")  # pragma: no cover
            row = rows[0]
            first_seq = row.checkpoint_count - len(pending) + 1
            stored = [cp.model_copy(update={"seq": first_seq + i}) for i, cp in enumerate(pending)]
            if stored:
                await db.execute(
                    sql.INSERT_CHECKPOINT, [checkpoint_values(sid, cp) for cp in stored]
                )
            db.invalidate_on_commit([sid])
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
        self, db: Call, sid: uuid.UUID, session: AgentSession, target: SessionState
    ) -> None:
        rows = await db.fetch(sql.STORED_FOR_UPDATE, {"b_sid": sid})
        stored = rows[0] if rows else None
        if stored is None or stored.state == sql.DELETED or stored.user_id != session.user_id:
            raise SessionNotFoundError(session.session_id)
        if stored.version != session.version:
            raise ConcurrentUpdateError(session.session_id, session.version, stored.version)
        if stored.state in sql.FINISHED_STATES and SessionState(stored.state) in allowed_sources(
            target
        ):  # a move the state machine allows, refused because the session's content is final
            change = "add checkpoints" if session.pending_checkpoints else "change its context"
            raise InvalidStateTransitionError(
                session.session_id, stored.state, target.value, change=change
            )
        raise InvalidStateTransitionError(session.session_id, stored.state, target.value)

    async def delete_session(
        self, session_id: str, *, user_id: str | None = None, hard: bool = False
    ) -> bool:
        """Soft-delete: the session becomes DELETED and invisible to reads.

        With ``hard=True`` the session and all its checkpoints are removed from the database
        now (an erasure), a soft-deleted one included.

        Returns:
            ``False`` when the id is unknown, malformed or foreign, or (soft) already deleted.

        Raises:
            SessionValidationError: a ``user_id`` that is not a string, or holds NUL or a lone
                surrogate.
        """
        check_filter(user_id, "user_id")
        sid = parse_id(session_id)
        if sid is None:
            return False
        params = {"b_sid": sid, "b_now": checked_now(self._clock), "b_user": user_id}
        if hard:
            return await self._hard_delete(sid, params)
        async with self._call("delete_session", sid, shape="one statement", hot=True) as db:
            deleted = bool(await db.fetch(sql.DELETE[user_id is not None], params))
            if deleted:
                db.invalidate_on_commit([sid])
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
        async with self._call("heartbeat", sid, shape="one statement", hot=True) as db:
            alive = bool(await db.fetch(sql.HEARTBEAT[user_id is not None], params))
            if alive:
                db.invalidate_on_commit([sid])
        return alive

    async def add_checkpoint(
        self,
        session_id: str,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        user_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> SessionCheckpoint:
        """Append one checkpoint; its cost does not depend on the history's length.

        Concurrent appends to one session all succeed with consecutive ``seq`` values. Bumps the
        session's ``version`` (copies read before it are stale).

        Args:
            timestamp: the checkpoint's time (UTC-aware), e.g. a framework's event time;
                ``None`` for now. The session's ``updated_at`` is now either way.

        Raises:
            SessionNotFoundError: unknown, malformed, deleted, or (with ``user_id``) foreign id.
            InvalidStateTransitionError: the session is COMPLETED or FAILED (its checkpoints
                are final); nothing written.
            SessionValidationError: bad name, data, ``user_id`` or ``timestamp`` (naive);
                nothing written.
        """
        check_filter(user_id, "user_id")
        now = checked_now(self._clock)
        at = now if timestamp is None else check_aware(timestamp, "timestamp")
        try:
            cp = SessionCheckpoint(name=name, data={} if data is None else data, timestamp=at)
        except ValidationError as exc:
            raise validation_error(exc, "checkpoint") from exc
        self._check_sizes(data=cp.data)
        sid = parse_id(session_id)
        if sid is None:
            raise SessionNotFoundError(str(session_id))
        params = {"b_sid": sid, "b_now": now, "b_at": cp.timestamp, "b_user": user_id,
                  "b_name": cp.name, "b_data": cp.data}  # fmt: skip
        dialect = self._dialect
        async with self._call("add_checkpoint", sid, dialect.append_shape, hot=True) as db:
            seq = await dialect.append(db, params, cp)
            if seq is None:
                await self._refuse_content_write(db, session_id, params, "take checkpoints")
            db.invalidate_on_commit([sid])
        cp.seq = seq
        return cp

    async def add_checkpoints(
        self,
        session_id: str,
        items: Sequence[tuple[str, dict[str, Any]]],
        *,
        user_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> list[SessionCheckpoint]:
        """Append ``(name, data)`` items as consecutive checkpoints, all or none.

        One atomic append with no read before it: concurrent batches each get a run of
        consecutive seqs (they interleave whole) and none is lost. Bumps ``version`` once. An
        empty batch is a no-op that does not look at the session.

        Args:
            timestamp: every item's time (UTC-aware); ``None`` for now.

        Returns:
            The stored checkpoints, in the order of ``items``.

        Raises:
            SessionNotFoundError: unknown, malformed, deleted, or (with ``user_id``) foreign id.
            InvalidStateTransitionError: the session is COMPLETED or FAILED (its checkpoints
                are final); nothing written.
            SessionValidationError: a bad item, ``user_id`` or ``timestamp``, or more than
                1,000 items; nothing written.
        """
        check_filter(user_id, "user_id")
        now = checked_now(self._clock)
        at = now if timestamp is None else check_aware(timestamp, "timestamp")
        batch = self._checkpoint_batch(items, at)
        if not batch:
            return []
        sid = parse_id(session_id)
        if sid is None:
            raise SessionNotFoundError(str(session_id))
        params: dict[str, Any] = {"b_sid": sid, "b_now": now, "b_at": at, "b_user": user_id,
                                  "b_added": len(batch)}  # fmt: skip
        dialect = self._dialect
        async with self._call("add_checkpoints", sid, dialect.append_shape) as db:
            first = await dialect.append_many(db, params, batch)
            if first is None:
                await self._refuse_content_write(db, session_id, params, "take checkpoints")
            db.invalidate_on_commit([sid])
        for i, cp in enumerate(batch):
            cp.seq = first + i
        return batch

    def _checkpoint_batch(self, items: object, at: datetime) -> list[SessionCheckpoint]:
        if isinstance(items, str | bytes | dict) or not isinstance(items, Sequence):
            raise SessionValidationError(
                f"items must be a sequence of (name, data) pairs, got {type(items).__name__}"
            )
        if len(items) > MAX_PAGE_SIZE:
            raise SessionValidationError(
                f"at most {MAX_PAGE_SIZE} items per add_checkpoints call, got {len(items)}"
            )
        batch = []
        for i, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise SessionValidationError(f"items[{i}] must be a (name, data) pair")
            name, data = item
            try:
                cp = SessionCheckpoint(name=name, data={} if data is None else data, timestamp=at)
            except ValidationError as exc:
                raise validation_error(exc, f"checkpoint items[{i}]") from exc
            self._check_sizes(**{f"items[{i}] data": cp.data})
            batch.append(cp)
        return batch

    async def pop_checkpoint(
        self, session_id: str, *, user_id: str | None = None
    ) -> SessionCheckpoint | None:
        """Remove and return the newest checkpoint; ``None`` when only ``session_created`` is left.

        The first checkpoint is never removed. Concurrent pops return distinct checkpoints. Bumps
        ``version``; the next append gets the popped seq again.

        Raises:
            SessionNotFoundError: unknown, malformed, deleted, or (with ``user_id``) foreign id.
            InvalidStateTransitionError: the session is COMPLETED or FAILED (its checkpoints
                are final); nothing removed.
        """
        check_filter(user_id, "user_id")
        sid = parse_id(session_id)
        if sid is None:
            raise SessionNotFoundError(str(session_id))
        params = {"b_sid": sid, "b_now": checked_now(self._clock), "b_user": user_id}
        async with self._call("pop_checkpoint", sid) as db:
            # The session's row lock, taken first, orders pops and appends on this session.
            count = (await db.execute(sql.POP[user_id is not None], params)).scalar()
            if count is None:
                await self._check_content_writable(db, session_id, params, "pop checkpoints")
                return None
            row = (await db.execute(sql.POPPED, {"b_sid": sid, "b_seq": count + 1})).one()
            db.invalidate_on_commit([sid])
        return checkpoint_from_row(row)

    async def truncate_checkpoints(
        self, session_id: str, after_seq: int, *, user_id: str | None = None
    ) -> int:
        """Rewind: remove every checkpoint with ``seq > after_seq``; return how many.

        ``after_seq`` is at least 1 (``session_created`` stays). Bumps ``version`` when anything
        was removed; the next append gets ``after_seq + 1``.

        Raises:
            SessionNotFoundError: unknown, malformed, deleted, or (with ``user_id``) foreign id.
            InvalidStateTransitionError: the session is COMPLETED or FAILED (its checkpoints
                are final); nothing removed.
            SessionValidationError: an ``after_seq`` below 1, or a bad ``user_id``.
        """
        check_filter(user_id, "user_id")
        check_int(after_seq, "after_seq", 1, MAX_INT)
        sid = parse_id(session_id)
        if sid is None:
            raise SessionNotFoundError(str(session_id))
        params = {
            "b_sid": sid,
            "b_now": checked_now(self._clock),
            "b_user": user_id,
            "b_after": after_seq,
        }
        async with self._call("truncate_checkpoints", sid) as db:
            if (await db.execute(sql.TRUNCATE[user_id is not None], params)).first() is None:
                await self._check_content_writable(db, session_id, params, "truncate checkpoints")
                return 0
            result = cast("CursorResult[Any]", await db.execute(sql.TRUNCATED, params))
            db.invalidate_on_commit([sid])
        return result.rowcount

    async def _check_content_writable(
        self, db: Call, session_id: str, params: dict[str, Any], change: str
    ) -> None:
        """Explain a write to a session's content that changed nothing: return if the session is
        live (there was nothing to change), raise if it is not there or is finished."""
        scoped = params["b_user"] is not None
        rows = await db.fetch(sql.STATE[scoped], params)
        if not rows:
            raise SessionNotFoundError(str(session_id))
        state = rows[0].state
        if state not in sql.LIVE_STATES:
            raise InvalidStateTransitionError(str(session_id), state, state, change=change)

    async def _refuse_content_write(
        self, db: Call, session_id: str, params: dict[str, Any], change: str
    ) -> NoReturn:
        """An append changed nothing: the session is not there for the caller, or finished."""
        await self._check_content_writable(db, session_id, params, change)
        # Not reached: an append misses only a session that is gone or finished, and neither
        # comes back to life.
        raise SessionNotFoundError(str(session_id))

    async def _hard_delete(self, sid: uuid.UUID, params: dict[str, Any]) -> bool:
        async with self._call("delete_session", sid) as db:
            stmt = sql.HARD_DELETE[params["b_user"] is not None]
            deleted = (await db.execute(stmt, params)).first() is not None
            if deleted:
                for rows in sql.HARD_DELETE_ROWS:  # see sql.SESSION_ROWS
                    await db.execute(rows, params)
                db.invalidate_on_commit([sid])
        return deleted

    # -- shared state ---------------------------------------------------------------------

    async def get_shared_state(
        self, agent_type: str, *, user_id: str | None = None
    ) -> dict[str, Any]:
        """The state shared by ``agent_type``'s sessions: app-wide, or ``user_id``'s.

        ``user_id=None`` is the app-wide document; any string (``""`` included) is that user's.
        Read from the database (never cached); ``{}`` when nothing was stored.

        Raises:
            SessionValidationError: an ``agent_type`` or ``user_id`` no state can have.
        """
        params = _scope(agent_type, user_id)
        async with self._call("get_shared_state", shape="read") as db:
            state = (await db.execute(sql.SHARED_STATE, params)).scalar()
        return {} if state is None else dict(state)

    async def update_shared_state(
        self,
        agent_type: str,
        changes: dict[str, Any],
        *,
        user_id: str | None = None,
        remove: Collection[str] = (),
    ) -> dict[str, Any]:
        """Set the top-level keys in ``changes`` and delete those in ``remove``, atomically.

        Concurrent updates of different keys all survive; of the same key, the last wins. Inside
        :meth:`bind` it joins the caller's transaction, with a checkpoint or session update.

        Example::

            await repo.update_shared_state("planner", {"theme": "dark"}, user_id="u1")
            await repo.update_shared_state("planner", {}, remove=["banner"])  # app-wide

        Returns:
            The whole document after the update.

        Raises:
            SessionValidationError: bad ``agent_type``, ``user_id``, ``changes`` (not a JSON
                object) or ``remove`` (not a collection of strings, or naming a key that
                ``changes`` sets), or a document that would outgrow ``max_payload_bytes``;
                nothing written.
        """
        params = _scope(agent_type, user_id)
        try:
            check_json_object(changes, "changes")
        except ValueError as exc:
            raise SessionValidationError(str(exc)) from None
        gone = _removed_keys(remove, changes)
        self._check_sizes(changes=changes)
        params["b_now"] = checked_now(self._clock)
        async with self._call("update_shared_state") as db:
            state = await db.dialect.merge_shared_state(db, params, changes, gone)
            # Checked after the merge, inside the transaction: a refused update is rolled back.
            self._check_sizes(**{"shared state": state})
        return dict(state)

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
            async with self._call("cleanup_stale_sessions") as db:
                sweep = db.dialect.stale_sweep(stale, batch_size, now)
                ids = (await db.execute(sweep)).scalars().all()
                db.invalidate_on_commit(ids)
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
            async with self._call("purge_deleted_sessions") as db:
                ids = (await db.execute(doomed)).scalars().all()
                if ids:
                    for table in sql.SESSION_ROWS:  # its rows first, explicitly: see there
                        await db.execute(delete(table).where(table.c.session_id.in_(ids)))
                    await db.execute(delete(sessions_table).where(S.id.in_(ids)))
            total += len(ids)
            if len(ids) < batch_size:
                break
        if total:
            logger.info("purged %d sessions deleted before %s", total, cutoff.isoformat())
        return total

    async def stats(self) -> SessionStats:
        """Counts by state and agent type, the oldest ACTIVE heartbeat, the checkpoint total."""
        async with self._call("stats", shape="read") as db:
            by_state = (
                await db.execute(select(S.state, func.count().label("n")).group_by(S.state))
            ).all()
            by_type = (
                await db.execute(
                    select(S.agent_type, func.count().label("n"))
                    .where(S.state != sql.DELETED)
                    .group_by(S.agent_type)
                )
            ).all()
            oldest = await db.scalar(
                select(func.min(S.last_heartbeat)).where(S.state == SessionState.ACTIVE.value)
            )
            checkpoints = await db.scalar(select(func.coalesce(func.sum(S.checkpoint_count), 0)))
        return SessionStats(
            by_state={row.state: row.n for row in by_state},
            by_agent_type={row.agent_type: row.n for row in by_type},
            oldest_active_heartbeat=oldest,
            checkpoints=int(checkpoints or 0),
        )


def _session(loaded: list[Any]) -> AgentSession | None:
    """The session a load statement found (a row with its ``recent`` checkpoints), if any."""
    if not loaded:
        return None
    return session_from_row(loaded[0], checkpoints_from_json(loaded[0].recent))


def _scope(agent_type: object, user_id: object) -> dict[str, Any]:
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


def _removed_keys(remove: object, changes: dict[str, Any]) -> list[str]:
    if isinstance(remove, str | bytes) or not isinstance(remove, Collection):
        raise SessionValidationError(
            f"remove must be a collection of key names, got {type(remove).__name__}"
        )
    keys = list(remove)
    for name in keys:
        if not isinstance(name, str):
            raise SessionValidationError(f"remove holds a {type(name).__name__}, not a key name")
        try:
            check_text(name, "a key in remove")
        except ValueError as exc:
            raise SessionValidationError(str(exc)) from None
        if name in changes:
            raise SessionValidationError(f"key {name!r} is both set (changes) and removed")
    return keys
