"""Lifecycle: the stale sweep, the purges and erasure, in bounded batches.

One rule removes sessions for good, written once (:meth:`Lifecycle._remove_in_batches`): a batch
of the sessions a condition picks is deleted, each with every row that belongs to it
(``_statements.SESSION_ROWS``: its checkpoints and the LangGraph checkpointer's rows), in one
transaction, and the cached copies of the batch are forgotten once it commits. The purges of
deleted and of finished sessions, and :meth:`Lifecycle.erase_user`, differ only in the
condition.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, or_, select

from agent_session_store import _statements as sql
from agent_session_store._arguments import (
    MAX_BATCH_SIZE,
    check_cutoff,
    check_filter,
    check_limit,
    checked_now,
)
from agent_session_store._calls import Call
from agent_session_store._repository.base import RepositoryBase
from agent_session_store._rows import S
from agent_session_store.errors import SessionValidationError
from agent_session_store.models import SessionState
from agent_session_store.tables import sessions_table, shared_state_table

logger = logging.getLogger("agent_session_store.repository")

# The ids of one batch are bound one parameter each in ``IN (...)``; PostgreSQL (asyncpg) and
# SQLite both refuse more than 32,766 parameters in a statement, and batch_size goes to 50,000.
_IDS_PER_STATEMENT = 5000
_X = shared_state_table.c


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What :meth:`SessionRepository.erase_user` removed: rows, counted.

    Attributes:
        sessions: sessions removed (live, finished and soft-deleted ones).
        checkpoints: their checkpoints.
        shared_state: the user's shared-state documents (one per agent type).
    """

    sessions: int = 0
    checkpoints: int = 0
    shared_state: int = 0


def deleted_before(cutoff: datetime) -> ColumnElement[bool]:
    """The sessions :meth:`~Lifecycle.purge_deleted_sessions` removes: soft-deleted before."""
    return and_(S.state == sql.DELETED, S.updated_at < cutoff)


def finished_before(cutoff: datetime, states: Sequence[str]) -> ColumnElement[bool]:
    """The sessions :meth:`~Lifecycle.purge_finished_sessions` removes: in one of ``states``
    (finished ones, see :func:`finished_states`) and not updated since ``cutoff``."""
    return and_(or_(*(S.state == state for state in states)), S.updated_at < cutoff)


def expired_by(now: datetime) -> ColumnElement[bool]:
    """The sessions :meth:`~Lifecycle.purge_expired_sessions` removes: expired at ``now``."""
    return S.expires_at <= now


def user_sessions(user_id: str, agent_type: str | None) -> ColumnElement[bool]:
    """The sessions :meth:`~Lifecycle.erase_user` removes: the user's, in every state."""
    where = S.user_id == user_id
    return where if agent_type is None else and_(where, S.agent_type == agent_type)


def user_shared_state(user_id: str, agent_type: str | None) -> ColumnElement[bool]:
    """The shared-state rows :meth:`~Lifecycle.erase_user` removes: the user's documents."""
    where = and_(_X.scope == "user", _X.user_id == user_id)
    return where if agent_type is None else and_(where, _X.agent_type == agent_type)


def check_user_to_erase(user_id: object, agent_type: object) -> None:
    """Refuse a user id that cannot name one user: never read as "every user"."""
    if not isinstance(user_id, str):
        raise SessionValidationError(
            f"user_id must be the user's id (a non-empty string), got {type(user_id).__name__}"
        )
    check_filter(user_id, "user_id")
    if not 1 <= len(user_id) <= 256:
        raise SessionValidationError(
            f"user_id must be 1 to 256 characters long, got {len(user_id)}: erasure names one "
            "user (sessions without a user have user_id '', which is nobody's to erase)"
        )
    if agent_type is not None:
        check_filter(agent_type, "agent_type")
        assert isinstance(agent_type, str)  # check_filter refused anything else
        if not 1 <= len(agent_type) <= 128:
            raise SessionValidationError(
                f"agent_type must be 1 to 128 characters long, got {len(agent_type)}"
            )


def finished_states(states: object) -> list[str]:
    """The values of ``states``, each COMPLETED or FAILED (only finished sessions are purged)."""
    if isinstance(states, str | bytes) or not isinstance(states, Collection):
        raise SessionValidationError(
            f"states must be a collection of SessionState, got {type(states).__name__}"
        )
    finished = {SessionState.COMPLETED, SessionState.FAILED}
    values: list[str] = []
    for given in states:
        try:
            state = SessionState(given)
        except ValueError:
            state = None
        if state not in finished:
            raise SessionValidationError(
                f"states may hold only finished states (completed, failed), got {given!r}: "
                "live sessions are swept with cleanup_stale_sessions, deleted ones purged with "
                "purge_deleted_sessions"
            )
        assert state is not None
        if state.value not in values:
            values.append(state.value)
    if not values:
        raise SessionValidationError("states must name at least one of completed, failed")
    return values


class Lifecycle(RepositoryBase):
    """The sweeps, purges and erasure of ``SessionRepository``."""

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
        doomed = deleted_before(cutoff)
        total, _ = await self._remove_in_batches("purge_deleted_sessions", doomed, batch_size)
        if total:
            logger.info("purged %d sessions deleted before %s", total, cutoff.isoformat())
        return total

    async def purge_finished_sessions(
        self,
        older_than: timedelta,
        *,
        states: Collection[SessionState] = (SessionState.COMPLETED, SessionState.FAILED),
        batch_size: int = 500,
    ) -> int:
        """Hard-delete finished sessions not updated for ``older_than``: a retention rule.

        A session is purged when it is in one of ``states`` and its ``updated_at`` (its last
        write: completing or failing it, a later metadata write) is older than ``older_than``.
        Its checkpoints and every row a framework backend stores for it go with it, and cached
        copies are forgotten as each batch commits. Works in batches of ``batch_size`` sessions,
        each its own transaction unless bound: an interrupted purge keeps the batches done, and
        running it again removes the rest.

        Example::

            removed = await repo.purge_finished_sessions(timedelta(days=90))

        Returns:
            How many sessions were removed.

        Raises:
            SessionValidationError: ``older_than`` is not a ``timedelta``, is negative or
                reaches back before year 1; ``states`` holds anything but COMPLETED and FAILED
                (or nothing); a bad ``batch_size``. Nothing was written.
        """
        check_limit(batch_size, "batch_size", MAX_BATCH_SIZE)
        wanted = finished_states(states)
        cutoff = check_cutoff(older_than, "older_than", checked_now(self._clock))
        doomed = finished_before(cutoff, wanted)
        total, _ = await self._remove_in_batches("purge_finished_sessions", doomed, batch_size)
        if total:
            logger.info(
                "purged %d %s sessions not updated since %s",
                total, " or ".join(wanted), cutoff.isoformat(),
            )  # fmt: skip
        return total

    async def purge_expired_sessions(self, *, batch_size: int = 500) -> int:
        """Hard-delete the sessions whose ``expires_at`` has passed, with all their rows.

        Expired sessions are already absent to every read; this reclaims their space (the
        checkpoints and the framework backends' rows, ``_statements.SESSION_ROWS``) and forgets
        their cached copies. Works in batches of ``batch_size`` sessions, each its own
        transaction unless bound; safe to run from several workers.

        Returns:
            How many sessions were removed.

        Raises:
            SessionValidationError: a bad ``batch_size``; nothing was written.
        """
        check_limit(batch_size, "batch_size", MAX_BATCH_SIZE)
        now = checked_now(self._clock)
        total, _ = await self._remove_in_batches(
            "purge_expired_sessions", expired_by(now), batch_size
        )
        if total:
            logger.info("purged %d sessions expired by %s", total, now.isoformat())
        return total

    async def erase_user(
        self, user_id: str, *, agent_type: str | None = None, batch_size: int = 500
    ) -> ErasureReport:
        """Remove everything stored about one user, for good: a right-to-erasure request.

        Hard-deletes every session of ``user_id`` in every state (live, finished, soft-deleted),
        with its checkpoints and every row a framework backend stores for it (the LangGraph
        checkpointer's), then the user's shared-state documents (the rows, not emptied
        documents). Cached copies are forgotten as each batch commits. With ``agent_type``, only
        that agent type's sessions and shared state.

        Works in batches of ``batch_size`` sessions, each its own transaction unless bound, so
        no transaction grows with the user's history. Idempotent and resumable: an interrupted
        erasure keeps the batches done, and calling it again removes the rest (a call that finds
        nothing reports zeros). Sessions created for the user while it runs may outlive it: stop
        the user's traffic first. Other users' data is untouched, including app-wide shared
        state and anything another user's documents say about this one.

        Example::

            report = await repo.erase_user("u1")
            print(report.sessions, report.checkpoints, report.shared_state)

        Raises:
            SessionValidationError: ``user_id`` is not a non-empty string of at most 256
                characters (or holds NUL or a lone surrogate), a bad ``agent_type`` or
                ``batch_size``; nothing was written.
        """
        check_user_to_erase(user_id, agent_type)
        check_limit(batch_size, "batch_size", MAX_BATCH_SIZE)
        sessions, checkpoints = await self._remove_in_batches(
            "erase_user", user_sessions(user_id, agent_type), batch_size
        )
        async with self._call("erase_user") as db:
            documents = (
                delete(shared_state_table)
                .where(user_shared_state(user_id, agent_type))
                .returning(_X.agent_type)
            )
            shared = len((await db.execute(documents)).all())
        report = ErasureReport(sessions, checkpoints, shared)
        # Counts only: the id is what the erasure removed, and logs outlive it.
        logger.info(
            "erased a user's data%s: %d sessions, %d checkpoints, %d shared-state documents",
            "" if agent_type is None else f" of agent type {agent_type!r}",
            report.sessions, report.checkpoints, report.shared_state,
        )  # fmt: skip
        return report

    async def _remove_in_batches(
        self, operation: str, doomed: ColumnElement[bool], batch_size: int
    ) -> tuple[int, int]:
        """Remove the sessions matching ``doomed`` with their rows, ``batch_size`` at a time.

        Returns:
            How many sessions, and how many checkpoints, were removed.
        """
        sessions = checkpoints = 0
        while True:
            async with self._call(operation) as db:
                removed = await _remove_batch(db, doomed, batch_size)
            sessions += len(removed)
            checkpoints += sum(count for _, count in removed)
            if len(removed) < batch_size:
                return sessions, checkpoints


async def _remove_batch(
    db: Call, doomed: ColumnElement[bool], batch_size: int
) -> list[tuple[uuid.UUID, int]]:
    """Delete up to ``batch_size`` sessions matching ``doomed``, then every row of theirs.

    The sessions go first, in one statement that takes their row locks and checks ``doomed``
    again on each row it deletes (a session written meanwhile, no longer doomed, stays): a
    concurrent append or update then waits, and finds nothing. Their rows are then deleted
    explicitly, not only by ``ON DELETE CASCADE``: SQLite enforces foreign keys only when the
    host's engine turned them on (see ``_statements.SESSION_ROWS``).

    Returns:
        Each removed session's id and how many checkpoints it had.
    """
    batch = select(S.id).where(doomed).limit(batch_size)
    gone = (
        delete(sessions_table)
        .where(S.id.in_(batch.scalar_subquery()), doomed)
        .returning(S.id, S.checkpoint_count)
    )
    rows = (await db.execute(gone)).all()
    removed: list[tuple[uuid.UUID, int]] = [(row.id, row.checkpoint_count) for row in rows]
    ids = [sid for sid, _ in removed]
    for start in range(0, len(ids), _IDS_PER_STATEMENT):
        chunk: Sequence[Any] = ids[start : start + _IDS_PER_STATEMENT]
        for table in sql.SESSION_ROWS:
            await db.execute(delete(table).where(table.c.session_id.in_(chunk)))
    db.invalidate_on_commit(ids)
    return removed
