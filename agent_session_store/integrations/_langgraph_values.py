"""How the LangGraph checkpointer stores channel values: whole, or a grown list as a delta.

A conversation's message list grows by a few messages a turn; stored whole at every version,
a thread of n turns would hold O(n²) bytes. A list is serialized by msgpack as an array header
followed by its items' encodings, so a list that starts with an earlier version's items starts
with that version's bytes (after the header). :func:`blob_row` then stores only the bytes that
follow, with a pointer to the earlier version (``base_version``); :func:`whole` joins a chain
back. The earlier version is a guess (the channel's newest stored list below the new version),
checked by the digest of the prefix (SHA-256; keyed when the values are encrypted), so a wrong
guess costs a whole copy, never a wrong value.
A whole copy is written again once the deltas since the last one outgrow it: whole copies at
least double in size each time, so a thread stores O(n) bytes, and a read costs at most about
twice the value's size.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent_session_store.errors import StorageError

__all__ = ["FindBase", "Grown", "blob_row", "list_value", "whole"]


@dataclass(frozen=True)
class Grown:
    """A list value as serialized: its items' bytes (no array header), count and digest."""

    body: bytes
    items: int
    digest: bytes


def array_header(items: int) -> bytes:
    """The msgpack array header for ``items`` items."""
    if items < 16:
        return bytes([0x90 | items])
    if items < 2**16:
        return b"\xdc" + items.to_bytes(2, "big")
    return b"\xdd" + items.to_bytes(4, "big")


Digest = Callable[[bytes], bytes]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def list_value(value: Any, kind: str, data: bytes | None, digest: Digest = _sha256) -> Grown | None:
    """``value``'s serialized items, when it is a list msgpack wrote as one array.

    ``digest``: SHA-256, or a keyed digest when the values are encrypted (``_langgraph_sealed``).
    """
    if kind != "msgpack" or not isinstance(value, list) or not data:
        return None
    header = array_header(len(value))
    if not data.startswith(header):
        return None
    body = data[len(header) :]
    return Grown(body, len(value), digest(body))


# Finds a channel's newest stored list value below a version: (session, ns, channel, version).
FindBase = Callable[[uuid.UUID, str, str, str], Awaitable[Any]]


async def blob_row(
    find_base: FindBase,
    sid: uuid.UUID,
    blob: dict[str, Any],
    grown: Grown | None,
    digest: Digest = _sha256,
) -> dict[str, Any]:
    """The row storing one channel value: whole, or as a delta on an earlier list value.

    A delta is written when an earlier version of the channel is a prefix of this one (checked
    by its digest, so a wrong guess only costs a whole copy) and the deltas since the last
    whole copy stay no larger than it; otherwise the value is stored whole. Each stored byte
    is then written once, plus whole copies that at least double each time: O(size) in all.
    ``find_base`` reads the candidate (``_langgraph_sql.LIST_BASE``) in the write's transaction.
    """
    row = {**blob, "session_id": sid}
    if grown is None:
        return row
    size = len(grown.body)
    row.update(item_count=grown.items, size=size, delta_size=0, digest=grown.digest)
    found = await find_base(sid, blob["checkpoint_ns"], blob["channel"], blob["version"])
    if found is None or found.size > size or found.item_count > grown.items:
        return row
    delta = found.delta_size + size - found.size
    if delta > found.size - found.delta_size:
        return row  # the deltas would outgrow their whole copy: a new whole copy
    if digest(grown.body[: found.size]) != found.digest:
        return row  # not a prefix (another branch, or a list that changed): whole
    row.update(blob=grown.body[found.size :], base_version=found.version, delta_size=delta)
    return row


def whole(blob: Any, blobs: dict[tuple[Any, ...], Any]) -> tuple[str, bytes | None]:
    """A stored value as the serializer wrote it: a delta's chain joined back into the list."""
    if blob.base_version is None:
        return blob.type, blob.blob
    items = blob.item_count
    tails = []
    while blob.base_version is not None:
        tails.append(blob.blob or b"")
        below = blobs.get((blob.session_id, blob.checkpoint_ns, blob.channel, blob.base_version))
        if below is None or below.item_count is None:
            raise StorageError(
                f"the stored value of channel {blob.channel!r:.80} at version "
                f"{blob.version!r:.40} builds on one that is no longer stored; the thread's "
                "data is incomplete"
            )
        blob = below
    whole = blob.blob or b""
    body = whole[len(array_header(blob.item_count)) :] + b"".join(reversed(tails))
    return "msgpack", array_header(items) + body
