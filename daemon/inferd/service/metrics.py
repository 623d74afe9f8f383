"""Prometheus metrics: one registry per daemon (never the global one), the metric objects, the server."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from inferd import __version__
from inferd.config.sections import BATCH_BUCKETS, LATENCY_BUCKETS
from inferd.service.telemetry import DeviceCollector

# No `_created` series: they double the exposition size and nothing here reads them.
disable_created_metrics()


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return ""


class Metrics:
    """Every metric inferd exports, registered on `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        buckets: tuple[float, ...] | list[float] | None = None,
        sysfs: str | Path | None = "/sys",
        queue_depths: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        # first in the registry, so it runs before any series is read: worker processes' counts
        # are fetched at scrape time (engine/tally.py)
        self.before_collect: Callable[[], None] | None = None
        r.register(_BeforeCollect(self))
        buckets = tuple(buckets) if buckets else LATENCY_BUCKETS
        self.frames_received = Counter(
            "inferd_frames_received", "Frames received, by source.", ["source"], registry=r
        )
        self.frames_dropped = Counter(
            "inferd_frames_dropped",
            "Valid frames not served: queue full, stale, deadline passed, shutdown.",
            ["source", "reason"],
            registry=r,
        )
        self.frames_rejected = Counter(
            "inferd_frames_rejected",
            "Frames refused as invalid: bad header, size, shape, dtype, decode, unknown model...",
            ["source", "reason"],
            registry=r,
        )
        self.inferences = Counter(
            "inferd_inferences", "Frames run through a model, by status.", ["model", "status"], registry=r
        )
        self.inference_seconds = Histogram(
            "inferd_inference_seconds",
            "Time inside the runtime per batch.",
            ["model"],
            buckets=buckets,
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "inferd_preprocess_seconds",
            "Decode and preprocessing time per frame.",
            ["model"],
            buckets=buckets,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "inferd_queue_wait_seconds",
            "Time a frame waited in its queue.",
            ["model"],
            buckets=buckets,
            registry=r,
        )
        self.frame_latency_seconds = Histogram(
            "inferd_frame_latency_seconds",
            "Capture timestamp (or receipt) to result sent.",
            ["model", "source"],
            buckets=buckets,
            registry=r,
        )
        self.batch_size = Histogram(
            "inferd_batch_size", "Frames per runtime call.", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depths = queue_depths or dict
        r.register(_QueueDepth(lambda: self.queue_depths()))
        # (model, index, pid) of each worker process alive: their CPU and memory, read at scrape time
        self.worker_pids: Callable[[], list[tuple[str, int, int]]] = list
        r.register(_WorkerProcesses(lambda: self.worker_pids()))
        self.model_loaded = Gauge(
            "inferd_model_loaded", "1 when the model is loaded and warm.", ["model"], registry=r
        )
        self.model_info = Gauge(
            "inferd_model_info",
            "The loaded model's file, runtime and what runs it (value 1): accelerator is an onnxruntime "
            "execution provider, delegate:LIBRARY, xnnpack or cpu.",
            ["model", "runtime", "path", "sha256", "quantized", "accelerator"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "inferd_model_load_seconds", "Load and warm-up time of the model.", ["model"], registry=r
        )
        Info("inferd_build", "inferd and runtime versions.", registry=r).info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "onnxruntime": _package_version("onnxruntime"),
                "litert": _package_version("ai-edge-litert") or _package_version("tflite-runtime"),
                "numpy": _package_version("numpy"),
                "pyzmq": _package_version("pyzmq"),
            }
        )
        self.ready = Gauge(
            "inferd_ready",
            "1 when every required model is loaded and warm and every socket is bound.",
            registry=r,
        )
        self.config_reloads = Counter(
            "inferd_config_reloads", "Config reloads (SIGHUP), by result.", ["result"], registry=r
        )
        self.connections_refused = Counter(
            "inferd_connections_refused",
            "Connections refused by CURVE or address checks.",
            ["reason"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "inferd_mqtt_connected", "1 while the MQTT broker is connected.", registry=r
        )
        self.mqtt_messages = Counter(
            "inferd_mqtt_messages",
            "Results for MQTT, by result: sent, skipped (the publish policy), dropped (outbox full).",
            ["result"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "inferd_worker_restarts",
            "Worker processes restarted after they died (crash, OOM kill), by model.",
            ["model"],
            registry=r,
        )
        self.tracked_objects = Gauge(
            "inferd_tracked_objects",
            "Objects tracked (confirmed tracks, briefly unseen ones included) at the source's last frame.",
            ["model", "source"],
            registry=r,
        )
        self.zone_objects = Gauge(
            "inferd_zone_objects",
            "Tracked objects in a polygon zone at the source's last frame.",
            ["model", "source", "zone"],
            registry=r,
        )
        self.zone_events = Counter(
            "inferd_zone_events",
            "Zone events (enter, leave, dwell, cross), by zone and type.",
            ["model", "source", "zone", "type"],
            registry=r,
        )
        ProcessCollector(registry=r)
        if sysfs is not None:
            r.register(DeviceCollector(sysfs))

    def connections_refused_inc(self, reason: str) -> None:
        self.connections_refused.labels(reason).inc()

    def forget_model(self, name: str) -> None:
        """A model removed by a reload: drop its per-model gauges."""
        for gauge in (self.model_loaded, self.model_load_seconds):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        for labels in [k for k in self.model_info._metrics if k[0] == name]:
            self.model_info.remove(*labels)
        self.forget_tracks(name)

    def forget_tracks(self, name: str) -> None:
        """A model removed or reloaded (its tracks start again, its zones may have changed)."""
        for family in (self.tracked_objects, self.zone_objects):
            for labels in [k for k in family._metrics if k[0] == name]:
                family.remove(*labels)

    def model_up(self, model) -> None:
        info = model.describe()
        for labels in [k for k in self.model_info._metrics if k[0] == model.name]:
            self.model_info.remove(*labels)  # a reloaded model: only its current file is listed
        self.model_loaded.labels(model.name).set(1)
        self.model_info.labels(
            model.name,
            info["runtime"],
            info["path"],
            info["sha256"],
            str(info["quantized"]).lower(),
            info.get("accelerator", "cpu"),
        ).set(1)
        self.model_load_seconds.labels(model.name).set(model.load_seconds)


class _BeforeCollect(Collector):
    """Yields nothing: calls `metrics.before_collect` when a scrape starts."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        hook = self.metrics.before_collect
        if hook is not None:
            hook()
        return iter(())

    def describe(self):
        return iter(())


class _WorkerProcesses(Collector):
    """A worker process's CPU time and resident memory (the standard process_* metrics describe
    the daemon's own process only), from /proc at scrape time."""

    def __init__(self, pids: Callable[[], list[tuple[str, int, int]]]) -> None:
        self.pids = pids
        self.tick = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def collect(self):
        labels = ["model", "index"]
        cpu = CounterMetricFamily(
            "inferd_worker_cpu_seconds", "CPU time of a worker process (user + system).", labels=labels
        )
        rss = GaugeMetricFamily(
            "inferd_worker_resident_memory_bytes", "Resident memory of a worker process.", labels=labels
        )
        for model, index, pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/statm") as f:
                    resident = int(f.read().split()[1])
            except (OSError, IndexError, ValueError):  # it just ended
                continue
            values = [model, str(index)]
            cpu.add_metric(values, (int(fields[11]) + int(fields[12])) / self.tick)
            rss.add_metric(values, resident * self.page)
        yield cpu
        yield rss


class _QueueDepth(Collector):
    """inferd_queue_depth{source}, read from the queues at scrape time (no cost per frame)."""

    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self.depths = depths

    def collect(self):
        g = GaugeMetricFamily(
            "inferd_queue_depth", "Frames waiting, by source (all models).", labels=["source"]
        )
        for source, depth in sorted(self.depths().items()):
            g.add_metric([source], depth)
        yield g
