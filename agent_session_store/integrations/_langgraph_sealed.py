"""Where the LangGraph checkpointer's stored bytes are sealed and opened: one object per saver.

``SessionStoreSaver`` holds a :class:`Values`: :class:`Sealed` when its repository has
``encryption=...``, else :class:`Plain`. Every value LangGraph hands the saver is serialized
bytes (``LargeBinary`` columns, no schema change); sealed, they are ``encryption.BYTES_MARK``,
the key id, a nonce and the AES-256-GCM ciphertext (``FieldEncryption.seal_bytes``). No
LangGraph import here: the repository's ``rotate_keys`` uses this module too.

The places a value is bound to (associated data, see ``encryption.place``); a thread is named by
its agent type and thread key (the key of ``lg_threads``, unique among live threads), because
the saver's one-statement writes find the thread's session inside the statement, after the
values are sealed:

==================  ===========================================================================
value               bound to
==================  ===========================================================================
checkpoint body     ``lg_checkpoints``, ``checkpoint``, agent type, thread key, namespace,
                    checkpoint id, type
channel value       ``lg_blobs``, ``blob``, agent type, thread key, namespace, channel, version,
                    type, base version, item count (so a delta's chain cannot be re-pointed)
pending write       ``lg_writes``, ``blob``, agent type, thread key, namespace, checkpoint id,
                    task id, index, channel, type
==================  ===========================================================================

A delta (a grown list's new items, ``_langgraph_values``) is cut from the plaintext, then sealed
on its own: each stored row decrypts alone, and the chain is joined after. The digests that
check a delta's base are keyed with encryption on (``FieldEncryption.digest``), SHA-256 without.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

from agent_session_store.encryption import BYTES_MARK, FieldEncryption, place, sealed_kid
from agent_session_store.errors import DecryptionError

__all__ = ["Plain", "Sealed", "Values", "values_for"]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def checkpoint_place(agent: str, key: str, ns: str, cid: str, kind: str) -> bytes:
    return place("lg_checkpoints", "checkpoint", agent, key, ns, cid, kind)


def blob_place(
    agent: str, key: str, ns: str, channel: str, version: str, kind: str,
    base: str | None, items: int | None,
) -> bytes:  # fmt: skip
    return place(
        "lg_blobs", "blob", agent, key, ns, channel, version, kind,
        "-" if base is None else f"v{base}", "-" if items is None else str(items),
    )  # fmt: skip


def write_place(
    agent: str, key: str, ns: str, cid: str, task_id: str, idx: int, channel: str, kind: str
) -> bytes:
    return place("lg_writes", "blob", agent, key, ns, cid, task_id, str(idx), channel, kind)


def _in(ns: str) -> str:
    return f" in namespace {ns!r:.80}" if ns else ""


def checkpoint_what(cid: str, ns: str) -> str:
    return f"LangGraph checkpoint {cid!r:.80}{_in(ns)}"


def blob_what(channel: str, version: str, ns: str) -> str:
    return f"LangGraph channel {channel!r:.80} at version {version!r:.60}{_in(ns)}"


def write_what(cid: str, task_id: str, idx: int, channel: str, ns: str) -> str:
    return (
        f"LangGraph write {idx} of task {task_id!r:.80} to channel {channel!r:.80} "
        f"(checkpoint {cid!r:.80}){_in(ns)}"
    )


class Values:
    """How the saver's stored bytes are sealed and opened (see the module's docstring).

    ``sid`` (the thread's session id) only names the value in errors; ``agent`` and ``key``
    (agent type, thread key) bind it.
    """

    on: bool = False

    def digest(self, data: bytes) -> bytes:
        """The digest a grown list's prefix is checked by: SHA-256 (see ``Sealed.digest``)."""
        return sha256(data)

    def seal_checkpoint(self, agent: str, key: str, ns: str, cid: str, kind: str,
                        data: bytes) -> bytes:  # fmt: skip
        return data

    def seal_blob(self, agent: str, key: str, row: dict[str, Any]) -> bytes | None:
        blob: bytes | None = row["blob"]
        return blob

    def seal_write(self, agent: str, key: str, row: dict[str, Any]) -> bytes | None:
        blob: bytes | None = row["blob"]
        return blob

    def open_checkpoint(self, sid: uuid.UUID, agent: str, key: str, ns: str, cid: str,
                        kind: str, data: bytes) -> bytes:  # fmt: skip
        raise NotImplementedError

    def open_blob(self, sid: uuid.UUID, agent: str, key: str, ns: str, channel: str,
                  version: str, kind: str, base: str | None, items: int | None,
                  data: bytes | None) -> bytes | None:  # fmt: skip
        raise NotImplementedError

    def open_write(self, sid: uuid.UUID, agent: str, key: str, ns: str, cid: str,
                   task_id: str, idx: int, channel: str, kind: str,
                   data: bytes | None) -> bytes | None:  # fmt: skip
        raise NotImplementedError


class Plain(Values):
    """No encryption: bytes go out as they are; sealed bytes read back are refused."""

    def open_checkpoint(self, sid: uuid.UUID, agent: str, key: str, ns: str, cid: str,
                        kind: str, data: bytes) -> bytes:  # fmt: skip
        if data.startswith(BYTES_MARK):
            _refuse(checkpoint_what(cid, ns), sid, data)
        return data

    def open_blob(self, sid: uuid.UUID, agent: str, key: str, ns: str, channel: str,
                  version: str, kind: str, base: str | None, items: int | None,
                  data: bytes | None) -> bytes | None:  # fmt: skip
        if data and data.startswith(BYTES_MARK):
            _refuse(blob_what(channel, version, ns), sid, data)
        return data

    def open_write(self, sid: uuid.UUID, agent: str, key: str, ns: str, cid: str,
                   task_id: str, idx: int, channel: str, kind: str,
                   data: bytes | None) -> bytes | None:  # fmt: skip
        if data and data.startswith(BYTES_MARK):
            _refuse(write_what(cid, task_id, idx, channel, ns), sid, data)
        return data


class Sealed(Values):
    """Encryption on: see the module's docstring."""

    on = True

    def __init__(self, encryption: FieldEncryption) -> None:
        self.encryption = encryption

    def digest(self, data: bytes) -> bytes:
        """Keyed (``FieldEncryption.digest``): a plain digest next to ciphertext would let a
        reader of the database confirm guesses of a list's contents."""
        return self.encryption.digest(data)

    def seal_checkpoint(self, agent: str, key: str, ns: str, cid: str, kind: str,
                        data: bytes) -> bytes:  # fmt: skip
        return self.encryption.seal_bytes(data, checkpoint_place(agent, key, ns, cid, kind))

    def seal_blob(self, agent: str, key: str, row: dict[str, Any]) -> bytes | None:
        blob: bytes | None = row["blob"]
        if blob is None:  # a channel without a value ("empty"): nothing to hide
            return None
        where = blob_place(agent, key, row["checkpoint_ns"], row["channel"], row["version"],
                           row["type"], row["base_version"], row["item_count"])  # fmt: skip
        return self.encryption.seal_bytes(blob, where)

    def seal_write(self, agent: str, key: str, row: dict[str, Any]) -> bytes | None:
        blob: bytes | None = row["blob"]
        if blob is None:
            return None
        where = write_place(agent, key, row["checkpoint_ns"], row["checkpoint_id"],
                            row["task_id"], row["idx"], row["channel"], row["type"])  # fmt: skip
        return self.encryption.seal_bytes(blob, where)

    def _open(self, data: bytes, where: bytes, sid: uuid.UUID, what: Callable[[], str]) -> bytes:
        """Open ``data``; only a value that fails pays for the names its error gives."""
        try:
            return self.encryption.open_bytes(data, where, "", None)
        except DecryptionError:
            return self.encryption.open_bytes(data, where, what(), str(sid))  # raises, named

    def open_checkpoint(self, sid: uuid.UUID, agent: str, key: str, ns: str, cid: str,
                        kind: str, data: bytes) -> bytes:  # fmt: skip
        where = checkpoint_place(agent, key, ns, cid, kind)
        return self._open(data, where, sid, lambda: checkpoint_what(cid, ns))

    def open_blob(self, sid: uuid.UUID, agent: str, key: str, ns: str, channel: str,
                  version: str, kind: str, base: str | None, items: int | None,
                  data: bytes | None) -> bytes | None:  # fmt: skip
        if data is None:  # only a channel without a value ("empty") is stored without bytes
            if kind == "empty":
                return None
            raise DecryptionError.malformed(blob_what(channel, version, ns), str(sid))
        where = blob_place(agent, key, ns, channel, version, kind, base, items)
        return self._open(data, where, sid, lambda: blob_what(channel, version, ns))

    def open_write(self, sid: uuid.UUID, agent: str, key: str, ns: str, cid: str,
                   task_id: str, idx: int, channel: str, kind: str,
                   data: bytes | None) -> bytes | None:  # fmt: skip
        if data is None:  # the saver stores bytes for every write
            raise DecryptionError.malformed(write_what(cid, task_id, idx, channel, ns), str(sid))
        where = write_place(agent, key, ns, cid, task_id, idx, channel, kind)
        return self._open(data, where, sid, lambda: write_what(cid, task_id, idx, channel, ns))


def _refuse(what: str, sid: uuid.UUID, data: bytes) -> None:
    raise DecryptionError.no_encryption(what, str(sid), sealed_kid(data) or "?")


def values_for(encryption: FieldEncryption | None) -> Values:
    """The saver's :class:`Values` for its repository's ``encryption``."""
    return Plain() if encryption is None else Sealed(encryption)
