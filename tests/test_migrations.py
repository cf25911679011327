"""Alembic owns the schema: one head, up/down/up, models and migrations agree, wheel ships them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_alembic
import pytest_alembic.tests
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pytest_alembic.config import Config as PytestAlembicConfig
from sqlalchemy import Connection, inspect, make_url, text
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import (
    SchemaOutOfDateError,
    SessionRepository,
    StorageError,
    create_engine,
    migrations,
)
from agent_session_store.tables import POSTGRESQL_ONLY_INDEXES, VERSION_TABLE, metadata

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def empty_pg_url(postgres_url: str) -> AsyncIterator[str]:
    """The URL of a brand-new, empty PostgreSQL database on the test server."""
    name = f"fresh_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a brand-new, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("empty_pg_url"))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def test_migrations_have_a_single_head() -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config())
    assert len(script.get_heads()) == 1
    assert migrations.head() == script.get_current_head()


async def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        assert await migrations.current(engine) is None
        await migrations.upgrade(engine)
        assert await migrations.current(engine) == migrations.head()
        async with engine.connect() as conn:
            assert {"agent_sessions_sessions", "agent_sessions_checkpoints", VERSION_TABLE} <= (
                await conn.run_sync(_tables)
            )
        await migrations.downgrade(engine, "base")
        assert await migrations.current(engine) is None
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == {VERSION_TABLE}
        await migrations.upgrade(engine)
        await migrations.check(engine)
        repo = SessionRepository(async_sessionmaker(engine))
        created = await repo.create_session("planner")
        assert await repo.get_session(created.session_id) is not None
    finally:
        await engine.dispose()


async def test_models_and_migrations_agree(empty_url: str) -> None:
    engine = create_engine(empty_url)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                "include_name": lambda name, type_, _: type_ != "table" or name != VERSION_TABLE,
                # Alembic does not read ddl_if: the list filters' indexes exist on PostgreSQL only.
                "include_object": lambda _, name, type_, *__: (
                    connection.dialect.name == "postgresql"
                    or type_ != "index"
                    or name not in POSTGRESQL_ONLY_INDEXES
                ),
            },
        )
        return list(compare_metadata(context, metadata))

    try:
        await migrations.upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_repository_refuses_a_database_without_the_schema(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        repo = SessionRepository(async_sessionmaker(engine))
        with pytest.raises(SchemaOutOfDateError, match="agent-session-store db upgrade --url"):
            await repo.create_session("planner")
        with pytest.raises(SchemaOutOfDateError, match="needs revision"):
            await migrations.check(engine)
        await migrations.upgrade(engine)
        # Checked once per repository: a fresh one passes now.
        fresh = SessionRepository(async_sessionmaker(engine))
        assert (await fresh.create_session("planner")).version == 1
    finally:
        await engine.dispose()


async def test_schema_error_message_hides_the_password(empty_pg_url: str) -> None:
    # The test server trusts local connections, so any password gets in.
    url = make_url(empty_pg_url).set(password="s3cret-pw")
    engine = create_engine(url.render_as_string(hide_password=False))
    try:
        with pytest.raises(
            SchemaOutOfDateError, match=r"--url postgresql\+asyncpg://postgres:\*\*\*@"
        ):
            await migrations.check(engine)
        with pytest.raises(SchemaOutOfDateError) as info:
            await SessionRepository(async_sessionmaker(engine)).heartbeat(str(uuid.uuid4()))
        assert "s3cret-pw" not in str(info.value)
        # The command shown cannot run as printed: it says to put the password back.
        assert "with the real password in place of ***" in str(info.value)
    finally:
        await engine.dispose()


async def test_the_hosts_alembic_version_table_is_never_touched(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            await conn.execute(text("INSERT INTO alembic_version VALUES ('host_rev_1')"))
        await migrations.upgrade(engine)
        await migrations.downgrade(engine, "base")
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert rows == [("host_rev_1",)]
    finally:
        await engine.dispose()


def test_alembic_command_line_upgrades_with_the_version_table(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    alembic = Path(sys.executable).with_name("alembic")
    env = {**os.environ, "AGENT_SESSION_STORE_DATABASE_URL": url}
    subprocess.run(
        [str(alembic), "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    out = subprocess.run(
        [str(alembic), "-c", str(ROOT / "alembic.ini"), "-x", f"url={url}", "current"],
        check=True, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert migrations.head() in out.stdout


def test_offline_sql_for_postgresql_has_the_ddl() -> None:
    sql = migrations.offline_sql("postgresql+asyncpg://u@h/db")
    assert "CREATE TABLE agent_sessions_sessions" in sql
    assert "JSONB" in sql
    assert "CREATE TABLE agent_sessions_alembic_version" in sql


@pytest.mark.slow
def test_the_wheel_ships_the_migrations_and_migrates_on_its_own(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    [wheel] = dist.glob("agent_session_store-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agent_session_store/_alembic/env.py" in names
    assert any(n.startswith("agent_session_store/_alembic/versions/0001") for n in names)
    assert "agent_session_store/py.typed" in names
    # The name is our own: the distribution, its console script, and no package or module
    # named agent_sessions (that import name belongs to another project on the index).
    assert not [n for n in names if n.split("/")[0].startswith("agent_sessions")], names
    [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "\nName: agent-session-store\n" in zipfile.ZipFile(wheel).read(meta).decode()
    [scripts] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points = zipfile.ZipFile(wheel).read(scripts).decode()
    assert "agent-session-store = agent_session_store.cli:main" in entry_points
    assert "agent-sessions" not in entry_points
    # A clean virtualenv with no checkout around; its dependencies come from this one's
    # site-packages (plain path entries: the editable install's hook is not loaded).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(
        p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "sqlalchemy").is_dir()
    )
    (site / "deps.pth").write_text(f"{deps}\n")
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import agent_session_store.migrations as m; print(m.script_location())",
        ],
        check=True, cwd=work, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert str(site) in where.stdout
    cli = venv / "bin" / "agent-session-store"
    subprocess.run(
        [str(cli), "db", "upgrade", "--url", "sqlite+aiosqlite:///cli.db"],
        check=True,
        cwd=work,
        env=env,
        capture_output=True,
    )
    code = (
        "import asyncio, agent_session_store.migrations as m\n"
        "asyncio.run(m.upgrade('sqlite+aiosqlite:///api.db'))\n"
        "print(asyncio.run(m.current('sqlite+aiosqlite:///api.db')))\n"
        "print(asyncio.run(m.current('sqlite+aiosqlite:///cli.db')))\n"
    )
    out = subprocess.run(
        [str(python), "-c", code], check=True, cwd=work, capture_output=True, text=True, env=env
    )
    assert out.stdout.split() == [migrations.head(), migrations.head()]
    # Bug 1 of issue 13: the shipped alembic.ini works with the Alembic command line, and it is
    # the file SchemaOutOfDateError names.
    shipped_ini = site / "agent_session_store" / "_alembic" / "alembic.ini"
    assert "agent_session_store/_alembic/alembic.ini" in names
    for alembic_args in (["current"], ["upgrade", "head"], ["current"]):
        ran = subprocess.run(
            [str(python), "-m", "alembic", "-c", str(shipped_ini),
             "-x", "url=sqlite+aiosqlite:///alembic.db", *alembic_args],
            cwd=work, capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
    assert migrations.head() in ran.stdout
    hint = subprocess.run(
        [str(python), "-c",
         "import asyncio, agent_session_store.migrations as m\n"
         "try:\n    asyncio.run(m.check('sqlite+aiosqlite:///empty.db'))\n"
         "except Exception as e:\n    print(e)\n"],
        check=True, cwd=work, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert f"alembic -c {shipped_ini} " in hint.stdout, hint.stdout


async def test_constraint_and_index_names_in_the_database_match_the_models(empty_url: str) -> None:
    # Autogenerate does not compare check constraints or constraint names: check them here.
    engine = create_engine(empty_url)

    def names(connection: Connection) -> dict[str, set[str]]:
        inspector = inspect(connection)
        found: dict[str, set[str]] = {}
        for table in metadata.sorted_tables:
            found[table.name] = {
                *(c["name"] for c in inspector.get_check_constraints(table.name)),
                *(i["name"] for i in inspector.get_indexes(table.name)),
                *(f["name"] for f in inspector.get_foreign_keys(table.name)),
                inspector.get_pk_constraint(table.name)["name"],
            }
        return found

    skipped = POSTGRESQL_ONLY_INDEXES if empty_url.startswith("sqlite") else frozenset()
    expected = {
        table.name: {
            *(str(c.name) for c in table.constraints),
            *(str(i.name) for i in table.indexes if str(i.name) not in skipped),
        }
        for table in metadata.sorted_tables
    }
    try:
        await migrations.upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(names) == expected
    finally:
        await engine.dispose()


async def test_migrations_on_an_unreachable_server_raise_storage_error() -> None:
    with pytest.raises(StorageError, match=r"migrations\.upgrade failed"):
        await migrations.upgrade("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    with pytest.raises(StorageError, match=r"migrations\.check failed"):
        await migrations.check("postgresql+asyncpg://nobody@127.0.0.1:9/none")


async def test_a_database_migrated_by_a_newer_release_says_so(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        await migrations.upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d_future'"))
        with pytest.raises(SchemaOutOfDateError, match="newer release") as info:
            await migrations.check(engine)
        assert "upgrade the agent-session-store package" in str(info.value)
    finally:
        await engine.dispose()


# -- what tools hand alembic/env.py in config.attributes["connection"] -------------------------


def _config_with(connectable: object) -> AlembicConfig:
    config = migrations.alembic_config()
    config.attributes["connection"] = connectable
    return config


async def _assert_at_head(url: str) -> None:
    assert await migrations.current(url) == migrations.head()
    await migrations.check(url)


async def test_env_accepts_a_connection(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: command.upgrade(_config_with(sync), "head"))
            await conn.commit()
    finally:
        await engine.dispose()
    await _assert_at_head(empty_url)


async def test_env_accepts_an_async_connection_inside_run_sync(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(lambda _: command.upgrade(_config_with(conn), "head"))
            await conn.commit()
    finally:
        await engine.dispose()
    await _assert_at_head(empty_url)


async def test_env_refuses_an_async_connection_outside_run_sync_and_says_how(
    empty_url: str,
) -> None:
    engine = create_engine(empty_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(RuntimeError, match=r"await connection\.run_sync"):
                command.upgrade(_config_with(conn), "head")
            await conn.rollback()
    finally:
        await engine.dispose()
    assert await migrations.current(empty_url) is None


async def test_env_accepts_a_sync_engine(tmp_path: Path) -> None:
    # Only SQLite: the project ships no synchronous PostgreSQL driver.
    engine = sa_create_engine(f"sqlite:///{tmp_path / 'sync.db'}")
    try:
        await asyncio.to_thread(command.upgrade, _config_with(engine), "head")
    finally:
        engine.dispose()
    await _assert_at_head(f"sqlite+aiosqlite:///{tmp_path / 'sync.db'}")


def test_env_accepts_an_async_engine_from_sync_code(empty_url: str) -> None:
    # No event loop runs in this thread: env.py runs one of its own, as under pytest-alembic.
    engine = create_engine(empty_url)
    command.upgrade(_config_with(engine), "head")

    async def current_then_dispose() -> str | None:
        # The engine works in another event loop: env.py's loop is gone, and no connection
        # tied to it was left in the pool.
        try:
            return await migrations.current(engine)
        finally:
            await engine.dispose()

    assert asyncio.run(current_then_dispose()) == migrations.head()


async def test_env_accepts_an_async_engine_from_inside_a_running_loop(empty_url: str) -> None:
    engine = create_engine(empty_url)
    try:
        command.upgrade(_config_with(engine), "head")  # blocks this loop; env.py uses a thread
        assert await migrations.current(engine) == migrations.head()
        command.downgrade(_config_with(engine), "base")
        assert await migrations.current(engine) is None
    finally:
        await engine.dispose()


def test_env_refuses_anything_else_in_the_connection_attribute() -> None:
    with pytest.raises(TypeError, match="must be a Connection, AsyncConnection, Engine or"):
        command.upgrade(_config_with("sqlite:///x.db"), "head")


# pytest-alembic's four built-in tests, from an async engine on each backend. Its pytest plugin
# is disabled (pyproject addopts: its auto-collection breaks on pytest 9 and its fixture names
# are generic); the tests are driven here through its public runner instead.
PYTEST_ALEMBIC_TESTS = [
    "test_single_head_revision",
    "test_upgrade",
    "test_model_definitions_match_ddl",
    "test_up_down_consistency",
]


@pytest.mark.parametrize("name", PYTEST_ALEMBIC_TESTS)
def test_pytest_alembic_builtin(name: str, empty_url: str) -> None:
    engine = create_engine(empty_url)  # an AsyncEngine, as a host's alembic_engine fixture gives
    config = PytestAlembicConfig.from_raw_config(migrations.alembic_config())
    try:
        with pytest_alembic.runner(config=config, engine=engine) as alembic_runner:
            getattr(pytest_alembic.tests, name)(alembic_runner)
    finally:
        asyncio.run(engine.dispose())
