"""Shared fixtures: real SQLite and PostgreSQL databases built by the migrations, real Redis.

Every repository test runs once per backend: ``sqlite``, ``postgres`` and ``pgbouncer`` (the same
PostgreSQL through a PgBouncer in transaction pooling mode, on an engine made with
``transaction_pooling=True``), each without and with the Redis cache (``+redis``);
test_repository.py adds ``+valkey``, and the cache and fault tests run against both servers
(``cache_server``). Servers are started here on 127.0.0.1 (see tests/servers.py); set
``AGENT_SESSION_STORE_TEST_POSTGRES_URL`` / ``AGENT_SESSION_STORE_TEST_PGBOUNCER_URL`` /
``AGENT_SESSION_STORE_TEST_REDIS_URL`` / ``AGENT_SESSION_STORE_TEST_VALKEY_URL`` to use running
ones.
Without the binaries the backend's tests skip locally; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from agent_session_store import RedisCache, SessionRepository, create_engine, migrations
from agent_session_store.tables import checkpoints_table, sessions_table, shared_state_table
from tests.servers import (
    PgBouncerServer,
    PostgresServer,
    RedisCluster,
    RedisServer,
    ServerUnavailable,
    ValkeyServer,
)

IN_CI = os.environ.get("CI", "").lower() == "true"
# Server connections the shared PgBouncer may open: fewer than the engine's pool, so callers
# queue in PgBouncer as they would in production.
POOLED_SERVER_CONNECTIONS = 4


def pytest_configure(config: pytest.Config) -> None:
    # A garbage collection after every test: a leaked connection fails the test that leaked it.
    config.pluginmanager.import_plugin("tests.collecting")


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a backend that silently skips is a hole in the suite."""
    if IN_CI:
        pytest.fail(f"CI=true and a test backend is unavailable: {reason}")
    pytest.skip(reason)


class FakeClock:
    """A controllable UTC clock for the repository (no sleeping in tests)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: every new pytest process resets that tree to mode 0700,
    # which would cut a concurrently running server (as the postgres user) off its data.
    path = Path(tempfile.mkdtemp(prefix="agent-session-store-servers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(servers_dir: Path) -> Iterator[PostgresServer | None]:
    if os.environ.get("AGENT_SESSION_STORE_TEST_POSTGRES_URL"):
        yield None
        return
    try:
        server = PostgresServer.start(servers_dir / "pg")
    except ServerUnavailable as exc:
        unavailable(f"PostgreSQL: {exc}")
    with server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer | None) -> str:
    if postgres_server is None:
        return os.environ["AGENT_SESSION_STORE_TEST_POSTGRES_URL"]
    return postgres_server.create_database("agent_sessions_test")


@pytest.fixture(scope="session")
def pgbouncer_server(
    servers_dir: Path, postgres_server: PostgresServer | None
) -> Iterator[PgBouncerServer | None]:
    """A PgBouncer in transaction pooling mode in front of the test PostgreSQL."""
    if os.environ.get("AGENT_SESSION_STORE_TEST_PGBOUNCER_URL"):
        yield None
        return
    if postgres_server is None:
        unavailable(
            "PgBouncer: with AGENT_SESSION_STORE_TEST_POSTGRES_URL set, also set "
            "AGENT_SESSION_STORE_TEST_PGBOUNCER_URL "
            "(a transaction-pooling PgBouncer in front of it)"
        )
    try:
        server = PgBouncerServer.start(
            servers_dir / "pgbouncer", postgres_server.port, pool_size=POOLED_SERVER_CONNECTIONS
        )
    except ServerUnavailable as exc:
        unavailable(f"PgBouncer: {exc}")
    with server:
        yield server


@pytest.fixture(scope="session")
def pgbouncer_url(
    pgbouncer_server: PgBouncerServer | None, postgres_server: PostgresServer | None
) -> str:
    """An empty database of the test PostgreSQL, reached through PgBouncer."""
    if pgbouncer_server is None or postgres_server is None:
        return os.environ["AGENT_SESSION_STORE_TEST_PGBOUNCER_URL"]
    postgres_server.create_database("agent_sessions_pooled")
    return pgbouncer_server.url("agent_sessions_pooled")


@pytest.fixture(scope="session")
def redis_server(servers_dir: Path) -> Iterator[RedisServer | None]:
    if os.environ.get("AGENT_SESSION_STORE_TEST_REDIS_URL"):
        yield None
        return
    try:
        server = RedisServer.start(servers_dir / "redis")
    except ServerUnavailable as exc:
        unavailable(f"Redis: {exc}")
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    if redis_server is None:
        return os.environ["AGENT_SESSION_STORE_TEST_REDIS_URL"]
    return redis_server.url


@pytest.fixture(scope="session")
def valkey_server(servers_dir: Path) -> Iterator[ValkeyServer | None]:
    if os.environ.get("AGENT_SESSION_STORE_TEST_VALKEY_URL"):
        yield None
        return
    try:
        server = ValkeyServer.start(servers_dir / "valkey")
    except ServerUnavailable as exc:
        unavailable(f"Valkey: {exc}")
    with server:
        yield server


@pytest.fixture(scope="session")
def valkey_url(valkey_server: ValkeyServer | None) -> str:
    if valkey_server is None:
        return os.environ["AGENT_SESSION_STORE_TEST_VALKEY_URL"]
    return valkey_server.url


CACHE_SERVERS = {"redis": RedisServer, "valkey": ValkeyServer}


@pytest.fixture(params=list(CACHE_SERVERS))
def cache_server(request: pytest.FixtureRequest) -> str:
    """``redis`` or ``valkey``: a module that asks for it runs its tests against both servers.

    Such a module overrides ``redis_url`` with :func:`cache_server_url` (so ``redis_client``
    and everything built on it follow), and picks its private servers from ``CACHE_SERVERS``.
    """
    return str(request.param)


def cache_server_url(cache_server: str, request: pytest.FixtureRequest) -> str:
    """The shared server of the ``cache_server`` under test (body of a ``redis_url`` override)."""
    return str(request.getfixturevalue(f"{cache_server}_url"))


@pytest.fixture(scope="session")
def sqlite_url(servers_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{servers_dir / 'sessions.db'}"


@dataclass
class Backend:
    """One database, migrated to head once per test session."""

    name: str
    engine: AsyncEngine
    factory: async_sessionmaker[AsyncSession]


_engines: dict[str, Backend] = {}


async def _backend(name: str, url: str) -> Backend:
    if name not in _engines:
        engine = create_engine(url, transaction_pooling=name == "pgbouncer")
        await migrations.upgrade(engine)
        _engines[name] = Backend(name, engine, async_sessionmaker(engine, expire_on_commit=False))
    return _engines[name]


@pytest.fixture(scope="session")
async def _dispose_engines() -> AsyncIterator[None]:
    yield
    for backend in _engines.values():
        await backend.engine.dispose()


@pytest.fixture(params=["sqlite", "postgres", "pgbouncer"])
async def db(request: pytest.FixtureRequest, _dispose_engines: None) -> Backend:
    """An empty, migrated database on each backend."""
    url = request.getfixturevalue(f"{request.param}_url")
    backend = await _backend(request.param, url)
    async with backend.engine.begin() as conn:
        await conn.execute(delete(checkpoints_table))
        await conn.execute(delete(sessions_table))
        await conn.execute(delete(shared_state_table))
    return backend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


# A miss stores its value after returning (RedisCache.drain). A test that ends right after one
# would close its client under the store: redis-py then opens a new connection for it that nobody
# closes (a ResourceWarning, an error here). What the docs ask of applications — drain before
# closing the client — is done for every client the tests close.
_CACHE_STEPS = frozenset({"RedisCache._store_checked", "RedisCache._remove"})


async def _cache_stores_done() -> None:
    pending = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", None) in _CACHE_STEPS
    ]
    if pending:
        await asyncio.wait(pending)


@pytest.fixture(autouse=True)
def _stores_end_before_clients_close(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("closes_clients_under_stores"):
        return
    for client_class in (Redis, AsyncRedisCluster):
        close = client_class.aclose

        async def aclose(self: Any, *args: Any, _close: Any = close, **kwargs: Any) -> None:
            await _cache_stores_done()
            await _close(self, *args, **kwargs)

        monkeypatch.setattr(client_class, "aclose", aclose)


@pytest.fixture
def namespace() -> str:
    """A fresh cache namespace per test, so tests sharing one Redis never see each other."""
    return f"test-{uuid.uuid4().hex[:12]}"


def _encryption_option() -> dict[str, Any]:
    """``AGENT_SESSION_STORE_TEST_ENCRYPTION=on``: the ``repo`` fixture encrypts (an exploratory
    run of the repository and framework suites with encryption; tests that read rows directly
    then see envelopes)."""
    if os.environ.get("AGENT_SESSION_STORE_TEST_ENCRYPTION") != "on":
        return {}
    from agent_session_store.encryption import FieldEncryption

    return {"encryption": FieldEncryption({"test": bytes(range(32))}, "test")}


def repo_fixture(*caches: str) -> Callable[..., AsyncIterator[SessionRepository]]:
    """The ``repo`` fixture over these caches: ``nocache``, ``redis``, ``valkey``, ``redis-near``.

    ``redis-near``: Redis with the near cache on (an hour's max age, so that only its
    invalidation keeps it coherent), subscribed before the test begins.
    """

    @pytest.fixture(params=list(caches))
    async def repo(
        request: pytest.FixtureRequest, db: Backend, clock: FakeClock, namespace: str
    ) -> AsyncIterator[SessionRepository]:
        """The repository under test, on each backend, without and with a cache server."""
        extra = _encryption_option()
        if request.param == "nocache":
            yield SessionRepository(db.factory, clock=clock, **extra)
            return
        server, _, near = request.param.partition("-")
        client = Redis.from_url(request.getfixturevalue(f"{server}_url"))
        if not near:
            cache = RedisCache(client, namespace=namespace)
        else:
            cache = RedisCache(client, namespace=namespace, near_cache_entries=1000,
                               near_cache_max_age=timedelta(hours=1))  # fmt: skip
            assert cache._listener is not None
            cache._listener.start()
            await cache._listener.confirmed.wait()
        try:
            yield SessionRepository(db.factory, clock=clock, cache=cache, **extra)
        finally:
            await cache.aclose()
            await client.aclose()

    return repo


repo = repo_fixture("nocache", "redis")


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_cluster(servers_dir: Path) -> Iterator[RedisCluster | None]:
    """Three cluster-mode redis-servers on 127.0.0.1 (or none with a cluster URL set)."""
    if os.environ.get("AGENT_SESSION_STORE_TEST_REDIS_CLUSTER_URL"):
        yield None
        return
    try:
        cluster = RedisCluster.start(servers_dir / "redis-cluster")
    except ServerUnavailable as exc:
        unavailable(f"Redis cluster: {exc}")
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster: RedisCluster | None) -> str:
    if redis_cluster is None:
        return os.environ["AGENT_SESSION_STORE_TEST_REDIS_CLUSTER_URL"]
    return redis_cluster.url


@pytest.fixture
async def redis_cluster_client(redis_cluster_url: str) -> AsyncIterator[AsyncRedisCluster]:
    client = AsyncRedisCluster.from_url(redis_cluster_url)
    yield client
    await client.aclose()
