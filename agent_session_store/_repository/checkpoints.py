"""Checkpoints: appends (one or a batch), pop, truncate: the primitives framework backends use."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn, cast

from pydantic import ValidationError
from sqlalchemy import CursorResult

from agent_session_store import _statements as sql
from agent_session_store._arguments import (
    MAX_INT,
    MAX_PAGE_SIZE,
    check_aware,
    check_filter,
    check_int,
    checked_now,
    parse_id,
)
from agent_session_store._calls import Call
from agent_session_store._repository.base import RepositoryBase
from agent_session_store._rows import checkpoint_from_row
from agent_session_store.errors import (
    InvalidStateTransitionError,
    SessionNotFoundError,
    SessionValidationError,
)
from agent_session_store.models import SessionCheckpoint, validation_error


class Checkpoints(RepositoryBase):
    """The checkpoint appends and rewinds of ``SessionRepository``."""

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
        if self._fields.on:
            return (await self._add_sealed(session_id, params, [cp]))[0]
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
        if self._fields.on:
            return await self._add_sealed(session_id, params, batch)
        async with self._call("add_checkpoints", sid, dialect.append_shape) as db:
            first = await dialect.append_many(db, params, batch)
            if first is None:
                await self._refuse_content_write(db, session_id, params, "take checkpoints")
            db.invalidate_on_commit([sid])
        for i, cp in enumerate(batch):
            cp.seq = first + i
        return batch

    async def _add_sealed(
        self, session_id: str, params: dict[str, Any], batch: list[SessionCheckpoint]
    ) -> list[SessionCheckpoint]:
        """Append with encryption: each data sealed for its seq, known once the row is locked.

        Two statements in one transaction on every database (see ``Dialect.append_sealed``);
        on SQLite that is the plain path's shape, on PostgreSQL it costs a BEGIN and a COMMIT
        more than the plain single statement.
        """
        dialect, sid = self._dialect, params["b_sid"]
        seal, key = self._fields.seal_checkpoint, str(sid)
        params = {k: v for k, v in params.items() if k != "b_data"}  # no plaintext parameter
        one = len(batch) == 1
        hot = one and dialect.append_shape == "transaction"  # the driver runs a transaction
        async with self._call(
            "add_checkpoint" if one else "add_checkpoints", sid, "transaction", hot=hot
        ) as db:
            if one:
                first = await dialect.append_sealed(
                    db, params, batch[0], lambda seq, data: seal(key, seq, data)
                )
            else:
                first = await dialect.append_many_sealed(
                    db, params, batch, lambda seq, data: seal(key, seq, data)
                )
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
            # Opened inside the call: a value that does not open rolls the pop back.
            popped = self._fields.open_checkpoint(str(sid), checkpoint_from_row(row))
            db.invalidate_on_commit([sid])
        return popped

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
