"""The primitives agent frameworks build on: keys, windows, rewind, batch append, shared state,
hard delete and explicit timestamps. Every test runs on SQLite and PostgreSQL, each without and
with the Redis cache (the ``repo`` fixture).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select

from agent_session_store import (
    AgentSessionStoreError,
    RedisCache,
    SessionCheckpoint,
    SessionExistsError,
    SessionNotFoundError,
    SessionRepository,
    SessionValidationError,
)
from agent_session_store.tables import checkpoints_table, sessions_table, shared_state_table
from tests.conftest import Backend, FakeClock
from tests.pausing import after_statement


async def count_rows(db: Backend) -> tuple[int, int, int]:
    async with db.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            [
                await conn.scalar(select(func.count()).select_from(table)) or 0
                for table in (sessions_table, checkpoints_table, shared_state_table)
            ]
        )


async def with_history(repo: SessionRepository, n: int, **kwargs: Any) -> str:
    """A session with ``n`` checkpoints after ``session_created`` (seqs 2..n+1)."""
    created = await repo.create_session("planner", **kwargs)
    if n:
        await repo.add_checkpoints(created.session_id, [(f"cp-{i}", {"i": i}) for i in range(n)])
    return created.session_id


# -- keys ----------------------------------------------------------------------------------------


async def test_session_created_with_a_key_is_found_by_it(repo: SessionRepository) -> None:
    created = await repo.create_session("planner", "u1", key="chat-42")
    assert created.key == "chat-42"
    found = await repo.get_session_by_key("planner", "u1", key="chat-42")
    assert found is not None and found.session_id == created.session_id and found.key == "chat-42"
    again = await repo.get_session(created.session_id)
    assert again is not None and again.key == "chat-42"
    assert (await repo.create_session("planner")).key is None


async def test_get_session_by_key_takes_its_arguments_in_create_sessions_order(
    repo: SessionRepository,
) -> None:
    created = await repo.create_session("assistant", "alice", key="chat-42")
    found = await repo.get_session_by_key("assistant", "alice", key="chat-42")
    assert found is not None and found.session_id == created.session_id
    # The user is the second positional argument, as in create_session; the key is named, so
    # reading a key as a user (or the reverse) cannot happen silently.
    with pytest.raises(TypeError, match="key"):
        await repo.get_session_by_key("assistant", "alice")  # type: ignore[call-arg]


async def test_whitespace_around_a_key_is_not_part_of_it(repo: SessionRepository) -> None:
    created = await repo.create_session("planner", "u1", key="  chat-42 ")
    assert created.key == "chat-42"
    for spelling in ("chat-42", " chat-42", "chat-42  "):
        found = await repo.get_session_by_key("planner", "u1", key=spelling)
        assert found is not None and found.session_id == created.session_id
    with pytest.raises(SessionExistsError):
        await repo.create_session("planner", "u1", key="chat-42")


async def test_keys_are_per_agent_type_and_user(repo: SessionRepository) -> None:
    mine = await repo.create_session("planner", "u1", key="k")
    theirs = await repo.create_session("planner", "u2", key="k")
    other_agent = await repo.create_session("coder", "u1", key="k")
    nobody = await repo.create_session("planner", "", key="k")
    assert len({mine.session_id, theirs.session_id, other_agent.session_id, nobody.session_id}) == 4
    assert (await repo.get_session_by_key("planner", "u2", key="k")).session_id == (  # type: ignore[union-attr]
        theirs.session_id
    )
    assert (await repo.get_session_by_key("planner", key="k")).session_id == nobody.session_id  # type: ignore[union-attr]
    assert await repo.get_session_by_key("planner", "u3", key="k") is None
    assert await repo.get_session_by_key("writer", "u1", key="k") is None


async def test_a_taken_key_raises_session_exists_and_writes_nothing(
    repo: SessionRepository, db: Backend
) -> None:
    await repo.create_session("planner", "u1", key="k")
    before = await count_rows(db)
    with pytest.raises(SessionExistsError, match="get_session_by_key") as caught:
        await repo.create_session("planner", "u1", key="k")
    assert isinstance(caught.value, AgentSessionStoreError)
    assert (caught.value.agent_type, caught.value.user_id, caught.value.key) == (
        "planner",
        "u1",
        "k",
    )
    assert await count_rows(db) == before


async def test_twenty_five_concurrent_creates_of_one_key_make_one_session(
    repo: SessionRepository, db: Backend
) -> None:
    results = await asyncio.gather(
        *(repo.create_session("planner", "u1", {"n": i}, key="first") for i in range(25)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 24 and all(isinstance(r, SessionExistsError) for r in losers)
    assert (await count_rows(db))[:2] == (1, 1)
    found = await repo.get_session_by_key("planner", "u1", key="first")
    assert found is not None and found.session_id == winners[0].session_id


async def test_a_deleted_sessions_key_can_be_used_again(repo: SessionRepository) -> None:
    old = await repo.create_session("planner", "u1", key="k")
    assert await repo.get_session_by_key("planner", "u1", key="k") is not None  # cached
    assert await repo.delete_session(old.session_id)
    assert await repo.get_session_by_key("planner", "u1", key="k") is None
    new = await repo.create_session("planner", "u1", key="k")
    found = await repo.get_session_by_key("planner", "u1", key="k")
    assert found is not None and found.session_id == new.session_id != old.session_id


async def test_hard_delete_and_recreate_under_one_key_never_serves_the_old_session(
    repo: SessionRepository,
) -> None:
    old = await repo.create_session("planner", "u1", {"gen": "old"}, key="k")
    await repo.add_checkpoint(old.session_id, "old-step")
    for _ in range(2):  # the second read is a cache hit on the Redis backends
        found = await repo.get_session_by_key("planner", "u1", key="k")
        assert found is not None and found.context == {"gen": "old"}
    assert await repo.delete_session(old.session_id, hard=True)
    new = await repo.create_session("planner", "u1", {"gen": "new"}, key="k")
    for _ in range(2):
        found = await repo.get_session_by_key("planner", "u1", key="k")
        assert found is not None and found.session_id == new.session_id
        assert found.context == {"gen": "new"} and found.checkpoint_count == 1
    assert await repo.get_session(old.session_id) is None


async def test_a_read_by_key_overtaken_by_a_delete_and_recreate_finds_the_new_session(
    repo: SessionRepository, db: Backend
) -> None:
    old = await repo.create_session("planner", "u1", {"gen": "old"}, key="k")
    with after_statement(db.engine) as pause:
        pause.armed = True
        reading = asyncio.create_task(repo.get_session_by_key("planner", "u1", key="k"))
        await pause.reached.wait()  # its first statement ran: the key named the old session
        assert await repo.delete_session(old.session_id, hard=True)
        new = await repo.create_session("planner", "u1", {"gen": "new"}, key="k")
        pause.release.set()
        found = await reading
    assert found is not None
    if repo.cache is None:  # one statement, which read the old session whole before the delete
        assert (found.session_id, found.context) == (old.session_id, {"gen": "old"})
    else:  # the key, then the session by id (cached): the old one was gone, so the key again
        assert (found.session_id, found.context) == (new.session_id, {"gen": "new"})


async def test_reads_by_key_use_the_cache_and_see_every_write(repo: SessionRepository) -> None:
    created = await repo.create_session("planner", "u1", key="k")
    await repo.get_session_by_key("planner", "u1", key="k")
    if isinstance(repo.cache, RedisCache):
        await repo.cache.drain()  # the miss stores after returning
    hits = repo.cache.stats.hits if isinstance(repo.cache, RedisCache) else 0
    await repo.get_session_by_key("planner", "u1", key="k")
    if isinstance(repo.cache, RedisCache):
        assert repo.cache.stats.hits == hits + 1
    await repo.add_checkpoint(created.session_id, "step")
    found = await repo.get_session_by_key("planner", "u1", key="k")
    assert found is not None and found.checkpoint_count == 2 and found.version == 2


@pytest.mark.parametrize("key", ["", "x" * 129, "a\nb", "tab\there", "nul\x00", "\ud800", 7])
async def test_keys_that_are_not_printable_text_of_1_to_128_are_refused(
    repo: SessionRepository, db: Backend, key: Any
) -> None:
    with pytest.raises(SessionValidationError, match="key"):
        await repo.create_session("planner", key=key)
    with pytest.raises(SessionValidationError, match="key"):
        await repo.get_session_by_key("planner", key=key)
    assert await count_rows(db) == (0, 0, 0)


async def test_longest_and_unicode_keys_are_stored(repo: SessionRepository) -> None:
    for key in ("x" * 128, "caf\u00e9 \u2615 \U0001f600", "'; DROP TABLE x; --"):
        created = await repo.create_session("planner", key=key)
        found = await repo.get_session_by_key("planner", key=key)
        assert found is not None and found.session_id == created.session_id


async def test_a_taken_key_inside_bind_leaves_the_callers_transaction_usable(
    repo: SessionRepository, db: Backend
) -> None:
    await repo.create_session("planner", key="k")
    async with db.factory() as session, session.begin():
        bound = repo.bind(session)
        with pytest.raises(SessionExistsError):
            await bound.create_session("planner", key="k")
        other = await bound.create_session("planner", key="k2")
    assert await repo.get_session_by_key("planner", key="k2") is not None
    assert other.key == "k2"


# -- per-call windows ----------------------------------------------------------------------------


async def test_get_session_window_per_call(repo: SessionRepository) -> None:
    sid = await with_history(repo, 24)  # 25 checkpoints; the repository's default window is 20
    for window, seqs in [
        (0, []),
        (2, [24, 25]),
        (None, list(range(6, 26))),
        (50, list(range(1, 26))),
    ]:
        session = await repo.get_session(sid, recent_checkpoints=window)
        assert session is not None
        assert [cp.seq for cp in session.checkpoints] == seqs, window
        assert session.checkpoint_count == 25


async def test_other_windows_never_poison_or_come_from_the_cached_copy(
    repo: SessionRepository,
) -> None:
    sid = await with_history(repo, 24)
    for window in (50, 0, 3, 50):
        wide = await repo.get_session(sid, recent_checkpoints=window)
        assert wide is not None and len(wide.checkpoints) == min(window, 25)
        default = await repo.get_session(sid)
        assert default is not None and len(default.checkpoints) == 20
    by_key_sid = (await repo.create_session("planner", key="k")).session_id
    await repo.add_checkpoints(by_key_sid, [("a", {}), ("b", {})])
    narrow = await repo.get_session_by_key("planner", key="k", recent_checkpoints=1)
    assert narrow is not None and [cp.name for cp in narrow.checkpoints] == ["b"]
    full = await repo.get_session_by_key("planner", key="k")
    assert full is not None and [cp.name for cp in full.checkpoints] == [
        "session_created",
        "a",
        "b",
    ]


@pytest.mark.parametrize("window", [-1, 1.5, "3", True, 2**31])
async def test_bad_windows_are_refused(repo: SessionRepository, window: Any) -> None:
    sid = await with_history(repo, 0)
    with pytest.raises(SessionValidationError, match="recent_checkpoints"):
        await repo.get_session(sid, recent_checkpoints=window)


async def test_list_checkpoints_newest_first_in_pages(repo: SessionRepository) -> None:
    sid = await with_history(repo, 9)
    first = await repo.list_checkpoints(sid, newest_first=True, limit=4)
    assert [cp.seq for cp in first] == [10, 9, 8, 7]
    second = await repo.list_checkpoints(sid, newest_first=True, limit=4, after_seq=first[-1].seq)
    assert [cp.seq for cp in second] == [6, 5, 4, 3]
    last = await repo.list_checkpoints(sid, newest_first=True, after_seq=second[-1].seq)
    assert [cp.seq for cp in last] == [2, 1]


async def test_list_checkpoints_since_is_inclusive(
    repo: SessionRepository, clock: FakeClock
) -> None:
    created = await repo.create_session("planner")
    times = [clock.advance(seconds=10) for _ in range(4)]
    for i, when in enumerate(times):
        await repo.add_checkpoint(created.session_id, f"cp-{i}", timestamp=when)
    since = await repo.list_checkpoints(created.session_id, since=times[2])
    assert [cp.name for cp in since] == ["cp-2", "cp-3"]
    assert since[0].timestamp == times[2]
    newest = await repo.list_checkpoints(
        created.session_id, since=times[1].astimezone(timezone(timedelta(hours=5))),
        newest_first=True,
    )  # fmt: skip
    assert [cp.name for cp in newest] == ["cp-3", "cp-2", "cp-1"]
    with pytest.raises(SessionValidationError, match="time zone"):
        await repo.list_checkpoints(created.session_id, since=datetime(2026, 1, 1))


# -- rewind --------------------------------------------------------------------------------------


async def test_pop_removes_and_returns_the_newest_then_the_seq_is_reused(
    repo: SessionRepository,
) -> None:
    sid = await with_history(repo, 2)
    popped = await repo.pop_checkpoint(sid)
    assert popped is not None and (popped.seq, popped.name, popped.data) == (3, "cp-1", {"i": 1})
    session = await repo.get_session(sid)
    assert session is not None and session.checkpoint_count == 2 and session.version == 3
    assert [cp.seq for cp in session.checkpoints] == [1, 2]
    again = await repo.add_checkpoint(sid, "after-pop")
    assert again.seq == 3
    assert [cp.name for cp in await repo.list_checkpoints(sid)] == [
        "session_created", "cp-0", "after-pop",
    ]  # fmt: skip


async def test_pop_never_removes_session_created(repo: SessionRepository) -> None:
    sid = await with_history(repo, 1)
    assert (await repo.pop_checkpoint(sid)) is not None
    session = await repo.get_session(sid)
    assert session is not None
    assert await repo.pop_checkpoint(sid) is None
    after = await repo.get_session(sid)
    assert after is not None and after.version == session.version  # nothing changed
    assert [cp.name for cp in after.checkpoints] == ["session_created"]


async def test_ten_concurrent_pops_on_ten_checkpoints_return_ten_distinct(
    repo: SessionRepository,
) -> None:
    sid = await with_history(repo, 10)
    popped = await asyncio.gather(*(repo.pop_checkpoint(sid) for _ in range(10)))
    assert sorted(cp.seq for cp in popped if cp is not None) == list(range(2, 12))
    assert await repo.pop_checkpoint(sid) is None
    session = await repo.get_session(sid)
    assert session is not None and session.checkpoint_count == 1


async def test_truncate_rewinds_and_keeps_seqs_dense(repo: SessionRepository) -> None:
    sid = await with_history(repo, 6)
    assert await repo.truncate_checkpoints(sid, 3) == 4
    session = await repo.get_session(sid)
    assert session is not None and session.checkpoint_count == 3 and session.version == 3
    assert [cp.seq for cp in session.checkpoints] == [1, 2, 3]
    assert (await repo.add_checkpoint(sid, "next")).seq == 4
    assert await repo.truncate_checkpoints(sid, 4) == 0
    unchanged = await repo.get_session(sid)
    assert unchanged is not None and unchanged.version == 4
    assert await repo.truncate_checkpoints(sid, 1) == 3
    assert [cp.seq for cp in await repo.list_checkpoints(sid)] == [1]


@pytest.mark.parametrize("after_seq", [0, -1, 2**31, 1.0, None])
async def test_truncate_refuses_after_seq_below_one(
    repo: SessionRepository, after_seq: Any
) -> None:
    sid = await with_history(repo, 2)
    with pytest.raises(SessionValidationError, match="after_seq"):
        await repo.truncate_checkpoints(sid, after_seq)
    assert len(await repo.list_checkpoints(sid)) == 3


async def test_rewind_is_scoped_to_the_user_and_to_live_sessions(repo: SessionRepository) -> None:
    sid = await with_history(repo, 2, user_id="owner")
    for call in (
        lambda: repo.pop_checkpoint(sid, user_id="intruder"),
        lambda: repo.truncate_checkpoints(sid, 1, user_id="intruder"),
        lambda: repo.pop_checkpoint("not-an-id"),
        lambda: repo.add_checkpoints(sid, [("x", {})], user_id="intruder"),
    ):
        with pytest.raises(SessionNotFoundError):
            await call()
    assert len(await repo.list_checkpoints(sid)) == 3
    assert await repo.pop_checkpoint(sid, user_id="owner") is not None
    await repo.delete_session(sid)
    with pytest.raises(SessionNotFoundError):
        await repo.pop_checkpoint(sid)
    with pytest.raises(SessionNotFoundError):
        await repo.truncate_checkpoints(sid, 1)


# -- batch append and timestamps -----------------------------------------------------------------


async def test_add_checkpoints_appends_a_batch_with_consecutive_seqs(
    repo: SessionRepository, clock: FakeClock
) -> None:
    sid = await with_history(repo, 1)
    cached = await repo.get_session(sid)
    assert cached is not None
    added = await repo.add_checkpoints(sid, [("a", {"n": 1}), ("b", {}), ("c", {"x": [1]})])
    assert [(cp.seq, cp.name, cp.data) for cp in added] == [
        (3, "a", {"n": 1}), (4, "b", {}), (5, "c", {"x": [1]}),
    ]  # fmt: skip
    assert all(cp.timestamp == clock.now for cp in added)
    session = await repo.get_session(sid)
    assert session is not None and session.version == cached.version + 1
    assert [cp.name for cp in session.checkpoints[-3:]] == ["a", "b", "c"]
    assert await repo.add_checkpoints(sid, []) == []


async def test_twenty_five_concurrent_single_item_batches_all_land(repo: SessionRepository) -> None:
    sid = await with_history(repo, 0)
    added = await asyncio.gather(*(repo.add_checkpoints(sid, [(f"i-{i}", {})]) for i in range(25)))
    assert sorted(batch[0].seq for batch in added if batch[0].seq) == list(range(2, 27))
    history = await repo.list_checkpoints(sid)
    assert [cp.seq for cp in history] == list(range(1, 27))
    assert {cp.name for cp in history[1:]} == {f"i-{i}" for i in range(25)}


async def test_concurrent_batches_interleave_whole(repo: SessionRepository) -> None:
    sid = await with_history(repo, 0)
    batches = await asyncio.gather(
        *(repo.add_checkpoints(sid, [(f"b{b}", {"i": i}) for i in range(5)]) for b in range(8))
    )
    history = await repo.list_checkpoints(sid)
    assert len(history) == 41
    for batch in batches:
        seqs = [cp.seq for cp in batch]
        assert seqs == list(range(seqs[0] or 0, (seqs[0] or 0) + 5))
        stored = [(cp.name, cp.data) for cp in history if cp.seq in seqs]
        assert stored == [(f"{batch[0].name}", {"i": i}) for i in range(5)]


@pytest.mark.parametrize(
    "items",
    [
        [("ok", {}), ("", {})],
        [("ok", {}), ("bad", {"x": float("nan")})],
        [("ok", {}), ("only-a-name",)],
        [("ok", {}), "ab"],
        "ab",
        {"a": {}},
        [("ok", {})] * 1001,
    ],
    ids=["empty-name", "nan", "short-item", "str-item", "str", "dict", "too-many"],
)
async def test_a_bad_item_rejects_the_whole_batch(
    repo: SessionRepository, db: Backend, items: Any
) -> None:
    sid = await with_history(repo, 0)
    before = await count_rows(db)
    with pytest.raises(SessionValidationError):
        await repo.add_checkpoints(sid, items)
    assert await count_rows(db) == before


async def test_explicit_timestamps_are_stored_as_the_checkpoint_time(
    repo: SessionRepository, clock: FakeClock
) -> None:
    sid = await with_history(repo, 0)
    event_time = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-7)))
    one = await repo.add_checkpoint(sid, "event", timestamp=event_time)
    many = await repo.add_checkpoints(sid, [("e1", {}), ("e2", {})], timestamp=event_time)
    assert one.timestamp == event_time and one.timestamp.tzinfo == UTC
    stored = await repo.list_checkpoints(sid, after_seq=1)
    assert [cp.timestamp for cp in stored] == [event_time] * 3
    assert all(cp.timestamp.tzinfo == UTC for cp in stored + many)
    session = await repo.get_session(sid)
    assert session is not None and session.updated_at == clock.now  # the write's own time


@pytest.mark.parametrize("when", [datetime(2026, 1, 1), "2026-01-01T00:00:00Z", 0])
async def test_naive_or_non_datetime_timestamps_are_refused(
    repo: SessionRepository, db: Backend, when: Any
) -> None:
    sid = await with_history(repo, 0)
    before = await count_rows(db)
    with pytest.raises(SessionValidationError, match="timestamp"):
        await repo.add_checkpoint(sid, "x", timestamp=when)
    with pytest.raises(SessionValidationError, match="timestamp"):
        await repo.add_checkpoints(sid, [("x", {})], timestamp=when)
    assert await count_rows(db) == before


# -- shared state --------------------------------------------------------------------------------


async def test_app_wide_and_user_state_are_separate_documents(repo: SessionRepository) -> None:
    assert await repo.get_shared_state("planner") == {}
    assert await repo.update_shared_state("planner", {"theme": "dark"}) == {"theme": "dark"}
    assert await repo.update_shared_state("planner", {"lang": "fr"}, user_id="") == {"lang": "fr"}
    await repo.update_shared_state("planner", {"lang": "de"}, user_id="u1")
    await repo.update_shared_state("coder", {"other": 1})
    assert await repo.get_shared_state("planner") == {"theme": "dark"}
    assert await repo.get_shared_state("planner", user_id="") == {"lang": "fr"}
    assert await repo.get_shared_state("planner", user_id="u1") == {"lang": "de"}
    assert await repo.get_shared_state("planner", user_id="u2") == {}


async def test_update_sets_and_removes_top_level_keys(repo: SessionRepository) -> None:
    await repo.update_shared_state("planner", {"a": {"deep": 1}, "b": 2, "c": None}, user_id="u")
    after = await repo.update_shared_state(
        "planner", {"a": {"other": 2}, "d": [1]}, user_id="u", remove=["b", "missing"]
    )
    assert after == {"a": {"other": 2}, "c": None, "d": [1]}  # values replaced, not merged
    assert await repo.get_shared_state("planner", user_id="u") == after


async def test_concurrent_updates_of_different_keys_all_survive(repo: SessionRepository) -> None:
    await asyncio.gather(
        *(repo.update_shared_state("planner", {f"k{i}": i}, user_id="u") for i in range(20))
    )
    await asyncio.gather(
        *(repo.update_shared_state("planner", {}, user_id="u", remove=[f"k{i}"]) for i in range(5))
    )
    assert await repo.get_shared_state("planner", user_id="u") == {f"k{i}": i for i in range(5, 20)}


async def test_shared_state_checkpoint_and_context_commit_or_roll_back_together(
    repo: SessionRepository, db: Backend
) -> None:
    sid = await with_history(repo, 0, user_id="u")
    for commit in (False, True):
        async with db.factory() as session:
            await session.begin()
            bound = repo.bind(session)
            await bound.add_checkpoint(sid, "event", {"commit": commit}, user_id="u")
            copy = await bound.get_session(sid)
            assert copy is not None
            copy.context["seen"] = commit
            await bound.update_session(copy)
            await bound.update_shared_state("planner", {"n": commit}, user_id="u")
            await bound.update_shared_state("planner", {"app": commit})
            await (session.commit() if commit else session.rollback())
        stored = await repo.get_session(sid)
        assert stored is not None
        if commit:
            assert stored.context == {"seen": True} and stored.checkpoints[-1].name == "event"
            assert await repo.get_shared_state("planner", user_id="u") == {"n": True}
            assert await repo.get_shared_state("planner") == {"app": True}
        else:
            assert stored.context == {} and stored.checkpoint_count == 1
            assert await repo.get_shared_state("planner", user_id="u") == {}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: r.update_shared_state("planner", {"a": 1}, remove=["a"]), "both"),
        (lambda r: r.update_shared_state("planner", {}, remove="abc"), "remove"),
        (lambda r: r.update_shared_state("planner", {}, remove=[1]), "remove"),
        (lambda r: r.update_shared_state("planner", {}, remove=["\x00"]), "NUL"),
        (lambda r: r.update_shared_state("planner", {"x": float("inf")}), "Infinity"),
        (lambda r: r.update_shared_state("planner", ["a"]), "JSON object"),
        (lambda r: r.update_shared_state("planner", {1: "a"}), "key"),
        (lambda r: r.update_shared_state("", {"a": 1}), "agent_type"),
        (lambda r: r.update_shared_state("p" * 129, {"a": 1}), "agent_type"),
        (lambda r: r.update_shared_state("planner", {"a": 1}, user_id="u" * 257), "user_id"),
        (lambda r: r.update_shared_state("planner", {"a": 1}, user_id=5), "user_id"),
        (lambda r: r.get_shared_state("planner", user_id="\ud800"), "user_id"),
        (lambda r: r.get_shared_state(None), "agent_type"),
    ],
)
async def test_bad_shared_state_input_is_refused_and_writes_nothing(
    repo: SessionRepository, db: Backend, call: Any, match: str
) -> None:
    with pytest.raises(SessionValidationError, match=match):
        await call(repo)
    assert await count_rows(db) == (0, 0, 0)


async def test_a_document_grown_past_the_payload_limit_is_refused(db: Backend) -> None:
    repo = SessionRepository(db.factory, max_payload_bytes=100)
    await repo.update_shared_state("planner", {"a": "x" * 60})
    with pytest.raises(SessionValidationError, match="shared state"):
        await repo.update_shared_state("planner", {"b": "y" * 60})
    assert await repo.get_shared_state("planner") == {"a": "x" * 60}


# -- hard delete ---------------------------------------------------------------------------------


async def test_hard_delete_removes_the_session_and_its_checkpoints_now(
    repo: SessionRepository, db: Backend
) -> None:
    keep = await with_history(repo, 2)
    gone = await with_history(repo, 3, user_id="u")
    assert await repo.get_session(gone) is not None  # cached on the Redis backends
    assert not await repo.delete_session(gone, user_id="intruder", hard=True)
    assert await repo.delete_session(gone, user_id="u", hard=True)
    assert await count_rows(db) == (1, 3, 0)
    assert await repo.get_session(gone) is None
    with pytest.raises(SessionNotFoundError):
        await repo.list_checkpoints(gone)
    assert not await repo.delete_session(gone, hard=True)
    assert await repo.get_session(keep) is not None


async def test_hard_delete_erases_a_soft_deleted_session(
    repo: SessionRepository, db: Backend
) -> None:
    sid = await with_history(repo, 1)
    assert await repo.delete_session(sid)
    assert not await repo.delete_session(sid)
    assert await repo.delete_session(sid, hard=True)
    assert await count_rows(db) == (0, 0, 0)


def test_checkpoint_model_keeps_its_contract() -> None:
    # The batch returns ordinary checkpoints: a framework stores them with to_dict().
    cp = SessionCheckpoint(name="x", seq=3)
    assert SessionCheckpoint.from_dict(cp.to_dict()) == cp
