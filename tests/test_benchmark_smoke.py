"""The benchmark still runs: ``--quick`` on the test servers, and its JSON has every figure.

No timing is asserted here (performance lives in benchmarks/); only that each figure, ratio,
sweep check and target verdict is produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import run

WRITES = ["create_session", "update_session", "heartbeat", "add_checkpoint_0", "add_checkpoints_10",
          "delete_session"]  # fmt: skip
READS = ["get_session_miss", "list_sessions", "get_session_by_key"]
SEQ_ONLY = ["add_checkpoint_deep"]
SEQ_NO_CACHE_ONLY = ["get_session_0", "get_session_20", "get_session_deep"]


def expected_figures() -> set[str]:
    names = {f"redis/raw/{mode}/{op}" for mode in ("seq", "conc") for op in ("set", "get_validate")}
    for backend in ("sqlite", "postgres"):
        for mode in ("seq", "conc"):
            names |= {f"{backend}/raw/{mode}/{op}" for op in ("insert", "select")}
            for cache in ("none", "redis"):
                ops = WRITES + READS
                ops += SEQ_ONLY if mode == "seq" else []
                ops += SEQ_NO_CACHE_ONLY if mode == "seq" and cache == "none" else []
                ops += ["get_session_hit"] if cache == "redis" else []
                names |= {f"{backend}/{cache}/{mode}/{op}" for op in ops}
    return names


@pytest.mark.slow
async def test_quick_benchmark_reports_every_figure_and_target(
    postgres_url: str, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What `python -m benchmarks.run --quick --postgres-url ... --redis-url ...` does, inside
    # the test's event loop.
    result = await run.run_benchmark(
        run.QUICK, postgres_url=postgres_url, redis_url=redis_url, workdir=tmp_path
    )
    out = tmp_path / "bench.json"
    run.publish(result, out)

    report = json.loads(out.read_text())
    figures = report["figures"]
    assert set(figures) == expected_figures()
    for name, figure in figures.items():
        assert figure["ops_per_s"] > 0, name
        repeats = run.QUICK.repeats if "/seq/" in name else run.QUICK.conc_repeats
        assert len(figure["repeats"]) == repeats, name
        if "/raw/" in name:
            assert figure["baseline"] is None and figure["ratio"] is None, name
        else:  # its baseline, measured in the same repeats
            assert figure["baseline"] in figures and figure["ratio"] > 0, name
            assert len(figure["baseline_repeats"]) == len(figure["repeats"]), name

    sizes = {"sqlite": run.QUICK.sweep_sqlite, "postgres": run.QUICK.sweep_postgres}
    for backend, stale in sizes.items():
        sweep = report["sweeps"][backend]
        assert sweep["cache"] == "redis"
        assert (sweep["stale_sessions"], sweep["failed"]) == (stale, stale)
        assert sweep["fresh_left_active"] == sweep["fresh_sessions"]
        assert sweep["cached_probes"] == run.QUICK.cached_probes
        assert sweep["probes_read_back_failed"] == sweep["cached_probes"]
        assert sweep["wall_s"] >= 0 and sweep["peak_rss_mib"] > 0 and sweep["batches"] >= 1

    for backend in ("sqlite", "postgres"):
        storm = report["storms"][backend]
        assert storm["none"] == run.QUICK.storm_readers  # no cache: every reader reads
        assert storm["redis"] >= 1

    assert set(report["cache_stats"]) == {
        f"{b}/redis/{m}" for b in ("sqlite", "postgres") for m in ("seq", "conc")
    }

    verdicts = {t["name"]: t["verdict"] for t in report["targets"]}
    assert len(verdicts) >= 25
    assert set(verdicts.values()) <= {"PASS", "MISS"}, verdicts  # no "n/a": nothing missing
    printed = capsys.readouterr().out
    assert ("get_session_hit" in printed and "PASS" in printed) or "MISS" in printed


def test_command_line_options() -> None:
    args = run.parse_args(["--quick", "--json", "x.json", "--backend", "sqlite"])
    assert (args.quick, args.json, args.backend) == (True, Path("x.json"), ["sqlite"])
    assert run.parse_args([]).json == run.DEFAULT_JSON


async def test_signing_benchmark_reports_every_figure(redis_url: str) -> None:
    # What `python -m benchmarks.signing --quick --redis-url ...` measures, in the test's loop.
    from benchmarks import signing

    rows = await signing.run(redis_url, signing.QUICK)
    assert [row.figure for row in rows] == ["hit", "hit 20 checkpoints", "miss", "write"]
    for row in rows:
        assert row.signed > 0 and row.unsigned > 0 and row.ratio > 0 and row.control > 0, row


async def test_encryption_benchmark_reports_every_figure(tmp_path: Path) -> None:
    # What `python -m benchmarks.encryption --quick` measures on SQLite, in the test's loop.
    from benchmarks import encryption

    rows = await encryption._all(None, tmp_path, quick=True)
    from tests.langgraph_parts import LANGGRAPH

    saver = ["aput", "aput_writes", "aget_tuple", "graph step"] if LANGGRAPH else []
    assert [row.figure for row in rows] == [
        f"sqlite {op} {size}" for size in ("1 KB", "100 KB") for op in ("get", "create", "append")
    ] + [f"sqlite saver {op}" for op in saver]  # the saver's where LangGraph is installed
    for row in rows:
        assert row.encrypted > 0 and row.plain > 0 and row.ratio > 0 and row.control > 0, row
