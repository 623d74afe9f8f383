"""The floor: the least Python a streamed frame can cost on this machine, to measure inferd against.

A bare server in one process, bound where a daemon would be (PULL in, PUB out), doing per frame
only what no Python server can skip: receive the message, parse and check its header
(inferd.protocol), view the payload as an array (the camera case resizes it as inferd does), run
the model (same runtime, one intra-op thread), write a result header (JSON) and publish
[topic, header, tensor], count the frame and its latency in two Prometheus metrics.

`threads=1` does it all in one thread. `threads=2` splits it as inferd's thread path does: an IO
thread receives and parses, a worker thread runs and publishes, with a bounded deque under a
Condition between them (64 frames, as cores.py's fifo queues); the difference between the two is the cost of handing a frame from one Python
thread to another (the GIL changing hands at every blocking call, a wake-up per frame).

benchmarks/cores.py `--floor` runs it in the same window as the daemon, with the same publishers
and subscriber, and prints the daemon's CPU per frame against it. The job reports its own CPU
over the window (microseconds, all its threads) where the other jobs report counts.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time

from inferd.ingest.parts import recv_message, send_message
from inferd.protocol import decode_header, decode_payload

ROOM = 64  # frames between the two threads at most (inferd's fifo queue_size in cores.py)
ADDRESSES = ("ipc:///tmp/inferd-floor-{}-in", "ipc:///tmp/inferd-floor-{}-out")


def addresses(tag: str) -> tuple[str, str]:
    return ADDRESSES[0].format(tag), ADDRESSES[1].format(tag)


def _session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


class _Server:
    def __init__(self, path: str, kind: str, pull: str, pub: str) -> None:
        import zmq
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.bind(pull)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 10_000)
        self.pub.bind(pub)
        self.session, self.input = _session(path)
        self.camera = None
        if kind == "camera":  # resized as inferd does (imported here: cores.py imports this module)
            from benchmarks.cores import camera_input

            self.camera = camera_input
        registry = CollectorRegistry()
        self.received = Counter("received", "", ["source"], registry=registry)
        self.latency = Histogram("latency", "", ["model"], registry=registry).labels("m")
        self.stop = threading.Event()

    def receive(self):
        """One frame (header, array, arrival time) or None when none is waiting."""
        parts = recv_message(self.pull, copy=False)
        if parts is None:
            return None
        t0 = time.monotonic()
        header = decode_header(parts[0].buffer)
        self.received.labels(header.source).inc()
        return header, decode_payload(header.parts[0], parts[1].buffer, 1 << 26), t0

    def answer(self, header, array, t0: float) -> None:
        if self.camera:
            array = self.camera(array)
        out = self.session.run(None, {self.input: array})[0]
        head = json.dumps(
            {"v": 1, "status": "ok", "model": "m", "source": header.source, "seq": header.seq,
             "outputs": [{"dtype": str(out.dtype), "shape": list(out.shape)}]}
        ).encode()  # fmt: skip
        send_message(self.pub, [b"m/" + header.source.encode(), head, out], 0, copy=False)
        self.latency.observe(time.monotonic() - t0)

    def wait(self) -> bool:
        return self.pull.poll(50) != 0

    def one_thread(self) -> None:
        while not self.stop.is_set():
            if self.wait():
                while (frame := self.receive()) is not None:
                    self.answer(*frame)

    def two_threads(self) -> None:
        frames: collections.deque = collections.deque()
        ready = threading.Condition()

        def work() -> None:
            while not self.stop.is_set():
                with ready:
                    if not frames:
                        ready.wait(0.05)
                        if not frames:
                            continue
                    frame = frames.popleft()
                    if len(frames) == ROOM - 1:
                        ready.notify()  # the IO thread waits for room
                self.answer(*frame)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while not self.stop.is_set():
            if self.wait():
                while (frame := self.receive()) is not None:
                    with ready:
                        frames.append(frame)
                        ready.notify()
                        while len(frames) >= ROOM and not self.stop.is_set():
                            ready.wait(0.05)  # backpressure, as a fifo source's queue
        worker.join()


def serve(path: str, kind: str, threads: int, tag: str, ready, times, out) -> None:
    """A cores.py job: serve until the window ends; put the CPU it used in the window (us)."""
    from benchmarks.common import cpu_seconds

    server = _Server(path, kind, *addresses(tag))
    loop = threading.Thread(target=server.one_thread if threads == 1 else server.two_threads, daemon=True)
    loop.start()
    ready.release()
    start, end = times.get()
    time.sleep(max(0.0, start - time.monotonic()))
    cpu0 = cpu_seconds(os.getpid())
    time.sleep(max(0.0, end - time.monotonic()))
    cpu = cpu_seconds(os.getpid()) - cpu0
    server.stop.set()
    loop.join(5)
    out.put(int(cpu * 1e6))
