"""Result and error messages: built by the workers, sent to the peer that asked or published.

Results for subscribers go straight out on the PUB socket (shared under a lock, never touched
by the IO thread); replies to a ROUTER peer go out on that endpoint's socket under its lock
(transport.Endpoint.reply). Wake-ups for the IO thread go through each thread's own inproc PUSH
socket (the outbox).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Any

import zmq

from inferd.engine.pipeline import Frame, Timings
from inferd.engine.postprocess import PARTS
from inferd.ingest.parts import MORE, NOBLOCK, send_message
from inferd.protocol import VERSION, decode_tensors, encode_header, tensor_specs

log = logging.getLogger("inferd.transport")

OUTBOX = "inproc://inferd-outbox"
WAKE = b"W"  # outbox message: a queue has room again, or a request arrived while a reply was sent
_MORE, _LAST = MORE | NOBLOCK, NOBLOCK


class RateLimitedLog:
    """Log rejects at WARNING at most once per `period` per reason; count the rest silently."""

    def __init__(self, period: float = 10.0) -> None:
        self.period, self._last, self._suppressed = period, {}, {}

    def __call__(self, reason: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) >= self.period:
            n = self._suppressed.pop(reason, 0)
            log.warning(msg + (f" (+{n} more since)" if n else ""), *args)
            self._last[reason] = now
        else:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1


class Replies:
    """Builds result and error messages, counts them, and hands them to the IO thread.

    Each calling thread gets its own inproc PUSH socket.
    """

    def __init__(self, ctx: zmq.Context, metrics) -> None:
        self.ctx, self.metrics = ctx, metrics
        self._local = threading.local()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()
        self._latency: dict = {}  # (model, source) -> its frame_latency histogram
        self._starts: dict = {}  # (model, source) -> the fixed start of their result headers
        self._specs: dict = {}  # (model, output shapes and dtypes) -> the "outputs" JSON
        self._counters: dict = {}  # (metric, source, reason) -> its child (labels() is not free)
        self.pub: zmq.Socket | None = None  # the results socket, set by the transport
        self.pub_lock = threading.Lock()
        self.warn = RateLimitedLog()
        self.sink = None  # the MQTT sink (mqtt.py): offered every result of a streamed frame
        self.live = None  # the live view (live.py): offered every result

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = self.ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 0)  # never block or drop a reply
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(OUTBOX)
            self._local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def _result_header(self, h, model, outputs, decoded, t: Timings) -> bytes:
        """The result header as JSON, from cached pieces: this runs once per frame."""
        key = (model.name, h.source)
        start = self._starts.get(key)
        if start is None:
            start = self._starts[key] = (
                f'{{"v":{VERSION},"status":"ok","model":{json.dumps(model.name)},"source":{json.dumps(h.source)}'
            )
        parts = [start, f',"seq":{h.seq}']
        if h.id is not None:
            parts.append(f',"id":{json.dumps(h.id)}')
        if h.ts is not None:
            parts.append(f',"ts":{h.ts!r}')
        parts.append(
            f',"timings":{{"queue_ms":{t.queue * 1000:.3f},"preprocess_ms":{t.preprocess * 1000:.3f},'
            f'"inference_ms":{t.inference * 1000:.3f},"total_ms":{t.total * 1000:.3f}}}'
        )
        if decoded is None:
            shapes = (model.name, *((o.shape, o.dtype.num) for o in outputs))
            specs = self._specs.get(shapes)
            if specs is None:
                names = [o.name for o in model.backend.outputs]
                specs = self._specs[shapes] = json.dumps(tensor_specs(outputs, names), separators=(",", ":"))
            parts.append(f',"outputs":{specs}}}')
        else:
            parts.append(f',"result":{encode_header(decoded).decode()}}}')
        return "".join(parts).encode()

    def _send_encoded(self, reply_to, model: str, source: str, head: bytes, tensors=()) -> None:
        if reply_to is not None:
            ep, envelope = reply_to
            ep.reply([*envelope, head, *tensors])
        else:
            topic = f"{model or '_'}/{source or '_'}".encode()
            # Results go straight out on the PUB socket, shared under a lock (a mutex is the
            # "full fence" libzmq asks for when a socket is used from several threads); the
            # IO thread never touches it. Part by part with int flags: send_multipart's enum
            # arithmetic costs more than the sends. PUB never blocks (it drops at its
            # high-water mark, by design, and only ever whole messages).
            with self.pub_lock:
                pub = self.pub
                if pub is not None:
                    try:  # PUB takes or drops a whole message at its first part
                        pub.send(topic, _MORE)
                    except zmq.Again:
                        return
                    if tensors:
                        pub.send(head, _MORE)
                        for t in tensors[:-1]:
                            pub.send(t, _MORE, copy=False)
                        pub.send(tensors[-1], _LAST, copy=False)
                    else:
                        pub.send(head, _LAST)

    def wake(self, endpoint: int | None = None) -> None:
        """Wake the IO thread: a fifo queue it could not fill has room now, or a request reached
        `endpoint` while a reply was sent there (the reply took the signal of its socket's FD)."""
        self._socket().send(WAKE if endpoint is None else WAKE + endpoint.to_bytes(2, "big"))

    def result(self, frame: Frame, model, outputs, decoded, t: Timings) -> None:
        h = frame.header
        latency = time.time() - (h.ts if h.ts is not None else frame.received_wall)
        if self.live is not None:  # before the mask's PNG is taken out of `decoded` below
            self.live.offer(model.name, frame, decoded)
        sink = self.sink
        if sink is not None and frame.reply_to is None:  # streamed frames only (docs/mqtt.md);
            # before the mask's PNG is taken out of `decoded` below
            sink.offer(model.name, h.source, h, decoded, outputs, latency)
        if frame.codec is not None:  # a foreign protocol's request (frigate.py)
            self.send_parts(frame.reply_to, frame.codec.result(decoded))
        else:
            if decoded is not None:
                tensors = decoded.pop(PARTS, ())  # binary pieces of a decoded result (a mask's PNG)
            else:
                tensors = [o if o.flags.c_contiguous else o.tobytes() for o in outputs]
            head = self._result_header(h, model, outputs, decoded, t)
            self._send_encoded(frame.reply_to, model.name, h.source, head, tensors)
        if decoded is not None and decoded.get("events"):
            self.events(frame, model.name, decoded["events"])
        hist = self._latency.get((model.name, h.source))
        if hist is None:
            hist = self._latency[(model.name, h.source)] = self.metrics.frame_latency_seconds.labels(
                model.name, h.source
            )
        hist.observe(max(latency, 0.0))

    def events(self, frame: Frame, model: str, events: list[dict]) -> None:
        """Zone events, one message each on the results socket under events/MODEL/SOURCE, whoever
        asked for the frame (they are the source's, not the request's)."""
        topic = f"events/{model}/{frame.source}".encode()
        self.publish([[topic, encode_header(e)] for e in events])

    def publish(self, messages: list[list]) -> None:
        """Whole messages on the results socket (PUB drops at its high-water mark, never blocks)."""
        with self.pub_lock:
            pub = self.pub
            if pub is not None:
                for parts in messages:
                    with contextlib.suppress(zmq.Again):
                        send_message(pub, parts, NOBLOCK)

    def _error(self, reply_to, model: str, source: str, seq, rid, reason: str, message: str) -> None:
        header: dict[str, Any] = {
            "v": VERSION,
            "status": "error",
            "error": {"reason": reason, "message": message},
            "model": model,
            "source": source,
            "seq": seq,
        }
        if rid is not None:
            header["id"] = rid
        self._send_encoded(reply_to, model, source, encode_header(header))

    def send_parts(self, reply_to, parts: list) -> None:
        """A reply already encoded (a foreign protocol's) to a router-like peer."""
        ep, envelope = reply_to
        ep.reply([*envelope, *parts])

    def _frame_error(self, frame: Frame, model: str, reason: str, message: str) -> None:
        if frame.codec is not None:
            if frame.reply_to is not None:
                self.send_parts(frame.reply_to, frame.codec.error(reason, message))
            return
        h = frame.header
        self._error(frame.reply_to, model, h.source, h.seq, h.id, reason, message)

    def reject(self, frame: Frame, model: str, reason: str, message: str) -> None:
        """A frame refused as invalid."""
        self._count(self.metrics.frames_rejected, frame.source, reason)
        self.warn(reason, "rejected a frame from %s for %s: %s", frame.source, model or "-", message)
        self._frame_error(frame, model, reason, message)

    def reject_raw(self, reply_to, source: str, reason: str, message: str, parts: list | None = None) -> None:
        """A message refused before it had a valid header (`parts`: a foreign protocol's answer)."""
        self._count(self.metrics.frames_rejected, source, reason)
        self.warn(reason, "rejected a message (%s): %s", reason, message)
        if parts is not None:
            self.send_parts(reply_to, parts)
        else:
            self._error(reply_to, "", source, None, None, reason, message)

    def _count(self, metric, source: str, reason: str) -> None:
        child = self._counters.get((metric, source, reason))
        if child is None:
            child = metric.labels(source, reason)
            if len(self._counters) < 65536:
                self._counters[(metric, source, reason)] = child
        child.inc()

    def drop(self, frame: Frame, model: str, reason: str, message: str | None = None) -> None:
        """A valid frame not served (queue full, stale, deadline, shutdown, worker_died); a router
        peer is answered."""
        self._count(self.metrics.frames_dropped, frame.source, reason)
        if frame.reply_to is not None:
            self._frame_error(frame, model, reason, message or f"frame dropped: {reason}")

    def forward_result(self, frame: Frame, model: str, parts: list) -> None:
        """A streamed frame's result as a worker process encoded it: [topic, header, tensors...]
        (IO thread). The MQTT sink reads it back from the wire form."""
        if self.live is not None:
            self.live.offer_wire(model, frame, parts[1], parts[2:])
        sink = self.sink
        if sink is not None:
            offer_wire(sink, model, frame, parts)
        with self.pub_lock:
            pub = self.pub
            if pub is not None:
                with contextlib.suppress(zmq.Again):  # PUB drops at its high-water mark
                    send_message(pub, parts, NOBLOCK)

    def error(self, frame: Frame, model: str, reason: str, message: str) -> None:
        """A valid frame the model failed on."""
        log.error("model %s failed on a frame from %s: %s", model, frame.source, message)
        self._frame_error(frame, model, reason, message)

    def release(self) -> None:
        """Close the calling thread's socket (each thread calls this as it ends)."""
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            with self._lock:
                self._sockets.remove(sock)
            sock.close(linger=1000)
            self._local.sock = None


def offer_wire(sink, model: str, frame: Frame, parts: list) -> None:
    """Offer the MQTT sink a result in its wire form (from a worker process)."""
    head = json.loads(parts[1])
    decoded = head.get("result")
    outputs = decode_tensors(head["outputs"], [memoryview(p) for p in parts[2:]]) if decoded is None else []
    h = frame.header
    latency = time.time() - (h.ts if h.ts is not None else frame.received_wall)
    sink.offer(model, h.source, h, decoded, outputs, latency)
