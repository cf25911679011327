"""The repository's hot statements, built once with bound parameters.

Building a Core statement and its cache key on every call costs more than many of the round
trips it makes; these are built at import and only executed with new parameter values.
Parameter names start with ``b_`` (names equal to a column's are reserved in UPDATE ... SET).
"""

from __future__ import annotations

from typing import Any, Protocol, Self, TypeVar

from sqlalchemy import (
    JSON,
    Integer,
    Select,
    String,
    Update,
    Uuid,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BinaryExpression, ColumnElement
from sqlalchemy.sql.operators import eq

from agent_session_store._rows import CHECKPOINT_COLUMNS, SESSION_COLUMNS, C, S
from agent_session_store.tables import (
    LANGGRAPH_TABLES,
    JsonType,
    UtcDateTime,
    checkpoints_table,
    sessions_table,
    shared_state_table,
)

DELETED = "deleted"
LIVE_STATES = ("active", "paused")
FINISHED_STATES = ("completed", "failed")

_SID = bindparam("b_sid", type_=Uuid())
_NOW = bindparam("b_now", type_=UtcDateTime())
_USER = bindparam("b_user", type_=String())


class _Filterable(Protocol):
    def where(self, *clauses: Any) -> Self: ...


F = TypeVar("F", bound=_Filterable)


_EXPIRES = bindparam("b_expires", type_=UtcDateTime())


def _present() -> ColumnElement[bool]:
    """The session has not expired at ``b_now`` (the repository's clock): the one rule that makes
    an expired session absent to every read and write, in the statement each already sends."""
    return or_(S.expires_at.is_(None), S.expires_at > _NOW)


def _live() -> ColumnElement[bool]:
    """The session takes writes to its content: ACTIVE or PAUSED (a finished one's is final),
    and not expired."""
    return and_(or_(*(S.state == state for state in LIVE_STATES)), _present())


class _JsonEquals(BinaryExpression[bool]):
    """Two JSON documents are equal as written: the same keys, and values of the same JSON type
    spelled the same (``1``, ``1.0`` and ``true`` all differ, as they do to a JSON reader).

    PostgreSQL compares JSONB's canonical text (its own ``=`` would take ``1`` for ``1.0``);
    SQLite compares both documents minified by ``json()``, because its JSON is text that its
    own functions (the stale sweep's ``json_set``) write without the spaces Python's
    serializer puts in. SQLite also tells keys in another order apart; a copy read from the
    database keeps the stored order, so only a caller who rebuilt the document sees that.
    """

    inherit_cache = True

    def __init__(self, left: ColumnElement[Any], right: ColumnElement[Any]) -> None:
        super().__init__(left, right, eq)


@compiles(_JsonEquals, "postgresql")
def _json_equals_postgresql(element: _JsonEquals, compiler: SQLCompiler, **kw: Any) -> str:
    left, right = compiler.process(element.left, **kw), compiler.process(element.right, **kw)
    return f"CAST({left} AS TEXT) = CAST(CAST({right} AS JSONB) AS TEXT)"


@compiles(_JsonEquals, "sqlite")
def _json_equals_sqlite(element: _JsonEquals, compiler: SQLCompiler, **kw: Any) -> str:
    left, right = compiler.process(element.left, **kw), compiler.process(element.right, **kw)
    return f"json({left}) = json({right})"


def _scoped(stmt: F) -> dict[bool, F]:
    """The statement unscoped (``False``) and limited to the user ``b_user`` (``True``)."""
    return {False: stmt, True: stmt.where(S.user_id == _USER)}


def _load(dialect: str, by_key: bool = False) -> Select[Any]:
    """The session and its newest ``b_recent`` checkpoints, in one row and one round trip.

    The checkpoints come as one JSON array (not as joined rows, which would repeat the
    session's columns for each). Seqs are dense (1..checkpoint_count), so the newest N are a
    range scan of the checkpoints' primary key, whatever the history's length. ``by_key``: the
    live session with key ``b_key`` of agent type ``b_agent`` and user ``b_user``.
    """
    window = and_(
        C.session_id == S.id,
        C.seq > S.checkpoint_count - bindparam("b_recent", type_=Integer()),
    )
    if dialect == "postgresql":
        item = func.json_build_object(
            "seq", C.seq, "name", C.name, "data", C.data, "ts", C.created_at
        )
        recent = func.json_agg(item, type_=JSON())
    else:
        item = func.json_object(
            "seq", C.seq, "name", C.name, "data", func.json(C.data), "ts", C.created_at
        )
        recent = func.json_group_array(item, type_=JSON())
    checkpoints = select(recent).where(window).scalar_subquery().label("recent")
    stmt = select(*SESSION_COLUMNS, checkpoints).where(S.state != DELETED, _present())
    if by_key:
        return stmt.where(S.agent_type == _AGENT, S.user_id == _USER, S.key == _KEY)
    return stmt.where(S.id == _SID)


_AGENT = bindparam("b_agent", type_=String())
_KEY = bindparam("b_key", type_=String())
LOAD = {"postgresql": _load("postgresql"), "sqlite": _load("sqlite")}
LOAD_BY_KEY = {"postgresql": _load("postgresql", True), "sqlite": _load("sqlite", True)}
# The id of the live session with a key: one probe of the partial unique index.
ID_BY_KEY = select(S.id).where(
    S.agent_type == _AGENT, S.user_id == _USER, S.key == _KEY, S.state != DELETED, _present()
)

INSERT_CHECKPOINT = insert(checkpoints_table)

HEARTBEAT = _scoped(
    update(sessions_table).where(S.id == _SID, _live()).values(last_heartbeat=_NOW).returning(S.id)
)

# Takes the session's row lock, so concurrent appenders get consecutive seqs.
APPEND = _scoped(
    update(sessions_table)
    .where(S.id == _SID, _live())
    .values(checkpoint_count=S.checkpoint_count + 1, version=S.version + 1, updated_at=_NOW)
    .returning(S.checkpoint_count)
)

# An append with an idempotency key (b_ikey): bumps only when the session holds no checkpoint
# under that key. On SQLite the write lock makes the check exact; on PostgreSQL two appends of
# one key racing both pass it (one snapshot per statement) and the unique index refuses the
# second, which the repository then answers with the stored checkpoint.
_HOLDS_KEY = exists().where(
    C.session_id == _SID, C.idempotency_key == bindparam("b_ikey", type_=String())
)
APPEND_NEW = {scoped: stmt.where(~_HOLDS_KEY) for scoped, stmt in APPEND.items()}

DELETE = _scoped(
    update(sessions_table)
    .where(S.id == _SID, S.state != DELETED, _present())
    .values(state=DELETED, version=S.version + 1, updated_at=_NOW)
    .returning(S.id)
)


def update_from(sources: tuple[str, ...]) -> Update:
    """Compare-and-set on (owner, version, one of ``sources``); build it once per source set.

    The states are part of the statement (``state = ... OR ...``, each a fixed parameter),
    not an expanding ``IN``, so each statement compiles once and can run on the driver's
    connection. From a finished state (COMPLETED, FAILED) the context and checkpoints are
    final: such a row matches only when the copy's context equals the stored one and it adds
    no checkpoints, so the refusal costs no round trip on the way in.
    """
    context = bindparam("b_context", type_=JsonType)
    added = bindparam("b_added", type_=Integer())
    final = [
        and_(S.state == state, _JsonEquals(S.context, context), added == 0)
        for state in sources
        if state in FINISHED_STATES
    ]
    return (
        update(sessions_table)
        .where(
            S.id == _SID,
            S.user_id == bindparam("b_owner", type_=String()),
            S.version == bindparam("b_version", type_=Integer()),
            or_(*(S.state == state for state in sources if state not in FINISHED_STATES), *final),
            _present(),
        )
        .values(
            context=context,
            metadata=bindparam("b_metadata", type_=JsonType),
            state=bindparam("b_state", type_=String()),
            version=S.version + 1,
            updated_at=_NOW,
            last_heartbeat=_NOW,
            checkpoint_count=S.checkpoint_count + added,
            expires_at=_EXPIRES,
        )
        .returning(S.checkpoint_count, S.created_at)
    )


# Why an update changed nothing: the stored version, state, owner and expiry.
STORED_FOR_UPDATE = select(S.version, S.state, S.user_id, S.expires_at).where(S.id == _SID)
# With encryption, a finished session's update keeping its context: the stored envelope.
STORED_CONTEXT = select(S.state, S.context).where(S.id == _SID)


# PostgreSQL only (SQLite has no writing CTEs): the two writes of an append, or of a create,
# as one statement, so a call is one round trip with no BEGIN/COMMIT around it.
_CHECKPOINT_COLUMN_NAMES = ["session_id", "seq", "name", "data", "created_at", "idempotency_key"]
_IKEY = bindparam("b_ikey", type_=String())  # the append's idempotency key, or NULL
_CP_NAME = bindparam("b_name", type_=String())
_CP_DATA = bindparam("b_data", type_=JsonType)
_AT = bindparam("b_at", type_=UtcDateTime())  # the checkpoint's time (the caller's, or now)


def _append_in_one(scoped: bool, keyed: bool) -> Any:
    bump = (APPEND_NEW if keyed else APPEND)[scoped].returning(S.id)
    bumped = bump.cte("bumped")
    rows = select(bumped.c.id, bumped.c.checkpoint_count, _CP_NAME, _CP_DATA, _AT, _IKEY)
    return insert(checkpoints_table).from_select(_CHECKPOINT_COLUMN_NAMES, rows).returning(C.seq)


APPEND_IN_ONE = {
    (scoped, keyed): _append_in_one(scoped, keyed)
    for scoped in (False, True)
    for keyed in (False, True)
}

_NEW_SESSION_VALUES: dict[str, Any] = {
    "id": _SID,
    "agent_type": _AGENT,
    "user_id": _USER,
    "key": _KEY,
    "state": literal("active", String()),
    "context": bindparam("b_context", type_=JsonType),
    "metadata": bindparam("b_metadata", type_=JsonType),
    "checkpoint_count": literal(1, Integer()),
    "version": literal(1, Integer()),
    "created_at": _NOW,
    "updated_at": _NOW,
    "last_heartbeat": _NOW,
    "expires_at": _EXPIRES,
}
_new_session = insert(sessions_table).values(_NEW_SESSION_VALUES)
# SQLite: the session's row, then its first checkpoint.
INSERT_SESSION_ROW = _new_session
# An expired session holds its key no longer: a create of that key marks the holder deleted
# (it is absent to every read already; the purges remove its rows), which takes it out of the
# partial unique index, in the create's own statement (PostgreSQL) or transaction (SQLite).
FREE_EXPIRED_KEY = (
    update(sessions_table)
    .where(
        S.agent_type == _AGENT,
        S.user_id == _USER,
        S.key == _KEY,
        S.state != DELETED,
        S.expires_at <= _NOW,
    )
    .values(state=DELETED, version=S.version + 1, updated_at=_NOW)
    .returning(S.id)
)
INSERT_ONE_CHECKPOINT = insert(checkpoints_table).values(
    session_id=_SID,
    seq=bindparam("b_seq", type_=Integer()),
    name=_CP_NAME,
    data=_CP_DATA,
    created_at=_AT,
    idempotency_key=_IKEY,
)


def _create_in_one(keyed: bool) -> Any:
    """PostgreSQL: a create as one statement; ``keyed``: freeing an expired holder of the key
    first (``FREE_EXPIRED_KEY``).

    The new row's SELECT reads the ``freed`` CTE, so the UPDATE runs to its end before the row
    is inserted: the unique index then sees the holder's old version as deleted by this very
    transaction, not as a conflict. (An unread writing CTE would run after the INSERT.)
    """
    new_row: Any = _new_session
    if keyed:
        freed = FREE_EXPIRED_KEY.cte("freed")
        columns = list(_NEW_SESSION_VALUES)
        source = select(*_NEW_SESSION_VALUES.values()).where(
            select(func.count()).select_from(freed).scalar_subquery() >= 0
        )
        new_row = insert(sessions_table).from_select(columns, source)
    created = new_row.returning(S.id).cte("created")
    return insert(checkpoints_table).from_select(
        _CHECKPOINT_COLUMN_NAMES,
        select(
            created.c.id,
            literal(1, Integer()),
            _CP_NAME,
            _CP_DATA,
            _NOW,
            literal(None, String()),
        ),
    )


CREATE_IN_ONE = {False: _create_in_one(False), True: _create_in_one(True)}

# -- rewind, batch append, hard delete ----------------------------------------------------------

_AFTER = bindparam("b_after", type_=Integer())
_ADDED = bindparam("b_added", type_=Integer())
_SEQ = bindparam("b_seq", type_=Integer())

# Why a write to a session's content changed nothing: its state, if it is there for the caller.
STATE = _scoped(select(S.state).where(S.id == _SID, S.state != DELETED, _present()))

# Takes the session's row lock like APPEND, so an append or another pop waits for this one to
# commit: concurrent pops get distinct checkpoints. The first checkpoint is never popped.
POP = _scoped(
    update(sessions_table)
    .where(S.id == _SID, _live(), S.checkpoint_count > 1)
    .values(checkpoint_count=S.checkpoint_count - 1, version=S.version + 1, updated_at=_NOW)
    .returning(S.checkpoint_count)
)
POPPED = (
    delete(checkpoints_table)
    .where(C.session_id == _SID, C.seq == _SEQ)
    .returning(*CHECKPOINT_COLUMNS)
)
TRUNCATE = _scoped(
    update(sessions_table)
    .where(S.id == _SID, _live(), S.checkpoint_count > _AFTER)
    .values(checkpoint_count=_AFTER, version=S.version + 1, updated_at=_NOW)
    .returning(S.id)
)
TRUNCATED = delete(checkpoints_table).where(C.session_id == _SID, C.seq > _AFTER)

APPEND_MANY = _scoped(
    update(sessions_table)
    .where(S.id == _SID, _live())
    .values(checkpoint_count=S.checkpoint_count + _ADDED, version=S.version + 1, updated_at=_NOW)
    .returning(S.checkpoint_count)
)

# The checkpoint a session holds under an idempotency key, if the session is there for the
# caller (the slow path of an append whose key was known: see Checkpoints.add_checkpoint).
KNOWN_CHECKPOINT = _scoped(
    select(*CHECKPOINT_COLUMNS)
    .join(sessions_table, S.id == C.session_id)
    .where(C.session_id == _SID, C.idempotency_key == _IKEY, S.state != DELETED, _present())
)


def known_checkpoints(scoped: bool, keys: list[str]) -> Select[Any]:
    """The checkpoints a session holds under any of ``keys``, with their keys (a batch's)."""
    return _scoped(
        select(*CHECKPOINT_COLUMNS, C.idempotency_key)
        .join(sessions_table, S.id == C.session_id)
        .where(C.session_id == _SID, C.idempotency_key.in_(keys), S.state != DELETED, _present())
    )[scoped]


HARD_DELETE = _scoped(delete(sessions_table).where(S.id == _SID).returning(S.id))
# Every table whose rows belong to a session, children first: its checkpoints, and the LangGraph
# checkpointer's rows (integrations/langgraph.py). A hard delete and a purge remove them
# explicitly, not only by ON DELETE CASCADE: SQLite enforces foreign keys only when the host's
# engine turned them on.
SESSION_ROWS = (checkpoints_table, *LANGGRAPH_TABLES)
HARD_DELETE_ROWS = tuple(delete(t).where(t.c.session_id == _SID) for t in SESSION_ROWS)


def _append_many_in_one(scoped: bool) -> Any:
    """PostgreSQL: a batch append as one statement; the items come as one JSON array ``b_items``.

    ``WITH ORDINALITY`` numbers the items 1..n in the array's order, so item i gets seq
    ``count_before + i`` where ``count_before`` is the bumped count minus n.
    """
    bump = APPEND_MANY[scoped].returning(S.id)
    bumped = bump.cte("bumped")
    elements = func.jsonb_array_elements(bindparam("b_items", type_=postgresql.JSONB()))
    items = elements.table_valued("value", with_ordinality="ord").render_derived(name="items")
    rows = select(
        bumped.c.id,
        bumped.c.checkpoint_count - _ADDED + items.c.ord,
        items.c.value.op("->>")(literal("name")),
        items.c.value.op("->", return_type=postgresql.JSONB())(literal("data")),
        _AT,
        items.c.value.op("->>")(literal("ikey")),
    ).select_from(bumped.join(items, true()))  # one bumped row: every item goes with it
    return insert(checkpoints_table).from_select(_CHECKPOINT_COLUMN_NAMES, rows).returning(C.seq)


APPEND_MANY_IN_ONE = {False: _append_many_in_one(False), True: _append_many_in_one(True)}

# -- shared state --------------------------------------------------------------------------------

X = shared_state_table.c
SHARED_STATE = select(X.state).where(
    X.agent_type == _AGENT, X.scope == bindparam("b_scope", type_=String()), X.user_id == _USER
)
_SCOPE_VALUES = {
    "agent_type": _AGENT,
    "scope": bindparam("b_scope", type_=String()),
    "user_id": _USER,
    "updated_at": _NOW,
}
_SCOPE_KEY = ["agent_type", "scope", "user_id"]
_CHANGES = bindparam("b_changes", type_=JsonType)

# PostgreSQL: the merge in one statement, under the row's lock: (state - removed) || changes.
_pg_insert = postgresql.insert(shared_state_table).values(state=_CHANGES, **_SCOPE_VALUES)
SHARED_UPSERT_PG = _pg_insert.on_conflict_do_update(
    index_elements=_SCOPE_KEY,
    set_={
        "state": X.state.op("-", return_type=postgresql.JSONB())(
            bindparam("b_remove", type_=postgresql.ARRAY(String()))
        ).op("||", return_type=postgresql.JSONB())(_pg_insert.excluded.state),
        "updated_at": _pg_insert.excluded.updated_at,
    },
).returning(X.state)

# SQLite: the upsert takes the database's write lock and returns the stored document; the
# repository merges it and writes it back with SHARED_SET in the same transaction.
_sqlite_insert = sqlite.insert(shared_state_table).values(state=_CHANGES, **_SCOPE_VALUES)
SHARED_UPSERT_SQLITE = _sqlite_insert.on_conflict_do_update(
    index_elements=_SCOPE_KEY, set_={"updated_at": _sqlite_insert.excluded.updated_at}
).returning(X.state)
SHARED_SET = (
    update(shared_state_table)
    .where(
        X.agent_type == _AGENT,
        X.scope == bindparam("b_scope", type_=String()),
        X.user_id == _USER,
    )
    .values(state=_CHANGES)
)

# -- key rotation (re-encryption) ----------------------------------------------------------------

# Each rewrites one value only if it is still the one read (a writer may have replaced it since):
# no version bump, no timestamps: the content is unchanged (see _repository/rotation.py).
_OLD = bindparam("b_old", type_=JsonType)
_NEW = bindparam("b_new", type_=JsonType)
REKEY_CONTEXT = (
    update(sessions_table).where(S.id == _SID, _JsonEquals(S.context, _OLD)).values(context=_NEW)
)
REKEY_CHECKPOINT = (
    update(checkpoints_table)
    .where(C.session_id == _SID, C.seq == _SEQ, _JsonEquals(C.data, _OLD))
    .values(data=_NEW)
)
REKEY_SHARED = (
    update(shared_state_table)
    .where(
        X.agent_type == _AGENT,
        X.scope == bindparam("b_scope", type_=String()),
        X.user_id == _USER,
        _JsonEquals(X.state, _OLD),
    )
    .values(state=_NEW)
)
