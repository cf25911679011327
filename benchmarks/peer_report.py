"""The peer comparison's figures, ratios and tables (``python -m benchmarks.peers``).

Every ratio is taken repeat by repeat between figures measured interleaved in the same repeats
(``timing.paired_ratio``), so load on the shared machine cancels out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks import langgraph_peers
from benchmarks.cache_figures import PAIRS
from benchmarks.contenders import OURS
from benchmarks.timing import median, paired_ratio

OPS = ("get", "create", "append", "delete")
RAW_NAMES = {
    "asyncpg": ("asyncpg SELECT", "asyncpg INSERT"),
    "aiosqlite": ("aiosqlite SELECT", "aiosqlite INSERT"),
}
BACKEND_NAMES = {"postgres": "PostgreSQL", "sqlite": "SQLite"}

# backend -> op -> contender -> ops/s of each repeat
Rates = dict[str, dict[str, dict[str, list[float]]]]


@dataclass
class PeerReport:
    """Everything one peer run measured."""

    meta: dict[str, Any] = field(default_factory=dict)
    seq: Rates = field(default_factory=dict)
    conc: Rates = field(default_factory=dict)
    # backend -> figure -> side -> rates (see cache_figures.PAIRS)
    cache: Rates = field(default_factory=dict)
    # backend -> SessionStoreSaver against LangGraph's saver (benchmarks.langgraph_peers)
    savers: dict[str, langgraph_peers.SaverFigures] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)  # contender -> ours | peer | raw | other
    left_out: list[str] = field(default_factory=list)

    def ops(self, rates: Rates, backend: str) -> list[str]:
        return list(rates.get(backend, {}))

    def comparison(self, backend: str, op: str) -> dict[str, Any] | None:
        """One row of the issue's table: fastest peer, raw driver, ours, and the two ratios."""
        found = self.seq.get(backend, {}).get(op)
        if not found or OURS not in found:
            return None
        peers = {n: r for n, r in found.items() if self.roles.get(n) == "peer"}
        raw = next((n for n in found if self.roles.get(n) == "raw"), None)
        fastest = max(peers, key=lambda n: median(peers[n]), default=None)
        ours = found[OURS]
        return {
            "backend": backend,
            "op": op,
            "fastest_peer": fastest,
            "fastest_peer_ops_per_s": _ops(peers.get(fastest)) if fastest else None,
            "raw": raw,
            "raw_ops_per_s": _ops(found.get(raw)) if raw else None,
            "ours_ops_per_s": _ops(ours),
            "ratio_peer": _round(paired_ratio(ours, peers[fastest])) if fastest else None,
            "ratio_raw": _round(paired_ratio(ours, found[raw])) if raw else None,
        }

    def comparisons(self) -> list[dict[str, Any]]:
        rows = []
        for backend in self.seq:
            for op in self.ops(self.seq, backend):
                row = self.comparison(backend, op)
                if row is not None:
                    rows.append(row)
        return rows

    def concurrent(self) -> list[dict[str, Any]]:
        rows = []
        for backend, ops in self.conc.items():
            for op, found in ops.items():
                raw = next(n for n in found if self.roles.get(n) == "raw")
                rows.append(
                    {
                        "backend": backend,
                        "op": op,
                        "raw": raw,
                        "raw_ops_per_s": _ops(found[raw]),
                        "ours_ops_per_s": _ops(found[OURS]),
                        "ratio_raw": _round(paired_ratio(found[OURS], found[raw])),
                    }
                )
        return rows

    def cache_rows(self) -> list[dict[str, Any]]:
        rows = []
        for backend, figures in self.cache.items():
            for figure, sides in figures.items():
                mine, theirs = PAIRS.get(figure, PAIRS["get hit"])
                rows.append(
                    {
                        "backend": backend,
                        "figure": figure,
                        "ours": mine,
                        "ours_ops_per_s": _ops(sides[mine]),
                        "reference": theirs,
                        "reference_ops_per_s": _ops(sides[theirs]),
                        "ratio": _round(paired_ratio(sides[mine], sides[theirs])),
                    }
                )
        return rows

    def as_json(self) -> dict[str, Any]:
        def figures(rates: Rates) -> dict[str, Any]:
            return {
                b: {
                    op: {
                        n: {"ops_per_s": _ops(r), "repeats": [round(x, 1) for x in r]}
                        for n, r in found.items()
                    }
                    for op, found in ops.items()
                }
                for b, ops in rates.items()
            }

        return {
            "meta": self.meta,
            "roles": self.roles,
            "seq": figures(self.seq),
            "comparison": self.comparisons(),
            "concurrent": self.concurrent(),
            "conc_figures": figures(self.conc),
            "cache": self.cache_rows(),
            "cache_figures": figures(self.cache),
            "langgraph_savers": langgraph_peers.as_json(self.savers),
            "left_out": self.left_out,
        }

    def table(self) -> str:
        return render(self)


def _ops(rates: list[float] | None) -> float | None:
    return None if not rates else round(median(rates), 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _n(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _raw_label(raw: str | None, op: str) -> str:
    if raw is None:
        return "-"
    read, write = RAW_NAMES.get(raw, (raw, raw))
    return read if op.startswith("get") else write


def render(report: PeerReport) -> str:
    lines: list[str] = []
    for backend, ops in report.seq.items():
        names = list(dict.fromkeys(n for found in ops.values() for n in found))
        lines.append(f"{BACKEND_NAMES.get(backend, backend)}, single client, ops/s (median)")
        lines.append(f"  {'contender':<40}" + "".join(f"{op:>14}" for op in ops))
        for name in names:
            cells = "".join(f"{_n(_ops(ops[op].get(name))):>14}" for op in ops)
            lines.append(f"  {name:<40}{cells}")
        lines.append("")
    lines.append(
        "| op | fastest peer (ops/s) | raw driver | agent-session-store | ÷ peer | ÷ raw |"
    )
    lines.append("|---|---|---|---|---|---|")
    for row in report.comparisons():
        backend, op = BACKEND_NAMES.get(row["backend"], row["backend"]), row["op"]
        peer = (
            f"{row['fastest_peer']} {_n(row['fastest_peer_ops_per_s'])}"
            if row["fastest_peer"]
            else "-"
        )
        raw = f"{_raw_label(row['raw'], op)} {_n(row['raw_ops_per_s'])}"
        lines.append(
            f"| {backend} {op} | {peer} | {raw} | {_n(row['ours_ops_per_s'])} | "
            f"{_n(row['ratio_peer'], '.2f')} | {_n(row['ratio_raw'], '.2f')} |"
        )
    if report.conc:
        tasks = report.meta.get("sizes", {}).get("tasks")
        lines.append("")
        lines.append(
            f"| op, {tasks} tasks on one pool | raw driver ({tasks} connections) | "
            "agent-session-store | ÷ raw |"
        )
        lines.append("|---|---|---|---|")
        for row in report.concurrent():
            backend, op = BACKEND_NAMES.get(row["backend"], row["backend"]), row["op"]
            lines.append(
                f"| {backend} {op} | {_raw_label(row['raw'], op)} "
                f"{_n(row['raw_ops_per_s'])} | {_n(row['ours_ops_per_s'])} | "
                f"{_n(row['ratio_raw'], '.2f')} |"
            )
    if report.cache:
        lines.append("")
        lines.append("| Redis cache | agent-session-store (ops/s) | reference (ops/s) | ratio |")
        lines.append("|---|---|---|---|")
        for row in report.cache_rows():
            backend = BACKEND_NAMES.get(row["backend"], row["backend"])
            lines.append(
                f"| {backend} {row['figure']} | {row['ours']} "
                f"{_n(row['ours_ops_per_s'])} | {row['reference']} "
                f"{_n(row['reference_ops_per_s'])} | {_n(row['ratio'], '.2f')} |"
            )
    if report.savers:
        lines.append("")
        lines.append(langgraph_peers.render(report.savers, report.meta.get("saver_turns", 0)))
    for reason in report.left_out:
        lines.append(f"left out: {reason}")
    return "\n".join(lines)
