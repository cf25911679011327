"""Hold a repository call at a chosen point of its database work, to interleave another call there.

``Pause`` listens to a SQLAlchemy event; once armed, the next time the event fires the call that
fired it waits until ``release`` is set (the listener runs in SQLAlchemy's greenlet, inside the
awaiting call, where it may await). Any listener on statements also keeps the repository on
SQLAlchemy's execution path rather than the driver's, which is what makes the pause reachable.

Usage::

    with after_statement(db.engine) as pause:
        pause.armed = True
        slow = asyncio.create_task(repo.get_session(sid))
        await pause.reached.wait()  # its statement ran; its rows are read
        ...another call, in between...
        pause.release.set()
        await slow
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only


class Pause:
    """Once armed, the next ``name`` event of ``target`` waits there until released."""

    def __init__(self, target: Any, name: str) -> None:
        self.armed = False
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        self._target = target
        self._name = name

    def __enter__(self) -> Pause:
        event.listen(self._target, self._name, self._fired)
        return self

    def __exit__(self, *exc_info: object) -> None:
        event.remove(self._target, self._name, self._fired)

    def _fired(self, *args: Any) -> None:
        if self.armed:
            self.armed = False
            self.reached.set()
            await_only(self.release.wait())


def after_statement(engine: AsyncEngine) -> Pause:
    """Holds the next statement ``engine`` runs, right after it ran (its rows are read)."""
    return Pause(engine.sync_engine, "after_cursor_execute")


def after_checkin(engine: AsyncEngine) -> Pause:
    """Holds the next connection given back to ``engine``'s pool, in the pool.

    A repository read gives its connection back when its rows are read: pausing there means the
    read is done and its value is on its way into the cache.
    """
    return Pause(engine.sync_engine.pool, "checkin")
