"""Writes: create, update (compare-and-set), delete and heartbeat a session; shared state."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

from pydantic import ValidationError

from agent_session_store import _statements as sql
from agent_session_store._arguments import (
    MAX_INT,
    check_aware,
    check_expiry,
    check_filter,
    check_int,
    check_key,
    checked_now,
    parse_id,
)
from agent_session_store._calls import Call
from agent_session_store._dialects import Shape
from agent_session_store._errors import INTEGRITY_ERRORS
from agent_session_store._repository.base import RepositoryBase, scope
from agent_session_store._rows import checkpoint_values
from agent_session_store._sealed import Sealed
from agent_session_store._validation import check_json_object, check_text
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
    SessionState,
    allowed_sources,
    validation_error,
)

logger = logging.getLogger("agent_session_store.repository")

# update_session's compare-and-set, one statement per target state (the states it may be written
# from are fixed by the state machine), built once.
_UPDATE_TO = {
    target: sql.update_from(tuple(sorted(s.value for s in allowed_sources(target))))
    for target in SessionState
}


class Writes(RepositoryBase):
    """The session and shared-state writes of ``SessionRepository``."""

    # -- create ---------------------------------------------------------------------------

    async def create_session(
        self,
        agent_type: str,
        user_id: str = "",
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        expires_at: datetime | None = None,
    ) -> AgentSession:
        """Create an ACTIVE session, recording a ``session_created`` checkpoint.

        Args:
            key: the caller's own name for the session (printable text, 1 to 128 characters),
                unique among the live sessions of this ``agent_type`` and ``user_id``; read
                the session back with :meth:`get_session_by_key`. A deleted or expired
                session's key is free again.
            expires_at: when the session stops existing (UTC-aware, after now); from then on
                every read and write treats it as not found, and
                :meth:`purge_expired_sessions` removes it. ``None``: never.

        Raises:
            SessionExistsError: a live session of this agent type and user has ``key``
                (also when two creates race: exactly one wins); nothing written.
            SessionValidationError: bad agent_type, user_id, key, context, metadata or
                ``expires_at`` (naive, not after now, or past year 9999); nothing written.
        """
        now = checked_now(self._clock)
        expires = check_expiry(expires_at, now)
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
                expires_at=expires,
            )
        except ValidationError as exc:
            raise validation_error(exc, "session") from exc
        self._check_sizes(context=session.context, metadata=session.metadata)
        sid = uuid.UUID(session.session_id)
        dialect = self._dialect
        stored = self._sealed_new(session) if self._fields.on else session
        async with (
            self._call("create_session", sid, dialect.append_shape, hot=True) as db,
            self._key_is_free(db, session),
        ):
            await dialect.create(db, stored)
        logger.debug("created session %s (%s)", session.session_id, session.agent_type)
        return session

    def _sealed_new(self, session: AgentSession) -> AgentSession:
        """A new session as stored with encryption: its context and first checkpoint sealed."""
        sid, fields, first = session.session_id, self._fields, session.checkpoints[0]
        return session.model_copy(
            update={
                "context": fields.seal_context(sid, session.context),
                "checkpoints": [
                    first.model_copy(update={"data": fields.seal_checkpoint(sid, 1, first.data)})
                ],
            }
        )

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

    async def update_session(
        self, session: AgentSession, *, user_id: str | None = None
    ) -> AgentSession:
        """Store context, metadata, state, ``expires_at`` and new checkpoints; heartbeat; bump
        ``version``.

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
            SessionValidationError: bad context, metadata or checkpoint, a naive or
                out-of-range ``expires_at`` (any aware time is taken: one not after now expires
                the session with this write), or a ``version`` no stored session can have;
                nothing was written.
        """
        check_filter(user_id, "user_id")
        sid = parse_id(session.session_id)
        if sid is None or (user_id is not None and session.user_id != user_id):
            raise SessionNotFoundError(str(session.session_id))
        check_int(session.version, "version (pass the session as it was read)", 1, MAX_INT)
        target, pending = self._validated_changes(session)
        now = checked_now(self._clock)
        # Any aware time: one not after now expires the session with this very write.
        expires = (
            None if session.expires_at is None else check_aware(session.expires_at, "expires_at")
        )
        params = {
            "b_sid": sid,
            "b_owner": session.user_id,
            "b_version": session.version,
            "b_context": self._fields.seal_context(str(sid), session.context),
            "b_metadata": session.metadata,
            "b_state": target.value,
            "b_now": now,
            "b_added": len(pending),
            "b_expires": expires,
        }
        # Without new checkpoints the update is one statement: no transaction needed.
        shape: Shape = "transaction" if pending else "one statement"
        async with self._call("update_session", sid, shape, hot=not pending) as db:
            rows = await db.fetch(_UPDATE_TO[target], params)
            if not rows and self._fields.on and not pending:
                rows = await self._update_finished_sealed(db, sid, session, target, params)
            if not rows:
                await self._explain_failed_update(db, sid, session, target, now)
                raise AssertionError("unreachable")  # pragma: no cover
            row = rows[0]
            first_seq = row.checkpoint_count - len(pending) + 1
            stored = [cp.model_copy(update={"seq": first_seq + i}) for i, cp in enumerate(pending)]
            if stored:
                seal, key = self._fields.seal_checkpoint, str(sid)
                sealed = stored if not self._fields.on else [
                    cp.model_copy(update={"data": seal(key, first_seq + i, cp.data)})
                    for i, cp in enumerate(stored)
                ]  # fmt: skip
                await db.execute(
                    sql.INSERT_CHECKPOINT, [checkpoint_values(sid, cp) for cp in sealed]
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
                "expires_at": expires,
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

    async def _update_finished_sealed(
        self,
        db: Call,
        sid: uuid.UUID,
        session: AgentSession,
        target: SessionState,
        params: dict[str, Any],
    ) -> list[Any]:
        """Encryption on: a finished session's update that keeps its context, tried again.

        A finished session's context is final: the update matches only if the copy's context
        equals the stored one. A sealed context never equals the stored envelope (a fresh nonce
        every time), so when the stored context decrypts to the copy's, the update is sent again
        with the stored envelope itself. ``[]`` when it does not apply; the caller explains.
        """
        rows = await db.fetch(sql.STORED_CONTEXT, {"b_sid": sid})
        if not rows or rows[0].state not in sql.FINISHED_STATES:
            return []
        fields = cast("Sealed", self._fields)
        if _canonical(fields.open_context(str(sid), rows[0].context)) != _canonical(
            session.context
        ):
            return []
        return await db.fetch(_UPDATE_TO[target], {**params, "b_context": rows[0].context})

    async def _explain_failed_update(
        self,
        db: Call,
        sid: uuid.UUID,
        session: AgentSession,
        target: SessionState,
        now: datetime,
    ) -> None:
        rows = await db.fetch(sql.STORED_FOR_UPDATE, {"b_sid": sid})
        stored = rows[0] if rows else None
        if (
            stored is None
            or stored.state == sql.DELETED
            or stored.user_id != session.user_id
            or (stored.expires_at is not None and stored.expires_at <= now)
        ):
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
        params = scope(agent_type, user_id)
        try:
            check_json_object(changes, "changes")
        except ValueError as exc:
            raise SessionValidationError(str(exc)) from None
        gone = _removed_keys(remove, changes)
        self._check_sizes(changes=changes)
        params["b_now"] = checked_now(self._clock)
        sealed = self._fields.seal_shared(params, changes)
        async with self._call("update_shared_state") as db:
            stored = await db.dialect.merge_shared_state(db, params, sealed, gone)
            state = self._fields.open_shared(params, dict(stored))
            # Checked after the merge, inside the transaction: a refused update is rolled back.
            self._check_sizes(**{"shared state": state})
        return state


def _canonical(value: Any) -> str:
    # JSON equality as the database's compare-and-set sees it: 1, 1.0 and true all differ.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


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
