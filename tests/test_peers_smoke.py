"""The peer comparison still runs: ``benchmarks.peers --quick`` on the test servers.

agent-session-store and the raw drivers always run; each peer runs when its package (the ``bench``
extra, not part of ``dev``) is installed, and is otherwise reported as left out. No timing is
asserted (performance lives in benchmarks/); only that every figure and ratio is produced.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import langgraph_peers, peers
from benchmarks.contenders import OURS
from benchmarks.peer_report import OPS

RAW = {"postgres": "asyncpg", "sqlite": "aiosqlite"}
# Each peer by the module it needs and the backends it runs on.
PEERS = {
    "ADK DatabaseSessionService": ("google.adk.sessions", ("postgres", "sqlite")),
    "ADK SqliteSessionService": ("google.adk.sessions.sqlite_session_service", ("sqlite",)),
    "OpenAI SQLAlchemySession": ("agents.extensions.memory.sqlalchemy_session",
                                 ("postgres", "sqlite")),
    "OpenAI SQLiteSession": ("agents.memory.sqlite_session", ("sqlite",)),
    "OpenAI AsyncSQLiteSession": ("agents.extensions.memory.async_sqlite_session", ("sqlite",)),
    "OpenAI RedisSession (Redis)": ("agents.extensions.memory.redis_session", ("postgres",)),
    "LangGraph AsyncPostgresSaver": ("langgraph.checkpoint.postgres.aio", ("postgres",)),
    "LangGraph AsyncSqliteSaver": ("langgraph.checkpoint.sqlite.aio", ("sqlite",)),
}  # fmt: skip


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_quick_peer_comparison_reports_every_figure(
    postgres_url: str, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What `python -m benchmarks.peers --quick --postgres-url ... --redis-url ...` does, inside
    # the test's event loop.
    report = await peers.run_peers(
        peers.QUICK, postgres_url=postgres_url, redis_url=redis_url, workdir=tmp_path
    )
    out = tmp_path / "peers.json"
    peers.publish(report, out)
    data = json.loads(out.read_text())

    history = peers.QUICK.history
    ops = [*OPS, f"get @{history}", f"append @{history}"]
    for backend in ("postgres", "sqlite"):
        assert list(data["seq"][backend]) == ops
        for op in ops:
            found = data["seq"][backend][op]
            for name in (OURS, RAW[backend]):
                assert found[name]["ops_per_s"] > 0, (backend, op, name)
                assert len(found[name]["repeats"]) == peers.QUICK.repeats, (backend, op, name)
        for name, (module, backends) in PEERS.items():
            if backend not in backends:
                continue
            if installed(module):
                assert data["roles"].get(name) in {"peer", "other"}, (name, data["left_out"])
                assert all(data["seq"][backend][op][name]["ops_per_s"] > 0 for op in ops), name
            else:
                assert any(r.startswith(name) for r in data["left_out"]), name

    rows = {(r["backend"], r["op"]): r for r in data["comparison"]}
    assert set(rows) == {(b, op) for b in ("postgres", "sqlite") for op in ops}
    for row in rows.values():
        assert row["ours_ops_per_s"] > 0 and row["ratio_raw"] > 0, row
        assert (row["fastest_peer"] is None) == (row["ratio_peer"] is None), row

    conc = {(r["backend"], r["op"]): r for r in data["concurrent"]}
    assert set(conc) == {(b, op) for b in ("postgres", "sqlite") for op in OPS}
    assert all(r["ratio_raw"] > 0 for r in conc.values())

    figures = ["create", "get miss", "get hit", f"get hit {history}", "append", "delete"]
    cache = {(r["backend"], r["figure"]): r for r in data["cache"]}
    assert set(cache) == {(b, f) for b in ("postgres", "sqlite") for f in figures}
    assert all(r["ratio"] > 0 for r in cache.values())

    printed = capsys.readouterr().out
    assert "| PostgreSQL get |" in printed and "| SQLite delete |" in printed


def test_peer_command_line_options() -> None:
    args = peers.parse_args(["--quick", "--json", "x.json", "--backend", "sqlite"])
    assert (args.quick, args.json, args.backend) == (True, Path("x.json"), ["sqlite"])
    assert peers.parse_args([]).json == peers.DEFAULT_JSON


@pytest.mark.timeout(300)
async def test_quick_langgraph_saver_comparison_reports_every_figure(
    postgres_url: str, tmp_path: Path
) -> None:
    # What `python -m benchmarks.langgraph_peers --quick` does (and benchmarks.peers runs too).
    found = await langgraph_peers.run_savers(
        langgraph_peers.QUICK, postgres_url=postgres_url, workdir=tmp_path,
        backends=["postgres", "sqlite"],
    )  # fmt: skip
    data = langgraph_peers.as_json(found)
    # The peers are the bench extra, the graph step needs langgraph (langgraph-tests): without
    # them, the figures are left out with the reason.
    complete = installed("langgraph.graph") and installed("langgraph.checkpoint.base")
    for backend, peer in langgraph_peers.PEERS.items():
        rows = {row["op"]: row for row in data[backend]["rows"]}
        if not (complete and installed(PEERS[f"LangGraph {peer}"][0])):
            assert data[backend]["left_out"], data[backend]
            continue
        assert set(rows) == {*langgraph_peers.OPS, "storage bytes"}, data[backend]["left_out"]
        assert all(row["peer"] == peer and row["ratio"] > 0 for row in rows.values()), rows
        assert rows["storage bytes"]["ours_bytes"] > 0 and rows["storage bytes"]["peer_bytes"] > 0
        table = langgraph_peers.render(found, langgraph_peers.QUICK.turns)
        name = langgraph_peers.BACKEND_NAMES[backend]
        assert f"| {name} aput (ops/s) |" in table and f"| {name} storage after 10 turns" in table
