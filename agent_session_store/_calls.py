"""How a repository call gets its connection, runs its statements and settles, even when cancelled.

:class:`Database` is the repository's way to its database: the engine, learned once from the
session factory together with the :class:`~agent_session_store._dialects.Dialect` (no round trip:
the engine object knows it), the schema check of the first call, and SQLite's writer queue.
Its :meth:`Database.call` opens what one call runs in:

- on its own, a pooled ``AsyncConnection`` (not an ``AsyncSession``: a call has no unit of
  work to flush), in autocommit mode for reads and single statements on PostgreSQL (one round
  trip, no BEGIN/COMMIT), in a transaction committed at the end otherwise, and always in a
  transaction behind a transaction pooler (see ``_needs_transaction``);
- bound (``SessionRepository.bind``), the caller's ``AsyncSession`` and transaction, which it
  never commits or rolls back.

Cancellation: the checkout, commit, rollback and release of the connection run to their end
(``run_to_end``), and so does each statement where the dialect says so, so a cancellation
takes effect between statements, where a rollback undoes what the call did so far, or after
the last one, when the call has happened. Then the caller gets its ``CancelledError``.

Cache coherence: what a call changed is invalidated after its commit (bound: inside the
caller's commit, see ``_invalidation``). A call that ends with anything but a result or one of
the library's verdicts (not found, conflict, bad transition, key taken) may have been applied
or not (a connection lost while committing), so after the rollback and release the keys it
may have changed are invalidated all the same: forgetting a key that did not change costs one
cache miss; keeping a stale one would serve it until the ttl.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Executable, Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import Pool, PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from agent_session_store import _invalidation, telemetry
from agent_session_store._dialects import Dialect, Shape, for_name
from agent_session_store._driver import Prepared
from agent_session_store._errors import storage_errors
from agent_session_store._settle import run_to_end
from agent_session_store.engine import behind_transaction_pooler
from agent_session_store.errors import (
    ConcurrentUpdateError,
    InvalidStateTransitionError,
    SessionExistsError,
    SessionNotFoundError,
    SessionValidationError,
)
from agent_session_store.migrations import SchemaGate
from agent_session_store.readthrough import ModelCache
from agent_session_store.tables import sessions_table

logger = logging.getLogger(__name__)


class Refused(Exception):
    """A statement refused by a constraint the repository expects and handles (an append whose
    idempotency key the session already holds); the call wrote nothing, its connection is fine.

    Never leaves the repository.
    """


# Our own verdicts are raised after statements that changed nothing (or were rolled back).
_VERDICTS = (
    Refused,
    ConcurrentUpdateError,
    InvalidStateTransitionError,
    SessionExistsError,
    SessionNotFoundError,
    SessionValidationError,
)


def _outcome_unknown(exc: BaseException) -> bool:
    """Whether a call that raised ``exc`` may have changed the database.

    Anything but a verdict (a cancellation, a driver or connection error, a bug) may come
    after the server applied a statement, or while a COMMIT was on its way.
    """
    return not isinstance(exc, _VERDICTS)


class Call:
    """What one repository call runs its statements in, and what it will invalidate.

    ``fetch`` runs a statement the same way in every mode; on the hot path (``driver`` set)
    it goes to the driver's connection, compiled once (``_driver``), and ``execute`` (the
    SQLAlchemy API) is not available.
    """

    __slots__ = (
        "_cache",
        "_model",
        "_prepared",
        "_runner",
        "bound",
        "dialect",
        "driver",
        "pending",
    )

    def __init__(
        self,
        runner: AsyncConnection | AsyncSession | None,
        dialect: Dialect,
        cache: ModelCache | None,
        model: type[BaseModel],
        *,
        bound: AsyncSession | None = None,
        driver: Any = None,
        prepared: Callable[[Executable], Prepared] | None = None,
    ) -> None:
        self._runner = runner
        self._cache = cache
        self._model = model
        self._prepared = prepared
        self.dialect = dialect
        self.bound = bound  # the caller's session, when the call runs inside it
        self.driver = driver  # the driver's connection, on the hot path
        self.pending: _invalidation.Pending = {}

    async def execute(self, statement: Executable, params: Any = None) -> Result[Any]:
        if self._runner is None:
            raise AssertionError("a hot-path call runs its statements with fetch()")
        if self.dialect.finish_statements:
            return await run_to_end(self._runner.execute(statement, params))
        return await self._runner.execute(statement, params)

    async def scalar(self, statement: Executable, params: Any = None) -> Any:
        return (await self.execute(statement, params)).scalar()

    async def fetch(self, statement: Executable, params: dict[str, Any]) -> list[Any]:
        """Run ``statement``; its rows (attributes named as its columns), ``[]`` for none."""
        if self._prepared is None:
            result = await self.execute(statement, params)
            return list(result.all()) if getattr(result, "returns_rows", True) else []
        prepared = self._prepared(statement)
        rows = await self.dialect.driver_fetch(
            self.driver, prepared.sql, prepared.arguments(params)
        )
        return prepared.rows(rows)

    def invalidate_on_commit(self, ids: Sequence[object]) -> None:
        """Forget the cached copies of ``ids`` once this call's transaction has committed."""
        if self._cache is None or not ids:
            return
        keys = [str(i) for i in ids]
        if self.bound is not None:
            _invalidation.on_commit(self.bound, self._cache, self._model, keys)
        else:
            _invalidation.add(self.pending, self._cache, self._model, keys)


class Database:
    """The engine a repository's calls run on, its dialect, schema check and writer queue.

    Shared by a repository and its bound copies. Nothing touches the database before the
    first call.
    """

    def __init__(self, factory: async_sessionmaker[AsyncSession]) -> None:
        self._factory = factory
        self._engine: AsyncEngine | None = None
        self._autocommit: AsyncEngine | None = None
        self._dialect: Dialect | None = None
        self._direct = False  # whether the hot path may use the driver's connection
        self._compiled: dict[int, Prepared] = {}
        self._gate = SchemaGate()
        self._writers = asyncio.Lock()

    @property
    def dialect(self) -> Dialect:
        """The dialect of the factory's engine, learned on first use (no I/O)."""
        if self._dialect is None:
            self._learn()
        assert self._dialect is not None
        return self._dialect

    def _learn(self) -> None:
        # An async_sessionmaker names its engine; any other callable returning sessions (a
        # wrapper, a test double) is used as it is, a session per call.
        bind = getattr(self._factory, "kw", {}).get("bind")
        if isinstance(bind, AsyncEngine):
            self._engine = bind
            sync_bind: Any = bind.sync_engine
        else:  # bound to a connection, or per-table binds: calls open sessions from the factory
            sync_bind = self._factory().sync_session.get_bind(clause=sessions_table)
        dialect = for_name(sync_bind.dialect.name)
        # Autocommit saves the BEGIN and COMMIT round trips of a single statement on
        # PostgreSQL. Not behind a transaction pooler: there a server connection is ours only
        # from BEGIN to COMMIT, and an autocommit statement's prepare and execute may reach
        # two different server connections ("prepared statement ... does not exist"). Not on
        # SQLite: pysqlite opens no transaction for a read anyway, and each switch of the
        # isolation level costs a trip to the driver's thread.
        pooled = behind_transaction_pooler(sync_bind)
        if self._engine is not None and dialect.name == "postgresql" and not pooled:
            self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")
        self._direct = self._engine is not None and not pooled
        self._dialect = dialect

    def _driver_allowed(self) -> bool:
        """Whether the hot path may skip SQLAlchemy's execution layer right now.

        Not while anything watches or intercepts the engine's statements (``echo``, a
        ``before_cursor_execute``/``after_cursor_execute`` listener such as a tracing
        instrumentation or a query counter, a dialect's ``do_execute`` hook): they would miss
        the hot path's, which do not go through SQLAlchemy's cursor. Checked on every call, as
        listeners come and go.
        """
        if not self._direct:
            return False
        assert self._engine is not None
        engine = self._engine.sync_engine
        watched = engine.dispatch.before_cursor_execute or engine.dispatch.after_cursor_execute
        return not (engine.echo or watched or engine.dialect.dispatch.do_execute)

    def _prepare(self, statement: Executable) -> Prepared:
        # Keyed by identity: the hot statements are module constants, built once.
        prepared = self._compiled.get(id(statement))
        if prepared is None:
            assert self._engine is not None
            prepared = Prepared(statement, self._engine.sync_engine.dialect)
            self._compiled[id(statement)] = prepared
        return prepared

    def dialect_of(self, session: AsyncSession) -> Dialect:
        """The dialect of a caller's session (normally the repository's own)."""
        name = session.get_bind().dialect.name
        return self.dialect if name == self.dialect.name else for_name(name)

    @contextlib.asynccontextmanager
    async def call(
        self,
        operation: str,
        session_id: object | None,
        shape: Shape,
        *,
        cache: ModelCache | None,
        model: type[BaseModel],
        bound: AsyncSession | None = None,
        hot: bool = False,
    ) -> AsyncIterator[Call]:
        """Open what ``operation`` runs in (see the module's docstring), then settle it.

        ``session_id``: the session the call may change, invalidated if its outcome is unknown.
        ``hot``: the call runs only ``fetch``, of module-level statements, so it may take the
        hot path (``_driver``) where the connection allows.
        """
        # The span wraps storage_errors, so it records the library's error, not the driver's.
        sid = None if session_id is None else str(session_id)
        with (
            telemetry.span(operation, session_id=sid, bound=bound is not None),
            storage_errors(operation),
        ):
            if bound is not None:
                db = Call(bound, self.dialect_of(bound), cache, model, bound=bound)
                try:
                    await self._gate.pass_through(bound)
                    yield db
                except BaseException as exc:
                    if shape != "read" and sid is not None and _outcome_unknown(exc):
                        db.invalidate_on_commit([sid])  # in case the caller commits
                    raise
                return
            dialect = self.dialect
            queued = dialect.queue_writers and shape != "read"
            async with self._writers if queued else contextlib.nullcontext():
                if hot and self._gate.passed and self._driver_allowed():
                    async with self._on_driver(dialect, shape, sid, cache, model) as db:
                        yield db
                    return
                autocommit = shape != "transaction" and self._autocommit is not None
                runner = await self._open(autocommit)
                db = Call(runner, dialect, cache, model)
                try:
                    if not self._gate.passed:
                        await run_to_end(self._gate.pass_through(runner))
                    yield db
                    if not autocommit:
                        await run_to_end(runner.commit())
                except BaseException as exc:
                    unknown = shape != "read" and _outcome_unknown(exc)
                    if unknown and sid is not None:
                        db.invalidate_on_commit([sid])
                    await run_to_end(_settle(runner, db.pending if unknown else {}, failed=True))
                    raise
                await run_to_end(_settle(runner, db.pending, failed=False))

    @contextlib.asynccontextmanager
    async def _on_driver(
        self,
        dialect: Dialect,
        shape: Shape,
        sid: str | None,
        cache: ModelCache | None,
        model: type[BaseModel],
    ) -> AsyncIterator[Call]:
        """The hot path: the pool's connection, used through its driver (see ``_driver``)."""
        assert self._engine is not None
        checked_out: list[PoolProxiedConnection] = []
        try:
            await run_to_end(_checkout(self._engine, checked_out))
        except BaseException:
            if checked_out:  # the caller was cancelled while the checkout finished
                await run_to_end(greenlet_spawn(checked_out[0].close))
            raise
        raw = checked_out[0]
        db = Call(None, dialect, cache, model, driver=raw.driver_connection, prepared=self._prepare)
        try:
            yield db
            if shape != "read":  # see Dialect.driver_commit: nothing to cut in half here
                await dialect.driver_commit(db.driver)
        except BaseException as exc:
            unknown = shape != "read" and _outcome_unknown(exc)
            if unknown and sid is not None:
                db.invalidate_on_commit([sid])
            # On PostgreSQL only a verdict leaves the connection as good as new; after anything
            # else (a statement cancelled on the server, a lost connection) it is discarded,
            # not pooled. SQLite's statements always ran to their end: a rollback will do.
            broken = not dialect.finish_statements and not isinstance(exc, _VERDICTS)
            lost = broken and dialect.connection_lost(raw.driver_connection)
            await run_to_end(
                _settle_driver(
                    dialect, raw, db.pending if unknown else {}, failed=True, broken=broken,
                    lost_from=self._engine.sync_engine.pool if lost else None,
                )
            )  # fmt: skip
            raise
        await run_to_end(_settle_driver(dialect, raw, db.pending, failed=False, broken=False))

    async def _open(self, autocommit: bool) -> AsyncConnection | AsyncSession:
        """A connection from the pool (a session from the factory if there is no engine)."""
        if self._engine is None:
            session = self._factory()
            try:
                await run_to_end(session.connection())
            except BaseException:
                await run_to_end(session.close())
                raise
            return session
        engine = self._autocommit if autocommit and self._autocommit else self._engine
        conn = engine.connect()
        try:
            await run_to_end(conn.start())
        except BaseException:
            if conn.sync_connection is not None:  # started, then the caller was cancelled
                await run_to_end(conn.close())
            raise
        return conn


async def _settle(
    runner: AsyncConnection | AsyncSession, pending: _invalidation.Pending, *, failed: bool
) -> None:
    """Release the connection (rolled back first if the call failed); then invalidate."""
    try:
        try:
            if failed:
                await runner.rollback()
        except Exception:  # the connection is broken: closing it below discards it
            logger.debug("rollback after a failed call failed", exc_info=True)
        finally:
            await runner.close()
    finally:
        await _invalidation.invalidate(pending)


async def _checkout(engine: AsyncEngine, into: list[PoolProxiedConnection]) -> None:
    into.append(await engine.raw_connection())


async def _settle_driver(
    dialect: Dialect,
    raw: PoolProxiedConnection,
    pending: _invalidation.Pending,
    *,
    failed: bool,
    broken: bool,
    lost_from: Pool | None = None,
) -> None:
    """Give the hot path's connection back (discard it if ``broken``); then invalidate.

    A call that failed is rolled back here, not left to the pool's reset on return, which
    the host's engine may have turned off. ``lost_from``: the pool of a connection the server
    closed (a restart, a failover). Every connection that pool opened before now went with
    it, and the ones used moments ago are not pinged (``engine.IDLE_PING_AFTER``): they are
    all invalidated, to be replaced as they are next checked out, as SQLAlchemy does on a
    disconnect in its own statements; otherwise each would fail one more caller.
    """
    try:
        try:
            if failed and not broken:
                await dialect.driver_rollback(raw.driver_connection)
        except Exception:  # the connection is broken after all
            logger.debug("rollback after a failed call failed", exc_info=True)
            broken = True
        finally:
            if lost_from is not None:
                await greenlet_spawn(lost_from._invalidate, raw)  # the same as SQLAlchemy's
            elif broken:
                await greenlet_spawn(raw.invalidate)
            else:
                await greenlet_spawn(_give_back, raw)
    finally:
        await _invalidation.invalidate(pending)


def _give_back(raw: PoolProxiedConnection) -> None:
    """Return a hot-path connection to the pool, telling it there is no transaction to reset.

    Nothing is left open by then: a write committed, a failed call rolled back, a read opened
    none. The pool would otherwise roll back once more on the way in: one more trip to
    aiosqlite's thread on every call. SQLAlchemy's own ``Connection`` returns its connections
    the same way after ending its transaction; without that method (not a public one), the
    plain ``close()`` is just as correct.
    """
    close_clean = getattr(raw, "_close_special", None)
    if close_clean is None:
        raw.close()
    else:
        close_clean(transaction_reset=True)
