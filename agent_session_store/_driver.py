"""The hot path: statements built by SQLAlchemy, compiled once, sent on the driver's connection.

Measured per call on this project's machines (benchmarks/README.md), SQLAlchemy's execution
layer around a one-row statement costs more than the round trip itself: the ``Connection``
and its transaction bookkeeping, the cursor adapter (four trips to aiosqlite's thread per
statement where the driver needs one), result-set machinery. The repository's most frequent
operations (get, create, append, delete, heartbeat) therefore run their statements here: each
is compiled once per dialect by SQLAlchemy (the SQL is never written by hand), its parameters
are converted by the column types' own bind processors, and its rows by their result
processors, so values come out exactly as through SQLAlchemy.

The connection still comes from, and goes back to, the engine's pool (its events, pre-ping
and reset included). Used only where the driver can run the call as SQLAlchemy would: a call
of its own, not bound to a caller's session, and not behind a transaction pooler.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect as SaDialect
from sqlalchemy.sql.compiler import SQLCompiler

_OURS = "b_"  # the repository's own parameters; any other bind is a literal of the statement


class Prepared:
    """One statement compiled for one dialect: its SQL, argument order and row conversion."""

    __slots__ = ("_arguments", "_converters", "_row", "sql")

    def __init__(self, statement: Executable, dialect: SaDialect) -> None:
        compiled = cast("SQLCompiler", cast("Any", statement).compile(dialect=dialect))
        if compiled.post_compile_params:  # an expanding IN (...) is rendered per execution
            raise ValueError("a hot-path statement cannot hold expanding parameters")
        self.sql = compiled.string
        self._arguments: list[tuple[str | None, Any, Callable[[Any], Any] | None]] = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if name.startswith(_OURS):
                self._arguments.append((name, None, convert))
            else:  # a literal: converted once
                value = bind.effective_value
                self._arguments.append((None, convert(value) if convert else value, None))
        columns = list(getattr(statement, "exported_columns", ()))
        self._converters = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        self._row: Any = namedtuple("Row", [column.key for column in columns])  # type: ignore[misc]

    def arguments(self, params: dict[str, Any]) -> list[Any]:
        """The positional arguments for ``params`` (keyed by the statement's ``b_`` names)."""
        out = []
        for name, literal, convert in self._arguments:
            if name is None:
                out.append(literal)
            else:
                value = params[name]
                out.append(value if convert is None else convert(value))
        return out

    def rows(self, raw: list[Any]) -> list[Any]:
        """The driver's rows as named rows of Python values (``row.id``, ``row.recent``...)."""
        make, converters = self._row._make, self._converters
        return [
            make(
                value if convert is None else convert(value)
                for value, convert in zip(row, converters, strict=True)
            )
            for row in raw
        ]
