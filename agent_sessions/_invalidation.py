"""Commit-aware cache invalidation: forget keys only once the transaction that changed them commits.

Invalidating before the commit would let a reader cache the old row again in between; doing it
in a task after the commit would let a read that follows ``commit()`` see the old copy. So the
keys wait in ``session.info`` and are invalidated inside ``commit()`` itself, from the
``after_commit`` event, which runs in SQLAlchemy's greenlet and may therefore await. A rollback
drops them.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only

from agent_sessions.readthrough import ModelCache

logger = logging.getLogger(__name__)

_PENDING = "agent_sessions.pending_invalidations"

# (id(cache), model) -> (cache, model, keys)
_Pending = dict[tuple[int, type[BaseModel]], tuple[ModelCache, type[BaseModel], set[str]]]


def on_commit(
    session: AsyncSession, cache: ModelCache, model: type[BaseModel], keys: list[str]
) -> None:
    """Invalidate ``keys`` of ``model`` in ``cache`` when ``session``'s transaction commits."""
    sync_session = session.sync_session
    pending: _Pending | None = sync_session.info.get(_PENDING)
    if pending is None:
        pending = sync_session.info[_PENDING] = {}
        if not event.contains(sync_session, "after_commit", _after_commit):
            event.listen(sync_session, "after_commit", _after_commit)
            event.listen(sync_session, "after_rollback", _after_rollback)
    entry = pending.setdefault((id(cache), model), (cache, model, set()))
    entry[2].update(keys)


def _after_commit(sync_session: Session) -> None:
    await_only(_invalidate_pending(sync_session))


def _after_rollback(sync_session: Session, *_: Any) -> None:
    sync_session.info.pop(_PENDING, None)


async def run_pending(session: AsyncSession) -> None:
    """Invalidate what ``on_commit`` registered, now: for statements run without a transaction."""
    await _invalidate_pending(session.sync_session)


async def _invalidate_pending(sync_session: Session) -> None:
    pending: _Pending | None = sync_session.info.pop(_PENDING, None)
    for cache, model, keys in (pending or {}).values():
        try:
            await cache.invalidate(model, keys)
        except Exception:  # the write happened; a cache fault must not look like a failed write
            logger.exception("invalidating %d cached %s failed", len(keys), model.__name__)
