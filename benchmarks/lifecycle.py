"""Scale: erasure, retention and export/import on PostgreSQL (issue 19).

Starts a throwaway PostgreSQL (``tests/servers.py``) unless ``--postgres-url`` names one (its own
``bench_*`` databases are created beside it and dropped at the end). Every database is seeded by
the server (``INSERT ... SELECT generate_series``), never through the API. Each figure runs in a
process of its own, so that the peak resident set (``ru_maxrss``) it reports is its own:

- ``erase``: ``erase_user`` of a user holding ``--erase-sessions`` sessions (10,000) of
  ``--erase-checkpoints`` checkpoints each (20), beside as many sessions of 1,000 other users,
  which must be left whole;
- ``purge``: ``purge_finished_sessions(90 days)`` over ``--purge-sessions`` sessions
  (1,000,000), two checkpoints each: a quarter completed and a quarter failed 100 days ago (the
  ones removed), the rest active, or finished recently;
- ``export``/``import``: ``transfer.export_sessions`` of ``--transfer-sessions`` sessions
  (100,000) of five checkpoints each to a file, ``transfer.import_sessions`` of that file into
  an empty database, then once more (everything present, nothing written);
- ``filters``: ``count_sessions`` and pages of ``list_sessions`` (50 sessions, the first and
  the fifth page through the cursor) with each filter, over ``--filter-sessions`` sessions
  (1,000,000): 100 teams in the metadata, a key on every session, ``updated_at`` spread over a
  year (a team, the key prefix and a week each match 1 to 2%); milliseconds per call, the
  median of ``REPEATS``.

Rows/s counts session and checkpoint rows together.

    .venv/bin/python -m benchmarks.lifecycle                        # the issue's sizes
    .venv/bin/python -m benchmarks.lifecycle --quick                # a smoke run, seconds
    .venv/bin/python -m benchmarks.lifecycle --purge-sessions 200000
    .venv/bin/python -m benchmarks.lifecycle --only filters
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from agent_session_store import SessionRepository, create_engine, transfer
from agent_session_store.tables import checkpoints_table, sessions_table
from benchmarks.databases import Databases
from benchmarks.import_legacy import peak_rss_mib
from benchmarks.seed import analyze

PHASES = ("erase", "purge", "export", "import", "filters")


@dataclass(frozen=True)
class Sizes:
    erase_sessions: int = 10_000
    erase_checkpoints: int = 20
    purge_sessions: int = 1_000_000
    transfer_sessions: int = 100_000
    transfer_checkpoints: int = 5
    filter_sessions: int = 1_000_000


QUICK = Sizes(
    erase_sessions=200, erase_checkpoints=3, purge_sessions=2_000, transfer_sessions=300,
    transfer_checkpoints=2, filter_sessions=3_000,
)  # fmt: skip

# Sessions of ``count`` (the loop variable i), seeded by the server. ``:user`` is a user id, or
# NULL for "user-" || i % 1000; state and age follow ``:shape``.
_SESSIONS = """
INSERT INTO agent_sessions_sessions (id, agent_type, user_id, state, context, metadata,
    checkpoint_count, version, created_at, updated_at, last_heartbeat, key)
SELECT gen_random_uuid(), 'agent-' || mod(i, 5),
    COALESCE(CAST(:user AS text), 'user-' || mod(i, 1000)),
    CASE WHEN CAST(:shape AS text) = 'purge'
         THEN (ARRAY['completed', 'failed', 'active', 'completed'])[mod(i, 4) + 1]
         ELSE 'active' END,
    jsonb_build_object('goal', 'goal ' || i, 'step', i, 'notes', repeat('n', 200)),
    jsonb_build_object('source', 'bench'), CAST(:checkpoints AS integer), 1,
    now() - interval '120 days' + i * interval '1 millisecond',
    CASE WHEN CAST(:shape AS text) = 'purge' AND mod(i, 4) < 2 THEN now() - interval '100 days'
         ELSE now() END,
    now(),
    CASE WHEN mod(i, 10) = 0 THEN 'key-' || i END
FROM generate_series(1, CAST(:count AS integer)) AS s(i)
"""

_CHECKPOINTS = """
INSERT INTO agent_sessions_checkpoints (session_id, seq, name, data, created_at)
SELECT s.id, g.seq, 'step', jsonb_build_object('tool', 'search', 'seq', g.seq), s.created_at
FROM agent_sessions_sessions AS s
CROSS JOIN generate_series(1, CAST(:checkpoints AS integer)) AS g(seq)
WHERE s.checkpoint_count = CAST(:checkpoints AS integer)
  AND (CAST(:user AS text) IS NULL OR s.user_id = CAST(:user AS text))
"""


async def seed(
    engine: AsyncEngine, count: int, checkpoints: int, *, user: str | None, shape: str
) -> None:
    params = {"count": count, "checkpoints": checkpoints, "user": user, "shape": shape}
    async with engine.begin() as conn:
        await conn.execute(text(_SESSIONS), params)
        if checkpoints:
            await conn.execute(text(_CHECKPOINTS), params)


async def rows(engine: AsyncEngine, **where: Any) -> tuple[int, int]:
    """Sessions and checkpoints (all, or of the sessions matching ``where``)."""
    s, c = sessions_table.c, checkpoints_table.c
    async with engine.connect() as conn:
        sessions = select(func.count()).select_from(sessions_table)
        checkpoints = select(func.count()).select_from(checkpoints_table)
        for name, value in where.items():
            sessions = sessions.where(s[name] == value)
            checkpoints = checkpoints.where(c.session_id.in_(select(s.id).where(s[name] == value)))
        return int(await conn.scalar(sessions) or 0), int(await conn.scalar(checkpoints) or 0)


def figure(what: str, n_rows: int, seconds: float, **more: Any) -> dict[str, Any]:
    return {"what": what, "rows": n_rows, "seconds": round(seconds, 2),
            "rows_per_s": round(n_rows / seconds) if seconds else None,
            "peak_rss_mib": round(peak_rss_mib()), **more}  # fmt: skip


async def erase(url: str, sizes: Sizes) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        await seed(engine, sizes.erase_sessions, sizes.erase_checkpoints, user="victim",
                   shape="erase")  # fmt: skip
        await seed(engine, sizes.erase_sessions, 2, user=None, shape="erase")
        await analyze(engine)
        others = await rows(engine)
        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
        started = time.perf_counter()
        report = await repo.erase_user("victim")
        seconds = time.perf_counter() - started
        expected = (sizes.erase_sessions, sizes.erase_sessions * sizes.erase_checkpoints)
        assert (report.sessions, report.checkpoints) == expected, report
        assert await rows(engine, user_id="victim") == (0, 0)
        left = await rows(engine)
        assert left == (others[0] - expected[0], others[1] - expected[1]), "others touched"
        return figure("erase_user", report.sessions + report.checkpoints, seconds,
                      sessions=report.sessions, checkpoints=report.checkpoints)  # fmt: skip
    finally:
        await engine.dispose()


async def purge(url: str, sizes: Sizes) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        await seed(engine, sizes.purge_sessions, 2, user=None, shape="purge")
        await analyze(engine)
        before = await rows(engine)
        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
        started = time.perf_counter()
        removed = await repo.purge_finished_sessions(timedelta(days=90))
        seconds = time.perf_counter() - started
        after = await rows(engine)
        assert removed == before[0] - after[0] == sizes.purge_sessions // 2, removed
        gone = before[0] - after[0] + before[1] - after[1]
        return figure("purge_finished_sessions", gone, seconds, sessions=before[0],
                      removed=removed)  # fmt: skip
    finally:
        await engine.dispose()


async def export(url: str, sizes: Sizes, path: Path) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        await seed(engine, sizes.transfer_sessions, sizes.transfer_checkpoints, user=None,
                   shape="transfer")  # fmt: skip
        await analyze(engine)
        started = time.perf_counter()
        with path.open("w", encoding="utf-8") as out:
            report = await transfer.export_sessions(engine, out)
        seconds = time.perf_counter() - started
        assert report.sessions == sizes.transfer_sessions
        return figure("export", report.sessions + report.checkpoints, seconds,
                      sessions=report.sessions, file_mib=_mib(path))  # fmt: skip
    finally:
        await engine.dispose()


# The filters' sessions: agent type, user, team, key and last write spread so that each filter
# below matches a small share (a team 1%, the key prefix 1%, a week 2%), spread over the
# creation order (see benchmarks/README.md for what a filter matching only the oldest costs).
_FILTERED = """
INSERT INTO agent_sessions_sessions (id, agent_type, user_id, state, context, metadata,
    checkpoint_count, version, created_at, updated_at, last_heartbeat, key)
SELECT gen_random_uuid(), 'agent-' || mod(i, 5), 'user-' || mod(i, 1000), 'active',
    jsonb_build_object('goal', 'goal ' || i),
    jsonb_build_object('team', 'team-' || mod(i, 100), 'tier', mod(i, 3)), 1, 1,
    now() - interval '365 days' + i * (interval '365 days' / CAST(:count AS integer)),
    now() - p.j * (interval '365 days' / CAST(:count AS integer)), now(),
    'chat-' || lpad(CAST(p.j AS text), 7, '0')
FROM generate_series(1, CAST(:count AS integer)) AS s(i),
    -- j: i permuted (7919 is prime to the count), so that a key prefix or a week of updates
    -- is spread over the creation order instead of sitting at its oldest end.
    LATERAL (SELECT mod(i * CAST(7919 AS bigint), CAST(:count AS integer)) + 1 AS j) AS p
"""
REPEATS = 21


async def filters(url: str, sizes: Sizes) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(_FILTERED), {"count": sizes.filter_sessions})
        await analyze(engine)
        repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
        now = (await repo.list_sessions(limit=1)).items[0].created_at
        cases: dict[str, dict[str, Any]] = {
            "none": {},
            "metadata": {"metadata": {"team": "team-7"}},
            "key_prefix": {"key_prefix": "chat-000"},
            "updated_before": {"updated_before": now - timedelta(days=358)},
            "updated_after": {"updated_after": now - timedelta(days=7)},
            "user+metadata": {"user_id": "user-7", "metadata": {"tier": 1}},
        }
        figures: dict[str, Any] = {}
        for name, where in cases.items():
            count = await repo.count_sessions(**where)
            figures[f"count {name} ms"] = await _median_ms(lambda w=where: repo.count_sessions(**w))
            first = await repo.list_sessions(limit=50, **where)

            async def fifth(w: dict[str, Any] = where) -> None:
                page = await repo.list_sessions(limit=50, **w)
                for _ in range(4):
                    if page.next_cursor is None:
                        return
                    page = await repo.list_sessions(limit=50, cursor=page.next_cursor, **w)

            figures[f"page {name} ms"] = await _median_ms(
                lambda w=where: repo.list_sessions(limit=50, **w)
            )
            figures[f"5 pages {name} ms"] = await _median_ms(fifth)
            figures[f"matches {name}"] = count
            assert len(first.items) == min(50, count), (name, count)
        return figure("filters", sizes.filter_sessions, 0.0, **figures)
    finally:
        await engine.dispose()


async def _median_ms(call: Any) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return round(sorted(times)[REPEATS // 2], 2)


def _mib(path: Path) -> int:
    return round(path.stat().st_size / 2**20)


async def import_(url: str, sizes: Sizes, path: Path) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        started = time.perf_counter()
        with path.open("rb") as lines:
            first = await transfer.import_sessions(engine, lines)
        seconds = time.perf_counter() - started
        assert first.sessions_imported == sizes.transfer_sessions, first
        assert first.complete, "the export has no end line"
        assert not first.rejected, first.rejected[:3]
        assert not first.conflicts, first.conflicts[:3]
        started = time.perf_counter()
        with path.open("rb") as lines:
            second = await transfer.import_sessions(engine, lines)
        again = time.perf_counter() - started
        assert (second.sessions_imported, second.sessions_present) == (
            0, sizes.transfer_sessions,
        ), second  # fmt: skip
        n_rows = first.sessions_imported + first.checkpoints_imported
        return figure("import", n_rows, seconds, sessions=first.sessions_imported,
                      second_run_s=round(again, 2))  # fmt: skip
    finally:
        await engine.dispose()


async def run_phase(phase: str, url: str, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """One figure, on its own database(s) on ``url``'s server."""
    databases = Databases(url, workdir)
    try:
        if phase == "erase":
            return await erase(await databases.create("postgres", "erase"), sizes)
        if phase == "purge":
            return await purge(await databases.create("postgres", "purge"), sizes)
        if phase == "filters":
            return await filters(await databases.create("postgres", "filters"), sizes)
        path = workdir / "export.jsonl"
        if phase == "export":
            return await export(await databases.create("postgres", "export"), sizes, path)
        return await import_(await databases.create("postgres", "import"), sizes, path)
    finally:
        await databases.drop_all()


def line(result: dict[str, Any]) -> str:
    more = ", ".join(
        f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
        for k, v in result.items()
        if k not in ("what", "rows", "seconds", "rows_per_s", "peak_rss_mib")
    )
    if result["what"] == "filters":  # times per call, not a throughput
        return f"filters over {result['rows']:,} sessions: {more}"
    return (
        f"{result['what']:<24} {result['rows']:>10,} rows in {result['seconds']:>7.1f} s = "
        f"{result['rows_per_s'] or 0:>9,} rows/s; peak RSS {result['peak_rss_mib']} MiB ({more})"
    )


def run_all(url: str, sizes: Sizes, workdir: Path, phases: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each phase in a process of its own (``--phase``), so each peak RSS is its own."""
    results = []
    for phase in phases:
        command = [
            sys.executable, "-m", "benchmarks.lifecycle", "--phase", phase, "--postgres-url", url,
            "--workdir", str(workdir), "--sizes", json.dumps(sizes.__dict__),
        ]  # fmt: skip
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(line(result), flush=True)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--erase-sessions", type=int)
    parser.add_argument("--purge-sessions", type=int)
    parser.add_argument("--transfer-sessions", type=int)
    parser.add_argument("--filter-sessions", type=int)
    parser.add_argument("--postgres-url", help="a running server (default: a throwaway one)")
    parser.add_argument("--only", choices=PHASES, action="append", help="run these figures only")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # one child process
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a child: one figure, as JSON on the last line of stdout
        sizes = Sizes(**json.loads(args.sizes))
        print(json.dumps(asyncio.run(run_phase(args.phase, args.postgres_url, sizes,
                                               args.workdir))))  # fmt: skip
        return
    sizes = QUICK if args.quick else Sizes()
    changes = {
        "erase_sessions": args.erase_sessions, "purge_sessions": args.purge_sessions,
        "transfer_sessions": args.transfer_sessions, "filter_sessions": args.filter_sessions,
    }  # fmt: skip
    sizes = Sizes(**{**sizes.__dict__, **{k: v for k, v in changes.items() if v is not None}})
    phases = tuple(args.only) if args.only else PHASES
    print(f"sizes: {sizes}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as workdir:
        if args.postgres_url:
            results = run_all(args.postgres_url, sizes, Path(workdir), phases)
        else:
            from tests.servers import PostgresServer

            with PostgresServer.start(Path(workdir) / "pg") as server:
                results = run_all(server.url, sizes, Path(workdir), phases)
    if args.json:
        args.json.write_text(json.dumps({"sizes": sizes.__dict__, "figures": results}, indent=2))


if __name__ == "__main__":
    main()
