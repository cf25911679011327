"""agent_session_store.telemetry: a no-op without OpenTelemetry, real spans and metrics with it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_session_store import RedisCache, SessionRepository, telemetry
from tests.conftest import Backend


@pytest.fixture(autouse=True)
def _fresh_instruments() -> Iterator[None]:
    # telemetry resolves OpenTelemetry once; each test decides whether it is importable.
    telemetry._instruments.cache_clear()
    yield
    telemetry._instruments.cache_clear()


def test_without_opentelemetry_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # makes the import fail
    assert telemetry.enabled() is False
    with telemetry.span("get_session", session_id="abc"):
        pass
    with pytest.raises(KeyError), telemetry.span("get_session"):
        raise KeyError("propagates unchanged")
    telemetry.record_cache("hits", namespace="myapp")


@dataclass
class Otel:
    spans: Any  # InMemorySpanExporter
    metrics: Any  # InMemoryMetricReader

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        found = []
        data = self.metrics.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes), p) for p in metric.data.data_points]
        return found

    def count(self, name: str, **attributes: Any) -> int:
        return sum(p.value for attrs, p in self.points(name) if attrs == attributes)


@pytest.fixture(scope="module")
def otel() -> Iterator[Otel]:
    """Global SDK providers with in-memory exporters (set once: the API allows one per process)."""
    pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    yield Otel(exporter, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def test_span_records_name_attributes_and_duration(otel: Otel) -> None:
    from opentelemetry import trace

    otel.spans.clear()
    assert telemetry.enabled() is True
    tracer = trace.get_tracer("test")
    with (
        tracer.start_as_current_span("request"),
        telemetry.span("update_session", session_id="abc", agent_type="planner", user_id=None),
    ):
        pass
    child, parent = otel.spans.get_finished_spans()
    assert child.name == "agent_session_store.update_session"
    assert dict(child.attributes) == {
        "agent_session_store.session_id": "abc",
        "agent_session_store.agent_type": "planner",
    }
    assert child.parent is not None and child.parent.span_id == parent.context.span_id
    durations = otel.points("agent_session_store.operation.duration")
    [(_, point)] = [
        (a, p) for a, p in durations if a == {"agent_session_store.operation": "update_session"}
    ]
    assert point.count >= 1 and point.sum >= 0


def test_span_records_the_exception_and_error_type(otel: Otel) -> None:
    from opentelemetry.trace import StatusCode

    otel.spans.clear()
    with pytest.raises(LookupError), telemetry.span("get_session"):
        raise LookupError("gone")
    [span] = otel.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]
    failed = {"agent_session_store.operation": "get_session", "error.type": "LookupError"}
    assert any(
        attrs == failed for attrs, _ in otel.points("agent_session_store.operation.duration")
    )


def test_record_cache_counts_events(otel: Otel) -> None:
    name = "agent_session_store.cache.events"
    hit = {"agent_session_store.cache.event": "hits"}
    gone = {
        "agent_session_store.cache.event": "invalidations",
        "agent_session_store.namespace": "app",
    }
    hits, invalidations = otel.count(name, **hit), otel.count(name, **gone)
    telemetry.record_cache("hits")
    telemetry.record_cache("hits")
    telemetry.record_cache("invalidations", count=3, namespace="app")
    assert (otel.count(name, **hit), otel.count(name, **gone)) == (hits + 2, invalidations + 3)


async def test_repository_calls_are_spans_with_session_id_and_cache_events_are_counted(
    otel: Otel, db: Backend, redis_client: Redis, namespace: str
) -> None:
    repo = SessionRepository(db.factory, cache=RedisCache(redis_client, namespace=namespace))
    created = await repo.create_session("planner")
    otel.spans.clear()
    hits_before = otel.count(
        "agent_session_store.cache.events",
        **{"agent_session_store.cache.event": "hits", "agent_session_store.namespace": namespace},
    )
    await repo.get_session(created.session_id)  # a miss: the database is read, in a span
    await repo.get_session(created.session_id)  # a hit: no database, no span
    assert await repo.heartbeat(created.session_id)
    names = [
        (s.name, s.attributes.get("agent_session_store.session_id"))
        for s in otel.spans.get_finished_spans()
    ]
    assert names == [
        ("agent_session_store.get_session", created.session_id),
        ("agent_session_store.heartbeat", created.session_id),
    ]
    hits = otel.count(
        "agent_session_store.cache.events",
        **{"agent_session_store.cache.event": "hits", "agent_session_store.namespace": namespace},
    )
    assert hits == hits_before + 1
