"""The LangGraph checkpointer's statements: SQLAlchemy Core on the tables in ``tables.py``.

Built once per dialect (:class:`Statements`): what differs between PostgreSQL and SQLite is the
upsert (``INSERT ... ON CONFLICT``, one import per dialect) and the metadata filter (JSONB
containment against ``json_extract`` per key). The saver (``langgraph.py``) runs them through
the repository's session factory.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    Executable,
    Insert,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import aliased

from agent_session_store.errors import SessionValidationError
from agent_session_store.tables import (
    LangGraphCheckpointRow,
    SessionRow,
    UtcDateTime,
    lg_blobs_table,
    lg_checkpoints_table,
    lg_threads_table,
    lg_writes_table,
)

T = lg_threads_table.c
C = lg_checkpoints_table.c
B = lg_blobs_table.c
W = lg_writes_table.c
S = SessionRow.__table__.c

DELETED = "deleted"
# The saver's "now" (the repository's clock), bound to every statement that finds a thread.
NOW = bindparam("b_now", type_=UtcDateTime())


def present(now: Any = NOW) -> Any:
    """The thread's session has not expired at ``now``: the repository's expiry rule
    (``_statements._present``), so that an expired thread is absent to the saver as to every
    read of the repository, from the moment it expires."""
    return or_(S.expires_at.is_(None), S.expires_at > now)


# A metadata filter key is a plain name: it becomes part of a JSON path on SQLite. LangGraph's
# own SQLite saver pasted keys into its SQL (an injection); here they are checked and bound.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}")

CHECKPOINT_COLUMNS = (
    C.session_id,
    C.checkpoint_ns,
    C.checkpoint_id,
    C.parent_checkpoint_id,
    C.type,
    C.checkpoint,
    C["metadata"],
    C.channel_versions,
    T.thread_id,
    S.user_id,
)


def check_filter_keys(filter: Mapping[str, Any]) -> None:
    """Refuse metadata filter keys that are not plain names (letters, digits, ``_``, ``-``)."""
    for key in filter:
        if not isinstance(key, str) or not _PLAIN_NAME.fullmatch(key):
            raise SessionValidationError(
                f"metadata filter key {key!r:.80} is not a plain name (letters, digits, '_' "
                "and '-', 1 to 128 characters); nothing was read"
            )


def thread_rows(agent_type: str, key: str) -> Select[Any]:
    """The thread named ``key`` with its session's owner and state (live or deleted)."""
    return (
        select(T.session_id, T.thread_id, S.user_id, S.state, S.expires_at)
        .join(SessionRow, S.id == T.session_id)
        .where(T.agent_type == agent_type, T.thread_key == key)
    )


def thread_checkpoints(*, by_id: bool, by_user: bool) -> Select[Any]:
    """A thread's checkpoints in one namespace, its newest first, by bound parameters (built
    once: ``b_agent``, ``b_key``, ``b_ns``, with ``b_cid`` the one checkpoint, ``b_user`` the
    owner), so that each call only binds values to a statement compiled once."""
    query = (
        select(*CHECKPOINT_COLUMNS)
        .join(lg_threads_table, T.session_id == C.session_id)
        .join(SessionRow, S.id == C.session_id)
        .where(
            T.agent_type == bindparam("b_agent"),
            T.thread_key == bindparam("b_key"),
            S.state != DELETED,
            present(),
            C.checkpoint_ns == bindparam("b_ns"),
        )
    )
    if by_user:
        query = query.where(S.user_id == bindparam("b_user"))
    if by_id:
        return query.where(C.checkpoint_id == bindparam("b_cid"))
    return query.order_by(C.checkpoint_id.desc()).limit(1)


NEWEST_FIRST = (C.checkpoint_id.desc(), C.session_id.desc(), C.checkpoint_ns.desc())


def checkpoints(agent_type: str, now: datetime) -> Select[Any]:
    """Checkpoints of this agent type's live threads (not expired at ``now``), with their
    thread id and owner."""
    return checkpoints_by(agent_type, now)


def checkpoints_by(agent_type: Any, now: Any = NOW) -> Select[Any]:
    """:func:`checkpoints` for an agent type and time given as values or bound parameters."""
    return (
        select(*CHECKPOINT_COLUMNS)
        .join(lg_threads_table, T.session_id == C.session_id)
        .join(SessionRow, S.id == C.session_id)
        .where(T.agent_type == agent_type, S.state != DELETED, present(now))
    )


_BLOB_COLUMNS = (B.session_id, B.checkpoint_ns, B.channel, B.version, B.type, B.blob,
                 B.base_version, B.item_count)  # fmt: skip


def _chain(start: Select[Any]) -> Any:
    """The blobs ``start`` selects and, recursively, the blobs their deltas build on."""
    chain = start.cte("chain", recursive=True)
    below = select(*_BLOB_COLUMNS).join(
        chain,
        and_(
            B.session_id == chain.c.session_id,
            B.checkpoint_ns == chain.c.checkpoint_ns,
            B.channel == chain.c.channel,
            B.version == chain.c.base_version,
        ),
    )
    return chain.union(below)


def blobs(wanted: Sequence[tuple[uuid.UUID, str, str, str]]) -> Select[Any]:
    """The blobs at these (session, namespace, channel, version) keys, and the blobs their
    deltas build on, down to each one's full copy (one recursive query)."""
    start = select(*_BLOB_COLUMNS).where(
        tuple_(B.session_id, B.checkpoint_ns, B.channel, B.version).in_(wanted)
    )
    whole: Select[Any] = select(_chain(start))
    return whole


# The newest stored list value of a channel below ``b_version``: a delta's candidate base.
LIST_BASE = (
    select(B.version, B.item_count, B.size, B.delta_size, B.digest)
    .where(
        B.session_id == bindparam("b_sid"),
        B.checkpoint_ns == bindparam("b_ns"),
        B.channel == bindparam("b_channel"),
        B.item_count.is_not(None),
        B.version < bindparam("b_version"),
    )
    .order_by(B.version.desc())
    .limit(1)
)


def writes(wanted: Sequence[tuple[uuid.UUID, str, str]]) -> Select[Any]:
    """The pending writes of these (session, namespace, checkpoint) keys, in LangGraph's order."""
    return (
        select(
            W.session_id,
            W.checkpoint_ns,
            W.checkpoint_id,
            W.task_id,
            W.channel,
            W.type,
            W.blob,
            W.task_path,
            W.idx,
        )
        .where(tuple_(W.session_id, W.checkpoint_ns, W.checkpoint_id).in_(wanted))
        .order_by(W.task_path, W.task_id, W.idx)
    )


_CHECKPOINT_VALUES = ("checkpoint_ns", "checkpoint_id", "parent_checkpoint_id", "type",
                      "checkpoint", "metadata", "run_id", "channel_versions")  # fmt: skip
WRITE_VALUES = ("checkpoint_ns", "checkpoint_id", "task_id", "idx", "channel", "type", "blob",
                 "task_path")  # fmt: skip
LIVE = ("active", "paused")


def _live_thread(by_user: bool) -> Select[Any]:
    """The session id of the live thread ``b_key`` of ``b_agent`` (owned by ``b_user``)."""
    query = (
        select(T.session_id)
        .join(SessionRow, S.id == T.session_id)
        .where(
            T.agent_type == bindparam("b_agent"),
            T.thread_key == bindparam("b_key"),
            # Not IN (...): SQLAlchemy expands that per execution, not in an executemany.
            or_(*(S.state == state for state in LIVE)),
            present(),
        )
    )
    return query.where(S.user_id == bindparam("b_user")) if by_user else query


def upsert_checkpoint_from(rows: Select[Any], insert: Any) -> Any:
    """Insert the checkpoint ``rows`` selects; one already there is replaced."""
    upsert = insert(lg_checkpoints_table).from_select(["session_id", *_CHECKPOINT_VALUES], rows)
    return upsert.on_conflict_do_update(
        index_elements=[C.session_id, C.checkpoint_ns, C.checkpoint_id],
        set_={
            "parent_checkpoint_id": upsert.excluded.parent_checkpoint_id,
            "type": upsert.excluded.type,
            "checkpoint": upsert.excluded.checkpoint,
            "metadata": upsert.excluded.metadata,
            "run_id": upsert.excluded.run_id,
        },
    )


BLOB_VALUES = ("channel", "version", "type", "blob", "base_version", "item_count", "size",
                "delta_size", "digest")  # fmt: skip

# A channel's newest stored list value below ``b_version`` in the thread named by its key, with
# the thread's session: the delta base a write on PostgreSQL looks up before its one statement.
LIST_BASE_BY_KEY = (
    select(T.session_id, B.version, B.item_count, B.size, B.delta_size, B.digest)
    .join(lg_blobs_table, B.session_id == T.session_id)
    .where(
        T.agent_type == bindparam("b_agent"),
        T.thread_key == bindparam("b_key"),
        B.checkpoint_ns == bindparam("b_ns"),
        B.channel == bindparam("b_channel"),
        B.item_count.is_not(None),
        B.version < bindparam("b_version"),
    )
    .order_by(B.version.desc())
    .limit(1)
)


def _unnest(table: Any, names: Sequence[str]) -> Any:
    """Rows from one array parameter per column (``b_<column>s``): any count, one statement."""
    arrays = [bindparam(f"b_{n}s", type_=postgresql.ARRAY(table.c[n].type)) for n in names]
    return func.unnest(*arrays).table_valued(*names).render_derived(name="v")


def put_in_one(*, by_user: bool) -> Select[Any]:
    """PostgreSQL: a checkpoint and its blobs into a live thread, in one statement.

    Returns the thread's session id, or no row (nothing written) when the thread named by its
    key is not there, not live or not ``b_user``'s. A delta (``base_version`` set) is stored
    only if its base is there, in this session, with the digest it was cut against
    (``base_digest``); otherwise the value is stored whole (``whole``): the base may come from
    the saver's memory of its own last put, which another process may have pruned since.
    """
    thread = _live_thread(by_user).cte("thread")
    checkpoint = (
        upsert_checkpoint_from(
            select(
                thread.c.session_id,
                *(bindparam(f"b_{n}", type_=C[n].type) for n in _CHECKPOINT_VALUES),
            ),
            postgresql.insert,
        )
        .returning(C.session_id, C.checkpoint_ns)
        .cte("put")
    )
    arrays = [bindparam(f"b_{n}s", type_=postgresql.ARRAY(B[n].type)) for n in BLOB_VALUES]
    arrays += [bindparam(f"b_{n}s", type_=postgresql.ARRAY(B.blob.type)) for n in _GUARD]
    values = func.unnest(*arrays).table_valued(*BLOB_VALUES, *_GUARD).render_derived(name="v")
    base = aliased(lg_blobs_table, name="base")
    kept = or_(values.c.base_version.is_(None), base.c.version.is_not(None))
    rows = (
        select(
            checkpoint.c.session_id,
            checkpoint.c.checkpoint_ns,
            *(values.c[n] for n in BLOB_VALUES[:3]),
            case((kept, values.c.blob), else_=values.c.whole).label("blob"),
            base.c.version.label("base_version"),
            *(values.c[n] for n in ("item_count", "size")),
            case((kept, values.c.delta_size), else_=0).label("delta_size"),
            values.c.digest,
        )
        .select_from(checkpoint)
        .join(values, true())
        .outerjoin(
            base,
            and_(
                base.c.session_id == checkpoint.c.session_id,
                base.c.checkpoint_ns == checkpoint.c.checkpoint_ns,
                base.c.channel == values.c.channel,
                base.c.version == values.c.base_version,
                base.c.digest == values.c.base_digest,
            ),
        )
    )
    blobs = (
        postgresql.insert(lg_blobs_table)
        .from_select(["session_id", "checkpoint_ns", *BLOB_VALUES], rows)
        .on_conflict_do_nothing()
        .cte("blobs")
    )
    # A data-modifying CTE runs whether or not it is read; add_cte makes SQLAlchemy render it.
    return select(checkpoint.c.session_id).add_cte(blobs)


_GUARD = ("whole", "base_digest")  # put_in_one: a delta's whole value, and its base's digest


def writes_in_one(*, by_user: bool, replace: bool) -> Select[Any]:
    """PostgreSQL: a task's writes into a live thread, in one statement; the thread's session
    id, or no row (nothing written) when it is not there, not live or not ``b_user``'s."""
    thread = _live_thread(by_user).cte("thread")
    values = _unnest(lg_writes_table, WRITE_VALUES)
    rows = select(thread.c.session_id, *values.c).select_from(thread).join(values, true())
    put = postgresql.insert(lg_writes_table).from_select(["session_id", *WRITE_VALUES], rows)
    put = _replace_writes(put) if replace else put.on_conflict_do_nothing()
    return select(thread.c.session_id).add_cte(put.cte("put"))


def stale_thread_rows(agent_type: str, key: str, now: datetime) -> Delete:
    """The thread row named ``key`` when its session was soft-deleted or has expired at ``now``
    (the key is free again)."""
    gone = select(S.id).where(or_(S.state == DELETED, S.expires_at <= now)).scalar_subquery()
    return delete(lg_threads_table).where(
        T.agent_type == agent_type, T.thread_key == key, T.session_id.in_(gone)
    )


def rows_of(table: Any, sid: uuid.UUID) -> Select[Any]:
    """Every row of a LangGraph ``table`` of session ``sid``, by primary key."""
    return select(table).where(table.c.session_id == sid).order_by(*table.primary_key.columns)


def delete_thread_rows(sid: uuid.UUID) -> list[Delete]:
    """Every LangGraph row of session ``sid`` but its thread row, children first."""
    return [
        delete(lg_writes_table).where(W.session_id == sid),
        delete(lg_blobs_table).where(B.session_id == sid),
        delete(lg_checkpoints_table).where(C.session_id == sid),
    ]


def delete_for_runs(agent_type: str, run_ids: Sequence[str]) -> list[Executable]:
    """The checkpoints made by these runs in this agent type's threads, and their writes; the
    last statement returns the session of each checkpoint it deleted."""
    mine = select(T.session_id).where(T.agent_type == agent_type)
    doomed = select(C.session_id, C.checkpoint_ns, C.checkpoint_id).where(
        C.run_id.in_(run_ids), C.session_id.in_(mine)
    )
    return [
        delete(lg_writes_table).where(
            tuple_(W.session_id, W.checkpoint_ns, W.checkpoint_id).in_(doomed)
        ),
        delete(lg_checkpoints_table)
        .where(C.run_id.in_(run_ids), C.session_id.in_(mine))
        .returning(C.session_id),
    ]


def keep_latest(sid: uuid.UUID) -> list[Delete]:
    """Remove all but the newest checkpoint of each namespace of session ``sid`` (and writes)."""
    newest = aliased(LangGraphCheckpointRow)

    def latest(ns: Any) -> Any:
        return (
            select(func.max(newest.checkpoint_id))
            .where(newest.session_id == sid, newest.checkpoint_ns == ns)
            .scalar_subquery()
        )

    return [
        delete(lg_writes_table).where(
            W.session_id == sid, W.checkpoint_id != latest(W.checkpoint_ns)
        ),
        delete(lg_checkpoints_table).where(
            C.session_id == sid, C.checkpoint_id != latest(C.checkpoint_ns)
        ),
    ]


class Statements:
    """The statements that differ by dialect, built for one (``postgresql`` or ``sqlite``)."""

    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgresql"
        insert = postgresql.insert if self.postgres else sqlite.insert
        self._insert = insert
        self.add_blobs = insert(lg_blobs_table).on_conflict_do_nothing()
        # The same with every value a ``b_`` parameter: compiled once for the driver's path.
        self.add_blob = (
            insert(lg_blobs_table)
            .values({c.name: bindparam(f"b_{c.name}", type_=c.type) for c in lg_blobs_table.c})
            .on_conflict_do_nothing()
        )
        upsert = insert(lg_checkpoints_table)
        self.put_checkpoint = upsert.on_conflict_do_update(
            index_elements=[C.session_id, C.checkpoint_ns, C.checkpoint_id],
            set_={
                "parent_checkpoint_id": upsert.excluded.parent_checkpoint_id,
                "type": upsert.excluded.type,
                "checkpoint": upsert.excluded.checkpoint,
                "metadata": upsert.excluded.metadata,
                "run_id": upsert.excluded.run_id,
            },
        )
        # The writes to a thread that exists, is live and (with a user) is that user's, found by
        # its key inside the write itself: no look-up before. For each "by user".
        self.put_into_thread = {
            by_user: upsert_checkpoint_from(
                _live_thread(by_user).with_only_columns(
                    T.session_id,
                    *(bindparam(f"b_{n}", type_=C[n].type) for n in _CHECKPOINT_VALUES),
                ),
                insert,
            ).returning(C.session_id)
            for by_user in (False, True)
        }
        self.live_thread = {by_user: _live_thread(by_user) for by_user in (False, True)}
        writes_from = {
            by_user: _live_thread(by_user).with_only_columns(
                T.session_id, *(bindparam(f"b_{n}", type_=W[n].type) for n in WRITE_VALUES)
            )
            for by_user in (False, True)
        }
        if self.postgres:
            self.put_in_one = {by_user: put_in_one(by_user=by_user) for by_user in (False, True)}
            self.writes_in_one = {
                (by_user, replace): writes_in_one(by_user=by_user, replace=replace)
                for by_user in (False, True)
                for replace in (False, True)
            }
        self._pages: dict[tuple[bool, ...], Select[Any]] = {}
        # aget_tuple's statement for each (by id, by user): built and compiled once.
        self.get_tuple = {
            (by_id, by_user): self.one_checkpoint(thread_checkpoints(by_id=by_id, by_user=by_user))
            for by_id in (False, True)
            for by_user in (False, True)
        }
        writes = insert(lg_writes_table)
        self.add_writes = writes.on_conflict_do_nothing()
        self.replace_writes = _replace_writes(writes)
        columns = ["session_id", *WRITE_VALUES]
        self.add_writes_into_thread = {
            by_user: insert(lg_writes_table).from_select(columns, rows).on_conflict_do_nothing()
            for by_user, rows in writes_from.items()
        }
        self.replace_writes_into_thread = {
            by_user: _replace_writes(insert(lg_writes_table).from_select(columns, rows))
            for by_user, rows in writes_from.items()
        }

    def list_page(self, shape: tuple[bool, ...]) -> Select[Any]:
        """alist's page without a metadata filter, for ``shape`` (which of thread, namespace,
        checkpoint, user, before and the previous page's last key it is given): built once
        per shape, by bound parameters, and read in one statement (:meth:`one_checkpoint`)."""
        page = self._pages.get(shape)
        if page is None:
            thread, ns, cid, user, before, last = shape
            query = checkpoints_by(bindparam("b_agent"))
            if thread:
                query = query.where(T.thread_key == bindparam("b_key"))
            if ns:
                query = query.where(C.checkpoint_ns == bindparam("b_ns"))
            if cid:
                query = query.where(C.checkpoint_id == bindparam("b_cid"))
            if user:
                query = query.where(S.user_id == bindparam("b_user"))
            if before:
                query = query.where(C.checkpoint_id < bindparam("b_before", type_=Text))
            if last:
                query = query.where(
                    tuple_(C.checkpoint_id, C.session_id, C.checkpoint_ns)
                    < tuple_(
                        bindparam("b_last_cid", type_=C.checkpoint_id.type),
                        bindparam("b_last_sid", type_=C.session_id.type),
                        bindparam("b_last_ns", type_=C.checkpoint_ns.type),
                    )
                )
            # Each checkpoint's place in the page: the database's order, collation included.
            place = func.row_number().over(order_by=NEWEST_FIRST).label("place")
            query = (
                query.add_columns(place)
                .order_by(*NEWEST_FIRST)
                .limit(bindparam("b_limit", type_=Integer))
            )
            page = self._pages[shape] = self.one_checkpoint(query)
        return page

    def one_checkpoint(self, query: Select[Any]) -> Select[Any]:
        """The checkpoints ``query`` selects, their pending writes and the blobs of their
        channel versions (with the blobs their deltas build on), in one statement.

        Rows of three kinds, told apart by ``kind`` (``cid`` the checkpoint id of ``c`` and
        ``w`` rows; in no particular order): ``c`` the checkpoint (``k1`` its id, ``k2`` its
        parent, ``k3`` the thread id, ``n`` its place in a page, ``data`` its bytes, ``meta``
        its metadata), ``w`` a write (``k1`` task, ``k2`` channel, ``k3`` task path, ``n``
        index), ``b`` a blob (``k1`` channel, ``k2`` version, ``k3`` base version, ``n`` item
        count).
        """
        cp = query.cte("cp")
        if self.postgres:
            each = func.jsonb_each_text(type_coerce(cp.c.channel_versions, JSONB))
        else:
            each = func.json_each(cp.c.channel_versions)
        pairs = each.table_valued("key", "value").alias("versions")
        wanted = (
            select(
                cp.c.session_id,
                cp.c.checkpoint_ns,
                pairs.c.key.label("channel"),
                cast(pairs.c.value, Text).label("version"),
            )
            .select_from(cp)
            .join(pairs, true())
            .cte("wanted")
        )
        # From the wanted versions to the blobs, by primary key. On SQLite a LEFT JOIN, whose
        # left side its planner keeps outside: with an inner join and no statistics it scans
        # every blob of the thread and matches each against the versions (a read that grows
        # with the thread's length). A version without a blob gives a row of NULLs, ignored.
        # PostgreSQL's planner gets this right with an inner join (and not with the outer one).
        chain = _chain(
            select(*_BLOB_COLUMNS)
            .select_from(wanted)
            .join(
                lg_blobs_table,
                and_(
                    B.session_id == wanted.c.session_id,
                    B.checkpoint_ns == wanted.c.checkpoint_ns,
                    B.channel == wanted.c.channel,
                    B.version == wanted.c.version,
                ),
                isouter=not self.postgres,
            )
        )
        untyped = null()
        return union_all(
            select(
                literal_column("'c'").label("kind"),
                cp.c.checkpoint_id.label("k1"),
                cp.c.parent_checkpoint_id.label("k2"),
                cp.c.thread_id.label("k3"),
                cp.c.type.label("type"),
                cp.c.checkpoint.label("data"),
                (cp.c.place if "place" in cp.c else cast(untyped, Integer)).label("n"),
                cp.c.metadata.label("meta"),
                cp.c.session_id.label("session_id"),
                cp.c.checkpoint_ns.label("checkpoint_ns"),
                cp.c.checkpoint_id.label("cid"),
            ),
            select(
                literal_column("'w'"),
                W.task_id,
                W.channel,
                W.task_path,
                W.type,
                W.blob,
                W.idx,
                cast(untyped, C["metadata"].type),
                W.session_id,
                W.checkpoint_ns,
                W.checkpoint_id,
            ).join(
                cp,
                and_(
                    W.session_id == cp.c.session_id,
                    W.checkpoint_ns == cp.c.checkpoint_ns,
                    W.checkpoint_id == cp.c.checkpoint_id,
                ),
            ),
            select(
                literal_column("'b'"),
                chain.c.channel,
                chain.c.version,
                chain.c.base_version,
                chain.c.type,
                chain.c.blob,
                chain.c.item_count,
                cast(untyped, C["metadata"].type),
                chain.c.session_id,
                chain.c.checkpoint_ns,
                cast(untyped, Text),
            ),
        )  # type: ignore[return-value]

    def _versions(self, checkpoints: Any) -> Any:
        """Each (channel, version) pair of the ``channel_versions`` of ``checkpoints``."""
        if self.postgres:
            each = func.jsonb_each_text(type_coerce(checkpoints.c.channel_versions, JSONB))
        else:
            each = func.json_each(checkpoints.c.channel_versions)
        return each.table_valued("key", "value").alias("versions")

    def drop_unreferenced_blobs(self, sessions: Sequence[uuid.UUID]) -> Delete:
        """The blobs of ``sessions`` that none of their checkpoints refers to, directly or as
        the base a referred delta builds on (after checkpoints were pruned or deleted)."""
        pairs = self._versions(lg_checkpoints_table)
        wanted = (
            select(C.session_id, C.checkpoint_ns, pairs.c.key.label("channel"),
                   cast(pairs.c.value, Text).label("version"))
            .select_from(lg_checkpoints_table)
            .join(pairs, true())
            .where(C.session_id.in_(sessions))
            .cte("wanted")
        )  # fmt: skip
        kept = _chain(
            select(*_BLOB_COLUMNS).join(
                wanted,
                and_(
                    B.session_id == wanted.c.session_id,
                    B.checkpoint_ns == wanted.c.checkpoint_ns,
                    B.channel == wanted.c.channel,
                    B.version == wanted.c.version,
                ),
            )
        )
        still_used = (
            select(kept.c.version)
            .where(
                kept.c.session_id == B.session_id,
                kept.c.checkpoint_ns == B.checkpoint_ns,
                kept.c.channel == B.channel,
                kept.c.version == B.version,
            )
            .exists()
        )
        return delete(lg_blobs_table).where(B.session_id.in_(sessions), ~still_used)

    def copy_rows(self, source: uuid.UUID, target: uuid.UUID) -> list[Insert]:
        """Copy every checkpoint, blob and write of ``source`` into ``target`` (kept if there)."""
        copies: list[Insert] = []
        for table in (lg_checkpoints_table, lg_blobs_table, lg_writes_table):
            names = [c.name for c in table.columns]
            picked = [
                literal(target, table.c.session_id.type) if n == "session_id" else table.c[n]
                for n in names
            ]
            rows = select(*picked).where(table.c.session_id == source, true())
            copies.append(self._insert(table).from_select(names, rows).on_conflict_do_nothing())
        return copies

    def insert_kept(self, table: Any) -> Insert:
        """Insert rows into ``table``; a row already there is kept."""
        stmt: Insert = self._insert(table).on_conflict_do_nothing()
        return stmt

    def metadata_matches(self, filter: Mapping[str, Any]) -> ColumnElement[bool]:
        """Checkpoints whose metadata has every key of ``filter`` with that value."""
        check_filter_keys(filter)
        if self.postgres:  # JSONB containment, as LangGraph's PostgreSQL saver does
            return type_coerce(C["metadata"], JSONB).contains(dict(filter))
        return and_(true(), *(_sqlite_has(key, value) for key, value in filter.items()))


def _replace_writes(writes: Any) -> Any:
    return writes.on_conflict_do_update(
        index_elements=[W.session_id, W.checkpoint_ns, W.checkpoint_id, W.task_id, W.idx],
        set_={
            "channel": writes.excluded.channel,
            "type": writes.excluded.type,
            "blob": writes.excluded.blob,
            "task_path": writes.excluded.task_path,
        },
    )


def _sqlite_has(key: str, value: Any) -> ColumnElement[bool]:
    path = f'$."{key}"'
    kind = func.json_type(C["metadata"], path)
    if value is None:
        return kind == "null"
    if isinstance(value, bool):
        return kind == ("true" if value else "false")
    extracted = func.json_extract(C["metadata"], path)
    if isinstance(value, int | float):
        return and_(kind.in_(("integer", "real")), extracted == value)
    if isinstance(value, str):
        return and_(kind == "text", extracted == value)
    # Objects and arrays: compared as minified JSON text.
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return and_(kind.in_(("object", "array")), extracted == func.json(text))
