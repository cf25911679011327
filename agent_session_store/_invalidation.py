"""Commit-aware cache invalidation: forget keys only once the transaction that changed them commits.

Invalidating before the commit would let a reader cache the old row again in between; doing it
in a task after the commit would let a read that follows ``commit()`` see the old copy. So the
keys wait in ``session.info`` and are invalidated inside ``commit()`` itself, from the
``after_commit`` event, which runs in SQLAlchemy's greenlet and may therefore await.

What happens to waiting keys when the transaction does not simply commit:

- **A savepoint rolls back** (``begin_nested()``): the keys stay. They may belong to writes made
  before the savepoint, which the outer transaction still commits; forgetting a key whose write
  was undone costs one cache miss, keeping a stale one costs a wrong read.
- **The outer transaction rolls back** before any commit was attempted: the keys are dropped;
  nothing changed.
- **A commit fails or is cancelled** while under way: it may have been applied (the COMMIT may
  have reached the server), so the keys are invalidated after all.
- **The caller is cancelled while invalidating**: the invalidation runs to its end first
  (``run_to_end``; the cache bounds its own time), then the cancellation goes on.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util import await_only

from agent_session_store._settle import run_to_end
from agent_session_store.readthrough import ModelCache

logger = logging.getLogger(__name__)

_PENDING = "agent_session_store.pending_invalidations"
_COMMITTING = "agent_session_store.committing"

# (id(cache), model) -> (cache, model, keys)
Pending = dict[tuple[int, type[BaseModel]], tuple[ModelCache, type[BaseModel], set[str]]]


def on_commit(
    session: AsyncSession, cache: ModelCache, model: type[BaseModel], keys: list[str]
) -> None:
    """Invalidate ``keys`` of ``model`` in ``cache`` when ``session``'s transaction commits."""
    sync_session = session.sync_session
    pending: Pending | None = sync_session.info.get(_PENDING)
    if pending is None:
        pending = sync_session.info[_PENDING] = {}
        if not event.contains(sync_session, "after_commit", _after_commit):
            event.listen(sync_session, "before_commit", _before_commit)
            event.listen(sync_session, "after_commit", _after_commit)
            event.listen(sync_session, "after_transaction_end", _after_transaction_end)
    add(pending, cache, model, keys)


def add(pending: Pending, cache: ModelCache, model: type[BaseModel], keys: list[str]) -> None:
    """Add ``keys`` to a set of pending invalidations."""
    entry = pending.setdefault((id(cache), model), (cache, model, set()))
    entry[2].update(keys)


def take(session: AsyncSession) -> Pending:
    """Remove and return what ``on_commit`` registered (for a caller that settles it itself)."""
    session.sync_session.info.pop(_COMMITTING, None)
    pending: Pending | None = session.sync_session.info.pop(_PENDING, None)
    return pending or {}


async def run_pending(session: AsyncSession) -> None:
    """Invalidate what ``on_commit`` registered, now: for statements run without a transaction."""
    await invalidate(take(session))


async def invalidate(pending: Pending) -> None:
    """Invalidate every pending key, to the end even if the caller is cancelled meanwhile."""
    if pending:
        await run_to_end(_invalidate(pending))


def _before_commit(sync_session: Session) -> None:
    if sync_session.info.get(_PENDING):
        sync_session.info[_COMMITTING] = True


def _after_commit(sync_session: Session) -> None:
    sync_session.info.pop(_COMMITTING, None)
    pending: Pending | None = sync_session.info.pop(_PENDING, None)
    if pending:
        await_only(invalidate(pending))


def _after_transaction_end(sync_session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:  # a savepoint ended: the outer transaction decides
        return
    committing = sync_session.info.pop(_COMMITTING, False)
    pending: Pending | None = sync_session.info.pop(_PENDING, None)
    if not pending or not committing:
        return  # committed (after_commit took the keys), or rolled back: nothing changed
    # A commit was under way and did not finish: it may have been applied.
    step = invalidate(pending)
    try:
        await_only(step)
    except sa_exc.MissingGreenlet:  # ended outside the async API (garbage collection)
        step.close()
        logger.warning(
            "a commit failed outside the async API; %d cached key(s) may be stale until their ttl",
            sum(len(keys) for _, _, keys in pending.values()),
        )


async def _invalidate(pending: Pending) -> None:
    for cache, model, keys in pending.values():
        try:
            await cache.invalidate(model, keys)
        except Exception:  # the write happened; a cache fault must not look like a failed write
            logger.exception("invalidating %d cached %s failed", len(keys), model.__name__)
