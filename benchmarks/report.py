"""Figures, their ratios to the baselines of the same run, the targets, the table and the JSON."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import pooler
from benchmarks.timing import median, paired_ratio

WRITES = frozenset(
    {"create_session", "update_session", "heartbeat", "add_checkpoint_0", "add_checkpoint_deep",
     "add_checkpoints_10", "delete_session"}
)  # fmt: skip
BASELINE_NAMES = {
    "postgres/raw/insert": "asyncpg INSERT",
    "postgres/raw/select": "asyncpg SELECT",
    "sqlite/raw/insert": "aiosqlite INSERT",
    "sqlite/raw/select": "aiosqlite SELECT",
    "redis/raw/set": "redis SET",
    "redis/raw/get_validate": "redis GET+validate",
}


def key(backend: str, cache: str, mode: str, op: str) -> str:
    """A figure's name: ``backend/cache/mode/op``, e.g. ``postgres/redis/seq/get_session_hit``."""
    return f"{backend}/{cache}/{mode}/{op}"


def baseline_of(backend: str, mode: str, op: str) -> str:
    """The key of the raw-driver figure an operation is compared with."""
    if op == "get_session_hit":
        return key("redis", "raw", mode, "get_validate")
    return key(backend, "raw", mode, "insert" if op in WRITES else "select")


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, threshold: value >= threshold,
    "<": lambda value, threshold: value < threshold,
    "<=": lambda value, threshold: value <= threshold,
}


@dataclass
class Target:
    """A goal: ``value`` must be ``need`` (``>=``, ``<`` or ``<=``) ``threshold``."""

    name: str
    value: float | None
    threshold: float
    need: str = ">="

    @property
    def verdict(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"
        return "PASS" if _COMPARE[self.need](self.value, self.threshold) else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": _round(self.value), "need": self.need,
                "threshold": self.threshold, "verdict": self.verdict}  # fmt: skip


@dataclass
class Report:
    """Everything one run measured."""

    meta: dict[str, Any] = field(default_factory=dict)
    rates: dict[str, list[float]] = field(default_factory=dict)
    # figure -> its baseline's rates, measured interleaved with it, repeat by repeat
    paired: dict[str, list[float]] = field(default_factory=dict)
    cache_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)
    storms: dict[str, dict[str, int]] = field(default_factory=dict)
    # mode -> benchmarks.pooler figures: direct vs through PgBouncer, measured together
    pooler: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def ops(self, name: str) -> float | None:
        return median(self.rates[name]) if name in self.rates else None

    def ratio(self, name: str) -> float | None:
        """The figure over its baseline, repeat by repeat (``None`` for a baseline)."""
        if name not in self.paired:
            return None
        return paired_ratio(self.rates[name], self.paired[name])

    def baseline_ops(self, name: str) -> float | None:
        return median(self.paired[name]) if name in self.paired else None

    def figures(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, rates in self.rates.items():
            backend, _, mode, op = name.split("/")
            paired = self.paired.get(name)
            out[name] = {
                "ops_per_s": round(median(rates), 1),
                "repeats": [round(r, 1) for r in rates],
                "baseline": None if paired is None else baseline_of(backend, mode, op),
                "baseline_ops_per_s": None if paired is None else round(median(paired), 1),
                "baseline_repeats": None if paired is None else [round(r, 1) for r in paired],
                "ratio": _round(self.ratio(name)),
            }
        return out

    def targets(self) -> list[Target]:
        """Every goal of issue 4 that this run has figures for (others read ``n/a``)."""
        t: list[Target] = []
        ratio, rel = self.ratio, self._relative
        for b in ("sqlite", "postgres"):
            hit = key(b, "redis", "seq", "get_session_hit")
            miss = key(b, "redis", "seq", "get_session_miss")
            t.append(Target(f"{b}: get_session cache hit / redis GET+validate", ratio(hit), 0.6))
            t.append(Target(f"{b}: get_session cache miss / raw SELECT", ratio(miss), 0.4))
            deep = rel(b, "none", "get_session_deep", "get_session_0")
            t.append(Target(f"{b}: get_session at 10,000 checkpoints / at 0", deep, 0.9))
            # Both return 20 checkpoints: history length alone, without the payload's size.
            same = rel(b, "none", "get_session_deep", "get_session_20")
            t.append(Target(f"{b}: get_session at 10,000 checkpoints / at 20", same, 0.9))
            for c in ("none", "redis"):
                deep = rel(b, c, "add_checkpoint_deep", "add_checkpoint_0")
                t.append(Target(f"{b}/{c}: add_checkpoint at 10,000 checkpoints / at 0", deep, 0.9))
                page = rel(b, c, "list_sessions", "get_session_miss")
                t.append(Target(f"{b}/{c}: list_sessions page of 50 / get_session", page, 0.5))
            storm = _storm(self.storms.get(b))
            t.append(Target(f"{b}: DB reads in a cache-miss storm", storm, 1, "<="))
        for c in ("none", "redis"):
            for op in ("create_session", "add_checkpoint_0", "heartbeat"):
                value = ratio(key("postgres", c, "seq", op))
                t.append(Target(f"postgres/{c}: {op} / asyncpg INSERT", value, 0.3))
        pg = self.sweeps.get("postgres", {})
        name = f"postgres: sweep of {pg.get('stale_sessions', 0):,} stale sessions, s"
        t.append(Target(name, pg.get("wall_s"), 60, "<"))
        t.append(Target("postgres: sweep peak memory (process RSS), MiB", pg.get("peak_rss_mib"),
                        200, "<"))  # fmt: skip
        for b, sweep in self.sweeps.items():
            wrong = abs(sweep["stale_sessions"] - sweep["failed"])
            wrong += abs(sweep["fresh_sessions"] - sweep["fresh_left_active"])
            t.append(Target(f"{b}: sessions the sweep got wrong", wrong, 0, "<="))
            if sweep["cached_probes"]:
                stale = sweep["cached_probes"] - sweep["probes_read_back_failed"]
                t.append(Target(f"{b}: cached swept sessions still served stale", stale, 0, "<="))
        return t

    def _relative(self, backend: str, cache: str, op: str, reference: str) -> float | None:
        a, b = key(backend, cache, "seq", op), key(backend, cache, "seq", reference)
        if a not in self.rates or b not in self.rates:
            return None
        return paired_ratio(self.rates[a], self.rates[b])

    def as_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "figures": self.figures(),
            "sweeps": self.sweeps,
            "storms": self.storms,
            "cache_stats": self.cache_stats,
            "pooler": self.pooler,
            "targets": [t.as_dict() for t in self.targets()],
            "notes": self.notes,
        }

    def table(self) -> str:
        return render(self)


def _storm(storm: dict[str, int] | None) -> float | None:
    return None if not storm or "redis" not in storm else float(storm["redis"])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(report: Report) -> str:
    """The run as a plain-text table: figures, sweeps, storms, then the targets."""
    lines = [f"{'figure':<44} {'ops/s':>8}  {'baseline (same repeats)':<30} {'ratio':>6}"]

    def row(name: str) -> str:
        base = report.baseline_ops(name)
        label = "" if base is None else f"{_baseline_label(name)} {base:,.0f}"
        return (f"{name:<44} {_fmt(report.ops(name), ',.0f'):>8}  {label:<30} "
                f"{_fmt(report.ratio(name), '.2f'):>6}")  # fmt: skip

    previous = ""
    for name in sorted(report.rates, key=_order):
        group = name.rsplit("/", 1)[0]
        if group != previous and previous:
            lines.append("")
        previous = group
        lines.append(row(name))
    for backend, sweep in report.sweeps.items():
        lines.append("")
        lines.append(
            f"sweep {backend}: {sweep['failed']:,} of {sweep['stale_sessions']:,} stale failed in "
            f"{sweep['wall_s']:.1f} s ({sweep['batches']} UPDATE batches), peak RSS "
            f"{sweep['peak_rss_mib']:.0f} MiB (RSS before {sweep['rss_before_mib']:.0f} MiB), "
            f"seeded in {sweep['seed_s']:.1f} s; {sweep['fresh_left_active']:,} fresh left active; "
            f"probes {sweep['probes_cached_before']}/{sweep['cached_probes']} cached before, "
            f"{sweep['probes_invalidated']} invalidated, {sweep['probes_read_back_failed']} read "
            "back FAILED"
        )
    for config, stats in report.cache_stats.items():
        counts = ", ".join(f"{k} {v}" for k, v in stats.items())
        lines.append(f"cache stats {config}: {counts}")
    for backend, storm in report.storms.items():
        counts = ", ".join(f"{cache}: {n} DB reads" for cache, n in storm.items())
        lines.append(f"miss storm {backend} ({report.meta.get('storm_readers')} readers): {counts}")
    if report.pooler:
        lines.append("")
        lines.extend(pooler.render(report.pooler))
    lines.append("")
    lines.append(f"{'target':<62} {'value':>9} {'need':>8}  verdict")
    for t in report.targets():
        need = f"{t.need} {t.threshold:g}"
        lines.append(f"{t.name:<62} {_fmt(t.value, '.3f'):>9} {need:>8}  {t.verdict}")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


_OP_ORDER = [
    "insert", "select", "set", "get_validate", "create_session", "get_session_miss",
    "get_session_hit", "get_session_0", "get_session_20", "get_session_deep",
    "get_session_by_key", "update_session", "add_checkpoint_0", "add_checkpoint_deep",
    "add_checkpoints_10", "heartbeat", "list_sessions", "delete_session",
]  # fmt: skip


def _order(name: str) -> tuple[int, str, int, int]:
    backend, cache, mode, op = name.split("/")
    backends = ["redis", "sqlite", "postgres"]
    return (backends.index(backend), mode, ["raw", "none", "redis"].index(cache),
            _OP_ORDER.index(op))  # fmt: skip


def _baseline_label(name: str) -> str:
    backend, _, mode, op = name.split("/")
    base = baseline_of(backend, mode, op)
    b, _, _, o = base.split("/")
    return BASELINE_NAMES[f"{b}/raw/{o}"]
