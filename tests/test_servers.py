"""Smoke tests of the throwaway test servers in tests/servers.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest
import redis
from asyncpg.exceptions import InternalClientError
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.servers import (
    PostgresServer,
    RedisCluster,
    RedisServer,
    ServerUnavailable,
    ValkeyServer,
)


def _unavailable(exc: ServerUnavailable) -> NoReturn:
    """Skip locally when a server cannot run, but fail on CI, where it must."""
    if os.environ.get("CI") == "true":
        pytest.fail(str(exc))
    pytest.skip(str(exc))


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(_dsn(url))
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


@pytest.fixture
def fresh_postgres(servers_dir: Path) -> Iterator[PostgresServer]:
    # Not under pytest's tmp_path: another pytest process resets that tree to mode 0700.
    try:
        server = PostgresServer.start(servers_dir / f"fresh-pg-{uuid.uuid4().hex[:8]}")
    except ServerUnavailable as exc:
        _unavailable(exc)
    with server:
        yield server


@pytest.fixture(params=[RedisServer, ValkeyServer], ids=["redis", "valkey"])
def fresh_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = request.param.start(tmp_path)
    except ServerUnavailable as exc:
        _unavailable(exc)
    with server:
        yield server


@pytest.mark.asyncio
async def test_postgres_answers_select_one(fresh_postgres: PostgresServer) -> None:
    assert (
        fresh_postgres.url
        == f"postgresql+asyncpg://postgres@127.0.0.1:{fresh_postgres.port}/postgres"
    )
    assert await _fetchval(fresh_postgres.url, "SELECT 1") == 1

    url = fresh_postgres.create_database("scratch")
    assert await _fetchval(url, "SELECT current_database()") == "scratch"


@pytest.mark.asyncio
async def test_postgres_restart_keeps_rows(fresh_postgres: PostgresServer) -> None:
    conn = await asyncpg.connect(_dsn(fresh_postgres.url))
    try:
        await conn.execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2), (3)")
    finally:
        await conn.close()

    fresh_postgres.restart()

    assert await _fetchval(fresh_postgres.url, "SELECT count(*) FROM t") == 3


@pytest.mark.asyncio
async def test_postgres_comes_back_after_kill(fresh_postgres: PostgresServer) -> None:
    conn = await asyncpg.connect(_dsn(fresh_postgres.url))
    fresh_postgres.kill()
    # asyncpg may also report the killed server as an internal protocol-state error.
    lost = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, InternalClientError)
    with pytest.raises(lost):
        await conn.fetchval("SELECT 1")
    conn.terminate()

    fresh_postgres.restart()

    assert await _fetchval(fresh_postgres.url, "SELECT 1") == 1


def test_redis_set_get_and_restart(fresh_redis: RedisServer) -> None:
    client = redis.Redis.from_url(fresh_redis.url)
    try:
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"

        fresh_redis.kill()
        fresh_redis.restart()

        assert client.get("greeting") is None  # no persistence
    finally:
        client.close()


def test_redis_pause_and_resume(fresh_redis: RedisServer) -> None:
    client = redis.Redis.from_url(fresh_redis.url, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
    try:
        assert client.ping()
        fresh_redis.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        fresh_redis.resume()
        assert client.ping()
    finally:
        client.close()


@pytest.mark.asyncio
async def test_redis_cluster_spreads_keys_over_all_nodes(tmp_path: Path) -> None:
    try:
        cluster = RedisCluster.start(tmp_path)
    except ServerUnavailable as exc:
        _unavailable(exc)
    with cluster:
        assert all(port <= 55535 for port in cluster.ports)
        client = AsyncRedisCluster.from_url(cluster.url)
        try:
            keys = [f"key-{i}" for i in range(30)]
            for key in keys:
                await client.set(key, key)
            assert [await client.get(key) for key in keys] == [key.encode() for key in keys]

            nodes = [client.get_node_from_key(key) for key in keys]
            assert {node.port for node in nodes if node is not None} == set(cluster.ports)
        finally:
            await client.aclose()


def test_valkey_server_is_valkey_not_redis(tmp_path: Path) -> None:
    try:
        server = ValkeyServer.start(tmp_path)
    except ServerUnavailable as exc:
        _unavailable(exc)
    with server:
        client = redis.Redis.from_url(server.url)
        try:
            info = client.info("server")
        finally:
            client.close()
    assert info["server_name"] == "valkey" and "valkey_version" in info
