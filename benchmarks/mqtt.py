"""What publishing every result to MQTT costs the stream, in one run.

The same stream at full speed (`push` -> pull endpoint, fifo, no drops; results taken from the PUB
socket by a separate process, as benchmarks/overhead.py (c) measures it) into a daemon running an
example classifier, (a) without `mqtt:`, (b) publishing every result at QoS 0 and (c) at QoS 1 to
a real Mosquitto on 127.0.0.1. Prints frames/s of each, the ratios b/a and c/a, and the broker's
side: a paho subscriber in its own process counts the messages it receives and their rate; the
daemon's sent/dropped counters say what the sink did. Rounds alternate the cases. Models: the tiny
classifier (~0.03 ms: inferd's own per-frame cost dominates, the worst case for any per-result
work) and the larger one (~0.8 ms).

    .venv/bin/python -m benchmarks.mqtt [--models tiny larger] [--rounds 2] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import MODELS, Daemon, free_port, save
from benchmarks.overhead import frames, streaming

MODEL_CASES = {  # name: model file, frame shape, frames per measurement
    "tiny": ("classifier_int8.onnx", (1, 3, 64, 64), 20000),
    "larger": ("larger_int8.onnx", (1, 3, 224, 224), 4000),
}
SOURCES = "sources:\n  - {match: '*', policy: fifo, queue_size: 64}\n"
CASES = {"no mqtt": None, "mqtt qos 0": 0, "mqtt qos 1": 1}


def model_yaml(model: str) -> str:
    return (f"  - {{name: m, path: {MODELS / model}, labels: {MODELS / 'labels.txt'}, threads: 1, "
            "postprocess: {type: classify, top_k: 1}}")  # fmt: skip


def broker(tmp: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = Path(tmp) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.PIPE, text=True)
    line = ""
    while " running" not in line:  # mosquitto says so once its listener is open
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("mosquitto did not start")
    return proc, port


def count(port: int, qos: int, conn) -> None:
    """In its own process: every message on bench/+/m/+, until told to stop; then n and the span."""
    import paho.mqtt.client as mqtt

    times: list[float] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: times.append(time.perf_counter())
    client.on_subscribe = lambda c, u, mid, rc, p: conn.send("subscribed")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("bench/+/m/+", qos=qos)
    client.connect("127.0.0.1", port)
    client.loop_start()
    conn.recv()  # the stream is over
    n = -1
    while n != len(times):  # until a quiet second: the broker has delivered what it had
        n = len(times)
        time.sleep(1.0)
    client.loop_stop()
    conn.send((n, times[-1] - times[0] if n > 1 else 0.0))


def run_case(model: str, qos: int | None, port: int, inputs, n: int) -> dict:
    extra = SOURCES
    if qos is not None:
        extra += (
            f'mqtt:\n  broker: "mqtt://127.0.0.1:{port}"\n  topic_prefix: bench\n  device_id: board\n'
            f"  qos: {qos}\n  publish: {{mode: every}}\n"
        )
    d = Daemon(model_yaml(model), extra)
    proc = None
    try:
        streaming(d, inputs, 500)  # warm-up: the session, the sockets, the broker connection
        if qos is not None:
            assert d.scrape().get(("inferd_mqtt_connected", ())) == 1.0, "inferd is not connected"
            parent, child = mp.get_context("spawn").Pipe()
            proc = mp.get_context("spawn").Process(target=count, args=(port, qos, child))
            proc.start()
            assert parent.poll(30) and parent.recv() == "subscribed"
        cpu = d.cpu_seconds()
        out = streaming(d, inputs, n)
        # the daemon's CPU per frame: what publishing costs, less blurred by other load than frames/s
        out["cpu_us_per_frame"] = round((d.cpu_seconds() - cpu) / n * 1e6, 1)
        if qos is not None:
            parent.send("done")
            received, span = parent.recv() if parent.poll(120) else (0, 0.0)
            metrics = d.scrape()
            out["mqtt"] = {
                "received": received,
                "received_per_s": round((received - 1) / span, 1) if span else 0.0,
                **{r: int(metrics.get(("inferd_mqtt_messages_total", (("result", r),)), 0))
                   for r in ("sent", "dropped")},
            }  # fmt: skip
    finally:
        d.stop()
        if proc is not None:
            proc.join(10)
    return out


def run_model(model_case: str, rounds: int, scale: float, port: int) -> dict:
    model, shape, n = MODEL_CASES[model_case]
    n = int(n * scale)
    inputs = frames(shape, "float32")
    runs: dict[str, list[dict]] = {name: [] for name in CASES}
    for r in range(rounds):
        for name, qos in CASES.items():
            out = run_case(model, qos, port, inputs, n)
            runs[name].append(out)
            m = out.get("mqtt")
            broker_side = (
                f" | broker received {m['received']} ({m['received_per_s']:.0f}/s), sent {m['sent']}, "
                f"dropped {m['dropped']}" if m else ""
            )  # fmt: skip
            print(f"{model_case} round {r + 1} {name:10} {out['fps']:8.1f} frames/s, daemon CPU "
                  f"{out['cpu_us_per_frame']:6.1f} us/frame{broker_side}", flush=True)  # fmt: skip
    fps = {name: statistics.median(o["fps"] for o in outs) for name, outs in runs.items()}
    cpu = {name: statistics.median(o["cpu_us_per_frame"] for o in outs) for name, outs in runs.items()}
    ratios = {name: round(fps[name] / fps["no mqtt"], 3) for name in CASES if name != "no mqtt"}
    added = {name: round(cpu[name] - cpu["no mqtt"], 1) for name in CASES if name != "no mqtt"}
    print(f"{model_case}: " + " | ".join(f"{name} {v:.1f}/s" for name, v in fps.items()) + " | "
          + " | ".join(f"{name} / no mqtt {v:.3f}" for name, v in ratios.items()) + " (target >= 0.97) | "
          + " | ".join(f"{name} +{v} us CPU/frame" for name, v in added.items()), flush=True)  # fmt: skip
    return {"model": model, "frames": n, "runs": runs, "median_fps": fps, "ratios": ratios,
            "median_cpu_us_per_frame": cpu, "added_cpu_us_per_frame": added}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="*", default=list(MODEL_CASES))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--scale", type=float, default=1.0, help="frames per measurement, times this")
    args = p.parse_args()
    if shutil.which("mosquitto") is None:
        raise SystemExit("needs mosquitto (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory(prefix="inferd-mqtt-bench-") as tmp:
        mosquitto, port = broker(tmp)
        try:
            results = {m: run_model(m, args.rounds, args.scale, port) for m in args.models}
        finally:
            mosquitto.terminate()
            mosquitto.wait(10)
    print("saved", save("mqtt", {"rounds": args.rounds, "cases": results}))


if __name__ == "__main__":
    main()
