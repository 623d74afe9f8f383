"""Ingest sockets: an `Endpoint` (one configured socket, its lock, read by the IO thread and
answered by the workers), and how each socket is made: options, CURVE keys and address allowlists
(ZAP), bind or connect; the results socket likewise. The IO loop that reads them is transport.py.
"""

from __future__ import annotations

import logging
import threading

import zmq

from inferd.config import Config, EndpointConfig, ResultsConfig
from inferd.errors import FrameError
from inferd.ingest.frigate import FrigateRequests
from inferd.ingest.ipc import prepare_ipc
from inferd.ingest.parts import NOBLOCK, readable, recv_message, send_message
from inferd.ingest.security import load_secret, secure_ipc
from inferd.outputs.publisher import bind_results

log = logging.getLogger("inferd.transport")

# libzmq's own limit (ZMQ_MAXMSGSIZE, per part) is this many times an endpoint's
# max_message_bytes: a message over it is cut off by libzmq, which closes the sender's connection
# and tells nobody; one between the two limits is read whole, answered `too_large` and counted. The
# mistakes that make a frame too large (float32 for uint8, 4K for 1080p) are 4x or less.
HARD_LIMIT_FACTOR = 4


def check_size(parts: list[zmq.Frame], cfg: EndpointConfig) -> None:
    """FrameError `too_large` for a message over the endpoint's max_message_bytes."""
    total = sum(len(p) for p in parts)
    if total > cfg.max_message_bytes:
        raise FrameError(
            "too_large",
            f"message is {total} bytes, the limit is {cfg.max_message_bytes} (endpoints[].max_message_bytes)",
        )


class Endpoint:
    """One ingest socket with its config and a stable id.

    A router-like endpoint (router, frigate) is answered by the workers: `reply` sends on its
    socket under `lock`, which the IO thread also holds while it reads.
    """

    def __init__(self, eid: int, cfg: EndpointConfig, sock: zmq.Socket, frigate=None, wake=None) -> None:
        self.id, self.cfg, self.sock = eid, cfg, sock
        self.frigate: FrigateRequests | None = frigate  # a frigate endpoint's request parser
        self.replies = cfg.type in ("router", "frigate")
        self.lock = threading.Lock()
        self.closed = False
        self.wake = wake  # wakes the IO thread (a reply's send saw a new request arrive)
        self.watch = sock.getsockopt(zmq.FD) if self.replies else sock  # what the IO thread polls

    def reply(self, parts: list) -> None:
        """Send a reply to a peer (any thread). A peer that went away is not an error."""
        with self.lock:
            if self.closed:
                return  # the endpoint went away in a reload or at stop
            sock = self.sock
            try:
                send_message(sock, parts, NOBLOCK, copy=False)
            except zmq.ZMQError as e:  # ROUTER takes or drops a whole message at its first part
                log.debug("reply to a router peer not sent: %s", e)
            # the send may have consumed the FD's signal of a request that arrived meanwhile
            arrived = readable(sock)
        if arrived and self.wake is not None:  # whoever sent it, the IO thread included (worker
            self.wake(self.id)  # processes' answers, rejects): its poll will not see that signal

    def recv(self) -> list[zmq.Frame] | None:
        """The next message, or None (IO thread)."""
        if not self.replies:
            return recv_message(self.sock, copy=False)
        with self.lock:
            return recv_message(self.sock, copy=False)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.sock.close(linger=0)

    def reopen(self, sock: zmq.Socket) -> None:
        with self.lock:
            self.sock, self.closed = sock, False
            self.watch = sock.getsockopt(zmq.FD) if self.replies else sock


def open_results(ctx: zmq.Context, config: Config, auth, res: ResultsConfig) -> zmq.Socket:
    """The results socket (XPUB) of `res`, secured and bound."""
    secure = (
        (lambda s: secure_socket(s, config, auth, res, "results"))
        if res.curve or res.allow_ips is not None
        else None
    )
    try:
        prepare_ipc(res.bind)
        pub = bind_results(ctx, res.bind, res.sndhwm, secure)
        ipc = config.security.ipc
        secure_ipc(res.bind, ipc.mode, ipc.group)
    except (zmq.ZMQError, OSError) as e:
        raise OSError(f"results {res.bind}: {e}") from None
    return pub


def open_socket(ctx: zmq.Context, config: Config, auth, ep: EndpointConfig, eid: int = 0) -> zmq.Socket:
    """The ingest socket of `ep` (endpoint id `eid`): options, security, bound or connected."""
    kind = {"pull": zmq.PULL, "sub": zmq.SUB, "router": zmq.ROUTER, "frigate": zmq.ROUTER}[ep.type]
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.MAXMSGSIZE, min(ep.max_message_bytes * HARD_LIMIT_FACTOR, 2**62))
    sock.setsockopt(zmq.RCVHWM, ep.rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    if ep.type in ("router", "frigate"):
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished peer's reply is dropped, never blocks
        sock.setsockopt(zmq.SNDHWM, ep.sndhwm)
    if ep.curve or ep.allow_ips is not None:
        secure_socket(sock, config, auth, ep, f"ep{eid}")
    if ep.type == "sub":
        for topic in ep.topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    try:
        if ep.bind:
            prepare_ipc(ep.bind)
            sock.bind(ep.bind)
            ipc = config.security.ipc
            secure_ipc(ep.bind, ipc.mode, ipc.group)
        for addr in ep.connect or []:
            sock.connect(addr)
    except (zmq.ZMQError, OSError) as e:
        sock.close(linger=0)
        raise OSError(f"endpoint {ep.type} {ep.bind or ep.connect}: {e}") from None
    return sock


def secure_socket(
    sock: zmq.Socket, config: Config, auth, ep: EndpointConfig | ResultsConfig, domain: str
) -> None:
    """CURVE server keys and/or an address allowlist, enforced by the ZAP authenticator."""
    if auth is None:
        raise OSError(f"{ep.bind}: curve/allow_ips need the authenticator")
    sock.zap_domain = domain.encode()
    if ep.allow_ips is not None:
        auth.allow_networks(domain, ep.allow_ips)
    if ep.curve:
        curve = config.security.curve
        public, secret = load_secret(curve.server_key)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        if not curve.clients_dir.is_dir():
            raise OSError(f"security.curve.clients_dir {curve.clients_dir} is not a folder")
        auth.configure_curve(domain=domain, location=str(curve.clients_dir))
