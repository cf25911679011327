"""Reads: one session (by id or key), lists, checkpoint history, shared state, stats."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Uuid, func, literal, or_, select, tuple_

from agent_session_store import _cursor
from agent_session_store import _statements as sql
from agent_session_store._arguments import (
    MAX_INT,
    check_aware,
    check_filter,
    check_int,
    check_key,
    check_limit,
    checked_now,
    parse_id,
)
from agent_session_store._filters import session_filter
from agent_session_store._repository.base import RepositoryBase, scope
from agent_session_store._rows import (
    CHECKPOINT_COLUMNS,
    SESSION_COLUMNS,
    C,
    S,
    checkpoint_from_row,
    checkpoints_from_json,
    expired,
    session_from_row,
)
from agent_session_store.errors import SessionNotFoundError, SessionValidationError
from agent_session_store.models import (
    AgentSession,
    SessionCheckpoint,
    SessionPage,
    SessionState,
    SessionStats,
)
from agent_session_store.readthrough import read_through
from agent_session_store.tables import UtcDateTime, sessions_table


class Reads(RepositoryBase):
    """The reads of ``SessionRepository``."""

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
        return self._fields.open_session(session)  # after the cache: it holds what was stored

    async def _load_window(self, session_id: str, recent: int) -> AgentSession | None:
        """The session (see ``_load_cached``), unless it has expired by the repository's clock.

        A database read leaves an expired session out in its statement; a cached copy is
        checked here, after the hit, so it is never served past its ``expires_at``.
        """
        session = await self._load_cached(session_id, recent)
        if session is not None and expired(session, checked_now(self._clock)):
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

        Example (to get or create, use :meth:`get_or_create_session`)::

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
        params: dict[str, Any] = {"b_agent": agent_type, "b_user": user_id, "b_key": key,
                                  "b_now": checked_now(self._clock)}  # fmt: skip
        if self._read_cache is None:  # one statement: the session, found through its key
            params["b_recent"] = recent
            async with self._call("get_session_by_key", shape="read", hot=True) as db:
                rows = await db.fetch(db.dialect.load_by_key, params)
            if not rows:
                return None
            found = session_from_row(rows[0], checkpoints_from_json(rows[0].recent))
            return self._fields.open_session(found)
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
                return self._fields.open_session(session)
            # Deleted between the two reads: the key may already name a new session (a
            # delete and a re-create in between), so it is resolved once more.
        return None

    def _window(self, recent_checkpoints: int | None) -> int:
        if recent_checkpoints is None:
            return self._recent
        return check_int(recent_checkpoints, "recent_checkpoints", 0, MAX_INT)

    async def _load_cached(self, session_id: str, recent: int) -> AgentSession | None:
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
        params = {"b_sid": sid, "b_recent": self._recent if recent is None else recent,
                  "b_now": checked_now(self._clock)}  # fmt: skip
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
        key_prefix: str | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SessionPage:
        """One page of sessions, newest first, with keyset pagination.

        Deleted sessions are left out unless ``state=SessionState.DELETED`` is asked for, and
        expired ones always. Listed sessions carry ``checkpoint_count`` but no checkpoints (use
        ``get_session``). Every filter given must hold.

        Args:
            key_prefix: sessions whose key starts with it (matched literally: ``%`` and ``_``
                are plain characters).
            updated_after: sessions updated strictly after it (UTC-aware).
            updated_before: sessions updated strictly before it (UTC-aware).
            metadata: top-level key -> JSON scalar; sessions whose metadata holds all of them.

        Example::

            page = await repo.list_sessions(key_prefix="chat-", metadata={"team": "a"})

        Raises:
            SessionValidationError: a bad ``limit``, ``state``, ``cursor`` (including a
                cursor made for other filters), text filter (not a string, NUL, surrogate),
                naive time, or ``metadata`` filter (a value that is not a JSON scalar).
        """
        check_limit(limit)
        where = session_filter(
            agent_type=agent_type, user_id=user_id, state=state, key_prefix=key_prefix,
            updated_after=updated_after, updated_before=updated_before, metadata=metadata,
        )  # fmt: skip
        fingerprint = where.fingerprint()
        now = checked_now(self._clock)
        stmt = select(*SESSION_COLUMNS).where(*where.where(self._dialect.name, now))
        if cursor is not None:
            after_at, after_id = _cursor.decode(cursor, fingerprint)
            position = tuple_(literal(after_at, UtcDateTime()), literal(after_id, Uuid()))
            stmt = stmt.where(tuple_(S.created_at, S.id) < position)
        stmt = stmt.order_by(S.created_at.desc(), S.id.desc()).limit(limit + 1)
        async with self._call("list_sessions", shape="read") as db:
            rows = (await db.execute(stmt)).all()
        items = [self._fields.open_session(session_from_row(r, [])) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _cursor.encode(last.created_at, last.id, fingerprint)
        return SessionPage.model_construct(items=items, next_cursor=next_cursor)

    async def count_sessions(
        self,
        *,
        agent_type: str | None = None,
        user_id: str | None = None,
        state: SessionState | str | None = None,
        key_prefix: str | None = None,
        updated_after: datetime | None = None,
        updated_before: datetime | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """How many sessions :meth:`list_sessions` would list with these filters, in one query.

        Raises:
            SessionValidationError: a bad filter (as for :meth:`list_sessions`).
        """
        where = session_filter(
            agent_type=agent_type, user_id=user_id, state=state, key_prefix=key_prefix,
            updated_after=updated_after, updated_before=updated_before, metadata=metadata,
        )  # fmt: skip
        now = checked_now(self._clock)
        stmt = select(func.count()).select_from(sessions_table)
        stmt = stmt.where(*where.where(self._dialect.name, now))
        async with self._call("count_sessions", shape="read") as db:
            return int((await db.execute(stmt)).scalar_one())

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
        now = checked_now(self._clock)
        owner = select(S.id).where(
            S.id == sid, S.state != sql.DELETED, or_(S.expires_at.is_(None), S.expires_at > now)
        )
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
        return [self._fields.open_checkpoint(str(sid), checkpoint_from_row(r)) for r in rows]

    # -- write ----------------------------------------------------------------------------

    async def get_shared_state(
        self, agent_type: str, *, user_id: str | None = None
    ) -> dict[str, Any]:
        """The state shared by ``agent_type``'s sessions: app-wide, or ``user_id``'s.

        ``user_id=None`` is the app-wide document; any string (``""`` included) is that user's.
        Read from the database (never cached); ``{}`` when nothing was stored.

        Raises:
            SessionValidationError: an ``agent_type`` or ``user_id`` no state can have.
        """
        params = scope(agent_type, user_id)
        async with self._call("get_shared_state", shape="read") as db:
            state = (await db.execute(sql.SHARED_STATE, params)).scalar()
        return {} if state is None else self._fields.open_shared(params, dict(state))

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
