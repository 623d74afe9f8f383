"""The IO loop: binds the ingest sockets (PULL / SUB / ROUTER; endpoints.py makes them) and the
results socket (PUB), and the IO thread that reads them.

ZeroMQ sockets are not thread-safe: a socket used from several threads must be used under a
mutex (the "full fence" libzmq asks for). The IO thread reads every ingest socket. A worker
answers a ROUTER peer itself, on the endpoint's socket under the endpoint's lock (no hand-over to
the IO thread: in request/reply the round trip is the throughput), and publishes results on the
PUB socket under its lock. So the IO thread cannot let zmq_poll look inside a ROUTER socket while
a worker sends on it: it polls the socket's file descriptor (ZMQ_FD, edge-triggered) instead,
reads until EAGAIN under the lock, and a worker whose send took in the news of a new request
(ZMQ_EVENTS says POLLIN) wakes the IO thread through the outbox. Tensors travel with copy=False.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any

import zmq

from inferd.config import Config, EndpointConfig, ResultsConfig
from inferd.engine.pipeline import Frame
from inferd.errors import FrameError
from inferd.ingest.endpoints import Endpoint, check_size, open_results, open_socket
from inferd.ingest.frigate import FrigateRequests, error_reply
from inferd.ingest.ipc import unlink_ipc
from inferd.outputs.publisher import answer_hellos
from inferd.outputs.replies import OUTBOX, Replies
from inferd.protocol import decode_header, decode_payload
from inferd.service.systemd import name_os_thread

log = logging.getLogger("inferd.transport")

MAX_SOURCES = 1024  # bounds metric label cardinality against senders inventing source names
SWEEP_S = 0.02  # how often queued frames are checked for passed deadlines


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
        self._rewatch = True  # the IO loop registers its sockets again (endpoints, _pending changed)
        self._sources: set[str] = set()
        self._received: dict = {}  # source -> its frames_received counter (labels() is not free)
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._next_id = 0
        self.last_loop = time.monotonic()
        self.hub = None  # engine.procs.Hub: worker processes, fed and answered by the IO thread

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
        ep = self.endpoints[self._next_id] = Endpoint(self._next_id, cfg, sock, frigate, self.replies.wake)
        return ep

    def _publisher(self, res: ResultsConfig) -> zmq.Socket:
        return open_results(self.ctx, self.config, self.auth, res)

    def _socket(self, ep: EndpointConfig, eid: int = 0) -> zmq.Socket:
        return open_socket(self.ctx, self.config, self.auth, ep, eid)

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
        self._rewatch = True  # whatever happens below, the IO loop looks at the endpoints again
        keep = {e.id for e in self.endpoints.values() if e.cfg in config.endpoints}
        kept_cfgs = [self.endpoints[i].cfg for i in keep]
        added_cfgs = [c for c in config.endpoints if c not in kept_cfgs]
        removed = [e for e in self.endpoints.values() if e.id not in keep]
        # an address that stays but with other options must be released before it is bound again
        new_addrs = {c.bind for c in added_cfgs if c.bind}
        early = [e for e in removed if e.cfg.bind in new_addrs]
        for e in early:
            e.close()
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
                e.close()
                del self.endpoints[e.id]
            for e in early:  # best effort: put the released addresses back
                e.reopen(self._socket(e.cfg, e.id))
            raise
        for e in removed:
            if e not in early:
                e.close()
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
        name_os_thread("inferd-io")  # benchmarks/cores.py reads this thread's CPU time
        poller = zmq.Poller()
        poller.register(self.outbox, zmq.POLLIN)
        hub = None
        polled: dict[int, Any] = {}  # endpoint id -> what is registered (its FD, or its socket)
        last_sweep = time.monotonic()
        more: set[int] = set()  # endpoints to read without waiting for their FD (see _due)
        while not self.stopped.is_set():
            self.last_loop = now = time.monotonic()
            while not self._calls.empty():
                self._calls.get()()
            if self.hub is not hub:  # the first model served by worker processes came with a reload
                hub = self.hub
                poller.register(hub.fd, zmq.POLLIN)
            if self._rewatch:  # endpoints or held-back frames changed since the last turn
                self._rewatch = False
                polled = self._watch(poller, polled)
            events = dict(poller.poll(0 if more else 5 if self._pending else 50))
            # nothing for 50 ms, or a sweep's turn (every 20 ms): every endpoint is read anyway, a
            # safety net against a missed edge that traffic on another endpoint cannot hold off
            # (costs ~5 us an endpoint)
            due = more if events and now - last_sweep < SWEEP_S else set(polled)
            if self.outbox in events:
                due |= self._forward()
            if hub is not None and hub.fd in events:
                hub.read()
            more = set()
            for i, item in polled.items():
                # a ROUTER's FD is edge-triggered: it is read when its FD fires, when a worker's
                # reply took the FD's signal (the worker wakes us with its id), and until a read
                # found nothing after its budget ran out or a held-back frame was let in
                if (item in events or i in due) and self._receive(self.endpoints[i]):
                    more.add(i)
            if hub is not None:
                hub.pump()
            if self._pending:
                more |= self._retry_pending()
                if hub is not None:
                    hub.pump()
            if now - last_sweep >= SWEEP_S:
                last_sweep = now
                if hub is not None:
                    hub.sweep(now)
                self.dispatcher.expire()
                answer_hellos(self.replies.pub, self.replies.pub_lock)
        while not self._calls.empty():
            self._calls.get()()
        self._answer_late()
        self.replies.release()
        self._flush_outbox()

    def _watch(self, poller: zmq.Poller, polled: dict[int, Any]) -> dict[int, Any]:
        """Register what to poll: endpoints with a frame waiting for room in a fifo queue are not
        read (backpressure); while stopping every endpoint is read, and what arrives is answered
        `shutdown`."""
        want = {i: e.watch for i, e in self.endpoints.items() if i not in self._pending}
        for i, item in polled.items():
            if want.get(i) != item:  # an FD (int) or a socket
                with contextlib.suppress(KeyError, zmq.ZMQError):
                    poller.unregister(item)
        for i, item in want.items():
            if polled.get(i) != item:
                poller.register(item, zmq.POLLIN)
        return want

    def _answer_late(self, quiet: float = 0.05, limit: float = 1.0) -> None:
        """At stop: answer (`shutdown`) what reached the sockets since they were last read, until
        they stay quiet for `quiet` s, so no request that reached inferd goes unanswered."""
        poller = zmq.Poller()
        for e in self.endpoints.values():
            poller.register(e.watch, zmq.POLLIN)
        end = time.monotonic() + limit
        for e in list(self.endpoints.values()):
            self._receive(e)
        while time.monotonic() < end:
            if not poller.poll(quiet * 1000):
                return
            self._forward()
            for e in list(self.endpoints.values()):
                self._receive(e)

    def _receive(self, ep: Endpoint, budget: int = 64) -> bool:
        """Read up to `budget` messages from one endpoint without blocking (fair across endpoints).
        True when the budget ran out (more may be waiting)."""
        for _ in range(budget):
            if ep.id in self._pending:
                return False
            parts = ep.recv()
            if parts is None:
                return False
            self._ingest(ep, parts)
        return True

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
            reply_to = (ep, envelope)
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
        frame = Frame(
            header, [], time.monotonic(), time.time(), reply_to, cfg.max_elements, raw_header=parts[0]
        )
        self._count_received(source)
        payloads = parts[1:]
        try:
            if len(payloads) != len(header.parts):
                raise FrameError(
                    "parts",
                    f"header describes {len(header.parts)} payload part(s), message has {len(payloads)}",
                )
            check_size(parts, cfg)
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
            self._rewatch = True

    def _ingest_frigate(self, ep: Endpoint, parts: list[zmq.Frame]) -> None:
        """A Frigate detector request: [identity, "", header, tensor] (frigate.py)."""
        cut = next((i for i, p in enumerate(parts[:8]) if len(p) == 0), 0)
        envelope, parts = parts[: cut + 1], parts[cut + 1 :]
        reply_to, source = (ep, envelope), ep.cfg.source
        self._count_received(source)
        try:
            check_size(parts, ep.cfg)
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
            self._rewatch = True

    def _count_received(self, source: str) -> None:
        counter = self._received.get(source)
        if counter is None:
            counter = self._received[source] = self.metrics.frames_received.labels(source)
        counter.inc()

    def _retry_pending(self) -> set[int]:
        """Put held-back frames again; the ids of the endpoints that can be read again."""
        freed = set()
        for eid, (frame, queues) in list(self._pending.items()):
            waiting = [q for q in queues if not q.put(frame)]
            if waiting:
                self._pending[eid] = (frame, waiting)
            else:
                del self._pending[eid]
                freed.add(eid)
                self._rewatch = True
        return freed

    def _forward(self, budget: int = 256) -> set[int]:
        """Drain the outbox (wake-ups: a queue has room; a request arrived during a reply, which
        names its endpoint). The endpoints to read."""
        due = set()
        for _ in range(budget):
            try:
                msg = self.outbox.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(msg) == 3:
                due.add(int.from_bytes(msg[1:3], "big"))
        return due

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
            ep.close()
            unlink_ipc(ep.cfg.bind)
        self.endpoints.clear()
        self.set_pub(None)
        if self.outbox is not None:
            self.outbox.close(linger=0)
