"""Signed cache entries: an HMAC-SHA256 over everything that gives an entry its meaning.

Whoever can write to Redis can otherwise plant a well-formed entry that the cache serves as the
database's answer. With signing keys, ``RedisCache`` signs each entry it stores and serves only
entries whose signature verifies. What the signature covers, and why each part:

- **the Redis key of the value** (namespace, model and cache key in one name): an entry copied
  to another session, model or namespace does not verify there;
- **the generation and the epoch it was stored under**: an older entry of the same key, put
  back after a write replaced it, names a generation that is no longer current;
- **the format and the model's schema fingerprint**: the bytes are read the way they were
  written;
- **the key id**, and the JSON body itself.

What is hashed: a fixed label, then ``<length of the Redis key>:<Redis key>``, then the entry's
header line up to its signature (``as1s <key id> <epoch> <generation> <schema>``), a newline
and the body. No two different entries hash the same bytes: the Redis key is length-prefixed,
an accepted header has exactly its six space-separated fields (none holds a space) and ends at
the first newline. The algorithm is this module's, never read from the entry; comparisons are
constant-time (``hmac.compare_digest``).

Keys: the first one signs, every one verifies (rotation: put a new key first, drop the old one
once the entries it signed have expired or been replaced). Each entry names its key by a short
id, the first 4 bytes of an HMAC of a fixed label under the key: not secret, and telling
nothing of the key, it lets verification go straight to the right key. Keys are never kept as
bytes here, only inside ``hmac`` objects, so no repr, message or log line can show one.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

MIN_KEY_BYTES = 32
_KEY_ID_LABEL = b"agent_session_store cache signing key id"
# Hashed first, under every key: a MAC made here means nothing to any other use of the key.
_DOMAIN = b"agent_session_store cache entry\n"


class Keyring:
    """Signing keys, newest first: the first signs, every one verifies.

    Raises:
        TypeError: ``keys`` is not a list of ``bytes`` (a single ``bytes`` key, say).
        ValueError: no key, a key shorter than 32 bytes, or one listed twice.
    """

    __slots__ = ("_macs", "_signer")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if isinstance(keys, (bytes, bytearray, memoryview, str)):
            raise TypeError("signing_keys takes a list of keys, newest first: [key], not key")
        macs: dict[bytes, hmac.HMAC] = {}
        for i, key in enumerate(keys):
            if not isinstance(key, (bytes, bytearray)):
                raise TypeError(f"signing_keys[{i}] must be bytes, got {type(key).__name__}")
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(
                    f"signing_keys[{i}] is shorter than {MIN_KEY_BYTES} bytes; use random "
                    "keys of at least 32 bytes, e.g. secrets.token_bytes(32)"
                )
            key_id = hmac.digest(key, _KEY_ID_LABEL, "sha256")[:4].hex().encode()
            if key_id in macs:
                raise ValueError(
                    f"signing_keys[{i}] repeats an earlier key (same key id {key_id.decode()}); "
                    "list each key once"
                )
            macs[key_id] = hmac.new(key, _DOMAIN, hashlib.sha256)
        if not macs:
            raise ValueError(
                "signing_keys is empty; pass at least one key, or None to store unsigned entries"
            )
        self._macs = macs
        self._signer = next(iter(macs))

    def __repr__(self) -> str:
        return f"<Keyring of {len(self._macs)} key(s), signing with key id {self._signer.decode()}>"

    @property
    def signer(self) -> bytes:
        """The id of the key that signs (the first)."""
        return self._signer

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        """The ids of every key, newest first."""
        return tuple(self._macs)

    def sign(self, name: bytes, header: bytes, body: bytes) -> bytes:
        """The hex signature, with the first key, of an entry stored under the Redis key ``name``.

        ``header`` is the entry's header line up to its signature, naming ``signer``.
        """
        return self._mac(self._macs[self._signer], name, header, body)

    def verify(
        self, key_id: bytes, name: bytes, header: bytes, body: bytes, signature: bytes
    ) -> str:
        """Why ``signature`` does not vouch for the entry; ``""`` when it does."""
        base = self._macs.get(key_id)
        if base is None:
            return "signed with a key that is not in signing_keys"
        if not hmac.compare_digest(self._mac(base, name, header, body), signature):
            return "its signature does not match its contents and place"
        return ""

    @staticmethod
    def _mac(base: hmac.HMAC, name: bytes, header: bytes, body: bytes) -> bytes:
        mac = base.copy()  # the key's padded state, computed once per key
        mac.update(b"%d:%s%s\n" % (len(name), name, header))
        mac.update(body)  # not joined to the rest: no copy of a large body
        return mac.hexdigest().encode()
