"""Encryption at rest (``SessionRepository(encryption=FieldEncryption(...))``) on real servers.

Every repository test here runs on SQLite, PostgreSQL and PostgreSQL behind PgBouncer, without
and with the Redis cache. What is checked: a canary written through every encrypted field is
nowhere in the database's bytes (the SQLite file, a ``pg_dump``) nor in any Redis value; a
stored value altered, cut short, moved to another row or field, or made under a key that is gone
is a ``DecryptionError`` naming the session (never a value); plaintext is refused unless
``allow_plaintext``; and without encryption an encrypted value is refused too.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from agent_session_store import (
    AgentSession,
    DecryptionError,
    InvalidStateTransitionError,
    RedisCache,
    SessionRepository,
    SessionState,
    StorageError,
)
from agent_session_store.encryption import FieldEncryption
from agent_session_store.tables import checkpoints_table, sessions_table, shared_state_table
from tests.conftest import Backend, FakeClock
from tests.servers import _postgres_bin_dir

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
ENC = FieldEncryption({"k1": K1}, "k1")
S = sessions_table.c
C = checkpoints_table.c


def _repo(
    db: Backend, clock: FakeClock, cache: RedisCache | None, **kwargs: Any
) -> SessionRepository:
    return SessionRepository(db.factory, clock=clock, cache=cache, **kwargs)


@pytest.fixture(params=["nocache", "redis"])
async def cache(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[RedisCache | None]:
    """No cache, or a Redis cache; the repositories of one test share it."""
    if request.param == "nocache":
        yield None
        return
    client = Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        yield RedisCache(client, namespace=namespace)
    finally:
        await client.aclose()


@pytest.fixture
def repo(db: Backend, clock: FakeClock, cache: RedisCache | None) -> SessionRepository:
    return _repo(db, clock, cache, encryption=ENC)


async def _forget(repo: SessionRepository, *sids: str) -> None:
    """Drop cached copies, so the next read goes to the database (where a test altered rows)."""
    if repo.cache is not None:
        await repo.cache.invalidate(AgentSession, list(sids))


async def _set(db: Backend, table: Any, where: Any, **values: Any) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(update(table).where(where).values(**values))


async def _raw_context(db: Backend, sid: str) -> Any:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(S.context).where(S.id == uuid.UUID(sid)))).scalar_one()


async def _raw_data(db: Backend, sid: str, seq: int) -> Any:
    async with db.engine.connect() as conn:
        stmt = select(C.data).where(C.session_id == uuid.UUID(sid), C.seq == seq)
        return (await conn.execute(stmt)).scalar_one()


def _is_envelope(value: Any, kid: str = "k1") -> bool:
    return isinstance(value, dict) and value.keys() == {"$enc", "kid", "ct"} and value["kid"] == kid


# -- round trips ---------------------------------------------------------------------------------


async def test_encrypted_values_read_back_as_written(repo: SessionRepository, db: Backend) -> None:
    s = await repo.create_session("planner", "u1", {"goal": "x", "n": [1, 2.5, True, None]},
                                  {"tag": "visible"}, key="k")  # fmt: skip
    await repo.add_checkpoint(s.session_id, "step", {"i": 1})
    await repo.add_checkpoints(s.session_id, [("a", {"i": 2}), ("b", {"i": 3})])
    got = await repo.get_session(s.session_id)
    assert got is not None
    got.context["goal"] = "y"
    got.checkpoint("c", {"i": 4})
    await repo.update_session(got)
    again = await repo.get_session(s.session_id)
    assert again is not None and again.context == {"goal": "y", "n": [1, 2.5, True, None]}
    assert [cp.data for cp in again.checkpoints] == [
        {"agent_type": "planner", "user_id": "u1"}, {"i": 1}, {"i": 2}, {"i": 3}, {"i": 4},
    ]  # fmt: skip
    assert again.metadata == {"tag": "visible"}
    by_key = await repo.get_session_by_key("planner", "u1", key="k")
    assert by_key is not None and by_key.context == again.context
    listed = await repo.list_sessions(user_id="u1")
    assert [item.context for item in listed.items] == [again.context]
    history = await repo.list_checkpoints(s.session_id, after_seq=1)
    assert [cp.data["i"] for cp in history] == [1, 2, 3, 4]
    popped = await repo.pop_checkpoint(s.session_id)
    assert popped is not None and popped.data == {"i": 4}
    # What is stored: envelopes, bound to their rows; metadata stays readable.
    assert _is_envelope(await _raw_context(db, s.session_id))
    for seq in (1, 2, 3, 4):
        assert _is_envelope(await _raw_data(db, s.session_id, seq))
    async with db.engine.connect() as conn:
        meta = await conn.execute(select(S.metadata).where(S.id == uuid.UUID(s.session_id)))
        assert meta.scalar_one() == {"tag": "visible"}


async def test_shared_state_is_encrypted_per_key(repo: SessionRepository, db: Backend) -> None:
    assert await repo.update_shared_state("planner", {"a": 1, "b": {"x": [1]}}) == {
        "a": 1, "b": {"x": [1]},
    }  # fmt: skip
    await repo.update_shared_state("planner", {"c": "u"}, user_id="u1")
    assert await repo.update_shared_state("planner", {"a": 2}, remove=["b"]) == {"a": 2}
    assert await repo.get_shared_state("planner") == {"a": 2}
    assert await repo.get_shared_state("planner", user_id="u1") == {"c": "u"}
    async with db.engine.connect() as conn:
        stored = (await conn.execute(select(shared_state_table.c.state))).scalars().all()
    assert all(_is_envelope(v) for doc in stored for v in doc.values())


async def test_a_swept_session_keeps_its_encrypted_context(
    repo: SessionRepository, clock: FakeClock
) -> None:
    s = await repo.create_session("planner", "u1", {"secret": "s"})
    clock.advance(hours=49)
    assert await repo.cleanup_stale_sessions() == 1
    got = await repo.get_session(s.session_id)
    assert got is not None and got.state == SessionState.FAILED
    assert got.context == {"secret": "s", "failure_reason": "heartbeat_timeout"}


async def test_a_finished_session_takes_metadata_updates(repo: SessionRepository) -> None:
    s = await repo.create_session("planner", "u1", {"secret": "s"})
    s.state = SessionState.COMPLETED
    done = await repo.update_session(s)
    done.metadata = {"rating": 5}
    stored = await repo.update_session(done)
    assert stored.version == 3
    got = await repo.get_session(s.session_id)
    assert got is not None and got.metadata == {"rating": 5} and got.context == {"secret": "s"}
    got.context = {"secret": "changed"}
    with pytest.raises(InvalidStateTransitionError, match="final"):
        await repo.update_session(got)


# -- the canary ----------------------------------------------------------------------------------


async def _postgres_dump(db: Backend, postgres_url: str) -> bytes:
    """``pg_dump`` of the backend's database, straight from the server (not via PgBouncer)."""
    server = make_url(postgres_url)
    name = make_url(db.engine.url.render_as_string(hide_password=False)).database
    dump = str(_postgres_bin_dir() / "pg_dump")
    args = [dump, "-h", str(server.host), "-p", str(server.port), "-U", "postgres", "-d", str(name)]
    done = await asyncio.to_thread(
        subprocess.run, args, capture_output=True, check=True, timeout=60
    )
    return done.stdout


# Read by another process: closing a file descriptor of the database in this one would release
# every POSIX lock this process's SQLite connections hold on it (POSIX drops a process's locks on
# a file when any of its descriptors of that file closes). The shared test database then no longer
# tells other processes that it is in use, and a worker process of a later test opening it saw
# an empty WAL index: not one row of the sessions this process had committed (test_stress).
_READ_FILES = """
import sys
for name in sys.argv[1:]:
    try:
        with open(name, "rb") as f:
            sys.stdout.buffer.write(f.read())
    except FileNotFoundError:
        pass
"""


async def _database_bytes(db: Backend, request: pytest.FixtureRequest) -> bytes:
    if db.name == "sqlite":
        path = str(db.engine.url.database)
        files = [path, f"{path}-wal", f"{path}-journal"]
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", _READ_FILES, *files], capture_output=True,
            check=True, timeout=60,
        )  # fmt: skip
        return done.stdout
    return await _postgres_dump(db, request.getfixturevalue("postgres_url"))


async def _redis_values(
    cache: RedisCache | None, namespace: str, request: pytest.FixtureRequest
) -> list[bytes]:
    """Every key of the namespace and its value, read from Redis directly."""
    if cache is None:
        return []
    await cache.drain()
    client = Redis.from_url(request.getfixturevalue("redis_url"))
    values = []
    try:
        async for name in client.scan_iter(match=f"*{namespace}*"):
            assert await client.type(name) == b"string", name
            values.append(name + b"=" + (await client.get(name) or b""))
    finally:
        await client.aclose()
    return values


async def write_canaries(repo: SessionRepository, canary: str) -> str:
    """The canary in every encrypted field, through every write path; returns the session."""
    s = await repo.create_session("planner", "u1", {"note": canary})
    await repo.add_checkpoint(s.session_id, "one", {"said": canary})
    await repo.add_checkpoints(s.session_id, [("two", {"said": canary}), ("3", {"x": [canary]})])
    got = await repo.get_session(s.session_id)
    assert got is not None
    got.context["more"] = canary
    got.checkpoint("four", {"said": canary})
    await repo.update_session(got)
    await repo.update_shared_state("planner", {"app": canary})
    await repo.update_shared_state("planner", {"mine": {"deep": canary}}, user_id="u1")
    # Read everything back (filling the cache), so the Redis copies exist to be searched.
    loaded = await repo.get_session(s.session_id)
    assert loaded is not None and loaded.context["note"] == canary
    assert (await repo.get_shared_state("planner"))["app"] == canary
    return s.session_id


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "control"])
async def test_canary_is_nowhere_in_storage(
    db: Backend,
    clock: FakeClock,
    cache: RedisCache | None,
    namespace: str,
    request: pytest.FixtureRequest,
    encrypted: bool,
) -> None:
    repo = _repo(db, clock, cache, encryption=ENC if encrypted else None)
    canary = f"CANARY-{uuid.uuid4().hex}"
    sid = await write_canaries(repo, canary)
    stored = await _database_bytes(db, request)
    cached = await _redis_values(cache, namespace, request)
    if cache is not None:  # the session's copy is there to be searched
        assert any(sid.encode() in value and b":val=" in value for value in cached)
    if not encrypted:  # the control: the same search finds plaintext
        assert canary.encode() in stored
        assert cache is None or any(canary.encode() in value for value in cached)
        return
    assert canary.encode() not in stored
    assert not [value for value in cached if canary.encode() in value]


# -- tampering -----------------------------------------------------------------------------------


async def _refused(repo: SessionRepository, sid: str, field: str, kid: str | None = "k1") -> None:
    await _forget(repo, sid)
    with pytest.raises(DecryptionError) as caught:
        await repo.get_session(sid)
    error = caught.value
    assert isinstance(error, StorageError)
    assert error.session_id == sid and error.field == field and error.key_id == kid
    assert sid in str(error) and field in str(error)
    assert "SECRET" not in str(error)


async def test_a_flipped_byte_is_refused(repo: SessionRepository, db: Backend) -> None:
    s = await repo.create_session("planner", "u1", {"k": "SECRET"})
    stored = await _raw_context(db, s.session_id)
    raw = bytearray(base64.b64decode(stored["ct"]))
    raw[20] ^= 1
    stored["ct"] = base64.b64encode(bytes(raw)).decode()
    await _set(db, sessions_table, S.id == uuid.UUID(s.session_id), context=stored)
    await _refused(repo, s.session_id, "context")


async def test_a_truncated_value_is_refused(repo: SessionRepository, db: Backend) -> None:
    s = await repo.create_session("planner", "u1", {"k": "SECRET"})
    await repo.add_checkpoint(s.session_id, "step", {"k": "SECRET"})
    stored = await _raw_data(db, s.session_id, 2)
    raw = base64.b64decode(stored["ct"])
    stored["ct"] = base64.b64encode(raw[:-1]).decode()
    where = (C.session_id == uuid.UUID(s.session_id)) & (C.seq == 2)
    await _set(db, checkpoints_table, where, data=stored)
    await _refused(repo, s.session_id, "checkpoint 2 data")
    with pytest.raises(DecryptionError):
        await repo.list_checkpoints(s.session_id)
    with pytest.raises(DecryptionError):
        await repo.pop_checkpoint(s.session_id)
    async with db.engine.connect() as conn:  # the refused pop was rolled back
        count = select(S.checkpoint_count).where(S.id == uuid.UUID(s.session_id))
        assert (await conn.execute(count)).scalar_one() == 2


async def test_contexts_swapped_between_sessions_are_refused(
    repo: SessionRepository, db: Backend
) -> None:
    one = await repo.create_session("planner", "u1", {"k": "SECRET one"})
    two = await repo.create_session("planner", "u1", {"k": "SECRET two"})
    first, second = await _raw_context(db, one.session_id), await _raw_context(db, two.session_id)
    await _set(db, sessions_table, S.id == uuid.UUID(one.session_id), context=second)
    await _set(db, sessions_table, S.id == uuid.UUID(two.session_id), context=first)
    await _refused(repo, one.session_id, "context")
    await _refused(repo, two.session_id, "context")
    with pytest.raises(DecryptionError):
        await repo.list_sessions(user_id="u1")


async def test_checkpoints_swapped_within_a_session_are_refused(
    repo: SessionRepository, db: Backend
) -> None:
    s = await repo.create_session("planner", "u1", {})
    await repo.add_checkpoints(s.session_id, [("a", {"k": "SECRET a"}), ("b", {"k": "SECRET b"})])
    a, b = await _raw_data(db, s.session_id, 2), await _raw_data(db, s.session_id, 3)
    sid = uuid.UUID(s.session_id)
    await _set(db, checkpoints_table, (C.session_id == sid) & (C.seq == 2), data=b)
    await _set(db, checkpoints_table, (C.session_id == sid) & (C.seq == 3), data=a)
    await _forget(repo, s.session_id)
    with pytest.raises(DecryptionError, match=r"checkpoint [23] data"):
        await repo.get_session(s.session_id)
    with pytest.raises(DecryptionError, match="checkpoint 2 data"):
        await repo.list_checkpoints(s.session_id)


async def test_a_value_moved_to_another_field_is_refused(
    repo: SessionRepository, db: Backend
) -> None:
    s = await repo.create_session("planner", "u1", {})
    await repo.add_checkpoint(s.session_id, "a", {"k": "SECRET"})
    data = await _raw_data(db, s.session_id, 2)
    await _set(db, sessions_table, S.id == uuid.UUID(s.session_id), context=data)
    await _refused(repo, s.session_id, "context")


async def test_shared_state_moved_between_keys_or_scopes_is_refused(
    repo: SessionRepository, db: Backend
) -> None:
    await repo.update_shared_state("planner", {"a": "SECRET a", "b": "SECRET b"})
    await repo.update_shared_state("planner", {"a": "SECRET u"}, user_id="u1")
    X = shared_state_table.c
    async with db.engine.connect() as conn:
        app = (await conn.execute(select(X.state).where(X.scope == "app"))).scalar_one()
    await _set(db, shared_state_table, X.scope == "app", state={"a": app["b"], "b": app["b"]})
    with pytest.raises(DecryptionError, match="key 'a'") as caught:
        await repo.get_shared_state("planner")
    assert caught.value.session_id is None and "SECRET" not in str(caught.value)
    await _set(db, shared_state_table, X.scope == "user", state={"a": app["a"]})
    with pytest.raises(DecryptionError, match="key 'a'"):
        await repo.get_shared_state("planner", user_id="u1")


async def test_a_value_under_a_removed_key_is_refused(
    db: Backend, clock: FakeClock, cache: RedisCache | None
) -> None:
    old = _repo(db, clock, cache, encryption=FieldEncryption({"k1": K1, "k2": K2}, "k1"))
    s = await old.create_session("planner", "u1", {"k": "SECRET"})
    new = _repo(db, clock, cache, encryption=FieldEncryption({"k2": K2}, "k2"))
    await _refused(new, s.session_id, "context", kid="k1")
    # A key of the same id but other bytes: the value does not decrypt either.
    other = _repo(db, clock, cache, encryption=FieldEncryption({"k1": K2}, "k1"))
    await _refused(other, s.session_id, "context", kid="k1")


async def test_a_cached_copy_is_refused_by_a_repository_without_the_key(
    db: Backend, clock: FakeClock, cache: RedisCache | None
) -> None:
    s = await _repo(db, clock, cache, encryption=ENC).create_session("planner", "u1", {"k": "v"})
    plain = _repo(db, clock, cache)
    for _ in range(2):  # from the database, then (with a cache) from the copy it stored
        with pytest.raises(DecryptionError, match="no encryption configured"):
            await plain.get_session(s.session_id)


# -- no silent downgrade -------------------------------------------------------------------------


async def test_plaintext_is_refused_unless_allowed_then_encrypted_on_write(
    db: Backend, clock: FakeClock, cache: RedisCache | None
) -> None:
    plain = _repo(db, clock, cache)
    s = await plain.create_session("planner", "u1", {"k": "before"})
    await plain.update_shared_state("planner", {"a": 1})
    strict = _repo(db, clock, cache, encryption=ENC)
    await _refused(strict, s.session_id, "context", kid=None)
    with pytest.raises(DecryptionError, match="plaintext"):
        await strict.get_shared_state("planner")
    with pytest.raises(DecryptionError, match="plaintext"):
        await strict.list_checkpoints(s.session_id)
    lenient = _repo(
        db, clock, cache, encryption=FieldEncryption({"k1": K1}, "k1", allow_plaintext=True)
    )
    got = await lenient.get_session(s.session_id)
    assert got is not None and got.context == {"k": "before"}
    assert await lenient.get_shared_state("planner") == {"a": 1}
    got.context["k"] = "after"
    await lenient.update_session(got)
    await lenient.update_shared_state("planner", {"a": 2})
    assert _is_envelope(await _raw_context(db, s.session_id))
    assert _is_envelope(await _raw_data(db, s.session_id, 1)) is False  # written before
    strict_now = await strict.get_shared_state("planner")
    assert strict_now == {"a": 2}
    # A plaintext value planted in an encrypted session is refused again without the window.
    await _set(db, sessions_table, S.id == uuid.UUID(s.session_id), context={"k": "planted"})
    await _refused(strict, s.session_id, "context", kid=None)


async def test_an_envelope_lookalike_beside_the_sweep_mark_only(
    repo: SessionRepository, db: Backend
) -> None:
    s = await repo.create_session("planner", "u1", {"k": "SECRET"})
    stored = await _raw_context(db, s.session_id)
    await _set(db, sessions_table, S.id == uuid.UUID(s.session_id), context={**stored, "x": 1})
    await _refused(repo, s.session_id, "context", kid=None)


# -- keys ----------------------------------------------------------------------------------------


def test_keys_must_be_32_bytes_and_never_show() -> None:
    with pytest.raises(ValueError, match="31 bytes"):
        FieldEncryption({"a": b"x" * 31}, "a")
    with pytest.raises(ValueError, match="not among"):
        FieldEncryption({"a": K1}, "b")
    with pytest.raises(ValueError, match="key ids"):
        FieldEncryption({"a b": K1}, "a b")
    with pytest.raises(TypeError):
        FieldEncryption({"a": "x" * 32}, "a")  # type: ignore[dict-item]
    assert K1.hex() not in repr(FieldEncryption({"a": K1}, "a"))
    assert repr(K1) not in repr(FieldEncryption({"a": K1}, "a"))


def test_keys_from_the_environment() -> None:
    spec = f"old:{base64.b64encode(K1).decode()},new:{base64.b64encode(K2).decode()}"
    env = {
        "AGENT_SESSION_STORE_ENCRYPTION_KEYS": spec,
        "AGENT_SESSION_STORE_ENCRYPTION_ACTIVE": "new",
    }
    enc = FieldEncryption.from_env(env)
    assert enc.active == "new" and enc.key_ids == {"old", "new"}
    assert FieldEncryption.from_env(env, active="old").active == "old"
    with pytest.raises(ValueError, match="name the one"):
        FieldEncryption.from_env({"AGENT_SESSION_STORE_ENCRYPTION_KEYS": spec})
    with pytest.raises(ValueError, match="not set"):
        FieldEncryption.from_env({})
    with pytest.raises(ValueError, match="not valid base64") as caught:
        FieldEncryption.from_env({"AGENT_SESSION_STORE_ENCRYPTION_KEYS": "a:!!!secret!!!"})
    assert "secret" not in str(caught.value)


async def test_keys_from_an_async_source_are_awaited_once() -> None:
    calls = []

    async def kms() -> dict[str, bytes]:
        calls.append(1)
        return {"kms-1": K1}

    enc = await FieldEncryption.from_source(kms, "kms-1")
    sealed = enc.seal({"a": 1}, b"place")
    assert enc.open(sealed, b"place", "context", "s") == {"a": 1}
    assert calls == [1]


def test_every_value_gets_a_fresh_nonce() -> None:
    one, two = ENC.seal({"a": 1}, b"p"), ENC.seal({"a": 1}, b"p")
    assert one["ct"] != two["ct"]
    assert base64.b64decode(one["ct"])[:12] != base64.b64decode(two["ct"])[:12]


# -- rotation ------------------------------------------------------------------------------------

OLD_AND_NEW = {"k1": K1, "k2": K2}


async def test_rotation_rewrites_every_value_and_leaves_versions(
    db: Backend, clock: FakeClock, cache: RedisCache | None
) -> None:
    old = _repo(db, clock, cache, encryption=FieldEncryption({"k1": K1}, "k1"))
    s = await old.create_session("planner", "u1", {"k": "v"})
    await old.add_checkpoints(s.session_id, [("a", {"i": 1}), ("b", {"i": 2})])
    await old.update_shared_state("planner", {"a": 1, "b": 2}, user_id="u1")
    cached = await old.get_session(s.session_id)  # with a cache: a copy under k1 is stored
    assert cached is not None
    rotating = _repo(db, clock, cache, encryption=FieldEncryption(OLD_AND_NEW, "k2"))
    done = await rotating.rotate_keys(batch_size=2)
    assert (done.key_id, done.contexts, done.checkpoints, done.shared_values) == ("k2", 1, 3, 2)
    assert done.skipped == 0
    assert await rotating.rotate_keys() == type(done)(key_id="k2")  # nothing left to do
    new_only = _repo(db, clock, cache, encryption=FieldEncryption({"k2": K2}, "k2"))
    got = await new_only.get_session(s.session_id)  # not the cached copy: it was invalidated
    assert got is not None and got.model_dump() == cached.model_dump()
    assert got.version == cached.version
    assert await new_only.get_shared_state("planner", user_id="u1") == {"a": 1, "b": 2}
    assert _is_envelope(await _raw_context(db, s.session_id), "k2")


async def test_rotation_encrypts_plaintext_only_when_allowed(
    db: Backend, clock: FakeClock, cache: RedisCache | None
) -> None:
    s = await _repo(db, clock, cache).create_session("planner", "u1", {"k": "v"})
    strict = _repo(db, clock, cache, encryption=ENC)
    with pytest.raises(DecryptionError, match="plaintext"):
        await strict.rotate_keys()
    lenient = FieldEncryption({"k1": K1}, "k1", allow_plaintext=True)
    done = await _repo(db, clock, cache, encryption=lenient).rotate_keys()
    assert (done.contexts, done.checkpoints) == (1, 1)
    got = await strict.get_session(s.session_id)
    assert got is not None and got.context == {"k": "v"}


async def test_rotation_end_to_end_on_10000_sessions(
    db: Backend, clock: FakeClock, cache: RedisCache | None
) -> None:
    old = _repo(db, clock, cache, encryption=FieldEncryption({"k1": K1}, "k1"))
    created: dict[str, dict[str, Any]] = {}
    for start in range(0, 10_000, 500):
        batch = await asyncio.gather(
            *(old.create_session("bulk", f"u{i % 7}", {"i": i, "t": f"text {i}"})
              for i in range(start, start + 500))
        )  # fmt: skip
        created.update((s.session_id, s.context) for s in batch)
    some = sorted(created)[::500]
    for sid in some:  # some with more history, some cached under the old key
        await old.add_checkpoint(sid, "extra", {"sid": sid})
        assert await old.get_session(sid) is not None
    both = _repo(db, clock, cache, encryption=FieldEncryption(OLD_AND_NEW, "k2"))
    done = await both.rotate_keys(batch_size=1000)
    assert (done.contexts, done.checkpoints, done.skipped) == (10_000, 10_000 + len(some), 0)
    new_only = _repo(db, clock, cache, encryption=FieldEncryption({"k2": K2}, "k2"))
    seen: dict[str, dict[str, Any]] = {}
    for user in range(7):
        cursor = None
        while True:
            page = await new_only.list_sessions(user_id=f"u{user}", limit=1000, cursor=cursor)
            seen.update((s.session_id, s.context) for s in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert seen == created
    for sid in some:
        got = await new_only.get_session(sid)
        assert got is not None and got.checkpoints[-1].data == {"sid": sid}


# -- the command ---------------------------------------------------------------------------------


def _key_env(monkeypatch: pytest.MonkeyPatch, keys: dict[str, bytes], active: str | None) -> None:
    spec = ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in keys.items())
    monkeypatch.setenv("AGENT_SESSION_STORE_ENCRYPTION_KEYS", spec)
    if active is None:
        monkeypatch.delenv("AGENT_SESSION_STORE_ENCRYPTION_ACTIVE", raising=False)
    else:
        monkeypatch.setenv("AGENT_SESSION_STORE_ENCRYPTION_ACTIVE", active)


async def test_rotate_keys_command_reports_counts_never_values(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from agent_session_store import create_engine, migrations
    from tests.test_cli import cli

    url = f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"
    engine = create_engine(url)
    await migrations.upgrade(engine)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    try:
        old = SessionRepository(factory, clock=clock, encryption=ENC)
        sids = [(await old.create_session("a", "u", {"SECRET": i})).session_id for i in range(3)]
        await old.update_shared_state("a", {"SECRET": 1})
        # Where LangGraph is installed (not in the lowest job): a thread, its session, one
        # checkpoint, one value and one write.
        thread_of = await _a_langgraph_thread(old)
        monkeypatch.delenv("AGENT_SESSION_STORE_ENCRYPTION_KEYS", raising=False)
        refused = await cli("rotate-keys", "--no-cache", "--url", url, cwd=tmp_path)
        assert refused.code == 2 and "AGENT_SESSION_STORE_ENCRYPTION_KEYS" in refused.err
        _key_env(monkeypatch, OLD_AND_NEW, "k1")
        done = await cli("rotate-keys", "--no-cache", "--url", url, "--active", "k2", cwd=tmp_path)
        assert done.code == 0, done.err
        n, values = (4, 3) if thread_of else (3, 0)
        assert done.out.strip() == (
            f"rotate-keys: re-encrypted under key 'k2': {n} contexts, {n} checkpoints, "
            f"1 shared-state value, {values} LangGraph values"
        )
        for secret in ("SECRET", base64.b64encode(K1).decode(), base64.b64encode(K2).decode()):
            assert secret not in done.out + done.err
        again = await cli("rotate-keys", "--no-cache", "--url", url, "--active", "k2", cwd=tmp_path)
        assert "0 contexts, 0 checkpoints, 0 shared-state values, 0 LangGraph values" in again.out
        new_only = SessionRepository(
            factory, clock=clock, encryption=FieldEncryption({"k2": K2}, "k2")
        )
        for i, sid in enumerate(sids):
            got = await new_only.get_session(sid)
            assert got is not None and got.context == {"SECRET": i}
        if thread_of:
            thread = await thread_of(new_only)
            assert thread is not None and thread.checkpoint["channel_values"] == {"c": "SECRET"}
            assert thread.pending_writes == [("task", "c", "SECRET")]
        _key_env(monkeypatch, {"k2": K2}, None)  # the other commands decrypt with the keys too
        shown = await cli("sessions", "show", sids[0], "--json", "--url", url, cwd=tmp_path)
        assert shown.code == 0 and '"SECRET": 0' in shown.out.replace('":0', '": 0')
        await new_only.delete_session(sids[1])  # a deleted one is shown (and opened) too
        shown = await cli("sessions", "show", sids[1], "--json", "--url", url, cwd=tmp_path)
        assert shown.code == 0 and '"SECRET": 1' in shown.out.replace('":1', '": 1')
        _key_env(monkeypatch, {"k9": K2}, None)  # a key that is not there: an error, no values
        wrong = await cli("sessions", "show", sids[0], "--url", url, cwd=tmp_path)
        assert wrong.code == 1 and "'k2'" in wrong.err and "SECRET" not in wrong.out + wrong.err
    finally:
        await engine.dispose()


async def _a_langgraph_thread(repo: SessionRepository) -> Any:
    """Store a thread through ``repo`` where LangGraph is installed; a function that reads it
    back through another repository (``None`` without LangGraph)."""
    from tests.langgraph_parts import LANGGRAPH

    if not LANGGRAPH:
        return None
    from agent_session_store.integrations.langgraph import SessionStoreSaver
    from tests.test_integration_langgraph import checkpoint

    saver = SessionStoreSaver(repo)
    put = await saver.aput({"configurable": {"thread_id": "t"}},
                           checkpoint({"c": "SECRET"}), {}, {"c": 1})  # fmt: skip
    await saver.aput_writes(put, [("c", "SECRET")], "task")

    async def read(other: SessionRepository) -> Any:
        return await SessionStoreSaver(other).aget_tuple(put)

    return read
