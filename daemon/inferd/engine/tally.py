"""Metrics recorded inside a worker process and added to the daemon's own.

A worker process has no registry anyone scrapes. It records what its model did (inferences,
timings, batch sizes, result latencies) in a `Tally` with the same names and labels as
`inferd.service.metrics.Metrics`; its tally thread sends what changed (`drain`) when the daemon
asks (every scrape of /metrics does, before it renders) and every second; the daemon adds it to its
metrics (`apply`). Nothing crosses per frame. The daemon's exposition is then one set of series
whatever runs where, and a counter never goes back when a worker process dies.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any

from inferd.config.sections import BATCH_BUCKETS, LATENCY_BUCKETS

# the Metrics attributes a worker records (drops, rejects and errors are counted by the daemon)
HISTOGRAMS = (
    "inference_seconds",
    "preprocess_seconds",
    "queue_wait_seconds",
    "frame_latency_seconds",
    "batch_size",
)
COUNTERS = ("inferences", "zone_events")
GAUGES = ("tracked_objects", "zone_objects")  # set, not added: the latest value wins


class _Counter:
    __slots__ = ("lock", "value")

    def __init__(self, lock: threading.Lock) -> None:
        self.lock, self.value = lock, 0.0

    def inc(self, amount: float = 1.0) -> None:
        with self.lock:
            self.value += amount


class _Gauge:
    __slots__ = ("changed", "lock", "value")

    def __init__(self, lock: threading.Lock) -> None:
        self.lock, self.value, self.changed = lock, 0.0, False

    def set(self, value: float) -> None:
        with self.lock:
            self.value, self.changed = value, True


class _Histogram:
    __slots__ = ("bounds", "counts", "lock", "sum")

    def __init__(self, lock: threading.Lock, bounds: tuple[float, ...]) -> None:
        self.lock, self.bounds, self.counts, self.sum = lock, bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        i = bisect_left(self.bounds, value)  # Prometheus buckets are `le`
        with self.lock:
            self.counts[i] += 1
            self.sum += value


class _Family:
    """`.labels(*values)` like prometheus_client's, recording into plain Python objects."""

    def __init__(self, make) -> None:
        self.make, self.children = make, {}

    def labels(self, *values: str):
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.make()
        return child


class Tally:
    """The worker-side stand-in for `Metrics` (only what a worker records)."""

    def __init__(self, buckets: tuple[float, ...] | list[float] | None = None) -> None:
        latency = tuple(buckets) if buckets else LATENCY_BUCKETS
        self.lock = lock = threading.Lock()  # the worker records, its tally thread drains
        for name in HISTOGRAMS:
            bounds = tuple(float(b) for b in (BATCH_BUCKETS if name == "batch_size" else latency))
            setattr(self, name, _Family(lambda b=bounds: _Histogram(lock, b)))
        for name in COUNTERS:
            setattr(self, name, _Family(lambda: _Counter(lock)))
        for name in GAUGES:
            setattr(self, name, _Family(lambda: _Gauge(lock)))

    def drain(self) -> list[list[Any]]:
        """What changed since the last drain, as JSON-able rows (empty when nothing did)."""
        rows: list[list[Any]] = []
        with self.lock:
            for name in HISTOGRAMS:
                for labels, h in list(getattr(self, name).children.items()):
                    if h.sum or any(h.counts):
                        rows.append([name, list(labels), h.counts, h.sum])
                        h.counts, h.sum = [0] * len(h.counts), 0.0
            for name in COUNTERS:
                for labels, c in list(getattr(self, name).children.items()):
                    if c.value:
                        rows.append([name, list(labels), c.value])
                        c.value = 0.0
            for name in GAUGES:
                for labels, g in list(getattr(self, name).children.items()):
                    if g.changed:
                        rows.append([name, list(labels), g.value])
                        g.changed = False
        return rows


def apply(metrics, rows: list[list[Any]]) -> None:
    """Add a worker's drained rows to the daemon's metrics (IO thread)."""
    for row in rows:
        name, labels = row[0], row[1]
        family = getattr(metrics, name, None)
        if name in COUNTERS and family is not None:
            family.labels(*labels).inc(row[2])
        elif name in GAUGES and family is not None:
            family.labels(*labels).set(row[2])
        elif name in HISTOGRAMS and family is not None:
            child = family.labels(*labels)
            # prometheus_client keeps one (non-cumulative) value per bucket, +Inf last; there is
            # no public call to add counts, so they are added where observe() adds them
            buckets = child._buckets
            if len(buckets) != len(row[2]):
                continue  # buckets changed by a reload while the worker ran: skip, never misfile
            for bucket, n in zip(buckets, row[2], strict=True):
                if n:
                    bucket.inc(n)
            child._sum.inc(row[3])
