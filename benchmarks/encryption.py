"""What encryption at rest costs: ``python -m benchmarks.encryption [--quick] [--postgres]``.

Three repositories on one database, one with ``encryption=FieldEncryption(...)`` and two
without, measured interleaved in the same repeats (``timing.measure``); each figure is
encrypted ÷ plain, paired by repeat (below 1.00: encryption is slower), next to the second plain
repository ÷ the first: the same code against itself, the noise floor on this machine. No
cache: the figures are the repository's calls with the database, where encryption adds its CPU
(JSON encoding of the value, AES-256-GCM, base64) to each call.

- ``get``: ``get_session`` of a session whose context is the payload;
- ``create``: ``create_session`` with the payload as its context;
- ``append``: ``add_checkpoint`` with the payload as its data (on PostgreSQL an encrypted
  append is a transaction of two statements where the plain one is a single statement: the seq
  it is bound to is known only once the row is locked).

Payloads of about 1 KB and 100 KB (a JSON object of chat-like messages).

The LangGraph checkpointer (``SessionStoreSaver`` on the same three repositories, when langgraph
is installed), with ``benchmarks.langgraph_peers``'s workload: ``saver aput`` (the next
checkpoint of a thread, one small channel's new version), ``saver aput_writes`` (two writes of a
task), ``saver aget_tuple`` (the thread's newest checkpoint with its values and writes) and
``saver graph step`` (a one-node graph's turn: its message list grows, stored as deltas).

SQLite in a temporary
file always; ``--postgres`` also starts a throwaway PostgreSQL (tests/servers.py), or
``--postgres-url`` names a server whose user may create databases.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import SessionRepository, create_engine
from agent_session_store.encryption import FieldEncryption
from benchmarks.databases import Databases
from benchmarks.timing import Op, Plan, measure, median, paired_ratio

PLANS = {  # by payload size: fewer calls for the big one (each create stores 100 KB)
    1_000: Plan(ops=300, repeats=9, warmup=50),
    100_000: Plan(ops=40, repeats=7, warmup=5),
}
QUICK = Plan(ops=10, repeats=2, warmup=2)


def payload(size: int) -> dict[str, Any]:
    """A JSON object of about ``size`` bytes: chat messages of fixed, varied text."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while",
             "agents", "plan", "tool", "calls"]  # fmt: skip
    messages, total, i = [], 0, 0
    while total < size:
        text = " ".join(words[(i + j) % len(words)] for j in range(12))
        messages.append({"role": "user" if i % 2 else "assistant", "content": text, "n": i})
        total += len(text) + 40
        i += 1
    return {"messages": messages}


class Row(NamedTuple):
    figure: str
    encrypted: float  # ops/s, median
    plain: float
    ratio: float  # encrypted ÷ plain, paired by repeat
    control: float  # the second plain repository ÷ the first: the noise floor


def _get(repo: SessionRepository, sid: str) -> Op:
    async def op(item: int, worker: int) -> None:
        await repo.get_session(sid)

    return op


def _create(repo: SessionRepository, body: dict[str, Any]) -> Op:
    async def op(item: int, worker: int) -> None:
        await repo.create_session("bench", "u", body)

    return op


def _append(repo: SessionRepository, sid: str, body: dict[str, Any]) -> Op:
    async def op(item: int, worker: int) -> None:
        await repo.add_checkpoint(sid, "step", body)

    return op


async def run(url: str, backend: str, quick: bool = False) -> list[Row]:
    """One row per figure, on the database at ``url``."""
    engine = create_engine(url)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    encryption = FieldEncryption({"bench": secrets.token_bytes(32)}, "bench")
    repos = {
        "encrypted": SessionRepository(factory, encryption=encryption),
        "plain": SessionRepository(factory),
        "again": SessionRepository(factory),
    }
    rows: list[Row] = []
    try:
        for size, plan in PLANS.items():
            plan = QUICK if quick else plan
            body = payload(size)
            label = f"{size // 1000} KB"
            sids = {
                name: (await repo.create_session("bench", "u", body)).session_id
                for name, repo in repos.items()
            }

            figures: dict[str, Callable[[str, SessionRepository], Op]] = {
                "get": lambda key, repo: _get(repo, sids[key]),  # noqa: B023 - used right away
                "create": lambda key, repo: _create(repo, body),  # noqa: B023
                "append": lambda key, repo: _append(repo, sids[key], body),  # noqa: B023
            }
            for name, make in figures.items():
                rates = await measure({key: make(key, repo) for key, repo in repos.items()}, plan)
                ratio = paired_ratio(rates["encrypted"], rates["plain"]) or float("nan")
                control = paired_ratio(rates["again"], rates["plain"]) or float("nan")
                rows.append(
                    Row(f"{backend} {name} {label}", median(rates["encrypted"]),
                        median(rates["plain"]), ratio, control)
                )  # fmt: skip
    finally:
        await engine.dispose()
    return rows


async def run_saver(url: str, backend: str, quick: bool = False) -> list[Row]:
    """The LangGraph checkpointer's figures (see the module docstring), or none without it."""
    try:
        from agent_session_store.integrations.langgraph import SessionStoreSaver
        from benchmarks import langgraph_peers as lg
    except ImportError:
        return []
    engine = create_engine(url)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    encryption = FieldEncryption({"bench": secrets.token_bytes(32)}, "bench")
    savers = {
        name: lg._Saver(name, SessionStoreSaver(SessionRepository(factory, encryption=enc),
                                                agent_type=f"bench-{name}"))
        for name, enc in (("encrypted", encryption), ("plain", None), ("again", None))
    }  # fmt: skip
    for saver in savers.values():
        saver.graph = lg._graph(saver.saver)
    plan = QUICK if quick else Plan(ops=200, repeats=7, warmup=20)
    rows: list[Row] = []
    try:
        for op in ("aput", "aput_writes", "aget_tuple latest", "graph step"):
            rates = await measure({name: s.op(op) for name, s in savers.items()}, plan)
            ratio = paired_ratio(rates["encrypted"], rates["plain"]) or float("nan")
            control = paired_ratio(rates["again"], rates["plain"]) or float("nan")
            rows.append(
                Row(f"{backend} saver {op.replace(' latest', '')}", median(rates["encrypted"]),
                    median(rates["plain"]), ratio, control)
            )  # fmt: skip
    finally:
        await engine.dispose()
    return rows


async def _all(postgres_url: str | None, workdir: Path, quick: bool) -> list[Row]:
    databases = Databases(postgres_url, workdir)
    rows: list[Row] = []
    try:
        for backend in ("sqlite", "postgresql") if postgres_url else ("sqlite",):
            url = await databases.create(backend, "encryption")
            rows += await run(url, backend, quick)
            rows += await run_saver(url, backend, quick)
            await databases.drop(backend, "encryption")
    finally:
        await databases.drop_all()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encryption", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds")
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL")
    parser.add_argument("--postgres-url", help="also on this PostgreSQL server")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="agent-session-store-bench-") as tmp,
        ExitStack() as stack,
    ):
        postgres_url = args.postgres_url
        if args.postgres and postgres_url is None:
            from tests.servers import PostgresServer

            server = stack.enter_context(PostgresServer.start(Path(tmp) / "postgres"))
            postgres_url = server.url
        rows = asyncio.run(_all(postgres_url, Path(tmp), args.quick))
    print(f"{'figure':<28} {'encrypted/s':>11} {'plain/s':>8} {'ratio':>6} {'cost':>6}"
          f" {'noise floor':>12}")  # fmt: skip
    for row in rows:
        print(f"{row.figure:<28} {row.encrypted:>11.0f} {row.plain:>8.0f} {row.ratio:>6.3f}"
              f" {1 / row.ratio - 1:>6.1%} {row.control:>12.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
