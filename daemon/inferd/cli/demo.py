"""`inferd demo`: the daemon on the example models, fed by synthetic cameras, with live results."""

from __future__ import annotations

import contextlib
import signal
import socket
import tempfile
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

import numpy as np

from inferd.cli.demo_video import start_video_camera
from inferd.client import FramePublisher, ResultSubscriber
from inferd.config import EndpointConfig, MetricsConfig, ResultsConfig, load_config
from inferd.daemon import Daemon
from inferd.errors import RequestTimeout

EXAMPLE_CONFIG = Path(__file__).resolve().parents[3] / "examples" / "inferd.yaml"


def free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port")


class Camera(threading.Thread):
    """A synthetic camera: a moving colour pattern at `fps`, pushed as raw 640x480 RGB frames."""

    def __init__(self, endpoint: str, source: str, fps: float, stop: threading.Event, seed: int) -> None:
        super().__init__(name=f"camera-{source}", daemon=True)
        self.endpoint, self.source, self.fps, self.stop = endpoint, source, fps, stop
        rng = np.random.default_rng(seed)
        h, w = 480, 640
        yy, xx = np.mgrid[0:h, 0 : 2 * w].astype(np.float32)
        base = rng.uniform(0.02, 0.08, 3)
        phase = rng.uniform(0, 6.28, 3)
        self.strip = np.stack(
            [127 + 120 * np.sin(xx * base[c] + yy * base[(c + 1) % 3] + phase[c]) for c in range(3)], axis=2
        ).astype(np.uint8)
        self.sent = self.unsent = 0

    def run(self) -> None:
        with FramePublisher(self.endpoint, source=self.source) as pub:
            period, t_next, x = 1.0 / self.fps, time.monotonic(), 0
            while not self.stop.is_set():
                frame = np.ascontiguousarray(self.strip[:, x : x + 640])
                if pub.send(frame, block=False):
                    self.sent += 1
                else:
                    self.unsent += 1  # inferd had not taken the previous frames yet
                x = (x + 7) % 640
                t_next += period
                self.stop.wait(max(0.0, t_next - time.monotonic()))


def run_demo(config_path: Path | None, sources: int, fps: float, duration: float | None, out=print) -> int:
    path = config_path or EXAMPLE_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pass -c CONFIG (the example config lives in the repo)")
    config, base_dir = load_config(path)
    tmp = tempfile.TemporaryDirectory(prefix="inferd-demo-")
    frames_addr = f"ipc://{tmp.name}/frames.sock"
    results_addr = f"ipc://{tmp.name}/results.sock"
    router_port = free_port(5555)
    metrics_port = free_port(9464)
    config = config.model_copy(
        update={
            "endpoints": [
                EndpointConfig(type="pull", bind=frames_addr, rcvhwm=4),
                EndpointConfig(type="router", bind=f"tcp://127.0.0.1:{router_port}"),
            ],
            "results": ResultsConfig(bind=results_addr),
            "metrics": MetricsConfig(listen=f"127.0.0.1:{metrics_port}"),
        }
    )
    daemon = Daemon(config, base_dir)
    daemon.start()
    out(f"inferd demo: {len(daemon.models)} model(s): {', '.join(daemon.models)}")
    out(f"  frames:  {frames_addr} (pull)   requests: tcp://127.0.0.1:{router_port} (router)")
    out(f"  results: {results_addr}   metrics: http://127.0.0.1:{metrics_port}/metrics")
    out(f"  {sources} synthetic camera(s) at {fps:g} fps, 640x480 RGB; Ctrl-C to stop")
    stop = threading.Event()
    sub = ResultSubscriber(results_addr)  # returns once inferd has the subscription
    cams = [Camera(frames_addr, f"cam{i}", fps, stop, seed=i) for i in range(sources)]
    video = start_video_camera(frames_addr, tmp.name, Camera(frames_addr, "video", fps, stop, 99).strip, fps)
    out(
        f"  and `inferd capture` playing a {fps:g} fps H.264 clip as source 'video'"
        if video
        else "  (no recorded camera: `pip install 'inferd[capture]'` adds `inferd capture` playing a clip)"
    )
    for c in cams:
        c.start()
    stats: dict[tuple[str, str], deque] = defaultdict(lambda: deque(maxlen=200))
    top: dict[tuple[str, str], str] = {}
    errors: dict[str, int] = defaultdict(int)
    start = last_print = time.monotonic()
    served = 0

    def take(r, now: float) -> None:
        nonlocal served
        if r.ok:
            served += 1
            stats[(r.model, r.source)].append((now, r.timings.get("total_ms", 0.0)))
            if r.classes:
                c = r.classes[0]
                top[(r.model, r.source)] = f"{c['label'] or c['index']} {c['score']:.2f}"
        else:
            errors[r.reason or "?"] += 1

    # Ctrl-C sets a flag instead of raising: a KeyboardInterrupt raised while a ZeroMQ message is
    # freed (in Cython's __dealloc__) is printed and dropped by Python, and the demo ran on
    interrupted = threading.Event()
    handles_sigint = threading.current_thread() is threading.main_thread()
    if handles_sigint:
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        while not interrupted.is_set() and (duration is None or time.monotonic() - start < duration):
            with contextlib.suppress(RequestTimeout):
                take(sub.recv(timeout=0.5), time.monotonic())
            now = time.monotonic()
            if now - last_print >= 1.0:
                last_print = now
                out(f"--- {now - start:5.1f} s  results {served}  errors {dict(errors) or 0}")
                for (model, source), samples in sorted(stats.items()):
                    recent = [lat for t, lat in samples if now - t <= 1.0]
                    lat = np.percentile([lat for _, lat in samples], 50) if samples else 0.0
                    out(
                        f"  {source:6} {model:18} {len(recent):4d} fps  p50 {lat:7.3f} ms  "
                        f"top {top.get((model, source), '-')}"
                    )
    except KeyboardInterrupt:
        pass
    finally:
        if handles_sigint:
            signal.signal(signal.SIGINT, previous)
        stop.set()
        for c in cams:
            c.join(2)
        if video is not None:
            video.stop()
            cams.append(video)
        daemon.stop(drain_timeout=2.0)  # serves what is queued: its results are still counted
        try:
            while True:
                take(sub.recv(timeout=0.2), time.monotonic())
        except RequestTimeout:
            pass
        sub.close()
        tmp.cleanup()
    fanout = {
        c.source: len(set(daemon.transport.dispatcher.route(c.source)) & set(daemon.models)) for c in cams
    }
    out(summary(cams, fanout, served, dict(errors), counts(daemon, "inferd_frames_dropped")))
    return 0 if served else 1


def counts(daemon: Daemon, family: str) -> dict[str, int]:
    """A counter of the daemon's registry summed by reason (e.g. drops)."""
    out: dict[str, int] = {}
    for fam in daemon.metrics.registry.collect():
        if fam.name == family:
            for s in fam.samples:
                if s.name.endswith("_total") and s.value:
                    out[s.labels["reason"]] = out.get(s.labels["reason"], 0) + int(s.value)
    return out


WHY = {
    "queue_full": "a newer frame from the same camera replaced it (the `latest` policy: fresh frames first)",
    "stale": "older than max_age_ms when its turn came",
    "deadline": "past its deadline",
    "shutdown": "still queued when the demo stopped",
}


def summary(cams: list[Camera], fanout: dict[str, int], served: int, errors: dict, dropped: dict) -> str:
    """The final count, explained: every result asked for is received, dropped (why) or in flight."""
    sent = sum(c.sent for c in cams)
    asked = sum(c.sent * fanout[c.source] for c in cams)
    lines = [
        f"inferd demo: {len(cams)} camera(s) sent {sent} frames "
        f"({', '.join(f'{c.source} {c.sent}' for c in cams)}); each goes to "
        f"{'/'.join(sorted({str(n) for n in fanout.values()}))} model(s): {asked} results expected, "
        f"{served} received"
    ]
    for reason, n in sorted(dropped.items()):
        lines.append(f"  {n} dropped ({reason}): {WHY.get(reason, reason)}")
    for reason, n in sorted(errors.items()):
        lines.append(f"  {n} answered with an error ({reason})")
    rest = asked - served - sum(dropped.values()) - sum(errors.values())
    if rest > 0:
        lines.append(f"  {rest} still on their way (in ZeroMQ queues) when the demo stopped")
    unsent = sum(c.unsent for c in cams)
    if unsent:
        lines.append(f"  {unsent} frames not sent: inferd had not yet taken the camera's previous frames")
    return "\n".join(lines)
