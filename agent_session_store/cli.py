"""The ``agent-session-store`` command: migrate, inspect and clean up a session store database.

Example::

    agent-session-store db upgrade --url postgresql+asyncpg://app@db/app
    agent-session-store sessions list --state active --limit 20
    agent-session-store cleanup --older-than 48h --redis-url redis://cache:6379/0

``--help`` at every level describes the command, its options, the environment variables and
the exit codes (docs/cli.md has examples with their output). ``main()`` returns the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from alembic.util import CommandError
from sqlalchemy import exc as sa_exc

from agent_session_store import _cli_format as fmt
from agent_session_store import legacy, transfer
from agent_session_store._arguments import MAX_BATCH_SIZE, MAX_PAGE_SIZE
from agent_session_store._cli_commands import (
    STALE_AFTER,
    cleanup,
    db_check,
    db_current,
    db_downgrade,
    db_sql,
    db_upgrade,
    erase_user,
    export,
    import_export,
    import_legacy,
    known_revisions,
    library_version,
    purge,
    rotate_keys,
    sessions_checkpoints,
    sessions_count,
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
from agent_session_store.encryption import ENV_ACTIVE, ENV_KEYS
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
  {URL_ENV}
      the database URL when --url is not given
      (default {DEFAULT_URL})
  {REDIS_URL_ENV}
      the applications' Redis cache when --redis-url is not given (cleanup,
      erase-user and purge --finished-before invalidate its copies, stats
      reports on it); --no-cache overrides it
  {REDIS_NAMESPACE_ENV}
      the cache's namespace when --redis-namespace is not given
      (default {DEFAULT_REDIS_NAMESPACE})
  {ENV_KEYS}
      the encryption keys, kid:base64key,... (rotate-keys needs them; the other
      commands decrypt with them); never printed
  {ENV_ACTIVE}
      the key id that encrypts when --active is not given

exit codes:
  0    success
  1    operational error: the database is unreachable or failed; import found
       corrupt lines (after importing the rest); or the Redis
       given could not be used (cleanup, purge, erase-user, stats: after
       printing what was done)
  2    usage error: bad arguments, unparseable URL or unsupported driver;
       cleanup, erase-user or purge --finished-before with neither
       --redis-url nor --no-cache
  3    the database schema is not at this version's revision
       (run `agent-session-store db upgrade`), or a newer release migrated it
  4    the session asked for does not exist
  130  interrupted (Ctrl-C); cleanup says how many sessions it had failed
  141  stdout was closed early (e.g. `| head`); nothing more is printed

Passwords in URLs are never printed."""

DESCRIPTION = """\
Migrate, inspect and clean up the database of agent-session-store (its tables
agent_sessions_*). The options work before or after the command, and every
command has --help.

examples:
  agent-session-store db upgrade --url postgresql+asyncpg://app@db/app
  agent-session-store sessions list --state active --limit 20
  agent-session-store cleanup --older-than 48h --redis-url redis://cache:6379/0"""

AGES = """\
AGE is a number and a unit, s, m, h, d or w, combinable: 30m, 48h, 7d, 1d12h;
at most 100 years, and never negative."""

HELP = {
    "db upgrade": """\
Upgrade agent-session-store's tables to REVISION (default: head, the revision
this release needs), creating them in an empty database or a new SQLite file.
The library's own Alembic history does it; its version table is
agent_sessions_alembic_version, so an application's alembic_version is never
touched. Several processes upgrading one PostgreSQL database take turns.""",
    "db downgrade": """\
Downgrade agent-session-store's tables to REVISION (`db current` says where
the database is). `base` drops the tables and every session in them, and needs
--yes.""",
    "db current": """\
Print the revision the database's schema is at, and whether it is head (the
revision this release needs). A SQLite file that does not exist has no schema,
and is not created.""",
    "db check": """\
Exit 0 when the schema is at the revision this release needs; else print the
command that upgrades it and exit 3. For deploy pipelines and readiness probes.
A SQLite file that does not exist is not created.""",
    "db sql": """\
Print the SQL of an upgrade for PostgreSQL, for review or to apply by hand;
connects to no database. --from REV limits it to the revisions after REV.""",
    "sessions list": """\
List one page of sessions, newest first (by creation: the CREATED_AT column).
Soft-deleted sessions appear only with --state deleted. When there is more,
the last line is the cursor of the next page: pass it back with --cursor and
the same filters. --json prints {"items": [...], "next_cursor": "..." | null};
the items have no checkpoints (checkpoint_count says how many).

--key-prefix P keeps the sessions whose key starts with P (literally: % and _
are plain characters); --updated-before AGE those not updated for AGE (e.g.
90d); --metadata KEY=VALUE (repeatable) those whose metadata holds KEY with
VALUE, read as JSON when it is a JSON scalar (tier=2 is the number 2,
beta=true a boolean, team=a or team='"2"' a string). Expired sessions are
never listed.""",
    "sessions count": """\
Print how many sessions match the filters, which are those of `sessions
list`: --agent-type, --user-id, --state, --key-prefix, --updated-before and
--metadata KEY=VALUE. --json prints {"count": N}.""",
    "sessions show": """\
Show a session: its fields, context, metadata and newest checkpoints. Name it
by ID (a live or soft-deleted session), or by the key it was created with:
--key with --agent-type, and --user-id unless it has none (the live session
with that key). Exit 4 when there is none. --json prints
AgentSession.to_dict().""",
    "sessions checkpoints": """\
Page through a session's whole history, oldest first. A full page ends with
`more: --after-seq N`: pass that for the next one. --json prints
{"items": [...], "next_after_seq": N | null}.""",
    "cleanup": f"""\
Fail every ACTIVE session with no heartbeat for AGE (default:
{fmt.duration_text(STALE_AFTER)}, as SessionRepository.cleanup_stale_sessions): state failed,
context["failure_reason"] = "heartbeat_timeout", a new version. PAUSED
sessions are left alone. The sweep runs in batches of --batch-size sessions,
each its own transaction; Ctrl-C keeps the batches done and says how many.

Applications that cache sessions in Redis must forget the failed ones: give
the cache with --redis-url (or ${REDIS_URL_ENV}) and
--redis-namespace, or say --no-cache when no application caches this
database. With neither, cleanup changes nothing and exits 2; --dry-run needs
neither. A Redis that cannot be used does not stop the sweep: it is reported
after the summary, and the exit code is 1.

{AGES}""",
    "purge": f"""\
Hard-delete sessions for good, with their checkpoints and every row a
framework backend (LangGraph) stores for them, in batches of --batch-size
sessions, each its own transaction; give one option or several:

  --deleted-before AGE   the sessions soft-deleted more than AGE ago
                         (SessionRepository.purge_deleted_sessions)
  --finished-before AGE  the COMPLETED and FAILED sessions not updated for
                         AGE: a retention rule, e.g. 90d
                         (SessionRepository.purge_finished_sessions)
  --expired              the sessions whose expires_at has passed
                         (SessionRepository.purge_expired_sessions)

--dry-run only counts them. Applications may cache finished sessions, so
--finished-before needs the cache's --redis-url (or ${REDIS_URL_ENV}) or
--no-cache, as cleanup does; --deleted-before and --expired need neither
(neither a soft-deleted nor an expired session is served from any cache).

{AGES}""",
    "erase-user": f"""\
Erase everything stored about USER, for good (a right-to-erasure request):
every session of the user in every state (live, finished, soft-deleted),
their checkpoints and every row a framework backend (LangGraph) stores for
them, and the user's shared-state documents
(SessionRepository.erase_user). With --agent-type, only that agent type's.
Works in batches of --batch-size sessions, each its own transaction;
interrupted, it keeps the batches done, and running it again erases the rest
(a run that finds nothing prints zeros). USER is the id exactly as the
applications store it; an empty one is refused. Other users' data and the
app-wide shared state are untouched. Prints counts, never contents.

Applications that cache sessions in Redis must forget the erased ones: give
--redis-url (or ${REDIS_URL_ENV}) and --redis-namespace, or --no-cache.
--dry-run counts what would be erased and needs neither.""",
    "export": """\
Write the database's sessions to JSON lines, portable between SQLite and
PostgreSQL: a header line, then one line per session with its whole history
(every column of the session and of each checkpoint, and the rows the
LangGraph checkpointer keeps for it), then one line per shared-state
document. Values are written as stored: an encrypted database exports
ciphertext. --user-id and --agent-type limit it to one user's data (a GDPR
art. 20 request) or one agent type's. Streamed in constant memory; on
PostgreSQL one snapshot. Writes to --output FILE, else stdout; the summary
goes to stderr when the lines go to stdout.""",
    "import": """\
Load a file written by `export` (FILE, or - for stdin) into the database of
--url, which must be migrated first (`db upgrade`). Each line is checked on its
own: a corrupt one is reported with its line number and skipped, the rest is
imported, and the command exits 1 at the end. Nothing the target holds is ever
replaced, so importing a file again changes nothing: a session (or
shared-state document) the target holds with the same content is counted as
present; with other content, or a key a live session of the target holds, it
is a conflict, listed by line and id and left out (exit 0). Batches of
--batch-size lines, each one transaction. Prints counts, never contents.""",
    "import-legacy": """\
Import the table of the hand-written session manager agent-session-store
replaces (--table, default agent_sessions) from the database of --from-url,
which is only read, into the database of --url, which must be migrated first.
Each valid row becomes a session with its checkpoints, in batches of
--batch-size rows, each one transaction. Rows already imported are skipped, so
running it again writes only what is missing. The report lists each rejected
row with the reason, and each row whose missing fields were defaulted.""",
    "rotate-keys": f"""\
Re-encrypt every session context, checkpoint and shared-state value that is
not under the active key (SessionRepository.rotate_keys), in batches of
--batch-size rows, each its own transaction. The keys come from
${ENV_KEYS}
(kid:base64key,...: every key that may have encrypted a value, and the new
one), the active one from --active KID or
${ENV_ACTIVE}.
Versions and timestamps are left alone (the content does not change), so
workers holding sessions keep writing; values a writer replaced meanwhile are
left as written. Running it again rewrites only what is left (after Ctrl-C,
say). It prints counts, never values or keys.

Applications' cached copies are under the old key: give the cache with
--redis-url (or --no-cache when none caches this database) so they are
invalidated, and remove the old key from the applications only afterwards.
--allow-plaintext also encrypts values stored before encryption was on.""",
    "stats": """\
Print the number of sessions by state and by agent type, the checkpoint total
and the oldest ACTIVE heartbeat. With a Redis URL, also the cache server's
round trip and keyspace counters (an application's own hit rate is in its
RedisCache.stats, or the agent_session_store.cache.events metric).""",
}

# `--older-than -1h`: argparse takes `-1h` for an option and says only "expected one argument".
AGE_OPTIONS = ("--older-than", "--deleted-before", "--finished-before")
_NEGATIVE = re.compile(r"-\d")


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
    cache = common.add_mutually_exclusive_group()
    cache.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"Redis URL of the applications' cache (default: ${REDIS_URL_ENV})",
    )
    cache.add_argument(
        "--no-cache",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"no application caches this database in Redis (overrides ${REDIS_URL_ENV}); "
        "cleanup needs this or --redis-url",
    )
    common.add_argument(
        "--redis-namespace",
        default=argparse.SUPPRESS,
        metavar="NS",
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
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=formatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {library_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def group(name: str, help: str) -> Any:
        sub = commands.add_parser(
            name, help=help, description=f"{help[0].upper()}{help[1:]}.", epilog=EPILOG,
            formatter_class=formatter, parents=[common],
        )  # fmt: skip
        return sub.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def add(
        group: Any, path: str, handler: Callable[[Context], Awaitable[int]], help: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            path.split()[-1], help=help, description=HELP[path], epilog=EPILOG,
            formatter_class=formatter, parents=[common],
        )  # fmt: skip
        sub.set_defaults(handler=handler)
        return sub

    def session_filters(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--key-prefix", metavar="P", help="only keys that start with P")
        sub.add_argument(
            "--updated-before", type=fmt.duration, metavar="AGE",
            help="only sessions not updated for AGE, e.g. 90d",
        )  # fmt: skip
        sub.add_argument(
            "--metadata", type=fmt.metadata_pair, action="append", metavar="KEY=VALUE",
            help="only sessions whose metadata holds KEY with VALUE (repeatable)",
        )  # fmt: skip

    def batch_size(sub: argparse.ArgumentParser, what: str, default: int, most: int) -> None:
        sub.add_argument(
            "--batch-size", type=fmt.int_from_1_to(most), default=default, metavar="N",
            help=f"{what} per transaction ({default}; at most {most})",
        )  # fmt: skip

    db = group("db", "manage the schema (Alembic migrations)")
    sub = add(db, "db upgrade", db_upgrade, "upgrade the schema (default: to head)")
    sub.add_argument("revision", nargs="?", default="head", help="target revision (head)")
    sub = add(db, "db downgrade", db_downgrade, "downgrade the schema to REVISION")
    sub.add_argument("revision", help="target revision; base drops the tables")
    sub.add_argument("--yes", action="store_true", help="confirm a downgrade to base")
    add(db, "db current", db_current, "print the database's schema revision")
    add(db, "db check", db_check, "exit 3 unless the schema is at head")
    sub = add(db, "db sql", db_sql, "print the upgrade SQL for PostgreSQL (no database)")
    sub.add_argument("revision", nargs="?", default="head", help="target revision (head)")
    sub.add_argument("--from", dest="start", metavar="REV", help="start revision (empty)")

    sessions = group("sessions", "list and inspect sessions")
    sub = add(sessions, "sessions list", sessions_list, "list sessions, newest first")
    sub.add_argument("--agent-type", help="only this agent type")
    sub.add_argument("--user-id", help="only this user's sessions")
    sub.add_argument(
        "--state",
        type=fmt.state,
        metavar="{" + ",".join(s.value for s in SessionState) + "}",
        help="only this state, by name or value in any case (without it: every state but deleted)",
    )
    sub.add_argument(
        "--limit", type=fmt.int_from_1_to(MAX_PAGE_SIZE), default=20, metavar="N",
        help=f"page size (20; at most {MAX_PAGE_SIZE})",
    )  # fmt: skip
    sub.add_argument("--cursor", help="the next cursor printed by the previous page")
    sub.add_argument("--json", action="store_true", help="print JSON")
    session_filters(sub)
    sub = add(sessions, "sessions count", sessions_count, "count the sessions that match")
    sub.add_argument("--agent-type", help="only this agent type")
    sub.add_argument("--user-id", help="only this user's sessions")
    sub.add_argument(
        "--state", type=fmt.state, metavar="{" + ",".join(s.value for s in SessionState) + "}",
        help="only this state (without it: every state but deleted)",
    )  # fmt: skip
    sub.add_argument("--json", action="store_true", help="print JSON")
    session_filters(sub)
    sub = add(sessions, "sessions show", sessions_show, "show a session and recent checkpoints")
    sub.add_argument("session_id", metavar="ID", nargs="?", help="the session's id")
    sub.add_argument("--key", help="instead of ID: the key the live session was created with")
    sub.add_argument("--agent-type", metavar="TYPE", help="with --key: the session's agent type")
    sub.add_argument(
        "--user-id", metavar="USER", help="with --key: the session's user (default: none)"
    )
    sub.add_argument(
        "--checkpoints", type=fmt.non_negative_int, default=10, metavar="N",
        help="recent checkpoints shown (10)",
    )  # fmt: skip
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub = add(sessions, "sessions checkpoints", sessions_checkpoints, "page a session's history")
    sub.add_argument("session_id", metavar="ID", help="the session's id")
    sub.add_argument(
        "--after-seq", type=fmt.non_negative_int, metavar="SEQ", help="start after this seq"
    )
    sub.add_argument(
        "--limit", type=fmt.int_from_1_to(MAX_PAGE_SIZE), default=100, metavar="N",
        help=f"page size (100; at most {MAX_PAGE_SIZE})",
    )  # fmt: skip
    sub.add_argument("--json", action="store_true", help="print JSON")

    sub = add(commands, "cleanup", cleanup, "fail ACTIVE sessions with no recent heartbeat")
    sub.add_argument(
        "--older-than", type=fmt.duration, metavar="AGE",
        help=f"heartbeat age, e.g. 30m, 48h, 7d (default: {fmt.duration_text(STALE_AFTER)})",
    )  # fmt: skip
    sub.add_argument("--dry-run", action="store_true", help="only count; change nothing")
    batch_size(sub, "sessions", 2000, MAX_BATCH_SIZE)
    sub = add(
        commands, "purge", purge, "hard-delete sessions deleted, finished or expired long ago"
    )
    sub.add_argument(
        "--deleted-before", type=fmt.duration, metavar="AGE",
        help="soft-deleted sessions: time since deletion, e.g. 30d",
    )  # fmt: skip
    sub.add_argument(
        "--finished-before", type=fmt.duration, metavar="AGE",
        help="COMPLETED and FAILED sessions: time since their last update, e.g. 90d",
    )  # fmt: skip
    sub.add_argument("--expired", action="store_true", help="the sessions whose expiry has passed")
    sub.add_argument("--dry-run", action="store_true", help="only count; change nothing")
    batch_size(sub, "sessions", 500, MAX_BATCH_SIZE)
    sub = add(commands, "erase-user", erase_user, "erase everything stored about one user")
    sub.add_argument("user_id", metavar="USER", help="the user's id, as the applications store it")
    sub.add_argument(
        "--agent-type", metavar="TYPE", help="only this agent type's sessions and shared state"
    )
    sub.add_argument("--dry-run", action="store_true", help="only count; change nothing")
    batch_size(sub, "sessions", 500, MAX_BATCH_SIZE)
    sub = add(commands, "export", export, "write sessions and shared state as JSON lines")
    sub.add_argument("--user-id", metavar="USER", help="only this user's sessions and state")
    sub.add_argument("--agent-type", metavar="TYPE", help="only this agent type's")
    sub.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    sub = add(commands, "import", import_export, "load a file written by export")
    sub.add_argument("file", metavar="FILE", help="the export's file, or - for stdin")
    batch_size(sub, "lines", 100, transfer.MAX_BATCH_SIZE)
    sub = add(commands, "import-legacy", import_legacy, "import a hand-written manager's table")
    sub.add_argument("--from-url", required=True, metavar="URL", help="the old database (read)")
    sub.add_argument("--table", default="agent_sessions", help="the old table (agent_sessions)")
    batch_size(sub, "rows", 1000, legacy.MAX_BATCH_SIZE)
    sub.add_argument("--dry-run", action="store_true", help="validate and count; write nothing")
    sub = add(commands, "rotate-keys", rotate_keys, "re-encrypt stored values under the active key")
    sub.add_argument("--active", metavar="KID", help=f"the key id that encrypts (${ENV_ACTIVE})")
    sub.add_argument(
        "--allow-plaintext", action="store_true",
        help="encrypt values stored in plaintext too (else they stop the command)",
    )  # fmt: skip
    batch_size(sub, "rows", 500, MAX_BATCH_SIZE)
    sub = add(commands, "stats", stats, "counts by state and agent type; cache counters")
    sub.add_argument("--json", action="store_true", help="print JSON")
    return parser


def join_negative_ages(argv: Sequence[str]) -> list[str]:
    """``--older-than -1h`` as ``--older-than=-1h``, so that the age parser says what is wrong.

    argparse takes a value starting with ``-`` for an option and says only "expected one
    argument"; joined to its option (abbreviated or not), the value reaches
    :func:`~agent_session_store._cli_format.duration`, which refuses a negative age by name.
    """
    joined: list[str] = []
    for arg in argv:
        previous = joined[-1] if joined else ""
        if (
            _NEGATIVE.match(arg)
            and previous.startswith("--")
            and len(previous) > 2
            and any(option.startswith(previous) for option in AGE_OPTIONS)
        ):
            joined[-1] = f"{previous}={arg}"
        else:
            joined.append(arg)
    return joined


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
        given = sys.argv[1:] if argv is None else argv
        args = build_parser().parse_args(join_negative_ages(given))  # `--help | head` too
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
