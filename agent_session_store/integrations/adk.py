"""A Google ADK session service on agent_session_store: ``SessionStoreService``.

Install with ``pip install agent-session-store[adk]``, then swap one constructor::

    from agent_session_store.integrations.adk import SessionStoreService

    session_service = SessionStoreService.from_url("postgresql+asyncpg://app@db/app")
    runner = Runner(agent=agent, app_name="support", session_service=session_service)

How ADK's model maps onto the repository's:

================  ======================================================================
ADK               agent_session_store
================  ======================================================================
app name          ``agent_type``
user id           ``user_id``
session id        the session's ``key`` (the repository mints its own UUID ``session_id``)
session state     ``context`` (keys without a prefix)
``app:`` state    the app-wide shared state (``get_shared_state(app_name)``)
``user:`` state   the user's shared state (``get_shared_state(app_name, user_id=...)``)
``temp:`` state   never stored
events            checkpoints named ``adk_event``: the event's own JSON, its timestamp as
                  the checkpoint's time
================  ======================================================================

A session this service returns carries the repository's ``version`` in ADK's private storage
marker; ``append_event`` with a copy whose version is no longer the stored one raises ADK's
``StaleSessionError``, and writes nothing. The event, the session's state and the shared state
are written in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_session_store import (
    AgentSession,
    ConcurrentUpdateError,
    RedisCache,
    SessionCheckpoint,
    SessionExistsError,
    SessionNotFoundError,
    SessionRepository,
    SessionValidationError,
    create_engine,
)
from agent_session_store.encryption import FieldEncryption

try:
    from google.adk.errors._stale_session_error import StaleSessionError
    from google.adk.errors.already_exists_error import AlreadyExistsError
    from google.adk.errors.session_not_found_error import (
        SessionNotFoundError as AdkSessionNotFoundError,
    )
    from google.adk.events.event import Event
    from google.adk.sessions.base_session_service import (
        BaseSessionService,
        GetSessionConfig,
        ListSessionsResponse,
    )
    from google.adk.sessions.session import Session
    from google.adk.sessions.state import State
    from pydantic_core import to_jsonable_python
except ImportError as exc:  # pragma: no cover - the extra is part of the dev install
    raise ImportError(
        "agent_session_store.integrations.adk needs Google ADK: "
        "pip install 'agent-session-store[adk]'"
    ) from exc

__all__ = ["SessionStoreService"]

logger = logging.getLogger(__name__)

EVENT_CHECKPOINT = "adk_event"
"""The name of the checkpoints that hold ADK events."""
LAST_UPDATE_KEY = "adk_last_update_time"
"""The session metadata key holding ADK's ``last_update_time`` (the newest event's time)."""

_ALL = 2**31 - 1  # a window wider than any history: every checkpoint
_PAGE = 1000  # the repository's largest page
_STATE_READS = 8  # shared-state reads in flight at once when listing many users' sessions


class SessionStoreService(BaseSessionService):
    """An ADK ``BaseSessionService`` storing sessions through a ``SessionRepository``.

    Args:
        repository: the repository to store into (its cache, limits and tenancy apply).
        session_factory: the ``async_sessionmaker`` the repository was built with; needed to run
            ``append_event`` (and a ``create_session`` with shared state) in one transaction.
            Defaults to the repository's own.

    Example::

        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
        service = SessionStoreService(repo)
        session = await service.create_session(app_name="support", user_id="alice")
    """

    def __init__(
        self,
        repository: SessionRepository,
        *,
        session_factory: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self.repository = repository
        self._factory = session_factory or repository.session_factory
        self._engine: AsyncEngine | None = None
        self._cache: RedisCache | None = None
        self._redis: Redis | None = None

    @classmethod
    def from_url(
        cls,
        db_url: str,
        *,
        redis_url: str | None = None,
        namespace: str = "adk-sessions",
        signing_keys: Sequence[bytes] | None = None,
        encryption: FieldEncryption | None = None,
    ) -> SessionStoreService:
        """A service that owns its engine (and Redis client); close it with :meth:`aclose`.

        The schema comes from the library's migrations, run by your deploy
        (``agent-session-store db upgrade --url ...``): the first call raises
        ``SchemaOutOfDateError`` naming that command when the database is behind. Nothing is
        created at run time.

        Args:
            db_url: ``sqlite+aiosqlite:///sessions.db`` or ``postgresql+asyncpg://...``.
            redis_url: turns on the Redis read-through cache, e.g. ``redis://localhost:6379/0``.
            namespace: the cache namespace (keep one per application).
            signing_keys: sign the cache's entries (``RedisCache(signing_keys=...)``).
            encryption: encrypt values at rest (``SessionRepository(encryption=...)``).

        Example::

            async with SessionStoreService.from_url("sqlite+aiosqlite:///s.db") as service:
                runner = Runner(agent=agent, app_name="app", session_service=service)
        """
        engine = create_engine(db_url)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        cache = redis = None
        if redis_url is not None:
            redis = Redis.from_url(redis_url)
            cache = RedisCache(redis, namespace=namespace, signing_keys=signing_keys)
        repository = SessionRepository(factory, cache=cache, encryption=encryption)
        service = cls(repository, session_factory=factory)
        service._engine, service._cache, service._redis = engine, cache, redis
        return service

    async def aclose(self) -> None:
        """Close what :meth:`from_url` opened (engine, Redis client); nothing otherwise."""
        if self._cache is not None:
            await self._cache.repair()  # invalidations Redis missed, before the client goes
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = self._cache = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def close(self) -> None:
        """The same as :meth:`aclose` (the name ``DatabaseSessionService`` uses)."""
        await self.aclose()

    async def __aenter__(self) -> SessionStoreService:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- BaseSessionService ---------------------------------------------------------------

    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        """Create a session under ``session_id`` (stripped), or a new UUID when none is given.

        ``app:`` and ``user:`` keys of ``state`` go to the shared state, in the same
        transaction as the session; ``temp:`` keys are dropped.

        Raises:
            AlreadyExistsError: this app and user already have a session with this id.
            SessionValidationError: an app name, user id, id or state the store refuses
                (also a ``ValueError``); nothing written.
        """
        key = session_id.strip() if session_id and session_id.strip() else str(uuid.uuid4())
        app_delta, user_delta, own = _split(_json_safe(state or {}))
        repo = self.repository
        try:
            if not app_delta and not user_delta:
                created, app_state, user_state = await _together(
                    repo.create_session(app_name, user_id, context=own, key=key),
                    repo.get_shared_state(app_name),
                    repo.get_shared_state(app_name, user_id=user_id),
                )
            else:
                async with self._factory() as db, db.begin():
                    bound = repo.bind(db)
                    created = await bound.create_session(app_name, user_id, context=own, key=key)
                    app_state = await _shared(bound, app_name, None, app_delta)
                    user_state = await _shared(bound, app_name, user_id, user_delta)
        except SessionExistsError as exc:
            raise AlreadyExistsError(f"Session with id {key} already exists.") from exc
        return _to_adk(created, app_state, user_state, events=[])

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        """The session with its state merged and its events, or ``None``.

        With ``config.num_recent_events`` only the newest events are read, and with
        ``config.after_timestamp`` (inclusive) only the later ones: the cost follows what is
        returned, not the length of the history. Without a config, every event.
        """
        key = session_id.strip() if isinstance(session_id, str) else session_id
        recent = None if config is None else config.num_recent_events
        after = None if config is None or not config.after_timestamp else config.after_timestamp
        window = 0 if after is not None else (_ALL if recent is None else recent)
        repo = self.repository
        try:
            stored, app_state, user_state = await _together(
                repo.get_session_by_key(app_name, user_id, key=key, recent_checkpoints=window),
                repo.get_shared_state(app_name),
                repo.get_shared_state(app_name, user_id=user_id),
            )
        except SessionValidationError:
            return None  # no session can have such a name, user or id
        if stored is None:
            return None
        if after is None:
            events = _events(stored.checkpoints)
            if recent is not None:
                events = events[-recent:] if recent else []
        else:
            try:
                events = await self._events_since(stored, after, recent)
            except SessionNotFoundError:
                return None  # deleted in between
        return _to_adk(stored, app_state, user_state, events)

    async def _events_since(
        self, stored: AgentSession, after: float, recent: int | None
    ) -> list[Event]:
        since = _datetime(after)
        wanted = _ALL if recent is None else recent
        found: list[SessionCheckpoint] = []
        before: int | None = None
        while len(found) < wanted:
            limit = min(_PAGE, wanted - len(found) + 1)  # + 1: session_created may be in range
            page = await self.repository.list_checkpoints(
                stored.session_id,
                user_id=stored.user_id,
                newest_first=True,
                since=since,
                after_seq=before,
                limit=limit,
            )
            found.extend(cp for cp in page if cp.name == EVENT_CHECKPOINT)
            if len(page) < limit:
                break
            before = page[-1].seq
        return _events(list(reversed(found[:wanted])))

    async def list_sessions(
        self, *, app_name: str, user_id: str | None = None
    ) -> ListSessionsResponse:
        """Every session of the app (or of one user), oldest update first, without events.

        Read in keyset pages of 1,000 sessions (no event is read); each session's state is
        merged with the shared state as ``get_session`` does.
        """
        repo = self.repository
        try:
            # The first page and the shared state the sessions need are read together.
            page, app_state, user_states = await _together(
                repo.list_sessions(agent_type=app_name, user_id=user_id, limit=_PAGE),
                repo.get_shared_state(app_name),
                self._user_states(app_name, [] if user_id is None else [user_id]),
            )
            items = [s for s in page.items if s.key is not None]
            while page.next_cursor is not None:
                page = await repo.list_sessions(
                    agent_type=app_name, user_id=user_id, limit=_PAGE, cursor=page.next_cursor
                )
                items.extend(s for s in page.items if s.key is not None)
            if user_id is None:
                user_states = await self._user_states(app_name, sorted({s.user_id for s in items}))
        except SessionValidationError:
            return ListSessionsResponse()
        sessions = [_to_adk(s, app_state, user_states[s.user_id], events=[]) for s in items]
        sessions.sort(key=lambda s: (s.last_update_time, s.user_id, s.id))
        return ListSessionsResponse(sessions=sessions)

    async def _user_states(self, app_name: str, users: Sequence[str]) -> dict[str, dict[str, Any]]:
        # One read per user: the repository reads shared state one document at a time.
        gate = asyncio.Semaphore(_STATE_READS)

        async def read(user: str) -> dict[str, Any]:
            async with gate:
                return await self.repository.get_shared_state(app_name, user_id=user)

        states = await asyncio.gather(*(read(u) for u in users))
        return dict(zip(users, states, strict=True))

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Delete the session and its events for good (a hard delete); unknown ids are ignored."""
        key = session_id.strip() if isinstance(session_id, str) else session_id
        try:
            stored = await self.repository.get_session_by_key(
                app_name, user_id, key=key, recent_checkpoints=0
            )
        except SessionValidationError:
            return
        if stored is not None:
            await self.repository.delete_session(stored.session_id, user_id=user_id, hard=True)

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user's shared state, keys without the ``user:`` prefix; ``{}`` when none."""
        try:
            return await self.repository.get_shared_state(app_name, user_id=user_id)
        except SessionValidationError:
            return {}

    async def append_event(self, session: Session, event: Event) -> Event:
        """Store the event and its state delta in one transaction, then apply them to ``session``.

        Partial events are neither stored nor applied. ``temp:`` keys reach the in-memory
        session only. The session's ``last_update_time`` becomes the event's timestamp.

        Raises:
            StaleSessionError: ``session`` is not the stored revision any more (another
                writer appended since it was read); nothing written. Reload and retry.
            google.adk.errors.session_not_found_error.SessionNotFoundError: the session was
                deleted (or never stored).
            SessionValidationError: an event or state the store refuses (e.g. larger than the
                repository's ``max_payload_bytes``); nothing written.
        """
        if event.partial:
            return event
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        delta = event.actions.state_delta if event.actions and event.actions.state_delta else {}
        app_delta, user_delta, own = _split(_json_safe(delta))
        data = event.model_dump(mode="json")
        at = _datetime(event.timestamp)
        sid, expected = _marker(session)
        try:
            if sid is None:  # resolved before the transaction, whose first statement must write
                found = await self.repository.get_session_by_key(
                    session.app_name, session.user_id, key=session.id, recent_checkpoints=0
                )
                if found is None:
                    raise SessionNotFoundError(session.id)
                sid = found.session_id
            async with self._factory() as db, db.begin():
                bound = self.repository.bind(db)
                # The append comes first: it takes the session's row lock (PostgreSQL) or the
                # write lock (SQLite), so concurrent appends to one session queue here and each
                # then reads the revision the previous one committed.
                # The event's id is the append's idempotency key: a re-delivered event (a queue's
                # retry) is kept once, and answered with the stored one.
                cp = await bound.add_checkpoint(
                    sid, EVENT_CHECKPOINT, data, user_id=session.user_id, timestamp=at,
                    idempotency_key=_event_key(event),
                )  # fmt: skip
                # A marked copy is checked by version alone; one without our marker by its
                # newest event, so read the checkpoint before ours too.
                window = 0 if expected is not None else 2
                stored = await bound.get_session(
                    sid, user_id=session.user_id, recent_checkpoints=window
                )
                if (
                    stored is None
                    or stored.key != session.id
                    or stored.agent_type != session.app_name
                ):
                    raise SessionNotFoundError(session.id)
                if _redelivered(cp.seq, stored, session, event, expected):
                    return event  # stored before: neither its event nor its state delta again
                if not _is_current(stored, session, expected):
                    raise StaleSessionError(_STALE)
                stored.context.update(own)
                stored.metadata[LAST_UPDATE_KEY] = event.timestamp
                updated = await bound.update_session(stored)
                if app_delta:
                    await bound.update_shared_state(session.app_name, app_delta)
                if user_delta:
                    await bound.update_shared_state(
                        session.app_name, user_delta, user_id=session.user_id
                    )
        except SessionNotFoundError as exc:
            raise AdkSessionNotFoundError(f"Session {session.id} not found.") from exc
        except ConcurrentUpdateError as exc:  # pragma: no cover - the row lock orders writers
            raise StaleSessionError(_STALE) from exc
        session.last_update_time = event.timestamp
        session._storage_update_marker = f"{sid}:{updated.version}"
        return self._commit_event_to_session(session, event)


_STALE = (
    "The session has been modified in storage since it was loaded. "
    "Please reload the session before appending more events."
)


async def _together(*calls: Awaitable[Any]) -> list[Any]:
    """Run ``calls`` concurrently; when one fails, raise after all have ended.

    ``asyncio.gather`` raises the first error at once and leaves the others running: a caller
    that then closes the engine would pull connections from under them.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _json_safe(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` as JSON values: rich types (datetimes, models) faithfully, others as text."""
    try:
        safe: dict[str, Any] = to_jsonable_python(state)
    except Exception:  # a callable, a socket...: stored as its text, as ADK's own stores do
        logger.warning("state values that are not JSON are stored as their str()", exc_info=True)
        safe = to_jsonable_python(state, fallback=str)
    return safe


def _split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """App-wide, user-wide and the session's own keys (prefixes removed); ``temp:`` dropped."""
    app: dict[str, Any] = {}
    user: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(State.APP_PREFIX):
            app[key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            user[key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            own[key] = value
    return app, user, own


async def _shared(
    bound: SessionRepository, app_name: str, user_id: str | None, delta: dict[str, Any]
) -> dict[str, Any]:
    if delta:
        return await bound.update_shared_state(app_name, delta, user_id=user_id)
    return await bound.get_shared_state(app_name, user_id=user_id)


def _datetime(timestamp: float) -> datetime:
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        raise SessionValidationError(
            f"timestamp {timestamp!r} is not a time a session can hold; use seconds since 1970"
        ) from None


def _events(checkpoints: Sequence[SessionCheckpoint]) -> list[Event]:
    return [Event.model_validate(cp.data) for cp in checkpoints if cp.name == EVENT_CHECKPOINT]


def _marker(session: Session) -> tuple[str | None, int | None]:
    """The stored id and version this copy was read at, when this service produced it."""
    marker = session._storage_update_marker
    sid, _, version = (marker or "").partition(":")
    if not version.isdigit():
        return None, None
    return sid, int(version)


def _event_key(event: Event) -> str | None:
    """The idempotency key of an event's append: its id (ADK gives every event one)."""
    return event.id if event.id and len(event.id) <= 256 else None


def _redelivered(
    seq: int | None, stored: AgentSession, session: Session, event: Event, expected: int | None
) -> bool:
    """Whether the append just made found the event already stored (its seq, read with the
    session after it in the same transaction, under the append's lock).

    A new append is the newest checkpoint and bumped ``version``; a known one is older than the
    newest, or the newest with the version unmoved since our marker (or, on a copy without our
    marker, already among the copy's events).
    """
    if seq is None or seq < stored.checkpoint_count:
        return seq is not None
    if expected is not None:
        return stored.version == expected
    return any(known.id == event.id for known in session.events)


def _is_current(stored: AgentSession, session: Session, expected: int | None) -> bool:
    """Whether ``session`` was the stored revision before the event just appended."""
    if expected is not None:
        return stored.version == expected + 1
    # A copy without our marker (built by hand, or by another service): current when the
    # newest stored event before ours is its own newest event.
    previous = stored.checkpoints[-2] if len(stored.checkpoints) > 1 else None
    if previous is None or previous.name != EVENT_CHECKPOINT:
        return not session.events
    return bool(session.events) and previous.data.get("id") == session.events[-1].id


def _to_adk(
    stored: AgentSession,
    app_state: dict[str, Any],
    user_state: dict[str, Any],
    events: list[Event],
) -> Session:
    state = dict(stored.context)
    state.update({State.APP_PREFIX + k: v for k, v in app_state.items()})
    state.update({State.USER_PREFIX + k: v for k, v in user_state.items()})
    updated = stored.metadata.get(LAST_UPDATE_KEY)
    session = Session(
        id=stored.key or stored.session_id,
        app_name=stored.agent_type,
        user_id=stored.user_id,
        state=state,
        events=events,
        last_update_time=(
            float(updated) if isinstance(updated, int | float) else stored.created_at.timestamp()
        ),
    )
    session._storage_update_marker = f"{stored.session_id}:{stored.version}"
    return session
