"""SessionStoreSaver on a repository with ``encryption=...``: what LangGraph stores is sealed.

LangGraph's conformance suite runs with encryption on, on every backend, without and with the
Redis cache; a canary sent through a real graph is nowhere in the database's bytes nor in Redis
(the control without encryption finds it); values moved between rows, channels, threads or
changed by a byte fail with ``DecryptionError``; rotation re-encrypts the saver's tables.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.types import Command
from sqlalchemy import select, update

from agent_session_store import DecryptionError, RedisCache, SessionRepository
from agent_session_store.encryption import BYTES_MARK, FieldEncryption, sealed_kid
from agent_session_store.integrations.langgraph import SessionStoreSaver
from agent_session_store.tables import lg_blobs_table, lg_checkpoints_table, lg_writes_table
from examples.langgraph_runner import build_graph, converse
from tests.conftest import Backend, FakeClock
from tests.test_encryption import (  # noqa: F401 - cache is a fixture
    ENC,
    K1,
    K2,
    _database_bytes,
    _redis_values,
    cache,
)
from tests.test_integration_langgraph import blob_keys, checkpoint, fresh_agent_type, statements

B = lg_blobs_table.c
W = lg_writes_table.c
CP = lg_checkpoints_table.c
META: Any = {"source": "input"}  # what alist(filter=...) finds, to read through that path too


@pytest.fixture
def repo(db: Backend, clock: FakeClock, cache: RedisCache | None) -> SessionRepository:  # noqa: F811
    return SessionRepository(db.factory, clock=clock, cache=cache, encryption=ENC)


@pytest.fixture
def saver(repo: SessionRepository) -> SessionStoreSaver:
    return SessionStoreSaver(repo, agent_type=fresh_agent_type())


async def test_conformance_suite_passes_with_encryption(repo: SessionRepository) -> None:
    @checkpointer_test(name="SessionStoreSaver (encrypted)")
    async def factory() -> AsyncIterator[SessionStoreSaver]:
        yield SessionStoreSaver(repo, agent_type=fresh_agent_type())

    report = await validate(factory)
    failures = {name: result.failures for name, result in report.results.items() if result.failures}
    assert not failures
    assert all(result.detected for result in report.results.values()), report.results
    assert sum(result.tests_passed for result in report.results.values()) == 81


async def test_a_real_graph_reads_back_the_same_encrypted(saver: SessionStoreSaver) -> None:
    plain = SessionStoreSaver(SessionRepository(saver.repository.session_factory),
                              agent_type=fresh_agent_type())  # fmt: skip
    assert await converse(saver, "g") == await converse(plain, "g")


# -- what reaches the database and Redis ------------------------------------------------------


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "control"])
async def test_a_graphs_canary_is_nowhere_in_storage(
    db: Backend,
    clock: FakeClock,
    cache: RedisCache | None,  # noqa: F811
    namespace: str,
    request: pytest.FixtureRequest,
    encrypted: bool,
) -> None:
    repo = SessionRepository(
        db.factory, clock=clock, cache=cache, encryption=ENC if encrypted else None
    )
    saver = SessionStoreSaver(repo, agent_type=fresh_agent_type())
    canary = f"CANARY-{uuid.uuid4().hex}"
    graph = build_graph(saver)
    config: Any = {"configurable": {"thread_id": "canary", "user_id": "u1"}}
    for n in range(3):  # a growing message list: stored as deltas after the first turns
        paused = await graph.ainvoke({"messages": [HumanMessage(f"{canary} {n}")]}, config)
        assert paused["__interrupt__"]  # its pending writes wait in the database
        done = await graph.ainvoke(Command(resume=f"{canary} ok"), config)
        assert done["messages"][0].content == f"{canary} 0"
    latest = (await graph.aget_state(config)).config
    await saver.aput_writes(latest, [("reviews", [canary])], "a-task")  # a write of its own
    copy: Any = {"configurable": {"thread_id": "canary-copy"}}
    await saver.acopy_thread("canary", "canary-copy")
    copied = await graph.aget_state(copy)
    assert copied.values == (await graph.aget_state(config)).values
    for thread in (await repo.list_sessions(user_id="u1")).items:  # cached copies to search
        await repo.get_session(thread.session_id)
    async with db.engine.connect() as conn:
        deltas = await conn.scalar(select(B.base_version).where(B.base_version.is_not(None)))
    assert deltas is not None, "the growing list was stored as deltas"
    stored = await _database_bytes(db, request)
    cached = await _redis_values(cache, namespace, request)
    if cache is not None:
        assert cached, "the cache holds copies to search"
    # pg_dump writes bytea columns (the saver's) in hex: search for both forms.
    needles = (canary.encode(), canary.encode().hex().encode())
    if not encrypted:
        assert any(needle in stored for needle in needles)
        return
    assert not any(needle in stored for needle in needles)
    assert not [value for value in cached if any(needle in value for needle in needles)]


async def test_every_stored_value_is_sealed_under_the_active_key(
    saver: SessionStoreSaver, db: Backend
) -> None:
    await converse(saver, "sealed")
    async with db.engine.connect() as conn:
        values = [
            *(await conn.execute(select(CP.checkpoint))).scalars(),
            *(await conn.execute(select(B.blob).where(B.blob.is_not(None)))).scalars(),
            *(await conn.execute(select(W.blob))).scalars(),
        ]
        digests = (await conn.execute(select(B.digest).where(B.digest.is_not(None)))).scalars()
        digests = list(digests)
    assert values and all(sealed_kid(v) == "k1" for v in values)
    assert digests  # keyed, so none is the SHA-256 of a stored list's items
    assert all(len(d) == 32 for d in digests)


async def test_list_digests_are_keyed_not_sha256_of_the_items(
    saver: SessionStoreSaver, db: Backend
) -> None:
    """A plain digest next to ciphertext would let a reader confirm a guessed conversation."""
    items = ["a short secret"]
    await saver.aput({"configurable": {"thread_id": "dg"}}, checkpoint({"m": items}), META,
                     {"m": 1})  # fmt: skip
    _, data = saver.serde.dumps_typed(items)
    body = data[1:]  # after msgpack's one-byte array header
    async with db.engine.connect() as conn:
        stored = (await conn.execute(select(B.digest).where(B.channel == "m"))).scalar_one()
    assert stored != hashlib.sha256(body).digest()
    assert stored == ENC.digest(body)


# SQLite reads the base inside its write transaction
@pytest.mark.parametrize("db", ["postgres", "pgbouncer"], indirect=True)
async def test_an_encrypted_turn_is_one_statement_and_survives_its_base_going(
    db: Backend, clock: FakeClock
) -> None:
    """PostgreSQL's put of the next turn stays one statement with encryption; when the base it
    remembered was removed meanwhile, the whole value it stores instead decrypts (it is sealed
    as a whole value, not as the delta it was cut as)."""
    agent = fresh_agent_type()
    saver = SessionStoreSaver(SessionRepository(db.factory, clock=clock, encryption=ENC),
                              agent_type=agent)  # fmt: skip
    other = SessionStoreSaver(SessionRepository(db.factory, encryption=ENC), agent_type=agent)
    config: Any = {"configurable": {"thread_id": "turns", "checkpoint_ns": ""}}
    messages = [f"message {n} " * 5 for n in range(20)]

    async def turn(parent: Any, n: int, *, run: str = "run") -> Any:
        version = f"{n:03}"
        cp = checkpoint({"m": messages[: 10 + n]}, {"m": version})
        return await saver.aput(parent, cp, {"run_id": f"{run}-{n}"}, {"m": version})

    first = await turn(config, 1)
    with statements(db) as sent:
        second = await turn(first, 2, run="doomed")
    assert (await blob_keys(db, saver, "turns"))[("m", "002")] == "001"  # a delta
    if db.name == "postgres":
        assert len(sent) == 1, sent  # no read before the write
    await other.adelete_for_runs(["doomed-2"])
    third = await turn(second, 3)
    assert (await blob_keys(db, saver, "turns"))[("m", "003")] is None  # stored whole
    got = await saver.aget_tuple(third)
    assert got is not None and got.checkpoint["channel_values"]["m"] == messages[:13]
    fourth = await turn(third, 4)
    assert (await blob_keys(db, saver, "turns"))[("m", "004")] == "003"
    got = await other.aget_tuple(fourth)
    assert got is not None and got.checkpoint["channel_values"]["m"] == messages[:14]


# -- tampering ----------------------------------------------------------------------------


async def _blob(db: Backend, **where: Any) -> bytes:
    async with db.engine.connect() as conn:
        stmt = select(B.blob).where(*(B[k] == v for k, v in where.items()))
        value: bytes = (await conn.execute(stmt)).scalar_one()
        return value


async def _set_blob(db: Backend, blob: bytes | None, **where: Any) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            update(lg_blobs_table).where(*(B[k] == v for k, v in where.items())).values(blob=blob)
        )


async def _refused(saver: SessionStoreSaver, config: Any, sid: str) -> None:
    """Every read of the thread raises DecryptionError naming its session; nothing comes back."""
    with pytest.raises(DecryptionError) as caught:
        await saver.aget_tuple(config)
    assert caught.value.session_id == sid and sid in str(caught.value)
    with pytest.raises(DecryptionError):
        [t async for t in saver.alist(config)]
    with pytest.raises(DecryptionError):
        [t async for t in saver.alist(config, filter={"source": "input"})]


async def _sid(saver: SessionStoreSaver, db: Backend, thread_id: str) -> str:
    from agent_session_store.tables import lg_threads_table

    async with db.engine.connect() as conn:
        stmt = select(lg_threads_table.c.session_id).where(
            lg_threads_table.c.thread_id == thread_id,
            lg_threads_table.c.agent_type == saver.agent_type,
        )
        return str((await conn.execute(stmt)).scalar_one())


async def test_a_value_swapped_between_channels_or_threads_does_not_decrypt(
    saver: SessionStoreSaver, db: Backend
) -> None:
    one: Any = {"configurable": {"thread_id": "one"}}
    two: Any = {"configurable": {"thread_id": "two"}}
    await saver.aput(one, checkpoint({"a": "secret-a", "b": "secret-b"}), {"source": "input"},
                     {"a": 1, "b": 1})  # fmt: skip
    await saver.aput(two, checkpoint({"a": "other-a"}), {"source": "input"}, {"a": 1})
    sid1, sid2 = await _sid(saver, db, "one"), await _sid(saver, db, "two")
    a1 = await _blob(db, session_id=uuid.UUID(sid1), channel="a")
    b1 = await _blob(db, session_id=uuid.UUID(sid1), channel="b")
    a2 = await _blob(db, session_id=uuid.UUID(sid2), channel="a")
    # between two channels of one thread
    await _set_blob(db, b1, session_id=uuid.UUID(sid1), channel="a")
    await _refused(saver, one, sid1)
    # between threads: the same channel and version, another thread's value
    await _set_blob(db, a2, session_id=uuid.UUID(sid1), channel="a")
    await _refused(saver, one, sid1)
    # a flipped byte
    flipped = bytearray(a1)
    flipped[-5] ^= 1
    await _set_blob(db, bytes(flipped), session_id=uuid.UUID(sid1), channel="a")
    await _refused(saver, one, sid1)
    # cut short, and plaintext where ciphertext belongs
    await _set_blob(db, a1[:-1], session_id=uuid.UUID(sid1), channel="a")
    await _refused(saver, one, sid1)
    await _set_blob(db, b"\xa6secret", session_id=uuid.UUID(sid1), channel="a")
    await _refused(saver, one, sid1)
    await _set_blob(db, None, session_id=uuid.UUID(sid1), channel="a")  # no bytes at all
    await _refused(saver, one, sid1)
    await _set_blob(db, a1, session_id=uuid.UUID(sid1), channel="a")  # restored: reads again
    got = await saver.aget_tuple(one)
    assert got is not None and got.checkpoint["channel_values"] == {"a": "secret-a",
                                                                     "b": "secret-b"}  # fmt: skip
    assert (await saver.aget_tuple(two)) is not None


async def test_thread_rows_swapped_between_threads_do_not_serve_the_other_thread(
    saver: SessionStoreSaver, db: Backend
) -> None:
    """Values are bound to the thread's key, not only to its session: a database writer who
    points thread "one" at thread "two"'s session gets a DecryptionError, not two's state."""
    from agent_session_store.tables import lg_threads_table

    one: Any = {"configurable": {"thread_id": "one"}}
    two: Any = {"configurable": {"thread_id": "two"}}
    await saver.aput(one, checkpoint({"a": "one's"}), META, {"a": 1})
    await saver.aput(two, checkpoint({"a": "two's"}), META, {"a": 1})
    sid1, sid2 = await _sid(saver, db, "one"), await _sid(saver, db, "two")
    t = lg_threads_table.c
    mine = t.agent_type == saver.agent_type
    async with db.engine.begin() as conn:  # the two threads' ids swapped, through a third
        for old, new in (("one", "spare"), ("two", "one"), ("spare", "two")):
            await conn.execute(
                update(lg_threads_table)
                .where(mine, t.thread_key == old)
                .values(thread_key=new, thread_id=new)
            )
    await _refused(saver, one, sid2)
    await _refused(saver, two, sid1)


async def test_a_delta_re_pointed_at_another_base_does_not_decrypt(
    saver: SessionStoreSaver, db: Backend
) -> None:
    config: Any = {"configurable": {"thread_id": "chain"}}
    items: list[str] = []
    for turn in range(1, 5):
        items = [*items, f"message {turn}"]
        stored = await saver.aput(config, checkpoint({"m": items}, {"m": turn}), META, {"m": turn})
        config = stored
    sid = uuid.UUID(await _sid(saver, db, "chain"))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(B.version, B.base_version).where(
            B.session_id == sid).order_by(B.version))).all()  # fmt: skip
    deltas = [r for r in rows if r.base_version is not None]
    assert deltas, "a growing list is stored as deltas with encryption on"
    latest: Any = {"configurable": {"thread_id": "chain"}}
    got = await saver.aget_tuple(latest)
    assert got is not None and got.checkpoint["channel_values"]["m"] == items
    async with db.engine.begin() as conn:  # point the newest delta at another version
        other = next(r.version for r in rows if r.version != deltas[-1].base_version)
        newest = (B.session_id == sid, B.version == deltas[-1].version)
        await conn.execute(update(lg_blobs_table).where(*newest).values(base_version=other))
    await _refused(saver, latest, str(sid))


async def test_a_writes_value_swapped_or_altered_does_not_decrypt(
    saver: SessionStoreSaver, db: Backend
) -> None:
    config: Any = {"configurable": {"thread_id": "w"}}
    stored = await saver.aput(config, checkpoint({}), META, {})
    await saver.aput_writes(stored, [("x", "secret-x"), ("y", "secret-y")], "task-1")
    sid = await _sid(saver, db, "w")
    async with db.engine.connect() as conn:
        x, y = (await conn.execute(select(W.blob).order_by(W.idx))).scalars().all()
    async with db.engine.begin() as conn:
        await conn.execute(update(lg_writes_table).where(W.idx == 0).values(blob=y))
    await _refused(saver, config, sid)
    async with db.engine.begin() as conn:  # the value back, but the write renamed
        await conn.execute(update(lg_writes_table).where(W.idx == 0).values(blob=x, channel="z"))
    await _refused(saver, config, sid)
    async with db.engine.begin() as conn:
        await conn.execute(update(lg_writes_table).where(W.idx == 0).values(channel="x"))
    got = await saver.aget_tuple(config)
    assert got is not None and [w[1:] for w in got.pending_writes or []] == [
        ("x", "secret-x"), ("y", "secret-y"),
    ]  # fmt: skip


async def test_a_checkpoint_body_moved_to_another_checkpoint_does_not_decrypt(
    saver: SessionStoreSaver, db: Backend
) -> None:
    config: Any = {"configurable": {"thread_id": "c"}}
    first = await saver.aput(config, checkpoint({}), META, {})
    await saver.aput(first, checkpoint({}), META, {})
    sid = await _sid(saver, db, "c")
    async with db.engine.connect() as conn:
        bodies = (await conn.execute(select(CP.checkpoint_id, CP.checkpoint).order_by(
            CP.checkpoint_id))).all()  # fmt: skip
    async with db.engine.begin() as conn:
        second = CP.checkpoint_id == bodies[1].checkpoint_id
        await conn.execute(
            update(lg_checkpoints_table).where(second).values(checkpoint=bodies[0].checkpoint)
        )
    await _refused(saver, config, sid)


async def test_no_silent_downgrade_either_way(db: Backend, clock: FakeClock) -> None:
    agent = fresh_agent_type()
    config: Any = {"configurable": {"thread_id": "d"}}
    plain = SessionStoreSaver(SessionRepository(db.factory, clock=clock), agent_type=agent)
    await plain.aput(config, checkpoint({"a": "before"}), META, {"a": 1})
    sealed = SessionStoreSaver(SessionRepository(db.factory, clock=clock, encryption=ENC),
                               agent_type=agent)  # fmt: skip
    sid = await _sid(sealed, db, "d")
    await _refused(sealed, config, sid)  # plaintext where ciphertext is required
    window = FieldEncryption({"k1": K1}, "k1", allow_plaintext=True)
    migrating = SessionStoreSaver(SessionRepository(db.factory, encryption=window),
                                  agent_type=agent)  # fmt: skip
    got = await migrating.aget_tuple(config)
    assert got is not None and got.checkpoint["channel_values"] == {"a": "before"}
    await sealed.aput(config, checkpoint({"a": "after"}, {"a": 2}), META, {"a": 2})
    with pytest.raises(DecryptionError, match="no encryption configured") as caught:
        await plain.aget_tuple(config)  # an envelope, read without keys
    assert caught.value.session_id == sid


async def test_keys_and_values_never_reach_an_error(saver: SessionStoreSaver, db: Backend) -> None:
    config: Any = {"configurable": {"thread_id": "e"}}
    await saver.aput(config, checkpoint({"a": "SECRET-VALUE"}), META, {"a": 1})
    other = SessionStoreSaver(
        SessionRepository(db.factory, encryption=FieldEncryption({"k2": K2}, "k2")),
        agent_type=saver.agent_type,
    )
    with pytest.raises(DecryptionError) as caught:
        await other.aget_tuple(config)
    message = str(caught.value)
    assert "'k1'" in message and "not configured" in message
    assert "SECRET" not in message and K1.hex() not in message and BYTES_MARK.decode(
        "latin-1") not in message  # fmt: skip


# -- rotation -----------------------------------------------------------------------------


async def test_rotation_re_encrypts_the_savers_values(
    db: Backend,
    clock: FakeClock,
    cache: RedisCache | None,  # noqa: F811
) -> None:
    agent = fresh_agent_type()
    old = SessionRepository(db.factory, clock=clock, cache=cache, encryption=ENC)
    graph = build_graph(SessionStoreSaver(old, agent_type=agent))
    config: Any = {"configurable": {"thread_id": "rot"}}
    await converse(SessionStoreSaver(old, agent_type=agent), "rot")
    before = await graph.aget_state(config)
    history = [s.values async for s in graph.aget_state_history(config)]
    both = FieldEncryption({"k1": K1, "k2": K2}, "k2")
    rotating = SessionRepository(db.factory, clock=clock, cache=cache, encryption=both)
    done = await rotating.rotate_keys(batch_size=7)  # many batches
    assert done.framework_values > 0 and done.skipped == 0
    again = await rotating.rotate_keys(batch_size=7)
    assert again.framework_values == 0
    new_only = SessionRepository(
        db.factory, clock=clock, cache=cache, encryption=FieldEncryption({"k2": K2}, "k2")
    )
    graph = build_graph(SessionStoreSaver(new_only, agent_type=agent))
    after = await graph.aget_state(config)
    assert after.values == before.values and after.next == before.next
    assert [s.values async for s in graph.aget_state_history(config)] == history
    async with db.engine.connect() as conn:
        stored = [
            *(await conn.execute(select(CP.checkpoint))).scalars(),
            *(await conn.execute(select(B.blob).where(B.blob.is_not(None)))).scalars(),
            *(await conn.execute(select(W.blob))).scalars(),
        ]
    assert stored and all(sealed_kid(v) == "k2" for v in stored)
    # the conversation goes on under the new key, deltas included
    await graph.ainvoke({"messages": [HumanMessage("more")]}, config)
    assert (await graph.aget_state(config)).values["messages"][-1] is not None


async def test_rotation_redoes_whole_lists_digests_and_clears_deltas(
    saver: SessionStoreSaver, db: Backend
) -> None:
    """A digest under the old key would stop matching anyway; redone under the new one, the
    next turn cuts its delta at once. A delta's row does not hold its whole list: cleared."""
    from agent_session_store.integrations._langgraph_sealed import blob_place
    from agent_session_store.integrations._langgraph_values import array_header

    config: Any = {"configurable": {"thread_id": "dg"}}
    items: list[str] = []
    for turn in range(1, 4):
        items = [*items, f"message {turn} " * 5]
        config = await saver.aput(config, checkpoint({"m": items}, {"m": turn}), META, {"m": turn})
    new = FieldEncryption({"k1": K1, "k2": K2}, "k2")
    await SessionRepository(db.factory, encryption=new).rotate_keys()
    sid = uuid.UUID(await _sid(saver, db, "dg"))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(lg_blobs_table).where(B.session_id == sid))).all()
    assert {r.base_version is None for r in rows} == {True, False}  # wholes and deltas
    for r in rows:
        if r.base_version is not None:
            assert r.digest is None
            continue
        where = blob_place(saver.agent_type, "dg", "", "m", r.version, r.type, None, r.item_count)
        plain = new.open_bytes(r.blob, where, "m", None)
        assert r.digest == new.digest(plain[len(array_header(r.item_count)) :])


async def test_rotation_with_allow_plaintext_seals_what_was_stored_before(
    db: Backend, clock: FakeClock
) -> None:
    """Turning encryption on over a saver's existing threads: rotate-keys --allow-plaintext."""
    from agent_session_store.integrations._langgraph_sealed import blob_place
    from agent_session_store.integrations._langgraph_values import array_header

    agent = fresh_agent_type()
    plain = SessionStoreSaver(SessionRepository(db.factory, clock=clock), agent_type=agent)
    await converse(plain, "before")
    config: Any = {"configurable": {"thread_id": "before"}}
    graph = build_graph(plain)
    state = await graph.aget_state(config)
    window = FieldEncryption({"k1": K1}, "k1", allow_plaintext=True)
    done = await SessionRepository(db.factory, encryption=window).rotate_keys(batch_size=5)
    assert done.framework_values > 0
    strict = SessionStoreSaver(SessionRepository(db.factory, encryption=ENC), agent_type=agent)
    assert (await build_graph(strict).aget_state(config)).values == state.values
    sid = uuid.UUID(await _sid(strict, db, "before"))
    async with db.engine.connect() as conn:  # no plain SHA-256 of a list is left
        lists = select(lg_blobs_table).where(B.session_id == sid, B.item_count.is_not(None))
        stored = (await conn.execute(lists)).all()
    wholes = [r for r in stored if r.base_version is None]
    assert wholes
    for r in wholes:
        where = blob_place(agent, "before", r.checkpoint_ns, r.channel, r.version, r.type, None,
                           r.item_count)  # fmt: skip
        body = ENC.open_bytes(r.blob, where, "m", None)[len(array_header(r.item_count)) :]
        assert r.digest == ENC.digest(body) != hashlib.sha256(body).digest()
