"""Signed cache entries (``RedisCache(signing_keys=...)``) on real Redis and Valkey servers.

Whoever can write to Redis plants entries here, as an attacker sharing the server would: each
planted or altered entry must be a miss (the owner gets the database's answer), never served,
and counted in ``rejected``. Legitimately stored entries must still be hits, through a key
rotation too; without keys nothing changes (tests/test_cache.py pins the unsigned format).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from agent_session_store import AgentSession, RedisCache, SessionRepository
from agent_session_store._signing import Keyring
from agent_session_store.redis_cache import _epoch_key, _keys
from tests.conftest import Backend, FakeClock, cache_server_url
from tests.test_cache import GENEROUS, FakeMonotonic, Source, Widget, fetch

KEY = bytes(range(32))  # what the application signs with
OLD_KEY = bytes(range(100, 140))  # the key it used before the last rotation
STRANGER_KEY = b"s" * 32  # another application's (or an attacker's) key
OWNER, ATTACKER = "alice", "mallory"


@pytest.fixture
def redis_url(cache_server: str, request: pytest.FixtureRequest) -> str:
    """Every test here runs on Redis and on Valkey."""
    return cache_server_url(cache_server, request)


@pytest.fixture
def cache(redis_client: Redis, namespace: str) -> RedisCache:
    return RedisCache(redis_client, namespace=namespace, timeout=GENEROUS, signing_keys=[KEY])


def _header(raw: bytes) -> list[bytes]:
    return raw.partition(b"\n")[0].split(b" ")


async def _raw_value(redis_client: Redis, name: str) -> bytes:
    raw = await redis_client.get(name)
    assert isinstance(raw, bytes), f"nothing stored under {name}"
    return raw


def _sign(key: bytes, fmt: bytes, name: str, epoch: bytes, gen: bytes, schema: bytes,
          body: bytes) -> bytes:  # fmt: skip
    """A signed entry made the way docs/security.md describes it, with any key."""
    key_id = hmac.digest(key, b"agent_session_store cache signing key id", "sha256")[:4].hex()
    header = b" ".join((fmt, key_id.encode(), epoch, gen, schema))
    message = b"agent_session_store cache entry\n%d:%s%s\n%s" % (
        len(name.encode()),
        name.encode(),
        header,
        body,
    )
    signature = hmac.new(key, message, hashlib.sha256).hexdigest().encode()
    return header + b" " + signature + b"\n" + body


# -- the format --------------------------------------------------------------------------------


@pytest.mark.parametrize("decode_responses", [False, True])
async def test_signed_value_is_served_as_a_hit(
    redis_url: str, namespace: str, decode_responses: bool
) -> None:
    client = Redis.from_url(redis_url, decode_responses=decode_responses)
    try:
        cache = RedisCache(client, namespace=namespace, timeout=GENEROUS, signing_keys=[KEY])
        await _hits_after_one_miss(cache)
    finally:
        await client.aclose()


async def _hits_after_one_miss(cache: RedisCache) -> None:
    source = Source(a="first")
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
    await cache.drain()
    for _ in range(3):
        assert await fetch(cache, source, "a") == Widget(widget_id="a", name="first")
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.loads) == (3, 1, 1)
    assert (stats.rejected, stats.discarded) == (0, 0)


async def test_signed_session_is_served_as_a_hit_through_the_repository(
    db: Backend, clock: FakeClock, cache: RedisCache
) -> None:
    repo = SessionRepository(db.factory, clock=clock, cache=cache)
    session = await repo.create_session("planner", OWNER, {"step": 1})
    await repo.add_checkpoint(session.session_id, "first", {"n": 1})
    first = await repo.get_session(session.session_id)
    await cache.drain()
    for _ in range(3):
        assert await repo.get_session(session.session_id, user_id=OWNER) == first
    assert await repo.get_session(session.session_id, user_id=ATTACKER) is None
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.rejected, stats.discarded) == (4, 1, 0, 0)


async def test_signed_value_is_hmac_sha256_over_its_key_generation_epoch_schema_and_body(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    source = Source(a="first")
    await fetch(cache, source, "a")
    await cache.invalidate(Widget, ["a"])  # so that the key has a generation
    await fetch(cache, source, "a")
    await cache.drain()
    keys = _keys(namespace, Widget, "a")
    raw = await _raw_value(redis_client, keys.value)
    fmt, key_id, epoch, gen, schema, signature = _header(raw)
    assert fmt == b"as1s" and len(key_id) == 8 and len(signature) == 64
    assert epoch == await redis_client.get(_epoch_key(namespace))
    assert gen == await redis_client.get(keys.gen)
    body = raw.partition(b"\n")[2]
    assert Widget.model_validate_json(body) == Widget(widget_id="a", name="first")
    # Recomputed from the documented recipe alone: the format is pinned.
    assert _sign(KEY, fmt, keys.value, epoch, gen, schema, body) == raw


async def test_key_without_a_generation_signs_a_dash(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    await fetch(cache, Source(a="first"), "a")
    await cache.drain()
    assert _header(await _raw_value(redis_client, _keys(namespace, Widget, "a").value))[3] == b"-"


async def test_without_keys_signed_values_are_unusable_not_rejected(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    await fetch(cache, Source(a="signed"), "a")
    await cache.drain()
    plain = RedisCache(redis_client, namespace=namespace, timeout=GENEROUS)
    assert await fetch(plain, Source(a="loaded"), "a") == Widget(widget_id="a", name="loaded")
    assert (plain.stats.discarded, plain.stats.rejected, plain.stats.hits) == (1, 0, 0)
    await plain.drain()
    assert _header(await _raw_value(redis_client, _keys(namespace, Widget, "a").value))[0] == b"as1"


async def test_signing_adds_no_redis_command(redis_client: Redis, namespace: str) -> None:
    async def commands() -> int:
        return int((await redis_client.info("stats"))["total_commands_processed"])

    async def workload(cache: RedisCache) -> int:
        source, before = Source(a="first"), await commands()
        for _ in range(2):  # a miss (and its store), a hit, a write
            await fetch(cache, source, "a")
            await cache.drain()
            assert await fetch(cache, source, "a") == source.rows["a"]
            await cache.invalidate(Widget, ["a"])
        return await commands() - before

    def cache(label: str, keys: list[bytes] | None) -> RedisCache:
        return RedisCache(redis_client, namespace=f"{namespace}-{label}", timeout=GENEROUS,
                          signing_keys=keys)  # fmt: skip

    await workload(cache("warm-up", None))  # the server caches the scripts once
    signed = cache("signed", [KEY])
    assert await workload(signed) == await workload(cache("plain", None))
    assert (signed.stats.hits, signed.stats.rejected) == (2, 0)


# -- benign mismatches are discarded, not rejected ---------------------------------------------


async def test_new_epoch_drops_signed_values_as_discarded(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    await fetch(cache, Source(a="old"), "a")
    await cache.drain()
    await redis_client.set(_epoch_key(namespace), b"0123456789abcdef")  # as a repair does
    assert await fetch(cache, Source(a="new"), "a") == Widget(widget_id="a", name="new")
    assert (cache.stats.discarded, cache.stats.rejected, cache.stats.hits) == (1, 0, 0)


async def test_value_whose_generation_expired_is_discarded_not_rejected(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    source = Source(a="first")
    await cache.invalidate(Widget, ["a"])
    await fetch(cache, source, "a")
    await cache.drain()
    keys = _keys(namespace, Widget, "a")
    await redis_client.delete(keys.gen)  # it lives twice the ttl; the value may outlive it
    source.rows["a"] = Widget(widget_id="a", name="reloaded")
    assert await fetch(cache, source, "a") == Widget(widget_id="a", name="reloaded")
    assert (cache.stats.discarded, cache.stats.rejected) == (1, 0)


# -- planted and altered entries ---------------------------------------------------------------


@dataclass
class Scene:
    """A victim's session, cached by the application, then changed; what an attacker can see."""

    redis: Redis
    namespace: str
    victim: AgentSession  # the database's truth now
    name: str  # the Redis key of the victim's value
    good: bytes  # the entry the application stored for the truth (signed, current)
    older: bytes  # the entry it had stored before the last write (signed, older generation)
    other: bytes  # the entry it stored for another user's session
    epoch: bytes
    gen: bytes
    schema: bytes

    def forged(self, key: bytes = KEY, name: str | None = None) -> bytes:
        """The victim's session made the attacker's, signed with ``key`` as if at ``name``."""
        body = self.victim.model_copy(update={"user_id": ATTACKER, "context": {"pwned": 1}})
        raw = body.model_dump_json(by_alias=True, round_trip=True).encode()
        fields = (self.epoch, self.gen, self.schema)
        return _sign(key, b"as1s", name or self.name, *fields, raw)


def _swap_field(raw: bytes, index: int, value: bytes) -> bytes:
    header, _, body = raw.partition(b"\n")
    fields = header.split(b" ")
    fields[index] = value
    return b" ".join(fields) + b"\n" + body


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


async def _unsigned(s: Scene) -> bytes:
    body = s.forged().partition(b"\n")[2]
    return b" ".join((b"as1", s.epoch, s.schema)) + b"\n" + body


async def _other_namespace(s: Scene) -> bytes:
    """What another application sharing the key stored for this id, under our epoch and gen."""
    other = f"{s.namespace}-other"
    sid = s.victim.session_id
    await s.redis.set(_epoch_key(other), s.epoch)
    await s.redis.set(_keys(other, AgentSession, sid).gen, s.gen)
    theirs = RedisCache(s.redis, namespace=other, timeout=GENEROUS, signing_keys=[KEY])
    forged = AgentSession.model_validate_json(s.forged().partition(b"\n")[2])

    async def load() -> AgentSession:
        return forged

    await theirs.fetch(AgentSession, sid, load, id_field="session_id")
    await theirs.drain()
    return await _raw_value(s.redis, _keys(other, AgentSession, sid).value)


async def _other_model(s: Scene) -> bytes:
    return s.forged(name=_keys(s.namespace, Widget, s.victim.session_id).value)


async def _older_generation_relabelled(s: Scene) -> bytes:
    return _swap_field(s.older, 3, s.gen)


async def _other_user_id(s: Scene) -> bytes:
    owner = f'"user_id":"{OWNER}"'.encode()
    assert owner in s.good
    return s.good.replace(owner, f'"user_id":"{ATTACKER}"'.encode())


async def _payload_byte(s: Scene) -> bytes:
    at = s.good.index(b'"secret":"') + len(b'"secret":"')
    return _flip(s.good, at)


async def _signature_byte(s: Scene) -> bytes:
    return _swap_field(s.good, 5, _flip(_header(s.good)[5], 10))


async def _key_id(s: Scene) -> bytes:
    stranger_id = hmac.digest(STRANGER_KEY, b"agent_session_store cache signing key id", "sha256")
    return _swap_field(s.good, 1, stranger_id[:4].hex().encode())


PLANTS: dict[str, Callable[[Scene], Awaitable[bytes]]] = {
    "unsigned": _unsigned,
    "wrong key": lambda s: _const(s.forged(STRANGER_KEY)),
    "rotated-out key": lambda s: _const(s.forged(OLD_KEY)),
    "other namespace": _other_namespace,
    "other model": _other_model,
    "another session copied": lambda s: _const(s.other),
    "older generation replayed": lambda s: _const(s.older),
    "older generation relabelled": _older_generation_relabelled,
    "other user id": _other_user_id,
    "garbage": lambda s: _const(b"\x80\x04\x95 pickle?"),
    "empty": lambda s: _const(b""),
    "truncated": lambda s: _const(s.good[: len(s.good) - 10]),
    "truncated header": lambda s: _const(s.good.partition(b"\n")[0]),
    "payload byte flipped": _payload_byte,
    "signature byte flipped": _signature_byte,
    "key id of another key": _key_id,
}


async def _const(value: bytes) -> bytes:
    return value


@pytest.fixture
async def scene(
    db: Backend, clock: FakeClock, cache: RedisCache, redis_client: Redis, namespace: str
) -> Scene:
    repo = SessionRepository(db.factory, clock=clock, cache=cache)
    victim = await repo.create_session("planner", OWNER, {"secret": "victim's"})
    other = await repo.create_session("planner", ATTACKER, {"secret": "attacker's"})
    for sid in (victim.session_id, other.session_id):
        await repo.get_session(sid)
    await cache.drain()
    name = _keys(namespace, AgentSession, victim.session_id).value
    older = await _raw_value(redis_client, name)
    other_name = _keys(namespace, AgentSession, other.session_id).value
    other_raw = await _raw_value(redis_client, other_name)
    await repo.add_checkpoint(victim.session_id, "later", {"n": 1})  # a new generation
    truth = await repo.get_session(victim.session_id)
    assert truth is not None
    await cache.drain()
    good = await _raw_value(redis_client, name)
    _, _, epoch, gen, schema, _ = _header(good)
    assert gen != _header(older)[3]
    return Scene(redis_client, namespace, truth, name, good, older, other_raw, epoch, gen, schema)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)  # the database plays no part here
@pytest.mark.parametrize("plant", list(PLANTS.values()), ids=list(PLANTS))
async def test_planted_entry_is_never_served_and_is_counted(
    scene: Scene,
    cache: RedisCache,
    db: Backend,
    clock: FakeClock,
    plant: Callable[[Scene], Awaitable[bytes]],
) -> None:
    repo = SessionRepository(db.factory, clock=clock, cache=cache)
    truth = await SessionRepository(db.factory, clock=clock).get_session(scene.victim.session_id)
    assert truth == scene.victim
    before = cache.stats
    await scene.redis.set(scene.name, await plant(scene))
    # The attacker asks first: a served plant would hand them the victim's session.
    assert await repo.get_session(scene.victim.session_id, user_id=ATTACKER) is None
    after = cache.stats
    assert after.rejected == before.rejected + 1
    assert (after.hits, after.loads, after.errors) == (before.hits, before.loads + 1, 0)
    await cache.drain()  # the database's copy replaced the plant
    assert await repo.get_session(scene.victim.session_id, user_id=OWNER) == truth
    assert cache.stats.hits == before.hits + 1
    assert cache.stats.rejected == before.rejected + 1


async def test_entry_of_a_key_that_no_longer_loads_is_rejected_and_removed(
    cache: RedisCache, redis_client: Redis, namespace: str
) -> None:
    name = _keys(namespace, Widget, "gone").value
    await redis_client.set(name, b'as1 x y\n{"widget_id":"gone","name":"planted"}')
    assert await fetch(cache, Source(), "gone") is None
    await cache.drain()
    assert cache.stats.rejected == 1
    assert await redis_client.exists(name) == 0


# -- rotation ----------------------------------------------------------------------------------


async def test_rotation_serves_the_old_key_while_listed_second_and_rejects_it_once_dropped(
    redis_client: Redis, namespace: str
) -> None:
    def cache(*keys: bytes) -> RedisCache:
        return RedisCache(redis_client, namespace=namespace, timeout=GENEROUS, signing_keys=keys)

    before, during, after = cache(OLD_KEY), cache(KEY, OLD_KEY), cache(KEY)
    source = Source(a="signed with the old key", b="signed with the old key")
    for key in ("a", "b"):
        await fetch(before, source, key)
    await before.drain()
    assert await fetch(during, source, "a") == source.rows["a"]  # the old key still verifies
    assert (during.stats.hits, during.stats.rejected, source.loads) == (1, 0, 2)
    assert await fetch(after, source, "b") == source.rows["b"]  # dropped: a miss
    assert (after.stats.hits, after.stats.rejected, source.loads) == (0, 1, 3)
    await after.drain()  # stored again, signed with the new key
    assert await fetch(during, source, "b") == source.rows["b"]
    assert await fetch(after, source, "b") == source.rows["b"]
    assert (during.stats.hits, after.stats.hits, source.loads) == (2, 1, 3)
    await during.invalidate(Widget, ["a"])
    await fetch(during, source, "a")
    await during.drain()
    assert await fetch(after, source, "a") == source.rows["a"]  # the newest key signs
    assert after.stats.hits == 2


# -- keys and logs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "error", "match"),
    [
        ([b"k" * 31], ValueError, "shorter than 32 bytes"),
        ([KEY, b"tiny-KEY-7f3a"], ValueError, r"signing_keys\[1\] is shorter"),
        ([], ValueError, "empty"),
        ([KEY, KEY], ValueError, "repeats an earlier key"),
        (KEY, TypeError, "list of keys"),
        (["a text key that is long enough to pass"], TypeError, "must be bytes"),
    ],
    ids=["short", "second short", "empty", "repeated", "bare bytes", "str"],
)
def test_bad_signing_keys_are_refused_without_showing_them(
    redis_client: Redis, keys: list[bytes], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as raised:
        RedisCache(redis_client, signing_keys=keys)
    for key in keys if isinstance(keys, list) else [keys]:
        shown = key if isinstance(key, str) else key.decode("latin-1")
        assert shown not in str(raised.value)
        assert repr(key) not in str(raised.value)


async def test_keys_never_appear_in_repr_stats_or_logs(
    redis_client: Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = b"0123456789-very-secret-key-bytes!"
    cache = RedisCache(redis_client, namespace=namespace, signing_keys=[secret, KEY])
    await fetch(cache, Source(a="first"), "a")
    await cache.drain()
    await redis_client.set(_keys(namespace, Widget, "a").value, b"garbage")
    await fetch(cache, Source(a="first"), "a")
    await cache.drain()
    assert cache.stats.rejected == 1 and caplog.records
    shown = " ".join((repr(cache), repr(cache._keyring), repr(cache.stats), caplog.text))
    for key in (secret, KEY):
        for form in (key.decode("latin-1"), key.hex(), repr(key)):
            assert form not in shown


async def test_rejections_are_logged_once_per_cooldown_without_the_entry(
    redis_client: Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent_session_store.redis_cache")
    monotonic = FakeMonotonic()
    cache = RedisCache(redis_client, namespace=namespace, timeout=GENEROUS, signing_keys=[KEY],
                       monotonic=monotonic)  # fmt: skip
    name = _keys(namespace, Widget, "a").value
    for _ in range(3):
        for _ in range(4):
            await redis_client.set(name, b'as1 e s\n{"widget_id":"a","name":"PLANTED-MARKER"}')
            assert await fetch(cache, Source(a="truth"), "a") == Widget(widget_id="a", name="truth")
            await cache.drain()
        monotonic.advance(5)
    assert cache.stats.rejected == 12
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, [r.getMessage() for r in warnings]
    assert "rejected the cached Widget 'a' (unsigned)" in warnings[0].getMessage()
    assert "PLANTED-MARKER" not in caplog.text


def test_keyring_signs_with_the_first_key_and_names_it() -> None:
    ring = Keyring([KEY, OLD_KEY])
    assert ring.signer == ring.key_ids[0] != ring.key_ids[1]
    assert "Keyring of 2 key(s)" in repr(ring)
    header = b"as1s " + ring.signer + b" epoch - schema"
    signature = ring.sign(b"name", header, b"{}")
    assert ring.verify(ring.signer, b"name", header, b"{}", signature) == ""
    assert ring.verify(ring.key_ids[1], b"name", header, b"{}", signature) != ""
    assert ring.verify(ring.signer, b"nam", b"e" + header, b"{}", signature) != ""
    assert ring.verify(ring.signer, b"name", header, b"{}", signature[:-1]) != ""
