"""Per-source queues per model, drop policies, fair scheduling, and the worker threads.

Data flow: transport (IO thread) -> ModelQueue.put -> Worker.take -> preprocess -> backend
-> postprocess -> replies (to the peer that asked, or published).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferd.config import SourceConfig
from inferd.errors import FrameError, InferenceError
from inferd.protocol import FrameHeader, decode_payload
from inferd.service.systemd import name_os_thread

log = logging.getLogger("inferd.pipeline")
_DECODE_LOCK = threading.Lock()  # JPEG/PNG frames shared by several models are decoded once


@dataclass(eq=False, slots=True)
class Frame:
    """One received frame, shared by every model it is routed to."""

    header: FrameHeader
    payloads: list[Any]  # zmq.Frame / bytes, one per header part
    received: float  # time.monotonic() at receipt
    received_wall: float  # time.time() at receipt
    reply_to: tuple[Any, list[Any]] | None = None  # (transport.Endpoint, envelope); None: publish
    max_elements: int | None = None
    arrays: list[np.ndarray] | None = None
    codec: Any = None  # a foreign protocol's reply encoder (frigate.py); None: inferd's own replies
    raw_header: Any = None  # the header as received (handed on to a worker process as it is)

    @property
    def source(self) -> str:
        return self.header.source

    def decoded(self) -> list[np.ndarray]:
        """The payloads as arrays; JPEG/PNG decoding happens once, in the first worker that asks."""
        if self.arrays is None:
            with _DECODE_LOCK:
                if self.arrays is None:
                    self.arrays = [
                        decode_payload(spec, data, self.max_elements)
                        for spec, data in zip(self.header.parts, self.payloads, strict=True)
                    ]
        return self.arrays

    def age(self, now_wall: float) -> float:
        """Seconds since capture (or since receipt when the sender gave no timestamp)."""
        return now_wall - (self.header.ts if self.header.ts is not None else self.received_wall)


class SourcePolicies:
    """Which queue policy applies to a source: the first matching `sources` entry, else the default."""

    def __init__(self, entries: list[SourceConfig]) -> None:
        self.default = SourceConfig()
        self.update(entries)

    def update(self, entries: list[SourceConfig]) -> None:
        """New entries (on reload); running queues see them from their next frame on."""
        self.entries = list(entries)
        self._cache: dict[str, SourceConfig] = {}

    def __call__(self, source: str) -> SourceConfig:
        policy = self._cache.get(source)
        if policy is None:
            policy = next((e for e in self.entries if fnmatch.fnmatchcase(source, e.match)), self.default)
            if len(self._cache) < 4096:
                self._cache[source] = policy
        return policy


Dropped = Callable[[Frame, str], None]
Woken = Callable[[], None]


class ModelQueue:
    """Bounded per-source queues for one model, served round-robin so no source starves another."""

    def __init__(
        self, model: str, policies: SourcePolicies, on_drop: Dropped, on_room: Woken | None = None
    ) -> None:
        self.model = model
        self.policies = policies
        self.on_drop = on_drop
        self.on_room = on_room  # called when a frame is taken from a queue a put found full
        self._refused = False  # a fifo put was refused since the last take
        self._queues: dict[str, deque[Frame]] = {}
        self._ready: deque[str] = deque()  # sources with frames waiting, in serving order
        self._cond = threading.Condition()
        self._closed = False
        self.size = 0

    def put(self, frame: Frame) -> bool:
        """Queue a frame. False when a fifo queue is full: the caller keeps the frame and retries."""
        policy = self.policies(frame.source)
        dropped = None
        with self._cond:
            if self._closed:
                dropped = frame
            else:
                q = self._queues.get(frame.source)
                if q is None:
                    q = self._queues[frame.source] = deque()
                was_empty = not q
                if len(q) >= policy.queue_size:
                    if policy.policy == "fifo":
                        self._refused = True
                        return False
                    dropped = q.popleft()
                    self.size -= 1
                q.append(frame)
                if was_empty:
                    self._ready.append(frame.source)
                self.size += 1
                self._cond.notify()
        if dropped is not None:
            self.on_drop(dropped, "shutdown" if dropped is frame else "queue_full")
        return True

    def take(self, timeout: float) -> Frame | None:
        """The next frame, fairly across sources; None after `timeout` or when closed and empty."""
        with self._cond:
            if not self._ready:
                if self._closed:
                    return None
                self._cond.wait(timeout)
                if not self._ready:
                    return None
            source = self._ready.popleft()
            q = self._queues[source]
            frame = q.popleft()
            self.size -= 1
            if q:
                self._ready.append(source)
            refused, self._refused = self._refused, False
        if refused and self.on_room is not None:
            self.on_room()  # the IO thread holds a frame for this queue: it can put it now
        return frame

    def take_nowait(self, accept: Callable[[str], bool] | None = None) -> Frame | None:
        """The next frame without waiting, fairly across sources (the IO thread feeds worker
        processes with it); `accept` limits it to some sources (a worker's own, when the model keeps
        state per source). None when nothing acceptable is queued."""
        with self._cond:
            ready = self._ready
            if not ready:
                return None
            if accept is None:
                source = ready.popleft()
            else:
                for i, source in enumerate(ready):
                    if accept(source):
                        del ready[i]
                        break
                else:
                    return None
            q = self._queues[source]
            frame = q.popleft()
            self.size -= 1
            if q:
                ready.append(source)
            self._refused = False  # the caller (the IO thread) retries its held frames itself
        return frame

    def take_batch(self, max_batch: int, max_delay: float, timeout: float) -> list[Frame]:
        """Up to `max_batch` frames, fairly across sources: the first waits up to `timeout`, the
        rest up to `max_delay` after it (frames already queued are taken at once)."""
        first = self.take(timeout)
        if first is None:
            return []
        batch = [first]
        end = time.monotonic() + max_delay
        with self._cond:
            while len(batch) < max_batch:
                if self._ready:
                    source = self._ready.popleft()
                    q = self._queues[source]
                    batch.append(q.popleft())
                    self.size -= 1
                    if q:
                        self._ready.append(source)
                    continue
                left = end - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            refused, self._refused = self._refused, False
        if refused and self.on_room is not None:
            self.on_room()
        return batch

    def depths(self) -> dict[str, int]:
        with self._cond:
            return {s: len(q) for s, q in self._queues.items() if q}

    def depth(self, source: str) -> int:
        q = self._queues.get(source)
        return len(q) if q else 0

    def has_room(self, source: str) -> bool:
        return self.depth(source) < self.policies(source).queue_size

    def remove_if(self, test: Callable[[Frame], str | None]) -> list[tuple[Frame, str]]:
        """Take out queued frames for which `test` gives a reason (expired deadlines, shutdown)."""
        out: list[tuple[Frame, str]] = []
        with self._cond:
            for source, q in self._queues.items():
                if not q:
                    continue
                keep: deque[Frame] = deque()
                for frame in q:
                    reason = test(frame)
                    if reason is None:
                        keep.append(frame)
                    else:
                        out.append((frame, reason))
                if len(keep) != len(q):
                    self.size -= len(q) - len(keep)
                    self._queues[source] = keep
                    if not keep and source in self._ready:
                        self._ready.remove(source)
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Accept no more frames; workers drain what is queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass(slots=True)
class Timings:
    queue: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    total: float = 0.0


class Worker(threading.Thread):
    """One model instance: takes frames (or batches of frames) from its model's queue and runs them."""

    def __init__(
        self, model, queue: ModelQueue, sink, metrics, policies: SourcePolicies, index: int = 0
    ) -> None:
        super().__init__(name=f"worker-{model.name}-{index}", daemon=True)
        self.model, self.queue, self.sink, self.metrics, self.policies = model, queue, sink, metrics, policies
        self.busy_since: float | None = None  # monotonic start of the current inference (watchdog)
        self.current: list[Frame] = []  # the frames being processed
        self.abandoned = False  # set at shutdown when the current frames were already answered
        self.last_progress = time.monotonic()
        self.loading = False  # its model is loaded before it starts (a worker process may be loading)
        batching = model.cfg.batching
        self.max_batch, self.max_delay = batching.max_batch, batching.max_delay_ms / 1000
        m = model.name
        self._infer_hist = metrics.inference_seconds.labels(m)
        self._pre_hist = metrics.preprocess_seconds.labels(m)
        self._wait_hist = metrics.queue_wait_seconds.labels(m)
        self._batch_hist = metrics.batch_size.labels(m)
        self._ok = metrics.inferences.labels(m, "ok")
        self._err = metrics.inferences.labels(m, "error")

    def run(self) -> None:
        name_os_thread(f"inferd:{self.model.name}")
        try:
            self._loop()
        finally:
            self.sink.release()

    def _loop(self) -> None:
        while True:
            if self.max_batch > 1:
                frames = self.queue.take_batch(self.max_batch, self.max_delay, timeout=0.5)
            else:
                frame = self.queue.take(timeout=0.5)
                frames = [frame] if frame is not None else []
            self.last_progress = time.monotonic()
            if not frames:
                if self.queue.closed:
                    return
                continue
            self.current = frames
            try:
                self.process(frames)
            except Exception:  # a bug must not kill the worker; the frames still get an answer
                self.busy_since = None
                log.exception("model %s: unexpected error on %d frame(s)", self.model.name, len(frames))
                for frame in frames:
                    self.sink.error(frame, self.model.name, "internal", "internal error, see the daemon log")
            self.current = []
            self.last_progress = time.monotonic()

    def _prepare(self, frame: Frame, now: float) -> tuple[list[np.ndarray], Timings, Any] | None:
        """Checks and preprocessing of one frame; None when it was answered (dropped or rejected)."""
        model = self.model
        t = Timings(queue=now - frame.received)
        self._wait_hist.observe(t.queue)
        max_age = self.policies(frame.source).max_age_ms
        if max_age is not None and frame.age(time.time()) * 1000 > max_age:
            self.sink.drop(frame, model.name, "stale")
            return None
        if frame.header.deadline is not None and time.time() > frame.header.deadline:
            self.sink.drop(frame, model.name, "deadline")
            return None
        try:
            arrays = frame.decoded()
            inputs = model.prepare(arrays)
        except FrameError as e:
            self.sink.reject(frame, model.name, e.reason, str(e))
            return None
        t.preprocess = time.monotonic() - now
        self._pre_hist.observe(t.preprocess)
        return inputs, t, model.geometry(arrays)

    def process(self, frames: list[Frame]) -> None:
        """Run frames through the model: one runtime call for all of them when batching."""
        model = self.model
        ready: list[tuple[Frame, list[np.ndarray], Timings, Any]] = []
        for frame in frames:
            prepared = self._prepare(frame, time.monotonic())
            if prepared is not None:
                ready.append((frame, *prepared))
        if not ready:
            return
        t1 = self.busy_since = time.monotonic()
        try:
            if len(ready) == 1:
                per_frame = [model.infer(ready[0][1])]
            else:
                per_frame = model.infer_batch([inputs for _, inputs, _, _ in ready])
            t2 = time.monotonic()
            decoded = [
                model.decode(outs, f.source, geom, f.header.ts)
                for (f, _, _, geom), outs in zip(ready, per_frame, strict=True)
            ]
        except InferenceError as e:
            self.busy_since = None
            for frame, _, _, _ in ready:
                self._err.inc()
                self.sink.error(frame, model.name, "inference", str(e))
            return
        self.busy_since = None
        self._infer_hist.observe(t2 - t1)
        self._batch_hist.observe(len(ready))
        self._ok.inc(len(ready))
        if self.abandoned:
            return
        for (frame, _, t, _), outputs, dec in zip(ready, per_frame, decoded, strict=True):
            t.inference = t2 - t1
            t.total = time.monotonic() - frame.received
            self.sink.result(frame, model, outputs, dec, t)
            if dec is not None and "tracks" in dec:
                self._tracked(frame.source, dec)

    def _tracked(self, source: str, dec: dict) -> None:
        """A tracked model's gauges and zone event counts (labels() per frame: a few us)."""
        m, metrics = self.model.name, self.metrics
        metrics.tracked_objects.labels(m, source).set(dec["tracks"])
        for zone, state in dec.get("zones", {}).items():
            if "count" in state:
                metrics.zone_objects.labels(m, source, zone).set(state["count"])
        for event in dec.get("events", ()):
            metrics.zone_events.labels(m, source, event["zone"], event["type"]).inc()
