"""Alembic owns the schema: one head, up/down/up, models and migrations agree, wheel ships them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, make_url, text
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_sessions import (
    SchemaOutOfDateError,
    SessionRepository,
    StorageError,
    create_engine,
    migrations,
)
from agent_sessions.tables import VERSION_TABLE, metadata

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
        with pytest.raises(SchemaOutOfDateError, match="agent-sessions db upgrade --url"):
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
    env = {**os.environ, "AGENT_SESSIONS_DATABASE_URL": url}
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
    [wheel] = dist.glob("agent_sessions-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agent_sessions/_alembic/env.py" in names
    assert any(n.startswith("agent_sessions/_alembic/versions/0001") for n in names)
    assert "agent_sessions/py.typed" in names
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
        [str(python), "-c", "import agent_sessions.migrations as m; print(m.script_location())"],
        check=True, cwd=work, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert str(site) in where.stdout
    cli = venv / "bin" / "agent-sessions"
    subprocess.run(
        [str(cli), "db", "upgrade", "--url", "sqlite+aiosqlite:///cli.db"],
        check=True,
        cwd=work,
        env=env,
        capture_output=True,
    )
    code = (
        "import asyncio, agent_sessions.migrations as m\n"
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
    shipped_ini = site / "agent_sessions" / "_alembic" / "alembic.ini"
    assert "agent_sessions/_alembic/alembic.ini" in names
    for command in (["current"], ["upgrade", "head"], ["current"]):
        ran = subprocess.run(
            [str(python), "-m", "alembic", "-c", str(shipped_ini),
             "-x", "url=sqlite+aiosqlite:///alembic.db", *command],
            cwd=work, capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
    assert migrations.head() in ran.stdout
    hint = subprocess.run(
        [str(python), "-c",
         "import asyncio, agent_sessions.migrations as m\n"
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

    expected = {
        table.name: {
            *(str(c.name) for c in table.constraints),
            *(str(i.name) for i in table.indexes),
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
        assert "upgrade the agent-sessions package" in str(info.value)
    finally:
        await engine.dispose()
