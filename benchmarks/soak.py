"""100,000 frames through push -> pub streaming; the daemon's RSS sampled throughout."""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from benchmarks.common import MODELS, Daemon, save
from inferd.client import FramePublisher, ResultSubscriber


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--sample-every", type=int, default=5_000)
    args = p.parse_args()
    d = Daemon(f"  - {{name: m, path: {MODELS / 'classifier_int8.onnx'}, threads: 1}}",
               "sources:\n  - {match: '*', policy: fifo, queue_size: 64}\n")  # fmt: skip
    frames = [np.random.default_rng(i).standard_normal((1, 3, 64, 64)).astype(np.float32) for i in range(32)]
    samples, received = [(0, d.rss_mb())], [0]
    sub = ResultSubscriber(d.results, "m/")
    time.sleep(0.3)

    def collect() -> None:
        while received[0] < args.frames:
            sub.recv(timeout=30)
            received[0] += 1

    t = threading.Thread(target=collect)
    t.start()
    start = time.perf_counter()
    try:
        with FramePublisher(d.pull, source="soak", sndhwm=64) as pub:
            for i in range(args.frames):
                pub.send(frames[i % len(frames)], model="m", seq=i)
                if (i + 1) % args.sample_every == 0:
                    samples.append((i + 1, d.rss_mb()))
        t.join()
        samples.append((args.frames, d.rss_mb()))
    finally:
        sub.close()
        d.stop()
    elapsed = time.perf_counter() - start
    warm = [rss for n, rss in samples if n >= 10_000] or [samples[-1][1]]
    growth = round(samples[-1][1] - warm[0], 2)
    print(f"{args.frames} frames in {elapsed:.1f} s ({args.frames / elapsed:.0f}/s); RSS {samples[0][1]:.1f} MB at "
          f"ready, {warm[0]:.1f} MB after 10k frames, {samples[-1][1]:.1f} MB at the end: growth {growth} MB")  # fmt: skip
    print("saved", save("soak", {"frames": args.frames, "seconds": round(elapsed, 1), "rss_samples_mb": samples,
                                 "rss_at_ready_mb": round(samples[0][1], 1), "growth_after_warmup_mb": growth}))  # fmt: skip


if __name__ == "__main__":
    main()
