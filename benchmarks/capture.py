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
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from benchmarks.common import MODELS, Daemon, cpu_seconds, percentiles, save


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
        n, t0, cpu0 = 0, time.perf_counter(), time.process_time()
        for frame in c.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"frames": n, "fps": round(n / elapsed, 1), "cpu_ms_per_frame": round(cpu / n * 1000, 3)}


def ffmpeg_null(path: Path, rgb: bool) -> dict | None:
    """The `ffmpeg` CLI decoding to null (Debian's FFmpeg; None when it is not installed): decode
    only, or decode and convert to RGB like capture. fps from its own -benchmark real time."""
    if shutil.which("ffmpeg") is None:
        return None
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-benchmark", "-i", str(path)]
    out = subprocess.run([*cmd, *(["-pix_fmt", "rgb24"] if rgb else []), "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr  # fmt: skip
    rtime = float(re.search(r"rtime=([\d.]+)s", out).group(1))
    utime, stime = (float(re.search(rf"{k}=([\d.]+)s", out).group(1)) for k in ("utime", "stime"))
    n = int(re.findall(r"frame=\s*(\d+)", out)[-1])
    return {"frames": n, "fps": round(n / rtime, 1), "cpu_ms_per_frame": round((utime + stime) / n * 1000, 3)}


def through_capture(path: Path, size: str | None = None) -> dict:
    """The frames' arrival rate at a PULL socket from `inferd capture --pace asap`."""
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    address = f"ipc://{path.parent}/frames.sock"  # as on a board: capture and inferd share ipc
    pull.bind(address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferd", "capture", "--url", str(path), "--to", address, "--pace", "asap",
         *(["--size", size] if size else [])], stderr=subprocess.DEVNULL,
    )  # fmt: skip
    times, cpu = [], [0.0, 0.0]  # capture's CPU time at the first and the last frame
    while pull.poll(10000):
        pull.recv_multipart(copy=False)
        times.append(time.perf_counter())
        if proc.poll() is None:
            cpu[len(times) > 1] = cpu_seconds(proc.pid)
        elif not pull.poll(200):
            break
    proc.wait(30)
    pull.close()
    n = len(times)
    fps = round((n - 1) / (times[-1] - times[0]), 1) if n > 1 else 0.0
    per_frame = (cpu[1] - cpu[0]) / max(n - 1, 1) * 1000  # start-up excluded, as for the bare decode
    return {"frames": n, "fps": fps, "cpu_ms_per_frame": round(per_frame, 3)}


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


def median_run(runs: list[dict]) -> dict:
    """The run with the median fps (its own CPU figure with it)."""
    return sorted(runs, key=lambda r: r["fps"])[len(runs) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of each; medians reported")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    args = p.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((640, 480), (1280, 720)):
            path = clip(Path(tmp) / f"{w}x{h}.mp4", w, h, args.frames)
            small = f"{w // 2}x{h // 2}"  # resized at the source, as for a model of that size
            runs: dict[str, list] = {
                "bare": [],
                "capture": [],
                "capture_small": [],
                "ffmpeg": [],
                "ffmpeg_rgb": [],
            }
            for _ in range(args.rounds):  # interleaved: a load that comes and goes falls on all alike
                runs["ffmpeg"].append(ffmpeg_null(path, rgb=False))
                runs["ffmpeg_rgb"].append(ffmpeg_null(path, rgb=True))
                runs["bare"].append(bare(path))
                runs["capture"].append(through_capture(path))
                runs["capture_small"].append(through_capture(path, small))
            m = {k: median_run(v) if v and v[0] else None for k, v in runs.items()}
            a, b = m["bare"], m["capture"]
            row = {**m, "ratio": round(b["fps"] / a["fps"], 3)}
            line = (f"{w}x{h}: PyAV decode+RGB {a['fps']} fps ({a['cpu_ms_per_frame']} ms CPU) | inferd capture "
                    f"{b['fps']} fps ({b['cpu_ms_per_frame']} ms) {row['ratio']}x | capture --size {small} "
                    f"{m['capture_small']['fps']} fps")  # fmt: skip
            if m["ffmpeg"]:
                row["ratio_vs_ffmpeg_null"] = round(b["fps"] / m["ffmpeg"]["fps"], 3)
                row["ratio_vs_ffmpeg_rgb"] = round(b["fps"] / m["ffmpeg_rgb"]["fps"], 3)
                line += (f" | ffmpeg -f null {m['ffmpeg']['fps']} fps ({row['ratio_vs_ffmpeg_null']}x), with "
                         f"-pix_fmt rgb24 {m['ffmpeg_rgb']['fps']} fps ({row['ratio_vs_ffmpeg_rgb']}x)")  # fmt: skip
            out[f"{w}x{h}"] = row
            print(line, flush=True)
        path = clip(Path(tmp) / "glass.mp4", 640, 480, 90)
        out["glass_to_result_30fps"] = latency(path, args.latency_seconds)
        g = out["glass_to_result_30fps"]
        print(
            f"glass to result, 640x480 at 30 fps: p50 {g.get('p50_ms')} ms, p99 {g.get('p99_ms')} ms ({g['results']} results)"
        )
    print("saved", save("capture", out))


if __name__ == "__main__":
    main()
