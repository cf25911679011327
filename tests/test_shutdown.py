"""Calls in flight when ``asyncio.run`` ends: every step still runs, every connection goes back.

When its main coroutine ends (an exception, a shutdown), ``asyncio.run`` cancels every task of
the loop, run_to_end's own step tasks included. A step task created in the loop's last turn has
not started by then; cancelled before its first step, it would never run its coroutine: the
step (a checkout, a give-back) dropped unrun, "coroutine '_checkout' was never awaited" on
stderr, a connection never given back. Each scenario runs in a subprocess of its own, since it
needs an ``asyncio.run`` that ends, and what it leaves is reported when the process collects it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The call's task creates its step's task in the same loop turn as the callback that stops the
# loop (main's end), so the step's task has not started when asyncio.run cancels every task.
_LAST_TURN = """
import asyncio, gc
from agent_session_store._settle import run_to_end

ran = []

async def step():
    ran.append("step")

async def call(go):
    await go  # resumed in the loop's last turn, before the callback that stops the loop
    await run_to_end(step())

async def main():
    go = asyncio.get_running_loop().create_future()
    asyncio.create_task(call(go))
    await asyncio.sleep(0)  # the call now waits on go
    go.set_result(None)
    raise LookupError("main ends")

try:
    asyncio.run(main())
except LookupError:
    pass
gc.collect()
print(ran)
"""

# Calls started just before main raises, and at each later turn of the loop: on the hot path
# (SQLite, a session created, so the schema check has passed) a call's first step is its
# checkout, created in its first turn. After each run, the pool must have every connection back.
_REPOSITORY = """
import asyncio, gc, sys
from sqlalchemy.ext.asyncio import async_sessionmaker
from agent_session_store import SessionRepository, create_engine, migrations

url, turns = sys.argv[1], int(sys.argv[2])
asyncio.run(migrations.upgrade(url))

async def main(engine, turns):
    repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False))
    sid = (await repo.create_session("agent", "user")).session_id
    for _ in range(3):
        asyncio.create_task(repo.get_session(sid))
        asyncio.create_task(repo.heartbeat(sid))
        asyncio.create_task(repo.add_checkpoint(sid, "step"))
    for _ in range(turns):
        await asyncio.sleep(0)
    raise LookupError("main ends")

left_out = []
for turn in range(turns):
    engine = create_engine(url)
    try:
        asyncio.run(main(engine, turn))
    except LookupError:
        pass
    left_out.append(engine.sync_engine.pool.checkedout())
    asyncio.run(engine.dispose())
    gc.collect()
print(left_out)
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_a_step_created_in_the_loops_last_turn_runs_when_asyncio_run_cancels_every_task() -> None:
    result = _run(_LAST_TURN)
    assert result.returncode == 0, result.stderr
    assert "never awaited" not in result.stderr, result.stderr
    assert result.stdout.strip() == "['step']"


def test_calls_in_flight_when_asyncio_run_ends_give_every_connection_back(
    tmp_path: Path,
) -> None:
    turns = 12
    result = _run(_REPOSITORY, f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}", str(turns))
    assert result.returncode == 0, result.stderr
    assert "never awaited" not in result.stderr, result.stderr
    assert result.stdout.strip() == str([0] * turns), result.stderr
