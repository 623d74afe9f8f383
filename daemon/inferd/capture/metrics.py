"""The capture process's own metrics (an own registry, served only when `metrics:` is set)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CaptureMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.decoded = Counter("inferd_capture_frames_decoded", "Frames decoded from the source.", registry=r)
        self.sent = Counter("inferd_capture_frames_sent", "Frames sent to inferd.", registry=r)
        self.dropped = Counter(
            "inferd_capture_frames_dropped",
            "Frames not sent, by reason: fps (the cap), stale (a newer frame replaced it before the "
            "network took it), or inferd's answer to a router request.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.decode_errors = Counter(
            "inferd_capture_decode_errors", "Frames that could not be decoded.", registry=r
        )
        self.reconnects = Counter(
            "inferd_capture_reconnects", "Times the source was lost and reopened.", registry=r
        )
        self.last_frame_age = Gauge(
            "inferd_capture_last_frame_age_seconds", "Seconds since the last frame was sent.", registry=r
        )
        self.decode_seconds = Histogram(
            "inferd_capture_convert_seconds", "Crop, resize and encoding of one frame.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1), registry=r,
        )  # fmt: skip

    def serve(self, listen: str | None) -> None:
        if not listen:
            return
        from prometheus_client import start_http_server

        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
