"""SessionStoreSaver held to LangGraph's checkpointer contract, and to what the issue adds.

``langgraph-checkpoint-conformance`` (all capabilities, the optional ones included) runs on
every backend of the ``repo`` fixture: SQLite, PostgreSQL and PostgreSQL behind PgBouncer, each
without and with the Redis cache. The rest: real graphs against ``InMemorySaver``, growth,
forks, concurrency, the strict serializer and bad input.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

# Imported plainly, not with importorskip: langgraph is in the dev extra, and CI must fail,
# not skip, when it is missing.
from langgraph.checkpoint.conformance import checkpointer_test, validate

from agent_session_store import SessionRepository
from agent_session_store.integrations.langgraph import SessionStoreSaver


def fresh_agent_type() -> str:
    """Each saver under test its own agent type: threads are per agent type, so tests sharing
    a database never see each other's threads."""
    return f"lg-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def saver(repo: SessionRepository) -> SessionStoreSaver:
    return SessionStoreSaver(repo, agent_type=fresh_agent_type())


# -- the conformance suite -------------------------------------------------------------------


async def test_conformance_suite_passes_every_capability(repo: SessionRepository) -> None:
    @checkpointer_test(name="SessionStoreSaver")
    async def factory() -> AsyncIterator[SessionStoreSaver]:
        yield SessionStoreSaver(repo, agent_type=fresh_agent_type())

    report = await validate(factory)
    failures = {name: result.failures for name, result in report.results.items() if result.failures}
    assert not failures
    assert all(result.detected for result in report.results.values()), report.results
    passed = sum(result.tests_passed for result in report.results.values())
    assert passed == 81
