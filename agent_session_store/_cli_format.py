"""Helpers of the ``agent-session-store`` command: durations, text tables, JSON, a spinner."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TextIO, TypeVar

from agent_session_store.models import AgentSession, SessionCheckpoint, SessionState, SessionStats

T = TypeVar("T")

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"(?:(\d+)([smhdw]))+")
_PART = re.compile(r"(\d+)([smhdw])")
# Longer ages reach back before any session could exist, and soon past year 1, where
# ``now - age`` stops being a date at all.
MAX_DURATION = timedelta(days=36500)


class Duration(NamedTuple):
    """A duration as typed (``48h``) and as a ``timedelta``."""

    text: str
    delta: timedelta


def duration(text: str) -> Duration:
    """Parse ``30m``, ``48h``, ``7d``, ``2w`` or combinations like ``1d12h`` (argparse type)."""
    cleaned = text.strip().lower()
    if cleaned.startswith("-"):
        rest = cleaned.lstrip("-").strip()
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: a negative age is not allowed (an age counts back from "
            f"now); use e.g. {rest if _DURATION.fullmatch(rest) else '48h'}"
        )
    if not _DURATION.fullmatch(cleaned):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number and a unit, e.g. 30m, 48h, 7d, 2w or 1d12h "
            "(s=seconds, m=minutes, h=hours, d=days, w=weeks)"
        )
    try:
        delta = sum(
            (timedelta(**{_UNITS[unit]: int(n)}) for n, unit in _PART.findall(cleaned)),
            timedelta(),
        )
    except OverflowError:  # more than timedelta holds (about 2.7 million years)
        delta = MAX_DURATION + timedelta(days=1)
    if delta > MAX_DURATION:
        raise argparse.ArgumentTypeError(
            f"duration {text!r} is too long: at most {MAX_DURATION.days}d (100 years)"
        )
    return Duration(cleaned, delta)


def state(text: str) -> SessionState:
    """A session state by its name or value in any case, as the library takes it (argparse type)."""
    try:
        return SessionState(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown state {text!r}: use one of {', '.join(s.value for s in SessionState)} "
            "(any case)"
        ) from None


def duration_text(delta: timedelta) -> str:
    """``delta`` as :func:`duration` reads it: ``2d``, ``1d12h``, ``90s``; ``0s`` for none."""
    seconds = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 session``, ``2 sessions``, ``0 sessions``: a number and its noun, agreeing."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    return _int_from(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    return _int_from(text, 0)


def metadata_pair(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` for a metadata filter (argparse type): VALUE as JSON when it is a JSON
    scalar (``2``, ``true``, ``null``, ``"2"``), else the text itself."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"invalid metadata filter {text!r}: use KEY=VALUE, e.g. team=support or tier=2"
        )
    try:
        value = json.loads(raw)
    except ValueError:
        return key, raw
    return (
        (key, value) if value is None or isinstance(value, str | int | float | bool) else (key, raw)
    )


def int_from_1_to(maximum: int) -> Callable[[str], int]:
    """An argparse type for an integer from 1 to ``maximum`` (the repository's own bound).

    Checked while parsing, so an out-of-range value is refused before anything connects.
    """

    def parse(text: str) -> int:
        return _int_from(text, 1, maximum)

    parse.__name__ = "integer"
    return parse


def _int_from(text: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of {minimum} or more, got {text!r}"
        )
    if maximum is not None and value > maximum:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from {minimum} to {maximum}, got {text!r}"
        )
    return value


def timestamp(value: datetime | None) -> str:
    """A UTC time to the second, e.g. ``2026-01-02 10:00:03Z``; ``-`` for none."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(value: datetime, now: datetime) -> str:
    """How long ago ``value`` was, roughly: ``45s``, ``12m``, ``3h``, ``2d``."""
    seconds = max(0, int((now - value).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(c) for c in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def to_json(value: Any) -> str:
    """Pretty JSON; datetimes as ISO 8601."""
    return json.dumps(value, indent=2, sort_keys=False, default=str, ensure_ascii=False)


def sessions_table(sessions: Sequence[AgentSession]) -> str:
    """The ``sessions list`` table."""
    # CREATED_AT: the column the page is ordered by (newest first), so the order can be seen.
    return table(
        ("SESSION_ID", "AGENT_TYPE", "USER_ID", "KEY", "STATE", "CHECKPOINTS", "VERSION",
         "CREATED_AT"),
        (
            (s.session_id, s.agent_type, s.user_id or "-", s.key or "-", s.state.value,
             s.checkpoint_count, s.version, timestamp(s.created_at))
            for s in sessions
        ),
    )  # fmt: skip


def checkpoints_table(checkpoints: Sequence[SessionCheckpoint]) -> str:
    """Checkpoints as ``SEQ NAME CREATED_AT DATA`` rows, data as compact JSON."""
    return table(
        ("SEQ", "NAME", "CREATED_AT", "DATA"),
        ((cp.seq, cp.name, timestamp(cp.timestamp), _compact(cp.data, 60)) for cp in checkpoints),
    )


def session_details(session: AgentSession, now: datetime) -> str:
    """The ``sessions show`` text: fields, context, metadata and recent checkpoints."""
    fields = [
        ("session_id", session.session_id),
        ("agent_type", session.agent_type),
        ("user_id", session.user_id or "-"),
        ("key", session.key or "-"),
        ("state", session.state.value),
        ("version", session.version),
        ("created_at", timestamp(session.created_at)),
        ("updated_at", timestamp(session.updated_at)),
        ("last_heartbeat", f"{timestamp(session.last_heartbeat)} "
                           f"({age(session.last_heartbeat, now)} ago)"),
        ("context", _compact(session.context, 200)),
        ("metadata", _compact(session.metadata, 200)),
        ("checkpoints", session.checkpoint_count),
    ]  # fmt: skip
    text = labelled(fields)
    shown = session.checkpoints
    if not shown:
        return text
    first = shown[0].seq or 1
    label = f"\n\nrecent checkpoints ({first}-{shown[-1].seq} of {session.checkpoint_count}):\n"
    return text + label + checkpoints_table(shown)


def stats_text(stats: SessionStats, now: datetime, more: Sequence[tuple[str, object]] = ()) -> str:
    """The ``stats`` text, with ``more`` rows (the cache's) aligned with the rest."""
    oldest = stats.oldest_active_heartbeat
    rows: list[tuple[str, object]] = [("sessions", f"{stats.sessions} (soft-deleted included)")]
    rows += [(f"  {state}", count) for state, count in sorted(stats.by_state.items())]
    rows += [
        ("checkpoints", stats.checkpoints),
        ("oldest active heartbeat",
         f"{timestamp(oldest)} ({age(oldest, now)} ago)" if oldest else "- (no active session)"),
    ]  # fmt: skip
    if stats.by_agent_type:
        rows.append(("by agent type (not deleted)", ""))
        rows += [(f"  {name}", count) for name, count in sorted(stats.by_agent_type.items())]
    return labelled([*rows, *more])


def labelled(rows: Sequence[tuple[str, object]]) -> str:
    """``label: value`` lines with the values aligned."""
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label + ':':<{width}}{value}".rstrip() for label, value in rows)


def _compact(data: Any, limit: int) -> str:
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def with_spinner(label: str, work: Awaitable[T], stream: TextIO = sys.stderr) -> T:
    """Await ``work`` while redrawing ``label`` with a spinner and the elapsed time on a terminal.

    The first frame is drawn before ``work`` starts; the line is cleared when it ends.
    """
    frames = "|/-\\"
    started = time.monotonic()

    def draw(i: int) -> None:
        elapsed = time.monotonic() - started
        stream.write(f"\r{frames[i % len(frames)]} {label} {elapsed:.1f}s\x1b[K")
        stream.flush()

    async def spin() -> None:
        i = 1
        while True:
            await asyncio.sleep(0.1)
            draw(i)
            i += 1

    draw(0)
    spinner = asyncio.create_task(spin())
    try:
        return await work
    finally:
        spinner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await spinner
        stream.write("\r\x1b[K")
        stream.flush()


def draw_progress(stream: TextIO, label: str, done: int, total: int, width: int = 30) -> None:
    """Redraw a progress bar, ``label [#####-----] done/total``, on a terminal line."""
    filled = width if total <= 0 else min(width, width * done // total)
    bar = "#" * filled + "-" * (width - filled)
    stream.write(f"\r{label} [{bar}] {done}/{count(total, 'row')}\x1b[K")
    stream.flush()


def clear_progress(stream: TextIO) -> None:
    """Erase the progress bar's line."""
    stream.write("\r\x1b[K")
    stream.flush()
