"""What differs between the databases: one small object per dialect, chosen once per engine.

The repository speaks to a :class:`Dialect` for every operation whose SQL or round-trip shape
is not the same on PostgreSQL and SQLite, so its methods carry no dialect branches:

================  =========================================  ==============================
operation         PostgreSQL                                 SQLite
================  =========================================  ==============================
create, append,   one statement (writing CTEs): one round    two statements in a write
append many       trip, no BEGIN/COMMIT                      transaction
load a session    ``json_agg`` of the newest checkpoints     ``json_group_array``
create with a     a CTE frees an expired holder of the key   after the index refuses the
key               first, in the same statement               key: free an expired holder
shared state      an upsert that merges under the row lock   upsert (takes the write lock),
                                                             merge here, write back
stale sweep       ``FOR UPDATE SKIP LOCKED`` batch, ``||``   plain batch, ``json_set``
a key refused     inside a caller's transaction: savepoint   nothing to undo
statements        a cancellation goes into the statement     run to their end (a cursor
                  (asyncpg cancels it on the server)         cut halfway keeps the lock)
writers           run side by side (row locks)               queued in the process (one
                                                             writer at a time)
================  =========================================  ==============================

Dialect-neutral statements live in ``_statements``; a dialect only says which to run and how.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Protocol

from sqlalchemy import Executable, Result, Select, func, select, update

from agent_session_store import _statements as sql
from agent_session_store._errors import INTEGRITY_ERRORS
from agent_session_store._rows import S, checkpoint_values
from agent_session_store.models import AgentSession, SessionCheckpoint, SessionState
from agent_session_store.tables import sessions_table

# How an operation meets the database. "read": reads needing no common snapshot;
# "one statement": a single writing statement, which needs no transaction around it (saving
# the BEGIN and COMMIT round trips) where the connection allows; "transaction": several.
Shape = Literal["read", "one statement", "transaction"]
# What an append stores as a checkpoint's data, given its seq (encryption seals it there).
Seal = Callable[[int, dict[str, Any]], Any]


def _as_is(seq: int, data: dict[str, Any]) -> dict[str, Any]:
    return data


class Runner(Protocol):
    """Where a call runs its statements (``_calls.Call``)."""

    async def execute(self, statement: Executable, params: Any = None) -> Result[Any]: ...

    async def fetch(self, statement: Executable, params: dict[str, Any]) -> list[Any]: ...


class Dialect:
    """The operations that differ by database; subclasses per dialect.

    The ``driver_*`` methods are the round trips of the hot path (``_driver``) on the
    driver's own connection.
    """

    name: ClassVar[str]
    # Whether a cancelled statement must still run to its end (see the table above).
    finish_statements: ClassVar[bool]
    # Whether this process queues its writers on one lock.
    queue_writers: ClassVar[bool]
    # Whether a refused key inside a caller's transaction needs a savepoint to undo.
    savepoint_for_refusals: ClassVar[bool]
    # The shape of create, append and append-many.
    append_shape: ClassVar[Shape]

    def connection_lost(self, driver: Any) -> bool:
        """Whether the driver's connection is gone; an embedded database's never is."""
        return False

    def __init__(self) -> None:
        self.load = sql.LOAD[self.name]
        self.load_by_key = sql.LOAD_BY_KEY[self.name]

    async def driver_fetch(self, driver: Any, statement: str, arguments: list[Any]) -> list[Any]:
        """Run one compiled statement; its rows (none for a statement without RETURNING)."""
        raise NotImplementedError

    async def driver_commit(self, driver: Any) -> None:
        """Commit what the hot path's statements did (nothing to do where they autocommit).

        Awaited as it is: a caller cancelled meanwhile treats the call as in doubt (the
        commit may have happened) and the rollback that follows changes nothing either way.
        """

    async def driver_rollback(self, driver: Any) -> None:
        """Roll back what the hot path's statements did (nothing where they autocommit)."""

    async def create(self, db: Runner, session: AgentSession) -> None:
        """Insert ``session`` and its first checkpoint."""
        raise NotImplementedError

    async def append(self, db: Runner, params: dict[str, Any], cp: SessionCheckpoint) -> int | None:
        """Append ``cp`` (``params``: b_sid, b_now, b_at, b_user, b_ikey); its seq, or ``None``.

        A known ``b_ikey`` makes the checkpoints' unique index refuse it (a driver error).
        """
        raise NotImplementedError

    async def append_many(
        self,
        db: Runner,
        params: dict[str, Any],
        batch: list[SessionCheckpoint],
        keys: list[str | None],
    ) -> int | None:
        """Append ``batch`` (``params`` as ``append``, b_added) with idempotency ``keys``, one per
        item; the first seq, or ``None``."""
        raise NotImplementedError

    # The seq is known only once the session's row is locked and its count bumped: an append
    # whose data is sealed for its seq (encryption binds each checkpoint to its row) runs as
    # two statements in one transaction, on every database. SQLite's plain appends too.
    async def append_sealed(
        self, db: Runner, params: dict[str, Any], cp: SessionCheckpoint, seal: Seal
    ) -> int | None:
        """``append`` in two statements, storing ``seal(seq, cp.data)`` as the data."""
        bump = sql.APPEND_NEW if params["b_ikey"] is not None else sql.APPEND
        rows = await db.fetch(bump[params["b_user"] is not None], params)
        if not rows:
            return None
        seq = int(rows[0].checkpoint_count)
        await db.fetch(
            sql.INSERT_ONE_CHECKPOINT,
            {"b_sid": params["b_sid"], "b_seq": seq, "b_name": cp.name,
             "b_data": seal(seq, cp.data), "b_at": cp.timestamp, "b_ikey": params["b_ikey"]},
        )  # fmt: skip
        return seq

    async def append_many_sealed(
        self,
        db: Runner,
        params: dict[str, Any],
        batch: list[SessionCheckpoint],
        keys: list[str | None],
        seal: Seal,
    ) -> int | None:
        """``append_many`` in two statements, storing ``seal(seq, cp.data)`` as each data."""
        count = (await db.execute(sql.APPEND_MANY[params["b_user"] is not None], params)).scalar()
        if count is None:
            return None
        first: int = count - len(batch) + 1
        sid = params["b_sid"]
        rows = [
            checkpoint_values(
                sid,
                cp.model_copy(update={"seq": first + i, "data": seal(first + i, cp.data)}),
                key,
            )
            for i, (cp, key) in enumerate(zip(batch, keys, strict=True))
        ]
        await db.execute(sql.INSERT_CHECKPOINT, rows)
        return first

    async def merge_shared_state(
        self, db: Runner, params: dict[str, Any], changes: dict[str, Any], gone: list[str]
    ) -> dict[str, Any]:
        """Set ``changes`` and remove ``gone`` in the scope's document; return the new one."""
        raise NotImplementedError

    def stale_sweep(self, stale: Any, batch_size: int, now: Any) -> Executable:
        """Fail up to ``batch_size`` sessions matching ``stale``, returning their ids."""
        raise NotImplementedError

    def _sweep(self, batch: Select[Any], stale: Any, context: Any, now: Any) -> Executable:
        return (
            update(sessions_table)
            .where(S.id.in_(batch.scalar_subquery()), stale)
            .values(
                state=SessionState.FAILED.value,
                context=context,
                version=S.version + 1,
                updated_at=now,
            )
            .returning(S.id)
        )


class Postgres(Dialect):
    name = "postgresql"
    finish_statements = False
    queue_writers = False
    savepoint_for_refusals = True
    append_shape: ClassVar[Shape] = "one statement"

    def connection_lost(self, driver: Any) -> bool:
        """Whether the driver's connection is gone (the server closed it, or it broke)."""
        return bool(driver.is_closed())

    async def driver_fetch(self, driver: Any, statement: str, arguments: list[Any]) -> list[Any]:
        # asyncpg: no BEGIN was sent on this connection, so the statement commits on its own.
        rows: list[Any] = await driver.fetch(statement, *arguments)
        return rows

    async def create(self, db: Runner, session: AgentSession) -> None:
        first = session.checkpoints[0]
        await db.fetch(
            sql.CREATE_IN_ONE[session.key is not None],  # keyed: frees an expired holder
            {"b_sid": uuid.UUID(session.session_id), "b_agent": session.agent_type,
             "b_user": session.user_id, "b_context": session.context,
             "b_metadata": session.metadata, "b_now": session.created_at,
             "b_name": first.name, "b_data": first.data, "b_key": session.key,
             "b_expires": session.expires_at},
        )  # fmt: skip

    async def append(self, db: Runner, params: dict[str, Any], cp: SessionCheckpoint) -> int | None:
        keyed = params["b_ikey"] is not None
        rows = await db.fetch(sql.APPEND_IN_ONE[params["b_user"] is not None, keyed], params)
        return int(rows[0].seq) if rows else None

    async def append_many(
        self,
        db: Runner,
        params: dict[str, Any],
        batch: list[SessionCheckpoint],
        keys: list[str | None],
    ) -> int | None:
        items = [
            {"name": cp.name, "data": cp.data, "ikey": k} for cp, k in zip(batch, keys, strict=True)
        ]
        params = {**params, "b_items": items}
        stmt = sql.APPEND_MANY_IN_ONE[params["b_user"] is not None]
        seqs = (await db.execute(stmt, params)).scalars().all()
        return min(seqs) if seqs else None

    async def merge_shared_state(
        self, db: Runner, params: dict[str, Any], changes: dict[str, Any], gone: list[str]
    ) -> dict[str, Any]:
        params = {**params, "b_changes": changes, "b_remove": gone}
        state: dict[str, Any] = (await db.execute(sql.SHARED_UPSERT_PG, params)).scalar_one()
        return state

    def stale_sweep(self, stale: Any, batch_size: int, now: Any) -> Executable:
        # Rows another sweeper holds are skipped, not waited for. Chosen once, in a
        # materialized CTE: as a subquery the planner may run the LIMIT again for each row,
        # and each run skips the rows this statement just locked, so one batch would grow
        # past batch_size.
        chosen = (
            select(S.id)
            .where(stale)
            .order_by(S.last_heartbeat)
            .limit(batch_size)
            .with_for_update(skip_locked=True)
            .cte("batch")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        reason = func.jsonb_build_object("failure_reason", "heartbeat_timeout")
        return self._sweep(select(chosen.c.id), stale, S.context.op("||")(reason), now)


class Sqlite(Dialect):
    name = "sqlite"
    finish_statements = True
    # SQLite has one writer at a time; writers that wait on its lock sleep in the busy
    # handler and a crowd of them collapses to a few dozen writes a second. Queueing this
    # process's writers on an asyncio lock instead keeps them at full speed.
    queue_writers = True
    savepoint_for_refusals = False
    append_shape: ClassVar[Shape] = "transaction"

    # aiosqlite runs each of these as one function on the connection's thread, to its end
    # whatever happens to the awaiting caller, and queues later calls (the rollback of a
    # cancelled call) behind it: no statement is ever left halfway, so none is run_to_end.
    async def driver_fetch(self, driver: Any, statement: str, arguments: list[Any]) -> list[Any]:
        rows: list[Any] = await driver.execute_fetchall(statement, arguments)
        return rows

    async def driver_commit(self, driver: Any) -> None:
        await driver.commit()

    async def driver_rollback(self, driver: Any) -> None:
        await driver.rollback()

    async def create(self, db: Runner, session: AgentSession) -> None:
        first = session.checkpoints[0]
        params = {"b_sid": uuid.UUID(session.session_id), "b_agent": session.agent_type,
                  "b_user": session.user_id, "b_context": session.context,
                  "b_metadata": session.metadata, "b_now": session.created_at,
                  "b_key": session.key, "b_expires": session.expires_at}  # fmt: skip
        try:
            await db.fetch(sql.INSERT_SESSION_ROW, params)
        except INTEGRITY_ERRORS:
            # The key is taken: by an expired session, its key is free. Freed here, after the
            # refusal, so that a create pays for it only when the key is held (SQLite undoes the
            # refused statement alone; the transaction and its write lock stay).
            if session.key is None or not await db.fetch(sql.FREE_EXPIRED_KEY, params):
                raise
            await db.fetch(sql.INSERT_SESSION_ROW, params)
        await db.fetch(
            sql.INSERT_ONE_CHECKPOINT,
            {"b_sid": params["b_sid"], "b_seq": 1, "b_name": first.name, "b_data": first.data,
             "b_at": first.timestamp, "b_ikey": None},
        )  # fmt: skip

    async def append(self, db: Runner, params: dict[str, Any], cp: SessionCheckpoint) -> int | None:
        return await self.append_sealed(db, params, cp, _as_is)

    async def append_many(
        self,
        db: Runner,
        params: dict[str, Any],
        batch: list[SessionCheckpoint],
        keys: list[str | None],
    ) -> int | None:
        return await self.append_many_sealed(db, params, batch, keys, _as_is)

    async def merge_shared_state(
        self, db: Runner, params: dict[str, Any], changes: dict[str, Any], gone: list[str]
    ) -> dict[str, Any]:
        # The upsert takes SQLite's write lock before the read: no writer can come in between
        # the read and the write below, in this process or another.
        params = {**params, "b_changes": changes}
        stored = (await db.execute(sql.SHARED_UPSERT_SQLITE, params)).scalar_one()
        state = {k: v for k, v in stored.items() if k not in gone} | changes
        await db.execute(sql.SHARED_SET, {**params, "b_changes": state})
        return state

    def stale_sweep(self, stale: Any, batch_size: int, now: Any) -> Executable:
        batch = select(S.id).where(stale).order_by(S.last_heartbeat).limit(batch_size)
        reason = func.json_set(S.context, "$.failure_reason", "heartbeat_timeout")
        return self._sweep(batch, stale, reason, now)


_DIALECTS: dict[str, type[Dialect]] = {"postgresql": Postgres, "sqlite": Sqlite}


def for_name(name: str) -> Dialect:
    """The dialect object for SQLAlchemy dialect ``name``; any other database is refused."""
    try:
        return _DIALECTS[name]()
    except KeyError:
        raise ValueError(
            f"agent_session_store runs on PostgreSQL (asyncpg) and SQLite (aiosqlite), not {name!r}"
        ) from None
