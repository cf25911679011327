"""Bad input gets a SessionValidationError before anything is written, on every backend."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from agent_session_store import SessionRepository, SessionValidationError
from agent_session_store.tables import checkpoints_table, sessions_table
from tests.conftest import Backend

NOT_JSON: list[tuple[str, Any]] = [
    ("a list", [1, 2]),
    ("a string", "ctx"),
    ("bytes", {"b": b"raw"}),
    ("a set", {"s": {1, 2}}),
    ("a tuple", {"t": (1, 2)}),
    ("NaN", {"n": float("nan")}),
    ("infinity", {"n": float("inf")}),
    ("a datetime", {"d": __import__("datetime").datetime(2026, 1, 1)}),
    ("a non-string key", {1: "x"}),
    ("a NUL in a value", {"k": "a\x00b"}),
    ("a NUL in a key", {"a\x00": 1}),
    ("a lone surrogate", {"k": "\ud800"}),
    ("deep nesting", {"k": __import__("functools").reduce(lambda acc, _: [acc], range(200), 0)}),
]


async def count_rows(db: Backend) -> tuple[int, int]:
    async with db.engine.connect() as conn:
        sessions = await conn.scalar(select(func.count()).select_from(sessions_table))
        checkpoints = await conn.scalar(select(func.count()).select_from(checkpoints_table))
    return int(sessions or 0), int(checkpoints or 0)


@pytest.mark.parametrize(
    ("agent_type", "user_id", "problem"),
    [
        ("", "", "agent_type"),
        ("x" * 129, "", "agent_type"),
        ("planner", "u" * 257, "user_id"),
        ("plan\x00ner", "", "NUL"),
        ("planner", "u\x00", "NUL"),
    ],
)
async def test_create_rejects_bad_identity(
    repo: SessionRepository, db: Backend, agent_type: str, user_id: str, problem: str
) -> None:
    with pytest.raises(SessionValidationError, match=problem):
        await repo.create_session(agent_type, user_id)
    assert await count_rows(db) == (0, 0)


async def test_limits_accept_the_longest_allowed_values(repo: SessionRepository) -> None:
    created = await repo.create_session("a" * 128, "u" * 256)
    fetched = await repo.get_session(created.session_id)
    assert fetched is not None and fetched.agent_type == "a" * 128


@pytest.mark.parametrize(("label", "value"), NOT_JSON, ids=[label for label, _ in NOT_JSON])
async def test_create_rejects_context_and_metadata_that_are_not_json_objects(
    repo: SessionRepository, db: Backend, label: str, value: Any
) -> None:
    with pytest.raises(SessionValidationError):
        await repo.create_session("planner", context=value)
    with pytest.raises(SessionValidationError):
        await repo.create_session("planner", metadata=value)
    assert await count_rows(db) == (0, 0)


@pytest.mark.parametrize(("label", "value"), NOT_JSON, ids=[label for label, _ in NOT_JSON])
async def test_update_and_add_checkpoint_reject_non_json_and_write_nothing(
    repo: SessionRepository, db: Backend, label: str, value: Any
) -> None:
    created = await repo.create_session("planner", context={"keep": 1})
    session = await repo.get_session(created.session_id)
    assert session is not None
    session.context = value
    with pytest.raises(SessionValidationError):
        await repo.update_session(session)
    with pytest.raises(SessionValidationError):
        await repo.add_checkpoint(created.session_id, "cp", value)
    session.context = {"keep": 2}
    session.checkpoints.append(
        session.checkpoints[0].model_copy(update={"seq": None, "data": value})
    )
    with pytest.raises(SessionValidationError):
        await repo.update_session(session)
    stored = await repo.get_session(created.session_id)
    assert stored is not None
    assert stored.context == {"keep": 1} and stored.version == 1
    assert await count_rows(db) == (1, 1)


async def test_oversized_payloads_are_rejected_with_the_limit(db: Backend) -> None:
    repo = SessionRepository(db.factory, max_payload_bytes=1000)
    with pytest.raises(SessionValidationError, match="over the limit of 1000 bytes"):
        await repo.create_session("planner", context={"blob": "x" * 1000})
    created = await repo.create_session("planner", context={"blob": "x" * 900})
    with pytest.raises(SessionValidationError, match="1000 bytes"):
        await repo.add_checkpoint(created.session_id, "big", {"blob": "y" * 2000})
    assert await count_rows(db) == (1, 1)


async def test_default_payload_limit_is_one_mebibyte(repo: SessionRepository) -> None:
    with pytest.raises(SessionValidationError, match="1048576"):
        await repo.create_session("planner", context={"blob": "x" * (1024 * 1024)})


@pytest.mark.parametrize("name", ["", "n" * 129, "a\x00b"])
async def test_add_checkpoint_rejects_bad_names(
    repo: SessionRepository, db: Backend, name: str
) -> None:
    created = await repo.create_session("planner")
    with pytest.raises(SessionValidationError):
        await repo.add_checkpoint(created.session_id, name)
    assert await count_rows(db) == (1, 1)


async def test_sql_looking_strings_are_stored_as_plain_text(repo: SessionRepository) -> None:
    nasty = "'); DROP TABLE agent_sessions_sessions; --"
    created = await repo.create_session(nasty, nasty, {nasty: nasty}, {"q": nasty})
    await repo.add_checkpoint(created.session_id, nasty, {nasty: [nasty]})
    fetched = await repo.get_session(created.session_id, user_id=nasty)
    assert fetched is not None
    assert (fetched.agent_type, fetched.user_id, fetched.context) == (nasty, nasty, {nasty: nasty})
    page = await repo.list_sessions(agent_type=nasty, user_id=nasty)
    assert [s.session_id for s in page.items] == [created.session_id]


async def test_unicode_round_trips_identically_on_both_backends(repo: SessionRepository) -> None:
    text = "emoji 🧠, CJK 漢字, RTL שלום, combining é, zero-width \u200b"
    created = await repo.create_session("planner", text, {"t": text, text: 1.25})
    fetched = await repo.get_session(created.session_id)
    assert fetched is not None and fetched.context == {"t": text, text: 1.25}


@pytest.mark.parametrize("after_seq", [-1, "1"])
async def test_list_checkpoints_rejects_bad_after_seq(
    repo: SessionRepository, after_seq: Any
) -> None:
    created = await repo.create_session("planner")
    with pytest.raises(SessionValidationError, match="after_seq"):
        await repo.list_checkpoints(created.session_id, after_seq=after_seq)


async def test_bad_state_filter_is_a_validation_error(repo: SessionRepository) -> None:
    with pytest.raises(SessionValidationError, match="state"):
        await repo.list_sessions(state="sleeping")


async def test_malformed_ids_behave_as_unknown(repo: SessionRepository) -> None:
    for bad in ["", "x", "00000000-0000-0000-0000-00000000000g", str(uuid.uuid4()) + "0"]:
        assert await repo.get_session(bad) is None
        assert await repo.delete_session(bad) is False
        assert await repo.heartbeat(bad) is False
