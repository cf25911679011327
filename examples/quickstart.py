"""A short tour of the session lifecycle on the embedded SQLite default.

Run it with `bash scripts/demo` (which migrates the database first), or:

    agent-session-store db upgrade --url sqlite+aiosqlite:///agent_sessions.db
    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker

from agent_session_store import ConcurrentUpdateError, SessionRepository, create_engine

URL = os.environ.get("AGENT_SESSION_STORE_DATABASE_URL", "sqlite+aiosqlite:///agent_sessions.db")


class DemoClock:
    """Lets the demo's session live 49 hours in the past, so that the sweep finds it stale now.

    (Running it in the past, not jumping ahead, leaves no timestamp in the future behind.)
    """

    def __init__(self) -> None:
        self.offset = timedelta(hours=-49)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def main() -> None:
    engine = create_engine(URL)
    clock = DemoClock()
    repo = SessionRepository(async_sessionmaker(engine, expire_on_commit=False), clock=clock)
    try:
        session = await repo.create_session(
            "research-agent", user_id="alice", context={"goal": "summarise Q3"}
        )
        print(f"created  {session.session_id} state={session.state} version={session.version}")

        session.checkpoint("plan", {"steps": ["search", "read", "write"]})
        session.context["step"] = 1
        session = await repo.update_session(session)
        print(f"updated  context={session.context} checkpoints={session.checkpoint_count} "
              f"version={session.version}")  # fmt: skip

        other_worker = await repo.get_session(session.session_id)
        assert other_worker is not None
        session.context["step"] = 2
        session = await repo.update_session(session)
        other_worker.context["step"] = 99
        try:
            await repo.update_session(other_worker)
        except ConcurrentUpdateError as exc:
            print(f"conflict a stale copy was refused: {exc}")

        for name in ("search", "read"):
            cp = await repo.add_checkpoint(session.session_id, name, {"ok": True})
            print(f"appended checkpoint {cp.name!r} seq={cp.seq}")

        session = await repo.get_session(session.session_id, user_id="alice") or session
        session.pause()
        session = await repo.update_session(session)
        print(f"paused   state={session.state}")
        session.resume()
        session = await repo.update_session(session)
        print(f"resumed  state={session.state}")
        alice = await repo.get_session(session.session_id, user_id="alice")
        bob = await repo.get_session(session.session_id, user_id="bob")
        print(f"alice sees it: {alice is not None}; bob sees it: {bob is not None}")

        active = await repo.get_active_sessions(agent_type="research-agent", user_id="alice")
        print(f"active   {len(active)} research-agent session(s) for alice")

        clock.offset = timedelta(0)  # back to now: no heartbeat for 49 hours...
        swept = await repo.cleanup_stale_sessions(timedelta(hours=48))
        after = await repo.get_session(session.session_id)
        assert after is not None
        print(f"swept    {swept} stale session(s); ours is now {after.state} "
              f"({after.context['failure_reason']})")  # fmt: skip

        history = await repo.list_checkpoints(session.session_id)
        print("history  " + ", ".join(f"{cp.seq}:{cp.name}" for cp in history))

        print(f"deleted  {await repo.delete_session(session.session_id)}; "
              f"get_session now returns {await repo.get_session(session.session_id)}")  # fmt: skip

        kept = await repo.create_session("coder", user_id="bob", context={"task": "fix a test"})
        await repo.add_checkpoint(kept.session_id, "tests_run", {"failed": 1})
        print(f"kept     {kept.session_id}: an active session to look at with the CLI")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
