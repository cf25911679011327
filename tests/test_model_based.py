"""Model-based test: hypothesis drives the repository and a plain in-memory model side by side.

Every rule calls the repository and works out, from the model alone, what the call must return or
raise; after every step the whole database (both tables, read directly) must equal the model. It
runs on SQLite and PostgreSQL, each without and with the Redis cache, so a stale cached read shows
up as a disagreement with the model.

Hypothesis' state machines are synchronous and the test loop is session-scoped, so each example
owns an ``asyncio.Runner`` and builds its own engine (and Redis client) inside it, and the whole
``run_state_machine_as_test`` runs in a worker thread. Examples are derandomized: the same steps
on every run. ``pytest -s`` prints how many examples and steps ran.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import (
    AgentSession,
    ConcurrentUpdateError,
    InvalidStateTransitionError,
    RedisCache,
    SessionCheckpoint,
    SessionExistsError,
    SessionNotFoundError,
    SessionRepository,
    SessionState,
    create_engine,
)
from agent_session_store.tables import checkpoints_table, sessions_table, shared_state_table
from tests.conftest import Backend, FakeClock

T = TypeVar("T")

RECENT = 3  # small, so get_session's "newest N checkpoints" window is exercised
MAX_EXAMPLES = 30
STEPS = 40
ACTIVE, PAUSED, COMPLETED, FAILED, DELETED = (
    SessionState.ACTIVE,
    SessionState.PAUSED,
    SessionState.COMPLETED,
    SessionState.FAILED,
    SessionState.DELETED,
)
# The rules, written out independently of agent_session_store.models: where a write may take a
# session. Staying in the same state is always allowed; DELETED is reached by delete_session only.
MOVES: dict[SessionState, set[SessionState]] = {
    ACTIVE: {PAUSED, COMPLETED, FAILED},
    PAUSED: {ACTIVE, COMPLETED, FAILED},
    COMPLETED: set(),
    FAILED: set(),
    DELETED: set(),
}
USERS = ["alice", "bob", ""]
KEYS = ["chat-1", "chat-2"]
SHARED_KEYS = ["theme", "lang", "n"]
AGENTS = ["planner", "coder"]

text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
json_objects = st.dictionaries(text, json_values, max_size=3)
checkpoint_names = st.sampled_from(["tool_called", "tool_done", "note", "step-\u00e9t\u00e9"])
changes = st.none() | st.tuples(text, json_values)
new_checkpoints = st.lists(st.tuples(checkpoint_names, json_objects), max_size=3)
actions = st.sampled_from(
    ["stay", "stay", "pause", "resume", "complete", "fail"]
    + [f"force:{state.value}" for state in (ACTIVE, PAUSED, COMPLETED, FAILED)]
)


def moves_to(current: SessionState, target: SessionState) -> bool:
    return target == current or target in MOVES[current]


# A finished session's context and checkpoints are final.
FINISHED = (COMPLETED, FAILED)


def same_json(a: dict[str, Any], b: dict[str, Any], *, key_order_counts: bool) -> bool:
    """Equal as JSON is written (``true`` is not ``1``), as the repository compares a finished
    session's context: SQLite also tells keys in another order apart, PostgreSQL does not."""
    return json.dumps(a, sort_keys=not key_order_counts) == json.dumps(
        b, sort_keys=not key_order_counts
    )


@dataclass
class ModelSession:
    """What the database must hold for one session."""

    session_id: str
    agent_type: str
    user_id: str
    state: SessionState
    context: dict[str, Any]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    last_heartbeat: datetime
    version: int = 1
    history: list[tuple[int, str, dict[str, Any], datetime]] = field(default_factory=list)
    key: str | None = None

    def visible_to(self, user_id: str | None) -> bool:
        return self.state is not DELETED and user_id in (None, self.user_id)

    def row(self) -> tuple[Any, ...]:
        return (
            self.agent_type, self.user_id, self.state.value, self.context, self.metadata,
            len(self.history), self.version, self.created_at, self.updated_at, self.last_heartbeat,
            self.key,
        )  # fmt: skip

    def append(self, name: str, data: dict[str, Any], when: datetime) -> int:
        seq = len(self.history) + 1
        self.history.append((seq, name, copy.deepcopy(data), when))
        return seq


def view(session: AgentSession) -> tuple[Any, ...]:
    """The fields of a returned session that the model predicts, in ``ModelSession.row`` order."""
    return (
        session.agent_type, session.user_id, SessionState(session.state).value, session.context,
        session.metadata, session.checkpoint_count, session.version, session.created_at,
        session.updated_at, session.last_heartbeat, session.key,
    )  # fmt: skip


def checkpoint_view(session: AgentSession) -> list[tuple[Any, ...]]:
    return [(cp.seq, cp.name, cp.data, cp.timestamp) for cp in session.checkpoints]


class RepositoryMachine(RuleBasedStateMachine):
    """One example: a fresh database, a fresh cache namespace, and the model."""

    url: ClassVar[str]
    redis_url: ClassVar[str | None]
    counts: ClassVar[Counter[str]]

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.clock = FakeClock()
        self.model: dict[str, ModelSession] = {}
        # Every copy of each session handed out so far, oldest first: updates write back
        # the newest (usually fresh) or an older (stale) one.
        self.held: dict[str, list[AgentSession]] = {}
        # (agent_type, scope, user_id) -> the shared-state document
        self.shared: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.engine = create_engine(self.url)
        self.redis: Redis | None = None
        self.cache: RedisCache | None = None
        if self.redis_url is not None:
            self.redis = Redis.from_url(self.redis_url)
            self.cache = RedisCache(self.redis, namespace=f"model-{uuid.uuid4().hex[:12]}")
        self.repo = SessionRepository(
            async_sessionmaker(self.engine, expire_on_commit=False),
            recent_checkpoints=RECENT,
            cache=self.cache,
            clock=self.clock,
        )
        self.run(self._truncate())
        self.counts["examples"] += 1

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return self.runner.run(wrapped())

    def outcome(self, call: Callable[[], Awaitable[T]]) -> T | Exception:
        try:
            return self.run(call())
        except Exception as exc:  # compared with the model's expectation by the caller
            return exc

    def hold(self, session: AgentSession) -> None:
        self.held.setdefault(session.session_id, []).append(session.model_copy(deep=True))

    def step(self, name: str) -> None:
        self.counts["steps"] += 1
        self.counts[name] += 1

    async def _truncate(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(checkpoints_table))
            await conn.execute(delete(sessions_table))
            await conn.execute(delete(shared_state_table))

    def teardown(self) -> None:
        if self.cache is not None:
            stats = self.cache.stats
            self.counts["cache hits"] += stats.hits
            self.counts["cache misses"] += stats.misses
            self.counts["cache errors (timeouts under load)"] += stats.errors
        try:
            self.run(self.engine.dispose())
            if self.redis is not None:
                self.run(self.redis.aclose())
        finally:
            self.runner.close()

    # -- rules ----------------------------------------------------------------------------

    @initialize(target=sessions)
    def first_session(self) -> str:
        return self._create("planner", "alice", {"step": 0}, {})

    @rule(
        target=sessions,
        agent_type=st.sampled_from(AGENTS),
        user_id=st.sampled_from(USERS),
        context=json_objects,
        metadata=json_objects,
    )
    def create(
        self, agent_type: str, user_id: str, context: dict[str, Any], metadata: dict[str, Any]
    ) -> str:
        return self._create(agent_type, user_id, context, metadata)

    def _create(
        self,
        agent_type: str,
        user_id: str,
        context: dict[str, Any],
        metadata: dict[str, Any],
        key: str | None = None,
    ) -> str:
        self.step("create")
        created = self.run(
            self.repo.create_session(agent_type, user_id, context, metadata, key=key)
        )
        now = self.clock.now
        model = ModelSession(
            created.session_id, agent_type, user_id, ACTIVE, copy.deepcopy(context),
            copy.deepcopy(metadata), now, now, now, key=key,
        )  # fmt: skip
        model.append("session_created", {"agent_type": agent_type, "user_id": user_id}, now)
        self.model[created.session_id] = model
        assert view(created) == model.row()
        assert checkpoint_view(created) == model.history
        self.hold(created)
        return created.session_id

    @rule(
        session_id=st.one_of(sessions, st.uuids().map(str)),
        as_user=st.sampled_from([None, *USERS]),
        window=st.sampled_from([None, None, 0, 1, 6]),
    )
    def get(self, session_id: str, as_user: str | None, window: int | None) -> None:
        self.step("get")
        model = self.model.get(session_id)
        for _ in range(2):  # the second read is usually answered by the cache, when there is one
            got = self.run(
                self.repo.get_session(session_id, user_id=as_user, recent_checkpoints=window)
            )
            if model is None or not model.visible_to(as_user):
                assert got is None, f"got {got!r}, expected nothing"
                continue
            assert got is not None, "a visible session was not found"
            self._check_read(got, model, window)

    def _check_read(self, got: AgentSession, model: ModelSession, window: int | None) -> None:
        assert view(got) == model.row()
        n = RECENT if window is None else window
        assert checkpoint_view(got) == (model.history[-n:] if n else [])
        if window is None:
            self.hold(got)

    # -- keys, rewind, batches, hard delete, shared state ---------------------------------

    @rule(
        target=sessions,
        agent_type=st.sampled_from(AGENTS),
        user_id=st.sampled_from(USERS),
        key=st.sampled_from(KEYS),
        reuse=st.none() | st.integers(0, 100),
    )
    def create_with_key(self, agent_type: str, user_id: str, key: str, reuse: int | None) -> Any:
        agent_type, user_id, key = self._key_of(agent_type, user_id, key, reuse)
        if self._keyed(agent_type, user_id, key) is None:
            return self._create(agent_type, user_id, {}, {}, key)
        self.step("create_with_key: taken")
        result = self.outcome(lambda: self.repo.create_session(agent_type, user_id, key=key))
        assert isinstance(result, SessionExistsError), result
        return multiple()

    def _key_of(
        self, agent_type: str, user_id: str, key: str, reuse: int | None
    ) -> tuple[str, str, str]:
        """The drawn (agent_type, user_id, key), or with ``reuse`` those of a live keyed session.

        Live ones: the drawn triples already reach deleted and unknown keys; reusing a live
        session's makes a found key (and a taken one) common in every run, whatever else the
        draws do (they differ between a run of this file alone and of the whole suite).
        """
        keyed = [m for m in self.model.values() if m.key is not None and m.state is not DELETED]
        if reuse is None or not keyed:
            return agent_type, user_id, key
        m = keyed[reuse % len(keyed)]
        assert m.key is not None
        return m.agent_type, m.user_id, m.key

    def _keyed(self, agent_type: str, user_id: str, key: str) -> ModelSession | None:
        live = [
            m
            for m in self.model.values()
            if (m.agent_type, m.user_id, m.key) == (agent_type, user_id, key)
            and m.state is not DELETED
        ]
        assert len(live) <= 1
        return live[0] if live else None

    @rule(
        agent_type=st.sampled_from(AGENTS),
        user_id=st.sampled_from(USERS),
        key=st.sampled_from(KEYS),
        window=st.sampled_from([None, 0, 2, 6]),
        reuse=st.none() | st.integers(0, 100),
    )
    def get_by_key(
        self, agent_type: str, user_id: str, key: str, window: int | None, reuse: int | None
    ) -> None:
        self.step("get_session_by_key")
        agent_type, user_id, key = self._key_of(agent_type, user_id, key, reuse)
        model = self._keyed(agent_type, user_id, key)
        for _ in range(2):
            got = self.run(
                self.repo.get_session_by_key(
                    agent_type, user_id, key=key, recent_checkpoints=window
                )
            )
            if model is None:
                assert got is None, f"got {got!r}, expected nothing"
                continue
            assert got is not None and got.session_id == model.session_id
            self._check_read(got, model, window)
            self.counts["get_session_by_key: found"] += 1

    @rule(
        session_id=st.one_of(sessions, st.uuids().map(str)),
        items=new_checkpoints,
        as_user=st.sampled_from([None, *USERS]),
        minutes_ago=st.none() | st.integers(0, 600),
    )
    def add_checkpoints(
        self,
        session_id: str,
        items: list[tuple[str, dict[str, Any]]],
        as_user: str | None,
        minutes_ago: int | None,
    ) -> None:
        self.step("add_checkpoints")
        now = self.clock.now
        at = None if minutes_ago is None else now - timedelta(minutes=minutes_ago)
        result = self.outcome(
            lambda: self.repo.add_checkpoints(session_id, items, user_id=as_user, timestamp=at)
        )
        model = self.model.get(session_id)
        if not items:
            assert result == []
            return
        if model is None or not model.visible_to(as_user):
            assert isinstance(result, SessionNotFoundError), result
            return
        if model.state in FINISHED:
            assert isinstance(result, InvalidStateTransitionError), result
            return
        assert isinstance(result, list), result
        expected = [model.append(name, data, at or now) for name, data in items]
        model.version += 1
        model.updated_at = now
        assert [(cp.seq, cp.name, cp.data, cp.timestamp) for cp in result] == [
            h for h in model.history if h[0] in expected
        ]

    @rule(
        session_id=st.one_of(sessions, st.uuids().map(str)), as_user=st.sampled_from([None, *USERS])
    )
    def pop(self, session_id: str, as_user: str | None) -> None:
        self.step("pop_checkpoint")
        result = self.outcome(lambda: self.repo.pop_checkpoint(session_id, user_id=as_user))
        model = self.model.get(session_id)
        if model is None or not model.visible_to(as_user):
            assert isinstance(result, SessionNotFoundError), result
            return
        if model.state in FINISHED:
            assert isinstance(result, InvalidStateTransitionError), result
            return
        if len(model.history) == 1:
            assert result is None
            self.counts["pop: nothing to pop"] += 1
            return
        assert isinstance(result, SessionCheckpoint), result
        assert (result.seq, result.name, result.data, result.timestamp) == model.history.pop()
        model.version += 1
        model.updated_at = self.clock.now

    @rule(
        session_id=st.one_of(sessions, st.uuids().map(str)),
        after_seq=st.integers(1, 6),
        as_user=st.sampled_from([None, *USERS]),
    )
    def truncate(self, session_id: str, after_seq: int, as_user: str | None) -> None:
        self.step("truncate_checkpoints")
        result = self.outcome(
            lambda: self.repo.truncate_checkpoints(session_id, after_seq, user_id=as_user)
        )
        model = self.model.get(session_id)
        if model is None or not model.visible_to(as_user):
            assert isinstance(result, SessionNotFoundError), result
            return
        if model.state in FINISHED:
            assert isinstance(result, InvalidStateTransitionError), result
            return
        removed = max(0, len(model.history) - after_seq)
        assert result == removed
        if removed:
            del model.history[after_seq:]
            model.version += 1
            model.updated_at = self.clock.now

    @rule(
        session_id=st.one_of(sessions, st.uuids().map(str)), as_user=st.sampled_from([None, *USERS])
    )
    def hard_delete(self, session_id: str, as_user: str | None) -> None:
        self.step("delete (hard)")
        deleted = self.run(self.repo.delete_session(session_id, user_id=as_user, hard=True))
        model = self.model.get(session_id)
        expected = model is not None and as_user in (None, model.user_id)
        assert deleted is expected
        if expected:
            del self.model[session_id]

    @rule(
        agent_type=st.sampled_from(AGENTS),
        user_id=st.sampled_from([None, *USERS]),
        changes=st.dictionaries(st.sampled_from(SHARED_KEYS), json_values, max_size=2),
        remove=st.sets(st.sampled_from(SHARED_KEYS), max_size=2),
    )
    def update_shared_state(
        self, agent_type: str, user_id: str | None, changes: dict[str, Any], remove: set[str]
    ) -> None:
        self.step("update_shared_state")
        remove -= changes.keys()
        got = self.run(
            self.repo.update_shared_state(agent_type, changes, user_id=user_id, remove=remove)
        )
        scope = (agent_type, "app" if user_id is None else "user", user_id or "")
        doc = {k: v for k, v in self.shared.get(scope, {}).items() if k not in remove}
        self.shared[scope] = doc | copy.deepcopy(changes)
        assert got == self.shared[scope]
        assert self.run(self.repo.get_shared_state(agent_type, user_id=user_id)) == got

    def _update(
        self,
        held: AgentSession,
        context_change: tuple[str, Any] | None,
        metadata_change: dict[str, Any] | None,
        new_checkpoints: list[tuple[str, dict[str, Any]]],
        action: str,
    ) -> None:
        work = held.model_copy(deep=True)  # the held copy stays as it was read
        if context_change is not None:
            work.context[context_change[0]] = context_change[1]
        if metadata_change is not None:
            work.metadata = metadata_change
        for name, data in new_checkpoints:
            work.checkpoint(name, data)
        before = work.state
        if action.startswith("force:"):
            work.state = SessionState(action.removeprefix("force:"))
        elif action != "stay":
            wanted = {"pause": PAUSED, "resume": ACTIVE, "complete": COMPLETED, "fail": FAILED}
            try:
                if action == "fail":
                    work.fail("gave up")
                else:
                    getattr(work, action)()
            except InvalidStateTransitionError:
                assert wanted[action] not in MOVES[before]
                self.counts["update: refused in memory"] += 1
                return
            assert wanted[action] in MOVES[before]
        target = SessionState(work.state)
        pending = work.pending_checkpoints

        result = self.outcome(lambda: self.repo.update_session(work))
        stored = self.model.get(work.session_id)
        if stored is None or stored.state is DELETED:
            assert isinstance(result, SessionNotFoundError), result
            self.counts["update: not found"] += 1
            return
        if stored.version != work.version:
            assert isinstance(result, ConcurrentUpdateError), result
            assert (result.expected_version, result.actual_version) == (
                work.version,
                stored.version,
            )
            self.counts["update: conflict"] += 1
            return
        if not moves_to(stored.state, target):
            assert isinstance(result, InvalidStateTransitionError), result
            assert (result.current, result.target) == (stored.state.value, target.value)
            self.counts["update: invalid transition"] += 1
            return
        sqlite = self.url.startswith("sqlite")
        if stored.state in FINISHED and (
            pending or not same_json(work.context, stored.context, key_order_counts=sqlite)
        ):
            assert isinstance(result, InvalidStateTransitionError), result
            assert (result.current, result.target) == (stored.state.value, target.value)
            assert "final" in str(result)
            self.counts["update: finished is final"] += 1
            return
        assert isinstance(result, AgentSession), result
        self.counts["update: ok"] += 1
        now = self.clock.now
        stored.context = copy.deepcopy(work.context)
        stored.metadata = copy.deepcopy(work.metadata)
        stored.state = target
        stored.version += 1
        stored.updated_at = stored.last_heartbeat = now
        for cp in pending:
            stored.append(cp.name, cp.data, cp.timestamp)
        assert view(result) == stored.row()
        kept = [c for c in checkpoint_view(work) if c[0] is not None]
        kept += stored.history[len(stored.history) - len(pending) :]
        assert checkpoint_view(result) == kept[-RECENT:]
        self.hold(result)

    @rule(
        session_id=sessions,
        context_change=changes,
        metadata_change=st.none() | json_objects,
        new_checkpoints=new_checkpoints,
        action=actions,
    )
    def update_fresh_copy(
        self,
        session_id: str,
        context_change: tuple[str, Any] | None,
        metadata_change: dict[str, Any] | None,
        new_checkpoints: list[tuple[str, dict[str, Any]]],
        action: str,
    ) -> None:
        """Read the session as its owner, change it and write it back."""
        self.step("update (fresh copy)")
        model = self.model.get(session_id)
        if model is None:  # removed by a hard delete
            return
        fresh = self.run(self.repo.get_session(session_id, user_id=model.user_id))
        assert (fresh is None) is (model.state is DELETED)
        held = fresh if fresh is not None else self.held[session_id][-1]
        self._update(held, context_change, metadata_change, new_checkpoints, action)

    @rule(
        session_id=sessions,
        pick=st.integers(0, 1000),
        context_change=changes,
        metadata_change=st.none() | json_objects,
        new_checkpoints=new_checkpoints,
        action=actions,
    )
    def update_held_copy(
        self,
        session_id: str,
        pick: int,
        context_change: tuple[str, Any] | None,
        metadata_change: dict[str, Any] | None,
        new_checkpoints: list[tuple[str, dict[str, Any]]],
        action: str,
    ) -> None:
        """Write back any copy read earlier: the newest one, or a stale one."""
        self.step("update (held copy)")
        copies = self.held[session_id]
        held = copies[-1 - pick % len(copies)]
        self._update(held, context_change, metadata_change, new_checkpoints, action)

    @rule(
        session_id=st.one_of(sessions, st.uuids().map(str)),
        name=checkpoint_names,
        data=json_objects,
        as_user=st.sampled_from([None, *USERS]),
    )
    def add_checkpoint(
        self, session_id: str, name: str, data: dict[str, Any], as_user: str | None
    ) -> None:
        self.step("add_checkpoint")
        result = self.outcome(
            lambda: self.repo.add_checkpoint(session_id, name, data, user_id=as_user)
        )
        model = self.model.get(session_id)
        if model is None or not model.visible_to(as_user):
            assert isinstance(result, SessionNotFoundError), result
            return
        if model.state in FINISHED:
            assert isinstance(result, InvalidStateTransitionError), result
            self.counts["add_checkpoint: finished is final"] += 1
            return
        assert not isinstance(result, Exception), result
        now = self.clock.now
        seq = model.append(name, data, now)
        model.version += 1
        model.updated_at = now
        assert (result.seq, result.name, result.data, result.timestamp) == (seq, name, data, now)

    @rule(session_id=st.one_of(sessions, st.uuids().map(str)))
    def heartbeat(self, session_id: str) -> None:
        self.step("heartbeat")
        alive = self.run(self.repo.heartbeat(session_id))
        model = self.model.get(session_id)
        expected = model is not None and model.state in (ACTIVE, PAUSED)
        assert alive is expected
        if model is not None and expected:
            model.last_heartbeat = self.clock.now

    @rule(
        session_id=st.one_of(sessions, st.uuids().map(str)),
        as_user=st.sampled_from([None, *USERS]),
    )
    def delete(self, session_id: str, as_user: str | None) -> None:
        self.step("delete")
        deleted = self.run(self.repo.delete_session(session_id, user_id=as_user))
        model = self.model.get(session_id)
        expected = model is not None and model.visible_to(as_user)
        assert deleted is expected
        if model is not None and expected:
            model.state = DELETED
            model.version += 1
            model.updated_at = self.clock.now

    @rule(minutes=st.integers(0, 90))
    def tick(self, minutes: int) -> None:
        self.step("tick")
        self.clock.advance(minutes=minutes)

    @rule(
        advance=st.integers(0, 90),
        max_age=st.sampled_from([0, 10, 60]),
        batch_size=st.sampled_from([1, 2, 2000]),
    )
    def sweep(self, advance: int, max_age: int, batch_size: int) -> None:
        self.step("sweep")
        self.clock.advance(minutes=advance)
        failed = self.run(
            self.repo.cleanup_stale_sessions(timedelta(minutes=max_age), batch_size=batch_size)
        )
        now = self.clock.now
        cutoff = now - timedelta(minutes=max_age)
        stale = [m for m in self.model.values() if m.state is ACTIVE and m.last_heartbeat < cutoff]
        assert failed == len(stale)
        for model in stale:
            model.state = FAILED
            model.context["failure_reason"] = "heartbeat_timeout"
            model.version += 1
            model.updated_at = now
        self.counts["sessions swept"] += failed

    @rule(
        agent_type=st.sampled_from([None, *AGENTS]),
        user_id=st.sampled_from([None, *USERS]),
        state=st.sampled_from([None, *SessionState]),
        limit=st.integers(1, 4),
    )
    def list_sessions(
        self,
        agent_type: str | None,
        user_id: str | None,
        state: SessionState | None,
        limit: int,
    ) -> None:
        self.step("list_sessions")
        listed: list[AgentSession] = []
        cursor: str | None = None
        while True:
            page = self.run(
                self.repo.list_sessions(
                    agent_type=agent_type, user_id=user_id, state=state, limit=limit, cursor=cursor
                )
            )
            assert len(page.items) <= limit
            listed += page.items
            if page.next_cursor is None:
                break
            assert len(page.items) == limit
            cursor = page.next_cursor
        wanted = [
            m
            for m in self.model.values()
            if agent_type in (None, m.agent_type)
            and user_id in (None, m.user_id)
            and (m.state is not DELETED if state is None else m.state is state)
        ]
        wanted.sort(key=lambda m: (m.created_at, uuid.UUID(m.session_id)), reverse=True)
        assert [s.session_id for s in listed] == [m.session_id for m in wanted]
        for got, model in zip(listed, wanted, strict=True):
            assert view(got) == model.row()
            assert got.checkpoints == []
            self.hold(got)

    @rule(
        session_id=st.one_of(sessions, st.uuids().map(str)),
        as_user=st.sampled_from([None, *USERS]),
        after_seq=st.none() | st.integers(0, 8),
        limit=st.integers(1, 3),
        newest_first=st.booleans(),
        since_pick=st.none() | st.integers(0, 100),
    )
    def list_checkpoints(
        self,
        session_id: str,
        as_user: str | None,
        after_seq: int | None,
        limit: int,
        newest_first: bool,
        since_pick: int | None,
    ) -> None:
        self.step("list_checkpoints")
        model = self.model.get(session_id)
        if model is None or not model.visible_to(as_user):
            result = self.outcome(
                lambda: self.repo.list_checkpoints(session_id, after_seq=after_seq, user_id=as_user)
            )
            assert isinstance(result, SessionNotFoundError), result
            return
        # since: one of the history's own times (inclusive), so boundaries are exercised
        since = None
        if since_pick is not None:
            since = model.history[since_pick % len(model.history)][3]
        seen: list[tuple[Any, ...]] = []
        position = after_seq
        while True:
            batch = self.run(
                self.repo.list_checkpoints(
                    session_id,
                    after_seq=position,
                    limit=limit,
                    user_id=as_user,
                    newest_first=newest_first,
                    since=since,
                )
            )
            seen += [(cp.seq, cp.name, cp.data, cp.timestamp) for cp in batch]
            if len(batch) < limit:
                break
            position = batch[-1].seq
        if newest_first:
            expected = [h for h in reversed(model.history) if after_seq is None or h[0] < after_seq]
        else:
            expected = [h for h in model.history if h[0] > (after_seq or 0)]
        assert seen == [h for h in expected if since is None or h[3] >= since]

    # -- the database as a whole ----------------------------------------------------------

    @invariant()
    def database_equals_model(self) -> None:
        rows, cps = self.run(self._read_database())
        assert rows == {sid: m.row() for sid, m in self.model.items()}
        assert cps == {(sid, h[0]): h[1:] for sid, m in self.model.items() for h in m.history}

    @invariant()
    def shared_state_equals_model(self) -> None:
        async def read() -> dict[tuple[str, str, str], dict[str, Any]]:
            x = shared_state_table.c
            async with self.engine.connect() as conn:
                rows = await conn.execute(select(x.agent_type, x.scope, x.user_id, x.state))
                return {(r[0], r[1], r[2]): r[3] for r in rows}

        assert self.run(read()) == self.shared

    async def _read_database(
        self,
    ) -> tuple[dict[str, tuple[Any, ...]], dict[tuple[str, int], tuple[Any, ...]]]:
        s, c = sessions_table.c, checkpoints_table.c
        columns = (s.agent_type, s.user_id, s.state, s.context, s.metadata, s.checkpoint_count,
                   s.version, s.created_at, s.updated_at, s.last_heartbeat, s.key)  # fmt: skip
        async with self.engine.connect() as conn:
            session_rows = (await conn.execute(select(s.id, *columns))).all()
            checkpoint_rows = (
                await conn.execute(select(c.session_id, c.seq, c.name, c.data, c.created_at))
            ).all()
        rows = {str(r[0]): tuple(r[1:]) for r in session_rows}
        cps = {(str(r[0]), r[1]): tuple(r[2:]) for r in checkpoint_rows}
        return rows, cps


def _run_machine(url: str, redis_url: str | None, counts: Counter[str]) -> None:
    machine = type(
        "RepositoryMachineUnderTest",
        (RepositoryMachine,),
        {"url": url, "redis_url": redis_url, "counts": counts},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


@pytest.mark.parametrize("cache", ["nocache", "redis"])
async def test_repository_agrees_with_in_memory_model_step_by_step(
    db: Backend, cache: str, request: pytest.FixtureRequest
) -> None:
    url = db.engine.url.render_as_string(hide_password=False)
    redis_url: str | None = request.getfixturevalue("redis_url") if cache == "redis" else None
    counts: Counter[str] = Counter()
    await asyncio.to_thread(_run_machine, url, redis_url, counts)
    print(f"\nmodel-based [{db.name}+{cache}]: {dict(sorted(counts.items()))}")
    assert counts["examples"] >= MAX_EXAMPLES
    # The interesting outcomes were reached, so agreement with the model means something.
    # Which outcomes a run reaches depends on hypothesis's draws, and those depend on what ran
    # before in the process (a hypothesis test of another file shifts them): only outcomes
    # every observed order reaches are required. A finished session's refusals and a key that
    # is found are checked whenever reached, and pinned by tests/test_finished_sessions.py and
    # tests/test_primitives.py.
    reached = ["update: ok", "update: conflict", "update: not found", "sessions swept",
               "create_with_key: taken", "pop_checkpoint", "delete (hard)",
               "update_shared_state"]  # fmt: skip
    for outcome in reached + (["cache hits"] if cache == "redis" else []):
        assert counts[outcome] > 0, f"no example reached {outcome!r}: {counts}"
