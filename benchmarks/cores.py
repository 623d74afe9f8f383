"""Every core: K model instances in one `inferd run` against K bare runtime processes.

For each case and K, in the same run:
  bare    K processes, each the runtime alone in a tight loop (1 intra-op thread, the same frames,
          the camera case resizing with Pillow as inferd does);
  stream  one daemon (`instances: K`, `threads: 1`, fifo sources), frames pushed by P publisher
          processes (one source each) as fast as it takes them, results counted by a subscriber
          process;
  router  the same daemon, 2K InferClient processes in closed loops.
Throughput is counted in the same window for all three (after a warm-up). Printed per row: the
ratios stream/bare and router/bare, the daemon's CPU per streamed frame outside inference (all its
processes; meaningful for the no-op model) and the CPU of its IO thread per frame (`inferd-io`:
the part of a frame's path that is serialized, whatever K is).

  .venv/bin/python -m benchmarks.cores                       # the issue #22 table (~5 min)
  .venv/bin/python -m benchmarks.cores --cases noop --ks 1 --workers processes threads
  .venv/bin/python -m benchmarks.cores --cases noop --ks 1 --workers threads --floor  # vs floor.py
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np

from benchmarks import floor
from benchmarks.common import MODELS, Daemon, cpu_seconds, save
from benchmarks.models import model as bench_model

CASES = {  # name: model, frame kind, frame shape, inferd model options, default Ks
    "larger": ("larger_int8.onnx", "tensor", (1, 3, 224, 224), "", (1, 2, 4, 8, 12)),
    "camera": ("larger_int8.onnx", "camera", (480, 640, 3),
               ", preprocess: {resize: [224, 224], scale: 1/255}", (1, 4, 8, 12)),
    "mid": ("mid_int8.onnx", "tensor", (1, 3, 80, 80), "", (1, 4, 8)),
    "heavy": ("heavy_int8.onnx", "tensor", (1, 3, 448, 448), "", (4, 8, 12)),
    "noop": ("noop.onnx", "tensor", (1, 3, 64, 64), "", (1, 2, 4, 8)),
}  # fmt: skip
WARMUP_S = 1.5


def model_path(name: str) -> Path:
    return MODELS / name if (MODELS / name).exists() else bench_model(name)


def make_frames(kind: str, shape: tuple, n: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "camera":
        return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def camera_input(frame: np.ndarray, size: int = 224) -> np.ndarray:
    """What inferd's preprocessing does for the camera case, by hand: Pillow resize, scale, NCHW."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR), np.float32)
    return np.ascontiguousarray((resized * (1 / 255)).transpose(2, 0, 1)[None])


# ---- the processes (spawned: each its own interpreter) ----------------------------------------


def _wait_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def _bare(path: str, kind: str, shape: tuple, ready, times, out) -> None:
    from inferd.config import parse_config
    from inferd.engine.models import load_model

    cfg = parse_config(f"models:\n  - {{name: m, path: {path}, threads: 1, warmup: 10}}\n").models[0]
    backend = load_model(cfg, MODELS).backend
    frames = make_frames(kind, shape)
    ready.release()
    start, end = times.get()
    _wait_until(start - WARMUP_S)
    n, i = 0, 0
    while (now := time.monotonic()) < end:
        f = frames[i % len(frames)]
        backend.infer([camera_input(f) if kind == "camera" else f])
        i += 1
        n += now >= start
    out.put(n)


def _push(address: str, source: str, kind: str, shape: tuple, rate: float, ready, times, out) -> None:
    from inferd.client import FramePublisher

    frames = make_frames(kind, shape)
    with FramePublisher(address, source=source, sndhwm=16) as pub:
        ready.release()
        start, end = times.get()
        t0 = start - WARMUP_S
        _wait_until(t0)
        i = 0
        while (now := time.monotonic()) < end:
            if rate and (ahead := t0 + i / rate - now) > 0:
                time.sleep(ahead)  # paced: the daemon's CPU per frame measured without contention
            pub.send(frames[i % len(frames)], model="m")
            i += 1
    out.put(0)


def _count(address: str, ready, times, out) -> None:
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"m/")
    sub.connect(address)
    time.sleep(0.3)
    ready.release()
    start, end = times.get()
    n = 0
    while (now := time.monotonic()) < end:
        if sub.poll(50):
            sub.recv_multipart(copy=False)
            n += now >= start
    out.put(n)
    ctx.destroy(linger=0)


def _ask(address: str, kind: str, shape: tuple, ready, times, out) -> None:
    from inferd.client import InferClient

    frames = make_frames(kind, shape)
    with InferClient(address, timeout=30) as client:
        ready.release()
        start, end = times.get()
        _wait_until(start - WARMUP_S)
        n, i = 0, 0
        while (now := time.monotonic()) < end:
            client.infer(frames[i % len(frames)], model="m", source=f"r{os.getpid()}")
            i += 1
            n += now >= start
    out.put(n)


class _Indexed:
    """A job's result queue that says which job it is."""

    def __init__(self, index: int, out) -> None:
        self.index, self.out = index, out

    def put(self, n: int) -> None:
        self.out.put((self.index, n))


def _job(index: int, target, args: tuple, ready, times, out) -> None:
    target(*args, ready, times, _Indexed(index, out))


def _run(jobs: list[tuple], seconds: float, during=None) -> list[int]:
    """Start the jobs (target, args), wait until all are ready, give them one window, collect."""
    ctx = mp.get_context("spawn")
    ready, times, out = ctx.Semaphore(0), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_job, args=(i, t, a, ready, times, out), daemon=True)
             for i, (t, a) in enumerate(jobs)]  # fmt: skip
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("a benchmark process did not start")
    start = time.monotonic() + WARMUP_S + 0.5
    end = start + seconds
    for _ in procs:
        times.put((start, end))
    sample = during(start, end) if during else None
    counts = [0] * len(procs)
    for _ in procs:
        i, n = out.get(timeout=seconds + 120)
        counts[i] = n
    for p in procs:
        p.join(30)
    return counts if sample is None else (counts, sample)


# ---- the daemon's CPU ------------------------------------------------------------------------


def _family(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _io_thread_cpu(pid: int) -> float:
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == "inferd-io":
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def _sampler(pid: int):
    def sample(start: float, end: float) -> tuple[float, float]:
        _wait_until(start)
        family = _family(pid)
        cpu0, io0 = sum(cpu_seconds(p) for p in family), _io_thread_cpu(pid)
        _wait_until(end)
        cpu1, io1 = sum(cpu_seconds(p) for p in family), _io_thread_cpu(pid)
        return cpu1 - cpu0, io1 - io0

    return sample


# ---- one row ---------------------------------------------------------------------------------


def _wait_idle(d: Daemon, timeout: float = 120.0) -> None:
    """Until the stream's frames still queued are served: with a slow model they would take the
    router's window (fair turns between the stream's sources and the router's)."""
    end, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < end and quiet < 2:
        queued = sum(v for (name, _), v in d.scrape().items() if name == "inferd_queue_depth")
        quiet = quiet + 1 if queued == 0 else 0
        time.sleep(0.2)


def floor_cpu(case: str, threads: int, seconds: float, pushers: int, rate: float) -> float:
    """CPU per streamed frame (us) of floor.py's bare server, fed and read as the daemon is."""
    model, kind, shape, _, _ = CASES[case]
    pull, pub = floor.addresses(f"{os.getpid()}-{threads}")
    jobs = [(floor.serve, (str(model_path(model)), kind, threads, f"{os.getpid()}-{threads}"))]
    jobs += [(_push, (pull, f"cam{i}", kind, shape, rate / pushers)) for i in range(pushers)]
    counts = _run([*jobs, (_count, (pub,))], seconds)
    return counts[0] / max(counts[-1], 1)


def run_row(
    case: str,
    k: int,
    seconds: float,
    workers: str,
    pushers: int | None,
    rate: float = 0,
    with_floor: bool = False,
) -> dict:
    model, kind, shape, options, _ = CASES[case]
    path = str(model_path(model))
    bare = sum(_run([(_bare, (path, kind, shape))] * k, seconds)) / seconds
    d = Daemon(
        f"  - {{name: m, path: {path}, threads: 1, instances: {k}, workers: {workers}{options}}}",
        "sources:\n  - {match: '*', policy: fifo, queue_size: 64}\n",
    )
    try:
        p = pushers or (1 if rate else max(2, k))
        jobs = [(_push, (d.pull, f"cam{i}", kind, shape, rate / p)) for i in range(p)] + [
            (_count, (d.results,))
        ]
        counts, (cpu, io) = _run(jobs, seconds, _sampler(d.proc.pid))
        stream = counts[-1] / seconds
        _wait_idle(d)
        router = sum(_run([(_ask, (d.router, kind, shape))] * (2 * k), seconds)) / seconds
    finally:
        d.stop()
    row = {
        "case": case, "k": k, "workers": workers, "rate": rate, "bare_fps": round(bare, 1), "stream_fps": round(stream, 1),
        "router_fps": round(router, 1), "stream_vs_bare": round(stream / bare, 3),
        "router_vs_bare": round(router / bare, 3),
        "daemon_cpu_us_per_frame": round(cpu / max(counts[-1], 1) * 1e6, 1),
        "io_thread_us_per_frame": round(io / max(counts[-1], 1) * 1e6, 1),
    }  # fmt: skip
    floors = ""
    if with_floor:  # the same stream into the bare Python server, one thread then two
        for threads in (1, 2):
            row[f"floor{threads}_cpu_us_per_frame"] = round(floor_cpu(case, threads, seconds, p, rate), 1)
        floors = (
            f"; floor: 1 thread {row['floor1_cpu_us_per_frame']:.1f}, 2 threads {row['floor2_cpu_us_per_frame']:.1f}"
            f" us/frame (daemon {row['daemon_cpu_us_per_frame'] / row['floor1_cpu_us_per_frame']:.2f}x the one-thread floor)"
        )
    print(
        f"{case:7} K={k:<2} {workers:9} {f'@{rate:g}/s ' if rate else ''}bare {bare:9.0f}/s | stream {stream:9.0f}/s {row['stream_vs_bare']:5.2f}x"
        f" | router {router:9.0f}/s {row['router_vs_bare']:5.2f}x | daemon CPU {row['daemon_cpu_us_per_frame']:7.1f}"
        f" us/frame, IO thread {row['io_thread_us_per_frame']:5.1f} us/frame{floors}",
        flush=True,
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--ks", nargs="*", type=int, help="K values (default: each case's own)")
    p.add_argument("--workers", nargs="*", default=["processes"], choices=["processes", "threads", "auto"])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--pushers", type=int, help="publisher processes (default: max(2, K); paced: 1)")
    p.add_argument(
        "--rate",
        type=float,
        default=0,
        help="pace the stream at this many frames/s in all "
        "(0: as fast as the daemon takes them); the daemon's CPU per frame is measured quiet",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="also stream the same frames into floor.py's bare Python server (one thread, then two) "
        "and print the daemon's CPU per frame against it",
    )
    p.add_argument("--name", default="cores", help="results/NAME.json")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = []
    for case in args.cases:
        for k in args.ks or CASES[case][4]:
            if k > cores:
                print(f"{case} K={k}: skipped, this machine has {cores} cores")
                continue
            for workers in args.workers:
                rows.append(run_row(case, k, args.seconds, workers, args.pushers, args.rate, args.floor))
    print("saved", save(args.name, {"rows": rows, "seconds": args.seconds}))


if __name__ == "__main__":
    main()
