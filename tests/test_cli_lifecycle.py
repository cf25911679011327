"""``erase-user`` and ``purge --finished-before``, through the real entry point and in-process
(see test_cli.py for the helpers and why most cases run in-process)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import SessionRepository, SessionState, create_engine, migrations
from agent_session_store._cli_context import CliError, Context
from agent_session_store.cli import build_parser
from agent_session_store.redis_cache import RedisCache
from tests.cancelling import cancel_at
from tests.conftest import FakeClock
from tests.test_cli import cli, in_process

SECRET = "the-payload-never-printed"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"


@pytest.fixture
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated SQLite database in tmp_path."""
    made = create_engine(url)
    await migrations.upgrade(made)
    yield made
    await made.dispose()


@pytest.fixture
def repo(engine: AsyncEngine, clock: FakeClock) -> SessionRepository:
    return SessionRepository(async_sessionmaker(engine, expire_on_commit=False), clock=clock)


async def seed(repo: SessionRepository, user: str = "alice") -> list[str]:
    """Three sessions of ``user`` (5 checkpoints, one soft-deleted), a shared-state document;
    one session of bob."""
    ids = []
    for _ in range(2):
        s = await repo.create_session("planner", user, {"secret": SECRET})
        await repo.add_checkpoint(s.session_id, "said", {"secret": SECRET})
        ids.append(s.session_id)
    gone = await repo.create_session("writer", user)
    await repo.delete_session(gone.session_id)
    ids.append(gone.session_id)
    await repo.update_shared_state("planner", {"secret": SECRET}, user_id=user)
    await repo.create_session("planner", "bob")
    return ids


async def test_erase_user_erases_the_users_data_and_prints_counts(
    tmp_path: Path, url: str, repo: SessionRepository
) -> None:
    await seed(repo)
    result = await cli("erase-user", "alice", "--no-cache", "--url", url, "-v", cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out == (
        "erase-user: erased 3 sessions, 5 checkpoints and 1 shared-state document of user 'alice'\n"
    )
    assert "erased 3 sessions, 5 checkpoints and 1 shared-state document" in result.err  # -v
    assert SECRET not in result.out + result.err
    assert (await repo.stats()).by_state == {"active": 1}
    assert await repo.get_shared_state("planner", user_id="alice") == {}
    again = await cli("erase-user", "alice", "--no-cache", "--url", url, cwd=tmp_path)
    assert again.out.startswith("erase-user: erased 0 sessions, 0 checkpoints and 0 shared-")


def test_erase_user_dry_run_counts_and_changes_nothing(
    url: str, engine: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_seed_in_new_loop(url))
    result = in_process(capsys, "erase-user", "alice", "--agent-type", "planner", "--dry-run",
                        "--url", url)  # fmt: skip
    assert result.code == 0, result.err
    assert result.out == (
        "erase-user --dry-run: 2 sessions, 4 checkpoints and 1 shared-state document of user "
        "'alice' (agent type 'planner') would be erased; nothing was changed\n"
    )
    assert asyncio.run(_sessions(url)) == 4


async def _seed_in_new_loop(url: str) -> None:
    made = create_engine(url)
    try:
        await seed(SessionRepository(async_sessionmaker(made, expire_on_commit=False)))
    finally:
        await made.dispose()


async def _sessions(url: str) -> int:
    made = create_engine(url)
    try:
        stats = await SessionRepository(async_sessionmaker(made)).stats()
        return stats.sessions
    finally:
        await made.dispose()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["erase-user", "alice"], 2, "erase-user changes sessions that applications may hold"),
        (["erase-user", "", "--no-cache"], 2, "user_id must be 1 to 256 characters"),
        (["erase-user", "x" * 257, "--no-cache"], 2, "user_id must be 1 to 256 characters"),
        (["erase-user", "a\x00b", "--no-cache"], 2, "user_id"),
        (["erase-user", "alice", "--agent-type", "", "--no-cache"], 2, "agent_type"),
        (["purge"], 2, "purge needs --deleted-before AGE"),
        (["purge", "--finished-before", "90d"], 2, "purge --finished-before changes sessions"),
        (["purge", "--finished-before", "-90d"], 2, "a negative age is not allowed"),
        (["purge", "--finished-before", "soon"], 2, "invalid duration 'soon'"),
    ],
)
def test_lifecycle_commands_refuse_bad_input_and_change_nothing(
    url: str, engine: AsyncEngine, capsys: pytest.CaptureFixture[str],
    args: list[str], code: int, message: str,
) -> None:  # fmt: skip
    asyncio.run(_seed_in_new_loop(url))
    try:
        result = in_process(capsys, *args, "--url", url)
    except SystemExit as exited:  # argparse
        result_code, err = exited.code, capsys.readouterr().err
    else:
        result_code, err = result.code, result.err
    assert result_code == code
    assert message in err
    assert asyncio.run(_sessions(url)) == 4


async def test_erase_user_invalidates_the_applications_cached_copies(
    tmp_path: Path, url: str, engine: AsyncEngine, redis_url: str, namespace: str,
) -> None:  # fmt: skip
    client = Redis.from_url(redis_url)
    try:
        cache = RedisCache(client, namespace=namespace)
        app = SessionRepository(async_sessionmaker(engine, expire_on_commit=False), cache=cache)
        ids = await seed(app)
        for sid in ids[:2]:
            await app.get_session(sid)
        await cache.drain()
        hits = cache.stats.hits
        assert await app.get_session(ids[0]) is not None
        assert cache.stats.hits == hits + 1  # served from Redis

        result = await cli(
            "erase-user", "alice", "--url", url, "--redis-url", redis_url,
            "--redis-namespace", namespace, cwd=tmp_path,
        )  # fmt: skip
        assert result.code == 0, result.err
        assert all([await app.get_session(sid) is None for sid in ids])
    finally:
        await client.aclose()


async def test_erase_user_interrupted_says_the_batches_done_are_kept_and_resumes(
    tmp_path: Path, url: str, repo: SessionRepository
) -> None:
    for k in range(1, 200):  # cancelled at its k-th await, until one falls between batches
        user = f"alice-{k}"
        await seed(repo, user)
        args = build_parser().parse_args(
            ["erase-user", user, "--no-cache", "--batch-size", "1", "--url", url]
        )
        ctx = Context(args, out=io.StringIO())
        try:
            outcome = await cancel_at(k, lambda ctx=ctx: ctx.args.handler(ctx))
        finally:
            await ctx.close()
        assert outcome.cancelled or outcome.error is None or isinstance(outcome.error, CliError)
        page = await repo.list_sessions(user_id=user, state=SessionState.DELETED)
        left = len((await repo.list_sessions(user_id=user)).items) + len(page.items)
        if isinstance(outcome.error, CliError) and 0 < left < 3:
            break
    else:
        raise AssertionError("no cancellation fell between two batches")
    assert outcome.error.code == 130
    assert "interrupted: the batches of 1 sessions done so far were erased" in str(outcome.error)
    assert "Run the same command again" in str(outcome.error)
    again = await cli("erase-user", user, "--no-cache", "--url", url, cwd=tmp_path)
    assert again.code == 0, again.err
    assert again.out.startswith(f"erase-user: erased {left} session")


async def _finished(repo: SessionRepository, state: SessionState) -> str:
    s = await repo.create_session("planner", "carol")
    found = await repo.get_session(s.session_id)
    assert found is not None
    found.state = state
    await repo.update_session(found)
    return s.session_id


async def test_purge_finished_before_removes_old_finished_sessions(
    tmp_path: Path, url: str, repo: SessionRepository, clock: FakeClock
) -> None:
    clock.advance(days=-100)
    await _finished(repo, SessionState.COMPLETED)
    await _finished(repo, SessionState.FAILED)
    old_active = await repo.create_session("planner")
    clock.advance(days=100)
    recent = await _finished(repo, SessionState.COMPLETED)

    dry = await cli("purge", "--finished-before", "90d", "--dry-run", "--url", url, cwd=tmp_path)
    assert dry.code == 0, dry.err
    assert dry.out.startswith(
        "purge --dry-run: 2 finished sessions (completed or failed) not updated for 90d (since "
    )
    assert dry.out.rstrip().endswith(") would be removed; nothing was changed")
    assert (await repo.stats()).sessions == 4

    result = await cli(
        "purge", "--finished-before", "90d", "--deleted-before", "30d", "--no-cache", "--url", url,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("purge: removed 0 sessions soft-deleted more than 30d ago")
    assert lines[1].startswith(
        "purge: removed 2 finished sessions (completed or failed) not updated for 90d (since "
    )
    assert lines[1].endswith(", with their checkpoints")
    assert await repo.get_session(old_active.session_id) is not None
    assert await repo.get_session(recent) is not None
    assert (await repo.stats()).sessions == 2
