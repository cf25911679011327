"""The ``agent-session-store`` command: migrate, inspect and clean up a session store database.

Example::

    agent-session-store db upgrade --url postgresql+asyncpg://app@db/app
    agent-session-store sessions list --state active --limit 20
    agent-session-store cleanup --older-than 48h --dry-run

See docs/cli.md for every command. ``main()`` returns the exit code (listed in ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from alembic.util import CommandError
from sqlalchemy import exc as sa_exc

from agent_session_store import _cli_format as fmt
from agent_session_store import legacy
from agent_session_store._arguments import MAX_BATCH_SIZE, MAX_PAGE_SIZE
from agent_session_store._cli_commands import (
    cleanup,
    db_check,
    db_current,
    db_downgrade,
    db_sql,
    db_upgrade,
    import_legacy,
    known_revisions,
    library_version,
    purge,
    sessions_checkpoints,
    sessions_list,
    sessions_show,
    stats,
)
from agent_session_store._cli_context import (
    DEFAULT_REDIS_NAMESPACE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PIPE_CLOSED,
    EXIT_SCHEMA,
    EXIT_USAGE,
    REDIS_NAMESPACE_ENV,
    REDIS_URL_ENV,
    URL_ENV,
    CliError,
    Context,
)
from agent_session_store._errors import describe
from agent_session_store.engine import DEFAULT_URL
from agent_session_store.errors import (
    AgentSessionStoreError,
    SchemaOutOfDateError,
    SessionNotFoundError,
    SessionValidationError,
)
from agent_session_store.models import SessionState

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PIPE_CLOSED",
    "EXIT_SCHEMA",
    "EXIT_USAGE",
    "main",
]

logger = logging.getLogger(__name__)

EPILOG = f"""\
environment:
  {URL_ENV}   database URL when --url is not given
                                (default {DEFAULT_URL})
  {REDIS_URL_ENV}      Redis URL when --redis-url is not given (the cache that
                                cleanup invalidates and stats reports on)
  {REDIS_NAMESPACE_ENV}  the cache namespace when --redis-namespace is not given

exit codes:
  0    success
  1    operational error: the database is unreachable or failed; or the Redis
       given could not be used (cleanup, stats: after printing what was done)
  2    usage error: bad arguments, unparseable URL or unsupported driver
  3    the database schema is not at this version's revision
       (run `agent-session-store db upgrade`), or a newer release migrated it
  4    the session asked for does not exist
  130  interrupted (Ctrl-C); cleanup says how many sessions it had failed
  141  stdout was closed early (e.g. `| head`); nothing more is printed

Passwords in URLs are never printed. See docs/cli.md for examples."""


# -- parser -----------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    # SUPPRESS keeps a subcommand's absent option from hiding one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"database URL (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    common.add_argument(
        "--transaction-pooling",
        action="store_true",
        default=argparse.SUPPRESS,
        help="the URL reaches PostgreSQL through a transaction pooler such as PgBouncer "
        "(the same as ?transaction_pooling=true in the URL)",
    )
    common.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        help=f"Redis URL of the cache (default: ${REDIS_URL_ENV}; none: no cache)",
    )
    common.add_argument(
        "--redis-namespace",
        default=argparse.SUPPRESS,
        help=f"the applications' cache namespace (default: ${REDIS_NAMESPACE_ENV}, "
        f"else {DEFAULT_REDIS_NAMESPACE})",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="log what happens on stderr (-vv: also the SQL)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agent-session-store`` (every level has ``--help``)."""
    common = _common()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="agent-session-store",
        description="Migrate, inspect and clean up an agent_session_store database.",
        epilog=EPILOG,
        formatter_class=formatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {library_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def add(
        group: Any, name: str, handler: Callable[[Context], Awaitable[int]], help: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help, description=help, epilog=EPILOG, formatter_class=formatter,
            parents=[common],
        )  # fmt: skip
        sub.set_defaults(handler=handler)
        return sub

    db = commands.add_parser(
        "db", help="schema migrations", description="Manage agent_session_store's schema (Alembic)."
    )
    db_commands = db.add_subparsers(title="commands", metavar="COMMAND", required=True)
    sub = add(db_commands, "upgrade", db_upgrade, "upgrade the schema (default: to head)")
    sub.add_argument("revision", nargs="?", default="head", help="target revision (head)")
    sub = add(db_commands, "downgrade", db_downgrade, "downgrade the schema to REVISION")
    sub.add_argument("revision", help="target revision; base drops the tables")
    sub.add_argument("--yes", action="store_true", help="confirm a downgrade to base")
    add(db_commands, "current", db_current, "print the database's schema revision")
    add(db_commands, "check", db_check, "exit 3 unless the schema is at head")
    sub = add(db_commands, "sql", db_sql, "print the upgrade SQL for PostgreSQL (no database)")
    sub.add_argument("revision", nargs="?", default="head", help="target revision (head)")
    sub.add_argument("--from", dest="start", metavar="REV", help="start revision (empty)")

    sessions = commands.add_parser(
        "sessions", help="list and inspect sessions", description="List and inspect sessions."
    )
    sessions_commands = sessions.add_subparsers(title="commands", metavar="COMMAND", required=True)
    sub = add(sessions_commands, "list", sessions_list, "list sessions, newest first")
    sub.add_argument("--agent-type", help="only this agent type")
    sub.add_argument("--user-id", help="only this user's sessions")
    sub.add_argument(
        "--state", choices=[s.value for s in SessionState], help="only this state (not deleted)"
    )
    sub.add_argument(
        "--limit", type=fmt.int_from_1_to(MAX_PAGE_SIZE), default=20,
        help=f"page size (20; at most {MAX_PAGE_SIZE})",
    )  # fmt: skip
    sub.add_argument("--cursor", help="the next cursor printed by the previous page")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub = add(sessions_commands, "show", sessions_show, "show a session and recent checkpoints")
    sub.add_argument("session_id", metavar="ID")
    sub.add_argument(
        "--checkpoints",
        type=fmt.non_negative_int,
        default=10,
        metavar="N",
        help="recent checkpoints shown (10)",
    )
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub = add(sessions_commands, "checkpoints", sessions_checkpoints, "page a session's history")
    sub.add_argument("session_id", metavar="ID")
    sub.add_argument(
        "--after-seq", type=fmt.non_negative_int, metavar="SEQ", help="start after this seq"
    )
    sub.add_argument(
        "--limit", type=fmt.int_from_1_to(MAX_PAGE_SIZE), default=100,
        help=f"page size (100; at most {MAX_PAGE_SIZE})",
    )  # fmt: skip
    sub.add_argument("--json", action="store_true", help="print JSON")

    sub = add(commands, "cleanup", cleanup, "fail ACTIVE sessions with no recent heartbeat")
    sub.add_argument(
        "--older-than", type=fmt.duration, required=True, metavar="AGE",
        help="heartbeat age, e.g. 30m, 48h, 7d",
    )  # fmt: skip
    sub.add_argument("--dry-run", action="store_true", help="only count; change nothing")
    sub.add_argument(
        "--batch-size", type=fmt.int_from_1_to(MAX_BATCH_SIZE), default=2000, help="(2000)"
    )
    sub = add(commands, "purge", purge, "hard-delete sessions soft-deleted long ago")
    sub.add_argument(
        "--deleted-before", type=fmt.duration, required=True, metavar="AGE",
        help="time since deletion, e.g. 30d",
    )  # fmt: skip
    sub.add_argument("--dry-run", action="store_true", help="only count; change nothing")
    sub.add_argument(
        "--batch-size", type=fmt.int_from_1_to(MAX_BATCH_SIZE), default=500, help="(500)"
    )
    sub = add(commands, "import-legacy", import_legacy, "import a hand-written manager's table")
    sub.add_argument("--from-url", required=True, metavar="URL", help="the old database (read)")
    sub.add_argument("--table", default="agent_sessions", help="the old table (agent_sessions)")
    sub.add_argument(
        "--batch-size", type=fmt.int_from_1_to(legacy.MAX_BATCH_SIZE), default=1000,
        help=f"rows per transaction (1000; at most {legacy.MAX_BATCH_SIZE})",
    )  # fmt: skip
    sub.add_argument("--dry-run", action="store_true", help="validate and count; write nothing")
    sub = add(commands, "stats", stats, "counts by state and agent type; cache counters")
    sub.add_argument("--json", action="store_true", help="print JSON")
    return parser


# -- entry point ------------------------------------------------------------------------------


def _configure_logging(verbosity: int) -> None:
    if verbosity <= 0:
        return
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    level = logging.INFO if verbosity == 1 else logging.DEBUG
    logging.getLogger("agent_session_store").setLevel(level)
    logging.getLogger("alembic").setLevel(logging.INFO)
    if verbosity > 1:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)


async def _run(ctx: Context) -> int:
    try:
        handler: Callable[[Context], Awaitable[int]] = ctx.args.handler
        return await handler(ctx)
    finally:
        await ctx.close()


def _explain(ctx: Context, exc: BaseException) -> tuple[int, str]:
    """The exit code and message for an expected failure."""
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, SchemaOutOfDateError):
        return EXIT_SCHEMA, str(exc)
    if isinstance(exc, SessionNotFoundError):
        return EXIT_NOT_FOUND, str(exc)
    if isinstance(exc, SessionValidationError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, CommandError):  # Alembic: mostly an unknown revision
        known = ", ".join([*sorted(known_revisions()), "head", "base"])
        return EXIT_USAGE, f"{exc}; known revisions: {known}"
    shown = _shown_url(ctx)
    if isinstance(exc, AgentSessionStoreError):  # StorageError and kin: the database failed
        return EXIT_ERROR, f"{exc} (database: {shown})"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    # Driver errors from outside the library's calls (e.g. an engine that cannot be built).
    detail = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig else exc
    return EXIT_ERROR, (
        f"the database at {shown} failed or could not be reached "
        f"({describe(detail)}); check the URL and that the server is up"
    )


def _shown_url(ctx: Context) -> str:
    try:
        return ctx.shown_url
    except CliError:
        return "(unparseable URL)"


def _stdout_closed() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as other Unix tools do."""
    # Python would complain again when it flushes stdout at exit: point it at /dev/null.
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_PIPE_CLOSED


_EXPECTED = (
    CliError, AgentSessionStoreError, CommandError, sa_exc.DBAPIError, OSError, TimeoutError,
    KeyboardInterrupt,
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``agent-session-store`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Example::

        sys.exit(main(["db", "upgrade", "--url", "sqlite+aiosqlite:///sessions.db"]))
    """
    message: str | None = None
    try:
        args = build_parser().parse_args(argv)  # `--help | head` too
        _configure_logging(getattr(args, "verbose", 0))
        ctx = Context(args)
        try:
            code = asyncio.run(_run(ctx))
        except BrokenPipeError:
            raise
        except _EXPECTED as exc:
            code, message = _explain(ctx, exc)
            logger.debug("exiting with %d", code, exc_info=True)
        sys.stdout.flush()  # buffered output meets a closed pipe here, not at exit
    except BrokenPipeError:
        return _stdout_closed()
    if message is not None:
        print(f"agent-session-store: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
