"""Hostile input, as a table: each row is one call a caller (or attacker) can make, the answer it
gets, and the proof that nothing was written (both tables counted before and after).

Every row runs on SQLite and PostgreSQL, without and with the Redis cache, and must give the same
answer on all four: input is judged before the database sees it. Rows for entries an attacker
writes straight into the cache's Redis namespace are at the end (Redis backends only).
``pytest -s`` prints the table.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agent_session_store import (
    AgentSession,
    AgentSessionStoreError,
    ConcurrentUpdateError,
    RedisCache,
    SessionExistsError,
    SessionNotFoundError,
    SessionPage,
    SessionRepository,
    SessionValidationError,
    _cursor,
)
from agent_session_store.tables import checkpoints_table, sessions_table, shared_state_table
from tests.conftest import Backend, FakeClock

MiB = 1024 * 1024
SQL = [
    "'; DROP TABLE agent_sessions_sessions; --",
    "1' OR '1'='1",
    '") OR 1=1 --',
    "%' OR user_id LIKE '%",
    "$1 ? :name %s",
]
VICTIM, ATTACKER = "victim", "attacker"


@dataclass
class Ctx:
    """What a row's call can use: the repository, a victim's session and the attacker's own."""

    repo: SessionRepository
    victim: AgentSession
    mine: AgentSession
    factory: async_sessionmaker[AsyncSession]

    async def my_copy(self, **changes: Any) -> AgentSession:
        session = await self.repo.get_session(self.mine.session_id)
        assert session is not None
        for name, value in changes.items():
            setattr(session, name, value)
        return session

    async def cursor_of(self, **filters: Any) -> str:
        page = await self.repo.list_sessions(limit=1, **filters)
        assert page.next_cursor is not None
        return page.next_cursor


Call = Callable[[Ctx], Awaitable[Any]]
Check = Callable[[Any, Ctx], bool]


@dataclass(frozen=True)
class Row:
    """One hostile call: what the caller must see, and how many rows it may write."""

    name: str
    call: Call
    raises: type[Exception] | None = SessionValidationError
    check: Check | None = None  # for calls that return: the answer is the expected one
    writes: tuple[int, int] = (0, 0)  # (sessions, checkpoints) rows added
    shared_writes: int = 0  # shared-state documents added


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"k": value}
    return value


def is_none(result: Any, _: Ctx) -> bool:
    return result is None


def is_false(result: Any, _: Ctx) -> bool:
    return result is False


def empty_page(result: Any, _: Ctx) -> bool:
    return isinstance(result, SessionPage) and result.items == [] and result.next_cursor is None


def only_attackers(result: Any, ctx: Ctx) -> bool:
    return isinstance(result, SessionPage) and all(s.user_id == ATTACKER for s in result.items)


def stored_verbatim(result: Any, ctx: Ctx) -> bool:
    return isinstance(result, AgentSession) and (result.agent_type, result.user_id) == (
        SQL[0],
        SQL[1],
    )


def create(**kwargs: Any) -> Call:
    kwargs.setdefault("agent_type", "planner")
    return lambda c: c.repo.create_session(**kwargs)


def update(**changes: Any) -> Call:
    async def call(c: Ctx) -> Any:
        return await c.repo.update_session(await c.my_copy(**changes))

    return call


def add_checkpoint(name: str = "cp", data: Any = None, **kwargs: Any) -> Call:
    return lambda c: c.repo.add_checkpoint(c.mine.session_id, name, data, **kwargs)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def tampered_cursor(position: int) -> Call:
    """Flip one bit of a real cursor's JSON at ``position`` (negative: from the end)."""

    async def call(c: Ctx) -> Any:
        cursor = await c.cursor_of(user_id=ATTACKER)
        raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        raw[position] ^= 0x01
        return await c.repo.list_sessions(user_id=ATTACKER, cursor=b64(bytes(raw)))

    return call


async def cursor_from_other_user(c: Ctx) -> Any:
    return await c.repo.list_sessions(user_id=VICTIM, cursor=await c.cursor_of(user_id=ATTACKER))


async def cursor_from_other_filter(c: Ctx) -> Any:
    return await c.repo.list_sessions(
        agent_type="coder", cursor=await c.cursor_of(agent_type="planner")
    )


async def forged_cursor_for_own_filters(c: Ctx) -> Any:
    # Well formed and made for the call's own filters: accepted, and it grants nothing.
    far_future = datetime(9999, 1, 1, tzinfo=UTC)
    forged = _cursor.encode(far_future, uuid.UUID(int=2**128 - 1), (None, ATTACKER, None))
    return await c.repo.list_sessions(user_id=ATTACKER, cursor=forged)


async def forged_cursor_without_filters(c: Ctx) -> Any:
    raw = json.dumps([datetime(9999, 1, 1, tzinfo=UTC).isoformat(), str(uuid.uuid4()), "0" * 16])
    return await c.repo.list_sessions(user_id=ATTACKER, cursor=b64(raw.encode()))


def forged_cursor_at(created: str) -> Call:
    """A cursor with the call's own fingerprint and a chosen timestamp text."""

    async def call(c: Ctx) -> Any:
        fingerprint = _cursor._fingerprint((None, ATTACKER, None))
        raw = json.dumps([created, str(uuid.uuid4()), fingerprint]).encode()
        return await c.repo.list_sessions(user_id=ATTACKER, cursor=b64(raw))

    return call


def sweep(method: str, age: Any) -> Call:
    return lambda c: getattr(c.repo, method)(age)


def with_clock(clock_value: Any, method: str) -> Call:
    """``method`` on a repository whose injected clock returns ``clock_value``."""

    async def call(c: Ctx) -> Any:
        repo = SessionRepository(c.factory, cache=c.repo.cache, clock=lambda: clock_value)
        sid = c.mine.session_id
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "create_session": lambda: repo.create_session("planner", ATTACKER),
            "update_session": lambda: repo.update_session(c.mine),
            "add_checkpoint": lambda: repo.add_checkpoint(sid, "cp"),
            "heartbeat": lambda: repo.heartbeat(sid),
            "delete_session": lambda: repo.delete_session(sid),
            "cleanup_stale_sessions": lambda: repo.cleanup_stale_sessions(),
            "purge_deleted_sessions": lambda: repo.purge_deleted_sessions(),
            "purge_finished_sessions": lambda: repo.purge_finished_sessions(timedelta(days=1)),
        }
        return await calls[method]()

    return call


def construct(**kwargs: Any) -> Call:
    async def call(c: Ctx) -> Any:
        return SessionRepository(c.factory, **kwargs)

    return call


CLOCK_METHODS = [
    "create_session",
    "update_session",
    "add_checkpoint",
    "heartbeat",
    "delete_session",
    "cleanup_stale_sessions",
    "purge_deleted_sessions",
    "purge_finished_sessions",
]
BAD_CLOCKS: list[tuple[str, Any]] = [
    ("naive datetimes", datetime(2026, 1, 1)),
    (
        "year 1 at +14:00 (before year 1 in UTC)",
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
    ),
    (
        "year 9999 at -14:00 (after 9999 in UTC)",
        datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=14))),
    ),
    ("a float (time.time)", 1.7e9),
    ("None", None),
    ("an ISO string", "2026-01-01T00:00:00+00:00"),
]
SWEEPS = ("cleanup_stale_sessions", "purge_deleted_sessions", "purge_finished_sessions")
BAD_DURATIONS: list[tuple[str, Any]] = [
    ("timedelta.max", timedelta.max),
    ("timedelta(days=10**6)", timedelta(days=10**6)),
    ("timedelta(days=800_000)", timedelta(days=800_000)),
    ("timedelta.min", timedelta.min),
    ("-1 microsecond", timedelta(microseconds=-1)),
    ("an int (seconds)", 3600),
    ("a string", "48h"),
    ("None", None),
    ("a float", 1.5),
]


def list_with(**kwargs: Any) -> Call:
    return lambda c: c.repo.list_sessions(**kwargs)


def on_victim(method: str, **kwargs: Any) -> Call:
    """A call on the victim's session, scoped to the attacker."""

    def call(c: Ctx) -> Awaitable[Any]:
        fn = getattr(c.repo, method)
        if method == "add_checkpoint":
            return fn(c.victim.session_id, "stolen", **kwargs)  # type: ignore[no-any-return]
        return fn(c.victim.session_id, **kwargs)  # type: ignore[no-any-return]

    return call


def spelled(transform: Callable[[str], str], method: str = "get_session") -> Call:
    """The victim's id spelled another way that uuid.UUID still accepts, scoped to the attacker."""
    return lambda c: getattr(c.repo, method)(transform(c.victim.session_id), user_id=ATTACKER)


def with_id(bad: Any, method: str) -> Call:
    if method == "add_checkpoint":
        return lambda c: c.repo.add_checkpoint(bad, "cp")
    return lambda c: getattr(c.repo, method)(bad)


def forged_copy_with_id(bad: str) -> Call:
    async def call(c: Ctx) -> Any:
        copy = await c.my_copy()
        forged = AgentSession.model_construct(**{**dict(copy), "session_id": bad})
        return await c.repo.update_session(forged)

    return call


BAD_IDS: list[tuple[str, Any]] = [
    ("empty", ""),
    ("not a uuid", "not-a-uuid"),
    ("SQL", SQL[0]),
    ("uuid + 1 char", str(uuid.uuid4()) + "0"),
    ("1 MiB string", "a" * MiB),
    ("NUL", "\x00"),
    ("lone surrogate", "\ud800"),
    ("an int", 12345),
    ("None", None),
    ("bytes", b"\x00" * 16),
    ("unknown uuid", "3f2b8c1e-0000-4000-8000-000000000000"),
]
NOT_JSON: list[tuple[str, Any]] = [
    ("bytes", {"b": b"raw"}),
    ("set", {"s": {1, 2}}),
    ("tuple", {"t": (1, 2)}),
    ("NaN", {"n": math.nan}),
    ("-Infinity", {"n": -math.inf}),
    ("datetime", {"d": datetime(2026, 1, 1, tzinfo=UTC)}),
    ("object()", {"o": object()}),
    ("int key", {1: "x"}),
    ("a list, not an object", [1, 2]),
]
BAD_LIMITS: list[Any] = [-1, 0, 1001, 2**64, True, "10", 1.5, None]
VICTIM_KEY = "victim-chat"

# -- the framework primitives (issue 11): keys, windows, rewind, batches, shared state --------
BAD_KEYS: list[tuple[str, Any]] = [
    ("empty", ""),
    ("only spaces", "   "),
    ("129 chars", "k" * 129),
    ("newline", "a\nb"),
    ("NUL", "k\x00"),
    ("lone surrogate", "\ud800"),
    ("an int", 5),
    ("1 MiB", "k" * MiB),
]
BAD_TIMES: list[tuple[str, Any]] = [
    ("naive", datetime(2026, 1, 1)),
    ("a string", "2026-01-01T00:00:00+00:00"),
    ("an int", 0),
    ("year 1 at +14:00 (overflows UTC)", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))),
]
BAD_WINDOWS: list[Any] = [-1, 2**31, "1", True, 1.5]


def on_mine(method: str, *args: Any, **kwargs: Any) -> Call:
    return lambda c: getattr(c.repo, method)(c.mine.session_id, *args, **kwargs)


def victim_as_attacker(method: str, *args: Any, **kwargs: Any) -> Call:
    return lambda c: getattr(c.repo, method)(c.victim.session_id, *args, user_id=ATTACKER, **kwargs)


def shared(changes: Any, **kwargs: Any) -> Call:
    return lambda c: c.repo.update_shared_state("planner", changes, **kwargs)


NEW_PRIMITIVE_ROWS: list[Row] = [
    *(Row(f"create: key {label}", create(key=key)) for label, key in BAD_KEYS),
    *(
        Row(
            f"get_session_by_key: key {label}",
            lambda c, k=key: c.repo.get_session_by_key("planner", key=k),
        )
        for label, key in BAD_KEYS
    ),
    Row(
        "create: a key the attacker already holds",
        lambda c: c.repo.create_session("planner", ATTACKER, key=VICTIM_KEY),
        SessionExistsError,
    ),
    Row(
        "create: the victim's key under the attacker's user is another session",
        create(user_id=ATTACKER, key=VICTIM_KEY + "-2"),
        raises=None,
        check=lambda s, _: s.key == VICTIM_KEY + "-2",
        writes=(1, 1),
    ),
    Row(
        "get_session_by_key: the victim's key, scoped to the attacker",
        lambda c: c.repo.get_session_by_key("planner", ATTACKER + "-x", key=VICTIM_KEY),
        None,
        is_none,
    ),
    Row(
        "get_session_by_key: SQL text as key",
        lambda c: c.repo.get_session_by_key("planner", VICTIM, key=SQL[1]),
        None,
        is_none,
    ),
    Row(
        "get_session_by_key: user_id None",
        lambda c: c.repo.get_session_by_key("planner", None, key=VICTIM_KEY),  # type: ignore[arg-type]
    ),
    Row(
        "get_session_by_key: NUL in agent_type",
        lambda c: c.repo.get_session_by_key("plan\x00ner", key=VICTIM_KEY),
    ),
    *(
        Row(f"get_session: recent_checkpoints={w!r}", on_mine("get_session", recent_checkpoints=w))
        for w in BAD_WINDOWS
    ),
    *(
        Row(f"list_checkpoints: since {label}", on_mine("list_checkpoints", since=t))
        for label, t in BAD_TIMES
    ),
    *(
        Row(f"add_checkpoint: timestamp {label}", add_checkpoint(timestamp=t))
        for label, t in BAD_TIMES
    ),
    *(
        Row(
            f"add_checkpoints: timestamp {label}",
            on_mine("add_checkpoints", [("a", {})], timestamp=t),
        )
        for label, t in BAD_TIMES
    ),
    *(
        Row(f"add_checkpoints: items {label}", on_mine("add_checkpoints", items))
        for label, items in [
            ("None", None),
            ("a str", "ab"),
            ("a dict", {"a": {}}),
            ("1001 of them", [("a", {})] * 1001),
            ("one with a NUL name", [("ok", {}), ("a\x00", {})]),
            ("one holding NaN", [("ok", {}), ("b", {"n": math.nan})]),
            ("one of 1 MiB", [("ok", {}), ("b", {"x": "y" * MiB})]),
            ("one nested 100000 deep", [("ok", {}), ("b", nested(100_000))]),
            ("one a bare name", [("ok", {}), "name"]),
        ]
    ),
    *(
        Row(f"{method}: another user's id", victim_as_attacker(method, *args), SessionNotFoundError)
        for method, args in [
            ("pop_checkpoint", ()),
            ("truncate_checkpoints", (1,)),
            ("add_checkpoints", ([("stolen", {})],)),
        ]
    ),
    Row(
        "delete_session hard: another user's id",
        victim_as_attacker("delete_session", hard=True),
        None,
        is_false,
    ),
    *(
        Row(
            f"pop_checkpoint: id {label}",
            lambda c, b=bad: c.repo.pop_checkpoint(b),
            SessionNotFoundError,
        )
        for label, bad in BAD_IDS
    ),
    *(
        Row(
            f"delete_session hard: id {label}",
            lambda c, b=bad: c.repo.delete_session(b, hard=True),
            None,
            is_false,
        )
        for label, bad in BAD_IDS
    ),
    *(
        Row(f"truncate_checkpoints: after_seq={a!r}", on_mine("truncate_checkpoints", a))
        for a in [0, -1, 2**31, "1", True, None]
    ),
    Row("pop_checkpoint: NUL in user_id scope", on_victim("pop_checkpoint", user_id="\x00")),
    *(Row(f"update_shared_state: changes holding {label}", shared(v)) for label, v in NOT_JSON),
    Row("update_shared_state: changes of 1 MiB + 1 byte", shared({"x": "y" * MiB})),
    Row("update_shared_state: changes nested 100000 deep", shared(nested(100_000))),
    Row("update_shared_state: remove is a str", shared({}, remove="abc")),
    Row("update_shared_state: remove holds NUL", shared({}, remove=["\x00"])),
    Row("update_shared_state: remove holds an int", shared({}, remove=[1])),
    Row("update_shared_state: a key both set and removed", shared({"a": 1}, remove=["a"])),
    Row("update_shared_state: user_id of 257 chars", shared({"a": 1}, user_id="u" * 257)),
    Row("update_shared_state: lone surrogate in user_id", shared({"a": 1}, user_id="\ud800")),
    Row(
        "update_shared_state: agent_type of 129 chars",
        lambda c: c.repo.update_shared_state("a" * 129, {"a": 1}),
    ),
    Row(
        "get_shared_state: an int as user_id",
        lambda c: c.repo.get_shared_state("planner", user_id=5),
    ),
    Row(
        "update_shared_state: SQL text as keys and values is stored verbatim",
        shared({SQL[0]: SQL[1]}, user_id=SQL[2], remove=[SQL[3]]),
        raises=None,
        check=lambda state, _: state == {SQL[0]: SQL[1]},
        shared_writes=1,
    ),
]

ROWS: list[Row] = [
    # -- size and shape --------------------------------------------------------------------
    Row("create: context of 1 MiB + 1 byte", create(context={"x": "y" * MiB})),
    Row("create: metadata of 1 MiB + 1 byte", create(metadata={"x": "y" * MiB})),
    Row("update: context of 1 MiB + 1 byte", update(context={"x": "y" * MiB})),
    Row("add_checkpoint: data of 1 MiB + 1 byte", add_checkpoint(data={"x": "y" * MiB})),
    Row("create: context nested 65 deep", create(context=nested(65))),
    Row("create: context nested 100000 deep", create(context=nested(100_000))),
    Row("update: metadata nested 100000 deep", update(metadata=nested(100_000))),
    Row("add_checkpoint: data nested 100000 deep", add_checkpoint(data=nested(100_000))),
    Row("create: agent_type of 129 chars", create(agent_type="a" * 129)),
    Row("create: user_id of 257 chars", create(user_id="u" * 257)),
    Row("add_checkpoint: name of 129 chars", add_checkpoint(name="n" * 129)),
    # -- values that are not JSON ----------------------------------------------------------
    *(Row(f"create: context holding {label}", create(context=value)) for label, value in NOT_JSON),
    *(Row(f"update: context holding {label}", update(context=value)) for label, value in NOT_JSON),
    *(
        Row(f"add_checkpoint: data holding {label}", add_checkpoint(data=value))
        for label, value in NOT_JSON
    ),
    # -- NUL and invalid unicode -----------------------------------------------------------
    Row("create: NUL in agent_type", create(agent_type="plan\x00ner")),
    Row("create: NUL in user_id", create(user_id="u\x00")),
    Row("create: NUL in a context key", create(context={"k\x00": 1})),
    Row("create: NUL in a metadata value", create(metadata={"k": "v\x00"})),
    Row("update: NUL in a context value", update(context={"k": ["ok", "\x00"]})),
    Row("add_checkpoint: NUL in name", add_checkpoint(name="a\x00b")),
    Row("create: lone surrogate in agent_type", create(agent_type="\ud800")),
    Row("create: lone surrogate in user_id", create(user_id="\udfff")),
    Row("create: lone surrogate in a context key", create(context={"\ud83d": 1})),
    Row("update: lone surrogate in metadata", update(metadata={"k": "\udc00"})),
    Row("add_checkpoint: lone surrogate in data", add_checkpoint(data={"k": "\ud800"})),
    Row("list_sessions: NUL in user_id filter", list_with(user_id="a\x00")),
    Row("list_sessions: NUL in agent_type filter", list_with(agent_type="\x00")),
    Row("list_sessions: lone surrogate in user_id filter", list_with(user_id="\ud800")),
    Row("list_sessions: lone surrogate in agent_type filter", list_with(agent_type="\udfff")),
    Row("list_sessions: an int as user_id filter", list_with(user_id=5)),
    Row("get_session: NUL in user_id scope", on_victim("get_session", user_id="\x00")),
    Row("delete_session: NUL in user_id scope", on_victim("delete_session", user_id="v\x00")),
    Row("delete_session: lone surrogate in scope", on_victim("delete_session", user_id="\ud800")),
    Row("add_checkpoint: NUL in user_id scope", on_victim("add_checkpoint", user_id="\x00")),
    Row("list_checkpoints: surrogate in scope", on_victim("list_checkpoints", user_id="\udfff")),
    # -- SQL-looking text: plain data, everywhere ------------------------------------------
    Row(
        "create: SQL text in every text field is stored verbatim",
        create(agent_type=SQL[0], user_id=SQL[1], context={SQL[2]: SQL[3]}, metadata={"q": SQL[4]}),
        raises=None,
        check=stored_verbatim,
        writes=(1, 1),
    ),
    Row(
        "add_checkpoint: SQL text as name and data is stored verbatim",
        add_checkpoint(name=SQL[0], data={SQL[1]: [SQL[2]]}),
        raises=None,
        check=lambda cp, _: (cp.name, cp.data) == (SQL[0], {SQL[1]: [SQL[2]]}),
        writes=(0, 1),
    ),
    *(
        Row(
            f"list_sessions: SQL text as user_id filter #{i}",
            list_with(user_id=sql),
            None,
            empty_page,
        )
        for i, sql in enumerate(SQL)
    ),
    *(
        Row(
            f"list_sessions: SQL text as agent_type filter #{i}",
            list_with(agent_type=sql),
            None,
            empty_page,
        )
        for i, sql in enumerate(SQL)
    ),
    Row("list_sessions: SQL text as state", list_with(state=SQL[0])),
    Row("list_sessions: SQL text as cursor", list_with(cursor=SQL[1])),
    Row("get_session: SQL text as scope", on_victim("get_session", user_id=SQL[1]), None, is_none),
    Row(
        "delete_session: SQL text as scope",
        on_victim("delete_session", user_id=SQL[1]),
        None,
        is_false,
    ),
    Row(
        "list_checkpoints: SQL text as scope",
        on_victim("list_checkpoints", user_id=SQL[1]),
        SessionNotFoundError,
    ),
    # -- malformed and foreign session ids -------------------------------------------------
    *(
        Row(f"get_session: id {label}", with_id(bad, "get_session"), None, is_none)
        for label, bad in BAD_IDS
    ),
    *(
        Row(f"delete_session: id {label}", with_id(bad, "delete_session"), None, is_false)
        for label, bad in BAD_IDS
    ),
    *(
        Row(f"heartbeat: id {label}", with_id(bad, "heartbeat"), None, is_false)
        for label, bad in BAD_IDS
    ),
    *(
        Row(f"add_checkpoint: id {label}", with_id(bad, "add_checkpoint"), SessionNotFoundError)
        for label, bad in BAD_IDS
    ),
    *(
        Row(f"list_checkpoints: id {label}", with_id(bad, "list_checkpoints"), SessionNotFoundError)
        for label, bad in BAD_IDS
    ),
    *(
        Row(
            f"update_session: forged copy with id {label}",
            forged_copy_with_id(bad),
            SessionNotFoundError,
        )
        for label, bad in BAD_IDS
        if isinstance(bad, str)
    ),
    Row(
        "get_session: another user's id", on_victim("get_session", user_id=ATTACKER), None, is_none
    ),
    Row("get_session: another user's id in UPPER CASE", spelled(str.upper), None, is_none),
    Row(
        "get_session: another user's id as urn:uuid:",
        spelled(lambda s: f"urn:uuid:{s}"),
        None,
        is_none,
    ),
    Row("get_session: another user's id in {braces}", spelled(lambda s: f"{{{s}}}"), None, is_none),
    Row(
        "delete_session: another user's id",
        on_victim("delete_session", user_id=ATTACKER),
        None,
        is_false,
    ),
    Row(
        "delete_session: another user's id, hex only",
        spelled(lambda s: s.replace("-", ""), "delete_session"),
        None,
        is_false,
    ),
    Row(
        "add_checkpoint: another user's id",
        on_victim("add_checkpoint", user_id=ATTACKER),
        SessionNotFoundError,
    ),
    Row(
        "list_checkpoints: another user's id",
        on_victim("list_checkpoints", user_id=ATTACKER),
        SessionNotFoundError,
    ),
    Row("update_session: stale version (forged)", update(version=1_000), ConcurrentUpdateError),
    Row("update_session: version 2**63 (forged)", update(version=2**63)),
    Row("update_session: version 0 (forged)", update(version=0)),
    Row("update_session: version True (forged)", update(version=True)),
    # -- limits, positions and cursors ----------------------------------------------------
    *(Row(f"list_sessions: limit={limit!r}", list_with(limit=limit)) for limit in BAD_LIMITS),
    *(
        Row(
            f"list_checkpoints: limit={limit!r}",
            functools.partial(
                lambda c, limit: c.repo.list_checkpoints(c.mine.session_id, limit=limit),
                limit=limit,
            ),
        )
        for limit in BAD_LIMITS
    ),
    *(
        Row(
            f"list_checkpoints: after_seq={after!r}",
            functools.partial(
                lambda c, after: c.repo.list_checkpoints(c.mine.session_id, after_seq=after),
                after=after,
            ),
        )
        for after in [-1, 2**31, 2**64, True, "1", 1.5]
    ),
    *(
        Row(
            f"cleanup_stale_sessions: batch_size={size!r}",
            functools.partial(
                lambda c, size: c.repo.cleanup_stale_sessions(batch_size=size), size=size
            ),
        )
        for size in [0, -5, 10**9, True]
    ),
    Row(
        "cleanup_stale_sessions: negative max_age",
        lambda c: c.repo.cleanup_stale_sessions(timedelta(seconds=-1)),
    ),
    Row("list_sessions: cursor with a bit flipped in its fingerprint", tampered_cursor(-3)),
    Row("list_sessions: cursor with a bit flipped in its JSON", tampered_cursor(0)),
    Row(
        "list_sessions: cursor with a bit flipped in its position grants nothing",
        tampered_cursor(3),
        raises=None,
        check=only_attackers,
    ),
    Row("list_sessions: cursor from another user", cursor_from_other_user),
    Row("list_sessions: cursor from another agent_type filter", cursor_from_other_filter),
    Row("list_sessions: cursor that is not base64", list_with(cursor="!!!not base64!!!")),
    Row("list_sessions: empty cursor", list_with(cursor="")),
    Row("list_sessions: cursor of 1 MiB", list_with(cursor="A" * MiB)),
    Row("list_sessions: cursor nesting JSON 100000 deep", list_with(cursor=b64(b"[" * 100_000))),
    Row("list_sessions: cursor of JSON of the wrong shape", list_with(cursor=b64(b'{"a": 1}'))),
    Row(
        "list_sessions: cursor with a naive timestamp",
        list_with(cursor=b64(json.dumps(["2026-01-01T00:00:00", str(uuid.uuid4()), "x"]).encode())),
    ),
    Row("list_sessions: cursor with a forged fingerprint", forged_cursor_without_filters),
    Row("list_sessions: an int as cursor", list_with(cursor=12345)),
    Row(
        "list_sessions: well-formed forged cursor grants nothing",
        forged_cursor_for_own_filters,
        raises=None,
        check=only_attackers,
    ),
    *NEW_PRIMITIVE_ROWS,
    # -- out-of-range positions, durations and a misbehaving clock ---------------------------
    Row(
        "list_sessions: cursor at year 1 +01:00 (before year 1 in UTC)",
        forged_cursor_at("0001-01-01T00:00:00+01:00"),
    ),
    Row(
        "list_sessions: cursor at 9999-12-31T23:00-05:00 (after 9999 in UTC)",
        forged_cursor_at("9999-12-31T23:00:00-05:00"),
    ),
    Row(
        "list_sessions: cursor at year 1 UTC grants nothing",
        forged_cursor_at("0001-01-01T00:00:00+00:00"),
        raises=None,
        check=empty_page,
    ),
    Row(
        "list_sessions: cursor at 9999-12-31 +14:00 grants nothing",
        forged_cursor_at("9999-12-31T23:59:59.999999+14:00"),
        raises=None,
        check=only_attackers,
    ),
    *(
        Row(f"{method}: max age {label}", sweep(method, age))
        for method in (
            "cleanup_stale_sessions",
            "purge_deleted_sessions",
            "purge_finished_sessions",
        )
        for label, age in BAD_DURATIONS
    ),
    *(
        Row(f"{method}: a clock returning {label}", with_clock(value, method))
        for label, value in BAD_CLOCKS
        for method in CLOCK_METHODS
    ),
    *(
        Row(f"SessionRepository: recent_checkpoints={value!r}", construct(recent_checkpoints=value))
        for value in [-1, 2**31, 2**64, "20", 1.5, None]
    ),
    *(
        Row(f"SessionRepository: max_payload_bytes={value!r}", construct(max_payload_bytes=value))
        for value in [0, -1, "1MiB", None]
    ),
]


async def count_shared(db: Backend) -> int:
    async with db.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(shared_state_table)) or 0)


async def count_rows(db: Backend) -> tuple[int, int]:
    async with db.engine.connect() as conn:
        sessions = await conn.scalar(select(func.count()).select_from(sessions_table))
        checkpoints = await conn.scalar(select(func.count()).select_from(checkpoints_table))
    return int(sessions or 0), int(checkpoints or 0)


TABLE: dict[str, set[tuple[str, tuple[int, int]]]] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_table() -> Iterator[None]:
    yield
    if TABLE:
        width = max(len(name) for name in TABLE)
        print(f"\n{'hostile input':<{width}} | caller sees | rows written (sessions, checkpoints)")
        for name, seen in TABLE.items():
            for answer, written in sorted(seen):
                print(f"{name:<{width}} | {answer} | {written}")
    if FUZZ_TALLY["calls"] or FUZZ_TALLY["decoder"]:
        print(
            f"\nfuzzed: {FUZZ_TALLY['inputs']} generated inputs in {FUZZ_TALLY['calls']} calls "
            f"over the backends, {FUZZ_TALLY['escaped']} escaped (raised other than a library "
            f"error, or wrote before one); cursor decoder: {FUZZ_TALLY['decoder']} examples"
        )


async def setup_ctx(repo: SessionRepository, db: Backend) -> Ctx:
    victim = await repo.create_session("planner", VICTIM, {"secret": "victim's"}, key=VICTIM_KEY)
    mine = await repo.create_session("planner", ATTACKER, {"mine": True}, key=VICTIM_KEY)
    await repo.create_session("coder", ATTACKER)
    await repo.create_session("coder", ATTACKER)
    return Ctx(repo, victim, mine, db.factory)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_hostile_input(repo: SessionRepository, db: Backend, row: Row) -> None:
    ctx = await setup_ctx(repo, db)
    before, shared_before = await count_rows(db), await count_shared(db)
    try:
        result = await row.call(ctx)
    except Exception as exc:
        if row.raises is None or not isinstance(exc, row.raises):
            raise
        answer = type(exc).__name__
    else:
        assert row.raises is None, f"expected {row.raises.__name__}, got {result!r:.200}"
        assert row.check is not None and row.check(result, ctx), f"unexpected {result!r:.200}"
        plain = result is None or result is False
        answer = f"returns {result!r}" if plain else f"a {type(result).__name__}"
    written = tuple(a - b for a, b in zip(await count_rows(db), before, strict=True))
    assert written == row.writes
    assert await count_shared(db) - shared_before == row.shared_writes
    victim = await repo.get_session(ctx.victim.session_id)
    assert victim is not None and victim == ctx.victim, "the victim's session changed"
    TABLE.setdefault(row.name, set()).add((answer, (written[0], written[1])))


# -- entries an attacker writes straight into the cache's Redis namespace --------------------


@pytest.fixture
async def cached(
    db: Backend, redis_client: Redis, namespace: str, clock: FakeClock
) -> tuple[SessionRepository, RedisCache]:
    # A generous time limit: these tests are about what is stored, not about a slow Redis.
    cache = RedisCache(redis_client, namespace=namespace, timeout=timedelta(seconds=10))
    return SessionRepository(db.factory, cache=cache, clock=clock), cache


def value_key(namespace: str, session_id: str) -> str:
    """Where RedisCache keeps a session (its documented layout, read from redis_cache.py)."""
    return f"{{{namespace}:AgentSession:{session_id}}}:val"


async def current_envelope(redis: Redis, namespace: str, session_id: str) -> bytes:
    """The header line of a cached entry: what an attacker with Redis access copies."""
    cached = await redis.get(value_key(namespace, session_id))
    assert isinstance(cached, bytes), "the session should be cached by now"
    return cached.partition(b"\n")[0]


def forged(victim: AgentSession, **changes: Any) -> bytes:
    return victim.model_copy(update=changes).model_dump_json().encode()


CACHE_ROWS: list[tuple[str, Callable[[bytes, AgentSession, AgentSession], bytes]]] = [
    ("junk bytes", lambda env, v, a: b"\x00\xffjunk"),
    ("empty value", lambda env, v, a: b""),
    ("a session's JSON with no envelope", lambda env, v, a: forged(v, context={"pwned": 1})),
    ("the right envelope and corrupt JSON", lambda env, v, a: env + b"\n{not json"),
    ("the right envelope, truncated JSON", lambda env, v, a: env + b"\n" + forged(v)[:40]),
    ("the right envelope, the attacker's own session", lambda env, v, a: env + b"\n" + forged(a)),
    (
        "an old epoch",
        lambda env, v, a: (
            b"as1 0000000000000000 " + env.split(b" ")[2] + b"\n" + forged(v, context={"pwned": 1})
        ),
    ),
    (
        "another schema fingerprint",
        lambda env, v, a: (
            b" ".join(env.split(b" ")[:2])
            + b" ffffffffffffffff\n"
            + forged(v, context={"pwned": 1})
        ),
    ),
    (
        "another format tag",
        lambda env, v, a: b"as0" + env[3:] + b"\n" + forged(v, context={"pwned": 1}),
    ),
    (
        "the right envelope, an invalid session",
        lambda env, v, a: (
            env + b"\n" + json.dumps({**v.to_dict(), "state": "owned", "version": -1}).encode()
        ),
    ),
]


@pytest.mark.parametrize(("name", "make"), CACHE_ROWS, ids=[name for name, _ in CACHE_ROWS])
async def test_attacker_written_cache_entry_is_a_miss(
    cached: tuple[SessionRepository, RedisCache],
    db: Backend,
    redis_client: Redis,
    namespace: str,
    name: str,
    make: Callable[[bytes, AgentSession, AgentSession], bytes],
) -> None:
    repo, cache = cached
    victim = await repo.create_session("planner", VICTIM, {"secret": "victim's"}, key=VICTIM_KEY)
    mine = await repo.create_session("planner", ATTACKER, {"mine": True}, key=VICTIM_KEY)
    assert await repo.get_session(victim.session_id) == victim  # cached now: the epoch exists
    before = await count_rows(db)
    envelope = await current_envelope(redis_client, namespace, victim.session_id)
    await redis_client.set(value_key(namespace, victim.session_id), make(envelope, victim, mine))

    discarded = cache.stats.discarded
    assert await repo.get_session(victim.session_id) == victim
    assert cache.stats.discarded == discarded + 1, "the planted entry was not even looked at"
    assert await repo.get_session(victim.session_id, user_id=VICTIM) == victim
    assert await repo.get_session(victim.session_id, user_id=ATTACKER) is None
    assert await count_rows(db) == before
    TABLE.setdefault(f"cache: {name}", set()).add(("miss, database copy served", (0, 0)))


async def test_attacker_entry_in_a_foreign_namespace_is_never_read(
    cached: tuple[SessionRepository, RedisCache], redis_client: Redis, namespace: str
) -> None:
    repo, _ = cached
    victim = await repo.create_session("planner", VICTIM, {"secret": "victim's"})
    await repo.get_session(victim.session_id)
    other = f"{namespace}-other"
    epoch = await redis_client.get(f"{{{namespace}}}:epoch")
    assert epoch is not None
    await redis_client.set(f"{{{other}}}:epoch", epoch)
    envelope = await current_envelope(redis_client, namespace, victim.session_id)
    poisoned = envelope + b"\n" + forged(victim, context={"pwned": 1})
    await redis_client.set(value_key(other, victim.session_id), poisoned)
    await redis_client.delete(value_key(namespace, victim.session_id))
    assert await repo.get_session(victim.session_id) == victim
    TABLE.setdefault("cache: forged entry in another namespace", set()).add(("never read", (0, 0)))


async def test_residual_risk_a_forged_entry_with_the_current_envelope_is_served(
    cached: tuple[SessionRepository, RedisCache], db: Backend, redis_client: Redis, namespace: str
) -> None:
    # Without signing_keys, RedisCache does not authenticate entries: whoever can write to its
    # namespace can plant a well-formed session. With keys it is refused (test_cache_signing).
    repo, _ = cached
    victim = await repo.create_session("planner", VICTIM, {"secret": "victim's"})
    await repo.get_session(victim.session_id)
    before = await count_rows(db)
    envelope = await current_envelope(redis_client, namespace, victim.session_id)
    planted = forged(victim, context={"planted": True})
    await redis_client.set(value_key(namespace, victim.session_id), envelope + b"\n" + planted)
    served = await repo.get_session(victim.session_id, user_id=VICTIM)
    assert served is not None and served.context == {"planted": True}
    # Limits of the forgery: the user scope is still checked on what was served, and the
    # database is untouched; the next write replaces the planted entry.
    assert await repo.get_session(victim.session_id, user_id=ATTACKER) is None
    assert await count_rows(db) == before
    assert await repo.heartbeat(victim.session_id)
    fresh = await repo.get_session(victim.session_id)
    assert fresh is not None and fresh.context == {"secret": "victim's"}
    TABLE.setdefault("cache: forged entry with the current envelope (RESIDUAL)", set()).add(
        ("SERVED until the next write to the session", (0, 0))
    )


# -- fuzzing: generated inputs per family, every call's outcome classified -------------------
#
# Each family draws its inputs from a seeded generator (the same inputs every run) and makes
# every call on every backend. A call may return anything or raise a library error
# (AgentSessionStoreError), and a library error must leave the database as it was; anything else
# raised is an escape. The module prints how many inputs were tried and how many escaped.

FUZZ_TALLY: dict[str, int] = {"inputs": 0, "calls": 0, "escaped": 0, "decoder": 0}
OFFSETS = [timedelta(hours=h, minutes=m) for h in (-23, -14, -1, 0, 1, 14, 23) for m in (0, 59)]


def some_datetime(rng: random.Random) -> datetime:
    """Anywhere from year 1 to 9999, often at the very ends."""
    pick = rng.random()
    if pick < 0.25:
        return datetime.min + timedelta(seconds=rng.randrange(0, 3 * 86400))
    if pick < 0.5:
        return datetime.max - timedelta(seconds=rng.randrange(0, 3 * 86400))
    return datetime.min + timedelta(seconds=rng.randrange(0, 315_537_897_599))


def some_aware(rng: random.Random) -> datetime:
    return some_datetime(rng).replace(tzinfo=timezone(rng.choice(OFFSETS)))


def some_text(rng: random.Random, size: int = 20) -> str:
    alphabet = "aZ09-_=+/{}[]:,.\"' \\\x00\t\n\u00e9\u2603\U0001f600\ud800\udfff"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, size)))


def junk(rng: random.Random) -> Any:
    return rng.choice(
        [None, True, 0, -1, 1.5, math.nan, math.inf, "", "48h", b"\x00", [], {}, object()]
    )


def fuzz_cursors(rng: random.Random, real: str) -> list[Any]:
    raw = base64.urlsafe_b64decode(real + "=" * (-len(real) % 4))
    own = _cursor._fingerprint((None, ATTACKER, None))
    found: list[Any] = []
    for _ in range(30):  # bytes of a real cursor flipped
        flipped = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        found.append(b64(bytes(flipped)))
    found += [real[: rng.randrange(len(real))] for _ in range(10)]  # truncated
    for _ in range(50):  # well formed, our fingerprint, any timestamp with any offset
        created = some_aware(rng).isoformat() if rng.random() < 0.9 else some_text(rng)
        found.append(b64(json.dumps([created, str(uuid.uuid4()), own]).encode()))
    for _ in range(15):  # JSON of other shapes
        shape = [rng.choice([junk(rng), some_text(rng), 2**70]) for _ in range(rng.randint(0, 4))]
        found.append(b64(json.dumps(shape, default=repr).encode()))
    found += [some_text(rng, 60) for _ in range(15)]
    found += [junk(rng) for _ in range(5)]
    return found


def fuzz_durations(rng: random.Random) -> list[Any]:
    found: list[Any] = [timedelta.max, timedelta.min, timedelta(0), timedelta(microseconds=-1)]
    for _ in range(30):
        days = int(10 ** rng.uniform(0, 8.99)) * rng.choice([1, 1, -1])
        found.append(timedelta(days=days, microseconds=rng.randrange(86_400_000_000)))
    found += [junk(rng) for _ in range(6)]
    return found


def fuzz_clock_values(rng: random.Random) -> list[Any]:
    found: list[Any] = [some_datetime(rng) for _ in range(6)]  # naive
    found += [some_aware(rng) for _ in range(10)]
    found += [junk(rng) for _ in range(4)]
    return found


def fuzz_ids(rng: random.Random, real: str) -> list[Any]:
    spellings: list[Callable[[str], Any]] = [
        str.upper,
        lambda s: s.replace("-", ""),
        lambda s: f"{{{s}}}",
        lambda s: f"urn:uuid:{s}",
        lambda s: f" {s} ",
        lambda s: s[:-1],
        lambda s: s + rng.choice("0a-\x00"),
        lambda s: s.replace(rng.choice("0123456789abcdef"), rng.choice("gG\x00\ud800")),
        lambda s: uuid.UUID(s),
        lambda s: uuid.UUID(s).int,
        lambda s: uuid.UUID(s).bytes,
    ]
    found: list[Any] = [spell(real) for spell in spellings]
    found += [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(5)]
    found += [some_text(rng, 80) for _ in range(8)]
    found += [junk(rng) for _ in range(4)]
    return found


def fuzz_ints(rng: random.Random) -> list[Any]:
    found: list[Any] = [0, 1, -1, 1000, 1001, 50_000, 50_001, 2**31 - 1, 2**31, 2**63, -(2**63)]
    found += [rng.choice([1, -1]) * int(10 ** rng.uniform(0, 25)) for _ in range(10)]
    found += [junk(rng) for _ in range(5)]
    return found


FuzzCall = tuple[str, Callable[[], Awaitable[Any]]]


def fuzz_calls(family: str, ctx: Ctx, cursor: str) -> tuple[int, list[FuzzCall]]:
    """The family's inputs (how many) and the calls made with them."""
    rng = random.Random(f"agent-session-store-fuzz-{family}")
    repo, mine = ctx.repo, ctx.mine.session_id
    calls: list[FuzzCall] = []
    if family == "cursors":
        inputs = fuzz_cursors(rng, cursor)
        for value in inputs:
            calls.append((repr(value)[:80], functools.partial(
                repo.list_sessions, user_id=ATTACKER, cursor=value)))  # fmt: skip
    elif family == "durations":
        inputs = fuzz_durations(rng)
        for value in inputs:
            calls.append(
                (f"cleanup {value!r}", functools.partial(repo.cleanup_stale_sessions, value))
            )
            calls.append(
                (f"purge {value!r}", functools.partial(repo.purge_deleted_sessions, value))
            )
    elif family == "clocks":
        inputs = fuzz_clock_values(rng)
        for value in inputs:
            for method in CLOCK_METHODS:
                call = with_clock(value, method)
                calls.append((f"{method} at {value!r}", functools.partial(call, ctx)))
    elif family == "ids":
        inputs = fuzz_ids(rng, ctx.victim.session_id)
        for value in inputs:
            for method in ("get_session", "heartbeat", "list_checkpoints", "delete_session"):
                fn = getattr(repo, method)
                calls.append(
                    (f"{method}({value!r:.60})", functools.partial(fn, value, user_id=ATTACKER))
                )
            calls.append((f"add_checkpoint({value!r:.60})", functools.partial(
                repo.add_checkpoint, value, "cp", user_id=ATTACKER)))  # fmt: skip
    else:
        inputs = fuzz_ints(rng)
        targets: list[tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...], str]] = [
            ("list_sessions", repo.list_sessions, (), "limit"),
            ("get_active_sessions", repo.get_active_sessions, (), "limit"),
            ("list_checkpoints", repo.list_checkpoints, (mine,), "limit"),
            ("list_checkpoints", repo.list_checkpoints, (mine,), "after_seq"),
            ("cleanup_stale_sessions", repo.cleanup_stale_sessions, (), "batch_size"),
            ("purge_deleted_sessions", repo.purge_deleted_sessions, (), "batch_size"),
        ]
        for value in inputs:
            for name, fn, args, option in targets:
                label = f"{name}({option}={value!r})"
                calls.append((label, functools.partial(fn, *args, **{option: value})))
    return len(inputs), calls


async def digest(db: Backend) -> tuple[Any, ...]:
    """Row counts and what any write moves: versions, updated_at, heartbeats."""
    async with db.engine.connect() as conn:
        s = sessions_table.c
        sessions = (
            await conn.execute(
                select(
                    func.count(), func.sum(s.version), func.max(s.updated_at),
                    func.max(s.last_heartbeat), func.sum(s.checkpoint_count),
                )
            )
        ).one()  # fmt: skip
        checkpoints = await conn.scalar(select(func.count()).select_from(checkpoints_table))
    return (*sessions, checkpoints)


FUZZ_FAMILIES = ["cursors", "durations", "clocks", "ids", "limits"]


@pytest.mark.parametrize("family", FUZZ_FAMILIES)
async def test_fuzzed_input_gets_an_answer_or_a_library_error(
    repo: SessionRepository, db: Backend, family: str
) -> None:
    ctx = await setup_ctx(repo, db)
    inputs, calls = fuzz_calls(family, ctx, await ctx.cursor_of(user_id=ATTACKER))
    escaped: list[str] = []
    state = await digest(db)
    for label, call in calls:
        try:
            await call()
        except AgentSessionStoreError:
            if await digest(db) != state:
                escaped.append(f"{label}: a library error after writing something")
        except Exception as exc:
            escaped.append(f"{label}: {type(exc).__module__}.{type(exc).__name__}: {exc}"[:300])
        state = await digest(db)
    FUZZ_TALLY["inputs"] += inputs
    FUZZ_TALLY["calls"] += len(calls)
    FUZZ_TALLY["escaped"] += len(escaped)
    assert not escaped, "\n".join(escaped)


@given(st.text(max_size=600) | st.binary(max_size=400).map(b64))
@settings(max_examples=400, deadline=None)
def test_cursor_decoder_refuses_what_it_did_not_make(cursor: str) -> None:
    FUZZ_TALLY["decoder"] += 1
    try:
        when, last = _cursor.decode(cursor, (None, None, None))
    except SessionValidationError:
        return
    assert when.utcoffset() == timedelta(0) and isinstance(last, uuid.UUID)


@given(
    st.datetimes().map(lambda d: d.replace(tzinfo=None)),
    st.one_of(st.none(), st.sampled_from(OFFSETS).map(timezone)),
    st.uuids(),
)
@settings(max_examples=400, deadline=None)
def test_cursor_decoder_returns_utc_positions_or_refuses(
    when: datetime, tz: timezone | None, last: uuid.UUID
) -> None:
    FUZZ_TALLY["decoder"] += 1
    filters = (None, ATTACKER, None)
    raw = json.dumps(
        [when.replace(tzinfo=tz).isoformat(), str(last), _cursor._fingerprint(filters)]
    )
    try:
        decoded, decoded_id = _cursor.decode(b64(raw.encode()), filters)
    except SessionValidationError:
        assert tz is None or when.year in (1, 9999), "a representable position was refused"
        return
    assert tz is not None and decoded == when.replace(tzinfo=tz) and decoded.tzinfo is UTC
    assert decoded_id == last
