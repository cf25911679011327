"""The LangGraph checkpointer's default serializer: LangGraph's, failing closed.

LangGraph's ``JsonPlusSerializer`` writes msgpack in which an extension names a Python type
(module and name) to rebuild on load. By default it imports whatever a stored value names; in
its strict mode it hands back the raw fields of a type it does not allow, silently. Stored bytes
are data, and a database row can be planted: :class:`StrictSerializer` checks every named type
against the allow-list before LangGraph's own hook sees it, and raises instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ormsgpack
from langgraph.checkpoint.serde import _msgpack as lg_msgpack
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from agent_session_store.errors import SessionValidationError

__all__ = ["StrictSerializer"]

# The serialization types the saver writes ("empty": a channel without a value).
STORED_TYPES = frozenset({"null", "bytes", "bytearray", "msgpack", "empty"})
# The msgpack extension codes that name a Python type to rebuild (langgraph's serde/jsonplus).
_CONSTRUCTOR_CODES = frozenset({0, 1, 2, 4, 5})
_METHOD_CODE = 3


class _Blocked(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


class StrictSerializer(JsonPlusSerializer):
    """LangGraph's serializer, failing closed on stored types that are not allowed.

    ``JsonPlusSerializer`` by default imports whatever type a stored value names (or, in its
    strict mode, silently hands back the raw fields). This one rebuilds LangGraph's and
    LangChain's own safe types and those on its allow-list (``allowed_msgpack_modules``, or
    added by LangGraph for a compiled graph's state schema through ``with_allowlist``), and
    raises ``SessionValidationError`` for anything else. It never unpickles.

    Example::

        saver = SessionStoreSaver(repo, serde=StrictSerializer(allowed_msgpack_modules=[MyState]))
    """

    def __init__(self, *, allowed_msgpack_modules: Sequence[tuple[str, ...] | type] = ()) -> None:
        super().__init__(allowed_msgpack_modules=list(allowed_msgpack_modules) or None)

    def _allowed(self, module: str, name: str) -> bool:
        if (module, name) in lg_msgpack.SAFE_MSGPACK_TYPES:
            return True
        allowed = self._allowed_msgpack_modules
        return allowed is True or (bool(allowed) and (module, name) in allowed)  # type: ignore[operator]

    def _hook(self, blocked: list[str]) -> Callable[[int, bytes], Any]:
        """An ext hook that checks each named type before LangGraph's hook rebuilds it."""

        def check(code: int, data: bytes) -> Any:
            if code in _CONSTRUCTOR_CODES or code == _METHOD_CODE:
                fields = ormsgpack.unpackb(data, ext_hook=check, option=ormsgpack.OPT_NON_STR_KEYS)
                module, name = str(fields[0]), str(fields[1])
                allowed = (
                    (module, name, str(fields[3])) in lg_msgpack.SAFE_MSGPACK_METHODS
                    if code == _METHOD_CODE
                    else self._allowed(module, name)
                )
                if not allowed:
                    blocked.append(f"{module}.{name}")
                    raise _Blocked(blocked[-1])
            return self._unpack_ext_hook(code, data)

        return check

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, payload = data
        if kind not in STORED_TYPES - {"empty"}:
            raise SessionValidationError(
                f"a stored value has the serialization type {kind!r:.40}, which this saver never "
                "writes and does not read (no pickle, no JSON constructors); nothing was loaded"
            )
        if kind != "msgpack":
            return super().loads_typed(data)
        blocked: list[str] = []  # ormsgpack re-raises a failed hook as its own ValueError
        try:
            return ormsgpack.unpackb(
                payload, ext_hook=self._hook(blocked), option=ormsgpack.OPT_NON_STR_KEYS
            )
        except Exception:
            if not blocked:
                raise
            raise SessionValidationError(
                f"a stored value names the type {blocked[0]!r:.200}, which is not on the "
                "serializer's allow-list, so it was not imported; nothing was loaded. If your "
                "graph stores it, allow it: StrictSerializer(allowed_msgpack_modules="
                "[(module, name)]) or saver.with_allowlist([...])"
            ) from None
