"""Lifecycle: the stale sweep and the purges, in bounded batches."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, delete, select

from agent_session_store import _statements as sql
from agent_session_store._arguments import MAX_BATCH_SIZE, check_cutoff, check_limit, checked_now
from agent_session_store._repository.base import RepositoryBase
from agent_session_store._rows import S
from agent_session_store.models import SessionState
from agent_session_store.tables import sessions_table

logger = logging.getLogger("agent_session_store.repository")


class Lifecycle(RepositoryBase):
    """The sweeps and purges of ``SessionRepository``."""

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

    async def purge_expired_sessions(self, *, batch_size: int = 500) -> int:
        """Hard-delete the sessions whose ``expires_at`` has passed, with all their rows.

        Expired sessions are already absent to every read; this reclaims their space (the
        checkpoints and the framework backends' rows, ``_statements.SESSION_ROWS``) and forgets
        their cached copies. Works in batches of ``batch_size`` sessions, each its own
        transaction unless bound, oldest expiry first; safe to run from several workers.

        Returns:
            How many sessions were removed.

        Raises:
            SessionValidationError: a bad ``batch_size``; nothing was written.
        """
        check_limit(batch_size, "batch_size", MAX_BATCH_SIZE)
        now = checked_now(self._clock)
        doomed = select(S.id).where(S.expires_at <= now).order_by(S.expires_at).limit(batch_size)
        total = 0
        while True:
            async with self._call("purge_expired_sessions") as db:
                ids = (await db.execute(doomed)).scalars().all()
                if ids:
                    for table in sql.SESSION_ROWS:  # its rows first, explicitly: see there
                        await db.execute(delete(table).where(table.c.session_id.in_(ids)))
                    await db.execute(delete(sessions_table).where(S.id.in_(ids)))
                    db.invalidate_on_commit(ids)
            total += len(ids)
            if len(ids) < batch_size:
                break
        if total:
            logger.info("purged %d sessions expired by %s", total, now.isoformat())
        return total
