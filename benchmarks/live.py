"""What the live view costs: streaming throughput of 640x480 camera frames (resized by inferd,
a detector's boxes) with `live_view: false`, `live_view: true` and nobody looking, and
`live_view: true` with one MJPEG viewer at `live_fps` 5; rounds alternate, medians compared.
Also the daemon's RSS after each (the view keeps one frame and one JPEG per watched stream).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.common import Daemon, save
from benchmarks.overhead import streaming

MODEL = """  - name: m
    path: {path}
    preprocess: {{resize: [64, 64], scale: 1/255}}
    postprocess: {{type: detect, format: end2end, score_threshold: 0.3}}
    threads: 1"""


def viewer(url: str, stop: threading.Event, seen: list) -> None:
    with urllib.request.urlopen(url, timeout=30) as r:
        while not stop.is_set():
            chunk = r.read1(1 << 16)
            seen[0] += chunk.count(b"--inferd-live-frame")


def round_(path: Path, live: bool, watch: bool, frames: list, n: int) -> dict:
    d = Daemon(
        MODEL.format(path=path), "sources:\n  - {match: '*', policy: fifo, queue_size: 64}\n",
        metrics_yaml=f"  live_view: {str(live).lower()}\n  live_fps: 5\n",
    )  # fmt: skip
    stop, seen = threading.Event(), [0]
    try:
        if watch:
            url = f"http://{d.metrics}/live/m/bench.mjpg"
            threading.Thread(target=viewer, args=(url, stop, seen), daemon=True).start()
            time.sleep(1.0)
        out = streaming(d, frames, n)
        out["rss_mb"] = round(d.rss_mb(), 1)
        out["viewer_pictures"] = seen[0]
    finally:
        stop.set()
        d.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=1500)
    args = p.parse_args()
    from tests.test_frigate import build_detector

    tmp = Path(tempfile.mkdtemp(prefix="inferd-live-bench-"))
    path = build_detector(tmp / "det.onnx")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(16)]
    cases = {"off": (False, False), "on, nobody looking": (True, False), "on, one MJPEG viewer": (True, True)}
    results: dict = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (live, watch) in cases.items():
            results[name].append(round_(path, live, watch, frames, args.frames))
    off = statistics.median(r["fps"] for r in results["off"])
    summary = {}
    for name, runs in results.items():
        fps = statistics.median(r["fps"] for r in runs)
        summary[name] = {"fps": fps, "vs_off": round(fps / off, 3), "rss_mb": max(r["rss_mb"] for r in runs),
                         "viewer_pictures": [r["viewer_pictures"] for r in runs]}  # fmt: skip
        print(
            f"{name:24} {fps:8.1f} frames/s  {summary[name]['vs_off']:.3f}x off  RSS {summary[name]['rss_mb']} MB"
        )
    print("saved", save("live", {"summary": summary, "rounds": results}))


if __name__ == "__main__":
    main()
