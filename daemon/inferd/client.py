"""What a camera or sensor process imports to send frames to inferd and read its results.

    from inferd.client import InferClient
    result = InferClient("tcp://127.0.0.1:5555").infer(frame, model="classifier", source="cam0")
    result.outputs      # list of numpy arrays (postprocess: raw)
    result.result       # {"classes": [...]} or {"detections": [...]} for classify / detect

Every method that waits has a timeout; errors are RequestError (with .reason) or RequestTimeout.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from inferd.errors import ConnectionRefused, RequestError, RequestTimeout
from inferd.protocol import CONTROL, HELLO, VERSION, decode_tensors, encode_header

_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
# a request this large that gets no answer may have hit libzmq's hard limit on the daemon's side
# (4x max_message_bytes: ingest/endpoints.py HARD_LIMIT_FACTOR), which closes the connection unanswered
HARD_LIMIT_HINT_BYTES = 4_000_000
Key = str | bytes | Path


def use_curve(sock: zmq.Socket, server_key: Key | None, client_key: Key | None) -> bool:
    """Make `sock` a CURVE client of a server whose public key (z85, or a .key file) is given.

    `client_key` is this client's NAME.key_secret file (its public half must be in the
    daemon's clients_dir). Returns whether CURVE is on.
    """
    if server_key is None:
        return False
    if client_key is None:
        raise ValueError(
            "a CURVE server key needs client_key= (a .key_secret file from inferd keys generate)"
        )
    import zmq.auth

    if isinstance(server_key, Path) or (isinstance(server_key, str) and len(server_key) != 40):
        server_public, _ = zmq.auth.load_certificate(str(server_key))
    else:
        server_public = server_key.encode() if isinstance(server_key, str) else server_key
    public, secret = zmq.auth.load_certificate(str(client_key))
    if secret is None:
        raise ValueError(f"{client_key} holds no secret key (use the .key_secret file)")
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, public, secret
    return True


@dataclass
class Result:
    """One answer from inferd: status ok (outputs or a decoded result) or error (reason, message)."""

    header: dict
    outputs: list[np.ndarray] = field(default_factory=list)
    topic: str | None = None
    parts: list = field(default_factory=list)  # binary parts of a decoded result (a mask's PNG)

    status = property(lambda self: self.header.get("status"))
    model = property(lambda self: self.header.get("model"))
    source = property(lambda self: self.header.get("source"))
    seq = property(lambda self: self.header.get("seq"))
    id = property(lambda self: self.header.get("id"))
    timings = property(lambda self: self.header.get("timings", {}))
    result = property(lambda self: self.header.get("result"))

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def event(self) -> dict | None:
        """A zone event (published on events/MODEL/SOURCE; docs/zones.md), else None."""
        return self.header if self.topic is not None and self.topic.startswith("events/") else None

    @property
    def reason(self) -> str | None:
        return (self.header.get("error") or {}).get("reason")

    @property
    def classes(self) -> list[dict]:
        return (self.result or {}).get("classes", [])

    @property
    def detections(self) -> list[dict]:
        """Each: box [x1, y1, x2, y2] in the frame's pixels, box_norm (0-1 of the frame), score,
        class, label, and keypoints (x, y pairs) where the model has them."""
        return (self.result or {}).get("detections", [])

    @property
    def segmentation(self) -> dict | None:
        """Mask size, encoding and per-class area fractions of a segment model's result."""
        return (self.result or {}).get("segmentation")

    def mask(self) -> np.ndarray | None:
        """The segmentation mask as an HxW uint8 array of class ids (decoded from PNG or RLE)."""
        seg = self.segmentation
        if seg is None:
            return None
        if seg["encoding"] == "rle":
            flat = np.repeat(np.asarray(seg["values"], np.uint8), seg["counts"])
            return flat.reshape(seg["height"], seg["width"])
        import io

        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(bytes(self.parts[seg["part"]]))))

    def raise_for_status(self) -> Result:
        if not self.ok:
            err = self.header.get("error") or {}
            raise RequestError(err.get("reason", "unknown"), err.get("message", ""), self.header)
        return self


def parse_result(parts: list, topic: str | None = None) -> Result:
    import json

    header = json.loads(bytes(parts[0]))
    ok = header.get("status") == "ok"
    if ok and "result" in header:
        return Result(header, [], topic, [p.bytes if hasattr(p, "bytes") else p for p in parts[1:]])
    outputs = decode_tensors(header.get("outputs", []), parts[1:]) if ok else []
    return Result(header, outputs, topic)


def frame_message(
    frame: np.ndarray | bytes,
    source: str,
    seq: int,
    model: str | list[str] | None = None,
    ts: float | None = None,
    request_id: str | None = None,
    deadline: float | None = None,
    encoding: str | None = None,
) -> list[Any]:
    """[header, payload] for one frame: raw arrays go as their own buffer (no copy)."""
    header: dict[str, Any] = {
        "v": VERSION,
        "source": source,
        "seq": seq,
        "ts": time.time() if ts is None else ts,
    }
    if isinstance(frame, np.ndarray):
        frame = np.ascontiguousarray(frame)
        header.update(shape=list(frame.shape), dtype=frame.dtype.name, encoding="raw")
        payload: Any = frame
    else:
        payload = bytes(frame) if not isinstance(frame, (bytes, memoryview)) else frame
        if encoding is None:
            head = bytes(payload[:8])
            encoding = "jpeg" if head.startswith(_JPEG) else "png" if head.startswith(_PNG) else None
            if encoding is None:
                raise ValueError("bytes frames must be JPEG or PNG (or pass encoding=)")
        header["encoding"] = encoding
    if model is not None:
        header["model"] = model
    if request_id is not None:
        header["id"] = request_id
    if deadline is not None:
        header["deadline"] = deadline
    return [encode_header(header), payload]


class InferClient:
    """Request/reply against a `router` endpoint. One request at a time; not thread-safe."""

    def __init__(
        self,
        endpoint: str,
        timeout: float = 5.0,
        source: str = "client",
        context: zmq.Context | None = None,
        server_key: Key | None = None,
        client_key: Key | None = None,
    ) -> None:
        self.endpoint, self.timeout, self.source = endpoint, timeout, source
        self.server_key, self.client_key = server_key, client_key
        self.ctx = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._socket = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self.curve = use_curve(sock, self.server_key, self.client_key)
        # what libzmq does without a word is an event on this socket: the daemon's handshake
        # refusing us (allow_ips, CURVE keys: the connection is then dropped for good), and the
        # daemon closing the connection (a request in flight then never gets its answer)
        self._events = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self._handshaken = False  # a handshake with the daemon succeeded on this socket
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(self._events, zmq.POLLIN)
        self._refused: str | None = None
        self._lost = False  # the connection closed since the last request was sent
        sock.connect(self.endpoint)
        return sock

    def _read_events(self) -> str | None:
        """Read the socket's events (refused, disconnected, handshake done); why the daemon
        refused this client, once its handshake said so."""
        from zmq.utils.monitor import recv_monitor_message

        while self._refused is None and self._events.poll(0):
            event = recv_monitor_message(self._events)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._lost = True
            elif event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshaken = True
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._refused = (
                    f"{self.endpoint} refused this client at the handshake (ZAP status "
                    f"{event['value']}): its address is not in the endpoint's allow_ips"
                    + (", or its CURVE key is not in the daemon's clients_dir" if self.curve else "")
                )
        return self._refused

    def _close_socket(self) -> None:
        self._socket.disable_monitor()
        self._events.close(linger=0)
        self._socket.close(linger=0)

    def infer(
        self,
        frame: np.ndarray | bytes,
        model: str | None = None,
        source: str | None = None,
        seq: int | None = None,
        ts: float | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Result:
        """Send one frame, wait for its answer. Raises RequestError (rejected) or RequestTimeout
        (also, within 0.1 s, when `cancel` is set while waiting)."""
        timeout = self.timeout if timeout is None else timeout
        rid = f"{id(self):x}-{next(self._ids)}"
        deadline = time.time() + timeout
        msg = frame_message(
            frame, source or self.source, next(self._seq) if seq is None else seq, model, ts, rid, deadline
        )
        end = time.monotonic() + timeout
        self._read_events()
        self._lost = False  # a connection closed before this request is no news about it
        sent = self._send(msg, end, cancel)
        while sent and (left := end - time.monotonic()) > 0:
            if cancel is not None:
                if cancel.is_set():
                    break
                left = min(left, 0.1)
            ready = dict(self._poller.poll(left * 1000))
            if self._events in ready and (self._read_events() is not None or self._lost):
                break  # refused, or the connection closed: this request gets no answer
            if self._socket not in ready:
                continue
            parts = self._socket.recv_multipart(copy=False)
            if parts and len(parts[0]) == 0:
                parts = parts[1:]
            result = parse_result(parts)
            if result.id == rid:
                return result.raise_for_status()
            # a late answer to an earlier request that timed out: ignore it
        refused, lost, handshaken = self._read_events(), self._lost, self._handshaken
        # reset the socket so a late reply or a queued request cannot confuse the next call
        self._close_socket()
        self._socket = self._connect()
        if refused is not None:
            raise ConnectionRefused(refused)
        if cancel is not None and cancel.is_set():
            raise RequestTimeout(f"cancelled while waiting for {self.endpoint}")
        size = sum(len(memoryview(p)) for p in msg)
        if lost and not handshaken:
            why = (
                "a wrong server key (the daemon's NAME.key), or a client key the daemon does not allow"
                if self.curve
                else "it wants CURVE (give server_key and client_key), or it is not an inferd endpoint"
            )
            raise RequestTimeout(f"{self.endpoint} failed the handshake: {why}", "disconnected")
        if lost:
            why = (
                f"this {size / 1e6:.1f} MB request is over libzmq's hard limit there (4x the "
                "endpoint's max_message_bytes, 64 MiB by default), which cuts it off unread"
                if size > HARD_LIMIT_HINT_BYTES
                else "it stopped or restarted"
            )
            raise RequestTimeout(
                f"{self.endpoint} closed the connection before answering: {why}", "disconnected"
            )
        hint = (
            " (CURVE: a wrong server key or a client key the daemon does not allow fails silently)"
            if self.curve
            else ""
        )
        raise RequestTimeout(f"no answer from {self.endpoint} within {timeout:.3g} s{hint}")

    def _send(self, msg: list, end: float, cancel: threading.Event | None) -> bool:
        """Queue the request without blocking past `end`. A connected DEALER always has room; one
        whose only connection the daemon refused has none, ever (libzmq does not reconnect after
        a refused handshake), and a blocking send would wait forever."""
        while True:
            try:
                self._socket.send_multipart([b"", *msg], copy=False, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:
                left = end - time.monotonic()
                if left <= 0 or (cancel is not None and cancel.is_set()) or self._read_events():
                    return False
                if self._lost and not self._handshaken:  # its handshake failed: none will come
                    return False
                zmq.select([self._events], [self._socket], [], min(left, 0.1))

    def close(self) -> None:
        self._close_socket()

    def __enter__(self) -> InferClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FramePublisher:
    """Streams frames to a `pull` endpoint (mode push) or to `sub` endpoints (mode pub, binds)."""

    def __init__(
        self,
        endpoint: str,
        source: str = "cam0",
        mode: str = "push",
        bind: bool | None = None,
        sndhwm: int = 4,
        context: zmq.Context | None = None,
        server_key: Key | None = None,
        client_key: Key | None = None,
        immediate: bool = False,
    ) -> None:
        """`immediate`: queue nothing for an inferd that is not connected (ZMQ_IMMEDIATE): `send`
        then waits, or with block=False returns False, until one is."""
        if mode not in ("push", "pub"):
            raise ValueError("mode must be 'push' or 'pub'")
        self.source, self.mode = source, mode
        # frames go out zero-copy: close() must not return while libzmq still reads one, or a
        # process that exits right after (its buffers freed) dies in libzmq ("Bad address").
        # Our own context is terminated on close, which waits for them (LINGER, 1 s at most).
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.socket = self.ctx.socket(zmq.PUSH if mode == "push" else zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.setsockopt(zmq.LINGER, 1000)
        if immediate:
            self.socket.setsockopt(zmq.IMMEDIATE, 1)
        use_curve(self.socket, server_key, client_key)
        if bind if bind is not None else mode == "pub":
            self.socket.bind(endpoint)
        else:
            self.socket.connect(endpoint)
        self._seq = itertools.count()

    def send(
        self,
        frame: np.ndarray | bytes,
        model: str | list[str] | None = None,
        seq: int | None = None,
        ts: float | None = None,
        block: bool = True,
    ) -> bool:
        """Send one frame. With block=False returns False instead of waiting at the high-water mark."""
        msg = frame_message(frame, self.source, next(self._seq) if seq is None else seq, model, ts)
        if self.mode == "pub":
            msg = [self.source.encode(), *msg]
        try:
            self.socket.send_multipart(msg, copy=False, flags=0 if block else zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self.socket.close()
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> FramePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ResultSubscriber:
    """Reads results from inferd's `results` PUB socket; topics are "<model>/<source>" prefixes,
    and "events/<model>/<source>" ones for zone events (their `Result.event` is the event).

    ZeroMQ drops what a publisher sends before a new subscription reaches it (the "slow
    joiner"), so the constructor waits, up to `wait` seconds, until inferd confirms the
    subscription is in place: results published after it returns are received. It raises
    RequestTimeout when no inferd answers in time; `wait=None` connects without waiting (for a
    subscriber that starts before the daemon and takes whatever comes).
    """

    def __init__(
        self, endpoint: str, topics: list[str] | str = "", context: zmq.Context | None = None,
        server_key: Key | None = None, client_key: Key | None = None, wait: float | None = 5.0,
    ) -> None:  # fmt: skip
        self.endpoint = endpoint
        self.ctx = context or zmq.Context.instance()
        self.socket = self.ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.curve = use_curve(self.socket, server_key, client_key)
        for t in [topics] if isinstance(topics, str) else topics:
            self.socket.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.socket.connect(endpoint)
        if wait is not None:
            try:
                self.wait_subscribed(wait)
            except BaseException:
                self.socket.close()
                raise

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        """Block until inferd has every topic subscribed so far (see docs/protocol.md, hello)."""
        import os

        hello = HELLO + os.urandom(8).hex().encode()
        self.socket.setsockopt(zmq.SUBSCRIBE, hello)
        end = time.monotonic() + timeout
        try:
            while (left := end - time.monotonic()) > 0:
                if not self.socket.poll(left * 1000):
                    break
                if self.socket.recv_multipart()[0] == hello:
                    return
                # a result or another subscriber's hello: the subscription is not confirmed yet
        finally:
            self.socket.setsockopt(zmq.UNSUBSCRIBE, hello)
        hint = " (CURVE: check the server and client keys)" if self.curve else ""
        raise RequestTimeout(
            f"inferd's results socket at {self.endpoint} did not confirm the subscription within "
            f"{timeout:.3g} s: is inferd running with results.bind there?{hint}"
        )

    def recv(self, timeout: float = 5.0) -> Result:
        """The next result (ok or error: check .ok). Raises RequestTimeout."""
        end = time.monotonic() + timeout
        while True:
            if not self.socket.poll(max(0.0, end - time.monotonic()) * 1000):
                raise RequestTimeout(f"no result within {timeout:.3g} s")
            topic, *parts = self.socket.recv_multipart(copy=False)
            if topic.bytes[:1] != CONTROL:  # "!hello/..." answers to subscribers: not results
                return parse_result(parts, topic.bytes.decode(errors="replace"))

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> ResultSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
