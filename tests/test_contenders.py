"""The peer comparison's contenders close what their session objects hold.

Nothing deletes the session a history was built on, nor an item a failed run left behind; a
peer's session object may hold connections (OpenAI ``SQLiteSession``: one per worker thread), so
they are released on close. Unreleased, three of them were closed by the garbage collector in a
later test (tests/test_pooler.py, in CI), as ResourceWarnings.
"""

from __future__ import annotations

from typing import Any

from benchmarks.contenders import Contender


class _Recording(Contender):
    """A contender whose session objects are strings, recording which ones are released."""

    def __init__(self) -> None:
        super().__init__("sqlite")
        self.released: list[Any] = []

    async def _create(self, item: int) -> Any:
        return f"session {item}"

    async def _append(self, handle: Any) -> Any:
        return handle

    async def _release(self, handle: Any) -> None:
        self.released.append(handle)


async def test_closing_a_contender_releases_its_history_session_and_items_left_behind() -> None:
    # The history's session is never deleted; an item is left behind by a run that failed midway.
    contender = _Recording()
    await contender.seed_history(3)
    await contender.create(7, 0)
    await contender.close()
    assert sorted(contender.released) == ["session -1", "session 7"]
