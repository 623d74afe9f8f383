"""inferd's cost over the bare runtime, same model, same threads, same run.

(a) the bare runtime in a tight loop on pre-made frames;
(b) inferd end to end through `router` request/reply from this (client) process;
(c) inferd streaming: `push` -> `pub`, as fast as the daemon takes frames (fifo, no drops).
Prints frames/s, latency p50/p90/p99 and the ratios b/a and c/a; then (d) streaming paced at
50 % of (c): its p99 latency, and how much of it inferd adds over the bare inference's p99.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import MODELS, Daemon, percentiles, save
from benchmarks.models import model as bench_model
from inferd.client import FramePublisher, InferClient, ResultSubscriber
from inferd.config import parse_config
from inferd.engine.models import load_model

CASES = {  # name: model, frame shape, dtype, inferd model options
    "noop-onnx": ("noop.onnx", (1, 3, 64, 64), np.float32, ""),
    "tiny-onnx": ("classifier_int8.onnx", (1, 3, 64, 64), np.float32, ""),
    "tiny-onnx-batch8": ("classifier_int8.onnx", (1, 3, 64, 64), np.float32,
                         ", batching: {max_batch: 8, max_delay_ms: 1}"),
    "tiny-tflite": ("classifier_int8.tflite", (1, 64, 64, 3), np.int8, ""),
    "mid-onnx": ("mid_int8.onnx", (1, 3, 80, 80), np.float32, ""),
    "mid-onnx-batch8": ("mid_int8.onnx", (1, 3, 80, 80), np.float32,
                        ", batching: {max_batch: 8, max_delay_ms: 1}"),
    "mid-onnx-greedy8": ("mid_int8.onnx", (1, 3, 80, 80), np.float32,
                         ", batching: {max_batch: 8, max_delay_ms: 0}"),
    "larger-onnx": ("larger_int8.onnx", (1, 3, 224, 224), np.float32, ""),
    "larger-onnx-batch4": ("larger_int8.onnx", (1, 3, 224, 224), np.float32,
                           ", batching: {max_batch: 4, max_delay_ms: 2}"),
    "heavy-onnx": ("heavy_int8.onnx", (1, 3, 448, 448), np.float32, ""),
    # threads vs instances on 2 cores (the bare loop gets the same intra-op threads)
    "larger-onnx-2threads": ("larger_int8.onnx", (1, 3, 224, 224), np.float32, ", threads: 2"),
    "larger-onnx-2instances": ("larger_int8.onnx", (1, 3, 224, 224), np.float32, ", instances: 2"),
}  # fmt: skip


def frames(shape, dtype, n=64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]
    return [rng.integers(-128, 128, shape).astype(dtype) for _ in range(n)]


def bare(path, threads, inputs, seconds) -> dict:
    cfg = parse_config(f"models:\n  - {{name: m, path: {path}, threads: {threads}, warmup: 10}}\n").models[0]
    backend = load_model(cfg, MODELS).backend  # the runtime itself, no inferd pre/postprocessing
    lat, t_end, i = [], time.perf_counter() + seconds, 0
    start = time.perf_counter()
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        backend.infer([inputs[i % len(inputs)]])
        lat.append(time.perf_counter() - t0)
        i += 1
    return {"fps": round(i / (time.perf_counter() - start), 1), **percentiles(lat)}


def router(d: Daemon, inputs, seconds) -> dict:
    lat, i = [], 0
    with InferClient(d.router, timeout=10) as client:
        for x in inputs[:10]:
            client.infer(x, model="m")
        start = time.perf_counter()
        t_end = start + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            client.infer(inputs[i % len(inputs)], model="m")
            lat.append(time.perf_counter() - t0)
            i += 1
    return {"fps": round(i / (time.perf_counter() - start), 1), **percentiles(lat)}


def _collect(results: str, n: int, conn) -> None:
    """In its own process (no GIL shared with the sender): n results' latencies from their ts,
    the daemon's own total, and when the last one arrived."""
    got = []
    with ResultSubscriber(results, "m/") as sub:
        conn.send("subscribed")
        while len(got) < n:
            r = sub.recv(timeout=30)
            got.append((time.time() - r.header["ts"], r.timings["total_ms"] / 1000))
    conn.send((got, time.time()))


def streaming(d: Daemon, inputs, n: int, rate: float | None = None) -> dict:
    """Send n frames, as fast as the daemon takes them (rate None: fifo backpressure, no drops)
    or at a fixed rate; results are taken by a separate receiver process."""
    import multiprocessing as mp

    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe()
    proc = spawn.Process(target=_collect, args=(d.results, n, child))
    proc.start()
    assert parent.poll(30) and parent.recv() == "subscribed"
    time.sleep(0.3)
    with FramePublisher(d.pull, source="bench", sndhwm=64) as pub:
        start, start_wall = time.perf_counter(), time.time()
        for i in range(n):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            pub.send(inputs[i % len(inputs)], model="m")
        got, last = parent.recv() if parent.poll(120) else ([], time.time())
    proc.join(10)
    inside = {f"daemon_{k}": v for k, v in percentiles([t for _, t in got]).items()}
    out = {"fps": round(len(got) / (last - start_wall), 1), "frames": len(got)}
    if rate:
        out["rate"] = round(rate, 1)
    return {**out, **percentiles([t for t, _ in got]), **inside}


def model_path(name: str):
    return MODELS / name if (MODELS / name).exists() else bench_model(name)


def run_case(name: str, threads: int, seconds: float) -> dict:
    model, shape, dtype, options = CASES[name]
    inputs = frames(shape, dtype)
    path = model_path(model)
    if "threads:" in options:
        threads, options = int(options.split("threads:")[1]), ""
    a = bare(path, threads, inputs, seconds)
    d = Daemon(
        f"  - {{name: m, path: {path}, threads: {threads}{options}}}",
        "sources:\n  - {match: '*', policy: fifo, queue_size: 64}\n",
    )
    try:
        b = router(d, inputs, seconds)
        c = streaming(d, inputs, max(200, int(a["fps"] * seconds)))
        half = streaming(d, inputs, max(50, int(c["fps"] / 2 * seconds)), rate=c["fps"] / 2)  # 50 % load
        rss = round(d.rss_mb(), 1)
    finally:
        d.stop()
    half["added_p99_ms"] = round(half["p99_ms"] - a["p99_ms"], 4)  # inferd's part of the p99
    out = {"model": model, "threads": threads, "bare": a, "router": b, "streaming": c, "half_load": half,
           "router_vs_bare": round(b["fps"] / a["fps"], 3), "streaming_vs_bare": round(c["fps"] / a["fps"], 3),
           "ready_s": round(d.ready_s, 3), "rss_mb": rss}  # fmt: skip
    print(
        f"{name:12} bare {a['fps']:8.0f}/s p99 {a['p99_ms']:7.3f} ms | router {b['fps']:7.0f}/s p99 "
        f"{b['p99_ms']:7.3f} ms ({out['router_vs_bare']:.2f}x) | stream {c['fps']:7.0f}/s p99 {c['p99_ms']:7.3f} ms "
        f"({out['streaming_vs_bare']:.2f}x) | 50% load p99 {half['p99_ms']:.3f} ms (+{half['added_p99_ms']:.3f}) "
        f"| ready {out['ready_s']:.2f} s, RSS {rss} MB",
        flush=True,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    results = [run_case(c, args.threads, args.seconds) for c in args.cases]
    print("saved", save("overhead", {"cases": results}))


if __name__ == "__main__":
    main()
