"""A small circuit breaker: after repeated failures, stop calling for a while, then probe.

States::

    closed ──(threshold consecutive failures)──> open ──(cooldown passes)──> half-open
      ^                                           ^                             │
      └──────────── the probe succeeds ───────────┼──────── the probe fails ────┘

Half-open lets exactly one call through (the probe); everyone else is refused until it reports.
Time comes from an injected monotonic function, so tests move it instead of sleeping.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]


class Permit(enum.Enum):
    """What ``CircuitBreaker.allow`` granted; hand it back to ``record``."""

    CALL = "call"
    PROBE = "probe"


class CircuitBreaker:
    """Counts consecutive failures and refuses calls for ``cooldown`` seconds after too many.

    Example::

        breaker = CircuitBreaker(threshold=3, cooldown=5.0, monotonic=time.monotonic)
        permit = breaker.allow()
        if permit is not None:
            ok = try_the_call()
            breaker.record(permit, ok)
    """

    def __init__(self, *, threshold: int, cooldown: float, monotonic: Callable[[], float]) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be 1 or more, got {threshold}")
        if cooldown < 0:
            raise ValueError(f"cooldown must not be negative, got {cooldown}")
        self._threshold = threshold
        self._cooldown = cooldown
        self._monotonic = monotonic
        self._failures = 0
        self._open_until: float | None = None  # None: closed
        self._probing = False

    @property
    def state(self) -> State:
        if self._open_until is None:
            return "closed"
        return "half-open" if self._probing else "open"

    def allow(self) -> Permit | None:
        """A permit to make the call, or ``None`` while the circuit is open."""
        if self._open_until is None:
            return Permit.CALL
        if self._probing or self._monotonic() < self._open_until:
            return None
        self._probing = True
        return Permit.PROBE

    def record(self, permit: Permit, ok: bool | None) -> Literal["opened", "closed"] | None:
        """Report how a permitted call went (``None``: it ended without a verdict, e.g. cancelled).

        Returns:
            ``"opened"`` or ``"closed"`` when this report changed the circuit, else ``None``.
        """
        if permit is Permit.PROBE:
            self._probing = False
            if ok is None:
                return None  # the next caller probes instead
            if ok:
                self._failures, self._open_until = 0, None
                return "closed"
            self._open_until = self._monotonic() + self._cooldown
            return "opened"
        if ok is None or self._open_until is not None:
            # A call permitted before the circuit opened says nothing about Redis now; only the
            # probe may close an open circuit.
            return None
        if ok:
            self._failures = 0
            return None
        self._failures += 1
        if self._failures < self._threshold:
            return None
        self._open_until = self._monotonic() + self._cooldown
        return "opened"
