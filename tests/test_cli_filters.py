"""The CLI's filters, count and purge of expired sessions (issue 19, part A)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import SessionRepository, create_engine, migrations
from agent_session_store.cli import build_parser
from tests.test_cli import Result, cli, in_process


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"


@pytest.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url)
    await migrations.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def repo(engine: AsyncEngine) -> SessionRepository:
    # The CLI runs on the real clock: so does this repository.
    return SessionRepository(async_sessionmaker(engine, expire_on_commit=False))


async def run(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    return await asyncio.to_thread(in_process, capsys, *args)


async def test_sessions_list_and_count_take_the_filters(
    url: str, repo: SessionRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    match = await repo.create_session("planner", "u1", {}, {"team": "a", "tier": 2}, key="chat_1")
    await repo.create_session("planner", "u1", {}, {"team": "a", "tier": "2"}, key="chat_2")
    await repo.create_session("planner", "u1", {}, {"team": "a", "tier": 2}, key="chatX")
    filters = ("--key-prefix", "chat_", "--metadata", "team=a", "--metadata", "tier=2")
    listed = await run(capsys, "sessions", "list", *filters, "--json", "--url", url)
    assert listed.code == 0, listed.err
    assert [s["session_id"] for s in json.loads(listed.out)["items"]] == [match.session_id]
    counted = await run(capsys, "sessions", "count", *filters, "--url", url)
    assert (counted.code, counted.out.strip()) == (0, "1 session")
    counted = await run(capsys, "sessions", "count", "--metadata", "tier=\"2\"", "--json",
                        "--url", url)  # fmt: skip
    assert json.loads(counted.out) == {"count": 1}
    old = await run(capsys, "sessions", "count", "--updated-before", "1d", "--url", url)
    assert old.out.strip() == "0 sessions"


async def test_a_bad_filter_is_a_usage_error_naming_it(
    tmp_path: Path, url: str, engine: AsyncEngine
) -> None:
    result = await cli("sessions", "list", "--metadata", "team", "--url", url, cwd=tmp_path)
    assert result.code == 2 and "use KEY=VALUE" in result.err
    result = await cli(
        "sessions", "count", "--metadata", "tags=[1]", "--metadata", "x=NaN", "--url", url,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code != 0 and "NaN" in result.err


async def test_purge_expired_removes_the_expired_sessions(
    url: str, repo: SessionRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    doomed = await repo.create_session("planner", expires_at=datetime.now(UTC) + timedelta(1))
    doomed.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    await repo.update_session(doomed)
    kept = await repo.create_session("planner", expires_at=datetime.now(UTC) + timedelta(1))
    dry = await run(capsys, "purge", "--expired", "--dry-run", "--url", url)
    assert dry.code == 0, dry.err
    assert dry.out.startswith("purge --dry-run: 1 session expired by ")
    done = await run(capsys, "purge", "--expired", "--url", url)
    assert done.code == 0, done.err
    assert done.out.startswith("purge: removed 1 session expired by ")
    assert (await repo.stats()).sessions == 1
    assert await repo.get_session(kept.session_id) is not None


async def test_purge_takes_expired_beside_the_other_rules(
    url: str, repo: SessionRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    doomed = await repo.create_session("planner", expires_at=datetime.now(UTC) + timedelta(1))
    doomed.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    await repo.update_session(doomed)
    done = await run(capsys, "purge", "--expired", "--deleted-before", "30d", "--url", url)
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert lines[0].startswith("purge: removed 0 sessions soft-deleted more than 30d ago")
    assert lines[1].startswith("purge: removed 1 session expired by ")
    nothing = await run(capsys, "purge", "--url", url)
    assert nothing.code == 2
    assert "--expired (sessions whose expiry has passed)" in nothing.err


@pytest.mark.parametrize("path", [["sessions", "count"], ["sessions", "list"], ["purge"]])
def test_the_new_options_have_help(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*path, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--key-prefix", "--metadata") if path[0] == "sessions" else ("--expired",):
        assert option in out
