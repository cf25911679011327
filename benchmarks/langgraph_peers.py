"""``SessionStoreSaver`` against LangGraph's own savers: ``python -m benchmarks.langgraph_peers``.

The checkpointer's calls, one client awaiting one after another, measured interleaved repeat by
repeat (``timing.measure``) against ``AsyncPostgresSaver`` (langgraph-checkpoint-postgres) on
PostgreSQL and ``AsyncSqliteSaver`` (langgraph-checkpoint-sqlite) on SQLite, each saver on its
own scratch database, each with its own defaults. ``benchmarks.peers`` runs the same section;
this command runs it alone. See benchmarks/README.md ("LangGraph savers").

Figures (a call is one operation):

- ``aput``: the next checkpoint of one thread (a ~1 KB channel at the first, then one small
  channel's new version each), its parent's config in hand, as the Pregel loop does;
- ``aput_writes``: two writes of one task against one of those checkpoints;
- ``aget_tuple latest`` / ``aget_tuple by id``: the thread's newest checkpoint (values and
  pending writes), and one named by id;
- ``alist``: the newest 10 checkpoints of the thread;
- ``graph step``: ``graph.ainvoke`` of a one-node graph appending a message to a thread's
  message list (up to 20 turns a thread): a read, two puts and the node's writes;
- storage: the bytes a database holds after one thread's ``turns`` graph turns (the message
  list growing by two messages a turn): PostgreSQL, every table's size with indexes and TOAST;
  SQLite, the file's used pages after a WAL checkpoint. Ratio ours ÷ peer: lower is smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
import tempfile
import uuid
import warnings
from collections.abc import Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks import seed
from benchmarks.baselines import asyncpg_dsn
from benchmarks.contenders import APPEND_DATA
from benchmarks.databases import Databases
from benchmarks.timing import Plan, measure, median, paired_ratio

logger = logging.getLogger("benchmarks")

OURS = "SessionStoreSaver"
PEERS = {"postgres": "AsyncPostgresSaver", "sqlite": "AsyncSqliteSaver"}
OPS = ("aput", "aput_writes", "aget_tuple latest", "aget_tuple by id", "alist", "graph step")
BACKEND_NAMES = {"postgres": "PostgreSQL", "sqlite": "SQLite"}
TURNS_PER_THREAD = 20  # graph step: a thread's message list stays short


@dataclass(frozen=True)
class SaverSizes:
    ops: int
    repeats: int
    warmup: int
    turns: int  # graph turns of the storage figure


FULL = SaverSizes(ops=200, repeats=5, warmup=20, turns=500)
QUICK = SaverSizes(ops=6, repeats=2, warmup=2, turns=10)


@dataclass
class SaverFigures:
    """One backend: op -> saver -> ops/s of each repeat; saver -> stored bytes."""

    rates: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    storage: dict[str, int] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)


class _Saver:
    """One checkpointer under the workload: its thread, configs and graph."""

    def __init__(self, name: str, saver: Any) -> None:
        self.name = name
        self.saver = saver
        self.thread = f"bench-{uuid.uuid4().hex[:8]}"
        self.configs: list[dict[str, Any]] = []
        self.step = 0
        self.graph: Any = None

    def root(self) -> dict[str, Any]:
        return {"configurable": {"thread_id": self.thread, "checkpoint_ns": ""}}

    async def aput(self, item: int, worker: int) -> None:
        parent = self.configs[-1] if self.configs else self.root()
        self.configs.append(await _put(self.saver, parent, self.step))
        self.step += 1

    async def aput_writes(self, item: int, worker: int) -> None:
        config = self.configs[item % len(self.configs)]
        writes = [("step", {**APPEND_DATA, "n": item}), ("done", True)]
        await self.saver.aput_writes(config, writes, f"task-{item}")

    async def aget_latest(self, item: int, worker: int) -> None:
        _expect(await self.saver.aget_tuple(self.root()), "aget_tuple")

    async def aget_by_id(self, item: int, worker: int) -> None:
        config = self.configs[(item * 7919) % len(self.configs)]
        _expect(await self.saver.aget_tuple(config), "aget_tuple by id")

    async def alist(self, item: int, worker: int) -> None:
        found = [t async for t in self.saver.alist(self.root(), limit=10)]
        _expect(found, "alist")

    async def graph_step(self, item: int, worker: int) -> None:
        thread = f"{self.thread}-g{item // TURNS_PER_THREAD}"
        await _turn(self.graph, thread, item)

    def op(self, name: str) -> Any:
        return {
            "aput": self.aput,
            "aput_writes": self.aput_writes,
            "aget_tuple latest": self.aget_latest,
            "aget_tuple by id": self.aget_by_id,
            "alist": self.alist,
            "graph step": self.graph_step,
        }[name]


def _expect(value: Any, what: str) -> None:
    if value is None or value == []:
        raise RuntimeError(f"benchmark operation failed: {what} returned nothing")


def _checkpoint(step: int) -> dict[str, Any]:
    base = importlib.import_module("langgraph.checkpoint.base")
    uuid6 = importlib.import_module("langgraph.checkpoint.base.id").uuid6
    checkpoint: dict[str, Any] = base.empty_checkpoint()
    values: dict[str, Any] = {"context": seed.CONTEXT, "step": {**APPEND_DATA, "n": step}}
    versions = {"context": 1, "step": step + 1}
    checkpoint.update(id=str(uuid6(clock_seq=step)), channel_values=values,
                      channel_versions=versions, updated_channels=["step"])  # fmt: skip
    return checkpoint


async def _put(saver: Any, parent: dict[str, Any], step: int) -> dict[str, Any]:
    checkpoint = _checkpoint(step)
    new_versions = {"context": 1, "step": 1} if step == 0 else {"step": step + 1}
    metadata = {"source": "loop", "step": step, "parents": {}}
    config: dict[str, Any] = await saver.aput(parent, checkpoint, metadata, new_versions)
    return config


def _graph(saver: Any) -> Any:
    """One node answering each user message: ``messages`` grows by two a turn."""
    graph_module = importlib.import_module("langgraph.graph")
    messages = importlib.import_module("langchain_core.messages")
    # The functional form: no annotations for ``from __future__ import annotations`` to defer.
    state = TypedDict(  # type: ignore[misc]  # noqa: UP013
        "State", {"messages": Annotated[list[Any], graph_module.add_messages]}
    )

    def answer(state: dict[str, Any]) -> dict[str, Any]:
        last = state["messages"][-1]
        return {"messages": [messages.AIMessage(f"answer: {last.content}"[:200])]}

    builder = graph_module.StateGraph(state)
    builder.add_node("answer", answer)
    builder.add_edge(graph_module.START, "answer")
    builder.add_edge("answer", graph_module.END)
    return builder.compile(checkpointer=saver)


async def _turn(graph: Any, thread: str, turn: int) -> None:
    human = importlib.import_module("langchain_core.messages").HumanMessage
    question = human(f"question {turn}: " + "why is the sky blue? " * 4)
    await graph.ainvoke({"messages": [question]}, {"configurable": {"thread_id": thread}})


# -- the savers: ours and each backend's LangGraph peer -------------------------------------------


async def _open(backend: str, name: str, url: str, stack: AsyncExitStack) -> Any:
    if name == OURS:
        from agent_session_store.integrations.langgraph import SessionStoreSaver

        return await stack.enter_async_context(SessionStoreSaver.from_url(url))
    if backend == "postgres":
        module = importlib.import_module("langgraph.checkpoint.postgres.aio")
        saver = await stack.enter_async_context(
            module.AsyncPostgresSaver.from_conn_string(asyncpg_dsn(url))
        )
    else:
        module = importlib.import_module("langgraph.checkpoint.sqlite.aio")
        saver = await stack.enter_async_context(
            module.AsyncSqliteSaver.from_conn_string(url.split("///", 1)[1])
        )
    await saver.setup()
    return saver


async def stored_bytes(backend: str, url: str) -> int:
    """What the database holds: every table of the public schema (PostgreSQL, indexes and
    TOAST included) or the SQLite file's used pages."""
    if backend == "postgres":
        engine = create_async_engine(url)
        query = text(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r'"
        )
        try:
            async with engine.connect() as conn:
                return int(await conn.scalar(query) or 0)
        finally:
            await engine.dispose()
    import aiosqlite

    async with aiosqlite.connect(url.split("///", 1)[1]) as conn:
        await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = {}
        for pragma in ("page_count", "freelist_count", "page_size"):
            async with conn.execute(f"PRAGMA {pragma}") as cursor:  # names are ours
                row = await cursor.fetchone()
            pages[pragma] = int(row[0]) if row else 0
    return (pages["page_count"] - pages["freelist_count"]) * pages["page_size"]


async def saver_figures(
    backend: str, dbs: Databases, sizes: SaverSizes, *, purpose: str = "lg"
) -> SaverFigures:
    """Every figure of one backend: ours and the peer interleaved, then storage."""
    figures = SaverFigures()
    names = [OURS, PEERS[backend]]
    plan = Plan(sizes.ops, sizes.repeats, sizes.warmup)
    async with AsyncExitStack() as stack:
        savers: list[_Saver] = []
        for name in names:
            url = await dbs.create(backend, f"{purpose}_{name.lower()}", migrate=name == OURS)
            try:
                saver = _Saver(name, await _open(backend, name, url, stack))
            except ImportError as exc:
                figures.left_out.append(f"{name} ({backend}): not installed ({exc})")
                logger.warning("%s: %s left out: %s", backend, name, exc)
                continue
            savers.append(saver)
        try:
            importlib.import_module("langgraph.graph")
            for saver in savers:
                saver.graph = _graph(saver.saver)
        except ImportError as exc:
            figures.left_out.append(f"graph step: langgraph not installed ({exc})")
        for op in OPS:
            if op == "graph step" and any(s.graph is None for s in savers):
                continue
            logger.info("%s: %s, %s", backend, op, " vs ".join(s.name for s in savers))
            figures.rates[op] = await measure({s.name: s.op(op) for s in savers}, plan)
    if any(f.startswith("graph step") for f in figures.left_out):
        return figures
    for name in names:
        if any(f.startswith(name) for f in figures.left_out):
            continue
        logger.info("%s: %s, storage after %d turns", backend, name, sizes.turns)
        url = await dbs.create(backend, f"{purpose}_store_{name.lower()}", migrate=name == OURS)
        async with AsyncExitStack() as stack:
            graph = _graph(await _open(backend, name, url, stack))
            for turn in range(sizes.turns):
                await _turn(graph, "storage", turn)
        figures.storage[name] = await stored_bytes(backend, url)
    return figures


# -- the report ----------------------------------------------------------------------------------


def rows(backend: str, figures: SaverFigures) -> list[dict[str, Any]]:
    """One row per op (ours ÷ peer, paired by repeat), then the storage row."""
    peer = PEERS[backend]
    out = []
    for op, rates in figures.rates.items():
        ours, theirs = rates.get(OURS), rates.get(peer)
        ratio = paired_ratio(ours, theirs) if ours and theirs else None
        out.append(
            {
                "backend": backend,
                "op": op,
                "ours_ops_per_s": _ops(ours),
                "peer": peer,
                "peer_ops_per_s": _ops(theirs),
                "ratio": None if ratio is None else round(ratio, 3),
            }
        )
    if OURS in figures.storage and peer in figures.storage:
        mine, theirs_bytes = figures.storage[OURS], figures.storage[peer]
        out.append(
            {
                "backend": backend,
                "op": "storage bytes",
                "ours_bytes": mine,
                "peer": peer,
                "peer_bytes": theirs_bytes,
                "ratio": round(mine / theirs_bytes, 3) if theirs_bytes else None,
            }
        )
    return out


def _ops(rates: list[float] | None) -> float | None:
    return None if not rates else round(median(rates), 1)


def _n(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def render(by_backend: dict[str, SaverFigures], turns: int) -> str:
    lines = [
        f"| LangGraph saver op | {OURS} | peer | ours ÷ peer |",
        "|---|---|---|---|",
    ]
    for backend, figures in by_backend.items():
        name = BACKEND_NAMES.get(backend, backend)
        for row in rows(backend, figures):
            if row["op"] == "storage bytes":
                lines.append(
                    f"| {name} storage after {turns} turns (bytes) | {_n(row['ours_bytes'])} | "
                    f"{row['peer']} {_n(row['peer_bytes'])} | {_n(row['ratio'], '.3f')} |"
                )
                continue
            lines.append(
                f"| {name} {row['op']} (ops/s) | {_n(row['ours_ops_per_s'])} | {row['peer']} "
                f"{_n(row['peer_ops_per_s'])} | {_n(row['ratio'], '.2f')} |"
            )
        lines.extend(f"left out: {reason}" for reason in figures.left_out)
    return "\n".join(lines)


def as_json(by_backend: dict[str, SaverFigures]) -> dict[str, Any]:
    return {
        backend: {
            "rates": {
                op: {n: [round(x, 1) for x in r] for n, r in rates.items()}
                for op, rates in figures.rates.items()
            },
            "storage_bytes": figures.storage,
            "rows": rows(backend, figures),
            "left_out": figures.left_out,
        }
        for backend, figures in by_backend.items()
    }


# -- the command ---------------------------------------------------------------------------------


async def run_savers(
    sizes: SaverSizes, *, postgres_url: str | None, workdir: Path, backends: Sequence[str]
) -> dict[str, SaverFigures]:
    dbs = Databases(postgres_url, workdir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the peers' own deprecation warnings
            return {b: await saver_figures(b, dbs, sizes) for b in backends}
    finally:
        await dbs.drop_all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.langgraph_peers", description=__doc__
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--backend", choices=tuple(PEERS), action="append", help="default: both")
    parser.add_argument("--postgres-url", help="use this running PostgreSQL server")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    sizes = QUICK if args.quick else FULL
    backends = args.backend or list(PEERS)
    with tempfile.TemporaryDirectory(prefix="agent-session-store-lg-") as tmp, ExitStack() as stack:
        from tests.servers import PostgresServer

        postgres_url = args.postgres_url
        if postgres_url is None and "postgres" in backends:
            postgres_url = stack.enter_context(PostgresServer.start(Path(tmp) / "pg")).url
        found = asyncio.run(
            run_savers(sizes, postgres_url=postgres_url, workdir=Path(tmp), backends=backends)
        )
    print(render(found, sizes.turns))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(as_json(found), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
