"""What every command of ``agent-session-store`` works with: the parsed arguments, the database
engine, Redis client and cache it opens (and closes at the end), its exit codes and expected
failures.

The commands are in :mod:`agent_session_store._cli_commands`, the parser and entry point in
:mod:`agent_session_store.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import _cli_redis
from agent_session_store._cli_format import count
from agent_session_store._errors import describe
from agent_session_store.encryption import ENV_KEYS, FieldEncryption
from agent_session_store.engine import DEFAULT_URL, create_engine
from agent_session_store.redis_cache import RedisCache
from agent_session_store.repository import SessionRepository

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SCHEMA = 3
EXIT_NOT_FOUND = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped with Ctrl-C
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: stdout closed early (`| head`), as for other Unix tools

URL_ENV = "AGENT_SESSION_STORE_DATABASE_URL"
REDIS_URL_ENV = "AGENT_SESSION_STORE_REDIS_URL"
REDIS_NAMESPACE_ENV = "AGENT_SESSION_STORE_REDIS_NAMESPACE"
DEFAULT_REDIS_NAMESPACE = "agent_sessions"  # RedisCache's default
CONNECT_TIMEOUT = 10.0  # seconds; asyncpg would otherwise wait a minute for a dead host


class CliError(Exception):
    """An expected failure: print the message, exit with the code, no traceback."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    _engine: AsyncEngine | None = None
    _redis: Redis | None = None
    _cache: RedisCache | None = None
    _closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    @property
    def raw_url(self) -> str:
        return getattr(self.args, "url", None) or os.environ.get(URL_ENV) or DEFAULT_URL

    @property
    def url(self) -> URL:
        try:
            return make_url(self.raw_url)
        except sa_exc.ArgumentError:
            # Not echoed: the string may hold a password.
            raise CliError(
                "cannot parse the database URL (from --url or $AGENT_SESSION_STORE_DATABASE_URL); "
                "expected e.g. postgresql+asyncpg://user:password@host:5432/db or "
                "sqlite+aiosqlite:///path/to/sessions.db",
                EXIT_USAGE,
            ) from None

    @property
    def shown_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    def sqlite_path(self) -> Path | None:
        """The file of a SQLite URL (``None`` for another database, memory or a ``file:`` URI)."""
        url = self.url
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        if url.database.startswith("file:") or url.query.get("uri"):
            return None
        return Path(url.database)

    def missing_sqlite_file(self) -> Path | None:
        path = self.sqlite_path()
        return None if path is None or path.exists() else path

    def engine(self, *, allow_missing_file: bool = False) -> AsyncEngine:
        """The engine for the URL (checked first); a missing SQLite file is refused unless asked."""
        if self._engine is None:
            self._engine = self._create_engine()
            self._closers.append(self._engine.dispose)
        path = self.sqlite_path()
        if path is not None and not path.parent.is_dir():
            # SQLite creates a missing file but not a missing directory.
            raise CliError(
                f"cannot open the SQLite database {path}: the directory {path.parent} does not "
                f"exist; create it (mkdir -p {path.parent}) or correct --url",
                EXIT_ERROR,
            )
        missing = None if allow_missing_file else self.missing_sqlite_file()
        if missing is not None:
            # Opening it would create an empty file; say what to do instead.
            raise CliError(
                f"there is no SQLite database at {missing}: create it with "
                f"`agent-session-store db upgrade --url {self.shown_url}`",
                EXIT_SCHEMA,
            )
        return self._engine

    def _create_engine(self) -> AsyncEngine:
        url = self.url
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise CliError(
                f"unsupported database {url.get_backend_name()!r} in {self.shown_url}: "
                "agent_session_store runs on PostgreSQL (postgresql+asyncpg://...) and SQLite "
                "(sqlite+aiosqlite:///...)",
                EXIT_USAGE,
            )
        kwargs: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql" and url.get_driver_name() == "asyncpg":
            kwargs["connect_args"] = {"timeout": CONNECT_TIMEOUT}
        pooling = bool(getattr(self.args, "transaction_pooling", False))
        try:
            return create_engine(self.raw_url, transaction_pooling=pooling, **kwargs)
        except ValueError as exc:  # transaction pooling on SQLite, a bad URL flag
            raise CliError(f"{exc} (database: {self.shown_url})", EXIT_USAGE) from None
        except (sa_exc.ArgumentError, sa_exc.InvalidRequestError, ImportError) as exc:
            raise CliError(
                f"cannot use the driver of {self.shown_url} ({exc}); use an async driver: "
                "postgresql+asyncpg://... or sqlite+aiosqlite:///...",
                EXIT_USAGE,
            ) from None

    @property
    def redis_url(self) -> str | None:
        """The applications' Redis: ``--redis-url``, else the variable; none with ``--no-cache``."""
        given = getattr(self.args, "redis_url", None)
        if getattr(self.args, "no_cache", False):
            if given:  # one before the command, one after it: argparse sees them apart
                raise CliError(
                    "--no-cache and --redis-url contradict each other: give one of them",
                    EXIT_USAGE,
                )
            return None  # explicit, so it also overrides the variable
        return given or os.environ.get(REDIS_URL_ENV) or None

    def require_cache_choice(self, command: str) -> None:
        """Refuse to change sessions unless told where the applications' cache is, or that none is.

        A command that changes sessions without invalidating the applications' cached copies
        leaves them stale until their ttl runs out; forgetting ``--redis-url`` in a cron line
        must not do that silently. So the operator says which: the cache's address, or
        ``--no-cache``.
        """
        if self.redis_url is not None or getattr(self.args, "no_cache", False):
            return
        raise CliError(
            f"{command} changes sessions that applications may hold in their Redis cache: give "
            f"the cache's address with --redis-url URL (or ${REDIS_URL_ENV}), so that their "
            "copies are invalidated, or --no-cache if no application caches this database; "
            "nothing was changed",
            EXIT_USAGE,
        )

    @property
    def redis_namespace(self) -> str:
        return (
            getattr(self.args, "redis_namespace", None)
            or os.environ.get(REDIS_NAMESPACE_ENV)
            or DEFAULT_REDIS_NAMESPACE
        )

    def redis(self) -> Redis | None:
        """The Redis client when a Redis URL is configured."""
        if self._redis is None and self.redis_url:
            try:
                self._redis = _cli_redis.open_client(self.redis_url)
            except ValueError as exc:
                raise CliError(
                    f"cannot use the Redis URL {_cli_redis.shown(self.redis_url)} ({exc}); "
                    "expected e.g. redis://localhost:6379/0",
                    EXIT_USAGE,
                ) from None
            self._closers.append(self._redis.aclose)
        return self._redis

    def cache(self) -> RedisCache | None:
        """The applications' cache, so that this command's writes invalidate their copies."""
        client = self.redis()
        if client is not None and self._cache is None:
            try:
                self._cache = _cli_redis.open_cache(client, self.redis_namespace)
            except ValueError as exc:
                raise CliError(f"bad --redis-namespace: {exc}", EXIT_USAGE) from None
        return self._cache

    async def redis_trouble(self) -> str | None:
        """Why the Redis given could not be used by this command; ``None`` when it could (or none).

        A cache operation that failed during the command counts, and so does a Redis that does
        not answer a final ping (a command that had nothing to invalidate still says so).
        """
        if self._cache is None or self._redis is None:
            return None
        if self._cache.stats.errors:
            return f"{count(self._cache.stats.errors, 'Redis operation')} failed"
        try:
            await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            return describe(exc)
        return None

    def encryption(self) -> FieldEncryption | None:
        """The keys of ``$AGENT_SESSION_STORE_ENCRYPTION_KEYS``, if set (``--active`` or
        ``$AGENT_SESSION_STORE_ENCRYPTION_ACTIVE`` names the one that encrypts)."""
        if not os.environ.get(ENV_KEYS, "").strip():
            return None
        try:
            return FieldEncryption.from_env(
                active=getattr(self.args, "active", None),
                allow_plaintext=getattr(self.args, "allow_plaintext", False),
            )
        except (ValueError, TypeError, ImportError) as exc:  # messages never show a key
            raise CliError(f"bad encryption keys: {exc}", EXIT_USAGE) from None

    def repository(self, *, recent_checkpoints: int = 20) -> SessionRepository:
        factory = async_sessionmaker(self.engine(), expire_on_commit=False)
        return SessionRepository(
            factory,
            recent_checkpoints=recent_checkpoints,
            cache=self.cache(),
            encryption=self.encryption(),
        )

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()
