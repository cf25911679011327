"""SessionStoreSession held to the OpenAI Agents SDK's Session contract.

The behaviours are those the SDK's ``Session`` protocol docstrings promise and its own memory
tests check for its stores (``tests/extensions/memory/`` and ``tests/memory/`` of its source
distribution), plus regression tests for the upstream reports: concurrent first writes dropping
items (openai/openai-agents-python#2722) and concurrent pops returning one item twice (#4205).
Every test taking ``repo`` runs on SQLite and PostgreSQL (direct and behind PgBouncer), without
and with the Redis cache; the session id -> key mapping is also tested on its own, as a function.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import event, func, select

from agent_session_store import (
    SessionRepository,
    SessionValidationError,
    migrations,
)
from agent_session_store._arguments import check_key
from agent_session_store.tables import checkpoints_table, sessions_table
from tests.cancelling import cancel_at
from tests.conftest import IN_CI, Backend

try:
    from agents import RunConfig, Runner, TResponseInputItem
    from agents.memory import Session, SessionABC, SessionSettings
except ImportError:  # pragma: no cover - the dev extra installs it
    if IN_CI:
        raise
    pytest.skip("openai-agents is not installed", allow_module_level=True)

from agent_session_store.integrations.openai_agents import ITEM, SessionStoreSession, session_key

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "openai_agents_runner.py"
_spec = importlib.util.spec_from_file_location("openai_agents_runner", EXAMPLE)
assert _spec is not None and _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)
CannedModel = example.CannedModel


def msg(content: str, role: str = "user") -> TResponseInputItem:
    return cast("TResponseInputItem", {"role": role, "content": content})


def contents(items: list[TResponseInputItem]) -> list[Any]:
    return [cast("dict[str, Any]", item).get("content") for item in items]


async def library_sessions(db: Backend) -> int:
    async with db.engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(sessions_table)) or 0


async def library_checkpoints(db: Backend) -> int:
    async with db.engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(checkpoints_table)) or 0


# -- the protocol --------------------------------------------------------------------------------


def test_it_is_an_sdk_session_with_default_settings(repo: SessionRepository) -> None:
    session = SessionStoreSession("chat", repo)
    assert isinstance(session, Session)
    assert not isinstance(session, SessionABC)  # the SDK asks third parties for the protocol
    assert session.session_id == "chat"
    assert isinstance(session.session_settings, SessionSettings)
    assert session.session_settings.limit is None
    assert (session.agent_type, session.user_id, session.repository) == ("openai-agents", "", repo)
    from_dict = SessionStoreSession("chat", repo, session_settings={"limit": 5})
    assert isinstance(from_dict.session_settings, SessionSettings)
    assert from_dict.session_settings.limit == 5


async def test_add_get_pop_clear(repo: SessionRepository) -> None:
    session = SessionStoreSession("direct", repo)
    await session.add_items([msg("Hello"), msg("Hi there!", "assistant")])
    assert await session.get_items() == [msg("Hello"), msg("Hi there!", "assistant")]
    assert await session.pop_item() == msg("Hi there!", "assistant")
    assert await session.get_items() == [msg("Hello")]
    await session.clear_session()
    assert await session.get_items() == []


async def test_get_items_limit_is_the_newest_in_chronological_order(
    repo: SessionRepository,
) -> None:
    session = SessionStoreSession("limits", repo)
    await session.add_items([msg(str(i)) for i in range(1, 7)])
    assert contents(await session.get_items(limit=2)) == ["5", "6"]
    assert contents(await session.get_items(limit=4)) == ["3", "4", "5", "6"]
    assert contents(await session.get_items(limit=6)) == ["1", "2", "3", "4", "5", "6"]
    assert contents(await session.get_items(limit=10)) == ["1", "2", "3", "4", "5", "6"]
    assert await session.get_items(limit=0) == []
    assert contents(await session.get_items()) == ["1", "2", "3", "4", "5", "6"]


async def test_session_settings_limit_is_the_default_and_an_explicit_limit_wins(
    repo: SessionRepository,
) -> None:
    session = SessionStoreSession("settings", repo, session_settings=SessionSettings(limit=3))
    await session.add_items([msg(f"Message {i}") for i in range(10)])
    assert contents(await session.get_items()) == ["Message 7", "Message 8", "Message 9"]
    assert contents(await session.get_items(limit=2)) == ["Message 8", "Message 9"]
    zero = SessionStoreSession("settings", repo, session_settings={"limit": 0})
    assert await zero.get_items() == []


@pytest.mark.parametrize("limit", [-1, 1.5, "2", True])
async def test_a_bad_limit_is_refused(repo: SessionRepository, limit: Any) -> None:
    session = SessionStoreSession("bad-limit", repo)
    with pytest.raises(SessionValidationError, match="limit"):
        await session.get_items(limit=limit)


async def test_an_unknown_session_reads_empty_and_is_not_created(
    repo: SessionRepository, db: Backend
) -> None:
    session = SessionStoreSession("never-written", repo)
    assert await session.get_items() == []
    assert await session.get_items(limit=3) == []
    assert await session.pop_item() is None
    await session.clear_session()
    await session.add_items([])  # an empty batch is a no-op and creates nothing either
    assert await library_sessions(db) == 0


async def test_pop_item_returns_newest_first_until_empty(repo: SessionRepository) -> None:
    session = SessionStoreSession("pops", repo)
    assert await session.pop_item() is None
    await session.add_items([msg("Hello"), msg("Hi there!", "assistant"), msg("How are you?")])
    assert await session.pop_item() == msg("How are you?")
    assert contents(await session.get_items()) == ["Hello", "Hi there!"]
    assert await session.pop_item() == msg("Hi there!", "assistant")
    assert await session.pop_item() == msg("Hello")
    assert await session.pop_item() is None
    assert await session.get_items() == []
    # The library's own first checkpoint stays: the conversation is empty, not gone.
    stored = await repo.get_session_by_key("openai-agents", key="pops")
    assert stored is not None
    assert [cp.name for cp in stored.checkpoints] == ["session_created"]
    await session.add_items([msg("again")])
    assert contents(await session.get_items()) == ["again"]


async def test_conversations_are_isolated_by_id_user_and_agent_type(
    repo: SessionRepository,
) -> None:
    one = SessionStoreSession("chat", repo, user_id="alice")
    other_id = SessionStoreSession("chat-2", repo, user_id="alice")
    other_user = SessionStoreSession("chat", repo, user_id="bob")
    other_type = SessionStoreSession("chat", repo, user_id="alice", agent_type="planner")
    await one.add_items([msg("alice 1")])
    await other_id.add_items([msg("alice 2, first"), msg("alice 2, second")])
    await other_user.add_items([msg("bob")])
    await other_type.add_items([msg("planner")])
    assert await other_id.pop_item() == msg("alice 2, second")
    await other_user.clear_session()
    assert contents(await one.get_items()) == ["alice 1"]
    assert contents(await other_id.get_items()) == ["alice 2, first"]
    assert await other_user.get_items() == []
    assert contents(await other_type.get_items()) == ["planner"]


async def test_items_round_trip_unchanged(repo: SessionRepository) -> None:
    items = [
        msg("こんにちは"),
        msg("😊👍", "assistant"),
        msg("O'Reilly"),
        msg("Robert'); DROP TABLE students;--", "assistant"),
        msg('"SELECT * FROM users WHERE name = "admin";"'),
        cast(
            "TResponseInputItem",
            {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "…"}]},
        ),
        cast(
            "TResponseInputItem",
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "lookup",
                "arguments": '{"q": "x", "n": 2}',
                "id": "fc_1",
                "status": "completed",
            },
        ),
        cast(
            "TResponseInputItem",
            {"type": "function_call_output", "call_id": "call_1", "output": "[1, 2.5, null]"},
        ),
        cast(
            "TResponseInputItem",
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [
                    {"type": "output_text", "text": "done", "annotations": [], "logprobs": []}
                ],
            },
        ),
    ]
    session = SessionStoreSession("round-trip", repo)
    await session.add_items(items)
    assert await session.get_items() == items
    assert await SessionStoreSession("round-trip", repo).get_items() == items


async def test_items_with_one_timestamp_keep_insertion_order(repo: SessionRepository) -> None:
    # The repo fixture's clock stands still: every item has the same timestamp.
    session = SessionStoreSession("same-time", repo)
    await session.add_items([msg("older")])
    await session.add_items([msg("reasoning"), msg("message")])
    assert contents(await session.get_items()) == ["older", "reasoning", "message"]
    assert contents(await session.get_items(limit=2)) == ["reasoning", "message"]
    assert await session.pop_item() == msg("message")


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"role": "user", "content": object()},
        {"role": "user", "content": float("nan")},
        {"role": "user", "content": "nul \x00 byte"},
        "not an object",
    ],
    ids=["object", "nan", "nul", "string"],
)
async def test_an_item_the_store_cannot_hold_is_refused_and_nothing_is_written(
    repo: SessionRepository, db: Backend, bad: Any
) -> None:
    fresh = SessionStoreSession("fresh", repo)
    with pytest.raises(SessionValidationError):
        await fresh.add_items([msg("fine"), bad])
    assert await library_sessions(db) == 0  # not even the conversation was created
    existing = SessionStoreSession("existing", repo)
    await existing.add_items([msg("before")])
    with pytest.raises(SessionValidationError):
        await existing.add_items([msg("fine"), bad])
    assert contents(await existing.get_items()) == ["before"]
    await existing.add_items([msg("after")])  # still usable
    assert contents(await existing.get_items()) == ["before", "after"]


def test_a_session_id_that_is_not_a_string_is_a_type_error() -> None:
    repo = cast("SessionRepository", object())  # never reached
    for bad in (None, 42, b"chat", ["chat"]):
        with pytest.raises(TypeError, match="session_id must be a str"):
            SessionStoreSession(cast("str", bad), repo)
        with pytest.raises(TypeError, match="session_id must be a str"):
            session_key(cast("str", bad))


# -- session ids: any string the SDK takes -------------------------------------------------------


def decoded(key: str) -> str | None:
    """The session id a key was made from (``None`` for a hashed key), by the documented rule."""
    if key.startswith("~esc:"):
        return unquote(key[len("~esc:") :], errors="surrogatepass")
    if key.startswith("~sha256:"):
        return None
    assert not key.startswith("~")
    return key


def sha256_key(session_id: str) -> str:
    return "~sha256:" + hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


# The documented encoding, pinned: changing any of these loses stored conversations.
KEY_VECTORS = [
    ("chat-42", "chat-42"),
    ("会話-123", "会話-123"),
    ("a b", "a b"),
    ("%20", "%20"),
    ("x" * 128, "x" * 128),
    ("", "~esc:"),
    (" ", "~esc:%20"),
    (" a ", "~esc:%20a%20"),
    ("a ", "~esc:a%20"),
    ("\n", "~esc:%0A"),
    ("tab\there", "~esc:tab%09here"),
    ("nul\x00byte", "~esc:nul%00byte"),
    ("\ud800", "~esc:%ED%A0%80"),
    ("\u00e9\n", "~esc:%C3%A9%0A"),
    ("~", "~esc:~"),
    ("~home", "~esc:~home"),
    ("~esc:", "~esc:~esc:"),
    ("~esc:%20", "~esc:~esc:%2520"),
    ("~sha256:" + "0" * 64, "~esc:~sha256:" + "0" * 64),
    ("x" * 129, sha256_key("x" * 129)),
    ("\n" * 42, sha256_key("\n" * 42)),
]

# Ids the SDK takes that are not keys as they stand, or that look like encoded keys; each must be
# its own conversation, apart from every other.
ODD_IDS = [
    "",
    " ",
    "  ",
    " a ",
    "a",
    "a ",
    " a",
    "\n",
    "\t",
    "\x00",
    "nul\x00byte",
    "\ud800",
    "会話-123",
    "👨\u200d👩\u200d👧",
    "x" * 128,
    "x" * 129,
    "x" * 129 + "y",
    "z" * 10_000,
    "~",
    "~esc:",
    "~esc:%20a%20",
    "%20a%20",
    "~sha256:" + hashlib.sha256(b"x" * 129).hexdigest(),  # the key of "x" * 129
    "$ne",
    '{"$ne": null}',
]


@pytest.mark.parametrize(
    ("session_id", "key"), KEY_VECTORS, ids=[repr(v[0])[:24] for v in KEY_VECTORS]
)
def test_session_key_follows_the_documented_encoding(session_id: str, key: str) -> None:
    assert session_key(session_id) == key
    assert check_key(key) == key  # a key the repository stores as it is
    assert decoded(key) in (session_id, None)


@settings(max_examples=500, deadline=None)
@given(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=150)
    | st.text("~esc:sha256 %\n\x00az", max_size=12)
)
def test_every_string_maps_to_a_valid_key_it_can_be_read_back_from(session_id: str) -> None:
    key = session_key(session_id)
    assert check_key(key) == key
    # Decoding gives the id back, so no two ids share a plain or escaped key; hashed keys have
    # their own prefix, and differ as their SHA-256 digests do.
    if decoded(key) is None:
        assert key == sha256_key(session_id)
        assert len(session_id) > 10  # up to 10 characters (of 4 UTF-8 bytes) are escaped
    else:
        assert decoded(key) == session_id


@pytest.mark.parametrize("session_id", ODD_IDS, ids=[repr(i)[:24] for i in ODD_IDS])
async def test_any_string_session_id_round_trips_and_stays_literal(
    repo: SessionRepository, session_id: str
) -> None:
    session = SessionStoreSession(session_id, repo)
    neighbour = SessionStoreSession("other-session", repo)
    await neighbour.add_items([msg("other history")])
    await session.add_items([msg("own history")])
    assert session.session_id == session_id
    assert session.key == session_key(session_id)
    assert contents(await session.get_items()) == ["own history"]
    assert contents(await SessionStoreSession(session_id, repo).get_items(limit=1)) == [
        "own history"
    ]
    stored = await repo.get_session_by_key("openai-agents", key=session_key(session_id))
    assert stored is not None and stored.key == session_key(session_id)
    assert await session.pop_item() == msg("own history")
    assert await session.get_items() == []
    await session.add_items([msg("again")])
    await session.clear_session()
    assert await SessionStoreSession(session_id, repo).get_items() == []
    assert contents(await neighbour.get_items()) == ["other history"]


async def test_ids_that_differ_in_spaces_escapes_or_length_are_separate_conversations(
    repo: SessionRepository, db: Backend
) -> None:
    sessions = [SessionStoreSession(session_id, repo) for session_id in ODD_IDS]
    for n, session in enumerate(sessions):
        await session.add_items([msg(f"conversation {n}")])
    assert await library_sessions(db) == len(ODD_IDS)
    for n, session_id in enumerate(ODD_IDS):
        fresh = SessionStoreSession(session_id, repo)
        assert contents(await fresh.get_items()) == [f"conversation {n}"], repr(session_id)
        stored = await repo.get_session_by_key("openai-agents", key=session_key(session_id))
        assert stored is not None, repr(session_id)
        assert stored.checkpoints[-1].data == msg(f"conversation {n}"), repr(session_id)
    await sessions[ODD_IDS.index(" a ")].clear_session()
    assert await sessions[ODD_IDS.index("a")].pop_item() == msg(
        f"conversation {ODD_IDS.index('a')}"
    )
    for n, session in enumerate(sessions):
        expected = [] if ODD_IDS[n] in (" a ", "a") else [f"conversation {n}"]
        assert contents(await session.get_items()) == expected, repr(ODD_IDS[n])


async def test_a_conversation_stored_under_a_plain_key_is_read_by_its_id(
    repo: SessionRepository,
) -> None:
    """Sessions written before ids were encoded (the key being the id) are still found."""
    created = await repo.create_session("openai-agents", key="chat-42")
    await repo.add_checkpoints(created.session_id, [(ITEM, {"role": "user", "content": "old"})])
    assert contents(await SessionStoreSession("chat-42", repo).get_items()) == ["old"]
    assert await SessionStoreSession(" chat-42 ", repo).get_items() == []


# -- what the library stores ---------------------------------------------------------------------


async def test_each_item_is_one_checkpoint_holding_its_json(repo: SessionRepository) -> None:
    session = SessionStoreSession("layout", repo, user_id="alice")
    await session.add_items([msg("a"), msg("b", "assistant")])
    stored = await repo.get_session_by_key("openai-agents", "alice", key="layout")
    assert stored is not None and stored.key == "layout" and stored.user_id == "alice"
    assert [(cp.seq, cp.name, cp.data) for cp in stored.checkpoints] == [
        (1, "session_created", {"agent_type": "openai-agents", "user_id": "alice"}),
        (2, ITEM, {"role": "user", "content": "a"}),
        (3, ITEM, {"role": "assistant", "content": "b"}),
    ]


async def test_add_items_is_one_batch_append(
    repo: SessionRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = SessionStoreSession("batch", repo)
    await session.add_items([msg("first")])
    calls: list[int] = []
    append = repo.add_checkpoints

    async def counting(session_id: str, items: Any, **kwargs: Any) -> Any:
        calls.append(len(items))
        return await append(session_id, items, **kwargs)

    monkeypatch.setattr(repo, "add_checkpoints", counting)
    await session.add_items([msg(str(i)) for i in range(5)])
    assert calls == [5]
    big = [msg(f"big {i}") for i in range(1001)]  # over the repository's batch limit
    await session.add_items(big)
    assert calls == [5, 1000, 1]
    assert contents(await session.get_items(limit=2)) == ["big 999", "big 1000"]
    assert len(await session.get_items()) == 1 + 5 + 1001


async def test_reads_cost_a_page_per_thousand_items_whatever_the_history(
    repo: SessionRepository, db: Backend
) -> None:
    session = SessionStoreSession("windowed", repo)
    await session.add_items([msg(str(i)) for i in range(1000)])
    await session.add_items([msg(str(i)) for i in range(1000, 1500)])
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        reader = SessionStoreSession("windowed", repo)
        assert contents(await reader.get_items(limit=3)) == ["1497", "1498", "1499"]
        assert len(statements) <= 1  # the session and its newest items: one statement (or cache)
        statements.clear()
        assert contents(await reader.get_items(limit=1200))[0] == "300"
        assert len(statements) == 2  # 1,000 with the session, then one older page
        statements.clear()
        assert contents(await reader.get_items()) == [str(i) for i in range(1500)]
        assert len(statements) == 3  # the first page, then the history in pages of 1,000
        statements.clear()
        fresh = SessionStoreSession("never-written", repo)
        assert await fresh.get_items() == []
        assert len(statements) == 1
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)


async def test_checkpoints_that_are_not_items_are_skipped_and_popped_past(
    repo: SessionRepository,
) -> None:
    session = SessionStoreSession("mixed", repo)
    await session.add_items([msg("one"), msg("two"), msg("three")])
    stored = await repo.get_session_by_key("openai-agents", key="mixed")
    assert stored is not None
    await repo.add_checkpoint(stored.session_id, "note", {"by": "someone else"})
    assert contents(await session.get_items(limit=2)) == ["two", "three"]
    assert contents(await session.get_items()) == ["one", "two", "three"]
    assert await session.pop_item() == msg("three")
    assert contents(await session.get_items()) == ["one", "two"]


# -- clearing ------------------------------------------------------------------------------------


async def test_clear_deletes_for_real_and_the_id_can_be_used_again(
    repo: SessionRepository, db: Backend
) -> None:
    session = SessionStoreSession("reuse", repo)
    await session.add_items([msg("old")])
    old = await repo.get_session_by_key("openai-agents", key="reuse")
    assert old is not None
    await session.clear_session()
    assert await session.get_items() == []
    assert await library_sessions(db) == 0 and await library_checkpoints(db) == 0
    await session.add_items([msg("new")])
    assert contents(await session.get_items()) == ["new"]
    new = await repo.get_session_by_key("openai-agents", key="reuse")
    assert new is not None and new.session_id != old.session_id
    assert await repo.get_session(old.session_id) is None


async def test_a_clear_by_another_instance_is_seen_by_every_call(repo: SessionRepository) -> None:
    mine = SessionStoreSession("shared", repo)
    theirs = SessionStoreSession("shared", repo)
    await mine.add_items([msg("before")])
    assert contents(await theirs.get_items()) == ["before"]
    await theirs.clear_session()
    assert await mine.get_items() == []  # mine knew the old library session
    assert await mine.pop_item() is None
    await theirs.add_items([msg("theirs")])
    assert contents(await mine.get_items(limit=5)) == ["theirs"]
    await theirs.clear_session()
    await mine.add_items([msg("mine")])  # recreates the conversation
    assert contents(await theirs.get_items()) == ["mine"]
    await theirs.clear_session()
    await theirs.add_items([msg("theirs again")])
    assert await mine.pop_item() == msg("theirs again")
    await theirs.clear_session()
    await mine.clear_session()  # nothing left to clear: no error
    assert await theirs.get_items() == []


async def test_a_conversation_replaced_behind_its_back_is_found_again(
    repo: SessionRepository,
) -> None:
    """Ids remembered across instances are hints: a hard delete elsewhere is always seen."""
    await SessionStoreSession("replaced", repo).add_items([msg("old")])
    old = await repo.get_session_by_key("openai-agents", key="replaced")
    assert old is not None
    await repo.delete_session(old.session_id, hard=True)  # e.g. another process, or the CLI
    new = await repo.create_session("openai-agents", key="replaced")
    await repo.add_checkpoints(new.session_id, [(ITEM, {"role": "user", "content": "new"})])
    assert contents(await SessionStoreSession("replaced", repo).get_items()) == ["new"]
    await repo.delete_session(new.session_id, hard=True)
    assert await SessionStoreSession("replaced", repo).pop_item() is None
    await SessionStoreSession("replaced", repo).add_items([msg("newest")])
    assert await SessionStoreSession("replaced", repo).pop_item() == msg("newest")


# -- concurrency: the upstream reports -----------------------------------------------------------


async def test_concurrent_first_writes_keep_every_item_openai_agents_2722(
    repo: SessionRepository, db: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """25 first writes that all find no session before any creates one: all 25 items kept."""
    writers = 25
    everyone_looked = asyncio.Barrier(writers)
    look_up = repo.get_session_by_key
    gated = 0

    async def look_up_then_wait(*args: Any, **kwargs: Any) -> Any:
        nonlocal gated
        found = await look_up(*args, **kwargs)
        if gated < writers:
            gated += 1
            await everyone_looked.wait()
        return found

    monkeypatch.setattr(repo, "get_session_by_key", look_up_then_wait)
    submitted = [f"msg-{i}" for i in range(writers)]
    sessions = [SessionStoreSession("first-write", repo) for _ in submitted]
    await asyncio.gather(
        *(s.add_items([msg(text)]) for s, text in zip(sessions, submitted, strict=True))
    )
    assert gated == writers
    stored = await SessionStoreSession("first-write", repo).get_items()
    assert sorted(contents(stored)) == sorted(submitted)
    assert await library_sessions(db) == 1


async def test_concurrent_first_writes_through_one_instance_keep_every_item(
    repo: SessionRepository, db: Backend
) -> None:
    session = SessionStoreSession("first-write-one", repo)
    submitted = [f"msg-{i}" for i in range(25)]
    await asyncio.gather(*(session.add_items([msg(text)]) for text in submitted))
    assert sorted(contents(await session.get_items())) == sorted(submitted)
    assert await library_sessions(db) == 1


async def test_concurrent_pops_return_distinct_items_openai_agents_4205(
    repo: SessionRepository,
) -> None:
    writer = SessionStoreSession("pop-race", repo)
    await writer.add_items([msg(f"item-{i}") for i in range(10)])
    poppers = [SessionStoreSession("pop-race", repo) for _ in range(12)]
    popped = await asyncio.gather(*(p.pop_item() for p in poppers))
    got = [item for item in popped if item is not None]
    assert sorted(contents(got)) == sorted(f"item-{i}" for i in range(10))
    assert popped.count(None) == 2
    assert await writer.get_items() == []


async def test_pops_racing_appends_lose_nothing_and_duplicate_nothing(
    repo: SessionRepository,
) -> None:
    session = SessionStoreSession("pop-append", repo)
    await session.add_items([msg(f"seed-{i}") for i in range(5)])
    added = [f"new-{i}" for i in range(10)]
    results = await asyncio.gather(
        *(SessionStoreSession("pop-append", repo).add_items([msg(t)]) for t in added),
        *(SessionStoreSession("pop-append", repo).pop_item() for _ in range(8)),
    )
    popped = [contents([r])[0] for r in results[len(added) :] if r is not None]
    left = contents(await session.get_items())
    assert len(popped) == len(set(popped)) == 8
    assert sorted(popped + left) == sorted([f"seed-{i}" for i in range(5)] + added)


# -- cancellation --------------------------------------------------------------------------------


async def _every_cancellation(
    call: Callable[[], Awaitable[Any]], check: Callable[[bool], Awaitable[None]]
) -> int:
    """Cancel ``call`` at each of its suspension points in turn; ``check`` after each run."""
    k = 1
    while True:
        outcome = await cancel_at(k, call)
        assert outcome.error is None, outcome.error
        await check(outcome.cancelled)
        if not outcome.cancelled:
            return k
        k += 1


async def test_a_cancelled_add_items_stores_the_whole_batch_or_none(
    repo: SessionRepository,
) -> None:
    runs = 0

    async def add() -> None:
        await SessionStoreSession(f"cancel-add-{runs}", repo).add_items([msg("a"), msg("b")])

    async def check(cancelled: bool) -> None:
        nonlocal runs
        stored = contents(await SessionStoreSession(f"cancel-add-{runs}", repo).get_items())
        assert stored in ([], ["a", "b"]) if cancelled else stored == ["a", "b"]
        runs += 1

    points = await _every_cancellation(add, check)
    assert points > 2  # look-up, create and append were each cut short


async def test_a_cancelled_pop_item_removes_at_most_one_item(repo: SessionRepository) -> None:
    session = SessionStoreSession("cancel-pop", repo)
    await session.add_items([msg(str(i)) for i in range(50)])
    expected = [str(i) for i in range(50)]

    async def pop() -> Any:
        return await SessionStoreSession("cancel-pop", repo).pop_item()

    async def check(cancelled: bool) -> None:
        stored = contents(await session.get_items())
        popped = stored == expected[:-1]  # a cancelled pop may have happened before it took effect
        assert popped or (cancelled and stored == expected)
        if popped:
            expected.pop()

    await _every_cancellation(pop, check)


# -- with the SDK's Runner -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import set_tracing_disabled

    set_tracing_disabled(True)


async def test_runner_carries_the_conversation_across_turns(repo: SessionRepository) -> None:
    from agents import Agent

    model = CannedModel(["San Francisco", "California"])
    agent = Agent(name="test", model=model)
    session = SessionStoreSession("runner", repo)
    first = await Runner.run(agent, "What city is the Golden Gate Bridge in?", session=session)
    assert first.final_output == "San Francisco"
    second = await Runner.run(agent, "What state is it in?", session=session)
    assert second.final_output == "California"
    seen = str(model.inputs[-1])
    assert "Golden Gate Bridge" in seen and "San Francisco" in seen
    items = await SessionStoreSession("runner", repo).get_items()
    assert len(items) == 4
    assert contents(items)[0] == "What city is the Golden Gate Bridge in?"


async def test_run_config_session_settings_override_the_sessions(repo: SessionRepository) -> None:
    from agents import Agent

    session = SessionStoreSession("override", repo, session_settings=SessionSettings(limit=100))
    await session.add_items([msg(f"Turn {i}") for i in range(10)])
    model = CannedModel(["Got it"])
    await Runner.run(
        Agent(name="test", model=model),
        "New question",
        session=session,
        run_config=RunConfig(session_settings=SessionSettings(limit=2)),
    )
    assert contents(model.inputs[-1]) == ["Turn 8", "Turn 9", "New question"]


async def test_the_offline_example_runs(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'example.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    for _ in range(2):  # a second run starts the conversation afresh
        result = subprocess.run(  # noqa: ASYNC221 - a child process is the point of the test
            [sys.executable, str(EXAMPLE)],
            env={**env, "AGENT_SESSION_STORE_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=90,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "user:  What is the capital of France?",
            "agent: Paris.",
            "user:  What is the weather there?",
            "agent: Sunny and 24 °C: a good day for the Seine.",
            "stored 6 items: user, message, user, function_call, function_call_output, message",
            "the model's last call saw 5 items of history and input",
        ]
    assert await migrations.current(url) == migrations.head()


async def test_the_benchmark_measures_every_operation(tmp_path: Path) -> None:
    from benchmarks import openai_agents

    rows = await openai_agents.run(
        ["sqlite"], postgres_url=None, workdir=tmp_path, plan=openai_agents.QUICK
    )
    assert [r.operation for r in rows] == list(openai_agents.OPERATIONS)
    assert all(r.ours > 0 and r.theirs > 0 and r.ratio is not None for r in rows)
    assert "| sqlite | get_last_20 |" in openai_agents.table(rows)
