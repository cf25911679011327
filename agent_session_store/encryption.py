"""Encryption at rest: AES-256-GCM over the values sessions hold, bound to where they are stored.

``SessionRepository(..., encryption=FieldEncryption(keys, active))`` encrypts, before they leave
the process, a session's ``context``, every checkpoint's ``data`` and each top-level value of
the shared state; it decrypts them after they come back from the database or the cache. What
stays readable (ids, keys, agent type, user id, state, names, seqs, versions, timestamps,
metadata) is listed in docs/security.md.

Each encrypted value is stored, in the JSON column it always had, as an envelope::

    {"$enc": "v1", "kid": "<key id>", "ct": "<base64 of nonce (12 bytes) + ciphertext + tag>"}

The plaintext is the value's JSON. The associated data (authenticated, not stored) names the
value's place: the table, the field and the row (session id; session id and seq; agent type,
scope, user id and top-level key for shared state), plus the envelope version and key id. A
ciphertext copied to another row or field, altered by one bit, cut short, or made under a key
that is not configured fails to decrypt: :class:`~agent_session_store.errors.DecryptionError`,
naming the session, the field and the key id, never the key or any plaintext.

The LangGraph checkpointer's values are bytes, not JSON: :meth:`FieldEncryption.seal_bytes`
stores them as ``BYTES_MARK``, the key id, the nonce and the ciphertext, with the same associated
data rules (``integrations/_langgraph_sealed.py`` names their places), and
:meth:`FieldEncryption.digest` gives the keyed digests stored beside them.

Keys: ``keys`` maps key ids to 32-byte keys; ``active`` names the one that encrypts, every one
decrypts (rotation: add a key, make it active, run ``agent-session-store rotate-keys``, then
drop the old one). The algorithm and the envelope's meaning are fixed by this module, never read
from a stored value. Keys are held only inside ``AESGCM`` objects: no repr, message or log
line shows one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent_session_store.errors import DecryptionError

__all__ = ["ENV_ACTIVE", "ENV_KEYS", "FieldEncryption"]

ENV_KEYS = "AGENT_SESSION_STORE_ENCRYPTION_KEYS"
ENV_ACTIVE = "AGENT_SESSION_STORE_ENCRYPTION_ACTIVE"
KEY_BYTES = 32
NONCE_BYTES = 12
MARK = "$enc"
VERSION = "v1"
_ENVELOPE_KEYS = frozenset({MARK, "kid", "ct"})
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Prefixed to every associated data: a ciphertext made here means nothing to another use of a key.
_DOMAIN = b"agent_session_store field\x00v1\x00"
# Raw values (LangGraph's serialized bytes) start with this mark: 0xC1 is the one byte msgpack
# never uses, so no msgpack value starts with it. Then the key id's length (one byte), the key
# id, the nonce, the ciphertext and its tag.
BYTES_MARK = b"\xc1ASE1"
# The label of the digest key derived from the active key (see FieldEncryption.digest).
_DIGEST_LABEL = b"agent_session_store list digest\x00v1"


def is_envelope(value: object) -> bool:
    """Whether ``value`` is shaped like an envelope (cheap: one type check and one lookup)."""
    return isinstance(value, dict) and MARK in value


def envelope_kid(value: dict[str, Any]) -> str:
    """The key id an envelope names, as printable text for messages (``?`` if it has none)."""
    kid = value.get("kid")
    return kid if isinstance(kid, str) and _KID.fullmatch(kid) else "?"


def place(*parts: str) -> bytes:
    """The associated data for a value stored at ``parts`` (table, field, row identifiers).

    Each part is length-prefixed (:func:`place_part`), so no two different places give the
    same bytes, and ``place(*a, b) == place(*a) + place_part(b)``.
    """
    return _DOMAIN + b"".join(place_part(part) for part in parts)


def place_part(part: str) -> bytes:
    """One part of a place: its UTF-8 length in decimal, a colon, its UTF-8."""
    raw = part.encode("utf-8", "surrogatepass")
    return b"%d:%s" % (len(raw), raw)


class FieldEncryption:
    """AES-256-GCM keys for the repository's stored values: ``active`` encrypts, all decrypt.

    Args:
        keys: key id -> 32-byte key. Key ids are 1 to 64 characters of ``A-Z a-z 0-9 . _ -``;
            they are stored next to each value (not secret).
        active: the id of the key that encrypts new values.
        allow_plaintext: accept values stored in plaintext (written before encryption was
            turned on) instead of refusing them; each is encrypted when it is next written, or
            by ``agent-session-store rotate-keys``. For the migration window only: while it is
            on, whoever can write the database can plant plaintext values that are served.

    Raises:
        ImportError: the ``cryptography`` package is missing (install the ``[encryption]``
            extra).
        TypeError: a key that is not ``bytes``.
        ValueError: no keys, a key that is not 32 bytes, a malformed key id, or an ``active``
            id that is not among the keys.

    Example::

        encryption = FieldEncryption({"2026-01": secrets.token_bytes(32)}, active="2026-01")
        repo = SessionRepository(factory, encryption=encryption)
    """

    __slots__ = ("_active", "_active_kid", "_ciphers", "_digest_key", "allow_plaintext")

    def __init__(
        self, keys: Mapping[str, bytes], active: str, *, allow_plaintext: bool = False
    ) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
            raise ImportError(
                "FieldEncryption needs the cryptography package: "
                "pip install 'agent-session-store[encryption]'"
            ) from exc
        if not isinstance(keys, Mapping) or not keys:
            raise ValueError("FieldEncryption needs at least one key: {key id: 32-byte key}")
        ciphers: dict[str, Any] = {}
        for kid, key in keys.items():
            if not isinstance(kid, str) or not _KID.fullmatch(kid):
                raise ValueError(
                    "key ids are 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'; "
                    f"got {kid!r}"
                )
            if not isinstance(key, bytes | bytearray):
                raise TypeError(f"key {kid!r} must be bytes, got {type(key).__name__}")
            if len(key) != KEY_BYTES:
                raise ValueError(
                    f"key {kid!r} is {len(key)} bytes; AES-256 needs exactly {KEY_BYTES} "
                    "random bytes (secrets.token_bytes(32))"
                )
            ciphers[kid] = AESGCM(bytes(key))
        if active not in ciphers:
            raise ValueError(f"the active key id {active!r} is not among the keys given")
        self._ciphers = ciphers
        self._active_kid = active
        self._active = ciphers[active]
        # Derived, not the key: a digest never helps anyone recover the key or its ciphertexts.
        self._digest_key = hmac.new(bytes(keys[active]), _DIGEST_LABEL, hashlib.sha256).digest()
        self.allow_plaintext = allow_plaintext

    def __repr__(self) -> str:
        return (
            f"FieldEncryption(key_ids={sorted(self._ciphers)!r}, active={self._active_kid!r}, "
            f"allow_plaintext={self.allow_plaintext!r})"
        )

    @property
    def active(self) -> str:
        """The id of the key that encrypts."""
        return self._active_kid

    @property
    def key_ids(self) -> frozenset[str]:
        """The ids of every key that decrypts."""
        return frozenset(self._ciphers)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        active: str | None = None,
        allow_plaintext: bool = False,
    ) -> FieldEncryption:
        """Keys from ``AGENT_SESSION_STORE_ENCRYPTION_KEYS`` (``kid:base64key,...``).

        The active key is ``active``, else ``AGENT_SESSION_STORE_ENCRYPTION_ACTIVE``, else the
        only key listed.

        Raises:
            ValueError: the variable is unset or malformed (the message never shows a key),
                or the active key is not named where several keys are listed.
        """
        env = os.environ if environ is None else environ
        spec = env.get(ENV_KEYS, "").strip()
        if not spec:
            raise ValueError(f"{ENV_KEYS} is not set: give it kid:base64key[,kid:base64key...]")
        keys = parse_keys(spec)
        chosen = active or env.get(ENV_ACTIVE, "").strip() or None
        if chosen is None:
            if len(keys) != 1:
                raise ValueError(
                    f"{ENV_KEYS} lists {len(keys)} keys: name the one that encrypts with "
                    f"{ENV_ACTIVE} (or --active)"
                )
            chosen = next(iter(keys))
        return cls(keys, chosen, allow_plaintext=allow_plaintext)

    @classmethod
    async def from_source(
        cls,
        source: Callable[[], Awaitable[Mapping[str, bytes]]],
        active: str,
        *,
        allow_plaintext: bool = False,
    ) -> FieldEncryption:
        """Keys from an async callable (a KMS, a secrets manager), awaited once, now.

        Await it at start-up, before building the repository; to pick up new keys, build a new
        ``FieldEncryption`` (and repository) the same way. The repository never calls the
        source itself: no request ever waits on the KMS.

        Example::

            async def from_kms() -> dict[str, bytes]:
                return {"2026-01": await kms.decrypt(wrapped_key)}

            encryption = await FieldEncryption.from_source(from_kms, active="2026-01")
        """
        return cls(await source(), active, allow_plaintext=allow_plaintext)

    # -- values -----------------------------------------------------------------------------

    def seal(self, value: Any, where: bytes) -> dict[str, str]:
        """The envelope of ``value`` (any JSON value) for the place ``where`` (:func:`place`)."""
        plain = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        nonce = os.urandom(NONCE_BYTES)
        kid = self._active_kid
        sealed = self._active.encrypt(nonce, plain, where + kid.encode())
        return {MARK: VERSION, "kid": kid, "ct": base64.b64encode(nonce + sealed).decode()}

    def open(self, stored: Any, where: bytes, what: str, session_id: str | None) -> Any:
        """The value an envelope holds, or a plaintext value if ``allow_plaintext``.

        ``what`` and ``session_id`` name the value in errors (never its contents).

        Raises:
            DecryptionError: a plaintext value without ``allow_plaintext``; an envelope that
                is malformed, names a key not configured, or does not decrypt for this place.
        """
        if not is_envelope(stored):
            if self.allow_plaintext:
                return stored
            raise DecryptionError.plaintext(what, session_id)
        return self.open_envelope(stored, where, what, session_id)

    def open_envelope(
        self, stored: dict[str, Any], where: bytes, what: str, session_id: str | None
    ) -> Any:
        """Decrypt an envelope (see :meth:`open`)."""
        kid = stored.get("kid")
        if stored.keys() != _ENVELOPE_KEYS or stored[MARK] != VERSION or not isinstance(kid, str):
            raise DecryptionError.malformed(what, session_id)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError.unknown_key(what, session_id, envelope_kid(stored))
        ct = stored["ct"]
        try:
            raw = binascii.a2b_base64(ct, strict_mode=True) if isinstance(ct, str) else b""
            plain = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], where + kid.encode())
        except (binascii.Error, ValueError, _invalid_tag()) as exc:
            raise DecryptionError.failed(what, session_id, kid) from exc
        return json.loads(plain.decode())

    def needs_sealing(self, stored: Any) -> bool:
        """Whether a stored value is not yet an envelope under the active key (for rotation)."""
        return not (is_envelope(stored) and stored.get("kid") == self._active_kid)

    # -- raw values (the LangGraph checkpointer's bytes) -------------------------------------

    def seal_bytes(self, plain: bytes, where: bytes) -> bytes:
        """``plain`` sealed for the place ``where``: ``BYTES_MARK``, key id, nonce, ciphertext."""
        nonce = os.urandom(NONCE_BYTES)
        kid = self._active_kid.encode()
        sealed = self._active.encrypt(nonce, plain, where + kid)
        return b"%s%c%s%s%s" % (BYTES_MARK, len(kid), kid, nonce, sealed)

    def open_bytes(self, stored: bytes, where: bytes, what: str, session_id: str | None) -> bytes:
        """The bytes :meth:`seal_bytes` sealed for ``where`` (plaintext if ``allow_plaintext``).

        Raises:
            DecryptionError: as :meth:`open`.
        """
        if not stored.startswith(BYTES_MARK):
            if self.allow_plaintext:
                return stored
            raise DecryptionError.plaintext(what, session_id)
        kid = sealed_kid(stored)
        if kid is None:
            raise DecryptionError.malformed(what, session_id)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError.unknown_key(what, session_id, kid)
        start = len(BYTES_MARK) + 1 + len(kid)
        nonce, sealed = stored[start : start + NONCE_BYTES], stored[start + NONCE_BYTES :]
        try:
            plain: bytes = cipher.decrypt(nonce, sealed, where + kid.encode())
        except (ValueError, _invalid_tag()) as exc:
            raise DecryptionError.failed(what, session_id, kid) from exc
        return plain

    def bytes_need_sealing(self, stored: bytes) -> bool:
        """Whether stored bytes are not yet sealed under the active key (for rotation)."""
        return sealed_kid(stored) != self._active_kid

    def digest(self, data: bytes) -> bytes:
        """A keyed digest (HMAC-SHA256) of ``data``, under a key derived from the active key.

        Where a plain SHA-256 would be stored next to ciphertext (the checkpointer's list
        digests), this one tells a reader of the database nothing about the plaintext, and
        lets nobody confirm a guess of a short value. Another active key gives other digests:
        they only ever stop matching (a list stored whole once more), never match wrongly.
        """
        return hmac.new(self._digest_key, data, hashlib.sha256).digest()


def sealed_kid(stored: bytes) -> str | None:
    """The key id of bytes sealed by ``seal_bytes``; ``None`` if they are not such bytes."""
    if not stored.startswith(BYTES_MARK):
        return None
    start = len(BYTES_MARK) + 1
    if len(stored) < start or len(stored) < start + stored[start - 1]:
        return None
    try:
        kid = stored[start : start + stored[start - 1]].decode("ascii")
    except UnicodeDecodeError:
        return None
    return kid if _KID.fullmatch(kid) else None


def parse_keys(spec: str) -> dict[str, bytes]:
    """``kid:base64key,...`` as a dict; messages name key ids and positions, never keys."""
    keys: dict[str, bytes] = {}
    for i, item in enumerate(spec.split(",")):
        kid, sep, encoded = item.strip().partition(":")
        if not sep or not _KID.fullmatch(kid):
            raise ValueError(f"{ENV_KEYS}: item {i + 1} is not kid:base64key")
        if kid in keys:
            raise ValueError(f"{ENV_KEYS}: key id {kid!r} is listed twice")
        try:
            keys[kid] = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{ENV_KEYS}: the key of {kid!r} is not valid base64") from None
    return keys


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag
