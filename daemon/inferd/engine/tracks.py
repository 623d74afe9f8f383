"""A model's trackers, one per source (tracking.py), with the zones drawn on each source
(zones.py): what the detect postprocess calls once per decoded frame."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from inferd.engine.tracking import TrackConfig, Tracker
from inferd.engine.zones import ZoneConfig


class Tracks:
    """A model's trackers, one per source, for its detect postprocess, with the zones drawn on
    that source: the time is each frame's timestamp (its header's `ts`), or for frames without
    one this process's monotonic clock when it is decoded; a source silent for IDLE_S (at least
    10 x max_age_s) loses its tracker, so many sources over a long run stay bounded."""

    IDLE_S = 60.0

    def __init__(
        self, cfg: TrackConfig, labels: list[str] | None = None, zones: list[ZoneConfig] | None = None,
        clock=time.monotonic,
    ) -> None:  # fmt: skip
        self.cfg, self.labels, self.clock = cfg, labels, clock
        self.zones: dict[str, list[ZoneConfig]] = {}
        for z in zones or ():
            self.zones.setdefault(z.source, []).append(z)
        self.by_source: dict[str, Tracker] = {}
        self.last: dict[str, float] = {}  # source -> when its last frame was tracked (monotonic)
        self._lock = threading.Lock()  # instances of one model (threads) share it
        self._calls = 0

    def __call__(
        self,
        source: str,
        detections: list[dict],
        frame: tuple[int, int] | None = None,
        ts: float | None = None,
    ) -> Result:
        """Sets each detection's "track_id" (and age, velocity); this frame's events and, where
        the source has zones, what is in them (ZoneState.summary). The time is the frame's `ts`
        (when it was captured: queueing and batching do not bend the motion), else now."""
        now = self.clock()
        with self._lock:
            tracker = self.by_source.get(source)
            if tracker is None:
                tracker = self.by_source[source] = Tracker(self.cfg, self.labels, self.zones.get(source))
            up = tracker.annotate(detections, now if ts is None else ts, frame)
            summary = tracker.summary()
            self.last[source] = now  # idleness in this process's clock: sources' own clocks differ
            self._calls += 1
            if self._calls % 256 == 0:
                idle = max(self.IDLE_S, 10 * self.cfg.max_age_s)
                for name in [n for n, t in self.last.items() if now - t > idle]:
                    del self.by_source[name], self.last[name]
        return Result(up.events, summary, int((tracker.ids >= 0).sum()))


@dataclass(frozen=True, slots=True)
class Result:
    """What tracking adds to a frame's result besides the detections' ids."""

    events: list[dict]
    zones: dict[str, dict] | None  # None: no zone on this source
    tracks: int  # the source's confirmed tracks (lost ones included)
