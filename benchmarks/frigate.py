"""Frigate's detector protocol, one request at a time (as Frigate sends them), against
(a) a bare pyzmq REP server running the same model in its own process (the structure of Frigate's
    own detector servers: recv, np.frombuffer, run, send 20x6 rows) and
(b) inferd's `frigate` endpoint, same model, same intra-op threads, same run: both servers up at
    once, measured in alternating rounds (`--rounds`), so a load that comes and goes on the machine
    falls on both alike.
Prints requests/s and latency percentiles, and the ratio b/a, for a ~3 ms and a ~0.8 ms model.

    .venv/bin/python -m benchmarks.frigate [--seconds 10] [--rounds 10] [--transport ipc|tcp]
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

    from inferd.engine.backends.onnx import EXACT_INT8

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry(*EXACT_INT8)  # the same kernels as inferd on any x86
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


class FrigateClient:
    """Frigate's zmq detector client: REQ, one request, wait for the answer, next."""

    def __init__(self, address: str, tensor: np.ndarray, server_pid: int) -> None:
        self.sock = zmq.Context.instance().socket(zmq.REQ)
        self.sock.setsockopt(zmq.RCVTIMEO, 10000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.head = json.dumps(
            {"shape": list(tensor.shape), "dtype": tensor.dtype.name, "model_type": "yologeneric"}
        ).encode()
        self.payload = memoryview(tensor.tobytes())
        self.pid = server_pid
        self.lat: list[float] = []
        self.elapsed = self.cpu = 0.0
        for _ in range(10):
            self.ask()

    def ask(self) -> None:
        self.sock.send_multipart([self.head, self.payload])
        self.sock.recv_multipart()

    def run(self, seconds: float) -> None:
        """One round: requests one at a time for `seconds`; also the server's CPU time (all its
        threads), which unlike requests/s barely moves when other work shares the cores."""
        cpu0, start = cpu_seconds(self.pid), time.perf_counter()
        end = start + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            self.ask()
            self.lat.append(time.perf_counter() - t0)
        self.elapsed += time.perf_counter() - start
        self.cpu += cpu_seconds(self.pid) - cpu0

    def summary(self) -> dict:
        n = len(self.lat)
        self.sock.close()
        return {"requests": n, "rps": round(n / self.elapsed, 1),
                "server_cpu_ms": round(self.cpu / n * 1000, 3), **percentiles(self.lat)}  # fmt: skip


def address(transport: str, tmp: str, name: str) -> str:
    return f"tcp://127.0.0.1:{free_port()}" if transport == "tcp" else f"ipc://{tmp}/{name}.sock"


def run_case(name: str, seconds: float, threads: int, transport: str, rounds: int) -> dict:
    """Both servers up at once, measured in alternating rounds: a load that comes and goes on the
    machine falls on both alike."""
    model, shape = CASES[name]
    path = MODELS / model if (MODELS / model).exists() else bench_model(model)
    tensor = np.random.default_rng(0).random(shape, dtype=np.float32)
    tmp = tempfile.mkdtemp(prefix="inferd-frigate-bench-")
    bare_addr, inferd_addr = address(transport, tmp, "bare"), address(transport, tmp, "inferd")
    ready = mp.get_context("spawn").Event()
    server = mp.get_context("spawn").Process(target=bare_server, args=(str(path), bare_addr, threads, ready))
    server.start()
    ready.wait(60)
    d = Daemon(
        f"  - {{name: m, path: {path}, threads: {threads}}}",
        endpoints_yaml=f'  - {{type: frigate, bind: "{inferd_addr}", model: m}}\n',
    )
    try:
        bare, ours = (
            FrigateClient(bare_addr, tensor, server.pid),
            FrigateClient(inferd_addr, tensor, d.proc.pid),
        )
        for _ in range(rounds):
            bare.run(seconds / rounds)
            ours.run(seconds / rounds)
        a, b = bare.summary(), ours.summary()
    finally:
        server.terminate()
        server.join(10)
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
    p.add_argument("--seconds", type=float, default=10.0, help="per server, over all rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--transport", choices=["ipc", "tcp"], default="ipc")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds per server")
    p.add_argument("--cases", nargs="*", default=list(CASES))
    args = p.parse_args()
    results = {
        name: run_case(name, args.seconds, args.threads, args.transport, args.rounds) for name in args.cases
    }
    print("saved", save(f"frigate-{args.transport}", {"seconds": args.seconds, "cases": results}))


if __name__ == "__main__":
    main()
