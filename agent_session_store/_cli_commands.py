"""The commands of ``agent-session-store``: each takes its
:class:`~agent_session_store._cli_context.Context` and returns an exit code.

The parser and the entry point are in :mod:`agent_session_store.cli`; text and JSON rendering in
:mod:`agent_session_store._cli_format`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import shlex
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import ColumnElement, Connection, and_, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from agent_session_store import _cli_context, _cli_redis, legacy, migrations
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
from agent_session_store._rows import (
    CHECKPOINT_COLUMNS,
    SESSION_COLUMNS,
    checkpoint_from_row,
    session_from_row,
)
from agent_session_store.errors import SessionNotFoundError, StorageError
from agent_session_store.models import AgentSession, SessionState
from agent_session_store.repository import SessionRepository
from agent_session_store.tables import checkpoints_table, sessions_table

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
            return await conn.run_sync(read)


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
    if (ctx.args.deleted_before is None) == (not ctx.args.expired):
        raise CliError("give one of --deleted-before AGE and --expired", EXIT_USAGE)
    if ctx.args.expired:
        return await _purge_expired(ctx)
    older_than: fmt.Duration = ctx.args.deleted_before
    cutoff = datetime.now(UTC) - older_than.delta
    ago = f"more than {older_than.text} ago (before {fmt.timestamp(cutoff)})"

    def what(n: int) -> str:
        return f"{fmt.count(n, 'session')} soft-deleted {ago}"

    S = sessions_table.c
    doomed = and_(S.state == SessionState.DELETED.value, S.updated_at < cutoff)
    if ctx.args.dry_run:
        n = await _count_sessions(ctx, doomed)
        ctx.print(f"purge --dry-run: {what(n)} would be removed; nothing was changed")
        return EXIT_OK
    repo, batch = ctx.repository(), ctx.args.batch_size
    removed = await _with_progress(
        ctx, lambda n: f"purge: removing {fmt.count(n, 'deleted session')}", doomed,
        lambda: repo.purge_deleted_sessions(older_than.delta, batch_size=batch),
    )  # fmt: skip
    its = "its checkpoints" if removed == 1 else "their checkpoints"
    ctx.print(f"purge: removed {what(removed)}, with {its}")
    return EXIT_OK


async def _purge_expired(ctx: Context) -> int:
    now = datetime.now(UTC)
    what = f"expired by {fmt.timestamp(now)}"
    S = sessions_table.c
    if ctx.args.dry_run:
        n = await _count_sessions(ctx, S.expires_at <= now)
        ctx.print(f"purge --dry-run: {fmt.count(n, 'session')} {what} would be removed; "
                  "nothing was changed")  # fmt: skip
        return EXIT_OK
    repo, batch = ctx.repository(), ctx.args.batch_size
    removed = await _with_progress(
        ctx, lambda n: f"purge: removing {fmt.count(n, 'expired session')}", S.expires_at <= now,
        lambda: repo.purge_expired_sessions(batch_size=batch),
    )  # fmt: skip
    its = "its checkpoints" if removed == 1 else "their checkpoints"
    ctx.print(f"purge: removed {fmt.count(removed, 'session')} {what}, with {its}")
    return EXIT_OK


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
