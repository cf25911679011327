"""Compositions of reads and writes every caller would otherwise rewrite: get-or-create by key,
and read-change-write with compare-and-set retries."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from agent_session_store._arguments import check_int
from agent_session_store._repository.reads import Reads
from agent_session_store._repository.writes import Writes
from agent_session_store.errors import (
    ConcurrentUpdateError,
    SessionExistsError,
    SessionNotFoundError,
)
from agent_session_store.models import AgentSession

# A get-or-create reads, creates, and on a lost race reads again. It goes round once more only
# when the session that won was deleted (or expired) between the refusal and the read: a crowd
# of deleters and creators can keep one caller going round, never forever.
_GET_OR_CREATE_ROUNDS = 10
MAX_RETRIES = 100

Change = Callable[[AgentSession], Awaitable[object] | object]


class Compose(Reads, Writes):
    """``get_or_create_session`` and ``modify_session`` of ``SessionRepository``."""

    async def get_or_create_session(
        self,
        agent_type: str,
        user_id: str = "",
        *,
        key: str,
        context: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[AgentSession, bool]:
        """The live session of ``agent_type`` and ``user_id`` with ``key``; created if none.

        Atomic: any number of concurrent calls for one key, from any process, get one session,
        and exactly one of them ``True``. The key's unique index decides: each call reads by
        key, creates when it found nothing, and reads the winner when its create lost. An
        existing session is returned as it is (``context``, ``metadata`` and ``expires_at`` are
        only a new session's).

        Example::

            session, created = await repo.get_or_create_session("planner", "u1", key="chat-42")

        Returns:
            The session, and whether this call created it.

        Raises:
            SessionValidationError: as :meth:`create_session` (checked before anything is
                written).
            SessionExistsError: the key's session kept being deleted between this call's
                create and its read (ten rounds); nothing written by this call.
        """
        lost: SessionExistsError | None = None
        for _ in range(_GET_OR_CREATE_ROUNDS):
            found = await self.get_session_by_key(agent_type, user_id, key=key)
            if found is not None:
                return found, False
            try:
                created = await self.create_session(
                    agent_type, user_id, context, metadata, key=key, expires_at=expires_at
                )
            except SessionExistsError as exc:  # another call's create won: read it
                lost = exc
                continue
            return created, True
        assert lost is not None
        raise lost

    async def modify_session(
        self,
        session_id: str,
        change: Change,
        *,
        user_id: str | None = None,
        retries: int = 5,
    ) -> AgentSession:
        """Read the session, let ``change`` edit the copy, store it with compare-and-set.

        ``change(session)`` (a function or a coroutine function) edits the copy it is given
        (context, metadata, state moves, ``checkpoint(...)``, ``expires_at``); what it returns
        is ignored. When another writer got in first (``ConcurrentUpdateError``), the session
        is read again and ``change`` applied to the new copy, up to ``retries`` times, so
        ``change`` must be safe to run again on a fresh copy.

        Example::

            def bump(session: AgentSession) -> None:
                session.context["turns"] = session.context.get("turns", 0) + 1

            session = await repo.modify_session(session_id, bump)

        Returns:
            The stored session, with its new ``version``.

        Raises:
            ConcurrentUpdateError: ``1 + retries`` writes all lost to other writers; the last
                conflict is raised.
            SessionNotFoundError: unknown, malformed, deleted, expired or (with ``user_id``)
                foreign id.
            InvalidStateTransitionError, SessionValidationError: as :meth:`update_session`
                for the changed copy.
            Whatever ``change`` raises, unchanged; nothing is written then.
        """
        check_int(retries, "retries", 0, MAX_RETRIES)
        conflicts = 0
        while True:
            session = await self.get_session(session_id, user_id=user_id)
            if session is None:
                raise SessionNotFoundError(str(session_id))
            applied = change(session)
            if inspect.isawaitable(applied):
                await applied
            try:
                return await self.update_session(session, user_id=user_id)
            except ConcurrentUpdateError:
                conflicts += 1
                if conflicts > retries:
                    raise
