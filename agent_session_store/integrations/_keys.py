"""Framework ids onto session keys, one to one: shared by the framework backends.

A framework's id (an OpenAI Agents SDK ``session_id``, a LangGraph ``thread_id``) may be any
string; a session key is printable text of 1 to 128 characters without surrounding whitespace
(``check_key``). :func:`session_key` maps the first onto the second without folding two ids
onto one key: plain ids stay as they are, others are escaped, and ids too long to escape are
hashed.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

__all__ = ["session_key"]

# The session id mapping (the module docstring): the prefix no plain key starts with, the
# prefixes of the two encoded forms, the longest key, and the characters an escaped key keeps
# (printable ASCII but the space and "%"; fixed, so the encoding does not follow Unicode data).
_RESERVED = "~"
_ESCAPED = "~esc:"
_HASHED = "~sha256:"
_MAX_KEY = 128
_KEPT = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def session_key(session_id: str) -> str:
    """The library key naming the conversation ``session_id``: one key per string, always valid.

    ``session_id`` itself when it is a key as it stands and does not start with ``~``; otherwise
    ``"~esc:"`` and its percent-encoding, or ``"~sha256:"`` and its SHA-256 digest when that
    would exceed 128 characters (see the module docstring for the whole rule).

    Raises:
        TypeError: ``session_id`` is not a string.

    Example::

        session_key("chat-42")  # 'chat-42'
        session_key(" chat-42 ")  # '~esc:%20chat-42%20'
        session_key("")  # '~esc:'
    """
    if not isinstance(session_id, str):
        raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
    if (
        1 <= len(session_id) <= _MAX_KEY
        and session_id.isprintable()  # no control characters, NUL or lone surrogates
        and session_id == session_id.strip()
        and not session_id.startswith(_RESERVED)
    ):
        return session_id
    # quote() leaves at most the whole id as it is, so an id longer than a key is hashed at once.
    if len(session_id) <= _MAX_KEY - len(_ESCAPED):
        escaped = _ESCAPED + quote(session_id, safe=_KEPT, errors="surrogatepass")
        if len(escaped) <= _MAX_KEY:
            return escaped
    return _HASHED + hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()
