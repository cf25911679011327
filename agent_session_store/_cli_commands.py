"""The commands of ``agent-session-store``: each takes its
:class:`~agent_session_store._cli_context.Context` and returns an exit code.

The parser and the entry point are in :mod:`agent_session_store.cli`; text and JSON rendering in
:mod:`agent_session_store._cli_format`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import logging
import os
import shlex
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from alembic.script import ScriptDirectory
from sqlalchemy import ColumnElement, Connection, and_, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agent_session_store import _cli_context, _cli_redis, legacy, migrations, transfer
from agent_session_store import _cli_format as fmt
from agent_session_store._arguments import parse_id
from agent_session_store._cli_context import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_SCHEMA,
    EXIT_USAGE,
    CliError,
    Context,
)
from agent_session_store._errors import storage_errors
from agent_session_store._repository import lifecycle
from agent_session_store._rows import (
    CHECKPOINT_COLUMNS,
    SESSION_COLUMNS,
    checkpoint_from_row,
    session_from_row,
)
from agent_session_store._sealed import fields_for
from agent_session_store.encryption import ENV_ACTIVE, ENV_KEYS
from agent_session_store.errors import SessionNotFoundError, StorageError
from agent_session_store.models import AgentSession, SessionState
from agent_session_store.repository import ErasureReport, SessionRepository
from agent_session_store.tables import checkpoints_table, sessions_table, shared_state_table

logger = logging.getLogger("agent_session_store.cli")

# -- db ---------------------------------------------------------------------------------------


def library_version() -> str:
    """The installed agent_session_store version."""
    from agent_session_store import __version__

    return __version__


def known_revisions() -> set[str]:
    """Every revision of the library's migration scripts."""
    script = ScriptDirectory.from_config(migrations.alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def _describe(revision: str | None, head: str) -> str:
    if revision is None:
        return "none (no agent_session_store schema)"
    if revision == head:
        return f"{revision} (head)"
    if revision in known_revisions():
        return f"{revision} (behind: head is {head})"
    return f"{revision} (unknown to this release: migrated by a newer one?)"


async def _connect(ctx: Context, command: str) -> AsyncEngine:
    """The engine, once a connection succeeded; failing that, say which command could not run.

    ``migrations.*`` would name themselves (``migrations.current failed``), not the command the
    operator typed.
    """
    engine = ctx.engine(allow_missing_file=True)
    with storage_errors(f"agent-session-store {command}"):
        async with engine.connect():
            pass
    return engine


def _refuse_unknown(revision: str | None) -> None:
    """Refuse a database at a revision this release does not have (Alembic cannot move it)."""
    unknown = [rev for rev in (revision or "").split(", ") if rev and rev not in known_revisions()]
    if unknown:
        raise CliError(
            f"the database is at revision {', '.join(unknown)}, which agent_session_store "
            f"{library_version()} does not know (a newer release migrated it): upgrade the "
            "agent-session-store package",
            EXIT_SCHEMA,
        )


async def db_upgrade(ctx: Context) -> int:
    engine = await _connect(ctx, "db upgrade")
    before = await migrations.current(engine)
    _refuse_unknown(before)
    await migrations.upgrade(engine, ctx.args.revision)
    after = await migrations.current(engine)
    if before == after:
        ctx.print(f"{ctx.shown_url}: already at {_describe(after, migrations.head())}")
    else:
        ctx.print(f"{ctx.shown_url}: upgraded from {before or 'empty'} to {after}")
    return EXIT_OK


async def db_downgrade(ctx: Context) -> int:
    if ctx.args.revision == "base" and not ctx.args.yes:
        raise CliError(
            "downgrading to base drops agent_session_store's tables and every session in them; "
            "add --yes to confirm",
            EXIT_USAGE,
        )
    ctx.engine()  # a missing SQLite file has nothing to downgrade: exit 3
    engine = await _connect(ctx, "db downgrade")
    before = await migrations.current(engine)
    _refuse_unknown(before)
    await migrations.downgrade(engine, ctx.args.revision)
    after = await migrations.current(engine)
    ctx.print(f"{ctx.shown_url}: downgraded from {before or 'empty'} to {after or 'empty'}")
    return EXIT_OK


async def _current(ctx: Context, command: str) -> str | None:
    # A missing SQLite file has no schema; opening it would create an empty one.
    ctx.engine(allow_missing_file=True)
    if ctx.missing_sqlite_file():
        return None
    return await migrations.current(await _connect(ctx, command))


async def db_current(ctx: Context) -> int:
    ctx.print(_describe(await _current(ctx, "db current"), migrations.head()))
    return EXIT_OK


async def db_check(ctx: Context) -> int:
    head, revision = migrations.head(), await _current(ctx, "db check")
    if revision == head:
        ctx.print(f"up to date: {_describe(revision, head)}")
        return EXIT_OK
    _refuse_unknown(revision)
    found = f"is at revision {revision}" if revision else "has no agent_session_store schema"
    raise CliError(
        f"the database {found}, but agent_session_store {library_version()} needs {head}: "
        f"run {_upgrade_command(ctx)}",
        EXIT_SCHEMA,
    )


def _upgrade_command(ctx: Context) -> str:
    command = f"`agent-session-store db upgrade --url {ctx.shown_url}`"
    if ctx.url.password is not None:
        command += " with the real password in place of ***"
    return command


async def db_sql(ctx: Context) -> int:
    start = ctx.args.start
    span = f"{start}:{ctx.args.revision}" if start else f"empty to {ctx.args.revision}"
    ctx.print(f"-- agent_session_store {library_version()} migrations, {span}, for PostgreSQL")
    ctx.print(migrations.offline_sql("postgresql+asyncpg://", ctx.args.revision, start=start))
    return EXIT_OK


# -- sessions ---------------------------------------------------------------------------------


def _not_found(session_id: str) -> str:
    return (
        f"session {session_id!r} not found (unknown, malformed, or purged); "
        "list sessions with `agent-session-store sessions list`"
    )


async def _not_found_after_checking(ctx: Context, session_id: str) -> CliError:
    """The not-found error, once the database was reached and its schema checked.

    The repository answers a malformed id without asking the database; the command asks it
    anyway, so that an unreachable server exits 1 and a schema that is behind exits 3 whatever
    the id, as they do for a well-formed one.
    """
    with storage_errors("checking the schema"):
        async with ctx.engine().connect() as conn:
            await conn.run_sync(migrations.check_connection)
    return CliError(_not_found(session_id), EXIT_NOT_FOUND)


def _session_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filters of ``sessions list`` and ``sessions count``, as the repository takes them."""
    before = args.updated_before
    return {
        "agent_type": args.agent_type,
        "user_id": args.user_id,
        "state": args.state,
        "key_prefix": args.key_prefix,
        "updated_before": None if before is None else datetime.now(UTC) - before.delta,
        "metadata": None if args.metadata is None else dict(args.metadata),
    }


async def sessions_list(ctx: Context) -> int:
    args = ctx.args
    page = await ctx.repository().list_sessions(
        limit=args.limit, cursor=args.cursor, **_session_filters(args)
    )
    if args.json:
        items = [s.model_dump(mode="json", exclude={"checkpoints"}) for s in page.items]
        ctx.print(fmt.to_json({"items": items, "next_cursor": page.next_cursor}))
        return EXIT_OK
    ctx.print(fmt.sessions_table(page.items) if page.items else "no sessions")
    if page.next_cursor:
        ctx.print(f"next cursor: {page.next_cursor}")
    return EXIT_OK


async def sessions_count(ctx: Context) -> int:
    n = await ctx.repository().count_sessions(**_session_filters(ctx.args))
    ctx.print(fmt.to_json({"count": n}) if ctx.args.json else fmt.count(n, "session"))
    return EXIT_OK


async def sessions_show(ctx: Context) -> int:
    args = ctx.args
    _check_show_arguments(args)
    if args.key is not None:
        session = await _session_by_key(ctx)
    else:
        session = await _session_by_id(ctx)
    if args.json:
        ctx.print(fmt.to_json(session.to_dict()))
    else:
        ctx.print(fmt.session_details(session, datetime.now(UTC)))
    return EXIT_OK


def _check_show_arguments(args: argparse.Namespace) -> None:
    """ID or ``--key`` (with ``--agent-type``), one of them; checked before connecting."""
    if args.session_id is not None and args.key is not None:
        raise CliError(
            "give a session ID or --key, not both (an ID names one session already)", EXIT_USAGE
        )
    if args.session_id is None and args.key is None:
        raise CliError(
            "give a session ID, or --key KEY --agent-type TYPE [--user-id USER] for the live "
            "session created with that key",
            EXIT_USAGE,
        )
    if args.key is not None and args.agent_type is None:
        raise CliError(
            "--key needs --agent-type (and --user-id unless the session has none): a key names "
            "one live session per agent type and user",
            EXIT_USAGE,
        )
    if args.key is None and (args.agent_type is not None or args.user_id is not None):
        raise CliError(
            "--agent-type and --user-id go with --key; with a session ID, leave them out",
            EXIT_USAGE,
        )


async def _session_by_id(ctx: Context) -> AgentSession:
    """The session with the ID, live or soft-deleted (until ``purge`` removes it)."""
    session_id = ctx.args.session_id
    if parse_id(session_id) is None:
        raise await _not_found_after_checking(ctx, session_id)
    repo = ctx.repository(recent_checkpoints=ctx.args.checkpoints)
    session = await repo.get_session(session_id)
    if session is None:
        # The repository serves live sessions only; `sessions list --state deleted` lists
        # soft-deleted ones, so show them too (read here, never through the cache).
        session = await _deleted_session(ctx, session_id, ctx.args.checkpoints)
    if session is None:
        raise CliError(_not_found(session_id), EXIT_NOT_FOUND)
    return session


async def _deleted_session(ctx: Context, session_id: str, recent: int) -> AgentSession | None:
    """The soft-deleted session ``session_id`` with its newest ``recent`` checkpoints, or None."""
    sid = uuid.UUID(session_id)
    S, C = sessions_table.c, checkpoints_table.c

    def read(conn: Connection) -> AgentSession | None:
        where = and_(S.id == sid, S.state == SessionState.DELETED.value)
        row = conn.execute(select(*SESSION_COLUMNS).where(where)).first()
        if row is None:
            return None
        newest = (
            select(*CHECKPOINT_COLUMNS)
            .where(C.session_id == sid)
            .order_by(C.seq.desc())
            .limit(recent)
        )
        checkpoints = [checkpoint_from_row(cp) for cp in conn.execute(newest)]
        return session_from_row(row, checkpoints[::-1])

    with storage_errors("reading a deleted session"):
        async with ctx.engine().connect() as conn:
            session = await conn.run_sync(read)
    # Read beside the repository: its values are opened (or refused) as the repository's are.
    return None if session is None else fields_for(ctx.encryption()).open_session(session)


async def _session_by_key(ctx: Context) -> AgentSession:
    """The live session of ``--agent-type`` and ``--user-id`` created with ``--key``."""
    args = ctx.args
    user_id = args.user_id or ""
    repo = ctx.repository(recent_checkpoints=args.checkpoints)
    session = await repo.get_session_by_key(args.agent_type, user_id, key=args.key)
    if session is None:
        user = f"user {user_id!r}" if user_id else "no user id"
        listing = f"--agent-type {shlex.quote(args.agent_type)}" + (
            f" --user-id {shlex.quote(user_id)}" if user_id else ""
        )
        raise CliError(
            f"no live session has the key {args.key.strip()!r} for agent type "
            f"{args.agent_type!r} and {user} (a deleted session frees its key); list them with "
            f"`agent-session-store sessions list {listing}`",
            EXIT_NOT_FOUND,
        )
    return session


async def sessions_checkpoints(ctx: Context) -> int:
    args = ctx.args
    if parse_id(args.session_id) is None:
        raise await _not_found_after_checking(ctx, args.session_id)
    try:
        checkpoints = await ctx.repository().list_checkpoints(
            args.session_id, after_seq=args.after_seq, limit=args.limit
        )
    except SessionNotFoundError:
        raise CliError(_not_found(args.session_id), EXIT_NOT_FOUND) from None
    next_after = checkpoints[-1].seq if len(checkpoints) == args.limit else None
    if args.json:
        items = [cp.to_dict() for cp in checkpoints]
        ctx.print(fmt.to_json({"items": items, "next_after_seq": next_after}))
        return EXIT_OK
    ctx.print(fmt.checkpoints_table(checkpoints) if checkpoints else "no checkpoints")
    if next_after is not None:
        ctx.print(f"more: --after-seq {next_after}")
    return EXIT_OK


# -- maintenance ------------------------------------------------------------------------------


async def _count_sessions(ctx: Context, where: ColumnElement[bool]) -> int:
    """A read-only count of the sessions matching ``where``, after checking the schema."""

    def count(conn: Connection) -> int:
        migrations.check_connection(conn)
        stmt = select(func.count()).select_from(sessions_table).where(where)
        return int(conn.execute(stmt).scalar_one())

    with storage_errors("counting sessions"):
        async with ctx.engine().connect() as conn:
            return await conn.run_sync(count)


async def _with_progress(
    ctx: Context,
    doing: Callable[[int], str],
    where: ColumnElement[bool],
    work: Callable[[], Awaitable[int]],
) -> int:
    """Await ``work()``; on a terminal, count first and show a spinner with the elapsed time.

    The repository sweeps in batches inside one call and reports only the total, so the
    progress shown is the expected count (``doing(count)``) and the time spent, not a running
    count.
    """
    if not sys.stderr.isatty():
        return await work()
    expected = await _count_sessions(ctx, where)
    return await fmt.with_spinner(doing(expected), work())


# What a sweep does when --older-than is not given: the repository's own default, read from its
# signature so that the command and the API cannot drift apart.
STALE_AFTER: timedelta = (
    inspect.signature(SessionRepository.cleanup_stale_sessions).parameters["max_age"].default
)


async def cleanup(ctx: Context) -> int:
    if not ctx.args.dry_run:  # a dry run changes nothing, so no cached copy can go stale
        ctx.require_cache_choice("cleanup")
    given: fmt.Duration | None = ctx.args.older_than
    max_age = given or fmt.Duration(fmt.duration_text(STALE_AFTER), STALE_AFTER)
    cutoff = datetime.now(UTC) - max_age.delta
    ago = f"with no heartbeat for {max_age.text} (since {fmt.timestamp(cutoff)})"

    def what(n: int) -> str:
        return f"{fmt.count(n, 'ACTIVE session')} {ago}"

    S = sessions_table.c
    stale = and_(S.state == SessionState.ACTIVE.value, S.last_heartbeat < cutoff)
    if ctx.args.dry_run:
        n = await _count_sessions(ctx, stale)
        ctx.print(f"cleanup --dry-run: {what(n)} would be failed; nothing was changed")
        return EXIT_OK
    repo, batch = ctx.repository(), ctx.args.batch_size
    started = datetime.now(UTC)
    try:
        failed = await _with_progress(
            ctx, lambda n: f"cleanup: failing {fmt.count(n, 'stale session')}", stale,
            lambda: repo.cleanup_stale_sessions(max_age.delta, batch_size=batch),
        )  # fmt: skip
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the command
        # Each batch is its own transaction: say how far it got before stopping.
        done = await _count_sessions(ctx, _swept_since(started))
        raise CliError(
            f"interrupted: {fmt.count(done, 'stale session')} had already been failed and "
            f"committed (batches of {batch}); the batch in progress was rolled back. Run the "
            "same command again to fail the rest",
            EXIT_INTERRUPTED,
        ) from None
    ctx.print(f"cleanup: failed {what(failed)}")
    trouble = await ctx.redis_trouble()
    if trouble is not None:
        consequence = (
            f"{fmt.count(failed, 'session was', 'sessions were')} failed and committed, but "
            "applications may serve cached copies until they expire (the cache's ttl)"
            if failed
            else "nothing needed invalidating this time, but Redis must be reachable for the "
            "next sweep to reach the applications' cache"
        )
        raise CliError(
            f"Redis at {_cli_redis.shown(ctx.redis_url or '')} could not be used ({trouble}): "
            + consequence,
            EXIT_ERROR,
        )
    return EXIT_OK


def _swept_since(started: datetime) -> ColumnElement[bool]:
    """Sessions a stale sweep failed at or after ``started``."""
    S = sessions_table.c
    return and_(
        S.state == SessionState.FAILED.value,
        S.updated_at >= started,
        S.context["failure_reason"].as_string() == "heartbeat_timeout",
    )


async def purge(ctx: Context) -> int:
    args = ctx.args
    if args.deleted_before is None and args.finished_before is None and not args.expired:
        raise CliError(
            "purge needs --deleted-before AGE (soft-deleted sessions), --finished-before AGE "
            "(COMPLETED and FAILED ones), --expired (sessions whose expiry has passed), or "
            "several of them",
            EXIT_USAGE,
        )
    if args.finished_before is not None and not args.dry_run:
        # Finished sessions are served from the applications' cache: it must forget them.
        ctx.require_cache_choice("purge --finished-before")
    if args.deleted_before is not None:
        await _purge_deleted(ctx, args.deleted_before)
    if args.finished_before is not None:
        await _purge_finished(ctx, args.finished_before)
    if args.expired:
        await _purge_expired(ctx)
    if args.finished_before is not None:
        await _raise_redis_trouble(ctx, "purged sessions")
    return EXIT_OK


async def _purge_deleted(ctx: Context, older_than: fmt.Duration) -> None:
    cutoff = datetime.now(UTC) - older_than.delta
    ago = f"more than {older_than.text} ago (before {fmt.timestamp(cutoff)})"

    def what(n: int) -> str:
        return f"{fmt.count(n, 'session')} soft-deleted {ago}"

    doomed = lifecycle.deleted_before(cutoff)
    if ctx.args.dry_run:
        n = await _count_sessions(ctx, doomed)
        ctx.print(f"purge --dry-run: {what(n)} would be removed; nothing was changed")
        return
    repo, batch = ctx.repository(), ctx.args.batch_size
    removed = await _with_progress(
        ctx, lambda n: f"purge: removing {fmt.count(n, 'deleted session')}", doomed,
        lambda: repo.purge_deleted_sessions(older_than.delta, batch_size=batch),
    )  # fmt: skip
    its = "its checkpoints" if removed == 1 else "their checkpoints"
    ctx.print(f"purge: removed {what(removed)}, with {its}")


# What `purge --finished-before` removes: every finished state (the library's default).
FINISHED = (SessionState.COMPLETED, SessionState.FAILED)


async def _purge_finished(ctx: Context, older_than: fmt.Duration) -> None:
    cutoff = datetime.now(UTC) - older_than.delta
    ago = f"not updated for {older_than.text} (since {fmt.timestamp(cutoff)})"

    def what(n: int) -> str:
        return f"{fmt.count(n, 'finished session')} (completed or failed) {ago}"

    doomed = lifecycle.finished_before(cutoff, lifecycle.finished_states(FINISHED))
    if ctx.args.dry_run:
        n = await _count_sessions(ctx, doomed)
        ctx.print(f"purge --dry-run: {what(n)} would be removed; nothing was changed")
        return
    repo, batch = ctx.repository(), ctx.args.batch_size
    try:
        removed = await _with_progress(
            ctx, lambda n: f"purge: removing {fmt.count(n, 'finished session')}", doomed,
            lambda: repo.purge_finished_sessions(
                older_than.delta, states=FINISHED, batch_size=batch
            ),
        )  # fmt: skip
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the command
        raise CliError(
            f"interrupted: the batches of {batch} sessions done so far were removed and "
            "committed; the batch in progress was rolled back. Run the same command again to "
            "remove the rest",
            EXIT_INTERRUPTED,
        ) from None
    its = "its checkpoints" if removed == 1 else "their checkpoints"
    ctx.print(f"purge: removed {what(removed)}, with {its}")


async def _raise_redis_trouble(ctx: Context, changed: str) -> None:
    """Exit 1 (after the summary) when the Redis given could not be used to forget copies."""
    trouble = await ctx.redis_trouble()
    if trouble is not None:
        raise CliError(
            f"Redis at {_cli_redis.shown(ctx.redis_url or '')} could not be used ({trouble}): "
            f"the {changed} were committed, but applications may serve cached copies until "
            "they expire (the cache's ttl); run the command again once Redis is reachable",
            EXIT_ERROR,
        )


# -- erase-user -------------------------------------------------------------------------------


async def _count_erasure(ctx: Context, user_id: str, agent_type: str | None) -> ErasureReport:
    """What ``erase_user`` would remove, read only, after checking the schema."""
    doomed = lifecycle.user_sessions(user_id, agent_type)
    documents = lifecycle.user_shared_state(user_id, agent_type)
    S = sessions_table.c

    def count(conn: Connection) -> ErasureReport:
        migrations.check_connection(conn)
        sessions = select(func.count(), func.coalesce(func.sum(S.checkpoint_count), 0))
        n, checkpoints = conn.execute(sessions.where(doomed)).one()
        shared = select(func.count()).select_from(shared_state_table).where(documents)
        return ErasureReport(int(n), int(checkpoints), int(conn.execute(shared).scalar_one()))

    with storage_errors("counting a user's data"):
        async with ctx.engine().connect() as conn:
            return await conn.run_sync(count)


def _erasure_text(report: ErasureReport) -> str:
    return (
        f"{fmt.count(report.sessions, 'session')}, {fmt.count(report.checkpoints, 'checkpoint')}"
        f" and {fmt.count(report.shared_state, 'shared-state document')}"
    )


async def erase_user(ctx: Context) -> int:
    args = ctx.args
    lifecycle.check_user_to_erase(args.user_id, args.agent_type)  # before connecting: exit 2
    whose = f"user {args.user_id!r}" + (
        f" (agent type {args.agent_type!r})" if args.agent_type is not None else ""
    )
    if args.dry_run:
        counted = await _count_erasure(ctx, args.user_id, args.agent_type)
        ctx.print(
            f"erase-user --dry-run: {_erasure_text(counted)} of {whose} would be erased; "
            "nothing was changed"
        )
        return EXIT_OK
    ctx.require_cache_choice("erase-user")
    repo, batch = ctx.repository(), args.batch_size
    try:
        report = await repo.erase_user(args.user_id, agent_type=args.agent_type, batch_size=batch)
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the command
        raise CliError(
            f"interrupted: the batches of {batch} sessions done so far were erased and "
            "committed; the batch in progress was rolled back. Run the same command again to "
            "erase the rest",
            EXIT_INTERRUPTED,
        ) from None
    ctx.print(f"erase-user: erased {_erasure_text(report)} of {whose}")
    logger.info("erase-user: erased %s", _erasure_text(report))
    await _raise_redis_trouble(ctx, "erased sessions")
    return EXIT_OK


async def _purge_expired(ctx: Context) -> None:
    now = datetime.now(UTC)
    what = f"expired by {fmt.timestamp(now)}"
    doomed = lifecycle.expired_by(now)
    if ctx.args.dry_run:
        n = await _count_sessions(ctx, doomed)
        ctx.print(f"purge --dry-run: {fmt.count(n, 'session')} {what} would be removed; "
                  "nothing was changed")  # fmt: skip
        return
    repo, batch = ctx.repository(), ctx.args.batch_size
    removed = await _with_progress(
        ctx, lambda n: f"purge: removing {fmt.count(n, 'expired session')}", doomed,
        lambda: repo.purge_expired_sessions(batch_size=batch),
    )  # fmt: skip
    its = "its checkpoints" if removed == 1 else "their checkpoints"
    ctx.print(f"purge: removed {fmt.count(removed, 'session')} {what}, with {its}")


async def stats(ctx: Context) -> int:
    result = await ctx.repository().stats()
    client = ctx.redis()
    cache = None
    if client is not None and ctx.redis_url:
        cache = await _cli_redis.report(client, ctx.redis_url, ctx.redis_namespace)
    if ctx.args.json:
        data = {**result.model_dump(mode="json"), "sessions": result.sessions, "cache": cache}
        ctx.print(fmt.to_json(data))
    else:
        more = _cli_redis.report_rows(cache) if cache is not None else []
        ctx.print(fmt.stats_text(result, datetime.now(UTC), more))
    if cache is not None and not cache["reachable"]:
        raise CliError(
            f"Redis at {cache['url']} could not be used ({cache['error']}): the database figures "
            "above are complete, the cache's are missing",
            EXIT_ERROR,
        )
    return EXIT_OK


# -- import-legacy ----------------------------------------------------------------------------


def _source_engine(ctx: Context) -> AsyncEngine:
    """The engine of ``--from-url`` (the old manager's database), closed with the command."""
    try:
        url = make_url(ctx.args.from_url)
    except sa_exc.ArgumentError:
        raise CliError(
            "cannot parse --from-url; expected e.g. postgresql+asyncpg://user:password@host/db",
            EXIT_USAGE,
        ) from None
    shown = url.render_as_string(hide_password=True)
    path = url.database if url.get_backend_name() == "sqlite" else None
    if path not in (None, "", ":memory:") and not Path(str(path)).exists():
        # Opening it would create an empty file.
        raise CliError(f"there is no SQLite database at {path} (--from-url)", EXIT_USAGE)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and url.get_driver_name() == "asyncpg":
        kwargs["connect_args"] = {"timeout": _cli_context.CONNECT_TIMEOUT}
    try:
        # Not the library's create_engine: it would switch a SQLite file to WAL, and the old
        # database is only read.
        engine = create_async_engine(url, **kwargs)
    except (ValueError, sa_exc.ArgumentError, sa_exc.InvalidRequestError, ImportError) as exc:
        raise CliError(
            f"cannot use --from-url {shown} ({exc}); use an async driver: "
            "postgresql+asyncpg://... or sqlite+aiosqlite:///...",
            EXIT_USAGE,
        ) from None
    ctx._closers.append(engine.dispose)
    return engine


async def import_legacy(ctx: Context) -> int:
    args = ctx.args
    source, target = _source_engine(ctx), ctx.engine()
    total = await legacy.count_rows(source, args.table) if sys.stderr.isatty() else None
    report = legacy.ImportReport(dry_run=args.dry_run)
    batches = legacy.import_batches(
        source, target, table=args.table, batch_size=args.batch_size, dry_run=args.dry_run
    )
    try:
        async for batch in batches:
            report.add(batch)
            if total is not None:
                fmt.draw_progress(sys.stderr, "import-legacy", report.read, total)
    except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the command
        raise CliError(
            f"interrupted: {fmt.count(report.imported, 'session')} had already been imported "
            f"and committed (batches of {args.batch_size}); the batch in progress was rolled "
            "back. Run the same command again to import the rest",
            EXIT_INTERRUPTED,
        ) from None
    except StorageError as exc:  # its message names the database (source or target) that failed
        raise CliError(str(exc), EXIT_ERROR) from exc
    finally:
        if total is not None:
            fmt.clear_progress(sys.stderr)
    source_shown = source.url.render_as_string(hide_password=True)
    would = " would be" if args.dry_run else ""
    ctx.print(
        f"import-legacy{' --dry-run' if args.dry_run else ''}: {fmt.count(report.read, 'row')} of "
        f"{args.table!r} at {source_shown}: {report.imported}{would} imported, "
        f"{report.present} skipped as present, {len(report.rejected)} rejected"
        + ("; nothing was written" if args.dry_run else "")
    )
    for rejected in report.rejected:
        ctx.print(f"rejected {rejected.old_id!r}: {rejected.reason}")
    for old_id, fields in report.defaulted.items():
        ctx.print(f"defaulted {old_id!r}: {', '.join(fields)}")
    return EXIT_OK


async def rotate_keys(ctx: Context) -> int:
    ctx.require_cache_choice("rotate-keys")
    if ctx.encryption() is None:
        raise CliError(
            f"rotate-keys needs the keys: set {ENV_KEYS}=kid:base64key,... (every key that may "
            f"have encrypted a value, and the new one) and name the new one with --active KID "
            f"(or ${ENV_ACTIVE}); nothing was changed",
            EXIT_USAGE,
        )
    done = await ctx.repository().rotate_keys(batch_size=ctx.args.batch_size)
    skipped = f"; {done.skipped} replaced by a writer meanwhile (left as written)"
    ctx.print(
        f"rotate-keys: re-encrypted under key {done.key_id!r}: "
        f"{fmt.count(done.contexts, 'context')}, {fmt.count(done.checkpoints, 'checkpoint')}, "
        f"{fmt.count(done.shared_values, 'shared-state value')}, "
        f"{fmt.count(done.framework_values, 'LangGraph value')}" + (skipped if done.skipped else "")
    )
    trouble = await ctx.redis_trouble()
    if trouble is not None:
        raise CliError(
            f"Redis at {_cli_redis.shown(ctx.redis_url or '')} could not be used ({trouble}): "
            "the values were re-encrypted and committed, but applications may serve cached "
            "copies under the old key until they expire (the cache's ttl): keep the old key "
            "configured until then",
            EXIT_ERROR,
        )
    return EXIT_OK


# -- export, import ---------------------------------------------------------------------------


async def export(ctx: Context) -> int:
    args = ctx.args
    engine = ctx.engine()
    if args.output is None:
        report = await transfer.export_sessions(
            engine, sys.stdout, user_id=args.user_id, agent_type=args.agent_type
        )
        summary = sys.stderr  # stdout holds the lines
    else:
        # Written beside it and renamed once whole: FILE never holds half an export.
        partial = f"{args.output}.partial"
        try:
            with _opened(partial, "w") as out:
                report = await transfer.export_sessions(
                    engine, out, user_id=args.user_id, agent_type=args.agent_type
                )
            os.replace(partial, args.output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        summary = ctx.out
    where = "stdout" if args.output is None else args.output
    print(
        f"export: wrote {fmt.count(report.sessions, 'session')} "
        f"({fmt.count(report.checkpoints, 'checkpoint')}) and "
        f"{fmt.count(report.shared_state, 'shared-state document')} to {where}",
        file=summary,
    )
    return EXIT_OK


@contextlib.contextmanager
def _opened(name: str, mode: str) -> Iterator[Any]:
    """The file ``name`` (``-``: stdin) opened in ``mode``; a failure to open is a CliError."""
    if name == "-" and mode == "rb":
        yield sys.stdin.buffer
        return
    try:
        encoding = None if "b" in mode else "utf-8"
        file: IO[Any] = open(name, mode, encoding=encoding)  # noqa: SIM115
    except OSError as exc:
        doing = "read" if "r" in mode else "write"
        raise CliError(f"cannot {doing} {name}: {exc.strerror or exc}", EXIT_USAGE) from None
    with file:
        yield file


def _problem(problem: transfer.Problem) -> str:
    return f"{problem.what}: {problem.reason}" if problem.what else problem.reason


async def import_export(ctx: Context) -> int:
    args = ctx.args
    engine = ctx.engine()
    with _opened(args.file, "rb") as lines:
        try:
            report = await transfer.import_sessions(engine, lines, batch_size=args.batch_size)
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the command
            raise CliError(
                f"interrupted: the batches of {args.batch_size} lines done so far were imported "
                "and committed; the batch in progress was rolled back. Run the same command "
                "again: what is there is skipped as present",
                EXIT_INTERRUPTED,
            ) from None
    ctx.print(
        f"import: {fmt.count(report.lines, 'line')}: "
        f"{fmt.count(report.sessions_imported, 'session')} imported "
        f"({fmt.count(report.checkpoints_imported, 'checkpoint')}), "
        f"{report.sessions_present} present; "
        f"{fmt.count(report.shared_state_imported, 'shared-state document')} imported, "
        f"{report.shared_state_present} present; {fmt.count(len(report.conflicts), 'conflict')}, "
        f"{fmt.count(len(report.rejected), 'line')} rejected"
    )
    for problem in report.conflicts:
        ctx.print(f"conflict: line {problem.line}: {_problem(problem)}")
    for problem in report.rejected:
        ctx.print(f"rejected: line {problem.line}: {_problem(problem)}")
    if not report.complete:
        raise CliError(
            f"{args.file} ends without the export's end line: it was cut short (an export that "
            "did not finish, or a partial copy); the lines it has were imported. Export again "
            "and import the whole file: what is already there is skipped as present",
            EXIT_ERROR,
        )
    if report.rejected:
        raise CliError(
            f"{fmt.count(len(report.rejected), 'line')} of {args.file} could not be imported "
            "(listed above); the rest was imported",
            EXIT_ERROR,
        )
    return EXIT_OK
