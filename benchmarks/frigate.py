"""Frigate's detector protocol, one request at a time (as Frigate sends them), against
(a) a bare pyzmq REP server running the same model in its own process (the structure of Frigate's
    own detector servers: recv, np.frombuffer, run, send 20x6 rows) and
(b) inferd's `frigate` endpoint, same model, same intra-op threads, same run.
Prints requests/s and latency percentiles, and the ratio b/a, for a ~3 ms and a ~0.8 ms model.

    .venv/bin/python -m benchmarks.frigate [--seconds 5] [--transport ipc|tcp]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time

import numpy as np
import zmq

from benchmarks.common import MODELS, Daemon, cpu_seconds, free_port, percentiles, save
from benchmarks.models import model as bench_model

CASES = {  # name: model, the tensor Frigate sends (it fits the model: no preprocessing either side)
    "3ms": ("heavy_int8.onnx", (1, 3, 448, 448)),
    "0.8ms": ("larger_int8.onnx", (1, 3, 224, 224)),
}


def bare_server(path: str, address: str, threads: int, ready) -> None:
    """A REP server as Frigate's detector servers are written: no queue, no thread hand-over."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    sock = zmq.Context().socket(zmq.REP)
    sock.bind(address)
    head = json.dumps({"shape": [20, 6], "dtype": "float32"}).encode()
    ready.set()
    while True:
        header, tensor = sock.recv_multipart(copy=False)
        h = json.loads(header.bytes)
        if h.get("stop"):
            sock.send(b"bye")
            return
        x = np.frombuffer(tensor.buffer, h["dtype"]).reshape(h["shape"])
        session.run(None, {name: x})
        sock.send_multipart([head, np.zeros((20, 6), np.float32)])


def frigate_client(address: str, tensor: np.ndarray, seconds: float, server_pid: int) -> dict:
    """Frigate's zmq detector client: REQ, one request, wait for the answer, next. Also the
    server's CPU time per request (all its threads): unlike requests/s it barely moves when
    other work shares the cores."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, 10000)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    head = json.dumps(
        {"shape": list(tensor.shape), "dtype": tensor.dtype.name, "model_type": "yologeneric"}
    ).encode()
    payload = memoryview(tensor.tobytes())
    for _ in range(10):
        sock.send_multipart([head, payload])
        sock.recv_multipart()
    lat, n = [], 0
    cpu0 = cpu_seconds(server_pid)
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sock.send_multipart([head, payload])
        sock.recv_multipart()
        lat.append(time.perf_counter() - t0)
        n += 1
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(server_pid) - cpu0
    sock.close()
    return {"rps": round(n / elapsed, 1), "server_cpu_ms": round(cpu / n * 1000, 3), **percentiles(lat)}


def address(transport: str, tmp: str, name: str) -> str:
    return f"tcp://127.0.0.1:{free_port()}" if transport == "tcp" else f"ipc://{tmp}/{name}.sock"


def run_case(name: str, seconds: float, threads: int, transport: str) -> dict:
    model, shape = CASES[name]
    path = MODELS / model if (MODELS / model).exists() else bench_model(model)
    tensor = np.random.default_rng(0).random(shape, dtype=np.float32)
    tmp = tempfile.mkdtemp(prefix="inferd-frigate-bench-")
    bare_addr = address(transport, tmp, "bare")
    ready = mp.get_context("spawn").Event()
    server = mp.get_context("spawn").Process(target=bare_server, args=(str(path), bare_addr, threads, ready))
    server.start()
    ready.wait(60)
    try:
        a = frigate_client(bare_addr, tensor, seconds, server.pid)
    finally:
        server.terminate()
        server.join(10)
    inferd_addr = address(transport, tmp, "inferd")
    d = Daemon(
        f"  - {{name: m, path: {path}, threads: {threads}}}",
        endpoints_yaml=f'  - {{type: frigate, bind: "{inferd_addr}", model: m}}\n',
    )
    try:
        b = frigate_client(inferd_addr, tensor, seconds, d.proc.pid)
    finally:
        d.stop()
    ratio = round(b["rps"] / a["rps"], 3)
    print(
        f"{name:6} {model:18} bare REP {a['rps']:7.1f}/s p50 {a['p50_ms']:.3f} ms | inferd frigate "
        f"{b['rps']:7.1f}/s p50 {b['p50_ms']:.3f} ms | {ratio:.3f}x | round trip added "
        f"{b['p50_ms'] - a['p50_ms']:.3f} ms (p50) | server CPU/request {a['server_cpu_ms']:.3f} vs "
        f"{b['server_cpu_ms']:.3f} ms",
        flush=True,
    )
    return {"model": model, "tensor": list(shape), "threads": threads, "transport": transport,
            "bare_rep": a, "inferd_frigate": b, "ratio": ratio}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--transport", choices=["ipc", "tcp"], default="ipc")
    p.add_argument("--cases", nargs="*", default=list(CASES))
    args = p.parse_args()
    results = {name: run_case(name, args.seconds, args.threads, args.transport) for name in args.cases}
    print("saved", save(f"frigate-{args.transport}", {"seconds": args.seconds, "cases": results}))


if __name__ == "__main__":
    main()
