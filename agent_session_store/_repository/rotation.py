"""Rotation: re-encrypt every stored value under the active key, in bounded batches.

Re-encryption changes no content, so it leaves ``version`` and the timestamps alone: a worker
holding a copy read before it still writes with compare-and-set as usual (bumping the version
would make every live worker's next write a ``ConcurrentUpdateError`` for nothing). Each value
is rewritten only if it is still the one read (a compare-and-set on the stored value itself):
a writer that replaced it meanwhile wrote it under its own active key, and it is counted as
``skipped``. Cached copies of every session changed are invalidated when the batch commits, as
by any write, so no copy under an old key outlives the rotation where the cache is reachable.

The LangGraph checkpointer's tables (``agent_sessions_lg_*``) hold serialized bytes, sealed by
the saver (``integrations/_langgraph_sealed``) when the repository it is given encrypts: their
checkpoint bodies, channel values and pending writes are rewritten here too, the same way, and
counted in ``framework_values``. A list value's digest is redone under the active key's digest
key where the row holds the whole list, and cleared on a delta (whose whole list is not in the
row): a digest that does not match only costs the next put of that channel a whole copy.

Resumable: each batch is its own transaction, and values already under the active key are left
alone, so running it again after an interruption (or with writers on an old key) rewrites only
what is left.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Table, select, tuple_, update

from agent_session_store import _statements as sql
from agent_session_store._arguments import MAX_BATCH_SIZE, check_limit
from agent_session_store._repository.base import RepositoryBase
from agent_session_store._rows import C, S
from agent_session_store._sealed import Sealed, shared_place, shared_what
from agent_session_store.encryption import FieldEncryption
from agent_session_store.errors import SessionValidationError
from agent_session_store.integrations import _langgraph_sealed as lg
from agent_session_store.integrations._langgraph_values import array_header
from agent_session_store.tables import (
    lg_blobs_table,
    lg_checkpoints_table,
    lg_threads_table,
    lg_writes_table,
)


@dataclass(frozen=True)
class KeyRotation:
    """What ``rotate_keys`` re-encrypted: counts only, never values."""

    key_id: str
    contexts: int = 0
    checkpoints: int = 0
    shared_values: int = 0
    framework_values: int = 0  # the LangGraph checkpointer's checkpoints, channel values, writes
    skipped: int = 0  # values a writer replaced between the read and the rewrite


class Rotation(RepositoryBase):
    """The key rotation of ``SessionRepository``."""

    async def rotate_keys(self, *, batch_size: int = 500) -> KeyRotation:
        """Re-encrypt every context, checkpoint and shared-state value not under the active key,
        and the LangGraph checkpointer's stored values (checkpoints, channel values, writes).

        Values under another configured key, and plaintext ones when ``allow_plaintext`` is
        on, are rewritten under the active key; ``version`` and timestamps are unchanged.
        Works in batches of ``batch_size`` rows, each its own transaction unless bound; run it
        again to finish after an interruption.

        Returns:
            The counts of values rewritten.

        Raises:
            SessionValidationError: the repository has no encryption, or a bad ``batch_size``.
            DecryptionError: a value that does not decrypt (altered, moved, under a key not
                configured, or plaintext without ``allow_plaintext``); the batches before it
                are committed.
        """
        check_limit(batch_size, "batch_size", MAX_BATCH_SIZE)
        fields = self._fields
        if not isinstance(fields, Sealed):
            raise SessionValidationError("rotate_keys needs a repository with encryption=...")
        counts = {"contexts": 0, "checkpoints": 0, "shared_values": 0, "framework_values": 0,
                  "skipped": 0}  # fmt: skip
        await self._rotate_contexts(fields, batch_size, counts)
        await self._rotate_checkpoints(fields, batch_size, counts)
        await self._rotate_shared(fields, batch_size, counts)
        for table in (lg_checkpoints_table, lg_blobs_table, lg_writes_table):
            await self._rotate_langgraph(fields.encryption, table, batch_size, counts)
        return KeyRotation(key_id=fields.encryption.active, **counts)

    async def _rotate_contexts(self, fields: Sealed, batch: int, counts: dict[str, int]) -> None:
        after: uuid.UUID | None = None
        while True:
            stmt = select(S.id, S.context).order_by(S.id).limit(batch)
            if after is not None:
                stmt = stmt.where(S.id > after)
            async with self._call("rotate_keys") as db:
                rows = (await db.execute(stmt)).all()
                changed = []
                for row in rows:
                    if not fields.encryption.needs_sealing(row.context):
                        continue
                    sid = str(row.id)
                    new = fields.seal_context(sid, fields.open_context(sid, row.context))
                    params = {"b_sid": row.id, "b_old": row.context, "b_new": new}
                    if _rowcount(await db.execute(sql.REKEY_CONTEXT, params)):
                        changed.append(row.id)
                    else:
                        counts["skipped"] += 1
                counts["contexts"] += len(changed)
                db.invalidate_on_commit(changed)
            if len(rows) < batch:
                return
            after = rows[-1].id

    async def _rotate_checkpoints(self, fields: Sealed, batch: int, counts: dict[str, int]) -> None:
        after: tuple[uuid.UUID, int] | None = None
        while True:
            stmt = select(C.session_id, C.seq, C.data).order_by(C.session_id, C.seq).limit(batch)
            if after is not None:
                stmt = stmt.where(tuple_(C.session_id, C.seq) > tuple_(*after))
            async with self._call("rotate_keys") as db:
                rows = (await db.execute(stmt)).all()
                changed = set()
                for row in rows:
                    if not fields.encryption.needs_sealing(row.data):
                        continue
                    sid = str(row.session_id)
                    value = fields.open_data(sid, row.seq, row.data)
                    params = {"b_sid": row.session_id, "b_seq": row.seq, "b_old": row.data,
                              "b_new": fields.seal_checkpoint(sid, row.seq, value)}  # fmt: skip
                    if _rowcount(await db.execute(sql.REKEY_CHECKPOINT, params)):
                        counts["checkpoints"] += 1
                        changed.add(row.session_id)
                    else:
                        counts["skipped"] += 1
                db.invalidate_on_commit(sorted(changed))
            if len(rows) < batch:
                return
            after = (rows[-1].session_id, rows[-1].seq)

    async def _rotate_langgraph(
        self, enc: FieldEncryption, table: Table, batch: int, counts: dict[str, int]
    ) -> None:
        """One LangGraph table's values not under the active key, sealed again (see the module
        docstring); with their thread's agent type and key, which they are bound to."""
        T = lg_threads_table.c
        pk = list(table.primary_key.columns)
        value = table.c.checkpoint if table is lg_checkpoints_table else table.c.blob
        query = (
            select(table, T.agent_type, T.thread_key)
            .join(lg_threads_table, T.session_id == table.c.session_id)
            .order_by(*pk)
            .limit(batch)
        )
        after: tuple[Any, ...] | None = None
        while True:
            stmt = query if after is None else query.where(tuple_(*pk) > tuple_(*after))
            async with self._call("rotate_keys") as db:
                rows = (await db.execute(stmt)).all()
                for row in rows:
                    new = _langgraph_rekey(enc, table, row)
                    if new is None:
                        continue
                    cas = update(table).where(
                        *(c == row._mapping[c] for c in pk), value == row._mapping[value]
                    )
                    if _rowcount(await db.execute(cas.values(**new))):
                        counts["framework_values"] += 1
                    else:
                        counts["skipped"] += 1
            if len(rows) < batch:
                return
            after = tuple(rows[-1]._mapping[c] for c in pk)

    async def _rotate_shared(self, fields: Sealed, batch: int, counts: dict[str, int]) -> None:
        X = sql.X
        after: tuple[str, str, str] | None = None
        enc = fields.encryption
        while True:
            stmt = (
                select(X.agent_type, X.scope, X.user_id, X.state)
                .order_by(X.agent_type, X.scope, X.user_id)
                .limit(batch)
            )
            if after is not None:
                stmt = stmt.where(tuple_(X.agent_type, X.scope, X.user_id) > tuple_(*after))
            async with self._call("rotate_keys") as db:
                rows = (await db.execute(stmt)).all()
                for row in rows:
                    scope: dict[str, Any] = {
                        "b_agent": row.agent_type, "b_scope": row.scope, "b_user": row.user_id
                    }  # fmt: skip
                    stale = [k for k, v in row.state.items() if enc.needs_sealing(v)]
                    if not stale:
                        continue
                    new = dict(row.state)
                    for key in stale:
                        where = shared_place(scope, key)
                        value = enc.open(new[key], where, shared_what(scope, key), None)
                        new[key] = enc.seal(value, where)
                    params = {**scope, "b_old": row.state, "b_new": new}
                    if _rowcount(await db.execute(sql.REKEY_SHARED, params)):
                        counts["shared_values"] += len(stale)
                    else:
                        counts["skipped"] += len(stale)
            if len(rows) < batch:
                return
            after = (rows[-1].agent_type, rows[-1].scope, rows[-1].user_id)


def _langgraph_rekey(enc: FieldEncryption, table: Table, row: Any) -> dict[str, Any] | None:
    """The new values of a LangGraph row whose stored bytes are not under the active key (its
    value and, for a list's channel value, its digest), or ``None`` if it needs nothing."""
    agent, key, sid, ns = row.agent_type, row.thread_key, row.session_id, row.checkpoint_ns
    if table is lg_checkpoints_table:
        if not enc.bytes_need_sealing(row.checkpoint):
            return None
        where = lg.checkpoint_place(agent, key, ns, row.checkpoint_id, row.type)
        plain = enc.open_bytes(row.checkpoint, where, lg.checkpoint_what(row.checkpoint_id, ns),
                               str(sid))  # fmt: skip
        return {"checkpoint": enc.seal_bytes(plain, where)}
    if row.blob is None or not enc.bytes_need_sealing(row.blob):
        return None
    if table is lg_blobs_table:
        where = lg.blob_place(agent, key, ns, row.channel, row.version, row.type,
                              row.base_version, row.item_count)  # fmt: skip
        what = lg.blob_what(row.channel, row.version, ns)
        plain = enc.open_bytes(row.blob, where, what, str(sid))
        new: dict[str, Any] = {"blob": enc.seal_bytes(plain, where)}
        if row.item_count is not None:
            whole = row.base_version is None
            body = plain[len(array_header(row.item_count)) :] if whole else b""
            new["digest"] = enc.digest(body) if whole else None
        return new
    where = lg.write_place(agent, key, ns, row.checkpoint_id, row.task_id, row.idx,
                           row.channel, row.type)  # fmt: skip
    what = lg.write_what(row.checkpoint_id, row.task_id, row.idx, row.channel, ns)
    plain = enc.open_bytes(row.blob, where, what, str(sid))
    return {"blob": enc.seal_bytes(plain, where)}


def _rowcount(result: Any) -> int:
    return cast("CursorResult[Any]", result).rowcount
