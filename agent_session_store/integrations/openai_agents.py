"""The OpenAI Agents SDK's ``Session`` protocol, stored by agent_session_store.

Install with ``pip install 'agent-session-store[openai-agents]'``, then swap the SDK's store for
:class:`SessionStoreSession`; the agent code does not change::

    repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
    session = SessionStoreSession("chat-42", repo)      # was: SQLAlchemySession(...)
    result = await Runner.run(agent, "Hello", session=session)

How the SDK's conversation maps onto the library:

- the SDK's ``session_id`` names the library session through its key
  (``create_session(..., key=session_key(session_id))``, see below), under ``agent_type``
  (default ``"openai-agents"``) and ``user_id`` (default ``""``); the library session is created
  by the first ``add_items``;
- each item is one checkpoint named ``"item"`` whose data is the item's JSON object. The library's
  own first checkpoint (``session_created``, seq 1) is not an item and never returned or popped;
  checkpoints of any other name are not items either: ``get_items`` skips them and ``pop_item``
  removes them on its way to the newest item, as the SDK's stores drop rows they cannot decode;
- ``clear_session`` hard-deletes the library session, so the key is free for the next ``add_items``.

Reads list checkpoints newest first with a limit, so ``get_items(limit=n)`` costs the same at any
history length; ``add_items`` is one atomic batch append with no read before it; ``pop_item`` is
the library's ``pop_checkpoint`` (row-locked: concurrent pops return distinct items).

Session ids and keys
--------------------

The SDK takes any string as a ``session_id`` (``""``, ``" a "``, ``"a\\nb"``, a 10,000-character
id...); a library key is printable text of 1 to 128 characters without surrounding whitespace
(``" a "`` and ``"a"`` would be one key). :func:`session_key` maps every string onto a key, one
to one, and ``session_id`` stays the string the caller gave. The mapping is part of the
storage format (changing it would lose stored conversations) and has three forms:

- **plain**: an id that is a key as it stands (printable, 1 to 128 characters, no space at
  either end) and does not start with ``~`` is its own key: ``"chat-42"`` -> ``"chat-42"``,
  ``"会話-123"`` -> ``"会話-123"``. Conversations stored before this mapping existed keep
  their keys, but for a key starting with ``~``, which no id maps to any more.
- **escaped**: any other id is ``"~esc:"`` followed by the id percent-encoded as UTF-8
  (RFC 3986 style, uppercase hex): printable ASCII stays as it is, and every other byte, the
  space and ``%`` become ``%XX``. ``""`` -> ``"~esc:"``, ``" a "`` ->
  ``"~esc:%20a%20"``, ``"a\\nb"`` -> ``"~esc:a%0Ab"``, ``"~home"`` -> ``"~esc:~home"``. Lone
  surrogates are encoded as their three UTF-8 bytes (``surrogatepass``); ``"\\x00"`` becomes
  ``%00``, which PostgreSQL can store (the key is stored, never the id). The id comes back with
  ``urllib.parse.unquote(key[5:], errors="surrogatepass")``.
- **hashed**: an id whose escaped form would exceed 128 characters is ``"~sha256:"`` followed by
  the 64 lowercase hex digits of the SHA-256 of its UTF-8 bytes (``surrogatepass``). This form
  is one to one in practice only: two ids share a key only if they collide under SHA-256. It
  cannot be decoded; the caller's ``session_id`` is the conversation's only record of its id.

Plain keys never start with ``~`` and the two encoded forms differ from their second character
on, so no two forms can meet: an id that happens to look like an encoded key (``"~esc:%20"``)
is escaped once more (``"~esc:~esc:%2520"``). Whether an id is plain follows Python's
``str.isprintable``, as the key rule does, and so the Unicode version of the running Python:
an id holding a character that Python does not know yet (unassigned in its Unicode database)
is escaped there, and plain under a later Python that knows it.

Keys are what ``agent-session-store sessions list`` shows and what
``repo.get_session_by_key("openai-agents", user_id, key=session_key(session_id))`` takes.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from agent_session_store import (
    AgentSession,
    SessionCheckpoint,
    SessionExistsError,
    SessionNotFoundError,
    SessionRepository,
    SessionValidationError,
)
from agent_session_store.integrations._keys import session_key

try:
    from agents.items import TResponseInputItem
    from agents.memory import SessionSettings
    from agents.memory.session_settings import coerce_session_settings, resolve_session_limit
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "agent_session_store.integrations.openai_agents needs the OpenAI Agents SDK: "
        "pip install 'agent-session-store[openai-agents]'"
    ) from exc

__all__ = ["ITEM", "SessionStoreSession", "session_key"]

logger = logging.getLogger(__name__)

ITEM = "item"
"""The checkpoint name of a conversation item."""

# The repository's largest page (list_checkpoints) and batch (add_checkpoints).
_PAGE = 1000
# How often a call looks the key up again after finding its session gone (cleared or deleted
# by another writer between the look-up and the call). Each retry needs another writer's delete
# to land in between, so a handful is plenty; the bound only stops a livelock.
_ATTEMPTS = 8

_T = TypeVar("_T")
_MemoKey = tuple[SessionRepository, str, str, str]


class _KnownIds:
    """The library ids of recently used conversations, per repository, for this process.

    SDK users make a Session per request; remembering the id spares each new instance the
    look-up of its key. A remembered id is only a hint: every call on it is checked by the
    database (a cleared conversation's id is never reused, and calls on it find no session and
    look the key up again), so a stale entry costs one round trip and is never wrong.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: weakref.WeakKeyDictionary[
            SessionRepository, OrderedDict[tuple[str, str, str], str]
        ]
        self._ids = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # Runner.run_sync calls from other threads

    def get(self, key: _MemoKey) -> str | None:
        with self._lock:
            ids = self._ids.get(key[0])
            return None if ids is None else ids.get(key[1:])

    def put(self, key: _MemoKey, sid: str) -> None:
        with self._lock:
            ids = self._ids.setdefault(key[0], OrderedDict())
            ids[key[1:]] = sid
            ids.move_to_end(key[1:])
            if len(ids) > self._size:
                ids.popitem(last=False)

    def drop(self, key: _MemoKey, sid: str) -> None:
        with self._lock:
            ids = self._ids.get(key[0])
            if ids is not None and ids.get(key[1:]) == sid:
                del ids[key[1:]]


_known = _KnownIds(10_000)


class SessionStoreSession:
    """A conversation of the OpenAI Agents SDK stored in a :class:`SessionRepository`.

    Implements ``agents.memory.Session``: pass it as ``session=`` to ``Runner.run``,
    ``Runner.run_sync`` or ``Runner.run_streamed``. Instances are cheap (no I/O until the first
    call) and any number of them, in any number of processes, may share one ``session_id``.

    Args:
        session_id: the conversation's name, chosen by the caller: any string. The library
            session's key is :func:`session_key` of it; ``session_id`` stays as given.
        repository: where the conversation is stored (with or without a cache).
        agent_type: the library sessions' agent type.
        user_id: the owner; the same ``session_id`` of another user is another conversation.
        session_settings: the SDK's settings; ``limit`` is the default of ``get_items``.

    Example::

        session = SessionStoreSession("chat-42", repo, user_id="alice")
        await Runner.run(agent, "What did I ask yesterday?", session=session)
    """

    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        repository: SessionRepository,
        *,
        agent_type: str = "openai-agents",
        user_id: str = "",
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        self._key = session_key(session_id)
        self.session_id = session_id
        self.session_settings = (
            SessionSettings()
            if session_settings is None
            else coerce_session_settings(session_settings)
        )
        self._repo = repository
        self._agent_type = agent_type
        self._user_id = user_id
        # The library's id for session_id, once looked up. A clear elsewhere makes it stale:
        # calls on it then fail with SessionNotFoundError and look the key up again.
        self._sid: str | None = None
        self._memo_key = (repository, agent_type, user_id, self._key)

    @property
    def repository(self) -> SessionRepository:
        """Where the conversation is stored."""
        return self._repo

    @property
    def key(self) -> str:
        """The library session's key: :func:`session_key` of ``session_id``."""
        return self._key

    @property
    def agent_type(self) -> str:
        return self._agent_type

    @property
    def user_id(self) -> str:
        return self._user_id

    # -- the Session protocol ------------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The conversation's items, oldest first; the newest ``limit`` of them when given.

        ``limit=None`` means ``session_settings.limit``, and all items when that is ``None``.

        Raises:
            SessionValidationError: a ``limit`` that is not an integer of 0 or more, or a
                ``user_id``/``agent_type`` no library session can have.
        """
        window = resolve_session_limit(limit, self.session_settings)
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int) or window < 0
        ):
            raise SessionValidationError(f"limit must be an integer of 0 or more, got {window!r}")
        if window == 0:
            return []
        # The first page comes with the session itself, in one statement (through the cache
        # when it is small): most conversations are read whole in that one round trip.
        first = _PAGE if window is None else min(window + 1, _PAGE)
        for _ in range(_ATTEMPTS):
            session = await self._load(first)
            if session is None:
                return []
            items = _items(session.checkpoints)
            if window is not None and len(items) >= window:
                return items[-window:]
            if session.checkpoint_count <= len(session.checkpoints):
                return items  # the whole history was in the first page
            try:
                if window is None:
                    return await self._all(session.session_id)
                oldest = session.checkpoints[0].seq
                return await self._newest(session.session_id, window, items[::-1], oldest)
            except SessionNotFoundError:
                self._forget(session.session_id)  # cleared meanwhile: read the current one
        raise SessionNotFoundError(self.session_id)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items`` to the conversation in one atomic batch (none for an empty list).

        The first call for a new ``session_id`` creates the library session; concurrent first
        calls, from any number of instances or processes, all keep their items.

        Raises:
            SessionValidationError: an item that is not a JSON object the library can store
                (see the README's input rules); nothing written.
        """
        if not items:
            return
        if self._sid is None and await self._lookup() is None:
            # A new conversation: refuse bad items before creating the library session.
            for item in items:
                SessionCheckpoint.from_dict({"name": ITEM, "data": item})
        batch = [(ITEM, cast("dict[str, Any]", item)) for item in items]
        # The repository appends at most _PAGE items atomically; a larger batch (no agent turn
        # makes one) is stored as several atomic appends, in order.
        for start in range(0, len(batch), _PAGE):
            chunk = batch[start : start + _PAGE]

            async def append(sid: str, chunk: list[tuple[str, dict[str, Any]]] = chunk) -> None:
                await self._repo.add_checkpoints(sid, chunk, user_id=self._user_id)

            await self._on_session(append, create=True, default=None)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item; ``None`` when the conversation has none.

        Atomic: concurrent pops (from any instance or process) return distinct items.
        """

        async def pop(sid: str) -> TResponseInputItem | None:
            while True:
                popped = await self._repo.pop_checkpoint(sid, user_id=self._user_id)
                if popped is None:
                    return None
                if popped.name == ITEM:
                    return cast("TResponseInputItem", popped.data)
                logger.warning(
                    "pop_item dropped checkpoint %s (%r) of session %s: not a conversation item",
                    popped.seq,
                    popped.name,
                    sid,
                )

        return await self._on_session(pop, create=False, default=None)

    async def clear_session(self) -> None:
        """Remove the conversation: the library session and its history are deleted for real.

        The ``session_id`` can be used again at once; the next ``add_items`` starts afresh.
        """
        for _ in range(_ATTEMPTS):
            sid = await self._lookup()
            if sid is None:
                return
            self._forget(sid)
            if await self._repo.delete_session(sid, user_id=self._user_id, hard=True):
                return
            # Gone already (cleared elsewhere): look again, a new one may have taken the key.

    # -- reading --------------------------------------------------------------------------

    async def _all(self, sid: str) -> list[TResponseInputItem]:
        items: list[TResponseInputItem] = []
        after = 1  # seq 1 is the library's session_created checkpoint
        while True:
            page = await self._repo.list_checkpoints(
                sid, after_seq=after, limit=_PAGE, user_id=self._user_id
            )
            items.extend(_items(page))
            if len(page) < _PAGE:
                return items
            after = cast("int", page[-1].seq)

    async def _newest(
        self, sid: str, limit: int, newest: list[TResponseInputItem], before: int | None
    ) -> list[TResponseInputItem]:
        # ``newest`` holds the items already read (newest first), all of them above ``before``.
        while True:
            # One more than needed: the page then also reaches session_created when the
            # history is exactly ``limit`` items long, so that read ends in one round trip.
            size = min(limit - len(newest) + 1, _PAGE)
            page = await self._repo.list_checkpoints(
                sid, after_seq=before, limit=size, user_id=self._user_id, newest_first=True
            )
            newest.extend(_items(page)[: limit - len(newest)])
            if len(newest) == limit or len(page) < size or page[-1].seq == 1:
                return newest[::-1]
            before = page[-1].seq

    # -- finding the library session ------------------------------------------------------

    async def _load(self, recent: int) -> AgentSession | None:
        """The library session with its newest ``recent`` checkpoints (``None``: none yet)."""
        sid = self._sid if self._sid is not None else _known.get(self._memo_key)
        if sid is not None:
            session = await self._repo.get_session(
                sid, user_id=self._user_id, recent_checkpoints=recent
            )
            if session is not None:
                self._remember(session.session_id)
                return session
            self._forget(sid)
        session = await self._repo.get_session_by_key(
            self._agent_type, self._user_id, key=self._key, recent_checkpoints=recent
        )
        if session is not None:
            self._remember(session.session_id)
        return session

    async def _lookup(self) -> str | None:
        if self._sid is None:
            self._sid = _known.get(self._memo_key)
        if self._sid is None:
            found = await self._repo.get_session_by_key(
                self._agent_type, self._user_id, key=self._key, recent_checkpoints=0
            )
            if found is not None:
                self._remember(found.session_id)
        return self._sid

    def _remember(self, sid: str) -> None:
        self._sid = sid
        _known.put(self._memo_key, sid)

    def _forget(self, sid: str) -> None:
        if self._sid == sid:
            self._sid = None
        _known.drop(self._memo_key, sid)

    async def _lookup_or_create(self) -> str:
        while True:
            sid = await self._lookup()
            if sid is not None:
                return sid
            try:
                created = await self._repo.create_session(
                    self._agent_type, self._user_id, key=self._key
                )
            except SessionExistsError:
                continue  # a concurrent first write created it: read it by key
            self._remember(created.session_id)
            return created.session_id

    async def _on_session(
        self, call: Callable[[str], Awaitable[_T]], *, create: bool, default: _T
    ) -> _T:
        """``call`` with the library session's id (``default`` when there is no session)."""
        gone = SessionNotFoundError(self.session_id)
        for _ in range(_ATTEMPTS):
            sid = await (self._lookup_or_create() if create else self._lookup())
            if sid is None:
                return default
            try:
                return await call(sid)
            except SessionNotFoundError as exc:
                # Cleared or deleted since the look-up: find (or make) the current one.
                gone = exc
                self._forget(sid)
        raise gone


def _items(page: list[SessionCheckpoint]) -> list[TResponseInputItem]:
    return [cast("TResponseInputItem", cp.data) for cp in page if cp.name == ITEM and cp.seq != 1]
