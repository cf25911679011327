"""Checks that input is storable the same way on SQLite and PostgreSQL.

PostgreSQL's ``text`` and ``jsonb`` refuse ``\\u0000`` and lone surrogates and ``jsonb`` refuses
NaN/Infinity, while SQLite would store them; rejecting them everywhere keeps both backends alike.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_JSON_DEPTH = 64
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


def check_text(value: str, what: str) -> str:
    """Reject strings that PostgreSQL cannot store (NUL, lone surrogates)."""
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character (\\u0000), which cannot be stored")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} contains an invalid unicode code point (a lone surrogate at "
            f"position {exc.start}); pass valid UTF-8 text"
        ) from None
    return value


def check_json_object(value: Any, what: str) -> dict[str, Any]:
    """Return ``value`` if it is a dict of JSON values that both backends store losslessly.

    Raises:
        ValueError: naming the first offending path, e.g. ``context['a'][2]``.
    """
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object (a dict), got {type(value).__name__}")
    # Iterative walk: a hostile, deeply nested value must not blow the interpreter's stack.
    stack: list[tuple[Any, str, int]] = [(value, what, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels at {path}")
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValueError(
                        f"{path} has a key of type {type(key).__name__}; JSON keys must be strings"
                    )
                check_text(key, f"a key in {path}")
                stack.append((child, f"{path}[{key!r}]", depth + 1))
        elif isinstance(item, list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels at {path}")
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            check_text(item, path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{path} is {item!r}; JSON has no NaN or Infinity")
        elif item is None or isinstance(item, int):
            pass
        else:
            raise ValueError(
                f"{path} is a {type(item).__name__}, which is not a JSON value; use str, int, "
                "float, bool, None, list or dict (convert datetimes, bytes, sets, tuples first)"
            )
    return value


def json_size(value: Any) -> int:
    """Size in bytes of ``value`` serialized compactly as UTF-8 JSON."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def check_payload_size(value: Any, what: str, limit: int) -> None:
    """Raise ValueError when ``value`` serializes to more than ``limit`` bytes."""
    size = json_size(value)
    if size > limit:
        raise ValueError(
            f"{what} is {size} bytes serialized, over the limit of {limit} bytes; store large "
            "blobs elsewhere and keep a reference, or raise max_payload_bytes"
        )
