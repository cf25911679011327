"""A LangGraph checkpointer on agent_session_store: ``SessionStoreSaver``.

Install with ``pip install agent-session-store[langgraph]``, then compile the graph with it::

    from agent_session_store.integrations.langgraph import SessionStoreSaver

    async with SessionStoreSaver.from_url("postgresql+asyncpg://app@db/app") as saver:
        graph = builder.compile(checkpointer=saver)
        await graph.ainvoke(inputs, {"configurable": {"thread_id": "chat-42", "user_id": "alice"}})

How LangGraph's model maps onto the repository's:

=====================  ==================================================================
LangGraph              agent_session_store
=====================  ==================================================================
thread                 a session of agent type ``"langgraph"`` (configurable), PAUSED
                       between runs so the stale sweep never fails an idle thread
``thread_id``          the session's ``key`` (``session_key(thread_id)``), unique per agent
                       type across users: LangGraph reads threads without a user
``user_id``            ``configurable["user_id"]`` when the thread was created (else ``""``);
                       with ``user_id`` in a config, only that user's threads are seen
checkpoints            ``agent_sessions_lg_checkpoints``; channel values in
                       ``agent_sessions_lg_blobs`` (once per thread, namespace, channel and
                       version); pending writes in ``agent_sessions_lg_writes``
``adelete_thread``     a hard delete of the session, its LangGraph rows included
=====================  ==================================================================

Two writers putting children of the same parent checkpoint (two runs racing on one thread,
or time travel with ``update_state``) are both kept: siblings with the same parent, each
listed by ``alist``; the thread's latest is the one with the greater checkpoint id (LangGraph's
ids grow with time). Nothing is overwritten.

With a repository built with ``encryption=FieldEncryption(...)``, every checkpoint body, channel
value and pending write is sealed (AES-256-GCM) before it is sent and opened after it is read,
bound to its thread and row (``_langgraph_sealed``); metadata stays readable, for
``alist(filter=...)``. See docs/security.md.

Stored bytes are read by a strict serializer by default: only LangGraph's and LangChain's own
types (and those LangGraph allows for a compiled graph's state schema) are rebuilt; a value
naming any other type raises :class:`~agent_session_store.SessionValidationError` instead of
importing it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from redis.asyncio import Redis
from sqlalchemy import Executable, Select, delete, insert, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_session_store import (
    AgentSession,
    InvalidStateTransitionError,
    RedisCache,
    SessionExistsError,
    SessionNotFoundError,
    SessionRepository,
    SessionValidationError,
    StorageError,
    create_engine,
)
from agent_session_store._arguments import checked_now
from agent_session_store._calls import Call, Database
from agent_session_store._errors import INTEGRITY_ERRORS, storage_errors
from agent_session_store._settle import run_to_end
from agent_session_store._validation import check_json_object, check_text
from agent_session_store.encryption import FieldEncryption
from agent_session_store.integrations import _langgraph_sql as sql
from agent_session_store.integrations._keys import session_key
from agent_session_store.integrations._langgraph_sealed import values_for
from agent_session_store.migrations import SchemaGate
from agent_session_store.tables import (
    lg_blobs_table,
    lg_checkpoints_table,
    lg_threads_table,
    lg_writes_table,
)

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        get_checkpoint_id,
        get_serializable_checkpoint_metadata,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol

    from agent_session_store.integrations._langgraph_serde import StrictSerializer
    from agent_session_store.integrations._langgraph_values import (
        Grown,
        blob_row,
        list_value,
        whole,
    )
except ImportError as exc:  # pragma: no cover - the extra is part of the dev install
    raise ImportError(
        "agent_session_store.integrations.langgraph needs langgraph-checkpoint: "
        "pip install 'agent-session-store[langgraph]'"
    ) from exc

__all__ = ["SessionStoreSaver", "StrictSerializer"]

logger = logging.getLogger(__name__)

DEFAULT_AGENT_TYPE = "langgraph"
_ATTEMPTS = 8  # a thread created or deleted by another writer between look-up and write
_PAGE = 100  # checkpoints read per round trip by alist
_REMEMBERED = 4096  # channels whose last stored list a saver remembers (PostgreSQL's aput)
_LIVE = ("active", "paused")

_T = TypeVar("_T")


@dataclass(frozen=True)
class _Thread:
    session_id: uuid.UUID
    user_id: str
    state: str


class _ListValue(NamedTuple):
    """A stored list value, as a delta's base needs it (``_langgraph_values.blob_row``)."""

    version: str
    item_count: int
    size: int
    delta_size: int
    digest: bytes


class _CheckpointRow(NamedTuple):
    session_id: uuid.UUID
    checkpoint_ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    type: str
    checkpoint: bytes
    metadata: Any
    thread_id: str


class _BlobRow(NamedTuple):
    session_id: uuid.UUID
    checkpoint_ns: str
    channel: str
    version: str
    type: str
    blob: bytes | None
    base_version: str | None
    item_count: int | None


@dataclass(frozen=True)
class _Target:
    """Where a config points: its thread, namespace and checkpoint (``None``: the latest)."""

    thread_id: str
    key: str
    ns: str
    checkpoint_id: str | None
    user_id: str | None


class SessionStoreSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer storing threads as sessions of a ``SessionRepository``.

    Args:
        repository: the repository to store into (its engine, cache and tenancy).
        serde: LangGraph's serializer for checkpoints, channel values and writes; by default
            a :class:`StrictSerializer` (no type outside the allow-list is ever imported).
        agent_type: the agent type of the threads' sessions.

    With the repository's ``encryption``, what LangGraph stores is encrypted too (the module's
    docstring); a value that does not decrypt raises ``DecryptionError`` naming the thread's
    session.

    The async methods are the checkpointer; the sync ones (``get_tuple``, ``list``, ``put``,
    ...) may be called from other threads while the event loop the saver was first used on
    runs, as LangGraph's async savers allow.

    Example::

        saver = SessionStoreSaver(repo)
        graph = builder.compile(checkpointer=saver)
        await graph.ainvoke({"messages": [...]}, {"configurable": {"thread_id": "t-1"}})
    """

    def __init__(
        self,
        repository: SessionRepository,
        *,
        serde: SerializerProtocol | None = None,
        agent_type: str = DEFAULT_AGENT_TYPE,
    ) -> None:
        super().__init__(serde=serde or StrictSerializer())
        check_text(agent_type, "agent_type")
        self.repository = repository
        self.agent_type = agent_type
        # The repository's encryption seals what LangGraph stores too (_langgraph_sealed).
        self._values = values_for(repository.encryption)
        self._factory = repository.session_factory
        self._statements: sql.Statements | None = None
        self._gate = SchemaGate()
        self._db = Database(repository.session_factory)
        # (agent type, thread key, namespace, channel) -> the last list value stored, oldest
        # first: where PostgreSQL's aput cuts the next delta without reading first.
        self._last_lists: dict[tuple[str, str, str, str], _ListValue] = {}
        self._writers: asyncio.Lock | None = None
        self._engine: AsyncEngine | None = None
        self._redis: Redis | None = None
        self._cache: RedisCache | None = None
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    @classmethod
    def from_url(
        cls,
        db_url: str,
        *,
        redis_url: str | None = None,
        agent_type: str = DEFAULT_AGENT_TYPE,
        signing_keys: Sequence[bytes] | None = None,
        encryption: FieldEncryption | None = None,
    ) -> SessionStoreSaver:
        """A saver that owns its engine (and Redis client); close it with ``async with``.

        The schema comes from the library's migrations (``agent-session-store db upgrade
        --url ...``); the first call raises ``SchemaOutOfDateError`` naming that command when
        the database is behind. Nothing is created at run time. ``signing_keys`` sign the
        cache's entries (``RedisCache(signing_keys=...)``); ``encryption`` encrypts what the
        saver and the repository store (``SessionRepository(encryption=...)``).

        Example::

            async with SessionStoreSaver.from_url("sqlite+aiosqlite:///graph.db") as saver:
                graph = builder.compile(checkpointer=saver)
        """
        engine = create_engine(db_url)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        redis = cache = None
        if redis_url is not None:
            redis = Redis.from_url(redis_url)
            cache = RedisCache(redis, namespace="langgraph-sessions", signing_keys=signing_keys)
        repository = SessionRepository(factory, cache=cache, encryption=encryption)
        saver = cls(repository, agent_type=agent_type)
        saver._engine, saver._redis, saver._cache = engine, redis, cache
        return saver

    async def aclose(self) -> None:
        """Close what :meth:`from_url` opened (engine, Redis client); nothing otherwise."""
        if self._cache is not None:
            await self._cache.repair()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = self._cache = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def __aenter__(self) -> SessionStoreSaver:
        self._bind_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    def _bind_loop(self) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()

    async def _sql(self) -> sql.Statements:
        """The dialect's statements, learned from the factory's engine (no round trip)."""
        self._bind_loop()
        if self._statements is None:

            async def check() -> str:
                with storage_errors("langgraph schema check"):
                    async with self._factory() as db:
                        # Once: the schema is at the library's head (else SchemaOutOfDateError
                        # naming the command to run), before any statement needs its tables.
                        await self._gate.pass_through(db)
                        return db.get_bind().dialect.name

            self._statements = sql.Statements(await run_to_end(check()))
            # SQLite has one writer at a time; this saver's writers queue here rather than
            # in SQLite's busy handler (see _dialects.Sqlite.queue_writers): on the same lock
            # as the writes of _write_into, which the call machinery queues.
            self._writers = None if self._statements.postgres else self._db._writers
        return self._statements

    async def _transaction(
        self,
        operation: str,
        work: Callable[[AsyncSession], Awaitable[_T]],
        *,
        write: bool = False,
    ) -> _T:
        """Run ``work`` in a transaction of its own, committed when it returns.

        Reads run in a transaction too: behind a transaction pooler the server connection is
        ours only from BEGIN to COMMIT. Once started, the transaction runs to its end (commit,
        or rollback on an error) even if the caller is cancelled meanwhile, then the caller gets
        its ``CancelledError``: a cancelled call happened whole or not at all, and leaves no
        connection checked out (on SQLite, no write lock held). Writers on SQLite queue first,
        and may be cancelled while they wait.

        Raises:
            _Retry: a write's row was refused by a key (a thread created or deleted meanwhile).
        """

        async def run() -> _T:
            with storage_errors(operation):
                try:
                    async with self._factory() as db, db.begin():
                        return await work(db)
                except INTEGRITY_ERRORS as exc:
                    raise _Retry from exc

        if write and self._writers is not None:
            async with self._writers:
                return await run_to_end(run())
        return await run_to_end(run())

    async def _read(
        self, operation: str, statement: Executable, params: dict[str, Any]
    ) -> list[Any]:
        """The rows of one read statement built once (``b_`` parameters), in one round trip.

        Through the repository's call machinery (``_calls.Database``): on the driver's pooled
        connection where it may (compiled once, no BEGIN/COMMIT on PostgreSQL), else through
        SQLAlchemy, always in a transaction behind a transaction pooler.
        """
        async with self._db.call(operation, None, "read", cache=None, model=AgentSession,
                                 hot=True) as call:  # fmt: skip
            return await call.fetch(statement, params)

    async def _write_into(self, operation: str, work: Callable[[Call], Awaitable[_T]]) -> _T:
        """Run ``work`` (statements built once, run with ``Call.fetch``) in one transaction.

        Through the repository's call machinery, as :meth:`_read`: on SQLite on the driver's
        connection, queued behind this process's other writers; on PostgreSQL through
        SQLAlchemy in a transaction (the driver's path would commit each statement alone). A
        cancellation between statements rolls the transaction back; one during the commit
        lets it finish: the write happened whole or not at all. A row refused by a key (the
        thread deleted meanwhile) counts as no thread: ``_NotThere``.
        """
        postgres = (await self._sql()).postgres
        try:
            async with self._db.call(operation, None, "transaction", cache=None,
                                     model=AgentSession, hot=not postgres) as call:  # fmt: skip
                return await work(call)
        except StorageError as exc:
            if isinstance(exc.__cause__, INTEGRITY_ERRORS):
                raise _NotThere from exc
            raise

    async def _one_statement(
        self, operation: str, statement: Executable, params: dict[str, Any]
    ) -> list[Any]:
        """One write statement built once, committed alone (PostgreSQL: one round trip on the
        driver's connection where it may; in a transaction behind a transaction pooler).

        No rows when a key refused it (the thread deleted meanwhile): nothing was written, and
        the caller takes the look-up path, as for a thread that is not there.
        """
        try:
            async with self._db.call(operation, None, "one statement", cache=None,
                                     model=AgentSession, hot=True) as call:  # fmt: skip
                return await call.fetch(statement, params)
        except StorageError as exc:
            if isinstance(exc.__cause__, INTEGRITY_ERRORS):
                return []
            raise

    async def _put_in_one(
        self,
        target: _Target,
        row: dict[str, Any],
        blob_rows: list[tuple[dict[str, Any], Grown | None]],
    ) -> bool:
        """PostgreSQL's aput into a live thread: the checkpoint and its values in one statement
        (``Statements.put_in_one``). False (nothing written) for a thread that is not there,
        not live or another user's: ``_write``'s way then creates it or says why not.

        A grown list's delta is cut against the last list value this saver stored for that
        channel of the thread (``_last_lists``), else against the newest one stored below its
        version (one read). The statement stores the delta only if that base is still there
        with the digest it was cut against (another process may have pruned it), else the
        value whole: so no read comes before the write of a conversation's next turn.
        """
        stmts = await self._sql()
        keys = self._keys(target)
        digests: dict[str, bytes] = {}

        async def find_base(sid: uuid.UUID, ns: str, channel: str, version: str) -> Any:
            known = self._last_lists.get((self.agent_type, target.key, ns, channel))
            if known is not None and known.version < version:
                found = known
            else:
                params = {**keys, "b_ns": ns, "b_channel": channel, "b_version": version}
                rows = await self._read("langgraph aput", sql.LIST_BASE_BY_KEY, params)
                if not rows:
                    return None
                found = _ListValue(rows[0].version, rows[0].item_count, rows[0].size,
                                   rows[0].delta_size, rows[0].digest)  # fmt: skip
            digests[channel] = found.digest
            return found

        vals = self._values
        stored = [
            await blob_row(find_base, _NO_SESSION, blob, grown, vals.digest)
            for blob, grown in blob_rows
        ]
        delta = [r["base_version"] is not None for r in stored]
        # A delta's whole value, stored instead when its base is gone: sealed as a whole value.
        wholes = [
            ({**r, "blob": b["blob"], "base_version": None} if d else None)
            for r, (b, _), d in zip(stored, blob_rows, delta, strict=True)
        ]
        params = {**keys, **{f"b_{k}": v for k, v in row.items()}}
        params.update(_columns(self._sealed_blobs(target, stored), sql.BLOB_VALUES))
        params["b_wholes"] = [
            None if w is None else vals.seal_blob(self.agent_type, target.key, w) for w in wholes
        ]
        params["b_base_digests"] = [
            digests[r["channel"]] if d else None for r, d in zip(stored, delta, strict=True)
        ]
        statement = stmts.put_in_one[target.user_id is not None]
        if not await self._one_statement("langgraph aput", statement, params):
            return False
        self._remember(target, stored)
        return True

    def _sealed_blobs(self, target: _Target, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` (from ``blob_row``) with their values sealed, when the values are encrypted:
        after the delta is cut, so each row seals what it stores, bound to its base."""
        vals = self._values
        if vals.on:
            for r in rows:
                r["blob"] = vals.seal_blob(self.agent_type, target.key, r)
        return rows

    def _remember(self, target: _Target, stored: list[dict[str, Any]]) -> None:
        """The list values just stored: the next put of each channel cuts its delta on it."""
        for r in stored:
            if r["item_count"] is None:
                continue
            key = (self.agent_type, target.key, r["checkpoint_ns"], r["channel"])
            self._last_lists.pop(key, None)
            self._last_lists[key] = _ListValue(
                r["version"], r["item_count"], r["size"], r["delta_size"], r["digest"]
            )
            if len(self._last_lists) > _REMEMBERED:
                del self._last_lists[next(iter(self._last_lists))]

    async def _find(self, key: str) -> _Thread | None:
        async def read(db: AsyncSession) -> Any:
            return (await db.execute(sql.thread_rows(self.agent_type, key))).first()

        row = await self._transaction("langgraph get_thread", read)
        if row is None or row.state == sql.DELETED:
            return None
        if row.expires_at is not None and row.expires_at <= self._now():
            return None  # expired: absent, and its key free for a new thread
        return _Thread(row.session_id, row.user_id, row.state)

    async def _write(
        self,
        operation: str,
        target: _Target,
        work: Callable[[AsyncSession, uuid.UUID], Awaitable[_T]],
        *,
        create_for: str | None = None,
        into_thread: Callable[[Call], Awaitable[_T]] | None = None,
    ) -> _T:
        """Run ``work`` in one write transaction on the thread's session, creating it if need be.

        ``create_for``: the owner of a thread created here (the config's user, else ``""``).
        ``into_thread``: the same write for a thread that exists, is live and is the config's
        user's, finding the thread inside its own statements (one transaction, no look-up
        before, statements built once: see :meth:`_write_into`); it raises ``_NotThere``
        otherwise, and the look-up below then creates the thread or says why it refuses.
        """
        await self._sql()
        if into_thread is not None:
            try:
                return await self._write_into(operation, into_thread)
            except _NotThere:
                pass
        for _ in range(_ATTEMPTS):
            found = await self._find(target.key)
            if found is not None:
                if target.user_id is not None and found.user_id != target.user_id:
                    raise SessionNotFoundError(target.thread_id)
                if found.state not in _LIVE:
                    raise InvalidStateTransitionError(
                        str(found.session_id), found.state, found.state, change="take checkpoints"
                    )
            owner = create_for if create_for is not None else (target.user_id or "")

            async def write(
                db: AsyncSession, found: _Thread | None = found, owner: str = owner
            ) -> _T:
                sid = found.session_id if found else await self._create(db, target, owner)
                return await work(db, sid)

            try:
                return await self._transaction(operation, write, write=True)
            except _Retry:
                continue  # created or deleted by another writer in between: look again
        raise StorageError(
            f"{operation}: thread {target.thread_id!r:.140} kept being created and deleted by "
            "other writers; nothing was written: retry"
        )

    async def _create(self, db: AsyncSession, target: _Target, owner: str) -> uuid.UUID:
        """Create the thread's session (PAUSED) and its thread row, in the caller's transaction."""
        try:
            # First a write: on SQLite the transaction takes the write lock before any read.
            await db.execute(sql.stale_thread_rows(self.agent_type, target.key, self._now()))
            bound = self.repository.bind(db)
            session = await bound.create_session(self.agent_type, owner, key=target.key)
            session.pause()  # a thread is idle between runs: the stale sweep leaves it alone
            await bound.update_session(session)
            await db.execute(
                insert(lg_threads_table).values(
                    agent_type=self.agent_type,
                    thread_key=target.key,
                    thread_id=target.thread_id,
                    session_id=uuid.UUID(session.session_id),
                )
            )
        except SessionExistsError as exc:
            raise _Retry from exc
        except INTEGRITY_ERRORS as exc:
            raise _Retry from exc
        logger.debug("LangGraph thread stored as session %s", session.session_id)
        return uuid.UUID(session.session_id)

    def _target(self, config: RunnableConfig | None) -> _Target:
        configurable = (config or {}).get("configurable") or {}
        thread_id = configurable.get("thread_id")
        if thread_id is None:
            raise SessionValidationError(
                "the config has no configurable['thread_id']; pass "
                "{'configurable': {'thread_id': ...}} to name the thread"
            )
        if isinstance(thread_id, uuid.UUID | int):
            thread_id = str(thread_id)
        if not isinstance(thread_id, str):
            raise SessionValidationError(
                f"thread_id must be a string, got {type(thread_id).__name__}"
            )
        ns = configurable.get("checkpoint_ns") or ""
        checkpoint_id = configurable.get("checkpoint_id")
        user_id = configurable.get("user_id")
        try:
            check_text(thread_id, "thread_id")
            if not isinstance(ns, str):
                raise ValueError(f"checkpoint_ns must be a string, got {type(ns).__name__}")
            check_text(ns, "checkpoint_ns")
            if checkpoint_id is not None:
                if not isinstance(checkpoint_id, str):
                    raise ValueError("checkpoint_id must be a string")
                check_text(checkpoint_id, "checkpoint_id")
            if user_id is not None:
                if not isinstance(user_id, str) or len(user_id) > 256:
                    raise ValueError("user_id must be a string of at most 256 characters")
                check_text(user_id, "user_id")
        except ValueError as exc:
            raise SessionValidationError(f"{exc}; nothing was read or written") from None
        return _Target(thread_id, session_key(thread_id), ns, checkpoint_id, user_id)

    def _keys(self, target: _Target) -> dict[str, Any]:
        """The bound parameters naming ``target``'s thread in the statements built once."""
        keys: dict[str, Any] = {"b_agent": self.agent_type, "b_key": target.key,
                                "b_now": self._now()}  # fmt: skip
        if target.user_id is not None:
            keys["b_user"] = target.user_id
        return keys

    def _now(self) -> datetime:
        """The repository's clock: what a thread's expiry is compared with, as for sessions."""
        return checked_now(self.repository._clock)

    def _dumps(self, value: Any, what: str) -> tuple[str, bytes | None]:
        try:
            kind, data = self.serde.dumps_typed(value)
        except Exception as exc:
            if isinstance(exc, SessionValidationError):
                raise
            raise SessionValidationError(
                f"{what} holds a value the serializer cannot store ({type(exc).__name__}); "
                "nothing was written: store plain data, or give the saver a serializer that "
                "knows the type"
            ) from None
        return kind, data

    def _loads(self, kind: str, data: bytes | None) -> Any:
        return self.serde.loads_typed((kind, data or b""))

    # -- reads ------------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its thread's latest without ``checkpoint_id``).

        Returns ``None`` for an unknown thread or checkpoint, and, with ``user_id`` in the
        config, for another user's thread.
        """
        target = self._target(config)
        stmts = await self._sql()
        statement = stmts.get_tuple[(target.checkpoint_id is not None, target.user_id is not None)]
        params = {"b_agent": self.agent_type, "b_key": target.key, "b_ns": target.ns,
                  "b_now": self._now()}  # fmt: skip
        if target.checkpoint_id is not None:
            params["b_cid"] = target.checkpoint_id
        if target.user_id is not None:
            params["b_user"] = target.user_id
        # One round trip: the checkpoint, its pending writes and its channel values.
        rows = await self._read("langgraph aget_tuple", statement, params)
        found = self._from_rows(rows)
        return found[0][0] if found else None

    def _from_rows(self, rows: Sequence[Any]) -> list[tuple[CheckpointTuple, tuple[Any, ...]]]:
        """The tuples in the rows of ``Statements.one_checkpoint``, each with its page key, in
        the page's order."""
        vals, agent = self._values, self.agent_type
        # Each thread's key, which its values are bound to (read from its checkpoints' rows).
        keys = {r.session_id: session_key(r.k3) for r in rows if r.kind == "c"} if vals.on else {}
        blobs = {
            (r.session_id, r.checkpoint_ns, r.k1, r.k2): _BlobRow(
                r.session_id, r.checkpoint_ns, r.k1, r.k2, r.type,
                vals.open_blob(r.session_id, agent, keys.get(r.session_id, ""), r.checkpoint_ns,
                               r.k1, r.k2, r.type, r.k3, r.n, r.data),
                r.k3, r.n,
            )
            for r in rows
            if r.kind == "b" and r.k1 is not None
        }  # fmt: skip
        writes: dict[tuple[Any, ...], list[Any]] = {}
        for r in sorted((r for r in rows if r.kind == "w"), key=lambda r: (r.k3, r.k1, r.n)):
            thread = keys.get(r.session_id, "")
            data = vals.open_write(r.session_id, agent, thread, r.checkpoint_ns, r.cid, r.k1,
                                   r.n, r.k2, r.type, r.data)  # fmt: skip
            writes.setdefault((r.session_id, r.checkpoint_ns, r.cid), []).append(
                (r.k1, r.k2, self._loads(r.type, data))
            )
        found = []
        for row in sorted((r for r in rows if r.kind == "c"), key=lambda r: r.n or 0):
            key = (row.session_id, row.checkpoint_ns, row.k1)
            data = vals.open_checkpoint(row.session_id, agent, keys.get(row.session_id, ""),
                                        row.checkpoint_ns, row.k1, row.type, row.data)  # fmt: skip
            tup = self._tuple(
                _CheckpointRow(row.session_id, row.checkpoint_ns, row.k1, row.k2, row.type,
                               data, row.meta, row.k3),
                blobs,
                writes.get(key, []),
            )  # fmt: skip
            found.append((tup, (row.k1, row.session_id, row.checkpoint_ns)))
        return found

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace), or of every thread.

        ``filter`` matches metadata keys (plain names) by value; ``before`` keeps checkpoints
        older than the one it names; ``limit`` caps the count.
        """
        stmts = await self._sql()
        query = sql.checkpoints(self.agent_type, self._now())
        if config is not None:
            target = self._target(config)
            query = query.where(sql.T.thread_key == target.key)
            if (config.get("configurable") or {}).get("checkpoint_ns") is not None:
                query = query.where(sql.C.checkpoint_ns == target.ns)
            if target.checkpoint_id is not None:
                query = query.where(sql.C.checkpoint_id == target.checkpoint_id)
            if target.user_id is not None:
                query = query.where(sql.S.user_id == target.user_id)
        if filter:
            query = query.where(stmts.metadata_matches(filter))
        if before is not None:
            before_id = get_checkpoint_id(before)
            if before_id is not None:
                query = query.where(sql.C.checkpoint_id < before_id)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise SessionValidationError(f"limit must be an integer, got {limit!r:.40}")
        if not filter:
            async for tup in self._list_pages(config, before, limit):
                yield tup
            return
        remaining = limit
        order = (sql.C.checkpoint_id.desc(), sql.C.session_id.desc(), sql.C.checkpoint_ns.desc())
        last: tuple[Any, ...] | None = None
        while remaining is None or remaining > 0:
            page_size = _PAGE if remaining is None else min(_PAGE, remaining)
            page = query.order_by(*order).limit(page_size)
            if last is not None:
                page = page.where(
                    tuple_(sql.C.checkpoint_id, sql.C.session_id, sql.C.checkpoint_ns)
                    < tuple_(*last)
                )
            count = 0
            async for tup, row_key in self._tuples_with_keys(page, "langgraph alist"):
                count += 1
                last = row_key
                yield tup
            if remaining is not None:
                remaining -= count
            if count < page_size:
                return

    async def _list_pages(
        self, config: RunnableConfig | None, before: RunnableConfig | None, limit: int | None
    ) -> AsyncIterator[CheckpointTuple]:
        """alist without a metadata filter: pages of statements built once, one round trip
        each (the checkpoints with their writes and values)."""
        stmts = await self._sql()
        params: dict[str, Any] = {"b_agent": self.agent_type, "b_now": self._now()}
        thread = ns = cid = user = False
        if config is not None:
            target = self._target(config)
            thread, params["b_key"] = True, target.key
            if (config.get("configurable") or {}).get("checkpoint_ns") is not None:
                ns, params["b_ns"] = True, target.ns
            if target.checkpoint_id is not None:
                cid, params["b_cid"] = True, target.checkpoint_id
            if target.user_id is not None:
                user, params["b_user"] = True, target.user_id
        before_id = get_checkpoint_id(before) if before is not None else None
        if before_id is not None:
            params["b_before"] = before_id
        remaining = limit
        last: tuple[Any, ...] | None = None
        while remaining is None or remaining > 0:
            params["b_limit"] = page_size = _PAGE if remaining is None else min(_PAGE, remaining)
            if last is not None:
                params["b_last_cid"], params["b_last_sid"], params["b_last_ns"] = last
            shape = (thread, ns, cid, user, before_id is not None, last is not None)
            rows = await self._read("langgraph alist", stmts.list_page(shape), params)
            found = self._from_rows(rows)
            for tup, _ in found:
                yield tup
            if found:
                last = found[-1][1]
            if remaining is not None:
                remaining -= len(found)
            if len(found) < page_size:
                return

    async def _tuples_with_keys(
        self, query: Select[Any], operation: str
    ) -> AsyncIterator[tuple[CheckpointTuple, tuple[Any, ...]]]:
        """The checkpoints ``query`` selects, each with its blobs and pending writes.

        One round trip for the checkpoints, one for the blobs of them all, one for the writes.
        """

        async def read(db: AsyncSession) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any]]:
            rows = (await db.execute(query)).all()
            if not rows:
                return rows, [], []
            wanted = sorted(
                {
                    (row.session_id, row.checkpoint_ns, str(channel), str(version))
                    for row in rows
                    for channel, version in row.channel_versions.items()
                }
            )
            blob_rows = (await db.execute(sql.blobs(wanted))).all() if wanted else []
            keys = [(row.session_id, row.checkpoint_ns, row.checkpoint_id) for row in rows]
            return rows, blob_rows, (await db.execute(sql.writes(keys))).all()

        rows, blob_rows, write_rows = await self._transaction(operation, read)
        vals, agent = self._values, self.agent_type
        keys = {row.session_id: session_key(row.thread_id) for row in rows} if vals.on else {}
        loaded = [
            (row, self._loads(row.type, vals.open_checkpoint(
                row.session_id, agent, keys.get(row.session_id, ""), row.checkpoint_ns,
                row.checkpoint_id, row.type, row.checkpoint)))
            for row in rows
        ]  # fmt: skip
        blobs = {
            (b.session_id, b.checkpoint_ns, b.channel, b.version): _BlobRow(
                b.session_id, b.checkpoint_ns, b.channel, b.version, b.type,
                vals.open_blob(b.session_id, agent, keys.get(b.session_id, ""), b.checkpoint_ns,
                               b.channel, b.version, b.type, b.base_version, b.item_count,
                               b.blob),
                b.base_version, b.item_count,
            )
            for b in blob_rows
        }  # fmt: skip
        writes: dict[tuple[Any, ...], list[tuple[str, str, Any]]] = {}
        for w in write_rows:
            data = vals.open_write(w.session_id, agent, keys.get(w.session_id, ""),
                                   w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx,
                                   w.channel, w.type, w.blob)  # fmt: skip
            writes.setdefault((w.session_id, w.checkpoint_ns, w.checkpoint_id), []).append(
                (w.task_id, w.channel, self._loads(w.type, data))
            )
        for row, checkpoint in loaded:
            key = (row.session_id, row.checkpoint_ns, row.checkpoint_id)
            tup = self._assemble(row, checkpoint, blobs, writes.get(key, []))
            yield tup, (row.checkpoint_id, row.session_id, row.checkpoint_ns)

    def _tuple(
        self, row: Any, blobs: dict[tuple[Any, ...], Any], writes: list[tuple[str, str, Any]]
    ) -> CheckpointTuple:
        return self._assemble(row, self._loads(row.type, row.checkpoint), blobs, writes)

    def _assemble(
        self,
        row: Any,
        checkpoint: Any,
        blobs: dict[tuple[Any, ...], Any],
        writes: list[tuple[str, str, Any]],
    ) -> CheckpointTuple:
        """A stored checkpoint row, its blobs and its writes as LangGraph's tuple."""
        values = {}
        for channel, version in checkpoint["channel_versions"].items():
            blob = blobs.get((row.session_id, row.checkpoint_ns, str(channel), str(version)))
            if blob is not None and blob.type != "empty":
                values[channel] = self._loads(*whole(blob, blobs))
        checkpoint["channel_values"] = values
        thread = {"thread_id": row.thread_id, "checkpoint_ns": row.checkpoint_ns}
        parent = row.parent_checkpoint_id
        return CheckpointTuple(
            config={"configurable": {**thread, "checkpoint_id": row.checkpoint_id}},
            checkpoint=checkpoint,
            metadata=row.metadata,
            parent_config=(
                {"configurable": {**thread, "checkpoint_id": parent}} if parent else None
            ),
            pending_writes=writes,
        )

    # -- writes -----------------------------------------------------------------------------

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` as a child of ``config``'s checkpoint; its config back.

        Channel values are stored for ``new_versions`` only, once per thread, namespace,
        channel and version. A thread is created (as the config's ``user_id``'s) by its first
        checkpoint.

        Raises:
            SessionValidationError: no thread id, or a value, metadata or id the store refuses;
                nothing written.
            SessionNotFoundError: with ``user_id`` in the config, the thread is another user's.
            InvalidStateTransitionError: the thread's session was completed or failed.
        """
        target = self._target(config)
        _check_names(checkpoint_id=checkpoint["id"])
        stored = {k: v for k, v in checkpoint.items() if k != "channel_values"}
        kind, data = self._dumps(stored, "the checkpoint")
        vals = self._values
        if vals.on:
            data = vals.seal_checkpoint(self.agent_type, target.key, target.ns,
                                        checkpoint["id"], kind, data or b"")  # fmt: skip
        values = checkpoint["channel_values"]
        blob_rows = []
        for channel, version in new_versions.items():
            _check_names(channel=channel, version=str(version))
            grown = None
            if channel in values:
                blob_kind, blob = self._dumps(values[channel], f"channel {channel!r:.80}")
                grown = list_value(values[channel], blob_kind, blob, vals.digest)
            else:
                blob_kind, blob = "empty", None
            blob_rows.append(
                (
                    {"checkpoint_ns": target.ns, "channel": str(channel),
                     "version": str(version), "type": blob_kind, "blob": blob,
                     "base_version": None, "item_count": None, "size": None, "delta_size": None,
                     "digest": None},
                    grown,
                )
            )  # fmt: skip
        meta = dict(get_serializable_checkpoint_metadata(config, metadata))
        try:
            check_json_object(meta, "checkpoint metadata")
        except ValueError as exc:
            raise SessionValidationError(f"{exc}; nothing was written") from None
        run_id = meta.get("run_id")
        row = {
            "checkpoint_ns": target.ns,
            "checkpoint_id": checkpoint["id"],
            "parent_checkpoint_id": target.checkpoint_id,
            "type": kind,
            "checkpoint": data,
            "metadata": meta,
            "run_id": None if run_id is None else str(run_id),
            "channel_versions": {str(k): str(v) for k, v in checkpoint["channel_versions"].items()},
        }
        stmts = await self._sql()

        stored_rows: list[dict[str, Any]] = []  # what put stored, on its last attempt

        async def put(db: AsyncSession, sid: uuid.UUID) -> None:
            # The checkpoint first: on SQLite a write takes the write lock before any read.
            await db.execute(stmts.put_checkpoint, {**row, "session_id": sid})

            async def find_base(*key: Any) -> Any:
                return (await db.execute(sql.LIST_BASE, _base_params(*key))).first()

            if blob_rows:
                rows = [
                    await blob_row(find_base, sid, blob, grown, vals.digest)
                    for blob, grown in blob_rows
                ]
                await db.execute(stmts.add_blobs, self._sealed_blobs(target, rows))
                stored_rows[:] = rows

        async def put_into_thread(call: Call) -> None:
            # A thread already there: the checkpoint finds its session itself (one statement).
            keys = self._keys(target)
            values = {f"b_{name}": value for name, value in row.items()}
            found = await call.fetch(
                stmts.put_into_thread[target.user_id is not None], {**values, **keys}
            )
            if not found:
                raise _NotThere
            sid = found[0].session_id

            async def find_base(*key: Any) -> Any:
                based = await call.fetch(sql.LIST_BASE, _base_params(*key))
                return based[0] if based else None

            for blob, grown in blob_rows:
                stored = await blob_row(find_base, sid, blob, grown, vals.digest)
                self._sealed_blobs(target, [stored])
                await call.fetch(stmts.add_blob, {f"b_{k}": v for k, v in stored.items()})

        if stmts.postgres:
            if not await self._put_in_one(target, row, blob_rows):
                await self._write("langgraph aput", target, put)
                self._remember(target, stored_rows)
        else:
            await self._write("langgraph aput", target, put, into_thread=put_into_thread)
        return {
            "configurable": {
                "thread_id": target.thread_id,
                "checkpoint_ns": target.ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against ``config``'s checkpoint (again: idempotent).

        Writes to LangGraph's special channels (errors, interrupts...) replace earlier ones of
        the same task; others are kept as first stored.
        """
        target = self._target(config)
        if target.checkpoint_id is None:
            raise SessionValidationError(
                "the config names no checkpoint (configurable['checkpoint_id']); pending "
                "writes belong to one: pass the config aput returned"
            )
        _check_names(task_id=task_id, task_path=task_path)
        rows = []
        for i, (channel, value) in enumerate(writes):
            _check_names(channel=channel)
            kind, blob = self._dumps(value, f"the write to channel {channel!r:.80}")
            rows.append(
                {"checkpoint_ns": target.ns, "checkpoint_id": target.checkpoint_id,
                 "task_id": str(task_id), "idx": WRITES_IDX_MAP.get(channel, i),
                 "channel": str(channel), "type": kind, "blob": blob,
                 "task_path": str(task_path)}
            )  # fmt: skip
        if not rows:
            return
        vals = self._values
        if vals.on:
            for r in rows:
                r["blob"] = vals.seal_write(self.agent_type, target.key, r)
        stmts = await self._sql()
        replace = all(w[0] in WRITES_IDX_MAP for w in writes)
        stmt = stmts.replace_writes if replace else stmts.add_writes

        async def put(db: AsyncSession, sid: uuid.UUID) -> None:
            await db.execute(stmt, [{**r, "session_id": sid} for r in rows])

        async def put_into_thread(call: Call) -> None:
            # The writes first (on SQLite the write lock before any read), then whether the
            # thread was there: if not, nothing was written and the transaction rolls back.
            by_user, keys = target.user_id is not None, self._keys(target)
            into = stmts.replace_writes_into_thread if replace else stmts.add_writes_into_thread
            for r in rows:
                await call.fetch(into[by_user], {**{f"b_{k}": v for k, v in r.items()}, **keys})
            if not await call.fetch(stmts.live_thread[by_user], keys):
                raise _NotThere

        if stmts.postgres:
            if replace:  # one statement cannot update a row twice: the last write of each wins
                rows = list({(r["task_id"], r["idx"]): r for r in rows}.values())
            in_one = stmts.writes_in_one[(target.user_id is not None, replace)]
            params = {**self._keys(target), **_columns(rows, sql.WRITE_VALUES)}
            if await self._one_statement("langgraph aput_writes", in_one, params):
                return
        await self._write("langgraph aput_writes", target, put, into_thread=put_into_thread)

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete the thread: its session (a hard delete) and every checkpoint, blob and write."""
        target = self._target({"configurable": {"thread_id": thread_id}})
        await self._sql()

        async def find(db: AsyncSession) -> Any:  # a soft-deleted thread's session too
            return (await db.execute(sql.thread_rows(self.agent_type, target.key))).first()

        row = await self._transaction("langgraph adelete_thread", find)
        if row is None:
            return
        sid = row.session_id

        async def erase(db: AsyncSession) -> None:
            # Explicitly, not only by ON DELETE CASCADE: SQLite enforces foreign keys only
            # when the host's engine turned them on.
            for stmt in sql.delete_thread_rows(sid):
                await db.execute(stmt)
            await db.execute(delete(lg_threads_table).where(sql.T.session_id == sid))
            await self.repository.bind(db).delete_session(str(sid), hard=True)

        await self._transaction("langgraph adelete_thread", erase, write=True)
        logger.debug("LangGraph thread of session %s deleted", sid)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) that these runs made, in every thread, and
        the channel values no remaining checkpoint of those threads refers to."""
        ids = [str(r) for r in run_ids]
        if not ids:
            return
        stmts = await self._sql()

        async def run(db: AsyncSession) -> None:
            *writes, checkpoints = sql.delete_for_runs(self.agent_type, ids)
            for stmt in writes:
                await db.execute(stmt)
            sessions = sorted(set((await db.execute(checkpoints)).scalars()))
            if sessions:  # the values only the deleted checkpoints used go with them
                await db.execute(stmts.drop_unreferenced_blobs(sessions))

        await self._transaction("langgraph adelete_for_runs", run, write=True)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint, blob and write of one thread into another (same owner).

        An unknown source copies nothing. Rows the target already has are kept. With
        encryption, each value is opened and sealed again for the target thread (a value is
        bound to its thread), in the process; without, the rows are copied in SQL.
        """
        source = self._target({"configurable": {"thread_id": source_thread_id}})
        target = self._target({"configurable": {"thread_id": target_thread_id}})
        found = await self._find(source.key)
        if found is None:
            return
        stmts = await self._sql()

        async def copy(db: AsyncSession, sid: uuid.UUID) -> None:
            if self._values.on:
                await self._copy_sealed(db, stmts, found.session_id, source.key, sid, target.key)
                return
            for stmt in stmts.copy_rows(found.session_id, sid):
                await db.execute(stmt)

        await self._write("langgraph acopy_thread", target, copy, create_for=found.user_id)

    async def _copy_sealed(
        self,
        db: AsyncSession,
        stmts: sql.Statements,
        source: uuid.UUID,
        source_key: str,
        target: uuid.UUID,
        target_key: str,
    ) -> None:
        """acopy_thread with encryption: every value opened for the source thread and sealed
        for the target one (the digests are not bound to a thread, and are copied as they are).
        """
        vals, agent = self._values, self.agent_type
        for table in (lg_checkpoints_table, lg_blobs_table, lg_writes_table):
            rows = [dict(r._mapping) for r in await db.execute(sql.rows_of(table, source))]
            for r in rows:
                r["session_id"] = target
                if table is lg_checkpoints_table:
                    args = (r["checkpoint_ns"], r["checkpoint_id"], r["type"])
                    plain = vals.open_checkpoint(source, agent, source_key, *args, r["checkpoint"])
                    r["checkpoint"] = vals.seal_checkpoint(agent, target_key, *args, plain)
                elif table is lg_blobs_table:
                    r["blob"] = vals.open_blob(
                        source, agent, source_key, r["checkpoint_ns"], r["channel"],
                        r["version"], r["type"], r["base_version"], r["item_count"], r["blob"],
                    )  # fmt: skip
                    r["blob"] = vals.seal_blob(agent, target_key, r)
                else:
                    r["blob"] = vals.open_write(
                        source, agent, source_key, r["checkpoint_ns"], r["checkpoint_id"],
                        r["task_id"], r["idx"], r["channel"], r["type"], r["blob"],
                    )  # fmt: skip
                    r["blob"] = vals.seal_write(agent, target_key, r)
            if rows:
                await db.execute(stmts.insert_kept(table), rows)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune threads: ``"keep_latest"`` keeps each namespace's newest checkpoint (with its
        writes and values), ``"delete"`` removes every checkpoint; the threads stay. Channel
        values no remaining checkpoint refers to are removed with them."""
        if strategy not in ("keep_latest", "delete"):
            raise SessionValidationError(
                f"strategy must be 'keep_latest' or 'delete', got {strategy!r:.40}"
            )
        stmts = await self._sql()
        for thread_id in thread_ids:
            target = self._target({"configurable": {"thread_id": thread_id}})
            found = await self._find(target.key)
            if found is None:
                continue
            if strategy == "keep_latest":  # and the values only the others used
                doomed = [
                    *sql.keep_latest(found.session_id),
                    stmts.drop_unreferenced_blobs([found.session_id]),
                ]
            else:
                doomed = sql.delete_thread_rows(found.session_id)
            await self._run_all("langgraph aprune", doomed)

    async def _run_all(self, operation: str, statements: Sequence[Executable]) -> None:
        """Run ``statements`` in one write transaction."""

        async def run(db: AsyncSession) -> None:
            for stmt in statements:
                await db.execute(stmt)

        await self._transaction(operation, run, write=True)

    def get_next_version(self, current: str | None, channel: None = None) -> str:
        """A version greater than ``current``: a counter, then a random tie-breaker, so that
        sibling checkpoints (forks) never give two values one version."""
        if current is None:
            number = 0
        elif isinstance(current, int | float):
            number = int(current)
        else:
            number = int(str(current).split(".", 1)[0])
        return f"{number + 1:032}.{random.random():016}"

    # -- sync: from other threads, on the saver's event loop --------------------------------

    def _run(self, call: Callable[[], Awaitable[_T]]) -> _T:
        loop = self.loop
        if loop is None:
            raise RuntimeError(
                "SessionStoreSaver's sync methods run on the event loop it was first used on; "
                "use it from async code first (or make it inside that loop)"
            )
        try:
            if asyncio.get_running_loop() is loop:
                raise asyncio.InvalidStateError(
                    "Synchronous calls to SessionStoreSaver are only allowed from a different "
                    "thread; from the main thread, use the async interface (aget_tuple, aput...)"
                )
        except RuntimeError:
            pass
        return asyncio.run_coroutine_threadsafe(_awaited(call), loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run(lambda: self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]

        yield from self._run(collect)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._run(lambda: self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._run(lambda: self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._run(lambda: self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._run(lambda: self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._run(lambda: self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._run(lambda: self.aprune(thread_ids, strategy=strategy))


_NO_SESSION = uuid.UUID(int=0)  # a row's session, filled in by the statement that stores it


def _columns(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """``rows`` as one list per column (``b_<name>s``), for the statements that unnest them."""
    return {f"b_{name}s": [r[name] for r in rows] for name in names}


def _base_params(sid: uuid.UUID, ns: str, channel: str, version: str) -> dict[str, Any]:
    return {"b_sid": sid, "b_ns": ns, "b_channel": channel, "b_version": version}


def _check_names(**names: object) -> None:
    """Refuse ids and names no database can hold (not text, NUL, lone surrogates)."""
    for what, value in names.items():
        if not isinstance(value, str):
            raise SessionValidationError(f"{what} must be a string, got {type(value).__name__}")
        try:
            check_text(value, what)
        except ValueError as exc:
            raise SessionValidationError(f"{exc}; nothing was written") from None


class _NotThere(Exception):
    """No live thread of that key (and user) to write into: nothing was written."""


class _Retry(Exception):
    """The thread was created or deleted by another writer meanwhile: look it up again."""


async def _awaited(call: Callable[[], Awaitable[_T]]) -> _T:
    return await call()
