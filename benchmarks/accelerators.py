"""inferd's per-frame cost around an accelerated model against the same around the CPU one.

For each runtime line (onnxruntime's CPU provider, its OpenVINO provider, a TFLite external
delegate where one is given) and the same model: the bare backend in a tight loop, then inferd
through `router` and streaming (`push` -> `pub`). Prints inferd's added latency per request
(router p50 - bare p50, one request at a time: inferd's own work around the inference, the
client's included) and the streaming rate with its added time per frame (1/inferd - 1/bare) for
each: the issue's claim is that the added time does not depend on
what runs the model. Run it with the interpreter that has the runtime:

    .venv-openvino/bin/python -m benchmarks.accelerators            # CPU vs OpenVINO EP
    .venv/bin/python -m benchmarks.accelerators --delegate /path/libx.so   # TFLite: XNNPACK vs it
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import MODELS, Daemon, percentiles, save
from benchmarks.overhead import frames, router, streaming
from inferd.config import parse_config
from inferd.engine.models import load_model

# num_of_threads 1: OpenVINO's own threading, matched to the CPU provider's `threads: 1`
OV = {"type": "onnx", "fallback": "fail",
      "providers": [{"name": "OpenVINOExecutionProvider", "options": {"device_type": "CPU", "num_of_threads": 1}}]}  # fmt: skip


def entry(path, runtime: dict) -> str:
    return f"  - {{name: m, path: {path}, threads: 1, postprocess: {{type: raw}}, runtime: {json.dumps(runtime)}}}"


def bare(path, runtime: dict, inputs, seconds: float) -> dict:
    model = load_model(parse_config("models:\n" + entry(path, runtime)).models[0], MODELS)
    backend, lat, i = model.backend, [], 0
    start = time.perf_counter()
    while time.perf_counter() < start + seconds:
        t0 = time.perf_counter()
        backend.infer([inputs[i % len(inputs)]])
        lat.append(time.perf_counter() - t0)
        i += 1
    out = {"fps": round(i / (time.perf_counter() - start), 1), "accelerator": backend.accelerator}
    model.close()
    return {**out, **percentiles(lat)}


def added_us(inferd_fps: float, bare_fps: float) -> float:
    return round((1 / inferd_fps - 1 / bare_fps) * 1e6, 1)


def run(name: str, path, runtime: dict, shape, dtype, seconds: float) -> dict:
    inputs = frames(shape, dtype)
    a = bare(path, runtime, inputs, seconds)
    d = Daemon(entry(path, runtime), "sources:\n  - {match: '*', policy: fifo, queue_size: 64}\n")
    try:
        b = router(d, inputs, seconds)
        c = streaming(d, inputs, max(200, int(a["fps"] * seconds)))
    finally:
        d.stop()
    out = {"runtime": runtime, "accelerator": a["accelerator"], "bare": a, "router": b, "streaming": c,
           "router_added_p50_us": round((b["p50_ms"] - a["p50_ms"]) * 1000, 1),
           "streaming_added_us": added_us(c["fps"], a["fps"])}  # fmt: skip
    print(
        f"{name:30} {a['accelerator']:26} bare {a['fps']:7.0f}/s p50 {a['p50_ms']:6.3f} ms | router p50 "
        f"{b['p50_ms']:6.3f} ms (+{out['router_added_p50_us']:6.1f} us) | stream {c['fps']:6.0f}/s "
        f"(+{out['streaming_added_us']:6.1f} us/frame)",
        flush=True,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--delegate", help="a TFLite external delegate library: compare it with XNNPACK")
    args = p.parse_args()
    import numpy as np

    results = {}
    if args.delegate:
        path, shape = MODELS / "classifier_int8.tflite", (1, 64, 64, 3)
        for name, rt in (("tflite", {"type": "tflite"}),
                         ("tflite+delegate", {"type": "tflite", "delegate": {"library": args.delegate}})):  # fmt: skip
            results[name] = run(name, path, rt, shape, np.int8, args.seconds)
    else:
        for model, shape in (
            ("classifier_int8.onnx", (1, 3, 64, 64)),
            ("larger_int8.onnx", (1, 3, 224, 224)),
        ):
            for name, rt in (("cpu", {"type": "onnx"}), ("openvino", OV)):
                results[f"{model}/{name}"] = run(
                    f"{model}/{name}", MODELS / model, rt, shape, np.float32, args.seconds
                )
    print("saved", save("accelerators-delegate" if args.delegate else "accelerators", results))


if __name__ == "__main__":
    main()
