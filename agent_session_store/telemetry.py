"""Optional OpenTelemetry spans and metrics; a no-op when ``opentelemetry-api`` is not installed.

The library only talks to the OpenTelemetry *API* and never configures it: spans and metrics go
wherever the host application's tracer and meter providers send them (nowhere until it sets
some). Install the API with the ``otel`` extra (``pip install agent-session-store[otel]``).

What is emitted:

* a span ``agent_session_store.<operation>`` per repository operation, with
  ``agent_session_store.*`` attributes, the exception recorded and the status set to ERROR when
  the operation raises;
* the histogram ``agent_session_store.operation.duration`` (seconds), by
  ``agent_session_store.operation`` and ``error.type`` (only on failures);
* the counter ``agent_session_store.cache.events``, by ``agent_session_store.cache.event``: the
  names of ``RedisCache.stats``'s counters (``hits``, ``misses``, ``loads``, ``errors``,
  ``circuit_open``, ``invalidations``, ``stale_sets_rejected``, ``discarded``, ``rejected``,
  ``epoch_bumps``, ``near_hits``).

Example::

    from agent_session_store import telemetry

    with telemetry.span("get_session", session_id=session_id):
        ...
    telemetry.record_cache("hits", namespace="myapp")
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram
    from opentelemetry.trace import Tracer

__all__ = ["AttributeValue", "enabled", "record_cache", "span"]

INSTRUMENTATION_NAME = "agent_session_store"

AttributeValue = str | bool | int | float


class _Instruments(NamedTuple):
    tracer: Tracer
    duration: Histogram
    cache_events: Counter
    tracing: Callable[[], bool]  # whether the host has set a tracer provider (yet)


@functools.cache
def _instruments() -> _Instruments | None:
    # Imported on first use, so importing agent_session_store costs nothing when OTel is absent.
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        return None
    from agent_session_store import __version__

    # The API hands out proxies that follow whatever provider the host sets, even later on.
    meter = metrics.get_meter(INSTRUMENTATION_NAME, __version__)

    def tracing() -> bool:
        # Until a provider is set, the API's proxy makes spans that record nothing, at the
        # cost of a context switch around every call.
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)

    return _Instruments(
        tracing=tracing,
        tracer=trace.get_tracer(INSTRUMENTATION_NAME, __version__),
        duration=meter.create_histogram(
            "agent_session_store.operation.duration",
            unit="s",
            description="Duration of agent_session_store repository operations",
        ),
        cache_events=meter.create_counter(
            "agent_session_store.cache.events",
            unit="{event}",
            description="Cache lookups and invalidations, by outcome",
        ),
    )


def enabled() -> bool:
    """Whether ``opentelemetry-api`` is importable (spans and metrics are recorded)."""
    return _instruments() is not None


def _attributes(attributes: dict[str, AttributeValue | None]) -> dict[str, AttributeValue]:
    return {
        f"agent_session_store.{key}": value
        for key, value in attributes.items()
        if value is not None
    }


@contextmanager
def span(operation: str, **attributes: AttributeValue | None) -> Iterator[None]:
    """Trace ``operation`` as the span ``agent_session_store.<operation>`` and time it.

    Keyword arguments become span attributes prefixed with ``agent_session_store.`` (``None`` values
    are left out). An exception leaving the block is recorded on the span and re-raised.

    Example::

        with telemetry.span("update_session", session_id=sid, agent_type="planner"):
            ...
    """
    instruments = _instruments()
    if instruments is None:
        yield
        return
    metric_attributes: dict[str, AttributeValue] = {"agent_session_store.operation": operation}
    started = time.perf_counter()
    try:
        if instruments.tracing():
            with instruments.tracer.start_as_current_span(
                f"agent_session_store.{operation}", attributes=_attributes(attributes)
            ):
                yield
        else:
            yield
    except BaseException as exc:
        metric_attributes["error.type"] = type(exc).__qualname__
        raise
    finally:
        instruments.duration.record(time.perf_counter() - started, metric_attributes)


def record_cache(event: str, *, count: int = 1, **attributes: AttributeValue | None) -> None:
    """Count ``count`` cache events named like ``RedisCache.stats``'s fields (``hits``...).

    Keyword arguments become metric attributes prefixed with ``agent_session_store.``; keep them to
    a few values (a namespace, a model name), never ids.

    Example::

        telemetry.record_cache("invalidations", count=len(keys), namespace="myapp")
    """
    instruments = _instruments()
    if instruments is not None:
        instruments.cache_events.add(
            count, {"agent_session_store.cache.event": event, **_attributes(attributes)}
        )
