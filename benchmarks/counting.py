"""Counting the statements an engine sends, by SQLAlchemy's ``before_cursor_execute`` event."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class StatementCounter:
    """How many statements whose verb is ``verb`` and that name ``table`` were executed."""

    def __init__(self, verb: str, table: str) -> None:
        self.verb = verb.upper()
        self.table = table
        self.count = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        text = " ".join(statement.upper().split())
        # A statement may start with its CTEs: WITH batch AS (...) UPDATE ...
        main = text.startswith(self.verb) or (text.startswith("WITH") and f") {self.verb} " in text)
        if main and self.table in statement:
            self.count += 1


@contextmanager
def counting(engine: AsyncEngine, verb: str, table: str) -> Iterator[StatementCounter]:
    """Count matching statements on ``engine`` while the block runs."""
    counter = StatementCounter(verb, table)
    event.listen(engine.sync_engine, "before_cursor_execute", counter)
    try:
        yield counter
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", counter)
