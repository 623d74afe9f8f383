"""ZeroMQ sockets: ingest (PULL / SUB / ROUTER), results (PUB), and the IO thread that owns them.

ZeroMQ sockets are not thread-safe, so one IO thread owns every ingest socket. Workers publish
results on the PUB socket under a lock and hand replies for ROUTER peers back through an
inproc PUSH socket of their own (the outbox, see replies.py); the IO thread forwards those to
the peer that asked. Tensors travel with copy=False.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time

import zmq

from inferd.config import Config, EndpointConfig, ResultsConfig
from inferd.errors import FrameError
from inferd.frigate import FrigateRequests, error_reply
from inferd.pipeline import Frame
from inferd.protocol import decode_header, decode_payload
from inferd.publisher import answer_hellos, bind_results, unlink_ipc
from inferd.replies import OUTBOX, REPLY, Replies
from inferd.security import load_secret, secure_ipc

log = logging.getLogger("inferd.transport")

MAX_SOURCES = 1024  # bounds metric label cardinality against senders inventing source names
SWEEP_S = 0.02  # how often queued frames are checked for passed deadlines


def ensure_ipc_dir(address: str) -> None:
    """ipc:// sockets need their folder; create it (under systemd, RuntimeDirectory= does)."""
    if address.startswith("ipc://") and not address.startswith("ipc://@"):
        folder = os.path.dirname(address[len("ipc://") :])
        if folder and not os.path.isdir(folder):
            try:
                os.makedirs(folder, mode=0o750, exist_ok=True)
            except OSError as e:
                raise OSError(f"cannot create the folder of {address}: {e.strerror}") from None


class Endpoint:
    """One ingest socket with its config and a stable id (replies find their socket by id)."""

    def __init__(self, eid: int, cfg: EndpointConfig, sock: zmq.Socket, frigate=None) -> None:
        self.id, self.cfg, self.sock = eid, cfg, sock
        self.frigate: FrigateRequests | None = frigate  # a frigate endpoint's request parser


class Transport:
    """Binds the sockets and runs the IO loop: receive, validate, dispatch; forward replies.

    Only the IO thread touches the sockets once `run` started; other threads ask it to do
    things with `call` (used by reload to change endpoints).
    """

    def __init__(
        self, ctx: zmq.Context, config: Config, dispatcher, replies: Replies, metrics, auth=None
    ) -> None:
        self.ctx, self.config, self.dispatcher = ctx, config, dispatcher
        self.replies, self.metrics, self.auth = replies, metrics, auth
        self.endpoints: dict[int, Endpoint] = {}
        self.outbox: zmq.Socket | None = None
        self.accepting = threading.Event()
        self.stopped = threading.Event()
        self._pending: dict[int, tuple[Frame, list]] = {}  # fifo backpressure: endpoint id -> frame
        self._sources: set[str] = set()
        self._received: dict = {}  # source -> its frames_received counter (labels() is not free)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._next_id = 0
        self.last_loop = time.monotonic()

    def bind(self) -> None:
        self.outbox = self.ctx.socket(zmq.PULL)
        self.outbox.bind(OUTBOX)
        for ep in self.config.endpoints:
            self._add(ep)
        if self.config.results.bind:
            self.set_pub(self._publisher(self.config.results))
        self.accepting.set()

    @property
    def pub(self) -> zmq.Socket | None:
        return self.replies.pub

    def set_pub(self, sock: zmq.Socket | None, linger: int = 1000) -> None:
        """Swap the results socket under the lock the workers publish with; close the old one."""
        with self.replies.pub_lock:
            old, self.replies.pub = self.replies.pub, sock
            if old is not None:
                address = old.last_endpoint.decode()
                old.close(linger=linger)
                unlink_ipc(address)

    def _add(self, cfg: EndpointConfig) -> Endpoint:
        self._next_id = self._next_id % 65535 + 1
        frigate = None
        if cfg.type == "frigate":
            model = next((m for m in self.config.models if m.name == cfg.model), None)
            frigate = FrigateRequests(cfg, getattr(model.postprocess, "format", None) if model else None)
        sock = self._socket(cfg, self._next_id)
        ep = self.endpoints[self._next_id] = Endpoint(self._next_id, cfg, sock, frigate)
        return ep

    def _publisher(self, res: ResultsConfig) -> zmq.Socket:
        secure = (
            (lambda s: self._secure(s, res, "results")) if res.curve or res.allow_ips is not None else None
        )
        try:
            ensure_ipc_dir(res.bind)
            pub = bind_results(self.ctx, res.bind, res.sndhwm, secure)
            ipc = self.config.security.ipc
            secure_ipc(res.bind, ipc.mode, ipc.group)
        except (zmq.ZMQError, OSError) as e:
            raise OSError(f"results {res.bind}: {e}") from None
        return pub

    def _socket(self, ep: EndpointConfig, eid: int = 0) -> zmq.Socket:
        kind = {"pull": zmq.PULL, "sub": zmq.SUB, "router": zmq.ROUTER, "frigate": zmq.ROUTER}[ep.type]
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.MAXMSGSIZE, ep.max_message_bytes)
        sock.setsockopt(zmq.RCVHWM, ep.rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        if ep.type in ("router", "frigate"):
            sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished peer's reply is dropped, never blocks
            sock.setsockopt(zmq.SNDHWM, ep.sndhwm)
        if ep.curve or ep.allow_ips is not None:
            self._secure(sock, ep, f"ep{eid}")
        if ep.type == "sub":
            for topic in ep.topics:
                sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        try:
            if ep.bind:
                ensure_ipc_dir(ep.bind)
                sock.bind(ep.bind)
                ipc = self.config.security.ipc
                secure_ipc(ep.bind, ipc.mode, ipc.group)
            for addr in ep.connect or []:
                sock.connect(addr)
        except (zmq.ZMQError, OSError) as e:
            sock.close(linger=0)
            raise OSError(f"endpoint {ep.type} {ep.bind or ep.connect}: {e}") from None
        return sock

    def _secure(self, sock: zmq.Socket, ep: EndpointConfig | ResultsConfig, domain: str) -> None:
        """CURVE server keys and/or an address allowlist, enforced by the ZAP authenticator."""
        if self.auth is None:
            raise OSError(f"{ep.bind}: curve/allow_ips need the authenticator")
        sock.zap_domain = domain.encode()
        if ep.allow_ips is not None:
            self.auth.allow_networks(domain, ep.allow_ips)
        if ep.curve:
            curve = self.config.security.curve
            public, secret = load_secret(curve.server_key)
            sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
            if not curve.clients_dir.is_dir():
                raise OSError(f"security.curve.clients_dir {curve.clients_dir} is not a folder")
            self.auth.configure_curve(domain=domain, location=str(curve.clients_dir))

    # ---- changes while running (reload) ------------------------------------------------------

    def call(self, fn, timeout: float = 10.0):
        """Run `fn()` in the IO thread and return its result (or raise its exception)."""
        done = threading.Event()
        box: dict = {}

        def wrapped() -> None:
            try:
                box["result"] = fn()
            except BaseException as e:  # handed back to the caller
                box["error"] = e
            finally:
                done.set()

        self._calls.put(wrapped)
        if not done.wait(timeout):
            raise TimeoutError("the IO thread did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def reconfigure(self, config: Config, dispatcher) -> list[str]:
        """IO thread: bring the sockets in line with `config`; unchanged ones stay bound.

        All or nothing: if a new socket cannot be bound, the old set stays as it was.
        """
        keep = {e.id for e in self.endpoints.values() if e.cfg in config.endpoints}
        kept_cfgs = [self.endpoints[i].cfg for i in keep]
        added_cfgs = [c for c in config.endpoints if c not in kept_cfgs]
        removed = [e for e in self.endpoints.values() if e.id not in keep]
        # an address that stays but with other options must be released before it is bound again
        new_addrs = {c.bind for c in added_cfgs if c.bind}
        early = [e for e in removed if e.cfg.bind in new_addrs]
        for e in early:
            e.sock.close(linger=0)
        added: list[Endpoint] = []
        new_pub = None
        try:
            for c in added_cfgs:
                added.append(self._add(c))
            if config.results != self.config.results and config.results.bind:
                if self.pub is not None and config.results.bind == self.config.results.bind:
                    self.set_pub(None, linger=0)
                new_pub = self._publisher(config.results)
        except OSError:
            for e in added:
                e.sock.close(linger=0)
                del self.endpoints[e.id]
            for e in early:  # best effort: put the released addresses back
                e.sock = self._socket(e.cfg, e.id)
            raise
        for e in removed:
            if e not in early:
                e.sock.close(linger=0)
                unlink_ipc(e.cfg.bind)
            self._pending.pop(e.id, None)
            del self.endpoints[e.id]
        if config.results != self.config.results:
            self.set_pub(new_pub)
        self.config, self.dispatcher = config, dispatcher
        if (
            self.auth is not None and config.security.curve is not None
        ):  # pick up added or removed client keys
            clients = str(config.security.curve.clients_dir)
            for e in self.endpoints.values():
                if e.cfg.curve:
                    self.auth.configure_curve(domain=f"ep{e.id}", location=clients)
            if config.results.curve:
                self.auth.configure_curve(domain="results", location=clients)
        return [f"{e.cfg.type} {e.cfg.bind or e.cfg.connect}" for e in added]

    # ---- the IO loop -------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.outbox, zmq.POLLIN)
        polled: dict[int, zmq.Socket] = {}
        last_sweep = time.monotonic()
        while not self.stopped.is_set():
            self.last_loop = now = time.monotonic()
            while not self._calls.empty():
                self._calls.get()()
            # endpoints with a frame waiting for room in a fifo queue are not read (backpressure);
            # while stopping every endpoint is read, and what arrives is answered `shutdown`
            want = {i: e.sock for i, e in self.endpoints.items() if i not in self._pending}
            for i, sock in polled.items():
                if want.get(i) is not sock:
                    with contextlib.suppress(KeyError, zmq.ZMQError):
                        poller.unregister(sock)
            for i, sock in want.items():
                if polled.get(i) is not sock:
                    poller.register(sock, zmq.POLLIN)
            polled = want
            events = dict(poller.poll(5 if self._pending else 50))
            if self.outbox in events:
                self._forward()
            for i, sock in polled.items():
                if sock in events:
                    self._receive(self.endpoints[i])
            if self._pending:
                self._retry_pending()
            if now - last_sweep >= SWEEP_S:
                last_sweep = now
                self.dispatcher.expire()
                answer_hellos(self.replies.pub, self.replies.pub_lock)
        while not self._calls.empty():
            self._calls.get()()
        self._answer_late()
        self.replies.release()
        self._flush_outbox()

    def _answer_late(self, quiet: float = 0.05, limit: float = 1.0) -> None:
        """At stop: answer (`shutdown`) what reached the sockets since they were last read, until
        they stay quiet for `quiet` s, so no request that reached inferd goes unanswered."""
        poller = zmq.Poller()
        for e in self.endpoints.values():
            poller.register(e.sock, zmq.POLLIN)
        end = time.monotonic() + limit
        while time.monotonic() < end:
            events = dict(poller.poll(quiet * 1000))
            if not events:
                return
            for e in list(self.endpoints.values()):
                if e.sock in events:
                    self._receive(e)
            self._forward()

    def _receive(self, ep: Endpoint, budget: int = 64) -> None:
        """Read up to `budget` messages from one endpoint without blocking (fair across endpoints)."""
        for _ in range(budget):
            if ep.id in self._pending:
                return
            try:
                parts = ep.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._ingest(ep, parts)

    def _ingest(self, ep: Endpoint, parts: list[zmq.Frame]) -> None:
        cfg = ep.cfg
        if ep.frigate is not None:
            self._ingest_frigate(ep, parts)
            return
        reply_to = None
        if cfg.type == "router":
            # [identity, (b"" delimiter from REQ), header, payload...]
            cut = next((i for i, p in enumerate(parts[:8]) if len(p) == 0), 0)
            envelope, parts = parts[: cut + 1], parts[cut + 1 :]
            reply_to = (ep.id, envelope)
        elif cfg.type == "sub":
            parts = parts[1:]  # the topic
        if not parts:
            self.replies.reject_raw(reply_to, "unknown", "parts", "message has no header part")
            return
        try:
            header = decode_header(parts[0].buffer)
        except FrameError as e:
            self.replies.reject_raw(reply_to, "unknown", e.reason, str(e))
            return
        source = header.source
        if source not in self._sources:
            if len(self._sources) >= MAX_SOURCES:
                self.replies.reject_raw(
                    reply_to, "_overflow", "too_many_sources", f"more than {MAX_SOURCES} distinct sources"
                )
                return
            self._sources.add(source)
        frame = Frame(header, [], time.monotonic(), time.time(), reply_to, cfg.max_elements)
        self._count_received(source)
        payloads = parts[1:]
        try:
            if len(payloads) != len(header.parts):
                raise FrameError(
                    "parts",
                    f"header describes {len(header.parts)} payload part(s), message has {len(payloads)}",
                )
            total = sum(len(p) for p in parts)
            if total > cfg.max_message_bytes:
                raise FrameError(
                    "too_large", f"message is {total} bytes, the limit is {cfg.max_message_bytes}"
                )
            frame.payloads = [p.buffer for p in payloads]
            if all(spec.encoding == "raw" for spec in header.parts):
                frame.arrays = [
                    decode_payload(spec, buf, cfg.max_elements)
                    for spec, buf in zip(header.parts, frame.payloads, strict=True)
                ]
        except FrameError as e:
            self.replies.reject(frame, header.models[0] if header.models else "", e.reason, str(e))
            return
        if not self.accepting.is_set():  # stopping: answer now instead of leaving it unread
            self.replies.drop(frame, header.models[0] if header.models else "", "shutdown")
            return
        pending = self.dispatcher.submit(frame, router=cfg.type == "router")
        if pending:
            self._pending[ep.id] = (frame, pending)

    def _ingest_frigate(self, ep: Endpoint, parts: list[zmq.Frame]) -> None:
        """A Frigate detector request: [identity, "", header, tensor] (frigate.py)."""
        cut = next((i for i, p in enumerate(parts[:8]) if len(p) == 0), 0)
        envelope, parts = parts[: cut + 1], parts[cut + 1 :]
        reply_to, source = (ep.id, envelope), ep.cfg.source
        self._count_received(source)
        try:
            header, image = ep.frigate.parse(parts)
        except FrameError as e:
            self.replies.reject_raw(reply_to, source, e.reason, str(e), error_reply(e.reason, str(e)))
            return
        frame = Frame(header, [parts[1]], time.monotonic(), time.time(), reply_to, ep.cfg.max_elements)
        frame.arrays, frame.codec = [image], ep.frigate.codec
        if not self.accepting.is_set():
            self.replies.drop(frame, ep.cfg.model, "shutdown")
            return
        pending = self.dispatcher.submit(frame, router=True)
        if pending:
            self._pending[ep.id] = (frame, pending)

    def _count_received(self, source: str) -> None:
        counter = self._received.get(source)
        if counter is None:
            counter = self._received[source] = self.metrics.frames_received.labels(source)
        counter.inc()

    def _retry_pending(self) -> None:
        for eid, (frame, queues) in list(self._pending.items()):
            waiting = [q for q in queues if not q.put(frame)]
            if waiting:
                self._pending[eid] = (frame, waiting)
            else:
                del self._pending[eid]

    def _forward(self, budget: int = 256) -> None:
        for _ in range(budget):
            try:
                parts = self.outbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._deliver(parts)

    def _deliver(self, parts: list[zmq.Frame]) -> None:
        kind = parts[0].bytes
        if kind[:1] == REPLY:
            ep = self.endpoints.get(int.from_bytes(kind[1:3], "big"))
            if ep is None:
                return  # the endpoint went away in a reload
            try:
                ep.sock.send_multipart(parts[1:], copy=False, flags=zmq.NOBLOCK)
            except zmq.ZMQError as e:
                log.debug("reply to a router peer not sent: %s", e)

    def _flush_outbox(self) -> None:
        while self.outbox.poll(0):
            self._forward()

    def stop_accepting(self) -> None:
        """Take no new frames: queued ones are still served, new ones answered `shutdown`."""
        self.accepting.clear()

    def close(self) -> None:
        self.stopped.set()

    def close_sockets(self) -> None:
        for ep in self.endpoints.values():
            ep.sock.close(linger=0)
            unlink_ipc(ep.cfg.bind)
        self.endpoints.clear()
        self.set_pub(None)
        if self.outbox is not None:
            self.outbox.close(linger=0)
