"""Many writers at once: nothing acknowledged is lost, nothing rejected is written, no stale read.

Workers (asyncio tasks in this process, and separate processes with their own engines, pools and
``RedisCache`` objects sharing one namespace) hammer one hot session and a handful of others with
updates, appends, heartbeats, reads and stale sweeps. Every call is logged with the monotonic
time it started or was acknowledged, then checked against the database afterwards:

- every acknowledged update and append is there, at the ``seq`` it was acknowledged with, and
  each session's ``seq`` runs 1..n with no gap or duplicate;
- every rejected update raised ``ConcurrentUpdateError`` (or, once a sweep failed its session,
  ``InvalidStateTransitionError``: a finished session's content is final) and left no trace (its
  checkpoint is absent and its context value was never stored); an append refused for the same
  reason left none either;
- each session's ``version`` is exactly 1 + its acknowledged writes + the sweeps that failed it;
- no read that started after a write was acknowledged returned an older version (or fewer
  checkpoints), in any process: ``CLOCK_MONOTONIC`` is shared by all processes on the machine.

A second group pins the read/write race of a read-through cache with explicit interleavings.
``pytest -s`` prints the counts.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agent_session_store import (
    ConcurrentUpdateError,
    InvalidStateTransitionError,
    RedisCache,
    SessionRepository,
    create_engine,
)
from agent_session_store.engine import behind_transaction_pooler
from agent_session_store.tables import sessions_table
from tests.conftest import Backend, FakeClock, unavailable
from tests.pausing import after_checkin
from tests.servers import RedisServer, ServerUnavailable

ROOT = Path(__file__).resolve().parents[1]
Event = dict[str, Any]
MANY = 6  # sessions besides the hot one; the first CONTESTED start out stale
CONTESTED = 3
STALE_AFTER = timedelta(hours=1)


# -- the worker: shared by tasks here and by worker processes --------------------------------


async def cancelled_write_seq(repo: SessionRepository, sid: str, name: str) -> int | None:
    """The seq of checkpoint ``name`` if a cancelled write stored it (it happened), else None."""
    seqs = [cp.seq for cp in await repo.list_checkpoints(sid, limit=1000) if cp.name == name]
    return seqs[0] if seqs else None


async def work(
    repo: SessionRepository, hot: str, many: list[str], worker: str, ops: int, seed: int,
    cancel_rate: float = 0.0, plain: SessionRepository | None = None,
) -> list[Event]:  # fmt: skip
    """Run ``ops`` random calls and log each one's outcome with monotonic timestamps.

    With ``cancel_rate``, that share of updates and appends run under a random time limit of
    up to 3 ms (``asyncio.timeout``), as a request timeout would cancel them. A cancelled
    write happened or did not: which, ``plain`` (no cache) tells from the database right after
    the cancellation; one that happened counts as acknowledged at that moment.
    """
    rng = random.Random(seed)
    log: list[Event] = []

    async def maybe_cancelled(call: Any) -> Any:
        if rng.random() >= cancel_rate:
            return await call
        try:
            async with asyncio.timeout(rng.uniform(0, 0.003)):
                return await call
        except TimeoutError:
            return None

    for n in range(ops):
        sid = hot if rng.random() < 0.5 else rng.choice(many)
        roll = rng.random()
        if roll < 0.55:  # read, then update (or just read)
            t0 = time.monotonic_ns()
            session = await repo.get_session(sid)
            assert session is not None
            log.append({"op": "read", "sid": sid, "t0": t0, "version": session.version,
                        "count": session.checkpoint_count})  # fmt: skip
            if roll < 0.2:
                continue
            key, name = f"{worker}", f"{worker}-u{n}"
            session.context[key] = n
            session.checkpoint(name, {"n": n})
            try:
                stored = await maybe_cancelled(repo.update_session(session))
            except (ConcurrentUpdateError, InvalidStateTransitionError):
                log.append({"op": "update", "ok": False, "sid": sid, "name": name, "key": key,
                            "n": n})  # fmt: skip
                continue
            if stored is None:  # cancelled: did it happen?
                assert plain is not None
                seq = await cancelled_write_seq(plain, sid, name)
                log.append({"op": "cancelled", "happened": seq is not None})
                if seq is None:
                    log.append({"op": "update", "ok": False, "sid": sid, "name": name,
                                "key": key, "n": n})  # fmt: skip
                    continue
                version = session.version + 1
            else:
                seq, version = stored.checkpoints[-1].seq, stored.version
            log.append({"op": "update", "ok": True, "sid": sid, "name": name, "key": key,
                        "n": n, "version": version, "seq": seq,
                        "t": time.monotonic_ns()})  # fmt: skip
        elif roll < 0.8:
            name = f"{worker}-a{n}"
            try:
                cp = await maybe_cancelled(repo.add_checkpoint(sid, name, {"n": n}))
            except InvalidStateTransitionError:  # swept: a failed session takes no checkpoint
                log.append({"op": "append refused", "sid": sid, "name": name})
                continue
            if cp is None:  # cancelled: did it happen?
                assert plain is not None
                seq = await cancelled_write_seq(plain, sid, name)
                log.append({"op": "cancelled", "happened": seq is not None})
                if seq is None:
                    continue
            else:
                seq = cp.seq
            log.append({"op": "append", "sid": sid, "name": name, "seq": seq,
                        "t": time.monotonic_ns()})  # fmt: skip
        elif roll < 0.93:
            alive = await repo.heartbeat(sid)
            log.append({"op": "heartbeat", "sid": sid, "alive": alive})
        else:
            swept = await repo.cleanup_stale_sessions(STALE_AFTER, batch_size=2)
            log.append({"op": "sweep", "swept": swept})
    return log


async def _process_main(args: dict[str, Any]) -> None:
    """A worker process: own engine and pool, own RedisCache; waits for "go" on stdin."""
    engine = create_engine(args["url"])
    redis = Redis.from_url(args["redis_url"]) if args["redis_url"] else None
    try:
        cache = RedisCache(redis, namespace=args["namespace"]) if redis is not None else None
        factory = async_sessionmaker(engine, expire_on_commit=False)
        repo = SessionRepository(factory, cache=cache)
        plain = SessionRepository(factory)
        if await repo.get_session(args["hot"]) is None:  # connected, schema checked
            # Seen once in a full run (not reproduced alone): say what the database holds.
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(sessions_table.c.state, sessions_table.c.expires_at).where(
                            sessions_table.c.id == uuid.UUID(args["hot"])
                        )
                    )
                ).first()
            uncached = await plain.get_session(args["hot"])
            raise AssertionError(
                f"the hot session is not there for this process: stored row {row}, "
                f"uncached read {'found it' if uncached else 'None'}, url {args['url']}"
            )
        print("ready", flush=True)
        assert (await asyncio.to_thread(sys.stdin.readline)).strip() == "go"
        logs = await asyncio.gather(
            *(
                work(
                    repo,
                    args["hot"],
                    args["many"],
                    f"p{args['proc']}t{t}",
                    args["ops"],
                    seed=args["proc"] * 100 + t,
                    cancel_rate=args.get("cancel_rate", 0.0),
                    plain=plain,
                )
                for t in range(args["tasks"])
            )
        )
        events = [event for log in logs for event in log]
        if cache is not None:
            stats = cache.stats
            events.append({"op": "cache", "errors": stats.errors, "epochs": stats.epoch_bumps})
        print(json.dumps(events), flush=True)
    finally:
        if redis is not None:
            await redis.aclose()
        await engine.dispose()


# -- setting up and checking ----------------------------------------------------------------


async def make_sessions(factory: async_sessionmaker[AsyncSession]) -> tuple[str, list[str]]:
    """The hot session and MANY others; the first CONTESTED were last alive two hours ago."""
    past = FakeClock()
    past.now -= 2 * STALE_AFTER
    old = SessionRepository(factory, clock=past)
    contested = [
        (await old.create_session("worker", "stress")).session_id for _ in range(CONTESTED)
    ]
    now = SessionRepository(factory)
    hot = (await now.create_session("worker", "stress")).session_id
    rest = [
        (await now.create_session("worker", "stress")).session_id for _ in range(MANY - CONTESTED)
    ]
    return hot, contested + rest


async def verify(db: Backend, sids: list[str], events: list[Event]) -> Counter[str]:
    """Check the logged outcomes against the database; return the counts."""
    plain = SessionRepository(db.factory)  # the database, not the cache
    counts: Counter[str] = Counter()
    acks: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # sid -> (t, version, count)
    expected_names: dict[str, dict[int, str]] = defaultdict(dict)
    rejected_names: set[str] = set()
    last_value: dict[tuple[str, str], int] = {}
    writes: Counter[str] = Counter()
    for e in events:
        if e["op"] == "cache":  # a worker process's cache counters
            counts["cache errors"] += e["errors"]
            counts["new epochs"] += e["epochs"]
            continue
        counts[e["op"] + ("" if e.get("ok", True) else " rejected")] += 1
        if e["op"] == "update" and e["ok"]:
            acks[e["sid"]].append((e["t"], e["version"], e["seq"]))
            assert e["seq"] not in expected_names[e["sid"]], f"seq {e['seq']} acknowledged twice"
            expected_names[e["sid"]][e["seq"]] = e["name"]
            last_value[e["sid"], e["key"]] = max(e["n"], last_value.get((e["sid"], e["key"]), -1))
            writes[e["sid"]] += 1
        elif e["op"] in ("update", "append refused"):
            rejected_names.add(e["name"])
        elif e["op"] == "append":
            acks[e["sid"]].append((e["t"], 0, e["seq"]))
            assert e["seq"] not in expected_names[e["sid"]], f"seq {e['seq']} acknowledged twice"
            expected_names[e["sid"]][e["seq"]] = e["name"]
            writes[e["sid"]] += 1
        elif e["op"] == "sweep":
            counts["sessions swept"] += e["swept"]
        elif e["op"] == "cancelled":
            counts["cancelled writes that happened" if e["happened"] else "cancelled writes"] += 1

    async with db.engine.connect() as conn:
        rows = {
            str(r.id): r
            for r in (await conn.execute(select(sessions_table))).all()
            if str(r.id) in sids
        }
    swept = 0
    for sid in sids:
        row = rows[sid]
        history = []
        after = 0
        while batch := await plain.list_checkpoints(sid, after_seq=after, limit=1000):
            history += batch
            after = batch[-1].seq or 0
        seqs = [cp.seq for cp in history]
        assert seqs == list(range(1, len(history) + 1)), f"gap or duplicate in {seqs}"
        assert row.checkpoint_count == len(history)
        names = {cp.seq: cp.name for cp in history}
        for seq, name in expected_names[sid].items():
            assert names.get(seq) == name, f"acknowledged {name!r} at seq {seq} is lost"
        assert not rejected_names & set(names.values()), "a rejected update was written"
        assert len(history) == 1 + len(expected_names[sid])  # nothing unacknowledged either
        for (session_id, key), n in last_value.items():
            if session_id == sid:
                assert row.context.get(key) == n, (
                    f"{key}={n} acknowledged, {row.context.get(key)} stored"
                )
        failed_by_sweep = row.context.get("failure_reason") == "heartbeat_timeout"
        swept += failed_by_sweep
        assert row.version == 1 + writes[sid] + failed_by_sweep
        counts["versions"] += row.version

    assert swept == counts["sessions swept"], "a sweep counted a session it did not fail"
    # No read started after an acknowledged write saw less than that write.
    stale = []
    for e in events:
        if e["op"] != "read":
            continue
        done = sorted(acks[e["sid"]])
        before = done[: bisect.bisect_left(done, (e["t0"], -1, -1))]
        if before:
            floor_version = max(v for _, v, _ in before)
            floor_count = max(s for _, _, s in before)
            if e["version"] < floor_version or e["count"] < floor_count:
                stale.append((e, floor_version, floor_count))
            counts["reads after an acknowledged write"] += 1
    counts["stale reads"] = len(stale)
    assert not stale, f"{len(stale)} stale reads, the first: {stale[0]}"
    return counts


async def test_concurrent_tasks_lose_nothing_and_read_nothing_stale(
    repo: SessionRepository, db: Backend
) -> None:
    workers = 8
    hot, many = await make_sessions(db.factory)
    logs = await asyncio.gather(
        *(work(repo, hot, many, f"t{w}", ops=30, seed=w) for w in range(workers))
    )
    events = [e for log in logs for e in log]
    counts = await verify(db, [hot, *many], events)
    print(f"\nstress, {workers} tasks [{db.name}, cache={repo.cache is not None}]: {dict(counts)}")
    assert counts["update"] > 0 and counts["update rejected"] > 0 and counts["append"] > 0
    assert counts["sessions swept"] > 0


@pytest.mark.parametrize("cache", ["nocache", "redis"])
async def test_worker_processes_lose_nothing_and_read_nothing_stale(
    db: Backend, cache: str, request: pytest.FixtureRequest, namespace: str
) -> None:
    redis_url = request.getfixturevalue("redis_url") if cache == "redis" else None
    counts = await run_processes(db, redis_url, namespace, cancel_rate=0.0)
    print(f"\nstress, 3 processes x 4 tasks [{db.name}+{cache}]: {dict(counts)}")


@pytest.mark.slow
async def test_worker_processes_with_cancellations_and_redis_pauses_read_nothing_stale(
    db: Backend, servers_dir: Path, namespace: str
) -> None:
    # A third of the writes cancelled by a time limit of up to 3 ms; Redis frozen (SIGSTOP)
    # twice for longer than the cache's 250 ms limit, so invalidations are lost meanwhile.
    try:
        server = RedisServer.start(servers_dir / f"stress-redis-{namespace}")
    except ServerUnavailable as exc:
        unavailable(f"Redis: {exc}")
    with server:
        stop = asyncio.Event()

        async def freeze_now_and_then() -> None:
            # From the moment the workers start: frozen 0.4 s, thawed 0.1 s, frozen 0.4 s.
            for thawed in (0.0, 0.1):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), thawed)  # fault injection, not a wait
                if stop.is_set():
                    return
                server.pause()
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.4)
                finally:
                    server.resume()

        freezer: list[asyncio.Task[None]] = []
        try:
            counts = await run_processes(
                db, server.url, namespace, cancel_rate=0.35,
                started=lambda: freezer.append(asyncio.create_task(freeze_now_and_then())),
            )  # fmt: skip
        finally:
            stop.set()
            for task in freezer:
                await task
    print(f"\nstress with cancellations and Redis pauses [{db.name}]: {dict(counts)}")
    assert counts["cancelled writes"] + counts["cancelled writes that happened"] > 0
    assert counts["cache errors"] > 0  # the freezes did hit the workers' cache calls


async def run_processes(
    db: Backend, redis_url: str | None, namespace: str, *, cancel_rate: float,
    started: Callable[[], None] | None = None,
) -> Counter[str]:  # fmt: skip
    processes, tasks, ops = 3, 4, 25
    hot, many = await make_sessions(db.factory)
    url = db.engine.url.render_as_string(hide_password=False)
    if behind_transaction_pooler(db.engine.sync_engine):
        url = db.engine.url.update_query_dict({"transaction_pooling": "true"}).render_as_string(
            hide_password=False
        )
    common = {"url": url, "redis_url": redis_url, "namespace": namespace, "hot": hot,
              "many": many, "tasks": tasks, "ops": ops, "cancel_rate": cancel_rate}  # fmt: skip
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.test_stress",
            json.dumps({**common, "proc": p}),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
        )
        for p in range(processes)
    ]
    try:
        for child in children:  # a barrier: every process connected before any starts
            assert child.stdout is not None and child.stderr is not None
            line = await asyncio.wait_for(child.stdout.readline(), 60)
            assert line.strip() == b"ready", line + await child.stderr.read()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
        if started is not None:
            started()
        outputs = [await asyncio.wait_for(child.communicate(), 60) for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()
    events: list[Event] = []
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()
        events += json.loads(out.decode().strip().splitlines()[-1])
    assert len([e for e in events if e["op"] != "read"]) > processes * tasks * ops // 2
    counts = await verify(db, [hot, *many], events)
    assert counts["update"] > 0 and counts["update rejected"] > 0 and counts["append"] > 0
    return counts


# -- the read/write race of a read-through cache, interleaved by hand --------------------------


@pytest.fixture
def redis_cache(redis_client: Redis, namespace: str) -> Callable[[], RedisCache]:
    return lambda: RedisCache(redis_client, namespace=namespace, timeout=timedelta(seconds=10))


@pytest.mark.parametrize("writer_cache", ["same RedisCache", "another process's RedisCache"])
async def test_read_loaded_before_a_write_is_not_cached_after_it(
    db: Backend, redis_cache: Callable[[], RedisCache], writer_cache: str
) -> None:
    reader_cache = redis_cache()
    reader = SessionRepository(db.factory, cache=reader_cache)
    writer = SessionRepository(
        db.factory, cache=reader_cache if writer_cache == "same RedisCache" else redis_cache()
    )
    created = await writer.create_session("planner", context={"v": 1})

    with after_checkin(db.engine) as pausing:
        pausing.armed = True
        slow_read = asyncio.create_task(reader.get_session(created.session_id))
        await pausing.reached.wait()  # it has read version 1 and is about to cache it
        copy = await SessionRepository(db.factory).get_session(created.session_id)
        assert copy is not None
        copy.context["v"] = 2
        written = await writer.update_session(copy)  # acknowledged: version 2
        pausing.release.set()
        early = await slow_read
    assert early is not None and early.version == 1  # began before the write: may return it...

    after = await reader.get_session(created.session_id)  # ... but must not have cached it
    assert after is not None
    assert after.version == written.version == 2
    await reader_cache.drain()  # the early read's store runs after it returned
    assert reader_cache.stats.stale_sets_rejected == 1


async def test_read_starting_after_a_write_does_not_join_a_load_from_before_it(
    db: Backend, redis_cache: Callable[[], RedisCache]
) -> None:
    cache = redis_cache()
    repo = SessionRepository(db.factory, cache=cache)
    created = await repo.create_session("planner", context={"v": 1})

    with after_checkin(db.engine) as pausing:
        pausing.armed = True
        slow_read = asyncio.create_task(repo.get_session(created.session_id))
        await pausing.reached.wait()
        copy = await SessionRepository(db.factory).get_session(created.session_id)
        assert copy is not None
        copy.context["v"] = 2
        await repo.update_session(copy)  # acknowledged: version 2; invalidates
        late_read = asyncio.create_task(repo.get_session(created.session_id))
        late = await late_read  # must not wait for, nor share, the load from before the write
        pausing.release.set()
        early = await slow_read
    assert early is not None and early.version == 1
    assert late is not None and late.version == 2 and late.context == {"v": 2}


if __name__ == "__main__":  # a worker process of test_worker_processes_lose_nothing_...
    asyncio.run(_process_main(json.loads(sys.argv[1])))
