"""`inferd capture`'s decode-and-send rate against a bare decode of the same file, and glass-to-
result latency through capture -> inferd -> a subscriber.

(a) bare: PyAV (the FFmpeg that capture uses) decoding the file and converting each frame to an
    RGB array, nothing else (what `ffmpeg -i FILE -pix_fmt rgb24 -f null -` does; Debian's ffmpeg
    CLI is not installed by the project, PyAV's FFmpeg is the same library);
(b) `inferd capture --pace asap` sending the same file to a PULL socket in this process;
ratio b/a, for 640x480 and 1280x720 H.264. Then (c) a 30 fps clip paced in real time through
capture -> inferd (example classifier) -> ResultSubscriber: capture timestamp to result, p50/p99.

    .venv/bin/python -m benchmarks.capture [--frames 300]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from benchmarks.common import MODELS, Daemon, percentiles, save


def clip(path: Path, w: int, h: int, frames: int, fps: int = 30) -> Path:
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = np.roll(base, i * 4, axis=1)  # motion, so the codec has work to do
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def bare(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        n, t0 = 0, time.perf_counter()
        for frame in c.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
        elapsed = time.perf_counter() - t0
    return {"frames": n, "fps": round(n / elapsed, 1)}


def through_capture(path: Path) -> dict:
    """The frames' arrival rate at a PULL socket from `inferd capture --pace asap`."""
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    address = f"ipc://{path.parent}/frames.sock"  # as on a board: capture and inferd share ipc
    pull.bind(address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd", "capture", "--url", str(path), "--to", address, "--pace", "asap"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    times = []
    while pull.poll(10000):
        pull.recv_multipart(copy=False)
        times.append(time.perf_counter())
        if proc.poll() is not None and not pull.poll(200):
            break
    proc.wait(30)
    pull.close()
    n = len(times)
    return {"frames": n, "fps": round((n - 1) / (times[-1] - times[0]), 1) if n > 1 else 0.0}


def latency(path: Path, seconds: float) -> dict:
    from inferd.client import ResultSubscriber

    d = Daemon(
        f"  - {{name: m, path: {MODELS / 'classifier_int8.onnx'}, threads: 1, "
        "preprocess: {resize: [64, 64], scale: 1/255}, postprocess: {type: classify, top_k: 1}}"
    )
    lat = []
    try:
        with ResultSubscriber(d.results, "m/glass") as sub:
            proc = subprocess.Popen(
                [sys.executable, "-m", "inferd", "capture", "--url", str(path), "--to", d.pull,
                 "--source", "glass", "--loop"], stderr=subprocess.DEVNULL,
            )  # fmt: skip
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if sub.socket.poll(1000):
                    r = sub.recv(1.0)
                    lat.append(time.time() - r.header["ts"])
            proc.terminate()
            proc.wait(10)
    finally:
        d.stop()
    return {"results": len(lat), **percentiles(lat[30:])}  # the first second warms up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--latency-seconds", type=float, default=10.0)
    args = p.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((640, 480), (1280, 720)):
            path = clip(Path(tmp) / f"{w}x{h}.mp4", w, h, args.frames)
            a, b = bare(path), through_capture(path)
            ratio = round(b["fps"] / a["fps"], 3)
            out[f"{w}x{h}"] = {"bare_decode": a, "capture": b, "ratio": ratio}
            print(f"{w}x{h}: bare decode {a['fps']} fps | inferd capture {b['fps']} fps ({b['frames']} frames) | {ratio}x",
                  flush=True)  # fmt: skip
        path = clip(Path(tmp) / "glass.mp4", 640, 480, 90)
        out["glass_to_result_30fps"] = latency(path, args.latency_seconds)
        g = out["glass_to_result_30fps"]
        print(
            f"glass to result, 640x480 at 30 fps: p50 {g.get('p50_ms')} ms, p99 {g.get('p99_ms')} ms ({g['results']} results)"
        )
    print("saved", save("capture", out))


if __name__ == "__main__":
    main()
