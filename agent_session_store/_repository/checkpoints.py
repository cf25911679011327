"""Checkpoints: appends (one or a batch), pop, truncate: the primitives framework backends use."""

from __future__ import annotations

import contextlib
import uuid
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
    check_idempotency_key,
    check_int,
    checked_now,
    parse_id,
)
from agent_session_store._calls import Call, Refused
from agent_session_store._dialects import Seal, Shape
from agent_session_store._repository.base import RepositoryBase
from agent_session_store._rows import checkpoint_from_row
from agent_session_store.errors import (
    InvalidStateTransitionError,
    SessionNotFoundError,
    SessionValidationError,
)
from agent_session_store.models import SessionCheckpoint, validation_error

# An append refused for a known key reads the stored checkpoint; it goes round again only when
# that checkpoint was removed (popped) in between.
_KNOWN_ROUNDS = 3


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
        idempotency_key: str | None = None,
    ) -> SessionCheckpoint:
        """Append one checkpoint; its cost does not depend on the history's length.

        Concurrent appends to one session all succeed with consecutive ``seq`` values. Bumps the
        session's ``version`` (copies read before it are stale).

        Args:
            timestamp: the checkpoint's time (UTC-aware), e.g. a framework's event time;
                ``None`` for now. The session's ``updated_at`` is now either way.
            idempotency_key: the caller's name for this append (1 to 256 characters, e.g. a
                framework's event id). When the session already holds a checkpoint under it,
                nothing is stored and that checkpoint is returned (its ``seq``; ``version``
                unchanged), also for a finished session. The check is part of the append's own
                statement; a removed checkpoint (pop, truncate) frees its key.

        Raises:
            SessionNotFoundError: unknown, malformed, deleted, expired, or (with ``user_id``)
                foreign id.
            InvalidStateTransitionError: the session is COMPLETED or FAILED (its checkpoints
                are final); nothing written.
            SessionValidationError: bad name, data, ``user_id``, ``timestamp`` (naive) or
                ``idempotency_key``; nothing written.
        """
        check_filter(user_id, "user_id")
        ikey = check_idempotency_key(idempotency_key, "idempotency_key")
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
                  "b_name": cp.name, "b_data": cp.data, "b_ikey": ikey}  # fmt: skip
        dialect = self._dialect
        sealed = self._fields.on
        if sealed:
            params.pop("b_data")  # no plaintext parameter: the data is sealed for its seq
        shape, hot = self._append_shape(sealed, one=True)
        for _ in range(_KNOWN_ROUNDS):
            try:
                async with self._call("add_checkpoint", sid, shape, hot=hot) as db:
                    async with self._refusable(db, ikey):
                        if sealed:
                            seq = await dialect.append_sealed(db, params, cp, self._sealer(sid))
                        else:
                            seq = await dialect.append(db, params, cp)
                    if seq is None:
                        if ikey is not None:
                            rows = await db.fetch(sql.KNOWN_CHECKPOINT[user_id is not None], params)
                            if rows:  # known: the stored one, nothing written
                                return self._stored(sid, rows[0])
                        await self._refuse_content_write(db, session_id, params, "take checkpoints")
                    db.invalidate_on_commit([sid])
            except Refused:  # PostgreSQL: a concurrent append of the key won; read its result
                async with self._call("add_checkpoint", sid, "read", hot=True) as db:
                    rows = await db.fetch(sql.KNOWN_CHECKPOINT[user_id is not None], params)
                if rows:
                    return self._stored(sid, rows[0])
                continue  # removed in between (a pop): append it after all
            cp.seq = seq
            return cp
        raise SessionNotFoundError(str(session_id))  # pragma: no cover - pops in a loop

    async def add_checkpoints(
        self,
        session_id: str,
        items: Sequence[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str | None]],
        *,
        user_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> list[SessionCheckpoint]:
        """Append ``(name, data)`` or ``(name, data, idempotency_key)`` items, all or none.

        One atomic append with no read before it: concurrent batches each get a run of
        consecutive seqs (they interleave whole) and none is lost. Bumps ``version`` once. An
        empty batch is a no-op that does not look at the session.

        Items with an idempotency key (see :meth:`add_checkpoint`) the session already holds
        are not stored again: they come back as stored (their seqs), and the new items are
        appended in their order as consecutive seqs, with one ``version`` bump, only when
        there is something new. A batch with keys costs one read of the known keys first.

        Args:
            timestamp: every item's time (UTC-aware); ``None`` for now.

        Returns:
            The stored checkpoints, in the order of ``items``.

        Raises:
            SessionNotFoundError: unknown, malformed, deleted, expired, or (with ``user_id``)
                foreign id.
            InvalidStateTransitionError: the session is COMPLETED or FAILED (its checkpoints
                are final) and the batch holds something new; nothing written.
            SessionValidationError: a bad item, ``user_id`` or ``timestamp``, one idempotency
                key twice in the batch, or more than 1,000 items; nothing written.
        """
        check_filter(user_id, "user_id")
        now = checked_now(self._clock)
        at = now if timestamp is None else check_aware(timestamp, "timestamp")
        batch, keys = self._checkpoint_batch(items, at)
        if not batch:
            return []
        sid = parse_id(session_id)
        if sid is None:
            raise SessionNotFoundError(str(session_id))
        params: dict[str, Any] = {"b_sid": sid, "b_now": now, "b_at": at, "b_user": user_id}
        dialect = self._dialect
        wanted = [k for k in keys if k is not None]
        sealed = self._fields.on
        shape, _ = self._append_shape(sealed, one=False)
        for _ in range(_KNOWN_ROUNDS):
            try:
                async with self._call("add_checkpoints", sid, shape) as db:
                    known: dict[str | None, SessionCheckpoint] = {}
                    if wanted:
                        found = sql.known_checkpoints(user_id is not None, wanted)
                        for row in await db.fetch(found, params):
                            known[row.idempotency_key] = self._stored(sid, row)
                    new = [(cp, k) for cp, k in zip(batch, keys, strict=True) if k not in known]
                    if new:
                        params["b_added"] = len(new)
                        fresh, fresh_keys = [cp for cp, _ in new], [k for _, k in new]
                        async with self._refusable(db, wanted or None):
                            if sealed:
                                first = await dialect.append_many_sealed(
                                    db, params, fresh, fresh_keys, self._sealer(sid)
                                )
                            else:
                                first = await dialect.append_many(db, params, fresh, fresh_keys)
                        if first is None:
                            await self._refuse_content_write(
                                db, session_id, params, "take checkpoints"
                            )
                        for i, (cp, _) in enumerate(new):
                            cp.seq = first + i
                        db.invalidate_on_commit([sid])
            except Refused:  # PostgreSQL: a concurrent append of one of the keys won
                continue
            return [
                cp if k is None or k not in known else known[k]
                for cp, k in zip(batch, keys, strict=True)
            ]
        raise SessionNotFoundError(str(session_id))  # pragma: no cover - pops in a loop

    def _append_shape(self, sealed: bool, *, one: bool) -> tuple[Shape, bool]:
        """Where an append runs, and whether on the hot path.

        A sealed append's seq is known only once the session's row is locked and its count
        bumped (encryption binds each checkpoint's data to its seq): two statements in one
        transaction on every database (``Dialect.append_sealed``), which on SQLite is the plain
        path's shape and on PostgreSQL costs a BEGIN and a COMMIT more than its single
        statement. The hot path runs transactions only where the driver's own do.
        """
        dialect = self._dialect
        if not sealed:
            return dialect.append_shape, one
        return "transaction", one and dialect.append_shape == "transaction"

    def _sealer(self, sid: uuid.UUID) -> Seal:
        """Seals a checkpoint's data for its seq in session ``sid``."""
        seal, key = self._fields.seal_checkpoint, str(sid)
        return lambda seq, data: seal(key, seq, data)

    def _stored(self, sid: uuid.UUID, row: Any) -> SessionCheckpoint:
        """A checkpoint read back from the database (known under its idempotency key), opened."""
        return self._fields.open_checkpoint(str(sid), checkpoint_from_row(row))

    def _refusable(self, db: Call, ikey: object) -> contextlib.AbstractAsyncContextManager[None]:
        """An append with idempotency keys: the unique index's refusal of a known key (two
        appends of it racing on PostgreSQL) becomes ``Refused``, outside a caller's transaction.

        Inside one, no savepoint is paid for on every append: the refusal (a race of two
        deliveries of one key) fails the caller's transaction as a ``StorageError``, and its
        retry finds the stored checkpoint.
        """
        if ikey is None or db.bound is not None:
            return contextlib.nullcontext()
        return self._refused_on_conflict(db)

    def _checkpoint_batch(
        self, items: object, at: datetime
    ) -> tuple[list[SessionCheckpoint], list[str | None]]:
        if isinstance(items, str | bytes | dict) or not isinstance(items, Sequence):
            raise SessionValidationError(
                "items must be a sequence of (name, data) or (name, data, idempotency_key), "
                f"got {type(items).__name__}"
            )
        if len(items) > MAX_PAGE_SIZE:
            raise SessionValidationError(
                f"at most {MAX_PAGE_SIZE} items per add_checkpoints call, got {len(items)}"
            )
        batch: list[SessionCheckpoint] = []
        keys: list[str | None] = []
        for i, item in enumerate(items):
            if not isinstance(item, tuple | list) or len(item) not in (2, 3):
                raise SessionValidationError(
                    f"items[{i}] must be a (name, data) or (name, data, idempotency_key) tuple"
                )
            name, data = item[0], item[1]
            key = check_idempotency_key(item[2] if len(item) == 3 else None, f"items[{i}] key")
            if key is not None and key in keys:
                raise SessionValidationError(
                    f"items[{i}] repeats the idempotency key {key!r} of an earlier item"
                )
            try:
                cp = SessionCheckpoint(name=name, data={} if data is None else data, timestamp=at)
            except ValidationError as exc:
                raise validation_error(exc, f"checkpoint items[{i}]") from exc
            self._check_sizes(**{f"items[{i}] data": cp.data})
            batch.append(cp)
            keys.append(key)
        return batch, keys

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
