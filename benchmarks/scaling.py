"""Camera sources at a fixed rate (640x480x3 frames, 30 fps each), then overload.

The example classifier with the ImageNet preprocessing (resize to 64x64, normalize), the
`latest` policy: throughput, p99 latency, drops by reason and the daemon's CPU use.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import MODELS, Daemon, save
from inferd.cli.bench import run_bench

MODEL = f"""  - name: m
    path: {MODELS / "classifier_int8.onnx"}
    threads: 1
    preprocess: {{resize: [64, 64], scale: 1/255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
    postprocess: {{type: classify, top_k: 1}}"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sources", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--overload-rate", type=float, default=120.0)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    d = Daemon(MODEL)
    rows = []
    try:
        plan = [(n, args.rate) for n in args.sources] + [(max(args.sources), args.overload_rate)]
        for n, rate in plan:
            cpu0, t0 = d.cpu_seconds(), time.monotonic()
            r = run_bench(d.router, "m", n, rate, args.seconds, (480, 640, 3), progress=False)
            r["daemon_cpu_percent"] = round(100 * (d.cpu_seconds() - cpu0) / (time.monotonic() - t0), 1)
            r["offered_fps"] = n * rate
            rows.append(r)
            print(f"{n:3d} sources x {rate:5.0f} fps: offered {n * rate:6.0f}/s served {r['throughput_fps']:7.1f}/s "
                  f"p99 {r.get('p99_ms', float('nan')):8.2f} ms  drops {r['errors'] or 0}  CPU {r['daemon_cpu_percent']} %",
                  flush=True)  # fmt: skip
    finally:
        d.stop()
    print("saved", save("scaling", {"rows": rows}))


if __name__ == "__main__":
    main()
