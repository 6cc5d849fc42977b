"""Operational counters the engine and the IPC server keep, for metrics.

Plain Python, no dependency: :mod:`overlayd.metrics` turns them into
Prometheus metric families at scrape time (a custom collector), so the
engine never imports ``prometheus_client`` and a scrape only copies numbers.
Every structure has its own small lock, held for one update or one copy:
recording never waits for a scrape beyond that, and neither touches the
engine's resource locks.
"""

from __future__ import annotations

import bisect
import functools
import threading
import time
from collections.abc import Callable
from collections.abc import Coroutine
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import Final
from typing import ParamSpec
from typing import TypeVar

__all__ = [
    "DEFAULT_BUCKETS",
    "EngineStats",
    "Histogram",
    "HistogramSnapshot",
    "LabelledCounter",
    "LabelledHistogram",
    "timed",
]

#: Upper bounds (seconds) of the latency buckets: 0.5 ms to 30 s.
DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram at one moment: cumulative ``(upper bound, count)`` pairs
    (the last bound is ``+Inf``), the sum of observations and their count."""

    buckets: tuple[tuple[float, int], ...]
    sum: float
    count: int


class Histogram:
    """Observations counted in fixed buckets (``le`` is inclusive, as in Prometheus)."""

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramSnapshot(tuple(cumulative), total, running)


class LabelledCounter:
    """Counts per tuple of label values."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: int = 1) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + amount

    def get(self, *labels: str) -> int:
        with self._lock:
            return self._values.get(labels, 0)

    def snapshot(self) -> dict[tuple[str, ...], int]:
        with self._lock:
            return dict(self._values)


class LabelledHistogram:
    """One :class:`Histogram` per tuple of label values."""

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self._buckets = buckets
        self._values: dict[tuple[str, ...], Histogram] = {}
        self._lock = threading.Lock()

    def labels(self, *labels: str) -> Histogram:
        with self._lock:
            hist = self._values.get(labels)
            if hist is None:
                hist = self._values[labels] = Histogram(self._buckets)
            return hist

    def snapshot(self) -> dict[tuple[str, ...], HistogramSnapshot]:
        with self._lock:
            items = list(self._values.items())
        return {labels: hist.snapshot() for labels, hist in items}


@dataclass
class EngineStats:
    """What the engine and the IPC server count (see ``docs/observability.rst``).

    Failure reasons are the class names of overlayd's errors
    (:mod:`overlayd.errors`), IPC ops and results the protocol's names, and
    repair kinds ``recreated``, ``removed`` and ``released``: every label has
    a small, fixed set of values.
    """

    attach_seconds: Histogram = field(default_factory=Histogram)
    detach_seconds: Histogram = field(default_factory=Histogram)
    #: ``(reason,)`` -> attaches that failed.
    attach_failures: LabelledCounter = field(default_factory=LabelledCounter)
    #: ``(reason,)`` -> detaches that failed.
    detach_failures: LabelledCounter = field(default_factory=LabelledCounter)
    #: ``(op, result)`` -> IPC requests answered.
    requests: LabelledCounter = field(default_factory=LabelledCounter)
    #: ``(op,)`` -> latency of IPC requests, read to answer.
    request_seconds: LabelledHistogram = field(default_factory=LabelledHistogram)
    #: ``(outcome,)`` -> reconcile passes (``ok`` or ``error``: a pass with errors).
    reconcile_runs: LabelledCounter = field(default_factory=LabelledCounter)
    reconcile_seconds: Histogram = field(default_factory=Histogram)
    #: ``(kind,)`` -> objects a reconcile repaired.
    reconcile_repairs: LabelledCounter = field(default_factory=LabelledCounter)

    def request_done(self, op: str, result: str, seconds: float) -> None:
        """Count one IPC request (the server calls this for every answer)."""
        self.requests.inc(op, result)
        self.request_seconds.labels(op).observe(seconds)


T = TypeVar("T")
P = ParamSpec("P")


def timed(
    kind: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Time an engine coroutine method into ``stats.<kind>_seconds``, and count
    its failures by error class in ``stats.<kind>_failures``."""

    def decorate(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            stats: EngineStats = getattr(args[0], "stats")  # noqa: B009 - self of a method
            start = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                getattr(stats, f"{kind}_failures").inc(type(exc).__name__)
                raise
            getattr(stats, f"{kind}_seconds").observe(time.perf_counter() - start)
            return result

        return wrapper

    return decorate
