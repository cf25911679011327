"""The peers' session stores behind ``contenders.Contender``, each through its natural API.

Google ADK (``DatabaseSessionService``, ``SqliteSessionService``), the OpenAI Agents SDK
(``SQLAlchemySession``, ``SQLiteSession``, ``AsyncSQLiteSession``, ``RedisSession``) and LangGraph
(``AsyncPostgresSaver``, ``AsyncSqliteSaver``). Each is imported only when it is opened: the peers
are the optional ``bench`` extra, never a dependency of the library. The payloads match the
repository's: a ~1 KB context at creation (ADK state, the OpenAI first item, the LangGraph first
checkpoint's channel), a small JSON object per append.
"""

from __future__ import annotations

import importlib
import json
import uuid
from pathlib import Path
from typing import Any

from benchmarks import seed
from benchmarks.baselines import asyncpg_dsn
from benchmarks.contenders import APPEND_DATA, Contender, expect

APP, USER = "bench", "bench-user"
CONTEXT_TEXT = json.dumps(seed.CONTEXT)
APPEND_TEXT = json.dumps(APPEND_DATA)


def _sqlite_path(url: str) -> str:
    return url.split("///", 1)[1]


# --- Google ADK --------------------------------------------------------------------------------


class _Adk(Contender):
    """create_session(state=context); get_session (every event, ADK's default); append_event of
    one Event; delete_session."""

    def _event(self) -> Any:
        from google.adk.events import Event
        from google.genai import types

        content = types.Content(role="model", parts=[types.Part(text=APPEND_TEXT)])
        return Event(author="agent", invocation_id=uuid.uuid4().hex, content=content)

    async def _create(self, item: int) -> Any:
        return await self.service.create_session(app_name=APP, user_id=USER, state=seed.CONTEXT)

    async def _get(self, handle: Any) -> None:
        found = await self.service.get_session(app_name=APP, user_id=USER, session_id=handle.id)
        expect(found, "get_session")

    async def _append(self, handle: Any) -> Any:
        await self.service.append_event(handle, self._event())
        return handle

    async def _delete(self, handle: Any) -> None:
        await self.service.delete_session(app_name=APP, user_id=USER, session_id=handle.id)

    service: Any = None


class AdkDatabase(_Adk):
    """``google.adk.sessions.DatabaseSessionService`` (SQLAlchemy; asyncpg or aiosqlite)."""

    name = "ADK DatabaseSessionService"

    def __init__(self, backend: str, url: str) -> None:
        super().__init__(backend)
        self._url = url

    async def open(self) -> None:
        sessions = importlib.import_module("google.adk.sessions")
        self.service = sessions.DatabaseSessionService(db_url=self._url)
        self.stack.push_async_callback(self.service.close)


class AdkSqlite(_Adk):
    """``google.adk.sessions.sqlite_session_service.SqliteSessionService`` (aiosqlite)."""

    name = "ADK SqliteSessionService"

    def __init__(self, url: str) -> None:
        super().__init__("sqlite")
        self._path = _sqlite_path(url)

    async def open(self) -> None:
        module = importlib.import_module("google.adk.sessions.sqlite_session_service")
        self.service = module.SqliteSessionService(self._path)
        self.stack.push_async_callback(self.service.close)


# --- OpenAI Agents SDK -------------------------------------------------------------------------


def _item(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": text}


class _OpenAI(Contender):
    """A session object per conversation. create = a new session object + add_items of its first
    item (the SDK has no separate create: the first write creates the session); get = get_items()
    (every item, the SDK's default); append = add_items of one item; delete = clear_session()."""

    def _session(self, session_id: str) -> Any:
        raise NotImplementedError

    async def _create(self, item: int) -> Any:
        session = self._session(uuid.uuid4().hex)
        await session.add_items([_item("user", CONTEXT_TEXT)])
        return session

    async def _get(self, handle: Any) -> None:
        expect(await handle.get_items(), "get_items")

    async def _append(self, handle: Any) -> Any:
        await handle.add_items([_item("assistant", APPEND_TEXT)])
        return handle

    async def _delete(self, handle: Any) -> None:
        await handle.clear_session()
        await self._release(handle)


class OpenAISQLAlchemy(_OpenAI):
    """``agents.extensions.memory.SQLAlchemySession`` on one shared ``AsyncEngine``."""

    name = "OpenAI SQLAlchemySession"

    def __init__(self, backend: str, url: str) -> None:
        super().__init__(backend)
        self._url = url
        self._engine: Any = None
        self._class: Any = None

    async def open(self) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        self._class = importlib.import_module("agents.extensions.memory").SQLAlchemySession
        self._engine = create_async_engine(self._url)
        self.stack.push_async_callback(self._engine.dispose)
        # Tables once, as a deployment would; every session object after that skips the check.
        setup = self._class("setup", engine=self._engine, create_tables=True)
        await setup.get_items()

    def _session(self, session_id: str) -> Any:
        return self._class(session_id, engine=self._engine)


class OpenAISQLite(_OpenAI):
    """``agents.SQLiteSession`` (sqlite3 in worker threads), one file."""

    name = "OpenAI SQLiteSession"

    def __init__(self, url: str) -> None:
        super().__init__("sqlite")
        self._path = Path(_sqlite_path(url))
        self._class: Any = None

    async def open(self) -> None:
        self._class = importlib.import_module("agents").SQLiteSession

    def _session(self, session_id: str) -> Any:
        return self._class(session_id, self._path)

    async def _release(self, handle: Any) -> None:
        handle.close()


class OpenAIAsyncSQLite(_OpenAI):
    """``agents.extensions.memory.AsyncSQLiteSession`` (aiosqlite), one file."""

    name = "OpenAI AsyncSQLiteSession"

    def __init__(self, url: str) -> None:
        super().__init__("sqlite")
        self._path = Path(_sqlite_path(url))
        self._class: Any = None

    async def open(self) -> None:
        self._class = importlib.import_module("agents.extensions.memory").AsyncSQLiteSession

    def _session(self, session_id: str) -> Any:
        return self._class(session_id, self._path)

    async def _release(self, handle: Any) -> None:
        await handle.close()


class OpenAIRedis(_OpenAI):
    """``agents.extensions.memory.RedisSession`` on one shared redis-py client."""

    name = "OpenAI RedisSession"

    def __init__(self, redis_url: str, prefix: str) -> None:
        super().__init__("redis")
        self._redis_url = redis_url
        self._prefix = prefix
        self._client: Any = None
        self._class: Any = None

    async def open(self) -> None:
        from redis.asyncio import Redis

        self._class = importlib.import_module("agents.extensions.memory").RedisSession
        self._client = Redis.from_url(self._redis_url)
        self.stack.push_async_callback(self._client.aclose)

    def _session(self, session_id: str) -> Any:
        return self._class(session_id, redis_client=self._client, key_prefix=self._prefix)


# --- LangGraph ---------------------------------------------------------------------------------


class _LangGraph(Contender):
    """A thread per session. create = aput of its first checkpoint (the context in a channel);
    get = aget_tuple (the newest checkpoint); append = aput of the next checkpoint (one new
    channel version); delete = adelete_thread."""

    saver: Any = None

    def _checkpoint(self, step: int) -> dict[str, Any]:
        base = importlib.import_module("langgraph.checkpoint.base")
        uuid6 = importlib.import_module("langgraph.checkpoint.base.id").uuid6
        checkpoint: dict[str, Any] = base.empty_checkpoint()
        values: dict[str, Any] = {"context": seed.CONTEXT}
        versions: dict[str, Any] = {"context": 1}
        if step:
            values["step"] = {**APPEND_DATA, "n": step}
            versions["step"] = step
        checkpoint.update(id=str(uuid6(clock_seq=step)), channel_values=values,
                          channel_versions=versions, updated_channels=list(values))  # fmt: skip
        return checkpoint

    async def _put(self, config: dict[str, Any], step: int) -> Any:
        checkpoint = self._checkpoint(step)
        new_versions = {"step": step} if step else {"context": 1}
        metadata = {"source": "loop", "step": step}
        return await self.saver.aput(config, checkpoint, metadata, new_versions)

    async def _create(self, item: int) -> Any:
        thread = uuid.uuid4().hex
        config = await self._put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, 0)
        return (thread, config, 0)

    async def _get(self, handle: Any) -> None:
        config = {"configurable": {"thread_id": handle[0], "checkpoint_ns": ""}}
        expect(await self.saver.aget_tuple(config), "aget_tuple")

    async def _append(self, handle: Any) -> Any:
        thread, config, step = handle
        return (thread, await self._put(config, step + 1), step + 1)

    async def _delete(self, handle: Any) -> None:
        await self.saver.adelete_thread(handle[0])


class LangGraphPostgres(_LangGraph):
    """``langgraph.checkpoint.postgres.aio.AsyncPostgresSaver.from_conn_string`` (psycopg 3)."""

    name = "LangGraph AsyncPostgresSaver"

    def __init__(self, url: str) -> None:
        super().__init__("postgres")
        self._dsn = asyncpg_dsn(url)

    async def open(self) -> None:
        saver = importlib.import_module("langgraph.checkpoint.postgres.aio").AsyncPostgresSaver
        self.saver = await self.stack.enter_async_context(saver.from_conn_string(self._dsn))
        await self.saver.setup()


class LangGraphSqlite(_LangGraph):
    """``langgraph.checkpoint.sqlite.aio.AsyncSqliteSaver.from_conn_string`` (aiosqlite)."""

    name = "LangGraph AsyncSqliteSaver"

    def __init__(self, url: str) -> None:
        super().__init__("sqlite")
        self._path = _sqlite_path(url)

    async def open(self) -> None:
        saver = importlib.import_module("langgraph.checkpoint.sqlite.aio").AsyncSqliteSaver
        self.saver = await self.stack.enter_async_context(saver.from_conn_string(self._path))
        await self.saver.setup()
